//! Project tasks (`cargo xtask ...`), and the network-namespace testbed that
//! the demo and the end-to-end tests share.

pub mod bench;
pub mod build_ebpf;
pub mod cmd;
pub mod demo;
pub mod deploy;
pub mod kernels;
pub mod setup;
pub mod test;
pub mod testbed;
