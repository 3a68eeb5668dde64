//! The L4 service path: frontend lookup, the connection table, Maglev,
//! DNAT on the way in (XDP) and reverse translation on the way out (TC).
//!
//! IPv4 and IPv6, TCP and UDP: to pods on this node (DNAT, then the stack
//! delivers; TC egress translates the reply) and to pods on other nodes
//! (DNAT + SNAT to the node address of the pod's family, TTL / hop-limit
//! decrement, FIB lookup, then XDP_TX or redirect; the reply is translated
//! back on XDP ingress). Also: ClientIP affinity, source ranges, RSTs for
//! services without endpoints, FIN/RST marking flows closing, a per-CPU
//! budget of new flows, and ICMPv4 errors about translated flows.
//!
//! The verifier allows 512 bytes of stack for the deepest call chain, so
//! the work is split into BPF-to-BPF calls, each rewrite in a frame of its
//! own per IP version, and the packet's flow key and decision live in a
//! per-CPU map value rather than on the stack.

// Map keys are passed by reference on purpose: by value they would be
// copied onto the 512-byte verifier stack first.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
        xdp_action,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect, bpf_xdp_adjust_tail,
    },
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use ingress_common::{
    counters::Counter,
    icmp::{self, OUTER_DST, OUTER_SRC, QUOTED_DST, QUOTED_SRC, Quoted, Rewrite},
    l4::{
        AffinityKey, AffinityValue, BACKEND_LOCAL, BACKEND_TERMINATING, BackendValue,
        CLOSE_TIMEOUT_S, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_SERVICES,
        DEFAULT_MAX_SOURCE_RANGES, DEFAULT_NEW_FLOW_RATE, DEFAULT_SNAT_PORT_MIN,
        DEFAULT_SNAT_PORT_SPAN, FlowKey, FlowKeyV4, FlowValue, NO_BACKEND, PORT_BACKEND,
        PORT_FRONTEND, RANGE_ID_BITS, REV_REMOTE, RangeKey, RevValue, SNAT_PROBES,
        SVC_CLIENT_AFFINITY, SVC_SOURCE_RANGES, ServiceKey, ServiceValue, SnatProbe, flow_hash,
        is_v4_mapped, snat_probe, v4_mapped,
    },
    maglev::DEFAULT_TABLE_SIZE,
    maps::{CALL_L4, CALL_L4_NEW},
    nat::{
        End, FrameMut, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, decrement_hop_limit_v6,
        decrement_ttl_v4, rewrite_v4, rewrite_v6, tcp_rst_v4, tcp_rst_v6,
    },
    parse::{Class, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IpVersion, Parsed, parse, read16},
};

use crate::{frame::PacketBounds, icmp6::XDP_CALLS, observe::PARSE_WINDOW, stats::bump};

#[map(name = "L4_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "L4_BACKENDS")]
static BACKENDS: HashMap<u32, BackendValue> = HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Memory-mappable (`BPF_F_MMAPABLE`): the agent writes the tables through
/// a shared mapping instead of millions of system calls.
#[map(name = "L4_MAGLEV")]
static MAGLEV: Array<u32> = Array::with_max_entries(
    DEFAULT_MAX_SERVICES * DEFAULT_TABLE_SIZE,
    aya_ebpf::bindings::BPF_F_MMAPABLE,
);

