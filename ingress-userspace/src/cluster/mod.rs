//! Cluster mode (kube watchers, Ingress status, leader election, Events).
//! The watchers are not written yet; what they will ask the API server for
//! is fixed here first, so that the RBAC rules under `deploy/` have one
//! source of truth to be checked against.

pub mod access;
