//! Address and port rewrites with incremental checksum fix-up, shared by the
//! XDP (DNAT) and TC (reverse NAT) programs and unit-tested on the host
//! against checksums recomputed from scratch.

use crate::{
    csum,
    parse::{Frame, IPPROTO_TCP, IPPROTO_UDP, IpVersion, Parsed},
};

/// Byte writes to a frame, bounds-checked like [`Frame::bytes`].
pub trait FrameMut: Frame {
    /// Writes `bytes` at `offset`; false (and nothing written) past the end.
    fn write<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> bool;
}

impl FrameMut for [u8] {
    fn write<const N: usize>(&mut self, offset: usize, bytes: [u8; N]) -> bool {
        let Some(end) = offset.checked_add(N) else {
            return false;
        };
        match self.get_mut(offset..end) {
            Some(dst) => {
                dst.copy_from_slice(&bytes);
                true
            }
            None => false,
        }
    }
}

/// Which end of the flow a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Offset of the L4 checksum field, for TCP and UDP.
fn l4_csum_offset(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(16),
        IPPROTO_UDP => Some(6),
        _ => None,
    }
}

/// Rewrites one end (address and port) of an IPv4 TCP or UDP packet and
/// fixes the IP header checksum and the L4 checksum (the address is in the
/// pseudo-header). A zero UDP checksum ("none") stays zero. Returns false,
/// having written nothing, when the frame is not such a packet.
#[inline(always)]
pub fn rewrite_v4<F: FrameMut + ?Sized>(
    frame: &mut F,
    p: &Parsed,
    end: End,
    addr: [u8; 4],
    port: u16,
) -> bool {
    if p.ip != IpVersion::V4 {
        return false;
    }
    let Some(csum_off) = l4_csum_offset(p.l4_proto) else {
        return false;
    };
    let (addr_off, port_off) = match end {
        End::Source => (p.l3_offset + 12, p.l4_offset),
        End::Destination => (p.l3_offset + 16, p.l4_offset + 2),
    };
    // One read per statement: a tuple of Options lets LLVM merge the
    // loads in ways the verifier reads as uninitialized registers.
    let Some(old_addr) = frame.bytes::<4>(addr_off) else {
        return false;
    };
    let Some(old_port) = frame.bytes::<2>(port_off) else {
        return false;
    };
    let Some(ip_check) = frame.bytes::<2>(p.l3_offset + 10) else {
        return false;
    };
    let Some(l4_check) = frame.bytes::<2>(p.l4_offset + csum_off) else {
        return false;
    };
    let (old_a, new_a) = (u32::from_be_bytes(old_addr), u32::from_be_bytes(addr));
    let (old_p, new_p) = (u16::from_be_bytes(old_port), port);
    let ip_check = csum::replace32(u16::from_be_bytes(ip_check), old_a, new_a);
    let old_l4 = u16::from_be_bytes(l4_check);
    let l4 = if p.l4_proto == IPPROTO_UDP && old_l4 == 0 {
        0
    } else {
        let c = csum::replace16(csum::replace32(old_l4, old_a, new_a), old_p, new_p);
        if p.l4_proto == IPPROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        }
    };
    frame.write(addr_off, addr)
        && frame.write(port_off, new_p.to_be_bytes())
        && frame.write(p.l3_offset + 10, ip_check.to_be_bytes())
        && frame.write(p.l4_offset + csum_off, l4.to_be_bytes())
}

