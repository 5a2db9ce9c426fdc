//! `keywatch run`, `backfill` and `reconcile`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{
    CmdResult, Failure, bad_input, connect_rpc, load_settings, parse_account, shutdown_signal,
};
use crate::config::{Settings, StartAt};
use crate::ingest::IngestError;
use crate::ingest::baseline::{TrackError, init_cursor, start_tracking};
use crate::ingest::follower::{FollowOptions, follow};
use crate::rpc::RpcClient;
use crate::store::watch::NewWatch;

fn ingest_failure(e: IngestError) -> Failure {
    Failure::Other(anyhow::Error::new(e))
}

/// Connects, checks the chain, and upserts the config's accounts.
async fn prepare(settings: &Settings) -> Result<(sqlx::PgPool, RpcClient), Failure> {
    let (pool, rpc) = connect_rpc(settings).await?;
    for allow_missing in [false, true] {
        let watches: Vec<NewWatch> = settings
            .accounts
            .iter()
            .filter(|a| a.allow_missing == allow_missing)
            .map(|a| NewWatch {
                account_id: a.id.clone(),
                label: a.label.clone(),
                expected_keys: a.expected_keys.clone(),
                cold_keys: a.cold_keys.clone(),
                allow_missing,
            })
            .collect();
        if watches.is_empty() {
            continue;
        }
        start_tracking(&pool, &rpc, &settings.rpc.chain_id, &watches, allow_missing)
            .await
            .map_err(|e| match e {
                TrackError::Missing { .. } => bad_input(format!(
                    "{e} (set allow_missing = true on the [[accounts]] entry)"
                )),
                other => Failure::Other(other.into()),
            })?;
    }
    Ok((pool, rpc))
}

fn follow_options(settings: &Settings, base: FollowOptions) -> FollowOptions {
    FollowOptions {
        poll_interval: settings.ingest.poll_interval,
        concurrency: settings.rpc.concurrency,
        accounts_per_request: settings.ingest.accounts_per_request,
        ..base
    }
}

fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(()) => tracing::info!("stopping after the current block"),
            Err(e) => tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL"),
        }
        // The receiver is gone only when following already ended.
        tx.send_replace(true);
    });
    rx
}

pub async fn run(config: &Path, opts: FollowOptions, drain_timeout: Duration) -> CmdResult {
    let settings = load_settings(config)?;
    let (pool, rpc) = prepare(&settings).await?;
    let existing = crate::store::cursor(&pool)
        .await
        .context("reading the cursor")?;
    if let (Some(c), StartAt::Height(h)) = (&existing, settings.ingest.start)
        && c.height + 1 != h
    {
        tracing::warn!(
            cursor = c.height,
            start = h,
            "ingest.start is ignored: the cursor wins"
        );
    }
    let cursor = init_cursor(&pool, &rpc, settings.ingest.start)
        .await
        .map_err(ingest_failure)?;
    tracing::info!(cursor = cursor.height, "following the chain");
    let dispatcher = crate::dispatch::Dispatcher::new(
        pool.clone(),
        &settings,
        std::sync::Arc::new(chrono::Utc::now),
    )
    .map_err(|e| Failure::Other(e.into()))?;
    let (stop_dispatch, dispatch_rx) = tokio::sync::watch::channel(false);
    let delivering = tokio::spawn(async move { dispatcher.run(dispatch_rx, drain_timeout).await });
    let ctx = crate::ingest::alerts::AlertContext::from_settings(&settings);
    let rpc = std::sync::Arc::new(rpc);
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| bad_input(format!("server.listen {}: {e}", settings.server.listen)))?;
    let stalled_after = settings
        .rules
        .get("ingest_stalled")
        .and_then(|r| r.after)
        .unwrap_or(Duration::from_secs(300));
    let serving = tokio::spawn(crate::metrics::serve(listener, pool.clone(), stalled_after));
    tracing::info!(listen = %settings.server.listen, "serving /metrics and /health");
    let scheduler = crate::schedule::Scheduler {
        pool: pool.clone(),
        rpc: rpc.clone(),
        schedule: settings.schedule.clone(),
        retention: settings.retention.clone(),
        alerts: ctx.clone(),
        report: settings
            .notify
            .email
            .as_ref()
            .map(|e| crate::notify::email::EmailSender::new(e, &settings.notify.explorer_url))
            .transpose()
            .map_err(bad_input)?,
        now: std::sync::Arc::new(chrono::Utc::now),
    };
    let scheduling = {
        let stop = stop_dispatch.subscribe();
        tokio::spawn(async move { scheduler.run(stop).await })
    };
    let watching = tokio::spawn(crate::ingest::follower::watchdog(
        pool.clone(),
        ctx.clone(),
        Duration::from_secs(30),
        stop_dispatch.subscribe(),
    ));
    let followed = follow(
        &pool,
        &rpc,
        &follow_options(&settings, opts),
        Some(&ctx),
        stop_on_signal(),
    )
    .await;
    stop_dispatch.send_replace(true);
    watching.await.context("the stall watchdog")?;
    scheduling.await.context("the scheduler")?;
    serving.abort();
    let drained = delivering.await.context("the dispatcher task")?;
    let summary = followed.map_err(ingest_failure)?;
    drained.context("delivering alerts")?;
    println!(
        "stopped at block {} ({} blocks, {} key rows, {} balance rows)",
        summary.last_height, summary.blocks, summary.key_rows, summary.balance_rows
    );
    Ok(())
}

