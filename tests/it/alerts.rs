//! Rules and delivery end to end: the simulator plays the attack story,
//! keywatch ingests it into a real Postgres, and alerts go through lettre to
//! a real SMTP server and through HTTP to a real receiver on 127.0.0.1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keywatch::config::{Settings, StartAt};
use keywatch::dispatch::Dispatcher;
use keywatch::ingest::alerts::AlertContext;
use keywatch::ingest::baseline::{init_cursor, start_tracking};
use keywatch::ingest::follower::{FollowOptions, follow};
use keywatch::rules::repeat::Repeat;
use keywatch::sim::{Scenario, SimOptions, Simulator};
use keywatch::store;
use keywatch::store::watch::NewWatch;
use sqlx::PgPool;

use crate::smtp::{Mode, SmtpServer};
use crate::support::{Canned, FakeNode};

const SECRET: &str = "webhook-test-secret";

pub(crate) fn settings(
    sim: &str,
    smtp: u16,
    hook: &str,
    max_age: &str,
    accounts: &str,
) -> Settings {
    settings_with(sim, smtp, hook, max_age, accounts, "tls = \"none\"", &[])
}

fn settings_with(
    sim: &str,
    smtp: u16,
    hook: &str,
    max_age: &str,
    accounts: &str,
    email_tls: &str,
    env: &[(&str, &str)],
) -> Settings {
    let text = format!(
        r#"
[rpc]
urls = ["{sim}"]
chain_id = "localnet"
requests_per_second = 0
backoff_min = "1ms"
backoff_max = "5ms"
[notify]
max_age = "{max_age}"
retry_min = "1s"
retry_max = "10s"
max_attempts = 5
batch_after = 10
batch_interval = "5m"
[notify.email]
enabled = true
host = "127.0.0.1"
port = {smtp}
{email_tls}
from = "keywatch <keywatch@example.com>"
to = ["ops@example.com"]
to_critical = ["oncall@example.com"]
[notify.webhook]
enabled = true
{accounts}
"#
    );
    let mut env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert(
        "KEYWATCH__NOTIFY__WEBHOOK__SECRET".to_owned(),
        SECRET.to_owned(),
    );
    env.insert("KEYWATCH__NOTIFY__WEBHOOK__URL".to_owned(), hook.to_owned());
    Settings::from_toml(&text, std::path::Path::new("test.toml"), &env).unwrap()
}

const STORY_ACCOUNTS: &str = r#"
[[accounts]]
id = "treasury.near"
label = "DAO treasury"
expected_keys = ["ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6"]
[[accounts]]
id = "relayer.near"
[[accounts]]
id = "bob.near"
"#;

fn story() -> Scenario {
    Scenario::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml"))
        .unwrap()
}

type Clock = Arc<Mutex<chrono::DateTime<chrono::Utc>>>;

/// Moves the injected clock forward.
fn advance(clock: &Clock, secs: i64) {
    let later = *clock.lock().unwrap() + chrono::Duration::seconds(secs);
    *clock.lock().unwrap() = later;
}

/// The status and attempts of the single delivery on `channel`.
async fn delivery(pool: &PgPool, channel: &str) -> (String, i32) {
    sqlx::query_as("select status, attempts from alert_log where channel = $1")
        .bind(channel)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn clock() -> (Clock, keywatch::dispatch::Clock) {
    let c = Arc::new(Mutex::new(chrono::Utc::now()));
    let c2 = c.clone();
    (c, Arc::new(move || *c2.lock().unwrap()))
}

/// Watches the config's accounts near genesis, then ingests the whole chain
/// with the rules on.
pub(crate) async fn ingest(pool: &PgPool, sim: &Simulator, s: &Settings, start: u64) {
    sim.advance_to(start + 2);
    let rpc = crate::ingest::client(&sim.url());
    let watches: Vec<NewWatch> = s
        .accounts
        .iter()
        .map(|a| NewWatch {
            account_id: a.id.clone(),
            label: a.label.clone(),
            expected_keys: a.expected_keys.clone(),
            cold_keys: a.cold_keys.clone(),
            allow_missing: false,
        })
        .collect();
    start_tracking(pool, &rpc, "localnet", &watches, false)
        .await
        .unwrap();
    init_cursor(pool, &rpc, StartAt::Height(start + 1))
        .await
        .unwrap();
    sim.run_to_end();
    follow_to_head(pool, sim, s).await;
}

/// The attack story followed from 1000 with the shipped rules, an SMTP
/// server and a webhook receiver that take everything.
async fn story_ingested(pool: &PgPool) -> (SmtpServer, FakeNode, Simulator, Settings) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let sim = Simulator::start(story(), SimOptions::default())
        .await
        .unwrap();
    let s = settings(&sim.url(), smtp.port, &hook.url, "3650days", STORY_ACCOUNTS);
    ingest(pool, &sim, &s, 1000).await;
    (smtp, hook, sim, s)
}

/// Lets the chain run `blocks` further (quiet blocks) and follows to the
/// new head, so the window rules decide the last writes too.
pub(crate) async fn follow_further(pool: &PgPool, sim: &Simulator, s: &Settings, blocks: u64) {
    sim.advance_to(sim.with_chain(|c| c.head().header.height) + blocks);
    follow_to_head(pool, sim, s).await;
}

/// Follows to the final head with the rules on.
async fn follow_to_head(pool: &PgPool, sim: &Simulator, s: &Settings) {
    let opts = FollowOptions {
        exit_when_caught_up: true,
        concurrency: 4,
        poll_interval: Duration::from_millis(5),
        ..FollowOptions::default()
    };
    let rpc = crate::ingest::client(&sim.url());
    let (_tx, stop) = tokio::sync::watch::channel(false);
    follow(
        pool,
        &rpc,
        &opts,
        Some(&AlertContext::from_settings(s)),
        stop,
    )
    .await
    .unwrap();
}

async fn dispatch_all(d: &Dispatcher) {
    for _ in 0..20 {
        if d.run_once().await.unwrap() == 0 {
            return;
        }
    }
}

async fn alerts(pool: &PgPool) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("select rule, account_id, public_key from alerts order by id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.sort();
    rows.into_iter()
        .map(|(r, a, k)| (r, a, k.map(|k| k[..12].to_owned()).unwrap_or_default()))
        .collect()
}

