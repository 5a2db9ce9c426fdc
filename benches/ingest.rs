//! Ingestion throughput as users run it: every rule on, alerts delivered by
//! email to an SMTP server on loopback (block times near now, so alerts are
//! sent, not suppressed), a real Postgres.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench ingest
//!
//! Each run creates a scratch database, ingests a seeded chain (watched and
//! unwatched accounts, calls with refunds, key additions and deletions,
//! transfers) with the dispatcher delivering alongside, and prints blocks/s,
//! rows/s, alerts, mails, RPC requests per block, and the SQL statements and
//! round trips per block counted on the wire by a proxy in front of
//! Postgres. Each load runs BENCH_REPEAT times (3), the median printed
//! beside every run, first on an empty database, then over about a million
//! preloaded history rows. Options via env: BENCH_BLOCKS (2000),
//! BENCH_ACCOUNTS (200), BENCH_WATCHED (a list, "10,200"),
//! BENCH_TX_PER_BLOCK (20). Then, once each:
//! - under a request budget (BENCH_BUDGET, 15 requests/s;
//!   BENCH_BUDGET_BLOCKS, 300): the catch-up rate it allows and the most
//!   requests the simulator saw in any one second;
//! - with 10, 1,000, 10,000 and 100,000 watched accounts (BENCH_SCALE_BLOCKS,
//!   500): requests and CPU per block, peak RSS;
//! - `blocks` rows and bytes before and after retention prunes the blocks
//!   history does not need (BENCH_PRUNE_BLOCKS, 5,000, with sparse writes);
//! - at 30 ms of rpc latency, concurrency 1 to 64: blocks/s against the
//!   lower of the rpc-bound limit and the 0 ms rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keywatch::config::{Settings, StartAt};
use keywatch::ingest::alerts::AlertContext;
use keywatch::ingest::baseline::{init_cursor, start_tracking};
use keywatch::ingest::follower::{FollowOptions, follow};
use keywatch::rpc::{RpcClient, RpcSettings};
use keywatch::sim::scenario::GenSpec;
use keywatch::sim::{Scenario, SimOptions, Simulator};
use keywatch::store::watch::NewWatch;

mod common;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Load {
    blocks: u64,
    accounts: usize,
    watched: usize,
    per_block: usize,
    /// `rpc.requests_per_second`; `None` is unlimited.
    budget: Option<u32>,
    /// History rows written before ingesting (older blocks, same accounts).
    preload: bool,
    /// More watched accounts that no block touches.
    quiet: usize,
    /// RPC latency at the simulator, and blocks fetched at once.
    latency_ms: u64,
    concurrency: usize,
    /// After following, prune the blocks history does not need (as
    /// retention does with `blocks = "0s"`) and measure `blocks` before
    /// and after.
    prune: bool,
}

impl Load {
    fn new(blocks: u64, accounts: usize, watched: usize, per_block: usize) -> Load {
        Load {
            blocks,
            accounts,
            watched,
            per_block,
            budget: None,
            preload: false,
            quiet: 0,
            latency_ms: 0,
            concurrency: FollowOptions::default().concurrency,
            prune: false,
        }
    }
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name, which is in parentheses
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15; clock ticks are 1/100 s on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The CPU time of the Postgres backends serving `pool` so far.
async fn backends_cpu(pool: &sqlx::PgPool) -> Duration {
    let pids: Vec<i32> =
        sqlx::query_scalar("select pid from pg_stat_activity where datname = current_database()")
            .fetch_all(pool)
            .await
            .unwrap();
    pids.iter().map(|p| cpu_time(&p.to_string())).sum()
}

/// A `/proc/self/status` field in kB (`VmHWM`, `VmRSS`).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the process's peak RSS to its current RSS (Linux `clear_refs`).
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS: {e}");
    }
}

struct Run {
    blocks_per_s: f64,
    rows_per_s: f64,
    requests_per_block: f64,
    alerts: i64,
    mails: usize,
    /// The most requests the simulator saw within one second.
    peak_per_second: usize,
    /// SQL statements and round trips per block, counted on the wire.
    statements_per_block: f64,
    round_trips_per_block: f64,
    /// Blocks per committed transaction, counted on the wire.
    blocks_per_commit: f64,
    /// History rows in the database before ingesting.
    preloaded: i64,
    /// How far the process's RSS rose above where it stood when following
    /// began (kB): keywatch's own peak, the simulator's chain being built
    /// before then.
    rss_rise_kb: u64,
    rss_before_kb: u64,
    /// `blocks` rows and bytes (table and indexes) after following, and
    /// after pruning (when the load prunes), with the blocks history
    /// rows sit in.
    blocks_rows: (i64, i64),
    blocks_rows_pruned: Option<(i64, i64)>,
    blocks_with_history: i64,
    /// CPU per block of this process (keywatch, simulator, SMTP server)
    /// and of the Postgres backends.
    cpu_per_block: Duration,
    pg_cpu_per_block: Duration,
}

