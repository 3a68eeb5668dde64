//! Cluster mode (kube watchers, Ingress status, leader election, Events).
//! The watchers live in `source::cluster`; every API call cluster mode
//! makes is fixed here, so that the RBAC rules under `deploy/` have one
//! source of truth to be checked against.

pub mod access;
