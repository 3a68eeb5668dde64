//! ICMPv6 errors about translated flows (packet too big above all;
//! destination unreachable and time exceeded too), in programs of their own
//! reached by tail calls from the main XDP and TC programs.
//!
//! Wired into the main XDP program, the translation took its call chain
//! past the verifier's 512 bytes of stack and its instruction count to
//! 600-800k: a tail call starts a fresh program with a stack of its own and
//! its own instruction budget. The main programs call [`xdp_tail_call`] and
//! [`tc_tail_call`] from their entry functions (a tail call from a deeper
//! BPF-to-BPF frame would be limited to 256 bytes of caller stack).
//!
//! The ICMPv6 programs use only the state maps (connection and reverse
//! tables, counters), which a restarted agent adopts, and the SNAT global:
//! whichever agent's main program calls them, they see the same flows.

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action,
    macros::map,
    maps::{PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};
use ingress_common::{
    counters::Counter,
    icmp6::{
        ICMPV6_DEST_UNREACH, ICMPV6_PACKET_TOO_BIG, ICMPV6_TIME_EXCEEDED, QUOTED_DST, QUOTED_SRC,
        Rewrite6, reversed_key, rewrite_v6,
    },
    l4::{BACKEND_LOCAL, FlowKey, REV_REMOTE, is_v4_mapped},
    maps::{CALL_ICMP6, CALL_SLOTS},
    nat::{FrameMut, decrement_hop_limit_v6},
    parse::{Class, IPPROTO_ICMPV6, Parsed, parse},
};

use crate::{
    frame::PacketBounds,
    lb::{FLOWS, PACKET, REVNAT, SNAT_IPV6, forward, global},
    observe::PARSE_WINDOW,
    stats::bump,
};

/// The XDP programs the main XDP program tail-calls (slot
/// [`CALL_ICMP6`]: the ICMPv6 program); the agent fills it after loading.
#[map(name = "XDP_CALLS")]
pub static XDP_CALLS: ProgramArray = ProgramArray::with_max_entries(CALL_SLOTS, 0);

/// The same for TC egress (a program array serves one program type).
#[map(name = "TC_CALLS")]
pub static TC_CALLS: ProgramArray = ProgramArray::with_max_entries(CALL_SLOTS, 0);

/// An ICMPv6 error of a type that may be about a translated flow.
#[inline(always)]
fn is_icmp6_error<F: FrameMut>(frame: &F, p: &Parsed) -> bool {
    if p.class != Class::Ipv6Other || p.l4_proto != IPPROTO_ICMPV6 {
        return false;
    }
    matches!(
        frame.bytes::<2>(p.l4_offset).map(|b| b[0]),
        Some(ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED)
    )
}

