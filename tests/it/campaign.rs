//! The fault campaign: the real binary, two or three `run` processes on one
//! private PostgreSQL cluster, through everything at once: 20% rpc faults
//! of every kind, SIGKILLs of the leader and of random processes, a frozen
//! (SIGSTOPped) leader, a 60 s rpc outage, a PostgreSQL restart and an SMTP
//! server that refuses for a minute. Afterwards history equals the chain,
//! every block is stored once, every alert was delivered under exactly one
//! identity, and the outage raised `ingest_stalled` and `ingest_recovered`.
//! Times are printed, not asserted. `KEYWATCH_CAMPAIGN=long` repeats the
//! cycle for 30 minutes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::always_on::{every_fault, leader_pid, outage, watch};
use crate::crash::{config, keywatch};
use crate::ingest::assert_matches_chain;
use crate::pgcluster::PgCluster;
use crate::smtp::{Mode, SmtpServer};
use crate::support::signal;

/// One event of a cycle, at its offset in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    KillLeader,
    RestartDatabase,
    OutageStarts,
    OutageEnds,
    SmtpRefuses,
    FreezeLeader,
    ThawLeader,
    KillAny,
    SmtpAccepts,
}

const CYCLE: Duration = Duration::from_secs(150);
/// The live chain's block interval.
const BLOCK: Duration = Duration::from_millis(200);
const EVENTS: &[(u64, Event)] = &[
    (5, Event::KillLeader),
    (15, Event::RestartDatabase),
    (25, Event::OutageStarts),
    (85, Event::OutageEnds),
    (90, Event::SmtpRefuses),
    (100, Event::FreezeLeader),
    (110, Event::ThawLeader),
    (125, Event::KillAny),
    (150, Event::SmtpAccepts),
];

struct Fleet {
    cfg: std::path::PathBuf,
    db: String,
    dir: std::path::PathBuf,
    procs: BTreeMap<u32, tokio::process::Child>,
    started: usize,
}

impl Fleet {
    fn spawn(&mut self) -> u32 {
        self.started += 1;
        let mut cmd = keywatch(&self.cfg, &self.db, &["run"]);
        let log = self.dir.join(format!("run-{}.log", self.started));
        cmd.stderr(std::fs::File::create(log).unwrap());
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        self.procs.insert(pid, child);
        pid
    }

