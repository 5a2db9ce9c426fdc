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

/// The dedup key of an alert decided at `block_hash`: a replayed block
/// produces the same key, and so no second alert. An alert about an event
/// (`details.event`: a difference, a deploy) carries it too, so two
/// different events of one account decided at one block are two alerts.
pub fn dedup_key(d: &AlertDraft, block_hash: &str) -> String {
    let mut key = format!(
        "{}|{}|{}|{}",
        d.rule,
        d.account_id,
        d.public_key.as_deref().unwrap_or(""),
        block_hash
    );
    if let Some(event) = d.details.get("event").and_then(serde_json::Value::as_str) {
        // hashed: an event (a permission with 2,000 bytes of method names)
        // may be longer than an index entry can be
        use sha2::Digest;
        key.push('|');
        key.push_str(&hex::encode(sha2::Sha256::digest(event.as_bytes())));
    }
    key
}

/// The state a delivery starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initial {
    Pending,
    /// Decided for an old block (backfill): recorded, never sent.
    Suppressed,
    /// Already sent straight away, before the alert could be written.
    Delivered(chrono::DateTime<chrono::Utc>),
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
    let initial = if send {
        Initial::Pending
    } else {
        Initial::Suppressed
    };
    let deliveries: Vec<(&str, Initial)> = channels.iter().map(|c| (*c, initial)).collect();
    insert_with_key(tx, &dedup_key(d, at.block_hash), d, at, &deliveries).await
}

