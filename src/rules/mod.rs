//! The rules: pure functions from what a block did to an account (its
//! writes, the state before and after, the values a window started with) to
//! alert drafts. No IO: the ingest gathers the facts inside the block's
//! transaction and writes the drafts as outbox rows in that same
//! transaction, so an alert exists if and only if its event does.

use std::collections::BTreeMap;

pub mod repeat;

use crate::config::{RuleSet, RuleSettings, Severity};
use crate::domain::{AccessKey, AccountId, AccountState, Permission, PublicKey, Yocto};

/// What a rule decided, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDraft {
    pub rule: &'static str,
    pub severity: Severity,
    pub account_id: String,
    pub public_key: Option<String>,
    pub title: String,
    pub details: serde_json::Value,
}

/// One key write of the block, as stored.
#[derive(Debug, Clone)]
pub struct KeyWrite {
    pub key: PublicKey,
    pub action: &'static str,
    pub permission: Option<Permission>,
    pub by_account_deletion: bool,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

/// The transaction and receipt of a change (either may be unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxRef {
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

impl TxRef {
    fn details(&self) -> serde_json::Value {
        serde_json::json!({"tx_hash": self.tx_hash, "receipt_hash": self.receipt_hash})
    }
}

/// Everything the per-block rules see for one account.
pub struct BlockFacts<'a> {
    pub account: &'a AccountId,
    pub label: Option<&'a str>,
    pub expected_keys: &'a [PublicKey],
    pub cold_keys: &'a [PublicKey],
    pub rules: &'a RuleSet,
    pub writes: &'a [KeyWrite],
    pub keys_before: &'a BTreeMap<PublicKey, AccessKey>,
    pub keys_after: &'a BTreeMap<PublicKey, AccessKey>,
    /// Cold keys that signed (nonce or nonce slot moved) in this block.
    pub cold_nonce_moved: &'a [PublicKey],
    pub account_deleted: bool,
    pub contract_changed: Option<&'a AccountState>,
    /// Change types or permissions this version does not know.
    pub unknown: &'a [String],
    /// Where the contract change, the deletion and the unknown changes came
    /// from.
    pub contract_cause: Option<&'a TxRef>,
    pub deletion_cause: Option<&'a TxRef>,
    pub unknown_cause: Option<&'a TxRef>,
}

fn enabled<'r>(rules: &'r RuleSet, name: &str) -> Option<&'r RuleSettings> {
    rules.get(name).filter(|r| r.enabled)
}

fn permission_text(p: &Permission) -> String {
    match p {
        Permission::FullAccess => "full access".into(),
        Permission::GasKeyFullAccess { balance, .. } => format!(
            "full access (gas key, balance {})",
            balance.to_near_string()
        ),
        Permission::FunctionCall {
            allowance,
            receiver_id,
            method_names,
        } => format!(
            "function call to {receiver_id} ({}), allowance {}",
            if method_names.is_empty() {
                "any method".to_owned()
            } else {
                method_names.join(", ")
            },
            allowance
                .map(Yocto::to_near_string)
                .unwrap_or_else(|| "unlimited".into())
        ),
        Permission::GasKeyFunctionCall {
            balance,
            receiver_id,
            method_names,
            ..
        } => format!(
            "function call to {receiver_id} ({}) paid by its gas balance {}",
            if method_names.is_empty() {
                "any method".to_owned()
            } else {
                method_names.join(", ")
            },
            balance.to_near_string()
        ),
        Permission::Unknown(raw) => format!("unknown permission {raw}"),
    }
}

fn draft(
    f: &BlockFacts<'_>,
    rule: &'static str,
    severity: Severity,
    key: Option<&PublicKey>,
    title: String,
    mut details: serde_json::Value,
) -> AlertDraft {
    details["account_id"] = serde_json::json!(f.account);
    if let Some(label) = f.label {
        details["label"] = serde_json::json!(label);
    }
    if let Some(k) = key {
        details["public_key"] = serde_json::json!(k.as_str());
    }
    AlertDraft {
        rule,
        severity,
        account_id: f.account.to_string(),
        public_key: key.map(|k| k.to_string()),
        title,
        details,
    }
}

