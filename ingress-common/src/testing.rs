//! Builders for well-formed frames with correct checksums, used by the
//! parser's unit tests and by the packet fixtures that run the real programs.
//! Tests then cut or bend these frames to make the malformed ones.

use std::vec::Vec;

use crate::csum;
use crate::parse::{
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_FRAGMENT, IPPROTO_TCP, IPPROTO_UDP,
};

pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub enum L3 {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// Raw options, padded by the builder to a multiple of 4.
        options: Vec<u8>,
        /// The flags + fragment offset word (0x2000 = more fragments).
        frag: u16,
        ttl: u8,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        /// Extension headers in order: (header type, body after the
        /// next-header and length bytes). Fragment headers take their
        /// 6-byte body as is.
        ext: Vec<(u8, Vec<u8>)>,
    },
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
    },
    /// Any other protocol, bytes as given.
    Other { proto: u8, bytes: Vec<u8> },
}

#[derive(Clone, Debug)]
pub struct PacketBuilder {
    pub vlans: Vec<u16>,
    pub l3: L3,
    pub l4: L4,
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 4] {
    [a, b, c, d]
}

/// An address in fd00::/8 ending in `last`.
pub fn v6(last: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[14..].copy_from_slice(&last.to_be_bytes());
    a
}

impl PacketBuilder {
    pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Self {
        PacketBuilder {
            vlans: Vec::new(),
            l3: L3::V4 {
                src,
                dst,
                options: Vec::new(),
                frag: 0x4000,
                ttl: 64,
            },
            l4: L4::Tcp {
                sport,
                dport,
                flags: TCP_SYN,
                payload: Vec::new(),
            },
        }
    }

    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Self {
        let mut p = Self::tcp4(src, dst, sport, dport);
        p.l4 = L4::Udp {
            sport,
            dport,
            payload: b"hello".to_vec(),
        };
        p
    }

    pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Self {
        PacketBuilder {
            vlans: Vec::new(),
            l3: L3::V6 {
                src,
                dst,
                ext: Vec::new(),
            },
            l4: L4::Tcp {
                sport,
                dport,
                flags: TCP_SYN,
                payload: Vec::new(),
            },
        }
    }

    pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Self {
        let mut p = Self::tcp6(src, dst, sport, dport);
        p.l4 = L4::Udp {
            sport,
            dport,
            payload: b"hello".to_vec(),
        };
        p
    }

    pub fn with_vlan(mut self, vid: u16) -> Self {
        self.vlans.push(vid);
        self
    }

    pub fn with_ipv4_options(mut self, options: &[u8]) -> Self {
        if let L3::V4 { options: o, .. } = &mut self.l3 {
            *o = options.to_vec();
        }
        self
    }

    pub fn with_frag(mut self, word: u16) -> Self {
        if let L3::V4 { frag, .. } = &mut self.l3 {
            *frag = word;
        }
        self
    }

    pub fn with_ttl(mut self, value: u8) -> Self {
        if let L3::V4 { ttl, .. } = &mut self.l3 {
            *ttl = value;
        }
        self
    }

