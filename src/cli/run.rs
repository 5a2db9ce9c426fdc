//! `keywatch run`: the service. It serves `/health`, `/ready` and
//! `/metrics` and runs the watchdog from the start; leads when it can (the
//! follower, the dispatcher and the schedule run only in the leader), waits
//! as a standby while another process leads, and steps down when deposed.
//! Database and rpc outages are waited out; only bad input or a broken
//! chain ends it, after an `ingest_stopped` alert on every channel.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::cli::ingest::{follow_options, ingest_failure, stop_on_signal, upsert_accounts};
use crate::cli::{CmdResult, Failure, bad_input, load_settings};
use crate::config::{Settings, StartAt};
use crate::health::{Dependency, Health, Role};
use crate::ingest::IngestError;
use crate::ingest::baseline::init_cursor;
use crate::ingest::follower::FollowOptions;
use crate::ingest::supervise::{backoff, follow_forever};
use crate::ingest::watchdog::{Watchdog, announce_stop};
use crate::leader::{Election, Leadership, either, process_name};
use crate::notify::Channels;
use crate::rpc::RpcClient;
use crate::store::lease;

/// What this process shares across leadership periods.
struct Service {
    settings: Settings,
    health: Arc<Health>,
    channels: Arc<Channels>,
    pool: PgPool,
    rpc: Arc<RpcClient>,
    me: String,
}

/// How one period of leadership ended.
enum Led {
    /// Stopped (signal, `--until-height`, caught up): exit.
    Done,
    /// Another process leads now: wait as a standby again.
    Deposed,
}

pub async fn run(config: &Path, opts: FollowOptions, drain_timeout: Duration) -> CmdResult {
    let settings = load_settings(config)?;
    crate::metrics::install();
    let health = Arc::new(Health::default());
    let channels = Arc::new(Channels::from_settings(&settings).map_err(bad_input)?);
    let me = process_name();
    // No setup step: a database that does not exist is created (a server
    // that does not answer is waited out below, like any outage).
    match crate::store::create::ensure_database(settings.database.url.expose_secret()).await {
        Ok(_) => {}
        Err(crate::store::StoreError::Invalid(why)) => return Err(bad_input(why)),
        Err(crate::store::StoreError::Db(e)) if crate::store::is_outage(&e) => {
            tracing::warn!(error = %e, "the database does not answer yet");
        }
        Err(e) => return Err(bad_input(format!("database.url: {e}"))),
    }
    let pool = crate::store::connect_service(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
        &me,
    )
    .map_err(|e| bad_input(format!("database.url: {e}")))?;
    let rpc = Arc::new(RpcClient::new(settings.rpc.client.clone()).map_err(bad_input)?);
    let watchdog = Watchdog::new(
        pool.clone(),
        &settings,
        health.clone(),
        channels.clone(),
        Arc::new(chrono::Utc::now),
    )
    .map_err(bad_input)?;
    let (stop_dog, dog_rx) = watch::channel(false);
    let mut dog = Some(DogHandle {
        stop: stop_dog,
        task: tokio::spawn(watchdog.clone().run(dog_rx)),
    });
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| bad_input(format!("server.listen {}: {e}", settings.server.listen)))?;
    let stalled_after = settings.stalled_after();
    // the address bound, which tells the port when the config asks for any
    let listen = listener
        .local_addr()
        .map_err(|e| bad_input(format!("server.listen {}: {e}", settings.server.listen)))?;
    let serving = tokio::spawn(crate::metrics::serve(
        listener,
        pool.clone(),
        health.clone(),
        stalled_after,
    ));
    tracing::info!(listen = %listen, me = %me, "serving /metrics, /health and /ready");
    let service = Service {
        settings,
        health,
        channels,
        pool,
        rpc,
        me,
    };
    let result = serve(&service, opts, drain_timeout, stop_on_signal(), &mut dog).await;
    if let Err(Failure::Other(e) | Failure::BadInput(e)) = &result {
        // Fatal: say so on every channel that works before exiting, so a
        // crash loop under a restart policy is never silent.
        announce_stop(&watchdog, &format!("{e:#}")).await;
    }
    if let Some(dog) = dog {
        dog.finish().await?;
    }
    serving.abort();
    result
}

