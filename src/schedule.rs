//! The scheduler (orchestration) behind `[schedule]`: reconcile (keywatch
//! checks itself against the chain), the daily report mail, and retention
//! (delivery attempts, and blocks history does not need; key and balance
//! history are never pruned).
//! Which job is due next is a pure function of the schedules and `now`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::config::{RetentionConfig, ScheduleConfig};
use crate::dispatch::Clock;
use crate::ingest::alerts::AlertContext;
use crate::notify::email::EmailSender;
use crate::rpc::RpcClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Reconcile,
    DailyReport,
    Retention,
}

/// The next instant strictly after `after` at which jobs fall due, and
/// every job due then (two schedules may coincide).
pub fn next_due(
    s: &ScheduleConfig,
    after: chrono::DateTime<chrono::Utc>,
) -> Option<(chrono::DateTime<chrono::Utc>, Vec<Job>)> {
    let due: Vec<(chrono::DateTime<chrono::Utc>, Job)> = [
        (s.reconcile.as_ref(), Job::Reconcile),
        (s.daily_report.as_ref(), Job::DailyReport),
        (s.retention.as_ref(), Job::Retention),
    ]
    .into_iter()
    .filter_map(|(sched, job)| sched.and_then(|c| c.after(&after).next()).map(|t| (t, job)))
    .collect();
    let first = due.iter().map(|(t, _)| *t).min()?;
    Some((
        first,
        due.into_iter()
            .filter(|(t, _)| *t == first)
            .map(|(_, j)| j)
            .collect(),
    ))
}

/// Heights pruned per transaction (each holds the cursor lock).
const PRUNE_BATCH: i64 = 1_000;

pub struct Scheduler {
    pub pool: PgPool,
    pub rpc: Arc<RpcClient>,
    pub schedule: ScheduleConfig,
    pub retention: RetentionConfig,
    pub alerts: AlertContext,
    pub report: Option<EmailSender>,
    pub now: Clock,
}

