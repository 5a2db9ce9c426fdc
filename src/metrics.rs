//! Process-wide counters and gauges, and the `[server]` endpoint that
//! serves them: `GET /metrics` (Prometheus text format), `GET /health` (200
//! while the process lives, standbys included, so a liveness probe never
//! restarts keywatch because a dependency is down) and `GET /ready` (503
//! with the reasons while it is starting, a standby, stalled, a dependency
//! is failing or the outbox is stuck).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sqlx::PgPool;

use crate::health::Health;

/// Set once, read by `/metrics`: plain atomics, no locks on the hot path.
pub struct Metrics {
    pub rpc_requests: AtomicU64,
    pub rpc_errors: AtomicU64,
    /// Times following failed and was retried from the cursor.
    pub ingest_failures: AtomicU64,
    /// Total seconds spent in rpc requests, in microseconds.
    pub rpc_micros: AtomicU64,
    pub blocks: AtomicU64,
    pub key_rows: AtomicU64,
    pub balance_rows: AtomicU64,
    pub alerts: AtomicU64,
    pub deliveries_ok: AtomicU64,
    pub deliveries_failed: AtomicU64,
    pub head_height: AtomicU64,
    pub cursor_height: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    rpc_requests: AtomicU64::new(0),
    rpc_errors: AtomicU64::new(0),
    ingest_failures: AtomicU64::new(0),
    rpc_micros: AtomicU64::new(0),
    blocks: AtomicU64::new(0),
    key_rows: AtomicU64::new(0),
    balance_rows: AtomicU64::new(0),
    alerts: AtomicU64::new(0),
    deliveries_ok: AtomicU64::new(0),
    deliveries_failed: AtomicU64::new(0),
    head_height: AtomicU64::new(0),
    cursor_height: AtomicU64::new(0),
};

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Ordering::Relaxed);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let m = &METRICS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (head, cursor) = (get(&m.head_height), get(&m.cursor_height));
    let lines = [
        (
            "keywatch_rpc_requests_total",
            "counter",
            "JSON-RPC requests sent",
            get(&m.rpc_requests) as f64,
        ),
        (
            "keywatch_rpc_errors_total",
            "counter",
            "JSON-RPC requests that failed (each attempt)",
            get(&m.rpc_errors) as f64,
        ),
        (
            "keywatch_ingest_failures_total",
            "counter",
            "times following failed (rpc or database) and was retried from the cursor",
            get(&m.ingest_failures) as f64,
        ),
        (
            "keywatch_rpc_request_seconds_total",
            "counter",
            "time spent in JSON-RPC requests",
            get(&m.rpc_micros) as f64 / 1e6,
        ),
        (
            "keywatch_blocks_ingested_total",
            "counter",
            "blocks committed",
            get(&m.blocks) as f64,
        ),
        (
            "keywatch_key_rows_total",
            "counter",
            "key history rows written",
            get(&m.key_rows) as f64,
        ),
        (
            "keywatch_balance_rows_total",
            "counter",
            "balance history rows written",
            get(&m.balance_rows) as f64,
        ),
        (
            "keywatch_alerts_total",
            "counter",
            "alerts decided",
            get(&m.alerts) as f64,
        ),
        (
            "keywatch_deliveries_delivered_total",
            "counter",
            "alert deliveries that succeeded",
            get(&m.deliveries_ok) as f64,
        ),
        (
            "keywatch_deliveries_failed_total",
            "counter",
            "delivery attempts that failed",
            get(&m.deliveries_failed) as f64,
        ),
        (
            "keywatch_final_head_height",
            "gauge",
            "final head height last seen",
            head as f64,
        ),
        (
            "keywatch_cursor_height",
            "gauge",
            "height of the last committed block",
            cursor as f64,
        ),
        (
            "keywatch_lag_blocks",
            "gauge",
            "final head minus cursor",
            head.saturating_sub(cursor) as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in lines {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

#[derive(Clone)]
struct ServerState {
    pool: PgPool,
    health: Arc<Health>,
    stalled_after: Duration,
}

async fn metrics() -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], render())
}

async fn alive(State(s): State<ServerState>) -> impl IntoResponse {
    let snap = s.health.snapshot();
    axum::Json(serde_json::json!({
        "status": "alive",
        "role": snap.role.as_str(),
        "cursor": snap.cursor.as_ref().map(|c| c.height),
        "final_head": snap.head,
    }))
}

async fn ready(State(s): State<ServerState>) -> impl IntoResponse {
    let mut reasons = s.health.not_ready_public(s.stalled_after);
    let ping = tokio::time::timeout(
        PING_TIMEOUT,
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&s.pool),
    )
    .await;
    if !matches!(ping, Ok(Ok(_))) {
        reasons.push("database unreachable".to_owned());
    }
    let snap = s.health.snapshot();
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "role": snap.role.as_str(),
        "cursor": snap.cursor.as_ref().map(|c| c.height),
        "final_head": snap.head,
        "lag_blocks": snap.lag(),
        "seconds_since_progress": snap.idle.as_secs(),
    });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// How long `/ready` waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `/metrics`, `/health` and `/ready` on `listener` until the task
/// is dropped. `/ready` asks the database on a connection of its own (the
/// options of `pool`, one connection, a short timeout), so a busy or
/// exhausted ingest pool cannot make it hang or lie.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    health: Arc<Health>,
    stalled_after: Duration,
) -> std::io::Result<()> {
    let options = pool.connect_options().as_ref().clone();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(PING_TIMEOUT)
        .connect_lazy_with(options);
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(alive))
        .route("/ready", axum::routing::get(ready))
        .with_state(ServerState {
            pool,
            health,
            stalled_after,
        });
    axum::serve(listener, app).await
}
