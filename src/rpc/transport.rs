//! One JSON-RPC call, made robust: a request budget shared by every call,
//! retries with exponential backoff and jitter (honouring `Retry-After`),
//! failover across the configured urls, capped response bodies, and
//! per-endpoint detection of the method names the node knows.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use backon::BackoffBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::rpc::error::{NodeError, RpcError};
use crate::rpc::views::ErrorEnvelope;

/// How the client talks to the node(s).
#[derive(Clone)]
pub struct RpcSettings {
    /// In failover order.
    pub urls: Vec<String>,
    pub timeout: Duration,
    /// Shared by every call and every url; `None` means unlimited.
    pub requests_per_second: Option<NonZeroU32>,
    /// Attempts on one url before failing over to the next.
    pub attempts_per_url: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_response_bytes: usize,
    /// Sent as `Authorization: Bearer`; never logged.
    pub api_key: Option<SecretString>,
}

/// The urls as keywatch shows them ([`redact_url`]): a provider's key may
/// sit in the path.
impl std::fmt::Debug for RpcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| match reqwest::Url::parse(u) {
                Ok(u) => redact_url(&u),
                Err(_) => "(invalid url)".to_owned(),
            })
            .collect();
        f.debug_struct("RpcSettings")
            .field("urls", &urls)
            .field("timeout", &self.timeout)
            .field("requests_per_second", &self.requests_per_second)
            .field("attempts_per_url", &self.attempts_per_url)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("api_key", &self.api_key)
            .finish()
    }
}

impl Default for RpcSettings {
    fn default() -> Self {
        RpcSettings {
            urls: vec![],
            timeout: Duration::from_secs(10),
            requests_per_second: None,
            attempts_per_url: 3,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            max_response_bytes: 32 * 1024 * 1024,
            api_key: None,
        }
    }
}

/// A method with its current name and, for the ones that were renamed, the
/// `EXPERIMENTAL_` name older nodes know.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    pub name: &'static str,
    pub legacy: Option<&'static str>,
}

impl Method {
    pub const fn plain(name: &'static str) -> Method {
        Method { name, legacy: None }
    }
}

struct Endpoint {
    url: reqwest::Url,
    /// The url without credentials or query string, safe for logs and errors.
    display: String,
    /// Set once the node answered METHOD_NOT_FOUND for a current method name.
    legacy_names: AtomicBool,
}

/// Who a request is for, in the shared request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Following the chain: first claim on the budget.
    Follow,
    /// Self-checks and other work that uses what following leaves.
    Background,
}

/// Counts a follower request waiting for the budget while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Transport {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Index of the url calls start at; moves on failover.
    active: AtomicUsize,
    budget: Option<super::budget::Budget>,
    /// Follower requests waiting for the budget.
    following: AtomicUsize,
    /// One budget slot: how long a background request waits between looks.
    spacing: Duration,
    settings: RpcSettings,
    next_id: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("rpc.urls is empty: at least one NEAR RPC url is required")]
    NoUrls,
    #[error("rpc url {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A url as keywatch shows it anywhere (logs, errors, the database, the
/// cli): scheme, host and port only, with "/…" when more was cut. Secrets
/// hide in every other part: userinfo, the query (API keys), and the path
/// (Slack webhook tokens, some RPC providers' keys).
pub fn redact_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let cut = url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some();
    format!(
        "{}://{host}{port}{}",
        url.scheme(),
        if cut { "/…" } else { "" }
    )
}

