//! The simulator's JSON-RPC server on 127.0.0.1, and the handle tests use
//! to step the chain, inject faults and read the ground truth.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::domain::{AccountId, PublicKey};
use crate::sim::chain::{Chain, SimBlock};
use crate::sim::faults::{FaultKind, FaultPlan, FaultState};
use crate::sim::scenario::{Profile, Scenario};
use crate::sim::wire::{self, WireError};

/// How the chain advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// Only when the test calls [`Simulator::advance`].
    Stepped,
    /// One block each time a client asks for the final head (`block` with
    /// a finality, or `status`), as fast as it is read.
    OnRead,
    /// One block every `block_time` of the scenario (the demo, latency benchmarks).
    RealTime,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub listen: SocketAddr,
    pub clock: Clock,
    /// No block is produced above this height.
    pub until: Option<u64>,
    /// Overrides the scenario's `[faults]`.
    pub faults: Option<FaultPlan>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            clock: Clock::Stepped,
            until: None,
            faults: None,
        }
    }
}

struct Inner {
    chain: Chain,
    profile: Profile,
    clock: Clock,
    until: Option<u64>,
    faults: FaultState,
    /// Arrivals of the last second, and the most any second has held.
    recent: std::collections::VecDeque<std::time::Instant>,
    peak_per_second: usize,
}

impl Inner {
    fn produce(&mut self) -> bool {
        let next_ok = self
            .until
            .is_none_or(|u| self.chain.head().header.height < u);
        if next_ok {
            self.chain.produce();
        }
        next_ok
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Simulator {
    pub async fn start(scenario: Scenario, options: SimOptions) -> std::io::Result<Simulator> {
        let profile = scenario.chain.profile;
        let block_time = scenario.chain.block_time;
        let faults = options.faults.unwrap_or_else(|| scenario.faults.clone());
        let inner = Arc::new(Mutex::new(Inner {
            chain: Chain::new(scenario),
            profile,
            clock: options.clock,
            until: options.until,
            faults: FaultState::new(faults),
            recent: std::collections::VecDeque::new(),
            peak_per_second: 0,
        }));
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        // Any path: providers put API keys in it.
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .route("/{*path}", axum::routing::post(handle))
            .with_state(inner.clone());
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator server stopped");
            }
        })];
        if options.clock == Clock::RealTime {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(block_time);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    lock(&inner).produce();
                }
            }));
        }
        Ok(Simulator { inner, addr, tasks })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Produces `n` blocks (fewer if `until` is reached).
    pub fn advance(&self, n: u64) {
        let mut inner = lock(&self.inner);
        for _ in 0..n {
            if !inner.produce() {
                break;
            }
        }
    }

    /// Produces blocks until the head is at least `height`.
    pub fn advance_to(&self, height: u64) {
        let mut inner = lock(&self.inner);
        while inner.chain.head().header.height < height && inner.produce() {}
    }

    /// Produces blocks until every scripted action and receipt has landed
    /// and is final.
    pub fn run_to_end(&self) {
        let mut inner = lock(&self.inner);
        while !inner.chain.is_done() && inner.produce() {}
        let lag = inner.chain.spec().final_lag;
        for _ in 0..lag {
            inner.produce();
        }
    }

    pub fn set_faults(&self, plan: FaultPlan) {
        lock(&self.inner).faults = FaultState::new(plan);
    }

    /// Requests served so far.
    /// The most requests that arrived within any one second.
    pub fn peak_requests_per_second(&self) -> usize {
        lock(&self.inner).peak_per_second
    }

    pub fn requests(&self) -> u64 {
        lock(&self.inner).faults.requests
    }

    /// Rewrites a produced block: a node that lies, for tests.
    pub fn tamper(&self, height: u64, f: impl FnOnce(&mut SimBlock)) -> bool {
        lock(&self.inner).chain.tamper(height, f)
    }

    /// Reads the chain (ground truth) under the lock.
    pub fn with_chain<R>(&self, f: impl FnOnce(&Chain) -> R) -> R {
        f(&lock(&self.inner).chain)
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves the chain as it was after the
    // last whole block: keep serving it.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        body.to_string(),
    )
        .into_response();
    resp.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("static header"),
    );
    resp
}

