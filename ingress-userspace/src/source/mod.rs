//! Where the ClusterState comes from. Standalone mode reads manifest files
//! (`files`); cluster mode (`cluster`) watches the API. Both hand whole
//! states to the same compile -> apply path in `agent`.

pub mod cluster;
pub mod files;
pub mod manifest;
