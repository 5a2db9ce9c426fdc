//! `keywatch rules test`: the configured rules replayed over stored history,
//! block by block, with the same code the ingest runs. Everything happens in
//! a transaction that is rolled back, against a private empty outbox that
//! shadows the real one (so dedup and cooldown see only the replay, and the
//! live dispatcher is never blocked): nothing is kept and nothing is sent.

use std::collections::{BTreeMap, BTreeSet};

use bigdecimal::BigDecimal;
use sqlx::{PgConnection, PgPool};

use crate::domain::{AccessKey, AccountId, BlockHeader, CryptoHash, PublicKey};
use crate::ingest::IngestError;
use crate::ingest::alerts::{AccountBlock, AlertContext, block_rules, window_rules};
use crate::rules::KeyWrite;
use crate::store::convert::height_to_i64;

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

type KeyRowTuple = (
    String,
    String,
    Option<serde_json::Value>,
    bool,
    Option<String>,
    Option<String>,
);
type BalRowTuple = (
    bool,
    bool,
    Option<BigDecimal>,
    Option<BigDecimal>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

async fn facts(
    tx: &mut PgConnection,
    block_hash: &str,
    height: i64,
    account: &str,
) -> Result<AccountBlock, IngestError> {
    let account_id = AccountId::parse(account).map_err(|e| IngestError::Invalid(e.to_string()))?;
    let rows: Vec<KeyRowTuple> = sqlx::query_as(
        "select public_key, action, permission_raw, by_account_deletion, tx_hash, receipt_hash from key_events
         where account_id = $1 and block_hash = $2 and source = 'chain' order by index_in_block",
    )
    .bind(account)
    .bind(block_hash)
    .fetch_all(&mut *tx)
    .await?;
    let mut writes = vec![];
    let mut nonce_slot_keys = BTreeSet::new();
    for (key, action, raw, by_deletion, tx_hash, receipt_hash) in rows {
        let key = PublicKey::parse(&key).map_err(|e| IngestError::Invalid(e.to_string()))?;
        let action: &'static str = match action.as_str() {
            "added" => "added",
            "updated" => "updated",
            "deleted" => "deleted",
            _ => {
                nonce_slot_keys.insert(key);
                continue;
            }
        };
        let permission = raw
            .map(crate::rpc::views::permission_from_json)
            .transpose()
            .map_err(IngestError::Invalid)?;
        writes.push(KeyWrite {
            key,
            action,
            permission,
            by_account_deletion: by_deletion,
            tx_hash,
            receipt_hash,
        });
    }
    let bal: Vec<BalRowTuple> = sqlx::query_as(
        "select deleted, contract_changed, amount, locked, storage_usage, code_hash, global_contract_hash, global_contract_account_id
         from balance_events where account_id = $1 and block_hash = $2 and source = 'chain' order by index_in_block",
    )
    .bind(account)
    .bind(block_hash)
    .fetch_all(&mut *tx)
    .await?;
    let mut contract_changed = None;
    for (_, _, amount, locked, storage, code, gch, gca) in bal.iter().filter(|b| b.1).cloned() {
        let columns = (amount, locked, storage, code, gch, gca);
        contract_changed = Some(crate::store::history::account_state(account, columns)?);
    }
    let unknown: Vec<String> = sqlx::query_scalar("select change_type from unknown_changes where account_id = $1 and block_hash = $2 order by index_in_block")
        .bind(account)
        .bind(block_hash)
        .fetch_all(&mut *tx)
        .await?;
    let keys_before = keys_at(tx, &account_id, height - 1).await?;
    let keys_after = keys_at(tx, &account_id, height).await?;
    Ok(AccountBlock {
        account: account_id,
        writes,
        keys_before,
        keys_after,
        nonce_slot_keys,
        account_deleted: bal.iter().any(|b| b.0),
        contract_changed,
        unknown,
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
    let blocks: Vec<(String, i64, String, i64)> = sqlx::query_as(
        "select block_hash, block_height, prev_hash, block_timestamp_ns from blocks where block_height between $1 and $2 order by block_height",
    )
    .bind(height_to_i64("height", from)?)
    .bind(height_to_i64("height", to)?)
    .fetch_all(&mut *tx)
    .await?;
    for (block_hash, height, prev, ts) in blocks {
        let header = BlockHeader {
            height: height as u64,
            hash: hash(&block_hash)?,
            prev_hash: hash(&prev)?,
            timestamp_ns: ts as u64,
        };
        let accounts: Vec<String> = sqlx::query_scalar(
            "select account_id from key_events where block_hash = $1 and source = 'chain'
             union select account_id from balance_events where block_hash = $1 and source = 'chain' order by 1",
        )
        .bind(&block_hash)
        .fetch_all(&mut *tx)
        .await?;
        let mut all = Vec::new();
        for a in accounts {
            all.push(facts(&mut tx, &block_hash, height, &a).await?);
        }
        block_rules(&mut tx, ctx, &header, &all).await?;
        window_rules(&mut tx, ctx, &header).await?;
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
