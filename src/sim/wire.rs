//! The simulator's JSON: domain values serialized as nearcore 2.14 does
//! (keys in alphabetical order, amounts as strings, heights as numbers),
//! `block` and `status` filled into templates taken from real responses,
//! and error envelopes with the HTTP status each profile uses.

use serde_json::{Map, Value, json};

use crate::domain::{Touched, TouchedKind};
pub use crate::rpc::views::{access_key_view, account_view, change_json};
use crate::sim::chain::{Chain, SimBlock};
use crate::sim::scenario::Profile;

const BLOCK_CURRENT: &str = include_str!("templates/block_current.json");
const BLOCK_LEGACY: &str = include_str!("templates/block_legacy.json");
const STATUS_CURRENT: &str = include_str!("templates/status_current.json");
const STATUS_LEGACY: &str = include_str!("templates/status_legacy.json");

pub fn touched_json(t: &Touched) -> Value {
    let kind = match &t.kind {
        TouchedKind::Account => "account_touched",
        TouchedKind::AccessKey => "access_key_touched",
        TouchedKind::Data => "data_touched",
        TouchedKind::ContractCode => "contract_code_touched",
        TouchedKind::Unknown(k) => k,
    };
    json!({"type": kind, "account_id": t.account_id})
}

fn template(text: &str) -> Value {
    serde_json::from_str(text).expect("bundled templates are valid JSON")
}

fn iso_time(ns: u64) -> String {
    crate::store::convert::ns_to_time(ns)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

pub fn block_json(chain: &Chain, b: &SimBlock, profile: Profile) -> Value {
    let mut v = template(if profile == Profile::Current {
        BLOCK_CURRENT
    } else {
        BLOCK_LEGACY
    });
    let h = &b.header;
    let final_hash = chain.final_block().header.hash.to_string();
    let hdr = v["header"].as_object_mut().expect("template has a header");
    hdr.insert("height".into(), json!(h.height));
    hdr.insert("hash".into(), json!(h.hash.as_str()));
    hdr.insert("prev_hash".into(), json!(h.prev_hash.as_str()));
    hdr.insert("timestamp".into(), json!(h.timestamp_ns));
    hdr.insert(
        "timestamp_nanosec".into(),
        json!(h.timestamp_ns.to_string()),
    );
    hdr.insert("last_final_block".into(), json!(final_hash));
    hdr.insert("last_ds_final_block".into(), json!(h.prev_hash.as_str()));
    if hdr.contains_key("prev_height") {
        let prev = chain
            .block_by_hash(h.prev_hash.as_str())
            .map(|p| p.header.height)
            .unwrap_or(h.height.saturating_sub(1));
        hdr.insert("prev_height".into(), json!(prev));
    }
    if let Some(chunks) = v["chunks"].as_array_mut() {
        for c in chunks {
            c["height_created"] = json!(h.height);
            c["height_included"] = json!(h.height);
            c["prev_block_hash"] = json!(h.prev_hash.as_str());
        }
    }
    v
}

pub fn status_json(chain: &Chain, profile: Profile) -> Value {
    let mut v = template(if profile == Profile::Current {
        STATUS_CURRENT
    } else {
        STATUS_LEGACY
    });
    let head = &chain.head().header;
    let earliest = &chain.earliest().header;
    let spec = chain.spec();
    let version = if profile == Profile::Current { 86 } else { 61 };
    v["chain_id"] = json!(spec.chain_id);
    v["protocol_version"] = json!(version);
    v["latest_protocol_version"] = json!(version);
    let si = &mut v["sync_info"];
    si["latest_block_hash"] = json!(head.hash.as_str());
    si["latest_block_height"] = json!(head.height);
    si["latest_block_time"] = json!(iso_time(head.timestamp_ns));
    si["earliest_block_hash"] = json!(earliest.hash.as_str());
    si["earliest_block_height"] = json!(earliest.height);
    si["earliest_block_time"] = json!(iso_time(earliest.timestamp_ns));
    si["syncing"] = json!(false);
    v
}

/// A JSON-RPC error and the HTTP status the profile answers it with.
#[derive(Debug, Clone)]
pub struct WireError {
    pub http_current: u16,
    pub name: &'static str,
    pub cause: &'static str,
    /// `None` for unit causes (no `info` key at all).
    pub info: Option<Box<Value>>,
    pub code: i64,
    pub message: &'static str,
    /// The deprecated `data` field, kept because nodes still send it.
    pub data: Box<Value>,
}

impl WireError {
    pub fn handler(cause: &'static str, info: Option<Value>, data: Value) -> WireError {
        WireError {
            http_current: 200,
            name: "HANDLER_ERROR",
            cause,
            info: info.map(Box::new),
            code: -32000,
            message: "Server error",
            data: Box::new(data),
        }
    }

    pub fn parse(msg: String) -> WireError {
        WireError {
            http_current: 400,
            name: "REQUEST_VALIDATION_ERROR",
            cause: "PARSE_ERROR",
            info: Some(Box::new(json!({"error_message": msg}))),
            code: -32700,
            message: "Parse error",
            data: Box::new(json!(msg)),
        }
    }

    pub fn method_not_found(method: &str) -> WireError {
        WireError {
            http_current: 400,
            name: "REQUEST_VALIDATION_ERROR",
            cause: "METHOD_NOT_FOUND",
            info: Some(Box::new(json!({"method_name": method}))),
            code: -32601,
            message: "Method not found",
            data: Box::new(json!(method)),
        }
    }

    pub fn internal(msg: &str) -> WireError {
        WireError {
            http_current: 500,
            name: "INTERNAL_ERROR",
            cause: "INTERNAL_ERROR",
            info: Some(Box::new(json!({"error_message": msg}))),
            code: -32000,
            message: "Server error",
            data: Box::new(json!(format!(
                "The node reached its limits. Try again later. More details: {msg}"
            ))),
        }
    }

    pub fn timeout() -> WireError {
        WireError {
            http_current: 408,
            ..WireError::handler("TIMEOUT_ERROR", None, json!("Timeout"))
        }
    }

    pub fn with_http(mut self, status: u16) -> WireError {
        self.http_current = status;
        self
    }

    /// The HTTP status and body for request `id` on a node of `profile`.
    pub fn render(&self, id: &Value, profile: Profile) -> (u16, Value) {
        let mut cause = Map::new();
        cause.insert("name".into(), json!(self.cause));
        if let Some(info) = &self.info {
            cause.insert("info".into(), (**info).clone());
        }
        let status = if profile == Profile::Current {
            self.http_current
        } else {
            200
        };
        (
            status,
            json!({"jsonrpc": "2.0", "id": id, "error": {
            "name": self.name, "cause": cause, "code": self.code, "message": self.message, "data": self.data}}),
        )
    }
}
