//! The look-ups into history the window rules (`allowance_drain`,
//! `balance_drop`) make, each answered by one probe of an index
//! (see migrations/…_history_indexes.sql), so a busy key with a year of
//! writes costs what a new one does. The statements are public so the
//! index test can `EXPLAIN` exactly these.

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::store::StoreError;

/// The height `$2` stored blocks below `$1` (blocks skipped by a gap do not
/// count).
pub const SETTLED_BLOCK: &str = "select block_height from blocks where block_height <= $1
     order by block_height desc offset $2 limit 1";

/// Function-call and gas keys a block's chain writes touched.
pub const KEYS_WRITTEN_AT: &str = "select distinct account_id, public_key from key_events
     where block_height = $1 and source = 'chain'
       and permission in ('function_call', 'gas_key_function_call', 'gas_key_full_access')";

/// Accounts whose balance a block's chain writes set.
pub const ACCOUNTS_WRITTEN_AT: &str = "select distinct account_id from balance_events
     where block_height = $1 and source = 'chain' and not deleted";

/// A key's last write at or before a height.
pub const KEY_AT: &str = "select action, allowance, gas_key_balance from key_events
     where account_id = $1 and public_key = $2 and block_height <= $3 and action <> 'nonce_slot'
     order by block_height desc, source_rank desc, index_in_block desc limit 1";

/// The block time of a key's last addition at or before a height.
pub const KEY_ADDED_AT: &str = "select b.block_timestamp_ns from key_events e
     join blocks b on b.block_hash = e.block_hash
     where e.account_id = $1 and e.public_key = $2 and e.action = 'added' and e.block_height <= $3
     order by e.block_height desc limit 1";

/// A key's value at the last block at or before a time, or, when keywatch
/// knows nothing of it that early, the earliest value it knows.
pub const KEY_BEFORE: &str = "(select allowance, gas_key_balance, 0 as later from key_events
      where account_id = $1 and public_key = $2 and action <> 'nonce_slot' and action <> 'deleted'
        and block_height <= coalesce((select block_height from blocks where block_timestamp_ns <= $3
                                      order by block_timestamp_ns desc limit 1), -1)
      order by block_height desc, source_rank desc, index_in_block desc limit 1)
     union all
     (select allowance, gas_key_balance, 1 as later from key_events
      where account_id = $1 and public_key = $2 and action <> 'nonce_slot' and action <> 'deleted'
        and block_height > coalesce((select block_height from blocks where block_timestamp_ns <= $3
                                     order by block_timestamp_ns desc limit 1), -1)
      order by block_height, source_rank, index_in_block limit 1)
     order by later limit 1";

/// An account's last balance write at or before a height.
pub const BALANCE_AT: &str = "select amount, locked, deleted from balance_events
     where account_id = $1 and block_height <= $2
     order by block_height desc, source_rank desc, index_in_block desc limit 1";

/// An account's balance at the last block at or before a time, or the
/// earliest one keywatch knows.
pub const BALANCE_BEFORE: &str = "(select amount, locked, 0 as later from balance_events
      where account_id = $1 and not deleted
        and block_height <= coalesce((select block_height from blocks where block_timestamp_ns <= $2
                                      order by block_timestamp_ns desc limit 1), -1)
      order by block_height desc, source_rank desc, index_in_block desc limit 1)
     union all
     (select amount, locked, 1 as later from balance_events
      where account_id = $1 and not deleted
        and block_height > coalesce((select block_height from blocks where block_timestamp_ns <= $2
                                     order by block_timestamp_ns desc limit 1), -1)
      order by block_height, source_rank, index_in_block limit 1)
     order by later limit 1";

pub async fn settled_block(
    conn: &mut PgConnection,
    height: i64,
    settle: u32,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(SETTLED_BLOCK)
        .bind(height)
        .bind(i64::from(settle))
        .fetch_optional(conn)
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

/// A key's last write.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyWriteRow {
    pub action: String,
    pub allowance: Option<BigDecimal>,
    pub gas_key_balance: Option<BigDecimal>,
}

pub async fn key_at(
    conn: &mut PgConnection,
    account: &str,
    key: &str,
    height: i64,
) -> Result<Option<KeyWriteRow>, StoreError> {
    Ok(sqlx::query_as(KEY_AT)
        .bind(account)
        .bind(key)
        .bind(height)
        .fetch_optional(conn)
        .await?)
}

pub async fn key_added_at(
    conn: &mut PgConnection,
    account: &str,
    key: &str,
    height: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(KEY_ADDED_AT)
        .bind(account)
        .bind(key)
        .bind(height)
        .fetch_optional(conn)
        .await?)
}

/// A key's allowance and gas-key balance.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyValues {
    pub allowance: Option<BigDecimal>,
    pub gas_key_balance: Option<BigDecimal>,
}

pub async fn key_before(
    conn: &mut PgConnection,
    account: &str,
    key: &str,
    start_ns: i64,
) -> Result<Option<KeyValues>, StoreError> {
    Ok(sqlx::query_as(KEY_BEFORE)
        .bind(account)
        .bind(key)
        .bind(start_ns)
        .fetch_optional(conn)
        .await?)
}

/// An account's balance as one write left it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BalanceValues {
    pub amount: Option<BigDecimal>,
    pub locked: Option<BigDecimal>,
}

/// [`BalanceValues`] with whether the write deleted the account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BalanceWrite {
    pub amount: Option<BigDecimal>,
    pub locked: Option<BigDecimal>,
    pub deleted: bool,
}

pub async fn balance_at(
    conn: &mut PgConnection,
    account: &str,
    height: i64,
) -> Result<Option<BalanceWrite>, StoreError> {
    Ok(sqlx::query_as(BALANCE_AT)
        .bind(account)
        .bind(height)
        .fetch_optional(conn)
        .await?)
}

pub async fn balance_before(
    conn: &mut PgConnection,
    account: &str,
    start_ns: i64,
) -> Result<Option<BalanceValues>, StoreError> {
    Ok(sqlx::query_as(BALANCE_BEFORE)
        .bind(account)
        .bind(start_ns)
        .fetch_optional(conn)
        .await?)
}
