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
    Ok(insert_key_rows(tx, std::slice::from_ref(row)).await? == 1)
}

/// Inserts history rows in one statement, one array per column; replays
/// are no-ops. Returns how many rows were new. Method names travel as one
/// jsonb array per row (Postgres has no arrays of uneven arrays).
pub async fn insert_key_rows(
    tx: &mut PgConnection,
    rows: &[KeyRow<'_>],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut c = KeyColumns::default();
    for row in rows {
        c.push(row)?;
    }
    let result = sqlx::query(
        "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block, action,
            permission, permission_raw, allowance, gas_key_balance, receiver_id, method_names, num_nonces,
            nonce, nonce_index, cause, tx_hash, receipt_hash, source, by_account_deletion)
         select r.account_id, r.public_key, r.block_height, r.block_hash, r.index_in_block, r.action,
            r.permission, r.permission_raw, r.allowance, r.gas_key_balance, r.receiver_id,
            case when r.method_names is null then null
                 else array(select m.name from jsonb_array_elements_text(r.method_names)
                            with ordinality as m(name, n) order by m.n) end,
            r.num_nonces, r.nonce, r.nonce_index, r.cause, r.tx_hash, r.receipt_hash, r.source,
            r.by_account_deletion
         from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::integer[], $6::text[],
                     $7::text[], $8::jsonb[], $9::numeric[], $10::numeric[], $11::text[], $12::jsonb[],
                     $13::integer[], $14::numeric[], $15::integer[], $16::text[], $17::text[],
                     $18::text[], $19::text[], $20::boolean[])
              as r(account_id, public_key, block_height, block_hash, index_in_block, action,
                   permission, permission_raw, allowance, gas_key_balance, receiver_id, method_names,
                   num_nonces, nonce, nonce_index, cause, tx_hash, receipt_hash, source,
                   by_account_deletion)
         on conflict on constraint key_events_natural_key do nothing",
    )
    .bind(c.account_id)
    .bind(c.public_key)
    .bind(c.block_height)
    .bind(c.block_hash)
    .bind(c.index_in_block)
    .bind(c.action)
    .bind(c.permission)
    .bind(c.permission_raw)
    .bind(c.allowance)
    .bind(c.gas_key_balance)
    .bind(c.receiver_id)
    .bind(c.method_names)
    .bind(c.num_nonces)
    .bind(c.nonce)
    .bind(c.nonce_index)
    .bind(c.cause)
    .bind(c.tx_hash)
    .bind(c.receipt_hash)
    .bind(c.source)
    .bind(c.by_account_deletion)
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
}

/// `key_events` as one array per column, for `unnest`: every push adds one
/// element to every array, so their lengths cannot differ.
#[derive(Default)]
struct KeyColumns {
    account_id: Vec<String>,
    public_key: Vec<String>,
    block_height: Vec<i64>,
    block_hash: Vec<String>,
    index_in_block: Vec<i32>,
    action: Vec<String>,
    permission: Vec<Option<String>>,
    permission_raw: Vec<Option<serde_json::Value>>,
    allowance: Vec<Option<BigDecimal>>,
    gas_key_balance: Vec<Option<BigDecimal>>,
    receiver_id: Vec<Option<String>>,
    method_names: Vec<Option<serde_json::Value>>,
    num_nonces: Vec<Option<i32>>,
    nonce: Vec<Option<BigDecimal>>,
    nonce_index: Vec<Option<i32>>,
    cause: Vec<Option<String>>,
    tx_hash: Vec<Option<String>>,
    receipt_hash: Vec<Option<String>>,
    source: Vec<String>,
    by_account_deletion: Vec<bool>,
}

