//! The simulated chain: blocks, state and its history, and the state changes
//! each block writes, derived from scripted transactions the way nearcore
//! writes them.
//!
//! A transaction at height h writes, with cause `transaction_processing`:
//! the signer key's nonce (and for a function-call key its allowance, for a
//! gas key its balance and a `gas_key_nonce_update`), and the account's
//! balance (fee and attached deposit). Its receipt on the same account
//! applies in the same block (`receipt_processing`); a receipt for another
//! account lands one block later; the gas refund `refund_after` blocks later
//! credits the account and raises a function-call key's allowance. A block's
//! changes are listed in trie-key order (accounts, contract code, access
//! keys; within an access key its own writes, then its nonce slots), every
//! intermediate write kept: exactly the shape of a real node's response.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::domain::{
    AccessKey, AccountId, AccountState, BlockHeader, Cause, CauseKind, ChangeValue, CryptoHash,
    KeyType, Permission, PublicKey, StateChange, Touched, TouchedKind, Yocto,
};
use crate::sim::scenario::{Action, ChainSpec, Scenario, Tx};

/// Deterministic bytes for hashes and keys: splitmix64 over (seed, tag, n).
pub fn derive_bytes(seed: u64, tag: u8, n: u64) -> [u8; 32] {
    let mut x = seed ^ (u64::from(tag) << 56) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes());
    }
    out
}

fn zero_hash() -> CryptoHash {
    CryptoHash::from_bytes([0; 32])
}

#[derive(Debug, Clone)]
pub struct SimBlock {
    pub header: BlockHeader,
    /// Every write of the block, in the order a node lists them.
    pub changes: Vec<StateChange>,
    pub touched: Vec<Touched>,
}

/// A transaction the chain refused, or whose receipt failed after the fee was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub height: u64,
    pub account: AccountId,
    pub reason: String,
    /// True when the fee was still charged (a failed receipt).
    pub fee_charged: bool,
}

#[derive(Debug, Clone)]
enum Deferred {
    Credit {
        account: AccountId,
        amount: Yocto,
        receipt: CryptoHash,
    },
    Refund {
        account: AccountId,
        key: PublicKey,
        amount: Yocto,
        receipt: CryptoHash,
    },
    Create {
        account: AccountId,
        funder: AccountId,
        amount: Yocto,
        keys: Vec<(PublicKey, Permission)>,
        receipt: CryptoHash,
    },
}

type History<T> = Vec<(u64, Option<T>)>;

/// Records `now` as the end-of-block value at height `h` (one entry per block).
fn set_at<T>(hist: &mut History<T>, h: u64, now: Option<T>) {
    match hist.last_mut() {
        Some((last, value)) if *last == h => *value = now,
        _ => hist.push((h, now)),
    }
}

pub struct Chain {
    spec: ChainSpec,
    blocks: Vec<SimBlock>,
    by_hash: HashMap<String, usize>,
    by_height: BTreeMap<u64, usize>,
    accounts: BTreeMap<AccountId, AccountState>,
    keys: BTreeMap<AccountId, BTreeMap<PublicKey, AccessKey>>,
    gas_nonces: HashMap<(AccountId, PublicKey), Vec<u64>>,
    account_history: BTreeMap<AccountId, History<AccountState>>,
    key_history: BTreeMap<AccountId, BTreeMap<PublicKey, History<AccessKey>>>,
    txs: VecDeque<Tx>,
    deferred: BTreeMap<u64, Vec<Deferred>>,
    refused: Vec<Refused>,
    counter: u64,
}

/// What one block writes while it is being built.
struct Writes {
    height: u64,
    list: Vec<StateChange>,
}

impl Writes {
    fn push(&mut self, cause: &Cause, value: ChangeValue) {
        self.list.push(StateChange {
            cause: cause.clone(),
            value,
        });
    }
}

fn tx_cause(hash: CryptoHash) -> Cause {
    Cause {
        kind: CauseKind::TransactionProcessing,
        tx_hash: Some(hash),
        receipt_hash: None,
    }
}

fn receipt_cause(hash: CryptoHash) -> Cause {
    Cause {
        kind: CauseKind::ReceiptProcessing,
        tx_hash: None,
        receipt_hash: Some(hash),
    }
}