/// Rewrites one end (address and port) of an IPv6 TCP or UDP packet and
/// fixes the L4 checksum (the address is in the pseudo-header; IPv6 has no
/// header checksum). The L4 header is where the parser found it, after any
/// extension headers. Returns false, having written nothing, when the
/// frame is not such a packet.
#[inline(always)]
pub fn rewrite_v6<F: FrameMut + ?Sized>(
    frame: &mut F,
    p: &Parsed,
    end: End,
    addr: &[u8; 16],
    port: u16,
) -> bool {
    if p.ip != IpVersion::V6 {
        return false;
    }
    let Some(csum_off) = l4_csum_offset(p.l4_proto) else {
        return false;
    };
    let (addr_off, port_off) = match end {
        End::Source => (p.l3_offset + 8, p.l4_offset),
        End::Destination => (p.l3_offset + 24, p.l4_offset + 2),
    };
    let Some(old_addr) = frame.bytes::<16>(addr_off) else {
        return false;
    };
    let Some(old_port) = frame.bytes::<2>(port_off) else {
        return false;
    };
    let Some(l4_check) = frame.bytes::<2>(p.l4_offset + csum_off) else {
        return false;
    };
    let old_l4 = u16::from_be_bytes(l4_check);
    let c = csum::replace16(
        csum::replace128(old_l4, &old_addr, addr),
        u16::from_be_bytes(old_port),
        port,
    );
    // The UDP checksum is mandatory over IPv6: a computed zero is sent as
    // all ones.
    let c = if p.l4_proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    };
    frame.write(addr_off, *addr)
        && frame.write(port_off, port.to_be_bytes())
        && frame.write(p.l4_offset + csum_off, c.to_be_bytes())
}

/// Rewrites one end of an IPv4 or IPv6 packet; `addr` is 16 bytes, IPv4 as
/// IPv4-mapped (`::ffff:a.b.c.d`), as the maps store it.
#[inline(always)]
pub fn rewrite<F: FrameMut + ?Sized>(
    frame: &mut F,
    p: &Parsed,
    end: End,
    addr: &[u8; 16],
    port: u16,
) -> bool {
    match p.ip {
        IpVersion::V4 => rewrite_v4(
            frame,
            p,
            end,
            [addr[12], addr[13], addr[14], addr[15]],
            port,
        ),
        IpVersion::V6 => rewrite_v6(frame, p, end, addr, port),
        IpVersion::None => false,
    }
}

/// Decrements the IPv6 hop limit (no checksum covers it). False when it is
/// 1 or less: the stack answers with an ICMPv6 time-exceeded.
#[inline(always)]
pub fn decrement_hop_limit_v6<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> bool {
    let Some(h) = frame.bytes::<1>(p.l3_offset + 7) else {
        return false;
    };
    if h[0] <= 1 {
        return false;
    }
    frame.write(p.l3_offset + 7, [h[0] - 1])
}

/// The TTL or hop limit decrement of a forwarding hop, by IP version.
#[inline(always)]
pub fn decrement_ttl<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> bool {
    match p.ip {
        IpVersion::V4 => decrement_ttl_v4(frame, p),
        IpVersion::V6 => decrement_hop_limit_v6(frame, p),
        IpVersion::None => false,
    }
}

/// Decrements the IPv4 TTL as a forwarding hop must, fixing the header
/// checksum. Returns false (nothing written) when the TTL is 1 or less: the
/// packet must go to the stack, which answers with an ICMP error.
#[inline(always)]
pub fn decrement_ttl_v4<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> bool {
    let Some(word) = frame.bytes::<2>(p.l3_offset + 8) else {
        return false;
    };
    let Some(check) = frame.bytes::<2>(p.l3_offset + 10) else {
        return false;
    };
    if word[0] <= 1 {
        return false;
    }
    let old = u16::from_be_bytes(word);
    let new = old - 0x0100;
    let check = csum::replace16(u16::from_be_bytes(check), old, new);
    frame.write(p.l3_offset + 8, new.to_be_bytes())
        && frame.write(p.l3_offset + 10, check.to_be_bytes())
}

