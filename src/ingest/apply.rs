//! Consecutive blocks, one transaction: under the cursor lock, the watched
//! accounts' state before the first block is read once, every block is
//! planned in memory ([`crate::ingest::plan`]), all their rows are written
//! with one statement per table, the rules judge each block in order, and
//! the cursor advances to the last one; all committed together.
//!
//! Natural unique keys make a replayed block a no-op, and a block whose
//! parent is not the cursor (or the block before it in the run) is never
//! applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::PgPool;

use crate::domain::AccountId;
use crate::ingest::IngestError;
use crate::ingest::alerts::{AlertContext, AlertsWritten, block_rules, window_rules};
use crate::ingest::fetch::BlockData;
use crate::ingest::plan::{Current, Writes, accounts_written, plan_block};
use crate::ingest::recent::{Recent, Written};
use crate::store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Committed, with the number of key and balance rows written.
    Block {
        key_rows: usize,
        balance_rows: usize,
    },
    /// The cursor is already at or past this block: nothing to do.
    AlreadyApplied,
    /// Accounts were added to the watch list since the block was fetched
    /// and the block touched them: fetch again with the current watch list.
    Refetch(BTreeSet<AccountId>),
}

/// What [`apply_blocks`] did with a run of blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunApplied {
    /// Blocks committed, in order (a prefix of the run, after any skipped).
    pub committed: Vec<BlockCount>,
    /// Leading blocks the cursor had already passed.
    pub skipped: usize,
    /// The block at this index of the run (and those after it) was not
    /// applied: the watch list grew since it was fetched and it touched
    /// these newly watched accounts.
    pub refetch: Option<(usize, BTreeSet<AccountId>)>,
    /// The rule of each alert the committed blocks wrote.
    pub alerts: AlertsWritten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCount {
    pub height: u64,
    pub key_rows: usize,
    pub balance_rows: usize,
}

/// What the follower keeps in memory from one transaction to the next.
/// Each part is checked against the database inside every transaction
/// before it is used (the watch list's version, the cursor's hash), so an
/// edit by another process, a restart or a failed commit cannot make it lie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// What the last committed blocks wrote, for the window rules.
    pub recent: Recent,
    /// The tracked accounts, with the watch list's version they were read at.
    watched: Option<(i64, Arc<BTreeSet<AccountId>>)>,
}

impl Memory {
    pub fn new(max_settle: u32) -> Memory {
        Memory {
            recent: Recent::new(max_settle),
            watched: None,
        }
    }

    /// Everything it holds, read from one REPEATABLE READ snapshot: the
    /// watch list with its version, and the writes of the last stored
    /// blocks up to the cursor. The follower starts from this, so after any
    /// error (a commit whose outcome is unknown included) nothing from
    /// before the error survives.
    pub async fn rebuild(pool: &PgPool, max_settle: u32) -> Result<Memory, IngestError> {
        let mut tx = store::snapshot(pool).await?;
        let mut memory = Memory::new(max_settle);
        if let Some(version) = store::watch::version(&mut tx).await? {
            let set = store::watch::tracked(&mut tx).await?;
            memory.watched = Some((version, Arc::new(set)));
        }
        if let Some(cursor) = store::cursor(&mut *tx).await? {
            let cursor = store::convert::height_to_i64("cursor height", cursor.height)?;
            let keep = memory.recent.capacity() as i64;
            let mut blocks = store::window::blocks_up_to(&mut tx, cursor, keep).await?;
            blocks.reverse();
            for b in blocks {
                let height = b.block_height;
                let mut keys = store::window::keys_written_at(&mut tx, height).await?;
                keys.sort_by(|a, b| {
                    (&a.account_id, &a.public_key).cmp(&(&b.account_id, &b.public_key))
                });
                let mut accounts = store::window::accounts_written_at(&mut tx, height).await?;
                accounts.sort();
                memory.recent.push(Written {
                    height: store::convert::i64_to_height("block height", height)?,
                    hash: b.block_hash,
                    timestamp_ns: store::convert::i64_to_height(
                        "block time",
                        b.block_timestamp_ns,
                    )?,
                    keys,
                    accounts,
                });
            }
        }
        tx.rollback().await?;
        Ok(memory)
    }

