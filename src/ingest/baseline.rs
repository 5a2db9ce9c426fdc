//! Starting to track accounts: the baseline (keys and balance) is read at
//! exactly the cursor's block and written in a transaction that holds the
//! cursor lock, so no change can fall between baseline and follow. With no
//! cursor yet, the first cursor is created here, at the parent of the first
//! block to process, with the baselines of every waiting account.

use std::collections::BTreeMap;

use sqlx::PgPool;

use crate::config::StartAt;
use crate::domain::{AccountId, BlockHeader, CryptoHash};
use crate::ingest::IngestError;
use crate::rpc::{BlockRef, RpcClient};
use crate::store::watch::{AddOutcome, Baseline, NewWatch};
use crate::store::{self, Cursor};

/// Attempts to catch the cursor still before handing the baselines to the
/// running follower: it commits a block about every 0.6 s, and reading a
/// baseline takes a few requests.
const CURSOR_RACE_ATTEMPTS: usize = 2;

/// How long `watch add` waits for the running follower to read the
/// baselines it was handed.
pub const FOLLOWER_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How often `watch add` re-reads its accounts without being woken.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads an account's keys (every page) and balance at `block`; an account
/// that does not exist there has an empty baseline.
pub async fn read_baseline(
    rpc: &RpcClient,
    block: &BlockRef,
    account: &AccountId,
) -> Result<Baseline, IngestError> {
    let Some((state, _)) = rpc.view_account_opt(block, account).await? else {
        return Ok(Baseline {
            account: None,
            keys: vec![],
        });
    };
    let (entries, _) = rpc.view_access_key_list(block, account).await?;
    Ok(Baseline {
        account: Some(state),
        keys: entries
            .into_iter()
            .map(|e| (e.public_key, e.access_key.into()))
            .collect(),
    })
}

fn cursor_ref(c: &Cursor) -> Result<BlockRef, IngestError> {
    CryptoHash::parse(&c.hash)
        .map(BlockRef::Hash)
        .map_err(|e| IngestError::Invalid(format!("stored cursor hash: {e}")))
}

/// Why accounts could not be added.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("account(s) {} do not exist on {chain} at {at}; pass --allow-missing to watch them anyway", .missing.join(", "))]
    Missing {
        missing: Vec<String>,
        chain: String,
        at: String,
    },
    #[error("reading the state of {account} at {at}: {source}{}", if source.is_garbage_collected() || source.is_unknown_block() { "; the rpc node no longer serves that block: configure an archival rpc url" } else { "" })]
    Rpc {
        account: AccountId,
        at: String,
        #[source]
        source: crate::rpc::RpcError,
    },
    #[error(
        "the accounts are watched, but the running follower did not read their baselines within {}s; they will be read when `keywatch run` gets to them (see `keywatch watch list`)",
        FOLLOWER_WAIT.as_secs()
    )]
    Busy,
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// One account `start_tracking` handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub account: AccountId,
    /// Keys found at the baseline.
    pub keys: usize,
    pub exists: bool,
    pub outcome: AddOutcome,
}

/// Adds (or updates) watched accounts, each with a baseline at the cursor's
/// block; with no cursor, only checks they exist and leaves the baseline to
/// the first cursor. Nothing is written if any account is missing and
/// `allow_missing` is false.
pub async fn start_tracking(
    pool: &PgPool,
    rpc: &RpcClient,
    chain: &str,
    watches: &[NewWatch],
    allow_missing: bool,
) -> Result<Vec<Tracked>, TrackError> {
    start_tracking_from(pool, rpc, chain, watches, allow_missing, StartAt::Latest).await
}

