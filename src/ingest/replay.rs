//! `keywatch rules test`: the configured rules replayed over stored history,
//! block by block, with the same code the ingest runs. Everything happens in
//! a transaction that is rolled back, against a private empty outbox that
//! shadows the real one (so dedup and cooldown see only the replay, and the
//! live dispatcher is never blocked): nothing is kept and nothing is sent.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{PgConnection, PgPool};

use crate::domain::{AccessKey, AccountId, BlockHeader, CryptoHash, PublicKey};
use crate::ingest::IngestError;
use crate::ingest::alerts::{AccountBlock, AlertContext, block_rules, window_rules};
use crate::rules::{KeyWrite, TxRef};
use crate::store::convert::height_to_i64;
use crate::store::replay;

/// An alert the replay decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WouldFire {
    pub block_height: u64,
    pub rule: String,
    pub severity: String,
    pub account_id: String,
    pub title: String,
}

fn hash(h: &str) -> Result<CryptoHash, IngestError> {
    CryptoHash::parse(h).map_err(|e| IngestError::Invalid(format!("stored hash: {e}")))
}

/// The keys of `account` at the end of block `height`, from history (none
/// outside a tracking period).
async fn keys_at(
    tx: &mut PgConnection,
    account: &AccountId,
    height: i64,
) -> Result<BTreeMap<PublicKey, AccessKey>, IngestError> {
    use crate::store::keys::KeysAtError;
    match crate::store::keys::key_map_at(tx, account, height.max(0) as u64).await {
        Ok(keys) => Ok(keys),
        Err(KeysAtError::NotTracked { .. } | KeysAtError::NoCursor) => Ok(BTreeMap::new()),
        Err(KeysAtError::Store(e)) => Err(e.into()),
        Err(e) => Err(IngestError::Invalid(e.to_string())),
    }
}

async fn facts(
    tx: &mut PgConnection,
    block_hash: &str,
    height: i64,
    account: &str,
) -> Result<AccountBlock, IngestError> {
    let account_id = AccountId::parse(account).map_err(|e| IngestError::Invalid(e.to_string()))?;
    let rows = replay::key_writes_in_block(tx, account, block_hash).await?;
    let mut writes = vec![];
    let mut nonce_slot_keys = BTreeSet::new();
    for row in rows {
        let key =
            PublicKey::parse(&row.public_key).map_err(|e| IngestError::Invalid(e.to_string()))?;
        let action: &'static str = match row.action.as_str() {
            "added" => "added",
            "updated" => "updated",
            "deleted" => "deleted",
            _ => {
                nonce_slot_keys.insert(key);
                continue;
            }
        };
        let permission = row
            .permission_raw
            .map(crate::rpc::views::permission_from_json)
            .transpose()
            .map_err(IngestError::Invalid)?;
        writes.push(KeyWrite {
            key,
            action,
            permission,
            by_account_deletion: row.by_account_deletion,
            tx_hash: row.tx_hash,
            receipt_hash: row.receipt_hash,
        });
    }
    let bal = replay::balance_writes_in_block(tx, account, block_hash).await?;
    let tx_ref = |b: &replay::StoredBalanceWrite| TxRef {
        tx_hash: b.tx_hash.clone(),
        receipt_hash: b.receipt_hash.clone(),
    };
    let contract_cause = bal.iter().rfind(|b| b.contract_changed).map(tx_ref);
    let deletion_cause = bal.iter().rfind(|b| b.deleted).map(tx_ref);
    let mut contract_changed = None;
    for b in bal.iter().filter(|b| b.contract_changed).cloned() {
        let columns = (
            b.amount,
            b.locked,
            b.storage_usage,
            b.code_hash,
            b.global_contract_hash,
            b.global_contract_account_id,
        );
        contract_changed = Some(crate::store::history::account_state(account, columns)?);
    }
    let stored_unknown = replay::unknown_in_block(tx, account, block_hash).await?;
    let unknown_cause = stored_unknown.last().map(|u| TxRef {
        tx_hash: u.tx_hash.clone(),
        receipt_hash: u.receipt_hash.clone(),
    });
    let unknown: Vec<String> = stored_unknown.into_iter().map(|u| u.change_type).collect();
    let keys_before = keys_at(tx, &account_id, height - 1).await?;
    let keys_after = keys_at(tx, &account_id, height).await?;
    Ok(AccountBlock {
        account: account_id,
        writes,
        keys_before,
        keys_after,
        nonce_slot_keys,
        account_deleted: bal.iter().any(|b| b.deleted),
        contract_changed,
        unknown,
        contract_cause,
        deletion_cause,
        unknown_cause,
    })
}

/// What the configured rules would have raised for blocks `from..=to`.
pub async fn rules_test(
    pool: &PgPool,
    ctx: &AlertContext,
    from: u64,
    to: u64,
) -> Result<Vec<WouldFire>, IngestError> {
    let mut tx = pool.begin().await?;
    crate::store::alerts::shadow_outbox(&mut tx).await?;
    let blocks = replay::blocks_between(
        &mut tx,
        height_to_i64("height", from)?,
        height_to_i64("height", to)?,
    )
    .await?;
    for b in blocks {
        let header = BlockHeader {
            height: b.block_height as u64,
            hash: hash(&b.block_hash)?,
            prev_hash: hash(&b.prev_hash)?,
            timestamp_ns: b.block_timestamp_ns as u64,
        };
        let accounts = replay::accounts_in_block(&mut tx, b.block_height).await?;
        let mut all = Vec::new();
        for a in accounts {
            all.push(facts(&mut tx, &b.block_hash, b.block_height, &a).await?);
        }
        // Judged as when the block was new, as the follower at the head
        // judged it: nothing is suppressed for being old, so the cooldowns
        // and escalations it starts are the live ones.
        let block_time = crate::store::convert::ns_to_time(header.timestamp_ns);
        let at_the_time = AlertContext {
            now: std::sync::Arc::new(move || block_time),
            ..ctx.clone()
        };
        block_rules(&mut tx, &at_the_time, &header, &all).await?;
        window_rules(&mut tx, &at_the_time, &header, None).await?;
    }
    let fired: Vec<(i64, String, String, String, String)> =
        sqlx::query_as("select block_height, rule, severity, account_id, title from alerts order by block_height, id").fetch_all(&mut *tx).await?;
    tx.rollback().await?;
    Ok(fired
        .into_iter()
        .map(|(h, rule, severity, account_id, title)| WouldFire {
            block_height: h as u64,
            rule,
            severity,
            account_id,
            title,
        })
        .collect())
}
