//! Process-wide counters and gauges, and the `[server]` endpoint that
//! serves them: `GET /metrics` (Prometheus text format), `GET /health` (200
//! while the process lives, standbys included, so a liveness probe never
//! restarts keywatch because a dependency is down) and `GET /ready` (503
//! with the reasons while it is starting, a standby, stalled, a dependency
//! is failing or the outbox is stuck).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

use crate::health::Health;

/// What a metric is, for Prometheus's `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub const RPC_REQUESTS: &str = "keywatch_rpc_requests_total";
pub const RPC_ERRORS: &str = "keywatch_rpc_errors_total";
pub const RPC_SECONDS: &str = "keywatch_rpc_request_duration_seconds";
pub const INGEST_FAILURES: &str = "keywatch_ingest_failures_total";
pub const BLOCKS: &str = "keywatch_blocks_ingested_total";
pub const KEY_ROWS: &str = "keywatch_key_rows_total";
pub const BALANCE_ROWS: &str = "keywatch_balance_rows_total";
pub const APPLY_SECONDS: &str = "keywatch_block_apply_duration_seconds";
pub const FINALITY_TO_COMMIT: &str = "keywatch_finality_to_commit_seconds";
pub const ALERTS: &str = "keywatch_alerts_total";
pub const DELIVERIES: &str = "keywatch_deliveries_total";
pub const COMMIT_TO_DELIVERY: &str = "keywatch_commit_to_delivery_seconds";
pub const HEAD: &str = "keywatch_final_head_height";
pub const CURSOR: &str = "keywatch_cursor_height";
pub const LAG: &str = "keywatch_lag_blocks";
pub const BUILD_INFO: &str = "keywatch_build_info";

/// Every metric keywatch exports: name, kind, labels, help. The dashboard
/// in `deploy/grafana` is checked against this exposition by a test.
pub const EXPORTED: &[(&str, Kind, &[&str], &str)] = &[
    (
        RPC_REQUESTS,
        Kind::Counter,
        &["method"],
        "JSON-RPC requests sent (each attempt)",
    ),
    (
        RPC_ERRORS,
        Kind::Counter,
        &["method"],
        "JSON-RPC attempts that failed",
    ),
    (
        RPC_SECONDS,
        Kind::Histogram,
        &["method"],
        "time of one JSON-RPC attempt, answer read",
    ),
    (
        INGEST_FAILURES,
        Kind::Counter,
        &[],
        "times following failed (rpc or database) and was retried from the cursor",
    ),
    (BLOCKS, Kind::Counter, &[], "blocks committed"),
    (KEY_ROWS, Kind::Counter, &[], "key history rows written"),
    (
        BALANCE_ROWS,
        Kind::Counter,
        &[],
        "balance history rows written",
    ),
    (
        APPLY_SECONDS,
        Kind::Histogram,
        &[],
        "time to apply and commit one transaction of consecutive blocks (a single block at the head)",
    ),
    (
        FINALITY_TO_COMMIT,
        Kind::Histogram,
        &[],
        "from reading a final head at or above a block to that block's commit",
    ),
    (
        ALERTS,
        Kind::Counter,
        &["rule"],
        "alerts written, sent, suppressed or silenced alike",
    ),
    (
        DELIVERIES,
        Kind::Counter,
        &["channel", "outcome"],
        "delivery attempts by outcome (delivered or failed)",
    ),
    (
        COMMIT_TO_DELIVERY,
        Kind::Histogram,
        &["channel"],
        "from the start of the transaction that wrote an alert to its delivery, retries included",
    ),
    (HEAD, Kind::Gauge, &[], "final head height last seen"),
    (
        CURSOR,
        Kind::Gauge,
        &[],
        "height of the last committed block",
    ),
    (LAG, Kind::Gauge, &[], "final head minus cursor"),
    (
        BUILD_INFO,
        Kind::Gauge,
        &["version"],
        "always 1; the version in its label",
    ),
];

/// The delivery channels.
pub const CHANNELS: &[&str] = &["email", "webhook"];

/// Histogram buckets (seconds) for every `_seconds` histogram: from a fast
/// local query to a delivery retried for minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static HEAD_SEEN: AtomicU64 = AtomicU64::new(0);
static CURSOR_SEEN: AtomicU64 = AtomicU64::new(0);