fn html(status: u16, title: &str) -> Response {
    let body = format!(
        "<html>\r\n<head><title>{status} {title}</title></head>\r\n<body>\r\n<center><h1>{status} {title}</h1></center>\r\n</body>\r\n</html>\r\n"
    );
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        body,
    )
        .into_response();
    resp.headers_mut()
        .insert("content-type", "text/html".parse().expect("static header"));
    resp
}

async fn handle(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> Response {
    let request: Result<Value, _> = serde_json::from_slice(&body);
    let method = request
        .as_ref()
        .ok()
        .and_then(|r| r["method"].as_str())
        .unwrap_or("")
        .to_owned();
    let (decision, profile) = {
        let mut g = lock(&inner);
        let now = std::time::Instant::now();
        g.recent.push_back(now);
        while g
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            g.recent.pop_front();
        }
        g.peak_per_second = g.peak_per_second.max(g.recent.len());
        (g.faults.decide(&method), g.profile)
    };
    if !decision.latency.is_zero() {
        tokio::time::sleep(decision.latency).await;
    }
    let id = request
        .as_ref()
        .ok()
        .map(|r| r["id"].clone())
        .unwrap_or(Value::Null);
    match decision.fault {
        Some(FaultKind::RateLimit { retry_after }) => {
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests").into_response();
            resp.headers_mut().insert(
                "retry-after",
                retry_after.to_string().parse().expect("digits"),
            );
            return resp;
        }
        Some(FaultKind::BadGateway) => return html(502, "Bad Gateway"),
        Some(FaultKind::Unavailable) => return html(503, "Service Temporarily Unavailable"),
        Some(FaultKind::Malformed) => {
            return (
                StatusCode::OK,
                format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":"),
            )
                .into_response();
        }
        Some(FaultKind::Internal) => {
            let (status, body) = WireError::internal("simulated overload").render(&id, profile);
            return json_response(status, &body);
        }
        Some(FaultKind::Timeout) => {
            let (status, body) = WireError::timeout().render(&id, profile);
            return json_response(status, &body);
        }
        Some(FaultKind::Drop) => {
            let stream = futures_util::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("simulated dropped connection"))
            });
            return Response::new(Body::from_stream(stream));
        }
        Some(FaultKind::Slow { millis }) => tokio::time::sleep(Duration::from_millis(millis)).await,
        Some(FaultKind::Truncated) | None => {}
    }
    let (status, body) = match request {
        Err(e) => WireError::parse(format!("Failed to parse JSON-RPC request: {e}"))
            .render(&Value::Null, profile),
        Ok(req) => {
            let mut g = lock(&inner);
            let result = dispatch(&mut g, &method, &req["params"]);
            match result {
                Ok(result) => (200, json!({"jsonrpc": "2.0", "id": id, "result": result})),
                Err(e) => e.render(&id, profile),
            }
        }
    };
    if decision.fault == Some(FaultKind::Truncated) {
        let text = body.to_string();
        return (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            text[..text.len() / 2].to_owned(),
        )
            .into_response();
    }
    json_response(status, &body)
}

/// A block reference in request params.
enum Ref {
    Finality(String),
    Height(u64),
    Hash(String),
}

fn block_ref(params: &Value) -> Result<Ref, WireError> {
    match (params.get("finality"), params.get("block_id")) {
        (Some(Value::String(f)), None)
            if matches!(f.as_str(), "final" | "near-final" | "optimistic") =>
        {
            Ok(Ref::Finality(f.clone()))
        }
        (None, Some(Value::Number(n))) => n
            .as_u64()
            .map(Ref::Height)
            .ok_or_else(|| WireError::parse(format!("invalid block height {n}"))),
        (None, Some(Value::String(h))) => Ok(Ref::Hash(h.clone())),
        _ => Err(WireError::parse(
            "Failed parsing args: a block reference (finality or block_id) is required".into(),
        )),
    }
}

fn unknown_block_height(chain: &Chain, height: u64) -> WireError {
    let below_head = height < chain.head().header.height;
    WireError::handler(
        "UNKNOWN_BLOCK",
        Some(json!({})),
        json!(format!(
            "DB Not Found Error: BLOCK HEIGHT: {height} \n Cause: Unknown"
        )),
    )
    .with_http(if below_head { 422 } else { 200 })
}

