//! The L4 service path on the real programs through `BPF_PROG_TEST_RUN`,
//! with maps seeded by the agent's own map writer: DNAT of new and known
//! flows to a pod on this node with exact output bytes and checksums, the
//! reply's reverse translation on TC egress, and what is not built yet
//! (remote backends) passing untouched.

mod support;

use std::net::SocketAddr;

use aya::programs::{TestRun, TestRunOptions};
use ingress_common::{
    counters::Counter,
    l4::{self, FlowKey},
    testing::{L4, PacketBuilder, icmp4_error, icmp6_error, v6},
};
use ingress_userspace::{
    datapath::{
        LoadOptions, LoadedPrograms,
        counters::{CounterMap, Hook},
        l4maps::L4Maps,
    },
    model::{
        ObjectKey,
        l4::{L4Backend, L4Service, L4Table, Proto},
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_PIPE: u32 = 3;

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const NODE: [u8; 4] = [198, 18, 0, 1];
const POD: [u8; 4] = [198, 18, 3, 2];
const REMOTE_POD: [u8; 4] = [198, 18, 4, 2];

// The same roles over IPv6 (fd00::/8).
const CLIENT6: u16 = 2;
const NODE6: u16 = 1;
const POD6: u16 = 0x302;
const REMOTE_POD6: u16 = 0x402;

fn sa6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::from((v6(last), port))
}

struct Harness {
    programs: LoadedPrograms,
    xdp: CounterMap,
    tc: CounterMap,
    l4: L4Maps,
}

fn service(name: &str, backends: &[(SocketAddr, bool)]) -> L4Service {
    L4Service {
        service: ObjectKey::new("shop", name),
        port: "http".into(),
        backends: backends
            .iter()
            .map(|(addr, local)| L4Backend {
                addr: *addr,
                local: *local,
                terminating: false,
            })
            .collect(),
        local_policy: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        health_check_node_port: None,
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

impl Harness {
    fn new() -> Self {
        Self::with(&LoadOptions::default())
    }

    fn with(opts: &LoadOptions) -> Self {
        support::require_root();
        let mut programs = LoadedPrograms::load_with(opts).expect("loading the eBPF object");
        let xdp = programs.take_counters(Hook::Xdp).unwrap();
        let tc = programs.take_counters(Hook::Tc).unwrap();
        let mut l4 = L4Maps::take(&mut programs).unwrap();
        let mut table = L4Table::default();
        table.services.insert(
            (sa(NODE, 30080), Proto::Tcp),
            service("web", &[(sa(POD, 8080), true)]),
        );
        table.services.insert(
            (sa(NODE, 30053), Proto::Udp),
            service("dns", &[(sa(POD, 5353), true)]),
        );
        table.services.insert(
            (sa(NODE, 30090), Proto::Tcp),
            service("far", &[(sa(REMOTE_POD, 9090), false)]),
        );
        table
            .services
            .insert((sa(NODE, 30099), Proto::Tcp), service("empty", &[]));
        let two = [(sa(POD, 8080), true), (sa([198, 18, 3, 3], 8080), true)];
        table
            .services
            .insert((sa(NODE, 30060), Proto::Tcp), service("spread", &two));
        let mut sticky = service("sticky", &two);
        sticky.affinity_timeout = Some(60);
        table.services.insert((sa(NODE, 30061), Proto::Tcp), sticky);
        let mut guarded = service("guarded", &[(sa(POD, 8080), true)]);
        guarded.source_ranges = vec![("198.18.0.0".parse().unwrap(), 24)];
        table
            .services
            .insert((sa(NODE, 30070), Proto::Tcp), guarded);
        table.services.insert(
            (sa6(NODE6, 30080), Proto::Tcp),
            service("web6", &[(sa6(POD6, 8080), true)]),
        );
        table.services.insert(
            (sa6(NODE6, 30053), Proto::Udp),
            service("dns6", &[(sa6(POD6, 5353), true)]),
        );
        table.services.insert(
            (sa6(NODE6, 30090), Proto::Tcp),
            service("far6", &[(sa6(REMOTE_POD6, 9090), false)]),
        );
        table
            .services
            .insert((sa6(NODE6, 30099), Proto::Tcp), service("empty6", &[]));
        assert!(l4.apply(&table).unwrap().is_empty());
        // As the agent does before it attaches: with the config maps
        // filled, this load's L4 programs take their program-array slots
        // (in an adopted array they hold the previous load's until then).
        programs.arm_general_path().unwrap();
        Harness {
            programs,
            xdp,
            tc,
            l4,
        }
    }

    fn run(&mut self, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>, Vec<(Counter, u64)>) {
        let counters = if hook == Hook::Xdp {
            &self.xdp
        } else {
            &self.tc
        };
        let before = counters.read_all().unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let r = match hook {
            Hook::Xdp => self.programs.xdp().unwrap().test_run(opts),
            Hook::Tc => self.programs.tc().unwrap().test_run(opts),
        }
        .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        let counters = if hook == Hook::Xdp {
            &self.xdp
        } else {
            &self.tc
        };
        let after = counters.read_all().unwrap();
        let deltas = before
            .iter()
            .zip(after)
            .filter(|(b, a)| {
                a.1 != b.1
                    && !matches!(a.0, Counter::Packets)
                    && a.0.kind() == ingress_common::counters::CounterKind::Event
            })
            .map(|(b, a)| (a.0, a.1 - b.1))
            .collect();
        (r.return_value, out, deltas)
    }
}

#[test]
fn a_new_tcp_flow_to_a_nodeport_is_translated_to_the_local_pod() {
    let mut h = Harness::new();
    let syn = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30080).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &syn);
    assert_eq!(verdict, XDP_PASS);
    // Exact bytes: the same packet built afresh to the pod, checksums
    // recomputed from scratch by the builder.
    assert_eq!(out, PacketBuilder::tcp4(CLIENT, POD, 40000, 8080).build());
    assert_eq!(
        events,
        [
            (Counter::L4ServiceHit, 1),
            (Counter::L4NewFlow, 1),
            (Counter::L4DnatLocal, 1)
        ]
    );
    // The next packet of the flow is a connection-table hit.
    let mut ack = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30080);
    ack.l4 = L4::Tcp {
        sport: 40000,
        dport: 30080,
        flags: 0x10,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    };
    let (verdict, out, events) = h.run(Hook::Xdp, &ack.build());
    assert_eq!(verdict, XDP_PASS);
    let mut want = PacketBuilder::tcp4(CLIENT, POD, 40000, 8080);
    want.l4 = L4::Tcp {
        sport: 40000,
        dport: 8080,
        flags: 0x10,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    };
    assert_eq!(out, want.build());
    assert_eq!(
        events,
        [(Counter::L4FlowHit, 1), (Counter::L4DnatLocal, 1)],
        "a known flow skips the service lookup"
    );
    // The pod's reply leaves with the frontend as its source.
    let reply = PacketBuilder::tcp4(POD, CLIENT, 8080, 40000).build();
    let (verdict, out, events) = h.run(Hook::Tc, &reply);
    assert_eq!(verdict, TC_ACT_PIPE);
    assert_eq!(out, PacketBuilder::tcp4(NODE, CLIENT, 30080, 40000).build());
    assert_eq!(events, [(Counter::L4RevNat, 1)]);
}

#[test]
fn udp_is_translated_both_ways() {
    let mut h = Harness::new();
    let q = PacketBuilder::udp4(CLIENT, NODE, 5000, 30053).build();
    let (verdict, out, _) = h.run(Hook::Xdp, &q);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, PacketBuilder::udp4(CLIENT, POD, 5000, 5353).build());
    let (_, out, events) = h.run(
        Hook::Tc,
        &PacketBuilder::udp4(POD, CLIENT, 5353, 5000).build(),
    );
    assert_eq!(out, PacketBuilder::udp4(NODE, CLIENT, 30053, 5000).build());
    assert_eq!(events, [(Counter::L4RevNat, 1)]);
}

