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

/// The ICMPv6 error programs, reached by tail calls (a program of their
/// own: wired into the main programs they exceeded the verifier's stack).
pub const XDP_ICMP6_PROGRAM: &str = "ingress_xdp_icmp6";
pub const TC_ICMP6_PROGRAM: &str = "ingress_tc_icmp6";
/// The program arrays the main programs tail-call through (one per program
/// type: the kernel ties a program array to one type). Pinned with the
/// state maps; the agent writes the slot after each load.
pub const XDP_CALLS: &str = "XDP_CALLS";
pub const TC_CALLS: &str = "TC_CALLS";
/// Slots of each program array.
pub const CALL_SLOTS: u32 = 4;
/// The slot of the ICMPv6 program in each program array.
pub const CALL_ICMP6: u32 = 0;
/// The slots of the L4 path's general and new-flow programs in
/// [`XDP_CALLS`].
pub const CALL_L4: u32 = 1;
pub const CALL_L4_NEW: u32 = 2;
/// The L4 path's general program, reached by a tail call from the main XDP
/// program for every frame to a frontend or SNAT port but the commonest (a
/// connection-table hit to a local IPv4 pod, handled in the main program):
/// a program of its own, verified apart, so that neither comes near the
/// verifier's million instructions.
pub const XDP_L4_PROGRAM: &str = "ingress_xdp_l4";
/// The new-flow program, tail-called by the general one for flows the
/// connection table does not know (Maglev, the SNAT port search): verified
/// apart again, with a single path leading in.
pub const XDP_L4_NEW_PROGRAM: &str = "ingress_xdp_l4_new";