/// What a block reference names on this node.
enum Lookup<'c> {
    Block(&'c SimBlock),
    /// The header is known but its data is garbage-collected.
    Collected(&'c SimBlock),
    Missing,
}

fn lookup<'c>(chain: &'c Chain, r: &Ref) -> Lookup<'c> {
    let found = match r {
        Ref::Finality(f) => Some(match f.as_str() {
            "final" => chain.final_block(),
            "near-final" => chain.near_final_block(),
            _ => chain.head(),
        }),
        Ref::Height(h) => chain.block_by_height(*h),
        Ref::Hash(h) => chain.block_by_hash(h),
    };
    match found {
        // A node never drops its own head or final block.
        Some(b) if chain.is_collected(b) && !matches!(r, Ref::Finality(_)) => Lookup::Collected(b),
        Some(b) => Lookup::Block(b),
        None => Lookup::Missing,
    }
}

/// For `block` and `changes`: a collected block is as unknown as a missing one.
fn resolve<'c>(chain: &'c Chain, r: &Ref) -> Result<&'c SimBlock, WireError> {
    match (lookup(chain, r), r) {
        (Lookup::Block(b), _) => Ok(b),
        (_, Ref::Height(h)) => Err(unknown_block_height(chain, *h)),
        // (a finality always names a block, so only a hash gets here)
        (_, Ref::Hash(h) | Ref::Finality(h)) => Err(WireError::handler(
            "UNKNOWN_BLOCK",
            Some(json!({})),
            json!(format!(
                "DB Not Found Error: BLOCK HASH: {h} \n Cause: Unknown"
            )),
        )),
    }
}

/// Produces a block on a read of the head when the clock says so.
fn tick_on_read(g: &mut Inner, r: Option<&Ref>) {
    if g.clock == Clock::OnRead && r.is_none_or(|r| matches!(r, Ref::Finality(_))) {
        g.produce();
    }
}

fn dispatch(g: &mut Inner, method: &str, params: &Value) -> Result<Value, WireError> {
    let legacy = g.profile == Profile::Legacy;
    match method {
        "status" => {
            tick_on_read(g, None);
            Ok(wire::status_json(&g.chain, g.profile))
        }
        "block" => {
            let r = block_ref(params)?;
            tick_on_read(g, Some(&r));
            let b = resolve(&g.chain, &r)?;
            Ok(wire::block_json(&g.chain, b, g.profile))
        }
        "EXPERIMENTAL_changes" => changes(&g.chain, params, legacy),
        "changes" if !legacy => changes(&g.chain, params, legacy),
        "EXPERIMENTAL_changes_in_block" => block_effects(&g.chain, params),
        "block_effects" if !legacy => block_effects(&g.chain, params),
        "query" => query(&g.chain, params, legacy),
        other => Err(WireError::method_not_found(other)),
    }
}

fn account_list(params: &Value, field: &str) -> Result<Vec<AccountId>, WireError> {
    let list = params
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| WireError::parse(format!("Failed parsing args: missing field `{field}`")))?;
    list.iter()
        .map(|v| {
            v.as_str()
                .and_then(|s| AccountId::parse(s).ok())
                .ok_or_else(|| {
                    WireError::parse(format!("Failed parsing args: invalid account id {v}"))
                })
        })
        .collect()
}