#[test]
fn other_traffic_passes_untouched() {
    let mut h = Harness::new();
    for (what, frame) in [
        (
            "another port",
            PacketBuilder::tcp4(CLIENT, NODE, 40000, 80).build(),
        ),
        (
            "another address",
            PacketBuilder::tcp4(CLIENT, [198, 18, 0, 9], 40000, 30080).build(),
        ),
        (
            "udp to a tcp frontend",
            PacketBuilder::udp4(CLIENT, NODE, 40000, 30080).build(),
        ),
        (
            "tcp to a udp frontend",
            PacketBuilder::tcp4(CLIENT, NODE, 40000, 30053).build(),
        ),
        (
            "a fragment to the frontend",
            PacketBuilder::tcp4(CLIENT, NODE, 40000, 30080)
                .with_frag(0x2000)
                .build(),
        ),
        (
            "IPv4 with options to the frontend",
            PacketBuilder::tcp4(CLIENT, NODE, 40000, 30080)
                .with_ipv4_options(&[1, 1, 1, 1])
                .build(),
        ),
    ] {
        let (verdict, out, events) = h.run(Hook::Xdp, &frame);
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, frame, "{what}");
        assert!(events.is_empty(), "{what}: {events:?}");
    }
    // A reply nobody translated stays as it is on egress.
    let stray = PacketBuilder::tcp4(POD, CLIENT, 8080, 41000).build();
    let (_, out, events) = h.run(Hook::Tc, &stray);
    assert_eq!(out, stray);
    assert!(events.is_empty());
}

#[test]
fn without_a_snat_address_remote_backends_pass_untranslated_and_empty_services_reset() {
    let mut h = Harness::new();
    let far = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30090).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &far);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, far);
    assert_eq!(
        events,
        [
            (Counter::L4ServiceHit, 1),
            (Counter::L4NewFlow, 1),
            (Counter::L4NoSnatAddress, 1)
        ]
    );
    // TCP to a Service without endpoints is refused with a RST from the
    // frontend, built in place and sent back out (XDP_TX).
    let empty = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30099).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &empty);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(
        events,
        [
            (Counter::L4ServiceHit, 1),
            (Counter::L4NoBackend, 1),
            (Counter::L4Reset, 1)
        ]
    );
    assert_eq!(out.len(), 54);
    let p = ingress_common::parse::parse(&out[..]);
    assert_eq!((p.src_port, p.dst_port), (30099, 40000));
    assert_eq!(&out[26..30], &NODE);
    assert_eq!(&out[30..34], &CLIENT);
    assert_eq!(out[47], 0x14, "RST|ACK");
    assert_eq!(
        ingress_common::csum::checksum(0, &out[14..34]),
        0,
        "IP checksum from scratch"
    );
    let pseudo = ingress_common::csum::pseudo_header_v4(NODE, CLIENT, 6, 20);
    assert_eq!(
        ingress_common::csum::checksum(pseudo, &out[34..54]),
        0,
        "TCP checksum from scratch"
    );
    // A segment with a payload is trimmed to the bare RST.
    let mut data = PacketBuilder::tcp4(CLIENT, NODE, 40001, 30099);
    data.l4 = L4::Tcp {
        sport: 40001,
        dport: 30099,
        flags: 0x18,
        payload: vec![b'x'; 100],
    };
    let (verdict, out, _) = h.run(Hook::Xdp, &data.build());
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out.len(), 54);
    assert_eq!(out[47], 0x04, "RST only: the segment carried an ACK");
}

/// DNAT + SNAT towards a pod on another node and the reply's way back. The
/// harness runs in a fresh namespace with no routes, so the FIB lookup
/// finds nothing and the frames pass to the stack (the namespace end-to-end
/// test covers XDP_TX).
#[test]
fn remote_backends_get_dnat_snat_and_their_replies_come_back() {
    let ns = support::Namespaces::new(&["fib"]);
    support::in_netns(ns.name("fib"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            ..LoadOptions::default()
        });
        let syn = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30090).build();
        let (verdict, out, events) = h.run(Hook::Xdp, &syn);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            events,
            [
                (Counter::L4ServiceHit, 1),
                (Counter::L4NewFlow, 1),
                (Counter::L4DnatRemote, 1),
                (Counter::L4FibPass, 1)
            ]
        );
        let p = ingress_common::parse::parse(&out[..]);
        let snat_port = p.src_port;
        assert!((1024..30_000).contains(&snat_port), "SNAT port {snat_port}");
        assert_eq!(
            out,
            PacketBuilder::tcp4(NODE, REMOTE_POD, snat_port, 9090)
                .with_ttl(63)
                .build(),
            "DNAT to the pod, SNAT to the node, TTL down by one, checksums exact"
        );
        // The pod's reply arrives at the node and goes back to the client
        // from the frontend.
        let reply = PacketBuilder::tcp4(REMOTE_POD, NODE, 9090, snat_port).build();
        let (verdict, out, events) = h.run(Hook::Xdp, &reply);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            events,
            [(Counter::L4ReplyRemote, 1), (Counter::L4FibPass, 1)]
        );
        assert_eq!(
            out,
            PacketBuilder::tcp4(NODE, CLIENT, 30090, 40000)
                .with_ttl(63)
                .build()
        );
        // A second client flow gets its own SNAT port.
        let (_, out2, _) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp4(CLIENT, NODE, 40001, 30090).build(),
        );
        assert_ne!(ingress_common::parse::parse(&out2[..]).src_port, snat_port);
        // TTL 1 is not forwarded by XDP: the stack answers it.
        let dying = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30090)
            .with_ttl(1)
            .build();
        let (verdict, out, _) = h.run(Hook::Xdp, &dying);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, dying);
    });
}

#[test]
fn flows_keep_their_pod_when_the_service_changes() {
    let mut h = Harness::new();
    let syn = PacketBuilder::tcp4(CLIENT, NODE, 40123, 30080).build();
    let (_, first, _) = h.run(Hook::Xdp, &syn);
    // The service now has another pod only; the known flow stays put.
    let other: SocketAddr = sa([198, 18, 3, 9], 8080);
    let mut table = L4Table::default();
    table.services.insert(
        (sa(NODE, 30080), Proto::Tcp),
        service("web", &[(other, true)]),
    );
    h.l4.apply(&table).unwrap();
    let (_, again, events) = h.run(Hook::Xdp, &syn);
    assert_eq!(again, first);
    assert!(events.contains(&(Counter::L4FlowHit, 1)));
    // A new flow goes to the new pod.
    let (_, fresh, _) = h.run(
        Hook::Xdp,
        &PacketBuilder::tcp4(CLIENT, NODE, 40124, 30080).build(),
    );
    assert_eq!(
        fresh,
        PacketBuilder::tcp4(CLIENT, [198, 18, 3, 9], 40124, 8080).build()
    );
}

#[test]
fn source_ranges_admit_their_clients_and_drop_the_rest() {
    let mut h = Harness::new();
    let inside = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30070).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &inside);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, PacketBuilder::tcp4(CLIENT, POD, 40000, 8080).build());
    assert!(events.contains(&(Counter::L4DnatLocal, 1)));
    let outside = PacketBuilder::tcp4([198, 18, 9, 9], NODE, 40000, 30070).build();
    let (verdict, _, events) = h.run(Hook::Xdp, &outside);
    assert_eq!(verdict, XDP_DROP);
    assert_eq!(
        events,
        [(Counter::L4ServiceHit, 1), (Counter::L4SourceRangeDrop, 1)]
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_pod() {
    let mut h = Harness::new();
    let dst_of = |out: &[u8]| {
        let p = ingress_common::parse::parse(out);
        out[p.l3_offset + 16..p.l3_offset + 20].to_vec()
    };
    let mut spread = std::collections::BTreeSet::new();
    let mut sticky = std::collections::BTreeSet::new();
    let mut hits = 0;
    for sport in 41000..41012 {
        let (_, out, _) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp4(CLIENT, NODE, sport, 30060).build(),
        );
        spread.insert(dst_of(&out));
        let (_, out, events) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp4(CLIENT, NODE, sport, 30061).build(),
        );
        sticky.insert(dst_of(&out));
        hits += events
            .iter()
            .filter(|e| e.0 == Counter::L4AffinityHit)
            .count();
    }
    assert_eq!(spread.len(), 2, "without affinity new flows use both pods");
    assert_eq!(
        sticky.len(),
        1,
        "with ClientIP affinity one client stays on one pod"
    );
    assert_eq!(hits, 11, "every flow after the first follows the pin");
    // Another client gets its own pin (and still only one pod).
    let mut other = std::collections::BTreeSet::new();
    for sport in 41000..41006 {
        let (_, out, _) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp4([198, 18, 0, 7], NODE, sport, 30061).build(),
        );
        other.insert(dst_of(&out));
    }
    assert_eq!(other.len(), 1);
}