/// The rules decided by one block alone.
pub fn evaluate_block(f: &BlockFacts<'_>) -> Vec<AlertDraft> {
    let mut out = Vec::new();
    let a = f.account;
    // Keys added in this block that exist at its end, once each.
    let mut seen = std::collections::BTreeSet::new();
    for w in f.writes.iter().filter(|w| w.action == "added") {
        let Some(after) = f.keys_after.get(&w.key) else {
            continue;
        };
        if !seen.insert(w.key.clone()) || f.expected_keys.contains(&w.key) {
            continue;
        }
        let p = &after.permission;
        let details = serde_json::json!({"permission": p.to_json(), "permission_text": permission_text(p), "tx_hash": w.tx_hash, "receipt_hash": w.receipt_hash,
            "event": p.to_json().to_string()});
        if p.is_full_access() {
            if let Some(r) = enabled(f.rules, "new_full_access_key") {
                let kind = if matches!(p, Permission::GasKeyFullAccess { .. }) {
                    "gas key with full access"
                } else {
                    "full-access key"
                };
                out.push(draft(
                    f,
                    "new_full_access_key",
                    r.severity,
                    Some(&w.key),
                    format!("New {kind} on {a}"),
                    details,
                ));
            }
        } else if let Permission::Unknown(_) = p {
            if let Some(r) = enabled(f.rules, "unknown_permission") {
                out.push(draft(
                    f,
                    "unknown_permission",
                    r.severity,
                    Some(&w.key),
                    format!("Key with an unknown permission added to {a}"),
                    details,
                ));
            }
        } else if let Some(r) = enabled(f.rules, "new_function_call_key") {
            let unrestricted = matches!(
                p,
                Permission::FunctionCall {
                    allowance: None,
                    ..
                }
            ) || p.method_names().is_some_and(<[String]>::is_empty);
            let severity = if unrestricted {
                r.unrestricted_severity
                    .unwrap_or(r.severity)
                    .max(r.severity)
            } else {
                r.severity
            };
            let what = if unrestricted {
                "unrestricted function-call key"
            } else {
                "function-call key"
            };
            out.push(draft(
                f,
                "new_function_call_key",
                severity,
                Some(&w.key),
                format!("New {what} on {a}"),
                details,
            ));
        }
    }
    if let Some(r) = enabled(f.rules, "key_deleted") {
        let mut seen = std::collections::BTreeSet::new();
        for w in f
            .writes
            .iter()
            .filter(|w| w.action == "deleted" && !w.by_account_deletion)
        {
            // only keys that could sign before this block and cannot after it
            if f.keys_after.contains_key(&w.key)
                || !f.keys_before.contains_key(&w.key)
                || !seen.insert(w.key.clone())
            {
                continue;
            }
            let details = serde_json::json!({"permission": f.keys_before.get(&w.key).map(|k| k.permission.to_json()), "tx_hash": w.tx_hash, "receipt_hash": w.receipt_hash});
            out.push(draft(
                f,
                "key_deleted",
                r.severity,
                Some(&w.key),
                format!("Key deleted from {a}"),
                details,
            ));
        }
    }
    if let Some(r) = enabled(f.rules, "key_used") {
        for key in f.cold_nonce_moved {
            // the write that moved its nonce (a gas key's nonce slot has none)
            let cause = f
                .writes
                .iter()
                .rfind(|w| &w.key == key)
                .map(|w| TxRef {
                    tx_hash: w.tx_hash.clone(),
                    receipt_hash: w.receipt_hash.clone(),
                })
                .unwrap_or_default();
            out.push(draft(
                f,
                "key_used",
                r.severity,
                Some(key),
                format!("Cold key signed a transaction on {a}"),
                cause.details(),
            ));
        }
    }
    if let Some(r) = enabled(f.rules, "account_locked") {
        let had = f
            .keys_before
            .values()
            .any(|k| k.permission.is_full_access());
        let has = f.keys_after.values().any(|k| k.permission.is_full_access());
        if had && !has && !f.account_deleted {
            // the deletion of the last full-access key
            let cause = f
                .writes
                .iter()
                .rfind(|w| {
                    w.action == "deleted"
                        && f.keys_before
                            .get(&w.key)
                            .is_some_and(|k| k.permission.is_full_access())
                })
                .map(|w| TxRef {
                    tx_hash: w.tx_hash.clone(),
                    receipt_hash: w.receipt_hash.clone(),
                })
                .unwrap_or_default();
            out.push(draft(
                f,
                "account_locked",
                r.severity,
                None,
                format!("{a} has no full-access key left"),
                cause.details(),
            ));
        }
    }
    if let (Some(r), Some(state)) = (enabled(f.rules, "contract_deployed"), f.contract_changed) {
        // the code deployed is the event: X, then Y, then X again is three
        let event = match (
            &state.global_contract_hash,
            &state.global_contract_account_id,
        ) {
            (Some(h), _) => format!("global:{h}"),
            (None, Some(a)) => format!("global-by-account:{a}"),
            (None, None) => state.code_hash.as_str().to_owned(),
        };
        let cause = f.contract_cause.cloned().unwrap_or_default();
        let details = serde_json::json!({"code_hash": state.code_hash.as_str(), "global_contract_hash": state.global_contract_hash, "global_contract_account_id": state.global_contract_account_id,
            "event": event, "tx_hash": cause.tx_hash, "receipt_hash": cause.receipt_hash});
        out.push(draft(
            f,
            "contract_deployed",
            r.severity,
            None,
            format!("Contract deployed on {a}"),
            details,
        ));
    }
    if let (Some(r), true) = (enabled(f.rules, "account_deleted"), f.account_deleted) {
        out.push(draft(
            f,
            "account_deleted",
            r.severity,
            None,
            format!("{a} was deleted"),
            f.deletion_cause.cloned().unwrap_or_default().details(),
        ));
    }
    if let (Some(r), false) = (enabled(f.rules, "unknown_permission"), f.unknown.is_empty()) {
        out.push(draft(
            f,
            "unknown_permission",
            r.severity,
            None,
            format!("A change keywatch does not know on {a}"),
            {
                let cause = f.unknown_cause.cloned().unwrap_or_default();
                serde_json::json!({"types": f.unknown, "event": f.unknown.join(","),
                    "tx_hash": cause.tx_hash, "receipt_hash": cause.receipt_hash})
            },
        ));
    }
    out
}

