//! The dispatcher (orchestration): sends pending deliveries, one
//! transaction each, so a crash between "sent" and "marked sent" gives at
//! most one duplicate (carrying the same Message-ID / delivery key), never a
//! loss. Critical alerts go out one by one at once; when warning/info alerts
//! for a channel outrun `batch_after` per `batch_interval`, they go out as
//! one message per interval (late ones after a catch-up as one digest).
//! Transient failures are retried with exponential backoff and jitter, up to
//! `max_attempts` for warning/info alerts and for as long as it takes for
//! critical ones; permanent ones fail at once. Every attempt is recorded.
//! A delivery that failed, or a critical one pending past `escalate_after`,
//! raises `delivery_failing` on the other channels.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use sqlx::PgPool;

use crate::config::Settings;
use crate::health::{Dependency, Health};
use crate::notify::{Channels, SendError};
use crate::store::StoreError;
use crate::store::alerts::{
    Decided, Delivery, Initial, OUTBOX_CHANNEL, Outcome, SENT_ALONE, claim_due, form_batch,
    insert_with_key, lock_pending, lock_pending_ids, mark_escalated, recent_non_critical,
    record_attempt, retry_now, stuck,
};

/// The longest the dispatcher sleeps with nothing due.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// How often it looks when it cannot be woken, or something due was not sent.
const POLL_WAIT: Duration = Duration::from_millis(200);
/// How often it looks while late alerts wait for the catch-up to end.
const HOLD_WAIT: Duration = Duration::from_secs(1);

/// The follower is catching up while it is more than this many blocks
/// behind the final head.
const CAUGHT_UP_LAG: u64 = 3;

/// Late warning/info alerts wait for the catch-up to end at most this many
/// seconds.
const LATE_HOLD_MAX_SECS: i64 = 600;

fn is_late(d: &Delivery) -> bool {
    d.details.get("late").and_then(serde_json::Value::as_bool) == Some(true)
}

pub type Clock = Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>;

pub struct Dispatcher {
    pool: PgPool,
    channels: Arc<Channels>,
    batch_after: i64,
    batch_interval: chrono::Duration,
    max_attempts: i32,
    retry_min: Duration,
    retry_max: Duration,
    escalate_after: chrono::Duration,
    delivery_failing: Option<crate::config::RuleSettings>,
    health: Option<Arc<Health>>,
    now: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Setup(String),
}

impl Dispatcher {
    pub fn new(pool: PgPool, settings: &Settings, now: Clock) -> Result<Dispatcher, DispatchError> {
        let channels = Channels::from_settings(settings).map_err(DispatchError::Setup)?;
        Ok(Self::with_channels(pool, settings, Arc::new(channels), now))
    }

    pub fn with_channels(
        pool: PgPool,
        settings: &Settings,
        channels: Arc<Channels>,
        now: Clock,
    ) -> Dispatcher {
        let n = &settings.notify;
        let chrono_of = |d: Duration, default: chrono::Duration| {
            chrono::Duration::from_std(d).unwrap_or(default)
        };
        Dispatcher {
            pool,
            channels,
            batch_after: i64::from(n.batch_after),
            batch_interval: chrono_of(n.batch_interval, chrono::Duration::minutes(5)),
            max_attempts: n.max_attempts as i32,
            retry_min: n.retry_min,
            retry_max: n.retry_max,
            escalate_after: chrono_of(n.escalate_after, chrono::Duration::minutes(15)),
            delivery_failing: settings
                .rules
                .get("delivery_failing")
                .filter(|r| r.enabled)
                .cloned(),
            health: None,
            now,
        }
    }

    /// Reports channel failures and a stuck outbox to `health`.
    pub fn with_health(mut self, health: Arc<Health>) -> Dispatcher {
        self.health = Some(health);
        self
    }

    async fn send(
        &self,
        channel: &str,
        ds: &[Delivery],
        batch_id: Option<&str>,
    ) -> Result<(), SendError> {
        let result = self
            .channels
            .send(channel, ds, batch_id, (self.now)())
            .await;
        let dep = match channel {
            "email" => Some(Dependency::Email),
            "webhook" => Some(Dependency::Webhook),
            _ => None,
        };
        if let (Some(h), Some(dep)) = (&self.health, dep) {
            match &result {
                Ok(()) => h.recovered(dep),
                Err(e) => h.failed(dep, &e.message),
            }
        }
        if result.is_ok() {
            // The channel works: nothing on it should wait out an old backoff.
            let mut conn = self.pool.acquire().await.map_err(|e| SendError {
                permanent: false,
                message: format!("sent, but the database is unavailable: {e}"),
            });
            if let Ok(conn) = &mut conn
                && let Err(e) = retry_now(conn, channel, (self.now)()).await
            {
                tracing::warn!(channel, error = %e, "cannot reset the retry backoff");
            }
        }
        result
    }