    async fn kill(&mut self, pid: u32) {
        if let Some(mut child) = self.procs.remove(&pid) {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Every process still runs (none exited on a fault).
    fn all_alive(&mut self) {
        for (pid, child) in self.procs.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "run {pid} exited during the campaign"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_campaign_keeps_history_exact_and_every_alert_delivered_once() {
    let long = std::env::var("KEYWATCH_CAMPAIGN").as_deref() == Ok("long");
    let cycles = if long { 12 } else { 1 };
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let admin = PgPool::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("create database campaign")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let db = cluster.url("campaign");
    let smtp = SmtpServer::start().await;
    // the scripted story ends before the cycles do; the chain goes on empty
    let blocks = 500 * cycles as u64 + 200;
    let sim = crate::ingest::big_chain(blocks, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, &sim.url());
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("attempts_per_url = 10", "attempts_per_url = 3")
        .replace("backoff_max = \"10ms\"", "backoff_max = \"500ms\"")
        .replace("timeout = \"2s\"", "timeout = \"500ms\"")
        .replace("[ingest]\n", "[ingest]\ntakeover_after = \"2s\"\n");
    text.push_str(&format!(
        "[rules.ingest_stalled]\nafter = \"10s\"\n[notify]\nmax_age = \"3650days\"\nmax_attempts = 1000\nretry_min = \"200ms\"\nretry_max = \"2s\"\n[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"\nfrom = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        smtp.port
    ));
    std::fs::write(&cfg, text).unwrap();
    watch(
        &cfg,
        &db,
        &[
            "acc0.sim.near",
            "acc1.sim.near",
            "acc2.sim.near",
            "acc3.sim.near",
            "acc4.sim.near",
            "acc5.sim.near",
        ],
    )
    .await;
    let pool = PgPool::connect(&db).await.unwrap();
    // slow answers outlast the 500 ms client timeout
    sim.set_faults(every_fault(31, 0.20, 700));
    let mut fleet = Fleet {
        cfg: cfg.clone(),
        db: db.clone(),
        dir: dir.path().to_owned(),
        procs: BTreeMap::new(),
        started: 0,
    };
    fleet.spawn();
    fleet.spawn();

    let mut kills = 0;
    let mut frozen: Option<u32> = None;
    let mut outage_started = None;
    let mut stall_mailed = Vec::new();
    let mut takeovers = Vec::new();
    let started = Instant::now();
    // kills land at a random moment within 5 s of their slot
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2026);
    for cycle in 0..cycles {
        let cycle_start = Instant::now();
        let timeline: Vec<(u64, Event)> = EVENTS
            .iter()
            .map(|&(at, e)| match e {
                Event::KillLeader | Event::KillAny => {
                    (at + rand::RngExt::random_range(&mut rng, 0..5), e)
                }
                _ => (at, e),
            })
            .collect();
        let mut events = timeline.iter().peekable();
        while cycle_start.elapsed() < CYCLE {
            if let Some((at, event)) = events.peek()
                && cycle_start.elapsed() >= Duration::from_secs(*at)
            {
                let event = *event;
                events.next();
                let leader = leader_pid(&pool).await;
                eprintln!(
                    "campaign {cycle}/{:.0}s: {event:?}",
                    started.elapsed().as_secs_f64()
                );
                match event {
                    Event::KillLeader | Event::KillAny => {
                        let victim = match (event, leader) {
                            (Event::KillLeader, Some(l)) => Some(l),
                            _ => fleet.procs.keys().copied().nth(cycle % 2),
                        };
                        if let Some(pid) = victim {
                            fleet.kill(pid).await;
                            kills += 1;
                            let killed = Instant::now();
                            fleet.spawn();
                            if Some(pid) == leader {
                                takeovers.push((killed, pid, "SIGKILL"));
                            }
                        }
                    }
                    Event::RestartDatabase => {
                        let c = &cluster;
                        tokio::task::block_in_place(|| {
                            c.stop();
                            std::thread::sleep(Duration::from_secs(3));
                            c.start_again();
                        });
                    }
                    Event::OutageStarts => {
                        sim.set_faults(outage());
                        outage_started = Some(Instant::now());
                    }
                    Event::OutageEnds => sim.set_faults(every_fault(32 + cycle as u64, 0.20, 700)),
                    Event::SmtpRefuses => smtp.set_mode(Mode::Refuse),
                    Event::SmtpAccepts => smtp.set_mode(Mode::Accept),
                    Event::FreezeLeader => {
                        if let Some(l) = leader {
                            signal(l, "STOP");
                            frozen = Some(l);
                            takeovers.push((Instant::now(), l, "SIGSTOP"));
                        }
                    }
                    Event::ThawLeader => {
                        if let Some(l) = frozen.take() {
                            signal(l, "CONT");
                        }
                    }
                }
            }
            if let Some(from) = outage_started
                && stall_mailed.len() <= cycle
                && smtp.mails().iter().any(|m| {
                    m.header("Subject")
                        .is_some_and(|s| s.contains("keywatch is blind") && s.contains("rpc"))
                })
            {
                stall_mailed.push(from.elapsed());
            }
            // measure takeovers: the lease moved away from the victim
            if let Some((at, victim, how)) = takeovers.last().copied()
                && let Some(now_leader) = leader_pid(&pool).await
                && now_leader != victim
                && at.elapsed() < Duration::from_secs(60)
            {
                eprintln!(
                    "takeover after {how}: {:.2} s (takeover_after 2 s)",
                    at.elapsed().as_secs_f64()
                );
                takeovers.pop();
            }
            fleet.all_alive();
            sim.advance(1);
            tokio::time::sleep(BLOCK).await;
        }
    }
    smtp.set_mode(Mode::Accept);
    if let Some(l) = frozen.take() {
        signal(l, "CONT");
    }

    // the rest of the chain, and every delivery, then a clean stop
    sim.run_to_end();
    let end = sim.with_chain(|c| c.final_block().header.height);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let cursor = keywatch::store::cursor(&pool)
            .await
            .unwrap()
            .unwrap()
            .height;
        let pending: i64 = sqlx::query_scalar(
            "select count(*) from alert_log where status not in ('delivered', 'suppressed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if cursor >= end && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not caught up: cursor {cursor} of {end}, {pending} undelivered"
        );
        fleet.all_alive();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pids: Vec<u32> = fleet.procs.keys().copied().collect();
    for pid in &pids {
        signal(*pid, "TERM");
    }
    for (pid, mut child) in std::mem::take(&mut fleet.procs) {
        assert!(
            child.wait().await.unwrap().success(),
            "run {pid} on SIGTERM"
        );
    }

    // invariants
    let orphans: i64 = sqlx::query_scalar("select count(*) from blocks b where b.block_height > (select min(block_height) from blocks) and not exists (select 1 from blocks p where p.block_hash = b.prev_hash)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orphans, 0, "no gap");
    let (stored, lowest): (i64, i64) =
        sqlx::query_as("select count(*), min(block_height) from blocks")
            .fetch_one(&pool)
            .await
            .unwrap();
    let chain_blocks = sim.with_chain(|c| {
        c.blocks()
            .iter()
            .filter(|b| b.header.height >= lowest as u64 && b.header.height <= end)
            .count()
    });
    assert_eq!(stored as usize, chain_blocks, "every block once");
    assert_matches_chain(&pool, &sim).await;
    let mails = smtp.mails();
    let sent: Vec<(String, Option<String>)> = sqlx::query_as(
        "select a.dedup_key, d.batch_id from alerts a join alert_deliveries d on d.alert_id = a.id
         where d.channel = 'email'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
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
    for i in &identities {
        assert!(
            ids.iter().any(|id| id.contains(i.as_str())),
            "alert {i} was never delivered"
        );
    }
    assert_eq!(
        ids.len(),
        identities.len(),
        "one Message-ID per alert or digest"
    );
    let rules: Vec<(String, i64)> = sqlx::query_as(
        "select rule, count(*) from alerts where rule in ('ingest_stalled', 'ingest_recovered') group by rule order by rule",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let count = |r: &str| {
        rules
            .iter()
            .find(|(n, _)| n == r)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    };
    assert!(count("ingest_stalled") >= cycles as i64, "{rules:?}");
    assert!(count("ingest_recovered") >= cycles as i64, "{rules:?}");
    eprintln!(
        "campaign ({}): {:.0} s, {} cycle(s), {kills} SIGKILLs, {cycles} SIGSTOP(s), {cycles} 60 s rpc outage(s), {cycles} PostgreSQL restart(s), {cycles} minute(s) of SMTP refusal, 20% rpc faults throughout; {} blocks, {} alerts, {} mails; ingest_stalled mailed {:?} into the outage; invariants held",
        if long { "long" } else { "short" },
        started.elapsed().as_secs_f64(),
        cycles,
        stored,
        sent.len(),
        mails.len(),
        stall_mailed
    );
}
