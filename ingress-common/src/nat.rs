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
}