/// The main XDP or TC program (`ctx`, its program array `calls`): an
/// ICMPv6 error goes to the ICMPv6 program in `calls`, which never returns
/// here. Returns false when the frame is no such error; true when it is
/// and the tail call failed (an empty slot: counted, and the caller passes
/// the frame).
#[inline(always)]
pub fn tail_call<C: EbpfContext, F: FrameMut>(
    ctx: &C,
    calls: &ProgramArray,
    frame: &F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> bool {
    if !is_icmp6_error(frame, p) {
        return false;
    }
    // SAFETY: on success control goes to the ICMPv6 program for good.
    unsafe { calls.tail_call(ctx, CALL_ICMP6) };
    bump(counters, Counter::L4Icmp6TailCallFailed);
    true
}

/// What [`decide`] found.
const PASS: u32 = 0;
/// Rewrite and let the stack deliver (a pod on this node).
const LOCAL: u32 = 1;
/// Rewrite, decrement the hop limit and forward by the FIB.
const FORWARD: u32 = 2;

/// The XDP ICMPv6 program: an error arriving on the uplink about a
/// translated flow.
///
/// - About a reply the client's side could not take (quoted: frontend ->
///   client, found in the connection table): to the pod, quoting what the
///   pod sent (pod -> client for a local pod, delivered by the stack; pod
///   -> node:SNAT port for a remote pod, forwarded from the node).
/// - About a packet sent on to a remote pod (quoted: node:SNAT port ->
///   pod, found in the reverse table): back to the client from the
///   frontend, quoting what the client sent.
///
/// Anything else passes untouched.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, counters: &PerCpuArray<u64>) -> u32 {
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let p = parse(&frame);
    let Some(state) = PACKET.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's value, used only within this program run; the key
    // and the decision are distinct fields.
    let (key, d) = unsafe { (&mut (*state).flow, &mut (*state).decision) };
    if !reversed_key(&frame, &p, key) {
        return xdp_action::XDP_PASS;
    }
    let mut rw = Rewrite6::default();
    match decide(key, counters, &mut rw) {
        LOCAL => {
            if apply(&mut frame, &p, &rw) != 0 {
                bump(counters, Counter::L4Icmp6Translated);
            }
            xdp_action::XDP_PASS
        }
        FORWARD => {
            if !decrement_hop_limit_v6(&mut frame, &p) || apply(&mut frame, &p, &rw) == 0 {
                return xdp_action::XDP_PASS;
            }
            bump(counters, Counter::L4Icmp6Translated);
            // The error goes to the new quoted source, from the new quoted
            // destination.
            d.src = rw.quoted_dst;
            d.dst = rw.quoted_src;
            forward(ctx, &mut frame, IPPROTO_ICMPV6, counters)
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// The rewrite, in a verifier frame of its own. 1 when rewritten.
#[inline(never)]
fn apply<F: FrameMut>(frame: &mut F, p: &Parsed, rw: &Rewrite6) -> u32 {
    rewrite_v6(frame, p, rw) as u32
}

/// The map side of [`xdp`], in a verifier frame of its own: which flow the
/// error is about and the quote's new endpoints.
#[inline(never)]
fn decide(key: &FlowKey, counters: &PerCpuArray<u64>, rw: &mut Rewrite6) -> u32 {
    // SAFETY: map values stay valid for the rest of the program run.
    if let Some(f) = unsafe { FLOWS.get(key) } {
        if is_v4_mapped(&f.backend) {
            return PASS;
        }
        rw.quoted_src = f.backend;
        rw.quoted_sport = u16::from_be(f.backend_port);
        if f.flags & BACKEND_LOCAL != 0 {
            rw.mask = QUOTED_SRC;
            return LOCAL;
        }
        let snat = global(&SNAT_IPV6);
        if snat == [0; 16] || f.snat_port == 0 {
            bump(counters, Counter::L4NoSnatAddress);
            return PASS;
        }
        rw.mask = QUOTED_SRC | QUOTED_DST;
        rw.quoted_dst = snat;
        rw.quoted_dport = u16::from_be(f.snat_port);
        return FORWARD;
    }
    // SAFETY: as above.
    let Some(r) = (unsafe { REVNAT.get(key) }) else {
        return PASS;
    };
    if r.flags & REV_REMOTE == 0 || is_v4_mapped(&r.frontend) || is_v4_mapped(&r.client) {
        return PASS;
    }
    rw.mask = QUOTED_SRC | QUOTED_DST;
    rw.quoted_src = r.client;
    rw.quoted_sport = u16::from_be(r.client_port);
    rw.quoted_dst = r.frontend;
    rw.quoted_dport = u16::from_be(r.frontend_port);
    FORWARD
}

/// The TC ICMPv6 program: a local pod's error (or the node's, for it)
/// about a translated flow (quoted: client -> pod) leaves from the
/// frontend, quoting what the client sent. 1 when rewritten.
#[inline(always)]
pub fn tc(ctx: &TcContext, counters: &PerCpuArray<u64>) -> u32 {
    let mut rw = Rewrite6::default();
    let frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let p = parse(&frame);
    if tc_find(&frame, &p, &mut rw) == 0 {
        return 0;
    }
    // Make the head writable, then look again: the pull moves the packet,
    // so earlier bounds checks no longer hold.
    let _ = ctx.pull_data(core::cmp::min(ctx.len(), PARSE_WINDOW));
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let p = parse(&frame);
    if p.class != Class::Ipv6Other || p.l4_proto != IPPROTO_ICMPV6 {
        return 0;
    }
    if apply(&mut frame, &p, &rw) == 0 {
        return 0;
    }
    bump(counters, Counter::L4Icmp6Translated);
    1
}

/// The lookup side of [`tc`], in a verifier frame of its own: 1 when the
/// error is about a reply from a local pod, with the rewrite in `rw`.
#[inline(never)]
fn tc_find<F: FrameMut>(frame: &F, p: &Parsed, rw: &mut Rewrite6) -> u32 {
    let Some(state) = PACKET.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's value, used only within this program run.
    let key = unsafe { &mut (*state).flow };
    if !reversed_key(frame, p, key) {
        return 0;
    }
    let key: &FlowKey = key;
    // SAFETY: the value is read at once.
    let Some(r) = (unsafe { REVNAT.get(key) }) else {
        return 0;
    };
    if r.flags & REV_REMOTE != 0 || is_v4_mapped(&r.frontend) {
        return 0;
    }
    rw.mask = QUOTED_DST;
    rw.quoted_dst = r.frontend;
    rw.quoted_dport = u16::from_be(r.frontend_port);
    1
}