impl KeyColumns {
    fn push(&mut self, row: &KeyRow<'_>) -> Result<(), StoreError> {
        let permission = row.access_key.map(|k| &k.permission);
        let nonce = match (row.access_key, row.nonce_slot) {
            (Some(k), _) => Some(u64_to_numeric(k.nonce)),
            (None, Some((_, n))) => Some(u64_to_numeric(n)),
            _ => None,
        };
        self.block_height
            .push(height_to_i64("block height", row.block_height)?);
        self.account_id.push(row.account_id.as_str().to_owned());
        self.public_key.push(row.public_key.as_str().to_owned());
        self.block_hash.push(row.block_hash.to_owned());
        self.index_in_block.push(row.index_in_block);
        self.action.push(row.action.to_owned());
        self.permission
            .push(permission.map(|p| p.kind().as_str().to_owned()));
        self.permission_raw
            .push(permission.map(Permission::to_json));
        self.allowance.push(
            permission
                .and_then(Permission::allowance)
                .map(yocto_to_numeric),
        );
        self.gas_key_balance.push(
            permission
                .and_then(Permission::gas_key_balance)
                .map(yocto_to_numeric),
        );
        self.receiver_id.push(
            permission
                .and_then(Permission::receiver_id)
                .map(str::to_owned),
        );
        self.method_names.push(
            permission
                .and_then(Permission::method_names)
                .map(|m| serde_json::json!(m)),
        );
        self.num_nonces
            .push(permission.and_then(Permission::num_nonces).map(i32::from));
        self.nonce.push(nonce);
        self.nonce_index
            .push(row.nonce_slot.map(|(i, _)| i32::from(i)));
        self.cause.push(row.cause.map(|c| c.kind.name().to_owned()));
        self.tx_hash.push(
            row.cause
                .and_then(|c| c.tx_hash.as_ref())
                .map(|h| h.as_str().to_owned()),
        );
        self.receipt_hash.push(
            row.cause
                .and_then(|c| c.receipt_hash.as_ref())
                .map(|h| h.as_str().to_owned()),
        );
        self.source.push(row.source.to_owned());
        self.by_account_deletion.push(row.by_account_deletion);
        Ok(())
    }
}

/// One key's state as `key_state` holds it, set at `height`.
pub struct KeyStateRow<'a> {
    pub account_id: &'a AccountId,
    pub public_key: &'a PublicKey,
    pub access_key: &'a AccessKey,
    /// `added_at_height` if the key is new to `key_state`.
    pub added_at: u64,
    /// `updated_at_height`.
    pub height: u64,
}

pub async fn upsert_key_state(
    tx: &mut PgConnection,
    account: &AccountId,
    key: &PublicKey,
    ak: &AccessKey,
    height: u64,
) -> Result<(), StoreError> {
    let row = KeyStateRow {
        account_id: account,
        public_key: key,
        access_key: ak,
        added_at: height,
        height,
    };
    upsert_key_states(tx, &[row]).await
}

/// Sets the state of keys in one statement. A key not yet in `key_state`
/// is added at its `added_at`; an existing one keeps its `added_at_height`. The
/// keys must be distinct (one statement cannot update a row twice).
pub async fn upsert_key_states(
    tx: &mut PgConnection,
    rows: &[KeyStateRow<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut account_id = Vec::with_capacity(rows.len());
    let mut public_key = Vec::with_capacity(rows.len());
    let mut permission = Vec::with_capacity(rows.len());
    let mut permission_raw = Vec::with_capacity(rows.len());
    let mut allowance = Vec::with_capacity(rows.len());
    let mut gas_key_balance = Vec::with_capacity(rows.len());
    let mut receiver_id = Vec::with_capacity(rows.len());
    let mut method_names = Vec::with_capacity(rows.len());
    let mut num_nonces = Vec::with_capacity(rows.len());
    let mut nonce = Vec::with_capacity(rows.len());
    let mut height = Vec::with_capacity(rows.len());
    let mut added_at = Vec::with_capacity(rows.len());
    for r in rows {
        let p = &r.access_key.permission;
        height.push(height_to_i64("block height", r.height)?);
        added_at.push(height_to_i64("block height", r.added_at)?);
        account_id.push(r.account_id.as_str().to_owned());
        public_key.push(r.public_key.as_str().to_owned());
        permission.push(p.kind().as_str().to_owned());
        permission_raw.push(p.to_json());
        allowance.push(p.allowance().map(yocto_to_numeric));
        gas_key_balance.push(p.gas_key_balance().map(yocto_to_numeric));
        receiver_id.push(p.receiver_id().map(str::to_owned));
        method_names.push(p.method_names().map(|m| serde_json::json!(m)));
        num_nonces.push(p.num_nonces().map(i32::from));
        nonce.push(u64_to_numeric(r.access_key.nonce));
    }
    sqlx::query(
        "insert into key_state (account_id, public_key, permission, permission_raw, allowance, gas_key_balance,
            receiver_id, method_names, num_nonces, nonce, added_at_height, updated_at_height)
         select r.account_id, r.public_key, r.permission, r.permission_raw, r.allowance,
            r.gas_key_balance, r.receiver_id,
            case when r.method_names is null then null
                 else array(select m.name from jsonb_array_elements_text(r.method_names)
                            with ordinality as m(name, n) order by m.n) end,
            r.num_nonces, r.nonce, r.added_at, r.height
         from unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::numeric[], $6::numeric[],
                     $7::text[], $8::jsonb[], $9::integer[], $10::numeric[], $11::bigint[],
                     $12::bigint[])
              as r(account_id, public_key, permission, permission_raw, allowance, gas_key_balance,
                   receiver_id, method_names, num_nonces, nonce, added_at, height)
         on conflict (account_id, public_key) do update set permission = excluded.permission,
            permission_raw = excluded.permission_raw, allowance = excluded.allowance,
            gas_key_balance = excluded.gas_key_balance, receiver_id = excluded.receiver_id,
            method_names = excluded.method_names, num_nonces = excluded.num_nonces,
            nonce = excluded.nonce, updated_at_height = excluded.updated_at_height",
    )
    .bind(account_id)
    .bind(public_key)
    .bind(permission)
    .bind(permission_raw)
    .bind(allowance)
    .bind(gas_key_balance)
    .bind(receiver_id)
    .bind(method_names)
    .bind(num_nonces)
    .bind(nonce)
    .bind(added_at)
    .bind(height)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn delete_key_state(
    tx: &mut PgConnection,
    account: &AccountId,
    key: &PublicKey,
) -> Result<(), StoreError> {
    delete_key_states(tx, &[(account, key)]).await
}

