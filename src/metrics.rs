//! Process-wide counters and gauges, and the `[server]` endpoint that
//! serves them: `GET /metrics` (Prometheus text format) and `GET /health`
//! (200 while ingestion advances, 503 once the cursor has not moved for the
//! `ingest_stalled` rule's `after`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use sqlx::PgPool;

/// Set once, read by `/metrics`: plain atomics, no locks on the hot path.
pub struct Metrics {
    pub rpc_requests: AtomicU64,
    pub rpc_errors: AtomicU64,
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
    stalled_after: Duration,
}

async fn metrics() -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], render())
}

async fn health(State(s): State<ServerState>) -> impl IntoResponse {
    let row: Result<Option<(i64, chrono::DateTime<chrono::Utc>)>, _> =
        sqlx::query_as("select block_height, updated_at from ingest_cursor")
            .fetch_optional(&s.pool)
            .await;
    let (status, body) = match row {
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "database unavailable", "error": e.to_string()}),
        ),
        Ok(None) => (
            StatusCode::OK,
            serde_json::json!({"status": "starting", "cursor": null}),
        ),
        Ok(Some((height, updated))) => {
            let idle = (chrono::Utc::now() - updated).num_seconds().max(0) as u64;
            let stalled = idle > s.stalled_after.as_secs();
            let head = METRICS.head_height.load(Ordering::Relaxed);
            let body = serde_json::json!({
                "status": if stalled { "stalled" } else { "ok" },
                "cursor": height, "final_head": head, "lag_blocks": head.saturating_sub(height as u64),
                "seconds_since_last_block": idle,
            });
            (
                if stalled {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                },
                body,
            )
        }
    };
    (status, axum::Json(body))
}

/// Serves `/metrics` and `/health` on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pool: PgPool,
    stalled_after: Duration,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(health))
        .with_state(ServerState {
            pool,
            stalled_after,
        });
    axum::serve(listener, app).await
}
