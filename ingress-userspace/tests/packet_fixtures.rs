//! Packet fixtures run through the real, kernel-loaded programs with
//! `BPF_PROG_TEST_RUN`: each frame asserts the verdict, the output bytes
//! (unchanged: every frame passes for now) and exactly which counters moved.

mod support;

use aya::programs::{TestRun, TestRunOptions};
use ingress_common::{
    counters::Counter,
    parse::{IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_ICMP, IPPROTO_ICMPV6},
    testing::{L4, PacketBuilder, arp_request, v6},
};
use ingress_userspace::datapath::{
    LoadedPrograms,
    counters::{CounterMap, Hook},
};

const XDP_PASS: u32 = 2;
const TC_ACT_PIPE: u32 = 3;

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const NODE: [u8; 4] = [198, 18, 0, 1];

/// Verdict, output frame, and the counters that moved with their deltas.
type RunResult = (u32, Vec<u8>, Vec<(Counter, u64)>);

struct Harness {
    programs: LoadedPrograms,
    xdp_counters: CounterMap,
    tc_counters: CounterMap,
}

impl Harness {
    fn new() -> Self {
        support::require_root();
        let mut programs = LoadedPrograms::load().expect("loading the eBPF object");
        let xdp_counters = programs.take_counters(Hook::Xdp).expect("XDP counters");
        let tc_counters = programs.take_counters(Hook::Tc).expect("TC counters");
        Harness {
            programs,
            xdp_counters,
            tc_counters,
        }
    }

    /// Runs one frame through a program; returns (verdict, output frame,
    /// counter deltas), or `None` when the kernel's test runner refused to
    /// build the frame (asserted to happen exactly where it must).
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<RunResult> {
        let counters = match hook {
            Hook::Xdp => &self.xdp_counters,
            Hook::Tc => &self.tc_counters,
        };
        let before = counters.read_all().expect("reading counters");
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let result = match hook {
            Hook::Xdp => self.programs.xdp().unwrap().test_run(opts),
            Hook::Tc => self.programs.tc().unwrap().test_run(opts),
        };
        let refused = hook == Hook::Tc && skb_runner_refuses(frame);
        let result = match (result, refused) {
            (Ok(r), false) => r,
            (Err(_), true) => return None,
            (Ok(_), true) => panic!("the skb test runner accepted a frame it should refuse"),
            (Err(e), false) => panic!("BPF_PROG_TEST_RUN on {hook:?}, {} bytes: {e}", frame.len()),
        };
        out.truncate(result.data_size_out as usize);
        let counters = match hook {
            Hook::Xdp => &self.xdp_counters,
            Hook::Tc => &self.tc_counters,
        };
        let after = counters.read_all().expect("reading counters");
        let deltas = before
            .iter()
            .zip(after)
            .filter(|(b, a)| a.1 != b.1)
            .map(|(b, a)| (a.0, a.1 - b.1))
            .collect();
        Some((result.return_value, out, deltas))
    }

    /// Asserts the frame passes unchanged on both hooks and moves exactly
    /// `Packets`, `class` and `flags`, each by one.
    fn expect(&mut self, name: &str, frame: &[u8], class: Counter, flags: &[Counter]) {
        let mut want = vec![(Counter::Packets, 1), (class, 1)];
        want.extend(flags.iter().map(|f| (*f, 1)));
        want.sort_by_key(|(c, _)| c.index());
        for (hook, verdict) in [(Hook::Xdp, XDP_PASS), (Hook::Tc, TC_ACT_PIPE)] {
            let Some((got_verdict, out, deltas)) = self.run(hook, frame) else {
                continue;
            };
            assert_eq!(got_verdict, verdict, "{name} on {hook:?}: verdict");
            assert_eq!(
                out, frame,
                "{name} on {hook:?}: the frame must pass unchanged"
            );
            assert_eq!(deltas, want, "{name} on {hook:?}: counters that moved");
        }
    }
}

/// The kernel's skb test runner (used for TC programs) refuses an untagged
/// IPv4 or IPv6 frame shorter than the fixed IP header with EINVAL, so a TC
/// program never sees such a frame from it; the XDP runner has no such rule.
fn skb_runner_refuses(frame: &[u8]) -> bool {
    let l3 = frame.len().saturating_sub(14);
    match [frame[12], frame[13]] {
        [0x08, 0x00] => l3 < 20,
        [0x86, 0xdd] => l3 < 40,
        _ => false,
    }
}

