//! A guard under hyper for HTTP/2 client connections: it reads the frame
//! headers as the bytes go by (payloads are skipped, nothing is copied) and
//! closes the connection when the client floods frames that demand an
//! answer (SETTINGS, PING), which h2 itself acknowledges without limit. It
//! also counts header blocks that are too large on the wire alone (h2
//! answers those streams 431). Connections that do not start with the
//! HTTP/2 preface (HTTP/1.1) pass through untouched.
//!
//! [`FrameScanner`] is the pure part; [`Guarded`] the I/O wrapper.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ProxyMetrics;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
#[cfg(test)]
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// Padding (1 + 255) and priority (5) bytes a HEADERS frame may carry
/// besides its header block.
const HEADERS_OVERHEAD: usize = 261;

/// How many frames of a kind that each demand an answer a client may send
/// per [`FLOOD_WINDOW`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub settings: u32,
    pub pings: u32,
    /// The configured maximum header list size (decoded); a header block
    /// longer than this on the wire is certainly over it.
    pub header_list: usize,
}

/// The window the flood budgets apply to.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// Why a connection was closed by the guard (the metric's reason label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Abuse {
    #[error("too many SETTINGS frames")]
    SettingsFlood,
    #[error("too many PING frames")]
    PingFlood,
}

impl Abuse {
    pub fn reason(self) -> &'static str {
        match self {
            Abuse::SettingsFlood => "settings_flood",
            Abuse::PingFlood => "ping_flood",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Comparing the first bytes with the preface; the count matched.
    Preface(usize),
    /// Reading a frame header; the bytes of it seen so far.
    Header,
    /// Skipping a payload; bytes left.
    Payload(usize),
    /// Not HTTP/2: nothing to look at.
    Off,
}

/// Follows the frame boundaries of a client's byte stream.
#[derive(Debug)]
pub struct FrameScanner {
    limits: Limits,
    mode: Mode,
    header: [u8; FRAME_HEADER],
    have: usize,
    window_start: Option<Instant>,
    settings: u32,
    pings: u32,
    /// Wire bytes of the header block being received, and whether it was
    /// counted already.
    block: usize,
    block_counted: bool,
}

/// What a chunk of bytes showed, besides a flood.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub oversized_header_blocks: u32,
}

impl FrameScanner {
    pub fn new(limits: Limits) -> Self {
        FrameScanner {
            limits,
            mode: Mode::Preface(0),
            header: [0; FRAME_HEADER],
            have: 0,
            window_start: None,
            settings: 0,
            pings: 0,
            block: 0,
            block_counted: false,
        }
    }

    /// Whether the connection turned out not to be HTTP/2.
    pub fn is_off(&self) -> bool {
        self.mode == Mode::Off
    }

    /// Looks at the next bytes the client sent, received at `now`.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<Seen, Abuse> {
        let mut seen = Seen::default();
        while !bytes.is_empty() {
            match self.mode {
                Mode::Off => break,
                Mode::Preface(matched) => {
                    let n = bytes.len().min(PREFACE.len() - matched);
                    if bytes[..n] != PREFACE[matched..matched + n] {
                        self.mode = Mode::Off;
                        break;
                    }
                    bytes = &bytes[n..];
                    self.mode = if matched + n == PREFACE.len() {
                        Mode::Header
                    } else {
                        Mode::Preface(matched + n)
                    };
                }
                Mode::Payload(left) => {
                    let n = bytes.len().min(left);
                    bytes = &bytes[n..];
                    self.mode = if n == left {
                        Mode::Header
                    } else {
                        Mode::Payload(left - n)
                    };
                }
                Mode::Header => {
                    let n = bytes.len().min(FRAME_HEADER - self.have);
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == FRAME_HEADER {
                        self.have = 0;
                        let len = usize::from(self.header[0]) << 16
                            | usize::from(self.header[1]) << 8
                            | usize::from(self.header[2]);
                        if self.frame(self.header[3], self.header[4], len, now)? {
                            seen.oversized_header_blocks += 1;
                        }
                        self.mode = if len == 0 {
                            Mode::Header
                        } else {
                            Mode::Payload(len)
                        };
                    }
                }
            }
        }
        Ok(seen)
    }

    /// Accounts one frame header; true when it made a header block
    /// oversized.
    fn frame(&mut self, kind: u8, flags: u8, len: usize, now: Instant) -> Result<bool, Abuse> {
        match kind {
            SETTINGS | PING if flags & ACK == 0 => {
                let start = *self.window_start.get_or_insert(now);
                if now.saturating_duration_since(start) >= FLOOD_WINDOW {
                    self.window_start = Some(now);
                    self.settings = 0;
                    self.pings = 0;
                }
                if kind == SETTINGS {
                    self.settings += 1;
                    if self.settings > self.limits.settings {
                        return Err(Abuse::SettingsFlood);
                    }
                } else {
                    self.pings += 1;
                    if self.pings > self.limits.pings {
                        return Err(Abuse::PingFlood);
                    }
                }
                Ok(false)
            }
            HEADERS | CONTINUATION => {
                if kind == HEADERS {
                    self.block = 0;
                    self.block_counted = false;
                }
                self.block = self.block.saturating_add(len);
                let over =
                    !self.block_counted && self.block > self.limits.header_list + HEADERS_OVERHEAD;
                if over {
                    self.block_counted = true;
                }
                if flags & END_HEADERS != 0 {
                    self.block = 0;
                    self.block_counted = false;
                }
                Ok(over)
            }
            _ => Ok(false),
        }
    }
}

