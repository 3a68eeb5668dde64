//! Request bodies on the way up, response bodies on the way down.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::{BoxError, UpBody};
use crate::metrics::ProxyMetrics;

/// A request body grew past the limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// What pre-buffering found wrong.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    /// Bad chunked framing, or the client went away.
    Malformed(hyper::Error),
}

/// A request body after pre-buffering.
pub enum RequestBody {
    Empty,
    /// Read whole: can be sent again on a retry.
    Full(Bytes),
    /// Larger than the pre-buffer: the part read, then the rest as it comes.
    Streaming {
        prefix: Bytes,
        rest: Incoming,
        limit: u64,
    },
}

impl RequestBody {
    /// The body to send; `Full` stays cloneable through `retry_copy`.
    pub fn into_upstream(self) -> UpBody {
        match self {
            RequestBody::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            RequestBody::Full(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            RequestBody::Streaming {
                prefix,
                rest,
                limit,
            } => PrefixedBody {
                remaining: limit.saturating_sub(prefix.len() as u64),
                limit,
                prefix: Some(prefix),
                rest,
            }
            .boxed(),
        }
    }

    /// A copy for another attempt, when the body allows one.
    pub fn retry_copy(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Streaming { .. } => None,
        }
    }
}

/// Reads up to `prebuffer` bytes of `body` (all of it when smaller), and
/// enforces `limit`.
pub async fn prebuffer(
    mut body: Incoming,
    prebuffer: usize,
    limit: u64,
) -> Result<RequestBody, BodyError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => {
                return Ok(if buf.is_empty() {
                    RequestBody::Empty
                } else {
                    RequestBody::Full(buf.freeze())
                });
            }
            Some(Err(e)) => return Err(BodyError::Malformed(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() as u64 > limit {
                        return Err(BodyError::TooLarge);
                    }
                    if buf.len() >= prebuffer {
                        break;
                    }
                }
            }
        }
    }
    Ok(RequestBody::Streaming {
        prefix: buf.freeze(),
        rest: body,
        limit,
    })
}

/// The pre-buffered part followed by the rest of the client's body, cut
/// off with [`BodyTooLarge`] past the limit.
struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: Incoming,
    remaining: u64,
    limit: u64,
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take()
            && !p.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        match ready!(Pin::new(&mut self.rest).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > self.remaining {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// Everything the access log line and the request metrics need.
pub struct AccessRecord {
    pub metrics: Arc<ProxyMetrics>,
    pub start: Instant,
    pub request_id: String,
    pub method: hyper::Method,
    pub host: String,
    /// `host` if the config names it, else "other": a bounded label.
    pub host_label: Arc<str>,
    pub path: String,
    pub status: u16,
    pub service: Arc<str>,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub bytes_in: u64,
}

impl AccessRecord {
    fn finish(self, bytes_out: u64, complete: bool) {
        let duration = self.start.elapsed();
        self.metrics
            .observe_request(self.status, &self.host_label, &self.service, duration);
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            service = %self.service,
            upstream = %self.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            duration_ms = duration.as_secs_f64() * 1e3,
            upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            bytes_in = self.bytes_in,
            bytes_out,
            complete,
        );
    }
}

/// A response body that counts what it sends and writes the access log when
/// it ends (or is dropped, when the client went away).
pub struct LoggedBody {
    inner: UpBody,
    bytes: u64,
    record: Option<AccessRecord>,
}

impl LoggedBody {
    pub fn new(inner: UpBody, record: AccessRecord) -> Self {
        LoggedBody {
            inner,
            bytes: 0,
            record: Some(record),
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            None => {
                if let Some(r) = self.record.take() {
                    r.finish(self.bytes, true);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            let complete = self.inner.is_end_stream();
            r.finish(self.bytes, complete);
        }
    }
}
