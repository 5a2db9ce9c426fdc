//! The alert outbox: alerts and their per-channel deliveries, the attempts,
//! and the queries behind `keywatch alerts`.

use sqlx::PgConnection;

use crate::rules::AlertDraft;
use crate::store::StoreError;
use crate::store::convert::height_to_i64;

/// Where an alert was decided.
pub struct Decided<'a> {
    pub block_height: u64,
    pub block_hash: &'a str,
    pub block_time: chrono::DateTime<chrono::Utc>,
}

/// Inserts an alert and a delivery per channel (`suppressed` when `send` is
/// false); the dedup key makes a replayed block insert nothing. Returns the
/// alert id when it is new.
pub async fn insert(
    tx: &mut PgConnection,
    d: &AlertDraft,
    at: &Decided<'_>,
    channels: &[&str],
    send: bool,
) -> Result<Option<i64>, StoreError> {
    let dedup = format!(
        "{}|{}|{}|{}",
        d.rule,
        d.account_id,
        d.public_key.as_deref().unwrap_or(""),
        at.block_hash
    );
    let id: Option<i64> = sqlx::query_scalar(
        "insert into alerts (dedup_key, rule, severity, account_id, public_key, block_height, block_hash, block_time, title, details)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict on constraint alerts_dedup_key do nothing returning id",
    )
    .bind(&dedup)
    .bind(d.rule)
    .bind(d.severity.as_str())
    .bind(&d.account_id)
    .bind(&d.public_key)
    .bind(height_to_i64("block height", at.block_height)?)
    .bind(at.block_hash)
    .bind(at.block_time)
    .bind(&d.title)
    .bind(&d.details)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(None) };
    for channel in channels {
        sqlx::query("insert into alert_deliveries (alert_id, channel, status) values ($1, $2, $3) on conflict on constraint alert_deliveries_alert_channel do nothing")
            .bind(id)
            .bind(*channel)
            .bind(if send { "pending" } else { "suppressed" })
            .execute(&mut *tx)
            .await?;
    }
    Ok(Some(id))
}

/// Whether the rule already fired for (account, key) at a block time after
/// `since` (chain time), so it stays quiet within its cooldown.
pub async fn fired_since(
    tx: &mut PgConnection,
    rule: &str,
    account: &str,
    key: Option<&str>,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists(select 1 from alerts where rule = $1 and account_id = $2
                and coalesce(public_key, '') = coalesce($3, '') and block_time > $4)",
    )
    .bind(rule)
    .bind(account)
    .bind(key)
    .bind(since)
    .fetch_one(tx)
    .await?)
}

/// A delivery to send, with its alert.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub delivery_id: i64,
    pub alert_id: i64,
    pub channel: String,
    pub attempts: i32,
    pub rule: String,
    pub severity: String,
    pub account_id: String,
    pub public_key: Option<String>,
    pub block_height: i64,
    pub block_hash: String,
    pub block_time: chrono::DateTime<chrono::Utc>,
    pub title: String,
    pub details: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const DELIVERY_COLUMNS: &str = "d.id as delivery_id, a.id as alert_id, d.channel, d.attempts, a.rule, a.severity, a.account_id,
    a.public_key, a.block_height, a.block_hash, a.block_time, a.title, a.details, a.created_at";

/// Pending deliveries due now, locked for this transaction (other
/// dispatchers skip them).
pub async fn claim_due(
    tx: &mut PgConnection,
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let sql = format!(
        "select {DELIVERY_COLUMNS} from alert_deliveries d join alerts a on a.id = d.alert_id
         where d.status = 'pending' and d.next_attempt_at <= $1
         order by case a.severity when 'critical' then 0 else 1 end, d.id
         limit $2 for update of d skip locked"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .fetch_all(tx)
        .await?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Transient(chrono::DateTime<chrono::Utc>),
    Permanent,
}

/// Records one attempt and its effect on the delivery.
pub async fn record_attempt(
    tx: &mut PgConnection,
    delivery_id: i64,
    outcome: Outcome,
    error: Option<&str>,
    batch_id: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    let (kind, status, next) = match outcome {
        Outcome::Delivered => ("delivered", "delivered", None),
        Outcome::Transient(at) => ("transient", "pending", Some(at)),
        Outcome::Permanent => ("permanent", "failed", None),
    };
    sqlx::query("insert into delivery_attempts (delivery_id, attempted_at, outcome, error) values ($1, $2, $3, $4)")
        .bind(delivery_id)
        .bind(now)
        .bind(kind)
        .bind(error)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update alert_deliveries set attempts = attempts + 1, status = $2, last_error = coalesce($3, last_error),
            next_attempt_at = coalesce($4, next_attempt_at),
            delivered_at = case when $2 = 'delivered' then $5 else delivered_at end,
            batch_id = coalesce($6, batch_id)
         where id = $1",
    )
    .bind(delivery_id)
    .bind(status)
    .bind(error)
    .bind(next)
    .bind(now)
    .bind(batch_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Warning/info deliveries sent on `channel` since `since` (one by one or batched).
pub async fn recent_non_critical(
    tx: &mut PgConnection,
    channel: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), StoreError> {
    Ok(sqlx::query_as(
        "select count(*), max(d.delivered_at) filter (where d.batch_id is not null)
         from alert_deliveries d join alerts a on a.id = d.alert_id
         where d.channel = $1 and a.severity <> 'critical' and d.status = 'delivered' and d.delivered_at > $2",
    )
    .bind(channel)
    .bind(since)
    .fetch_one(tx)
    .await?)
}

/// One row of `alert_log`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub alert_id: i64,
    pub rule: String,
    pub severity: String,
    pub account_id: String,
    pub public_key: Option<String>,
    pub block_height: i64,
    pub title: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub channel: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn log(conn: &mut PgConnection) -> Result<Vec<LogRow>, StoreError> {
    Ok(
        sqlx::query_as("select * from alert_log order by alert_id, channel")
            .fetch_all(conn)
            .await?,
    )
}

/// Alerts without any delivery channel (none configured when decided).
pub async fn undelivered(
    conn: &mut PgConnection,
) -> Result<Vec<(i64, String, String, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "select a.id, a.rule, a.severity, a.title, a.block_height from alerts a
         where not exists (select 1 from alert_deliveries d where d.alert_id = a.id) order by a.id",
    )
    .fetch_all(conn)
    .await?)
}