/// Leads when it can, waits as a standby while another process leads.
async fn serve(
    s: &Service,
    opts: FollowOptions,
    drain_timeout: Duration,
    stop: watch::Receiver<bool>,
    dog: &mut Option<DogHandle>,
) -> CmdResult {
    if patiently(s, stop.clone(), || first_checks(&s.pool))
        .await?
        .is_none()
    {
        return Ok(());
    }
    let election = Election {
        pool: s.pool.clone(),
        me: s.me.clone(),
        takeover_after: s.settings.ingest.takeover_after,
        health: s.health.clone(),
        stalled_after: s.settings.stalled_after(),
    };
    loop {
        let Some(leadership) = election.lead(stop.clone()).await else {
            return Ok(());
        };
        let led = lead(
            s,
            opts.clone(),
            drain_timeout,
            &leadership,
            stop.clone(),
            dog,
        )
        .await;
        leadership.release().await;
        match led? {
            Led::Done => return Ok(()),
            Led::Deposed => {
                s.health.set_role(Role::Standby);
                tracing::warn!("deposed: waiting as a standby");
            }
        }
    }
}

/// Before anything else: the database is not behind a pooler in
/// transaction mode, and (on a database nobody has set up yet, so nobody
/// can lead) the schema exists.
async fn first_checks(pool: &PgPool) -> Result<(), Failure> {
    let mut conn = pool.acquire().await.map_err(outage)?;
    if lease::behind_transaction_pooler(&mut conn)
        .await
        .map_err(|e| Failure::Other(e.into()))?
    {
        return Err(bad_input(
            "database.url reaches PostgreSQL through a pooler in transaction mode: keywatch needs \
             session semantics (advisory locks, the leader lease); connect directly or use session mode",
        ));
    }
    if !lease::table_exists(&mut conn)
        .await
        .map_err(|e| Failure::Other(e.into()))?
    {
        drop(conn);
        crate::store::migrate(pool)
            .await
            .context("applying migrations to a new database")?;
    }
    Ok(())
}

fn outage(e: sqlx::Error) -> Failure {
    Failure::Other(anyhow::Error::new(e).context("cannot reach the database"))
}