/// Trie column of a change, then the bytes that order it within the column.
fn trie_order(v: &ChangeValue) -> (u8, String, Vec<u8>, Option<u16>) {
    let key_bytes = |k: &PublicKey| {
        let t = match k.key_type() {
            KeyType::Ed25519 => 0u8,
            KeyType::Secp256k1 => 1,
            KeyType::MlDsa65 | KeyType::MlDsa65Hash => 2,
        };
        let data = k
            .as_str()
            .split_once(':')
            .map(|(_, d)| d)
            .unwrap_or_default();
        let mut bytes = vec![t];
        bytes.extend(bs58::decode(data).into_vec().unwrap_or_default());
        bytes
    };
    let id = |a: &AccountId| a.as_str().to_owned();
    match v {
        ChangeValue::AccountUpdate { account_id, .. }
        | ChangeValue::AccountDeletion { account_id } => (0, id(account_id), vec![], None),
        ChangeValue::ContractCodeUpdate { account_id }
        | ChangeValue::ContractCodeDeletion { account_id } => (1, id(account_id), vec![], None),
        ChangeValue::AccessKeyUpdate {
            account_id,
            public_key,
            ..
        }
        | ChangeValue::AccessKeyDeletion {
            account_id,
            public_key,
        } => (2, id(account_id), key_bytes(public_key), None),
        ChangeValue::GasKeyNonceUpdate {
            account_id,
            public_key,
            index,
            ..
        } => (2, id(account_id), key_bytes(public_key), Some(*index)),
        ChangeValue::DataUpdate { account_id } | ChangeValue::DataDeletion { account_id } => {
            (9, id(account_id), vec![], None)
        }
        ChangeValue::Unknown { account_id, .. } => (
            255,
            account_id.as_ref().map(id).unwrap_or_default(),
            vec![],
            None,
        ),
    }
}

fn touched_of(changes: &[StateChange]) -> Vec<Touched> {
    let mut out: Vec<Touched> = Vec::new();
    let mut last: Option<(u8, String, Vec<u8>)> = None;
    for c in changes {
        let (col, account, key, _) = trie_order(&c.value);
        let kind = match col {
            0 => TouchedKind::Account,
            1 => TouchedKind::ContractCode,
            2 => TouchedKind::AccessKey,
            9 => TouchedKind::Data,
            _ => continue,
        };
        let this = (col, account, key);
        if last.as_ref() != Some(&this) {
            if let Some(account_id) = c.value.account_id() {
                out.push(Touched {
                    kind,
                    account_id: account_id.clone(),
                });
            }
            last = Some(this);
        }
    }
    out
}

/// The nonce a key added at height `h` starts with.
fn fresh_nonce(h: u64) -> u64 {
    h.saturating_sub(1) * 1_000_000
}

impl Chain {
    /// The chain with its genesis block produced.
    pub fn new(scenario: Scenario) -> Chain {
        let mut chain = Chain {
            spec: scenario.chain.clone(),
            blocks: vec![],
            by_hash: HashMap::new(),
            by_height: BTreeMap::new(),
            accounts: BTreeMap::new(),
            keys: BTreeMap::new(),
            gas_nonces: HashMap::new(),
            account_history: BTreeMap::new(),
            key_history: BTreeMap::new(),
            txs: scenario.txs.into(),
            deferred: BTreeMap::new(),
            refused: vec![],
            counter: 0,
        };
        let h = chain.spec.start_height;
        for g in scenario.accounts {
            let state = AccountState {
                amount: g.amount,
                locked: g.locked,
                code_hash: g.code_hash.unwrap_or_else(zero_hash),
                storage_usage: g.storage_usage,
                global_contract_hash: None,
                global_contract_account_id: None,
            };
            chain
                .account_history
                .entry(g.id.clone())
                .or_default()
                .push((h, Some(state.clone())));
            chain.accounts.insert(g.id.clone(), state);
            for (key, permission) in g.keys {
                let ak = chain.new_key(&g.id, &key, permission, h);
                chain
                    .key_history
                    .entry(g.id.clone())
                    .or_default()
                    .entry(key.clone())
                    .or_default()
                    .push((h, Some(ak.clone())));
                chain.keys.entry(g.id.clone()).or_default().insert(key, ak);
            }
        }
        let header = BlockHeader {
            height: h,
            hash: chain.block_hash(h),
            prev_hash: CryptoHash::from_bytes(derive_bytes(chain.spec.seed, b'G', 0)),
            timestamp_ns: chain.spec.genesis_time_ns,
        };
        chain.push_block(SimBlock {
            header,
            changes: vec![],
            touched: vec![],
        });
        chain
    }

