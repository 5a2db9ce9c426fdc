//! The loop behind `run` and `backfill`: read the final head, take the
//! blocks after the cursor in chain order (fetched ahead and concurrently,
//! applied strictly in order, each run of waiting blocks in one
//! transaction), pick up watch-list changes, and stop cleanly between
//! transactions.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::domain::AccountId;
use crate::health::Health;
use crate::ingest::IngestError;
use crate::ingest::alerts::AlertContext;
use crate::ingest::apply::{Memory, apply_blocks};
use crate::ingest::baseline::{ensure_baselines, read_baseline};
use crate::ingest::fetch::{BlockData, fetch_block};
use crate::ingest::headers::next_headers;
use crate::ingest::pace::Pacer;
use crate::ingest::reconcile::apply_fixes;
use crate::rpc::{BlockRef, RpcClient};
use crate::store::{self, Cursor};

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Stop once the cursor's height is at least this.
    pub until_height: Option<u64>,
    /// Stop at the final head seen when following starts.
    pub exit_when_caught_up: bool,
    /// Skip history the rpc can no longer serve (recorded as a gap).
    pub accept_gap: bool,
    pub poll_interval: Duration,
    /// Blocks fetched at once.
    pub concurrency: usize,
    /// The most blocks one transaction applies, when that many are fetched
    /// and waiting (catching up); at the head each block commits alone.
    pub blocks_per_transaction: usize,
    pub accounts_per_request: usize,
    /// Show progress (a bar on a terminal, log lines otherwise).
    pub progress: bool,
    /// Told of every commit and every time the head is reached.
    pub health: Option<Arc<Health>>,
    /// The leader lease's epoch every block's transaction checks.
    pub epoch: Option<i64>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            until_height: None,
            exit_when_caught_up: false,
            accept_gap: false,
            poll_interval: Duration::from_millis(500),
            concurrency: 8,
            blocks_per_transaction: 32,
            accounts_per_request: 100,
            progress: false,
            health: None,
            epoch: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowSummary {
    pub blocks: u64,
    pub key_rows: u64,
    pub balance_rows: u64,
    pub last_height: u64,
}

struct Progress {
    enabled: bool,
    /// On a terminal: a bar (indicatif); elsewhere: a log line every 10 s.
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_report: Instant,
    start_height: u64,
}

impl Progress {
    fn report(&mut self, summary: &FollowSummary, target: u64, force: bool) {
        if !self.enabled {
            return;
        }
        let every = if self.bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !force && self.last_report.elapsed() < every {
            return;
        }
        self.last_report = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = summary.blocks as f64 / secs;
        let done = summary.last_height.saturating_sub(self.start_height);
        let total = target.saturating_sub(self.start_height).max(1);
        let left = target.saturating_sub(summary.last_height);
        let eta = if rate > 0.0 {
            humantime::format_duration(Duration::from_secs((left as f64 / rate) as u64)).to_string()
        } else {
            "?".into()
        };
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done.min(total));
            bar.set_message(format!(
                "height {} / {target}, {rate:.1} blocks/s, ETA {eta}",
                summary.last_height
            ));
            if force {
                bar.finish();
            }
            return;
        }
        tracing::info!(
            "height {} / {target} ({:.1}%), {} blocks, {rate:.1} blocks/s, ETA {eta}",
            summary.last_height,
            100.0 * done as f64 / total as f64,
            summary.blocks
        );
    }
}

/// The oldest height the node still serves.
async fn earliest_height(rpc: &RpcClient) -> Result<u64, IngestError> {
    Ok(rpc
        .status()
        .await?
        .sync_info
        .earliest_block_height
        .unwrap_or(0))
}

/// Follows the chain from the cursor (which must exist; see
/// [`crate::ingest::baseline::init_cursor`]) until told to stop. Any error
/// ends it; [`crate::ingest::supervise`] decides whether to try again.
pub async fn follow(
    pool: &PgPool,
    rpc: &RpcClient,
    opts: &FollowOptions,
    alerts: Option<&AlertContext>,
    stop: watch::Receiver<bool>,
) -> Result<FollowSummary, IngestError> {
    let mut summary = FollowSummary::default();
    follow_into(pool, rpc, opts, alerts, stop, &mut summary).await?;
    Ok(summary)
}

