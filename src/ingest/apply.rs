//! One block, one transaction: every write of every watched account the
//! block touched, judged against the state just before it, the end-of-block
//! state, and the cursor advance, committed together under the cursor lock.
//!
//! Each key write is `added` when the key did not exist just before it (the
//! state before the block plus the earlier writes of the same key in this
//! block), else `updated`; a delete and re-add in one block is `deleted`
//! then `added`. Natural unique keys make a replayed block a no-op, and a
//! block whose parent is not the cursor is never applied.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::PgPool;

use crate::domain::{AccessKey, AccountId, AccountState, ChangeValue, PublicKey, StateChange};
use crate::ingest::IngestError;
use crate::ingest::alerts::{AccountBlock, AlertContext, block_rules, window_rules};
use crate::ingest::fetch::BlockData;
use crate::store;
use crate::store::history::{BalanceRow, insert_balance_row, load_account, upsert_account_state};
use crate::store::keys::{
    KeyRow, delete_key_state, insert_key_row, insert_unknown_change, load_state, upsert_key_state,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Committed, with the number of key and balance rows written.
    Block {
        key_rows: usize,
        balance_rows: usize,
    },
    /// The cursor is already at or past this block: nothing to do.
    AlreadyApplied,
    /// Accounts were added to the watch list since the block was fetched
    /// and the block touched them: fetch again with the current watch list.
    Refetch(BTreeSet<AccountId>),
}

fn writes_of<'a>(
    list: &'a [StateChange],
    account: &'a AccountId,
) -> impl Iterator<Item = &'a StateChange> + 'a {
    list.iter()
        .filter(move |c| c.value.account_id() == Some(account))
}

/// Applies one block in one transaction. With `epoch`, the transaction
/// first checks that this process still holds the leader lease under that
/// epoch (fencing): a deposed leader writes nothing.
pub async fn apply_block(
    pool: &PgPool,
    data: &BlockData,
    alerts: Option<&AlertContext>,
    epoch: Option<i64>,
) -> Result<Applied, IngestError> {
    let h = &data.header;
    let mut tx = pool.begin().await?;
    if let Some(epoch) = epoch
        && !store::lease::holds(&mut tx, epoch).await?
    {
        return Err(IngestError::Deposed { epoch });
    }
    let cursor = store::lock_cursor(&mut tx)
        .await?
        .ok_or_else(|| IngestError::Invalid("no cursor: ingestion was not started".into()))?;
    if cursor.hash != h.prev_hash.as_str() {
        if cursor.height >= h.height {
            return Ok(Applied::AlreadyApplied);
        }
        return Err(IngestError::Moved(format!(
            "block {} ({}) does not follow the cursor {} ({}); another process may be ingesting into this database",
            h.height, h.hash, cursor.height, cursor.hash
        )));
    }
    let watched = store::watch::tracked(&mut tx).await?;
    let missed: BTreeSet<AccountId> = data
        .touched_in(&watched)
        .filter(|a| !data.fetched_for.contains(*a))
        .cloned()
        .collect();
    if !missed.is_empty() {
        return Ok(Applied::Refetch(missed));
    }
    store::insert_block(&mut tx, h).await?;
    let mut key_rows = 0;
    let mut balance_rows = 0;
    let accounts: BTreeSet<&AccountId> = data
        .key_changes
        .iter()
        .chain(&data.account_changes)
        .filter_map(|c| c.value.account_id())
        .filter(|a| watched.contains(*a))
        .collect();
    let mut facts = Vec::new();
    for account in accounts {
        let deleted_here = writes_of(&data.account_changes, account)
            .any(|c| matches!(c.value, ChangeValue::AccountDeletion { .. }));
        let mut ab = AccountBlock {
            account: account.clone(),
            writes: vec![],
            keys_before: BTreeMap::new(),
            keys_after: BTreeMap::new(),
            nonce_slot_keys: BTreeSet::new(),
            account_deleted: deleted_here,
            contract_changed: None,
            unknown: vec![],
        };
        key_rows += apply_key_writes(&mut tx, data, account, deleted_here, &mut ab).await?;
        balance_rows += apply_account_writes(&mut tx, data, account, &mut ab).await?;
        facts.push(ab);
    }
    if let Some(ctx) = alerts {
        block_rules(&mut tx, ctx, h, &facts).await?;
        window_rules(&mut tx, ctx, h).await?;
    }
    store::advance_cursor(&mut tx, h).await?;
    tx.commit().await?;
    Ok(Applied::Block {
        key_rows,
        balance_rows,
    })
}