/// The attack story's alerts, one per (rule, account, key prefix), sorted.
fn designed_alerts() -> Vec<(String, String, String)> {
    let t = |r: &str, a: &str, k: &str| (r.to_owned(), a.to_owned(), k.to_owned());
    let mut expected = vec![
        t("account_deleted", "bob.near", ""),
        t("account_locked", "treasury.near", ""),
        t("allowance_drain", "relayer.near", "ed25519:GbRg"),
        t("balance_drop", "treasury.near", ""),
        t("contract_deployed", "relayer.near", ""),
        t("contract_deployed", "treasury.near", ""),
        t("key_deleted", "treasury.near", "ed25519:2czE"),
        t("key_deleted", "treasury.near", "ed25519:8FtS"),
        t("key_deleted", "treasury.near", "ed25519:8GGz"),
        t("key_deleted", "treasury.near", "ed25519:GVyf"),
        t("new_full_access_key", "treasury.near", "ed25519:8GGz"),
        t("new_full_access_key", "treasury.near", "ed25519:GVyf"),
    ];
    expected.sort();
    expected
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn the_attack_story_raises_exactly_the_designed_alerts_by_email_and_webhook(pool: PgPool) {
    let (smtp, hook, _sim, s) = story_ingested(&pool).await;

    let expected = designed_alerts();
    assert_eq!(
        alerts(&pool).await,
        expected,
        "the expected key (8FtS) raises no new-key alert"
    );
    // every alert names the transaction or receipt of its change
    let without_cause: Vec<String> = sqlx::query_scalar(
        "select rule from alerts
         where details->>'tx_hash' is null and details->>'receipt_hash' is null order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(without_cause, Vec::<String>::new());

    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    dispatch_all(&d).await;

    let mails = smtp.mails();
    assert_eq!(mails.len(), 12, "one mail per alert");
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| m.header("Message-ID").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "distinct Message-IDs");
    let subjects: Vec<String> = mails.iter().map(|m| m.header("Subject").unwrap()).collect();
    assert!(
        subjects.contains(&"[CRITICAL] New full-access key on treasury.near".to_owned()),
        "{subjects:#?}"
    );
    assert!(
        subjects.contains(&"[CRITICAL] New gas key with full access on treasury.near".to_owned()),
        "{subjects:#?}"
    );
    assert!(
        subjects.contains(&"[CRITICAL] treasury.near has no full-access key left".to_owned()),
        "{subjects:#?}"
    );
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("[CRITICAL] Balance of treasury.near dropped by 2000.")),
        "{subjects:#?}"
    );
    assert!(
        subjects
            .iter()
            // judged at the third charge (1012, 56% down once the refunds of
            // the first three have landed), the fourth still in flight
            .any(|s| s == "[WARNING] Allowance of a key on relayer.near fell by 0.56 NEAR"),
        "{subjects:#?}"
    );
    let fa = mails
        .iter()
        .find(|m| m.header("Subject").unwrap() == "[CRITICAL] New full-access key on treasury.near")
        .unwrap();
    assert!(
        fa.rcpt.iter().any(|r| r.contains("oncall@example.com"))
            && fa.rcpt.iter().any(|r| r.contains("ops@example.com")),
        "critical goes to on-call too: {:?}",
        fa.rcpt
    );
    let body = fa.data.replace("=\n", "");
    for part in [
        "treasury.near (DAO treasury)",
        "ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq",
        "full access",
        "Block: 1006",
        "Receipt:",
        "What to do:",
        "text/html",
        "https://nearblocks.io/address/treasury.near",
    ] {
        assert!(body.contains(part), "missing {part:?} in\n{body}");
    }
    let warn = mails
        .iter()
        .find(|m| m.header("Subject").unwrap().starts_with("[WARNING]"))
        .unwrap();
    assert!(
        !warn.rcpt.iter().any(|r| r.contains("oncall")),
        "warnings are not routed to on-call"
    );

    // webhooks: 12, signed over the exact body
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 12);
    for (i, body) in bodies.iter().enumerate() {
        let ts: i64 = hook
            .header(i, "x-keywatch-timestamp")
            .unwrap()
            .parse()
            .unwrap();
        let sig = hook.header(i, "x-keywatch-signature").unwrap();
        assert_eq!(sig, keywatch::notify::webhook::signature(SECRET, ts, body));
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["version"], 1);
        // the delivery key is the hash of the alert's dedup key, not its serial id
        let dedup: String = sqlx::query_scalar("select dedup_key from alerts where id = $1")
            .bind(v["alert"]["id"].as_i64().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            hook.header(i, "x-keywatch-delivery").unwrap(),
            format!("alert-{}", keywatch::notify::alert_identity(&dedup))
        );
    }
    let log: Vec<(String, String)> = sqlx::query_as("select channel, status from alert_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(log.len(), 24);
    assert!(log.iter().all(|(_, s)| s == "delivered"), "{log:?}");
}