    fn new_key(
        &mut self,
        account: &AccountId,
        key: &PublicKey,
        permission: Permission,
        h: u64,
    ) -> AccessKey {
        let nonce = match &permission {
            Permission::GasKeyFullAccess { num_nonces, .. }
            | Permission::GasKeyFunctionCall { num_nonces, .. } => {
                self.gas_nonces.insert(
                    (account.clone(), key.clone()),
                    vec![fresh_nonce(h); usize::from(*num_nonces)],
                );
                0
            }
            _ => fresh_nonce(h),
        };
        AccessKey { nonce, permission }
    }

    fn block_hash(&self, h: u64) -> CryptoHash {
        CryptoHash::from_bytes(derive_bytes(self.spec.seed, b'B', h))
    }

    fn next_hash(&mut self, tag: u8) -> CryptoHash {
        self.counter += 1;
        CryptoHash::from_bytes(derive_bytes(self.spec.seed, tag, self.counter))
    }

    fn push_block(&mut self, block: SimBlock) {
        let idx = self.blocks.len();
        self.by_hash.insert(block.header.hash.to_string(), idx);
        self.by_height.insert(block.header.height, idx);
        self.blocks.push(block);
    }

    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// Produces the next block (skipping the scenario's skipped heights).
    pub fn produce(&mut self) -> &SimBlock {
        let prev = self.head().header.clone();
        let mut h = prev.height + 1;
        while self.spec.skip.contains(&h) {
            h += 1;
        }
        let mut w = Writes {
            height: h,
            list: vec![],
        };
        let due: Vec<u64> = self.deferred.range(..=h).map(|(k, _)| *k).collect();
        for k in due {
            for d in self.deferred.remove(&k).unwrap_or_default() {
                self.apply_deferred(&mut w, d);
            }
        }
        while self.txs.front().is_some_and(|t| t.at <= h) {
            let tx = self.txs.pop_front().expect("checked");
            self.apply_tx(&mut w, tx);
        }
        let mut changes = w.list;
        changes.sort_by_cached_key(|c| trie_order(&c.value));
        self.record_history(h, &changes);
        let touched = touched_of(&changes);
        let elapsed = (h - self.spec.start_height) as u128 * self.spec.block_time.as_nanos();
        let header = BlockHeader {
            height: h,
            hash: self.block_hash(h),
            prev_hash: prev.hash,
            timestamp_ns: self.spec.genesis_time_ns + elapsed as u64,
        };
        self.push_block(SimBlock {
            header,
            changes,
            touched,
        });
        self.head()
    }

    /// Appends each changed account's and key's end-of-block state to history.
    fn record_history(&mut self, h: u64, changes: &[StateChange]) {
        for c in changes {
            match &c.value {
                ChangeValue::AccountUpdate { account_id, .. }
                | ChangeValue::AccountDeletion { account_id } => {
                    let now = self.accounts.get(account_id).cloned();
                    let hist = self.account_history.entry(account_id.clone()).or_default();
                    set_at(hist, h, now);
                }
                ChangeValue::AccessKeyUpdate {
                    account_id,
                    public_key,
                    ..
                }
                | ChangeValue::AccessKeyDeletion {
                    account_id,
                    public_key,
                }
                | ChangeValue::GasKeyNonceUpdate {
                    account_id,
                    public_key,
                    ..
                } => {
                    let now = self
                        .keys
                        .get(account_id)
                        .and_then(|m| m.get(public_key))
                        .cloned();
                    let hist = self
                        .key_history
                        .entry(account_id.clone())
                        .or_default()
                        .entry(public_key.clone())
                        .or_default();
                    set_at(hist, h, now);
                }
                _ => {}
            }
        }
    }

