//! Balance rows, current account state, and the `history` listing.

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::domain::{AccountId, AccountState, Cause, Yocto};
use crate::store::StoreError;
use crate::store::convert::{height_to_i64, i64_to_height, numeric_to_yocto, yocto_to_numeric};

/// One row of `balance_events`; `state: None` records the account's deletion.
pub struct BalanceRow<'a> {
    pub account_id: &'a AccountId,
    pub block_hash: &'a str,
    pub block_height: u64,
    pub index_in_block: i32,
    pub state: Option<&'a AccountState>,
    pub cause: Option<&'a Cause>,
    pub source: &'a str,
    /// The write set a new code_hash or a global contract.
    pub contract_changed: bool,
}

/// Inserts a balance history row; a replay of the same row is a no-op.
pub async fn insert_balance_row(
    tx: &mut PgConnection,
    row: &BalanceRow<'_>,
) -> Result<bool, StoreError> {
    let state = row.state;
    let cause = row.cause;
    let result = sqlx::query(
        "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount, locked,
            storage_usage, code_hash, global_contract_hash, global_contract_account_id, deleted, cause,
            tx_hash, receipt_hash, source, contract_changed)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         on conflict on constraint balance_events_natural_key do nothing",
    )
    .bind(row.account_id.as_str())
    .bind(height_to_i64("block height", row.block_height)?)
    .bind(row.block_hash)
    .bind(row.index_in_block)
    .bind(state.map(|s| yocto_to_numeric(s.amount)))
    .bind(state.map(|s| yocto_to_numeric(s.locked)))
    .bind(state.map(|s| height_to_i64("storage usage", s.storage_usage)).transpose()?)
    .bind(state.map(|s| s.code_hash.as_str().to_owned()))
    .bind(state.and_then(|s| s.global_contract_hash.as_ref()).map(|h| h.as_str().to_owned()))
    .bind(state.and_then(|s| s.global_contract_account_id.as_ref()).map(|a| a.as_str().to_owned()))
    .bind(state.is_none())
    .bind(cause.map(|c| c.kind.name().to_owned()))
    .bind(cause.and_then(|c| c.tx_hash.as_ref()).map(|h| h.as_str().to_owned()))
    .bind(cause.and_then(|c| c.receipt_hash.as_ref()).map(|h| h.as_str().to_owned()))
    .bind(row.source)
    .bind(row.contract_changed)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Sets the end-of-block state; `None` marks the account deleted.
