//! The ingress agent as a library: the binary (`main.rs`) parses the command
//! line and calls [`agent::run`]; tests drive the same modules directly.

pub mod admin;
pub mod agent;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod datapath;
pub mod healthcheck;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod source;
pub mod telemetry;