/// The flow-table entries (forward and reverse) of one client flow.
fn entries(
    h: &Harness,
    forward: FlowKey,
    reply: FlowKey,
) -> (Option<l4::FlowValue>, Option<l4::RevValue>) {
    // An IPv4 flow is in the IPv4 table, and only there.
    let forward4 = l4::FlowKeyV4::of(&forward).expect("an IPv4 flow");
    let flows: aya::maps::HashMap<_, FlowKey, l4::FlowValue> =
        aya::maps::HashMap::try_from(h.programs.ebpf.map(l4::L4_FLOWS).unwrap()).unwrap();
    assert!(
        flows.get(&forward, 0).is_err(),
        "an IPv4 flow in the IPv6 table"
    );
    let flows4: aya::maps::HashMap<_, l4::FlowKeyV4, l4::FlowValue> =
        aya::maps::HashMap::try_from(h.programs.ebpf.map(l4::L4_FLOWS_V4).unwrap()).unwrap();
    let rev: aya::maps::HashMap<_, FlowKey, l4::RevValue> =
        aya::maps::HashMap::try_from(h.programs.ebpf.map(l4::L4_REVNAT).unwrap()).unwrap();
    (flows4.get(&forward4, 0).ok(), rev.get(&reply, 0).ok())
}

fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
    FlowKey {
        src: l4::v4_mapped(src),
        dst: l4::v4_mapped(dst),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: l4::PROTO_TCP,
        _pad: [0; 3],
    }
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b = PacketBuilder::tcp4(src, dst, sport, dport);
    b.l4 = L4::Tcp {
        sport,
        dport,
        flags,
        payload: Vec::new(),
    };
    b.build()
}

#[test]
fn fin_and_rst_mark_flows_closing_from_either_side() {
    let mut h = Harness::new();
    // A client FIN: still translated, and both entries are marked.
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42000, 30080, 0x02));
    let (forward, reply) = (
        key(CLIENT, 42000, NODE, 30080),
        key(POD, 8080, CLIENT, 42000),
    );
    let (f, r) = entries(&h, forward, reply);
    assert_eq!((f.unwrap().closed_at, r.unwrap().closed_at), (0, 0));
    let (verdict, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42000, 30080, 0x11));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, tcp(CLIENT, POD, 42000, 8080, 0x11));
    assert_eq!(
        events,
        [
            (Counter::L4FlowHit, 1),
            (Counter::L4DnatLocal, 1),
            (Counter::L4FlowClosing, 1)
        ]
    );
    let (f, r) = entries(&h, forward, reply);
    let closed = f.unwrap().closed_at;
    assert_ne!(closed, 0);
    assert_eq!(r.unwrap().closed_at, closed);
    // Later segments are still translated; the mark is set once.
    let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42000, 30080, 0x10));
    assert_eq!(out, tcp(CLIENT, POD, 42000, 8080, 0x10));
    assert!(!events.contains(&(Counter::L4FlowClosing, 1)));

    // A pod's RST on TC egress marks its flow too, and is translated.
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42001, 30080, 0x02));
    let (verdict, out, events) = h.run(Hook::Tc, &tcp(POD, CLIENT, 8080, 42001, 0x14));
    assert_eq!(verdict, TC_ACT_PIPE);
    assert_eq!(out, tcp(NODE, CLIENT, 30080, 42001, 0x14));
    assert_eq!(
        events,
        [(Counter::L4RevNat, 1), (Counter::L4FlowClosing, 1)]
    );
    let (f, r) = entries(
        &h,
        key(CLIENT, 42001, NODE, 30080),
        key(POD, 8080, CLIENT, 42001),
    );
    assert_ne!(f.unwrap().closed_at, 0);
    assert_ne!(r.unwrap().closed_at, 0);
}

#[test]
fn a_closed_tuple_reused_after_the_close_timeout_starts_a_new_flow() {
    let mut h = Harness::with(&LoadOptions {
        close_timeout_s: 0,
        ..LoadOptions::default()
    });
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42100, 30080, 0x02));
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42100, 30080, 0x04));
    // A SYN on the closed tuple is a new flow whose entries are open
    // again (at once; here after the sweep's timeout too).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42100, 30080, 0x02));
    assert_eq!(out, tcp(CLIENT, POD, 42100, 8080, 0x02));
    assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
    let (f, r) = entries(
        &h,
        key(CLIENT, 42100, NODE, 30080),
        key(POD, 8080, CLIENT, 42100),
    );
    assert_eq!((f.unwrap().closed_at, r.unwrap().closed_at), (0, 0));
    // A non-SYN segment of the closed tuple is no new connection: it keeps
    // the entry as it is.
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42100, 30080, 0x04));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 42100, 30080, 0x10));
    assert!(events.contains(&(Counter::L4FlowHit, 1)), "{events:?}");
}

#[test]
fn new_flows_past_the_per_cpu_rate_are_refused_and_known_flows_keep_working() {
    // One CPU for this thread, so the per-CPU budget is one budget.
    support::pin_to_one_cpu();
    let mut h = Harness::with(&LoadOptions {
        new_flow_rate: 3,
        ..LoadOptions::default()
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for sport in 43000..43008 {
        let (verdict, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, sport, 30080, 0x02));
        if events.contains(&(Counter::L4NewFlowRefused, 1)) {
            assert_eq!(verdict, XDP_DROP);
            assert!(!events.contains(&(Counter::L4NewFlow, 1)));
            refused += 1;
        } else {
            assert_eq!(out, tcp(CLIENT, POD, sport, 8080, 0x02));
            admitted.push(sport);
        }
    }
    // The budget is per second: a run that crossed a second boundary may
    // admit one more window's worth.
    assert!(
        (3..=6).contains(&admitted.len()),
        "admitted {admitted:?}, refused {refused}"
    );
    assert_eq!(admitted.len() + refused, 8);
    // The admitted flows are known and keep being translated.
    for sport in admitted {
        let (verdict, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, sport, 30080, 0x10));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, tcp(CLIENT, POD, sport, 8080, 0x10));
        assert!(events.contains(&(Counter::L4FlowHit, 1)));
    }
}

#[test]
fn the_agents_sweep_removes_closed_flows_after_the_timeout_and_keeps_open_ones() {
    use ingress_userspace::datapath::flow_sweep::{FlowSweeper, Swept, monotonic_s};
    let mut h = Harness::with(&LoadOptions {
        close_timeout_s: 0,
        ..LoadOptions::default()
    });
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 44000, 30080, 0x02));
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 44001, 30080, 0x02));
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 44000, 30080, 0x11));
    let mut sweeper = FlowSweeper::take(&mut h.programs, 0).unwrap();
    let (closed, open) = (
        key(CLIENT, 44000, NODE, 30080),
        key(CLIENT, 44001, NODE, 30080),
    );
    // Not yet: the second it closed in has not passed.
    let closed_at = sweeper.flow(&closed).unwrap().closed_at;
    assert_eq!(sweeper.sweep(closed_at), Swept::default());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        sweeper.sweep(monotonic_s()),
        Swept {
            flows: 1,
            reverse: 1,
            moved: 0
        }
    );
    assert!(sweeper.flow(&closed).is_none());
    assert!(sweeper.reverse(&key(POD, 8080, CLIENT, 44000)).is_none());
    assert!(sweeper.flow(&open).is_some());
    assert!(sweeper.reverse(&key(POD, 8080, CLIENT, 44001)).is_some());
}