/// [`start_tracking`] where, with no cursor yet, the first cursor will be
/// at `first`: the accounts must exist at the block their baselines will be
/// read at (the parent of the first block), not at the head, so the
/// history of an account deleted since can be followed. Nothing is written
/// before that is known.
pub async fn start_tracking_from(
    pool: &PgPool,
    rpc: &RpcClient,
    chain: &str,
    watches: &[NewWatch],
    allow_missing: bool,
    first: StartAt,
) -> Result<Vec<Tracked>, TrackError> {
    let mut last_reads = None;
    for _ in 0..CURSOR_RACE_ATTEMPTS {
        let cursor = store::cursor(pool).await.map_err(IngestError::from)?;
        let (block, at) = match (&cursor, first) {
            (Some(c), _) => (cursor_ref(c)?, format!("block {}", c.height)),
            (None, StartAt::Latest) => (BlockRef::Final, "the final block".to_owned()),
            (None, StartAt::Height(h)) => {
                let (_, parent) = first_block(rpc, first).await?;
                (
                    BlockRef::Hash(parent.hash.clone()),
                    format!("block {} (following starts at {h})", parent.height),
                )
            }
        };
        let mut reads = Vec::new();
        for w in watches {
            let read = match &cursor {
                Some(_) => read_baseline(rpc, &block, &w.account_id).await,
                None => rpc
                    .view_account_opt(&block, &w.account_id)
                    .await
                    .map(|s| Baseline {
                        account: s.map(|(s, _)| s),
                        keys: vec![],
                    })
                    .map_err(IngestError::from),
            };
            reads.push(read.map_err(|e| match e {
                IngestError::Rpc(source) => TrackError::Rpc {
                    account: w.account_id.clone(),
                    at: at.clone(),
                    source,
                },
                other => TrackError::Ingest(other),
            })?);
        }
        refuse_missing(pool, watches, &reads, allow_missing, chain, &at).await?;
        let mut tx = pool.begin().await.map_err(IngestError::from)?;
        if store::lock_cursor(&mut tx)
            .await
            .map_err(IngestError::from)?
            != cursor
        {
            tracing::info!("the ingest cursor moved while reading baselines");
            last_reads = Some(reads);
            continue;
        }
        let mut out = Vec::new();
        for (w, baseline) in watches.iter().zip(&reads) {
            let watch = NewWatch {
                allow_missing: baseline.account.is_none(),
                ..w.clone()
            };
            let outcome = store::watch::add(
                &mut tx,
                &watch,
                cursor.as_ref(),
                cursor.as_ref().map(|_| baseline),
            )
            .await
            .map_err(IngestError::from)?;
            out.push(Tracked {
                account: w.account_id.clone(),
                keys: baseline.keys.len(),
                exists: baseline.account.is_some(),
                outcome,
            });
        }
        tx.commit().await.map_err(IngestError::from)?;
        return Ok(out);
    }
    // A follower is running: it reads the baselines at its cursor, between
    // two blocks, where nothing can race it.
    let reads = last_reads.expect("at least one attempt read the accounts");
    hand_to_follower(pool, watches, &reads).await
}

/// `watch add` beside a running leader: checks the accounts exist at the
/// cursor (where their baselines will be read, give or take the blocks
/// the follower commits meanwhile), then hands them to the follower, which
/// reads their baselines at its cursor between two blocks
/// ([`ensure_baselines`]).
pub async fn ask_follower(
    pool: &PgPool,
    rpc: &RpcClient,
    chain: &str,
    watches: &[NewWatch],
    allow_missing: bool,
) -> Result<Vec<Tracked>, TrackError> {
    let cursor = store::cursor(pool).await.map_err(IngestError::from)?;
    let (block, at) = match &cursor {
        Some(c) => (cursor_ref(c)?, format!("block {}", c.height)),
        None => (BlockRef::Final, "the final block".to_owned()),
    };
    let mut reads = Vec::new();
    for w in watches {
        let state = rpc
            .view_account_opt(&block, &w.account_id)
            .await
            .map_err(|source| TrackError::Rpc {
                account: w.account_id.clone(),
                at: at.clone(),
                source,
            })?;
        reads.push(Baseline {
            account: state.map(|(s, _)| s),
            keys: vec![],
        });
    }
    refuse_missing(pool, watches, &reads, allow_missing, chain, &at).await?;
    hand_to_follower(pool, watches, &reads).await
}

