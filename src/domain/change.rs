//! State changes as a block reports them, each with its cause.
//!
//! New change types and causes arrive with new node versions; both enums keep
//! an `Unknown` variant carrying the raw name so nothing fails to parse.

use crate::domain::{AccountId, CryptoHash, Permission, PublicKey, Yocto};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub nonce: u64,
    pub permission: Permission,
}

/// The fields of an account view that keywatch keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub amount: Yocto,
    pub locked: Yocto,
    pub code_hash: CryptoHash,
    pub storage_usage: u64,
    pub global_contract_hash: Option<CryptoHash>,
    pub global_contract_account_id: Option<AccountId>,
}

impl AccountState {
    /// A local contract is deployed (code_hash not all zeros) or a global one is used.
    pub fn has_contract(&self) -> bool {
        self.code_hash != CryptoHash::from_bytes([0; 32])
            || self.global_contract_hash.is_some()
            || self.global_contract_account_id.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CauseKind {
    NotWritableToDisk,
    InitialState,
    TransactionProcessing,
    ActionReceiptProcessingStarted,
    ActionReceiptGasReward,
    ReceiptProcessing,
    PostponedReceipt,
    UpdatedDelayedReceipts,
    ValidatorAccountsUpdate,
    Migration,
    BandwidthSchedulerStateUpdate,
    Unknown(String),
}

impl CauseKind {
    const KNOWN: [(&'static str, CauseKind); 11] = [
        ("not_writable_to_disk", CauseKind::NotWritableToDisk),
        ("initial_state", CauseKind::InitialState),
        ("transaction_processing", CauseKind::TransactionProcessing),
        (
            "action_receipt_processing_started",
            CauseKind::ActionReceiptProcessingStarted,
        ),
        (
            "action_receipt_gas_reward",
            CauseKind::ActionReceiptGasReward,
        ),
        ("receipt_processing", CauseKind::ReceiptProcessing),
        ("postponed_receipt", CauseKind::PostponedReceipt),
        (
            "updated_delayed_receipts",
            CauseKind::UpdatedDelayedReceipts,
        ),
        (
            "validator_accounts_update",
            CauseKind::ValidatorAccountsUpdate,
        ),
        ("migration", CauseKind::Migration),
        (
            "bandwidth_scheduler_state_update",
            CauseKind::BandwidthSchedulerStateUpdate,
        ),
    ];

    pub fn from_name(name: &str) -> CauseKind {
        Self::KNOWN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| CauseKind::Unknown(name.to_owned()))
    }

    pub fn name(&self) -> &str {
        match self {
            CauseKind::Unknown(name) => name,
            known => Self::KNOWN
                .iter()
                .find(|(_, k)| k == known)
                .map(|(n, _)| *n)
                .expect("every known cause is in KNOWN"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub kind: CauseKind,
    pub tx_hash: Option<CryptoHash>,
    pub receipt_hash: Option<CryptoHash>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeValue {
    AccountUpdate {
        account_id: AccountId,
        state: AccountState,
    },
    AccountDeletion {
        account_id: AccountId,
    },
    AccessKeyUpdate {
        account_id: AccountId,
        public_key: PublicKey,
        access_key: AccessKey,
    },
    AccessKeyDeletion {
        account_id: AccountId,
        public_key: PublicKey,
    },
    GasKeyNonceUpdate {
        account_id: AccountId,
        public_key: PublicKey,
        index: u16,
        nonce: u64,
    },
    ContractCodeUpdate {
        account_id: AccountId,
    },
    ContractCodeDeletion {
        account_id: AccountId,
    },
    DataUpdate {
        account_id: AccountId,
    },
    DataDeletion {
        account_id: AccountId,
    },
    /// A change type this version does not know, kept whole.
    Unknown {
        type_name: String,
        account_id: Option<AccountId>,
        raw: serde_json::Value,
    },
}

impl ChangeValue {
    pub fn type_name(&self) -> &str {
        match self {
            ChangeValue::AccountUpdate { .. } => "account_update",
            ChangeValue::AccountDeletion { .. } => "account_deletion",
            ChangeValue::AccessKeyUpdate { .. } => "access_key_update",
            ChangeValue::AccessKeyDeletion { .. } => "access_key_deletion",
            ChangeValue::GasKeyNonceUpdate { .. } => "gas_key_nonce_update",
            ChangeValue::ContractCodeUpdate { .. } => "contract_code_update",
            ChangeValue::ContractCodeDeletion { .. } => "contract_code_deletion",
            ChangeValue::DataUpdate { .. } => "data_update",
            ChangeValue::DataDeletion { .. } => "data_deletion",
            ChangeValue::Unknown { type_name, .. } => type_name,
        }
    }

    pub fn account_id(&self) -> Option<&AccountId> {
        match self {
            ChangeValue::AccountUpdate { account_id, .. }
            | ChangeValue::AccountDeletion { account_id }
            | ChangeValue::AccessKeyUpdate { account_id, .. }
            | ChangeValue::AccessKeyDeletion { account_id, .. }
            | ChangeValue::GasKeyNonceUpdate { account_id, .. }
            | ChangeValue::ContractCodeUpdate { account_id }
            | ChangeValue::ContractCodeDeletion { account_id }
            | ChangeValue::DataUpdate { account_id }
            | ChangeValue::DataDeletion { account_id } => Some(account_id),
            ChangeValue::Unknown { account_id, .. } => account_id.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub cause: Cause,
    pub value: ChangeValue,
}

/// What `block_effects` says a block touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TouchedKind {
    Account,
    AccessKey,
    Data,
    ContractCode,
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub kind: TouchedKind,
    pub account_id: AccountId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub height: u64,
    pub hash: CryptoHash,
    pub prev_hash: CryptoHash,
    /// Nanoseconds since the Unix epoch (from `timestamp_nanosec`).
    pub timestamp_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_names_round_trip_and_unknown_is_kept() {
        for (name, _) in CauseKind::KNOWN {
            assert_eq!(CauseKind::from_name(name).name(), name);
        }
        let k = CauseKind::from_name("resharding_v3");
        assert_eq!(k, CauseKind::Unknown("resharding_v3".into()));
        assert_eq!(k.name(), "resharding_v3");
    }
}
