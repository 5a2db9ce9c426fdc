//! `keywatch demo`: the whole pipeline against the built-in chain simulator
//! playing the attack story, in a scratch database that is dropped after.

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;

use crate::cli::{CmdResult, Failure, bad_input, load_settings};
use crate::config::StartAt;
use crate::ingest::alerts::AlertContext;
use crate::ingest::baseline::{init_cursor, start_tracking};
use crate::ingest::follower::{FollowOptions, follow};
use crate::rpc::{RpcClient, RpcSettings};
use crate::sim::{Clock, Scenario, SimOptions, Simulator};
use crate::store::watch::NewWatch;

const STORY: &str = include_str!("../../scenarios/attack.toml");
const EXPECTED: &str = "ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6";

pub async fn demo(config: &std::path::Path, fast: bool) -> CmdResult {
    let settings = load_settings(config)?;
    let base = settings.database.url.expose_secret().to_owned();
    let admin = sqlx::PgPool::connect(&base)
        .await
        .context("cannot connect to the database (database.url or DATABASE_URL)")?;
    let name = format!("keywatch_demo_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&admin)
        .await
        .context("the demo needs a role that may create a scratch database")?;
    let result = run_demo(&settings, &base, &name, fast).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&admin)
    .await
    .context("dropping the demo database")?;
    result
}

async fn run_demo(
    settings: &crate::config::Settings,
    base: &str,
    name: &str,
    fast: bool,
) -> CmdResult {
    let mut url = reqwest::Url::parse(base).map_err(|e| bad_input(format!("database url: {e}")))?;
    url.set_path(name);
    let pool = crate::store::connect(url.as_str(), 5)
        .await
        .context("connecting to the demo database")?;
    crate::store::migrate(&pool)
        .await
        .context("migrating the demo database")?;
    let scenario = Scenario::from_toml(STORY, "the built-in demo story")
        .map_err(|e| Failure::Other(e.into()))?;
    let (start, end) = (scenario.chain.start_height, scenario.last_action_height());
    let clock = if fast { Clock::OnRead } else { Clock::RealTime };
    let sim = Simulator::start(
        scenario,
        SimOptions {
            clock,
            until: Some(end + 3),
            ..SimOptions::default()
        },
    )
    .await
    .context("starting the simulator")?;
    println!(
        "simulated chain at {} ({}), heights {start}..{end}",
        sim.url(),
        if fast {
            "as fast as read"
        } else {
            "one block per 600 ms"
        }
    );
    let rpc = RpcClient::new(RpcSettings {
        urls: vec![sim.url()],
        ..RpcSettings::default()
    })
    .map_err(bad_input)?;
    let watch = |id: &str, expected: Vec<crate::domain::PublicKey>| NewWatch {
        account_id: crate::domain::AccountId::parse(id).expect("the story's ids are valid"),
        label: None,
        expected_keys: expected,
        cold_keys: vec![],
        allow_missing: false,
    };
    let expected = vec![crate::domain::PublicKey::parse(EXPECTED).expect("valid key")];
    let watches = [
        watch("treasury.near", expected),
        watch("relayer.near", vec![]),
        watch("bob.near", vec![]),
    ];
    start_tracking(&pool, &rpc, "localnet", &watches, false)
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    println!(
        "watching treasury.near (expecting key {}…), relayer.near and bob.near",
        &EXPECTED[..16]
    );
    while sim.with_chain(|c| c.final_block().header.height) < start + 1 {
        rpc.status().await.context("waiting for the first block")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    init_cursor(&pool, &rpc, StartAt::Height(start + 1))
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    let mut ctx = AlertContext::from_settings(settings);
    ctx.channels = vec![];
    // The story is played as news, not as a backfill of old blocks: its
    // alerts are decided as live ones are (cooldowns and escalation
    // included), whatever the simulated clock says.
    ctx.suppress_old
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let opts = FollowOptions {
        until_height: Some(end),
        poll_interval: Duration::from_millis(100),
        ..FollowOptions::default()
    };
    let printer_pool = pool.clone();
    let printing = tokio::spawn(async move {
        let mut seen = 0i64;
        loop {
            let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
                "select id, block_height, severity, title from alerts where id > $1 order by id",
            )
            .bind(seen)
            .fetch_all(&printer_pool)
            .await
            .unwrap_or_default();
            for (id, h, sev, title) in rows {
                println!("block {h}  [{}] {title}", sev.to_uppercase());
                seen = id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let summary = follow(&pool, &rpc, &opts, Some(&ctx), stop)
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    printing.abort();
    let alerts: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .context("counting alerts")?;
    println!(
        "done: {} blocks ingested, {} key rows, {} balance rows, {alerts} alerts",
        summary.blocks, summary.key_rows, summary.balance_rows
    );
    pool.close().await;
    Ok(())
}
