//! Scenario files: a chain (heights, skipped heights, GC horizon, profile),
//! its genesis accounts, and actions scripted at heights. See
//! `scenarios/README.md` for the format; [`Scenario::generate`] makes seeded
//! volume scenarios for benchmarks.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{AccountId, CryptoHash, KeyType, Permission, PublicKey, Yocto};
use crate::sim::faults::FaultPlan;

/// Which kind of node the simulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// nearcore >= 2.14: `changes`/`block_effects`, key-list pagination, gas
    /// keys, HTTP 4xx/5xx with JSON bodies.
    Current,
    /// A node before 2.3: `EXPERIMENTAL_` names only, no pagination, no gas
    /// keys, HTTP 200 for every error.
    Legacy,
}

#[derive(Debug, Clone)]
pub struct ChainSpec {
    pub chain_id: String,
    pub profile: Profile,
    pub start_height: u64,
    pub genesis_time_ns: u64,
    pub block_time: Duration,
    /// Heights at which no block is produced.
    pub skip: BTreeSet<u64>,
    /// Blocks of history the node keeps (None: all).
    pub gc_keep: Option<u64>,
    /// How many blocks `final` lags the head.
    pub final_lag: u64,
    /// Seeds hashes (and faults unless they have their own seed).
    pub seed: u64,
    /// The node's `view_access_keys_limit`.
    pub key_page_limit: usize,
}

#[derive(Debug, Clone)]
pub struct GenesisAccount {
    pub id: AccountId,
    pub amount: Yocto,
    pub locked: Yocto,
    pub storage_usage: u64,
    pub code_hash: Option<CryptoHash>,
    pub keys: Vec<(PublicKey, Permission)>,
}