    fn refuse(&mut self, height: u64, account: &AccountId, reason: String, fee_charged: bool) {
        tracing::debug!(%account, height, %reason, "simulated transaction refused");
        self.refused.push(Refused {
            height,
            account: account.clone(),
            reason,
            fee_charged,
        });
    }

    fn write_account(&self, w: &mut Writes, cause: &Cause, account: &AccountId) {
        if let Some(state) = self.accounts.get(account) {
            w.push(
                cause,
                ChangeValue::AccountUpdate {
                    account_id: account.clone(),
                    state: state.clone(),
                },
            );
        }
    }

    fn write_key(&self, w: &mut Writes, cause: &Cause, account: &AccountId, key: &PublicKey) {
        if let Some(ak) = self.keys.get(account).and_then(|m| m.get(key)) {
            w.push(
                cause,
                ChangeValue::AccessKeyUpdate {
                    account_id: account.clone(),
                    public_key: key.clone(),
                    access_key: ak.clone(),
                },
            );
        }
    }

    fn default_signer(&self, account: &AccountId) -> Option<PublicKey> {
        self.keys
            .get(account)?
            .iter()
            .find(|(_, ak)| ak.permission == Permission::FullAccess)
            .map(|(k, _)| k.clone())
    }

    fn apply_tx(&mut self, w: &mut Writes, tx: Tx) {
        let h = w.height;
        let a = tx.account.clone();
        if !self.accounts.contains_key(&a) {
            return self.refuse(h, &a, "the signer account does not exist".into(), false);
        }
        let Some(signer) = tx.signer.clone().or_else(|| self.default_signer(&a)) else {
            return self.refuse(
                h,
                &a,
                "the account has no plain full-access key to sign with".into(),
                false,
            );
        };
        let Some(key) = self.keys.get(&a).and_then(|m| m.get(&signer)).cloned() else {
            return self.refuse(h, &a, format!("signer key {signer} does not exist"), false);
        };
        // Permission: a function-call key may only call its receiver.
        if let Some(receiver) = key.permission.receiver_id() {
            match &tx.action {
                Action::Call { receiver: r } if r.as_str() == receiver => {}
                _ => {
                    return self.refuse(
                        h,
                        &a,
                        format!("function-call key {signer} cannot sign this action"),
                        false,
                    );
                }
            }
        }
        let deposit = match &tx.action {
            Action::Transfer { amount, .. }
            | Action::CreateAccount { amount, .. }
            | Action::FundGasKey { amount, .. } => *amount,
            _ => Yocto::ZERO,
        };
        let gas_key = key.permission.gas_key_balance().is_some();
        let account_cost = if gas_key {
            deposit
        } else {
            Yocto(tx.fee.0 + deposit.0)
        };
        if self.accounts[&a].amount < account_cost {
            return self.refuse(h, &a, "not enough balance".into(), false);
        }
        // Charge the key.
        let mut new_key = key.clone();
        match &mut new_key.permission {
            Permission::FunctionCall {
                allowance: Some(allowance),
                ..
            } => {
                if *allowance < tx.fee {
                    return self.refuse(h, &a, format!("NotEnoughAllowance on {signer}"), false);
                }
                allowance.0 -= tx.fee.0;
            }
            Permission::GasKeyFullAccess {
                balance,
                num_nonces,
            }
            | Permission::GasKeyFunctionCall {
                balance,
                num_nonces,
                ..
            } => {
                if *balance < tx.fee {
                    return self.refuse(
                        h,
                        &a,
                        format!("gas key {signer} cannot pay the fee"),
                        false,
                    );
                }
                if tx.nonce_slot >= *num_nonces {
                    return self.refuse(
                        h,
                        &a,
                        format!("gas key {signer} has no nonce slot {}", tx.nonce_slot),
                        false,
                    );
                }
                balance.0 -= tx.fee.0;
            }
            _ => {}
        }
        let tx_hash = self.next_hash(b'T');
        let cause = tx_cause(tx_hash);
        if gas_key {
            let slots = self
                .gas_nonces
                .entry((a.clone(), signer.clone()))
                .or_default();
            let slot = usize::from(tx.nonce_slot);
            slots[slot] += 1;
            let nonce = slots[slot];
            w.push(
                &cause,
                ChangeValue::GasKeyNonceUpdate {
                    account_id: a.clone(),
                    public_key: signer.clone(),
                    index: tx.nonce_slot,
                    nonce,
                },
            );
        } else {
            new_key.nonce += 1;
        }
        self.keys
            .get_mut(&a)
            .expect("exists")
            .insert(signer.clone(), new_key);
        self.write_key(w, &cause, &a, &signer);
        if account_cost > Yocto::ZERO {
            self.accounts.get_mut(&a).expect("exists").amount.0 -= account_cost.0;
            self.write_account(w, &cause, &a);
        }
        let receipt = receipt_cause(self.next_hash(b'R'));
        self.apply_action(w, &tx, &receipt);
        if tx.refund > Yocto::ZERO && !gas_key {
            let hash = self.next_hash(b'R');
            self.deferred
                .entry(h + tx.refund_after)
                .or_default()
                .push(Deferred::Refund {
                    account: a,
                    key: signer,
                    amount: tx.refund,
                    receipt: hash,
                });
        }
    }