/// The L4 path is three XDP programs: the main one translates an
/// established IPv4 flow to a local pod itself and tail-calls the general
/// program for the rest, which tail-calls the new-flow program for flows
/// it does not know. With a slot empty, what would go there passes
/// untouched and is counted; the connection-table hit does not need them.
#[test]
fn frames_for_an_empty_l4_slot_pass_untouched_and_are_counted() {
    use aya::maps::ProgramArray;
    use ingress_common::maps::{CALL_L4, CALL_L4_NEW, XDP_CALLS};

    let mut h = Harness::new();
    // Known: local IPv4 (main program) and remote (general program).
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 46000, 30080, 0x02));
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 46001, 30090, 0x02));
    let clear = |h: &mut Harness, slot: u32| {
        let mut calls =
            ProgramArray::try_from(h.programs.ebpf.map_mut(XDP_CALLS).unwrap()).unwrap();
        calls.clear_index(&slot).unwrap();
    };
    clear(&mut h, CALL_L4_NEW);
    let new = tcp(CLIENT, NODE, 46002, 30080, 0x02);
    let (verdict, out, events) = h.run(Hook::Xdp, &new);
    assert_eq!((verdict, &out), (XDP_PASS, &new));
    assert_eq!(events, [(Counter::L4TailCallFailed, 1)]);
    // The general program still serves known flows.
    let (_, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 46001, 30090, 0x10));
    assert!(events.contains(&(Counter::L4FlowHit, 1)), "{events:?}");
    clear(&mut h, CALL_L4);
    let remote = tcp(CLIENT, NODE, 46001, 30090, 0x10);
    let (verdict, out, events) = h.run(Hook::Xdp, &remote);
    assert_eq!((verdict, &out), (XDP_PASS, &remote));
    assert_eq!(events, [(Counter::L4TailCallFailed, 1)]);
    let (verdict, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 46000, 30080, 0x10));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(out, tcp(CLIENT, POD, 46000, 8080, 0x10));
    assert_eq!(events, [(Counter::L4FlowHit, 1), (Counter::L4DnatLocal, 1)]);
}

/// An agent from before the IPv4 connection table recorded IPv4 flows in
/// the IPv6 one (IPv4-mapped keys); the agent that adopts that table moves
/// them over, and they stay connection-table hits to the same pod. A flow
/// the new programs recorded meanwhile keeps its own entry.
#[test]
fn ipv4_flows_left_in_the_ipv6_table_move_to_the_ipv4_table() {
    use ingress_userspace::datapath::flow_sweep::{FlowSweeper, Swept, monotonic_s};
    let mut h = Harness::new();
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 44100, 30080, 0x02));
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 44101, 30080, 0x02));
    let (old, kept) = (
        key(CLIENT, 44100, NODE, 30080),
        key(CLIENT, 44101, NODE, 30080),
    );
    let old4 = l4::FlowKeyV4::of(&old).unwrap();
    // What an older agent's programs would have left: both flows in the
    // IPv6 table, one of them (`old`) no longer in the IPv4 one; `kept`'s
    // IPv6-table entry is a stale copy with another pod port.
    {
        let mut flows4: aya::maps::HashMap<_, l4::FlowKeyV4, l4::FlowValue> =
            aya::maps::HashMap::try_from(h.programs.ebpf.map_mut(l4::L4_FLOWS_V4).unwrap())
                .unwrap();
        let value = flows4.get(&old4, 0).unwrap();
        flows4.remove(&old4).unwrap();
        let mut flows: aya::maps::HashMap<_, FlowKey, l4::FlowValue> =
            aya::maps::HashMap::try_from(h.programs.ebpf.map_mut(l4::L4_FLOWS).unwrap()).unwrap();
        flows.insert(old, value, 0).unwrap();
        let stale = l4::FlowValue {
            backend_port: 9999u16.to_be(),
            ..value
        };
        flows.insert(kept, stale, 0).unwrap();
    }
    let mut sweeper = FlowSweeper::take(&mut h.programs, 10).unwrap();
    assert!(sweeper.flow(&old).is_none(), "not where the programs look");
    // The agent's sweep moves them (one walk of the IPv6 table for that and
    // for closed flows); none is closed, so none is removed.
    assert_eq!(
        sweeper.sweep(monotonic_s()),
        Swept {
            flows: 0,
            reverse: 0,
            moved: 1
        }
    );
    assert_eq!(
        sweeper.move_ipv4_flows(),
        0,
        "the IPv6 table holds none now"
    );
    assert_eq!(sweeper.flow(&kept).unwrap().backend_port, 8080u16.to_be());
    for sport in [44100, 44101] {
        let (verdict, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, sport, 30080, 0x10));
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, tcp(CLIENT, POD, sport, 8080, 0x10));
        assert!(events.contains(&(Counter::L4FlowHit, 1)), "{events:?}");
        assert!(!events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
    }
}

/// The quote an ICMP error carries of `packet`: its IP header and the first
/// 20 bytes of its TCP header.
fn quote(packet: &PacketBuilder) -> Vec<u8> {
    packet.build()[14..14 + 40].to_vec()
}

const ROUTER: [u8; 4] = [198, 18, 9, 1];
const FRAG_NEEDED_MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

#[test]
fn icmp_errors_about_a_local_flow_are_translated_both_ways() {
    let mut h = Harness::new();
    h.run(Hook::Xdp, &tcp(CLIENT, NODE, 45000, 30080, 0x02));
    // The client's side says our reply was too big: the pod must hear it,
    // about what it sent.
    let about_reply = icmp4_error(
        ROUTER,
        NODE,
        3,
        4,
        FRAG_NEEDED_MTU_1400,
        &quote(&PacketBuilder::tcp4(NODE, CLIENT, 30080, 45000)),
    )
    .build();
    let (verdict, out, events) = h.run(Hook::Xdp, &about_reply);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out,
        icmp4_error(
            ROUTER,
            POD,
            3,
            4,
            FRAG_NEEDED_MTU_1400,
            &quote(&PacketBuilder::tcp4(POD, CLIENT, 8080, 45000)),
        )
        .build(),
        "outer destination and quoted source to the pod, checksums exact"
    );
    assert_eq!(events, [(Counter::L4IcmpTranslated, 1)]);
    // The pod's own error about the client's packet leaves from the
    // frontend, quoting what the client sent.
    let from_pod = icmp4_error(
        POD,
        CLIENT,
        3,
        4,
        FRAG_NEEDED_MTU_1400,
        &quote(&PacketBuilder::tcp4(CLIENT, POD, 45000, 8080)),
    )
    .build();
    let (verdict, out, events) = h.run(Hook::Tc, &from_pod);
    assert_eq!(verdict, TC_ACT_PIPE);
    assert_eq!(
        out,
        icmp4_error(
            NODE,
            CLIENT,
            3,
            4,
            FRAG_NEEDED_MTU_1400,
            &quote(&PacketBuilder::tcp4(CLIENT, NODE, 45000, 30080)),
        )
        .build()
    );
    assert_eq!(events, [(Counter::L4IcmpTranslated, 1)]);
    // An error about a flow the tables do not know passes untouched.
    let unknown = icmp4_error(
        ROUTER,
        NODE,
        3,
        4,
        FRAG_NEEDED_MTU_1400,
        &quote(&PacketBuilder::tcp4(NODE, CLIENT, 30080, 45999)),
    )
    .build();
    let (verdict, out, events) = h.run(Hook::Xdp, &unknown);
    assert_eq!((verdict, &out, events.len()), (XDP_PASS, &unknown, 0));
}

