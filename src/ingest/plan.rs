//! What a block means, decided without the database: from the block's
//! changes and the watched accounts' state just before it, the history rows
//! to write, the state after it, and the facts the per-block rules judge.
//!
//! Each key write is `added` when the key did not exist just before it (the
//! state before the block plus the earlier writes of the same key in this
//! block), else `updated`; a delete and re-add in one block is `deleted`
//! then `added`. [`Writes`] gathers the plans of consecutive blocks into one
//! set of rows per table, so a transaction writes each table once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::{AccessKey, AccountId, AccountState, ChangeValue, PublicKey, StateChange};
use crate::ingest::alerts::AccountBlock;
use crate::ingest::fetch::BlockData;
use crate::store::history::BalanceRow;
use crate::store::keys::{KeyRow, KeySets, KeyStateRow, UnknownRow};

/// The current state of the accounts a run of blocks touches, as of the
/// last block planned: keys per account, and each account's state (`None`
/// when it is deleted or its state is unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub keys: KeySets,
    pub accounts: HashMap<AccountId, Option<AccountState>>,
}

/// One block's rows and rule facts.
pub struct BlockPlan<'a> {
    pub data: &'a BlockData,
    pub key_rows: Vec<KeyRow<'a>>,
    pub balance_rows: Vec<BalanceRow<'a>>,
    pub unknown: Vec<UnknownRow<'a>>,
    /// Keys whose state row must go first: deleted, possibly re-added.
    pub keys_cleared: Vec<(&'a AccountId, &'a PublicKey)>,
    /// Keys present at the end of the block that it wrote, with the height
    /// of their last addition in this block (if any).
    pub keys_set: Vec<(&'a AccountId, &'a PublicKey, &'a AccessKey, Option<u64>)>,
    /// Accounts whose state the block wrote, with their end-of-block state.
    pub accounts_set: Vec<(&'a AccountId, Option<&'a AccountState>)>,
    pub facts: Vec<AccountBlock>,
}

/// The accounts of `watched` that `data`'s changes write to: the accounts
/// whose state must be held before [`plan_block`] runs.
pub fn accounts_written<'a>(
    data: &'a BlockData,
    watched: &'a BTreeSet<AccountId>,
) -> BTreeSet<&'a AccountId> {
    data.key_changes
        .iter()
        .chain(&data.account_changes)
        .filter_map(|c| c.value.account_id())
        .filter(|a| watched.contains(*a))
        .collect()
}

fn writes_of<'a>(
    list: &'a [StateChange],
    account: &'a AccountId,
) -> impl Iterator<Item = &'a StateChange> + 'a {
    list.iter()
        .filter(move |c| c.value.account_id() == Some(account))
}

/// Plans one block against `current` (which must hold every account of
/// [`accounts_written`]) and moves `current` to the end of the block.
pub fn plan_block<'a>(
    data: &'a BlockData,
    watched: &'a BTreeSet<AccountId>,
    current: &mut Current,
) -> BlockPlan<'a> {
    let mut plan = BlockPlan {
        data,
        key_rows: vec![],
        balance_rows: vec![],
        unknown: vec![],
        keys_cleared: vec![],
        keys_set: vec![],
        accounts_set: vec![],
        facts: vec![],
    };
    for account in accounts_written(data, watched) {
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
            contract_cause: None,
            deletion_cause: None,
            unknown_cause: None,
        };
        let keys = current.keys.entry(account.clone()).or_default();
        plan_key_writes(&mut plan, account, deleted_here, keys, &mut ab);
        let state = current.accounts.entry(account.clone()).or_default();
        plan_account_writes(&mut plan, account, state, &mut ab);
        plan.facts.push(ab);
    }
    plan
}

