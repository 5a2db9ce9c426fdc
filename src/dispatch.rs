//! The dispatcher (orchestration): sends pending deliveries, one
//! transaction each, so a crash between "sent" and "marked sent" gives at
//! most one duplicate (carrying the same Message-ID / delivery key), never a
//! loss. Critical alerts go out one by one at once; when warning/info alerts
//! for a channel outrun `batch_after` per `batch_interval`, they go out as
//! one message per interval. Transient failures are retried with
//! exponential backoff and jitter up to `max_attempts`; permanent ones fail
//! at once. Every attempt is recorded.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use sqlx::PgPool;

use crate::config::Settings;
use crate::notify::SendError;
use crate::notify::email::EmailSender;
use crate::notify::webhook::WebhookSender;
use crate::store::StoreError;
use crate::store::alerts::{Delivery, Outcome, claim_due, recent_non_critical, record_attempt};

pub type Clock = Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>;

pub struct Dispatcher {
    pool: PgPool,
    email: Option<EmailSender>,
    webhook: Option<WebhookSender>,
    batch_after: i64,
    batch_interval: chrono::Duration,
    max_attempts: i32,
    retry_min: Duration,
    retry_max: Duration,
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
        let n = &settings.notify;
        let email = n
            .email
            .as_ref()
            .map(|e| EmailSender::new(e, &n.explorer_url))
            .transpose()
            .map_err(DispatchError::Setup)?;
        let webhook = n
            .webhook
            .as_ref()
            .map(|w| WebhookSender::new(w, &n.explorer_url))
            .transpose()
            .map_err(DispatchError::Setup)?;
        Ok(Dispatcher {
            pool,
            email,
            webhook,
            batch_after: i64::from(n.batch_after),
            batch_interval: chrono::Duration::from_std(n.batch_interval)
                .unwrap_or(chrono::Duration::minutes(5)),
            max_attempts: n.max_attempts as i32,
            retry_min: n.retry_min,
            retry_max: n.retry_max,
            now,
        })
    }

    async fn send(
        &self,
        channel: &str,
        ds: &[Delivery],
        batch_id: Option<&str>,
    ) -> Result<(), SendError> {
        match channel {
            "email" => match &self.email {
                Some(e) => e.send(ds, batch_id).await,
                None => Err(SendError {
                    permanent: false,
                    message: "email is not configured in this process".into(),
                }),
            },
            "webhook" => match &self.webhook {
                Some(w) => w.send(ds, batch_id, (self.now)()).await,
                None => Err(SendError {
                    permanent: false,
                    message: "the webhook is not configured in this process".into(),
                }),
            },
            other => Err(SendError {
                permanent: true,
                message: format!("unknown channel {other:?}"),
            }),
        }
    }

    fn backoff(&self, attempts: i32) -> chrono::Duration {
        let base = self.retry_min.as_secs_f64() * 2f64.powi(attempts.clamp(0, 30));
        let capped = base.min(self.retry_max.as_secs_f64());
        let jitter = rand::rng().random_range(0.8..1.2);
        chrono::Duration::milliseconds((capped * jitter * 1000.0) as i64)
    }

    fn outcome(&self, result: &Result<(), SendError>, attempts_so_far: i32) -> Outcome {
        let counter = if result.is_ok() {
            &crate::metrics::METRICS.deliveries_ok
        } else {
            &crate::metrics::METRICS.deliveries_failed
        };
        crate::metrics::add(counter, 1);
        match result {
            Ok(()) => Outcome::Delivered,
            Err(e) if e.permanent => Outcome::Permanent,
            Err(_) if attempts_so_far + 1 >= self.max_attempts => Outcome::Permanent,
            Err(_) => Outcome::Transient((self.now)() + self.backoff(attempts_so_far)),
        }
    }

    /// One pass over the due deliveries; returns how many were attempted.
    pub async fn run_once(&self) -> Result<usize, DispatchError> {
        let now = (self.now)();
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
        let mut tx = self.pool.begin().await?;
        let sql = "select d.id as delivery_id, a.id as alert_id, d.channel, d.attempts, a.rule, a.severity, a.account_id,
                a.public_key, a.block_height, a.block_hash, a.block_time, a.title, a.details, a.created_at
             from alert_deliveries d join alerts a on a.id = d.alert_id
             where d.id = $1 and d.status = 'pending' for update of d skip locked";
        let Some(d): Option<Delivery> = sqlx::query_as(sql)
            .bind(delivery_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let result = self.send(&d.channel, std::slice::from_ref(&d), None).await;
        let outcome = self.outcome(&result, d.attempts);
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
        let mut tx = self.pool.begin().await?;
        let ids: Vec<i64> = list.iter().map(|d| d.delivery_id).collect();
        let locked: Vec<i64> = sqlx::query_scalar("select id from alert_deliveries where id = any($1) and status = 'pending' for update skip locked")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        let batch: Vec<Delivery> = list
            .iter()
            .filter(|d| locked.contains(&d.delivery_id))
            .cloned()
            .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let batch_id = format!("batch-{}-{}", batch[0].delivery_id, batch.len());
        let result = self.send(channel, &batch, Some(&batch_id)).await;
        let now = (self.now)();
        for d in &batch {
            let outcome = self.outcome(&result, d.attempts);
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

    /// Runs until `stop`, then keeps delivering for up to `drain` while
    /// anything is still due.
    pub async fn run(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
        drain: Duration,
    ) -> Result<(), DispatchError> {
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(e) = self.run_once().await {
                tracing::error!(error = %e, "dispatcher pass failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline && self.pending_due().await? > 0 {
            self.run_once().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn pending_due(&self) -> Result<i64, DispatchError> {
        Ok(sqlx::query_scalar("select count(*) from alert_deliveries where status = 'pending' and next_attempt_at <= $1")
            .bind((self.now)())
            .fetch_one(&self.pool)
            .await?)
    }
}