#[test]
fn icmp_errors_about_a_remote_flow_are_translated_and_forwarded() {
    let ns = support::Namespaces::new(&["icmpfib"]);
    support::in_netns(ns.name("icmpfib"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            ..LoadOptions::default()
        });
        let (_, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 45100, 30090, 0x02));
        let snat_port = ingress_common::parse::parse(&out[..]).src_port;
        // A router between the node and the remote pod says our translated
        // packet was too big: the client hears it from the frontend, about
        // what it sent.
        let towards_pod = icmp4_error(
            ROUTER,
            NODE,
            3,
            4,
            FRAG_NEEDED_MTU_1400,
            &quote(&PacketBuilder::tcp4(NODE, REMOTE_POD, snat_port, 9090)),
        )
        .build();
        let (verdict, out, events) = h.run(Hook::Xdp, &towards_pod);
        assert_eq!(
            verdict, XDP_PASS,
            "no route in this namespace: the stack forwards"
        );
        assert_eq!(
            out,
            icmp4_error(
                NODE,
                CLIENT,
                3,
                4,
                FRAG_NEEDED_MTU_1400,
                &quote(&PacketBuilder::tcp4(CLIENT, NODE, 45100, 30090)),
            )
            .with_ttl(63)
            .build()
        );
        assert_eq!(
            events,
            [(Counter::L4FibPass, 1), (Counter::L4IcmpTranslated, 1)]
        );
        // The client's side says the reply was too big: the remote pod
        // hears it from the node, about what it sent to the SNAT port.
        let towards_client = icmp4_error(
            ROUTER,
            NODE,
            3,
            4,
            FRAG_NEEDED_MTU_1400,
            &quote(&PacketBuilder::tcp4(NODE, CLIENT, 30090, 45100)),
        )
        .build();
        let (_, out, events) = h.run(Hook::Xdp, &towards_client);
        assert_eq!(
            out,
            icmp4_error(
                NODE,
                REMOTE_POD,
                3,
                4,
                FRAG_NEEDED_MTU_1400,
                &quote(&PacketBuilder::tcp4(REMOTE_POD, NODE, 9090, snat_port)),
            )
            .with_ttl(63)
            .build()
        );
        assert!(events.contains(&(Counter::L4IcmpTranslated, 1)));
    });
}

/// An IPv6 frame with its hop limit set (the builder sends 64).
fn hop_limit(mut frame: Vec<u8>, value: u8) -> Vec<u8> {
    frame[14 + 7] = value;
    frame
}

#[test]
fn ipv6_tcp_and_udp_are_translated_to_the_local_pod_and_back() {
    let mut h = Harness::new();
    let syn = PacketBuilder::tcp6(v6(CLIENT6), v6(NODE6), 40000, 30080).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &syn);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(
        out,
        PacketBuilder::tcp6(v6(CLIENT6), v6(POD6), 40000, 8080).build(),
        "DNAT with the L4 checksum fixed (IPv6 has no header checksum)"
    );
    assert_eq!(
        events,
        [
            (Counter::L4ServiceHit, 1),
            (Counter::L4NewFlow, 1),
            (Counter::L4DnatLocal, 1)
        ]
    );
    let (_, _, events) = h.run(Hook::Xdp, &syn);
    assert!(events.contains(&(Counter::L4FlowHit, 1)));
    let reply = PacketBuilder::tcp6(v6(POD6), v6(CLIENT6), 8080, 40000).build();
    let (verdict, out, events) = h.run(Hook::Tc, &reply);
    assert_eq!(verdict, TC_ACT_PIPE);
    assert_eq!(
        out,
        PacketBuilder::tcp6(v6(NODE6), v6(CLIENT6), 30080, 40000).build()
    );
    assert_eq!(events, [(Counter::L4RevNat, 1)]);

    let q = PacketBuilder::udp6(v6(CLIENT6), v6(NODE6), 5000, 30053).build();
    let (_, out, _) = h.run(Hook::Xdp, &q);
    assert_eq!(
        out,
        PacketBuilder::udp6(v6(CLIENT6), v6(POD6), 5000, 5353).build()
    );
    let a = PacketBuilder::udp6(v6(POD6), v6(CLIENT6), 5353, 5000).build();
    let (_, out, _) = h.run(Hook::Tc, &a);
    assert_eq!(
        out,
        PacketBuilder::udp6(v6(NODE6), v6(CLIENT6), 30053, 5000).build()
    );
    // An IPv6 frontend with extension headers before TCP is translated
    // where the parser found the TCP header.
    let ext = PacketBuilder::tcp6(v6(CLIENT6), v6(NODE6), 40001, 30080)
        .with_ext(60, &[1, 4, 0, 0, 0, 0])
        .build();
    let (_, out, _) = h.run(Hook::Xdp, &ext);
    assert_eq!(
        out,
        PacketBuilder::tcp6(v6(CLIENT6), v6(POD6), 40001, 8080)
            .with_ext(60, &[1, 4, 0, 0, 0, 0])
            .build()
    );
}

#[test]
fn ipv6_tcp_to_an_empty_service_is_reset() {
    let mut h = Harness::new();
    let syn = PacketBuilder::tcp6(v6(CLIENT6), v6(NODE6), 40000, 30099).build();
    let (verdict, out, events) = h.run(Hook::Xdp, &syn);
    assert_eq!(verdict, XDP_TX);
    assert!(events.contains(&(Counter::L4Reset, 1)));
    assert_eq!(out.len(), 14 + 40 + 20);
    let p = ingress_common::parse::parse(&out[..]);
    assert_eq!((p.src_port, p.dst_port), (30099, 40000));
    assert_eq!(&out[14 + 8..14 + 24], &v6(NODE6));
    assert_eq!(&out[14 + 24..14 + 40], &v6(CLIENT6));
    assert_eq!(out[14 + 40 + 13], 0x14, "RST|ACK");
    let pseudo = ingress_common::csum::pseudo_header_v6(&v6(NODE6), &v6(CLIENT6), 6, 20);
    assert_eq!(
        ingress_common::csum::checksum(pseudo, &out[14 + 40..]),
        0,
        "TCP checksum from scratch"
    );
}

#[test]
fn ipv6_remote_backends_get_dnat_snat_and_their_replies_come_back() {
    let ns = support::Namespaces::new(&["fib6"]);
    support::in_netns(ns.name("fib6"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv6: Some(v6(NODE6).into()),
            ..LoadOptions::default()
        });
        let syn = PacketBuilder::tcp6(v6(CLIENT6), v6(NODE6), 40000, 30090).build();
        let (verdict, out, events) = h.run(Hook::Xdp, &syn);
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(
            events,
            [
                (Counter::L4ServiceHit, 1),
                (Counter::L4NewFlow, 1),
                (Counter::L4DnatRemote, 1),
                (Counter::L4FibPass, 1)
            ]
        );
        let snat_port = ingress_common::parse::parse(&out[..]).src_port;
        assert!((1024..30_000).contains(&snat_port));
        assert_eq!(
            out,
            hop_limit(
                PacketBuilder::tcp6(v6(NODE6), v6(REMOTE_POD6), snat_port, 9090).build(),
                63
            )
        );
        let reply = PacketBuilder::tcp6(v6(REMOTE_POD6), v6(NODE6), 9090, snat_port).build();
        let (_, out, events) = h.run(Hook::Xdp, &reply);
        assert_eq!(
            events,
            [(Counter::L4ReplyRemote, 1), (Counter::L4FibPass, 1)]
        );
        assert_eq!(
            out,
            hop_limit(
                PacketBuilder::tcp6(v6(NODE6), v6(CLIENT6), 30090, 40000).build(),
                63
            )
        );
        // Without an IPv6 SNAT address the IPv4 one is no substitute.
        let (_, out, _) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp4(CLIENT, NODE, 40000, 30090).build(),
        );
        assert_eq!(out, PacketBuilder::tcp4(CLIENT, NODE, 40000, 30090).build());
    });
}

/// The quote an ICMPv6 error carries of `packet`: its IPv6 header and the
/// first `l4` bytes of its TCP or UDP header.
fn quote6(packet: &PacketBuilder, l4: usize) -> Vec<u8> {
    packet.build()[14..14 + 40 + l4].to_vec()
}

const ROUTER6: u16 = 0x901;
const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

/// The ICMPv6 checksum of a frame with a plain IPv6 header, recomputed
/// from scratch over the pseudo-header: 0 when right.
fn icmp6_checksum(frame: &[u8]) -> u16 {
    let (src, dst): ([u8; 16], [u8; 16]) = (
        frame[14 + 8..14 + 24].try_into().unwrap(),
        frame[14 + 24..14 + 40].try_into().unwrap(),
    );
    let body = &frame[14 + 40..];
    let pseudo = ingress_common::csum::pseudo_header_v6(&src, &dst, 58, body.len() as u32);
    ingress_common::csum::checksum(pseudo, body)
}

