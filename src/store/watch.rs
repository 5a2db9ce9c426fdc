//! The watch list, and the baseline that starts tracking an account.
//!
//! A baseline is the account's keys and balance read at exactly the block
//! the cursor names, written in the transaction that starts tracking it
//! while that transaction holds the cursor row locked. So the follower,
//! which advances the cursor under the same lock, never moves past a block
//! between the baseline read and the first followed block.

use sqlx::PgConnection;

use crate::domain::{AccessKey, AccountId, AccountState, PublicKey};
use crate::store::convert::height_to_i64;
use crate::store::{Cursor, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedAccount {
    pub account_id: AccountId,
    pub label: Option<String>,
    pub expected_keys: Vec<PublicKey>,
    pub cold_keys: Vec<PublicKey>,
    pub allow_missing: bool,
    /// `None` while waiting for the first cursor.
    pub baseline_height: Option<u64>,
}

/// The state read at the baseline block; `None` account means it does not exist.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub account: Option<AccountState>,
    pub keys: Vec<(PublicKey, AccessKey)>,
}

#[derive(Debug, Clone)]
pub struct NewWatch {
    pub account_id: AccountId,
    pub label: Option<String>,
    pub expected_keys: Vec<PublicKey>,
    pub cold_keys: Vec<PublicKey>,
    pub allow_missing: bool,
}

/// What `add` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome {
    /// Tracking started with a baseline at this cursor.
    Tracked { baseline_height: u64 },
    /// No cursor yet: the baseline is read when ingestion starts.
    Pending,
    /// Already watched: label and key lists updated, baseline kept.
    Updated,
}

pub async fn is_watched(conn: &mut PgConnection, account: &AccountId) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "select exists(select 1 from watched_accounts where account_id = $1)",
    )
    .bind(account.as_str())
    .fetch_one(conn)
    .await?)
}