    /// The receipt of `tx`: same block on the signer's own account.
    fn apply_action(&mut self, w: &mut Writes, tx: &Tx, receipt: &Cause) {
        let h = w.height;
        let a = &tx.account;
        let failed = |chain: &mut Chain, reason: String| chain.refuse(h, a, reason, true);
        match &tx.action {
            Action::AddKey { key, permission } => {
                if self.keys.get(a).is_some_and(|m| m.contains_key(key)) {
                    return failed(self, format!("AddKey: {key} already exists"));
                }
                let ak = self.new_key(a, key, permission.clone(), h);
                self.keys
                    .entry(a.clone())
                    .or_default()
                    .insert(key.clone(), ak);
                self.write_key(w, receipt, a, key);
            }
            Action::DeleteKey { key } => {
                let Some(ak) = self.keys.get(a).and_then(|m| m.get(key)) else {
                    return failed(self, format!("DeleteKey: {key} does not exist"));
                };
                if ak
                    .permission
                    .gas_key_balance()
                    .is_some_and(|b| b.0 > crate::domain::YOCTO_PER_NEAR)
                {
                    return failed(
                        self,
                        format!("DeleteKey: gas key {key} holds more than 1 NEAR"),
                    );
                }
                self.keys.get_mut(a).expect("exists").remove(key);
                self.gas_nonces.remove(&(a.clone(), key.clone()));
                w.push(
                    receipt,
                    ChangeValue::AccessKeyDeletion {
                        account_id: a.clone(),
                        public_key: key.clone(),
                    },
                );
            }
            Action::Call { .. } => {}
            Action::Transfer { to, amount } => {
                let hash = receipt.receipt_hash.clone().expect("receipt cause");
                self.deferred
                    .entry(h + 1)
                    .or_default()
                    .push(Deferred::Credit {
                        account: to.clone(),
                        amount: *amount,
                        receipt: hash,
                    });
            }
            Action::Stake { amount } => {
                let st = self.accounts.get_mut(a).expect("exists");
                if st.amount < *amount {
                    return failed(self, "Stake: not enough balance".into());
                }
                st.amount.0 -= amount.0;
                st.locked.0 += amount.0;
                self.write_account(w, receipt, a);
            }
            Action::Deploy {
                code_hash,
                code_len,
            } => {
                let st = self.accounts.get_mut(a).expect("exists");
                st.code_hash = code_hash.clone();
                st.storage_usage += code_len;
                st.global_contract_hash = None;
                st.global_contract_account_id = None;
                w.push(
                    receipt,
                    ChangeValue::ContractCodeUpdate {
                        account_id: a.clone(),
                    },
                );
                self.write_account(w, receipt, a);
            }
            Action::UseGlobalContract { hash, by_account } => {
                let st = self.accounts.get_mut(a).expect("exists");
                st.code_hash = zero_hash();
                st.global_contract_hash = hash.clone();
                st.global_contract_account_id = by_account.clone();
                self.write_account(w, receipt, a);
            }
            Action::CreateAccount {
                new_account,
                amount,
                keys,
            } => {
                let hash = receipt.receipt_hash.clone().expect("receipt cause");
                self.deferred
                    .entry(h + 1)
                    .or_default()
                    .push(Deferred::Create {
                        account: new_account.clone(),
                        funder: a.clone(),
                        amount: *amount,
                        keys: keys.clone(),
                        receipt: hash,
                    });
            }
            Action::FundGasKey { key, amount } => {
                let Some(ak) = self.keys.get_mut(a).and_then(|m| m.get_mut(key)) else {
                    return failed(self, format!("TransferToGasKey: {key} does not exist"));
                };
                match &mut ak.permission {
                    Permission::GasKeyFullAccess { balance, .. }
                    | Permission::GasKeyFunctionCall { balance, .. } => balance.0 += amount.0,
                    _ => return failed(self, format!("TransferToGasKey: {key} is not a gas key")),
                }
                self.write_key(w, receipt, a, key);
            }
            Action::DeleteAccount { beneficiary } => {
                let keys: Vec<PublicKey> = self
                    .keys
                    .remove(a)
                    .unwrap_or_default()
                    .into_keys()
                    .collect();
                for key in keys {
                    self.gas_nonces.remove(&(a.clone(), key.clone()));
                    w.push(
                        receipt,
                        ChangeValue::AccessKeyDeletion {
                            account_id: a.clone(),
                            public_key: key,
                        },
                    );
                }
                let st = self.accounts.remove(a).expect("exists");
                if st.code_hash != zero_hash() {
                    w.push(
                        receipt,
                        ChangeValue::ContractCodeDeletion {
                            account_id: a.clone(),
                        },
                    );
                }
                w.push(
                    receipt,
                    ChangeValue::AccountDeletion {
                        account_id: a.clone(),
                    },
                );
                let hash = self.next_hash(b'R');
                self.deferred
                    .entry(h + 1)
                    .or_default()
                    .push(Deferred::Credit {
                        account: beneficiary.clone(),
                        amount: st.amount,
                        receipt: hash,
                    });
            }
        }
    }

