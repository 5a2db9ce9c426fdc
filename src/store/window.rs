//! The look-ups into history the window rules (`allowance_drain`,
//! `balance_drop`) make, each answered by one probe of an index
//! (see migrations/…_history_indexes.sql), so a busy key with a year of
//! writes costs what a new one does. The statements are public so the
//! index test can `EXPLAIN` exactly these.

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::store::StoreError;

/// The block `$2` stored blocks below height `$1` (blocks skipped by a gap
/// do not count).
pub const SETTLED_BLOCK: &str = "select block_height, block_hash, block_timestamp_ns from blocks
     where block_height <= $1 order by block_height desc offset $2 limit 1";

/// The last `$2` stored blocks at or below height `$1`, newest first.
pub const BLOCKS_UP_TO: &str = "select block_height, block_hash, block_timestamp_ns from blocks
     where block_height <= $1 order by block_height desc limit $2";

/// Function-call and gas keys a block's chain writes touched.
pub const KEYS_WRITTEN_AT: &str = "select distinct account_id, public_key from key_events
     where block_height = $1 and source = 'chain'
       and permission in ('function_call', 'gas_key_function_call', 'gas_key_full_access')";

/// Accounts whose balance a block's chain writes set.
pub const ACCOUNTS_WRITTEN_AT: &str = "select distinct account_id from balance_events
     where block_height = $1 and source = 'chain' and not deleted";

/// For each key (`$1` accounts, `$2` keys, `$3` window starts in ns, one
/// per key; `n` is its position, from 1), judged at height `$4` for its
/// write settled at height `$5`: its last write at or before `$5` (`action`
/// null if none); every increase of its allowance or gas-key balance that
/// landed in (`$5`, `$4`], write by write (a refund; a decrease there is
/// judged at its own deciding block, and a re-addition after a deletion is
/// no increase); and its value at the start of its window, which begins no
/// earlier than its last addition at or before `$5` nor before the
/// tracking period `$5` is in (a value from before a `watch remove` /
/// `watch add` or an accepted gap is never compared with): the value at
/// the last block at or before that time or, when keywatch knows nothing
/// of the key that early in the period, the earliest value it knows in it.
/// Every look-up is one probe of an index, or a range of it no longer than
/// the settle delay.
pub const KEYS_IN_WINDOW: &str = "select r.n, at.action, at.allowance, at.gas_key_balance, at.tx_hash, at.receipt_hash,
            up.allowance as refunded_allowance, up.gas_key_balance as refunded_gas_key_balance,
            before.allowance as before_allowance, before.gas_key_balance as before_gas_key_balance
     from unnest($1::text[], $2::text[], $3::bigint[]) with ordinality as r(account_id, public_key, window_start, n)
     left join lateral (
         select action, allowance, gas_key_balance, tx_hash, receipt_hash from key_events
         where account_id = r.account_id and public_key = r.public_key and block_height <= $5
           and action <> 'nonce_slot'
         order by block_height desc, source_rank desc, index_in_block desc limit 1) at on true
     left join lateral (
         select coalesce(sum(greatest(x.allowance - x.prev_allowance, 0)), 0) as allowance,
                coalesce(sum(greatest(x.gas_key_balance - x.prev_gas_key_balance, 0)), 0) as gas_key_balance
         from (select allowance, gas_key_balance,
                      lag(allowance, 1, at.allowance) over w as prev_allowance,
                      lag(gas_key_balance, 1, at.gas_key_balance) over w as prev_gas_key_balance
               from key_events
               where account_id = r.account_id and public_key = r.public_key
                 and block_height > $5 and block_height <= $4 and action <> 'nonce_slot'
               window w as (order by block_height, source_rank, index_in_block)) x) up on true
     left join lateral (
         select b.block_timestamp_ns as added_ns from key_events e
         join blocks b on b.block_hash = e.block_hash
         where e.account_id = r.account_id and e.public_key = r.public_key and e.action = 'added'
           and e.block_height <= $5
         order by e.block_height desc limit 1) added on true
     left join lateral (
         select coalesce((select from_height from tracking_spans
                          where account_id = r.account_id and from_height <= $5
                          order by from_height desc limit 1), -1) as from_height) span on true
     left join lateral (
         select coalesce((select block_height from blocks
                          where block_timestamp_ns <= greatest(r.window_start, added.added_ns)
                          order by block_timestamp_ns desc limit 1), -1) as height) start on true
     left join lateral (
         (select allowance, gas_key_balance, 0 as later from key_events
          where account_id = r.account_id and public_key = r.public_key
            and action <> 'nonce_slot' and action <> 'deleted'
            and block_height <= start.height and block_height >= span.from_height
          order by block_height desc, source_rank desc, index_in_block desc limit 1)
         union all
         (select allowance, gas_key_balance, 1 as later from key_events
          where account_id = r.account_id and public_key = r.public_key
            and action <> 'nonce_slot' and action <> 'deleted'
            and block_height > start.height and block_height >= span.from_height
          order by block_height, source_rank, index_in_block limit 1)
         order by later limit 1) before on true
     order by r.n";