/// A value over a window: what it was just before the window, what it is
/// now (after the settle delay), and for balances the locked part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowValues {
    pub before: Yocto,
    pub now: Yocto,
    /// Stake moved into `locked` meanwhile: not a drop.
    pub locked_increase: Yocto,
}

/// Net drop over the window, and whether it crosses a threshold or the floor.
pub fn window_drop(r: &RuleSettings, v: WindowValues) -> Option<(Yocto, Option<u32>)> {
    let drop = v
        .before
        .0
        .saturating_sub(v.now.0)
        .saturating_sub(v.locked_increase.0);
    let pct = (v.before.0 > 0).then(|| ((drop.saturating_mul(100)) / v.before.0).min(100) as u32);
    let by_amount = r.min_drop.is_some_and(|m| drop > 0 && drop >= m.0);
    let by_pct = match (r.min_drop_percent, pct) {
        (Some(p), Some(actual)) => drop > 0 && actual >= p,
        _ => false,
    };
    let below_floor = r.floor.is_some_and(|f| v.now < f);
    (by_amount || by_pct || below_floor).then_some((Yocto(drop), pct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rules::Severity;

    fn rule() -> RuleSettings {
        RuleSettings {
            enabled: true,
            severity: Severity::Warning,
            cooldown: std::time::Duration::from_secs(900),
            min_drop: Some(Yocto(100)),
            min_drop_percent: Some(50),
            window: Some(std::time::Duration::from_secs(3600)),
            floor: None,
            settle_blocks: Some(3),
            unrestricted_severity: None,
            after: None,
        }
    }

    fn key(n: u8) -> PublicKey {
        PublicKey::parse(&format!("ed25519:{}", bs58::encode([n; 32]).into_string())).unwrap()
    }

    fn rules() -> RuleSet {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keywatch.toml"))
                .unwrap();
        crate::config::Settings::from_toml(&text, std::path::Path::new("t"), &Default::default())
            .unwrap()
            .rules
    }

    fn ak(permission: Permission) -> AccessKey {
        AccessKey {
            nonce: 1,
            permission,
        }
    }

    fn added(k: &PublicKey) -> KeyWrite {
        KeyWrite {
            key: k.clone(),
            action: "added",
            permission: None,
            by_account_deletion: false,
            tx_hash: None,
            receipt_hash: Some("r".into()),
        }
    }

    fn deleted(k: &PublicKey, by_account_deletion: bool) -> KeyWrite {
        KeyWrite {
            action: "deleted",
            by_account_deletion,
            ..added(k)
        }
    }

    /// Runs the per-block rules; returns (rule, severity, key index).
    fn run(
        writes: &[KeyWrite],
        before: &[(u8, Permission)],
        after: &[(u8, Permission)],
        expected: &[u8],
        cold: &[u8],
        cold_moved: &[u8],
        deleted_account: bool,
    ) -> Vec<(&'static str, Severity, Option<String>)> {
        let account = AccountId::parse("treasury.near").unwrap();
        let rs = rules();
        let map = |v: &[(u8, Permission)]| {
            v.iter()
                .map(|(n, p)| (key(*n), ak(p.clone())))
                .collect::<BTreeMap<_, _>>()
        };
        let (b, a) = (map(before), map(after));
        let expected: Vec<PublicKey> = expected.iter().map(|n| key(*n)).collect();
        let cold: Vec<PublicKey> = cold.iter().map(|n| key(*n)).collect();
        let moved: Vec<PublicKey> = cold_moved.iter().map(|n| key(*n)).collect();
        let f = BlockFacts {
            account: &account,
            label: Some("treasury"),
            expected_keys: &expected,
            cold_keys: &cold,
            rules: &rs,
            writes,
            keys_before: &b,
            keys_after: &a,
            cold_nonce_moved: &moved,
            account_deleted: deleted_account,
            contract_changed: None,
            unknown: &[],
            contract_cause: None,
            deletion_cause: None,
            unknown_cause: None,
        };
        evaluate_block(&f)
            .into_iter()
            .map(|d| (d.rule, d.severity, d.public_key))
            .collect()
    }

    fn fc(allowance: Option<u128>, methods: &[&str]) -> Permission {
        Permission::FunctionCall {
            allowance: allowance.map(Yocto),
            receiver_id: "app.near".into(),
            method_names: methods.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn an_unexpected_full_access_key_is_critical_and_an_expected_one_is_silent() {
        let full = [(1, Permission::FullAccess)];
        let got = run(
            &[added(&key(2))],
            &full,
            &[(1, Permission::FullAccess), (2, Permission::FullAccess)],
            &[],
            &[],
            &[],
            false,
        );
        assert_eq!(
            got,
            vec![(
                "new_full_access_key",
                Severity::Critical,
                Some(key(2).to_string())
            )]
        );
        let got = run(
            &[added(&key(2))],
            &full,
            &[(1, Permission::FullAccess), (2, Permission::FullAccess)],
            &[2],
            &[],
            &[],
            false,
        );
        assert!(got.is_empty());
    }

    #[test]
    fn a_gas_key_with_full_access_is_a_full_access_key() {
        let gas = Permission::GasKeyFullAccess {
            balance: Yocto(1),
            num_nonces: 2,
        };
        let got = run(
            &[added(&key(2))],
            &[(1, Permission::FullAccess)],
            &[(1, Permission::FullAccess), (2, gas)],
            &[],
            &[],
            &[],
            false,
        );
        assert_eq!(got[0].0, "new_full_access_key");
    }

    #[test]
    fn function_call_keys_are_warnings_unless_unrestricted() {
        let before = [(1, Permission::FullAccess)];
        let limited = run(
            &[added(&key(2))],
            &before,
            &[(1, Permission::FullAccess), (2, fc(Some(10), &["ping"]))],
            &[],
            &[],
            &[],
            false,
        );
        assert_eq!(
            limited,
            vec![(
                "new_function_call_key",
                Severity::Warning,
                Some(key(2).to_string())
            )]
        );
        let unlimited = run(
            &[added(&key(2))],
            &before,
            &[(1, Permission::FullAccess), (2, fc(None, &["ping"]))],
            &[],
            &[],
            &[],
            false,
        );
        assert_eq!(unlimited[0].1, Severity::Critical);
        let any_method = run(
            &[added(&key(2))],
            &before,
            &[(1, Permission::FullAccess), (2, fc(Some(10), &[]))],
            &[],
            &[],
            &[],
            false,
        );
        assert_eq!(any_method[0].1, Severity::Critical);
    }

    #[test]
    fn a_key_added_and_removed_in_the_same_block_or_removed_by_account_deletion_raises_no_key_alert()
     {
        let got = run(
            &[added(&key(2)), deleted(&key(2), false)],
            &[(1, Permission::FullAccess)],
            &[(1, Permission::FullAccess)],
            &[],
            &[],
            &[],
            false,
        );
        assert!(
            got.is_empty(),
            "the key never existed at a block boundary: {got:?}"
        );
        let got = run(
            &[deleted(&key(1), true)],
            &[(1, Permission::FullAccess)],
            &[],
            &[],
            &[],
            &[],
            true,
        );
        assert!(
            got.iter()
                .all(|g| g.0 != "key_deleted" && g.0 != "account_locked"),
            "{got:?}"
        );
        assert!(got.iter().any(|g| g.0 == "account_deleted"));
    }

    #[test]
    fn losing_the_last_full_access_key_locks_the_account() {
        let before = [(1, Permission::FullAccess), (2, fc(Some(1), &["m"]))];
        let got = run(
            &[deleted(&key(1), false)],
            &before,
            &[(2, fc(Some(1), &["m"]))],
            &[],
            &[],
            &[],
            false,
        );
        let rules: Vec<_> = got.iter().map(|g| g.0).collect();
        assert_eq!(rules, ["key_deleted", "account_locked"]);
        // an account that never had one is not "locked" by this block
        let got = run(
            &[],
            &[(2, fc(Some(1), &["m"]))],
            &[(2, fc(Some(1), &["m"]))],
            &[],
            &[],
            &[],
            false,
        );
        assert!(got.is_empty());
    }

    #[test]
    fn a_cold_key_that_signs_is_critical() {
        let got = run(
            &[],
            &[(1, Permission::FullAccess)],
            &[(1, Permission::FullAccess)],
            &[],
            &[1],
            &[1],
            false,
        );
        assert_eq!(
            got,
            vec![("key_used", Severity::Critical, Some(key(1).to_string()))]
        );
    }

    #[test]
    fn a_refunded_charge_is_not_a_drain() {
        let v = WindowValues {
            before: Yocto(1000),
            now: Yocto(990),
            locked_increase: Yocto(0),
        };
        assert_eq!(window_drop(&rule(), v), None);
    }

    #[test]
    fn drops_fire_by_amount_percentage_or_floor() {
        let v = WindowValues {
            before: Yocto(1000),
            now: Yocto(850),
            locked_increase: Yocto(0),
        };
        assert_eq!(window_drop(&rule(), v), Some((Yocto(150), Some(15))));
        let small = RuleSettings {
            min_drop: None,
            ..rule()
        };
        assert_eq!(
            window_drop(
                &small,
                WindowValues {
                    before: Yocto(100),
                    now: Yocto(40),
                    locked_increase: Yocto(0)
                }
            ),
            Some((Yocto(60), Some(60)))
        );
        let floor = RuleSettings {
            min_drop: None,
            min_drop_percent: None,
            floor: Some(Yocto(50)),
            ..rule()
        };
        assert!(
            window_drop(
                &floor,
                WindowValues {
                    before: Yocto(60),
                    now: Yocto(49),
                    locked_increase: Yocto(0)
                }
            )
            .is_some()
        );
        assert!(
            window_drop(
                &floor,
                WindowValues {
                    before: Yocto(60),
                    now: Yocto(50),
                    locked_increase: Yocto(0)
                }
            )
            .is_none()
        );
    }

    #[test]
    fn staking_is_not_a_drop() {
        let v = WindowValues {
            before: Yocto(1000),
            now: Yocto(500),
            locked_increase: Yocto(500),
        };
        assert_eq!(window_drop(&rule(), v), None);
    }
}
