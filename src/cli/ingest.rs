//! `keywatch run`, `backfill` and `reconcile`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::cli::{
    CmdResult, Failure, bad_input, connect_rpc, load_settings, parse_account, shutdown_signal,
};
use crate::config::{Settings, StartAt};
use crate::health::{Dependency, Health, Role};
use crate::ingest::IngestError;
use crate::ingest::baseline::{TrackError, init_cursor, start_tracking};
use crate::ingest::follower::{FollowOptions, follow};
use crate::ingest::supervise::{backoff, follow_forever};
use crate::ingest::watchdog::{Watchdog, announce_stop};
use crate::notify::Channels;
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

/// Whether a start-up failure is an outage to wait out (the database or
/// every rpc url unreachable) rather than bad input.
fn is_outage(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return crate::store::is_outage(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::rpc::RpcError>() {
            return !e.is_wrong_chain();
        }
        if let Some(crate::store::StoreError::Db(e)) = cause.downcast_ref() {
            return crate::store::is_outage(e);
        }
        false
    })
}

/// [`prepare`], waiting out database and rpc outages with backoff (the
/// watchdog reports them meanwhile); bad input still ends `run`.
async fn prepare_patiently(
    settings: &Settings,
    health: &Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<(sqlx::PgPool, RpcClient)>, Failure> {
    let retry = &settings.rpc.client;
    let mut failures = 0;
    loop {
        match prepare(settings).await {
            Ok(ready) => return Ok(Some(ready)),
            Err(Failure::Other(e)) if is_outage(&e) => {
                failures += 1;
                let dep = if e.chain().any(|c| c.is::<crate::rpc::RpcError>()) {
                    Dependency::Rpc
                } else {
                    Dependency::Database
                };
                health.failed(dep, &format!("{e:#}"));
                let wait = backoff(failures, retry.backoff_min, retry.backoff_max);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot start yet; waiting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

pub async fn run(config: &Path, opts: FollowOptions, drain_timeout: Duration) -> CmdResult {
    let settings = load_settings(config)?;
    let health = Arc::new(Health::default());
    let channels = Arc::new(Channels::from_settings(&settings).map_err(bad_input)?);
    let now: crate::dispatch::Clock = Arc::new(chrono::Utc::now);
    let lazy = crate::store::connect_lazy(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .map_err(|e| bad_input(format!("database.url: {e}")))?;
    let watchdog = Watchdog::new(
        lazy.clone(),
        &settings,
        health.clone(),
        channels.clone(),
        now.clone(),
    )
    .map_err(bad_input)?;
    let stop = stop_on_signal();
    let (stop_loops, loops_rx) = tokio::sync::watch::channel(false);
    let (stop_dog, dog_rx) = tokio::sync::watch::channel(false);
    let mut dog = Some(DogHandle {
        stop: stop_dog,
        task: tokio::spawn(watchdog.clone().run(dog_rx)),
    });
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| bad_input(format!("server.listen {}: {e}", settings.server.listen)))?;
    let stalled_after = settings
        .rules
        .get("ingest_stalled")
        .and_then(|r| r.after)
        .unwrap_or(Duration::from_secs(300));
    let serving = tokio::spawn(crate::metrics::serve(
        listener,
        lazy.clone(),
        health.clone(),
        stalled_after,
    ));
    tracing::info!(listen = %settings.server.listen, "serving /metrics, /health and /ready");
    let result = lead(
        &settings,
        opts,
        drain_timeout,
        (&health, &channels),
        stop,
        loops_rx,
        &mut dog,
    )
    .await;
    if let Err(Failure::Other(e) | Failure::BadInput(e)) = &result {
        // Fatal: say so on every channel that works before exiting, so a
        // crash loop under a restart policy is never silent.
        announce_stop(&watchdog, &format!("{e:#}")).await;
    }
    stop_loops.send_replace(true);
    if let Some(dog) = dog {
        dog.finish().await?;
    }
    serving.abort();
    result
}

/// The running watchdog; stopped before the dispatcher drains, so its last
/// word (`ingest_recovered`) is delivered too.
struct DogHandle {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DogHandle {
    async fn finish(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.task.await.context("the watchdog")
    }
}

/// Everything `run` does once the endpoint and the watchdog are up.
async fn lead(
    settings: &Settings,
    opts: FollowOptions,
    drain_timeout: Duration,
    (health, channels): (&Arc<Health>, &Arc<Channels>),
    stop: tokio::sync::watch::Receiver<bool>,
    loops_rx: tokio::sync::watch::Receiver<bool>,
    dog: &mut Option<DogHandle>,
) -> CmdResult {
    let Some((pool, rpc)) = prepare_patiently(settings, health, stop.clone()).await? else {
        return Ok(());
    };
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
    health.set_role(Role::Leader);
    tracing::info!(cursor = cursor.height, "following the chain");
    let dispatcher = crate::dispatch::Dispatcher::with_channels(
        pool.clone(),
        settings,
        channels.clone(),
        Arc::new(chrono::Utc::now),
    )
    .with_health(health.clone());
    let (stop_dispatch, dispatch_rx) = tokio::sync::watch::channel(false);
    let delivering = tokio::spawn(async move { dispatcher.run(dispatch_rx, drain_timeout).await });
    let mut ctx = crate::ingest::alerts::AlertContext::from_settings(settings);
    // A first start from a past height is a backfill; resuming a cursor is
    // a catch-up, whose alerts are sent (marked late).
    ctx.suppress_old = existing.is_none() && matches!(settings.ingest.start, StartAt::Height(_));
    let rpc = Arc::new(rpc);
    let scheduler = crate::schedule::Scheduler {
        pool: pool.clone(),
        rpc: rpc.clone(),
        schedule: settings.schedule.clone(),
        retention: settings.retention.clone(),
        alerts: ctx.clone(),
        report: channels.email.clone(),
        now: Arc::new(chrono::Utc::now),
    };
    let scheduling = {
        let stop = loops_rx.clone();
        tokio::spawn(async move { scheduler.run(stop).await })
    };
    let opts = FollowOptions {
        health: Some(health.clone()),
        ..follow_options(settings, opts)
    };
    let retry = (
        settings.rpc.client.backoff_min,
        settings.rpc.client.backoff_max,
    );
    let followed = follow_forever(&pool, &rpc, &opts, Some(&ctx), stop, retry).await;
    if followed.is_ok()
        && let Some(dog) = dog.take()
    {
        dog.finish().await?;
    }
    stop_dispatch.send_replace(true);
    let drained = delivering.await.context("the dispatcher task")?;
    scheduling.abort();
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
        .map_err(|e| match e {
            IngestError::NotWatched(_) => bad_input(e),
            other => ingest_failure(other),
        })?;
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
            "{} difference(s) at block {}: state_drift raised, corrected at the cursor (reconcile rows)",
            report.differences.len(),
            report.height
        )))
    }
}
