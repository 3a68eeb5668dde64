//! Keys and values of the L4 service maps, as the XDP program reads them and
//! the agent writes them. Addresses are 16 bytes: IPv6 as is, IPv4 as an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so one map serves both.
//! Ports are in network byte order, as they sit in the packet.

/// Service lookup: (address, port, protocol) -> [`ServiceValue`].
pub const L4_SERVICES: &str = "L4_SERVICES";
/// Backend id -> [`BackendValue`].
pub const L4_BACKENDS: &str = "L4_BACKENDS";
/// Maglev slots: `service id * table size + slot` -> backend id.
pub const L4_MAGLEV: &str = "L4_MAGLEV";

/// The connection table of IPv6 flows: a flow (client -> frontend) ->
/// [`FlowValue`].
pub const L4_FLOWS: &str = "L4_FLOWS";
/// The connection table of IPv4 flows, keyed by the 16-byte [`FlowKeyV4`]:
/// the hit, the commonest frame, hashes and compares less than half the
/// bytes of a [`FlowKey`].
pub const L4_FLOWS_V4: &str = "L4_FLOWS_V4";
/// Reverse translation: a reply flow (pod -> client) -> [`RevValue`].
pub const L4_REVNAT: &str = "L4_REVNAT";
/// Port flags, indexed by port number: lets frames that can concern no
/// service (the proxy's own 80/443 above all) pass after one array lookup
/// instead of two hash lookups.
pub const L4_PORTS: &str = "L4_PORTS";
/// Some frontend listens on this port (destination, any protocol).
pub const PORT_FRONTEND: u8 = 1 << 0;
/// Some backend serves on this port (a reply's source, for TC egress).
pub const PORT_BACKEND: u8 = 1 << 1;

/// `sessionAffinity: ClientIP`: (client address, service id) -> backend.
pub const L4_AFFINITY: &str = "L4_AFFINITY";

/// `loadBalancerSourceRanges`: (service id, client prefix) -> allowed.
pub const L4_SOURCE_RANGES: &str = "L4_SOURCE_RANGES";
pub const DEFAULT_MAX_SOURCE_RANGES: u32 = 16_384;
/// Bits of a [`RangeKey`] before the address: the service id.
pub const RANGE_ID_BITS: u32 = 32;

/// The global holding the Maglev table size the agent chose.
pub const MAGLEV_SIZE_GLOBAL: &str = "MAGLEV_SIZE";
/// The globals holding the SNAT address (IPv4, network order as bytes) and
/// port range for flows to backends on other nodes.
pub const SNAT_IPV4_GLOBAL: &str = "SNAT_IPV4";
/// The global holding the node's IPv6 address towards remote pods.
pub const SNAT_IPV6_GLOBAL: &str = "SNAT_IPV6";
pub const SNAT_PORT_MIN_GLOBAL: &str = "SNAT_PORT_MIN";
pub const SNAT_PORT_SPAN_GLOBAL: &str = "SNAT_PORT_SPAN";
/// Default SNAT ports, 1024-29999: every unprivileged port below the
/// NodePort range (30000-32767) and the kernel's ephemeral ports (32768
/// up), so a translated flow never collides with a local socket's
/// connection. As wide as that allows: a pod keeps TIME_WAIT for a minute
/// on each port (see [`POD_TIME_WAIT_S`]), so the span bounds the new
/// connections a second one pod takes without any port reuse.
pub const DEFAULT_SNAT_PORT_MIN: u16 = 1024;
pub const DEFAULT_SNAT_PORT_SPAN: u16 = 28_976;
/// Seconds after which the SNAT port of a closed flow (FIN or RST seen) may
/// go to another client's new flow to the same pod, when no better port is
/// found ([`snat_probe`]): the pod may still hold TIME_WAIT for it, which
/// refuses a SYN with older timestamps (PAWS), costing that client a SYN
/// retransmission.
pub const SNAT_REUSE_S: u32 = 2;

