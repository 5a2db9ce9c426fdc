//! Alert latency as users run keywatch: the release binary (`keywatch run`,
//! shipped defaults: 15 requests/s, poll_interval 500 ms) against the
//! simulator producing a block every 600 ms with 20 ms of RPC latency, every
//! rule on, email to an SMTP server on loopback. Each block adds an
//! unexpected full-access key to a watched account, so each is a critical
//! alert sent at once.
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench latency
//!
//! Prints, over BENCH_ALERTS alerts (default 500), p50/p90/p99/max of the
//! time from the block becoming final at the node to (a) the alert row being
//! written and (b) the SMTP server accepting the mail.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use keywatch::sim::{FaultPlan, Scenario, SimOptions, Simulator};

mod common;
use common::smtp_server;

const START: u64 = 1_000;
const BLOCK_TIME: Duration = Duration::from_millis(600);

fn key(i: u64) -> String {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&i.to_be_bytes());
    format!("ed25519:{}", bs58::encode(bytes).into_string())
}

fn scenario(alerts: u64) -> Scenario {
    let mut text = format!(
        "[chain]\nchain_id = \"localnet\"\nstart_height = {START}\nblock_time = \"600ms\"\n\n\
         [[accounts]]\nid = \"vault.near\"\namount = \"1000\"\nkeys = [{{ key = \"{}\", permission = \"full_access\" }}]\n\
         [[accounts]]\nid = \"other.near\"\namount = \"1000\"\nkeys = [{{ key = \"{}\", permission = \"full_access\" }}]\n",
        key(u64::MAX),
        key(u64::MAX - 1)
    );
    for i in 0..alerts {
        text.push_str(&format!(
            "\n[[actions]]\nat = {}\ndo = \"add_key\"\naccount = \"vault.near\"\nkey = \"{}\"\npermission = \"full_access\"\n",
            START + 10 + i,
            key(i)
        ));
    }
    Scenario::from_toml(&text, "latency bench").unwrap()
}

fn percentiles(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:42} n={:4}  p50 {:4} ms  p90 {:4} ms  p99 {:4} ms  max {:4} ms",
        v.len(),
        at(0.50).as_millis(),
        at(0.90).as_millis(),
        at(0.99).as_millis(),
        v.last().unwrap().as_millis()
    );
}

#[tokio::main]
async fn main() {
    let alerts: u64 = std::env::var("BENCH_ALERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let base = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a Postgres role that may create databases");
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let db = format!("keywatch_latency_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {db}")))
        .execute(&admin)
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&base).unwrap();
    url.set_path(&db);
    let pool = keywatch::store::connect(url.as_str(), 2).await.unwrap();

    let (smtp_port, accepted) = smtp_server().await;
    let sim = Simulator::start(
        scenario(alerts),
        SimOptions {
            faults: Some(FaultPlan {
                latency_ms: Some((20, 20)),
                ..FaultPlan::default()
            }),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    sim.advance_to(START + 3);
    let dir = std::env::temp_dir().join(format!("keywatch-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keywatch.toml");
    std::fs::write(
        &config,
        format!(
            "[rpc]\nurls = [\"{}\"]\nchain_id = \"localnet\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             [notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             from = \"kw@example.com\"\nto = [\"ops@example.com\"]\n\n[[accounts]]\nid = \"vault.near\"\n",
            sim.url()
        ),
    )
    .unwrap();
    let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("DATABASE_URL", url.as_str())
        .env("KEYWATCH_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // following: the cursor exists
    let started = Instant::now();
    while keywatch::store::cursor(&pool)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a block every 600 ms; note when each height becomes final
    let mut final_at: BTreeMap<u64, SystemTime> = BTreeMap::new();
    let last = START + 10 + alerts + 5;
    let mut tick = tokio::time::interval(BLOCK_TIME);
    let mut final_height = sim.with_chain(|c| c.final_block().header.height);
    while final_height < last {
        tick.tick().await;
        sim.advance(1);
        let now = SystemTime::now();
        let f = sim.with_chain(|c| c.final_block().header.height);
        for h in final_height + 1..=f {
            final_at.insert(h, now);
        }
        final_height = f;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (accepted.lock().unwrap().len() as u64) < alerts && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &run.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), run.wait()).await;

    let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select dedup_key, block_height, created_at from alerts where rule = 'new_full_access_key'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mails = accepted.lock().unwrap().clone();
    let mut to_row = Vec::new();
    let mut to_smtp = Vec::new();
    for (dedup, height, created) in &rows {
        let Some(became_final) = final_at.get(&(*height as u64)) else {
            continue;
        };
        let created: SystemTime = (*created).into();
        to_row.push(created.duration_since(*became_final).unwrap_or_default());
        let identity = keywatch::notify::alert_identity(dedup);
        if let Some((_, at)) = mails.iter().find(|(id, _)| id.contains(&identity)) {
            to_smtp.push(at.duration_since(*became_final).unwrap_or_default());
        }
    }
    println!(
        "alert latency: {} blocks at 600 ms, 20 ms rpc latency, shipped defaults (15 requests/s), {} alerts, {} mails",
        final_at.len(),
        rows.len(),
        mails.len()
    );
    percentiles("final at the node -> alert row written", to_row);
    percentiles("final at the node -> SMTP server accepts", to_smtp);
    drop(pool);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {db} with (force)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