pub fn install_crypto_provider() {
    // Installing fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Transport {
    pub fn new(settings: RpcSettings) -> Result<Transport, SetupError> {
        install_crypto_provider();
        if settings.urls.is_empty() {
            return Err(SetupError::NoUrls);
        }
        let endpoints = settings
            .urls
            .iter()
            .map(|raw| {
                // an unparsable url is not shown: it may hold a key
                let url = reqwest::Url::parse(raw).map_err(|e| SetupError::BadUrl {
                    url: "(not a url)".into(),
                    reason: e.to_string(),
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(SetupError::BadUrl {
                        url: redact_url(&url),
                        reason: "scheme must be http or https".into(),
                    });
                }
                Ok(Endpoint {
                    display: redact_url(&url),
                    url,
                    legacy_names: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("keywatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        let budget = settings
            .requests_per_second
            .map(|rps| super::budget::Budget::new(rps.get() as usize));
        Ok(Transport {
            http,
            endpoints,
            active: AtomicUsize::new(0),
            budget,
            following: AtomicUsize::new(0),
            spacing: settings
                .requests_per_second
                .map(|r| Duration::from_secs(1) / r.get())
                .unwrap_or(Duration::ZERO),
            settings,
            next_id: AtomicU64::new(1),
        })
    }

    pub fn url_count(&self) -> usize {
        self.endpoints.len()
    }

    pub fn url_display(&self, idx: usize) -> &str {
        &self.endpoints[idx].display
    }

    /// Calls `method` with retries and failover; parses the result as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        lane: Lane,
        method: Method,
        params: &Value,
    ) -> Result<T, RpcError> {
        let n = self.endpoints.len();
        let start = self.active.load(Ordering::Relaxed) % n;
        let mut attempts = 0u32;
        let mut last: Option<RpcError> = None;
        for step in 0..n {
            let idx = (start + step) % n;
            let mut delays = backon::ExponentialBuilder::default()
                .with_min_delay(self.settings.backoff_min)
                .with_max_delay(self.settings.backoff_max)
                .with_jitter()
                .with_max_times(self.settings.attempts_per_url.saturating_sub(1) as usize)
                .build();
            loop {
                attempts += 1;
                match self.call_on(lane, idx, method, params).await {
                    Ok(v) => {
                        if idx != start {
                            self.active.store(idx, Ordering::Relaxed);
                            tracing::warn!(url = %self.endpoints[idx].display, method = method.name, "failed over to this rpc url");
                        }
                        return Ok(v);
                    }
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, attempt = attempts, "retryable rpc error");
                        let retry_after = e.retry_after();
                        last = Some(e);
                        let Some(delay) = delays.next() else { break };
                        match retry_after {
                            // The provider wants a longer pause than we would
                            // ever back off: try the next url instead.
                            Some(ra) if ra > self.settings.backoff_max && n > 1 => break,
                            Some(ra) => tokio::time::sleep(delay.max(ra)).await,
                            None => tokio::time::sleep(delay).await,
                        }
                    }
                }
            }
        }
        Err(RpcError::Exhausted {
            method: method.name.to_owned(),
            attempts,
            urls: n,
            last: Box::new(last.expect("at least one attempt was made")),
        })
    }

    /// One request to one url (plus one immediate re-send under the legacy
    /// method name when the node does not know the current one).
    pub async fn call_on<T: DeserializeOwned>(
        &self,
        lane: Lane,
        idx: usize,
        method: Method,
        params: &Value,
    ) -> Result<T, RpcError> {
        let ep = &self.endpoints[idx];
        let use_legacy = ep.legacy_names.load(Ordering::Relaxed);
        let name = match (use_legacy, method.legacy) {
            (true, Some(legacy)) => legacy,
            _ => method.name,
        };
        match self.timed(lane, ep, method.name, name, params).await {
            Err(e) if e.is_method_not_found() && !use_legacy && method.legacy.is_some() => {
                tracing::info!(url = %ep.display, method = method.name, "node does not know this method name; using EXPERIMENTAL_ names from now on");
                ep.legacy_names.store(true, Ordering::Relaxed);
                let legacy = method.legacy.expect("checked");
                self.timed(lane, ep, method.name, legacy, params).await
            }
            other => other,
        }
    }

    /// [`Self::request`] once the request budget admits it, counted and
    /// timed for the metrics under the method's current name `label`
    /// (whichever name was sent).
    async fn timed<T: DeserializeOwned>(
        &self,
        lane: Lane,
        ep: &Endpoint,
        label: &'static str,
        name: &str,
        params: &Value,
    ) -> Result<T, RpcError> {
        // the time at the node, not the wait for the request budget
        self.admit(lane).await;
        let started = std::time::Instant::now();
        let result = self.request(ep, name, params).await;
        crate::metrics::rpc_request(label, started.elapsed(), result.is_ok());
        result
    }

    /// Waits for the request budget. The follower's lane takes the next
    /// free slot; the background lane (reconcile, baselines asked for by
    /// other processes) only takes a slot no follower request is waiting
    /// for, so it never slows following down.
    async fn admit(&self, lane: Lane) {
        let Some(budget) = &self.budget else {
            return;
        };
        match lane {
            Lane::Follow => {
                let _waiting = Waiting::new(&self.following);
                budget.take(false).await;
            }
            Lane::Background => loop {
                if self.following.load(Ordering::SeqCst) == 0 && budget.try_take(true).is_ok() {
                    return;
                }
                tokio::time::sleep(self.spacing).await;
            },
        }
    }

    /// One JSON-RPC exchange with one url; the caller has taken the budget.
    async fn request<T: DeserializeOwned>(
        &self,
        ep: &Endpoint,
        name: &str,
        params: &Value,
    ) -> Result<T, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body =
            json!({"jsonrpc": "2.0", "id": id.to_string(), "method": name, "params": params});
        let url = || ep.display.clone();
        let method = || name.to_owned();
        let mut req = self.http.post(ep.url.clone()).json(&body);
        if let Some(key) = &self.settings.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let transport_err = |e: reqwest::Error| {
            if e.is_timeout() {
                RpcError::Timeout {
                    url: url(),
                    method: method(),
                    timeout: self.settings.timeout,
                }
            } else {
                RpcError::Connect {
                    url: url(),
                    method: method(),
                    // reqwest's own text ends with the whole url, keys and all
                    reason: error_chain(&e.without_url()),
                }
            }
        };
        let mut resp = req.send().await.map_err(transport_err)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let limit = self.settings.max_response_bytes;
        if resp.content_length().is_some_and(|len| len > limit as u64) {
            return Err(RpcError::TooLarge {
                url: url(),
                method: method(),
                limit,
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_err)? {
            if bytes.len() + chunk.len() > limit {
                return Err(RpcError::TooLarge {
                    url: url(),
                    method: method(),
                    limit,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        let reply = Reply {
            url: &ep.display,
            method: name,
            status,
            retry_after,
        };
        interpret(&reply, Some(&id.to_string()), &bytes)
    }
}

/// What came back for one request, before its body is read.
pub struct Reply<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// Turns a response body into a typed result or a classified error: a
/// JSON-RPC error envelope (any HTTP status) becomes [`RpcError::Node`], a
/// non-JSON-RPC body with a non-200 status [`RpcError::Http`], anything else
/// unexpected [`RpcError::Malformed`]. `expected_id`, when given, must match.
pub fn interpret<T: DeserializeOwned>(
    reply: &Reply<'_>,
    expected_id: Option<&str>,
    bytes: &[u8],
) -> Result<T, RpcError> {
    let url = || reply.url.to_owned();
    let method = || reply.method.to_owned();
    let status = reply.status;
    let http_error = || RpcError::Http {
        url: url(),
        method: method(),
        status,
        retry_after: reply.retry_after,
        body: snippet(bytes),
    };
    let malformed = |reason: String| RpcError::Malformed {
        url: url(),
        method: method(),
        reason,
    };
    let envelope: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) if status != 200 => return Err(http_error()),
        Err(e) => return Err(malformed(format!("invalid JSON ({e}): {}", snippet(bytes)))),
    };
    if let (Some(rid), Some(expected)) = (envelope.get("id"), expected_id)
        && rid.as_str() != Some(expected)
        && !rid.is_null()
    {
        return Err(malformed(format!(
            "response id {rid} does not match request id {expected}"
        )));
    }
    if let Some(err) = envelope.get("error").filter(|e| e.is_object()) {
        let err: ErrorEnvelope = serde_json::from_value(err.clone())
            .map_err(|e| malformed(format!("unreadable error object: {e}")))?;
        let (cause, info) = match err.cause {
            Some(c) => (c.name, c.info),
            // Pre-structured errors only have code and message.
            None => (
                match err.code {
                    Some(-32601) => "METHOD_NOT_FOUND".to_owned(),
                    Some(-32700) => "PARSE_ERROR".to_owned(),
                    _ => "UNKNOWN".to_owned(),
                },
                err.message.map(Value::String),
            ),
        };
        return Err(RpcError::Node(Box::new(NodeError {
            url: url(),
            method: method(),
            http_status: status,
            name: err.name.unwrap_or_else(|| "UNKNOWN".to_owned()),
            cause,
            info,
        })));
    }
    match envelope.get("result") {
        Some(result) if status == 200 => serde_json::from_value(result.clone())
            .map_err(|e| malformed(format!("unexpected result shape: {e}"))),
        _ if status != 200 => Err(http_error()),
        _ => Err(malformed(format!(
            "neither result nor error: {}",
            snippet(bytes)
        ))),
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if bytes.len() > 200 {
        format!("{flat}…")
    } else {
        flat
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_host_and_port() {
        for (url, shown) in [
            (
                "https://user:pw@rpc.example.com/near?apiKey=secret",
                "https://rpc.example.com/…",
            ),
            (
                "https://hooks.slack.com/services/T0/B0/s3cr3tT0ken",
                "https://hooks.slack.com/…",
            ),
            ("http://127.0.0.1:3030/", "http://127.0.0.1:3030"),
            ("https://rpc.example.com", "https://rpc.example.com"),
        ] {
            assert_eq!(redact_url(&reqwest::Url::parse(url).unwrap()), shown);
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
