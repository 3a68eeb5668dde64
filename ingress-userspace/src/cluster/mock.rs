//! Test support: a kube `Client` over tower-test's mock service (kube's own
//! pattern), and a scripted API server answering its requests one by one.

use std::pin::pin;

use hyper::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tower_test::mock;

pub type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// A client whose requests arrive at the returned handle.
pub fn client() -> (Client, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "ns"), handle)
}

/// One request as the mock saw it.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

/// Serves the next request with `status` and `body`, returning what it was.
pub async fn answer(handle: &mut Handle, status: u16, body: Value) -> Seen {
    respond(handle, move |_| (status, body)).await
}

/// Serves the next request with what `f` makes of it.
pub async fn respond(handle: &mut Handle, f: impl FnOnce(&Seen) -> (u16, Value)) -> Seen {
    let mut handle = pin!(handle);
    let (request, send) = handle
        .next_request()
        .await
        .expect("the client sent no further request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body_in = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON request body")
    };
    let seen = Seen {
        method,
        uri,
        body: body_in,
    };
    let (status, body) = f(&seen);
    let mut response = Response::new(Body::from(body.to_string().into_bytes()));
    *response.status_mut() = StatusCode::from_u16(status).expect("status code");
    send.send_response(response);
    seen
}

/// A Kubernetes `Status` failure body.
pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}