async fn apply_key_writes(
    tx: &mut sqlx::PgConnection,
    data: &BlockData,
    account: &AccountId,
    deleted_here: bool,
    ab: &mut AccountBlock,
) -> Result<usize, IngestError> {
    let h = &data.header;
    let writes: Vec<&StateChange> = writes_of(&data.key_changes, account).collect();
    if writes.is_empty() {
        return Ok(0);
    }
    let mut state: BTreeMap<PublicKey, AccessKey> = load_state(tx, account).await?;
    ab.keys_before = state.clone();
    let mut touched: BTreeSet<PublicKey> = BTreeSet::new();
    let mut deleted_in_block: BTreeSet<PublicKey> = BTreeSet::new();
    let hash = h.hash.to_string();
    for (index, w) in writes.iter().enumerate() {
        let index = index as i32;
        let row = |public_key, action, access_key, nonce_slot, by_account_deletion| KeyRow {
            account_id: account,
            public_key,
            block_height: h.height,
            block_hash: &hash,
            index_in_block: index,
            action,
            access_key,
            nonce_slot,
            cause: Some(&w.cause),
            source: "chain",
            by_account_deletion,
        };
        match &w.value {
            ChangeValue::AccessKeyUpdate {
                public_key,
                access_key,
                ..
            } => {
                let action = if state.contains_key(public_key) {
                    "updated"
                } else {
                    "added"
                };
                insert_key_row(tx, &row(public_key, action, Some(access_key), None, false)).await?;
                ab.writes.push(rule_write(
                    public_key,
                    action,
                    Some(&access_key.permission),
                    false,
                    w,
                ));
                state.insert(public_key.clone(), access_key.clone());
                touched.insert(public_key.clone());
            }
            ChangeValue::AccessKeyDeletion { public_key, .. } => {
                insert_key_row(tx, &row(public_key, "deleted", None, None, deleted_here)).await?;
                ab.writes
                    .push(rule_write(public_key, "deleted", None, deleted_here, w));
                state.remove(public_key);
                touched.insert(public_key.clone());
                deleted_in_block.insert(public_key.clone());
            }
            ChangeValue::GasKeyNonceUpdate {
                public_key,
                index: slot,
                nonce,
                ..
            } => {
                insert_key_row(
                    tx,
                    &row(public_key, "nonce_slot", None, Some((*slot, *nonce)), false),
                )
                .await?;
                ab.nonce_slot_keys.insert(public_key.clone());
            }
            other => {
                record_unknown(tx, account, h.height, &hash, index, other, w, ab).await?;
            }
        }
    }
    ab.keys_after = state.clone();
    for key in &touched {
        match state.get(key) {
            Some(ak) => {
                // re-added in this block: a new key, with a new added_at
                if deleted_in_block.contains(key) {
                    delete_key_state(tx, account, key).await?;
                }
                upsert_key_state(tx, account, key, ak, h.height).await?;
            }
            None => delete_key_state(tx, account, key).await?,
        }
    }
    Ok(writes.len())
}

fn contract_of(s: &AccountState) -> (&str, Option<&str>, Option<&str>) {
    (
        s.code_hash.as_str(),
        s.global_contract_hash.as_ref().map(|h| h.as_str()),
        s.global_contract_account_id.as_ref().map(|a| a.as_str()),
    )
}

async fn apply_account_writes(
    tx: &mut sqlx::PgConnection,
    data: &BlockData,
    account: &AccountId,
    ab: &mut AccountBlock,
) -> Result<usize, IngestError> {
    let h = &data.header;
    let writes: Vec<&StateChange> = writes_of(&data.account_changes, account).collect();
    if writes.is_empty() {
        return Ok(0);
    }
    // The state just before each write: None = unknown or absent.
    let mut before: Option<AccountState> = load_account(tx, account).await?.flatten();
    let hash = h.hash.to_string();
    for (index, w) in writes.iter().enumerate() {
        let (state, contract_changed) = match &w.value {
            ChangeValue::AccountUpdate { state, .. } => {
                let changed = state.has_contract()
                    && before
                        .as_ref()
                        .is_none_or(|b| contract_of(b) != contract_of(state));
                if changed {
                    ab.contract_changed = Some(state.clone());
                }
                (Some(state), changed)
            }
            ChangeValue::AccountDeletion { .. } => (None, false),
            other => {
                record_unknown(tx, account, h.height, &hash, index as i32, other, w, ab).await?;
                continue;
            }
        };
        let row = BalanceRow {
            account_id: account,
            block_hash: &hash,
            block_height: h.height,
            index_in_block: index as i32,
            state,
            cause: Some(&w.cause),
            source: "chain",
            contract_changed,
        };
        insert_balance_row(tx, &row).await?;
        before = state.cloned();
    }
    upsert_account_state(tx, account, before.as_ref(), h.height).await?;
    Ok(writes.len())
}

fn rule_write(
    key: &PublicKey,
    action: &'static str,
    permission: Option<&crate::domain::Permission>,
    by_account_deletion: bool,
    w: &StateChange,
) -> crate::rules::KeyWrite {
    crate::rules::KeyWrite {
        key: key.clone(),
        action,
        permission: permission.cloned(),
        by_account_deletion,
        tx_hash: w.cause.tx_hash.as_ref().map(|h| h.to_string()),
        receipt_hash: w.cause.receipt_hash.as_ref().map(|h| h.to_string()),
    }
}

/// Keeps a change this version does not know, whole, and tells the rules.
#[allow(clippy::too_many_arguments)]
async fn record_unknown(
    tx: &mut sqlx::PgConnection,
    account: &AccountId,
    height: u64,
    hash: &str,
    index: i32,
    value: &ChangeValue,
    w: &StateChange,
    ab: &mut AccountBlock,
) -> Result<(), IngestError> {
    let raw = crate::rpc::views::change_json(w);
    insert_unknown_change(
        tx,
        Some(account),
        height,
        hash,
        index,
        value.type_name(),
        &raw,
    )
    .await?;
    ab.unknown.push(value.type_name().to_owned());
    Ok(())
}
