//! ICMPv4 errors about translated flows. A router on the way (or a pod)
//! that cannot deliver a translated packet, fragmentation needed above all,
//! answers the address the packet carried, and quotes its header: the
//! error must be translated like the flow itself, outer and quoted headers
//! both, or path MTU discovery breaks for every NodePort flow.
//!
//! [`quoted_v4`] reads the flow an error quotes; [`rewrite_v4`] rewrites the
//! outer addresses and the quoted endpoints with incremental fix-up of the
//! outer IP checksum, the quoted IP checksum, the quoted L4 checksum (when
//! the quote holds it) and the ICMP checksum, which covers the quote.

use crate::{
    csum,
    nat::FrameMut,
    parse::{
        Class, Frame, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, IpVersion, Parsed,
    },
};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP header length (type, code, checksum, rest of header).
pub const ICMP_HLEN: usize = 8;

/// The TCP or UDP packet an ICMPv4 error quotes. Ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The quoted flow of an ICMPv4 destination-unreachable or time-exceeded
/// error, when the outer header has no options and the quote is an IPv4
/// header without options (and not a later fragment) followed by at least
/// the ports of TCP or UDP. Anything else is `None`: such errors pass.
#[inline(always)]
pub fn quoted_v4<F: Frame + ?Sized>(frame: &F, p: &Parsed) -> Option<Quoted> {
    if p.class != Class::Ipv4Other || p.l4_proto != IPPROTO_ICMP || p.ipv4_options {
        return None;
    }
    let icmp = frame.bytes::<4>(p.l4_offset)?;
    if icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED {
        return None;
    }
    let inner = p.l4_offset + ICMP_HLEN;
    let h = frame.bytes::<IPV4_MIN_HLEN>(inner)?;
    if h[0] != 0x45 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return None;
    }
    if h[9] != IPPROTO_TCP && h[9] != IPPROTO_UDP {
        return None;
    }
    let ports = frame.bytes::<4>(inner + IPV4_MIN_HLEN)?;
    Some(Quoted {
        src: [h[12], h[13], h[14], h[15]],
        dst: [h[16], h[17], h[18], h[19]],
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        proto: h[9],
    })
}

/// [`Rewrite::mask`] bits: which fields change.
pub const OUTER_SRC: u8 = 1 << 0;
pub const OUTER_DST: u8 = 1 << 1;
pub const QUOTED_SRC: u8 = 1 << 2;
pub const QUOTED_DST: u8 = 1 << 3;

/// The new outer addresses and quoted endpoints of an ICMP error; only the
/// fields named in `mask` are written. Ports in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub mask: u8,
    pub outer_src: [u8; 4],
    pub outer_dst: [u8; 4],
    pub quoted_src: [u8; 4],
    pub quoted_sport: u16,
    pub quoted_dst: [u8; 4],
    pub quoted_dport: u16,
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Above any 16-bit checksum: the quote does not reach the L4 checksum.
const NO_L4_CHECK: u32 = 0x1_0000;

/// The quoted L4 checksum after one endpoint (address and port) changed;
/// a zero UDP checksum ("none") stays zero, a computed zero is sent as
/// 0xffff.
#[inline(always)]
fn l4_fix(check: u16, udp: bool, old_a: u32, new_a: u32, old_p: u16, new_p: u16) -> u16 {
    if udp && check == 0 {
        return 0;
    }
    let c = csum::replace16(csum::replace32(check, old_a, new_a), old_p, new_p);
    if udp && c == 0 { 0xffff } else { c }
}