/// For each account (`$1` accounts, `$2` window starts in ns; `n` its
/// position, from 1), judged at height `$3` for its write settled at height
/// `$4`: its last balance write at or before `$4` (`deleted` null if none),
/// every increase of its amount that landed in (`$4`, `$3`], write by
/// write, and its balance at the last block at or before its window's
/// start, or the earliest one keywatch knows, both within the tracking
/// period `$4` is in.
pub const BALANCES_IN_WINDOW: &str =
    "select r.n, at.amount, at.locked, at.deleted, at.tx_hash, at.receipt_hash,
            up.amount as refunded_amount,
            before.amount as before_amount, before.locked as before_locked
     from unnest($1::text[], $2::bigint[]) with ordinality as r(account_id, window_start, n)
     left join lateral (
         select amount, locked, deleted, tx_hash, receipt_hash from balance_events
         where account_id = r.account_id and block_height <= $4
         order by block_height desc, source_rank desc, index_in_block desc limit 1) at on true
     left join lateral (
         select coalesce(sum(greatest(x.amount - x.prev_amount, 0)), 0) as amount
         from (select amount, lag(amount, 1, at.amount) over w as prev_amount
               from balance_events
               where account_id = r.account_id and block_height > $4 and block_height <= $3
               window w as (order by block_height, source_rank, index_in_block)) x) up on true
     left join lateral (
         select coalesce((select from_height from tracking_spans
                          where account_id = r.account_id and from_height <= $4
                          order by from_height desc limit 1), -1) as from_height) span on true
     left join lateral (
         select coalesce((select block_height from blocks where block_timestamp_ns <= r.window_start
                          order by block_timestamp_ns desc limit 1), -1) as height) start on true
     left join lateral (
         (select amount, locked, 0 as later from balance_events
          where account_id = r.account_id and not deleted
            and block_height <= start.height and block_height >= span.from_height
          order by block_height desc, source_rank desc, index_in_block desc limit 1)
         union all
         (select amount, locked, 1 as later from balance_events
          where account_id = r.account_id and not deleted
            and block_height > start.height and block_height >= span.from_height
          order by block_height, source_rank, index_in_block limit 1)
         order by later limit 1) before on true
     order by r.n";

/// A stored block's height, hash and time (ns).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredBlock {
    pub block_height: i64,
    pub block_hash: String,
    pub block_timestamp_ns: i64,
}

/// The settled block.
pub async fn settled_block(
    conn: &mut PgConnection,
    height: i64,
    settle: u32,
) -> Result<Option<StoredBlock>, StoreError> {
    Ok(sqlx::query_as(SETTLED_BLOCK)
        .bind(height)
        .bind(i64::from(settle))
        .fetch_optional(conn)
        .await?)
}

pub async fn blocks_up_to(
    conn: &mut PgConnection,
    height: i64,
    count: i64,
) -> Result<Vec<StoredBlock>, StoreError> {
    Ok(sqlx::query_as(BLOCKS_UP_TO)
        .bind(height)
        .bind(count)
        .fetch_all(conn)
        .await?)
}

/// A key written in a block, as (account id, public key).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WrittenKey {
    pub account_id: String,
    pub public_key: String,
}

