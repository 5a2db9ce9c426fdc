//! What `rules test` reads back to replay stored blocks: the blocks of a
//! range, the accounts each wrote to, and each account's chain writes in
//! it. Every statement is served by an index (see `tests/it/indexes.rs`).

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::store::StoreError;

pub const BLOCKS_BETWEEN: &str = "select block_hash, block_height, prev_hash, block_timestamp_ns
     from blocks where block_height between $1 and $2 order by block_height";

pub const ACCOUNTS_IN_BLOCK: &str =
    "select account_id from key_events where block_height = $1 and source = 'chain'
     union select account_id from balance_events where block_height = $1 and source = 'chain'
     order by 1";

pub const KEY_WRITES_IN_BLOCK: &str =
    "select public_key, action, permission_raw, by_account_deletion, tx_hash, receipt_hash
     from key_events where account_id = $1 and block_hash = $2 and source = 'chain'
     order by index_in_block";

pub const BALANCE_WRITES_IN_BLOCK: &str =
    "select deleted, contract_changed, amount, locked, storage_usage, code_hash,
            global_contract_hash, global_contract_account_id, tx_hash, receipt_hash
     from balance_events where account_id = $1 and block_hash = $2 and source = 'chain'
     order by index_in_block";

/// Unknown changes keep their whole wire form, cause included.
pub const UNKNOWN_IN_BLOCK: &str = "select change_type, raw->'cause'->>'tx_hash' as tx_hash,
            raw->'cause'->>'receipt_hash' as receipt_hash
     from unknown_changes where account_id = $1 and block_hash = $2 order by index_in_block";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredBlock {
    pub block_hash: String,
    pub block_height: i64,
    pub prev_hash: String,
    pub block_timestamp_ns: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredKeyWrite {
    pub public_key: String,
    pub action: String,
    pub permission_raw: Option<serde_json::Value>,
    pub by_account_deletion: bool,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredBalanceWrite {
    pub deleted: bool,
    pub contract_changed: bool,
    pub amount: Option<BigDecimal>,
    pub locked: Option<BigDecimal>,
    pub storage_usage: Option<i64>,
    pub code_hash: Option<String>,
    pub global_contract_hash: Option<String>,
    pub global_contract_account_id: Option<String>,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

pub async fn blocks_between(
    conn: &mut PgConnection,
    from: i64,
    to: i64,
) -> Result<Vec<StoredBlock>, StoreError> {
    Ok(sqlx::query_as(BLOCKS_BETWEEN)
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?)
}

pub async fn accounts_in_block(
    conn: &mut PgConnection,
    height: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(ACCOUNTS_IN_BLOCK)
        .bind(height)
        .fetch_all(conn)
        .await?)
}

pub async fn key_writes_in_block(
    conn: &mut PgConnection,
    account: &str,
    block_hash: &str,
) -> Result<Vec<StoredKeyWrite>, StoreError> {
    Ok(sqlx::query_as(KEY_WRITES_IN_BLOCK)
        .bind(account)
        .bind(block_hash)
        .fetch_all(conn)
        .await?)
}

pub async fn balance_writes_in_block(
    conn: &mut PgConnection,
    account: &str,
    block_hash: &str,
) -> Result<Vec<StoredBalanceWrite>, StoreError> {
    Ok(sqlx::query_as(BALANCE_WRITES_IN_BLOCK)
        .bind(account)
        .bind(block_hash)
        .fetch_all(conn)
        .await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredUnknown {
    pub change_type: String,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

pub async fn unknown_in_block(
    conn: &mut PgConnection,
    account: &str,
    block_hash: &str,
) -> Result<Vec<StoredUnknown>, StoreError> {
    Ok(sqlx::query_as(UNKNOWN_IN_BLOCK)
        .bind(account)
        .bind(block_hash)
        .fetch_all(conn)
        .await?)
}