/// Applies `rw` to an error [`quoted_v4`] accepted. Every read happens
/// before the first write, so a frame that is too short is left whole
/// (false). The quoted L4 checksum is fixed when the quote reaches it (it
/// always does for UDP; for TCP when 18 bytes of the header are quoted).
#[inline(always)]
pub fn rewrite_v4<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed, rw: &Rewrite) -> bool {
    if p.ip != IpVersion::V4 {
        return false;
    }
    let l3 = p.l3_offset;
    let icmp = p.l4_offset;
    let q3 = icmp + ICMP_HLEN;
    let q4 = q3 + IPV4_MIN_HLEN;
    // One read per statement (see nat::rewrite_v4).
    let Some(ip_check) = frame.bytes::<2>(l3 + 10) else {
        return false;
    };
    let Some(outer_src) = frame.bytes::<4>(l3 + 12) else {
        return false;
    };
    let Some(outer_dst) = frame.bytes::<4>(l3 + 16) else {
        return false;
    };
    let Some(icmp_check) = frame.bytes::<2>(icmp + 2) else {
        return false;
    };
    let Some(q_proto) = frame.bytes::<1>(q3 + 9) else {
        return false;
    };
    let Some(q_check) = frame.bytes::<2>(q3 + 10) else {
        return false;
    };
    let Some(q_src) = frame.bytes::<4>(q3 + 12) else {
        return false;
    };
    let Some(q_dst) = frame.bytes::<4>(q3 + 16) else {
        return false;
    };
    let Some(q_ports) = frame.bytes::<4>(q4) else {
        return false;
    };
    let udp = q_proto[0] == IPPROTO_UDP;
    let l4_check_at = q4 + if udp { 6 } else { 16 };
    // One value that carries its flag, not an Option (LLVM merges Option
    // loads into shapes the verifier reads as pointer arithmetic) nor a
    // flag and a value: LLVM leaves a value unused on one path unwritten
    // there, and verifiers before 6.3 refuse the read of the uninitialised
    // stack slot it is spilled to (5.10 refused `ingress_xdp` for it).
    let q_l4_word: u32 = match frame.bytes::<2>(l4_check_at) {
        Some(b) => u32::from(be16(b)),
        None => NO_L4_CHECK,
    };
    let has_l4 = q_l4_word != NO_L4_CHECK;
    let q_l4_old = q_l4_word as u16;

    let mut ip_check = be16(ip_check);
    let mut icmp_check = be16(icmp_check);
    let q_check_old = be16(q_check);
    let mut q_check = q_check_old;
    let mut q_l4 = q_l4_old;
    let (mut o_src, mut o_dst) = (outer_src, outer_dst);
    let (mut s_addr, mut d_addr) = (q_src, q_dst);
    let (old_sport, old_dport) = (
        be16([q_ports[0], q_ports[1]]),
        be16([q_ports[2], q_ports[3]]),
    );
    let (mut sport, mut dport) = (old_sport, old_dport);
    if rw.mask & OUTER_SRC != 0 {
        ip_check = csum::replace32(ip_check, be32(outer_src), be32(rw.outer_src));
        o_src = rw.outer_src;
    }
    if rw.mask & OUTER_DST != 0 {
        ip_check = csum::replace32(ip_check, be32(outer_dst), be32(rw.outer_dst));
        o_dst = rw.outer_dst;
    }
    if rw.mask & QUOTED_SRC != 0 {
        let (oa, na) = (be32(q_src), be32(rw.quoted_src));
        q_check = csum::replace32(q_check, oa, na);
        if has_l4 {
            q_l4 = l4_fix(q_l4, udp, oa, na, old_sport, rw.quoted_sport);
        }
        icmp_check = csum::replace16(
            csum::replace32(icmp_check, oa, na),
            old_sport,
            rw.quoted_sport,
        );
        s_addr = rw.quoted_src;
        sport = rw.quoted_sport;
    }
    if rw.mask & QUOTED_DST != 0 {
        let (oa, na) = (be32(q_dst), be32(rw.quoted_dst));
        q_check = csum::replace32(q_check, oa, na);
        if has_l4 {
            q_l4 = l4_fix(q_l4, udp, oa, na, old_dport, rw.quoted_dport);
        }
        icmp_check = csum::replace16(
            csum::replace32(icmp_check, oa, na),
            old_dport,
            rw.quoted_dport,
        );
        d_addr = rw.quoted_dst;
        dport = rw.quoted_dport;
    }
    // The quoted checksums are part of what the ICMP checksum covers.
    icmp_check = csum::replace16(icmp_check, q_check_old, q_check);
    if has_l4 {
        icmp_check = csum::replace16(icmp_check, q_l4_old, q_l4);
        if !frame.write(l4_check_at, q_l4.to_be_bytes()) {
            return false;
        }
    }
    frame.write(l3 + 10, ip_check.to_be_bytes())
        && frame.write(l3 + 12, o_src)
        && frame.write(l3 + 16, o_dst)
        && frame.write(icmp + 2, icmp_check.to_be_bytes())
        && frame.write(q3 + 10, q_check.to_be_bytes())
        && frame.write(q3 + 12, s_addr)
        && frame.write(q3 + 16, d_addr)
        && frame.write(q4, sport.to_be_bytes())
        && frame.write(q4 + 2, dport.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::{
        parse::parse,
        testing::{PacketBuilder, icmp4_error},
    };

    const C: [u8; 4] = [198, 18, 0, 2];
    const F: [u8; 4] = [198, 18, 0, 1];
    const POD: [u8; 4] = [198, 18, 3, 2];
    const ROUTER: [u8; 4] = [198, 18, 9, 1];

    /// The quote of `packet`: its IP header and the first `l4` bytes of
    /// its L4 header.
    fn quote(packet: &PacketBuilder, l4: usize) -> Vec<u8> {
        let f = packet.build();
        f[14..14 + 20 + l4].to_vec()
    }

    fn rewritten(before: &[u8], rw: &Rewrite) -> Vec<u8> {
        let mut f = before.to_vec();
        let p = parse(&f[..]);
        assert!(rewrite_v4(&mut f[..], &p, rw));
        f
    }

    #[test]
    fn frag_needed_about_a_reply_is_turned_towards_the_pod_with_exact_checksums() {
        // The client's router says our reply (frontend -> client) was too
        // big; the local pod (pod -> client) must hear it.
        for (packet_to_client, packet_from_pod, l4) in [
            (
                PacketBuilder::tcp4(F, C, 30080, 40000),
                PacketBuilder::tcp4(POD, C, 8080, 40000),
                20,
            ),
            (
                PacketBuilder::tcp4(F, C, 30080, 40000),
                PacketBuilder::tcp4(POD, C, 8080, 40000),
                8,
            ),
            (
                PacketBuilder::udp4(F, C, 30053, 5000),
                PacketBuilder::udp4(POD, C, 5353, 5000),
                8,
            ),
        ] {
            let mtu = [0, 0, 0x05, 0xdc];
            let before = icmp4_error(ROUTER, F, 3, 4, mtu, &quote(&packet_to_client, l4)).build();
            let p = parse(&before[..]);
            assert_eq!(
                quoted_v4(&before[..], &p),
                Some(Quoted {
                    src: F,
                    dst: C,
                    sport: if l4 == 20 || packet_to_client.l4_proto() == 6 {
                        30080
                    } else {
                        30053
                    },
                    dport: if packet_to_client.l4_proto() == 6 {
                        40000
                    } else {
                        5000
                    },
                    proto: packet_to_client.l4_proto(),
                })
            );
            let sport = if packet_to_client.l4_proto() == 6 {
                8080
            } else {
                5353
            };
            let after = rewritten(
                &before,
                &Rewrite {
                    mask: OUTER_DST | QUOTED_SRC,
                    outer_dst: POD,
                    quoted_src: POD,
                    quoted_sport: sport,
                    ..Rewrite::default()
                },
            );
            let want = icmp4_error(ROUTER, POD, 3, 4, mtu, &quote(&packet_from_pod, l4)).build();
            assert_eq!(after, want, "l4 bytes quoted: {l4}");
        }
    }

    #[test]
    fn every_field_at_once_equals_a_fresh_build() {
        let (snat, remote) = ([198, 18, 0, 1], [198, 18, 4, 2]);
        let sent = PacketBuilder::tcp4(snat, remote, 20001, 9090);
        let original = PacketBuilder::tcp4(C, F, 40000, 30090);
        let before = icmp4_error(ROUTER, snat, 3, 4, [0, 0, 5, 0], &quote(&sent, 20)).build();
        let after = rewritten(
            &before,
            &Rewrite {
                mask: OUTER_SRC | OUTER_DST | QUOTED_SRC | QUOTED_DST,
                outer_src: F,
                outer_dst: C,
                quoted_src: C,
                quoted_sport: 40000,
                quoted_dst: F,
                quoted_dport: 30090,
            },
        );
        let want = icmp4_error(F, C, 3, 4, [0, 0, 5, 0], &quote(&original, 20)).build();
        assert_eq!(after, want);
    }

    #[test]
    fn a_zero_udp_checksum_stays_zero() {
        let mut sent = PacketBuilder::udp4(F, C, 30053, 5000).build();
        sent[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let mut from_pod = PacketBuilder::udp4(POD, C, 5353, 5000).build();
        from_pod[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let before = icmp4_error(ROUTER, F, 3, 3, [0; 4], &sent[14..14 + 28]).build();
        let after = rewritten(
            &before,
            &Rewrite {
                mask: OUTER_DST | QUOTED_SRC,
                outer_dst: POD,
                quoted_src: POD,
                quoted_sport: 5353,
                ..Rewrite::default()
            },
        );
        let want = icmp4_error(ROUTER, POD, 3, 3, [0; 4], &from_pod[14..14 + 28]).build();
        assert_eq!(after, want);
    }

    #[test]
    fn other_icmp_and_odd_quotes_are_not_errors_about_a_flow() {
        let q = quote(&PacketBuilder::tcp4(F, C, 30080, 40000), 8);
        // Echo request.
        let echo = icmp4_error(ROUTER, F, 8, 0, [0; 4], &q).build();
        assert_eq!(quoted_v4(&echo[..], &parse(&echo[..])), None);
        // A quote cut before the ports.
        let short = icmp4_error(ROUTER, F, 3, 4, [0; 4], &q[..22]).build();
        assert_eq!(quoted_v4(&short[..], &parse(&short[..])), None);
        // A quoted later fragment has no ports.
        let frag = quote(
            &PacketBuilder::tcp4(F, C, 30080, 40000).with_frag(0x0010),
            8,
        );
        let later = icmp4_error(ROUTER, F, 3, 4, [0; 4], &frag).build();
        assert_eq!(quoted_v4(&later[..], &parse(&later[..])), None);
        // A quoted ICMP packet.
        let mut icmp_in_icmp = q.clone();
        icmp_in_icmp[9] = IPPROTO_ICMP;
        let nested = icmp4_error(ROUTER, F, 3, 4, [0; 4], &icmp_in_icmp).build();
        assert_eq!(quoted_v4(&nested[..], &parse(&nested[..])), None);
    }
}
