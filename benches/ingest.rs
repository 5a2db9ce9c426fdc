//! Ingestion throughput against the simulator and a real Postgres.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench ingest
//!
//! Creates a scratch database, ingests a seeded chain (watched and
//! unwatched accounts, calls with refunds, key additions and deletions,
//! transfers) and prints blocks/s, rows/s and RPC requests per block.
//! Options via env: BENCH_BLOCKS (2000), BENCH_ACCOUNTS (200),
//! BENCH_WATCHED (50), BENCH_TX_PER_BLOCK (20).

use std::time::{Duration, Instant};

use keywatch::config::StartAt;
use keywatch::ingest::baseline::{init_cursor, start_tracking};
use keywatch::ingest::follower::{FollowOptions, follow};
use keywatch::rpc::{RpcClient, RpcSettings};
use keywatch::sim::scenario::GenSpec;
use keywatch::sim::{Scenario, SimOptions, Simulator};
use keywatch::store::watch::NewWatch;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let blocks = env("BENCH_BLOCKS", 2000);
    let accounts = env("BENCH_ACCOUNTS", 200) as usize;
    let watched = env("BENCH_WATCHED", 50) as usize;
    let per_block = env("BENCH_TX_PER_BLOCK", 20) as usize;
    let base = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a Postgres role that may create databases");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let db = format!("keywatch_bench_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&base).unwrap();
    url.set_path(&db);
    let pool = keywatch::store::connect(url.as_str(), 10).await.unwrap();
    keywatch::store::migrate(&pool).await.unwrap();

    let start = 1_000_000;
    let scenario = Scenario::generate(&GenSpec {
        seed: 7,
        accounts,
        blocks,
        actions_per_block: per_block,
        start_height: start,
    });
    let sim = Simulator::start(scenario, SimOptions::default())
        .await
        .unwrap();
    sim.advance_to(start + 3);
    let rpc = RpcClient::new(RpcSettings {
        urls: vec![sim.url()],
        ..RpcSettings::default()
    })
    .unwrap();
    let watches: Vec<NewWatch> = (0..watched)
        .map(|i| NewWatch {
            account_id: keywatch::domain::AccountId::parse(&format!("acc{i}.sim.near")).unwrap(),
            label: None,
            expected_keys: vec![],
            cold_keys: vec![],
            allow_missing: false,
        })
        .collect();
    start_tracking(&pool, &rpc, "localnet", &watches, false)
        .await
        .unwrap();
    init_cursor(&pool, &rpc, StartAt::Height(start + 1))
        .await
        .unwrap();
    sim.run_to_end();
    let requests_before = sim.requests();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let opts = FollowOptions {
        exit_when_caught_up: true,
        concurrency: 8,
        poll_interval: Duration::from_millis(5),
        ..FollowOptions::default()
    };
    let t = Instant::now();
    let summary = follow(&pool, &rpc, &opts, None, stop).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    let rows = summary.key_rows + summary.balance_rows;
    println!(
        "ingest: {blocks} blocks x {per_block} tx/block, {accounts} accounts, {watched} watched"
    );
    println!(
        "  {} blocks in {secs:.2} s: {:.0} blocks/s",
        summary.blocks,
        summary.blocks as f64 / secs
    );
    println!("  {rows} history rows: {:.0} rows/s", rows as f64 / secs);
    println!(
        "  {:.2} rpc requests per block",
        (sim.requests() - requests_before) as f64 / summary.blocks as f64
    );
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".into());
    println!("  peak memory (VmHWM, simulator included): {peak} kB");
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("drop database {db}")))
        .execute(&admin)
        .await
        .unwrap();
}
