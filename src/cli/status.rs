//! `keywatch status`: whether keywatch is ready and why not, from any host.
//!
//! The leader writes its final head and its readiness with every lease
//! renewal, so this reads what its `/ready` would answer, plus the figures
//! an operator looks at first. Exit 0 when ready, 1 when not.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{CmdResult, Failure, connect_as_is, load_settings};
use crate::rpc::{BlockRef, RpcClient};
use crate::store::lease::Overview;
use crate::store::overview::{Counts, LastReconcile};

/// How long `status` waits for the RPC node when no leader reports the head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
struct Status {
    ready: bool,
    not_ready: Vec<String>,
    leader: Option<Leader>,
    /// `run` processes connected besides the leader.
    standbys: i64,
    final_head: Option<u64>,
    /// Where the final head came from: "leader" or "rpc".
    final_head_from: Option<&'static str>,
    cursor: Option<u64>,
    lag_blocks: Option<u64>,
    lag_seconds: Option<f64>,
    watched_accounts: i64,
    awaiting_baseline: i64,
    pending_deliveries: i64,
    failed_deliveries: i64,
    fixes_pending: i64,
    last_reconcile: Option<Reconciled>,
}

#[derive(Debug, Serialize)]
struct Leader {
    name: String,
    epoch: i64,
    lease_age_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Reconciled {
    block_height: i64,
    accounts: i32,
    differences: i32,
    ran_at: chrono::DateTime<chrono::Utc>,
}

impl From<LastReconcile> for Reconciled {
    fn from(r: LastReconcile) -> Self {
        Reconciled {
            block_height: r.block_height,
            accounts: r.accounts,
            differences: r.differences,
            ran_at: r.ran_at,
        }
    }
}

pub async fn status(config: &Path, json: bool) -> CmdResult {
    let settings = load_settings(config)?;
    // Read-only: status never migrates, so it also works beside a leader on
    // an older schema.
    let pool = connect_as_is(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    if crate::store::lease::schema_version(&mut conn)
        .await
        .context("reading the schema version")?
        .is_none()
    {
        return Err(Failure::Other(anyhow::anyhow!(
            "not ready: the database has no keywatch schema yet (`keywatch migrate` or `keywatch run` creates it)"
        )));
    }
    let lease = crate::store::lease::overview(&mut conn)
        .await
        .context("reading the leader lease")?;
    let cursor = crate::store::cursor(&mut *conn)
        .await
        .context("reading the cursor")?;
    let counts = crate::store::overview::counts(&mut conn)
        .await
        .context("reading the watch list and the outbox")?;
    let last_reconcile = crate::store::overview::last_reconcile(&mut conn)
        .await
        .context("reading reconcile runs")?;
    drop(conn);
    let takeover_after = settings.ingest.takeover_after;
    let live = lease.as_ref().filter(|l| l.is_live(takeover_after));
    let mut not_ready = match (&lease, live) {
        (_, Some(l)) => l.not_ready.clone(),
        (Some(l), None) => vec![format!(
            "no leader is running: the lease was last renewed {:.1}s ago by {}",
            l.age_ms as f64 / 1000.0,
            l.holder
        )],
        (None, None) => vec!["no `keywatch run` has led on this database yet".to_owned()],
    };
    let (final_head, final_head_from) = match live.and_then(|l| l.final_head) {
        Some(h) => (u64::try_from(h).ok(), Some("leader")),
        None => match head_from_rpc(&settings).await {
            Ok(h) => (Some(h), Some("rpc")),
            Err(e) => {
                not_ready.push(format!("rpc: {e}"));
                (None, None)
            }
        },
    };
    let now_ns = chrono::Utc::now()
        .timestamp_nanos_opt()
        .map_or(0, |n| n.max(0) as u64);
    let status = Status {
        ready: not_ready.is_empty(),
        leader: live.map(leader),
        standbys: lease.as_ref().map_or(0, |l| l.standbys),
        final_head,
        final_head_from,
        cursor: cursor.as_ref().map(|c| c.height),
        lag_blocks: cursor
            .as_ref()
            .zip(final_head)
            .map(|(c, h)| h.saturating_sub(c.height)),
        lag_seconds: cursor
            .as_ref()
            .map(|c| now_ns.saturating_sub(c.timestamp_ns) as f64 / 1e9),
        watched_accounts: counts.watched,
        awaiting_baseline: counts.awaiting_baseline,
        pending_deliveries: counts.pending_deliveries,
        failed_deliveries: counts.failed_deliveries,
        fixes_pending: counts.fixes_pending,
        last_reconcile: last_reconcile.map(Reconciled::from),
        not_ready,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("writing json")?
        );
    } else {
        print_human(&status, &counts);
    }
    if status.ready {
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!(
            "not ready: {}",
            status.not_ready.join("; ")
        )))
    }
}

fn leader(l: &Overview) -> Leader {
    Leader {
        name: l.holder.clone(),
        epoch: l.epoch,
        lease_age_seconds: l.age_ms as f64 / 1000.0,
    }
}

async fn head_from_rpc(settings: &crate::config::Settings) -> anyhow::Result<u64> {
    let rpc = RpcClient::new(settings.rpc.client.clone()).map_err(|e| anyhow::anyhow!(e))?;
    let block = tokio::time::timeout(HEAD_TIMEOUT, rpc.block(&BlockRef::Final))
        .await
        .map_err(|_| anyhow::anyhow!("no final block within {}s", HEAD_TIMEOUT.as_secs()))??;
    Ok(block.header.height)
}

fn or_unknown<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

fn print_human(s: &Status, counts: &Counts) {
    if s.ready {
        println!("ready:          yes");
    } else {
        println!("ready:          no");
        for why in &s.not_ready {
            println!("                - {why}");
        }
    }
    match &s.leader {
        Some(l) => println!(
            "leader:         {} (epoch {}, lease renewed {:.1}s ago); {} standby(s) connected",
            l.name, l.epoch, l.lease_age_seconds, s.standbys
        ),
        None => println!("leader:         none; {} standby(s) connected", s.standbys),
    }
    println!(
        "final head:     {}{}",
        or_unknown(s.final_head),
        s.final_head_from
            .map(|f| format!(" (from the {f})"))
            .unwrap_or_default()
    );
    match (s.cursor, s.lag_seconds) {
        (Some(c), Some(secs)) => println!(
            "cursor:         {c} ({} block(s) behind; its block is {secs:.1}s old)",
            or_unknown(s.lag_blocks)
        ),
        _ => println!("cursor:         none (nothing ingested yet)"),
    }
    println!(
        "watched:        {} account(s), {} awaiting a baseline, {} awaiting a drift correction",
        counts.watched, counts.awaiting_baseline, counts.fixes_pending
    );
    println!(
        "deliveries:     {} pending, {} failed",
        counts.pending_deliveries, counts.failed_deliveries
    );
    match &s.last_reconcile {
        Some(r) => println!(
            "last reconcile: {} at block {}: {} account(s), {}",
            r.ran_at.format("%Y-%m-%d %H:%M:%S UTC"),
            r.block_height,
            r.accounts,
            if r.differences == 0 {
                "no drift".to_owned()
            } else {
                format!("{} difference(s)", r.differences)
            }
        ),
        None => println!("last reconcile: never"),
    }
}