/// Refuses accounts the reads found missing, unless `allow_missing`.
/// Accounts already watched keep their history even once deleted.
async fn refuse_missing(
    pool: &PgPool,
    watches: &[NewWatch],
    reads: &[Baseline],
    allow_missing: bool,
    chain: &str,
    at: &str,
) -> Result<(), TrackError> {
    if allow_missing {
        return Ok(());
    }
    let mut conn = pool.acquire().await.map_err(IngestError::from)?;
    let mut missing = Vec::new();
    for (w, b) in watches.iter().zip(reads) {
        if b.account.is_none()
            && !store::watch::is_watched(&mut conn, &w.account_id)
                .await
                .map_err(IngestError::from)?
        {
            missing.push(w.account_id.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TrackError::Missing {
            missing,
            chain: chain.to_owned(),
            at: at.to_owned(),
        })
    }
}

/// Adds the accounts without a baseline and waits for the running follower
/// to read it ([`ensure_baselines`]): woken by its notification, listened
/// for before the accounts are added.
async fn hand_to_follower(
    pool: &PgPool,
    watches: &[NewWatch],
    reads: &[Baseline],
) -> Result<Vec<Tracked>, TrackError> {
    let mut listener = store::listen(pool, &[store::requests::BASELINES])
        .await
        .map_err(IngestError::from)?;
    let mut tx = pool.begin().await.map_err(IngestError::from)?;
    let mut outcomes = Vec::new();
    for (w, read) in watches.iter().zip(reads) {
        let watch = NewWatch {
            allow_missing: read.account.is_none(),
            ..w.clone()
        };
        outcomes.push(
            store::watch::add(&mut tx, &watch, None, None)
                .await
                .map_err(IngestError::from)?,
        );
    }
    tx.commit().await.map_err(IngestError::from)?;
    let deadline = tokio::time::Instant::now() + FOLLOWER_WAIT;
    let mut out = Vec::new();
    for (w, outcome) in watches.iter().zip(outcomes) {
        loop {
            if let Some(tracked) = handed_over(pool, &w.account_id, &outcome).await? {
                out.push(tracked);
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(TrackError::Busy);
            }
            // A wake-up only: the rows say whether our accounts are done.
            store::notified_within(&mut listener, RECHECK_EVERY.min(deadline - now)).await;
        }
    }
    Ok(out)
}

/// The account as the follower left it, once its baseline is written.
async fn handed_over(
    pool: &PgPool,
    account: &AccountId,
    added: &AddOutcome,
) -> Result<Option<Tracked>, TrackError> {
    let mut conn = pool.acquire().await.map_err(IngestError::from)?;
    let entry = store::watch::get(&mut conn, account)
        .await
        .map_err(IngestError::from)?;
    let outcome = match (added, entry.and_then(|e| e.baseline_height)) {
        (AddOutcome::Updated, _) => added.clone(),
        (_, Some(h)) => AddOutcome::Tracked { baseline_height: h },
        (_, None) => return Ok(None),
    };
    let keys = store::keys::load_state(&mut conn, account)
        .await
        .map_err(IngestError::from)?
        .len();
    let exists = matches!(
        store::history::load_account(&mut conn, account)
            .await
            .map_err(IngestError::from)?,
        Some(Some(_))
    );
    Ok(Some(Tracked {
        account: account.clone(),
        keys,
        exists,
        outcome,
    }))
}

/// Reads baselines for accounts still waiting for one (added before the
/// first cursor, or while it was being created) at the current cursor.
pub async fn ensure_baselines(pool: &PgPool, rpc: &RpcClient) -> Result<usize, IngestError> {
    for _ in 0..CURSOR_RACE_ATTEMPTS {
        let mut conn = pool.acquire().await?;
        let pending = store::watch::pending(&mut conn).await?;
        drop(conn);
        let Some(cursor) = store::cursor(pool).await? else {
            return Ok(0);
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let block = cursor_ref(&cursor)?;
        let mut reads = Vec::new();
        for account in &pending {
            reads.push(read_baseline(rpc, &block, account).await?);
        }
        let mut tx = pool.begin().await?;
        if store::lock_cursor(&mut tx).await? != Some(cursor.clone()) {
            continue;
        }
        for (account, baseline) in pending.iter().zip(&reads) {
            store::watch::write_baseline(&mut tx, account, &cursor, baseline, "baseline").await?;
            tracing::info!(%account, height = cursor.height, keys = baseline.keys.len(), "baseline read");
        }
        store::requests::baselines_written(&mut tx).await?;
        tx.commit().await?;
        return Ok(pending.len());
    }
    Err(IngestError::Moved(
        "the cursor kept moving while reading baselines; another process may be ingesting into this database".into(),
    ))
}

/// The first existing block at or after `start`, and its parent.
async fn first_block(
    rpc: &RpcClient,
    start: StartAt,
) -> Result<(BlockHeader, BlockHeader), IngestError> {
    let status = rpc.status().await?;
    let final_head = rpc.block(&BlockRef::Final).await?.header;
    let first = match start {
        StartAt::Latest => final_head,
        StartAt::Height(h) => {
            let earliest = status.sync_info.earliest_block_height.unwrap_or(0);
            if h < earliest {
                return Err(IngestError::HistoryGone { next: h, earliest });
            }
            let mut found = None;
            for height in h..=final_head.height.max(h) {
                match rpc.block(&BlockRef::Height(height)).await {
                    Ok(b) => {
                        found = Some(b.header);
                        break;
                    }
                    Err(e) if e.is_unknown_block() && height < final_head.height => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            found.ok_or_else(|| {
                IngestError::Invalid(format!(
                    "no block at or after {h} is final yet (final head {})",
                    final_head.height
                ))
            })?
        }
    };
    let parent = rpc
        .block(&BlockRef::Hash(first.prev_hash.clone()))
        .await?
        .header;
    if parent.hash != first.prev_hash {
        return Err(IngestError::Invalid(format!(
            "the node answered block {} when asked for {}",
            parent.hash, first.prev_hash
        )));
    }
    Ok((first, parent))
}

/// Creates the first cursor at the parent of the first block to process,
/// with the baselines of every waiting account, in one transaction. Returns
/// the cursor (the existing one when there already is one: a cursor wins).
pub async fn init_cursor(
    pool: &PgPool,
    rpc: &RpcClient,
    start: StartAt,
) -> Result<Cursor, IngestError> {
    if let Some(c) = store::cursor(pool).await? {
        return Ok(c);
    }
    let (first, parent) = first_block(rpc, start).await?;
    let at = BlockRef::Hash(parent.hash.clone());
    let mut conn = pool.acquire().await?;
    let pending = store::watch::pending(&mut conn).await?;
    drop(conn);
    let mut reads = BTreeMap::new();
    for account in &pending {
        reads.insert(account.clone(), read_baseline(rpc, &at, account).await?);
    }
    let mut tx = pool.begin().await?;
    if let Some(c) = store::lock_cursor(&mut tx).await? {
        return Ok(c);
    }
    store::insert_block(&mut tx, &parent).await?;
    store::advance_cursor(&mut tx, &parent).await?;
    if matches!(start, StartAt::Height(_)) {
        store::set_from_history(&mut *tx, true).await?;
    }
    let cursor = Cursor {
        height: parent.height,
        hash: parent.hash.to_string(),
        timestamp_ns: parent.timestamp_ns,
    };
    // Accounts added while we read are picked up by ensure_baselines.
    let still_pending = store::watch::pending(&mut tx).await?;
    for account in still_pending.iter().filter(|a| reads.contains_key(*a)) {
        store::watch::write_baseline(&mut tx, account, &cursor, &reads[account], "baseline")
            .await?;
    }
    store::requests::baselines_written(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(
        first = first.height,
        cursor = parent.height,
        accounts = reads.len(),
        "ingestion starts"
    );
    Ok(cursor)
}
