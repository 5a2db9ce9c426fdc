//! keywatch checks itself without stopping: history as of a fixed height H
//! the cursor has reached is compared with `view_access_key_list` and
//! `view_account` at exactly that block (never "now" while the cursor lags).
//! Every difference raises `state_drift`; the correction is a `reconcile`
//! row written at the cursor, between two blocks.

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::domain::{AccessKey, AccountId, PublicKey};
use crate::ingest::IngestError;
use crate::ingest::alerts::{AlertContext, AlertsWritten, SystemAlert, system_alert};
use crate::ingest::baseline::read_baseline;
use crate::rpc::{BlockRef, RpcClient};
use crate::store::history::{
    BalanceRow, account_at, insert_balance_row, load_account, upsert_account_state,
};
use crate::store::keys::{
    KeyRow, KeysAtError, delete_key_state, insert_key_row, key_map_at, load_state, upsert_key_state,
};
use crate::store::{self, Cursor};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    pub account: AccountId,
    /// The key that differs (None for the balance).
    pub key: Option<PublicKey>,
    pub what: String,
    /// What differs without the values or the height it was found at (the
    /// key or the balance, against what): the same unresolved drift found
    /// by two reconciles is one event, though the chain moved meanwhile.
    #[serde(default)]
    pub event: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub height: u64,
    pub accounts: usize,
    pub differences: Vec<Difference>,
}

/// A correction attempted by a process that is not the follower gives up
/// after this many cursor moves and leaves it to the follower.
const FIX_ATTEMPTS: usize = 2;

/// The accounts to check: every tracked one, or `only`, each of which must
/// be watched.
pub async fn accounts_to_check(
    pool: &PgPool,
    only: &[AccountId],
) -> Result<Vec<AccountId>, IngestError> {
    let mut conn = pool.acquire().await?;
    let tracked = store::watch::tracked(&mut conn).await?;
    if only.is_empty() {
        return Ok(tracked.into_iter().collect());
    }
    let not_watched: Vec<String> = only
        .iter()
        .filter(|a| !tracked.contains(*a))
        .map(|a| a.to_string())
        .collect();
    if !not_watched.is_empty() {
        return Err(IngestError::NotWatched(not_watched));
    }
    Ok(only.to_vec())
}

fn at_hash(cursor: &Cursor) -> Result<BlockRef, IngestError> {
    crate::domain::CryptoHash::parse(&cursor.hash)
        .map(BlockRef::Hash)
        .map_err(|e| IngestError::Invalid(format!("stored cursor hash: {e}")))
}

