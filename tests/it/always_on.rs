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

/// Every fault kind the simulator has, `total` of all requests together.
pub fn every_fault(seed: u64, total: f64) -> FaultPlan {
    let kinds = [
        FaultKind::RateLimit { retry_after: 0 },
        FaultKind::BadGateway,
        FaultKind::Unavailable,
        FaultKind::Truncated,
        FaultKind::Malformed,
        // longer than the 2 s client timeout of the test config
        FaultKind::Slow { millis: 2_500 },
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

async fn watch(cfg: &std::path::PathBuf, db: &str, accounts: &[&str]) {
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
    let sim = Simulator::start(big_scenario(300), SimOptions::default())
        .await
        .unwrap();
    sim.advance_to(START + 5);
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
    sim.set_faults(every_fault(7, 0.20));
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
    let sim = Simulator::start(big_scenario(400), SimOptions::default())
        .await
        .unwrap();
    sim.advance_to(START + 5);
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
        stalled.data.contains("rpc unreachable"),
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