async fn one_alert_story(
    pool: &PgPool,
    smtp: &SmtpServer,
    hook: &FakeNode,
) -> (Settings, Simulator) {
    let sim = Simulator::start(
        story(),
        SimOptions {
            until: Some(1008),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let s = settings(&sim.url(), smtp.port, &hook.url, "3650days", STORY_ACCOUNTS);
    ingest(pool, &sim, &s, 1000).await;
    (s, sim)
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn an_smtp_server_that_refuses_for_a_while_gets_every_alert_afterwards(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    let count: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        count, 1,
        "the attacker's key at 1006 (the chain stops at 1008)"
    );
    smtp.set_mode(Mode::Refuse);
    let (clock, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    for _ in 0..3 {
        d.run_once().await.unwrap();
        advance(&clock, 30);
    }
    let (status, attempts) = delivery(&pool, "email").await;
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 3),
        "still pending after three refused attempts"
    );
    smtp.set_mode(Mode::Accept);
    advance(&clock, 60);
    dispatch_all(&d).await;
    assert_eq!(smtp.mails().len(), 1);
    let (status, attempts, err): (String, i32, Option<String>) = sqlx::query_as(
        "select status, attempts, last_error from alert_log where channel = 'email'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("delivered", 4));
    assert!(err.is_some(), "the last error is kept");
    let transient: i64 =
        sqlx::query_scalar("select count(*) from delivery_attempts where outcome = 'transient'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(transient, 3, "every attempt recorded");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_permanent_smtp_rejection_fails_after_one_attempt(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    smtp.set_mode(Mode::Reject550);
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    dispatch_all(&d).await;
    let (status, attempts, err): (String, i32, Option<String>) = sqlx::query_as(
        "select status, attempts, last_error from alert_log where channel = 'email'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(err.unwrap().contains("550"), "the rejection is shown");
    let webhook: String =
        sqlx::query_scalar("select status from alert_log where channel = 'webhook'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(webhook, "delivered", "channels fail independently");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_rejecting_webhook_is_permanent_and_a_failing_one_is_retried(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|i, _| {
        if i == 0 {
            Canned::text(503, "busy")
        } else {
            Canned::text(410, "gone")
        }
    })
    .await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    let (clock, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    d.run_once().await.unwrap();
    let (status, attempts) = delivery(&pool, "webhook").await;
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 1),
        "503 is transient"
    );
    advance(&clock, 60);
    d.run_once().await.unwrap();
    let (status, attempts) = delivery(&pool, "webhook").await;
    assert_eq!(
        (status.as_str(), attempts),
        ("failed", 2),
        "410 is permanent"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_silence_is_announced_first_then_its_alerts_are_recorded_not_sent(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    // the story happens now: silences apply to blocks after they started
    let mut sc = story();
    sc.chain.genesis_time_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let sim = Simulator::start(sc, SimOptions::default()).await.unwrap();
    let s = settings(&sim.url(), smtp.port, &hook.url, "3650days", STORY_ACCOUNTS);
    // key deletions on the treasury, and everything on bob.near, for an hour
    let mut conn = pool.acquire().await.unwrap();
    let (rotation, _) = store::silences::add(
        &mut conn,
        "treasury.near",
        Some("key_deleted"),
        3600,
        "key rotation",
    )
    .await
    .unwrap();
    store::silences::add(&mut conn, "bob.near", None, 3600, "closing the account")
        .await
        .unwrap();
    // one put in by hand, as if already announced: it is announced all the same
    sqlx::query(
        "insert into silences (account_id, rule, ends_at, reason, announced_at)
         values ('relayer.near', 'allowance_drain', now() + interval '1 hour', 'by hand', now())",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    ingest(&pool, &sim, &s, 1000).await;
    let (_, now) = clock();
    dispatch_all(&Dispatcher::new(pool.clone(), &s, now).unwrap()).await;

    let by_status: Vec<(String, String, String)> = sqlx::query_as(
        "select rule, account_id, status from alert_log where channel = 'email' order by alert_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let status_of = |rule: &str, account: &str| -> Vec<&str> {
        by_status
            .iter()
            .filter(|(r, a, _)| r == rule && a == account)
            .map(|(_, _, st)| st.as_str())
            .collect()
    };
    // announced first, on every channel, and sent
    assert_eq!(by_status[0].0, "silence_started", "{by_status:#?}");
    assert_eq!(status_of("silence_started", "treasury.near"), ["delivered"]);
    assert_eq!(status_of("silence_started", "bob.near"), ["delivered"]);
    assert_eq!(status_of("silence_started", "relayer.near"), ["delivered"]);
    // (a silenced alert starts no cooldown: the drain, true at each of its
    // writes, is recorded at each)
    let drains = status_of("allowance_drain", "relayer.near");
    assert!(
        !drains.is_empty() && drains.iter().all(|st| *st == "silenced"),
        "{drains:?}"
    );
    // the silenced alerts: decided and recorded, not sent
    assert_eq!(status_of("key_deleted", "treasury.near"), ["silenced"; 4]);
    assert_eq!(status_of("account_deleted", "bob.near"), ["silenced"]);
    // what the silences do not name goes out as usual
    assert_eq!(
        status_of("new_full_access_key", "treasury.near"),
        ["delivered"; 2]
    );
    assert_eq!(
        status_of("contract_deployed", "relayer.near"),
        ["delivered"]
    );
    let subjects: Vec<String> = smtp
        .mails()
        .iter()
        .map(|m| m.header("Subject").unwrap())
        .collect();
    assert!(
        subjects
            .iter()
            .any(|s| s
                .starts_with("[WARNING] key_deleted alerts on treasury.near are silenced until")),
        "{subjects:#?}"
    );
    assert!(
        subjects
            .iter()
            .all(|s| !s.contains("Key deleted") && !s.contains("bob.near was deleted")),
        "{subjects:#?}"
    );
    let reason: String = sqlx::query_scalar(
        "select details->'silenced'->>'reason' from alerts where rule = 'key_deleted' limit 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reason, "key rotation");
    let announced: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select announced_at from silences where id = $1")
            .bind(rotation)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(announced.is_some());
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn alerts_for_old_blocks_are_suppressed_and_nothing_is_sent(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let mut sc = story();
    sc.chain.genesis_time_ns = 1_767_225_600_000_000_000; // 2026-01-01: a backfill of old blocks
    let sim = Simulator::start(sc, SimOptions::default()).await.unwrap();
    let s = settings(&sim.url(), smtp.port, &hook.url, "1h", STORY_ACCOUNTS);
    ingest(&pool, &sim, &s, 1000).await;
    let (_, now) = clock();
    dispatch_all(&Dispatcher::new(pool.clone(), &s, now).unwrap()).await;
    let statuses: Vec<String> = sqlx::query_scalar("select distinct status from alert_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(statuses, ["suppressed"]);
    let n: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    // recorded all the same; and since a suppressed alert starts no
    // cooldown, a window rule that stays true is recorded again at each
    // write it judges (the first live alert after a backfill is never
    // silenced by a backfill's)
    let recorded = alerts(&pool).await;
    let mut distinct = recorded.clone();
    distinct.dedup();
    assert_eq!(distinct, designed_alerts());
    assert!(n > 12, "{recorded:#?}");
    assert!(
        recorded
            .iter()
            .filter(|a| !["allowance_drain", "balance_drop"].contains(&a.0.as_str()))
            .count()
            == 10,
        "only window rules repeat: {recorded:#?}"
    );
    assert!(smtp.mails().is_empty() && hook.bodies().is_empty());
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn fifty_new_keys_in_a_minute_are_batched_but_a_critical_goes_alone(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let mut text = String::from(
        "[chain]\nstart_height = 100\ngenesis_time = \"2030-01-01T00:00:00Z\"\n[[accounts]]\nid = \"hot.near\"\namount = \"100\"\nkeys = [{ key = \"ed25519:2czEoxvpiTZ8isg5dwfw1hbUyxUVALZSuhBAhd6BVAMx\", permission = \"full_access\" }]\n",
    );
    for i in 0..50u64 {
        let key = keywatch::sim::scenario::seeded_key(77, i);
        text.push_str(&format!("[[actions]]\nat = {}\ndo = \"add_key\"\naccount = \"hot.near\"\nkey = \"{key}\"\npermission = {{ function_call = {{ allowance = \"0.25\", receiver = \"app.near\", methods = [\"relay\"] }} }}\n", 102 + i));
    }
    text.push_str("[[actions]]\nat = 125\ndo = \"add_key\"\naccount = \"hot.near\"\nkey = \"ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq\"\npermission = \"full_access\"\n");
    let sim = Simulator::start(
        Scenario::from_toml(&text, "fifty").unwrap(),
        SimOptions::default(),
    )
    .await
    .unwrap();
    let s = settings(
        &sim.url(),
        smtp.port,
        &hook.url,
        "3650days",
        "[[accounts]]\nid = \"hot.near\"\n",
    );
    ingest(&pool, &sim, &s, 100).await;
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    dispatch_all(&d).await;
    let n: i64 = sqlx::query_scalar("select count(*) from alert_log where channel = 'email'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 51, "every alert is in alert_log");
    let delivered: i64 = sqlx::query_scalar(
        "select count(*) from alert_log where channel = 'email' and status = 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(delivered, 51);
    let mails = smtp.mails();
    assert_eq!(
        mails.len(),
        2,
        "one batch and the critical alone: {:?}",
        mails
            .iter()
            .map(|m| m.header("Subject"))
            .collect::<Vec<_>>()
    );
    assert!(
        mails
            .iter()
            .any(|m| m.header("Subject").unwrap() == "[CRITICAL] New full-access key on hot.near")
    );
    assert!(
        mails
            .iter()
            .any(|m| m.header("Subject").unwrap() == "[WARNING] 50 alerts on hot.near")
    );
    let batches: i64 = sqlx::query_scalar("select count(distinct batch_id) from alert_deliveries where channel = 'email' and batch_id is not null").fetch_one(&pool).await.unwrap();
    assert_eq!(batches, 1, "each batched delivery records its batch");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn drift_raises_one_alert_per_difference(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, sim) = one_alert_story(&pool, &smtp, &hook).await;
    let ctx = AlertContext::from_settings(&s);
    let rpc = crate::ingest::client(&sim.url());
    sqlx::query("update current_accounts set amount = amount + 1 where account_id = 'bob.near'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from key_state where account_id = 'treasury.near' and public_key like 'ed25519:GVyf%'").execute(&pool).await.unwrap();
    let report = keywatch::ingest::reconcile::reconcile(&pool, &rpc, &[], Some(&ctx))
        .await
        .unwrap();
    assert_eq!(report.differences.len(), 2);
    let drift: Vec<(String, Option<String>, String)> = sqlx::query_as("select account_id, public_key, severity from alerts where rule = 'state_drift' order by account_id").fetch_all(&pool).await.unwrap();
    assert_eq!(drift.len(), 2, "one per distinct difference");
    assert_eq!(drift[0].0, "bob.near");
    assert_eq!(
        drift[1].1.as_deref(),
        Some("ed25519:GVyfcv74EyA6DNkQTap8k122oMnyjt6ufH7q3ger3EMq")
    );
    assert!(drift.iter().all(|d| d.2 == "critical"));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn email_goes_out_over_starttls_with_authentication_and_over_implicit_tls(pool: PgPool) {
    use crate::smtp::TlsSetup;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    // STARTTLS with AUTH PLAIN, trusting only the certificate the test made
    let (tls, pem) = TlsSetup::new(false, Some(("keywatch", "s3cret")));
    let starttls = SmtpServer::start_with(Some(tls)).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let sim = Simulator::start(
        story(),
        SimOptions {
            until: Some(1008),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let lines = format!(
        "tls = \"starttls\"\nusername = \"keywatch\"\nca_file = {:?}",
        ca.to_str().unwrap()
    );
    let s = settings_with(
        &sim.url(),
        starttls.port,
        &hook.url,
        "3650days",
        STORY_ACCOUNTS,
        &lines,
        &[("KEYWATCH__NOTIFY__EMAIL__PASSWORD", "s3cret")],
    );
    ingest(&pool, &sim, &s, 1000).await;
    let (_, now) = clock();
    dispatch_all(&Dispatcher::new(pool.clone(), &s, now.clone()).unwrap()).await;
    let mails = starttls.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].secure, "sent after STARTTLS");
    assert_eq!(starttls.authenticated(), ["keywatch"]);

    // a wrong password is a permanent failure (535), shown in alert_log
    let (tls, pem) = TlsSetup::new(false, Some(("keywatch", "other")));
    let strict = SmtpServer::start_with(Some(tls)).await;
    std::fs::write(&ca, &pem).unwrap();
    let s2 = settings_with(
        &sim.url(),
        strict.port,
        &hook.url,
        "3650days",
        STORY_ACCOUNTS,
        &lines,
        &[("KEYWATCH__NOTIFY__EMAIL__PASSWORD", "s3cret")],
    );
    sqlx::query(
        "update alert_deliveries set status = 'pending', attempts = 0 where channel = 'email'",
    )
    .execute(&pool)
    .await
    .unwrap();
    dispatch_all(&Dispatcher::new(pool.clone(), &s2, now.clone()).unwrap()).await;
    let (status, err): (String, Option<String>) =
        sqlx::query_as("select status, last_error from alert_log where channel = 'email'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(err.unwrap().contains("535"));
    assert!(strict.mails().is_empty());

    // implicit TLS
    let (tls, pem) = TlsSetup::new(true, None);
    let implicit = SmtpServer::start_with(Some(tls)).await;
    std::fs::write(&ca, &pem).unwrap();
    let lines = format!("tls = \"implicit\"\nca_file = {:?}", ca.to_str().unwrap());
    let s3 = settings_with(
        &sim.url(),
        implicit.port,
        &hook.url,
        "3650days",
        STORY_ACCOUNTS,
        &lines,
        &[],
    );
    sqlx::query(
        "update alert_deliveries set status = 'pending', attempts = 0 where channel = 'email'",
    )
    .execute(&pool)
    .await
    .unwrap();
    dispatch_all(&Dispatcher::new(pool.clone(), &s3, now).unwrap()).await;
    let mails = implicit.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].secure);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn rules_test_replays_history_into_the_same_alerts_and_keeps_nothing(pool: PgPool) {
    let (smtp, hook, sim, s) = story_ingested(&pool).await;
    let stored = alerts(&pool).await;
    let head = sim.with_chain(|c| c.final_block().header.height);
    let replayed =
        keywatch::ingest::replay::rules_test(&pool, &AlertContext::from_settings(&s), 1000, head)
            .await
            .unwrap();
    let mut got: Vec<(String, String)> = replayed
        .iter()
        .map(|f| (f.rule.clone(), f.account_id.clone()))
        .collect();
    got.sort();
    let want: Vec<(String, String)> = stored
        .iter()
        .map(|(r, a, _)| (r.clone(), a.clone()))
        .collect();
    assert_eq!(got, want, "the replay decides what the ingest decided");
    assert_eq!(alerts(&pool).await, stored, "nothing kept");
    let deliveries: i64 = sqlx::query_scalar("select count(*) from alert_deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 24, "the existing outbox is untouched");

    // with key deletions switched off and a lower balance threshold
    let tuned = settings(
        &sim.url(),
        smtp.port,
        &hook.url,
        "3650days",
        &format!("{STORY_ACCOUNTS}\n[rules.key_deleted]\nenabled = false\n"),
    );
    let replayed = keywatch::ingest::replay::rules_test(
        &pool,
        &AlertContext::from_settings(&tuned),
        1000,
        head,
    )
    .await
    .unwrap();
    assert_eq!(replayed.len(), 8, "{replayed:#?}");
    assert!(replayed.iter().all(|f| f.rule != "key_deleted"));
    // only the asked range
    let early =
        keywatch::ingest::replay::rules_test(&pool, &AlertContext::from_settings(&s), 1000, 1008)
            .await
            .unwrap();
    assert_eq!(early.len(), 2, "the two full-access keys: {early:#?}");
    assert!(
        smtp.mails().is_empty() && hook.bodies().is_empty(),
        "nothing sent"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn pruning_blocks_without_history_keeps_history_and_replays_the_same_alerts(pool: PgPool) {
    let (_smtp, _hook, sim, s) = story_ingested(&pool).await;
    // a quiet stretch after the story
    follow_further(&pool, &sim, &s, 30).await;
    let ctx = AlertContext::from_settings(&s);
    let head = sim.with_chain(|c| c.final_block().header.height);
    let replay = || keywatch::ingest::replay::rules_test(&pool, &ctx, 1000, head);
    let before = replay().await.unwrap();
    let db = &pool;
    let heights = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_all(db)
            .await
            .unwrap()
    };
    let stored = heights("select block_height from blocks order by 1").await;
    let with_history = heights(
        "select block_height from key_events union select block_height from balance_events
         union select block_height from unknown_changes order by 1",
    )
    .await;
    let history = heights(
        "select block_height from key_history union all select block_height from balance_history
         order by 1",
    )
    .await;
    let cursor = store::cursor(&pool).await.unwrap().unwrap();

    // Twice the settle delay (10) after every block with history, as
    // `keep_blocks_after_writes` does (with a floor too high for this story).
    let keep_after = 20;
    let pruned = store::prune::prune_blocks(&pool, cursor.timestamp_ns as i64, keep_after, 7)
        .await
        .unwrap();
    let expected: Vec<i64> = stored
        .iter()
        .copied()
        .filter(|&h| {
            h == cursor.height as i64
                || with_history
                    .iter()
                    .any(|&w| (h - keep_after..=h).contains(&w))
        })
        .collect();
    assert!(
        expected.len() < stored.len(),
        "the story has blocks to prune"
    );
    let kept = heights("select block_height from blocks order by 1").await;
    assert_eq!(kept, expected);
    assert_eq!(pruned.deleted as usize, stored.len() - kept.len());
    assert_eq!(
        pruned.below, cursor.height as i64,
        "up to the cursor's block"
    );
    assert_eq!(
        heights(
            "select block_height from key_history union all select block_height from balance_history
             order by 1"
        )
        .await,
        history,
        "every history row keeps its block"
    );
    assert_eq!(
        replay().await.unwrap(),
        before,
        "rules test decides the same"
    );
    let again = store::prune::prune_blocks(&pool, cursor.timestamp_ns as i64, keep_after, 7)
        .await
        .unwrap();
    assert_eq!(again.deleted, 0);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn slack_mode_posts_a_slack_compatible_body(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let sim = Simulator::start(
        story(),
        SimOptions {
            until: Some(1008),
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    // lines before the first [[accounts]] still belong to [notify.webhook]
    let s = settings(
        &sim.url(),
        smtp.port,
        &hook.url,
        "3650days",
        &format!("format = \"slack\"\n{STORY_ACCOUNTS}"),
    );
    ingest(&pool, &sim, &s, 1000).await;
    let (_, now) = clock();
    dispatch_all(&Dispatcher::new(pool.clone(), &s, now).unwrap()).await;
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&bodies[0]).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(
        text.starts_with("*[CRITICAL] New full-access key on treasury.near*"),
        "{text}"
    );
    assert!(
        text.contains("<https://nearblocks.io/address/treasury.near|treasury.near (DAO treasury)>"),
        "{text}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn scheduled_jobs_reconcile_prune_attempts_and_mail_the_daily_report(pool: PgPool) {
    use keywatch::schedule::{Job, Scheduler};
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, sim) = one_alert_story(&pool, &smtp, &hook).await;
    let (clock, now) = clock();
    dispatch_all(&Dispatcher::new(pool.clone(), &s, now.clone()).unwrap()).await;
    let scheduler = Scheduler {
        pool: pool.clone(),
        rpc: Arc::new(crate::ingest::client(&sim.url())),
        schedule: s.schedule.clone(),
        retention: s.retention.clone(),
        alerts: AlertContext::from_settings(&s),
        report: Some(
            keywatch::notify::email::EmailSender::new(
                s.notify.email.as_ref().unwrap(),
                &s.notify.explorer_url,
            )
            .unwrap(),
        ),
        now: now.clone(),
    };
    // reconcile: drift becomes a critical alert
    sqlx::query(
        "update current_accounts set amount = amount + 7 where account_id = 'relayer.near'",
    )
    .execute(&pool)
    .await
    .unwrap();
    scheduler.run_job(Job::Reconcile).await.unwrap();
    let drift: i64 = sqlx::query_scalar(
        "select count(*) from alerts where rule = 'state_drift' and account_id = 'relayer.near'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(drift, 1);
    // the daily report
    scheduler.run_job(Job::DailyReport).await.unwrap();
    let report = smtp
        .mails()
        .into_iter()
        .find(|m| {
            m.header("Subject")
                .is_some_and(|s| s.starts_with("[keywatch] daily report"))
        })
        .expect("a report");
    assert_eq!(
        report.header("Subject").unwrap(),
        "[keywatch] daily report: 2 alert(s), 3 account(s) watched"
    );
    assert!(
        report.data.contains("Last block ingested: 1006"),
        "{}",
        report.data
    );
    assert!(
        report.data.contains("Differences found by reconcile: 1"),
        "{}",
        report.data
    );
    // retention: only delivery attempts, and only old ones
    let attempts_before: i64 = sqlx::query_scalar("select count(*) from delivery_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(attempts_before > 0);
    scheduler.run_job(Job::Retention).await.unwrap();
    let kept: i64 = sqlx::query_scalar("select count(*) from delivery_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, attempts_before, "recent attempts are kept");
    advance(&clock, 2678400);
    scheduler.run_job(Job::Retention).await.unwrap();
    let kept: i64 = sqlx::query_scalar("select count(*) from delivery_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    let history: i64 = sqlx::query_scalar("select count(*) from key_history")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(history > 0, "history is never pruned");
    let deliveries: i64 = sqlx::query_scalar("select count(*) from alert_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(deliveries >= 2, "alert_log keeps its rows");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn metrics_health_and_readiness_are_served(pool: PgPool) {
    use keywatch::health::{Dependency, Health, Role};
    // the recorder is process-wide: tests running beside this one add to
    // the counters, so only lower bounds are asserted
    keywatch::metrics::install();
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    let (_, now) = clock();
    let sent = Dispatcher::new(pool.clone(), &s, now)
        .unwrap()
        .run_once()
        .await;
    assert_eq!(sent.unwrap(), 2, "the alert by email and by webhook");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Arc::new(Health::default());
    let cursor = keywatch::store::cursor(&pool).await.unwrap().unwrap();
    tokio::spawn(keywatch::metrics::serve(
        listener,
        pool.clone(),
        health.clone(),
        Duration::from_secs(300),
    ));
    keywatch::rpc::transport::install_crypto_provider();
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // the sum over the series whose name and labels start with `series`
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert!(value("keywatch_blocks_ingested_total ") >= 5.0, "{metrics}");
    assert!(value("keywatch_rpc_requests_total{method=\"block\"}") > 0.0);
    assert!(value("keywatch_rpc_request_duration_seconds_count{method=\"block\"}") > 0.0);
    assert!(value("keywatch_alerts_total{rule=\"new_full_access_key\"}") >= 1.0);
    assert!(value("keywatch_deliveries_total{channel=\"email\",outcome=\"delivered\"}") >= 1.0);
    assert!(value("keywatch_commit_to_delivery_seconds_count{channel=\"webhook\"}") >= 1.0);
    assert!(value("keywatch_block_apply_duration_seconds_count ") >= 1.0);
    assert!(value("keywatch_finality_to_commit_seconds_count ") >= 5.0);
    assert!(metrics.contains("# TYPE keywatch_lag_blocks gauge"));
    assert!(metrics.contains("# TYPE keywatch_rpc_request_duration_seconds histogram"));
    assert!(metrics.contains(&format!(
        "keywatch_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    // starting: alive, not ready
    let (status, body) = get("/health").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("alive")));
    let (status, body) = get("/ready").await;
    assert_eq!(status, 503);
    assert_eq!(body["reasons"][0], "starting");
    // leading and up to date: ready
    health.set_role(Role::Leader);
    health.caught_up(&cursor, cursor.height);
    let (status, body) = get("/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cursor"].as_u64(), Some(1006));
    // the rpc failing: not ready, and says which dependency, without the
    // error's own words (an unauthenticated endpoint); still alive
    health.failed(Dependency::Rpc, "status: gave up after 3 attempts");
    let (status, body) = get("/ready").await;
    assert_eq!(status, 503);
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("rpc failing for") && !reasons.contains("gave up"),
        "{reasons}"
    );
    assert_eq!(get("/health").await.0, 200);
    // a standby is alive but never ready
    health.committed(&cursor);
    health.set_role(Role::Standby);
    let (status, body) = get("/ready").await;
    assert_eq!(status, 503);
    assert!(body["reasons"].to_string().contains("standby"));
    assert_eq!(get("/health").await.0, 200);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_critical_alert_outlives_max_attempts_is_escalated_and_sent_at_once_on_recovery(
    pool: PgPool,
) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (mut s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    s.notify.escalate_after = Duration::from_secs(60);
    smtp.set_mode(Mode::Refuse);
    let (clock, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now.clone()).unwrap();
    for _ in 0..8 {
        d.run_once().await.unwrap();
        advance(&clock, 30);
    }
    let (status, attempts) = delivery(&pool, "email").await;
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 8),
        "a critical alert is not given up after max_attempts (5)"
    );
    // escalated once, on the other channel only
    assert_eq!(d.escalate().await.unwrap(), 1);
    assert_eq!(d.escalate().await.unwrap(), 0, "once per stuck delivery");
    let channels: Vec<String> = sqlx::query_scalar(
        "select channel from alert_log where rule = 'delivery_failing' order by channel",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(channels, ["webhook"]);
    let sent_before = hook.bodies().len();
    d.run_once().await.unwrap();
    let bodies = hook.bodies();
    assert_eq!(bodies.len(), sent_before + 1);
    let escalation: serde_json::Value = serde_json::from_slice(bodies.last().unwrap()).unwrap();
    assert_eq!(escalation["alert"]["rule"], "delivery_failing");
    assert!(
        escalation["alert"]["title"]
            .as_str()
            .unwrap()
            .contains("on email is still pending after 1m"),
        "{escalation}"
    );
    // a 30-minute retry step on the stuck alert...
    sqlx::query("update alert_deliveries set next_attempt_at = $1 where channel = 'email'")
        .bind(now() + chrono::Duration::minutes(30))
        .execute(&pool)
        .await
        .unwrap();
    // ...does not hold it back once the channel works for a newer alert
    smtp.set_mode(Mode::Accept);
    let draft = keywatch::rules::AlertDraft {
        rule: "new_full_access_key",
        severity: keywatch::config::Severity::Critical,
        account_id: "treasury.near".into(),
        public_key: Some("ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6".into()),
        title: "a newer critical alert".into(),
        details: serde_json::json!({}),
    };
    let mut tx = pool.begin().await.unwrap();
    keywatch::store::alerts::insert(
        &mut tx,
        &draft,
        &keywatch::store::alerts::Decided {
            block_height: 1008,
            block_hash: "newer",
            block_time: now(),
        },
        &["email"],
        true,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    d.run_once().await.unwrap();
    d.run_once().await.unwrap();
    let subjects: Vec<String> = smtp
        .mails()
        .iter()
        .map(|m| m.header("Subject").unwrap())
        .collect();
    assert_eq!(subjects.len(), 2, "both sent without waiting: {subjects:?}");
    assert!(subjects.iter().any(|s| s.contains("New full-access key")));
    let pending: i64 = sqlx::query_scalar(
        "select count(*) from alert_log where channel = 'email' and status <> 'delivered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(pending, 0);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_rules_replay_neither_sees_nor_locks_the_live_outbox(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    let live: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 1);
    let mut replay = pool.begin().await.unwrap();
    keywatch::store::alerts::shadow_outbox(&mut replay)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&mut *replay)
        .await
        .unwrap();
    assert_eq!(seen, 0, "the replay starts from an empty outbox");
    // the live dispatcher can still lock and update every delivery
    let mut live_tx = pool.begin().await.unwrap();
    sqlx::query("set local lock_timeout = '2s'")
        .execute(&mut *live_tx)
        .await
        .unwrap();
    sqlx::query("update alert_deliveries set attempts = attempts where id in (select id from alert_deliveries for update)")
        .execute(&mut *live_tx)
        .await
        .expect("not blocked by the replay");
    live_tx.commit().await.unwrap();
    replay.rollback().await.unwrap();
    // and the whole replay reproduces the live decision
    let ctx = AlertContext::from_settings(&s);
    let fired = keywatch::ingest::replay::rules_test(&pool, &ctx, 1001, 1008)
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].rule, "new_full_access_key");
    let after: i64 = sqlx::query_scalar("select count(*) from alerts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, 1, "the live outbox is untouched");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn late_warnings_wait_for_the_catch_up_to_end_then_go_out_as_one_digest(pool: PgPool) {
    use keywatch::config::Severity;
    use keywatch::health::{Health, Role};
    use keywatch::rules::AlertDraft;
    use keywatch::store::alerts::{Decided, insert};
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let s = settings("http://127.0.0.1:9/", smtp.port, &hook.url, "3650days", "");
    let mut tx = pool.begin().await.unwrap();
    let late = |rule: &'static str, severity, n: u32| AlertDraft {
        rule,
        severity,
        account_id: format!("acc{n}.near"),
        public_key: None,
        title: format!("{rule} on acc{n}.near"),
        details: serde_json::json!({"late": true}),
    };
    let drafts = [
        late("new_full_access_key", Severity::Critical, 0),
        late("key_deleted", Severity::Warning, 1),
        late("key_deleted", Severity::Warning, 2),
        late("allowance_drain", Severity::Warning, 3),
    ];
    for (i, d) in drafts.iter().enumerate() {
        let hash = format!("h{i}");
        let at = Decided {
            block_height: 100 + i as u64,
            block_hash: &hash,
            block_time: chrono::Utc::now() - chrono::Duration::minutes(30),
        };
        insert(&mut tx, d, &at, &["email"], true)
            .await
            .unwrap()
            .unwrap();
    }
    tx.commit().await.unwrap();
    // the follower is 100 blocks behind the head, working through them
    let health = Arc::new(Health::default());
    health.set_role(Role::Leader);
    let at = |height| keywatch::store::Cursor {
        height,
        hash: format!("h{height}"),
        timestamp_ns: 0,
    };
    health.caught_up(&at(100), 200);
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now)
        .unwrap()
        .with_health(health.clone());
    dispatch_all(&d).await;
    let subjects = |smtp: &SmtpServer| -> Vec<String> {
        smtp.mails()
            .iter()
            .filter_map(|m| m.header("Subject"))
            .collect()
    };
    assert_eq!(
        subjects(&smtp),
        ["[CRITICAL] new_full_access_key on acc0.near"],
        "critical alerts do not wait"
    );
    // at the head: the three warnings go out together
    health.caught_up(&at(200), 200);
    dispatch_all(&d).await;
    let sent = subjects(&smtp);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[1],
        "[WARNING] 3 alerts on acc1.near, acc2.near, acc3.near"
    );
}

/// Queues a `key_deleted` warning for `acc{n}.near` (email only).
async fn queue_warning(pool: &PgPool, n: u32) -> i64 {
    use keywatch::config::Severity;
    use keywatch::rules::AlertDraft;
    use keywatch::store::alerts::{Decided, insert};
    let draft = AlertDraft {
        rule: "key_deleted",
        severity: Severity::Warning,
        account_id: format!("acc{n}.near"),
        public_key: None,
        title: format!("key deleted on acc{n}.near"),
        details: serde_json::json!({}),
    };
    let hash = format!("h{n}");
    let at = Decided {
        block_height: 100 + u64::from(n),
        block_hash: &hash,
        block_time: chrono::Utc::now(),
    };
    let mut tx = pool.begin().await.unwrap();
    let id = insert(&mut tx, &draft, &at, &["email"], true)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    id
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_batch_formed_before_a_crash_goes_out_again_with_the_same_members_and_id(pool: PgPool) {
    use keywatch::store::alerts::form_batch;
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let s = settings("http://127.0.0.1:9/", smtp.port, &hook.url, "3650days", "");
    let queue = |n: u32| queue_warning(&pool, n);
    for n in 0..3 {
        queue(n).await;
    }
    // a dispatcher formed a batch of the three, the server accepted it, and
    // the process died before recording the attempt
    let ids: Vec<i64> = sqlx::query_scalar("select id from alert_deliveries order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    form_batch(&mut conn, &ids, "batch-before-the-crash")
        .await
        .unwrap();
    drop(conn);
    // meanwhile another alert was queued
    queue(3).await;
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    dispatch_all(&d).await;
    let subjects: Vec<(String, String)> = smtp
        .mails()
        .iter()
        .map(|m| {
            (
                m.header("Subject").unwrap(),
                m.header("Message-ID").unwrap(),
            )
        })
        .collect();
    let again = subjects
        .iter()
        .find(|(_, id)| id.contains("batch-before-the-crash"))
        .unwrap_or_else(|| panic!("the formed batch was not re-sent under its id: {subjects:?}"));
    assert!(
        again
            .0
            .contains("3 alerts on acc0.near, acc1.near, acc2.near"),
        "{again:?}"
    );
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    // the later alert did not join it: it waits for the next batch interval
    let waiting: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select a.account_id, d.status, d.batch_id from alert_deliveries d join alerts a on a.id = d.alert_id
         where d.status <> 'delivered'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        waiting,
        [("acc3.near".to_owned(), "pending".to_owned(), None)]
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn an_alert_sent_alone_before_a_crash_goes_out_alone_again_not_in_a_batch(pool: PgPool) {
    use keywatch::store::alerts::{SENT_ALONE, form_batch};
    let smtp = SmtpServer::start().await;
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let s = settings("http://127.0.0.1:9/", smtp.port, &hook.url, "3650days", "");
    let queue = |n: u32| queue_warning(&pool, n);
    for n in 0..3 {
        queue(n).await;
    }
    // a dispatcher was sending the first on its own, the server accepted
    // it, and the process died before recording the attempt
    let first: i64 = sqlx::query_scalar("select min(id) from alert_deliveries")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    form_batch(&mut conn, &[first], SENT_ALONE).await.unwrap();
    drop(conn);
    // many more arrive: enough to be batched
    for n in 3..15 {
        queue(n).await;
    }
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    dispatch_all(&d).await;
    let dedup: String = sqlx::query_scalar(
        "select a.dedup_key from alerts a join alert_deliveries d on d.alert_id = a.id where d.id = $1",
    )
    .bind(first)
    .fetch_one(&pool)
    .await
    .unwrap();
    let alone = keywatch::notify::alert_identity(&dedup);
    let mails: Vec<(String, String)> = smtp
        .mails()
        .iter()
        .map(|m| {
            (
                m.header("Subject").unwrap(),
                m.header("Message-ID").unwrap(),
            )
        })
        .collect();
    let again = mails
        .iter()
        .find(|(_, id)| id.contains(&alone))
        .unwrap_or_else(|| panic!("not re-sent under its own id: {mails:?}"));
    assert_eq!(again.0, "[WARNING] key deleted on acc0.near", "{mails:?}");
    let (status, batch): (String, Option<String>) =
        sqlx::query_as("select status, batch_id from alert_deliveries where id = $1")
            .bind(first)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), batch), ("delivered", None));
    assert!(
        mails
            .iter()
            .any(|(subject, _)| subject.contains("alerts on")),
        "the rest were batched: {mails:?}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_webhook_redirect_is_not_followed_and_fails_the_delivery(pool: PgPool) {
    let smtp = SmtpServer::start().await;
    let elsewhere = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let target = elsewhere.url.clone();
    let hook =
        FakeNode::start(move |_, _| Canned::text(307, "moved").with_header("location", &target))
            .await;
    let (s, _sim) = one_alert_story(&pool, &smtp, &hook).await;
    let (_, now) = clock();
    let d = Dispatcher::new(pool.clone(), &s, now).unwrap();
    d.run_once().await.unwrap();
    let (status, attempts) = delivery(&pool, "webhook").await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert!(
        elsewhere.bodies().is_empty(),
        "the signed body went to the redirect's target"
    );
    let error: String =
        sqlx::query_scalar("select last_error from alert_deliveries where channel = 'webhook'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        error.contains("HTTP 307: redirects are not followed"),
        "{error}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_rule_in_its_cooldown_is_quiet_for_that_account_and_key_only(pool: PgPool) {
    use keywatch::config::Severity;
    use keywatch::domain::{BlockHeader, CryptoHash};
    use keywatch::ingest::alerts::queue;
    use keywatch::rules::AlertDraft;
    let s = Settings::from_toml(
        "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\nchain_id = \"localnet\"\n\
         [notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = 1\ntls = \"none\"\n\
         from = \"kw@example.com\"\nto = [\"ops@example.com\"]\n",
        std::path::Path::new("t.toml"),
        &Default::default(),
    )
    .unwrap();
    let ctx = AlertContext::from_settings(&s);
    ctx.suppress_old
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let draft = |account: &str, key: &str| AlertDraft {
        rule: "allowance_drain",
        severity: Severity::Warning,
        account_id: account.into(),
        public_key: Some(key.into()),
        title: format!("drain on {account}"),
        details: serde_json::json!({}),
    };
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64;
    let header = |height: u64, secs_later: u64| BlockHeader {
        height,
        hash: CryptoHash::from_bytes([height as u8; 32]),
        prev_hash: CryptoHash::from_bytes([height as u8 - 1; 32]),
        timestamp_ns: now_ns + secs_later * 1_000_000_000,
    };
    let cooldown = Repeat::Cooldown(Duration::from_secs(15 * 60));
    let mut tx = pool.begin().await.unwrap();
    let first = queue(
        &mut tx,
        &ctx,
        &header(10, 0),
        vec![(draft("a.near", "k1"), cooldown)],
    )
    .await
    .unwrap();
    assert_eq!(first, ["allowance_drain"]);
    // five minutes later: the same key is quiet, another key, another
    // account and another rule with a cooldown are not (said twice in one
    // block, once), and a rule without cooldown always speaks
    let other_rule = || AlertDraft {
        rule: "balance_drop",
        ..draft("a.near", "k1")
    };
    let later = queue(
        &mut tx,
        &ctx,
        &header(11, 300),
        vec![
            (draft("a.near", "k1"), cooldown),
            (draft("a.near", "k2"), cooldown),
            (draft("b.near", "k1"), cooldown),
            (other_rule(), cooldown),
            (other_rule(), cooldown),
            (
                AlertDraft {
                    rule: "new_full_access_key",
                    ..draft("a.near", "k1")
                },
                Repeat::Cooldown(Duration::ZERO),
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(later.len(), 4, "{later:?}");
    // past the cooldown, the first key speaks again
    let after = queue(
        &mut tx,
        &ctx,
        &header(12, 16 * 60),
        vec![(draft("a.near", "k1"), cooldown)],
    )
    .await
    .unwrap();
    assert_eq!(after.len(), 1);
    let deliveries: Vec<(String, String)> = sqlx::query_as(
        "select d.channel, d.status from alert_deliveries d join alerts a on a.id = d.alert_id
         order by d.id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(deliveries.len(), 6, "one email delivery per alert");
    assert!(
        deliveries
            .iter()
            .all(|(c, s)| c == "email" && s == "pending"),
        "recent alerts are sent: {deliveries:?}"
    );
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "select block_height, account_id, public_key from alerts where rule = 'allowance_drain' order by id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let drains: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|(h, a, k)| (*h, a.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        drains,
        [
            (10, "a.near", "k1"),
            (11, "a.near", "k2"),
            (11, "b.near", "k1"),
            (12, "a.near", "k1")
        ]
    );
}
