//! ICMPv6 errors about translated flows: packet too big above all (IPv6
//! routers never fragment, so path MTU discovery is all there is),
//! destination unreachable and time exceeded. The same translation as
//! [`crate::icmp`] for IPv4, with two differences: the ICMPv6 checksum
//! covers a pseudo-header of the outer addresses, and there is no IP
//! header checksum.
//!
//! In every translation the new outer destination is the new quoted
//! source and the new outer source the new quoted destination (an error is
//! sent to whoever sent the quoted packet, from where it was going), so a
//! [`Rewrite6`] names the quoted endpoints only.
//!
//! Called from programs of their own, reached by tail calls from the main
//! XDP and TC programs (`ingress-ebpf/src/icmp6.rs`): wired into the XDP
//! program it took the call chain past the verifier's 512 bytes of stack
//! and the instruction count near its limit (docs/l4.md).

use crate::{
    csum,
    l4::FlowKey,
    nat::FrameMut,
    parse::{
        Class, Frame, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, IpVersion, Parsed,
        read16,
    },
};

pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 header length (type, code, checksum, the 4-byte MTU or unused).
pub const ICMPV6_HLEN: usize = 8;

/// Offset of the quoted IPv6 header.
#[inline(always)]
fn quote_at(p: &Parsed) -> usize {
    p.l4_offset + ICMPV6_HLEN
}

/// Writes into `key` the flow an ICMPv6 error is about, reversed (the
/// direction the flow tables are keyed by: the quote is a packet the node
/// sent, or a pod received). Only errors quoting an IPv6 header without
/// extension headers followed by at least the ports of TCP or UDP qualify;
/// false for anything else (such errors pass).
#[inline(always)]
pub fn reversed_key<F: Frame + ?Sized>(frame: &F, p: &Parsed, key: &mut FlowKey) -> bool {
    if p.class != Class::Ipv6Other || p.l4_proto != IPPROTO_ICMPV6 {
        return false;
    }
    let Some(icmp) = frame.bytes::<2>(p.l4_offset) else {
        return false;
    };
    if !matches!(
        icmp[0],
        ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
    ) {
        return false;
    }
    // Reads in ascending order from one base: a later, shorter read after
    // a longer one would let LLVM drop its bounds check, which the
    // verifier (tracking each pointer on its own) then refuses.
    let q = quote_at(p);
    let Some(h) = frame.bytes::<8>(q) else {
        return false;
    };
    if h[0] >> 4 != 6 || (h[6] != IPPROTO_TCP && h[6] != IPPROTO_UDP) {
        return false;
    }
    if !read16(frame, q + 8, &mut key.dst) || !read16(frame, q + 24, &mut key.src) {
        return false;
    }
    let Some(ports) = frame.bytes::<4>(q + IPV6_HLEN) else {
        return false;
    };
    key.sport = u16::from_be_bytes([ports[2], ports[3]]).to_be();
    key.dport = u16::from_be_bytes([ports[0], ports[1]]).to_be();
    key.proto = h[6];
    key._pad = [0; 3];
    true
}

/// [`Rewrite6::mask`] bits: the quoted source changes (and the outer
/// destination becomes it), the quoted destination changes (and the outer
/// source becomes it).
pub const QUOTED_SRC: u8 = 1 << 0;
pub const QUOTED_DST: u8 = 1 << 1;

/// The new quoted endpoints of an ICMPv6 error. Ports in host order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite6 {
    pub mask: u8,
    pub quoted_src: [u8; 16],
    pub quoted_sport: u16,
    pub quoted_dst: [u8; 16],
    pub quoted_dport: u16,
}

