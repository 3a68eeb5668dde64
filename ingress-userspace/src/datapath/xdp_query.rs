//! In which mode XDP is attached on an interface, asked of the kernel over
//! rtnetlink (`RTM_GETLINK`, attribute `IFLA_XDP` / `IFLA_XDP_ATTACHED`).
//!
//! A pinned XDP link keeps the mode it was made in, and a bpf link's own
//! info names only the interface: this is how an agent started with
//! another `--xdp-mode` than its predecessor finds out. aya does not expose
//! its netlink code, so the request is written here; the reply's parsing
//! is pure and unit-tested.

use std::io;

/// What the kernel reports for an interface's XDP attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttached {
    None,
    /// Native (driver) mode.
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// More than one mode at once (only with offload).
    Multi,
}

impl XdpAttached {
    fn from_raw(v: u8) -> Option<Self> {
        Some(match v {
            0 => XdpAttached::None,
            1 => XdpAttached::Driver,
            2 => XdpAttached::Generic,
            3 => XdpAttached::Offload,
            4 => XdpAttached::Multi,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            XdpAttached::None => "none",
            XdpAttached::Driver => "native",
            XdpAttached::Generic => "skb",
            XdpAttached::Offload => "offload",
            XdpAttached::Multi => "multi",
        }
    }
}

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
/// Attribute type bits that are flags (nested, byte order), not the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes in `b` as (type, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let kind = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// The request for one interface's attributes.
pub fn request(ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m
}

/// Reads the XDP attachment from a reply to [`request`]: `Ok(None)` when
/// the reply holds no link message yet, an error for a netlink error.
pub fn parse_reply(buf: &[u8]) -> io::Result<Option<XdpAttached>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(bad)? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(bad)?;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(bad());
        }
        let msg = &buf[at..at + len];
        match kind {
            NLMSG_ERROR => {
                let errno = u32_at(msg, NLMSG_HDRLEN).ok_or_else(bad)? as i32;
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            NLMSG_DONE => return Ok(None),
            RTM_NEWLINK => {
                let body = msg.get(NLMSG_HDRLEN + IFINFOMSG_LEN..).ok_or_else(bad)?;
                let mut found = XdpAttached::None;
                for (t, payload) in attrs(body) {
                    if t != IFLA_XDP {
                        continue;
                    }
                    for (t, v) in attrs(payload) {
                        if t == IFLA_XDP_ATTACHED {
                            let raw = *v.first().ok_or_else(bad)?;
                            found = XdpAttached::from_raw(raw).ok_or_else(bad)?;
                        }
                    }
                }
                return Ok(Some(found));
            }
            _ => {}
        }
        at += align4(len);
    }
    Ok(None)
}

/// Asks the kernel how XDP is attached on `ifindex` (in the calling
/// thread's network namespace).
pub fn xdp_attached(ifindex: u32) -> io::Result<XdpAttached> {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let req = request(ifindex, 1);
    // SAFETY: sends `req`, which lives across the call, to the kernel
    // (a zeroed sockaddr_nl with AF_NETLINK addresses it).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            raw,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // A reply is one link message (or an error); a few reads at most.
    for _ in 0..4 {
        // SAFETY: reads into `buf`, which is as long as said.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(found) = parse_reply(&buf[..n as usize])? {
            return Ok(found);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no link in the rtnetlink reply",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(align4(a.len()), 0);
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    fn link(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        for a in attrs {
            body.extend_from_slice(a);
        }
        message(RTM_NEWLINK, &body)
    }

    #[test]
    fn the_request_names_the_interface() {
        let r = request(7, 1);
        assert_eq!(r.len(), 32);
        assert_eq!(u32_at(&r, 0), Some(32));
        assert_eq!(u16_at(&r, 4), Some(RTM_GETLINK));
        assert_eq!(u32_at(&r, 20), Some(7));
    }

    #[test]
    fn the_attached_mode_is_read_from_the_nested_attribute() {
        // IFLA_IFNAME first, then IFLA_XDP (flagged nested) holding
        // IFLA_XDP_PROG_ID (4) and IFLA_XDP_ATTACHED.
        let name = attr(3, b"eth0\0");
        for (raw, want) in [
            (1u8, XdpAttached::Driver),
            (2, XdpAttached::Generic),
            (0, XdpAttached::None),
        ] {
            let mut nested = attr(4, &9u32.to_ne_bytes());
            nested.extend(attr(IFLA_XDP_ATTACHED, &[raw]));
            let xdp = attr(IFLA_XDP | 0x8000, &nested);
            let reply = link(&[name.clone(), xdp]);
            assert_eq!(parse_reply(&reply).unwrap(), Some(want));
        }
        // No IFLA_XDP at all: nothing attached.
        assert_eq!(
            parse_reply(&link(std::slice::from_ref(&name))).unwrap(),
            Some(XdpAttached::None)
        );
    }

    #[test]
    fn errors_and_bad_replies_are_reported() {
        let mut body = (-19i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        let e = parse_reply(&message(NLMSG_ERROR, &body)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(19));
        let mut cut = link(&[attr(3, b"eth0\0")]);
        cut.truncate(20);
        assert!(parse_reply(&cut).is_err());
        assert_eq!(parse_reply(&message(NLMSG_DONE, &[0; 4])).unwrap(), None);
    }
}