/// A client stream with a [`FrameScanner`] on its reads.
pub struct Guarded<S> {
    inner: S,
    scanner: FrameScanner,
    metrics: Arc<ProxyMetrics>,
    /// Set once the client was caught: every later read fails the same way
    /// (and is not counted again).
    tripped: Option<Abuse>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, limits: Limits, metrics: Arc<ProxyMetrics>) -> Self {
        Guarded {
            inner,
            scanner: FrameScanner::new(limits),
            metrics,
            tripped: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(abuse) = this.tripped {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, abuse)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if !this.scanner.is_off() => {
                match this.scanner.feed(&buf.filled()[before..], Instant::now()) {
                    Ok(seen) => {
                        if seen.oversized_header_blocks > 0 {
                            this.metrics
                                .http2_oversized_header_blocks
                                .inc_by(u64::from(seen.oversized_header_blocks));
                        }
                        Poll::Ready(Ok(()))
                    }
                    Err(abuse) => {
                        this.tripped = Some(abuse);
                        this.metrics.observe_http2_connection_error(abuse.reason());
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, abuse)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The reason label for an HTTP/2 connection error hyper returned, when
/// the proxy closed the connection over something the client did (a GOAWAY
/// of ours); `None` for anything else (I/O, the client's own GOAWAY, and
/// the guard's floods, which it counted itself).
pub fn connection_error_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if !h2.is_go_away() || h2.is_remote() {
                return None;
            }
            return Some(match h2.reason()? {
                h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
                h2::Reason::PROTOCOL_ERROR => "protocol_error",
                h2::Reason::COMPRESSION_ERROR => "compression_error",
                h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
                h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
                _ => "other",
            });
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        settings: 3,
        pings: 2,
        header_list: 100,
    };

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(FRAME_HEADER + payload, 0xAA);
        f
    }

    fn with_preface(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut all = PREFACE.to_vec();
        for f in frames {
            all.extend_from_slice(f);
        }
        all
    }

    #[test]
    fn settings_over_the_budget_are_a_flood_however_the_bytes_are_split() {
        let bytes = with_preface(&[
            frame(SETTINGS, 0, 6),
            frame(SETTINGS, ACK, 0),
            frame(SETTINGS, 0, 0),
            frame(DATA, 0, 20),
            frame(SETTINGS, 0, 12),
            frame(SETTINGS, 0, 0),
        ]);
        let now = Instant::now();
        for chunk in [1, 2, 7, 9, 1000] {
            let mut s = FrameScanner::new(LIMITS);
            let result = bytes
                .chunks(chunk)
                .try_for_each(|c| s.feed(c, now).map(drop));
            assert_eq!(result, Err(Abuse::SettingsFlood), "chunks of {chunk}");
        }
        // Three (and ACKs) are fine.
        let mut s = FrameScanner::new(LIMITS);
        assert!(s.feed(&bytes[..bytes.len() - 9], now).is_ok());
    }

    #[test]
    fn the_budget_renews_every_window() {
        let mut s = FrameScanner::new(LIMITS);
        let t0 = Instant::now();
        s.feed(PREFACE, t0).unwrap();
        for _ in 0..2 {
            s.feed(&frame(PING, 0, 8), t0).unwrap();
        }
        assert_eq!(s.feed(&frame(PING, 0, 8), t0), Err(Abuse::PingFlood));
        let mut s = FrameScanner::new(LIMITS);
        s.feed(PREFACE, t0).unwrap();
        for i in 0..10u32 {
            s.feed(&frame(PING, 0, 8), t0 + FLOOD_WINDOW * i).unwrap();
            s.feed(&frame(PING, ACK, 8), t0 + FLOOD_WINDOW * i).unwrap();
        }
    }

    #[test]
    fn http1_passes_untouched() {
        let mut s = FrameScanner::new(LIMITS);
        let now = Instant::now();
        s.feed(b"GET / HTTP/1.1\r\n", now).unwrap();
        assert!(s.is_off());
        for _ in 0..100 {
            s.feed(&frame(SETTINGS, 0, 0), now).unwrap();
        }
    }

    #[test]
    fn header_blocks_over_the_limit_on_the_wire_are_counted_once() {
        let mut s = FrameScanner::new(LIMITS);
        let now = Instant::now();
        s.feed(PREFACE, now).unwrap();
        let small = s.feed(&frame(HEADERS, END_HEADERS, 300), now).unwrap();
        assert_eq!(small.oversized_header_blocks, 0);
        let mut n = 0;
        n += s
            .feed(&frame(HEADERS, 0, 200), now)
            .unwrap()
            .oversized_header_blocks;
        n += s
            .feed(&frame(CONTINUATION, 0, 200), now)
            .unwrap()
            .oversized_header_blocks;
        n += s
            .feed(&frame(CONTINUATION, END_HEADERS, 200), now)
            .unwrap()
            .oversized_header_blocks;
        assert_eq!(n, 1);
    }
}
