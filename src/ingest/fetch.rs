//! One block's changes for the watched accounts it touched: the cheap
//! `block_effects` pre-filter, then `changes` by block hash only for those
//! accounts, batched, so the calls per block do not grow with the watch list.

use std::collections::BTreeSet;

use crate::domain::{AccountId, BlockHeader, StateChange, Touched, TouchedKind};
use crate::ingest::IngestError;
use crate::rpc::{BlockRef, ChangesKind, RpcClient};

#[derive(Debug, Clone)]
pub struct BlockData {
    pub header: BlockHeader,
    /// What the block touched (all accounts, watched or not).
    pub touched: Vec<Touched>,
    /// The accounts it touched that were watched when it was fetched: the
    /// accounts its changes were asked for.
    pub fetched_for: BTreeSet<AccountId>,
    /// Access-key writes (incl. gas-key nonces), in the node's order.
    pub key_changes: Vec<StateChange>,
    /// Account writes, in the node's order.
    pub account_changes: Vec<StateChange>,
}

impl BlockData {
    /// Watched accounts of `watched` the block touched.
    pub fn touched_in<'a>(
        &'a self,
        watched: &'a BTreeSet<AccountId>,
    ) -> impl Iterator<Item = &'a AccountId> + 'a {
        self.touched
            .iter()
            .map(|t| &t.account_id)
            .filter(|a| watched.contains(*a))
    }
}

async fn changes_for(
    rpc: &RpcClient,
    block: &BlockHeader,
    kind: ChangesKind,
    accounts: &BTreeSet<AccountId>,
    per_request: usize,
) -> Result<Vec<StateChange>, IngestError> {
    let accounts: Vec<AccountId> = accounts.iter().cloned().collect();
    let at = BlockRef::Hash(block.hash.clone());
    // Independent requests: in parallel, answers kept in chunk order.
    let answers = futures_util::future::try_join_all(
        accounts
            .chunks(per_request.max(1))
            .map(|chunk| rpc.changes(&at, kind, chunk)),
    )
    .await?;
    let mut out = Vec::new();
    for resp in answers {
        if resp.block_hash != block.hash {
            return Err(IngestError::Node(format!(
                "asked for the changes of block {}, got those of {}",
                block.hash, resp.block_hash
            )));
        }
        out.extend(resp.changes);
    }
    Ok(out)
}

pub async fn fetch_block(
    rpc: &RpcClient,
    header: BlockHeader,
    watched: &BTreeSet<AccountId>,
    per_request: usize,
) -> Result<BlockData, IngestError> {
    let effects = rpc
        .block_effects(&BlockRef::Hash(header.hash.clone()))
        .await?;
    if effects.block_hash != header.hash {
        return Err(IngestError::Node(format!(
            "asked for the effects of block {}, got those of {}",
            header.hash, effects.block_hash
        )));
    }
    let mut key_accounts = BTreeSet::new();
    let mut balance_accounts = BTreeSet::new();
    for t in effects
        .touched
        .iter()
        .filter(|t| watched.contains(&t.account_id))
    {
        match t.kind {
            TouchedKind::AccessKey => {
                key_accounts.insert(t.account_id.clone());
            }
            TouchedKind::Account | TouchedKind::ContractCode => {
                balance_accounts.insert(t.account_id.clone());
            }
            TouchedKind::Data => {}
            // A kind this version does not know: ask for everything.
            TouchedKind::Unknown(_) => {
                key_accounts.insert(t.account_id.clone());
                balance_accounts.insert(t.account_id.clone());
            }
        }
    }
    // The key and the account changes are independent: asked together.
    let fetch = |kind, accounts: &BTreeSet<AccountId>| {
        let accounts = accounts.clone();
        let header = &header;
        async move {
            if accounts.is_empty() {
                Ok(vec![])
            } else {
                changes_for(rpc, header, kind, &accounts, per_request).await
            }
        }
    };
    let (key_changes, account_changes) = tokio::try_join!(
        fetch(ChangesKind::AllAccessKeys, &key_accounts),
        fetch(ChangesKind::Accounts, &balance_accounts)
    )?;
    let fetched_for = effects
        .touched
        .iter()
        .map(|t| &t.account_id)
        .filter(|a| watched.contains(*a))
        .cloned()
        .collect();
    Ok(BlockData {
        header,
        touched: effects.touched,
        fetched_for,
        key_changes,
        account_changes,
    })
}