/// Everything the leader does, until stopped or deposed.
async fn lead(
    s: &Service,
    opts: FollowOptions,
    drain_timeout: Duration,
    leadership: &Leadership,
    stop: watch::Receiver<bool>,
    dog: &mut Option<DogHandle>,
) -> Result<Led, Failure> {
    let settings = &s.settings;
    let stop = either(stop, leadership.deposed.clone());
    // Only the leader migrates; an older binary does not lead a newer schema.
    if patiently(s, stop.clone(), || prepare(s)).await?.is_none() {
        return Ok(outcome_of_stop(leadership));
    }
    // A first start from a past height is a backfill; resuming a cursor is
    // a catch-up, whose alerts are sent (marked late).
    let read_from_history = || async {
        crate::store::from_history(&s.pool)
            .await
            .context("reading the cursor")
            .map_err(Failure::Other)
    };
    let Some(from_history) = patiently(s, stop.clone(), read_from_history).await? else {
        return Ok(outcome_of_stop(leadership));
    };
    let dispatcher = crate::dispatch::Dispatcher::with_channels(
        s.pool.clone(),
        settings,
        s.channels.clone(),
        Arc::new(chrono::Utc::now),
    )
    .with_health(s.health.clone());
    let (stop_dispatch, dispatch_rx) = watch::channel(false);
    let delivering = tokio::spawn(async move { dispatcher.run(dispatch_rx, drain_timeout).await });
    let ctx = crate::ingest::alerts::AlertContext::from_settings(settings);
    ctx.suppress_old
        .store(from_history, std::sync::atomic::Ordering::Relaxed);
    let scheduler = crate::schedule::Scheduler {
        pool: s.pool.clone(),
        rpc: s.rpc.clone(),
        schedule: settings.schedule.clone(),
        retention: settings.retention.clone(),
        alerts: ctx.clone(),
        report: s.channels.email.clone(),
        now: Arc::new(chrono::Utc::now),
    };
    let scheduling = {
        let stop = stop.clone();
        tokio::spawn(async move { scheduler.run(stop).await })
    };
    let requests = crate::ingest::requests::Server {
        pool: s.pool.clone(),
        rpc: s.rpc.background(),
        alerts: ctx.clone(),
        // Per leadership: what this process claimed while leading before
        // (and never finished) is claimed again.
        me: format!("{}#{}", s.me, leadership.epoch),
    };
    let serving_requests = tokio::spawn(requests.run(stop.clone()));
    let opts = FollowOptions {
        health: Some(s.health.clone()),
        epoch: Some(leadership.epoch),
        ..follow_options(settings, opts)
    };
    let retry = (
        settings.rpc.client.backoff_min,
        settings.rpc.client.backoff_max,
    );
    let followed = follow_forever(&s.pool, &s.rpc, &opts, Some(&ctx), stop, retry).await;
    let deposed =
        matches!(followed, Err(IngestError::Deposed { .. })) || *leadership.deposed.borrow();
    if deposed {
        // Step down at once: the new leader delivers what is pending.
        stop_dispatch.send_replace(true);
        delivering.abort();
        scheduling.abort();
        serving_requests.abort();
        return Ok(Led::Deposed);
    }
    if followed.is_ok()
        && let Some(dog) = dog.take()
    {
        dog.finish().await?;
    }
    stop_dispatch.send_replace(true);
    let drained = delivering.await.context("the dispatcher task")?;
    scheduling.abort();
    serving_requests.abort();
    let summary = followed.map_err(ingest_failure)?;
    if let Err(e) = drained {
        // Stopping while the database is down: what is pending stays
        // pending for the next leader.
        tracing::warn!(error = %e, "could not drain pending deliveries before stopping");
    }
    println!(
        "stopped at block {} ({} blocks, {} key rows, {} balance rows)",
        summary.last_height, summary.blocks, summary.key_rows, summary.balance_rows
    );
    Ok(Led::Done)
}

fn outcome_of_stop(leadership: &Leadership) -> Led {
    if *leadership.deposed.borrow() {
        Led::Deposed
    } else {
        Led::Done
    }
}

/// As the new leader: refuses a schema newer than this binary, migrates,
/// checks every rpc url serves the configured chain, upserts the config's
/// accounts, and makes sure there is a cursor.
async fn prepare(s: &Service) -> Result<(), Failure> {
    let mine = crate::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let mut conn = s.pool.acquire().await.map_err(outage)?;
    let theirs = lease::schema_version(&mut conn)
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    drop(conn);
    if theirs.is_some_and(|v| v > mine) {
        return Err(bad_input(format!(
            "the database's schema ({}) is newer than this keywatch's ({mine}): it will not lead; upgrade it",
            theirs.unwrap_or_default()
        )));
    }
    crate::store::migrate(&s.pool)
        .await
        .context("cannot apply migrations")?;
    s.rpc
        .verify_chain(&s.settings.rpc.chain_id)
        .await
        .context("checking the rpc node")?;
    // Each account must exist where its baseline is read (the cursor; on a
    // first start the start block), not at the head, so the history of an
    // account deleted since can be followed; nothing is written if not.
    upsert_accounts(&s.settings, &s.pool, &s.rpc, s.settings.ingest.start).await?;
    let existing = crate::store::cursor(&s.pool)
        .await
        .context("reading the cursor")?;
    if let (Some(c), StartAt::Height(h)) = (&existing, s.settings.ingest.start)
        && c.height + 1 != h
    {
        tracing::warn!(
            cursor = c.height,
            start = h,
            "ingest.start is ignored: the cursor wins"
        );
    }
    let cursor = init_cursor(&s.pool, &s.rpc, s.settings.ingest.start)
        .await
        .map_err(ingest_failure)?;
    tracing::info!(cursor = cursor.height, "following the chain");
    Ok(())
}