fn plan_key_writes<'a>(
    plan: &mut BlockPlan<'a>,
    account: &'a AccountId,
    deleted_here: bool,
    state: &mut BTreeMap<PublicKey, AccessKey>,
    ab: &mut AccountBlock,
) {
    let data = plan.data;
    let h = &data.header;
    let writes: Vec<&StateChange> = writes_of(&data.key_changes, account).collect();
    if writes.is_empty() {
        return;
    }
    ab.keys_before = state.clone();
    // Each touched key's last value in this block, and its last addition.
    let mut last: BTreeMap<&'a PublicKey, (Option<&'a AccessKey>, Option<u64>)> = BTreeMap::new();
    let mut cleared: BTreeSet<&'a PublicKey> = BTreeSet::new();
    for (index, w) in writes.into_iter().enumerate() {
        let row = |public_key, action, access_key, nonce_slot, by_account_deletion| KeyRow {
            account_id: account,
            public_key,
            block_height: h.height,
            block_hash: h.hash.as_str(),
            index_in_block: index as i32,
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
                let added = !state.contains_key(public_key);
                let action = if added { "added" } else { "updated" };
                plan.key_rows
                    .push(row(public_key, action, Some(access_key), None, false));
                ab.writes.push(rule_write(
                    public_key,
                    action,
                    Some(&access_key.permission),
                    false,
                    w,
                ));
                state.insert(public_key.clone(), access_key.clone());
                let entry = last.entry(public_key).or_default();
                entry.0 = Some(access_key);
                if added {
                    entry.1 = Some(h.height);
                }
            }
            ChangeValue::AccessKeyDeletion { public_key, .. } => {
                plan.key_rows
                    .push(row(public_key, "deleted", None, None, deleted_here));
                ab.writes
                    .push(rule_write(public_key, "deleted", None, deleted_here, w));
                state.remove(public_key);
                last.insert(public_key, (None, None));
                cleared.insert(public_key);
            }
            ChangeValue::GasKeyNonceUpdate {
                public_key,
                index: slot,
                nonce,
                ..
            } => {
                plan.key_rows.push(row(
                    public_key,
                    "nonce_slot",
                    None,
                    Some((*slot, *nonce)),
                    false,
                ));
                ab.nonce_slot_keys.insert(public_key.clone());
            }
            other => unknown(plan, account, index as i32, other, w, ab),
        }
    }
    ab.keys_after = state.clone();
    for key in cleared {
        plan.keys_cleared.push((account, key));
    }
    for (key, (value, added_at)) in last {
        if let Some(ak) = value {
            plan.keys_set.push((account, key, ak, added_at));
        }
    }
}

fn contract_of(s: &AccountState) -> (&str, Option<&str>, Option<&str>) {
    (
        s.code_hash.as_str(),
        s.global_contract_hash.as_ref().map(|h| h.as_str()),
        s.global_contract_account_id.as_ref().map(|a| a.as_str()),
    )
}

fn plan_account_writes<'a>(
    plan: &mut BlockPlan<'a>,
    account: &'a AccountId,
    before: &mut Option<AccountState>,
    ab: &mut AccountBlock,
) {
    let data = plan.data;
    let h = &data.header;
    let writes: Vec<&StateChange> = writes_of(&data.account_changes, account).collect();
    // The state after the last write: None = deleted.
    let mut after: Option<Option<&'a AccountState>> = None;
    for (index, w) in writes.into_iter().enumerate() {
        let (state, contract_changed) = match &w.value {
            ChangeValue::AccountUpdate { state, .. } => {
                let changed = state.has_contract()
                    && before
                        .as_ref()
                        .is_none_or(|b| contract_of(b) != contract_of(state));
                if changed {
                    ab.contract_changed = Some(state.clone());
                    ab.contract_cause = Some(tx_ref(&w.cause));
                }
                (Some(state), changed)
            }
            ChangeValue::AccountDeletion { .. } => {
                ab.deletion_cause = Some(tx_ref(&w.cause));
                (None, false)
            }
            other => {
                unknown(plan, account, index as i32, other, w, ab);
                continue;
            }
        };
        plan.balance_rows.push(BalanceRow {
            account_id: account,
            block_hash: h.hash.as_str(),
            block_height: h.height,
            index_in_block: index as i32,
            state,
            cause: Some(&w.cause),
            source: "chain",
            contract_changed,
        });
        *before = state.cloned();
        after = Some(state);
    }
    if let Some(state) = after {
        plan.accounts_set.push((account, state));
    }
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
        tx_hash: tx_ref(&w.cause).tx_hash,
        receipt_hash: tx_ref(&w.cause).receipt_hash,
    }
}

/// Keeps a change this version does not know, whole, and tells the rules.
fn unknown<'a>(
    plan: &mut BlockPlan<'a>,
    account: &'a AccountId,
    index: i32,
    value: &'a ChangeValue,
    w: &StateChange,
    ab: &mut AccountBlock,
) {
    let h = &plan.data.header;
    plan.unknown.push(UnknownRow {
        account_id: Some(account),
        block_height: h.height,
        block_hash: h.hash.as_str(),
        index_in_block: index,
        change_type: value.type_name(),
        raw: crate::rpc::views::change_json(w),
    });
    ab.unknown.push(value.type_name().to_owned());
    ab.unknown_cause = Some(tx_ref(&w.cause));
}