    fn backoff(&self, attempts: i32) -> chrono::Duration {
        let base = self.retry_min.as_secs_f64() * 2f64.powi(attempts.clamp(0, 30));
        let capped = base.min(self.retry_max.as_secs_f64());
        let jitter = rand::rng().random_range(0.8..1.2);
        chrono::Duration::milliseconds((capped * jitter * 1000.0) as i64)
    }

    /// What an attempt means for the delivery. A critical alert is never
    /// given up on for transient failures: it is retried at `retry_max` for
    /// as long as it takes (and escalated meanwhile).
    fn outcome(&self, d: &Delivery, result: &Result<(), SendError>) -> Outcome {
        let attempts_so_far = d.attempts;
        // real time, not the injectable `now` (a test's clock): the
        // database's clock wrote created_at, and the two may differ
        let since_commit = result.is_ok().then(|| {
            (chrono::Utc::now() - d.created_at)
                .to_std()
                .unwrap_or_default()
        });
        crate::metrics::delivery(&d.channel, result.is_ok(), since_commit);
        match result {
            Ok(()) => Outcome::Delivered,
            Err(e) if e.permanent => Outcome::Permanent,
            Err(_) if d.severity != "critical" && attempts_so_far + 1 >= self.max_attempts => {
                Outcome::Permanent
            }
            Err(_) => Outcome::Transient((self.now)() + self.backoff(attempts_so_far)),
        }
    }

    /// Whether the follower is still working through blocks it missed.
    fn catching_up(&self) -> bool {
        self.health
            .as_ref()
            // Until the follower has read a head, it may be far behind.
            .is_some_and(|h| h.snapshot().lag().is_none_or(|lag| lag > CAUGHT_UP_LAG))
    }

