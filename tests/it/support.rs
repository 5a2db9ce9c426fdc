//! A scripted HTTP server on 127.0.0.1 that plays a NEAR RPC node for
//! client tests: each request is answered by a closure and recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One canned answer.
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Canned {
    pub fn json(status: u16, body: Value) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    pub fn text(status: u16, body: &str) -> Canned {
        Canned {
            status,
            headers: vec![("content-type", "text/plain".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// A JSON-RPC result answering request `req`.
    pub fn result(req: &Value, result: Value) -> Canned {
        Canned::json(
            200,
            json!({"jsonrpc": "2.0", "id": req["id"], "result": result}),
        )
    }

    /// A JSON-RPC error envelope answering request `req`.
    pub fn error(req: &Value, status: u16, name: &str, cause: &str, info: Value) -> Canned {
        Canned::json(
            status,
            json!({"jsonrpc": "2.0", "id": req["id"], "error": {
            "name": name, "cause": {"name": cause, "info": info}, "code": -32000, "message": "Server error", "data": cause}}),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Canned {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Canned {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(usize, &Value) -> Canned + Send + Sync;

#[derive(Clone)]
struct ServerState {
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<(Instant, Value, HeaderMap)>>>,
    raw: Arc<Mutex<Vec<Bytes>>>,
}

pub struct FakeNode {
    pub url: String,
    log: Arc<Mutex<Vec<(Instant, Value, HeaderMap)>>>,
    raw: Arc<Mutex<Vec<Bytes>>>,
}

impl FakeNode {
    /// Serves `handler(request_index, request_json)` on a fresh loopback port.
    pub async fn start(
        handler: impl Fn(usize, &Value) -> Canned + Send + Sync + 'static,
    ) -> FakeNode {
        let log = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let state = ServerState {
            handler: Arc::new(handler),
            log: log.clone(),
            raw: raw.clone(),
        };
        let app = axum::Router::new()
            .route("/", axum::routing::post(serve))
            .route("/{*path}", axum::routing::post(serve))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeNode { url, log, raw }
    }

    /// The exact request bodies received.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.raw.lock().unwrap().clone()
    }

    pub fn requests(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v, _)| v.clone())
            .collect()
    }

    pub fn methods(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r["method"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    pub fn times(&self) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, _)| *t)
            .collect()
    }

    pub fn header(&self, idx: usize, name: &str) -> Option<String> {
        self.log.lock().unwrap()[idx]
            .2
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

async fn serve(State(state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.raw.lock().unwrap().push(body.clone());
    let idx = {
        let mut log = state.log.lock().unwrap();
        log.push((Instant::now(), req.clone(), headers));
        log.len() - 1
    };
    let canned = (state.handler)(idx, &req);
    if !canned.delay.is_zero() {
        tokio::time::sleep(canned.delay).await;
    }
    let mut resp = (StatusCode::from_u16(canned.status).unwrap(), canned.body).into_response();
    for (name, value) in canned.headers {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}

/// A response body from a shared sample file (its `response`, or the whole file).
pub fn sample_result(path: &str) -> Value {
    let full = crate::samples::samples_dir().join(path);
    let doc: Value = serde_json::from_slice(&std::fs::read(full).unwrap()).unwrap();
    let body = doc.get("response").cloned().unwrap_or(doc);
    body.get("result").cloned().unwrap_or(body)
}

/// Sends `sig` (TERM, INT, STOP, ...) to the process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}
