//! Counter slots of the per-CPU counter arrays.
//!
//! Every frame a program sees bumps [`Counter::Packets`] and exactly one
//! *class* counter (so the classes sum to the total), plus any *flag*
//! counters that describe it further (a VLAN tag, IPv4 options).

use crate::parse::Class;

/// Number of slots in each counter array. Larger than what is used today so
/// that later counters need no map resize (a resize would break pinned maps).
pub const COUNTER_SLOTS: u32 = 64;

/// What a counter slot counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every frame the program ran on.
    Packets = 0,
    // Classes: exactly one per frame.
    Ipv4Tcp = 1,
    Ipv4Udp = 2,
    Ipv4Other = 3,
    Ipv6Tcp = 4,
    Ipv6Udp = 5,
    Ipv6Other = 6,
    FragmentFirst = 7,
    FragmentLater = 8,
    NonIp = 9,
    TruncatedEthernet = 10,
    TruncatedVlan = 11,
    TruncatedIpv4 = 12,
    TruncatedIpv6 = 13,
    TruncatedL4 = 14,
    MalformedIp = 15,
    // Flags: any number per frame.
    Vlan = 32,
    Ipv4Options = 33,
    // L4 events: what the service path did with a frame.
    /// A frame to a service frontend that the connection table does not
    /// know (a new flow): the service was looked up.
    L4ServiceHit = 40,
    /// A known flow went to its recorded backend (no service lookup).
    L4FlowHit = 41,
    /// A new flow got a backend from the Maglev table.
    L4NewFlow = 42,
    /// The service has no usable backend.
    L4NoBackend = 43,
    /// Translated to a pod on this node and passed to the stack.
    L4DnatLocal = 44,
    /// The backend is on another node but the agent has no IPv4 SNAT
    /// address (`--node-ip`): the frame passes untranslated.
    L4NoSnatAddress = 45,
    /// A reply's source translated back to the frontend (TC egress).
    L4RevNat = 46,
    /// Translated (DNAT + SNAT) towards a pod on another node.
    L4DnatRemote = 47,
    /// A remote pod's reply translated back to the client (XDP).
    L4ReplyRemote = 48,
    /// Sent out again with XDP_TX or a redirect after a FIB lookup.
    L4Forwarded = 49,
    /// The FIB had no answer (no route or neighbour yet): passed to the
    /// stack to forward.
    L4FibPass = 50,
    /// No free SNAT port after the probes: the flow is dropped.
    L4SnatExhausted = 51,
    /// A client outside the Service's `loadBalancerSourceRanges`: dropped.
    L4SourceRangeDrop = 52,
    /// A new flow went to the backend its client is pinned to (ClientIP).
    L4AffinityHit = 53,
    /// TCP to a Service without endpoints, answered with a RST (XDP_TX).
    L4Reset = 54,
    /// A TCP FIN or RST marked a flow closing: its entries leave the tables
    /// once the close timeout has passed.
    L4FlowClosing = 55,
    /// A new flow over this CPU's per-second budget: not recorded, dropped.
    L4NewFlowRefused = 56,
    /// An ICMP error about a translated flow, translated to the other side.
    L4IcmpTranslated = 57,
    /// An ICMPv6 error (destination unreachable, packet too big, time
    /// exceeded) about a translated flow, translated to the other side by
    /// the tail-called ICMPv6 program.
    L4Icmp6Translated = 58,
    /// An ICMPv6 error that should have gone to the ICMPv6 program but the
    /// tail call failed (empty program-array slot): passed untouched.
    L4Icmp6TailCallFailed = 59,
    /// A frame for the L4 path's general program (everything but the
    /// connection-table hit to a local IPv4 pod) whose tail call failed
    /// (empty program-array slot): passed untouched.
    L4TailCallFailed = 60,
}