fn tx_ref(c: &crate::domain::Cause) -> crate::rules::TxRef {
    crate::rules::TxRef {
        tx_hash: c.tx_hash.as_ref().map(|h| h.to_string()),
        receipt_hash: c.receipt_hash.as_ref().map(|h| h.to_string()),
    }
}

/// The rows of consecutive blocks' plans, one list per table; state rows
/// merged so that each key and account appears once.
#[derive(Default)]
pub struct Writes<'a> {
    pub headers: Vec<&'a crate::domain::BlockHeader>,
    pub key_rows: Vec<KeyRow<'a>>,
    pub balance_rows: Vec<BalanceRow<'a>>,
    pub unknown: Vec<UnknownRow<'a>>,
    /// Keys deleted at some block of the run: their state row goes first.
    pub keys_cleared: BTreeSet<(&'a AccountId, &'a PublicKey)>,
    keys_set: BTreeMap<(&'a AccountId, &'a PublicKey), KeyFate<'a>>,
    accounts_set: BTreeMap<&'a AccountId, (Option<&'a AccountState>, u64)>,
}

/// A key's value at the end of the run, or `None` when it ends deleted.
struct KeyFate<'a> {
    value: Option<&'a AccessKey>,
    added_at: Option<u64>,
    updated_at: u64,
}

impl<'a> Writes<'a> {
    /// Adds the next block's plan (plans must come in chain order).
    pub fn add(&mut self, plan: BlockPlan<'a>) -> Vec<AccountBlock> {
        let height = plan.data.header.height;
        self.headers.push(&plan.data.header);
        self.key_rows.extend(plan.key_rows);
        self.balance_rows.extend(plan.balance_rows);
        self.unknown.extend(plan.unknown);
        for (account, key) in plan.keys_cleared {
            self.keys_cleared.insert((account, key));
            // Ends deleted unless set again below.
            self.keys_set.insert(
                (account, key),
                KeyFate {
                    value: None,
                    added_at: None,
                    updated_at: height,
                },
            );
        }
        for (account, key, value, added) in plan.keys_set {
            let fate = self.keys_set.entry((account, key)).or_insert(KeyFate {
                value: None,
                added_at: None,
                updated_at: height,
            });
            fate.value = Some(value);
            fate.updated_at = height;
            if added.is_some() {
                fate.added_at = added;
            }
        }
        for (account, state) in plan.accounts_set {
            self.accounts_set.insert(account, (state, height));
        }
        plan.facts
    }

