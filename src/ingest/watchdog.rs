//! Blind means loud. The watchdog runs beside the follower, reading only the
//! in-memory [`Health`], so it keeps working when the follower is stuck in
//! retries and when the database is down:
//!
//! - after `[rules.ingest_stalled] after` without progress it raises
//!   `ingest_stalled`, saying why (the failing dependency and its last
//!   error, or how far behind), sent straight through every channel and then
//!   recorded; while the database is down the record waits in memory;
//! - when progress resumes, one `ingest_recovered` says how long keywatch
//!   was blind (through the outbox, so it joins the digest of late alerts);
//! - while ingestion advances it pings `notify.heartbeat_url` every
//!   `heartbeat_every`, so an outside service notices when keywatch itself
//!   is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

use crate::config::{RuleSet, Settings};
use crate::dispatch::Clock;
use crate::health::{Health, Role, Snapshot};
use crate::notify::Channels;
use crate::rules::AlertDraft;
use crate::store::alerts::{Decided, Delivery, Initial, insert_with_key};

/// An alert about keywatch itself, with where it was decided.
#[derive(Debug, Clone)]
pub struct SelfAlert {
    pub key: String,
    pub draft: AlertDraft,
    pub block_height: u64,
    pub block_hash: String,
    pub block_time: chrono::DateTime<chrono::Utc>,
    /// Each channel's state once sent (or not).
    pub deliveries: Vec<(&'static str, Initial)>,
}

struct Blind {
    /// When progress stopped (wall clock).
    since: chrono::DateTime<chrono::Utc>,
    raised: Instant,
    reason: String,
}

#[derive(Clone)]
pub struct Watchdog {
    pool: PgPool,
    health: Arc<Health>,
    channels: Arc<Channels>,
    rules: RuleSet,
    after: Duration,
    takeover_after: Duration,
    heartbeat: Option<(reqwest::Client, SecretString, Duration)>,
    now: Clock,
}

/// What the watchdog carries from one check to the next.
#[derive(Default)]
pub struct WatchState {
    blind: Option<Blind>,
    /// Alerts sent but not yet written (the database was down).
    unrecorded: Vec<SelfAlert>,
    last_beat: Option<Instant>,
    /// Whether this leadership has looked for a stall a former leader
    /// raised and never closed.
    adopted: bool,
}

impl WatchState {
    pub fn is_blind(&self) -> bool {
        self.blind.is_some()
    }

    pub fn unrecorded(&self) -> usize {
        self.unrecorded.len()
    }
}

impl Watchdog {
    pub fn new(
        pool: PgPool,
        settings: &Settings,
        health: Arc<Health>,
        channels: Arc<Channels>,
        now: Clock,
    ) -> Result<Watchdog, String> {
        let after = settings.stalled_after();
        let heartbeat = match &settings.notify.heartbeat_url {
            Some(url) => Some((
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the heartbeat client: {e}"))?,
                url.clone(),
                settings.notify.heartbeat_every,
            )),
            None => None,
        };
        Ok(Watchdog {
            pool,
            health,
            channels,
            rules: settings.rules.clone(),
            after,
            takeover_after: settings.ingest.takeover_after,
            heartbeat,
            now,
        })
    }