/// Installs the Prometheus recorder as the process's `metrics` recorder
/// (once; later calls return the same handle) and registers every series
/// keywatch can export, at zero, so a dashboard or an alert rule never
/// meets a series that is missing only because nothing happened yet.
/// Before this runs, metrics are recorded nowhere.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows nothing");
        }
        describe_and_register();
        // Histogram samples wait in the recorder until drained: drain them
        // even when nothing scrapes.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("a thread can be started");
        handle
    })
}

fn describe_and_register() {
    for &(name, kind, _, help) in EXPORTED {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
    // a node answering to the `EXPERIMENTAL_` names is counted under the
    // current ones
    for m in crate::rpc::client::METHOD_NAMES {
        metrics::counter!(RPC_REQUESTS, "method" => m).absolute(0);
        metrics::counter!(RPC_ERRORS, "method" => m).absolute(0);
        let _ = metrics::histogram!(RPC_SECONDS, "method" => m);
    }
    for name in [INGEST_FAILURES, BLOCKS, KEY_ROWS, BALANCE_ROWS] {
        metrics::counter!(name).absolute(0);
    }
    let _ = metrics::histogram!(APPLY_SECONDS);
    let _ = metrics::histogram!(FINALITY_TO_COMMIT);
    for rule in crate::config::rules::rule_names() {
        metrics::counter!(ALERTS, "rule" => rule).absolute(0);
    }
    for &channel in CHANNELS {
        for outcome in ["delivered", "failed"] {
            metrics::counter!(DELIVERIES, "channel" => channel, "outcome" => outcome).absolute(0);
        }
        let _ = metrics::histogram!(COMMIT_TO_DELIVERY, "channel" => channel);
    }
    for name in [HEAD, CURSOR, LAG] {
        metrics::gauge!(name).set(0.0);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// One JSON-RPC attempt.
pub fn rpc_request(method: &'static str, took: Duration, ok: bool) {
    metrics::counter!(RPC_REQUESTS, "method" => method).increment(1);
    metrics::histogram!(RPC_SECONDS, "method" => method).record(took);
    if !ok {
        metrics::counter!(RPC_ERRORS, "method" => method).increment(1);
    }
}

pub fn ingest_failed() {
    metrics::counter!(INGEST_FAILURES).increment(1);
}

/// One committed transaction of `blocks` blocks, which took `took`; the
/// final head that revealed them was read at `head_read`. The block
/// counter moves last: whoever sees it move sees the rest of the commit.
pub fn committed(
    blocks: usize,
    key_rows: u64,
    balance_rows: u64,
    took: Duration,
    head_read: Instant,
) {
    metrics::counter!(KEY_ROWS).increment(key_rows);
    metrics::counter!(BALANCE_ROWS).increment(balance_rows);
    metrics::histogram!(APPLY_SECONDS).record(took);
    metrics::histogram!(FINALITY_TO_COMMIT).record_many(head_read.elapsed(), blocks);
    metrics::counter!(BLOCKS).increment(blocks as u64);
}

/// Alerts written, by rule.
pub fn alerts_written<'a>(rules: impl IntoIterator<Item = &'a str>) {
    for rule in rules {
        metrics::counter!(ALERTS, "rule" => rule.to_owned()).increment(1);
    }
}

/// One delivery attempt; `since_commit` for one that delivered.
pub fn delivery(channel: &str, delivered: bool, since_commit: Option<Duration>) {
    let outcome = if delivered { "delivered" } else { "failed" };
    metrics::counter!(DELIVERIES, "channel" => channel.to_owned(), "outcome" => outcome)
        .increment(1);
    if let Some(took) = since_commit {
        metrics::histogram!(COMMIT_TO_DELIVERY, "channel" => channel.to_owned()).record(took);
    }
}

pub fn head(height: u64) {
    HEAD_SEEN.store(height, Ordering::Relaxed);
    metrics::gauge!(HEAD).set(height as f64);
    lag();
}

pub fn cursor(height: u64) {
    CURSOR_SEEN.store(height, Ordering::Relaxed);
    metrics::gauge!(CURSOR).set(height as f64);
    lag();
}

fn lag() {
    let (head, cursor) = (
        HEAD_SEEN.load(Ordering::Relaxed),
        CURSOR_SEEN.load(Ordering::Relaxed),
    );
    metrics::gauge!(LAG).set(head.saturating_sub(cursor) as f64);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    install().render()
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
    install();
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