/// Deletes delivery attempts older than `before`; returns how many.
pub async fn prune_attempts(
    pool: &PgPool,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("delete from delivery_attempts where attempted_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// The daily report: what keywatch watched and raised over the last day.
pub async fn daily_report(
    pool: &PgPool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, String), sqlx::Error> {
    let since = now - chrono::Duration::days(1);
    let watched: i64 = sqlx::query_scalar("select count(*) from watched_accounts")
        .fetch_one(pool)
        .await?;
    let cursor: Option<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select c.block_height, b.block_time from ingest_cursor c join blocks b on b.block_hash = c.block_hash").fetch_optional(pool).await?;
    let by_severity: Vec<(String, i64)> = sqlx::query_as("select severity, count(*) from alerts where created_at > $1 group by severity order by severity")
        .bind(since)
        .fetch_all(pool)
        .await?;
    let failed: i64 = sqlx::query_scalar(
        "select count(*) from alert_deliveries where status = 'failed' and next_attempt_at > $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    let drift: i64 = sqlx::query_scalar(
        "select coalesce(sum(differences), 0)::bigint from reconcile_runs where ran_at > $1",
    )
    .bind(since)
    .fetch_one(pool)
    .await?;
    let titles: Vec<(String, String)> = sqlx::query_as(
        "select severity, title from alerts where created_at > $1 order by id limit 50",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let total: i64 = by_severity.iter().map(|(_, n)| n).sum();
    let subject =
        format!("[keywatch] daily report: {total} alert(s), {watched} account(s) watched");
    let mut text = format!(
        "keywatch daily report, {}\n\n",
        now.format("%Y-%m-%d %H:%M UTC")
    );
    text.push_str(&format!("Accounts watched: {watched}\n"));
    match cursor {
        Some((h, t)) => text.push_str(&format!(
            "Last block ingested: {h} ({}, {} min ago)\n",
            t.format("%Y-%m-%d %H:%M:%S UTC"),
            (now - t).num_minutes()
        )),
        None => text.push_str("Last block ingested: none yet\n"),
    }
    text.push_str(&format!("Alerts in the last 24 h: {total}"));
    for (sev, n) in &by_severity {
        text.push_str(&format!(", {n} {sev}"));
    }
    text.push_str(&format!(
        "\nFailed deliveries: {failed}\nDifferences found by reconcile: {drift}\n\n"
    ));
    for (sev, title) in titles {
        text.push_str(&format!("  [{}] {title}\n", sev.to_uppercase()));
    }
    Ok((subject, text))
}

impl Scheduler {
    pub async fn run_job(&self, job: Job) -> anyhow::Result<()> {
        let now = (self.now)();
        match job {
            Job::Reconcile => {
                // The background lane: following keeps first claim on the budget.
                let r = crate::ingest::reconcile::reconcile(
                    &self.pool,
                    &self.rpc.background(),
                    &[],
                    Some(&self.alerts),
                )
                .await?;
                tracing::info!(
                    height = r.height,
                    accounts = r.accounts,
                    differences = r.differences.len(),
                    "scheduled reconcile"
                );
            }
            Job::Retention => {
                let keep = chrono::Duration::from_std(self.retention.delivery_attempts)
                    .unwrap_or(chrono::Duration::days(30));
                let n = prune_attempts(&self.pool, now - keep).await?;
                tracing::info!(pruned = n, "retention: old delivery attempts pruned");
                if let Some(cursor) = crate::store::cursor(&self.pool).await? {
                    let keep = self.retention.blocks.as_nanos().min(i64::MAX as u128) as i64;
                    let before = (cursor.timestamp_ns as i64).saturating_sub(keep);
                    let keep_after = self.alerts.keep_blocks_after_writes();
                    let pruned = crate::store::prune::prune_blocks(
                        &self.pool,
                        before,
                        keep_after,
                        PRUNE_BATCH,
                    )
                    .await?;
                    tracing::info!(
                        pruned = pruned.deleted,
                        below = pruned.below,
                        "retention: blocks without history pruned"
                    );
                }
            }
            Job::DailyReport => {
                let Some(sender) = &self.report else {
                    return Ok(());
                };
                let (subject, text) = daily_report(&self.pool, now).await?;
                sender
                    .send_text(&subject, &text, &format!("report-{}", now.format("%Y%m%d")))
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs jobs as they fall due, until `stop`.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut after = (self.now)();
        while let Some((at, jobs)) = next_due(&self.schedule, after) {
            let wait = (at - (self.now)()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            for job in jobs {
                if let Err(e) = self.run_job(job).await {
                    tracing::error!(?job, error = format!("{e:#}"), "scheduled job failed");
                }
            }
            after = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn schedule(
        reconcile: Option<&str>,
        report: Option<&str>,
        retention: Option<&str>,
    ) -> ScheduleConfig {
        let c = |s: Option<&str>| s.map(|s| cron::Schedule::from_str(s).unwrap());
        ScheduleConfig {
            reconcile: c(reconcile),
            daily_report: c(report),
            retention: c(retention),
        }
    }

    #[test]
    fn coinciding_jobs_fall_due_together_and_none_is_skipped() {
        let s = schedule(
            Some("0 */30 * * * *"),
            Some("0 0 8 * * *"),
            Some("0 30 3 * * *"),
        );
        let (t, jobs) = next_due(&s, at("2026-11-22T07:59:00Z")).unwrap();
        assert_eq!(
            (t, jobs),
            (
                at("2026-11-22T08:00:00Z"),
                vec![Job::Reconcile, Job::DailyReport]
            )
        );
        let (t, jobs) = next_due(&s, t).unwrap();
        assert_eq!(
            (t, jobs),
            (at("2026-11-22T08:30:00Z"), vec![Job::Reconcile])
        );
        let (t, jobs) = next_due(&s, at("2026-11-23T03:15:00Z")).unwrap();
        assert_eq!(
            (t, jobs),
            (
                at("2026-11-23T03:30:00Z"),
                vec![Job::Reconcile, Job::Retention]
            )
        );
    }

    #[test]
    fn disabled_jobs_never_fall_due() {
        assert!(next_due(&schedule(None, None, None), at("2026-11-22T07:59:00Z")).is_none());
        let (_, jobs) = next_due(
            &schedule(None, Some("0 0 8 * * *"), None),
            at("2026-11-22T09:00:00Z"),
        )
        .unwrap();
        assert_eq!(jobs, vec![Job::DailyReport]);
    }
}
