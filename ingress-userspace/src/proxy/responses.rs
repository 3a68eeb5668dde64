//! The proxy's own answers: a status and a short plain-text body.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode, header};

use super::upstream::UpBody;

pub fn plain(status: StatusCode, message: &str) -> Response<UpBody> {
    let body = format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn not_found() -> Response<UpBody> {
    plain(
        StatusCode::NOT_FOUND,
        "no Ingress rule matches this request",
    )
}

/// A redirect to `location` (which must be a valid header value; a bad one
/// becomes 400).
pub fn redirect(status: StatusCode, location: &str) -> Response<UpBody> {
    match header::HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = plain(status, &format!("moved to {location}"));
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "invalid request target"),
    }
}