/// Whether an ICMPv6 error quotes the whole packet (its payload length
/// says no more than the quote holds), so the quoted L4 checksum can be
/// checked.
fn quote_is_whole(frame: &[u8]) -> bool {
    let q = &frame[14 + 40 + 8..];
    usize::from(u16::from_be_bytes([q[4], q[5]])) == q.len() - 40
}

/// The quoted TCP or UDP checksum of an ICMPv6 error whose quote holds the
/// whole L4 header, recomputed from scratch: 0 when right.
fn quoted_l4_checksum(frame: &[u8]) -> u16 {
    let q = &frame[14 + 40 + 8..];
    let (src, dst): ([u8; 16], [u8; 16]) =
        (q[8..24].try_into().unwrap(), q[24..40].try_into().unwrap());
    let l4 = &q[40..];
    let pseudo = ingress_common::csum::pseudo_header_v6(&src, &dst, q[6], l4.len() as u32);
    ingress_common::csum::checksum(pseudo, l4)
}

/// ICMPv6 errors go to the tail-called ICMPv6 programs: packet too big
/// (and destination unreachable, time exceeded) about a flow to the local
/// pod, from the client's side on XDP and from the pod on TC, with exact
/// bytes; what is about no flow, cut short or no error passes untouched;
/// an empty program-array slot passes and is counted.
#[test]
fn icmpv6_errors_about_a_local_flow_are_translated_both_ways() {
    use aya::maps::ProgramArray;
    use ingress_common::maps::{CALL_ICMP6, TC_CALLS, XDP_CALLS};

    let mut h = Harness::new();
    let (client, node, pod, router) = (v6(CLIENT6), v6(NODE6), v6(POD6), v6(ROUTER6));
    h.run(
        Hook::Xdp,
        &PacketBuilder::tcp6(client, node, 40000, 30080).build(),
    );
    h.run(
        Hook::Xdp,
        &PacketBuilder::udp6(client, node, 5000, 30053).build(),
    );
    for (kind, code, rest) in [(2, 0, MTU_1280), (1, 4, [0; 4]), (3, 0, [0; 4])] {
        // The client's side could not take our reply: the pod hears it,
        // about what it sent.
        for (reply, from_pod, l4) in [
            (
                PacketBuilder::tcp6(node, client, 30080, 40000),
                PacketBuilder::tcp6(pod, client, 8080, 40000),
                20,
            ),
            (
                PacketBuilder::tcp6(node, client, 30080, 40000),
                PacketBuilder::tcp6(pod, client, 8080, 40000),
                8,
            ),
            (
                PacketBuilder::udp6(node, client, 30053, 5000),
                PacketBuilder::udp6(pod, client, 5353, 5000),
                8,
            ),
        ] {
            let error = icmp6_error(router, node, kind, code, rest, &quote6(&reply, l4)).build();
            let (verdict, out, events) = h.run(Hook::Xdp, &error);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(
                out,
                icmp6_error(router, pod, kind, code, rest, &quote6(&from_pod, l4)).build(),
                "type {kind}, {l4} quoted L4 bytes: outer destination and quoted source the pod"
            );
            assert_eq!(icmp6_checksum(&out), 0, "ICMPv6 checksum from scratch");
            if quote_is_whole(&out) {
                assert_eq!(quoted_l4_checksum(&out), 0, "quoted checksum from scratch");
            }
            assert_eq!(events, [(Counter::L4Icmp6Translated, 1)]);
        }
        // The pod's own error about the client's packet (the node's, when
        // it is the pod's path that is too narrow) leaves from the
        // frontend, quoting what the client sent.
        let from_pod = icmp6_error(
            pod,
            client,
            kind,
            code,
            rest,
            &quote6(&PacketBuilder::tcp6(client, pod, 40000, 8080), 20),
        )
        .build();
        let (verdict, out, events) = h.run(Hook::Tc, &from_pod);
        assert_eq!(verdict, TC_ACT_PIPE);
        let want = icmp6_error(
            node,
            client,
            kind,
            code,
            rest,
            &quote6(&PacketBuilder::tcp6(client, node, 40000, 30080), 20),
        )
        .build();
        assert_eq!(out, want, "type {kind} on TC");
        assert_eq!(icmp6_checksum(&out), 0);
        assert!(quote_is_whole(&out));
        assert_eq!(quoted_l4_checksum(&out), 0);
        assert_eq!(events, [(Counter::L4Icmp6Translated, 1)]);
    }

    let reply = PacketBuilder::tcp6(node, client, 30080, 40000);
    let untouched = [
        // About a flow the tables do not know.
        icmp6_error(
            router,
            node,
            2,
            0,
            MTU_1280,
            &quote6(&PacketBuilder::tcp6(node, client, 30080, 40999), 20),
        )
        .build(),
        // A quote cut before the ports.
        icmp6_error(router, node, 2, 0, MTU_1280, &quote6(&reply, 8)[..42]).build(),
        // Echo request and reply.
        icmp6_error(client, node, 128, 0, [0, 1, 0, 1], b"ping").build(),
        icmp6_error(node, client, 129, 0, [0, 1, 0, 1], b"ping").build(),
    ];
    for frame in &untouched {
        for hook in [Hook::Xdp, Hook::Tc] {
            let (_, out, events) = h.run(hook, frame);
            assert_eq!(&out, frame, "{hook:?}: untouched");
            assert_eq!(events, [], "{hook:?}: no event");
        }
    }

    // An empty slot: the main programs pass the error and count it.
    let error = icmp6_error(router, node, 2, 0, MTU_1280, &quote6(&reply, 20)).build();
    for name in [XDP_CALLS, TC_CALLS] {
        let mut calls = ProgramArray::try_from(h.programs.ebpf.map_mut(name).unwrap()).unwrap();
        calls.clear_index(&CALL_ICMP6).unwrap();
    }
    for hook in [Hook::Xdp, Hook::Tc] {
        let (_, out, events) = h.run(hook, &error);
        assert_eq!(out, error, "{hook:?}");
        assert_eq!(events, [(Counter::L4Icmp6TailCallFailed, 1)], "{hook:?}");
    }
}

/// Packet too big about a flow to a remote pod (DNAT + SNAT), in both
/// directions, forwarded like the flow (the FIB has no answer in this
/// namespace, so the stack forwards): exact bytes, hop limit decremented.
#[test]
fn icmpv6_packet_too_big_about_a_remote_flow_is_translated_both_ways() {
    let ns = support::Namespaces::new(&["icmp6fib"]);
    support::in_netns(ns.name("icmp6fib"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv6: Some(v6(NODE6).into()),
            ..LoadOptions::default()
        });
        let (client, node, remote, router) = (v6(CLIENT6), v6(NODE6), v6(REMOTE_POD6), v6(ROUTER6));
        let (_, out, _) = h.run(
            Hook::Xdp,
            &PacketBuilder::tcp6(client, node, 40000, 30090).build(),
        );
        let snat_port = ingress_common::parse::parse(&out[..]).src_port;
        assert!((1024..30_000).contains(&snat_port));
        for l4 in [20, 8] {
            // A router between the node and the remote pod: our translated
            // packet was too big. The client hears it from the frontend,
            // about what it sent.
            let towards_pod = icmp6_error(
                router,
                node,
                2,
                0,
                MTU_1280,
                &quote6(&PacketBuilder::tcp6(node, remote, snat_port, 9090), l4),
            )
            .build();
            let (verdict, out, events) = h.run(Hook::Xdp, &towards_pod);
            assert_eq!(
                verdict, XDP_PASS,
                "no route in this namespace: the stack forwards"
            );
            assert_eq!(
                out,
                hop_limit(
                    icmp6_error(
                        node,
                        client,
                        2,
                        0,
                        MTU_1280,
                        &quote6(&PacketBuilder::tcp6(client, node, 40000, 30090), l4),
                    )
                    .build(),
                    63
                ),
                "{l4} quoted L4 bytes"
            );
            assert_eq!(icmp6_checksum(&out), 0);
            if quote_is_whole(&out) {
                assert_eq!(quoted_l4_checksum(&out), 0);
            }
            assert_eq!(
                events,
                [(Counter::L4FibPass, 1), (Counter::L4Icmp6Translated, 1)]
            );
            // The client's side could not take the reply: the remote pod
            // hears it from the node, about what it sent to the SNAT port.
            let towards_client = icmp6_error(
                router,
                node,
                2,
                0,
                MTU_1280,
                &quote6(&PacketBuilder::tcp6(node, client, 30090, 40000), l4),
            )
            .build();
            let (verdict, out, events) = h.run(Hook::Xdp, &towards_client);
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(
                out,
                hop_limit(
                    icmp6_error(
                        node,
                        remote,
                        2,
                        0,
                        MTU_1280,
                        &quote6(&PacketBuilder::tcp6(remote, node, 9090, snat_port), l4),
                    )
                    .build(),
                    63
                )
            );
            assert_eq!(icmp6_checksum(&out), 0);
            assert_eq!(
                events,
                [(Counter::L4FibPass, 1), (Counter::L4Icmp6Translated, 1)]
            );
        }
        // Hop limit 1: left to the stack untranslated.
        let last_hop = hop_limit(
            icmp6_error(
                router,
                node,
                2,
                0,
                MTU_1280,
                &quote6(&PacketBuilder::tcp6(node, remote, snat_port, 9090), 20),
            )
            .build(),
            1,
        );
        let (verdict, out, events) = h.run(Hook::Xdp, &last_hop);
        assert_eq!((verdict, &out, events.len()), (XDP_PASS, &last_hop, 0));
    });
}