    fn apply_deferred(&mut self, w: &mut Writes, d: Deferred) {
        match d {
            Deferred::Credit {
                account,
                amount,
                receipt,
            } => {
                // A transfer to an account that does not exist is lost here;
                // the simulator does not model implicit account creation.
                if let Some(st) = self.accounts.get_mut(&account) {
                    st.amount.0 = st.amount.0.saturating_add(amount.0);
                    self.write_account(w, &receipt_cause(receipt), &account);
                }
            }
            Deferred::Refund {
                account,
                key,
                amount,
                receipt,
            } => {
                let cause = receipt_cause(receipt);
                let Some(st) = self.accounts.get_mut(&account) else {
                    return;
                };
                st.amount.0 = st.amount.0.saturating_add(amount.0);
                self.write_account(w, &cause, &account);
                // Refunds raise a function-call key's allowance, best effort:
                // only if the key still exists with a limited allowance.
                if let Some(ak) = self.keys.get_mut(&account).and_then(|m| m.get_mut(&key))
                    && let Permission::FunctionCall {
                        allowance: Some(al),
                        ..
                    } = &mut ak.permission
                {
                    al.0 = al.0.saturating_add(amount.0);
                    self.write_key(w, &cause, &account, &key);
                }
            }
            Deferred::Create {
                account,
                funder,
                amount,
                keys,
                receipt,
            } => {
                let cause = receipt_cause(receipt);
                if self.accounts.contains_key(&account) {
                    self.refuse(
                        w.height,
                        &funder,
                        format!("CreateAccount: {account} already exists"),
                        true,
                    );
                    let hash = self.next_hash(b'R');
                    self.deferred
                        .entry(w.height + 1)
                        .or_default()
                        .push(Deferred::Credit {
                            account: funder,
                            amount,
                            receipt: hash,
                        });
                    return;
                }
                let state = AccountState {
                    amount,
                    locked: Yocto::ZERO,
                    code_hash: zero_hash(),
                    storage_usage: 182,
                    global_contract_hash: None,
                    global_contract_account_id: None,
                };
                self.accounts.insert(account.clone(), state);
                self.write_account(w, &cause, &account);
                for (key, permission) in keys {
                    let ak = self.new_key(&account, &key, permission, w.height);
                    self.keys
                        .entry(account.clone())
                        .or_default()
                        .insert(key.clone(), ak);
                    self.write_key(w, &cause, &account, &key);
                }
            }
        }
    }

