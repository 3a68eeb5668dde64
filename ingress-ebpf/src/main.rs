//! Entry points of the kernel programs. Each one is thin: it wraps the
//! context in a bounds-checked [`frame::PacketBounds`] and hands over to the
//! module that owns the concern.
#![no_std]
#![no_main]

mod frame;
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
    lb::ingress(&ctx, &mut frame, &parsed, &stats::XDP_COUNTERS)
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
