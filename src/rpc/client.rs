//! The NEAR RPC methods keywatch uses, typed.

use serde_json::{Value, json};

use crate::domain::{AccountId, AccountState, CryptoHash, PublicKey};
use crate::rpc::error::RpcError;
use crate::rpc::transport::{Lane, Method, RpcSettings, SetupError, Transport};
use crate::rpc::views::{
    AccessKeyLookup, AccessKeyView, AccountAt, BlockEffectsView, BlockView, ChangesView,
    KeyListEntry, KeyListPage, QueryBlock, StatusView,
};

const STATUS: Method = Method::plain("status");
const BLOCK: Method = Method::plain("block");
const QUERY: Method = Method::plain("query");
const CHANGES: Method = Method {
    name: "changes",
    legacy: Some("EXPERIMENTAL_changes"),
};
const BLOCK_EFFECTS: Method = Method {
    name: "block_effects",
    legacy: Some("EXPERIMENTAL_changes_in_block"),
};
/// Every method keywatch calls, by its current name.
pub const METHOD_NAMES: [&str; 5] = [
    STATUS.name,
    BLOCK.name,
    QUERY.name,
    CHANGES.name,
    BLOCK_EFFECTS.name,
];

/// Keys per `view_access_key_list` page; nodes clamp to their own cap (100).
pub const KEY_PAGE_LIMIT: u32 = 100;
/// A hostile node could page forever; no real account has this many keys.
const MAX_KEY_PAGES: usize = 10_000;

/// Which block a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    Final,
    Optimistic,
    Height(u64),
    Hash(CryptoHash),
}

impl BlockRef {
    fn write_into(&self, params: &mut serde_json::Map<String, Value>) {
        match self {
            BlockRef::Final => params.insert("finality".into(), json!("final")),
            BlockRef::Optimistic => params.insert("finality".into(), json!("optimistic")),
            // A height must be a JSON number: a numeric string is read as a hash.
            BlockRef::Height(h) => params.insert("block_id".into(), json!(h)),
            BlockRef::Hash(h) => params.insert("block_id".into(), json!(h.as_str())),
        };
    }
}

fn params(block: &BlockRef, fields: Value) -> Value {
    let mut map = match fields {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    block.write_into(&mut map);
    Value::Object(map)
}

/// The `changes_type`s keywatch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangesKind {
    AllAccessKeys,
    Accounts,
    ContractCode,
}

impl ChangesKind {
    fn name(self) -> &'static str {
        match self {
            ChangesKind::AllAccessKeys => "all_access_key_changes",
            ChangesKind::Accounts => "account_changes",
            ChangesKind::ContractCode => "contract_code_changes",
        }
    }
}

/// A client of the configured urls. Clones made with [`Self::background`]
/// share its connections and request budget.
pub struct RpcClient {
    transport: std::sync::Arc<Transport>,
    lane: Lane,
}

impl RpcClient {
    pub fn new(settings: RpcSettings) -> Result<RpcClient, SetupError> {
        Ok(RpcClient {
            transport: std::sync::Arc::new(Transport::new(settings)?),
            lane: Lane::Follow,
        })
    }

    /// The same client for work that must never slow following down
    /// (reconcile, baselines): it uses only the budget following leaves.
    pub fn background(&self) -> RpcClient {
        RpcClient {
            transport: self.transport.clone(),
            lane: Lane::Background,
        }
    }

    pub async fn status(&self) -> Result<StatusView, RpcError> {
        self.transport.call(self.lane, STATUS, &json!([])).await
    }

    /// Checks every configured url against the expected `chain_id`. A url on
    /// the wrong chain is an error; one that cannot be reached only warns, so
    /// a backup being down does not stop start-up.
    pub async fn verify_chain(&self, expected: &str) -> Result<StatusView, RpcError> {
        let mut first_ok = None;
        let mut last_err = None;
        for idx in 0..self.transport.url_count() {
            match self
                .transport
                .call_on::<StatusView>(self.lane, idx, STATUS, &json!([]))
                .await
            {
                Ok(status) if status.chain_id != expected => {
                    return Err(RpcError::WrongChain {
                        url: self.transport.url_display(idx).to_owned(),
                        expected: expected.to_owned(),
                        actual: status.chain_id,
                    });
                }
                Ok(status) => {
                    first_ok.get_or_insert(status);
                }
                Err(e) => {
                    tracing::warn!(url = self.transport.url_display(idx), error = %e, "rpc url unreachable at start-up");
                    last_err = Some(e);
                }
            }
        }
        first_ok.ok_or_else(|| last_err.expect("at least one url"))
    }

    pub async fn block(&self, block: &BlockRef) -> Result<BlockView, RpcError> {
        self.transport
            .call(self.lane, BLOCK, &params(block, json!({})))
            .await
    }

    /// One attempt at `block` on one configured url (to cross-check a
    /// suspicious answer against another node).
    pub async fn block_on(
        &self,
        url_index: usize,
        block: &BlockRef,
    ) -> Result<BlockView, RpcError> {
        self.transport
            .call_on(self.lane, url_index, BLOCK, &params(block, json!({})))
            .await
    }