/// [`follow`], counting into `summary` so a caller that retries keeps the
/// count of what was done before an error.
pub async fn follow_into(
    pool: &PgPool,
    rpc: &RpcClient,
    opts: &FollowOptions,
    alerts: Option<&AlertContext>,
    mut stop: watch::Receiver<bool>,
    summary: &mut FollowSummary,
) -> Result<(), IngestError> {
    let health = opts.health.as_deref();
    let mut earliest = earliest_height(rpc).await?;
    let mut caught_up_at: Option<u64> = None;
    let first = store::cursor(pool)
        .await?
        .ok_or_else(|| IngestError::Invalid("no cursor: ingestion was not started".into()))?;
    summary.last_height = summary.last_height.max(first.height);
    if let Some(h) = health {
        h.at_cursor(&first);
    }
    let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40.cyan/blue} {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = Progress {
        enabled: opts.progress,
        bar,
        started: Instant::now(),
        last_report: Instant::now(),
        start_height: first.height,
    };
    let mut pacer = Pacer::new(opts.poll_interval);
    let max_settle = alerts.and_then(|c| c.settles().last().copied());
    let mut memory = Memory::rebuild(pool, max_settle.unwrap_or(0)).await?;
    loop {
        if *stop.borrow() {
            break;
        }
        // Work that must happen at the cursor, between two blocks: the
        // baselines of newly watched accounts and corrections of drift.
        ensure_baselines(pool, rpc).await?;
        apply_fixes(pool, rpc, 10).await?;
        if let Some(ctx) = alerts {
            crate::ingest::silences::announce_silences(pool, ctx).await?;
        }
        let cursor = store::cursor(pool)
            .await?
            .ok_or_else(|| IngestError::Invalid("the cursor disappeared".into()))?;
        summary.last_height = cursor.height;
        if opts.until_height.is_some_and(|u| cursor.height >= u) {
            break;
        }
        if cursor.height + 1 < earliest {
            earliest = earliest_height(rpc).await?;
            if cursor.height + 1 < earliest {
                if !opts.accept_gap {
                    return Err(IngestError::HistoryGone {
                        next: cursor.height + 1,
                        earliest,
                    });
                }
                skip_gap(pool, rpc, &cursor, alerts).await?;
                continue;
            }
        }
        let final_head = rpc.block(&BlockRef::Final).await?.header;
        pacer.saw(final_head.height, Instant::now());
        let head_read = Instant::now();
        crate::metrics::head(final_head.height);
        if let Some(h) = health {
            h.saw_head(final_head.height);
        }
        crate::metrics::cursor(cursor.height);
        let target = *caught_up_at.get_or_insert(final_head.height);
        if opts.exit_when_caught_up && cursor.height >= target {
            break;
        }
        let limit = opts
            .until_height
            .map(|u| u.max(cursor.height + 1))
            .unwrap_or(u64::MAX);
        let window = ((opts.concurrency * 4).max(opts.blocks_per_transaction * 4) as u64)
            .min(limit.saturating_sub(cursor.height).max(1));
        let headers = match next_headers(rpc, &cursor, &final_head, window, opts.concurrency).await
        {
            Ok(h) => h,
            Err(e @ IngestError::Continuity { .. }) => {
                // A parent we cannot find may be history the node dropped.
                earliest = earliest_height(rpc).await?;
                if cursor.height + 1 < earliest {
                    continue;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if headers.is_empty() {
            if let Some(h) = health {
                h.caught_up(&cursor, final_head.height);
            }
            if let Some(ctx) = alerts
                && ctx
                    .suppress_old
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                // At the head: from now on, missed blocks are a catch-up.
                store::set_from_history(pool, false).await?;
            }
            tokio::select! {
                _ = tokio::time::sleep(pacer.wait(Instant::now())) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let watched = {
            let mut conn = pool.acquire().await?;
            memory.watched(&mut conn).await?
        };
        let run = Follow {
            pool,
            rpc,
            opts,
            alerts,
            stop: &stop,
            report_to: opts.until_height.unwrap_or(final_head.height),
            head_read,
        };
        run.ingest(headers, watched, summary, &mut progress, &mut memory)
            .await?;
        if *stop.borrow() || opts.until_height.is_some_and(|u| summary.last_height >= u) {
            break;
        }
    }
    progress.report(summary, summary.last_height, true);
    Ok(())
}

/// What one pass over fetched headers needs.
struct Follow<'a> {
    pool: &'a PgPool,
    rpc: &'a RpcClient,
    opts: &'a FollowOptions,
    alerts: Option<&'a AlertContext>,
    stop: &'a watch::Receiver<bool>,
    /// The height progress is reported against.
    report_to: u64,
    /// When the final head these blocks are under was read.
    head_read: Instant,
}

impl Follow<'_> {
    fn done(&self, summary: &FollowSummary) -> bool {
        *self.stop.borrow()
            || self
                .opts
                .until_height
                .is_some_and(|u| summary.last_height >= u)
    }

    /// Fetches the blocks of `headers` ahead in a task of their own (at
    /// most `concurrency` at once, a bounded channel of them waiting) while
    /// this one applies them in order, as many at a time as have arrived
    /// (up to `blocks_per_transaction`), so the rpc and the database work
    /// at the same time.
    async fn ingest(
        &self,
        headers: Vec<crate::domain::BlockHeader>,
        watched: Arc<BTreeSet<AccountId>>,
        summary: &mut FollowSummary,
        progress: &mut Progress,
        memory: &mut Memory,
    ) -> Result<(), IngestError> {
        let concurrency = self.opts.concurrency.max(1);
        let per_transaction = self.opts.blocks_per_transaction.max(1);
        // Room for a whole transaction's run of blocks to wait.
        let (sender, mut arrived) = tokio::sync::mpsc::channel(concurrency.max(per_transaction));
        let rpc = self.rpc;
        let per_request = self.opts.accounts_per_request;
        let fetching = async move {
            let fetches = futures_util::stream::iter(headers)
                .map(|h| fetch_block(rpc, h, &watched, per_request))
                .buffered(concurrency);
            futures_util::pin_mut!(fetches);
            while let Some(data) = fetches.next().await {
                let failed = data.is_err();
                if sender.send(data).await.is_err() || failed {
                    break;
                }
            }
        };
        let applying = async {
            while let Some(first) = arrived.recv().await {
                let mut run = vec![first?];
                let mut failed = None;
                while run.len() < per_transaction {
                    match arrived.try_recv() {
                        Ok(Ok(data)) => run.push(data),
                        Ok(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.apply(run, summary, memory).await?;
                if let Some(e) = failed {
                    return Err(e);
                }
                progress.report(summary, self.report_to.max(summary.last_height), false);
                if self.done(summary) {
                    break;
                }
            }
            Ok(())
        };
        futures_util::pin_mut!(fetching);
        futures_util::pin_mut!(applying);
        let mut fetched_all = false;
        loop {
            tokio::select! {
                result = &mut applying => return result,
                _ = &mut fetching, if !fetched_all => fetched_all = true,
            }
        }
    }

    /// Applies a run of consecutive blocks, fetching a block again when the
    /// watch list grew since it was fetched.
    async fn apply(
        &self,
        mut run: Vec<BlockData>,
        summary: &mut FollowSummary,
        memory: &mut Memory,
    ) -> Result<(), IngestError> {
        while !run.is_empty() {
            let started = Instant::now();
            let applied =
                apply_blocks(self.pool, &run, self.alerts, self.opts.epoch, memory).await?;
            crate::metrics::alerts_written(applied.alerts.iter().map(String::as_str));
            let (mut key_rows, mut balance_rows) = (0, 0);
            for c in &applied.committed {
                key_rows += c.key_rows as u64;
                balance_rows += c.balance_rows as u64;
            }
            let blocks = applied.committed.len();
            summary.blocks += blocks as u64;
            summary.key_rows += key_rows;
            summary.balance_rows += balance_rows;
            let done = applied.skipped + blocks;
            if let Some(last) = done.checked_sub(1).map(|i| &run[i].header) {
                // before the block counter, which a reader may wait on
                crate::metrics::cursor(last.height);
                summary.last_height = summary.last_height.max(last.height);
                if let (Some(h), false) = (&self.opts.health, applied.committed.is_empty()) {
                    h.committed(&Cursor {
                        height: last.height,
                        hash: last.hash.to_string(),
                        timestamp_ns: last.timestamp_ns,
                    });
                }
            }
            if blocks > 0 {
                let took = started.elapsed();
                crate::metrics::committed(blocks, key_rows, balance_rows, took, self.head_read);
            }
            let Some((i, missed)) = applied.refetch else {
                break;
            };
            tracing::info!(
                height = run[i].header.height,
                accounts = missed.len(),
                "watch list changed: fetching the block again"
            );
            let now = {
                let mut conn = self.pool.acquire().await?;
                memory.watched(&mut conn).await?
            };
            run.drain(..i);
            let header = run[0].header.clone();
            run[0] = fetch_block(self.rpc, header, &now, self.opts.accounts_per_request).await?;
        }
        Ok(())
    }
}

/// `--accept-gap`: records the heights that cannot be served, moves the
/// cursor to the node's earliest block, and re-reads every baseline there
/// (rows with source = 'reconcile'), closing the old tracking spans.
async fn skip_gap(
    pool: &PgPool,
    rpc: &RpcClient,
    cursor: &Cursor,
    alerts: Option<&AlertContext>,
) -> Result<(), IngestError> {
    let status = rpc.status().await?;
    let hash = status.sync_info.earliest_block_hash.ok_or_else(|| {
        IngestError::Invalid("the node does not report its earliest block".into())
    })?;
    let new = rpc.block(&BlockRef::Hash(hash)).await?.header;
    let at = BlockRef::Hash(new.hash.clone());
    let tracked = {
        let mut conn = pool.acquire().await?;
        store::watch::tracked(&mut conn).await?
    };
    let mut reads = Vec::new();
    for account in &tracked {
        reads.push((account.clone(), read_baseline(rpc, &at, account).await?));
    }
    let mut tx = pool.begin().await?;
    if store::lock_cursor(&mut tx).await?.as_ref() != Some(cursor) {
        return Ok(());
    }
    sqlx::query("insert into ingest_gaps (from_height, to_height) values ($1, $2)")
        .bind(crate::store::convert::height_to_i64(
            "height",
            cursor.height + 1,
        )?)
        .bind(crate::store::convert::height_to_i64(
            "height",
            new.height - 1,
        )?)
        .execute(&mut *tx)
        .await?;
    store::watch::close_spans(&mut tx, cursor.height).await?;
    store::insert_block(&mut tx, &new).await?;
    store::advance_cursor(&mut tx, &new).await?;
    let new_cursor = Cursor {
        height: new.height,
        hash: new.hash.to_string(),
        timestamp_ns: new.timestamp_ns,
    };
    for (account, baseline) in &reads {
        store::watch::write_baseline(&mut tx, account, &new_cursor, baseline, "reconcile").await?;
    }
    let mut written = vec![];
    if let Some(ctx) = alerts {
        let title = format!(
            "Heights {}..{} were skipped: the rpc no longer serves them",
            cursor.height + 1,
            new.height - 1
        );
        let details = serde_json::json!({"from": cursor.height + 1, "to": new.height - 1});
        written = crate::ingest::alerts::system_alert(
            &mut tx,
            ctx,
            &new,
            crate::ingest::alerts::SystemAlert {
                rule: "ingest_stalled",
                account: String::new(),
                key: None,
                title,
                details,
            },
        )
        .await?;
    }
    tx.commit().await?;
    crate::metrics::alerts_written(written.iter().map(String::as_str));
    tracing::error!(
        from = cursor.height + 1,
        to = new.height - 1,
        "history the rpc no longer serves was skipped (--accept-gap); baselines re-read at {}",
        new.height
    );
    Ok(())
}