pub async fn upsert_account_state(
    tx: &mut PgConnection,
    account: &AccountId,
    state: Option<&AccountState>,
    height: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into current_accounts (account_id, amount, locked, storage_usage, code_hash,
            global_contract_hash, global_contract_account_id, deleted, updated_at_height)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (account_id) do update set amount = excluded.amount, locked = excluded.locked,
            storage_usage = excluded.storage_usage, code_hash = excluded.code_hash,
            global_contract_hash = excluded.global_contract_hash,
            global_contract_account_id = excluded.global_contract_account_id,
            deleted = excluded.deleted, updated_at_height = excluded.updated_at_height",
    )
    .bind(account.as_str())
    .bind(state.map(|s| yocto_to_numeric(s.amount)))
    .bind(state.map(|s| yocto_to_numeric(s.locked)))
    .bind(
        state
            .map(|s| height_to_i64("storage usage", s.storage_usage))
            .transpose()?,
    )
    .bind(state.map(|s| s.code_hash.as_str().to_owned()))
    .bind(
        state
            .and_then(|s| s.global_contract_hash.as_ref())
            .map(|h| h.as_str().to_owned()),
    )
    .bind(
        state
            .and_then(|s| s.global_contract_account_id.as_ref())
            .map(|a| a.as_str().to_owned()),
    )
    .bind(state.is_none())
    .bind(height_to_i64("block height", height)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One line of `keywatch history`: a key write or a balance row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryEntry {
    Key {
        block_height: u64,
        block_time: chrono::DateTime<chrono::Utc>,
        index_in_block: i32,
        public_key: String,
        action: String,
        permission: Option<String>,
        allowance: Option<Yocto>,
        gas_key_balance: Option<Yocto>,
        nonce: Option<String>,
        cause: Option<String>,
        tx_hash: Option<String>,
        receipt_hash: Option<String>,
        source: String,
    },
    Balance {
        block_height: u64,
        block_time: chrono::DateTime<chrono::Utc>,
        index_in_block: i32,
        amount: Option<Yocto>,
        locked: Option<Yocto>,
        code_hash: Option<String>,
        deleted: bool,
        cause: Option<String>,
        tx_hash: Option<String>,
        receipt_hash: Option<String>,
        source: String,
    },
}

impl HistoryEntry {
    fn sort_key(&self) -> (u64, u8, i32) {
        match self {
            HistoryEntry::Key {
                block_height,
                index_in_block,
                ..
            } => (*block_height, 0, *index_in_block),
            HistoryEntry::Balance {
                block_height,
                index_in_block,
                ..
            } => (*block_height, 1, *index_in_block),
        }
    }
}

type KeyHist = (
    i64,
    chrono::DateTime<chrono::Utc>,
    i32,
    String,
    String,
    Option<String>,
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);
type BalHist = (
    i64,
    chrono::DateTime<chrono::Utc>,
    i32,
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// Every key event of an account (`keywatch history`).
pub const HISTORY_KEYS: &str =
    "select block_height, block_time, index_in_block, public_key, action, permission,
            allowance, gas_key_balance, nonce, cause, tx_hash, receipt_hash, source
     from key_history where account_id = $1";

/// Every balance event of an account (`keywatch history`).
pub const HISTORY_BALANCES: &str =
    "select block_height, block_time, index_in_block, amount, locked, code_hash,
            deleted, cause, tx_hash, receipt_hash, source
     from balance_history where account_id = $1";

/// Key and balance events of an account, oldest first (through the views).
pub async fn history(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let amount =
        |what, n: Option<BigDecimal>| n.as_ref().map(|n| numeric_to_yocto(what, n)).transpose();
    let keys: Vec<KeyHist> = sqlx::query_as(HISTORY_KEYS)
        .bind(account.as_str())
        .fetch_all(&mut *conn)
        .await?;
    let balances: Vec<BalHist> = sqlx::query_as(HISTORY_BALANCES)
        .bind(account.as_str())
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(keys.len() + balances.len());
    for k in keys {
        out.push(HistoryEntry::Key {
            block_height: i64_to_height("block height", k.0)?,
            block_time: k.1,
            index_in_block: k.2,
            public_key: k.3,
            action: k.4,
            permission: k.5,
            allowance: amount("allowance", k.6)?,
            gas_key_balance: amount("gas key balance", k.7)?,
            nonce: k.8.map(|n| n.with_scale(0).to_string()),
            cause: k.9,
            tx_hash: k.10,
            receipt_hash: k.11,
            source: k.12,
        });
    }
    for b in balances {
        out.push(HistoryEntry::Balance {
            block_height: i64_to_height("block height", b.0)?,
            block_time: b.1,
            index_in_block: b.2,
            amount: amount("amount", b.3)?,
            locked: amount("locked", b.4)?,
            code_hash: b.5,
            deleted: b.6,
            cause: b.7,
            tx_hash: b.8,
            receipt_hash: b.9,
            source: b.10,
        });
    }
    out.sort_by_key(HistoryEntry::sort_key);
    Ok(out)
}

/// An account's stored columns (amount, locked, storage_usage, code_hash,
/// global_contract_hash, global_contract_account_id), as read from
/// `current_accounts` or `balance_events`.
pub type AccountColumns = (
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The account state those columns hold; every required column must be set.
pub fn account_state(account: &str, c: AccountColumns) -> Result<AccountState, StoreError> {
    let (amount, locked, storage, code, gch, gca) = c;
    let bad =
        |what: &str| StoreError::Invalid(format!("stored state of {account} has a bad {what}"));
    let hash =
        |h: Option<String>, what: &str| -> Result<Option<crate::domain::CryptoHash>, StoreError> {
            h.map(|h| crate::domain::CryptoHash::parse(&h).map_err(|_| bad(what)))
                .transpose()
        };
    Ok(AccountState {
        amount: numeric_to_yocto("amount", amount.as_ref().ok_or_else(|| bad("amount"))?)?,
        locked: numeric_to_yocto("locked", locked.as_ref().ok_or_else(|| bad("locked"))?)?,
        storage_usage: i64_to_height(
            "storage usage",
            storage.ok_or_else(|| bad("storage usage"))?,
        )?,
        code_hash: hash(code, "code hash")?.ok_or_else(|| bad("code hash"))?,
        global_contract_hash: hash(gch, "global contract hash")?,
        global_contract_account_id: gca
            .map(|a| AccountId::parse(&a).map_err(|_| bad("global contract account")))
            .transpose()?,
    })
}

/// An account row with its `deleted` flag, as `current_accounts` and
/// `balance_events` both store it.
type StateRow = (
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

/// `None` for a row recording a deletion, else the state it holds.
fn state_or_deleted(
    account: &AccountId,
    row: StateRow,
) -> Result<Option<AccountState>, StoreError> {
    match row {
        (.., true) => Ok(None),
        (amount, locked, storage, code, gch, gca, false) => Ok(Some(account_state(
            account.as_str(),
            (amount, locked, storage, code, gch, gca),
        )?)),
    }
}

/// The end-of-block state of a watched account: `None` if unknown,
/// `Some(None)` if deleted.
pub async fn load_account(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<Option<Option<AccountState>>, StoreError> {
    let row: Option<StateRow> = sqlx::query_as(
        "select amount, locked, storage_usage, code_hash, global_contract_hash, global_contract_account_id, deleted
         from current_accounts where account_id = $1",
    )
    .bind(account.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(|r| state_or_deleted(account, r)).transpose()
}

/// An account's last balance write in `$2..=$3`.
pub const ACCOUNT_AT: &str =
    "select amount, locked, storage_usage, code_hash, global_contract_hash,
            global_contract_account_id, deleted
     from balance_events where account_id = $1 and block_height between $2 and $3
     order by block_height desc, source_rank desc, index_in_block desc
     limit 1";

/// The account's state at the end of block `height` from history, within
/// the tracking span that covers it: `None` if nothing is recorded there,
/// `Some(None)` if it was deleted (or did not exist at its baseline).
pub async fn account_at(
    conn: &mut PgConnection,
    account: &AccountId,
    height: u64,
) -> Result<Option<Option<AccountState>>, StoreError> {
    let Some(from) = crate::store::keys::span_start(conn, account, height).await? else {
        return Ok(None);
    };
    // As in keys_at: a baseline or reconcile row states the end of its block.
    let row: Option<StateRow> = sqlx::query_as(ACCOUNT_AT)
        .bind(account.as_str())
        .bind(from)
        .bind(crate::store::convert::height_to_i64("height", height)?)
        .fetch_optional(conn)
        .await?;
    row.map(|r| state_or_deleted(account, r)).transpose()
}
