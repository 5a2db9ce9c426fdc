//! Secrets never leave the process: `run` follows a chain with every secret
//! set (an RPC url with a key in its path and query and a bearer key, the
//! SMTP password over STARTTLS, a Slack-style webhook url with its token in
//! the path and an HMAC secret, a heartbeat url with a token, a database
//! password) while a webhook failure and an RPC fault put urls into error
//! paths; then everything it wrote (its debug log, stdout, every table of
//! the database, and `alerts`, `status` and `check-config`) is searched for
//! each secret.

use std::time::Duration;

use keywatch::sim::{FaultKind, FaultPlan, FaultRule};
use sqlx::PgPool;

use crate::crash::{config, database_url, keywatch};
use crate::ingest::START;
use crate::smtp::{SmtpServer, TlsSetup};
use crate::support::{Canned, FakeNode};

const RPC_PATH_KEY: &str = "RpcPathK3y7";
const RPC_QUERY_KEY: &str = "RpcQueryK3y7";
const API_KEY: &str = "ApiBearerS3cret7";
const SMTP_PASSWORD: &str = "SmtpPassw0rd7";
const HOOK_TOKEN: &str = "HookT0kenInPath7";
const HMAC: &str = "HmacS3cret7";
const BEAT_TOKEN: &str = "BeatT0ken7";
const DB_PASSWORD: &str = "DbPassw0rd7";

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn no_secret_reaches_logs_the_database_or_cli_output(pool: PgPool) {
    let (tls, pem) = TlsSetup::new(false, Some(("keywatch", SMTP_PASSWORD)));
    let smtp = SmtpServer::start_with(Some(tls)).await;
    // the webhook fails once (its error, with the url, is recorded), then takes all
    let hook = FakeNode::start(|i, _| {
        if i == 0 {
            Canned::text(500, "try later")
        } else {
            Canned::text(200, "ok")
        }
    })
    .await;
    let beat = FakeNode::start(|_, _| Canned::text(500, "no")).await;
    // the node times out now and then: rpc errors carry urls too
    let faults = FaultPlan {
        rules: vec![FaultRule {
            method: None,
            kind: FaultKind::Unavailable,
            probability: Some(0.05),
            requests: vec![],
        }],
        ..FaultPlan::default()
    };
    let sim = crate::ingest::big_chain(120, Some(faults)).await;
    let dir = tempfile::tempdir().unwrap();
    let rpc_url = format!("{}v1/{RPC_PATH_KEY}?apikey={RPC_QUERY_KEY}", sim.url());
    let cfg = config(&dir, &rpc_url);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pem).unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[notify]\nmax_age = \"3650days\"\nretry_min = \"100ms\"\nretry_max = \"500ms\"\nheartbeat_every = \"100ms\"\n\
         [notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nusername = \"keywatch\"\nca_file = {:?}\n\
         from = \"kw@example.com\"\nto = [\"ops@example.com\"]\n\
         [notify.webhook]\nenabled = true\n\
         [[accounts]]\nid = \"acc0.sim.near\"\n",
        smtp.port,
        ca.to_str().unwrap()
    ));
    std::fs::write(&cfg, text).unwrap();
    // the database password: the one the test database needs, or one that
    // trust authentication ignores
    let mut db = reqwest::Url::parse(&database_url(&pool)).unwrap();
    let db_password = match db.password() {
        Some(p) => p.to_owned(),
        None => {
            db.set_password(Some(DB_PASSWORD)).unwrap();
            DB_PASSWORD.to_owned()
        }
    };
    let db = db.to_string();
    let secrets_env = [
        ("KEYWATCH__INGEST__START", (START + 1).to_string()),
        ("KEYWATCH__RPC__API_KEY", API_KEY.to_owned()),
        (
            "KEYWATCH__NOTIFY__EMAIL__PASSWORD",
            SMTP_PASSWORD.to_owned(),
        ),
        (
            "KEYWATCH__NOTIFY__WEBHOOK__URL",
            format!("{}services/T0/B0/{HOOK_TOKEN}", hook.url),
        ),
        ("KEYWATCH__NOTIFY__WEBHOOK__SECRET", HMAC.to_owned()),
        (
            "KEYWATCH__NOTIFY__HEARTBEAT_URL",
            format!("{}ping/{BEAT_TOKEN}?t={BEAT_TOKEN}", beat.url),
        ),
    ];
    let command = |args: &[&str]| {
        let mut cmd = keywatch(&cfg, &db, args);
        cmd.env("KEYWATCH_LOG", "debug");
        for (k, v) in &secrets_env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped());
        cmd
    };
    sim.run_to_end();
    let end = sim.with_chain(|c| c.final_block().header.height);
    assert!(end > START + 50, "{end}");
    let end = end.to_string();
    let log = dir.path().join("run.log");
    let mut run = command(&["run", "--until-height", &end]);
    let file = std::fs::File::create(&log).unwrap();
    run.stdout(file.try_clone().unwrap()).stderr(file);
    let mut child = run.spawn().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
    let mut written = std::fs::read_to_string(&log).unwrap();
    let tail = |w: &str| w[w.floor_char_boundary(w.len().saturating_sub(3000))..].to_owned();
    let status = status
        .unwrap_or_else(|_| panic!("run did not end at its height: {}", tail(&written)))
        .unwrap();
    assert!(status.success(), "{}", tail(&written));
    for args in [
        &["alerts"][..],
        &["status"],
        &["check-config"],
        &["alerts", "--json"],
    ] {
        let out = command(args).output().await.unwrap();
        written.push_str(&String::from_utf8_lossy(&out.stdout));
        written.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // every row of every table and view
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables where table_schema = 'public'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in &tables {
        let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select string_agg(r::text, e'\\n') from {t} r"
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        written.push_str(&rows.unwrap_or_default());
    }
    // the run did meet every secret's path: mail after authenticating,
    // signed webhooks after a failure recorded with its url, heartbeats,
    // rpc retries
    assert!(!smtp.mails().is_empty());
    assert!(smtp.authenticated().iter().all(|u| u == "keywatch"));
    assert!(!smtp.authenticated().is_empty());
    assert!(hook.bodies().len() >= 2, "{}", hook.bodies().len());
    assert!(
        written.contains("HTTP 500"),
        "the webhook's failure is recorded"
    );
    assert!(
        written.contains("heartbeat"),
        "the failing heartbeat is logged"
    );
    assert!(written.contains("/…"), "urls are shown cut");
    for secret in [
        RPC_PATH_KEY,
        RPC_QUERY_KEY,
        API_KEY,
        SMTP_PASSWORD,
        HOOK_TOKEN,
        HMAC,
        BEAT_TOKEN,
        db_password.as_str(),
    ] {
        let at = written.find(secret).map(|i| {
            let from = written[..i]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(j, _)| j);
            written[from..(i + secret.len()).min(written.len())].to_owned()
        });
        assert!(
            at.is_none(),
            "{secret} was written: …{}",
            at.unwrap_or_default()
        );
    }
}
