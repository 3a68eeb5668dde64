//! The kernel programs live in the `ingress-ebpf` binary target (`main.rs`);
//! this empty library exists so that `ingress-userspace` can depend on the
//! crate and be rebuilt whenever the programs change.
#![no_std]