/// [`insert`] under an explicit dedup key, each delivery in its own state.
pub async fn insert_with_key(
    tx: &mut PgConnection,
    dedup: &str,
    d: &AlertDraft,
    at: &Decided<'_>,
    deliveries: &[(&str, Initial)],
) -> Result<Option<i64>, StoreError> {
    let id: Option<i64> = sqlx::query_scalar(
        "insert into alerts (dedup_key, rule, severity, account_id, public_key, block_height, block_hash, block_time, title, details, suppressed)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict on constraint alerts_dedup_key do nothing returning id",
    )
    .bind(dedup)
    .bind(d.rule)
    .bind(d.severity.as_str())
    .bind(&d.account_id)
    .bind(&d.public_key)
    .bind(height_to_i64("block height", at.block_height)?)
    .bind(at.block_hash)
    .bind(at.block_time)
    .bind(&d.title)
    .bind(&d.details)
    .bind(
        !deliveries.is_empty()
            && deliveries
                .iter()
                .all(|(_, initial)| matches!(initial, Initial::Suppressed)),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else { return Ok(None) };
    for (channel, initial) in deliveries {
        let (status, delivered_at) = match initial {
            Initial::Pending => ("pending", None),
            Initial::Suppressed => ("suppressed", None),
            Initial::Delivered(at) => ("delivered", Some(*at)),
        };
        sqlx::query(
            "insert into alert_deliveries (alert_id, channel, status, delivered_at, attempts)
             values ($1, $2, $3, $4, case when $4::timestamptz is null then 0 else 1 end)
             on conflict on constraint alert_deliveries_alert_channel do nothing",
        )
        .bind(id)
        .bind(*channel)
        .bind(status)
        .bind(delivered_at)
        .execute(&mut *tx)
        .await?;
    }
    if deliveries
        .iter()
        .any(|(_, initial)| matches!(initial, Initial::Pending))
    {
        // Wakes the dispatcher (whichever process leads) when this commits.
        sqlx::query("select pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(Some(id))
}

/// The dispatcher listens here: a notification is sent with every commit
/// that queued a delivery.
pub const OUTBOX_CHANNEL: &str = "keywatch_outbox";

/// When the next pending delivery is due (served by the pending index).
pub async fn next_due(
    conn: &mut PgConnection,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    Ok(sqlx::query_scalar(
        "select min(next_attempt_at) from alert_deliveries where status = 'pending'",
    )
    .fetch_one(conn)
    .await?)
}

/// The last alert of a rule for an account and key, as the decision to
/// fire again needs it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LastAlert {
    pub id: i64,
    pub block_height: i64,
    pub details: serde_json::Value,
    /// Whether the account's drift was corrected after this alert.
    pub fixed_since: bool,
}

/// A question for [`last_alerts`]: the last alert of `rule` for `account`
/// and `public_key` decided at a block time after `since`.
pub struct AskLast<'a> {
    pub rule: &'a str,
    pub account: &'a str,
    pub public_key: Option<&'a str>,
    pub since: chrono::DateTime<chrono::Utc>,
}

/// For each question, the last alert that was not suppressed (a suppressed
/// alert starts no cooldown): one statement, one probe of
/// `alerts_last_of_rule` per question, one answer each, in order.
pub const LAST_ALERTS: &str = "select q.n, l.id, l.block_height, l.details,
            coalesce(w.drift_fixed_at > l.created_at, false) as fixed_since
     from unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
          with ordinality as q(rule, account_id, public_key, since, n)
     left join lateral (
         select a.id, a.block_height, a.details, a.created_at from alerts a
         where a.account_id = q.account_id and a.rule = q.rule
           and coalesce(a.public_key, '') = coalesce(q.public_key, '')
           and a.block_time > q.since and not a.suppressed
         order by a.block_time desc, a.id desc limit 1) l on true
     left join watched_accounts w on w.account_id = q.account_id
     order by q.n";

pub async fn last_alerts(
    tx: &mut PgConnection,
    asked: &[AskLast<'_>],
) -> Result<Vec<Option<LastAlert>>, StoreError> {
    if asked.is_empty() {
        return Ok(vec![]);
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        n: i64,
        id: Option<i64>,
        block_height: Option<i64>,
        details: Option<serde_json::Value>,
        fixed_since: bool,
    }
    let rows: Vec<Row> = sqlx::query_as(LAST_ALERTS)
        .bind(asked.iter().map(|a| a.rule).collect::<Vec<_>>())
        .bind(asked.iter().map(|a| a.account).collect::<Vec<_>>())
        .bind(asked.iter().map(|a| a.public_key).collect::<Vec<_>>())
        .bind(asked.iter().map(|a| a.since).collect::<Vec<_>>())
        .fetch_all(tx)
        .await?;
    let in_order = rows.iter().enumerate().all(|(i, r)| r.n == i as i64 + 1);
    if rows.len() != asked.len() || !in_order {
        return Err(StoreError::Invalid(format!(
            "the last-alert look-up answered {} rows for {} questions",
            rows.len(),
            asked.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|r| match (r.id, r.block_height, r.details) {
            (Some(id), Some(block_height), Some(details)) => Some(LastAlert {
                id,
                block_height,
                details,
                fixed_since: r.fixed_since,
            }),
            _ => None,
        })
        .collect())
}

/// What happens to a decided alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Sent on every channel.
    Send,
    /// Decided for an old block (a backfill): recorded, never sent.
    Suppress,
    /// Within an announced silence: recorded, never sent.
    Silence,
}

impl Disposition {
    fn status(self) -> &'static str {
        match self {
            Disposition::Send => "pending",
            Disposition::Suppress => "suppressed",
            Disposition::Silence => "silenced",
        }
    }
}

/// Inserts alerts decided at one block, each with a delivery per channel
/// in the state its [`Disposition`] says, in one statement; the dedup keys make
/// a replayed block insert nothing, and the outbox is woken once if
/// anything is pending. An alert not sent (suppressed or silenced) starts
/// no cooldown. Returns the rule of each alert that was new.
pub async fn insert_many(
    tx: &mut PgConnection,
    drafts: &[(&AlertDraft, Disposition)],
    at: &Decided<'_>,
    channels: &[&str],
) -> Result<Vec<String>, StoreError> {
    if drafts.is_empty() {
        return Ok(vec![]);
    }
    let keys: Vec<String> = drafts
        .iter()
        .map(|(d, _)| dedup_key(d, at.block_hash))
        .collect();
    let rules: Vec<&str> = drafts.iter().map(|(d, _)| d.rule).collect();
    let severities: Vec<&str> = drafts.iter().map(|(d, _)| d.severity.as_str()).collect();
    let accounts: Vec<&str> = drafts.iter().map(|(d, _)| d.account_id.as_str()).collect();
    let public_keys: Vec<Option<&str>> = drafts
        .iter()
        .map(|(d, _)| d.public_key.as_deref())
        .collect();
    let titles: Vec<&str> = drafts.iter().map(|(d, _)| d.title.as_str()).collect();
    let details: Vec<&serde_json::Value> = drafts.iter().map(|(d, _)| &d.details).collect();
    let statuses: Vec<&str> = drafts.iter().map(|(_, o)| o.status()).collect();
    let (created, pending): (Vec<String>, i64) = sqlx::query_as(
        "with drafts as (
             select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::jsonb[], $8::text[]) with ordinality
                  as d(dedup_key, rule, severity, account_id, public_key, title, details, status, n)),
         created as (
             insert into alerts (dedup_key, rule, severity, account_id, public_key, block_height,
                                 block_hash, block_time, title, details, suppressed)
             select dedup_key, rule, severity, account_id, public_key, $9, $10, $11, title, details,
                    status <> 'pending'
             from drafts order by n
             on conflict on constraint alerts_dedup_key do nothing
             returning id, dedup_key, rule),
         queued as (
             -- in the order the drafts came, channel by channel, as the
             -- dispatcher sends by id
             insert into alert_deliveries (alert_id, channel, status, attempts)
             select c.id, ch.channel, d.status, 0
             from created c join drafts d using (dedup_key),
                  unnest($12::text[]) with ordinality as ch(channel, m)
             order by d.n, ch.m
             on conflict on constraint alert_deliveries_alert_channel do nothing
             returning status)
         select (select coalesce(array_agg(rule), '{}') from created),
                (select count(*) from queued where status = 'pending')",
    )
    .bind(keys)
    .bind(rules)
    .bind(severities)
    .bind(accounts)
    .bind(public_keys)
    .bind(titles)
    .bind(details)
    .bind(statuses)
    .bind(height_to_i64("block height", at.block_height)?)
    .bind(at.block_hash)
    .bind(at.block_time)
    .bind(channels)
    .fetch_one(&mut *tx)
    .await?;
    if pending > 0 {
        // Wakes the dispatcher (whichever process leads) when this commits.
        sqlx::query("select pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(created)
}

/// When keywatch went blind, if the last `ingest_stalled` (of the last day)
/// has no `ingest_recovered` after it: a leader that takes over mid-episode
/// closes it when it makes progress.
pub async fn open_stall(
    conn: &mut PgConnection,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    let since: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "select (s.details->>'blind_since')::timestamptz from alerts s
         where s.rule = 'ingest_stalled' and s.created_at > now() - interval '1 day'
           and not exists (select 1 from alerts r where r.rule = 'ingest_recovered' and r.id > s.id)
         order by s.id desc limit 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(since.flatten())
}

/// A delivery to send, with its alert.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub delivery_id: i64,
    pub alert_id: i64,
    /// What makes the alert unique; its hash is the alert's identity on the wire.
    pub dedup_key: String,
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
    /// The batch this delivery was given to, once one was formed for it.
    pub batch_id: Option<String>,
}

const DELIVERY_COLUMNS: &str = "d.id as delivery_id, a.id as alert_id, a.dedup_key, d.channel, d.attempts, a.rule, a.severity, a.account_id,
    a.public_key, a.block_height, a.block_hash, a.block_time, a.title, a.details, a.created_at, d.batch_id";

/// Pending deliveries due now (skipping rows another transaction holds);
/// each is locked again, one by one, when it is sent.
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

/// Locks one pending delivery for this transaction (skipping one another
/// dispatcher holds).
pub async fn lock_pending(
    tx: &mut PgConnection,
    delivery_id: i64,
) -> Result<Option<Delivery>, StoreError> {
    let sql = format!(
        "select {DELIVERY_COLUMNS} from alert_deliveries d join alerts a on a.id = d.alert_id
         where d.id = $1 and d.status = 'pending' for update of d skip locked"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(delivery_id)
        .fetch_optional(tx)
        .await?)
}

/// Of `ids`, the deliveries still pending, locked for this transaction.
pub async fn lock_pending_ids(tx: &mut PgConnection, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "select id from alert_deliveries where id = any($1) and status = 'pending' for update skip locked",
    )
    .bind(ids)
    .fetch_all(tx)
    .await?)
}

