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
    Ok(insert_balance_rows(tx, std::slice::from_ref(row)).await? == 1)
}

/// `balance_events` or `current_accounts` columns of account states, one
/// array per column for `unnest`; `None` (a deletion) leaves them null.
#[derive(Default)]
struct StateColumns {
    amount: Vec<Option<BigDecimal>>,
    locked: Vec<Option<BigDecimal>>,
    storage_usage: Vec<Option<i64>>,
    code_hash: Vec<Option<String>>,
    global_contract_hash: Vec<Option<String>>,
    global_contract_account_id: Vec<Option<String>>,
    deleted: Vec<bool>,
}

impl StateColumns {
    /// Binds the seven arrays, in the order of the struct's fields.
    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.amount)
            .bind(self.locked)
            .bind(self.storage_usage)
            .bind(self.code_hash)
            .bind(self.global_contract_hash)
            .bind(self.global_contract_account_id)
            .bind(self.deleted)
    }

    fn push(&mut self, state: Option<&AccountState>) -> Result<(), StoreError> {
        self.storage_usage.push(
            state
                .map(|s| height_to_i64("storage usage", s.storage_usage))
                .transpose()?,
        );
        self.amount.push(state.map(|s| yocto_to_numeric(s.amount)));
        self.locked.push(state.map(|s| yocto_to_numeric(s.locked)));
        self.code_hash
            .push(state.map(|s| s.code_hash.as_str().to_owned()));
        self.global_contract_hash.push(
            state
                .and_then(|s| s.global_contract_hash.as_ref())
                .map(|h| h.as_str().to_owned()),
        );
        self.global_contract_account_id.push(
            state
                .and_then(|s| s.global_contract_account_id.as_ref())
                .map(|a| a.as_str().to_owned()),
        );
        self.deleted.push(state.is_none());
        Ok(())
    }
}

/// Inserts balance history rows in one statement; replays are no-ops.
/// Returns how many rows were new.
pub async fn insert_balance_rows(
    tx: &mut PgConnection,
    rows: &[BalanceRow<'_>],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut state = StateColumns::default();
    let mut heights = Vec::with_capacity(rows.len());
    for r in rows {
        state.push(r.state)?;
        heights.push(height_to_i64("block height", r.block_height)?);
    }
    let accounts: Vec<&str> = rows.iter().map(|r| r.account_id.as_str()).collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.block_hash).collect();
    let indexes: Vec<i32> = rows.iter().map(|r| r.index_in_block).collect();
    let causes: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.cause.map(|c| c.kind.name()))
        .collect();
    let tx_hashes: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.cause.and_then(|c| c.tx_hash.as_ref()).map(|h| h.as_str()))
        .collect();
    let receipt_hashes: Vec<Option<&str>> = rows
        .iter()
        .map(|r| {
            r.cause
                .and_then(|c| c.receipt_hash.as_ref())
                .map(|h| h.as_str())
        })
        .collect();
    let sources: Vec<&str> = rows.iter().map(|r| r.source).collect();
    let contract_changed: Vec<bool> = rows.iter().map(|r| r.contract_changed).collect();
    let query = sqlx::query(
        "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount, locked,
            storage_usage, code_hash, global_contract_hash, global_contract_account_id, deleted, cause,
            tx_hash, receipt_hash, source, contract_changed)
         select * from unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::numeric[],
                              $6::numeric[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                              $11::boolean[], $12::text[], $13::text[], $14::text[], $15::text[],
                              $16::boolean[])
         on conflict on constraint balance_events_natural_key do nothing",
    )
    .bind(accounts)
    .bind(heights)
    .bind(hashes)
    .bind(indexes);
    let result = state
        .bind(query)
        .bind(causes)
        .bind(tx_hashes)
        .bind(receipt_hashes)
        .bind(sources)
        .bind(contract_changed)
        .execute(&mut *tx)
        .await?;
    Ok(result.rows_affected())
}

/// Sets the end-of-block state; `None` marks the account deleted.
pub async fn upsert_account_state(
    tx: &mut PgConnection,
    account: &AccountId,
    state: Option<&AccountState>,
    height: u64,
) -> Result<(), StoreError> {
    upsert_account_states(tx, &[(account, state, height)]).await
}

/// Sets the state of several distinct accounts, each at the height of its
/// last write, in one statement.
pub async fn upsert_account_states(
    tx: &mut PgConnection,
    rows: &[(&AccountId, Option<&AccountState>, u64)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut state = StateColumns::default();
    let mut heights = Vec::with_capacity(rows.len());
    for (_, s, h) in rows {
        state.push(*s)?;
        heights.push(height_to_i64("block height", *h)?);
    }
    let accounts: Vec<&str> = rows.iter().map(|(a, ..)| a.as_str()).collect();
    let query = sqlx::query(
        "insert into current_accounts (account_id, amount, locked, storage_usage, code_hash,
            global_contract_hash, global_contract_account_id, deleted, updated_at_height)
         select * from unnest($1::text[], $2::numeric[], $3::numeric[], $4::bigint[], $5::text[],
                              $6::text[], $7::text[], $8::boolean[], $9::bigint[])
         on conflict (account_id) do update set amount = excluded.amount, locked = excluded.locked,
            storage_usage = excluded.storage_usage, code_hash = excluded.code_hash,
            global_contract_hash = excluded.global_contract_hash,
            global_contract_account_id = excluded.global_contract_account_id,
            deleted = excluded.deleted, updated_at_height = excluded.updated_at_height",
    )
    .bind(accounts);
    state.bind(query).bind(heights).execute(&mut *tx).await?;
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
    let mut all = load_accounts(conn, std::slice::from_ref(account)).await?;
    Ok(all.remove(account))
}

#[derive(sqlx::FromRow)]
struct CurrentAccountRead {
    account_id: String,
    amount: Option<BigDecimal>,
    locked: Option<BigDecimal>,
    storage_usage: Option<i64>,
    code_hash: Option<String>,
    global_contract_hash: Option<String>,
    global_contract_account_id: Option<String>,
    deleted: bool,
}

/// [`load_account`] for several accounts in one statement; an account with
/// no row (unknown) has no entry.
pub async fn load_accounts(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> Result<std::collections::HashMap<AccountId, Option<AccountState>>, StoreError> {
    if accounts.is_empty() {
        return Ok(Default::default());
    }
    let names: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
    let rows: Vec<CurrentAccountRead> = sqlx::query_as(
        "select account_id, amount, locked, storage_usage, code_hash, global_contract_hash,
                global_contract_account_id, deleted
         from current_accounts where account_id = any($1::text[])",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let account = AccountId::parse(&r.account_id).map_err(|e| {
                StoreError::Invalid(format!("stored account {:?}: {e}", r.account_id))
            })?;
            let state = state_or_deleted(
                &account,
                (
                    r.amount,
                    r.locked,
                    r.storage_usage,
                    r.code_hash,
                    r.global_contract_hash,
                    r.global_contract_account_id,
                    r.deleted,
                ),
            )?;
            Ok((account, state))
        })
        .collect()
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
