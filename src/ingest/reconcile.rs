//! keywatch checks itself: the stored keys and balance of each account at
//! the cursor's block are compared with `view_access_key_list` and
//! `view_account` at exactly that block (never "now" while the cursor lags).
//! Every difference is recorded as a `reconcile` row that also corrects the
//! current state.

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::domain::BlockHeader;
use crate::domain::{AccessKey, AccountId, PublicKey};
use crate::ingest::IngestError;
use crate::ingest::alerts::{AlertContext, SystemAlert, system_alert};
use crate::ingest::baseline::read_baseline;
use crate::rpc::{BlockRef, RpcClient};
use crate::store::history::{BalanceRow, insert_balance_row, load_account, upsert_account_state};
use crate::store::keys::{KeyRow, delete_key_state, insert_key_row, load_state, upsert_key_state};
use crate::store::{self, Cursor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub account: AccountId,
    /// The key that differs (None for the balance).
    pub key: Option<PublicKey>,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub height: u64,
    pub accounts: usize,
    pub differences: Vec<Difference>,
}

const ATTEMPTS: usize = 10;

pub async fn reconcile(
    pool: &PgPool,
    rpc: &RpcClient,
    only: &[AccountId],
    alerts: Option<&AlertContext>,
) -> Result<Report, IngestError> {
    for _ in 0..ATTEMPTS {
        let cursor = store::cursor(pool).await?.ok_or_else(|| {
            IngestError::Invalid(
                "nothing has been ingested yet: there is nothing to reconcile".into(),
            )
        })?;
        let accounts: Vec<AccountId> = if only.is_empty() {
            let mut conn = pool.acquire().await?;
            store::watch::tracked(&mut conn)
                .await?
                .into_iter()
                .collect()
        } else {
            only.to_vec()
        };
        let at = BlockRef::Hash(
            crate::domain::CryptoHash::parse(&cursor.hash)
                .map_err(|e| IngestError::Invalid(e.to_string()))?,
        );
        let mut chain = Vec::new();
        for account in &accounts {
            chain.push(
                read_baseline(rpc, &at, account)
                    .await
                    .map_err(|e| match e {
                        IngestError::Rpc(r) if r.is_garbage_collected() || r.is_unknown_block() => {
                            IngestError::HistoryGone {
                                next: cursor.height,
                                earliest: cursor.height + 1,
                            }
                        }
                        other => other,
                    })?,
            );
        }
        let mut tx = pool.begin().await?;
        if store::lock_cursor(&mut tx).await?.as_ref() != Some(&cursor) {
            continue;
        }
        let mut differences = Vec::new();
        for (account, truth) in accounts.iter().zip(&chain) {
            let keys: BTreeMap<PublicKey, AccessKey> = truth.keys.iter().cloned().collect();
            differences.extend(fix_keys(&mut tx, &cursor, account, &keys).await?);
            differences
                .extend(fix_account(&mut tx, &cursor, account, truth.account.as_ref()).await?);
        }
        if let Some(ctx) = alerts {
            let at = BlockHeader {
                height: cursor.height,
                hash: crate::domain::CryptoHash::parse(&cursor.hash)
                    .map_err(|e| IngestError::Invalid(e.to_string()))?,
                prev_hash: crate::domain::CryptoHash::from_bytes([0; 32]),
                timestamp_ns: cursor.timestamp_ns,
            };
            for d in &differences {
                let key = d.key.as_ref().map(|k| k.to_string());
                let title = format!("Stored state of {} differs from the chain", d.account);
                system_alert(
                    &mut tx,
                    ctx,
                    &at,
                    SystemAlert {
                        rule: "state_drift",
                        account: d.account.to_string(),
                        key,
                        title,
                        details: serde_json::json!({"account_id": d.account, "difference": d.what}),
                    },
                )
                .await?;
            }
        }
        sqlx::query("insert into reconcile_runs (block_height, block_hash, accounts, differences) values ($1, $2, $3, $4)")
            .bind(crate::store::convert::height_to_i64("height", cursor.height)?)
            .bind(&cursor.hash)
            .bind(accounts.len() as i32)
            .bind(differences.len() as i32)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Report {
            height: cursor.height,
            accounts: accounts.len(),
            differences,
        });
    }
    Err(IngestError::Invalid(
        "the cursor kept moving while reconciling; try again".into(),
    ))
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
) -> Result<Vec<Difference>, IngestError> {
    let stored = load_state(tx, account).await?;
    let mut out = Vec::new();
    let mut index = next_index(tx, true, account, &cursor.hash).await?;
    let mut keys: Vec<&PublicKey> = chain.keys().chain(stored.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (what, action) = match (stored.get(key), chain.get(key)) {
            (Some(s), Some(c)) if s == c => continue,
            (Some(s), Some(c)) => (format!("key {key}: stored {s:?}, chain {c:?}"), "updated"),
            (None, Some(_)) => (format!("key {key} is on chain but not stored"), "updated"),
            (Some(_), None) => (format!("key {key} is stored but not on chain"), "deleted"),
            (None, None) => continue,
        };
        let row = KeyRow {
            account_id: account,
            public_key: key,
            block_height: cursor.height,
            block_hash: &cursor.hash,
            index_in_block: index,
            action,
            access_key: chain.get(key),
            nonce_slot: None,
            cause: None,
            source: "reconcile",
            by_account_deletion: false,
        };
        insert_key_row(tx, &row).await?;
        match chain.get(key) {
            Some(ak) => upsert_key_state(tx, account, key, ak, cursor.height).await?,
            None => delete_key_state(tx, account, key).await?,
        }
        index += 1;
        tracing::error!(%account, "{what}");
        out.push(Difference {
            account: account.clone(),
            key: Some(key.clone()),
            what,
        });
    }
    Ok(out)
}

async fn fix_account(
    tx: &mut sqlx::PgConnection,
    cursor: &Cursor,
    account: &AccountId,
    chain: Option<&crate::domain::AccountState>,
) -> Result<Vec<Difference>, IngestError> {
    let stored = load_account(tx, account).await?;
    let what = match (stored.as_ref(), chain) {
        (Some(Some(s)), Some(c)) if s == c => return Ok(vec![]),
        (Some(None), None) => return Ok(vec![]),
        (None, None) => return Ok(vec![]),
        (Some(Some(s)), Some(c)) => format!(
            "balance: stored {} / locked {} / code {}, chain {} / locked {} / code {}",
            s.amount, s.locked, s.code_hash, c.amount, c.locked, c.code_hash
        ),
        (_, Some(_)) => "the account exists on chain but is stored as absent or deleted".to_owned(),
        (Some(Some(_)), None) => "the account is stored but does not exist on chain".to_owned(),
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
    tracing::error!(%account, "{what}");
    Ok(vec![Difference {
        account: account.clone(),
        key: None,
        what,
    }])
}