/// What a scripted transaction does. Every action is a transaction signed
/// by `signer` (a key of `account`), whose effects land as a real node
/// would write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AddKey {
        key: PublicKey,
        permission: Permission,
    },
    DeleteKey {
        key: PublicKey,
    },
    /// A function call signed by `signer` (any key kind), costing `fee`.
    Call {
        receiver: AccountId,
    },
    Transfer {
        to: AccountId,
        amount: Yocto,
    },
    Stake {
        amount: Yocto,
    },
    Deploy {
        code_hash: CryptoHash,
        code_len: u64,
    },
    UseGlobalContract {
        hash: Option<CryptoHash>,
        by_account: Option<AccountId>,
    },
    CreateAccount {
        new_account: AccountId,
        amount: Yocto,
        keys: Vec<(PublicKey, Permission)>,
    },
    FundGasKey {
        key: PublicKey,
        amount: Yocto,
    },
    DeleteAccount {
        beneficiary: AccountId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tx {
    pub at: u64,
    pub account: AccountId,
    /// None: the account's first plain full-access key at that time.
    pub signer: Option<PublicKey>,
    /// Charged to the signer key's allowance / gas balance, or the account.
    pub fee: Yocto,
    /// Gas refund, credited `refund_after` blocks later.
    pub refund: Yocto,
    pub refund_after: u64,
    /// Gas-key nonce slot used when the signer is a gas key.
    pub nonce_slot: u16,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub chain: ChainSpec,
    pub accounts: Vec<GenesisAccount>,
    /// In the order they apply: by height, then file order.
    pub txs: Vec<Tx>,
    /// Faults the scenario asks for (tests usually set their own).
    pub faults: FaultPlan,
}

#[derive(Debug, thiserror::Error)]
#[error("scenario {origin}: {problems}")]
pub struct ScenarioError {
    pub origin: String,
    pub problems: String,
}

// ---- file format --------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScenario {
    chain: FileChain,
    #[serde(default)]
    accounts: Vec<FileAccount>,
    #[serde(default)]
    actions: Vec<FileAction>,
    #[serde(default)]
    faults: FaultPlan,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChain {
    #[serde(default = "default_chain_id")]
    chain_id: String,
    #[serde(default = "default_profile")]
    profile: Profile,
    start_height: u64,
    #[serde(default)]
    genesis_time: Option<String>,
    #[serde(default)]
    block_time: Option<String>,
    #[serde(default)]
    skip: Vec<u64>,
    #[serde(default)]
    gc_keep: Option<u64>,
    #[serde(default)]
    final_lag: Option<u64>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    key_page_limit: Option<usize>,
}

fn default_chain_id() -> String {
    "localnet".into()
}

fn default_profile() -> Profile {
    Profile::Current
}

/// A NEAR amount written as a string of NEAR ("1.5").
#[derive(Debug, Clone, Copy)]
struct Near(Yocto);

impl<'de> Deserialize<'de> for Near {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Yocto::parse_near(&s)
            .map(Near)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum FilePermission {
    FullAccess,
    FunctionCall {
        allowance: Option<Near>,
        receiver: String,
        #[serde(default)]
        methods: Vec<String>,
    },
    GasKeyFullAccess {
        balance: Near,
        num_nonces: u16,
    },
    GasKeyFunctionCall {
        balance: Near,
        num_nonces: u16,
        receiver: String,
        #[serde(default)]
        methods: Vec<String>,
    },
}

impl FilePermission {
    fn into_permission(self) -> Permission {
        match self {
            FilePermission::FullAccess => Permission::FullAccess,
            FilePermission::FunctionCall {
                allowance,
                receiver,
                methods,
            } => Permission::FunctionCall {
                allowance: allowance.map(|n| n.0),
                receiver_id: receiver,
                method_names: methods,
            },
            FilePermission::GasKeyFullAccess {
                balance,
                num_nonces,
            } => Permission::GasKeyFullAccess {
                balance: balance.0,
                num_nonces,
            },
            FilePermission::GasKeyFunctionCall {
                balance,
                num_nonces,
                receiver,
                methods,
            } => Permission::GasKeyFunctionCall {
                allowance: None,
                balance: balance.0,
                receiver_id: receiver,
                method_names: methods,
                num_nonces,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    key: PublicKey,
    permission: FilePermission,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    id: AccountId,
    amount: Near,
    #[serde(default)]
    locked: Option<Near>,
    #[serde(default)]
    storage_usage: Option<u64>,
    #[serde(default)]
    code_hash: Option<CryptoHash>,
    #[serde(default)]
    keys: Vec<FileKey>,
}

/// One `[[actions]]` entry: `do` names the action; which other fields it
/// needs depends on it (checked in [`FileAction::into_tx`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAction {
    at: u64,
    #[serde(rename = "do")]
    kind: String,
    account: AccountId,
    signer: Option<PublicKey>,
    fee: Option<Near>,
    refund: Option<Near>,
    refund_after: Option<u64>,
    nonce_slot: Option<u16>,
    key: Option<PublicKey>,
    permission: Option<FilePermission>,
    receiver: Option<AccountId>,
    to: Option<AccountId>,
    amount: Option<Near>,
    code_hash: Option<CryptoHash>,
    code_len: Option<u64>,
    global_hash: Option<CryptoHash>,
    global_account: Option<AccountId>,
    new_account: Option<AccountId>,
    #[serde(default)]
    keys: Vec<FileKey>,
    beneficiary: Option<AccountId>,
}

/// Default transaction fee (gas burnt plus prepaid gas), in yocto.
pub const DEFAULT_FEE: Yocto = Yocto(19_300_000_000_000_000_000_000);

impl FileAction {
    fn into_tx(self) -> Result<Tx, String> {
        fn need<T>(v: Option<T>, field: &str, kind: &str) -> Result<T, String> {
            v.ok_or_else(|| format!("`{kind}` needs `{field}`"))
        }
        let kind = self.kind.as_str();
        let action = match kind {
            "add_key" => Action::AddKey {
                key: need(self.key, "key", kind)?,
                permission: need(self.permission, "permission", kind)?.into_permission(),
            },
            "delete_key" => Action::DeleteKey {
                key: need(self.key, "key", kind)?,
            },
            "call" => Action::Call {
                receiver: need(self.receiver, "receiver", kind)?,
            },
            "transfer" => Action::Transfer {
                to: need(self.to, "to", kind)?,
                amount: need(self.amount, "amount", kind)?.0,
            },
            "stake" => Action::Stake {
                amount: need(self.amount, "amount", kind)?.0,
            },
            "deploy" => Action::Deploy {
                code_hash: need(self.code_hash, "code_hash", kind)?,
                code_len: self.code_len.unwrap_or(20_000),
            },
            "use_global_contract" => {
                if self.global_hash.is_some() == self.global_account.is_some() {
                    return Err("`use_global_contract` needs exactly one of `global_hash` or `global_account`".into());
                }
                Action::UseGlobalContract {
                    hash: self.global_hash,
                    by_account: self.global_account,
                }
            }
            "create_account" => Action::CreateAccount {
                new_account: need(self.new_account, "new_account", kind)?,
                amount: need(self.amount, "amount", kind)?.0,
                keys: self
                    .keys
                    .into_iter()
                    .map(|k| (k.key, k.permission.into_permission()))
                    .collect(),
            },
            "fund_gas_key" => Action::FundGasKey {
                key: need(self.key, "key", kind)?,
                amount: need(self.amount, "amount", kind)?.0,
            },
            "delete_account" => Action::DeleteAccount {
                beneficiary: need(self.beneficiary, "beneficiary", kind)?,
            },
            other => {
                return Err(format!(
                    "unknown action {other:?} (add_key, delete_key, call, transfer, stake, deploy, use_global_contract, create_account, fund_gas_key, delete_account)"
                ));
            }
        };
        Ok(Tx {
            at: self.at,
            account: self.account,
            signer: self.signer,
            fee: self.fee.map(|n| n.0).unwrap_or(DEFAULT_FEE),
            refund: self.refund.map(|n| n.0).unwrap_or(Yocto::ZERO),
            refund_after: self.refund_after.unwrap_or(2).max(1),
            nonce_slot: self.nonce_slot.unwrap_or(0),
            action,
        })
    }
}

fn is_gas_key(p: &Permission) -> bool {
    matches!(
        p,
        Permission::GasKeyFullAccess { .. } | Permission::GasKeyFunctionCall { .. }
    )
}

impl Scenario {
    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let err = |problems: String| ScenarioError {
            origin: origin.to_owned(),
            problems,
        };
        let file: FileScenario = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut problems = Vec::new();
        let c = file.chain;
        let genesis_time_ns = match &c.genesis_time {
            None => 1_795_331_870_000_000_000,
            Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(dt) => dt.timestamp_nanos_opt().unwrap_or(0).max(0) as u64,
                Err(e) => {
                    problems.push(format!("chain.genesis_time {t:?}: {e}"));
                    0
                }
            },
        };
        let block_time = match &c.block_time {
            None => Duration::from_millis(600),
            Some(t) => humantime::parse_duration(t).unwrap_or_else(|e| {
                problems.push(format!("chain.block_time {t:?}: {e}"));
                Duration::from_millis(600)
            }),
        };
        if c.skip.contains(&c.start_height) {
            problems.push(format!(
                "chain.skip: the start height {} must have a block",
                c.start_height
            ));
        }
        let chain = ChainSpec {
            chain_id: c.chain_id,
            profile: c.profile,
            start_height: c.start_height,
            genesis_time_ns,
            block_time,
            skip: c.skip.into_iter().collect(),
            gc_keep: c.gc_keep,
            final_lag: c.final_lag.unwrap_or(2),
            seed: c.seed,
            key_page_limit: c.key_page_limit.unwrap_or(100).max(1),
        };
        let accounts: Vec<GenesisAccount> = file
            .accounts
            .into_iter()
            .map(|a| GenesisAccount {
                id: a.id,
                amount: a.amount.0,
                locked: a.locked.map(|n| n.0).unwrap_or_default(),
                storage_usage: a.storage_usage.unwrap_or(182),
                code_hash: a.code_hash,
                keys: a
                    .keys
                    .into_iter()
                    .map(|k| (k.key, k.permission.into_permission()))
                    .collect(),
            })
            .collect();
        let mut txs = Vec::new();
        for (i, a) in file.actions.into_iter().enumerate() {
            let label = format!("actions[{i}] ({} at {})", a.kind, a.at);
            match a.into_tx() {
                Ok(tx) if tx.at <= chain.start_height => problems.push(format!(
                    "{label}: must come after the start height {}",
                    chain.start_height
                )),
                Ok(tx) if chain.skip.contains(&tx.at) => {
                    problems.push(format!("{label}: height {} is skipped", tx.at))
                }
                Ok(tx) => txs.push(tx),
                Err(e) => problems.push(format!("{label}: {e}")),
            }
        }
        if chain.profile == Profile::Legacy {
            let gas_keys = accounts.iter().flat_map(|a| &a.keys).any(|(_, p)| is_gas_key(p))
                || txs.iter().any(|t| matches!(&t.action, Action::AddKey { permission, .. } if is_gas_key(permission)));
            let ml_dsa = accounts.iter().flat_map(|a| &a.keys).any(|(k, _)| {
                k.key_type() != KeyType::Ed25519 && k.key_type() != KeyType::Secp256k1
            });
            if gas_keys || ml_dsa {
                problems.push(
                    "the legacy profile (protocol 61) has no gas keys and no ML-DSA keys".into(),
                );
            }
        }
        if !problems.is_empty() {
            return Err(err(problems.join("; ")));
        }
        txs.sort_by_key(|t| t.at);
        Ok(Scenario {
            chain,
            accounts,
            txs,
            faults: file.faults,
        })
    }

    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            origin: path.display().to_string(),
            problems: e.to_string(),
        })?;
        Scenario::from_toml(&text, &path.display().to_string())
    }

    /// The last height any action lands on (refunds included).
    pub fn last_action_height(&self) -> u64 {
        self.txs
            .iter()
            .map(|t| t.at + t.refund_after + 1)
            .max()
            .unwrap_or(self.chain.start_height)
    }

    /// Moves the genesis to now, so the story's blocks are news rather
    /// than history (the demos).
    pub fn start_now(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.chain.genesis_time_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    }
}

