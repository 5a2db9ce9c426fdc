//! `keywatch backfill` and `reconcile`, and what they share with `run`.

use std::path::Path;

use anyhow::Context;

use crate::cli::{
    CmdResult, Failure, bad_input, connect_rpc, load_settings, parse_account, shutdown_signal,
};
use crate::config::{Settings, StartAt};
use crate::ingest::IngestError;
use crate::ingest::baseline::{TrackError, init_cursor, start_tracking_from};
use crate::ingest::follower::{FollowOptions, follow};
use crate::rpc::RpcClient;
use crate::store::watch::NewWatch;

pub(crate) fn ingest_failure(e: IngestError) -> Failure {
    Failure::Other(anyhow::Error::new(e))
}

/// Upserts the config's `[[accounts]]` into the watch list; with no cursor
/// yet, each must exist where the first cursor will be (`first`).
pub(crate) async fn upsert_accounts(
    settings: &Settings,
    pool: &sqlx::PgPool,
    rpc: &RpcClient,
    first: StartAt,
) -> Result<(), Failure> {
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
        start_tracking_from(
            pool,
            rpc,
            &settings.rpc.chain_id,
            &watches,
            allow_missing,
            first,
        )
        .await
        .map_err(|e| match e {
            TrackError::Missing { .. } => bad_input(format!(
                "{e} (set allow_missing = true on the [[accounts]] entry)"
            )),
            other => Failure::Other(other.into()),
        })?;
    }
    Ok(())
}

pub(crate) fn follow_options(settings: &Settings, base: FollowOptions) -> FollowOptions {
    FollowOptions {
        poll_interval: settings.ingest.poll_interval,
        concurrency: settings.rpc.concurrency,
        accounts_per_request: settings.ingest.accounts_per_request,
        ..base
    }
}

/// A flag that turns true on Ctrl-C or SIGTERM; both are handled from
/// the moment this returns.
pub(crate) fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    match shutdown_signal() {
        Ok(signal) => {
            tokio::spawn(async move {
                signal.await;
                tracing::info!("stopping after the current block");
                // The receiver is gone only when following already ended.
                tx.send_replace(true);
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for signals; stop with SIGKILL");
            // never set, never closed: waiting on it waits for ever
            tokio::spawn(async move {
                let _kept = tx;
                std::future::pending::<()>().await
            });
        }
    }
    rx
}

pub async fn backfill(config: &Path, from: u64, to: Option<u64>) -> CmdResult {
    if to.is_some_and(|t| t < from) {
        return Err(bad_input(format!(
            "--to {} is below --from {from}",
            to.unwrap_or_default()
        )));
    }
    let settings = load_settings(config)?;
    let (pool, rpc) = connect_rpc(&settings).await?;
    // Before any cursor: each account must exist where its baseline will
    // be read (the start block), not at the head, so the history of an
    // account deleted since can be backfilled; nothing is written if not.
    upsert_accounts(&settings, &pool, &rpc, StartAt::Height(from)).await?;
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

/// How long `reconcile` waits for the running leader to answer.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Checks every account (or those named) against the chain: inside the
/// running leader when there is one, here otherwise.
pub async fn reconcile(config: &Path, raw: &[String]) -> CmdResult {
    let accounts = raw
        .iter()
        .map(|a| parse_account(a))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = load_settings(config)?;
    let (pool, rpc) = connect_rpc(&settings).await?;
    crate::ingest::reconcile::accounts_to_check(&pool, &accounts)
        .await
        .map_err(|e| match e {
            IngestError::NotWatched(_) => bad_input(e),
            other => ingest_failure(other),
        })?;
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let leader = crate::store::lease::live_holder(&mut conn, settings.ingest.takeover_after)
        .await
        .context("reading the leader lease")?;
    drop(conn);
    let report = match leader {
        // The leader runs it on what following leaves of the budget.
        Some(holder) => {
            crate::ingest::requests::reconcile_in_leader(&pool, &holder, &accounts, REQUEST_WAIT)
                .await
                .map_err(|e| Failure::Other(e.into()))?
                .map_err(|e| {
                    Failure::Other(anyhow::anyhow!(
                        "the running leader's reconcile failed: {e}"
                    ))
                })?
        }
        None => {
            let ctx = crate::ingest::alerts::AlertContext::from_settings(&settings);
            crate::ingest::reconcile::reconcile(&pool, &rpc, &accounts, Some(&ctx))
                .await
                .map_err(ingest_failure)?
        }
    };
    for d in &report.differences {
        println!(
            "drift on {}: {}",
            d.account,
            crate::notify::render::clean(&d.what)
        );
    }
    if report.differences.is_empty() {
        println!(
            "no drift: {} account(s) match the chain at block {}",
            report.accounts, report.height
        );
        Ok(())
    } else {
        Err(Failure::Other(anyhow::anyhow!(
            "{} difference(s) at block {}: state_drift raised, corrected at the cursor (reconcile rows)",
            report.differences.len(),
            report.height
        )))
    }
}