pub async fn keys_written_at(
    conn: &mut PgConnection,
    height: i64,
) -> Result<Vec<WrittenKey>, StoreError> {
    Ok(sqlx::query_as(KEYS_WRITTEN_AT)
        .bind(height)
        .fetch_all(conn)
        .await?)
}

pub async fn accounts_written_at(
    conn: &mut PgConnection,
    height: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(ACCOUNTS_WRITTEN_AT)
        .bind(height)
        .fetch_all(conn)
        .await?)
}

/// What [`KEYS_IN_WINDOW`] finds for one key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyWindow {
    pub n: i64,
    /// `None` when the key has no write at or before the judged height.
    pub action: Option<String>,
    pub allowance: Option<BigDecimal>,
    pub gas_key_balance: Option<BigDecimal>,
    /// The transaction and receipt of that last write (the change judged).
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
    /// Increases (refunds) after the settled write, up to the judged height.
    pub refunded_allowance: BigDecimal,
    pub refunded_gas_key_balance: BigDecimal,
    pub before_allowance: Option<BigDecimal>,
    pub before_gas_key_balance: Option<BigDecimal>,
}

/// A key to judge: account, public key, and where its window starts (ns).
pub struct WindowKey<'a> {
    pub account_id: &'a str,
    pub public_key: &'a str,
    pub window_start_ns: i64,
}

/// [`KEYS_IN_WINDOW`] for `keys`, judged at `judged` for their writes
/// settled at `settled`: one answer per key, in order.
pub async fn keys_in_window(
    conn: &mut PgConnection,
    keys: &[WindowKey<'_>],
    judged: i64,
    settled: i64,
) -> Result<Vec<KeyWindow>, StoreError> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let accounts: Vec<&str> = keys.iter().map(|k| k.account_id).collect();
    let public_keys: Vec<&str> = keys.iter().map(|k| k.public_key).collect();
    let starts: Vec<i64> = keys.iter().map(|k| k.window_start_ns).collect();
    let rows: Vec<KeyWindow> = sqlx::query_as(KEYS_IN_WINDOW)
        .bind(accounts)
        .bind(public_keys)
        .bind(starts)
        .bind(judged)
        .bind(settled)
        .fetch_all(conn)
        .await?;
    one_answer_each(rows, keys.len(), |r| r.n)
}

/// What [`BALANCES_IN_WINDOW`] finds for one account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BalanceWindow {
    pub n: i64,
    pub amount: Option<BigDecimal>,
    pub locked: Option<BigDecimal>,
    /// `None` when the account has no balance write at or before the height.
    pub deleted: Option<bool>,
    /// The transaction and receipt of that last write (the change judged).
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
    /// Increases after the settled write, up to the judged height.
    pub refunded_amount: BigDecimal,
    pub before_amount: Option<BigDecimal>,
    pub before_locked: Option<BigDecimal>,
}

/// [`BALANCES_IN_WINDOW`] for `(account, window start)` pairs, judged at
/// `judged` for their writes settled at `settled`: one answer per account,
/// in order.
pub async fn balances_in_window(
    conn: &mut PgConnection,
    accounts: &[(&str, i64)],
    judged: i64,
    settled: i64,
) -> Result<Vec<BalanceWindow>, StoreError> {
    if accounts.is_empty() {
        return Ok(vec![]);
    }
    let names: Vec<&str> = accounts.iter().map(|a| a.0).collect();
    let starts: Vec<i64> = accounts.iter().map(|a| a.1).collect();
    let rows: Vec<BalanceWindow> = sqlx::query_as(BALANCES_IN_WINDOW)
        .bind(names)
        .bind(starts)
        .bind(judged)
        .bind(settled)
        .fetch_all(conn)
        .await?;
    one_answer_each(rows, accounts.len(), |r| r.n)
}

/// Checks that a batched look-up answered each question once, in order.
fn one_answer_each<T>(
    rows: Vec<T>,
    asked: usize,
    n: impl Fn(&T) -> i64,
) -> Result<Vec<T>, StoreError> {
    let in_order = rows.iter().enumerate().all(|(i, r)| n(r) == i as i64 + 1);
    if rows.len() != asked || !in_order {
        return Err(StoreError::Invalid(format!(
            "a batched window look-up answered {} rows for {asked} questions",
            rows.len()
        )));
    }
    Ok(rows)
}
