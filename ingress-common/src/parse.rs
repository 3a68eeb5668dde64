//! Header parsing shared by the XDP and TC programs.
//!
//! [`parse`] walks Ethernet, up to two 802.1Q/802.1ad tags, IPv4 (with
//! options) or IPv6 (with up to [`MAX_IPV6_EXT_HEADERS`] extension headers),
//! then the TCP or UDP header, and classifies the frame. It reads the frame
//! only through [`Frame::bytes`], which returns `None` past the end: in the
//! kernel that is the bounds check against `data_end` the verifier demands,
//! on the host it is a slice bound. The same function therefore runs in both
//! places and the host tests cover what the kernel executes.

/// Ethernet header length (no FCS).
pub const ETH_HLEN: usize = 14;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// VLAN tags looked through (QinQ).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up and calling the frame
/// `Ipv6Other` (a bound the verifier can see).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Byte access to a frame.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` when any of them lies past the
    /// end of the frame.
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(self.get(offset..end)?);
        Some(out)
    }
}

/// Copies the 16 bytes at `offset` (an IPv6 address) into `out`, four at a
/// time: a whole 16-byte copy from packet memory into a map value can be
/// lowered to a byte loop whose bounds the eBPF verifier does not follow.
/// False (and `out` unspecified) past the end of the frame.
#[inline(always)]
pub fn read16<F: Frame + ?Sized>(frame: &F, offset: usize, out: &mut [u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        let Some(b) = frame.bytes::<4>(offset + i) else {
            return false;
        };
        out[i] = b[0];
        out[i + 1] = b[1];
        out[i + 2] = b[2];
        out[i + 3] = b[3];
        i += 4;
    }
    true
}

/// What a frame is. Exactly one per frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Ipv4Tcp,
    Ipv4Udp,
    /// IPv4 carrying anything but TCP or UDP (ICMP, GRE, ...).
    Ipv4Other,
    Ipv6Tcp,
    Ipv6Udp,
    /// IPv6 carrying anything but TCP or UDP, or more extension headers
    /// than are walked.
    Ipv6Other,
    /// The first fragment of a fragmented IPv4 or IPv6 datagram.
    FragmentFirst,
    /// A non-first fragment: it has no L4 header.
    FragmentLater,
    /// Not IP: ARP, LLDP, ...
    NonIp,
    TruncatedEthernet,
    TruncatedVlan,
    TruncatedIpv4,
    TruncatedIpv6,
    /// The IP header is whole but the TCP or UDP header is cut short.
    TruncatedL4,
    /// An IP header that contradicts itself: wrong version, IHL < 5, a total
    /// length shorter than the header.
    MalformedIp,
}

impl Class {
    pub const ALL: [Class; 15] = [
        Class::Ipv4Tcp,
        Class::Ipv4Udp,
        Class::Ipv4Other,
        Class::Ipv6Tcp,
        Class::Ipv6Udp,
        Class::Ipv6Other,
        Class::FragmentFirst,
        Class::FragmentLater,
        Class::NonIp,
        Class::TruncatedEthernet,
        Class::TruncatedVlan,
        Class::TruncatedIpv4,
        Class::TruncatedIpv6,
        Class::TruncatedL4,
        Class::MalformedIp,
    ];
}

/// IP version of a parsed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    None,
    V4,
    V6,
}

/// The outcome of [`parse`]: the class plus where the headers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub class: Class,
    /// The frame carried at least one VLAN tag.
    pub vlan: bool,
    /// The IPv4 header carried options (IHL > 5).
    pub ipv4_options: bool,
    pub ip: IpVersion,
    /// Offset of the IP header (valid when `ip` is not `None`).
    pub l3_offset: usize,
    /// Offset of the L4 header (valid for the TCP and UDP classes).
    pub l4_offset: usize,
    /// The L4 protocol number (valid when `ip` is not `None`).
    pub l4_proto: u8,
    /// Ports in host order (valid for the TCP and UDP classes).
    pub src_port: u16,
    pub dst_port: u16,
}

impl Parsed {
    /// A frame of `class` with nothing located yet. The zeros come from one
    /// volatile read of a local rather than from constants: LLVM merges a
    /// run of constant zero stores (21 bytes here) into a `memset` call,
    /// which the eBPF target lowers to a byte loop that every frame the XDP
    /// and TC programs see would run. The layout and the values are the
    /// same either way.
    #[inline(always)]
    fn new(class: Class) -> Self {
        let zero = 0usize;
        // SAFETY: a read of a live local.
        let z = unsafe { core::ptr::read_volatile(&zero) };
        Parsed {
            class,
            vlan: false,
            ipv4_options: false,
            ip: IpVersion::None,
            l3_offset: z,
            l4_offset: z,
            l4_proto: z as u8,
            src_port: z as u16,
            dst_port: z as u16,
        }
    }