#[test]
fn well_formed_frames_are_classified_and_passed() {
    let mut h = Harness::new();
    let cases: Vec<(&str, Vec<u8>, Counter, Vec<Counter>)> = vec![
        (
            "ipv4 tcp",
            PacketBuilder::tcp4(CLIENT, NODE, 40000, 80).build(),
            Counter::Ipv4Tcp,
            vec![],
        ),
        (
            "ipv4 udp",
            PacketBuilder::udp4(CLIENT, NODE, 40000, 53).build(),
            Counter::Ipv4Udp,
            vec![],
        ),
        (
            "ipv6 tcp",
            PacketBuilder::tcp6(v6(2), v6(1), 40000, 443).build(),
            Counter::Ipv6Tcp,
            vec![],
        ),
        (
            "ipv6 udp",
            PacketBuilder::udp6(v6(2), v6(1), 40000, 53).build(),
            Counter::Ipv6Udp,
            vec![],
        ),
        (
            "vlan ipv4 tcp",
            PacketBuilder::tcp4(CLIENT, NODE, 1, 80)
                .with_vlan(100)
                .build(),
            Counter::Ipv4Tcp,
            vec![Counter::Vlan],
        ),
        (
            "qinq ipv6 udp",
            PacketBuilder::udp6(v6(2), v6(1), 1, 53)
                .with_vlan(10)
                .with_vlan(20)
                .build(),
            Counter::Ipv6Udp,
            vec![Counter::Vlan],
        ),
        (
            "ipv4 with options",
            PacketBuilder::tcp4(CLIENT, NODE, 1, 80)
                .with_ipv4_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                .build(),
            Counter::Ipv4Tcp,
            vec![Counter::Ipv4Options],
        ),
        (
            "ipv4 first fragment",
            PacketBuilder::udp4(CLIENT, NODE, 1, 53)
                .with_frag(0x2000)
                .build(),
            Counter::FragmentFirst,
            vec![],
        ),
        (
            "ipv4 later fragment",
            PacketBuilder::udp4(CLIENT, NODE, 1, 53)
                .with_frag(0x00b9)
                .build(),
            Counter::FragmentLater,
            vec![],
        ),
        (
            "ipv6 first fragment",
            PacketBuilder::udp6(v6(2), v6(1), 1, 53)
                .with_ext(IPPROTO_FRAGMENT, &[0, 1, 0, 0, 0, 9])
                .build(),
            Counter::FragmentFirst,
            vec![],
        ),
        (
            "ipv6 later fragment",
            PacketBuilder::udp6(v6(2), v6(1), 1, 53)
                .with_ext(IPPROTO_FRAGMENT, &[0x05, 0xc8, 0, 0, 0, 9])
                .build(),
            Counter::FragmentLater,
            vec![],
        ),
        (
            "ipv6 tcp behind a destination-options header",
            PacketBuilder::tcp6(v6(2), v6(1), 1, 80)
                .with_ext(IPPROTO_DSTOPTS, &[1, 4, 0, 0, 0, 0])
                .build(),
            Counter::Ipv6Tcp,
            vec![],
        ),
        ("arp", arp_request(), Counter::NonIp, vec![]),
    ];
    for (name, frame, class, flags) in cases {
        h.expect(name, &frame, class, &flags);
    }
}

#[test]
fn other_l3_payloads() {
    let mut h = Harness::new();
    let mut icmp = PacketBuilder::tcp4(CLIENT, NODE, 0, 0);
    icmp.l4 = L4::Other {
        proto: IPPROTO_ICMP,
        bytes: vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0],
    };
    h.expect("icmp echo", &icmp.build(), Counter::Ipv4Other, &[]);
    let mut icmp6 = PacketBuilder::tcp6(v6(2), v6(1), 0, 0);
    icmp6.l4 = L4::Other {
        proto: IPPROTO_ICMPV6,
        bytes: vec![128, 0, 0, 0, 0, 1, 0, 1],
    };
    h.expect("icmpv6 echo", &icmp6.build(), Counter::Ipv6Other, &[]);
}