/// The sizes and ranges of the command line reach the programs: a Maglev
/// size other than the default (the userspace tables and the programs'
/// `MAGLEV_SIZE` must agree, or services past the first land outside the
/// array), a small service map, and a SNAT port range.
#[test]
fn load_options_reach_the_programs() {
    let ns = support::Namespaces::new(&["fib"]);
    support::in_netns(ns.name("fib"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 40_000,
            snat_port_span: 10,
            max_services: 12,
            max_backends: 16,
            max_flows: 1024,
            maglev_size: 251,
            ..LoadOptions::default()
        });
        assert_eq!(h.l4.table_size(), 251);
        for (i, port) in [30080u16, 30060, 30061, 30070].into_iter().enumerate() {
            let syn = PacketBuilder::tcp4(CLIENT, NODE, 41000 + i as u16, port).build();
            let (verdict, _, events) = h.run(Hook::Xdp, &syn);
            assert_eq!(verdict, XDP_PASS, "port {port}");
            assert!(
                events.contains(&(Counter::L4DnatLocal, 1)),
                "port {port}: {events:?}"
            );
        }
        for sport in 42000..42005u16 {
            let (_, out, _) = h.run(
                Hook::Xdp,
                &PacketBuilder::tcp4(CLIENT, NODE, sport, 30090).build(),
            );
            let snat = ingress_common::parse::parse(&out[..]).src_port;
            assert!((40_000..40_010).contains(&snat), "SNAT port {snat}");
        }
    });
}

/// The id of the program in slot `index` of the program array pinned at
/// `path` (`BPF_MAP_LOOKUP_ELEM` on a program array answers the id), or
/// `None` for an empty slot. aya's `ProgramArray` has no lookup.
fn program_in_slot(path: &std::path::Path, index: u32) -> Option<u32> {
    use std::os::fd::{AsFd, AsRawFd};
    let map = aya::maps::MapData::from_pin(path).expect("opening the pinned program array");
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut value = 0u32;
    let attr = Attr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: &index as *const u32 as u64,
        value: &mut value as *mut u32 as u64,
        flags: 0,
    };
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    // SAFETY: the attribute names a live map fd and buffers that outlive
    // the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
    (rc == 0).then_some(value)
}

/// Pinned state maps: a second load adopts the connection table (a known
/// flow stays a connection-table hit), config maps are published filled,
/// and a pinned map of another size is replaced rather than adopted.
#[test]
fn pinned_state_maps_are_adopted_and_mismatched_ones_replaced() {
    use ingress_common::{
        l4::{L4_FLOWS, L4_FLOWS_V4, L4_SERVICES},
        maps::{CALL_ICMP6, CALL_L4, CALL_L4_NEW, TC_CALLS, XDP_CALLS},
    };
    use ingress_userspace::datapath::pin::{self, PinLayout};

    support::require_root();
    let layout = PinLayout::new(xtask::testbed::agent::bpffs_test_dir());
    struct Cleanup(PinLayout);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove_all();
        }
    }
    let _cleanup = Cleanup(layout.clone());
    pin::ensure_bpffs(layout.root()).expect("bpffs");
    let opts = LoadOptions {
        pins: Some(layout.clone()),
        ..LoadOptions::default()
    };
    let syn = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30060).build();
    let mut ack = PacketBuilder::tcp4(CLIENT, NODE, 40000, 30060);
    ack.l4 = L4::Tcp {
        sport: 40000,
        dport: 30060,
        flags: 0x10,
        payload: b"x".to_vec(),
    };
    let ack = ack.build();

    let mut first = Harness::with(&opts);
    assert!(layout.map(L4_SERVICES).exists(), "config maps published");
    assert!(!layout.staged_map(L4_SERVICES).exists());
    let (_, to_pod, events) = first.run(Hook::Xdp, &syn);
    assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
    drop(first);
    // Every fd of the first load is closed: the pins alone hold the
    // program arrays, and a program array keeps its entries while a pin
    // (a user reference) holds it, so the ICMPv6 programs stay reachable
    // for the programs left attached (`--on-exit keep`).
    let first_ids = [XDP_CALLS, TC_CALLS].map(|name| {
        let id = program_in_slot(&layout.map(name), CALL_ICMP6);
        assert!(id.is_some(), "{name} keeps its slot");
        id
    });

    let mut second = Harness::with(&opts);
    let (_, out, events) = second.run(Hook::Xdp, &ack);
    assert!(
        events.contains(&(Counter::L4FlowHit, 1)),
        "the flow is known to the new programs: {events:?}"
    );
    // Same pod as before the reload.
    let pod = |b: &[u8]| ingress_common::parse::parse(b).dst_port;
    assert_eq!(pod(&out[..]), pod(&to_pod[..]));
    // The adopting load wrote its own ICMPv6 programs into the slots.
    let (client, node) = (v6(CLIENT6), v6(NODE6));
    second.run(
        Hook::Xdp,
        &PacketBuilder::tcp6(client, node, 40000, 30080).build(),
    );
    let too_big = icmp6_error(
        v6(ROUTER6),
        node,
        2,
        0,
        MTU_1280,
        &quote6(&PacketBuilder::tcp6(node, client, 30080, 40000), 20),
    )
    .build();
    let (_, _, events) = second.run(Hook::Xdp, &too_big);
    assert_eq!(events, [(Counter::L4Icmp6Translated, 1)]);
    for (name, old) in [XDP_CALLS, TC_CALLS].into_iter().zip(first_ids) {
        let id = program_in_slot(&layout.map(name), CALL_ICMP6);
        assert!(id.is_some() && id != old, "{name}: this load's program");
    }
    drop(second);

    // A load adopting the arrays leaves the L4 slots to the previous load's
    // programs (whose config maps are filled) until it is armed, as the
    // agent does once its own maps are filled.
    let slots = || [CALL_L4, CALL_L4_NEW].map(|slot| program_in_slot(&layout.map(XDP_CALLS), slot));
    let before = slots();
    assert!(before.iter().all(Option::is_some), "{before:?}");
    let mut unarmed = LoadedPrograms::load_with(&opts).unwrap();
    assert_eq!(slots(), before, "not before the maps are filled");
    unarmed.arm_general_path().unwrap();
    let after = slots();
    assert!(
        after
            .iter()
            .zip(before)
            .all(|(a, b)| a.is_some() && *a != b),
        "{after:?}"
    );
    drop(unarmed);

    let mut third = Harness::with(&LoadOptions {
        max_flows: 2048,
        ..opts.clone()
    });
    let (_, _, events) = third.run(Hook::Xdp, &ack);
    assert!(
        events.contains(&(Counter::L4NewFlow, 1)),
        "a table of another size is not adopted: {events:?}"
    );
    for name in [L4_FLOWS, L4_FLOWS_V4] {
        let info = aya::maps::MapInfo::from_pin(layout.map(name)).unwrap();
        assert_eq!(info.max_entries(), 2048, "{name}");
    }
}