/// Removes keys from `key_state` in one statement.
pub async fn delete_key_states(
    tx: &mut PgConnection,
    keys: &[(&AccountId, &PublicKey)],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (accounts, public_keys): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(a, k)| (a.as_str(), k.as_str())).unzip();
    sqlx::query(
        "delete from key_state s using unnest($1::text[], $2::text[]) as r(account_id, public_key)
         where s.account_id = r.account_id and s.public_key = r.public_key",
    )
    .bind(accounts)
    .bind(public_keys)
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
    let mut all = load_states(conn, std::slice::from_ref(account)).await?;
    Ok(all.remove(account).unwrap_or_default())
}

#[derive(sqlx::FromRow)]
struct KeyStateRead {
    account_id: String,
    public_key: String,
    permission_raw: serde_json::Value,
    nonce: BigDecimal,
}

/// The current key sets of several accounts in one statement; every
/// account asked for has an entry (empty when it has no key).
pub async fn load_states(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> Result<KeySets, StoreError> {
    let mut out: KeySets = accounts
        .iter()
        .map(|a| (a.clone(), Default::default()))
        .collect();
    if accounts.is_empty() {
        return Ok(out);
    }
    let names: Vec<&str> = accounts.iter().map(AccountId::as_str).collect();
    let rows: Vec<KeyStateRead> = sqlx::query_as(
        "select account_id, public_key, permission_raw, nonce from key_state
         where account_id = any($1::text[])",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    for r in rows {
        let bad = |e: String| {
            StoreError::Invalid(format!(
                "stored key {} of {}: {e}",
                r.public_key, r.account_id
            ))
        };
        let account = AccountId::parse(&r.account_id).map_err(|e| bad(e.to_string()))?;
        let public_key = PublicKey::parse(&r.public_key).map_err(|e| bad(e.to_string()))?;
        let permission =
            crate::rpc::views::permission_from_json(r.permission_raw.clone()).map_err(bad)?;
        let key = AccessKey {
            nonce: numeric_to_u64("nonce", &r.nonce)?,
            permission,
        };
        out.entry(account).or_default().insert(public_key, key);
    }
    Ok(out)
}

/// Current keys by account.
pub type KeySets =
    std::collections::HashMap<AccountId, std::collections::BTreeMap<PublicKey, AccessKey>>;

/// A change of a type this version does not know, kept whole.
pub struct UnknownRow<'a> {
    pub account_id: Option<&'a AccountId>,
    pub block_height: u64,
    pub block_hash: &'a str,
    pub index_in_block: i32,
    pub change_type: &'a str,
    pub raw: serde_json::Value,
}

/// Records changes of types this version does not know, in one statement.
pub async fn insert_unknown_changes(
    tx: &mut PgConnection,
    rows: &[UnknownRow<'_>],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut heights = Vec::with_capacity(rows.len());
    for r in rows {
        heights.push(height_to_i64("block height", r.block_height)?);
    }
    let accounts: Vec<Option<&str>> = rows
        .iter()
        .map(|r| r.account_id.map(AccountId::as_str))
        .collect();
    let hashes: Vec<&str> = rows.iter().map(|r| r.block_hash).collect();
    let indexes: Vec<i32> = rows.iter().map(|r| r.index_in_block).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.change_type).collect();
    let raws: Vec<&serde_json::Value> = rows.iter().map(|r| &r.raw).collect();
    sqlx::query(
        "insert into unknown_changes (account_id, block_height, block_hash, index_in_block, change_type, raw)
         select * from unnest($1::text[], $2::bigint[], $3::text[], $4::integer[], $5::text[], $6::jsonb[])
         on conflict on constraint unknown_changes_natural_key do nothing",
    )
    .bind(accounts)
    .bind(heights)
    .bind(hashes)
    .bind(indexes)
    .bind(types)
    .bind(raws)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