/// The connection table of IPv6 flows.
#[map(name = "L4_FLOWS")]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// The connection table of IPv4 flows: a 16-byte key, where the IPv6
/// table's is 40 bytes, which the kernel hashes and compares on every
/// lookup (most of what a connection-table hit costs).
#[map(name = "L4_FLOWS_V4")]
pub(crate) static FLOWS_V4: LruHashMap<FlowKeyV4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Records `flow` in the connection table of its IP version (an IPv4
/// flow's key is narrowed into `key4` first).
#[inline(always)]
fn record_flow(flow: &FlowKey, key4: &mut FlowKeyV4, value: &FlowValue) {
    let _ = if key4.narrow(flow) {
        FLOWS_V4.insert(key4, value, 0)
    } else {
        FLOWS.insert(flow, value, 0)
    };
}

#[map(name = "L4_REVNAT")]
pub(crate) static REVNAT: LruHashMap<FlowKey, RevValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Per-CPU scratch space for the keys and values a new flow writes: kept
/// off the 512-byte verifier stack.
#[repr(C)]
pub struct Scratch {
    key: ServiceKey,
    /// The new flow's hash, computed once by [`decide`].
    hash: u64,
    /// The backend id [`choose`] picked for the new flow.
    chosen: u32,
    affinity_key: AffinityKey,
    affinity: AffinityValue,
    range: Key<RangeKey>,
    flow: FlowValue,
    rev: RevValue,
    reply: FlowKey,
    /// A flow key narrowed for [`FLOWS_V4`] (see [`record_flow`]).
    flow4: FlowKeyV4,
}

#[map(name = "L4_PORTS")]
static PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

/// The flags of a port (host order).
#[inline(always)]
fn port_flags(port: u16) -> u8 {
    PORTS.get(port as u32).copied().unwrap_or(0)
}

/// Whether a destination port can concern the L4 path: a frontend port, or
/// a SNAT port a remote pod's reply comes back to.
#[inline(always)]
fn may_concern_l4(dport: u16) -> bool {
    let (min, span) = (global(&SNAT_PORT_MIN), global(&SNAT_PORT_SPAN));
    port_flags(dport) & PORT_FRONTEND != 0 || dport.wrapping_sub(min) < span
}

#[map(name = "L4_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "L4_SOURCE_RANGES")]
static SOURCE_RANGES: LpmTrie<RangeKey, u8> =
    LpmTrie::with_max_entries(DEFAULT_MAX_SOURCE_RANGES, 0);

#[map(name = "L4_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The frame in hand: its flow key and what is decided for it, kept off
/// the verifier stack (a map of its own, so that references to it never
/// overlap the scratch space the steps use).
#[repr(C)]
pub struct PacketState {
    pub(crate) flow: FlowKey,
    /// An IPv4 frame's key in [`FLOWS_V4`], written first: the hit path
    /// needs no other.
    pub(crate) flow4: FlowKeyV4,
    pub(crate) decision: Decision,
}

#[map(name = "L4_PACKET")]
pub(crate) static PACKET: PerCpuArray<PacketState> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's new-flow budget: the second it counts and the flows recorded
/// in it.
#[repr(C)]
pub struct NewFlowWindow {
    start_ns: u64,
    count: u32,
    _pad: u32,
}

#[map(name = "L4_NEW_FLOW_WINDOW")]
static NEW_FLOW_WINDOW: PerCpuArray<NewFlowWindow> = PerCpuArray::with_max_entries(1, 0);

/// New flows one CPU records per second (0: no limit); the agent sets it.
#[unsafe(no_mangle)]
static NEW_FLOW_RATE: u32 = DEFAULT_NEW_FLOW_RATE;

/// Seconds a closed flow keeps its entries; the agent sets it.
#[unsafe(no_mangle)]
static CLOSE_TIMEOUT: u32 = CLOSE_TIMEOUT_S;

/// Whether this CPU may record one more new flow in the current second.
/// Past the budget new flows are refused (and counted), so a SYN flood
/// cannot push the established flows out of the connection table.
#[inline(always)]
fn admit_new_flow() -> bool {
    let limit = global(&NEW_FLOW_RATE);
    if limit == 0 {
        return true;
    }
    let Some(w) = NEW_FLOW_WINDOW.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's slot of a live map value.
    let w = unsafe { &mut *w };
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(w.start_ns) >= 1_000_000_000 {
        w.start_ns = now;
        w.count = 0;
    }
    if w.count >= limit {
        return false;
    }
    w.count += 1;
    true
}

/// The monotonic clock in seconds, never 0 (0 marks an open flow).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: reads the monotonic clock.
    let s = (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32;
    s.max(1)
}

/// Whether a TCP segment ends its connection (FIN or RST).
#[inline(always)]
fn closes(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Marks a flow (`f`, its connection-table entry as the caller found it)
/// and its reverse entry closing at the first FIN or RST from the client,
/// in a verifier frame of its own.
#[inline(never)]
fn close_flow(flow: &FlowKey, f: *mut FlowValue, counters: &PerCpuArray<u64>) -> u32 {
    // SAFETY: a map value, valid for the rest of the run.
    let f = unsafe { &mut *f };
    if f.closed_at != 0 {
        return 0;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let s = unsafe { &mut *s };
    let now = now_s();
    f.closed_at = now;
    s.reply.src = f.backend;
    s.reply.sport = f.backend_port;
    s.reply.proto = flow.proto;
    s.reply._pad = [0; 3];
    if f.snat_port != 0 {
        s.reply.dst = snat_address(&f.backend);
        s.reply.dport = f.snat_port;
    } else {
        s.reply.dst = flow.src;
        s.reply.dport = flow.sport;
    }
    if let Some(r) = REVNAT.get_ptr_mut(&s.reply) {
        // SAFETY: as above.
        unsafe { (*r).closed_at = now };
    }
    bump(counters, Counter::L4FlowClosing);
    1
}

/// Marks a reply's reverse entry and its flow closing at the first FIN or
/// RST from the pod (both hooks call it).
#[inline(never)]
pub fn close_reply(reply: &FlowKey, counters: &PerCpuArray<u64>) -> u32 {
    let Some(r) = REVNAT.get_ptr_mut(reply) else {
        return 0;
    };
    // SAFETY: this map value stays valid for the rest of the run.
    let r = unsafe { &mut *r };
    if r.closed_at != 0 {
        return 0;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let s = unsafe { &mut *s };
    let now = now_s();
    r.closed_at = now;
    // The flow, in the table of its IP version; each arm ends with its
    // store, so that the verifier's paths meet again right after.
    if is_v4_mapped(&r.client) {
        s.flow4.src = v4_of(&r.client);
        s.flow4.dst = v4_of(&r.frontend);
        s.flow4.sport = r.client_port;
        s.flow4.dport = r.frontend_port;
        s.flow4.proto = reply.proto;
        s.flow4._pad = [0; 3];
        if let Some(f) = FLOWS_V4.get_ptr_mut(&s.flow4) {
            // SAFETY: as above.
            unsafe { (*f).closed_at = now };
        }
    } else {
        s.reply.src = r.client;
        s.reply.dst = r.frontend;
        s.reply.sport = r.client_port;
        s.reply.dport = r.frontend_port;
        s.reply.proto = reply.proto;
        s.reply._pad = [0; 3];
        if let Some(f) = FLOWS.get_ptr_mut(&s.reply) {
            // SAFETY: as above.
            unsafe { (*f).closed_at = now };
        }
    }
    bump(counters, Counter::L4FlowClosing);
    1
}

/// Slots per Maglev table; the agent sets it at load time.
#[unsafe(no_mangle)]
static MAGLEV_SIZE: u32 = DEFAULT_TABLE_SIZE;

/// The node's IPv4 address used as the source towards remote pods (bytes in
/// network order); zero means "none configured".
#[unsafe(no_mangle)]
static SNAT_IPV4: [u8; 4] = [0; 4];
/// The node's IPv6 address towards remote pods; all zero means "none".
#[unsafe(no_mangle)]
pub(crate) static SNAT_IPV6: [u8; 16] = [0; 16];
#[unsafe(no_mangle)]
static SNAT_PORT_MIN: u16 = DEFAULT_SNAT_PORT_MIN;
#[unsafe(no_mangle)]
static SNAT_PORT_SPAN: u16 = DEFAULT_SNAT_PORT_SPAN;

#[inline(always)]
pub(crate) fn global<T: Copy>(g: &T) -> T {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(g) }
}

/// The source address towards a remote backend: the node's address of the
/// backend's family, as the maps store it; all zero when none is set.
#[inline(always)]
fn snat_address(backend: &[u8; 16]) -> [u8; 16] {
    if is_v4_mapped(backend) {
        let a = global(&SNAT_IPV4);
        if a == [0; 4] { [0; 16] } else { v4_mapped(a) }
    } else {
        global(&SNAT_IPV6)
    }
}

/// Writes an IPv4 flow's addresses, IPv4-mapped, into `key`: per address
/// an 8-byte zero, the 4-byte `::ffff` marker and the 4-byte address. Not as
/// 16-byte values: this target turns a run of zero stores into a call of a
/// byte-loop `memset` (and a 16-byte copy into a byte-loop `memmove`), which
/// on the connection-table hit path cost more than the stores themselves;
/// volatile keeps them stores, and `FlowKey`'s 8-byte alignment lets them
/// be wider than a byte.
#[inline(always)]
fn put_v4_addresses(key: &mut FlowKey, src: [u8; 4], dst: [u8; 4]) {
    const MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let s = key.src.as_mut_ptr();
    let d = key.dst.as_mut_ptr();
    // SAFETY: `FlowKey` is aligned to 8 and `src`, `dst` lie at offsets 0
    // and 16, so each write below is aligned to its size and stays inside
    // its 16-byte field.
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        (s as *mut u64).write_volatile(0);
        (s.add(8) as *mut u32).write_volatile(MAPPED);
        (s.add(12) as *mut u32).write_volatile(u32::from_ne_bytes(src));
        (d as *mut u64).write_volatile(0);
        (d.add(8) as *mut u32).write_volatile(MAPPED);
        (d.add(12) as *mut u32).write_volatile(u32::from_ne_bytes(dst));
    }
}

/// Writes a key's protocol and zeroes its padding with one 4-byte store
/// (see [`put_v4_addresses`]).
#[inline(always)]
fn put_proto(key: &mut FlowKey, proto: u8) {
    let p = core::ptr::addr_of_mut!(key.proto);
    // SAFETY: `proto` and the 3 padding bytes after it are the key's last
    // 4 bytes, at offset 36 of an 8-aligned key: the write is aligned and
    // stays inside the key.
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        (p as *mut u32).write_volatile(u32::from_ne_bytes([proto, 0, 0, 0]));
    }
}

/// Writes the 5-tuple of a parsed TCP or UDP frame (IPv4 or IPv6) into
/// `key`, field by field; false when the addresses are not in the frame.
#[inline(always)]
fn flow_key<F: FrameMut>(frame: &F, p: &Parsed, key: &mut FlowKey) -> bool {
    match p.ip {
        IpVersion::V4 => {
            let Some(src) = frame.bytes::<4>(p.l3_offset + 12) else {
                return false;
            };
            let Some(dst) = frame.bytes::<4>(p.l3_offset + 16) else {
                return false;
            };
            put_v4_addresses(key, src, dst);
        }
        IpVersion::V6 => {
            // In 4-byte chunks: a 16-byte copy is a byte-loop call here.
            if !read16(frame, p.l3_offset + 8, &mut key.src)
                || !read16(frame, p.l3_offset + 24, &mut key.dst)
            {
                return false;
            }
        }
        IpVersion::None => return false,
    }
    key.sport = p.src_port.to_be();
    key.dport = p.dst_port.to_be();
    put_proto(key, p.l4_proto);
    true
}

/// Writes the 5-tuple of a parsed IPv4 TCP or UDP frame into `key` with
/// 4-byte stores (see [`put_v4_addresses`]); false when the addresses are
/// not in the frame.
#[inline(always)]
fn flow_key_v4<F: FrameMut>(frame: &F, p: &Parsed, key: &mut FlowKeyV4) -> bool {
    let Some(src) = frame.bytes::<4>(p.l3_offset + 12) else {
        return false;
    };
    let Some(dst) = frame.bytes::<4>(p.l3_offset + 16) else {
        return false;
    };
    let k = (key as *mut FlowKeyV4).cast::<u32>();
    let (sport, dport) = (
        p.src_port.to_be().to_ne_bytes(),
        p.dst_port.to_be().to_ne_bytes(),
    );
    // SAFETY: `FlowKeyV4` is 16 bytes aligned to 8: src, dst, the two
    // ports, then the protocol and its padding, each 4-byte word aligned
    // and inside the key.
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        k.write_volatile(u32::from_ne_bytes(src));
        k.add(1).write_volatile(u32::from_ne_bytes(dst));
        k.add(2)
            .write_volatile(u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]));
        k.add(3)
            .write_volatile(u32::from_ne_bytes([p.l4_proto, 0, 0, 0]));
    }
    true
}

