//! `run` as a service one leaves running for months: the real binary
//! against a simulator that fails a fifth of its requests, is killed at
//! random moments, and loses its rpc node entirely for a minute. It must
//! end only by its own `--until-height`, with history equal to the chain,
//! and say so when it is blind.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keywatch::sim::{FaultKind, FaultPlan, FaultRule, SimOptions, Simulator};
use rand::SeedableRng;
use sqlx::PgPool;

use crate::crash::{config, database_url, keywatch, run_with_kills};
use crate::ingest::{START, assert_matches_chain, big_scenario};
use crate::smtp::SmtpServer;
use crate::support::signal;

/// Every fault kind the simulator has, `total` of all requests together;
/// slow answers take `slow_ms` (longer than the client's timeout).
pub fn every_fault(seed: u64, total: f64, slow_ms: u64) -> FaultPlan {
    let kinds = [
        FaultKind::RateLimit { retry_after: 0 },
        FaultKind::BadGateway,
        FaultKind::Unavailable,
        FaultKind::Truncated,
        FaultKind::Malformed,
        FaultKind::Slow { millis: slow_ms },
        FaultKind::Drop,
        FaultKind::Internal,
        FaultKind::Timeout,
    ];
    let each = total / kinds.len() as f64;
    FaultPlan {
        seed,
        rules: kinds
            .into_iter()
            .map(|kind| FaultRule {
                method: None,
                kind,
                probability: Some(each),
                requests: vec![],
            })
            .collect(),
        latency_ms: Some((0, 3)),
    }
}

/// Every request fails: the node is gone.
pub fn outage() -> FaultPlan {
    FaultPlan {
        seed: 0,
        rules: vec![FaultRule {
            method: None,
            kind: FaultKind::Unavailable,
            probability: Some(1.0),
            requests: vec![],
        }],
        latency_ms: None,
    }
}

/// Only 3 attempts per url, as shipped, so a run of faults does exhaust
/// the client: only the follower's own retries keep `run` alive.
fn shipped_attempts(cfg: &std::path::Path) {
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("attempts_per_url = 10", "attempts_per_url = 3");
    std::fs::write(cfg, text).unwrap();
}