    pub fn url_count(&self) -> usize {
        self.transport.url_count()
    }

    /// `changes` for the given accounts. Never sends an empty list: nodes
    /// short-circuit it with a fake all-ones block hash.
    pub async fn changes(
        &self,
        block: &BlockRef,
        kind: ChangesKind,
        accounts: &[AccountId],
    ) -> Result<ChangesView, RpcError> {
        assert!(!accounts.is_empty(), "changes() needs at least one account");
        let p = params(
            block,
            json!({"changes_type": kind.name(), "account_ids": accounts}),
        );
        self.transport.call(self.lane, CHANGES, &p).await
    }

    /// `single_access_key_changes` for specific keys (and their gas-key nonces).
    pub async fn single_access_key_changes(
        &self,
        block: &BlockRef,
        keys: &[(AccountId, PublicKey)],
    ) -> Result<ChangesView, RpcError> {
        assert!(
            !keys.is_empty(),
            "single_access_key_changes() needs at least one key"
        );
        let keys: Vec<Value> = keys
            .iter()
            .map(|(a, k)| json!({"account_id": a, "public_key": k.as_str()}))
            .collect();
        let p = params(
            block,
            json!({"changes_type": "single_access_key_changes", "keys": keys}),
        );
        self.transport.call(self.lane, CHANGES, &p).await
    }

    pub async fn block_effects(&self, block: &BlockRef) -> Result<BlockEffectsView, RpcError> {
        self.transport
            .call(self.lane, BLOCK_EFFECTS, &params(block, json!({})))
            .await
    }

    pub async fn view_account(
        &self,
        block: &BlockRef,
        account: &AccountId,
    ) -> Result<AccountAt, RpcError> {
        let p = params(
            block,
            json!({"request_type": "view_account", "account_id": account}),
        );
        self.transport.call(self.lane, QUERY, &p).await
    }

    /// The account's state, or `None` when the node says UNKNOWN_ACCOUNT
    /// (never created, or deleted).
    pub async fn view_account_opt(
        &self,
        block: &BlockRef,
        account: &AccountId,
    ) -> Result<Option<(AccountState, QueryBlock)>, RpcError> {
        match self.view_account(block, account).await {
            Ok(at) => Ok(Some((at.account.into(), at.at))),
            Err(e) if e.is_unknown_account() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One key, or `None` when it does not exist (legacy flat result or the
    /// structured UNKNOWN_ACCESS_KEY).
    pub async fn view_access_key(
        &self,
        block: &BlockRef,
        account: &AccountId,
        key: &PublicKey,
    ) -> Result<Option<(AccessKeyView, QueryBlock)>, RpcError> {
        let p = params(
            block,
            json!({"request_type": "view_access_key", "account_id": account, "public_key": key.as_str()}),
        );
        match self
            .transport
            .call::<AccessKeyLookup>(self.lane, QUERY, &p)
            .await
        {
            Ok(AccessKeyLookup::Found(k, at)) => Ok(Some((k, at))),
            Ok(AccessKeyLookup::Missing { .. }) => Ok(None),
            Err(e) if e.cause_name() == Some("UNKNOWN_ACCESS_KEY") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key of the account at one block, following `last_key` ->
    /// `after_key`. Later pages are pinned to the first page's block hash so
    /// a finality reference cannot mix two blocks.
    pub async fn view_access_key_list(
        &self,
        block: &BlockRef,
        account: &AccountId,
    ) -> Result<(Vec<KeyListEntry>, QueryBlock), RpcError> {
        let mut keys = Vec::new();
        let mut at_block = block.clone();
        let mut after: Option<PublicKey> = None;
        let mut first_at: Option<QueryBlock> = None;
        for _ in 0..MAX_KEY_PAGES {
            let mut fields = json!({"request_type": "view_access_key_list", "account_id": account, "limit": KEY_PAGE_LIMIT});
            if let Some(k) = &after {
                fields["after_key"] = json!(k.as_str());
            }
            let page: KeyListPage = self
                .transport
                .call(self.lane, QUERY, &params(&at_block, fields))
                .await?;
            let at = first_at.get_or_insert_with(|| page.at.clone()).clone();
            if page.at.block_hash != at.block_hash {
                return Err(self.malformed(format!(
                    "key list pages came from blocks {} and {}",
                    at.block_hash, page.at.block_hash
                )));
            }
            at_block = BlockRef::Hash(at.block_hash.clone());
            keys.extend(page.keys);
            match page.last_key {
                None => return Ok((keys, at)),
                Some(last) if after.as_ref() == Some(&last) => {
                    return Err(
                        self.malformed(format!("key list pagination does not advance past {last}"))
                    );
                }
                Some(last) => after = Some(last),
            }
        }
        Err(self.malformed(format!(
            "key list of {account} exceeds {MAX_KEY_PAGES} pages"
        )))
    }

    fn malformed(&self, reason: String) -> RpcError {
        RpcError::Malformed {
            url: "(pagination)".into(),
            method: "query view_access_key_list".into(),
            reason,
        }
    }
}