    /// Checks until `stop`, a few times per `after`, and once more when
    /// stopped (so a recovery just before an exit is still announced).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let tick = (self.after / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut state = WatchState::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => {}
            }
            self.check(&mut state).await;
            if *stop.borrow() {
                return;
            }
        }
    }

    /// One look at the health: raise, recover, record, ping.
    pub async fn check(&self, state: &mut WatchState) {
        let mut still = Vec::new();
        for a in std::mem::take(&mut state.unrecorded) {
            if !self.record(&a).await {
                still.push(a);
            }
        }
        state.unrecorded = still;
        let snap = self.health.snapshot();
        if snap.role == Role::Standby
            || (snap.role == Role::Leader && !self.health.leads(self.takeover_after))
        {
            state.blind = None;
            state.adopted = false;
            return;
        }
        if snap.role == Role::Leader && !state.adopted && state.blind.is_none() {
            self.adopt_open_stall(state).await;
        }
        match &state.blind {
            None if snap.idle >= self.after => {
                let since = (self.now)()
                    - chrono::Duration::from_std(snap.idle).unwrap_or(chrono::Duration::zero());
                let reason = snap.stall_reason();
                tracing::error!(idle_s = snap.idle.as_secs(), %reason, "ingestion is stalled");
                if let Some(a) = self.stalled(&snap, since, &reason) {
                    state.unrecorded.extend(self.raise(a).await);
                }
                state.blind = Some(Blind {
                    since,
                    raised: Instant::now(),
                    reason,
                });
            }
            Some(b) if snap.idle < b.raised.elapsed() => {
                let resumed = (self.now)()
                    - chrono::Duration::from_std(snap.idle).unwrap_or(chrono::Duration::zero());
                let blind_for = (resumed - b.since).to_std().unwrap_or_default();
                tracing::info!(blind_s = blind_for.as_secs(), "ingestion advances again");
                if let Some(a) = self.recovered(&snap, b, blind_for) {
                    state.unrecorded.extend(self.record_or_keep(a).await);
                }
                state.blind = None;
            }
            _ => {}
        }
        // Only a leader that is following pings: the outside service must
        // page when nobody follows, not when a standby is alive.
        if snap.role == Role::Leader && state.blind.is_none() && snap.idle < self.after {
            self.beat(&mut state.last_beat).await;
        }
    }

    /// Takes over the blind episode a former leader raised `ingest_stalled`
    /// for, so this one's progress closes it with `ingest_recovered`.
    async fn adopt_open_stall(&self, state: &mut WatchState) {
        let open = async {
            let mut conn = self.pool.acquire().await?;
            crate::store::alerts::open_stall(&mut conn).await
        }
        .await;
        match open {
            Ok(since) => {
                state.adopted = true;
                if let Some(since) = since {
                    tracing::info!(%since, "a former leader's stall is still open");
                    state.blind = Some(Blind {
                        since,
                        raised: Instant::now(),
                        reason: "raised by a former leader".to_owned(),
                    });
                }
            }
            // The database is down: look again on the next check.
            Err(e) => tracing::debug!(error = %e, "looking for an open stall"),
        }
    }

    fn self_alert(
        &self,
        snap: &Snapshot,
        rule: &'static str,
        title: String,
        details: serde_json::Value,
        episode: chrono::DateTime<chrono::Utc>,
    ) -> Option<SelfAlert> {
        let r = self.rules.get(rule).filter(|r| r.enabled)?;
        let draft = AlertDraft {
            rule,
            severity: r.severity,
            account_id: String::new(),
            public_key: None,
            title,
            details,
        };
        let (height, hash, time) = match &snap.cursor {
            Some(c) => (
                c.height,
                c.hash.clone(),
                crate::store::convert::ns_to_time(c.timestamp_ns),
            ),
            None => (0, "none".to_owned(), (self.now)()),
        };
        Some(SelfAlert {
            // One alert per blind episode (its start identifies it).
            key: format!("{rule}|||{hash}|{}", episode.timestamp_millis()),
            draft,
            block_height: height,
            block_hash: hash,
            block_time: time,
            deliveries: vec![],
        })
    }

    fn stalled(
        &self,
        snap: &Snapshot,
        since: chrono::DateTime<chrono::Utc>,
        reason: &str,
    ) -> Option<SelfAlert> {
        let idle = humantime::format_duration(round(snap.idle));
        let at = snap
            .cursor
            .as_ref()
            .map(|c| format!(", still at block {}", c.height))
            .unwrap_or_default();
        self.self_alert(
            snap,
            "ingest_stalled",
            format!("keywatch is blind: no progress for {idle}{at} ({reason})"),
            serde_json::json!({
                "reason": reason,
                "idle_seconds": snap.idle.as_secs(),
                "cursor_height": snap.cursor.as_ref().map(|c| c.height),
                "final_head": snap.head,
                "blind_since": since,
            }),
            since,
        )
    }

    fn recovered(&self, snap: &Snapshot, b: &Blind, blind_for: Duration) -> Option<SelfAlert> {
        let dur = humantime::format_duration(round(blind_for));
        self.self_alert(
            snap,
            "ingest_recovered",
            format!("keywatch ingests again after being blind for {dur}"),
            serde_json::json!({
                "blind_seconds": blind_for.as_secs(),
                "blind_since": b.since,
                "reason": b.reason,
                "cursor_height": snap.cursor.as_ref().map(|c| c.height),
            }),
            b.since,
        )
    }

    /// Sends `a` straight through every channel, then records it: delivered
    /// where the send worked, pending (for the dispatcher) where it did not.
    /// Returns it when it could not be recorded yet.
    pub async fn raise(&self, mut a: SelfAlert) -> Option<SelfAlert> {
        let now = (self.now)();
        for channel in self.channels.names() {
            let d = in_memory_delivery(&a, channel, now);
            let state = match self
                .channels
                .send(channel, std::slice::from_ref(&d), None, now)
                .await
            {
                Ok(()) => Initial::Delivered(now),
                Err(e) => {
                    tracing::error!(channel, error = %e, rule = a.draft.rule, "cannot send an alert about keywatch itself");
                    Initial::Pending
                }
            };
            a.deliveries.push((channel, state));
        }
        self.record_or_keep(a).await
    }

    /// Records `a` through the outbox (pending on every channel unless it
    /// was already sent); returns it when the database is unavailable.
    async fn record_or_keep(&self, mut a: SelfAlert) -> Option<SelfAlert> {
        if a.deliveries.is_empty() {
            a.deliveries = self
                .channels
                .names()
                .into_iter()
                .map(|c| (c, Initial::Pending))
                .collect();
        }
        if self.record(&a).await { None } else { Some(a) }
    }

    async fn record(&self, a: &SelfAlert) -> bool {
        let at = Decided {
            block_height: a.block_height,
            block_hash: &a.block_hash,
            block_time: a.block_time,
        };
        let written = async {
            let mut tx = self.pool.begin().await?;
            let id = insert_with_key(&mut tx, &a.key, &a.draft, &at, &a.deliveries).await?;
            tx.commit().await?;
            Ok::<_, crate::store::StoreError>(id)
        }
        .await;
        match written {
            Ok(id) => {
                // none when the row was already there: an earlier attempt's
                // commit, or another process, wrote it under the same key
                if id.is_some() {
                    crate::metrics::alerts_written([a.draft.rule]);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, rule = a.draft.rule, "cannot record an alert yet; keeping it in memory");
                false
            }
        }
    }

    async fn beat(&self, last: &mut Option<Instant>) {
        let Some((client, url, every)) = &self.heartbeat else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < *every) {
            return;
        }
        *last = Some(Instant::now());
        match client.get(url.expose_secret()).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = r.status().as_u16(), "heartbeat ping refused"),
            // Without the url: it holds the check's secret token.
            Err(e) => tracing::warn!(error = %e.without_url(), "heartbeat ping failed"),
        }
    }
}