/// Seconds a pod keeps a connection it closed first in TIME_WAIT (Linux's
/// `TCP_TIMEWAIT_LEN`, fixed). A SYN from another client arriving on such a
/// tuple (the same SNAT port, reused) carries unrelated timestamps: the
/// pod's TIME_WAIT rejects it (PAWS) and answers with an ACK, the client
/// resets and resends its SYN a second later. So the reverse entries of
/// remote flows are kept this long after their close (the agent's sweep),
/// and a closed SNAT port goes to another client only when no port without
/// such a past is found, the longest closed first.
pub const POD_TIME_WAIT_S: u32 = 60;

/// What a SNAT port probe found, as [`snat_probe`] judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnatProbe {
    /// Free with no pod-side TIME_WAIT to meet (no entry, or closed longer
    /// than [`POD_TIME_WAIT_S`]), or last used by this very client tuple
    /// (its timestamps go on, so the pod's TIME_WAIT takes the new SYN):
    /// take it.
    Take,
    /// Closed at least [`SNAT_REUSE_S`] ago by another client: usable when
    /// nothing better is found (the longest closed first).
    Fallback,
    /// Open, or closed too recently.
    Taken,
}

/// Judges a SNAT port whose reverse entry is `closed_at` (0: open), last
/// used by the same client tuple or not, at `now_s`. Pure; the program
/// calls it for each probe (a missing entry is [`SnatProbe::Take`] there).
#[inline(always)]
pub fn snat_probe(closed_at: u32, same_client: bool, now_s: u32) -> SnatProbe {
    if closed_at == 0 {
        return SnatProbe::Taken;
    }
    let age = now_s.wrapping_sub(closed_at);
    if same_client || age > POD_TIME_WAIT_S {
        SnatProbe::Take
    } else if age >= SNAT_REUSE_S {
        SnatProbe::Fallback
    } else {
        SnatProbe::Taken
    }
}

/// SNAT ports tried (spread over the range) for a new flow to a remote
/// pod before it is dropped (`l4_snat_exhausted`): with the range a third
/// taken, all 32 taken happens once in 10^15 flows.
pub const SNAT_PROBES: u16 = 32;

/// Default capacities. The Maglev array is `max services * table size`
/// slots of 4 bytes: 4,096 services of 1,021 slots take 16 MiB.
pub const DEFAULT_MAX_SERVICES: u32 = 4_096;
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;

/// Seconds a closed flow (TCP FIN or RST seen) keeps its entries, so that
/// the last segments and retransmissions are still translated; the agent's
/// sweep removes them after that.
pub const CLOSE_TIMEOUT_S: u32 = 10;
/// The global holding the close timeout the agent chose.
pub const CLOSE_TIMEOUT_GLOBAL: &str = "CLOSE_TIMEOUT";

/// The global holding how many new flows one CPU records per second (0: no
/// limit); past it new flows are refused, so a SYN flood cannot evict the
/// established flows wholesale.
pub const NEW_FLOW_RATE_GLOBAL: &str = "NEW_FLOW_RATE";
pub const DEFAULT_NEW_FLOW_RATE: u32 = 100_000;

/// A backend id that names no backend (an empty Maglev slot).
pub const NO_BACKEND: u32 = u32::MAX;

/// `ServiceValue::flags`: only this node's endpoints, client address kept,
/// no SNAT (`externalTrafficPolicy: Local`).
pub const SVC_LOCAL_POLICY: u32 = 1 << 0;
/// `sessionAffinity: ClientIP`.
pub const SVC_CLIENT_AFFINITY: u32 = 1 << 1;
/// The service has `loadBalancerSourceRanges`: check the source first.
pub const SVC_SOURCE_RANGES: u32 = 1 << 2;

/// `BackendValue::flags`: the pod runs on this node (DNAT, then pass to the
/// stack; no SNAT).
pub const BACKEND_LOCAL: u8 = 1 << 0;
/// The endpoint is terminating: existing flows keep it, new ones never get it.
pub const BACKEND_TERMINATING: u8 = 1 << 1;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// An IPv4 address as the maps store it.
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Whether a stored address is IPv4 (IPv4-mapped).
pub const fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index of the service's Maglev table.
    pub id: u32,
    /// Backends that new flows may get (0: answer TCP with RST).
    pub backend_count: u32,
    pub flags: u32,
    /// ClientIP affinity timeout in seconds.
    pub affinity_timeout: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendValue {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub flags: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 16],
    pub service: u32,
}

