//! The L4 service path: frontend lookup, the connection table, Maglev,
//! DNAT on the way in (XDP) and reverse translation on the way out (TC).
//!
//! Built so far: IPv4 TCP and UDP to pods on this node. Backends on other
//! nodes (SNAT, FIB lookup, XDP_TX), IPv6, ICMP errors, affinity, source
//! ranges and RSTs for empty services come next; until then such frames
//! pass untranslated and are counted.

use aya_ebpf::{
    bindings::xdp_action,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use ingress_common::{
    counters::Counter,
    l4::{
        BACKEND_LOCAL, BackendValue, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_SERVICES,
        FlowKey, FlowValue, NO_BACKEND, RevValue, ServiceKey, ServiceValue, flow_hash,
        is_v4_mapped, v4_mapped,
    },
    maglev::DEFAULT_TABLE_SIZE,
    nat::{End, FrameMut, rewrite_v4},
    parse::{Class, Parsed},
};

use crate::stats::bump;

#[map(name = "L4_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "L4_BACKENDS")]
static BACKENDS: HashMap<u32, BackendValue> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[map(name = "L4_MAGLEV")]
static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAX_SERVICES * DEFAULT_TABLE_SIZE, 0);

#[map(name = "L4_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "L4_REVNAT")]
static REVNAT: LruHashMap<FlowKey, RevValue> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Slots per Maglev table; the agent sets it at load time.
#[unsafe(no_mangle)]
static MAGLEV_SIZE: u32 = DEFAULT_TABLE_SIZE;

/// The IPv4 5-tuple of a parsed TCP or UDP frame, as a flow key.
#[inline(always)]
fn flow_v4<F: FrameMut>(frame: &F, p: &Parsed) -> Option<FlowKey> {
    let src = frame.bytes::<4>(p.l3_offset + 12)?;
    let dst = frame.bytes::<4>(p.l3_offset + 16)?;
    Some(FlowKey {
        src: v4_mapped(src),
        dst: v4_mapped(dst),
        sport: p.src_port.to_be(),
        dport: p.dst_port.to_be(),
        proto: p.l4_proto,
        _pad: [0; 3],
    })
}

/// A new flow's backend: the Maglev slot of its hash.
#[inline(always)]
fn pick(svc: &ServiceValue, flow: &FlowKey) -> Option<BackendValue> {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let m = unsafe { core::ptr::read_volatile(&MAGLEV_SIZE) };
    if m == 0 {
        return None;
    }
    let slot = (flow_hash(flow) % m as u64) as u32;
    let id = *MAGLEV.get(svc.id.checked_mul(m)?.checked_add(slot)?)?;
    if id == NO_BACKEND {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { BACKENDS.get(&id) }.copied()
}

/// XDP: a frame to a service frontend is translated to its backend.
#[inline(always)]
pub fn ingress<F: FrameMut>(frame: &mut F, p: &Parsed, counters: &PerCpuArray<u64>) -> u32 {
    if !matches!(p.class, Class::Ipv4Tcp | Class::Ipv4Udp) {
        return xdp_action::XDP_PASS;
    }
    let Some(flow) = flow_v4(frame, p) else {
        return xdp_action::XDP_PASS;
    };
    let key = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else {
        return xdp_action::XDP_PASS;
    };
    bump(counters, Counter::L4ServiceHit);
    // SAFETY: the value is copied out at once.
    let known = unsafe { FLOWS.get(&flow) }.copied();
    let target = match known {
        Some(f) => {
            bump(counters, Counter::L4FlowHit);
            f
        }
        None => {
            let Some(b) = (if svc.backend_count > 0 {
                pick(&svc, &flow)
            } else {
                None
            }) else {
                bump(counters, Counter::L4NoBackend);
                return xdp_action::XDP_DROP;
            };
            let f = FlowValue {
                backend: b.addr,
                backend_port: b.port,
                flags: b.flags,
                _pad: 0,
            };
            let _ = FLOWS.insert(&flow, &f, 0);
            let reply = FlowKey {
                src: b.addr,
                dst: flow.src,
                sport: b.port,
                dport: flow.sport,
                proto: flow.proto,
                _pad: [0; 3],
            };
            let rev = RevValue {
                frontend: flow.dst,
                frontend_port: flow.dport,
                _pad: [0; 2],
            };
            let _ = REVNAT.insert(&reply, &rev, 0);
            bump(counters, Counter::L4NewFlow);
            f
        }
    };
    if target.flags & BACKEND_LOCAL == 0 || !is_v4_mapped(&target.backend) {
        bump(counters, Counter::L4RemoteNotYet);
        return xdp_action::XDP_PASS;
    }
    let a = target.backend;
    if rewrite_v4(
        frame,
        p,
        End::Destination,
        [a[12], a[13], a[14], a[15]],
        u16::from_be(target.backend_port),
    ) {
        bump(counters, Counter::L4DnatLocal);
    }
    xdp_action::XDP_PASS
}

/// Whether a TC egress frame is a reply that needs reverse translation;
/// the caller makes the packet writable, re-parses and calls [`egress`].
#[inline(always)]
pub fn reply_of<F: FrameMut>(frame: &F, p: &Parsed) -> Option<RevValue> {
    if !matches!(p.class, Class::Ipv4Tcp | Class::Ipv4Udp) {
        return None;
    }
    let reply = flow_v4(frame, p)?;
    // SAFETY: the value is copied out at once.
    unsafe { REVNAT.get(&reply) }.copied()
}

/// TC egress: a pod's reply gets the frontend back as its source.
#[inline(always)]
pub fn egress<F: FrameMut>(frame: &mut F, p: &Parsed, rev: &RevValue, counters: &PerCpuArray<u64>) {
    let a = rev.frontend;
    if is_v4_mapped(&a)
        && rewrite_v4(
            frame,
            p,
            End::Source,
            [a[12], a[13], a[14], a[15]],
            u16::from_be(rev.frontend_port),
        )
    {
        bump(counters, Counter::L4RevNat);
    }
}