async fn once(base: &str, load: &Load, smtp_port: u16, accepted: &common::Accepted) -> Run {
    let admin = sqlx::PgPool::connect(base).await.unwrap();
    let db = format!("keywatch_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(base).unwrap();
    url.set_path(&db);
    // The dispatcher and the set-up talk to Postgres directly; the
    // follower through a proxy that counts its statements.
    let pool = keywatch::store::connect(url.as_str(), 10).await.unwrap();
    keywatch::store::migrate(&pool).await.unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let (proxy_port, wire) = common::counting_proxy(upstream).await;
    let mut counted = url.clone();
    counted.set_host(Some("127.0.0.1")).unwrap();
    counted.set_port(Some(proxy_port)).unwrap();
    counted.set_query(Some("sslmode=disable"));
    let ingest_pool = keywatch::store::connect(counted.as_str(), 10)
        .await
        .unwrap();

    let start = 1_000_000;
    let mut scenario = Scenario::generate(&GenSpec {
        seed: 7,
        accounts: load.accounts,
        blocks: load.blocks,
        actions_per_block: load.per_block,
        start_height: start,
    });
    // the chain's blocks end now: alerts are news, so they are sent
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let genesis_ns = now_ns - load.blocks * scenario.chain.block_time.as_nanos() as u64;
    scenario.chain.genesis_time_ns = genesis_ns;
    let faults = (load.latency_ms > 0).then(|| keywatch::sim::FaultPlan {
        latency_ms: Some((load.latency_ms, load.latency_ms)),
        ..Default::default()
    });
    let sim = Simulator::start(
        scenario,
        SimOptions {
            faults,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    sim.advance_to(start + 3);
    let settings = Settings::from_toml(
        &format!(
            "[rpc]\nurls = [\"{}\"]\nchain_id = \"localnet\"\n\
             [notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             from = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
            sim.url()
        ),
        std::path::Path::new("bench.toml"),
        &Default::default(),
    )
    .unwrap();
    let rpc = RpcClient::new(RpcSettings {
        urls: vec![sim.url()],
        requests_per_second: load.budget.and_then(std::num::NonZeroU32::new),
        ..RpcSettings::default()
    })
    .unwrap();
    let watches: Vec<NewWatch> = (0..load.watched)
        .map(|i| NewWatch {
            account_id: keywatch::domain::AccountId::parse(&format!("acc{i}.sim.near")).unwrap(),
            label: None,
            expected_keys: vec![],
            cold_keys: vec![],
            allow_missing: false,
        })
        .collect();
    let preloaded = if load.preload {
        preload_history(&pool, start, genesis_ns).await
    } else {
        0
    };
    start_tracking(&pool, &rpc, "localnet", &watches, false)
        .await
        .unwrap();
    init_cursor(&pool, &rpc, StartAt::Height(start + 1))
        .await
        .unwrap();
    if load.quiet > 0 {
        // watched accounts no block touches, tracked from the cursor
        let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
        for sql in [
            "insert into watched_accounts (account_id, baseline_height, baseline_hash)
             select 'quiet' || i || '.near', $2, $3 from generate_series(1, $1::bigint) i",
            "insert into tracking_spans (account_id, from_height)
             select 'quiet' || i || '.near', $2 from generate_series(1, $1::bigint) i",
        ] {
            sqlx::query(sql)
                .bind(load.quiet as i64)
                .bind(cursor.height as i64)
                .bind(&cursor.hash)
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    sim.run_to_end();
    let requests_before = sim.requests();
    let mails_before = accepted.lock().unwrap().len();
    let ctx = AlertContext::from_settings(&settings);
    let dispatcher =
        keywatch::dispatch::Dispatcher::new(pool.clone(), &settings, Arc::new(chrono::Utc::now))
            .unwrap();
    let (stop_dispatch, dispatch_rx) = tokio::sync::watch::channel(false);
    let delivering = tokio::spawn(async move {
        dispatcher
            .run(dispatch_rx, Duration::from_secs(5))
            .await
            .unwrap()
    });
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let opts = FollowOptions {
        exit_when_caught_up: true,
        concurrency: load.concurrency,
        poll_interval: Duration::from_millis(5),
        ..FollowOptions::default()
    };
    use std::sync::atomic::Ordering::Relaxed;
    let (statements, round_trips, commits) = (
        wire.statements.load(Relaxed),
        wire.round_trips.load(Relaxed),
        wire.commits.load(Relaxed),
    );
    let me = std::process::id().to_string();
    reset_peak_rss();
    let rss_before = status_kb("VmRSS:");
    let (cpu, pg_cpu) = (cpu_time(&me), backends_cpu(&ingest_pool).await);
    let t = Instant::now();
    let summary = follow(&ingest_pool, &rpc, &opts, Some(&ctx), stop)
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let rss_rise_kb = status_kb("VmHWM:").saturating_sub(rss_before);
    let cpu_per_block = (cpu_time(&me) - cpu) / summary.blocks as u32;
    let pg_cpu_per_block =
        backends_cpu(&ingest_pool).await.saturating_sub(pg_cpu) / summary.blocks as u32;
    let per_block = |n: u64| n as f64 / summary.blocks as f64;
    let statements_per_block = per_block(wire.statements.load(Relaxed) - statements);
    let round_trips_per_block = per_block(wire.round_trips.load(Relaxed) - round_trips);
    let blocks_per_commit = 1.0 / per_block(wire.commits.load(Relaxed) - commits);
    stop_dispatch.send_replace(true);
    delivering.await.unwrap();
    let alerts: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    let blocks_table = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "select count(*), pg_total_relation_size('blocks') from blocks",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let blocks_rows = blocks_table().await;
    let blocks_with_history: i64 = sqlx::query_scalar(
        "select count(*) from (select block_height from key_events union
                               select block_height from balance_events) h",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let blocks_rows_pruned = if load.prune {
        let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
        keywatch::store::prune::prune_blocks(
            &pool,
            cursor.timestamp_ns as i64,
            ctx.keep_blocks_after_writes(),
            5_000,
        )
        .await
        .unwrap();
        sqlx::query("vacuum full blocks")
            .execute(&pool)
            .await
            .unwrap();
        Some(blocks_table().await)
    } else {
        None
    };
    let run = Run {
        blocks_rows,
        blocks_rows_pruned,
        blocks_with_history,
        blocks_per_s: summary.blocks as f64 / secs,
        rows_per_s: (summary.key_rows + summary.balance_rows) as f64 / secs,
        requests_per_block: (sim.requests() - requests_before) as f64 / summary.blocks as f64,
        alerts,
        mails: accepted.lock().unwrap().len() - mails_before,
        peak_per_second: sim.peak_requests_per_second(),
        statements_per_block,
        round_trips_per_block,
        blocks_per_commit,
        preloaded,
        cpu_per_block,
        pg_cpu_per_block,
        rss_rise_kb,
        rss_before_kb: rss_before,
    };
    ingest_pool.close().await;
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {db} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    run
}

/// Writes about a million history rows in the shape of a year of a busy
/// deployment, in the 100,000 blocks before `start`: 2,000 accounts (the
/// simulator's among them) with five keys written 60 times each, two
/// relayer keys and two hot wallets written every block, and every
/// account's balance moving 50 times. Amounts only grow, so no rule fires
/// on them. Returns the number of history rows.
async fn preload_history(pool: &sqlx::PgPool, start: u64, genesis_ns: u64) -> i64 {
    let first = start - 100_000;
    let ts = |h: &str| format!("({genesis_ns}::bigint - ({start} - {h}) * 1000000000)");
    let statements = [
        format!(
            "insert into blocks (block_hash, block_height, prev_hash, block_timestamp_ns, block_time)
             select 'pre' || h, h, 'pre' || (h - 1), {t}, to_timestamp({t} / 1e9)
             from generate_series({first}::bigint, {last}) h",
            t = ts("h"),
            last = start - 1
        ),
        format!(
            "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block,
                                     action, permission, permission_raw, allowance, nonce, source)
             select 'acc' || a || '.sim.near', 'ed25519:k' || k, h, 'pre' || h, k,
                    case when n = 0 then 'added' else 'updated' end, 'function_call',
                    '{{\"FunctionCall\": {{\"allowance\": \"1\", \"receiver_id\": \"r.near\", \"method_names\": []}}}}',
                    n + 1, n, 'chain'
             from generate_series(0, 1999) a, generate_series(0, 4) k, generate_series(0, 59) n,
                  lateral (select {first} + ((a * 7 + k * 13) % 1600) + n * 1650 as h) p"
        ),
        format!(
            "insert into key_events (account_id, public_key, block_height, block_hash, index_in_block,
                                     action, permission, permission_raw, allowance, nonce, source)
             select 'acc' || k || '.sim.near', 'ed25519:busy' || k, h, 'pre' || h, 10,
                    case when h = {first} then 'added' else 'updated' end, 'function_call',
                    '{{\"FunctionCall\": {{\"allowance\": \"1\", \"receiver_id\": \"r.near\", \"method_names\": []}}}}',
                    h, h, 'chain'
             from generate_series(0, 1) k, generate_series({first}::bigint, {last}) h",
            last = start - 1
        ),
        format!(
            "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount,
                                         locked, storage_usage, code_hash, source)
             select 'acc' || a || '.sim.near', h, 'pre' || h, 0, h, 0, 100,
                    '11111111111111111111111111111111', 'chain'
             from generate_series(0, 1) a, generate_series({first}::bigint, {last}) h",
            last = start - 1
        ),
        format!(
            "insert into balance_events (account_id, block_height, block_hash, index_in_block, amount,
                                         locked, storage_usage, code_hash, source)
             select 'acc' || a || '.sim.near', h, 'pre' || h, 1, n + 1, 0, 100,
                    '11111111111111111111111111111111', 'chain'
             from generate_series(0, 1999) a, generate_series(0, 49) n,
                  lateral (select {first} + ((a * 11) % 1900) + n * 1960 as h) p"
        ),
        "analyze".to_owned(),
    ];
    let mut conn = pool.acquire().await.unwrap();
    for s in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query_scalar(
        "select (select count(*) from key_events) + (select count(*) from balance_events)",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let blocks = env("BENCH_BLOCKS", 2000);
    let accounts = env("BENCH_ACCOUNTS", 200) as usize;
    let per_block = env("BENCH_TX_PER_BLOCK", 20) as usize;
    let repeat = env("BENCH_REPEAT", 3).max(1);
    let watched: Vec<usize> = std::env::var("BENCH_WATCHED")
        .unwrap_or_else(|_| "10,200".into())
        .split(',')
        .map(|w| w.trim().parse().expect("BENCH_WATCHED: a list of numbers"))
        .collect();
    let base = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a Postgres role that may create databases");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let sync: String = sqlx::query_scalar("show synchronous_commit")
        .fetch_one(&admin)
        .await
        .unwrap();
    let (smtp_port, accepted) = common::smtp_server().await;
    println!(
        "ingest with every rule on and email delivery: {blocks} blocks x {per_block} tx/block, {accounts} accounts, synchronous_commit = {sync}, median of {repeat}"
    );
    let mut rate_10 = None;
    let mut rates = Vec::new();
    for preload in [false, true] {
        for &w in &watched {
            let load = Load {
                preload,
                ..Load::new(blocks, accounts, w, per_block)
            };
            let mut runs = Vec::new();
            for _ in 0..repeat {
                runs.push(once(&base, &load, smtp_port, &accepted).await);
            }
            let each: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.0}", r.blocks_per_s))
                .collect();
            let last = runs.last().unwrap();
            let rate = median(runs.iter().map(|r| r.blocks_per_s).collect());
            if w == 10 && !preload {
                rate_10 = Some(rate);
            }
            rates.push((preload, w, rate));
            println!(
                "  {w:4} watched, {:7} history rows before: {:6.0} blocks/s (runs: {}), {:6.0} history rows/s, {:.2} rpc requests/block, {:.2} SQL statements and {:.2} round trips per block, {:.1} blocks per transaction, {} alerts, {} mails",
                last.preloaded,
                median(runs.iter().map(|r| r.blocks_per_s).collect()),
                each.join(", "),
                median(runs.iter().map(|r| r.rows_per_s).collect()),
                last.requests_per_block,
                last.statements_per_block,
                last.round_trips_per_block,
                last.blocks_per_commit,
                last.alerts,
                last.mails
            );
        }
    }
    for &w in &watched {
        let rate = |p: bool| rates.iter().find(|r| r.0 == p && r.1 == w).map(|r| r.2);
        if let (Some(empty), Some(full)) = (rate(false), rate(true)) {
            println!(
                "  {w:4} watched: a million history rows make a block {:.2}x as slow (target: at most 1.2x)",
                empty / full
            );
        }
    }
    // Under a request budget: the catch-up rate it allows, and whether any
    // second saw more requests than it.
    let budget = env("BENCH_BUDGET", 15) as u32;
    let load = Load {
        budget: Some(budget),
        ..Load::new(env("BENCH_BUDGET_BLOCKS", 300), accounts, 10, per_block)
    };
    let r = once(&base, &load, smtp_port, &accepted).await;
    println!(
        "  budget {budget} requests/s, 10 watched, {} blocks: {:.1} blocks/s catch-up, at most {} requests in any one second at the node",
        load.blocks, r.blocks_per_s, r.peak_per_second
    );
    // The size of the watch list: the chain touches 10 of the accounts,
    // the rest are quiet. The memory figure is how far the process's RSS
    // rose while following (the simulator's chain is built before).
    let scale_blocks = env("BENCH_SCALE_BLOCKS", 500);
    println!(
        "  watch list size ({scale_blocks} blocks; CPU of this process, which holds the simulator, and of Postgres):"
    );
    let mut cpu_at_10 = None;
    for total in [10usize, 1_000, 10_000, 100_000] {
        let load = Load {
            quiet: total - 10,
            ..Load::new(scale_blocks, accounts, 10, per_block)
        };
        let r = once(&base, &load, smtp_port, &accepted).await;
        println!(
            "  {total:6} watched: {:6.0} blocks/s, {:.2} rpc requests/block, CPU per block {:.2} ms here + {:.2} ms Postgres, peak RSS {} kB above the {} kB before following",
            r.blocks_per_s,
            r.requests_per_block,
            r.cpu_per_block.as_secs_f64() * 1e3,
            r.pg_cpu_per_block.as_secs_f64() * 1e3,
            r.rss_rise_kb,
            r.rss_before_kb
        );
        let cpu = r.cpu_per_block + r.pg_cpu_per_block;
        match cpu_at_10 {
            None => cpu_at_10 = Some(cpu),
            Some(base) => println!(
                "          CPU per block {:.2}x that at 10 watched (target at 10,000: at most 1.5x)",
                cpu.as_secs_f64() / base.as_secs_f64().max(1e-9)
            ),
        }
    }
    // Storage: `blocks` gets a row per block followed; retention keeps
    // those history sits in and the 128 after each, and prunes the rest.
    let sparse_blocks = env("BENCH_PRUNE_BLOCKS", 5000);
    let load = Load {
        prune: true,
        ..Load::new(sparse_blocks, 20_000, 10, 1)
    };
    let r = once(&base, &load, smtp_port, &accepted).await;
    let (rows, bytes) = r.blocks_rows;
    let (kept, kept_bytes) = r.blocks_rows_pruned.unwrap();
    println!(
        "  storage, {sparse_blocks} blocks x 1 tx/block over 20,000 accounts, 10 watched ({} blocks hold history): `blocks` {rows} rows, {} kB ({:.0} B/row) before pruning, {kept} rows, {} kB after",
        r.blocks_with_history,
        bytes / 1024,
        bytes as f64 / rows as f64,
        kept_bytes / 1024
    );
    // Against a node 30 ms away: how close each concurrency comes to the
    // lower of what the rpc allows (concurrency / (requests per block x
    // latency)) and the 0 ms rate.
    let rate0 = rate_10.unwrap_or(f64::MAX);
    println!("  30 ms rpc latency, 10 watched (the 0 ms rate: {rate0:.0} blocks/s):");
    for c in [1usize, 2, 4, 8, 16, 32, 64] {
        let load = Load {
            latency_ms: 30,
            concurrency: c,
            ..Load::new((40 * c as u64).clamp(100, 1000), accounts, 10, per_block)
        };
        let r = once(&base, &load, smtp_port, &accepted).await;
        let bound = (c as f64 / (r.requests_per_block * 0.030)).min(rate0);
        println!(
            "  concurrency {c:2}: {:6.1} blocks/s, bound {bound:6.1} blocks/s ({:.2} requests/block): {:3.0}%",
            r.blocks_per_s,
            r.requests_per_block,
            100.0 * r.blocks_per_s / bound
        );
    }
}