/// Writes the IPv4 flow `key4` into `key` (addresses IPv4-mapped), with
/// the stores of [`put_v4_addresses`].
#[inline(always)]
fn widen_key(key4: &FlowKeyV4, key: &mut FlowKey) {
    put_v4_addresses(key, key4.src, key4.dst);
    key.sport = key4.sport;
    key.dport = key4.dport;
    put_proto(key, key4.proto);
}

/// The flags byte of a TCP header (read as the 2-byte word it shares with
/// the data offset: a 1-byte read at a variable offset compiles to a bounds
/// check the verifier does not follow).
#[inline(always)]
fn tcp_flags_of<F: FrameMut>(frame: &F, p: &Parsed) -> u8 {
    frame.bytes::<2>(p.l4_offset + 12).map_or(0, |b| b[1])
}

/// The TCP flags of a TCP segment; 0 for UDP.
#[inline(always)]
fn tcp_flags_of_l4<F: FrameMut>(frame: &F, p: &Parsed) -> u8 {
    if p.l4_proto == IPPROTO_TCP {
        tcp_flags_of(frame, p)
    } else {
        0
    }
}

/// A TCP or UDP frame of either IP version (fragments are classed apart).
#[inline(always)]
fn is_tcp_udp(p: &Parsed) -> bool {
    matches!(
        p.class,
        Class::Ipv4Tcp | Class::Ipv4Udp | Class::Ipv6Tcp | Class::Ipv6Udp
    )
}

/// A new flow's backend: the Maglev slot of its hash (read in place), with
/// the backend's id.
#[inline(always)]
fn pick(svc: &ServiceValue, hash: u64) -> Option<(u32, &'static BackendValue)> {
    let m = global(&MAGLEV_SIZE);
    if m == 0 {
        return None;
    }
    let slot = (hash % m as u64) as u32;
    let id = *MAGLEV.get(svc.id.checked_mul(m)?.checked_add(slot)?)?;
    if id == NO_BACKEND {
        return None;
    }
    // SAFETY: map values stay valid for the rest of the program run.
    unsafe { BACKENDS.get(&id) }.map(|b| (id, b))
}

/// Chooses a new flow's backend (in a verifier frame of its own) and leaves
/// its id in the scratch space for [`start_flow`]; returns the id, or
/// `NO_BACKEND`.
#[inline(never)]
fn choose(flow: &FlowKey, counters: &PerCpuArray<u64>) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return NO_BACKEND;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let s = unsafe { &mut *s };
    // SAFETY: map values stay valid for the rest of the program run.
    let Some(svc) = (unsafe { SERVICES.get(&s.key) }) else {
        return NO_BACKEND;
    };
    if !admit_new_flow() {
        bump(counters, Counter::L4NewFlowRefused);
        return REFUSED;
    }
    s.chosen = pick_with_affinity(svc, flow, s, counters).unwrap_or(NO_BACKEND);
    s.chosen
}

/// With ClientIP affinity, a client's new flows go to the backend its last
/// flow got while that is recent (the Service's timeout), still the same pod
/// and not terminating; otherwise Maglev picks and the pin moves.
#[inline(always)]
fn pick_with_affinity(
    svc: &ServiceValue,
    flow: &FlowKey,
    s: &mut Scratch,
    counters: &PerCpuArray<u64>,
) -> Option<u32> {
    if svc.flags & SVC_CLIENT_AFFINITY == 0 {
        return pick(svc, s.hash).map(|(id, _)| id);
    }
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    s.affinity_key.client = flow.src;
    s.affinity_key.service = svc.id;
    if let Some(pin) = AFFINITY.get_ptr_mut(&s.affinity_key) {
        // SAFETY: this map value stays valid for the rest of the run.
        let pin = unsafe { &mut *pin };
        let fresh = now.saturating_sub(pin.last_ns) < svc.affinity_timeout as u64 * 1_000_000_000;
        // SAFETY: as above.
        if let Some(b) = unsafe { BACKENDS.get(&pin.backend_id) }
            && fresh
            && b.addr == pin.addr
            && b.port == pin.port
            && b.flags & BACKEND_TERMINATING == 0
        {
            pin.last_ns = now;
            bump(counters, Counter::L4AffinityHit);
            return Some(pin.backend_id);
        }
    }
    let (id, b) = pick(svc, s.hash)?;
    s.affinity.addr = b.addr;
    s.affinity.backend_id = id;
    s.affinity.port = b.port;
    s.affinity._pad = 0;
    s.affinity.last_ns = now;
    let _ = AFFINITY.insert(&s.affinity_key, &s.affinity, 0);
    Some(id)
}

/// What the XDP program does with a frame, decided from the maps alone (no
/// packet access), so that the decision can live in a verifier stack frame
/// of its own while the rewrite stays where the packet offsets are known.
/// `repr(C)`: `dst` is at offset 4, aligned to 4 (see [`to_local`]).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Decision {
    action: Action,
    /// The new destination (DNAT, or the client for a reply); IPv4 as
    /// IPv4-mapped.
    pub(crate) dst: [u8; 16],
    dst_port: u16,
    /// The new source (SNAT, or the frontend for a reply).
    pub(crate) src: [u8; 16],
    src_port: u16,
    /// A FIN or RST closes the flow: which entry to mark (`CLOSE_*`). The
    /// caller marks it, so that the marking is not a third call deep.
    close: u8,
}

const CLOSE_NONE: u8 = 0;
const CLOSE_FLOW: u8 = 1;
const CLOSE_REPLY: u8 = 2;

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Action {
    Pass,
    Drop,
    /// DNAT, then the stack delivers to the local pod.
    Local,
    /// DNAT + SNAT (or a reply's reverse translation), TTL, FIB, forward.
    Forward,
    /// No backend: TCP is answered with a RST, anything else dropped.
    Reset,
}

