//! The `keywatch` binary end to end: exit codes, messages, what it writes.

use std::path::PathBuf;
use std::process::Output;

use keywatch::domain::{BlockHeader, CryptoHash};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::support::{Canned, FakeNode, sample_result};

/// The block the localnet captures were read at.
const CURSOR_HASH: &str = "D9AEQvj2yj7UL1f93q6DyjFtTwaZNCh93EnYG7GgHkSC";

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    database_url: String,
}

/// The test database's url: DATABASE_URL with the per-test database name.
fn database_url(pool: &PgPool) -> String {
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(pool.connect_options().get_database().unwrap());
    url.to_string()
}

fn env_for(pool: &PgPool, rpc_url: &str, chain: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keywatch.toml");
    std::fs::write(&config, format!("[rpc]\nurls = [{rpc_url:?}]\nchain_id = {chain:?}\ntimeout = \"2s\"\nbackoff_min = \"1ms\"\nbackoff_max = \"2ms\"\n")).unwrap();
    Env {
        _dir: dir,
        config,
        database_url: database_url(pool),
    }
}

async fn keywatch(env: &Env, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env("DATABASE_URL", &env.database_url)
        .env_remove("KEYWATCH_LOG")
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn set_cursor(pool: &PgPool) {
    let header = BlockHeader {
        height: 130,
        hash: CryptoHash::parse(CURSOR_HASH).unwrap(),
        prev_hash: CryptoHash::parse("BogGnVewefFt99yZZxJNMoNZpcwbfvFjQm4CDjcuPk6V").unwrap(),
        timestamp_ns: 1795331870346282541,
    };
    let mut tx = pool.begin().await.unwrap();
    keywatch::store::insert_block(&mut tx, &header)
        .await
        .unwrap();
    keywatch::store::advance_cursor(&mut tx, &header)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A localnet node at block 130: alice exists with two keys, bob was deleted.
async fn localnet() -> FakeNode {
    FakeNode::start(|_, r| {
        let p = &r["params"];
        match (r["method"].as_str().unwrap(), p["request_type"].as_str(), p["account_id"].as_str()) {
            ("status", _, _) => Canned::result(r, sample_result("localnet-protocol-61/status.json")),
            ("query", Some("view_account"), Some("alice.test.near")) => {
                assert_eq!(p["block_id"], CURSOR_HASH, "baselines are read at the cursor's block");
                Canned::result(r, sample_result("localnet-protocol-61/view_account.json"))
            }
            ("query", Some("view_access_key_list"), Some("alice.test.near")) => Canned::result(r, sample_result("localnet-protocol-61/view_access_key_list.json")),
            ("query", Some(_), Some(other)) => Canned::error(r, 200, "HANDLER_ERROR", "UNKNOWN_ACCOUNT", json!({"requested_account_id": other, "block_height": 130, "block_hash": CURSOR_HASH})),
            _ => Canned::error(r, 400, "REQUEST_VALIDATION_ERROR", "METHOD_NOT_FOUND", json!({})),
        }
    })
    .await
}

async fn watched_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from watched_accounts")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn watch_add_with_a_bad_id_exits_2_and_writes_nothing(pool: PgPool) {
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "localnet");
    let out = keywatch(&env, &["watch", "add", "alice.test.near", "bad..id"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "invalid account id \"bad..id\": separators '.' and '.' are adjacent at position 4"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(watched_count(&pool).await, 0);
    assert!(
        node.requests().is_empty(),
        "nothing was asked before the input was valid"
    );

    let out = keywatch(
        &env,
        &[
            "watch",
            "add",
            "alice.test.near",
            "--expect-key",
            "ed25519:abc",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid public key \"ed25519:abc\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(watched_count(&pool).await, 0);
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn check_config_lists_every_mistake_and_exits_2(pool: PgPool) {
    let env = env_for(&pool, "http://127.0.0.1:1/", "localnet");
    std::fs::write(
        &env.config,
        "[rpc]\nurls = [\"not a url\"]\ntimeout = 5\n[ingest]\nstrat = \"latest\"\n",
    )
    .unwrap();
    let out = keywatch(&env, &["check-config"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(err.contains("rpc.urls[0]: invalid url"), "{err}");
    assert!(
        err.contains(
            "rpc.timeout: expected a duration such as \"10s\", \"15m\" or \"1h\", got the integer 5"
        ),
        "{err}"
    );
    assert!(
        err.contains("ingest.strat: unknown key (did you mean \"start\"?)"),
        "{err}"
    );

    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/keywatch.toml");
    let env = Env {
        config: shipped,
        ..env
    };
    let out = keywatch(&env, &["check-config"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok"));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn watch_add_reads_a_baseline_at_the_cursor_and_keys_show_it(pool: PgPool) {
    set_cursor(&pool).await;
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "localnet");
    let out = keywatch(
        &env,
        &["watch", "add", "alice.test.near", "--label", "alice"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "watching alice.test.near: baseline at block 130 with 2 key(s)"
    );

    let out = keywatch(&env, &["keys", "alice.test.near"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("alice.test.near now: 2 key(s)"), "{text}");
    assert!(text.contains("full_access"), "{text}");
    assert!(
        text.contains(
            "function_call  allowance 0.4980576524675168 NEAR  receiver bob.test.near  methods ping"
        ),
        "{text}"
    );

    let out = keywatch(&env, &["keys", "alice.test.near", "--at", "130", "--json"]).await;
    let at: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(at.as_array().unwrap().len(), 2);
    assert_eq!(at[1]["allowance"], "498057652467516800000000");

    let out = keywatch(&env, &["keys", "alice.test.near", "--at", "131"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("height 131 is above the last processed block 130"),
        "{}",
        stderr(&out)
    );

    let out = keywatch(&env, &["history", "alice.test.near", "--json"]).await;
    let hist: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(&str, &str)> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("key", "baseline"),
            ("key", "baseline"),
            ("balance", "baseline")
        ]
    );
    assert_eq!(hist[2]["amount"], "9997888392454685800000000");

    let out = keywatch(&env, &["watch", "list"]).await;
    assert!(
        stdout(&out).contains("alice.test.near (alice)  expected keys: 0  baseline: block 130"),
        "{}",
        stdout(&out)
    );

    let out = keywatch(&env, &["watch", "remove", "alice.test.near", "nobody.near"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "one id not watched: nothing removed"
    );
    assert_eq!(watched_count(&pool).await, 1);
    let out = keywatch(&env, &["watch", "remove", "alice.test.near"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(watched_count(&pool).await, 0);
    let out = keywatch(&env, &["keys", "alice.test.near"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = keywatch(&env, &["keys", "alice.test.near", "--at", "130"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "history outlives the watch: {}",
        stderr(&out)
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn an_account_that_does_not_exist_needs_allow_missing(pool: PgPool) {
    set_cursor(&pool).await;
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "localnet");
    let out = keywatch(&env, &["watch", "add", "alice.test.near", "bob.test.near"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("bob.test.near do not exist on localnet at block 130; pass --allow-missing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(watched_count(&pool).await, 0, "alice is not added either");

    let out = keywatch(&env, &["watch", "add", "bob.test.near", "--allow-missing"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("baseline at block 130 with 0 key(s) (account does not exist yet)"),
        "{}",
        stdout(&out)
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_node_on_another_chain_is_refused(pool: PgPool) {
    set_cursor(&pool).await;
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "mainnet");
    let out = keywatch(&env, &["watch", "add", "alice.test.near"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("node is on chain \"localnet\", but the config says \"mainnet\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(watched_count(&pool).await, 0);
}

#[tokio::test]
async fn simulate_serves_the_demo_scenario_now_and_stops_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml");
    let started = chrono::Utc::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--clock",
            "on-read",
            "--genesis-now",
            "--scenario",
        ])
        .arg(&scenario)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_owned();
    assert!(
        first.starts_with(
            "simulating localnet (Current node) from height 1000 at http://127.0.0.1:"
        ),
        "{first}"
    );
    let rpc = keywatch::rpc::RpcClient::new(keywatch::rpc::RpcSettings {
        urls: vec![url],
        ..Default::default()
    })
    .unwrap();
    let status = rpc.verify_chain("localnet").await.unwrap();
    assert!(status.sync_info.latest_block_height >= 1000);
    // the story's genesis_time is 2026-11-22; --genesis-now moves it here
    let genesis = rpc
        .block(&keywatch::rpc::BlockRef::Height(1000))
        .await
        .unwrap()
        .header
        .timestamp_ns;
    let genesis = chrono::DateTime::from_timestamp_nanos(genesis as i64);
    let since = (genesis - started).num_seconds();
    assert!(
        (0..60).contains(&since),
        "genesis at {genesis}, started {started}"
    );
    crate::support::signal(child.id().unwrap(), "TERM");
    let exit = child.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0));
    let last = lines.next_line().await.unwrap().unwrap();
    assert!(last.starts_with("stopped at height 10"), "{last}");
}

#[tokio::test]
async fn alerts_test_sends_a_signed_test_alert_through_the_webhook() {
    let hook = FakeNode::start(|_, _| Canned::text(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keywatch.toml");
    std::fs::write(
        &config,
        "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\n[notify.webhook]\nenabled = true\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("--config")
        .arg(&config)
        .args(["alerts", "test", "--channel", "webhook"])
        .env("KEYWATCH__NOTIFY__WEBHOOK__SECRET", "s")
        .env("KEYWATCH__NOTIFY__WEBHOOK__URL", &hook.url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("test alert sent through webhook"));
    let body = &hook.bodies()[0];
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["alerts"][0]["title"], "keywatch test alert");
    let ts: i64 = hook
        .header(0, "x-keywatch-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        hook.header(0, "x-keywatch-signature").unwrap(),
        keywatch::notify::webhook::signature("s", ts, body)
    );
    // a channel that is not enabled is bad input
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("--config")
        .arg(&config)
        .args(["alerts", "test", "--channel", "email"])
        .env("KEYWATCH__NOTIFY__WEBHOOK__URL", &hook.url)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notify.email is not enabled"));
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn status_reports_the_leaders_readiness_and_exits_1_without_one(pool: PgPool) {
    set_cursor(&pool).await;
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "localnet");
    let out = keywatch(&env, &["watch", "add", "alice.test.near"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // nobody leads; the node serves no `block`, so the head is unknown too
    let out = keywatch(&env, &["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["ready"], false);
    assert_eq!(s["leader"], serde_json::Value::Null);
    assert_eq!(
        (s["cursor"].as_u64(), s["watched_accounts"].as_i64()),
        (Some(130), Some(1))
    );
    let reasons = s["not_ready"].to_string();
    assert!(reasons.contains("no `keywatch run` has led"), "{reasons}");
    assert!(reasons.contains("rpc:"), "{reasons}");
    assert!(stderr(&out).contains("not ready"), "{}", stderr(&out));

    // a leader (this connection) that reports the final head and is ready
    let mut leader = pool.acquire().await.unwrap();
    sqlx::query("set application_name = 'keywatch-1-feedbeef'")
        .execute(&mut *leader)
        .await
        .unwrap();
    let epoch = keywatch::store::lease::take(&mut leader, "keywatch-1-feedbeef", None)
        .await
        .unwrap()
        .unwrap();
    let report = keywatch::store::lease::Report {
        final_head: Some(135),
        not_ready: vec![],
    };
    assert!(
        keywatch::store::lease::renew(&mut leader, epoch, &report)
            .await
            .unwrap()
    );
    let out = keywatch(&env, &["status", "--json"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["leader"]["name"], "keywatch-1-feedbeef");
    assert_eq!(
        (s["final_head"].as_u64(), s["final_head_from"].as_str()),
        (Some(135), Some("leader"))
    );
    assert_eq!(s["lag_blocks"].as_u64(), Some(5));

    // the leader says why it is not ready; the human form lists it
    let report = keywatch::store::lease::Report {
        final_head: Some(135),
        not_ready: vec!["stalled for 40s: rpc failing: 503".to_owned()],
    };
    assert!(
        keywatch::store::lease::renew(&mut leader, epoch, &report)
            .await
            .unwrap()
    );
    let out = keywatch(&env, &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("ready:          no"), "{text}");
    assert!(
        text.contains("- stalled for 40s: rpc failing: 503"),
        "{text}"
    );
    assert!(
        text.contains("leader:         keywatch-1-feedbeef (epoch 1"),
        "{text}"
    );
    assert!(
        text.contains("watched:        1 account(s), 0 awaiting a baseline"),
        "{text}"
    );
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn a_newer_command_does_not_migrate_under_a_running_older_leader(pool: PgPool) {
    let node = localnet().await;
    let env = env_for(&pool, &node.url, "localnet");
    // a leader (this connection) running a binary one migration behind
    let mut leader = pool.acquire().await.unwrap();
    sqlx::query("set application_name = 'keywatch-2-0ldbeef0'")
        .execute(&mut *leader)
        .await
        .unwrap();
    keywatch::store::lease::take(&mut leader, "keywatch-2-0ldbeef0", None)
        .await
        .unwrap()
        .unwrap();
    let latest: i64 = sqlx::query_scalar(
        "delete from _sqlx_migrations where version = (select max(version) from _sqlx_migrations) returning version",
    )
    .fetch_one(&mut *leader)
    .await
    .unwrap();
    let out = keywatch(&env, &["watch", "list"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the running leader keywatch-2-0ldbeef0 uses schema")
            && err.contains(&format!("older than this keywatch's {latest}")),
        "{err}"
    );
    let applied: bool =
        sqlx::query_scalar("select exists(select 1 from _sqlx_migrations where version = $1)")
            .bind(latest)
            .fetch_one(&mut *leader)
            .await
            .unwrap();
    assert!(!applied, "nothing was migrated");
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn silence_refuses_bad_input_and_alerts_lists_what_it_recorded(pool: PgPool) {
    let env = env_for(&pool, "http://127.0.0.1:1/", "localnet");
    for (args, says) in [
        (
            &[
                "silence", "dao.near", "--rule", "nope", "--for", "2h", "--reason", "x",
            ][..],
            "unknown rule \"nope\"",
        ),
        (
            &["silence", "dao.near", "--for", "0s", "--reason", "x"],
            "a silence lasts more than 0 and at most 30 days",
        ),
        (
            &["silence", "dao.near", "--for", "60days", "--reason", "x"],
            "at most 30 days",
        ),
        (
            &["silence", "dao.near", "--for", "2h", "--reason", " "],
            "--reason is required",
        ),
        (
            &["silence", "NOT AN ID", "--for", "2h", "--reason", "x"],
            "invalid account id",
        ),
    ] {
        let out = keywatch(&env, args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let count: i64 = sqlx::query_scalar("select count(*) from silences")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing written");
    let out = keywatch(
        &env,
        &[
            "silence",
            "dao.near",
            "--rule",
            "balance_drop",
            "--for",
            "2h",
            "--reason",
            "moving funds",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("silence #1: balance_drop alerts on dao.near until"));
    let out = keywatch(&env, &["alerts"]).await;
    let text = stdout(&out);
    assert!(
        text.contains("silence #1 on dao.near (balance_drop) until")
            && text.contains("moving funds (not in effect until the leader announces it)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_database_is_created_or_the_error_says_what_to_run() {
    let base = std::env::var("DATABASE_URL").unwrap();
    let admin = PgPool::connect(&base).await.unwrap();
    let pid = std::process::id();
    let (db, role) = (format!("keywatch_auto_{pid}"), format!("kw_nocreate_{pid}"));
    let url_for = |user: Option<&str>, db: &str| {
        let mut url = reqwest::Url::parse(&base).unwrap();
        if let Some(u) = user {
            url.set_username(u).unwrap();
            url.set_password(Some("kw-test-pw")).unwrap();
        }
        url.set_path(db);
        url.to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keywatch.toml");
    std::fs::write(&config, "[rpc]\nurls = [\"http://127.0.0.1:1/\"]\n").unwrap();
    let watch_list = |url: String| {
        let config = config.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
                .arg("--config")
                .arg(&config)
                .args(["watch", "list"])
                .env("DATABASE_URL", url)
                .output()
                .await
                .unwrap()
        }
    };
    // no database: created, migrated, answered
    let out = watch_list(url_for(None, &db)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let tables: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(&db)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(tables, 1);
    // a role that may not create it: told what to run, exit 2, nothing made
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {role} login nocreatedb password 'kw-test-pw'"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let other = format!("{db}_other");
    let out = watch_list(url_for(Some(&role), &other)).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "database \"{other}\" does not exist and role \"{role}\" may not create it: create it as a role that may (`createdb -O {role} {other}`)"
        )),
        "{}",
        stderr(&out)
    );
    for sql in [
        format!("drop database {db} with (force)"),
        format!("drop role {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for (shell, marks) in [
        ("bash", &["_keywatch()", "complete -F _keywatch"][..]),
        ("zsh", &["#compdef keywatch"]),
        ("fish", &["complete -c keywatch"]),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        for mark in marks {
            assert!(text.contains(mark), "{shell}: no {mark:?}");
        }
        assert!(text.contains("silence"), "{shell}: every command is in it");
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["completions", "cmd.exe"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad input");
}