    #[inline(always)]
    fn with(mut self, class: Class) -> Self {
        self.class = class;
        self
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Classifies a frame and locates its headers.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let mut out = Parsed::new(Class::TruncatedEthernet);
    let Some(ethertype) = frame.bytes::<2>(12) else {
        return out;
    };
    if frame.bytes::<ETH_HLEN>(0).is_none() {
        return out;
    }
    let mut ethertype = be16(ethertype);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        out.vlan = true;
        // The tag is TCI (2 bytes) then the inner ethertype (2 bytes).
        let Some(tag) = frame.bytes::<VLAN_HLEN>(l3) else {
            return out.with(Class::TruncatedVlan);
        };
        ethertype = be16([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }
    out.l3_offset = l3;
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, out),
        ETH_P_IPV6 => parse_ipv6(frame, out),
        _ => out.with(Class::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, mut out: Parsed) -> Parsed {
    let l3 = out.l3_offset;
    let Some(h) = frame.bytes::<IPV4_MIN_HLEN>(l3) else {
        return out.with(Class::TruncatedIpv4);
    };
    out.ip = IpVersion::V4;
    out.l4_proto = h[9];
    if h[0] >> 4 != 4 {
        return out.with(Class::MalformedIp);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return out.with(Class::MalformedIp);
    }
    if (be16([h[2], h[3]]) as usize) < ihl {
        return out.with(Class::MalformedIp);
    }
    if ihl > IPV4_MIN_HLEN {
        out.ipv4_options = true;
        // The last byte of the options must be inside the frame.
        if frame.bytes::<1>(l3 + ihl - 1).is_none() {
            return out.with(Class::TruncatedIpv4);
        }
    }
    let frag = be16([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if frag_offset != 0 {
        return out.with(Class::FragmentLater);
    }
    out.l4_offset = l3 + ihl;
    if more_fragments {
        return out.with(Class::FragmentFirst);
    }
    match out.l4_proto {
        IPPROTO_TCP => parse_ports(frame, out, TCP_MIN_HLEN, Class::Ipv4Tcp),
        IPPROTO_UDP => parse_ports(frame, out, UDP_HLEN, Class::Ipv4Udp),
        _ => out.with(Class::Ipv4Other),
    }
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, mut out: Parsed) -> Parsed {
    let l3 = out.l3_offset;
    let Some(h) = frame.bytes::<IPV6_HLEN>(l3) else {
        return out.with(Class::TruncatedIpv6);
    };
    out.ip = IpVersion::V6;
    if h[0] >> 4 != 6 {
        return out.with(Class::MalformedIp);
    }
    let mut next = h[6];
    let mut off = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = frame.bytes::<2>(off) else {
                    return out.with(Class::TruncatedIpv6);
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = frame.bytes::<8>(off) else {
                    return out.with(Class::TruncatedIpv6);
                };
                out.l4_proto = ext[0];
                let frag = be16([ext[2], ext[3]]);
                if frag & 0xfff8 != 0 {
                    return out.with(Class::FragmentLater);
                }
                out.l4_offset = off + 8;
                return out.with(Class::FragmentFirst);
            }
            _ => break,
        }
    }
    out.l4_proto = next;
    out.l4_offset = off;
    match next {
        IPPROTO_TCP => parse_ports(frame, out, TCP_MIN_HLEN, Class::Ipv6Tcp),
        IPPROTO_UDP => parse_ports(frame, out, UDP_HLEN, Class::Ipv6Udp),
        _ => out.with(Class::Ipv6Other),
    }
}

#[inline(always)]
fn parse_ports<F: Frame + ?Sized>(frame: &F, mut out: Parsed, hlen: usize, class: Class) -> Parsed {
    let l4 = out.l4_offset;
    let Some(ports) = frame.bytes::<4>(l4) else {
        return out.with(Class::TruncatedL4);
    };
    if frame.bytes::<1>(l4 + hlen - 1).is_none() {
        return out.with(Class::TruncatedL4);
    }
    out.src_port = be16([ports[0], ports[1]]);
    out.dst_port = be16([ports[2], ports[3]]);
    out.with(class)
}

#[cfg(test)]
mod tests;