/// Compares the chain at the cursor's block when the check starts (a fixed
/// height H) with history as of H. The follower keeps going meanwhile: H
/// does not move, so there is no race. Differences raise `state_drift` and
/// ask for a correction at the cursor ([`apply_fixes`]), which the follower
/// makes between two blocks; with no follower running, this call makes it.
/// Chain reads go through `rpc` as given: pass [`RpcClient::background`] so
/// they use only the budget following leaves.
pub async fn reconcile(
    pool: &PgPool,
    rpc: &RpcClient,
    only: &[AccountId],
    alerts: Option<&AlertContext>,
) -> Result<Report, IngestError> {
    let cursor = store::cursor(pool).await?.ok_or_else(|| {
        IngestError::Invalid("nothing has been ingested yet: there is nothing to reconcile".into())
    })?;
    let accounts = accounts_to_check(pool, only).await?;
    let at = at_hash(&cursor)?;
    let mut differences = Vec::new();
    let mut checked = 0;
    for account in &accounts {
        let truth = read_baseline(rpc, &at, account)
            .await
            .map_err(|e| match e {
                IngestError::Rpc(r) if r.is_garbage_collected() || r.is_unknown_block() => {
                    IngestError::HistoryGone {
                        next: cursor.height,
                        earliest: cursor.height + 1,
                    }
                }
                other => other,
            })?;
        let mut conn = pool.acquire().await?;
        let stored_keys = match key_map_at(&mut conn, account, cursor.height).await {
            Ok(keys) => keys,
            // Tracking started after H (added meanwhile): nothing to compare.
            Err(KeysAtError::NotTracked { .. }) => continue,
            Err(KeysAtError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(IngestError::Invalid(e.to_string())),
        };
        let stored_account = account_at(&mut conn, account, cursor.height).await?;
        drop(conn);
        checked += 1;
        differences.extend(internal_differences(pool, account).await?);
        let chain_keys: BTreeMap<PublicKey, AccessKey> = truth.keys.iter().cloned().collect();
        for (key, what, _, event) in key_differences(&stored_keys, &chain_keys, "the chain") {
            differences.push(Difference {
                account: account.clone(),
                key: Some(key),
                what,
                event,
            });
        }
        if let Some((what, event)) =
            account_difference(stored_account.as_ref(), truth.account.as_ref(), "the chain")
        {
            differences.push(Difference {
                account: account.clone(),
                key: None,
                what,
                event,
            });
        }
    }
    let mut tx = pool.begin().await?;
    let mut written = vec![];
    if let Some(ctx) = alerts {
        written = raise_drift(&mut tx, ctx, &cursor, &differences).await?;
    }
    let drifted: Vec<AccountId> = differences.iter().map(|d| d.account.clone()).collect();
    if !drifted.is_empty() {
        store::watch::request_fix(&mut tx, &drifted).await?;
    }
    store::record_reconcile(&mut tx, &cursor, checked, differences.len()).await?;
    tx.commit().await?;
    crate::metrics::alerts_written(written.iter().map(String::as_str));
    for d in &differences {
        tracing::error!(account = %d.account, height = cursor.height, "drift: {}", d.what);
    }
    if !differences.is_empty() {
        let fixed = apply_fixes(pool, rpc, FIX_ATTEMPTS).await?;
        if fixed == 0 {
            tracing::info!("the follower will correct the drift at its cursor");
        }
    }
    Ok(Report {
        height: cursor.height,
        accounts: checked,
        differences,
    })
}

/// The current state (what the follower judges writes against) compared
/// with history at the cursor, in one snapshot: both are keywatch's own
/// data, so no rpc read is needed and the cursor may move meanwhile.
async fn internal_differences(
    pool: &PgPool,
    account: &AccountId,
) -> Result<Vec<Difference>, IngestError> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read read only")
        .execute(&mut *tx)
        .await?;
    let Some(cursor) = store::cursor(&mut *tx).await? else {
        return Ok(vec![]);
    };
    let history_keys = match key_map_at(&mut tx, account, cursor.height).await {
        Ok(keys) => keys,
        Err(KeysAtError::Store(e)) => return Err(e.into()),
        Err(_) => return Ok(vec![]),
    };
    let current_keys = load_state(&mut tx, account).await?;
    let history_account = account_at(&mut tx, account, cursor.height).await?;
    let current_account = load_account(&mut tx, account).await?;
    tx.commit().await?;
    let at = format!("current state vs history at block {}: ", cursor.height);
    let mut out: Vec<Difference> = key_differences(&current_keys, &history_keys, "history")
        .into_iter()
        .map(|(key, what, _, event)| Difference {
            account: account.clone(),
            key: Some(key),
            what: format!("{at}{what}"),
            event: format!("current state: {event}"),
        })
        .collect();
    let history_account = history_account.flatten();
    if let Some((what, event)) = account_difference(
        current_account.as_ref(),
        history_account.as_ref(),
        "history",
    ) {
        out.push(Difference {
            account: account.clone(),
            key: None,
            what: format!("{at}{what}"),
            event: format!("current state: {event}"),
        });
    }
    Ok(out)
}

async fn raise_drift(
    tx: &mut sqlx::PgConnection,
    ctx: &AlertContext,
    cursor: &Cursor,
    differences: &[Difference],
) -> Result<AlertsWritten, IngestError> {
    let at = crate::ingest::alerts::cursor_block(cursor)?;
    let mut written = vec![];
    for d in differences {
        let key = d.key.as_ref().map(|k| k.to_string());
        let title = format!("Stored state of {} differs from the chain", d.account);
        written.extend(system_alert(
            tx,
            ctx,
            &at,
            SystemAlert {
                rule: "state_drift",
                account: d.account.to_string(),
                key,
                title,
                details: serde_json::json!({"account_id": d.account, "difference": d.what, "event": d.event}),
            },
        )
        .await?);
    }
    Ok(written)
}

/// Corrects the accounts a reconcile found drifting: re-reads each at the
/// cursor and writes reconcile rows for what still differs, under the
/// cursor lock. Tries `attempts` times to catch the cursor still (the
/// follower, which calls this between two blocks, always does); returns how
/// many accounts it corrected, 0 when it left them for the follower.
pub async fn apply_fixes(
    pool: &PgPool,
    rpc: &RpcClient,
    attempts: usize,
) -> Result<usize, IngestError> {
    let mut conn = pool.acquire().await?;
    let accounts = store::watch::fix_requested(&mut conn).await?;
    drop(conn);
    if accounts.is_empty() {
        return Ok(0);
    }
    for _ in 0..attempts {
        let Some(cursor) = store::cursor(pool).await? else {
            return Ok(0);
        };
        let at = at_hash(&cursor)?;
        let mut reads = Vec::new();
        for account in &accounts {
            reads.push(read_baseline(rpc, &at, account).await?);
        }
        let mut tx = pool.begin().await?;
        if store::lock_cursor(&mut tx).await?.as_ref() != Some(&cursor) {
            continue;
        }
        for (account, truth) in accounts.iter().zip(&reads) {
            let keys: BTreeMap<PublicKey, AccessKey> = truth.keys.iter().cloned().collect();
            fix_keys(&mut tx, &cursor, account, &keys).await?;
            fix_account(&mut tx, &cursor, account, truth.account.as_ref()).await?;
            store::watch::clear_fix(&mut tx, account).await?;
        }
        tx.commit().await?;
        tracing::info!(
            accounts = accounts.len(),
            height = cursor.height,
            "drift corrected at the cursor"
        );
        return Ok(accounts.len());
    }
    Ok(0)
}