/// Adds (or updates) a watched account inside `tx`, which must hold the
/// cursor lock ([`crate::store::lock_cursor`]) and pass the cursor it saw.
/// `baseline` must have been read at exactly `cursor`'s block.
pub async fn add(
    tx: &mut PgConnection,
    watch: &NewWatch,
    cursor: Option<&Cursor>,
    baseline: Option<&Baseline>,
) -> Result<AddOutcome, StoreError> {
    let keys_text = |keys: &[PublicKey]| {
        keys.iter()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    if is_watched(tx, &watch.account_id).await? {
        sqlx::query(
            "update watched_accounts set label = coalesce($2, label), expected_keys = $3, cold_keys = $4
             where account_id = $1",
        )
        .bind(watch.account_id.as_str())
        .bind(&watch.label)
        .bind(keys_text(&watch.expected_keys))
        .bind(keys_text(&watch.cold_keys))
        .execute(&mut *tx)
        .await?;
        return Ok(AddOutcome::Updated);
    }
    let (height, hash) = match cursor {
        Some(c) => (
            Some(height_to_i64("cursor height", c.height)?),
            Some(c.hash.clone()),
        ),
        None => (None, None),
    };
    sqlx::query(
        "insert into watched_accounts
            (account_id, label, expected_keys, cold_keys, allow_missing, baseline_height, baseline_hash)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(watch.account_id.as_str())
    .bind(&watch.label)
    .bind(keys_text(&watch.expected_keys))
    .bind(keys_text(&watch.cold_keys))
    .bind(watch.allow_missing)
    .bind(height)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    match (cursor, baseline) {
        (Some(c), Some(b)) => {
            write_baseline(tx, &watch.account_id, c, b, "baseline").await?;
            Ok(AddOutcome::Tracked {
                baseline_height: c.height,
            })
        }
        (Some(_), None) => Err(StoreError::Invalid(format!(
            "a baseline is required to start tracking {} at the cursor",
            watch.account_id
        ))),
        (None, _) => Ok(AddOutcome::Pending),
    }
}

/// Writes the baseline rows and opens a tracking span at the cursor's block.
/// `source` is `baseline`, or `reconcile` when re-reading after a history gap.
pub async fn write_baseline(
    tx: &mut PgConnection,
    account: &AccountId,
    at: &Cursor,
    baseline: &Baseline,
    source: &str,
) -> Result<(), StoreError> {
    let height = height_to_i64("baseline height", at.height)?;
    sqlx::query("update watched_accounts set baseline_height = $2, baseline_hash = $3 where account_id = $1")
        .bind(account.as_str())
        .bind(height)
        .bind(&at.hash)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into tracking_spans (account_id, from_height) values ($1, $2)
         on conflict (account_id, from_height) do update set to_height = null",
    )
    .bind(account.as_str())
    .bind(height)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from key_state where account_id = $1")
        .bind(account.as_str())
        .execute(&mut *tx)
        .await?;
    for (index, (key, access_key)) in baseline.keys.iter().enumerate() {
        crate::store::keys::insert_key_row(
            tx,
            &crate::store::keys::KeyRow {
                account_id: account,
                public_key: key,
                block_height: at.height,
                block_hash: &at.hash,
                index_in_block: index as i32,
                action: "updated",
                access_key: Some(access_key),
                nonce_slot: None,
                cause: None,
                source,
                by_account_deletion: false,
            },
        )
        .await?;
        crate::store::keys::upsert_key_state(tx, account, key, access_key, at.height).await?;
    }
    if let Some(state) = &baseline.account {
        let row = crate::store::history::BalanceRow {
            account_id: account,
            block_hash: &at.hash,
            block_height: at.height,
            index_in_block: 0,
            state: Some(state),
            cause: None,
            source,
            contract_changed: false,
        };
        crate::store::history::insert_balance_row(tx, &row).await?;
        crate::store::history::upsert_account_state(tx, account, Some(state), at.height).await?;
    }
    Ok(())
}

/// Stops watching; history stays, current state goes. Returns whether the
/// account was watched.
pub async fn remove(
    tx: &mut PgConnection,
    account: &AccountId,
    cursor: Option<&Cursor>,
) -> Result<bool, StoreError> {
    let removed = sqlx::query("delete from watched_accounts where account_id = $1")
        .bind(account.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    if !removed {
        return Ok(false);
    }
    if let Some(c) = cursor {
        sqlx::query(
            "update tracking_spans set to_height = $2 where account_id = $1 and to_height is null",
        )
        .bind(account.as_str())
        .bind(height_to_i64("cursor height", c.height)?)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("delete from key_state where account_id = $1")
        .bind(account.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from current_accounts where account_id = $1")
        .bind(account.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

type WatchRow = (
    String,
    Option<String>,
    Vec<String>,
    Vec<String>,
    bool,
    Option<i64>,
);

const WATCH_COLUMNS: &str = "select account_id, label, expected_keys, cold_keys, allow_missing, baseline_height from watched_accounts";

fn to_watched(
    (id, label, expected, cold, allow_missing, baseline): WatchRow,
) -> Result<WatchedAccount, StoreError> {
    let bad = |e: &dyn std::fmt::Display| {
        StoreError::Invalid(format!("stored watch list entry {id:?}: {e}"))
    };
    let keys = |v: Vec<String>| {
        v.iter()
            .map(|k| PublicKey::parse(k).map_err(|e| bad(&e)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(WatchedAccount {
        account_id: AccountId::parse(&id).map_err(|e| bad(&e))?,
        label,
        expected_keys: keys(expected)?,
        cold_keys: keys(cold)?,
        allow_missing,
        baseline_height: baseline
            .map(|h| crate::store::convert::i64_to_height("baseline height", h))
            .transpose()?,
    })
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<WatchedAccount>, StoreError> {
    let rows: Vec<WatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WATCH_COLUMNS} order by account_id"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(to_watched).collect()
}

/// Watched accounts with (`with_baseline`) or without a baseline yet.
async fn ids(conn: &mut PgConnection, with_baseline: bool) -> Result<Vec<AccountId>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "select account_id from watched_accounts where (baseline_height is not null) = $1 order by account_id",
    )
    .bind(with_baseline)
    .fetch_all(conn)
    .await?;
    ids.iter()
        .map(|id| {
            AccountId::parse(id)
                .map_err(|e| StoreError::Invalid(format!("stored watch list entry: {e}")))
        })
        .collect()
}

/// Accounts whose history is being followed (their baseline is written).
pub async fn tracked(
    conn: &mut PgConnection,
) -> Result<std::collections::BTreeSet<AccountId>, StoreError> {
    Ok(ids(conn, true).await?.into_iter().collect())
}

/// The watch list's version: it moves with every change to the tracked
/// set. `None` if its row was removed by hand: then nothing may be cached.
pub async fn version(conn: &mut PgConnection) -> Result<Option<i64>, StoreError> {
    Ok(
        sqlx::query_scalar("select version from watch_list_version where id = 1")
            .fetch_optional(conn)
            .await?,
    )
}

/// Accounts waiting for a baseline (added before any cursor existed).
pub async fn pending(conn: &mut PgConnection) -> Result<Vec<AccountId>, StoreError> {
    ids(conn, false).await
}

/// Ends every open tracking span at `height` (history after it is a gap).
pub async fn close_spans(tx: &mut PgConnection, height: u64) -> Result<(), StoreError> {
    sqlx::query(
        "update tracking_spans set to_height = $1 where to_height is null and from_height <= $1",
    )
    .bind(height_to_i64("height", height)?)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One watched account's entry, if watched.
pub async fn get(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<Option<WatchedAccount>, StoreError> {
    let row: Option<WatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WATCH_COLUMNS} where account_id = $1"
    )))
    .bind(account.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(to_watched).transpose()
}

/// The watch-list entries of `accounts` that are watched, in one statement.
pub async fn get_many(
    conn: &mut PgConnection,
    accounts: &[&AccountId],
) -> Result<std::collections::HashMap<AccountId, WatchedAccount>, StoreError> {
    if accounts.is_empty() {
        return Ok(Default::default());
    }
    let names: Vec<&str> = accounts.iter().map(|a| a.as_str()).collect();
    let rows: Vec<WatchRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{WATCH_COLUMNS} where account_id = any($1::text[])"
    )))
    .bind(names)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| to_watched(r).map(|w| (w.account_id.clone(), w)))
        .collect()
}

/// Asks the follower to re-read these accounts at its cursor and correct
/// what differs (a reconcile found drift below the cursor).
pub async fn request_fix(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> Result<(), StoreError> {
    let ids: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
    sqlx::query(
        "update watched_accounts set fix_requested_at = coalesce(fix_requested_at, now())
         where account_id = any($1)",
    )
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Accounts waiting for a correction at the cursor.
pub async fn fix_requested(conn: &mut PgConnection) -> Result<Vec<AccountId>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "select account_id from watched_accounts where fix_requested_at is not null
           and baseline_height is not null order by account_id",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|a| {
            AccountId::parse(a)
                .map_err(|e| StoreError::Invalid(format!("stored watch list entry: {e}")))
        })
        .collect()
}

pub async fn clear_fix(tx: &mut PgConnection, account: &AccountId) -> Result<(), StoreError> {
    sqlx::query(
        "update watched_accounts set fix_requested_at = null, drift_fixed_at = now()
         where account_id = $1",
    )
    .bind(account.as_str())
    .execute(tx)
    .await?;
    Ok(())
}

/// Where tracking of `account` started, if it is watched and tracked.
pub async fn baseline_height(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<Option<Option<u64>>, StoreError> {
    let row: Option<Option<i64>> =
        sqlx::query_scalar("select baseline_height from watched_accounts where account_id = $1")
            .bind(account.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|h| h.map(|h| h.max(0) as u64)))
}
