use std::vec::Vec;

use super::*;
use crate::testing::{PacketBuilder, arp_request, v4, v6};

const A: [u8; 4] = [198, 18, 0, 2];
const B: [u8; 4] = [198, 18, 0, 1];

fn parse_vec(f: &[u8]) -> Parsed {
    parse(f)
}

#[test]
fn ipv4_tcp() {
    let f = PacketBuilder::tcp4(A, B, 40000, 80).build();
    let p = parse_vec(&f);
    assert_eq!(p.class, Class::Ipv4Tcp);
    assert_eq!((p.src_port, p.dst_port), (40000, 80));
    assert_eq!(
        (p.l3_offset, p.l4_offset, p.l4_proto),
        (14, 34, IPPROTO_TCP)
    );
    assert!(!p.vlan && !p.ipv4_options);
}

#[test]
fn ipv4_udp() {
    let p = parse_vec(&PacketBuilder::udp4(A, B, 5353, 53).build());
    assert_eq!(p.class, Class::Ipv4Udp);
    assert_eq!((p.src_port, p.dst_port), (5353, 53));
}

#[test]
fn ipv6_tcp_and_udp() {
    let p = parse_vec(&PacketBuilder::tcp6(v6(2), v6(1), 40000, 443).build());
    assert_eq!(p.class, Class::Ipv6Tcp);
    assert_eq!((p.l3_offset, p.l4_offset, p.dst_port), (14, 54, 443));
    let p = parse_vec(&PacketBuilder::udp6(v6(2), v6(1), 1, 2).build());
    assert_eq!(p.class, Class::Ipv6Udp);
}

#[test]
fn vlan_and_qinq() {
    let p = parse_vec(&PacketBuilder::tcp4(A, B, 1, 80).with_vlan(100).build());
    assert_eq!(p.class, Class::Ipv4Tcp);
    assert!(p.vlan);
    assert_eq!((p.l3_offset, p.l4_offset), (18, 38));
    let p = parse_vec(
        &PacketBuilder::udp6(v6(2), v6(1), 1, 2)
            .with_vlan(10)
            .with_vlan(20)
            .build(),
    );
    assert_eq!(p.class, Class::Ipv6Udp);
    assert_eq!(p.l3_offset, 22);
}

#[test]
fn three_tags_are_not_looked_through() {
    let f = PacketBuilder::tcp4(A, B, 1, 80)
        .with_vlan(1)
        .with_vlan(2)
        .with_vlan(3)
        .build();
    // The third tag's ethertype (0x8100) is not IP.
    assert_eq!(parse_vec(&f).class, Class::NonIp);
}

#[test]
fn ipv4_options_shift_l4() {
    // Record-route-ish option bytes: 12 bytes of options, IHL 8.
    let f = PacketBuilder::tcp4(A, B, 1, 80)
        .with_ipv4_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        .build();
    let p = parse_vec(&f);
    assert_eq!(p.class, Class::Ipv4Tcp);
    assert!(p.ipv4_options);
    assert_eq!(p.l4_offset, 14 + 32);
    assert_eq!(p.dst_port, 80);
}

#[test]
fn ipv4_fragments() {
    let first = PacketBuilder::udp4(A, B, 1, 2).with_frag(0x2000).build();
    assert_eq!(parse_vec(&first).class, Class::FragmentFirst);
    let later = PacketBuilder::udp4(A, B, 1, 2).with_frag(0x0010).build();
    assert_eq!(parse_vec(&later).class, Class::FragmentLater);
    let last = PacketBuilder::udp4(A, B, 1, 2).with_frag(0x0001).build();
    assert_eq!(parse_vec(&last).class, Class::FragmentLater);
}

#[test]
fn ipv6_fragments_and_extension_headers() {
    let first = PacketBuilder::udp6(v6(2), v6(1), 1, 2)
        .with_ext(IPPROTO_FRAGMENT, &[0, 1, 0, 0, 0, 7])
        .build();
    let p = parse_vec(&first);
    assert_eq!(p.class, Class::FragmentFirst);
    assert_eq!(p.l4_proto, IPPROTO_UDP);
    let later = PacketBuilder::udp6(v6(2), v6(1), 1, 2)
        .with_ext(IPPROTO_FRAGMENT, &[0, 0x10, 0, 0, 0, 7])
        .build();
    assert_eq!(parse_vec(&later).class, Class::FragmentLater);
    let hbh = PacketBuilder::tcp6(v6(2), v6(1), 7, 8)
        .with_ext(IPPROTO_HOPOPTS, &[1, 4, 0, 0, 0, 0])
        .with_ext(IPPROTO_DSTOPTS, &[0u8; 14])
        .build();
    let p = parse_vec(&hbh);
    assert_eq!(p.class, Class::Ipv6Tcp);
    assert_eq!(p.l4_offset, 14 + 40 + 8 + 16);
    assert_eq!(p.dst_port, 8);
}