/// TCP flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Turns an IPv4 TCP segment (without IP options) into the RST that refuses
/// it, in place: MACs, addresses and ports swapped, RST (with ACK of the
/// segment when it carried none, as RFC 9293 3.10.7.1 asks), no payload,
/// fresh checksums. Returns how many bytes the caller removes from the tail
/// (the old IP total length minus the RST's 40; any Ethernet padding after
/// the IP packet stays padding), or `None` when the segment must not be
/// answered: not IPv4 TCP, IPv4 options, or itself a RST.
#[inline(always)]
pub fn tcp_rst_v4<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> Option<u32> {
    if p.ip != IpVersion::V4 || p.l4_proto != IPPROTO_TCP || p.ipv4_options {
        return None;
    }
    let (l3, l4) = (p.l3_offset, p.l4_offset);
    let dst_mac = frame.bytes::<6>(0)?;
    let src_mac = frame.bytes::<6>(6)?;
    let ip_len = frame.bytes::<2>(l3 + 2)?;
    let src = frame.bytes::<4>(l3 + 12)?;
    let dst = frame.bytes::<4>(l3 + 16)?;
    let seq = frame.bytes::<4>(l4 + 4)?;
    let ack = frame.bytes::<4>(l4 + 8)?;
    let offset_flags = frame.bytes::<2>(l4 + 12)?;
    let flags = offset_flags[1];
    if flags & TCP_RST != 0 {
        return None;
    }
    let tcp_hlen = ((offset_flags[0] >> 4) as u32) * 4;
    let ip_total = u16::from_be_bytes(ip_len) as u32;
    let payload = ip_total.checked_sub(20 + tcp_hlen)?;
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (u32::from_be_bytes(ack), 0u32, TCP_RST)
    } else {
        let mut len = payload;
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        (
            0u32,
            u32::from_be_bytes(seq).wrapping_add(len),
            TCP_RST | TCP_ACK,
        )
    };
    // IP header: 20 bytes, DF, TTL 64, addresses swapped.
    let ip_words: [u16; 10] = [
        0x4500,
        40,
        0,
        0x4000,
        (64 << 8) | IPPROTO_TCP as u16,
        0,
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
    ];
    let mut sum = 0u32;
    for w in ip_words {
        sum += w as u32;
    }
    let ip_check = !csum::fold(sum);
    let tcp_words: [u16; 10] = [
        p.dst_port,
        p.src_port,
        (rst_seq >> 16) as u16,
        rst_seq as u16,
        (rst_ack >> 16) as u16,
        rst_ack as u16,
        (5 << 12) | rst_flags as u16,
        0,
        0,
        0,
    ];
    let mut sum = csum::pseudo_header_v4(dst, src, IPPROTO_TCP, 20);
    for w in tcp_words {
        sum += w as u32;
    }
    let tcp_check = !csum::fold(sum);
    let ok = frame.write(0, src_mac)
        && frame.write(6, dst_mac)
        && frame.write(l3, [0x45, 0])
        && frame.write(l3 + 2, 40u16.to_be_bytes())
        && frame.write(l3 + 4, [0, 0, 0x40, 0, 64, IPPROTO_TCP])
        && frame.write(l3 + 10, ip_check.to_be_bytes())
        && frame.write(l3 + 12, dst)
        && frame.write(l3 + 16, src)
        && frame.write(l4, p.dst_port.to_be_bytes())
        && frame.write(l4 + 2, p.src_port.to_be_bytes())
        && frame.write(l4 + 4, rst_seq.to_be_bytes())
        && frame.write(l4 + 8, rst_ack.to_be_bytes())
        && frame.write(l4 + 12, [5 << 4, rst_flags])
        && frame.write(l4 + 14, [0, 0])
        && frame.write(l4 + 16, tcp_check.to_be_bytes())
        && frame.write(l4 + 18, [0, 0]);
    ok.then_some(ip_total - 40)
}

