//! Names and sizes of the eBPF maps, as both sides must spell them.

/// Per-CPU packet counters of the XDP program, indexed by [`crate::counters::Counter`].
pub const XDP_COUNTERS: &str = "XDP_COUNTERS";
/// Per-CPU packet counters of the TC egress program, indexed like [`XDP_COUNTERS`].
pub const TC_COUNTERS: &str = "TC_COUNTERS";

/// Names of the programs inside the object file.
pub const XDP_PROGRAM: &str = "ingress_xdp";
pub const TC_PROGRAM: &str = "ingress_tc_egress";
/// The do-nothing XDP program, the reference for per-packet cost.
pub const XDP_NOOP_PROGRAM: &str = "xdp_noop";