fn changes(chain: &Chain, params: &Value, legacy: bool) -> Result<Value, WireError> {
    let kind = params
        .get("changes_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let r = block_ref(params)?;
    let (accounts, keys): (Vec<AccountId>, Vec<(AccountId, PublicKey)>) = match kind {
        "account_changes" | "all_access_key_changes" | "contract_code_changes" | "data_changes" => {
            (account_list(params, "account_ids")?, vec![])
        }
        "single_access_key_changes" => {
            let keys = params
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    WireError::parse("Failed parsing args: missing field `keys`".into())
                })?;
            let parsed = keys
                .iter()
                .map(|k| {
                    let a = k["account_id"]
                        .as_str()
                        .and_then(|s| AccountId::parse(s).ok());
                    let p = k["public_key"]
                        .as_str()
                        .and_then(|s| PublicKey::parse(s).ok());
                    a.zip(p).ok_or_else(|| {
                        WireError::parse(format!("Failed parsing args: invalid key {k}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            (vec![], parsed)
        }
        other => {
            return Err(WireError::parse(format!(
                "Failed parsing args: unknown variant `{other}`"
            )));
        }
    };
    // Current nodes answer an empty list without resolving the block.
    if !legacy && accounts.is_empty() && keys.is_empty() {
        return Ok(json!({"block_hash": "11111111111111111111111111111111", "changes": []}));
    }
    let b = resolve(chain, &r).map_err(|mut e| {
        e.data = Box::new(json!({"info": {}, "name": "UNKNOWN_BLOCK"}));
        e
    })?;
    let list: Vec<Value> = b
        .changes
        .iter()
        .filter(|c| {
            let type_name = c.value.type_name();
            let account = c.value.account_id();
            match kind {
                "account_changes" => {
                    matches!(type_name, "account_update" | "account_deletion")
                        && account.is_some_and(|a| accounts.contains(a))
                }
                "all_access_key_changes" => {
                    matches!(
                        type_name,
                        "access_key_update" | "access_key_deletion" | "gas_key_nonce_update"
                    ) && account.is_some_and(|a| accounts.contains(a))
                }
                "contract_code_changes" => {
                    type_name.starts_with("contract_code_")
                        && account.is_some_and(|a| accounts.contains(a))
                }
                "single_access_key_changes" => match &c.value {
                    crate::domain::ChangeValue::AccessKeyUpdate {
                        account_id,
                        public_key,
                        ..
                    }
                    | crate::domain::ChangeValue::AccessKeyDeletion {
                        account_id,
                        public_key,
                    }
                    | crate::domain::ChangeValue::GasKeyNonceUpdate {
                        account_id,
                        public_key,
                        ..
                    } => keys.iter().any(|(a, k)| a == account_id && k == public_key),
                    _ => false,
                },
                _ => false,
            }
        })
        .map(wire::change_json)
        .collect();
    Ok(json!({"block_hash": b.header.hash.as_str(), "changes": list}))
}

fn block_effects(chain: &Chain, params: &Value) -> Result<Value, WireError> {
    let r = block_ref(params)?;
    let b = resolve(chain, &r)?;
    let list: Vec<Value> = b.touched.iter().map(wire::touched_json).collect();
    Ok(json!({"block_hash": b.header.hash.as_str(), "changes": list}))
}

fn query(chain: &Chain, params: &Value, legacy: bool) -> Result<Value, WireError> {
    let request_type = params
        .get("request_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let r = block_ref(params)?;
    let account = params
        .get("account_id")
        .and_then(Value::as_str)
        .and_then(|s| AccountId::parse(s).ok())
        .ok_or_else(|| {
            WireError::parse("Failed parsing args: missing or invalid field `account_id`".into())
        })?;
    // A collected block's header is still known: queries say so precisely.
    let b = match (lookup(chain, &r), &r) {
        (Lookup::Block(b), _) => b,
        (Lookup::Collected(b), _) => return Err(garbage_collected(b)),
        (Lookup::Missing, Ref::Height(h)) => {
            return Err(WireError::handler(
                "UNKNOWN_BLOCK",
                Some(json!({"block_reference": {"block_id": h}})),
                json!(format!(
                    "DB Not Found Error: BLOCK HEIGHT: {h} \n Cause: Unknown"
                )),
            )
            .with_http(if *h < chain.head().header.height {
                422
            } else {
                200
            }));
        }
        (Lookup::Missing, _) => {
            let id = match &r {
                Ref::Hash(h) => h.clone(),
                _ => String::new(),
            };
            return Err(WireError::handler(
                "UNKNOWN_BLOCK",
                Some(json!({"block_reference": {"block_id": id}})),
                json!(format!(
                    "Block either has never been observed on the node or has been garbage collected: BlockId(Hash({id}))"
                )),
            ));
        }
    };
    let h = b.header.height;
    let at = |mut m: serde_json::Map<String, Value>| {
        m.insert("block_height".into(), json!(h));
        m.insert("block_hash".into(), json!(b.header.hash.as_str()));
        Value::Object(m)
    };
    let Some(state) = chain.account_at(&account, h) else {
        return Err(WireError::handler(
            "UNKNOWN_ACCOUNT",
            Some(
                json!({"requested_account_id": account, "block_height": h, "block_hash": b.header.hash.as_str()}),
            ),
            json!(format!("account {account} does not exist while viewing")),
        ));
    };
    match request_type {
        "view_account" => Ok(at(wire::account_view(&state))),
        "view_access_key" => {
            let key = params
                .get("public_key")
                .and_then(Value::as_str)
                .and_then(|s| PublicKey::parse(s).ok())
                .ok_or_else(|| {
                    WireError::parse(
                        "Failed parsing args: missing or invalid field `public_key`".into(),
                    )
                })?;
            match chain.keys_at(&account, h).get(&key) {
                Some(ak) => Ok(at(wire::access_key_view(ak)
                    .as_object()
                    .expect("object")
                    .clone())),
                None => {
                    let mut m = serde_json::Map::new();
                    m.insert(
                        "error".into(),
                        json!(format!("access key {key} does not exist while viewing")),
                    );
                    m.insert("logs".into(), json!([]));
                    Ok(at(m))
                }
            }
        }
        "view_access_key_list" => {
            let keys = chain.keys_at(&account, h);
            let mut entries: Vec<(Vec<u8>, &PublicKey, _)> =
                keys.iter().map(|(k, ak)| (key_order(k), k, ak)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let view = |(_, k, ak): &(Vec<u8>, &PublicKey, &crate::domain::AccessKey)| json!({"public_key": k.as_str(), "access_key": wire::access_key_view(ak)});
            let mut m = serde_json::Map::new();
            if legacy {
                m.insert(
                    "keys".into(),
                    Value::Array(entries.iter().map(view).collect()),
                );
                return Ok(at(m));
            }
            let cap = chain.spec().key_page_limit;
            let limit = params.get("limit").and_then(Value::as_u64);
            let after = params.get("after_key").and_then(Value::as_str);
            if limit.is_none() && after.is_none() && entries.len() > cap {
                return Err(WireError::handler(
                    "TOO_MANY_ACCESS_KEYS",
                    Some(
                        json!({"requested_account_id": account, "limit": cap, "block_height": h, "block_hash": b.header.hash.as_str()}),
                    ),
                    json!(format!("Account {account} has more than {cap} access keys")),
                ));
            }
            let start = match after.and_then(|s| PublicKey::parse(s).ok()) {
                Some(k) => {
                    let ord = key_order(&k);
                    entries.partition_point(|e| e.0 <= ord)
                }
                None => 0,
            };
            let take = limit.map(|l| l as usize).unwrap_or(cap).clamp(1, cap);
            let page = &entries[start.min(entries.len())..(start + take).min(entries.len())];
            m.insert("keys".into(), Value::Array(page.iter().map(view).collect()));
            if start + take < entries.len()
                && let Some(last) = page.last()
            {
                m.insert("last_key".into(), json!(last.1.as_str()));
            }
            Ok(at(m))
        }
        other => Err(WireError::parse(format!(
            "Failed parsing args: unknown variant `{other}`"
        ))),
    }
}

fn garbage_collected(b: &SimBlock) -> WireError {
    WireError::handler(
        "GARBAGE_COLLECTED_BLOCK",
        Some(json!({"block_height": b.header.height, "block_hash": b.header.hash.as_str()})),
        json!(format!(
            "The data for block #{} is garbage collected on this node, use an archival node to fetch historical data",
            b.header.height
        )),
    )
}

/// Keys are listed in trie order: key type byte, then the key bytes.
fn key_order(k: &PublicKey) -> Vec<u8> {
    let t = match k.key_type() {
        crate::domain::KeyType::Ed25519 => 0u8,
        crate::domain::KeyType::Secp256k1 => 1,
        _ => 2,
    };
    let mut v = vec![t];
    v.extend(
        bs58::decode(
            k.as_str()
                .split_once(':')
                .map(|(_, d)| d)
                .unwrap_or_default(),
        )
        .into_vec()
        .unwrap_or_default(),
    );
    v
}