/// What differs between two key sets: (key, description, the action of the
/// correcting row).
fn key_differences(
    stored: &BTreeMap<PublicKey, AccessKey>,
    chain: &BTreeMap<PublicKey, AccessKey>,
    truth: &str,
) -> Vec<(PublicKey, String, &'static str, String)> {
    let mut keys: Vec<&PublicKey> = chain.keys().chain(stored.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|key| {
            let (what, action, event) = match (stored.get(key), chain.get(key)) {
                (Some(s), Some(c)) if s == c => return None,
                (Some(s), Some(c)) => (
                    format!("key {key}: stored {s:?}, {truth} {c:?}"),
                    "updated",
                    format!("key {key} differs from {truth}"),
                ),
                (None, Some(_)) => {
                    let what = format!("key {key} is in {truth} but not stored");
                    (what.clone(), "updated", what)
                }
                (Some(_), None) => {
                    let what = format!("key {key} is stored but not in {truth}");
                    (what.clone(), "deleted", what)
                }
                (None, None) => return None,
            };
            Some((key.clone(), what, action, event))
        })
        .collect()
}

/// What differs between a stored account state (`None` unknown, `Some(None)`
/// deleted) and the chain's, and the same without the values.
fn account_difference(
    stored: Option<&Option<crate::domain::AccountState>>,
    chain: Option<&crate::domain::AccountState>,
    truth: &str,
) -> Option<(String, String)> {
    match (stored, chain) {
        (Some(Some(s)), Some(c)) if s == c => None,
        (Some(None), None) | (None, None) => None,
        (Some(Some(s)), Some(c)) => Some((
            format!(
                "balance: stored {} / locked {} / code {}, {truth} {} / locked {} / code {}",
                s.amount, s.locked, s.code_hash, c.amount, c.locked, c.code_hash
            ),
            format!("the balance differs from {truth}"),
        )),
        (_, Some(_)) => {
            let what = format!("the account exists in {truth} but is stored as absent or deleted");
            Some((what.clone(), what))
        }
        (Some(Some(_)), None) => {
            let what = format!("the account is stored but does not exist in {truth}");
            Some((what.clone(), what))
        }
    }
}

/// The next free index for reconcile rows of this account at this block.
async fn next_index(
    tx: &mut sqlx::PgConnection,
    table_is_keys: bool,
    account: &AccountId,
    hash: &str,
) -> Result<i32, IngestError> {
    let sql = if table_is_keys {
        "select coalesce(max(index_in_block) + 1, 0) from key_events where account_id = $1 and block_hash = $2 and source = 'reconcile'"
    } else {
        "select coalesce(max(index_in_block) + 1, 0) from balance_events where account_id = $1 and block_hash = $2 and source = 'reconcile'"
    };
    Ok(sqlx::query_scalar(sql)
        .bind(account.as_str())
        .bind(hash)
        .fetch_one(&mut *tx)
        .await?)
}

async fn fix_keys(
    tx: &mut sqlx::PgConnection,
    cursor: &Cursor,
    account: &AccountId,
    chain: &BTreeMap<PublicKey, AccessKey>,
) -> Result<(), IngestError> {
    let stored = load_state(tx, account).await?;
    let mut index = next_index(tx, true, account, &cursor.hash).await?;
    for (key, what, action, _) in key_differences(&stored, chain, "the chain") {
        let row = KeyRow {
            account_id: account,
            public_key: &key,
            block_height: cursor.height,
            block_hash: &cursor.hash,
            index_in_block: index,
            action,
            access_key: chain.get(&key),
            nonce_slot: None,
            cause: None,
            source: "reconcile",
            by_account_deletion: false,
        };
        insert_key_row(tx, &row).await?;
        match chain.get(&key) {
            Some(ak) => upsert_key_state(tx, account, &key, ak, cursor.height).await?,
            None => delete_key_state(tx, account, &key).await?,
        }
        index += 1;
        tracing::warn!(%account, height = cursor.height, "corrected: {what}");
    }
    Ok(())
}

async fn fix_account(
    tx: &mut sqlx::PgConnection,
    cursor: &Cursor,
    account: &AccountId,
    chain: Option<&crate::domain::AccountState>,
) -> Result<(), IngestError> {
    let stored = load_account(tx, account).await?;
    let Some((what, _)) = account_difference(stored.as_ref(), chain, "the chain") else {
        return Ok(());
    };
    let row = BalanceRow {
        account_id: account,
        block_hash: &cursor.hash,
        block_height: cursor.height,
        index_in_block: next_index(tx, false, account, &cursor.hash).await?,
        state: chain,
        cause: None,
        source: "reconcile",
        contract_changed: false,
    };
    insert_balance_row(tx, &row).await?;
    upsert_account_state(tx, account, chain, cursor.height).await?;
    tracing::warn!(%account, height = cursor.height, "corrected: {what}");
    Ok(())
}