#[test]
fn malformed_ip_headers_are_counted_and_passed() {
    let mut h = Harness::new();
    let good = PacketBuilder::tcp4(CLIENT, NODE, 1, 80).build();
    let mut bad_version = good.clone();
    bad_version[14] = 0x75;
    h.expect(
        "ipv4 ethertype, version 7",
        &bad_version,
        Counter::MalformedIp,
        &[],
    );
    let mut small_ihl = good.clone();
    small_ihl[14] = 0x43;
    h.expect("ipv4 ihl 3", &small_ihl, Counter::MalformedIp, &[]);
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&8u16.to_be_bytes());
    h.expect(
        "ipv4 total length < ihl",
        &short_total,
        Counter::MalformedIp,
        &[],
    );
    let mut options_past_end = good.clone();
    options_past_end[14] = 0x4f; // IHL 60 bytes in a 54-byte frame
    options_past_end[16..18].copy_from_slice(&80u16.to_be_bytes());
    h.expect(
        "ipv4 options past the end",
        &options_past_end,
        Counter::TruncatedIpv4,
        &[Counter::Ipv4Options],
    );
}

/// Every length from the Ethernet header (the smallest frame the kernel's
/// test runner accepts) to the whole frame: the class names the header that
/// the cut falls in.
#[test]
fn frames_truncated_at_every_header_boundary() {
    let mut h = Harness::new();
    // (frame, vlan tags, start of the L4 header, L4 header length, IPv6?)
    let cases = [
        (PacketBuilder::tcp4(CLIENT, NODE, 1, 80), 0, 34, 20, false),
        (PacketBuilder::udp4(CLIENT, NODE, 1, 53), 0, 34, 8, false),
        (
            PacketBuilder::tcp4(CLIENT, NODE, 1, 80).with_vlan(7),
            1,
            38,
            20,
            false,
        ),
        (PacketBuilder::tcp6(v6(2), v6(1), 1, 80), 0, 54, 20, true),
        (
            PacketBuilder::udp6(v6(2), v6(1), 1, 53)
                .with_vlan(1)
                .with_vlan(2),
            2,
            62,
            8,
            true,
        ),
    ];
    for (builder, vlans, l4, l4_len, ipv6) in cases {
        let full = builder.build();
        let whole = if ipv6 {
            if l4_len == 20 {
                Counter::Ipv6Tcp
            } else {
                Counter::Ipv6Udp
            }
        } else if l4_len == 20 {
            Counter::Ipv4Tcp
        } else {
            Counter::Ipv4Udp
        };
        for len in 14..=full.len() {
            let class = if len < 14 + 4 * vlans {
                Counter::TruncatedVlan
            } else if len < l4 {
                if ipv6 {
                    Counter::TruncatedIpv6
                } else {
                    Counter::TruncatedIpv4
                }
            } else if len < l4 + l4_len {
                Counter::TruncatedL4
            } else {
                whole
            };
            let flags: &[Counter] = if vlans > 0 { &[Counter::Vlan] } else { &[] };
            h.expect(
                &format!("{builder:?} cut to {len}"),
                &full[..len],
                class,
                flags,
            );
        }
    }
}

#[test]
fn frames_shorter_than_ethernet_are_refused_by_the_test_runner() {
    // The kernel's BPF_PROG_TEST_RUN will not build a frame shorter than
    // ETH_HLEN, so the program can never see one here; the parser's host
    // tests cover those lengths.
    let mut h = Harness::new();
    let frame = [0u8; 13];
    let opts = TestRunOptions {
        data_in: Some(&frame),
        ..TestRunOptions::default()
    };
    assert!(h.programs.xdp().unwrap().test_run(opts).is_err());
}

#[test]
fn random_frames_never_fail_and_always_pass() {
    let mut h = Harness::new();
    let mut x: u32 = 0x1234_5678;
    for i in 0..500u32 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let len = 14 + (x >> 20) as usize % 120;
        let mut f: Vec<u8> = (0..len)
            .map(|j| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8 ^ j as u8
            })
            .collect();
        let ethertype: [u8; 2] = match i % 4 {
            0 => [0x08, 0x00],
            1 => [0x86, 0xdd],
            2 => [0x81, 0x00],
            _ => [f[12], f[13]],
        };
        f[12..14].copy_from_slice(&ethertype);
        for hook in [Hook::Xdp, Hook::Tc] {
            let Some((verdict, out, deltas)) = h.run(hook, &f) else {
                continue;
            };
            let want = if hook == Hook::Xdp {
                XDP_PASS
            } else {
                TC_ACT_PIPE
            };
            assert_eq!(verdict, want, "frame {i} on {hook:?}");
            assert_eq!(out, f, "frame {i} on {hook:?} must pass unchanged");
            let total = deltas.iter().find(|d| d.0 == Counter::Packets);
            assert_eq!(total, Some(&(Counter::Packets, 1)), "frame {i} on {hook:?}");
        }
    }
}