    /// One pass over the due deliveries; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        self.pass(false).await
    }

    /// [`Self::run_once`]; `stopping` releases what waits for the end of a
    /// catch-up, since the follower has stopped.
    async fn pass(&self, stopping: bool) -> Result<usize, DispatchError> {
        let now = (self.now)();
        // Read before claiming: if the follower has caught up by now, every
        // alert of the catch-up is committed and so among those claimed
        // below, and the digest holds them all.
        let catching_up = !stopping && self.catching_up();
        let due = {
            let mut tx = self.pool.begin().await?;
            let due = claim_due(&mut tx, now, 500).await?;
            tx.commit().await?;
            due
        };
        let mut attempted = 0;
        let mut waiting: std::collections::BTreeMap<String, Vec<Delivery>> = Default::default();
        for d in due {
            if d.severity == "critical" {
                attempted += usize::from(self.deliver_one(d.delivery_id).await?);
            } else {
                waiting.entry(d.channel.clone()).or_default().push(d);
            }
        }
        for (channel, list) in waiting {
            // Batches formed before go out again as they were.
            let (formed, list): (Vec<Delivery>, Vec<Delivery>) =
                list.into_iter().partition(|d| d.batch_id.is_some());
            let mut batches: std::collections::BTreeMap<String, Vec<Delivery>> = Default::default();
            for d in formed {
                batches
                    .entry(d.batch_id.clone().unwrap_or_default())
                    .or_default()
                    .push(d);
            }
            for (id, batch) in batches {
                if id == SENT_ALONE {
                    for d in batch {
                        attempted += usize::from(self.deliver_one(d.delivery_id).await?);
                    }
                } else {
                    attempted += self.deliver_batch(&channel, &batch).await?;
                }
            }
            // Late warning/info alerts (and the ingest_recovered that
            // explains them) wait until the follower reaches the head, then
            // go out as one digest; never longer than LATE_HOLD_MAX.
            let (held, list): (Vec<Delivery>, Vec<Delivery>) = list
                .into_iter()
                .partition(|d| is_late(d) || d.rule == "ingest_recovered");
            let overdue = held
                .iter()
                .any(|d| d.created_at <= now - chrono::Duration::seconds(LATE_HOLD_MAX_SECS));
            match held.len() {
                0 => {}
                _ if catching_up && !overdue => {}
                1 => attempted += usize::from(self.deliver_one(held[0].delivery_id).await?),
                _ => attempted += self.deliver_batch(&channel, &held).await?,
            }
            if list.is_empty() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            let (recent, last_batch) =
                recent_non_critical(&mut tx, &channel, now - self.batch_interval).await?;
            tx.commit().await?;
            if recent + list.len() as i64 <= self.batch_after && last_batch.is_none() {
                for d in list {
                    attempted += usize::from(self.deliver_one(d.delivery_id).await?);
                }
            } else if last_batch.is_none_or(|t| t <= now - self.batch_interval) {
                attempted += self.deliver_batch(&channel, &list).await?;
            }
            // else: a batch went out less than an interval ago; wait for the next.
        }
        Ok(attempted)
    }

    /// Locks one delivery, sends it and records the attempt in one transaction.
    async fn deliver_one(&self, delivery_id: i64) -> Result<bool, DispatchError> {
        // Recorded first: after a crash between the server accepting it and
        // the attempt being recorded, it goes out alone again, under the
        // same Message-ID, never inside a batch.
        let mut conn = self.pool.acquire().await?;
        form_batch(&mut conn, &[delivery_id], SENT_ALONE).await?;
        drop(conn);
        let mut tx = self.pool.begin().await?;
        let Some(d) = lock_pending(&mut tx, delivery_id).await? else {
            return Ok(false);
        };
        let result = self.send(&d.channel, std::slice::from_ref(&d), None).await;
        let outcome = self.outcome(&d, &result);
        if let Err(e) = &result {
            tracing::warn!(alert = d.alert_id, channel = %d.channel, error = %e, ?outcome, "delivery failed");
        }
        record_attempt(
            &mut tx,
            d.delivery_id,
            outcome,
            result.err().map(|e| e.message).as_deref(),
            None,
            (self.now)(),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn deliver_batch(
        &self,
        channel: &str,
        list: &[Delivery],
    ) -> Result<usize, DispatchError> {
        let ids: Vec<i64> = list.iter().map(|d| d.delivery_id).collect();
        // A batch formed before (and sent, perhaps, before a crash) keeps
        // its id; a new one is named by its members and recorded first.
        let batch_id = match list.first().and_then(|d| d.batch_id.clone()) {
            Some(id)
                if list
                    .iter()
                    .all(|d| d.batch_id.as_deref() == Some(id.as_str())) =>
            {
                id
            }
            _ => {
                let mut members: Vec<&str> = list.iter().map(|d| d.dedup_key.as_str()).collect();
                members.sort_unstable();
                let id = format!(
                    "batch-{}",
                    crate::notify::alert_identity(&members.join("\n"))
                );
                let mut conn = self.pool.acquire().await?;
                form_batch(&mut conn, &ids, &id).await?;
                id
            }
        };
        let mut tx = self.pool.begin().await?;
        let locked = lock_pending_ids(&mut tx, &ids).await?;
        let batch: Vec<Delivery> = list
            .iter()
            .filter(|d| locked.contains(&d.delivery_id))
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let result = self.send(channel, &batch, Some(&batch_id)).await;
        let now = (self.now)();
        for d in &batch {
            let outcome = self.outcome(d, &result);
            let err = result.as_ref().err().map(|e| e.message.clone());
            record_attempt(
                &mut tx,
                d.delivery_id,
                outcome,
                err.as_deref(),
                Some(&batch_id),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(batch.len())
    }

    /// Raises `delivery_failing` for each delivery that ended `failed` or
    /// is a critical alert pending longer than `notify.escalate_after`, on
    /// the other channels (on the same one when it is the only one), and
    /// tells `/ready`. Returns how many alerts it raised.
    pub async fn escalate(&self) -> Result<usize, DispatchError> {
        let now = (self.now)();
        let mut conn = self.pool.acquire().await?;
        let stuck = stuck(&mut conn, now - self.escalate_after).await?;
        // Reported until resolved, not only until escalated.
        let (overdue, failed) = crate::store::alerts::outbox_problems(
            &mut conn,
            now - self.escalate_after,
            now - chrono::Duration::hours(24),
        )
        .await?;
        drop(conn);
        if let Some(h) = &self.health {
            h.set_outbox_stuck((overdue + failed > 0).then(|| {
                format!(
                    "{overdue} critical delivery(ies) pending longer than {}, {failed} failed in the last 24 h",
                    humantime::format_duration(self.escalate_after.to_std().unwrap_or_default())
                )
            }));
        }
        let mut raised = 0;
        for s in &stuck {
            let mut tx = self.pool.begin().await?;
            let mut raised_here = false;
            if let Some(rule) = &self.delivery_failing {
                let others: Vec<&str> = self
                    .channels
                    .names()
                    .into_iter()
                    .filter(|c| *c != s.channel)
                    .collect();
                let targets = if others.is_empty() {
                    vec![s.channel.as_str()]
                } else {
                    others
                };
                let state = if s.status == "failed" {
                    "was given up on".to_owned()
                } else {
                    format!(
                        "is still pending after {}",
                        humantime::format_duration(
                            self.escalate_after.to_std().unwrap_or_default()
                        )
                    )
                };
                let draft = crate::rules::AlertDraft {
                    rule: "delivery_failing",
                    severity: rule.severity,
                    account_id: String::new(),
                    public_key: Some(s.channel.clone()),
                    title: format!(
                        "Alert #{} on {} {state}: {}",
                        s.alert_id, s.channel, s.title
                    ),
                    details: serde_json::json!({
                        "alert_id": s.alert_id, "channel": s.channel, "status": s.status,
                        "rule": s.rule, "last_error": s.last_error,
                    }),
                };
                let deliveries: Vec<(&str, Initial)> =
                    targets.into_iter().map(|c| (c, Initial::Pending)).collect();
                let at = Decided {
                    block_height: s.block_height.max(0) as u64,
                    block_hash: &s.block_hash,
                    block_time: s.block_time,
                };
                let key = format!("delivery_failing|{}|{}", s.channel, s.delivery_id);
                if insert_with_key(&mut tx, &key, &draft, &at, &deliveries)
                    .await?
                    .is_some()
                {
                    raised_here = true;
                    tracing::error!(alert = s.alert_id, channel = %s.channel, "{}", draft.title);
                }
            }
            mark_escalated(&mut tx, s.delivery_id).await?;
            tx.commit().await?;
            if raised_here {
                raised += 1;
                crate::metrics::alerts_written(["delivery_failing"]);
            }
        }
        Ok(raised)
    }

    /// Runs until `stop`, then keeps delivering for up to `drain` while
    /// anything is still due. Wakes every 200 ms, or at once on `wake`.
    pub async fn run(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        drain: Duration,
    ) -> Result<(), DispatchError> {
        let mut last_escalation = tokio::time::Instant::now() - Duration::from_secs(60);
        let mut listening = crate::store::Listening::new(&[OUTBOX_CHANNEL]);
        loop {
            if *stop.borrow() {
                break;
            }
            let heard = listening.connect(&self.pool).await;
            let attempted = self.run_once().await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "dispatcher pass failed");
                0
            });
            if last_escalation.elapsed() >= Duration::from_secs(5) {
                last_escalation = tokio::time::Instant::now();
                if let Err(e) = self.escalate().await {
                    tracing::error!(error = %e, "escalation check failed");
                }
            }
            // A commit that queued a delivery wakes us at once; retries
            // wake us when they are due.
            let wait = if heard {
                self.until_next_due(attempted).await
            } else {
                POLL_WAIT
            };
            listening.wait(wait, &mut stop).await;
        }
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline && self.pending_due().await? > 0 {
            self.pass(true).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// How long to sleep when nothing wakes us: until the next retry is due
    /// (at most IDLE_WAIT, which also paces escalation checks), or
    /// POLL_WAIT when something is due but was not sent (held for a digest,
    /// or locked by another dispatcher).
    async fn until_next_due(&self, attempted: usize) -> Duration {
        if attempted > 0 {
            return Duration::ZERO;
        }
        let next = async {
            let mut conn = self.pool.acquire().await?;
            crate::store::alerts::next_due(&mut conn).await
        }
        .await;
        // Due but held for the digest: look again now and then, not on
        // every poll.
        let overdue = if self.catching_up() {
            HOLD_WAIT
        } else {
            POLL_WAIT
        };
        match next {
            Ok(Some(t)) => (t - (self.now)())
                .to_std()
                .map_or(overdue, |d| d.clamp(POLL_WAIT, IDLE_WAIT)),
            Ok(None) => IDLE_WAIT,
            Err(_) => POLL_WAIT,
        }
    }

    async fn pending_due(&self) -> Result<i64, DispatchError> {
        let mut conn = self.pool.acquire().await?;
        Ok(crate::store::alerts::pending_due(&mut conn, (self.now)()).await?)
    }
}
