//! Entry points of the kernel programs. Each one is thin: it wraps the
//! context in a bounds-checked [`frame::PacketBounds`] and hands over to the
//! module that owns the concern.
#![no_std]
#![no_main]

mod frame;
mod icmp6;
mod lb;
mod observe;
mod stats;

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use ingress_common::parse::{Class, IPPROTO_ICMP};

use crate::frame::PacketBounds;

/// XDP on the node's uplink: parse and count; frames to a service frontend
/// go through the L4 path, everything else passes.
#[xdp]
pub fn ingress_xdp(ctx: XdpContext) -> u32 {
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let parsed = observe::frame(&ctx, &frame, &stats::XDP_COUNTERS);
    // ICMPv6 errors go to a program of their own (a tail call from this
    // entry function: see icmp6.rs); back here only when it failed.
    if icmp6::tail_call(
        &ctx,
        &icmp6::XDP_CALLS,
        &frame,
        &parsed,
        &stats::XDP_COUNTERS,
    ) {
        return aya_ebpf::bindings::xdp_action::XDP_PASS;
    }
    lb::ingress(&ctx, &mut frame, &parsed, &stats::XDP_COUNTERS)
}

/// Reached by a tail call from [`ingress_xdp`] for TCP and UDP frames to a
/// frontend or SNAT port that are not a connection-table hit to a local
/// IPv4 pod: new flows, remote pods, IPv6, closing segments, replies.
#[xdp]
pub fn ingress_xdp_l4(ctx: XdpContext) -> u32 {
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let parsed = ingress_common::parse::parse(&frame);
    lb::general(&ctx, &mut frame, &parsed, &stats::XDP_COUNTERS)
}

/// Reached by a tail call from [`ingress_xdp_l4`] for a flow the connection
/// table does not know: new flows, remote pods' replies, RSTs.
#[xdp]
pub fn ingress_xdp_l4_new(ctx: XdpContext) -> u32 {
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let parsed = ingress_common::parse::parse(&frame);
    lb::new_flow(&ctx, &mut frame, &parsed, &stats::XDP_COUNTERS)
}

/// Reached by a tail call from [`ingress_xdp`] for ICMPv6 errors: those
/// about translated flows are translated like the flow (packet too big
/// above all), the rest pass.
#[xdp]
pub fn ingress_xdp_icmp6(ctx: XdpContext) -> u32 {
    icmp6::xdp(&ctx, &stats::XDP_COUNTERS)
}

/// Reached by a tail call from [`ingress_tc_egress`] for ICMPv6 errors: a
/// local pod's error about a translated flow leaves from the frontend.
#[classifier]
pub fn ingress_tc_icmp6(ctx: TcContext) -> i32 {
    icmp6::tc(&ctx, &stats::TC_COUNTERS);
    TC_ACT_PIPE
}

/// A program that passes every frame and does nothing else: the reference
/// the per-packet cost bench compares the real program against. Never
/// attached.
#[xdp]
pub fn xdp_noop(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// TC egress on the same interfaces: count and pass (reverse translation
/// comes with the L4 path). `TC_ACT_PIPE` lets any later program in the TCX
/// chain run too.
#[classifier]
pub fn ingress_tc_egress(ctx: TcContext) -> i32 {
    // Headers of locally generated skbs may sit outside the linear part;
    // pull what the parser can need so direct packet access sees it.
    let want = core::cmp::min(ctx.len(), observe::PARSE_WINDOW);
    if ctx.data_end() - ctx.data() < want as usize {
        let _ = ctx.pull_data(want);
    }
    let frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let parsed = observe::frame(&ctx, &frame, &stats::TC_COUNTERS);
    if let Some(rev) = lb::reply_of(&frame, &parsed, &stats::TC_COUNTERS) {
        // Through the kernel's helpers (offsets from this parse stay valid:
        // nothing moves the headers).
        lb::egress(&ctx, &parsed, rev, &stats::TC_COUNTERS);
    } else if parsed.class == Class::Ipv4Other && parsed.l4_proto == IPPROTO_ICMP {
        lb::icmp_tc(&ctx, &stats::TC_COUNTERS);
    } else {
        // ICMPv6 errors: a tail call that returns only when it failed.
        icmp6::tail_call(&ctx, &icmp6::TC_CALLS, &frame, &parsed, &stats::TC_COUNTERS);
    }
    TC_ACT_PIPE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