/// The backend a client is pinned to, and when that was last used. The id
/// is checked against the backend's address on use, so an id reused for
/// another pod never inherits the pin.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    pub addr: [u8; 16],
    pub backend_id: u32,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_ns` of the last new flow that used it.
    pub last_ns: u64,
}

/// The data of a source-range LPM key: the service id (big-endian, so the
/// prefix covers it whole) then the 16-byte address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeKey {
    pub service: [u8; 4],
    pub addr: [u8; 16],
}

/// The LPM prefix length of a source range of `bits` on `addr` (IPv4-mapped
/// addresses count their 96 fixed bits).
pub const fn range_prefix_len(addr_is_v4: bool, bits: u32) -> u32 {
    RANGE_ID_BITS + if addr_is_v4 { 96 + bits } else { bits }
}

/// One direction of a flow. Also the key of the reverse table, where it is
/// the reply direction (pod -> client).
///
/// Aligned to 8 (its size, 40, and its fields' offsets are those of plain
/// `repr(C)`): the XDP program writes a key with 8- and 4-byte stores, which
/// the eBPF target emits only where it knows the alignment (byte stores
/// otherwise).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// An IPv4 flow's key in [`L4_FLOWS_V4`]: [`FlowKey`] with 4-byte
/// addresses. Aligned to 8 like it, for the same wide stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKeyV4 {
    /// The IPv4 key of `k`, when both its addresses are IPv4-mapped (an
    /// IPv4 flow); `None` for an IPv6 flow.
    pub fn of(k: &FlowKey) -> Option<Self> {
        let mut n = FlowKeyV4 {
            src: [0; 4],
            dst: [0; 4],
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: [0; 3],
        };
        n.narrow(k).then_some(n)
    }

    /// Writes the IPv4 key of `k` over this one, field by field (no
    /// temporary: the eBPF programs write it in map memory); false, and
    /// this key untouched, for an IPv6 flow.
    #[inline(always)]
    pub fn narrow(&mut self, k: &FlowKey) -> bool {
        if !is_v4_mapped(&k.src) || !is_v4_mapped(&k.dst) {
            return false;
        }
        self.src = [k.src[12], k.src[13], k.src[14], k.src[15]];
        self.dst = [k.dst[12], k.dst[13], k.dst[14], k.dst[15]];
        self.sport = k.sport;
        self.dport = k.dport;
        self.proto = k.proto;
        self._pad = [0; 3];
        true
    }

    /// The same flow as a [`FlowKey`] (addresses IPv4-mapped).
    pub fn widen(&self) -> FlowKey {
        FlowKey {
            src: v4_mapped(self.src),
            dst: v4_mapped(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// Where a flow was sent: the backend's address, not its id, so that an id
/// reused later never captures an old flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: [u8; 16],
    /// Network byte order.
    pub backend_port: u16,
    /// The SNAT source port for a remote backend (network order), else 0.
    pub snat_port: u16,
    /// The backend's flags when the flow started.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// When a TCP FIN or RST was first seen, in seconds of the kernel's
    /// monotonic clock (never 0 once set); 0 while the flow is open.
    pub closed_at: u32,
}

/// `RevValue::flags`: the reply comes back through the node from another
/// node (SNAT undone on XDP ingress), not from a local pod (TC egress).
pub const REV_REMOTE: u8 = 1 << 0;

/// How a reply is translated back: its source becomes the frontend the
/// client used; for a remote backend its destination becomes the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevValue {
    pub frontend: [u8; 16],
    pub client: [u8; 16],
    /// Network byte order.
    pub frontend_port: u16,
    pub client_port: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// As [`FlowValue::closed_at`].
    pub closed_at: u32,
}

/// The flow hash the XDP program uses to pick a Maglev slot: every bit of
/// the 5-tuple reaches every bit of the result.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u64 {
    let w = |a: &[u8; 16], i: usize| {
        u64::from_le_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    let ports = ((k.sport as u64) << 32) | ((k.dport as u64) << 16) | k.proto as u64;
    let mut h = crate::maglev::mix64(w(&k.src, 0) ^ 0x9e37_79b9_7f4a_7c15);
    h = crate::maglev::mix64(h ^ w(&k.src, 8));
    h = crate::maglev::mix64(h ^ w(&k.dst, 0));
    h = crate::maglev::mix64(h ^ w(&k.dst, 8));
    crate::maglev::mix64(h ^ ports)
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::RangeKey {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::RevValue {}
    // SAFETY: plain #[repr(C)] data with explicit padding fields.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::BackendValue {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_what_the_kernel_reads() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(core::mem::size_of::<ServiceValue>(), 16);
        assert_eq!(core::mem::size_of::<BackendValue>(), 20);
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<FlowKeyV4>(), 16);
        assert_eq!(core::mem::size_of::<FlowValue>(), 28);
        assert_eq!(core::mem::size_of::<RevValue>(), 44);
        assert_eq!(core::mem::size_of::<AffinityKey>(), 20);
        assert_eq!(core::mem::size_of::<AffinityValue>(), 32);
    }

    #[test]
    fn ipv4_flows_narrow_to_their_own_key_and_back() {
        let k = FlowKey {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let n = FlowKeyV4::of(&k).expect("an IPv4 flow");
        assert_eq!(n.src, [198, 18, 0, 2]);
        assert_eq!(n.dst, [198, 18, 0, 1]);
        assert_eq!((n.sport, n.dport, n.proto), (k.sport, k.dport, k.proto));
        assert_eq!(n.widen(), k);
        // An IPv6 flow, or one with a single IPv4-mapped address (spoofed),
        // has no IPv4 key.
        let mut v6 = k;
        v6.src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(FlowKeyV4::of(&v6), None);
        v6 = k;
        v6.dst[0] = 0xfd;
        assert_eq!(FlowKeyV4::of(&v6), None);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let k = FlowKey {
            src: v4_mapped([198, 18, 0, 2]),
            dst: v4_mapped([198, 18, 0, 1]),
            sport: 40000u16.to_be(),
            dport: 30080u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let h = flow_hash(&k);
        let mut other = k;
        other.sport = 40001u16.to_be();
        assert_ne!(flow_hash(&other), h);
        other = k;
        other.src[15] ^= 1;
        assert_ne!(flow_hash(&other), h);
        other = k;
        other.proto = PROTO_UDP;
        assert_ne!(flow_hash(&other), h);
        assert_eq!(flow_hash(&k), h);
    }

    #[test]
    fn snat_probes_prefer_ports_the_pod_holds_no_time_wait_for() {
        // Open: never.
        assert_eq!(snat_probe(0, false, 500), SnatProbe::Taken);
        assert_eq!(snat_probe(0, true, 500), SnatProbe::Taken);
        // Closed by this client tuple: at once (its timestamps go on).
        assert_eq!(snat_probe(500, true, 500), SnatProbe::Take);
        // Another client's: not before SNAT_REUSE_S, a fallback until the
        // pod's TIME_WAIT is over, then free.
        assert_eq!(snat_probe(500, false, 501), SnatProbe::Taken);
        assert_eq!(
            snat_probe(500, false, 500 + SNAT_REUSE_S),
            SnatProbe::Fallback
        );
        assert_eq!(
            snat_probe(500, false, 500 + POD_TIME_WAIT_S),
            SnatProbe::Fallback
        );
        assert_eq!(
            snat_probe(500, false, 501 + POD_TIME_WAIT_S),
            SnatProbe::Take
        );
        // The seconds counter wrapping is still an age.
        assert_eq!(snat_probe(u32::MAX - 1, false, 100), SnatProbe::Take);
    }

    #[test]
    fn v4_mapping() {
        let a = v4_mapped([198, 18, 0, 1]);
        assert!(is_v4_mapped(&a));
        assert_eq!(&a[12..], &[198, 18, 0, 1]);
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert!(!is_v4_mapped(&v6));
    }
}
