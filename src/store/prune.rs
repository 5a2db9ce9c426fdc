//! Pruning `blocks`. Every followed block gets a row, but history needs
//! only the blocks its rows sit in (key, balance and unknown changes
//! reference them) and the `keep_after` heights after each such block:
//! the window rules count stored blocks back from the deciding block to
//! the settled one, and `rules test` replays the stored blocks, so both
//! stay exact as long as every block within the longest settle delay after
//! a write is kept. A block without history is also kept while newer than
//! the retention period (relative to the cursor's block time), and the
//! cursor's block always. The window rules' "last block at or before a
//! time" then finds an earlier kept block when the one it would have found
//! is gone; no history row lies between the two, so the value read there
//! is the same.

use sqlx::PgPool;

use crate::store::StoreError;

/// The highest height whose block time is at or before `$1` (ns), or -1.
pub const PRUNABLE_BELOW: &str = "select coalesce((select block_height from blocks
     where block_timestamp_ns <= $1 order by block_timestamp_ns desc limit 1), -1)";

/// Deletes the blocks in heights [`$1`, `$2`) that no history row sits in
/// or up to `$3` heights before, other than the cursor's. Each test is one
/// probe of a height index.
pub const PRUNE_BLOCKS: &str = "delete from blocks b
     where b.block_height >= $1 and b.block_height < $2
       and not exists (select 1 from key_events e
                       where e.block_height between b.block_height - $3 and b.block_height)
       and not exists (select 1 from balance_events e
                       where e.block_height between b.block_height - $3 and b.block_height)
       and not exists (select 1 from unknown_changes u
                       where u.block_height between b.block_height - $3 and b.block_height)
       and not exists (select 1 from ingest_cursor c where c.block_hash = b.block_hash)";

/// Where the last pass stopped, or the lowest stored block if higher;
/// locks the progress row.
pub const PRUNE_FROM: &str =
    "select greatest(p.pruned_below, coalesce((select min(block_height) from blocks), 0))
     from block_pruning p where p.id = 1 for update";

pub const PRUNED_BELOW: &str = "update block_pruning set pruned_below = $1 where id = 1";

/// What one pruning pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: u64,
    /// Every height below this has been considered.
    pub below: i64,
}

/// Deletes the blocks history does not need whose time is before
/// `before_ns`, `batch` heights per transaction, keeping `keep_after`
/// heights after every block with history. Each transaction holds the
/// cursor lock, as every writer of history does, so no history row can be
/// written into a block while it is being deleted; a batch is small
/// enough (a few milliseconds) that the follower barely waits.
pub async fn prune_blocks(
    pool: &PgPool,
    before_ns: i64,
    keep_after: i64,
    batch: i64,
) -> Result<Pruned, StoreError> {
    let end: i64 = sqlx::query_scalar(PRUNABLE_BELOW)
        .bind(before_ns)
        .fetch_one(pool)
        .await?;
    let mut out = Pruned::default();
    loop {
        let mut tx = pool.begin().await?;
        crate::store::lock_cursor(&mut tx).await?;
        let from: i64 = sqlx::query_scalar(PRUNE_FROM).fetch_one(&mut *tx).await?;
        out.below = from;
        let to = (from + batch.max(1)).min(end);
        if to <= from {
            tx.commit().await?;
            return Ok(out);
        }
        out.deleted += sqlx::query(PRUNE_BLOCKS)
            .bind(from)
            .bind(to)
            .bind(keep_after)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(PRUNED_BELOW).bind(to).execute(&mut *tx).await?;
        tx.commit().await?;
        out.below = to;
    }
}