/// The map side of the L4 path for one TCP/UDP flow, in a frame of its
/// own: frontend lookup, then the connection table. A new flow returns
/// `NEW_FLOW` and [`start_flow`] takes over (in a frame of its own too: the
/// verifier allows 512 bytes for a whole call chain). The decision is
/// written through `out` (a struct returned by value would hand a stack
/// pointer back, which the verifier refuses); the action is the return
/// value.
///
/// `hit` is the flow's connection-table entry, looked up by the caller
/// (which handles the commonest hit, to a local pod, itself).
#[inline(never)]
fn decide(
    flow: &FlowKey,
    hit: Option<&FlowValue>,
    tcp_flags: u8,
    counters: &PerCpuArray<u64>,
    out: &mut Decision,
) -> u32 {
    // The connection table first: a flow is recorded only once its service
    // admitted it (source ranges included), so a known flow goes to its
    // backend without the service lookup (the fast path: one hash lookup).
    if let Some(f) = hit
        && !reopened(f, tcp_flags)
    {
        bump(counters, Counter::L4FlowHit);
        to_backend(f, counters, out);
        if closes(tcp_flags) && f.closed_at == 0 {
            out.close = CLOSE_FLOW;
        }
        return out.action as u32;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Action::Pass as u32;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let scratch = unsafe { &mut *scratch };
    scratch.key = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    // SAFETY: as above.
    let Some(svc) = (unsafe { SERVICES.get(&scratch.key) }) else {
        reply_from_remote(flow, counters, out);
        if out.action == Action::Forward && closes(tcp_flags) {
            out.close = CLOSE_REPLY;
        }
        return out.action as u32;
    };
    bump(counters, Counter::L4ServiceHit);
    if svc.flags & SVC_SOURCE_RANGES != 0 {
        scratch.range.prefix_len = RANGE_ID_BITS + 128;
        scratch.range.data = RangeKey {
            service: svc.id.to_be_bytes(),
            addr: flow.src,
        };
        if SOURCE_RANGES.get(&scratch.range).is_none() {
            bump(counters, Counter::L4SourceRangeDrop);
            return Action::Drop as u32;
        }
    }
    if svc.backend_count == 0 {
        bump(counters, Counter::L4NoBackend);
        return Action::Reset as u32;
    }
    scratch.hash = flow_hash(flow);
    NEW_FLOW
}

/// A SYN on the tuple of a closed flow is a new connection (the client
/// reused its source port): it chooses afresh and overwrites the old
/// entries. Kept on the old entries, it would go out from the old SNAT
/// port, which is free again SNAT_REUSE_S after the close and may carry
/// another client's flow by now (two connections on one tuple at the pod,
/// replies to the wrong client), and it would stay marked closed: never
/// marked again, swept while open.
#[inline(always)]
fn reopened(f: &FlowValue, tcp_flags: u8) -> bool {
    f.closed_at != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// What [`decide`] returns for a flow the connection table does not know.
const NEW_FLOW: u32 = 100;
/// What [`choose`] returns for a new flow over this CPU's budget.
const REFUSED: u32 = u32::MAX - 1;

/// The translation towards a flow's recorded backend, written field by
/// field into `out` (a whole struct would be built on the stack first).
#[inline(always)]
fn to_backend(target: &FlowValue, counters: &PerCpuArray<u64>, out: &mut Decision) {
    if target.flags & BACKEND_LOCAL != 0 {
        to_local(target, out);
        return;
    }
    out.dst = target.backend;
    out.dst_port = u16::from_be(target.backend_port);
    out.src = snat_address(&target.backend);
    if out.src == [0; 16] || target.snat_port == 0 {
        bump(counters, Counter::L4NoSnatAddress);
        out.action = Action::Pass;
        return;
    }
    bump(counters, Counter::L4DnatRemote);
    out.action = Action::Forward;
    out.src_port = u16::from_be(target.snat_port);
}

// What the aligned stores of `put_v4_addresses`, `put_proto` and
// `to_local` rely on.
const _: () = {
    assert!(core::mem::align_of::<FlowKey>() == 8);
    assert!(core::mem::offset_of!(FlowKey, src) == 0);
    assert!(core::mem::offset_of!(FlowKey, dst) == 16);
    assert!(core::mem::offset_of!(FlowKey, proto) == 36);
    assert!(core::mem::align_of::<FlowKeyV4>() == 8);
    assert!(core::mem::size_of::<FlowKeyV4>() == 16);
    assert!(core::mem::offset_of!(FlowKeyV4, dst) == 4);
    assert!(core::mem::offset_of!(FlowKeyV4, sport) == 8);
    assert!(core::mem::offset_of!(FlowKeyV4, dport) == 10);
    assert!(core::mem::offset_of!(FlowKeyV4, proto) == 12);
    assert!(core::mem::align_of::<FlowValue>() >= 4);
    assert!(core::mem::offset_of!(FlowValue, backend) == 0);
    assert!(core::mem::align_of::<Decision>() >= 4);
    assert!(core::mem::offset_of!(Decision, dst) == 4);
};

/// The translation towards a flow's backend on this node (DNAT only).
/// The address goes as four 4-byte copies: inlined into [`service_path`],
/// whose decision is reached through a raw pointer, a 16-byte assignment
/// becomes a call of this target's byte-loop `memmove`.
#[inline(always)]
fn to_local(target: &FlowValue, out: &mut Decision) {
    let from = target.backend.as_ptr() as *const u32;
    let to = out.dst.as_mut_ptr() as *mut u32;
    // SAFETY: `FlowValue` (a `u32` field) and `Decision` (`repr(C)`, a
    // `u32`-sized first field) are aligned to 4, with `backend` at offset 0
    // and `dst` at offset 4: every access is aligned and inside its field.
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        to.write_volatile(from.read());
        to.add(1).write_volatile(from.add(1).read());
        to.add(2).write_volatile(from.add(2).read());
        to.add(3).write_volatile(from.add(3).read());
    }
    out.dst_port = u16::from_be(target.backend_port);
    out.action = Action::Local;
}

/// XDP: a frame to a service frontend is translated to its backend; a
/// remote pod's reply to a translated flow is translated back. A frame of
/// its own: the ICMP path beside it has its own too, and the verifier
/// counts only the deepest chain against its 512 bytes.
#[inline(always)]
pub fn ingress<F: FrameMut>(
    ctx: &XdpContext,
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> u32 {
    if p.class == Class::Ipv4Other && p.l4_proto == IPPROTO_ICMP {
        // The forward step is called from here, not from the ICMP path's
        // frame: the verifier's 512 bytes are for the deepest chain.
        let Some(state) = PACKET.get_ptr_mut(0) else {
            return xdp_action::XDP_PASS;
        };
        // SAFETY: this CPU's value, used only within this program run.
        let d = unsafe { &mut (*state).decision };
        if icmp_ingress(frame, p, counters, d) == Action::Forward as u32 {
            return forward(ctx, frame, IPPROTO_ICMP, counters);
        }
        return xdp_action::XDP_PASS;
    }
    let Some(state) = l4_frame_state(p) else {
        return xdp_action::XDP_PASS;
    };
    if p.ip == IpVersion::V4 && local_hit_v4(frame, p, state, counters) {
        return xdp_action::XDP_PASS;
    }
    // Everything else goes the general way, in a program of its own.
    // SAFETY: on success control goes to the general program for good.
    unsafe { XDP_CALLS.tail_call(ctx, CALL_L4) };
    bump(counters, Counter::L4TailCallFailed);
    xdp_action::XDP_PASS
}

/// The commonest frame, an established IPv4 flow to a pod on this node that
/// neither closes nor reopens it, translated in the main program: one
/// lookup with the 16-byte IPv4 key, the rewrite, no BPF-to-BPF call (with
/// the kernel's return thunks, speculation mitigations, a return is dear)
/// and no tail call. True when it was that frame (translated).
#[inline(always)]
fn local_hit_v4<F: FrameMut>(
    frame: &mut F,
    p: &Parsed,
    state: *mut PacketState,
    counters: &PerCpuArray<u64>,
) -> bool {
    // SAFETY: this CPU's packet state, used only within this program run.
    let key4 = unsafe { &mut (*state).flow4 };
    if !flow_key_v4(frame, p, key4) {
        return false;
    }
    let key4: &FlowKeyV4 = key4;
    // SAFETY: map values stay valid for the rest of the program run.
    let Some(f) = (unsafe { FLOWS_V4.get(key4) }) else {
        return false;
    };
    if f.flags & BACKEND_LOCAL == 0 {
        return false;
    }
    let tcp_flags = tcp_flags_of_l4(frame, p);
    if closes(tcp_flags) || reopened(f, tcp_flags) {
        return false;
    }
    bump(counters, Counter::L4FlowHit);
    let port = u16::from_be(f.backend_port);
    if rewrite_v4(frame, p, End::Destination, v4_of(&f.backend), port) {
        bump(counters, Counter::L4DnatLocal);
    }
    true
}

/// The packet state for a TCP or UDP frame to a frontend or SNAT port,
/// the frames the L4 programs take; `None` for any other frame. Fragments
/// are classed apart already; IPv4 with options passes untouched by rule
/// (rare on the wire, and often a probe). The flow key lives in the state,
/// a per-CPU map value, not on the stack: with IPv6 addresses it would take
/// a large share of the verifier's 512 bytes.
#[inline(always)]
fn l4_frame_state(p: &Parsed) -> Option<*mut PacketState> {
    if !is_tcp_udp(p) || p.ipv4_options || !may_concern_l4(p.dst_port) {
        return None;
    }
    PACKET.get_ptr_mut(0)
}

/// The L4 path's general program (reached by a tail call from the main XDP
/// program, which counted the frame): a TCP or UDP frame of a flow the
/// connection table knows (to a remote pod, IPv6, a closing segment);
/// anything else goes on to [`new_flow`]. It parses the frame again and
/// reads nothing the main program left: an agent's general program may be
/// tail-called by the main program of the agent before it (a shared
/// program array) until the links swap.
#[inline(always)]
pub fn general<F: FrameMut>(
    ctx: &XdpContext,
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> u32 {
    let Some(state) = l4_frame_state(p) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's value, used only within this program run; the two
    // keys are distinct fields.
    let (flow, key4) = unsafe { (&mut (*state).flow, &mut (*state).flow4) };
    // One branch on the IP version, whose arms meet again only at
    // `service_path`; the general way reads 16-byte addresses whatever the
    // version.
    let hit = if p.ip == IpVersion::V4 {
        if !flow_key_v4(frame, p, key4) {
            return xdp_action::XDP_PASS;
        }
        widen_key(key4, flow);
        FLOWS_V4.get_ptr_mut(key4)
    } else {
        if !flow_key(frame, p, flow) {
            return xdp_action::XDP_PASS;
        }
        let flow: &FlowKey = flow;
        FLOWS.get_ptr_mut(flow)
    };
    // A flow the table does not know (or a new connection on a closed
    // one's tuple) goes on to the new-flow program: a program of its own,
    // so that its steps (Maglev, the SNAT port search) are verified once,
    // not once per path that leads here.
    // SAFETY: map values stay valid for the rest of the program run.
    let known = hit.is_some_and(|f| !reopened(unsafe { &*f }, tcp_flags_of_l4(frame, p)));
    if !known {
        // SAFETY: on success control goes to the new-flow program for good.
        unsafe { XDP_CALLS.tail_call(ctx, CALL_L4_NEW) };
        bump(counters, Counter::L4TailCallFailed);
        return xdp_action::XDP_PASS;
    }
    match service_path::<F, false>(ctx, frame, p, counters, hit) {
        // Called from here: the RST's frame is the largest, and the
        // verifier's 512 bytes are for the deepest chain.
        ANSWER_WITH_RESET => reset(ctx, frame, p, counters),
        verdict => verdict,
    }
}

/// The L4 path's new-flow program (reached by a tail call from the general
/// program): a frame whose flow the connection table does not know, or a
/// SYN on a closed flow's tuple: a new flow to a service (source ranges,
/// Maglev, the SNAT port), a remote pod's reply, or a RST for a service
/// without endpoints. Self-contained like the general program.
#[inline(always)]
pub fn new_flow<F: FrameMut>(
    ctx: &XdpContext,
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> u32 {
    let Some(state) = l4_frame_state(p) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's value, used only within this program run.
    let flow = unsafe { &mut (*state).flow };
    if !flow_key(frame, p, flow) {
        return xdp_action::XDP_PASS;
    }
    match service_path::<F, true>(ctx, frame, p, counters, None) {
        ANSWER_WITH_RESET => reset(ctx, frame, p, counters),
        verdict => verdict,
    }
}

/// What [`service_path`] returns when the frame is to be answered with a
/// RST (no XDP verdict has this value).
const ANSWER_WITH_RESET: u32 = 1000;

/// A TCP or UDP frame to a frontend port (or a SNAT port): the connection
/// table or a new flow, then the rewrite. The caller wrote the flow key
/// into the packet state and looked it up in the connection table (`hit`).
#[inline(never)]
fn service_path<F: FrameMut, const NEW: bool>(
    ctx: &XdpContext,
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
    hit: Option<*mut FlowValue>,
) -> u32 {
    // The flow key and the decision live in a per-CPU map value, not on
    // the stack: with IPv6 addresses they would take a third of the
    // verifier's 512 bytes.
    let Some(state) = PACKET.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's value, used only within this program run; the key
    // and the decision are distinct fields.
    let (flow, d) = unsafe { (&(*state).flow, &mut (*state).decision) };
    // Only what every path reads: the addresses are written by the path
    // that uses them (zeroing the whole decision would be a byte loop).
    d.action = Action::Pass;
    d.close = CLOSE_NONE;
    // The action comes back as the return value (used here, so LLVM keeps
    // it in r0); the addresses come through `d`.
    const LOCAL: u32 = Action::Local as u32;
    const FORWARD: u32 = Action::Forward as u32;
    const DROP: u32 = Action::Drop as u32;
    const RESET: u32 = Action::Reset as u32;
    let tcp_flags = tcp_flags_of_l4(frame, p);
    // SAFETY: map values stay valid for the rest of the program run.
    let found = hit.map(|f| unsafe { &*f });
    let mut action = match found {
        // An established flow to a pod on this node (over IPv6, or a
        // segment that closes it: `ingress` translates the rest) is decided
        // here rather than in `decide`'s frame, one call fewer.
        Some(f) if f.flags & BACKEND_LOCAL != 0 && !reopened(f, tcp_flags) => {
            bump(counters, Counter::L4FlowHit);
            to_local(f, d);
            if closes(tcp_flags) && f.closed_at == 0 {
                d.close = CLOSE_FLOW;
            }
            LOCAL
        }
        _ => decide(flow, found, tcp_flags, counters, d),
    };
    match (d.close, hit) {
        // Set only for a flow the table holds (`hit`).
        (CLOSE_FLOW, Some(f)) => {
            close_flow(flow, f, counters);
        }
        (CLOSE_REPLY, _) => {
            close_reply(flow, counters);
        }
        _ => {}
    }
    // Only the new-flow program has the new-flow steps: the general
    // program sends everything that can be new there before this.
    if !NEW && action == NEW_FLOW {
        return xdp_action::XDP_PASS;
    }
    if action == NEW_FLOW {
        action = match choose(flow, counters) {
            NO_BACKEND => {
                bump(counters, Counter::L4NoBackend);
                Action::Reset as u32
            }
            REFUSED => Action::Drop as u32,
            _ => start_flow(flow, counters, d),
        };
    }
    // Each rewrite runs in a verifier frame of its own (IPv6 addresses
    // make them large); only the deepest chain counts against 512 bytes.
    match action {
        DROP => xdp_action::XDP_DROP,
        RESET => ANSWER_WITH_RESET,
        LOCAL => {
            if dnat(frame, p, d) != 0 {
                bump(counters, Counter::L4DnatLocal);
            }
            xdp_action::XDP_PASS
        }
        FORWARD => {
            if translate(frame, p, d) == 0 {
                return xdp_action::XDP_PASS;
            }
            forward(ctx, frame, p.l4_proto, counters)
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// Answers TCP to a service without endpoints with a RST, in place, sent
/// back out of the interface it came in on.
#[inline(always)]
fn reset<F: FrameMut>(
    ctx: &XdpContext,
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> u32 {
    let shrink = if p.ip == IpVersion::V6 {
        reset_v6(frame, p)
    } else {
        reset_v4(frame, p)
    };
    if shrink == NO_RESET {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: shrinking the frame's tail by the old payload; no pointer
    // into the packet is used after this.
    if shrink > 0 && unsafe { bpf_xdp_adjust_tail(ctx.as_ptr() as *mut _, -(shrink as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    bump(counters, Counter::L4Reset);
    xdp_action::XDP_TX
}

/// What [`reset_v4`] and [`reset_v6`] return for a segment not answered.
const NO_RESET: u32 = u32::MAX;

/// The RST built in place; returns the bytes to trim from the tail.
#[inline(never)]
fn reset_v4<F: FrameMut>(frame: &mut F, p: &Parsed) -> u32 {
    tcp_rst_v4(frame, p).unwrap_or(NO_RESET)
}

#[inline(never)]
fn reset_v6<F: FrameMut>(frame: &mut F, p: &Parsed) -> u32 {
    tcp_rst_v6(frame, p).unwrap_or(NO_RESET)
}

/// DNAT to a pod on this node (the stack delivers it). 1 when rewritten.
#[inline(always)]
fn dnat<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    if p.ip == IpVersion::V6 {
        dnat_v6(frame, p, d)
    } else {
        dnat_v4(frame, p, d)
    }
}

/// Inlined into [`service_path`] (a small frame), which saves the
/// connection-table hit a call and a return; the IPv6 rewrite, larger,
/// keeps a frame of its own.
#[inline(always)]
fn dnat_v4<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    rewrite_v4(frame, p, End::Destination, v4_of(&d.dst), d.dst_port) as u32
}

#[inline(never)]
fn dnat_v6<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    rewrite_v6(frame, p, End::Destination, &d.dst, d.dst_port) as u32
}

/// DNAT + SNAT towards a remote pod, or a remote pod's reply translated
/// back, with a forwarding hop's TTL (hop limit) decrement; TTL 1 is left
/// to the stack, which answers with an ICMP error. 1 when rewritten. One
/// verifier frame per IP version keeps each small.
#[inline(always)]
fn translate<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    if p.ip == IpVersion::V6 {
        translate_v6(frame, p, d)
    } else {
        translate_v4(frame, p, d)
    }
}

#[inline(never)]
fn translate_v4<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    (decrement_ttl_v4(frame, p)
        && rewrite_v4(frame, p, End::Destination, v4_of(&d.dst), d.dst_port)
        && rewrite_v4(frame, p, End::Source, v4_of(&d.src), d.src_port)) as u32
}

#[inline(never)]
fn translate_v6<F: FrameMut>(frame: &mut F, p: &Parsed, d: &Decision) -> u32 {
    (decrement_hop_limit_v6(frame, p)
        && rewrite_v6(frame, p, End::Destination, &d.dst, d.dst_port)
        && rewrite_v6(frame, p, End::Source, &d.src, d.src_port)) as u32
}

/// Records a new flow to the backend [`choose`] left in the scratch space
/// (and the entry its replies are translated by); for a remote backend this
/// also picks the SNAT port.
#[inline(never)]
fn start_flow(flow: &FlowKey, counters: &PerCpuArray<u64>, out: &mut Decision) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Action::Pass as u32;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let s = unsafe { &mut *s };
    // SAFETY: map values stay valid for the rest of the program run.
    let Some(b) = (unsafe { BACKENDS.get(&s.chosen) }) else {
        bump(counters, Counter::L4NoBackend);
        return Action::Drop as u32;
    };
    // Field by field: whole-struct literals would be built on the stack
    // first.
    s.flow.backend = b.addr;
    s.flow.backend_port = b.port;
    s.flow.snat_port = 0;
    s.flow.flags = b.flags;
    s.flow._pad = [0; 3];
    s.flow.closed_at = 0;
    s.rev.frontend = flow.dst;
    s.rev.client = flow.src;
    s.rev.frontend_port = flow.dport;
    s.rev.client_port = flow.sport;
    s.rev.flags = 0;
    s.rev._pad = [0; 3];
    s.rev.closed_at = 0;
    s.reply.src = b.addr;
    s.reply.dst = flow.src;
    s.reply.sport = b.port;
    s.reply.dport = flow.sport;
    s.reply.proto = flow.proto;
    s.reply._pad = [0; 3];
    let snat = snat_address(&b.addr);
    if b.flags & BACKEND_LOCAL == 0 && snat != [0; 16] {
        let (min, span) = (global(&SNAT_PORT_MIN), global(&SNAT_PORT_SPAN).max(1));
        s.reply.dst = snat;
        s.rev.flags = REV_REMOTE;
        let mut chosen = 0u16;
        let (mut fallback, mut fallback_closed) = (0u16, 0u32);
        // Probes spread over the range (a Weyl sequence over the flow's
        // hash), not consecutive ports: taken ports cluster, and a run of
        // them would fail many new flows in a row. A port is taken at once
        // when the pod can hold no TIME_WAIT for it (no entry, or closed
        // longer ago than that lasts) or when this client tuple used it
        // last; a port another client's flow closed SNAT_REUSE_S ago is
        // only a fallback, the longest closed first (the pod's TIME_WAIT
        // would refuse the new SYN as too old: PAWS).
        let now = now_s();
        for i in 0..SNAT_PROBES {
            let h = s
                .hash
                .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let port = (min as u32 + ((h >> 32) as u32 % span as u32)) as u16;
            // Never a port some frontend listens on: the pod's reply to it
            // would be taken for a new flow to that frontend.
            if port_flags(port) & PORT_FRONTEND != 0 {
                continue;
            }
            s.reply.dport = port.to_be();
            // SAFETY: the entry is read at once.
            let probe = match unsafe { REVNAT.get(&s.reply) } {
                None => SnatProbe::Take,
                Some(r) => {
                    let same = r.client_port == flow.sport
                        && r.frontend_port == flow.dport
                        && r.client == flow.src;
                    let probe = snat_probe(r.closed_at, same, now);
                    // The longest closed: its close is before the fallback's.
                    if probe == SnatProbe::Fallback
                        && (fallback == 0 || fallback_closed.wrapping_sub(r.closed_at) as i32 > 0)
                    {
                        fallback = port;
                        fallback_closed = r.closed_at;
                    }
                    probe
                }
            };
            if probe == SnatProbe::Take {
                chosen = port;
                break;
            }
        }
        if chosen == 0 {
            chosen = fallback;
        }
        if chosen == 0 {
            bump(counters, Counter::L4SnatExhausted);
            return Action::Drop as u32;
        }
        s.reply.dport = chosen.to_be();
        s.flow.snat_port = chosen.to_be();
    }
    record_flow(flow, &mut s.flow4, &s.flow);
    let _ = REVNAT.insert(&s.reply, &s.rev, 0);
    bump(counters, Counter::L4NewFlow);
    to_backend(&s.flow, counters, out);
    out.action as u32
}

/// A reply from a remote pod to a SNATed flow goes back to the client, from
/// the frontend.
#[inline(always)]
fn reply_from_remote(reply: &FlowKey, counters: &PerCpuArray<u64>, out: &mut Decision) {
    // SAFETY: map values stay valid for the rest of the program run.
    let Some(rev) = (unsafe { REVNAT.get(reply) }) else {
        return;
    };
    if rev.flags & REV_REMOTE == 0 {
        return;
    }
    bump(counters, Counter::L4ReplyRemote);
    out.action = Action::Forward;
    out.dst = rev.client;
    out.dst_port = u16::from_be(rev.client_port);
    out.src = rev.frontend;
    out.src_port = u16::from_be(rev.frontend_port);
}

/// Sends a translated frame on by the kernel's FIB: new MACs, then XDP_TX
/// out of the same interface or a redirect to another. Without an answer
/// (no route, no neighbour entry yet) the stack forwards it. The addresses
/// are the decision's, in [`PACKET`].
#[inline(never)]
pub(crate) fn forward<F: FrameMut>(
    ctx: &XdpContext,
    frame: &mut F,
    proto: u8,
    counters: &PerCpuArray<u64>,
) -> u32 {
    let Some(state) = PACKET.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let (src, dst) = (&state.decision.src, &state.decision.dst);
    // SAFETY: an all-zero bpf_fib_lookup is a valid request to fill in.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.l4_protocol = proto;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    if is_v4_mapped(dst) {
        fib.family = 2; // AF_INET
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    } else {
        fib.family = 10; // AF_INET6
        let word =
            |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        fib.__bindgen_anon_3.ipv6_src = [word(src, 0), word(src, 4), word(src, 8), word(src, 12)];
        fib.__bindgen_anon_4.ipv6_dst = [word(dst, 0), word(dst, 4), word(dst, 8), word(dst, 12)];
    }
    // SAFETY: the helper reads and writes `fib`, which lives on the stack.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut fib as *mut bpf_fib_lookup,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        bump(counters, Counter::L4FibPass);
        return xdp_action::XDP_PASS;
    }
    if !frame.write(0, fib.dmac) || !frame.write(6, fib.smac) {
        return xdp_action::XDP_PASS;
    }
    bump(counters, Counter::L4Forwarded);
    if fib.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: redirect to the interface the FIB named.
        unsafe { bpf_redirect(fib.ifindex, 0) as u32 }
    }
}

/// Whether a TC egress frame is a reply that needs reverse translation;
/// the caller makes the packet writable, re-parses and calls [`egress`].
/// A FIN or RST marks the flow closing.
#[inline(always)]
pub fn reply_of<F: FrameMut>(
    frame: &F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
) -> Option<&'static RevValue> {
    if !is_tcp_udp(p) || port_flags(p.src_port) & PORT_BACKEND == 0 {
        return None;
    }
    // The key in this CPU's packet state, not on the stack.
    let state = PACKET.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, used only within this program run.
    let reply = unsafe { &mut (*state).flow };
    if !flow_key(frame, p, reply) {
        return None;
    }
    let reply: &FlowKey = reply;
    // SAFETY: map values stay valid for the rest of the program run.
    let rev: &'static RevValue = unsafe { REVNAT.get(reply) }?;
    if rev.flags & REV_REMOTE != 0 {
        return None;
    }
    if p.l4_proto == IPPROTO_TCP && rev.closed_at == 0 && closes(tcp_flags_of(frame, p)) {
        close_reply(reply, counters);
    }
    Some(rev)
}

/// TC egress: a reply gets the frontend back as its source. Written with
/// the kernel's store and checksum helpers rather than in place: a reply
/// from a socket on this node (the proxy behind its own NodePort, a
/// hostNetwork pod) still carries a partial L4 checksum here (the pseudo-
/// header sum, completed after TC), which only the helpers update right;
/// they also make a cloned skb writable. Returns 1 when rewritten.
#[inline(never)]
pub fn egress(ctx: &TcContext, p: &Parsed, rev: &RevValue, counters: &PerCpuArray<u64>) -> u32 {
    let udp = p.l4_proto == IPPROTO_UDP;
    let check = p.l4_offset + if udp { 6 } else { 16 };
    // A zero UDP checksum ("none") stays zero.
    let mangled0 = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    let Ok(old_port) = ctx.load::<u16>(p.l4_offset) else {
        return 0;
    };
    let mut ok = true;
    if p.ip == IpVersion::V4 {
        let Ok(old) = ctx.load::<u32>(p.l3_offset + 12) else {
            return 0;
        };
        let new = u32::from_ne_bytes(v4_of(&rev.frontend));
        ok = ctx.store(p.l3_offset + 12, &new, 0).is_ok()
            && ctx
                .l3_csum_replace(p.l3_offset + 10, old as u64, new as u64, 4)
                .is_ok()
            && ctx
                .l4_csum_replace(check, old as u64, new as u64, pseudo | mangled0 | 4)
                .is_ok();
    } else {
        let mut i = 0;
        while i < 16 && ok {
            let Ok(old) = ctx.load::<u32>(p.l3_offset + 8 + i) else {
                return 0;
            };
            let a = &rev.frontend;
            let new = u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            ok = ctx.store(p.l3_offset + 8 + i, &new, 0).is_ok()
                && ctx
                    .l4_csum_replace(check, old as u64, new as u64, pseudo | mangled0 | 4)
                    .is_ok();
            i += 4;
        }
    }
    ok = ok
        && ctx.store(p.l4_offset, &rev.frontend_port, 0).is_ok()
        && ctx
            .l4_csum_replace(
                check,
                old_port as u64,
                rev.frontend_port as u64,
                mangled0 | 2,
            )
            .is_ok();
    if ok {
        bump(counters, Counter::L4RevNat);
    }
    ok as u32
}

/// The flow-table key of the flow an ICMP error is about, seen from the
/// other end: the quote is a packet the node sent (or the pod received), so
/// its reversal is the direction the tables are keyed by.
#[inline(always)]
fn reversed(q: &Quoted) -> FlowKey {
    FlowKey {
        src: v4_mapped(q.dst),
        dst: v4_mapped(q.src),
        sport: q.dport.to_be(),
        dport: q.sport.to_be(),
        proto: q.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn v4_of(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// XDP: an ICMP error about a translated flow, arriving on the uplink.
/// About a reply the client's side could not take (quoted: frontend ->
/// client): it goes to the pod, quoting what the pod sent. About a packet
/// sent on to a remote pod (quoted: node -> pod, SNATed): it goes back to
/// the client, quoting what the client sent. Anything else passes. A
/// verifier frame of its own keeps the main program's stack small; the
/// caller forwards what comes back as `Forward` (addresses in `out`).
#[inline(never)]
fn icmp_ingress<F: FrameMut>(
    frame: &mut F,
    p: &Parsed,
    counters: &PerCpuArray<u64>,
    out: &mut Decision,
) -> u32 {
    let Some(q) = icmp::quoted_v4(frame, p) else {
        return Action::Pass as u32;
    };
    // The quoted source is a frontend port or a SNAT port, or this is no
    // error about a translated flow.
    if !may_concern_l4(q.sport) {
        return Action::Pass as u32;
    }
    let key = reversed(&q);
    let mut rw = Rewrite::default();
    let action = icmp_decide(&key, counters, &mut rw);
    if action == Action::Local as u32 {
        if icmp::rewrite_v4(frame, p, &rw) {
            bump(counters, Counter::L4IcmpTranslated);
        }
        return Action::Pass as u32;
    }
    if action != Action::Forward as u32
        || !decrement_ttl_v4(frame, p)
        || !icmp::rewrite_v4(frame, p, &rw)
    {
        return Action::Pass as u32;
    }
    bump(counters, Counter::L4IcmpTranslated);
    out.src = v4_mapped(rw.outer_src);
    out.dst = v4_mapped(rw.outer_dst);
    Action::Forward as u32
}

/// The map side of [`icmp_ingress`], in a verifier frame of its own.
#[inline(never)]
fn icmp_decide(key: &FlowKey, counters: &PerCpuArray<u64>, rw: &mut Rewrite) -> u32 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Action::Pass as u32;
    };
    // SAFETY: this CPU's scratch value, used only within this program run.
    let s = unsafe { &mut *s };
    // An ICMPv4 error is about an IPv4 flow: its key is IPv4-mapped.
    if !s.flow4.narrow(key) {
        return Action::Pass as u32;
    }
    // SAFETY: map values stay valid for the rest of the program run.
    if let Some(f) = unsafe { FLOWS_V4.get(&s.flow4) } {
        if !is_v4_mapped(&f.backend) {
            return Action::Pass as u32;
        }
        let pod = v4_of(&f.backend);
        rw.outer_dst = pod;
        rw.quoted_src = pod;
        rw.quoted_sport = u16::from_be(f.backend_port);
        if f.flags & BACKEND_LOCAL != 0 {
            rw.mask = OUTER_DST | QUOTED_SRC;
            return Action::Local as u32;
        }
        let snat = global(&SNAT_IPV4);
        if snat == [0; 4] || f.snat_port == 0 {
            bump(counters, Counter::L4NoSnatAddress);
            return Action::Pass as u32;
        }
        rw.mask = OUTER_SRC | OUTER_DST | QUOTED_SRC | QUOTED_DST;
        rw.outer_src = snat;
        rw.quoted_dst = snat;
        rw.quoted_dport = u16::from_be(f.snat_port);
        return Action::Forward as u32;
    }
    // SAFETY: as above.
    let Some(r) = (unsafe { REVNAT.get(key) }) else {
        return Action::Pass as u32;
    };
    if r.flags & REV_REMOTE == 0 || !is_v4_mapped(&r.frontend) || !is_v4_mapped(&r.client) {
        return Action::Pass as u32;
    }
    let (frontend, client) = (v4_of(&r.frontend), v4_of(&r.client));
    rw.mask = OUTER_SRC | OUTER_DST | QUOTED_SRC | QUOTED_DST;
    rw.outer_src = frontend;
    rw.outer_dst = client;
    rw.quoted_src = client;
    rw.quoted_sport = u16::from_be(r.client_port);
    rw.quoted_dst = frontend;
    rw.quoted_dport = u16::from_be(r.frontend_port);
    Action::Forward as u32
}

/// TC egress: an ICMP error a local pod (or the node for it) sends about a
/// translated flow (quoted: client -> pod) must come from the frontend and
/// quote what the client sent. Returns the rewrite for [`icmp_egress`].
#[inline(always)]
pub fn icmp_reply_of<F: FrameMut>(frame: &F, p: &Parsed) -> Option<Rewrite> {
    if p.class != Class::Ipv4Other || p.l4_proto != IPPROTO_ICMP {
        return None;
    }
    let q = icmp::quoted_v4(frame, p)?;
    if port_flags(q.dport) & PORT_BACKEND == 0 {
        return None;
    }
    // SAFETY: the value is read at once.
    let r = unsafe { REVNAT.get(&reversed(&q)) }?;
    if r.flags & REV_REMOTE != 0 || !is_v4_mapped(&r.frontend) {
        return None;
    }
    let frontend = v4_of(&r.frontend);
    Some(Rewrite {
        mask: OUTER_SRC | QUOTED_DST,
        outer_src: frontend,
        quoted_dst: frontend,
        quoted_dport: u16::from_be(r.frontend_port),
        ..Rewrite::default()
    })
}

/// TC egress, ICMP: a local pod's error about a translated flow, found,
/// made writable and rewritten in a verifier frame of its own.
#[inline(never)]
pub fn icmp_tc(ctx: &TcContext, counters: &PerCpuArray<u64>) -> u32 {
    let frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let p = parse(&frame);
    let Some(rw) = icmp_reply_of(&frame, &p) else {
        return 0;
    };
    // Make the head writable, then look again: the pull moves the packet,
    // so earlier bounds checks no longer hold.
    let _ = ctx.pull_data(core::cmp::min(ctx.len(), PARSE_WINDOW));
    let mut frame = PacketBounds::new(ctx.data(), ctx.data_end());
    let p = parse(&frame);
    icmp_egress(&mut frame, &p, &rw, counters)
}

/// Applies what [`icmp_reply_of`] found, on the writable, re-parsed frame
/// (a verifier frame of its own: TC's entry function stays small). The
/// quote was checked before the pull, on the same bytes; checking it again
/// here would put reads of the quote before the rewrite's shorter ones,
/// which lets LLVM drop bounds checks the verifier needs.
#[inline(always)]
fn icmp_egress<F: FrameMut>(
    frame: &mut F,
    p: &Parsed,
    rw: &Rewrite,
    counters: &PerCpuArray<u64>,
) -> u32 {
    if p.class != Class::Ipv4Other || p.l4_proto != IPPROTO_ICMP || p.ipv4_options {
        return 0;
    }
    if icmp::rewrite_v4(frame, p, rw) {
        bump(counters, Counter::L4IcmpTranslated);
        return 1;
    }
    0
}
