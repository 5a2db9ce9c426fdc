//! Which blocks follow the cursor. Heights are fetched concurrently; a
//! height answering UNKNOWN_BLOCK is only a tentative skip (a lagging node
//! says the same), so continuity is proven by `prev_hash` alone: where a
//! block does not name the previous one as its parent, the chain is walked
//! back by hash to the previous block, and if that fails on every url,
//! ingestion stops.

use futures_util::{StreamExt, TryStreamExt};

use crate::domain::{BlockHeader, CryptoHash};
use crate::ingest::IngestError;
use crate::rpc::{BlockRef, RpcClient};
use crate::store::Cursor;

async fn header_at(rpc: &RpcClient, height: u64) -> Result<Option<BlockHeader>, IngestError> {
    match rpc.block(&BlockRef::Height(height)).await {
        Ok(b) if b.header.height == height => Ok(Some(b.header)),
        Ok(b) => Err(IngestError::Node(format!(
            "asked for block {height}, the node answered block {}",
            b.header.height
        ))),
        Err(e) if e.is_unknown_block() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Walks back from `block` by `prev_hash` until its parent is `expected`,
/// never below `last` (the previous block's height). The blocks walked are
/// returned oldest first; `None` when the chain does not connect.
async fn connect(
    rpc: &RpcClient,
    block: &BlockHeader,
    expected: &CryptoHash,
    last: u64,
) -> Result<Option<Vec<BlockHeader>>, IngestError> {
    let mut between = Vec::new();
    let mut cur = block.clone();
    while cur.prev_hash != *expected {
        let parent = match rpc.block(&BlockRef::Hash(cur.prev_hash.clone())).await {
            Ok(b) => b.header,
            Err(e) if e.is_unknown_block() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if parent.hash != cur.prev_hash || parent.height <= last || parent.height >= cur.height {
            return Ok(None);
        }
        between.push(parent.clone());
        cur = parent;
    }
    between.reverse();
    Ok(Some(between))
}

/// The blocks after `cursor`, up to `max` heights and at most `final_head`,
/// in chain order, each proven to be the child of the one before.
pub async fn next_headers(
    rpc: &RpcClient,
    cursor: &Cursor,
    final_head: &BlockHeader,
    max: u64,
    concurrency: usize,
) -> Result<Vec<BlockHeader>, IngestError> {
    if final_head.height <= cursor.height {
        if final_head.height == cursor.height && final_head.hash.as_str() != cursor.hash {
            return Err(IngestError::Fork {
                height: cursor.height,
                hash: final_head.hash.to_string(),
                cursor: cursor.hash.clone(),
            });
        }
        return Ok(vec![]);
    }
    let top = final_head.height.min(cursor.height + max.max(1));
    let fetched: Vec<Option<BlockHeader>> = futures_util::stream::iter(cursor.height + 1..=top)
        .map(|h| async move {
            if h == final_head.height {
                Ok(Some(final_head.clone()))
            } else {
                header_at(rpc, h).await
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    let mut expected = CryptoHash::parse(&cursor.hash)
        .map_err(|e| IngestError::Invalid(format!("stored cursor hash: {e}")))?;
    let mut last = cursor.height;
    let mut out = Vec::new();
    for block in fetched.into_iter().flatten() {
        let linked = if block.prev_hash == expected {
            vec![block]
        } else {
            match connect(rpc, &block, &expected, last).await? {
                Some(mut between) => {
                    tracing::info!(
                        height = block.height,
                        filled = between.len(),
                        "a height reported unknown exists: followed prev_hash"
                    );
                    between.push(block);
                    between
                }
                None => match cross_check(rpc, &block, &expected, last).await {
                    Ok(b) => vec![b],
                    // Apply what is proven first; the next call starts at
                    // the bad block and fails with nothing before it.
                    Err(_) if !out.is_empty() => return Ok(out),
                    Err(e) => return Err(e),
                },
            }
        };
        for b in linked {
            expected = b.hash.clone();
            last = b.height;
            out.push(b);
        }
    }
    Ok(out)
}

/// Asks every url for the block at `block`'s height; the first whose parent
/// is `expected` wins. Otherwise the chain really does not continue ours.
async fn cross_check(
    rpc: &RpcClient,
    block: &BlockHeader,
    expected: &CryptoHash,
    last: u64,
) -> Result<BlockHeader, IngestError> {
    for idx in 0..rpc.url_count() {
        match rpc.block_on(idx, &BlockRef::Height(block.height)).await {
            Ok(b) if b.header.prev_hash == *expected && b.header.height == block.height => {
                tracing::warn!(
                    height = block.height,
                    url_index = idx,
                    "prev_hash mismatch resolved by another rpc url"
                );
                return Ok(b.header);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(height = block.height, url_index = idx, error = %e, "cross-checking a block on another url failed")
            }
        }
    }
    Err(IngestError::Continuity {
        height: block.height,
        hash: block.hash.to_string(),
        expected: expected.to_string(),
        got: block.prev_hash.to_string(),
        last,
    })
}