/// The `batch_id` of a pending delivery being sent on its own (cleared when
/// the attempt is recorded).
pub const SENT_ALONE: &str = "alone";

/// Gives pending deliveries that have no batch yet to `batch_id`, committed
/// before the batch is sent: after a crash between the server accepting it
/// and the attempt being recorded, the same members go out again under the
/// same id.
pub async fn form_batch(
    conn: &mut PgConnection,
    ids: &[i64],
    batch_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "update alert_deliveries set batch_id = $2
         where id = any($1) and status = 'pending' and batch_id is null",
    )
    .bind(ids)
    .bind(batch_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A channel works again: deliveries waiting out a long backoff on it are
/// due now, so a recovered channel is not left idle for `retry_max`.
pub async fn retry_now(
    conn: &mut PgConnection,
    channel: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "update alert_deliveries set next_attempt_at = $2
         where channel = $1 and status = 'pending' and next_attempt_at > $2",
    )
    .bind(channel)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Pending deliveries due at `now` (for the drain at shutdown).
pub async fn pending_due(
    conn: &mut PgConnection,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "select count(*) from alert_deliveries where status = 'pending' and next_attempt_at <= $1",
    )
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// A delivery that needs escalating: it ended `failed`, or it is a critical
/// alert still pending after `escalate_after`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stuck {
    pub delivery_id: i64,
    pub alert_id: i64,
    pub channel: String,
    pub status: String,
    pub rule: String,
    pub title: String,
    pub last_error: Option<String>,
    pub block_height: i64,
    pub block_hash: String,
    pub block_time: chrono::DateTime<chrono::Utc>,
}

