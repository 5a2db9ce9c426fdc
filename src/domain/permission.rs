//! Access-key permissions, including gas keys (protocol 85) and a raw
//! fallback for variants this version does not know.

use crate::domain::amount::Yocto;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    FullAccess,
    FunctionCall {
        /// `None` means unlimited.
        allowance: Option<Yocto>,
        receiver_id: String,
        /// Empty means any method.
        method_names: Vec<String>,
    },
    /// A full-access key that pays gas from its own balance.
    GasKeyFullAccess {
        balance: Yocto,
        num_nonces: u16,
    },
    GasKeyFunctionCall {
        /// Always `None` on chain today: gas keys pay from `balance`.
        allowance: Option<Yocto>,
        balance: Yocto,
        receiver_id: String,
        method_names: Vec<String>,
        num_nonces: u16,
    },
    /// A permission this version does not know, kept as received.
    Unknown(serde_json::Value),
}

/// The permission's kind as stored in the `permission` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermissionKind {
    FullAccess,
    FunctionCall,
    GasKeyFullAccess,
    GasKeyFunctionCall,
    Unknown,
}

impl PermissionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionKind::FullAccess => "full_access",
            PermissionKind::FunctionCall => "function_call",
            PermissionKind::GasKeyFullAccess => "gas_key_full_access",
            PermissionKind::GasKeyFunctionCall => "gas_key_function_call",
            PermissionKind::Unknown => "unknown",
        }
    }
}

impl Permission {
    pub fn kind(&self) -> PermissionKind {
        match self {
            Permission::FullAccess => PermissionKind::FullAccess,
            Permission::FunctionCall { .. } => PermissionKind::FunctionCall,
            Permission::GasKeyFullAccess { .. } => PermissionKind::GasKeyFullAccess,
            Permission::GasKeyFunctionCall { .. } => PermissionKind::GasKeyFunctionCall,
            Permission::Unknown(_) => PermissionKind::Unknown,
        }
    }

    /// True for every key that can sign any action: plain and gas-key full access.
    pub fn is_full_access(&self) -> bool {
        matches!(
            self,
            Permission::FullAccess | Permission::GasKeyFullAccess { .. }
        )
    }

    pub fn allowance(&self) -> Option<Yocto> {
        match self {
            Permission::FunctionCall { allowance, .. }
            | Permission::GasKeyFunctionCall { allowance, .. } => *allowance,
            _ => None,
        }
    }

    pub fn gas_key_balance(&self) -> Option<Yocto> {
        match self {
            Permission::GasKeyFullAccess { balance, .. }
            | Permission::GasKeyFunctionCall { balance, .. } => Some(*balance),
            _ => None,
        }
    }

    pub fn receiver_id(&self) -> Option<&str> {
        match self {
            Permission::FunctionCall { receiver_id, .. }
            | Permission::GasKeyFunctionCall { receiver_id, .. } => Some(receiver_id),
            _ => None,
        }
    }

    pub fn method_names(&self) -> Option<&[String]> {
        match self {
            Permission::FunctionCall { method_names, .. }
            | Permission::GasKeyFunctionCall { method_names, .. } => Some(method_names),
            _ => None,
        }
    }

    pub fn num_nonces(&self) -> Option<u16> {
        match self {
            Permission::GasKeyFullAccess { num_nonces, .. }
            | Permission::GasKeyFunctionCall { num_nonces, .. } => Some(*num_nonces),
            _ => None,
        }
    }

    /// The permission in its exact wire form (for `permission_raw`).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let opt = |a: &Option<Yocto>| a.map(|y| y.to_string());
        match self {
            Permission::FullAccess => json!("FullAccess"),
            Permission::FunctionCall {
                allowance,
                receiver_id,
                method_names,
            } => json!({
                "FunctionCall": {"allowance": opt(allowance), "method_names": method_names, "receiver_id": receiver_id}
            }),
            Permission::GasKeyFullAccess {
                balance,
                num_nonces,
            } => json!({
                "GasKeyFullAccess": {"balance": balance.to_string(), "num_nonces": num_nonces}
            }),
            Permission::GasKeyFunctionCall {
                allowance,
                balance,
                receiver_id,
                method_names,
                num_nonces,
            } => json!({
                "GasKeyFunctionCall": {
                    "allowance": opt(allowance), "balance": balance.to_string(),
                    "method_names": method_names, "num_nonces": num_nonces, "receiver_id": receiver_id
                }
            }),
            Permission::Unknown(raw) => raw.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_full_access_kinds_are_full_access() {
        assert!(Permission::FullAccess.is_full_access());
        assert!(
            Permission::GasKeyFullAccess {
                balance: Yocto(1),
                num_nonces: 4
            }
            .is_full_access()
        );
        let fc = Permission::FunctionCall {
            allowance: None,
            receiver_id: "app.near".into(),
            method_names: vec![],
        };
        assert!(!fc.is_full_access());
        assert!(!Permission::Unknown(serde_json::json!({"Future": {}})).is_full_access());
    }
}
