//! `run`'s follower never gives up on a transient failure: when the rpc
//! (every url, every attempt) or the database fails, it records the failure
//! where the watchdog and `/ready` see it, waits with capped exponential
//! backoff, and starts again from the cursor. Replaying from the cursor is
//! safe because a block commits whole or not at all, and a replayed block
//! writes nothing new. Only a fatal error ([`IngestError::is_fatal`]) ends
//! it.

use std::time::Duration;

use rand::RngExt;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::ingest::IngestError;
use crate::ingest::alerts::AlertContext;
use crate::ingest::follower::{FollowOptions, FollowSummary, follow_into};
use crate::rpc::RpcClient;

/// The wait before attempt `failures + 1`: doubling from `min`, capped at
/// `max`, with ±20% jitter so several processes do not retry in step.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let base = min.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let capped = base.min(max.as_secs_f64());
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_secs_f64((capped * jitter).min(max.as_secs_f64()))
}

/// Follows until `stop`, `--until-height` or caught up (as `opts` says), or
/// a fatal error; everything else is retried after a backoff between
/// `retry_min` and `retry_max`.
pub async fn follow_forever(
    pool: &PgPool,
    rpc: &RpcClient,
    opts: &FollowOptions,
    alerts: Option<&AlertContext>,
    mut stop: watch::Receiver<bool>,
    retry: (Duration, Duration),
) -> Result<FollowSummary, IngestError> {
    let mut summary = FollowSummary::default();
    let mut failures = 0u32;
    loop {
        let before = summary.blocks;
        match follow_into(pool, rpc, opts, alerts, stop.clone(), &mut summary).await {
            Ok(()) => return Ok(summary),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                if summary.blocks > before {
                    failures = 0;
                }
                failures += 1;
                let message = format!("{e}");
                if let Some(h) = &opts.health {
                    h.failed(e.dependency(), &message);
                }
                crate::metrics::ingest_failed();
                let wait = backoff(failures, retry.0, retry.1);
                tracing::warn!(
                    error = %message,
                    dependency = e.dependency().as_str(),
                    failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "ingestion failed; trying again from the cursor"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return Ok(summary);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_under_the_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff(1, min, max);
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        let third = backoff(3, min, max);
        assert!(third >= Duration::from_millis(320) && third <= Duration::from_millis(480));
        for n in [6, 30, 1000, u32::MAX] {
            assert!(backoff(n, min, max) <= max, "{n}");
        }
    }
}