pub async fn stuck(
    conn: &mut PgConnection,
    pending_before: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Stuck>, StoreError> {
    Ok(sqlx::query_as(
        "select d.id as delivery_id, a.id as alert_id, d.channel, d.status, a.rule, a.title, d.last_error,
                a.block_height, a.block_hash, a.block_time
         from alert_deliveries d join alerts a on a.id = d.alert_id
         where not d.escalated and a.rule <> 'delivery_failing'
           and (d.status = 'failed'
                or (d.status = 'pending' and a.severity = 'critical' and a.created_at < $1))
         order by d.id",
    )
    .bind(pending_before)
    .fetch_all(conn)
    .await?)
}

/// Critical deliveries pending since before `pending_before`, and
/// deliveries that ended `failed` since `failed_since`: what `/ready`
/// reports until it is resolved.
pub async fn outbox_problems(
    conn: &mut PgConnection,
    pending_before: chrono::DateTime<chrono::Utc>,
    failed_since: chrono::DateTime<chrono::Utc>,
) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "select count(*) filter (where d.status = 'pending' and a.severity = 'critical' and a.created_at < $1),
                count(*) filter (where d.status = 'failed' and a.created_at >= $2)
         from alert_deliveries d join alerts a on a.id = d.alert_id
         where d.status in ('pending', 'failed')",
    )
    .bind(pending_before)
    .bind(failed_since)
    .fetch_one(conn)
    .await?)
}

pub async fn mark_escalated(conn: &mut PgConnection, delivery_id: i64) -> Result<(), StoreError> {
    sqlx::query("update alert_deliveries set escalated = true where id = $1")
        .bind(delivery_id)
        .execute(conn)
        .await?;
    Ok(())
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
            batch_id = $6
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
    /// The block of the change the alert is about (for a window rule,
    /// before the deciding `block_height`), with its transaction and
    /// receipt when known.
    pub change_block_height: i64,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
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

/// For the rest of the transaction, `alerts` and `alert_deliveries` name
/// empty temporary copies (the session's temporary schema is searched
/// first), so a replay of the rules neither sees nor locks the live outbox.
/// They are dropped with the transaction.
pub async fn shadow_outbox(tx: &mut PgConnection) -> Result<(), StoreError> {
    for sql in [
        "create temporary table alerts (like public.alerts including defaults) on commit drop",
        "alter table pg_temp.alerts add constraint alerts_dedup_key unique (dedup_key)",
        "create temporary table alert_deliveries (like public.alert_deliveries including defaults) on commit drop",
        "alter table pg_temp.alert_deliveries add constraint alert_deliveries_alert_channel unique (alert_id, channel)",
    ] {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    Ok(())
}

/// An alert as one line: what `keywatch demo` prints as it is decided.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Headline {
    pub id: i64,
    pub block_height: i64,
    pub severity: String,
    pub title: String,
}

/// The alerts after `after_id`, oldest first.
pub async fn headlines_after(
    conn: &mut PgConnection,
    after_id: i64,
) -> Result<Vec<Headline>, StoreError> {
    Ok(sqlx::query_as(
        "select id, block_height, severity, title from alerts where id > $1 order by id",
    )
    .bind(after_id)
    .fetch_all(conn)
    .await?)
}

/// How many alerts there are, and of their deliveries how many were
/// delivered and how many did not go out (pending or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Tally {
    pub alerts: i64,
    pub delivered: i64,
    pub undelivered: i64,
}

pub async fn tally(conn: &mut PgConnection) -> Result<Tally, StoreError> {
    Ok(sqlx::query_as(
        "select (select count(*) from alerts) as alerts,
                count(*) filter (where status = 'delivered') as delivered,
                count(*) filter (where status in ('pending', 'failed')) as undelivered
         from alert_deliveries",
    )
    .fetch_one(conn)
    .await?)
}