    // ---- reading the chain ---------------------------------------------

    pub fn head(&self) -> &SimBlock {
        self.blocks.last().expect("genesis exists")
    }

    pub fn blocks(&self) -> &[SimBlock] {
        &self.blocks
    }

    fn at_offset(&self, back: u64) -> &SimBlock {
        let idx = self.blocks.len().saturating_sub(1 + back as usize);
        &self.blocks[idx]
    }

    /// The final block: `final_lag` blocks behind the head.
    pub fn final_block(&self) -> &SimBlock {
        self.at_offset(self.spec.final_lag)
    }

    pub fn near_final_block(&self) -> &SimBlock {
        self.at_offset(1.min(self.spec.final_lag))
    }

    /// The oldest block whose data the node still serves.
    pub fn earliest(&self) -> &SimBlock {
        let keep = self.spec.gc_keep.unwrap_or(u64::MAX) as usize;
        &self.blocks[self.blocks.len().saturating_sub(keep.max(1))]
    }

    pub fn block_by_height(&self, h: u64) -> Option<&SimBlock> {
        self.by_height.get(&h).map(|i| &self.blocks[*i])
    }

    /// Rewrites a stored block (tests: a node that lies). The block keeps
    /// its place; its hash index is updated.
    pub fn tamper(&mut self, height: u64, f: impl FnOnce(&mut SimBlock)) -> bool {
        let Some(idx) = self.by_height.get(&height).copied() else {
            return false;
        };
        self.by_hash.remove(self.blocks[idx].header.hash.as_str());
        f(&mut self.blocks[idx]);
        self.by_hash
            .insert(self.blocks[idx].header.hash.to_string(), idx);
        true
    }

    pub fn block_by_hash(&self, hash: &str) -> Option<&SimBlock> {
        self.by_hash.get(hash).map(|i| &self.blocks[*i])
    }

    pub fn is_collected(&self, block: &SimBlock) -> bool {
        block.header.height < self.earliest().header.height
    }

    /// Ground truth: the account at the end of block `h` (None: absent).
    pub fn account_at(&self, account: &AccountId, h: u64) -> Option<AccountState> {
        let hist = self.account_history.get(account)?;
        let i = hist.partition_point(|(hh, _)| *hh <= h);
        if i == 0 { None } else { hist[i - 1].1.clone() }
    }

    /// Ground truth: the keys of `account` at the end of block `h`.
    pub fn keys_at(&self, account: &AccountId, h: u64) -> BTreeMap<PublicKey, AccessKey> {
        let mut out = BTreeMap::new();
        for (key, hist) in self.key_history.get(account).into_iter().flatten() {
            let i = hist.partition_point(|(hh, _)| *hh <= h);
            if let Some((_, Some(ak))) = i.checked_sub(1).map(|i| &hist[i]) {
                out.insert(key.clone(), ak.clone());
            }
        }
        out
    }

    /// Ground truth: every write to `account` (account, code and keys), by block.
    pub fn changes_of(&self, account: &AccountId) -> Vec<(u64, StateChange)> {
        self.blocks
            .iter()
            .flat_map(|b| b.changes.iter().map(move |c| (b.header.height, c)))
            .filter(|(_, c)| c.value.account_id() == Some(account))
            .map(|(h, c)| (h, c.clone()))
            .collect()
    }

    /// Gas-key nonce slots now.
    pub fn gas_key_nonces(&self, account: &AccountId, key: &PublicKey) -> Option<&[u64]> {
        self.gas_nonces
            .get(&(account.clone(), key.clone()))
            .map(Vec::as_slice)
    }

    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// True once every scripted transaction and deferred receipt has landed.
    pub fn is_done(&self) -> bool {
        self.txs.is_empty() && self.deferred.is_empty()
    }
}