#[test]
fn too_many_ipv6_extension_headers_is_other() {
    let mut b = PacketBuilder::tcp6(v6(2), v6(1), 7, 8);
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        b = b.with_ext(IPPROTO_DSTOPTS, &[1, 4, 0, 0, 0, 0]);
    }
    assert_eq!(parse_vec(&b.build()).class, Class::Ipv6Other);
}

#[test]
fn other_protocols() {
    let mut icmp = PacketBuilder::tcp4(A, B, 0, 0);
    icmp.l4 = crate::testing::L4::Other {
        proto: IPPROTO_ICMP,
        bytes: [8u8, 0, 0, 0, 0, 1, 0, 1].to_vec(),
    };
    assert_eq!(parse_vec(&icmp.build()).class, Class::Ipv4Other);
    let mut icmp6 = PacketBuilder::tcp6(v6(2), v6(1), 0, 0);
    icmp6.l4 = crate::testing::L4::Other {
        proto: IPPROTO_ICMPV6,
        bytes: [128u8, 0, 0, 0, 0, 1, 0, 1].to_vec(),
    };
    assert_eq!(parse_vec(&icmp6.build()).class, Class::Ipv6Other);
    assert_eq!(parse_vec(&arp_request()).class, Class::NonIp);
}

#[test]
fn malformed_ipv4_headers() {
    let good = PacketBuilder::tcp4(A, B, 1, 80).build();
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    assert_eq!(parse_vec(&bad_version).class, Class::MalformedIp);
    let mut small_ihl = good.clone();
    small_ihl[14] = 0x44;
    assert_eq!(parse_vec(&small_ihl).class, Class::MalformedIp);
    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(parse_vec(&short_total).class, Class::MalformedIp);
    let mut v6_version_in_v6 = PacketBuilder::tcp6(v6(2), v6(1), 1, 2).build();
    v6_version_in_v6[14] = 0x40;
    assert_eq!(parse_vec(&v6_version_in_v6).class, Class::MalformedIp);
}

/// The class expected when a frame is cut to `len` bytes, given where its
/// headers start.
fn truncated_class(
    len: usize,
    vlans: usize,
    l3: usize,
    l4: usize,
    l4_len: usize,
    v6: bool,
) -> Class {
    if len < 14 {
        Class::TruncatedEthernet
    } else if vlans > 0 && len < 14 + 4 * vlans {
        Class::TruncatedVlan
    } else if len < l4 {
        let _ = l3;
        if v6 {
            Class::TruncatedIpv6
        } else {
            Class::TruncatedIpv4
        }
    } else if len < l4 + l4_len {
        Class::TruncatedL4
    } else {
        unreachable!()
    }
}

#[test]
fn truncation_at_every_length_is_classified_by_the_header_it_cuts() {
    let cases: Vec<(PacketBuilder, usize, usize, usize, bool)> = std::vec![
        (PacketBuilder::tcp4(A, B, 1, 80), 0, 14, 34, false),
        (PacketBuilder::udp4(A, B, 1, 53), 0, 14, 34, false),
        (
            PacketBuilder::tcp4(A, B, 1, 80).with_vlan(5),
            1,
            18,
            38,
            false
        ),
        (
            PacketBuilder::tcp4(A, B, 1, 80).with_ipv4_options(&[1, 1, 1, 1]),
            0,
            14,
            38,
            false
        ),
        (PacketBuilder::tcp6(v6(2), v6(1), 1, 80), 0, 14, 54, true),
        (
            PacketBuilder::udp6(v6(2), v6(1), 1, 80)
                .with_vlan(1)
                .with_vlan(2),
            2,
            22,
            62,
            true
        ),
    ];
    for (b, vlans, l3, l4, v6) in cases {
        let full = b.build();
        let l4_len = if matches!(b.l4, crate::testing::L4::Tcp { .. }) {
            TCP_MIN_HLEN
        } else {
            UDP_HLEN
        };
        let whole = parse_vec(&full).class;
        for len in 0..full.len() {
            let got = parse_vec(&full[..len]).class;
            if len >= l4 + l4_len {
                assert_eq!(got, whole, "len {len} of {b:?}");
            } else {
                assert_eq!(
                    got,
                    truncated_class(len, vlans, l3, l4, l4_len, v6),
                    "len {len} of {b:?}"
                );
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic fuzz: every frame shape up to 80 bytes from an LCG.
    let mut x: u32 = 12345;
    for _ in 0..20000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (x >> 8) as usize % 80;
        let mut f: Vec<u8> = (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8 ^ i as u8
            })
            .collect();
        // Bias towards IP ethertypes so the deeper parsers run.
        if f.len() > 14 {
            let t: [u8; 2] = match x % 4 {
                0 => [0x08, 0x00],
                1 => [0x86, 0xdd],
                2 => [0x81, 0x00],
                _ => [f[12], f[13]],
            };
            f[12..14].copy_from_slice(&t);
        }
        let p = parse_vec(&f);
        if matches!(
            p.class,
            Class::Ipv4Tcp | Class::Ipv4Udp | Class::Ipv6Tcp | Class::Ipv6Udp
        ) {
            assert!(p.l4_offset + UDP_HLEN <= f.len());
        }
    }
    let _ = v4(0, 0, 0, 0);
}