/// The dependency a start-up failure is an outage of (the database, or
/// every rpc url unreachable), to be waited out; `None` for bad input.
fn outage_of(e: &anyhow::Error) -> Option<Dependency> {
    use crate::ingest::baseline::TrackError;
    let rpc = |e: &crate::rpc::RpcError| (!e.is_wrong_chain()).then_some(Dependency::Rpc);
    let db = |e: &sqlx::Error| crate::store::is_outage(e).then_some(Dependency::Database);
    e.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return db(e);
        }
        if let Some(e) = cause.downcast_ref::<crate::rpc::RpcError>() {
            return rpc(e);
        }
        if let Some(crate::store::StoreError::Db(e)) = cause.downcast_ref() {
            return db(e);
        }
        if let Some(crate::store::StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e))) =
            cause.downcast_ref()
        {
            return db(e);
        }
        // Transparent wrappers hide the inner error from the chain.
        if let Some(e) = cause.downcast_ref::<IngestError>() {
            return match e {
                IngestError::Db(e) | IngestError::Store(crate::store::StoreError::Db(e)) => db(e),
                e => (!e.is_fatal()).then(|| e.dependency()),
            };
        }
        match cause.downcast_ref::<TrackError>()? {
            TrackError::Rpc { source, .. } => rpc(source),
            TrackError::Ingest(e) => (!e.is_fatal()).then(|| e.dependency()),
            TrackError::Busy => Some(Dependency::Database),
            TrackError::Missing { .. } => None,
        }
    })
}

/// Runs `step` until it succeeds, waiting out database and rpc outages with
/// backoff (the watchdog reports them meanwhile); bad input still ends
/// `run`. `None` when stopped first.
async fn patiently<T, F, Fut>(
    s: &Service,
    mut stop: watch::Receiver<bool>,
    step: F,
) -> Result<Option<T>, Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let retry = &s.settings.rpc.client;
    let mut failures = 0;
    loop {
        match step().await {
            Ok(v) => return Ok(Some(v)),
            Err(Failure::Other(e)) if outage_of(&e).is_some() => {
                failures += 1;
                let dep = outage_of(&e).unwrap_or(Dependency::Database);
                s.health.failed(dep, &format!("{e:#}"));
                let wait = backoff(failures, retry.backoff_min, retry.backoff_max);
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot go on yet; waiting"
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

/// The running watchdog; stopped before the dispatcher drains, so its last
/// word (`ingest_recovered`) is delivered too.
struct DogHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DogHandle {
    async fn finish(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        self.task.await.context("the watchdog")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::baseline::TrackError;
    use crate::rpc::RpcError;

    fn timeout() -> RpcError {
        RpcError::Timeout {
            url: "http://127.0.0.1:1/".into(),
            method: "block".into(),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn rpc_failures_are_rpc_outages_however_they_are_wrapped() {
        let wrapped = [
            anyhow::Error::new(timeout()),
            anyhow::Error::new(IngestError::Rpc(timeout())),
            anyhow::Error::new(TrackError::Ingest(IngestError::Rpc(timeout()))).context("starting"),
            anyhow::Error::new(TrackError::Rpc {
                account: crate::domain::AccountId::parse("a.near").unwrap(),
                at: "block 1".into(),
                source: timeout(),
            }),
        ];
        for e in wrapped {
            assert_eq!(outage_of(&e), Some(Dependency::Rpc), "{e:#}");
        }
    }

    #[test]
    fn database_outages_are_waited_out_and_other_database_errors_are_not() {
        let refused = || sqlx::Error::PoolTimedOut;
        assert_eq!(
            outage_of(&anyhow::Error::new(IngestError::Db(refused()))),
            Some(Dependency::Database)
        );
        let bad = || sqlx::Error::ColumnNotFound("x".into());
        assert_eq!(outage_of(&anyhow::Error::new(IngestError::Db(bad()))), None);
        assert_eq!(
            outage_of(&anyhow::Error::new(IngestError::Invalid("bad".into()))),
            None
        );
    }
}