/// Whole seconds, or milliseconds below ten seconds, for a title.
fn round(d: Duration) -> Duration {
    if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    }
}

/// `a` as the dispatcher would load it, for a send before it is written.
fn in_memory_delivery(
    a: &SelfAlert,
    channel: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Delivery {
    Delivery {
        delivery_id: 0,
        alert_id: 0,
        dedup_key: a.key.clone(),
        channel: channel.to_owned(),
        attempts: 0,
        rule: a.draft.rule.to_owned(),
        severity: a.draft.severity.as_str().to_owned(),
        account_id: a.draft.account_id.clone(),
        public_key: a.draft.public_key.clone(),
        block_height: a.block_height as i64,
        block_hash: a.block_hash.clone(),
        block_time: a.block_time,
        title: a.draft.title.clone(),
        details: a.draft.details.clone(),
        created_at: now,
        batch_id: None,
    }
}

/// The alert `run` sends before it exits on a fatal error, so a crash loop
/// under a restart policy is never silent.
pub async fn announce_stop(dog: &Watchdog, error: &str) {
    let snap = dog.health.snapshot();
    let now = (dog.now)();
    if let Some(a) = dog.self_alert(
        &snap,
        "ingest_stopped",
        format!("keywatch stopped: {error}"),
        serde_json::json!({"error": error, "cursor_height": snap.cursor.as_ref().map(|c| c.height)}),
        now,
    ) && dog.raise(a).await.is_some()
    {
        tracing::error!("the stop alert was sent but could not be recorded");
    }
}