pub async fn watch(cfg: &std::path::PathBuf, db: &str, accounts: &[&str]) {
    let mut args = vec!["watch", "add"];
    args.extend_from_slice(accounts);
    let out = keywatch(cfg, db, &args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn run_under_20_percent_faults_and_sigkills_ends_only_at_its_until_height(pool: PgPool) {
    let sim = crate::ingest::big_chain(300, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    shipped_attempts(&cfg);
    let db = database_url(&pool);
    watch(
        &cfg,
        &db,
        &["acc0.sim.near", "acc1.sim.near", "acc2.sim.near"],
    )
    .await;
    sim.run_to_end();
    let end = sim.with_chain(|c| c.final_block().header.height);
    // slower than the 2 s client timeout of the test config
    sim.set_faults(every_fault(7, 0.20, 2_500));
    let mut rng = rand::rngs::StdRng::seed_from_u64(88);
    let until = end.to_string();
    let kills = run_with_kills(&cfg, &db, &["run", "--until-height", &until], 6, &mut rng).await;
    eprintln!("run reached {end} through {kills} SIGKILLs at 20% faults");
    assert_eq!(
        keywatch::store::cursor(&pool)
            .await
            .unwrap()
            .unwrap()
            .height,
        end
    );
    let orphans: i64 = sqlx::query_scalar("select count(*) from blocks b where b.block_height > (select min(block_height) from blocks) and not exists (select 1 from blocks p where p.block_hash = b.prev_hash)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0, "no gap");
    assert_matches_chain(&pool, &sim).await;
}

/// A loopback receiver for heartbeat pings: when each arrived.
async fn heartbeat_receiver() -> (String, Arc<Mutex<Vec<Instant>>>) {
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = pings.clone();
    let app = axum::Router::new().route(
        "/ping/{token}",
        axum::routing::get(move || {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                "OK"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/ping/secret-check-token",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, pings)
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_60_second_rpc_outage_is_mailed_while_it_lasts_and_run_catches_up(pool: PgPool) {
    const OUTAGE: Duration = Duration::from_secs(60);
    const AFTER: Duration = Duration::from_secs(10);
    let smtp = SmtpServer::start().await;
    let (beat_url, pings) = heartbeat_receiver().await;
    let sim = crate::ingest::big_chain(400, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    shipped_attempts(&cfg);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[rules.ingest_stalled]\nafter = \"10s\"\n[notify]\nmax_age = \"3650days\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\nheartbeat_every = \"200ms\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    watch(&cfg, &db, &["acc0.sim.near"]).await;
    let end = START + 300;
    let mut cmd = keywatch(&cfg, &db, &["run", "--until-height", &end.to_string()]);
    cmd.env("KEYWATCH__NOTIFY__HEARTBEAT_URL", &beat_url);
    // The log of a minute of retries outgrows a pipe nobody reads.
    let log_path = dir.path().join("run.log");
    cmd.stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = cmd.spawn().unwrap();

    // a live chain: one block every 100 ms, the node gone from 3 s for 60 s
    let started = Instant::now();
    let outage_from = started + Duration::from_secs(3);
    let outage_to = outage_from + OUTAGE;
    let mut in_outage = false;
    let mut stalled_mail_at = None;
    let exit = loop {
        let now = Instant::now();
        if !in_outage && now >= outage_from && now < outage_to {
            sim.set_faults(outage());
            in_outage = true;
        }
        if in_outage && now >= outage_to {
            sim.set_faults(FaultPlan::default());
            in_outage = false;
            assert!(
                child.try_wait().unwrap().is_none(),
                "run exited during the outage"
            );
        }
        sim.advance(1);
        if stalled_mail_at.is_none()
            && smtp.mails().iter().any(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.contains("keywatch is blind"))
            })
        {
            stalled_mail_at = Some(now);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if now > outage_to + Duration::from_secs(90) {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            let log = std::fs::read_to_string(&log_path).unwrap();
            panic!(
                "run did not catch up after the outage: {}",
                &log[log.len().saturating_sub(4000)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exit.success(),
        "run failed: {}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    assert!(
        Instant::now() >= outage_to,
        "ended by its --until-height only after the outage"
    );
    let at = stalled_mail_at.expect("ingest_stalled arrived by mail");
    eprintln!(
        "ingest_stalled mailed {:.1} s into the outage (after = {AFTER:?})",
        (at - outage_from).as_secs_f64()
    );
    assert!(
        at < outage_to,
        "the stall was mailed during the outage, not after"
    );
    let mails = smtp.mails();
    let stalled = mails
        .iter()
        .find(|m| m.header("Subject").unwrap().contains("keywatch is blind"))
        .unwrap();
    assert!(
        stalled.data.contains("rpc failing (waiting on block "),
        "says why: {}",
        stalled.data
    );
    assert!(
        mails
            .iter()
            .any(|m| m.data.contains("keywatch ingests again after being blind")),
        "ingest_recovered was delivered"
    );
    let rules: Vec<(String, String)> = sqlx::query_as(
        "select rule, status from alert_log where rule in ('ingest_stalled', 'ingest_recovered') order by alert_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rules,
        [
            ("ingest_stalled".to_owned(), "delivered".to_owned()),
            ("ingest_recovered".to_owned(), "delivered".to_owned())
        ],
        "one of each, recorded and delivered"
    );
    // the dead-man's switch: pinged while advancing, silent while blind
    let pings = pings.lock().unwrap().clone();
    assert!(pings.iter().any(|t| *t < outage_from), "pinged before");
    assert!(pings.iter().any(|t| *t > outage_to), "pinged after");
    let blind_from = outage_from + AFTER + Duration::from_secs(2);
    assert!(
        !pings.iter().any(|t| *t > blind_from && *t < outage_to),
        "no ping while blind"
    );
    assert_matches_chain(&pool, &sim).await;
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn with_the_database_down_the_stall_is_mailed_and_recorded_once_it_returns(pool: PgPool) {
    use keywatch::health::{Dependency, Health, Role};
    use keywatch::ingest::watchdog::{WatchState, Watchdog};
    use keywatch::store::Cursor;
    let smtp = SmtpServer::start().await;
    let proxy = crate::proxy::TcpProxy::start(crate::proxy::postgres_addr()).await;
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let text = format!(
        "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\nchain_id = \"localnet\"\n[rules.ingest_stalled]\nafter = \"200ms\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    );
    let settings = keywatch::config::Settings::from_toml(
        &text,
        std::path::Path::new("t.toml"),
        &Default::default(),
    )
    .unwrap();
    let through_proxy = keywatch::store::connect_lazy(&proxy.url(&db), 2).unwrap();
    let health = Arc::new(Health::default());
    let channels = Arc::new(keywatch::notify::Channels::from_settings(&settings).unwrap());
    let dog = Watchdog::new(
        through_proxy,
        &settings,
        health.clone(),
        channels,
        Arc::new(chrono::Utc::now),
    )
    .unwrap();
    let at = |height: u64| Cursor {
        height,
        hash: format!("{height}"),
        timestamp_ns: 1_700_000_000_000_000_000,
    };
    health.set_role(Role::Leader);
    health.committed(&at(100));
    proxy.set_up(false);
    health.failed(Dependency::Database, "connection refused");
    let mut state = WatchState::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while smtp.mails().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no stall mail with the database down"
        );
        dog.check(&mut state).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mail = &smtp.mails()[0];
    let subject = mail.header("Subject").unwrap();
    assert!(
        subject.starts_with("[CRITICAL] keywatch is blind"),
        "{subject}"
    );
    assert!(subject.contains("database unreachable"), "{subject}");
    assert!(state.is_blind());
    assert_eq!(state.unrecorded(), 1, "kept in memory");
    let stored: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // the database returns: written as delivered, under the same identity
    proxy.set_up(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.unrecorded() > 0 {
        assert!(Instant::now() < deadline, "never recorded");
        dog.check(&mut state).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (dedup, status, attempts): (String, String, i32) = sqlx::query_as(
        "select a.dedup_key, d.status, d.attempts from alerts a join alert_deliveries d on d.alert_id = a.id where a.rule = 'ingest_stalled'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("delivered", 1));
    assert!(
        mail.header("Message-ID")
            .unwrap()
            .contains(&keywatch::notify::alert_identity(&dedup)),
        "the mail and the row are one alert"
    );
    assert_eq!(smtp.mails().len(), 1, "sent once");
    // progress: one ingest_recovered, queued for the dispatcher
    health.committed(&at(101));
    dog.check(&mut state).await;
    assert!(!state.is_blind());
    let recovered: Vec<(String, String)> = sqlx::query_as(
        "select a.title, d.status from alerts a join alert_deliveries d on d.alert_id = a.id where a.rule = 'ingest_recovered'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(recovered.len(), 1);
    assert!(
        recovered[0]
            .0
            .starts_with("keywatch ingests again after being blind for")
    );
    assert_eq!(recovered[0].1, "pending");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn run_says_why_on_every_channel_before_it_exits_on_a_broken_chain(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let sim = crate::ingest::big_chain(100, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[ingest]\n", &format!("[ingest]\nstart = {}\n", START + 1));
    text.push_str(&format!(
        "[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    watch(&cfg, &db, &["acc0.sim.near"]).await;
    sim.run_to_end();
    let bad = START + 30;
    assert!(sim.tamper(bad, |b| b.header.prev_hash =
        keywatch::domain::CryptoHash::from_bytes([3; 32])));
    let out = keywatch(&cfg, &db, &["run"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stopped: Vec<String> = smtp
        .mails()
        .iter()
        .filter_map(|m| m.header("Subject"))
        .filter(|s| s.contains("keywatch stopped"))
        .collect();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert!(stopped[0].starts_with("[CRITICAL]"), "{}", stopped[0]);
    assert!(
        stopped[0].contains(&format!("block {bad}")),
        "names the block: {}",
        stopped[0]
    );
    let recorded: i64 = sqlx::query_scalar(
        "select count(*) from alert_log where rule = 'ingest_stopped' and status = 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn reconcile_and_watch_add_from_another_process_succeed_while_run_follows_a_live_chain(
    pool: PgPool,
) {
    use keywatch::sim::scenario::GenSpec;
    use keywatch::sim::{Clock, Scenario};
    // 100 watched accounts and 5 more to add, a block every 600 ms
    let mut scenario = Scenario::generate(&GenSpec {
        seed: 5,
        accounts: 105,
        blocks: 2_000,
        actions_per_block: 4,
        start_height: START,
    });
    scenario.chain.block_time = Duration::from_millis(600);
    let sim = Simulator::start(
        scenario,
        SimOptions {
            clock: Clock::RealTime,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // the shipped request budget and poll interval
    let cfg = config(&dir, &sim.url());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("requests_per_second = 0", "requests_per_second = 15")
        .replace("poll_interval = \"20ms\"", "poll_interval = \"500ms\"");
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    let first: Vec<String> = (0..100).map(|i| format!("acc{i}.sim.near")).collect();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    watch(&cfg, &db, &first).await;
    let mut follower = keywatch(&cfg, &db, &["run"]).spawn().unwrap();
    // following: the cursor moves
    let deadline = Instant::now() + Duration::from_secs(60);
    let start = loop {
        if let Some(c) = keywatch::store::cursor(&pool).await.unwrap() {
            break c.height;
        }
        assert!(Instant::now() < deadline, "run never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    let mut cmd = keywatch(&cfg, &db, &["reconcile"]);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "reconcile: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no drift: 100 account(s) match the chain"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // it ran inside the leader (on the budget following leaves), not here
    let (claimed_by, finished): (Option<String>, bool) = sqlx::query_as(
        "select claimed_by, finished_at is not null from requests where kind = 'reconcile'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let leader: String = sqlx::query_scalar("select holder from leader_lease")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(finished, "the leader answered");
    assert!(
        claimed_by
            .as_deref()
            .is_some_and(|c| c.starts_with(&format!("{leader}#"))),
        "claimed by the leader (name#epoch): {claimed_by:?}"
    );
    // status from a third process: the leader's own readiness and figures
    let mut cmd = keywatch(&cfg, &db, &["status", "--json"]);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{status}");
    assert_eq!(
        (
            &status["ready"],
            &status["leader"]["name"],
            &status["watched_accounts"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(leader),
            &serde_json::json!(100)
        ),
        "{status}"
    );
    assert_eq!(status["last_reconcile"]["accounts"], 100, "{status}");
    assert_eq!(status["last_reconcile"]["differences"], 0, "{status}");
    let started = Instant::now();
    let more = [
        "acc100.sim.near",
        "acc101.sim.near",
        "acc102.sim.near",
        "acc103.sim.near",
        "acc104.sim.near",
    ];
    let mut args = vec!["watch", "add"];
    args.extend_from_slice(&more);
    let mut cmd = keywatch(&cfg, &db, &args);
    cmd.stdout(std::process::Stdio::piped());
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "watch add: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.matches("baseline at block").count(),
        5,
        "each added with a baseline: {stdout}"
    );
    let now = keywatch::store::cursor(&pool)
        .await
        .unwrap()
        .unwrap()
        .height;
    eprintln!(
        "while following ({start} -> {now}): reconcile of 100 accounts took {:.1} s, watch add of 5 {:.1} s",
        took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(now > start, "the follower kept following");
    follower.start_kill().unwrap();
    follower.wait().await.unwrap();
}

/// The pid in the lease holder's name (`keywatch-<pid>-<random>`).
pub async fn leader_pid(pool: &PgPool) -> Option<u32> {
    let holder: Option<String> = sqlx::query_scalar(
        "select holder from leader_lease where renewed_at > now() - interval '1 hour'",
    )
    .fetch_optional(pool)
    .await
    .unwrap();
    holder.and_then(|h| h.split('-').nth(1).and_then(|p| p.parse().ok()))
}

/// Advances the chain a block every 100 ms until `done` (or `limit`
/// passes: then panics); returns how long it took.
pub async fn live_chain_until<F, Fut>(sim: &Simulator, limit: Duration, mut done: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if done().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}");
        sim.advance(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Advances the chain a block every 100 ms for `d`.
async fn live_chain_for(sim: &Simulator, d: Duration) {
    let end = Instant::now() + d;
    live_chain_until(sim, d + Duration::from_secs(5), || async move {
        Instant::now() >= end
    })
    .await;
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_standby_takes_over_from_a_killed_and_from_a_frozen_leader(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let sim = crate::ingest::big_chain(900, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[ingest]\n", "[ingest]\ntakeover_after = \"2s\"\n");
    text.push_str(&format!(
        "[rules.ingest_stalled]\nafter = \"3s\"\n[notify]\nmax_age = \"3650days\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    watch(
        &cfg,
        &db,
        &["acc0.sim.near", "acc1.sim.near", "acc2.sim.near"],
    )
    .await;
    let spawn = |name: &str| {
        let mut cmd = keywatch(&cfg, &db, &["run"]);
        cmd.stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap());
        cmd.spawn().unwrap()
    };
    let cursor = || async {
        keywatch::store::cursor(&pool)
            .await
            .unwrap()
            .map(|c| c.height)
    };

    let mut a = spawn("a");
    let a_pid = a.id().unwrap();
    live_chain_until(&sim, Duration::from_secs(60), || async {
        leader_pid(&pool).await == Some(a_pid) && cursor().await.is_some()
    })
    .await;
    let mut b = spawn("b");
    let b_pid = b.id().unwrap();
    live_chain_for(&sim, Duration::from_secs(2)).await;
    assert_eq!(leader_pid(&pool).await, Some(a_pid), "b waits as a standby");
    let mut lease_conn = pool.acquire().await.unwrap();
    let seen = keywatch::store::lease::overview(&mut lease_conn)
        .await
        .unwrap()
        .unwrap();
    drop(lease_conn);
    assert_eq!(seen.standbys, 1, "status counts b as a standby: {seen:?}");

    // the leader is killed: b takes over
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed_at = cursor().await.unwrap();
    let took = live_chain_until(&sim, Duration::from_secs(30), || async {
        leader_pid(&pool).await == Some(b_pid) && cursor().await.unwrap() > killed_at
    })
    .await;
    eprintln!(
        "takeover after SIGKILL: {:.2} s (takeover_after 2 s)",
        took.as_secs_f64()
    );

    // the new leader freezes: c ends its sessions and takes over
    let mut c = spawn("c");
    let c_pid = c.id().unwrap();
    live_chain_for(&sim, Duration::from_secs(1)).await;
    signal(b_pid, "STOP");
    let frozen_at = cursor().await.unwrap();
    let took = live_chain_until(&sim, Duration::from_secs(30), || async {
        leader_pid(&pool).await == Some(c_pid) && cursor().await.unwrap() > frozen_at
    })
    .await;
    eprintln!(
        "takeover after SIGSTOP: {:.2} s (takeover_after 2 s)",
        took.as_secs_f64()
    );
    live_chain_for(&sim, Duration::from_secs(2)).await;
    // b wakes up deposed: it steps down and stays up as a standby
    signal(b_pid, "CONT");
    live_chain_for(&sim, Duration::from_secs(4)).await;
    assert!(
        b.try_wait().unwrap().is_none(),
        "the deposed leader stays up"
    );
    assert_eq!(leader_pid(&pool).await, Some(c_pid));

    // the rest of the chain, then a clean stop of both
    sim.run_to_end();
    let end = sim.with_chain(|ch| ch.final_block().header.height);
    live_chain_until(&sim, Duration::from_secs(60), || async {
        cursor().await.unwrap() >= end
    })
    .await;
    signal(c_pid, "TERM");
    signal(b_pid, "TERM");
    assert!(c.wait().await.unwrap().success());
    assert!(b.wait().await.unwrap().success());

    let orphans: i64 = sqlx::query_scalar("select count(*) from blocks b where b.block_height > (select min(block_height) from blocks) and not exists (select 1 from blocks p where p.block_hash = b.prev_hash)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0, "no gap");
    assert_matches_chain(&pool, &sim).await;
    // every alert went out under its one identity, and nobody cried stall
    let mails = smtp.mails();
    assert!(
        !mails
            .iter()
            .any(|m| m.header("Subject").unwrap().contains("keywatch is blind")),
        "no false ingest_stalled from a deposed leader"
    );
    // an alert's mail is named by its dedup key, or by the digest it went in
    let sent: Vec<(String, Option<String>)> = sqlx::query_as(
        "select a.dedup_key, d.batch_id from alerts a join alert_deliveries d on d.alert_id = a.id
         where d.channel = 'email' and d.status = 'delivered'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!sent.is_empty(), "the story raised alerts");
    let identities: std::collections::BTreeSet<String> = sent
        .iter()
        .map(|(dedup, batch)| match batch {
            Some(b) => b.clone(),
            None => keywatch::notify::alert_identity(dedup),
        })
        .collect();
    let ids: std::collections::BTreeSet<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    for id in &ids {
        assert!(
            identities.iter().any(|i| id.contains(i.as_str())),
            "a mail under an identity no alert has: {id}"
        );
    }
    assert_eq!(
        ids.len(),
        identities.len(),
        "one Message-ID per alert (or digest)"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_start_from_a_past_height_suppresses_old_alerts_until_it_first_reaches_the_head(
    pool: PgPool,
) {
    use keywatch::config::StartAt;
    use keywatch::ingest::alerts::AlertContext;
    use keywatch::ingest::follower::{FollowOptions, follow};
    use std::sync::atomic::Ordering;
    let sim = Simulator::start(big_scenario(60), SimOptions::default())
        .await
        .unwrap();
    sim.advance_to(START + 40);
    let rpc = crate::ingest::client(&sim.url());
    keywatch::ingest::baseline::init_cursor(&pool, &rpc, StartAt::Height(START + 1))
        .await
        .unwrap();
    assert!(
        keywatch::store::from_history(&pool).await.unwrap(),
        "a first start from a past height is a backfill"
    );
    let settings = keywatch::config::Settings::from_toml(
        "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\nchain_id = \"localnet\"\n",
        std::path::Path::new("t.toml"),
        &Default::default(),
    )
    .unwrap();
    let ctx = AlertContext::from_settings(&settings);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let following = {
        let (pool, ctx) = (pool.clone(), ctx.clone());
        tokio::spawn(async move {
            let opts = FollowOptions {
                poll_interval: Duration::from_millis(20),
                ..FollowOptions::default()
            };
            follow(&pool, &rpc, &opts, Some(&ctx), stop).await.unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while keywatch::store::from_history(&pool).await.unwrap() {
        assert!(Instant::now() < deadline, "never reached the head");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    let summary = following.await.unwrap();
    assert!(summary.last_height >= START + 30);
    assert!(
        !ctx.suppress_old.load(Ordering::Relaxed),
        "at the head, missed blocks become a catch-up"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn alerts_of_blocks_missed_while_down_are_sent_late_critical_alone_the_rest_in_one_digest(
    pool: PgPool,
) {
    let smtp = SmtpServer::start().await;
    let mut story = keywatch::sim::Scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml"),
    )
    .unwrap();
    // the story happened ten minutes ago: recent enough for max_age, too
    // old to be news without a "late" mark
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    story.chain.genesis_time_ns = now_ns - 600_000_000_000 - 40 * 600_000_000;
    let sim = Simulator::start(story, SimOptions::default())
        .await
        .unwrap();
    sim.advance_to(1005);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[notify]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n\n[[accounts]]\nid = \"treasury.near\"\nexpected_keys = [\"ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6\"]\n[[accounts]]\nid = \"relayer.near\"\n[[accounts]]\nid = \"bob.near\"\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    let db = database_url(&pool);
    // keywatch follows from the head, then is down while the story happens
    let first = keywatch(&cfg, &db, &["run", "--exit-when-caught-up"])
        .output()
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(smtp.mails().is_empty());
    let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
    assert!(
        cursor.height < 1006,
        "the story's keys come later: {cursor:?}"
    );
    sim.advance_to(1045);
    let second = keywatch(&cfg, &db, &["run", "--until-height", "1040"])
        .output()
        .await
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let alerts: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("select title, severity, details from alerts order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        alerts.iter().any(|(t, _, _)| t.contains("full-access key")),
        "the key added while keywatch was down is alerted: {alerts:?}"
    );
    assert!(
        alerts.iter().all(|(_, _, d)| d["late"] == true),
        "every alert of a missed block is marked late: {alerts:?}"
    );
    let critical: Vec<&String> = alerts
        .iter()
        .filter(|(_, s, _)| s == "critical")
        .map(|(t, _, _)| t)
        .collect();
    let rest = alerts.len() - critical.len();
    assert!(!critical.is_empty() && rest > 1, "{alerts:?}");
    let mails = smtp.mails();
    assert_eq!(
        mails.len(),
        critical.len() + 1,
        "critical alerts one by one, the rest in one digest: {:?}",
        mails
            .iter()
            .map(|m| m.header("Subject"))
            .collect::<Vec<_>>()
    );
    for title in &critical {
        let mail = mails
            .iter()
            .find(|m| {
                m.header("Subject")
                    .is_some_and(|s| s.ends_with(title.as_str()))
            })
            .unwrap_or_else(|| panic!("no mail for {title}"));
        assert!(
            mail.data.contains("decided while catching up"),
            "{}",
            mail.data
        );
    }
    let digest = mails
        .iter()
        .find(|m| {
            m.header("Subject")
                .is_some_and(|s| s.contains(&format!("{rest} alerts on")))
        })
        .expect("one digest of the warning and info alerts");
    assert!(digest.data.contains("decided while catching up"));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_leader_that_takes_over_mid_stall_closes_it_with_ingest_recovered(pool: PgPool) {
    use keywatch::config::Severity;
    use keywatch::health::{Health, Role};
    use keywatch::ingest::watchdog::{WatchState, Watchdog};
    use keywatch::rules::AlertDraft;
    use keywatch::store::Cursor;
    use keywatch::store::alerts::{Decided, insert};
    // the former leader raised ingest_stalled 20 minutes ago, then died
    let blind_since = chrono::Utc::now() - chrono::Duration::minutes(20);
    let mut tx = pool.begin().await.unwrap();
    let stalled = AlertDraft {
        rule: "ingest_stalled",
        severity: Severity::Critical,
        account_id: String::new(),
        public_key: None,
        title: "keywatch is blind".to_owned(),
        details: serde_json::json!({"blind_since": blind_since}),
    };
    let at = Decided {
        block_height: 100,
        block_hash: "h100",
        block_time: blind_since,
    };
    insert(&mut tx, &stalled, &at, &[], true).await.unwrap();
    tx.commit().await.unwrap();
    let settings = keywatch::config::Settings::from_toml(
        "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\nchain_id = \"localnet\"\n[rules.ingest_stalled]\nafter = \"10s\"\n",
        std::path::Path::new("t.toml"),
        &Default::default(),
    )
    .unwrap();
    let health = Arc::new(Health::default());
    let dog = Watchdog::new(
        pool.clone(),
        &settings,
        health.clone(),
        Arc::new(keywatch::notify::Channels::from_settings(&settings).unwrap()),
        Arc::new(chrono::Utc::now),
    )
    .unwrap();
    let at = |height: u64| Cursor {
        height,
        hash: format!("h{height}"),
        timestamp_ns: 1_700_000_000_000_000_000,
    };
    health.set_role(Role::Leader);
    health.at_cursor(&at(100));
    let mut state = WatchState::default();
    dog.check(&mut state).await;
    assert!(state.is_blind(), "the open episode is adopted");
    // the new leader makes progress
    tokio::time::sleep(Duration::from_millis(20)).await;
    health.committed(&at(101));
    dog.check(&mut state).await;
    assert!(!state.is_blind());
    let titles: Vec<String> =
        sqlx::query_scalar("select title from alerts where rule = 'ingest_recovered'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(titles.len(), 1, "{titles:?}");
    assert!(
        titles[0].starts_with("keywatch ingests again after being blind for 20m"),
        "{titles:?}"
    );
    // closed: a later leadership finds nothing to adopt
    let mut again = WatchState::default();
    dog.check(&mut again).await;
    assert!(!again.is_blind());
}
