//! Key history rows, current key state, and "which keys could sign at H".

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::domain::{AccessKey, AccountId, Cause, Permission, PublicKey, Yocto};
use crate::store::StoreError;
use crate::store::convert::{
    height_to_i64, i64_to_height, numeric_to_u64, numeric_to_yocto, u64_to_numeric,
    yocto_to_numeric,
};

/// One row of `key_events`.
pub struct KeyRow<'a> {
    pub account_id: &'a AccountId,
    pub public_key: &'a PublicKey,
    pub block_height: u64,
    pub block_hash: &'a str,
    pub index_in_block: i32,
    /// `added`, `updated`, `deleted` or `nonce_slot`.
    pub action: &'a str,
    pub access_key: Option<&'a AccessKey>,
    /// `(index, nonce)` of a gas-key nonce slot.
    pub nonce_slot: Option<(u16, u64)>,
    pub cause: Option<&'a Cause>,
    pub source: &'a str,
    pub by_account_deletion: bool,
}

/// Inserts a history row; a replay of the same row is a no-op.
pub async fn insert_key_row(tx: &mut PgConnection, row: &KeyRow<'_>) -> Result<bool, StoreError> {
    let permission = row.access_key.map(|k| &k.permission);
    let nonce = match (row.access_key, row.nonce_slot) {
        (Some(k), _) => Some(u64_to_numeric(k.nonce)),
        (None, Some((_, n))) => Some(u64_to_numeric(n)),
        _ => None,
    };
    let result = sqlx::query(
        "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block, action,
            permission, permission_raw, allowance, gas_key_balance, receiver_id, method_names, num_nonces,
            nonce, nonce_index, cause, tx_hash, receipt_hash, source, by_account_deletion)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         on conflict on constraint key_events_natural_key do nothing",
    )
    .bind(row.account_id.as_str())
    .bind(row.public_key.as_str())
    .bind(height_to_i64("block height", row.block_height)?)
    .bind(row.block_hash)
    .bind(row.index_in_block)
    .bind(row.action)
    .bind(permission.map(|p| p.kind().as_str()))
    .bind(permission.map(Permission::to_json))
    .bind(permission.and_then(Permission::allowance).map(yocto_to_numeric))
    .bind(permission.and_then(Permission::gas_key_balance).map(yocto_to_numeric))
    .bind(permission.and_then(Permission::receiver_id))
    .bind(permission.and_then(Permission::method_names).map(<[String]>::to_vec))
    .bind(permission.and_then(Permission::num_nonces).map(i32::from))
    .bind(nonce)
    .bind(row.nonce_slot.map(|(i, _)| i32::from(i)))
    .bind(row.cause.map(|c| c.kind.name().to_owned()))
    .bind(row.cause.and_then(|c| c.tx_hash.as_ref()).map(|h| h.as_str().to_owned()))
    .bind(row.cause.and_then(|c| c.receipt_hash.as_ref()).map(|h| h.as_str().to_owned()))
    .bind(row.source)
    .bind(row.by_account_deletion)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub async fn upsert_key_state(
    tx: &mut PgConnection,
    account: &AccountId,
    key: &PublicKey,
    ak: &AccessKey,
    height: u64,
) -> Result<(), StoreError> {
    let p = &ak.permission;
    let h = height_to_i64("block height", height)?;
    sqlx::query(
        "insert into key_state (account_id, public_key, permission, permission_raw, allowance, gas_key_balance,
            receiver_id, method_names, num_nonces, nonce, added_at_height, updated_at_height)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         on conflict (account_id, public_key) do update set permission = excluded.permission,
            permission_raw = excluded.permission_raw, allowance = excluded.allowance,
            gas_key_balance = excluded.gas_key_balance, receiver_id = excluded.receiver_id,
            method_names = excluded.method_names, num_nonces = excluded.num_nonces,
            nonce = excluded.nonce, updated_at_height = excluded.updated_at_height",
    )
    .bind(account.as_str())
    .bind(key.as_str())
    .bind(p.kind().as_str())
    .bind(p.to_json())
    .bind(p.allowance().map(yocto_to_numeric))
    .bind(p.gas_key_balance().map(yocto_to_numeric))
    .bind(p.receiver_id())
    .bind(p.method_names().map(<[String]>::to_vec))
    .bind(p.num_nonces().map(i32::from))
    .bind(u64_to_numeric(ak.nonce))
    .bind(h)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn delete_key_state(
    tx: &mut PgConnection,
    account: &AccountId,
    key: &PublicKey,
) -> Result<(), StoreError> {
    sqlx::query("delete from key_state where account_id = $1 and public_key = $2")
        .bind(account.as_str())
        .bind(key.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A key as `keywatch keys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub public_key: String,
    pub permission: String,
    pub permission_raw: serde_json::Value,
    pub allowance: Option<Yocto>,
    pub gas_key_balance: Option<Yocto>,
    pub receiver_id: Option<String>,
    pub method_names: Option<Vec<String>>,
    pub nonce: u64,
    /// Height of the row the state was read from.
    pub since_height: u64,
}

/// A key's state as read from `current_keys` or from its last history row.
#[derive(sqlx::FromRow)]
struct KeyRead {
    public_key: String,
    permission: Option<String>,
    permission_raw: Option<serde_json::Value>,
    allowance: Option<BigDecimal>,
    gas_key_balance: Option<BigDecimal>,
    receiver_id: Option<String>,
    method_names: Option<Vec<String>>,
    nonce: Option<BigDecimal>,
    height: i64,
}

impl KeyRead {
    fn into_info(self) -> Result<KeyInfo, StoreError> {
        let missing = |what: &str| {
            StoreError::Invalid(format!("key row for {} has no {what}", self.public_key))
        };
        Ok(KeyInfo {
            permission: self
                .permission
                .clone()
                .ok_or_else(|| missing("permission"))?,
            permission_raw: self
                .permission_raw
                .clone()
                .ok_or_else(|| missing("permission_raw"))?,
            allowance: self
                .allowance
                .as_ref()
                .map(|n| numeric_to_yocto("allowance", n))
                .transpose()?,
            gas_key_balance: self
                .gas_key_balance
                .as_ref()
                .map(|n| numeric_to_yocto("gas key balance", n))
                .transpose()?,
            nonce: numeric_to_u64(
                "nonce",
                self.nonce.as_ref().ok_or_else(|| missing("nonce"))?,
            )?,
            since_height: i64_to_height("height", self.height)?,
            receiver_id: self.receiver_id,
            method_names: self.method_names,
            public_key: self.public_key,
        })
    }
}

/// Keys of a watched account now (end of the cursor's block).
pub async fn keys_now(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<Vec<KeyInfo>, StoreError> {
    let rows: Vec<KeyRead> = sqlx::query_as(
        "select public_key, permission, permission_raw, allowance, gas_key_balance, receiver_id,
                method_names, nonce, updated_at_height as height
         from current_keys where account_id = $1 order by public_key",
    )
    .bind(account.as_str())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(KeyRead::into_info).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum KeysAtError {
    #[error(
        "height {height} is above the last processed block {cursor}; keywatch has no history there yet"
    )]
    AboveCursor { height: u64, cursor: u64 },
    #[error("nothing has been ingested yet, so there is no history")]
    NoCursor,
    #[error("{account} was not tracked at height {height}{}", .tracked_from.map(|h| format!(" (tracking starts at {h})")).unwrap_or_default())]
    NotTracked {
        account: AccountId,
        height: u64,
        tracked_from: Option<u64>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the tracking span covering `height` starts, if one does.
pub async fn span_start(
    conn: &mut PgConnection,
    account: &AccountId,
    height: u64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "select from_height from tracking_spans
         where account_id = $1 and from_height <= $2 and (to_height is null or to_height >= $2)
         order by from_height desc limit 1",
    )
    .bind(account.as_str())
    .bind(height_to_i64("height", height)?)
    .fetch_optional(conn)
    .await?)
}

/// [`keys_at`] as the ingest's key map.
pub async fn key_map_at(
    conn: &mut PgConnection,
    account: &AccountId,
    height: u64,
) -> Result<std::collections::BTreeMap<PublicKey, AccessKey>, KeysAtError> {
    keys_at(conn, account, height)
        .await?
        .into_iter()
        .map(|k| {
            let bad = |e: String| {
                StoreError::Invalid(format!("stored key {} of {account}: {e}", k.public_key))
            };
            let key = PublicKey::parse(&k.public_key).map_err(|e| bad(e.to_string()))?;
            let permission =
                crate::rpc::views::permission_from_json(k.permission_raw).map_err(bad)?;
            Ok((
                key,
                AccessKey {
                    nonce: k.nonce,
                    permission,
                },
            ))
        })
        .collect::<Result<_, StoreError>>()
        .map_err(KeysAtError::from)
}

/// Each key's last write at or below `$3` since `$2` (the span's start),
/// unless it deleted the key. The account's keys are found by skipping
/// through the index one key at a time, and each key's last write is one
/// probe, so the cost is the number of keys, not of writes. Within one
/// block, a baseline or reconcile row describes the state after the block's
/// chain writes, so it ranks above them (`source_rank`).
pub const KEYS_AT: &str = "with recursive keys(public_key) as (
         (select public_key from key_events where account_id = $1 and action <> 'nonce_slot'
          order by public_key limit 1)
         union all
         select (select e.public_key from key_events e
                 where e.account_id = $1 and e.public_key > k.public_key and e.action <> 'nonce_slot'
                 order by e.public_key limit 1)
         from keys k where k.public_key is not null)
     select w.public_key, w.permission, w.permission_raw, w.allowance, w.gas_key_balance,
            w.receiver_id, w.method_names, w.nonce, w.block_height as height
     from keys k
     cross join lateral (
         select * from key_events e
         where e.account_id = $1 and e.public_key = k.public_key
           and e.block_height between $2 and $3 and e.action <> 'nonce_slot'
         order by e.block_height desc, e.source_rank desc, e.index_in_block desc limit 1) w
     where k.public_key is not null and w.action <> 'deleted'
     order by w.public_key";

/// The exact key set that could sign for `account` at the end of block
/// `height`: for each key, its last write at or below `height` within the
/// tracking span that covers `height`, unless that write deleted it.
pub async fn keys_at(
    conn: &mut PgConnection,
    account: &AccountId,
    height: u64,
) -> Result<Vec<KeyInfo>, KeysAtError> {
    let cursor = crate::store::cursor(&mut *conn)
        .await?
        .ok_or(KeysAtError::NoCursor)?;
    if height > cursor.height {
        return Err(KeysAtError::AboveCursor {
            height,
            cursor: cursor.height,
        });
    }
    let h = height_to_i64("height", height).map_err(StoreError::from)?;
    let Some(from) = span_start(conn, account, height).await? else {
        let first: Option<i64> = sqlx::query_scalar(
            "select min(from_height) from tracking_spans where account_id = $1 and from_height > $2",
        )
        .bind(account.as_str())
        .bind(h)
        .fetch_one(&mut *conn)
        .await
        .map_err(StoreError::from)?;
        return Err(KeysAtError::NotTracked {
            account: account.clone(),
            height,
            tracked_from: first.map(|f| f as u64),
        });
    };
    let rows: Vec<KeyRead> = sqlx::query_as(KEYS_AT)
        .bind(account.as_str())
        .bind(from)
        .bind(h)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    Ok(rows
        .into_iter()
        .map(KeyRead::into_info)
        .collect::<Result<_, _>>()?)
}

/// The current key set of an account, as the ingest judges writes against it.
pub async fn load_state(
    conn: &mut PgConnection,
    account: &AccountId,
) -> Result<std::collections::BTreeMap<PublicKey, AccessKey>, StoreError> {
    let rows: Vec<(String, serde_json::Value, BigDecimal)> = sqlx::query_as(
        "select public_key, permission_raw, nonce from key_state where account_id = $1",
    )
    .bind(account.as_str())
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(key, raw, nonce)| {
            let bad =
                |e: String| StoreError::Invalid(format!("stored key {key} of {account}: {e}"));
            let public_key = PublicKey::parse(&key).map_err(|e| bad(e.to_string()))?;
            let permission = crate::rpc::views::permission_from_json(raw).map_err(bad)?;
            Ok((
                public_key,
                AccessKey {
                    nonce: numeric_to_u64("nonce", &nonce)?,
                    permission,
                },
            ))
        })
        .collect()
}

/// Records a change of a type this version does not know, whole.
pub async fn insert_unknown_change(
    tx: &mut PgConnection,
    account: Option<&AccountId>,
    block_height: u64,
    block_hash: &str,
    index_in_block: i32,
    change_type: &str,
    raw: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into unknown_changes (account_id, block_height, block_hash, index_in_block, change_type, raw)
         values ($1, $2, $3, $4, $5, $6) on conflict on constraint unknown_changes_natural_key do nothing",
    )
    .bind(account.map(AccountId::as_str))
    .bind(height_to_i64("block height", block_height)?)
    .bind(block_hash)
    .bind(index_in_block)
    .bind(change_type)
    .bind(raw)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