/// The IPv6 counterpart of [`tcp_rst_v4`]: the RST is a bare 40-byte IPv6
/// header (extension headers of the segment are dropped) and a 20-byte TCP
/// header. Returns how many bytes the caller removes from the tail. The
/// addresses are swapped four bytes at a time, summing the pseudo-header
/// on the way, so that little is live at once (the eBPF stack is small).
#[inline(always)]
pub fn tcp_rst_v6<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> Option<u32> {
    if p.ip != IpVersion::V6 || p.l4_proto != IPPROTO_TCP {
        return None;
    }
    let (l3, l4) = (p.l3_offset, p.l4_offset);
    let payload_len = frame.bytes::<2>(l3 + 4)?;
    let seq = frame.bytes::<4>(l4 + 4)?;
    let ack = frame.bytes::<4>(l4 + 8)?;
    let offset_flags = frame.bytes::<2>(l4 + 12)?;
    // The last address byte: every read and write below is inside.
    frame.bytes::<1>(l3 + 39)?;
    let flags = offset_flags[1];
    if flags & TCP_RST != 0 {
        return None;
    }
    let tcp_hlen = ((offset_flags[0] >> 4) as u32) * 4;
    let ext_len = (l4 - l3 - 40) as u32;
    let ip_payload = u16::from_be_bytes(payload_len) as u32;
    let payload = ip_payload.checked_sub(ext_len + tcp_hlen)?;
    let (rst_seq, rst_ack, rst_flags) = if flags & TCP_ACK != 0 {
        (u32::from_be_bytes(ack), 0u32, TCP_RST)
    } else {
        let mut len = payload;
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        (
            0u32,
            u32::from_be_bytes(seq).wrapping_add(len),
            TCP_RST | TCP_ACK,
        )
    };
    // Pseudo-header: both addresses (order does not change a one's
    // complement sum), the length and the next header.
    let mut sum = 20u32 + IPPROTO_TCP as u32;
    let mut i = 0;
    while i < 16 {
        let a = frame.bytes::<4>(l3 + 8 + i)?;
        let b = frame.bytes::<4>(l3 + 24 + i)?;
        sum += u16::from_be_bytes([a[0], a[1]]) as u32 + u16::from_be_bytes([a[2], a[3]]) as u32;
        sum += u16::from_be_bytes([b[0], b[1]]) as u32 + u16::from_be_bytes([b[2], b[3]]) as u32;
        if !(frame.write(l3 + 8 + i, b) && frame.write(l3 + 24 + i, a)) {
            return None;
        }
        i += 4;
    }
    sum += p.dst_port as u32
        + p.src_port as u32
        + (rst_seq >> 16)
        + (rst_seq & 0xffff)
        + (rst_ack >> 16)
        + (rst_ack & 0xffff)
        + ((5u32 << 12) | rst_flags as u32);
    let tcp_check = !csum::fold(sum);
    let dst_mac = frame.bytes::<6>(0)?;
    let src_mac = frame.bytes::<6>(6)?;
    let t = l3 + 40;
    let ok = frame.write(0, src_mac)
        && frame.write(6, dst_mac)
        && frame.write(l3, [0x60, 0, 0, 0])
        && frame.write(l3 + 4, [0, 20, IPPROTO_TCP, 64])
        && frame.write(t, p.dst_port.to_be_bytes())
        && frame.write(t + 2, p.src_port.to_be_bytes())
        && frame.write(t + 4, rst_seq.to_be_bytes())
        && frame.write(t + 8, rst_ack.to_be_bytes())
        && frame.write(t + 12, [5 << 4, rst_flags])
        && frame.write(t + 14, [0, 0])
        && frame.write(t + 16, tcp_check.to_be_bytes())
        && frame.write(t + 18, [0, 0]);
    ok.then_some(40 + ip_payload - 60)
}

