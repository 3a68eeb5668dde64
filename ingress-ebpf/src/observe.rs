//! Classify a frame and count what it is.

use aya_ebpf::{EbpfContext, maps::PerCpuArray};
use aya_log_ebpf::debug;
use ingress_common::{
    counters::Counter,
    parse::{self, Class, Frame, Parsed},
};

use crate::stats::bump;

/// Bytes from the start of the frame the parser may read: Ethernet, two VLAN
/// tags, IPv6 with extension headers and a TCP header fit in the common case.
pub const PARSE_WINDOW: u32 = 256;

/// Parses `frame`, bumps the total, its class and its flags, and returns
/// what it found.
#[inline(always)]
pub fn frame<C: EbpfContext, F: Frame>(ctx: &C, frame: &F, counters: &PerCpuArray<u64>) -> Parsed {
    let parsed = parse::parse(frame);
    bump(counters, Counter::Packets);
    bump(counters, Counter::of_class(parsed.class));
    if parsed.vlan {
        bump(counters, Counter::Vlan);
    }
    if parsed.ipv4_options {
        bump(counters, Counter::Ipv4Options);
    }
    if matches!(parsed.class, Class::MalformedIp) {
        debug!(
            ctx,
            "malformed IP header, l3 offset {}", parsed.l3_offset as u32
        );
    }
    parsed
}