/// The Maglev tables the agent wrote (through the shared mapping of the
/// array) are what the kernel returns for every slot of every service.
#[test]
fn maglev_tables_written_through_the_mapping_are_what_the_kernel_reads() {
    let h = Harness::new();
    assert_eq!(h.l4.maglev_mismatch().unwrap(), None);
}

/// With one SNAT port, a second flow to the remote pod finds none
/// (`l4_snat_exhausted`, dropped); once the first flow closed (RST) a while
/// ago, its port goes to a new flow.
#[test]
fn a_closed_flows_snat_port_goes_to_a_new_flow() {
    let ns = support::Namespaces::new(&["snatreuse"]);
    support::in_netns(ns.name("snatreuse"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 20_000,
            snat_port_span: 1,
            ..LoadOptions::default()
        });
        let (_, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47000, 30090, 0x02));
        assert_eq!(ingress_common::parse::parse(&out[..]).src_port, 20_000);
        let (verdict, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47001, 30090, 0x02));
        assert_eq!(verdict, XDP_DROP);
        assert!(
            events.contains(&(Counter::L4SnatExhausted, 1)),
            "{events:?}"
        );
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47000, 30090, 0x14));
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(l4::SNAT_REUSE_S) * 1000 + 1100,
        ));
        let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47002, 30090, 0x02));
        assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
        assert_eq!(ingress_common::parse::parse(&out[..]).src_port, 20_000);
    });
}

/// A port a frontend listens on is never a SNAT port, even inside the
/// range: the pod's reply to it would be taken for a new flow to that
/// frontend. With the range 30090-30091 and a NodePort on 30090, the first
/// flow gets 30091 and the second finds no port.
#[test]
fn a_frontend_port_is_never_a_snat_port() {
    let ns = support::Namespaces::new(&["snatfront"]);
    support::in_netns(ns.name("snatfront"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 30_090,
            snat_port_span: 2,
            ..LoadOptions::default()
        });
        let (verdict, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47000, 30090, 0x02));
        assert_ne!(verdict, XDP_DROP);
        assert_eq!(src_port(&out), 30_091);
        let (verdict, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47001, 30090, 0x02));
        assert_eq!(verdict, XDP_DROP);
        assert!(
            events.contains(&(Counter::L4SnatExhausted, 1)),
            "{events:?}"
        );
    });
}

/// The SNAT source port a translated frame left with.
fn src_port(out: &[u8]) -> u16 {
    ingress_common::parse::parse(out).src_port
}

/// A remote flow's reverse entry: (client port, closed_at).
fn snat_owner(h: &Harness, snat_port: u16) -> Option<(u16, u32)> {
    let (_, r) = entries(
        h,
        key(CLIENT, 1, NODE, 1),
        key(REMOTE_POD, 9090, NODE, snat_port),
    );
    r.map(|r| (u16::from_be(r.client_port), r.closed_at))
}

#[test]
fn a_syn_on_a_closed_remote_flow_never_reuses_a_snat_port_another_client_took() {
    // One SNAT port. A's flow closes; 2 s later B's new flow gets the port.
    // A's client then reuses its source port: its SYN must not go out from
    // that port (B's connection at the pod, replies to B) but start a new
    // flow, which finds no port.
    let ns = support::Namespaces::new(&["snatsyn"]);
    support::in_netns(ns.name("snatsyn"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 20_000,
            snat_port_span: 1,
            ..LoadOptions::default()
        });
        let (_, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47100, 30090, 0x02));
        assert_eq!(src_port(&out), 20_000);
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47100, 30090, 0x14));
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(l4::SNAT_REUSE_S) * 1000 + 1100,
        ));
        let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47101, 30090, 0x02));
        assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
        assert_eq!(
            out,
            PacketBuilder::tcp4(NODE, REMOTE_POD, 20_000, 9090)
                .with_ttl(63)
                .build()
        );
        assert_eq!(snat_owner(&h, 20_000), Some((47101, 0)));
        let (verdict, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47100, 30090, 0x02));
        assert_eq!(verdict, XDP_DROP);
        assert!(
            events.contains(&(Counter::L4SnatExhausted, 1))
                && !events.contains(&(Counter::L4FlowHit, 1)),
            "{events:?}"
        );
        assert_eq!(snat_owner(&h, 20_000), Some((47101, 0)), "B keeps its port");
        // A segment of A's old connection (no SYN) still takes the old
        // entry: late retransmissions are translated as before.
        let (_, _, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47100, 30090, 0x10));
        assert!(events.contains(&(Counter::L4FlowHit, 1)), "{events:?}");
    });
}

#[test]
fn a_closed_snat_port_goes_back_to_its_own_client_at_once_and_to_others_longest_closed_first() {
    // Two SNAT ports. The pod holds TIME_WAIT for a port whose connection
    // it closed; a SYN from another client on it is refused (PAWS), one
    // from the same client tuple is not.
    let ns = support::Namespaces::new(&["snattw"]);
    support::in_netns(ns.name("snattw"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 20_000,
            snat_port_span: 2,
            ..LoadOptions::default()
        });
        let (_, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47200, 30090, 0x02));
        let a = src_port(&out);
        let other = if a == 20_000 { 20_001 } else { 20_000 };
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47200, 30090, 0x14));
        // The same client tuple again, at once: a new flow on its old port.
        let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47200, 30090, 0x02));
        assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
        assert_eq!(src_port(&out), a);
        assert_eq!(snat_owner(&h, a), Some((47200, 0)));
        // Another client gets the other port.
        let (_, out, _) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47201, 30090, 0x02));
        assert_eq!(src_port(&out), other);
        // Both close, a second apart; once both are past SNAT_REUSE_S, a
        // third client gets the one closed first.
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47200, 30090, 0x14));
        std::thread::sleep(std::time::Duration::from_millis(1100));
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47201, 30090, 0x14));
        std::thread::sleep(std::time::Duration::from_millis(
            u64::from(l4::SNAT_REUSE_S) * 1000 + 100,
        ));
        let (_, out, events) = h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47202, 30090, 0x02));
        assert!(events.contains(&(Counter::L4NewFlow, 1)), "{events:?}");
        assert_eq!(src_port(&out), a);
        assert_eq!(snat_owner(&h, a), Some((47202, 0)));
        let (_, closed_at) = snat_owner(&h, other).unwrap();
        assert_ne!(closed_at, 0, "the other port stays closed");
    });
}

#[test]
fn the_sweep_keeps_a_remote_flows_reverse_entry_through_the_pods_time_wait() {
    use ingress_userspace::datapath::flow_sweep::{FlowSweeper, Swept, monotonic_s};
    let ns = support::Namespaces::new(&["snatsweep"]);
    support::in_netns(ns.name("snatsweep"), || {
        let mut h = Harness::with(&LoadOptions {
            snat_ipv4: Some(NODE.into()),
            snat_port_min: 20_000,
            snat_port_span: 1,
            close_timeout_s: 0,
            ..LoadOptions::default()
        });
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47300, 30090, 0x02));
        h.run(Hook::Xdp, &tcp(CLIENT, NODE, 47300, 30090, 0x14));
        let mut sweeper = FlowSweeper::take(&mut h.programs, 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // The flow goes with the close timeout; the SNAT port's reverse
        // entry stays until the pod's TIME_WAIT is over.
        let now = monotonic_s();
        assert_eq!(
            sweeper.sweep(now),
            Swept {
                flows: 1,
                reverse: 0,
                moved: 0
            }
        );
        let rev = key(REMOTE_POD, 9090, NODE, 20_000);
        assert!(sweeper.reverse(&rev).is_some());
        assert_eq!(
            sweeper.sweep(now + l4::POD_TIME_WAIT_S + 1),
            Swept {
                flows: 0,
                reverse: 1,
                moved: 0
            }
        );
        assert!(sweeper.reverse(&rev).is_none());
    });
}