/// [`tcp_rst_v4`] or [`tcp_rst_v6`], by IP version.
#[inline(always)]
pub fn tcp_rst<F: FrameMut + ?Sized>(frame: &mut F, p: &Parsed) -> Option<u32> {
    match p.ip {
        IpVersion::V4 => tcp_rst_v4(frame, p),
        IpVersion::V6 => tcp_rst_v6(frame, p),
        IpVersion::None => None,
    }
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;
    use crate::{parse::parse, testing::PacketBuilder};

    fn check(before: PacketBuilder, after: PacketBuilder, end: End, addr: [u8; 4], port: u16) {
        let mut f: Vec<u8> = before.build();
        let p = parse(&f[..]);
        assert!(rewrite_v4(&mut f[..], &p, end, addr, port));
        assert_eq!(
            f,
            after.build(),
            "incremental fix-up must equal a fresh build"
        );
    }

    #[test]
    fn dnat_tcp_and_udp_equal_recomputed_packets() {
        let (c, n, pod) = ([198, 18, 0, 2], [198, 18, 0, 1], [198, 18, 3, 2]);
        check(
            PacketBuilder::tcp4(c, n, 40000, 30080),
            PacketBuilder::tcp4(c, pod, 40000, 8080),
            End::Destination,
            pod,
            8080,
        );
        check(
            PacketBuilder::udp4(c, n, 40000, 30053),
            PacketBuilder::udp4(c, pod, 40000, 5353),
            End::Destination,
            pod,
            5353,
        );
        // Reverse NAT of a reply: the pod's source becomes the frontend.
        check(
            PacketBuilder::tcp4(pod, c, 8080, 40000),
            PacketBuilder::tcp4(n, c, 30080, 40000),
            End::Source,
            n,
            30080,
        );
        check(
            PacketBuilder::tcp4(c, n, 1, 30080)
                .with_vlan(5)
                .with_ipv4_options(&[1, 1, 1, 1]),
            PacketBuilder::tcp4(c, pod, 1, 8080)
                .with_vlan(5)
                .with_ipv4_options(&[1, 1, 1, 1]),
            End::Destination,
            pod,
            8080,
        );
    }

    #[test]
    fn ttl_decrement_keeps_the_header_checksum_right() {
        let mut f = PacketBuilder::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 1, 2).build();
        let p = parse(&f[..]);
        assert!(decrement_ttl_v4(&mut f[..], &p));
        assert_eq!(f[p.l3_offset + 8], 63);
        assert_eq!(csum::checksum(0, &f[p.l3_offset..p.l3_offset + 20]), 0);
        f[p.l3_offset + 8] = 1;
        assert!(!decrement_ttl_v4(&mut f[..], &p));
    }

    #[test]
    fn a_syn_becomes_a_rst_ack_with_fresh_checksums() {
        let mut f = PacketBuilder::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 40000, 30099).build();
        let p = parse(&f[..]);
        let shrink = tcp_rst_v4(&mut f[..], &p).unwrap();
        assert_eq!(shrink, 0, "a bare SYN is as long as the RST");
        f.truncate(f.len() - shrink as usize);
        assert_eq!(f.len(), 54);
        let q = parse(&f[..]);
        assert_eq!((q.src_port, q.dst_port), (30099, 40000));
        assert_eq!(&f[0..6], &crate::testing::SRC_MAC);
        assert_eq!(&f[26..30], &[198, 18, 0, 1]);
        assert_eq!(&f[30..34], &[198, 18, 0, 2]);
        assert_eq!(csum::checksum(0, &f[14..34]), 0, "IP checksum");
        let pseudo = csum::pseudo_header_v4([198, 18, 0, 1], [198, 18, 0, 2], IPPROTO_TCP, 20);
        assert_eq!(csum::checksum(pseudo, &f[34..54]), 0, "TCP checksum");
        assert_eq!(f[47], TCP_RST | TCP_ACK);
        // ack = the SYN's seq (1 in the builder) + 1
        assert_eq!(u32::from_be_bytes([f[42], f[43], f[44], f[45]]), 2);
    }

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_and_a_rst_gets_nothing() {
        let mut b = PacketBuilder::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 1, 2);
        b.l4 = crate::testing::L4::Tcp {
            sport: 1,
            dport: 2,
            flags: TCP_ACK,
            payload: Vec::new(),
        };
        let mut f = b.build();
        let p = parse(&f[..]);
        tcp_rst_v4(&mut f[..], &p).unwrap();
        assert_eq!(f[47], TCP_RST);
        assert_eq!(
            &f[38..42],
            &[0, 0, 0, 0],
            "seq = the segment's ack (0 in the builder)"
        );
        let mut r = PacketBuilder::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 1, 2);
        r.l4 = crate::testing::L4::Tcp {
            sport: 1,
            dport: 2,
            flags: TCP_RST,
            payload: Vec::new(),
        };
        let mut f = r.build();
        let p = parse(&f[..]);
        assert_eq!(tcp_rst_v4(&mut f[..], &p), None);
    }

    #[test]
    fn a_zero_udp_checksum_stays_zero() {
        let mut f = PacketBuilder::udp4([198, 18, 0, 2], [198, 18, 0, 1], 1, 30053).build();
        let p = parse(&f[..]);
        f[p.l4_offset + 6] = 0;
        f[p.l4_offset + 7] = 0;
        assert!(rewrite_v4(
            &mut f[..],
            &p,
            End::Destination,
            [198, 18, 3, 2],
            53
        ));
        assert_eq!(&f[p.l4_offset + 6..p.l4_offset + 8], &[0, 0]);
    }

    #[test]
    fn non_tcp_udp_and_truncated_frames_are_left_alone() {
        let mut f = PacketBuilder::tcp6(crate::testing::v6(2), crate::testing::v6(1), 1, 2).build();
        let p = parse(&f[..]);
        let copy = f.clone();
        assert!(!rewrite_v4(
            &mut f[..],
            &p,
            End::Destination,
            [1, 2, 3, 4],
            5
        ));
        assert_eq!(f, copy);
        let mut t = PacketBuilder::tcp4([198, 18, 0, 2], [198, 18, 0, 1], 1, 2).build();
        let p = parse(&t[..]);
        t.truncate(40); // the TCP checksum is out of reach
        let copy = t.clone();
        assert!(!rewrite_v4(
            &mut t[..],
            &p,
            End::Destination,
            [1, 2, 3, 4],
            5
        ));
        assert_eq!(t, copy);
    }

    #[test]
    fn ipv6_dnat_and_snat_equal_recomputed_packets() {
        use crate::testing::v6;
        let (c, n, pod) = (v6(2), v6(1), v6(0x302));
        for (before, after, end, addr, port) in [
            (
                PacketBuilder::tcp6(c, n, 40000, 30080),
                PacketBuilder::tcp6(c, pod, 40000, 8080),
                End::Destination,
                pod,
                8080,
            ),
            (
                PacketBuilder::udp6(c, n, 40000, 30053),
                PacketBuilder::udp6(c, pod, 40000, 5353),
                End::Destination,
                pod,
                5353,
            ),
            (
                PacketBuilder::tcp6(pod, c, 8080, 40000),
                PacketBuilder::tcp6(n, c, 30080, 40000),
                End::Source,
                n,
                30080,
            ),
            (
                PacketBuilder::tcp6(c, n, 40000, 30080).with_ext(60, &[1, 4, 0, 0, 0, 0]),
                PacketBuilder::tcp6(c, pod, 40000, 8080).with_ext(60, &[1, 4, 0, 0, 0, 0]),
                End::Destination,
                pod,
                8080,
            ),
        ] {
            let mut f: Vec<u8> = before.build();
            let p = parse(&f[..]);
            assert!(rewrite(&mut f[..], &p, end, &addr, port));
            assert_eq!(f, after.build());
        }
    }

    #[test]
    fn hop_limit_decrements_and_stops_at_one() {
        use crate::testing::v6;
        let mut f = PacketBuilder::tcp6(v6(2), v6(1), 1, 2).build();
        let p = parse(&f[..]);
        assert!(decrement_ttl(&mut f[..], &p));
        assert_eq!(f[14 + 7], 63);
        f[14 + 7] = 1;
        let before = f.clone();
        assert!(!decrement_ttl(&mut f[..], &p));
        assert_eq!(f, before);
    }

    #[test]
    fn an_ipv6_syn_becomes_a_rst_ack_with_a_fresh_checksum() {
        use crate::testing::v6;
        let (c, n) = (v6(2), v6(1));
        let mut syn = PacketBuilder::tcp6(c, n, 40000, 30099);
        syn.l4 = crate::testing::L4::Tcp {
            sport: 40000,
            dport: 30099,
            flags: TCP_SYN,
            payload: std::vec![b'x'; 10],
        };
        let mut f = syn.with_ext(60, &[1, 4, 0, 0, 0, 0]).build();
        let p = parse(&f[..]);
        let shrink = tcp_rst(&mut f[..], &p).expect("answered");
        f.truncate(f.len() - shrink as usize);
        assert_eq!(f.len(), 14 + 40 + 20);
        let q = parse(&f[..]);
        assert_eq!((q.src_port, q.dst_port), (30099, 40000));
        assert_eq!(&f[14 + 8..14 + 24], &n);
        assert_eq!(&f[14 + 24..14 + 40], &c);
        assert_eq!(f[14 + 40 + 13], TCP_RST | TCP_ACK);
        // Acknowledges the SYN (sequence 1) and its 10 bytes.
        assert_eq!(&f[14 + 48..14 + 52], &12u32.to_be_bytes()[..]);
        let pseudo = csum::pseudo_header_v6(&n, &c, IPPROTO_TCP, 20);
        assert_eq!(csum::checksum(pseudo, &f[14 + 40..]), 0);
    }
}