    pub fn with_ext(mut self, kind: u8, body: &[u8]) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            ext.push((kind, body.to_vec()));
        }
        self
    }

    pub fn l4_proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Other { proto, .. } => *proto,
        }
    }

    /// The L4 header and payload, with its checksum computed over `pseudo`.
    fn l4_bytes(&self, pseudo: impl Fn(u8, u32) -> u32) -> Vec<u8> {
        let proto = self.l4_proto();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push(5 << 4); // data offset
                b.push(*flags);
                b.extend_from_slice(&64240u16.to_be_bytes()); // window
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                b.extend_from_slice(payload);
                let c = csum::checksum(pseudo(proto, b.len() as u32), &b);
                b[16..18].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Udp {
                sport,
                dport,
                payload,
            } => {
                let mut b = Vec::new();
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(payload);
                let mut c = csum::checksum(pseudo(proto, b.len() as u32), &b);
                if c == 0 {
                    c = 0xffff; // zero means "no checksum" in UDP
                }
                b[6..8].copy_from_slice(&c.to_be_bytes());
                b
            }
            L4::Other { bytes, .. } => bytes.clone(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let (ethertype, l3) = match &self.l3 {
            L3::V4 {
                src,
                dst,
                options,
                frag,
                ttl,
            } => {
                let (src, dst) = (*src, *dst);
                let l4 = self.l4_bytes(|p, len| csum::pseudo_header_v4(src, dst, p, len as u16));
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0); // end-of-options padding
                }
                let ihl = 20 + opts.len();
                let mut h = Vec::new();
                h.push(0x40 | (ihl / 4) as u8);
                h.push(0);
                h.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes());
                h.extend_from_slice(&frag.to_be_bytes());
                h.push(*ttl);
                h.push(self.l4_proto());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&src);
                h.extend_from_slice(&dst);
                h.extend_from_slice(&opts);
                let c = csum::checksum(0, &h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&l4);
                (ETH_P_IPV4, h)
            }
            L3::V6 { src, dst, ext } => {
                let (s, d) = (*src, *dst);
                let l4 = self.l4_bytes(|p, len| csum::pseudo_header_v6(&s, &d, p, len));
                let mut chain = Vec::new();
                for (i, (_, body)) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(self.l4_proto(), |e| e.0);
                    let start = chain.len();
                    chain.push(next);
                    chain.push(0);
                    chain.extend_from_slice(body);
                    if ext[i].0 == IPPROTO_FRAGMENT {
                        chain.truncate(start + 8);
                        chain.resize(start + 8, 0);
                    } else {
                        while (chain.len() - start) % 8 != 0 {
                            chain.push(0);
                        }
                        chain[start + 1] = ((chain.len() - start) / 8 - 1) as u8;
                    }
                }
                let first = ext.first().map_or(self.l4_proto(), |e| e.0);
                let mut h = Vec::new();
                h.extend_from_slice(&[0x60, 0, 0, 0]);
                h.extend_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
                h.push(first);
                h.push(64);
                h.extend_from_slice(src);
                h.extend_from_slice(dst);
                h.extend_from_slice(&chain);
                h.extend_from_slice(&l4);
                (ETH_P_IPV6, h)
            }
        };
        ethernet(&self.vlans, ethertype, &l3)
    }
}

/// An Ethernet frame with the given 802.1Q tags (outermost first).
pub fn ethernet(vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for vid in vlans {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An ARP request for 198.18.0.1 from 198.18.0.2.
pub fn arp_request() -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    a.extend_from_slice(&SRC_MAC);
    a.extend_from_slice(&[198, 18, 0, 2]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[198, 18, 0, 1]);
    let mut f = ethernet(&[], ETH_P_ARP, &a);
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

/// An ICMP (v4 or v6) message with a zero checksum: type, code, the 4
/// bytes after the checksum, then the quote.
fn icmp_message(kind: u8, code: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(8 + quote.len());
    icmp.extend_from_slice(&[kind, code, 0, 0]);
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quote);
    icmp
}

/// An ICMPv4 error (`kind`, `code`, the 4 bytes after the checksum) from
/// `src` to `dst` quoting `quote` (an IP header and what follows), with its
/// checksum computed from scratch.
pub fn icmp4_error(
    src: [u8; 4],
    dst: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> PacketBuilder {
    let mut icmp = icmp_message(kind, code, rest, quote);
    let c = csum::checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut b = PacketBuilder::tcp4(src, dst, 0, 0);
    b.l4 = L4::Other {
        proto: crate::parse::IPPROTO_ICMP,
        bytes: icmp,
    };
    b
}

/// An ICMPv6 error (`kind`, `code`, the 4 bytes after the checksum) from
/// `src` to `dst` quoting `quote`, with its checksum (over the IPv6
/// pseudo-header) computed from scratch.
pub fn icmp6_error(
    src: [u8; 16],
    dst: [u8; 16],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> PacketBuilder {
    let mut icmp = icmp_message(kind, code, rest, quote);
    let pseudo =
        csum::pseudo_header_v6(&src, &dst, crate::parse::IPPROTO_ICMPV6, icmp.len() as u32);
    let c = csum::checksum(pseudo, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut b = PacketBuilder::tcp6(src, dst, 0, 0);
    b.l4 = L4::Other {
        proto: crate::parse::IPPROTO_ICMPV6,
        bytes: icmp,
    };
    b
}
