//! JSON views of the NEAR RPC, turned into domain types at this boundary.
//!
//! Field sets follow nearcore 2.14 (near-primitives 0.38) and accept older
//! nodes: unknown fields are ignored (never `deny_unknown_fields` on
//! responses), new change types, causes and permissions become `Unknown`
//! values carrying the raw JSON. Malformed known shapes are errors.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::domain::{
    AccessKey, AccountId, AccountState, BlockHeader, Cause, CauseKind, ChangeValue, CryptoHash,
    Permission, PublicKey, StateChange, Touched, TouchedKind, Yocto,
};

// ---- domain to wire (what a node sends; the simulator and raw storage use it)
/// An `AccountView` as nearcore serializes it (no block fields).
pub fn account_view(s: &AccountState) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("amount".into(), json!(s.amount.to_string()));
    m.insert("code_hash".into(), json!(s.code_hash.as_str()));
    m.insert("locked".into(), json!(s.locked.to_string()));
    m.insert("storage_paid_at".into(), json!(0));
    m.insert("storage_usage".into(), json!(s.storage_usage));
    if let Some(h) = &s.global_contract_hash {
        m.insert("global_contract_hash".into(), json!(h.as_str()));
    }
    if let Some(a) = &s.global_contract_account_id {
        m.insert("global_contract_account_id".into(), json!(a.as_str()));
    }
    m
}

pub fn access_key_view(ak: &AccessKey) -> Value {
    json!({"nonce": ak.nonce, "permission": ak.permission.to_json()})
}

fn cause_json(c: &Cause) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(c.kind.name()));
    if let Some(h) = &c.tx_hash {
        m.insert("tx_hash".into(), json!(h.as_str()));
    }
    if let Some(h) = &c.receipt_hash {
        m.insert("receipt_hash".into(), json!(h.as_str()));
    }
    Value::Object(m)
}

/// keywatch keeps no contract code: an empty wasm module stands in for it.
const CODE_BASE64: &str = "AGFzbQEAAAA=";

/// One `changes` entry, `{cause, type, change}`, exactly as a node sends it.
pub fn change_json(c: &StateChange) -> Value {
    let change = match &c.value {
        ChangeValue::AccountUpdate { account_id, state } => {
            let mut m = account_view(state);
            m.insert("account_id".into(), json!(account_id));
            Value::Object(m)
        }
        ChangeValue::AccessKeyUpdate {
            account_id,
            public_key,
            access_key,
        } => {
            json!({"account_id": account_id, "public_key": public_key.as_str(), "access_key": access_key_view(access_key)})
        }
        ChangeValue::AccessKeyDeletion {
            account_id,
            public_key,
        } => json!({"account_id": account_id, "public_key": public_key.as_str()}),
        ChangeValue::GasKeyNonceUpdate {
            account_id,
            public_key,
            index,
            nonce,
        } => {
            json!({"account_id": account_id, "public_key": public_key.as_str(), "index": index, "nonce": nonce})
        }
        ChangeValue::ContractCodeUpdate { account_id } => {
            json!({"account_id": account_id, "code_base64": CODE_BASE64})
        }
        ChangeValue::AccountDeletion { account_id }
        | ChangeValue::ContractCodeDeletion { account_id }
        | ChangeValue::DataUpdate { account_id }
        | ChangeValue::DataDeletion { account_id } => json!({"account_id": account_id}),
        ChangeValue::Unknown { raw, .. } => return raw.clone(),
    };
    json!({"cause": cause_json(&c.cause), "type": c.value.type_name(), "change": change})
}

// ---- wire to domain