/// Parameters of a seeded volume scenario.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub seed: u64,
    pub accounts: usize,
    pub blocks: u64,
    /// Transactions per block, across all accounts.
    pub actions_per_block: usize,
    pub start_height: u64,
}

/// Deterministic key bytes from a seed and an index.
pub fn seeded_key(seed: u64, n: u64) -> PublicKey {
    let bytes = crate::sim::chain::derive_bytes(seed, 0x4b, n);
    PublicKey::parse(&format!("ed25519:{}", bs58::encode(bytes).into_string()))
        .expect("32 bytes is an ed25519 key")
}

impl Scenario {
    /// N accounts, each with a full-access and a function-call key, and a
    /// seeded stream of calls (with refunds), key additions and deletions,
    /// and transfers: for benchmarks and volume tests.
    pub fn generate(spec: &GenSpec) -> Scenario {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
        let near = crate::domain::YOCTO_PER_NEAR;
        let id = |i: usize| AccountId::parse(&format!("acc{i}.sim.near")).expect("valid id");
        let mut key_n = 0u64;
        let mut next_key = || {
            key_n += 1;
            seeded_key(spec.seed, key_n)
        };
        let fc = |receiver: &str| Permission::FunctionCall {
            allowance: Some(Yocto(near / 4)),
            receiver_id: receiver.into(),
            method_names: vec!["ping".into()],
        };
        let mut accounts = Vec::new();
        // Per account: its function-call keys (the full-access key stays).
        let mut fc_keys: Vec<Vec<PublicKey>> = Vec::new();
        for i in 0..spec.accounts {
            let full = next_key();
            let call = next_key();
            accounts.push(GenesisAccount {
                id: id(i),
                amount: Yocto(1_000 * near),
                locked: Yocto::ZERO,
                storage_usage: 182,
                code_hash: None,
                keys: vec![
                    (full, Permission::FullAccess),
                    (call.clone(), fc("app.near")),
                ],
            });
            fc_keys.push(vec![call]);
        }
        let mut txs = Vec::new();
        for b in 1..=spec.blocks {
            let at = spec.start_height + b;
            for _ in 0..spec.actions_per_block {
                let a = rng.random_range(0..spec.accounts);
                let base = Tx {
                    at,
                    account: id(a),
                    signer: None,
                    fee: Yocto(near / 10_000),
                    refund: Yocto::ZERO,
                    refund_after: 2,
                    nonce_slot: 0,
                    action: Action::Call {
                        receiver: AccountId::parse("app.near").expect("valid"),
                    },
                };
                let roll = rng.random_range(0..100);
                let tx = if roll < 60 && !fc_keys[a].is_empty() {
                    let key = fc_keys[a][rng.random_range(0..fc_keys[a].len())].clone();
                    Tx {
                        signer: Some(key),
                        fee: Yocto(near / 1_000),
                        refund: Yocto(near / 2_000),
                        ..base
                    }
                } else if roll < 75 {
                    let key = next_key();
                    fc_keys[a].push(key.clone());
                    Tx {
                        action: Action::AddKey {
                            key,
                            permission: fc("app.near"),
                        },
                        ..base
                    }
                } else if roll < 85 && fc_keys[a].len() > 1 {
                    let pick = rng.random_range(0..fc_keys[a].len());
                    let key = fc_keys[a].remove(pick);
                    Tx {
                        action: Action::DeleteKey { key },
                        ..base
                    }
                } else {
                    let to = id(rng.random_range(0..spec.accounts));
                    Tx {
                        action: Action::Transfer {
                            to,
                            amount: Yocto(near / 100),
                        },
                        ..base
                    }
                };
                txs.push(tx);
            }
        }
        Scenario {
            chain: ChainSpec {
                chain_id: "localnet".into(),
                profile: Profile::Current,
                start_height: spec.start_height,
                genesis_time_ns: 1_795_331_870_000_000_000,
                block_time: Duration::from_millis(600),
                skip: BTreeSet::new(),
                gc_keep: None,
                final_lag: 2,
                seed: spec.seed,
                key_page_limit: 100,
            },
            accounts,
            txs,
            faults: FaultPlan::default(),
        }
    }
}