    /// The keys present at the end of the run that the run wrote.
    pub fn key_states(&self) -> Vec<KeyStateRow<'a>> {
        self.keys_set
            .iter()
            .filter_map(|((account, key), fate)| {
                fate.value.map(|ak| KeyStateRow {
                    account_id: account,
                    public_key: key,
                    access_key: ak,
                    added_at: fate.added_at.unwrap_or(fate.updated_at),
                    height: fate.updated_at,
                })
            })
            .collect()
    }

    /// The end state of every account the run wrote, with the height of
    /// its last write.
    pub fn account_states(&self) -> Vec<(&'a AccountId, Option<&'a AccountState>, u64)> {
        self.accounts_set
            .iter()
            .map(|(a, (s, h))| (*a, *s, *h))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BlockHeader, Cause, CauseKind, CryptoHash, Permission, Yocto};

    fn account(s: &str) -> AccountId {
        AccountId::parse(s).unwrap()
    }

    fn key(n: u8) -> PublicKey {
        PublicKey::parse(&format!("ed25519:{}", bs58::encode([n; 32]).into_string())).unwrap()
    }

    fn header(height: u64) -> BlockHeader {
        BlockHeader {
            height,
            hash: CryptoHash::from_bytes([height as u8; 32]),
            prev_hash: CryptoHash::from_bytes([height as u8 - 1; 32]),
            timestamp_ns: height * 1_000_000_000,
        }
    }

    fn cause() -> Cause {
        Cause {
            kind: CauseKind::from_name("transaction_processing"),
            tx_hash: Some(CryptoHash::from_bytes([9; 32])),
            receipt_hash: None,
        }
    }

    fn full(nonce: u64) -> AccessKey {
        AccessKey {
            nonce,
            permission: Permission::FullAccess,
        }
    }

    fn set(a: &AccountId, k: &PublicKey, ak: AccessKey) -> StateChange {
        StateChange {
            cause: cause(),
            value: ChangeValue::AccessKeyUpdate {
                account_id: a.clone(),
                public_key: k.clone(),
                access_key: ak,
            },
        }
    }

    fn del(a: &AccountId, k: &PublicKey) -> StateChange {
        StateChange {
            cause: cause(),
            value: ChangeValue::AccessKeyDeletion {
                account_id: a.clone(),
                public_key: k.clone(),
            },
        }
    }

    fn balance(a: &AccountId, amount: u128) -> StateChange {
        StateChange {
            cause: cause(),
            value: ChangeValue::AccountUpdate {
                account_id: a.clone(),
                state: AccountState {
                    amount: Yocto(amount),
                    locked: Yocto(0),
                    storage_usage: 100,
                    code_hash: CryptoHash::from_bytes([0; 32]),
                    global_contract_hash: None,
                    global_contract_account_id: None,
                },
            },
        }
    }

    fn block(height: u64, keys: Vec<StateChange>, accounts: Vec<StateChange>) -> BlockData {
        BlockData {
            header: header(height),
            touched: vec![],
            fetched_for: BTreeSet::new(),
            key_changes: keys,
            account_changes: accounts,
        }
    }

    /// Holds `a` with no keys and no known state.
    fn empty_current(a: &AccountId) -> Current {
        let mut c = Current::default();
        c.keys.insert(a.clone(), BTreeMap::new());
        c.accounts.insert(a.clone(), None);
        c
    }

    #[test]
    fn a_write_to_a_key_not_held_is_an_addition_and_a_second_is_an_update() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let data = block(
            5,
            vec![set(&a, &key(1), full(1)), set(&a, &key(1), full(2))],
            vec![],
        );
        let mut current = empty_current(&a);
        let plan = plan_block(&data, &watched, &mut current);
        let actions: Vec<&str> = plan.key_rows.iter().map(|r| r.action).collect();
        assert_eq!(actions, ["added", "updated"]);
        assert_eq!(plan.keys_set.len(), 1, "one state row per key");
        assert_eq!(plan.keys_set[0].2.nonce, 2);
        assert_eq!(plan.keys_set[0].3, Some(5));
        assert_eq!(current.keys[&a][&key(1)].nonce, 2);
        assert!(plan.facts[0].keys_before.is_empty());
        assert_eq!(plan.facts[0].keys_after.len(), 1);
    }

    #[test]
    fn delete_and_re_add_in_one_block_clears_the_state_row_and_adds_it_anew() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let mut current = empty_current(&a);
        current.keys.get_mut(&a).unwrap().insert(key(1), full(7));
        let data = block(9, vec![del(&a, &key(1)), set(&a, &key(1), full(1))], vec![]);
        let plan = plan_block(&data, &watched, &mut current);
        let actions: Vec<&str> = plan.key_rows.iter().map(|r| r.action).collect();
        assert_eq!(actions, ["deleted", "added"]);
        assert_eq!(plan.keys_cleared, vec![(&a, &key(1))]);
        assert_eq!(plan.keys_set[0].3, Some(9), "re-added here");
        assert_eq!(current.keys[&a][&key(1)].nonce, 1);
    }

    #[test]
    fn unwatched_accounts_are_not_planned() {
        let a = account("alice.near");
        let b = account("bob.near");
        let watched = BTreeSet::from([a.clone()]);
        let data = block(3, vec![set(&b, &key(1), full(1))], vec![balance(&b, 5)]);
        let mut current = empty_current(&a);
        let plan = plan_block(&data, &watched, &mut current);
        assert!(plan.key_rows.is_empty() && plan.balance_rows.is_empty());
        assert!(plan.facts.is_empty());
        assert!(!current.keys.contains_key(&b));
    }

    #[test]
    fn the_last_account_write_is_the_end_state_and_a_new_contract_is_a_fact() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let mut deploy = balance(&a, 3);
        if let ChangeValue::AccountUpdate { state, .. } = &mut deploy.value {
            state.code_hash = CryptoHash::from_bytes([4; 32]);
        }
        let data = block(4, vec![], vec![balance(&a, 10), deploy]);
        let mut current = empty_current(&a);
        let plan = plan_block(&data, &watched, &mut current);
        assert_eq!(plan.balance_rows.len(), 2);
        assert_eq!(
            plan.balance_rows
                .iter()
                .map(|r| r.contract_changed)
                .collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(plan.accounts_set[0].1.unwrap().amount, Yocto(3));
        assert!(plan.facts[0].contract_changed.is_some());
        assert_eq!(current.accounts[&a].as_ref().unwrap().amount, Yocto(3));
    }

    #[test]
    fn a_run_of_blocks_writes_each_key_once_with_its_first_addition_and_last_value() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let blocks = [
            block(10, vec![set(&a, &key(1), full(1))], vec![balance(&a, 9)]),
            block(
                11,
                vec![set(&a, &key(1), full(2)), set(&a, &key(2), full(1))],
                vec![],
            ),
            block(12, vec![del(&a, &key(2))], vec![balance(&a, 4)]),
        ];
        let mut current = empty_current(&a);
        let mut writes = Writes::default();
        for b in &blocks {
            writes.add(plan_block(b, &watched, &mut current));
        }
        assert_eq!(writes.headers.len(), 3);
        assert_eq!(writes.key_rows.len(), 4);
        let states = writes.key_states();
        assert_eq!(states.len(), 1, "key 2 ends deleted");
        assert_eq!(states[0].public_key, &key(1));
        assert_eq!((states[0].added_at, states[0].height), (10, 11));
        assert_eq!(states[0].access_key.nonce, 2);
        assert!(writes.keys_cleared.contains(&(&a, &key(2))));
        let accounts = writes.account_states();
        assert_eq!(accounts.len(), 1);
        assert_eq!(
            (accounts[0].1.unwrap().amount, accounts[0].2),
            (Yocto(4), 12)
        );
        assert_eq!(current.keys[&a].len(), 1);
    }

    #[test]
    fn an_account_deleted_in_the_block_marks_its_key_deletions_and_odd_changes_keep_their_place() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let mut current = empty_current(&a);
        current.keys.get_mut(&a).unwrap().insert(key(1), full(3));
        let nonce = StateChange {
            cause: cause(),
            value: ChangeValue::GasKeyNonceUpdate {
                account_id: a.clone(),
                public_key: key(2),
                index: 4,
                nonce: 99,
            },
        };
        let odd = StateChange {
            cause: cause(),
            value: ChangeValue::Unknown {
                type_name: "future_change".into(),
                account_id: Some(a.clone()),
                raw: serde_json::json!({"type": "future_change"}),
            },
        };
        let gone = StateChange {
            cause: cause(),
            value: ChangeValue::AccountDeletion {
                account_id: a.clone(),
            },
        };
        let data = block(7, vec![nonce, odd, del(&a, &key(1))], vec![gone]);
        let plan = plan_block(&data, &watched, &mut current);
        let slot = &plan.key_rows[0];
        assert_eq!(
            (slot.index_in_block, slot.action, slot.nonce_slot),
            (0, "nonce_slot", Some((4, 99)))
        );
        let deletion = &plan.key_rows[1];
        assert_eq!(
            (
                deletion.index_in_block,
                deletion.action,
                deletion.by_account_deletion
            ),
            (2, "deleted", true)
        );
        assert_eq!(plan.key_rows.len(), 2);
        assert_eq!(plan.unknown.len(), 1);
        assert_eq!(
            (plan.unknown[0].index_in_block, plan.unknown[0].change_type),
            (1, "future_change")
        );
        assert_eq!(plan.facts[0].unknown, ["future_change"]);
        assert!(plan.facts[0].account_deleted);
        assert!(plan.facts[0].nonce_slot_keys.contains(&key(2)));
        assert_eq!(plan.accounts_set, vec![(&a, None)], "deleted: no state");
        assert_eq!(current.accounts[&a], None);
        assert!(current.keys[&a].is_empty());
    }

    #[test]
    fn a_key_deleted_in_one_block_and_added_in_the_next_is_new_at_the_second() {
        let a = account("alice.near");
        let watched = BTreeSet::from([a.clone()]);
        let mut current = empty_current(&a);
        current.keys.get_mut(&a).unwrap().insert(key(1), full(3));
        let blocks = [
            block(20, vec![del(&a, &key(1))], vec![]),
            block(21, vec![set(&a, &key(1), full(1))], vec![]),
        ];
        let mut writes = Writes::default();
        for b in &blocks {
            writes.add(plan_block(b, &watched, &mut current));
        }
        let actions: Vec<&str> = writes.key_rows.iter().map(|r| r.action).collect();
        assert_eq!(actions, ["deleted", "added"]);
        assert!(
            writes.keys_cleared.contains(&(&a, &key(1))),
            "the old row goes first"
        );
        let states = writes.key_states();
        assert_eq!(states.len(), 1);
        assert_eq!((states[0].added_at, states[0].height), (21, 21));
    }
}
