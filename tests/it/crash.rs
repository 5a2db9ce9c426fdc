//! The real binary killed with SIGKILL at random moments during backfill and
//! follow, then restarted: the database ends exactly as the chain says, with
//! no gap and no duplicate. And SIGTERM stops cleanly.

use std::path::PathBuf;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use sqlx::PgPool;

use crate::ingest::{START, assert_matches_chain, big_scenario};
use keywatch::sim::{Clock, FaultPlan, SimOptions, Simulator};

pub fn database_url(pool: &PgPool) -> String {
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(pool.connect_options().get_database().unwrap());
    url.to_string()
}

pub fn config(dir: &tempfile::TempDir, rpc_url: &str) -> PathBuf {
    let path = dir.path().join("keywatch.toml");
    std::fs::write(
        &path,
        format!(
            "[rpc]\nurls = [{rpc_url:?}]\nchain_id = \"localnet\"\nrequests_per_second = 0\nconcurrency = 4\ntimeout = \"2s\"\nattempts_per_url = 10\nbackoff_min = \"1ms\"\nbackoff_max = \"10ms\"\n[ingest]\npoll_interval = \"20ms\"\n[server]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    path
}

pub fn keywatch(config: &PathBuf, db: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("DATABASE_URL", db)
        .env("KEYWATCH_LOG", "warn")
        .kill_on_drop(true);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}

/// Runs `args` to completion, killing it with SIGKILL after random delays
/// until `kills` kills are done; returns the number of kills.
pub async fn run_with_kills(
    config: &PathBuf,
    db: &str,
    args: &[&str],
    kills: usize,
    rng: &mut rand::rngs::StdRng,
) -> usize {
    let mut done_kills = 0;
    loop {
        let mut child = keywatch(config, db, args).spawn().unwrap();
        if done_kills < kills {
            let delay = Duration::from_millis(rng.random_range(80..400));
            tokio::select! {
                status = child.wait() => {
                    let status = status.unwrap();
                    assert!(status.success(), "{args:?} failed before it could be killed");
                    return done_kills;
                }
                _ = tokio::time::sleep(delay) => {
                    child.start_kill().unwrap();
                    child.wait().await.unwrap();
                    done_kills += 1;
                }
            }
        } else {
            let out = child.wait_with_output().await.unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return done_kills;
        }
    }
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn sigkill_during_backfill_and_follow_loses_and_duplicates_nothing(pool: PgPool) {
    // A little latency on every response, so kills land mid-run.
    let faults = FaultPlan {
        latency_ms: Some((3, 8)),
        ..FaultPlan::default()
    };
    let sim = crate::ingest::big_chain(600, Some(faults)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let db = database_url(&pool);
    let out = keywatch(
        &cfg,
        &db,
        &[
            "watch",
            "add",
            "acc0.sim.near",
            "acc1.sim.near",
            "acc2.sim.near",
        ],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sim.run_to_end();
    let end = sim.with_chain(|c| c.final_block().header.height);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let from = (START + 1).to_string();
    let mid = (START + 300).to_string();
    let kills_backfill = run_with_kills(
        &cfg,
        &db,
        &["backfill", "--from", &from, "--to", &mid],
        12,
        &mut rng,
    )
    .await;
    let until = end.to_string();
    let kills_follow =
        run_with_kills(&cfg, &db, &["run", "--until-height", &until], 12, &mut rng).await;
    eprintln!("SIGKILLs that landed: {kills_backfill} during backfill, {kills_follow} during run");
    assert!(
        kills_backfill + kills_follow >= 20,
        "only {kills_backfill} + {kills_follow} kills landed"
    );
    assert!(
        kills_backfill >= 5 && kills_follow >= 5,
        "{kills_backfill} / {kills_follow}"
    );

    assert_eq!(
        keywatch::store::cursor(&pool)
            .await
            .unwrap()
            .unwrap()
            .height,
        end
    );
    // no gap: every stored block's parent is stored, from the first cursor on
    let orphans: i64 = sqlx::query_scalar("select count(*) from blocks b where b.block_height > $1 and not exists (select 1 from blocks p where p.block_hash = b.prev_hash)")
        .bind(START as i64)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
    let blocks: i64 = sqlx::query_scalar("select count(*) from blocks")
        .fetch_one(&pool)
        .await
        .unwrap();
    let chain_blocks = sim.with_chain(|c| {
        c.blocks()
            .iter()
            .filter(|b| b.header.height >= START && b.header.height <= end)
            .count()
    });
    assert_eq!(blocks as usize, chain_blocks, "every block once");
    assert_matches_chain(&pool, &sim).await;
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn sigterm_finishes_the_current_block_and_exits_0(pool: PgPool) {
    let sim = Simulator::start(
        big_scenario(100),
        SimOptions {
            clock: Clock::OnRead,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    sim.advance_to(START + 5);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let db = database_url(&pool);
    let out = keywatch(&cfg, &db, &["watch", "add", "acc0.sim.near"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let mut cmd = keywatch(&cfg, &db, &["run"]);
    cmd.stdout(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // wait until it has made progress
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while keywatch::store::cursor(&pool)
        .await
        .unwrap()
        .is_none_or(|c| c.height < START + 20)
    {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::support::signal(child.id().unwrap(), "TERM");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("exits promptly")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
    assert!(
        stdout.contains(&format!("stopped at block {}", cursor.height)),
        "{stdout}"
    );
    assert_matches_chain(&pool, &sim).await;
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn reconcile_exits_1_on_drift_and_0_once_corrected(pool: PgPool) {
    let sim = crate::ingest::big_chain(40, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let db = database_url(&pool);
    assert!(
        keywatch(&cfg, &db, &["watch", "add", "acc0.sim.near"])
            .output()
            .await
            .unwrap()
            .status
            .success()
    );
    sim.run_to_end();
    let end = sim
        .with_chain(|c| c.final_block().header.height)
        .to_string();
    let out = keywatch(&cfg, &db, &["run", "--until-height", &end])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sqlx::query("update current_accounts set locked = locked + 5")
        .execute(&pool)
        .await
        .unwrap();
    let mut cmd = keywatch(&cfg, &db, &["reconcile", "acc0.sim.near"]);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("drift on acc0.sim.near: current state vs history at block"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut cmd = keywatch(&cfg, &db, &["reconcile"]);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("no drift: 1 account(s) match the chain at block")
    );
    // an account that is not watched is bad input, not drift
    let out = keywatch(&cfg, &db, &["reconcile", "acc5.sim.near"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("acc5.sim.near not watched"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The attack story up to 1008 (one alert at 1006 for an expected-keys
/// config, two without), and a config that starts at 1001.
async fn story_up_to_1008() -> (Simulator, tempfile::TempDir, PathBuf) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml");
    let scenario = keywatch::sim::Scenario::load(&path).unwrap();
    attack_story(
        scenario,
        SimOptions {
            until: Some(1008),
            ..SimOptions::default()
        },
    )
    .await
}

/// The attack story (`scenario`) served from 1002 on, and a config that
/// follows it from 1001.
pub async fn attack_story(
    scenario: keywatch::sim::Scenario,
    options: SimOptions,
) -> (Simulator, tempfile::TempDir, PathBuf) {
    let sim = Simulator::start(scenario, options).await.unwrap();
    sim.advance_to(1002);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[ingest]\n", "[ingest]\nstart = 1001\n");
    std::fs::write(&cfg, text).unwrap();
    (sim, dir, cfg)
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_kill_after_the_smtp_server_took_a_message_gives_at_most_one_duplicate(pool: PgPool) {
    use crate::smtp::{Mode, SmtpServer};
    let smtp = SmtpServer::start().await;
    let (sim, _dir, cfg) = story_up_to_1008().await;
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[notify]\nmax_age = \"3650days\"\nretry_min = \"100ms\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"60s\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    assert!(
        keywatch(&cfg, &db, &["watch", "add", "treasury.near"])
            .output()
            .await
            .unwrap()
            .status
            .success()
    );
    sim.advance_to(1008);
    // The server keeps the message and never confirms it; keywatch is killed
    // while waiting for the confirmation.
    smtp.set_mode(Mode::StallAfterData);
    let mut child = keywatch(&cfg, &db, &["run", "--until-height", "1006"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while smtp.mails().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let pending: i64 =
        sqlx::query_scalar("select count(*) from alert_log where status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let all: i64 = sqlx::query_scalar("select count(*) from alert_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, all, "none marked sent");
    smtp.set_mode(Mode::Accept);
    let out = keywatch(&cfg, &db, &["run", "--until-height", "1006"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mails = smtp.mails();
    let mut per_id: std::collections::BTreeMap<String, usize> = Default::default();
    for m in &mails {
        *per_id.entry(m.header("Message-ID").unwrap()).or_default() += 1;
    }
    let alerts: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        per_id.len() as i64,
        alerts,
        "every alert arrived: {per_id:?}"
    );
    let stalled = mails[0].header("Message-ID").unwrap();
    assert_eq!(
        per_id[&stalled], 2,
        "the interrupted one arrived again, with the same Message-ID"
    );
    assert!(
        per_id.values().all(|n| *n <= 2),
        "at most one duplicate: {per_id:?}"
    );
    assert_eq!(per_id.values().filter(|n| **n == 2).count(), 1);
    let statuses: Vec<(String, i32)> = sqlx::query_as("select status, attempts from alert_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        statuses.iter().all(|(s, a)| s == "delivered" && *a == 1),
        "the killed attempt left no record; nothing lost: {statuses:?}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn keywatch_alerts_shows_a_permanent_rejection(pool: PgPool) {
    use crate::smtp::{Mode, SmtpServer};
    let smtp = SmtpServer::start().await;
    smtp.set_mode(Mode::Reject550);
    let (sim, _dir, cfg) = story_up_to_1008().await;
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[notify]\nmax_age = \"3650days\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n[[accounts]]\nid = \"treasury.near\"\nexpected_keys = [\"ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    sim.advance_to(1008);
    let out = keywatch(
        &cfg,
        &db,
        &["run", "--until-height", "1006", "--drain-timeout", "10s"],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cmd = keywatch(&cfg, &db, &["alerts"]);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(listing.contains("[critical] New full-access key on treasury.near (block 1006)  email: failed after 1 attempt(s) (last error: smtp: permanent error (550)"), "{listing}");
    let mut cmd = keywatch(&cfg, &db, &["alerts", "--json"]);
    cmd.stdout(std::process::Stdio::piped());
    let json: serde_json::Value =
        serde_json::from_slice(&cmd.output().await.unwrap().stdout).unwrap();
    assert_eq!(json["deliveries"][0]["status"], "failed");
    assert_eq!(json["deliveries"][0]["attempts"], 1);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_deleted_account_s_history_is_backfilled_with_no_extra_flag(pool: PgPool) {
    // bob.near is deleted at 1028; the head is past it
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml");
    let sim = Simulator::start(
        keywatch::sim::Scenario::load(&path).unwrap(),
        SimOptions::default(),
    )
    .await
    .unwrap();
    sim.run_to_end();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[[accounts]]\nid = \"bob.near\"\n");
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    let out = keywatch(&cfg, &db, &["backfill", "--from", "1001", "--to", "1030"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deleted: Vec<i64> = sqlx::query_scalar(
        "select block_height from balance_history where account_id = 'bob.near' and deleted",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(deleted, [1028], "the deletion is in bob.near's history");
    let allow_missing: bool = sqlx::query_scalar(
        "select allow_missing from watched_accounts where account_id = 'bob.near'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!allow_missing, "it existed where its baseline was read");
}