/// Replaces the 16-byte address at `off` with `new` four bytes at a time
/// (little is live at once: the eBPF stack is small), folding the change
/// into `sums[0]` and, for the quoted addresses, into `sums[1]` (which
/// accumulates the change the quoted L4 checksum gets). Not inlined: in
/// eBPF each call is a small verifier frame instead of four unrolled
/// copies in one large one.
#[inline(never)]
fn swap_address<F: FrameMut + ?Sized>(
    frame: &mut F,
    off: usize,
    new: &[u8; 16],
    sums: &mut [u16; 2],
    quoted_l4: bool,
) -> bool {
    let mut i = 0;
    while i < 16 {
        let Some(old) = frame.bytes::<4>(off + i) else {
            return false;
        };
        let chunk = [new[i], new[i + 1], new[i + 2], new[i + 3]];
        let (o, n) = (u32::from_be_bytes(old), u32::from_be_bytes(chunk));
        sums[0] = csum::replace32(sums[0], o, n);
        if quoted_l4 {
            sums[1] = csum::replace32(sums[1], o, n);
        }
        if !frame.write(off + i, chunk) {
            return false;
        }
        i += 4;
    }
    true
}

/// Applies `rw` to an error [`reversed_key`] accepted on this same frame:
/// the quoted endpoints and, to match, the outer addresses; the quoted L4
/// checksum (when the quote reaches it) and the ICMPv6 checksum fixed
/// incrementally. [`reversed_key`] checked the frame's length up to the
/// quoted ports, so no write below can fail half-way.
#[inline(always)]
pub fn rewrite_v6<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed, rw: &Rewrite6) -> bool {
    if p.ip != IpVersion::V6 {
        return false;
    }
    let l3 = p.l3_offset;
    let q = quote_at(p);
    let q4 = q + IPV6_HLEN;
    // Reads from the quote's base in ascending order (see
    // [`reversed_key`]); the addresses are rewritten as they are read.
    let Some(icmp_check) = frame.bytes::<2>(p.l4_offset + 2) else {
        return false;
    };
    let Some(next) = frame.bytes::<1>(q + 6) else {
        return false;
    };
    let udp = next[0] == IPPROTO_UDP;
    // sums[0]: the ICMPv6 checksum; sums[1]: the change to the quoted L4
    // checksum, applied once its presence is known.
    let mut sums = [u16::from_be_bytes(icmp_check), 0xffff];
    if rw.mask & QUOTED_SRC != 0
        && (!swap_address(frame, q + 8, &rw.quoted_src, &mut sums, true)
            || !swap_address(frame, l3 + 24, &rw.quoted_src, &mut sums, false))
    {
        return false;
    }
    if rw.mask & QUOTED_DST != 0
        && (!swap_address(frame, q + 24, &rw.quoted_dst, &mut sums, true)
            || !swap_address(frame, l3 + 8, &rw.quoted_dst, &mut sums, false))
    {
        return false;
    }
    let Some(ports) = frame.bytes::<4>(q4) else {
        return false;
    };
    let (old_sport, old_dport) = (
        u16::from_be_bytes([ports[0], ports[1]]),
        u16::from_be_bytes([ports[2], ports[3]]),
    );
    let sport = if rw.mask & QUOTED_SRC != 0 {
        rw.quoted_sport
    } else {
        old_sport
    };
    let dport = if rw.mask & QUOTED_DST != 0 {
        rw.quoted_dport
    } else {
        old_dport
    };
    sums[0] = csum::replace16(csum::replace16(sums[0], old_sport, sport), old_dport, dport);
    let l4_check_at = q4 + if udp { 6 } else { 16 };
    // A zero UDP checksum (not valid over IPv6, but quoted as it was) is
    // left alone; a TCP checksum beyond the quote is no matter.
    if let Some(b) = frame.bytes::<2>(l4_check_at) {
        let old = u16::from_be_bytes(b);
        if !(udp && old == 0) {
            // sums[1] started as the checksum of "no change" (0xffff is
            // -0): fold the address and port changes into the old value.
            let delta = !sums[1];
            let mut new = !csum::fold(u32::from(!old) + u32::from(delta));
            new = csum::replace16(csum::replace16(new, old_sport, sport), old_dport, dport);
            if udp && new == 0 {
                new = 0xffff;
            }
            // The quoted checksum is part of what the ICMPv6 checksum covers.
            sums[0] = csum::replace16(sums[0], old, new);
            if !frame.write(l4_check_at, new.to_be_bytes()) {
                return false;
            }
        }
    }
    frame.write(q4, sport.to_be_bytes())
        && frame.write(q4 + 2, dport.to_be_bytes())
        && frame.write(p.l4_offset + 2, sums[0].to_be_bytes())
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::{
        parse::parse,
        testing::{PacketBuilder, icmp6_error, v6},
    };

    fn quote(packet: &PacketBuilder, l4: usize) -> Vec<u8> {
        packet.build()[14..14 + 40 + l4].to_vec()
    }

    fn key_of(frame: &[u8]) -> Option<FlowKey> {
        let mut key = FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: [0; 3],
        };
        reversed_key(frame, &parse(frame), &mut key).then_some(key)
    }

    const MTU_1280: [u8; 4] = [0, 0, 0x05, 0x00];

    #[test]
    fn packet_too_big_about_a_reply_is_turned_towards_the_pod() {
        let (client, frontend, pod, router) = (v6(2), v6(1), v6(0x302), v6(0x901));
        for (to_client, from_pod, l4) in [
            (
                PacketBuilder::tcp6(frontend, client, 30080, 40000),
                PacketBuilder::tcp6(pod, client, 8080, 40000),
                20,
            ),
            (
                PacketBuilder::tcp6(frontend, client, 30080, 40000),
                PacketBuilder::tcp6(pod, client, 8080, 40000),
                8,
            ),
            (
                PacketBuilder::udp6(frontend, client, 30080, 40000),
                PacketBuilder::udp6(pod, client, 8080, 40000),
                8,
            ),
        ] {
            let before =
                icmp6_error(router, frontend, 2, 0, MTU_1280, &quote(&to_client, l4)).build();
            let key = key_of(&before).expect("an error about a flow");
            assert_eq!((key.src, key.dst), (client, frontend));
            assert_eq!(
                (u16::from_be(key.sport), u16::from_be(key.dport)),
                (40000, 30080)
            );
            let mut f = before.clone();
            let p = parse(&f[..]);
            assert!(rewrite_v6(
                &mut f[..],
                &p,
                &Rewrite6 {
                    mask: QUOTED_SRC,
                    quoted_src: pod,
                    quoted_sport: 8080,
                    ..Rewrite6::default()
                }
            ));
            assert_eq!(
                f,
                icmp6_error(router, pod, 2, 0, MTU_1280, &quote(&from_pod, l4)).build(),
                "quote of {l4} L4 bytes"
            );
        }
    }

    #[test]
    fn both_ends_at_once_equal_a_fresh_build() {
        let (client, frontend, snat, remote, router) = (v6(2), v6(1), v6(1), v6(0x402), v6(0x901));
        let sent = PacketBuilder::tcp6(snat, remote, 20001, 9090);
        let original = PacketBuilder::tcp6(client, frontend, 40000, 30090);
        let mut f = icmp6_error(router, snat, 2, 0, MTU_1280, &quote(&sent, 20)).build();
        let p = parse(&f[..]);
        assert!(rewrite_v6(
            &mut f[..],
            &p,
            &Rewrite6 {
                mask: QUOTED_SRC | QUOTED_DST,
                quoted_src: client,
                quoted_sport: 40000,
                quoted_dst: frontend,
                quoted_dport: 30090,
            }
        ));
        assert_eq!(
            f,
            icmp6_error(frontend, client, 2, 0, MTU_1280, &quote(&original, 20)).build()
        );
    }

    #[test]
    fn other_icmpv6_and_odd_quotes_are_not_about_a_flow() {
        let q = quote(&PacketBuilder::tcp6(v6(1), v6(2), 30080, 40000), 8);
        // Echo request, neighbour solicitation.
        for kind in [128, 135] {
            assert_eq!(
                key_of(&icmp6_error(v6(9), v6(1), kind, 0, [0; 4], &q).build()),
                None
            );
        }
        // Cut before the ports.
        assert_eq!(
            key_of(&icmp6_error(v6(9), v6(1), 2, 0, MTU_1280, &q[..42]).build()),
            None
        );
        // A quote with an extension header first.
        let ext = PacketBuilder::tcp6(v6(1), v6(2), 30080, 40000).with_ext(60, &[1, 4, 0, 0, 0, 0]);
        let quoted = ext.build()[14..14 + 56].to_vec();
        assert_eq!(
            key_of(&icmp6_error(v6(9), v6(1), 2, 0, MTU_1280, &quoted).build()),
            None
        );
    }
}