    /// The tracked accounts, read again only when the watch list's version
    /// moved. The version is read first: a change committed between the
    /// two reads leaves a newer set under an older version, which the next
    /// call reads again.
    pub async fn watched(
        &mut self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Arc<BTreeSet<AccountId>>, IngestError> {
        let version = store::watch::version(conn).await?;
        if let (Some((held, set)), Some(version)) = (&self.watched, version)
            && *held == version
        {
            return Ok(set.clone());
        }
        let set = Arc::new(store::watch::tracked(conn).await?);
        self.watched = version.map(|v| (v, set.clone()));
        Ok(set)
    }
}

/// Applies one block in one transaction (see [`apply_blocks`]).
pub async fn apply_block(
    pool: &PgPool,
    data: &BlockData,
    alerts: Option<&AlertContext>,
    epoch: Option<i64>,
) -> Result<Applied, IngestError> {
    let mut memory = Memory::default();
    let run = apply_blocks(pool, std::slice::from_ref(data), alerts, epoch, &mut memory).await?;
    Ok(match (run.committed.first(), run.refetch) {
        (Some(c), _) => Applied::Block {
            key_rows: c.key_rows,
            balance_rows: c.balance_rows,
        },
        (None, Some((_, missed))) => Applied::Refetch(missed),
        (None, None) => Applied::AlreadyApplied,
    })
}

/// Applies consecutive blocks (each the parent of the next) in one
/// transaction. With `epoch`, the transaction first checks that this
/// process still holds the leader lease under that epoch (fencing): a
/// deposed leader writes nothing. `memory` is moved past the run once the
/// run commits.
pub async fn apply_blocks(
    pool: &PgPool,
    blocks: &[BlockData],
    alerts: Option<&AlertContext>,
    epoch: Option<i64>,
    memory: &mut Memory,
) -> Result<RunApplied, IngestError> {
    let mut out = RunApplied::default();
    let mut tx = pool.begin().await?;
    if let Some(epoch) = epoch
        && !store::lease::holds(&mut tx, epoch).await?
    {
        return Err(IngestError::Deposed { epoch });
    }
    let cursor = store::lock_cursor(&mut tx)
        .await?
        .ok_or_else(|| IngestError::Invalid("no cursor: ingestion was not started".into()))?;
    // The blocks that continue the cursor, in order.
    let mut parent = cursor.hash.as_str();
    let mut run: &[BlockData] = &[];
    for (i, data) in blocks.iter().enumerate() {
        let h = &data.header;
        if h.prev_hash.as_str() == parent {
            run = &blocks[out.skipped..=i];
            parent = h.hash.as_str();
        } else if run.is_empty() && cursor.height >= h.height {
            out.skipped += 1;
        } else {
            return Err(IngestError::Moved(format!(
                "block {} ({}) does not follow block {parent}; another process may be ingesting into this database",
                h.height, h.hash
            )));
        }
    }
    if run.is_empty() {
        return Ok(out);
    }
    let watched = memory.watched(&mut tx).await?;
    let watched: &BTreeSet<AccountId> = &watched;
    if let Some((i, missed)) = run.iter().enumerate().find_map(|(i, data)| {
        let missed: BTreeSet<AccountId> = data
            .touched_in(watched)
            .filter(|a| !data.fetched_for.contains(*a))
            .cloned()
            .collect();
        (!missed.is_empty()).then_some((i, missed))
    }) {
        out.refetch = Some((out.skipped + i, missed));
        run = &run[..i];
        if run.is_empty() {
            return Ok(out);
        }
    }
    // The state before the run, read once for every account it writes.
    let needed: BTreeSet<&AccountId> = run
        .iter()
        .flat_map(|d| accounts_written(d, watched))
        .collect();
    let needed: Vec<AccountId> = needed.into_iter().cloned().collect();
    let mut current = Current {
        keys: store::keys::load_states(&mut tx, &needed).await?,
        accounts: store::history::load_accounts(&mut tx, &needed).await?,
    };
    for a in &needed {
        current.accounts.entry(a.clone()).or_insert(None);
    }
    // Memory changes only once the run commits.
    let mut after = memory.recent.clone();
    after.anchor(&cursor.hash);
    let mut writes = Writes::default();
    let mut facts = Vec::with_capacity(run.len());
    for data in run {
        let plan = plan_block(data, watched, &mut current);
        let written = Written::of(&plan);
        out.committed.push(BlockCount {
            height: data.header.height,
            key_rows: plan.key_rows.len(),
            balance_rows: plan.balance_rows.len(),
        });
        facts.push((written, writes.add(plan)));
    }
    write(&mut tx, &writes).await?;
    for (data, (written, facts)) in run.iter().zip(facts) {
        after.push(written);
        if let Some(ctx) = alerts {
            out.alerts
                .extend(block_rules(&mut tx, ctx, &data.header, &facts).await?);
            out.alerts
                .extend(window_rules(&mut tx, ctx, &data.header, Some(&after)).await?);
        }
    }
    if let Some(last) = run.last() {
        store::advance_cursor(&mut tx, &last.header).await?;
    }
    tx.commit().await?;
    memory.recent = after;
    Ok(out)
}

/// Every row of the run: one statement per table (none for an empty one).
async fn write(tx: &mut sqlx::PgConnection, w: &Writes<'_>) -> Result<(), IngestError> {
    store::insert_blocks(tx, &w.headers).await?;
    store::keys::insert_key_rows(tx, &w.key_rows).await?;
    store::history::insert_balance_rows(tx, &w.balance_rows).await?;
    store::keys::insert_unknown_changes(tx, &w.unknown).await?;
    let cleared: Vec<_> = w.keys_cleared.iter().copied().collect();
    store::keys::delete_key_states(tx, &cleared).await?;
    store::keys::upsert_key_states(tx, &w.key_states()).await?;
    store::history::upsert_account_states(tx, &w.account_states()).await?;
    Ok(())
}
