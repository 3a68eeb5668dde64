//! The pure heart of the control path: a [`ClusterState`] of Kubernetes
//! objects goes through [`compile`] into an immutable [`Snapshot`] that the
//! data paths read, plus [`Diagnostic`]s for everything that was wrong with
//! the input. No I/O here; sources (files, the API) fill the state, the
//! proxy and the datapath consume the snapshot.

pub mod compile;
pub mod diagnostics;
pub mod endpoints;
pub mod l4;
pub mod refresh;
pub mod router;
pub mod snapshot;
pub mod state;
pub mod tls;

pub use compile::{CompileOptions, PathPolicy, compile, compile_at};
pub use diagnostics::{Diagnostic, Severity, reason};
pub use router::{RouteTarget, Router};
pub use snapshot::{Backend, BackendId, Endpoint, Snapshot, UpstreamProtocol};
pub use state::{ClusterState, ObjectKey};