pub async fn backfill(config: &Path, from: u64, to: Option<u64>) -> CmdResult {
    if to.is_some_and(|t| t < from) {
        return Err(bad_input(format!(
            "--to {} is below --from {from}",
            to.unwrap_or_default()
        )));
    }
    let settings = load_settings(config)?;
    let (pool, rpc) = prepare(&settings).await?;
    match crate::store::cursor(&pool)
        .await
        .context("reading the cursor")?
    {
        // An interrupted backfill resumes where it stopped.
        Some(c) if c.height + 1 >= from => {
            tracing::info!(cursor = c.height, "resuming from the cursor")
        }
        Some(c) => {
            return Err(bad_input(format!(
                "the database already has history up to block {}; backfill only starts a new history (or resumes one at or after --from {from})",
                c.height
            )));
        }
        None => {}
    }
    init_cursor(&pool, &rpc, StartAt::Height(from))
        .await
        .map_err(ingest_failure)?;
    let base = FollowOptions {
        until_height: to,
        exit_when_caught_up: to.is_none(),
        progress: true,
        ..Default::default()
    };
    let summary = follow(
        &pool,
        &rpc,
        &follow_options(&settings, base),
        Some(&crate::ingest::alerts::AlertContext::from_settings(
            &settings,
        )),
        stop_on_signal(),
    )
    .await
    .map_err(ingest_failure)?;
    println!(
        "backfilled to block {} ({} blocks, {} key rows, {} balance rows)",
        summary.last_height, summary.blocks, summary.key_rows, summary.balance_rows
    );
    Ok(())
}

pub async fn reconcile(config: &Path, raw: &[String]) -> CmdResult {
    let accounts = raw
        .iter()
        .map(|a| parse_account(a))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = load_settings(config)?;
    let (pool, rpc) = connect_rpc(&settings).await?;
    let ctx = crate::ingest::alerts::AlertContext::from_settings(&settings);
    let report = crate::ingest::reconcile::reconcile(&pool, &rpc, &accounts, Some(&ctx))
        .await
        .map_err(ingest_failure)?;
    for d in &report.differences {
        println!("drift on {}: {}", d.account, d.what);
    }
    if report.differences.is_empty() {
        println!(
            "no drift: {} account(s) match the chain at block {}",
            report.accounts, report.height
        );
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!(
            "{} difference(s) at block {}, recorded as reconcile rows and corrected",
            report.differences.len(),
            report.height
        )))
    }
}
