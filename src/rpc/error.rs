//! Every way an RPC call can fail, and whether trying again can help.
//!
//! The node's own errors are switched on `error.name` / `error.cause.name`
//! (never on `message` or `data`); provider and gateway failures (429, 502,
//! 503 with text or HTML bodies), timeouts and connection errors are
//! transport errors. [`RpcError::is_retryable`] is the single place that
//! decides what the client retries and fails over.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The node answered with a JSON-RPC error envelope.
    #[error("{}: {} failed with {}/{} (HTTP {}){}", .0.url, .0.method, .0.name, .0.cause, .0.http_status, detail_suffix(&.0.info))]
    Node(Box<NodeError>),
    /// A non-JSON-RPC HTTP failure: rate limits, gateways, auth.
    #[error("{url}: {method} got HTTP {status}{}: {body}", .retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Http {
        url: String,
        method: String,
        status: u16,
        retry_after: Option<Duration>,
        /// The start of the body, for the log.
        body: String,
    },
    #[error("{url}: {method} timed out after {timeout:?}")]
    Timeout {
        url: String,
        method: String,
        timeout: Duration,
    },
    #[error("{url}: {method}: connection failed: {reason}")]
    Connect {
        url: String,
        method: String,
        reason: String,
    },
    #[error("{url}: {method}: response body exceeds the {limit}-byte cap")]
    TooLarge {
        url: String,
        method: String,
        limit: usize,
    },
    /// The body is not valid JSON, not a JSON-RPC envelope, or a result of the wrong shape.
    #[error("{url}: {method}: malformed response: {reason}")]
    Malformed {
        url: String,
        method: String,
        reason: String,
    },
    #[error("{method}: gave up after {attempts} attempts across {urls} url(s); last error: {last}")]
    Exhausted {
        method: String,
        attempts: u32,
        urls: usize,
        #[source]
        last: Box<RpcError>,
    },
    #[error("{url}: node is on chain {actual:?}, but the config says {expected:?}")]
    WrongChain {
        url: String,
        expected: String,
        actual: String,
    },
}

/// A JSON-RPC error envelope: `{name, cause: {name, info?}}`.
#[derive(Debug)]
pub struct NodeError {
    pub url: String,
    pub method: String,
    pub http_status: u16,
    /// `error.name`: HANDLER_ERROR, REQUEST_VALIDATION_ERROR, INTERNAL_ERROR.
    pub name: String,
    /// `error.cause.name`, e.g. UNKNOWN_BLOCK.
    pub cause: String,
    pub info: Option<serde_json::Value>,
}

fn detail_suffix(info: &Option<serde_json::Value>) -> String {
    match info {
        Some(v) if v.as_object().is_some_and(|o| !o.is_empty()) => format!(": {v}"),
        _ => String::new(),
    }
}

/// Causes that another attempt or another node may well not repeat.
const RETRYABLE_CAUSES: &[&str] = &[
    "NOT_SYNCED_YET",
    "NO_SYNCED_BLOCKS",
    "UNAVAILABLE_SHARD",
    "SHARD_NOT_APPLIED",
    "TIMEOUT_ERROR",
    "INTERNAL_ERROR",
];

impl RpcError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Node(e) => {
                e.name == "INTERNAL_ERROR"
                    || RETRYABLE_CAUSES.contains(&e.cause.as_str())
                    || e.http_status == 408
            }
            RpcError::Http { status, .. } => matches!(status, 408 | 429 | 500..=599),
            RpcError::Timeout { .. } | RpcError::Connect { .. } => true,
            // A truncated body or a lying proxy: another attempt or url may do better.
            RpcError::Malformed { .. } | RpcError::TooLarge { .. } => true,
            RpcError::Exhausted { .. } | RpcError::WrongChain { .. } => false,
        }
    }

    /// The node's cause name, looking through `Exhausted`.
    pub fn cause_name(&self) -> Option<&str> {
        match self {
            RpcError::Node(e) => Some(&e.cause),
            RpcError::Exhausted { last, .. } => last.cause_name(),
            _ => None,
        }
    }

    /// A url on another chain: configuration, never retried.
    pub fn is_wrong_chain(&self) -> bool {
        match self {
            RpcError::WrongChain { .. } => true,
            RpcError::Exhausted { last, .. } => last.is_wrong_chain(),
            _ => false,
        }
    }

    pub fn is_unknown_block(&self) -> bool {
        self.cause_name() == Some("UNKNOWN_BLOCK")
    }

    pub fn is_unknown_account(&self) -> bool {
        self.cause_name() == Some("UNKNOWN_ACCOUNT")
    }

    pub fn is_garbage_collected(&self) -> bool {
        self.cause_name() == Some("GARBAGE_COLLECTED_BLOCK")
    }

    pub fn is_method_not_found(&self) -> bool {
        self.cause_name() == Some("METHOD_NOT_FOUND")
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RpcError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
