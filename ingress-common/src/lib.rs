//! Shared between the kernel programs (`ingress-ebpf`) and the agent
//! (`ingress-userspace`): map names and sizes, counter indexes, and the pure
//! packet logic that both sides run. Everything here is `no_std` and free of
//! I/O, so the host unit-tests exactly the code the kernel executes.
#![no_std]

#[cfg(any(test, feature = "testing"))]
extern crate std;

pub mod counters;
pub mod csum;
pub mod icmp;
pub mod icmp6;
pub mod l4;
pub mod maglev;
pub mod maps;
pub mod nat;
pub mod parse;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
