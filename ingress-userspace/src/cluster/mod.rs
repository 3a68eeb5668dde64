//! Cluster mode (kube watchers, Ingress status, leader election, Events).
//! The watchers live in `source::cluster`; status writing (the addresses it
//! shows in `addresses`) and Events, both by the holder of a Lease, here.
//! Every API call cluster mode makes is fixed in `access`, so that the RBAC
//! rules under `deploy/` have one source of truth to be checked against.

pub mod access;
pub mod addresses;
pub mod events;
pub mod lease;
#[cfg(test)]
mod mock;
pub mod status;