fn from_value<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| format!("{what}: {e}"))
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        permission_from_json(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
struct FunctionCallView {
    #[serde(default)]
    allowance: Option<Yocto>,
    receiver_id: String,
    method_names: Vec<String>,
}

#[derive(Deserialize)]
struct GasKeyFullAccessView {
    balance: Yocto,
    num_nonces: u16,
}

#[derive(Deserialize)]
struct GasKeyFunctionCallView {
    #[serde(default)]
    allowance: Option<Yocto>,
    balance: Yocto,
    receiver_id: String,
    method_names: Vec<String>,
    num_nonces: u16,
}

/// `"FullAccess"`, or a one-key object naming the variant; anything else
/// string- or single-key-shaped is a future variant and kept raw.
pub fn permission_from_json(raw: Value) -> Result<Permission, String> {
    match &raw {
        Value::String(s) if s == "FullAccess" => Ok(Permission::FullAccess),
        Value::String(_) => Ok(Permission::Unknown(raw)),
        Value::Object(map) if map.len() == 1 => {
            let (name, body) = map.iter().next().expect("one entry");
            match name.as_str() {
                "FunctionCall" => {
                    let v: FunctionCallView = from_value("FunctionCall permission", body.clone())?;
                    Ok(Permission::FunctionCall {
                        allowance: v.allowance,
                        receiver_id: v.receiver_id,
                        method_names: v.method_names,
                    })
                }
                "GasKeyFullAccess" => {
                    let v: GasKeyFullAccessView =
                        from_value("GasKeyFullAccess permission", body.clone())?;
                    Ok(Permission::GasKeyFullAccess {
                        balance: v.balance,
                        num_nonces: v.num_nonces,
                    })
                }
                "GasKeyFunctionCall" => {
                    let v: GasKeyFunctionCallView =
                        from_value("GasKeyFunctionCall permission", body.clone())?;
                    Ok(Permission::GasKeyFunctionCall {
                        allowance: v.allowance,
                        balance: v.balance,
                        receiver_id: v.receiver_id,
                        method_names: v.method_names,
                        num_nonces: v.num_nonces,
                    })
                }
                _ => Ok(Permission::Unknown(raw)),
            }
        }
        other => Err(format!(
            "permission must be \"FullAccess\" or an object with one key, got {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AccessKeyView {
    pub nonce: u64,
    pub permission: Permission,
}

impl From<AccessKeyView> for AccessKey {
    fn from(v: AccessKeyView) -> Self {
        AccessKey {
            nonce: v.nonce,
            permission: v.permission,
        }
    }
}

/// `AccountView`: every field after `storage_usage` is optional.
#[derive(Debug, Clone, Deserialize)]
pub struct AccountView {
    pub amount: Yocto,
    pub locked: Yocto,
    pub code_hash: CryptoHash,
    pub storage_usage: u64,
    #[serde(default)]
    pub global_contract_hash: Option<CryptoHash>,
    #[serde(default)]
    pub global_contract_account_id: Option<AccountId>,
}

impl From<AccountView> for AccountState {
    fn from(v: AccountView) -> Self {
        AccountState {
            amount: v.amount,
            locked: v.locked,
            code_hash: v.code_hash,
            storage_usage: v.storage_usage,
            global_contract_hash: v.global_contract_hash,
            global_contract_account_id: v.global_contract_account_id,
        }
    }
}

#[derive(Deserialize)]
struct CauseView {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    tx_hash: Option<CryptoHash>,
    #[serde(default)]
    receipt_hash: Option<CryptoHash>,
}

#[derive(Deserialize)]
struct AccountIdOnly {
    account_id: AccountId,
}

#[derive(Deserialize)]
struct AccessKeyUpdateView {
    account_id: AccountId,
    public_key: PublicKey,
    access_key: AccessKeyView,
}

#[derive(Deserialize)]
struct AccessKeyDeletionView {
    account_id: AccountId,
    public_key: PublicKey,
}

#[derive(Deserialize)]
struct GasKeyNonceView {
    account_id: AccountId,
    public_key: PublicKey,
    index: u16,
    nonce: u64,
}

#[derive(Deserialize)]
struct AccountUpdateView {
    account_id: AccountId,
    #[serde(flatten)]
    account: AccountView,
}

impl<'de> Deserialize<'de> for StateChange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        state_change_from_json(Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A state change's `cause`: `{type, tx_hash?, receipt_hash?}`.
pub fn cause_from_json(raw: Value) -> Result<Cause, String> {
    let cause: CauseView = from_value("cause", raw)?;
    Ok(Cause {
        kind: CauseKind::from_name(&cause.kind),
        tx_hash: cause.tx_hash,
        receipt_hash: cause.receipt_hash,
    })
}

/// One element of a `changes` response: `{cause, type, change}`.
pub fn state_change_from_json(raw: Value) -> Result<StateChange, String> {
    let Value::Object(obj) = &raw else {
        return Err(format!(
            "state change must be an object, got {}",
            json_kind(&raw)
        ));
    };
    let cause = cause_from_json(obj.get("cause").cloned().unwrap_or(Value::Null))?;
    let type_name = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("state change has no string \"type\"")?
        .to_owned();
    let change = obj.get("change").cloned().unwrap_or(Value::Null);
    let what = format!("{type_name} change");
    let value = match type_name.as_str() {
        "account_update" => {
            let v: AccountUpdateView = from_value(&what, change)?;
            ChangeValue::AccountUpdate {
                account_id: v.account_id,
                state: v.account.into(),
            }
        }
        "account_deletion" => {
            let v: AccountIdOnly = from_value(&what, change)?;
            ChangeValue::AccountDeletion {
                account_id: v.account_id,
            }
        }
        "access_key_update" => {
            let v: AccessKeyUpdateView = from_value(&what, change)?;
            ChangeValue::AccessKeyUpdate {
                account_id: v.account_id,
                public_key: v.public_key,
                access_key: v.access_key.into(),
            }
        }
        "access_key_deletion" => {
            let v: AccessKeyDeletionView = from_value(&what, change)?;
            ChangeValue::AccessKeyDeletion {
                account_id: v.account_id,
                public_key: v.public_key,
            }
        }
        "gas_key_nonce_update" => {
            let v: GasKeyNonceView = from_value(&what, change)?;
            ChangeValue::GasKeyNonceUpdate {
                account_id: v.account_id,
                public_key: v.public_key,
                index: v.index,
                nonce: v.nonce,
            }
        }
        "contract_code_update" | "contract_code_deletion" | "data_update" | "data_deletion" => {
            let v: AccountIdOnly = from_value(&what, change)?;
            let account_id = v.account_id;
            match type_name.as_str() {
                "contract_code_update" => ChangeValue::ContractCodeUpdate { account_id },
                "contract_code_deletion" => ChangeValue::ContractCodeDeletion { account_id },
                "data_update" => ChangeValue::DataUpdate { account_id },
                _ => ChangeValue::DataDeletion { account_id },
            }
        }
        _ => ChangeValue::Unknown {
            account_id: change
                .get("account_id")
                .and_then(Value::as_str)
                .and_then(|s| AccountId::parse(s).ok()),
            type_name,
            raw: raw.clone(),
        },
    };
    Ok(StateChange { cause, value })
}

/// `changes` / `EXPERIMENTAL_changes` result.
#[derive(Debug, Clone, Deserialize)]
pub struct ChangesView {
    pub block_hash: CryptoHash,
    pub changes: Vec<StateChange>,
}

#[derive(Deserialize)]
struct TouchedView {
    #[serde(rename = "type")]
    kind: String,
    account_id: AccountId,
}

/// `block_effects` / `EXPERIMENTAL_changes_in_block` result. The list comes
/// under `changes` (nearcore) or `block_effects` (the current docs): both work.
#[derive(Debug, Clone)]
pub struct BlockEffectsView {
    pub block_hash: CryptoHash,
    pub touched: Vec<Touched>,
}

impl<'de> Deserialize<'de> for BlockEffectsView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            block_hash: CryptoHash,
            #[serde(default)]
            changes: Option<Vec<TouchedView>>,
            #[serde(default)]
            block_effects: Option<Vec<TouchedView>>,
        }
        let raw = Raw::deserialize(d)?;
        let list = raw.changes.or(raw.block_effects).ok_or_else(|| {
            serde::de::Error::custom("block effects have neither \"changes\" nor \"block_effects\"")
        })?;
        let touched = list
            .into_iter()
            .map(|t| Touched {
                kind: match t.kind.as_str() {
                    "account_touched" => TouchedKind::Account,
                    "access_key_touched" => TouchedKind::AccessKey,
                    "data_touched" => TouchedKind::Data,
                    "contract_code_touched" => TouchedKind::ContractCode,
                    _ => TouchedKind::Unknown(t.kind),
                },
                account_id: t.account_id,
            })
            .collect();
        Ok(BlockEffectsView {
            block_hash: raw.block_hash,
            touched,
        })
    }
}

/// The header fields keywatch needs from `block`.
impl<'de> Deserialize<'de> for BlockHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            height: u64,
            hash: CryptoHash,
            prev_hash: CryptoHash,
            /// The JSON number `timestamp` exceeds 2^53; the string is exact.
            timestamp_nanosec: String,
        }
        let raw = Raw::deserialize(d)?;
        let timestamp_ns = raw.timestamp_nanosec.parse::<u64>().map_err(|_| {
            serde::de::Error::custom(format!(
                "timestamp_nanosec {:?} is not a u64",
                raw.timestamp_nanosec
            ))
        })?;
        Ok(BlockHeader {
            height: raw.height,
            hash: raw.hash,
            prev_hash: raw.prev_hash,
            timestamp_ns,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockView {
    pub author: Option<AccountId>,
    pub header: BlockHeader,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SyncInfoView {
    pub latest_block_hash: CryptoHash,
    pub latest_block_height: u64,
    pub earliest_block_height: Option<u64>,
    pub earliest_block_hash: Option<CryptoHash>,
    pub syncing: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusView {
    pub chain_id: String,
    pub protocol_version: u32,
    pub latest_protocol_version: u32,
    pub sync_info: SyncInfoView,
}

/// `query` results carry the block they were read at.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryBlock {
    pub block_height: u64,
    pub block_hash: CryptoHash,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AccountAt {
    #[serde(flatten)]
    pub account: AccountView,
    #[serde(flatten)]
    pub at: QueryBlock,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyListEntry {
    pub public_key: PublicKey,
    pub access_key: AccessKeyView,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeyListPage {
    pub keys: Vec<KeyListEntry>,
    #[serde(default)]
    pub last_key: Option<PublicKey>,
    #[serde(flatten)]
    pub at: QueryBlock,
}

/// `view_access_key` result: the key, or the legacy "does not exist" result
/// (a *successful* response with an `error` string).
#[derive(Debug, Clone)]
pub enum AccessKeyLookup {
    Found(AccessKeyView, QueryBlock),
    Missing { message: String, at: QueryBlock },
}

impl<'de> Deserialize<'de> for AccessKeyLookup {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let at: QueryBlock = serde_json::from_value(v.clone()).map_err(serde::de::Error::custom)?;
        if let Some(message) = v.get("error").and_then(Value::as_str) {
            return Ok(AccessKeyLookup::Missing {
                message: message.to_owned(),
                at,
            });
        }
        let key: AccessKeyView = serde_json::from_value(v).map_err(serde::de::Error::custom)?;
        Ok(AccessKeyLookup::Found(key, at))
    }
}

/// The JSON-RPC error object: `{name, cause: {name, info?}, code, message, data}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorEnvelope {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub cause: Option<ErrorCause>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorCause {
    pub name: String,
    #[serde(default)]
    pub info: Option<Value>,
}