/// Whether a counter is the total, one of the exclusive classes, or a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Total,
    Class,
    Flag,
    Event,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 39] = [
        Counter::Packets,
        Counter::Ipv4Tcp,
        Counter::Ipv4Udp,
        Counter::Ipv4Other,
        Counter::Ipv6Tcp,
        Counter::Ipv6Udp,
        Counter::Ipv6Other,
        Counter::FragmentFirst,
        Counter::FragmentLater,
        Counter::NonIp,
        Counter::TruncatedEthernet,
        Counter::TruncatedVlan,
        Counter::TruncatedIpv4,
        Counter::TruncatedIpv6,
        Counter::TruncatedL4,
        Counter::MalformedIp,
        Counter::Vlan,
        Counter::Ipv4Options,
        Counter::L4ServiceHit,
        Counter::L4FlowHit,
        Counter::L4NewFlow,
        Counter::L4NoBackend,
        Counter::L4DnatLocal,
        Counter::L4NoSnatAddress,
        Counter::L4RevNat,
        Counter::L4DnatRemote,
        Counter::L4ReplyRemote,
        Counter::L4Forwarded,
        Counter::L4FibPass,
        Counter::L4SnatExhausted,
        Counter::L4SourceRangeDrop,
        Counter::L4AffinityHit,
        Counter::L4Reset,
        Counter::L4FlowClosing,
        Counter::L4NewFlowRefused,
        Counter::L4IcmpTranslated,
        Counter::L4Icmp6Translated,
        Counter::L4Icmp6TailCallFailed,
        Counter::L4TailCallFailed,
    ];

    /// The slot in the counter array.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// The label value used in metrics and tables.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::Ipv4Tcp => "ipv4_tcp",
            Counter::Ipv4Udp => "ipv4_udp",
            Counter::Ipv4Other => "ipv4_other",
            Counter::Ipv6Tcp => "ipv6_tcp",
            Counter::Ipv6Udp => "ipv6_udp",
            Counter::Ipv6Other => "ipv6_other",
            Counter::FragmentFirst => "fragment_first",
            Counter::FragmentLater => "fragment_later",
            Counter::NonIp => "non_ip",
            Counter::TruncatedEthernet => "truncated_ethernet",
            Counter::TruncatedVlan => "truncated_vlan",
            Counter::TruncatedIpv4 => "truncated_ipv4",
            Counter::TruncatedIpv6 => "truncated_ipv6",
            Counter::TruncatedL4 => "truncated_l4",
            Counter::MalformedIp => "malformed_ip",
            Counter::Vlan => "vlan",
            Counter::Ipv4Options => "ipv4_options",
            Counter::L4ServiceHit => "l4_service_hit",
            Counter::L4FlowHit => "l4_flow_hit",
            Counter::L4NewFlow => "l4_new_flow",
            Counter::L4NoBackend => "l4_no_backend",
            Counter::L4DnatLocal => "l4_dnat_local",
            Counter::L4NoSnatAddress => "l4_no_snat_address",
            Counter::L4RevNat => "l4_revnat",
            Counter::L4DnatRemote => "l4_dnat_remote",
            Counter::L4ReplyRemote => "l4_reply_remote",
            Counter::L4Forwarded => "l4_forwarded",
            Counter::L4FibPass => "l4_fib_pass",
            Counter::L4SnatExhausted => "l4_snat_exhausted",
            Counter::L4SourceRangeDrop => "l4_source_range_drop",
            Counter::L4AffinityHit => "l4_affinity_hit",
            Counter::L4Reset => "l4_reset",
            Counter::L4FlowClosing => "l4_flow_closing",
            Counter::L4NewFlowRefused => "l4_new_flow_refused",
            Counter::L4IcmpTranslated => "l4_icmp_translated",
            Counter::L4Icmp6Translated => "l4_icmp6_translated",
            Counter::L4Icmp6TailCallFailed => "l4_icmp6_tail_call_failed",
            Counter::L4TailCallFailed => "l4_tail_call_failed",
        }
    }

    pub const fn kind(self) -> CounterKind {
        match self {
            Counter::Packets => CounterKind::Total,
            Counter::Vlan | Counter::Ipv4Options => CounterKind::Flag,
            Counter::L4ServiceHit
            | Counter::L4FlowHit
            | Counter::L4NewFlow
            | Counter::L4NoBackend
            | Counter::L4DnatLocal
            | Counter::L4NoSnatAddress
            | Counter::L4RevNat
            | Counter::L4DnatRemote
            | Counter::L4ReplyRemote
            | Counter::L4Forwarded
            | Counter::L4FibPass
            | Counter::L4SnatExhausted
            | Counter::L4SourceRangeDrop
            | Counter::L4AffinityHit
            | Counter::L4Reset
            | Counter::L4FlowClosing
            | Counter::L4NewFlowRefused
            | Counter::L4IcmpTranslated
            | Counter::L4Icmp6Translated
            | Counter::L4Icmp6TailCallFailed
            | Counter::L4TailCallFailed => CounterKind::Event,
            _ => CounterKind::Class,
        }
    }

    /// The class counter of a parse outcome.
    pub const fn of_class(class: Class) -> Counter {
        match class {
            Class::Ipv4Tcp => Counter::Ipv4Tcp,
            Class::Ipv4Udp => Counter::Ipv4Udp,
            Class::Ipv4Other => Counter::Ipv4Other,
            Class::Ipv6Tcp => Counter::Ipv6Tcp,
            Class::Ipv6Udp => Counter::Ipv6Udp,
            Class::Ipv6Other => Counter::Ipv6Other,
            Class::FragmentFirst => Counter::FragmentFirst,
            Class::FragmentLater => Counter::FragmentLater,
            Class::NonIp => Counter::NonIp,
            Class::TruncatedEthernet => Counter::TruncatedEthernet,
            Class::TruncatedVlan => Counter::TruncatedVlan,
            Class::TruncatedIpv4 => Counter::TruncatedIpv4,
            Class::TruncatedIpv6 => Counter::TruncatedIpv6,
            Class::TruncatedL4 => Counter::TruncatedL4,
            Class::MalformedIp => Counter::MalformedIp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_unique_in_range_and_in_order() {
        let mut last = None;
        for c in Counter::ALL {
            assert!(c.index() < COUNTER_SLOTS, "{c:?} out of range");
            if let Some(prev) = last {
                assert!(c.index() > prev, "{c:?} out of order");
            }
            last = Some(c.index());
        }
    }

    #[test]
    fn names_are_unique_and_prometheus_safe() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            );
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn every_class_maps_to_a_class_counter() {
        for c in Counter::ALL {
            if c.kind() == CounterKind::Class {
                let class = Class::ALL
                    .iter()
                    .copied()
                    .find(|k| Counter::of_class(*k) == c);
                assert!(class.is_some(), "{c:?} has no class");
            }
        }
        for k in Class::ALL {
            assert_eq!(Counter::of_class(k).kind(), CounterKind::Class);
        }
    }
}
