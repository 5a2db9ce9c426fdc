//! What ships beside the binary stays in step with it: the Grafana
//! dashboard asks only for metrics `/metrics` exports and shows those the
//! issue of record asked for; docker-compose.yml has the whole stack, each
//! service under its profile; and the exposition of a real `keywatch run`
//! equals what that run stored.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `expr` anywhere in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `keywatch_*` names in a PromQL expression.
fn names(expr: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = expr;
    while let Some(i) = rest.find("keywatch_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_asks_only_for_metrics_the_binary_exports() {
    keywatch::metrics::install();
    let exposition = keywatch::metrics::render();
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    // every declared metric is exported from the start, before anything
    // happened (histograms as their _bucket, _sum and _count series), with
    // exactly its declared labels
    for (name, kind, labels, _) in keywatch::metrics::EXPORTED {
        let series = match kind {
            keywatch::metrics::Kind::Histogram => format!("{name}_bucket"),
            _ => name.to_string(),
        };
        assert!(exported.contains(&series), "{series} in:\n{exposition}");
        for line in exposition
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(series.as_str()))
        {
            let keys: Vec<&str> = line
                .split_once('{')
                .map(|(_, rest)| rest.split('}').next().unwrap())
                .into_iter()
                .flat_map(|l| l.split(','))
                .map(|kv| kv.split('=').next().unwrap())
                .filter(|k| *k != "le")
                .collect();
            assert_eq!(keys, *labels, "{line}");
        }
    }
    let text = read("deploy/grafana/dashboards/keywatch.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut all = vec![];
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 15, "{all:?}");
    // every name anywhere in the file: panel queries, the template
    // variable's query, links
    let used: BTreeSet<String> = names(&text).into_iter().collect();
    assert!(
        used.contains("keywatch_build_info"),
        "the instance variable"
    );
    for name in &used {
        assert!(
            exported.contains(name),
            "the dashboard asks for {name}, which keywatch does not export"
        );
    }
    // what the dashboard is for: head, cursor, lag, blocks/s, RPC latency
    // and errors by method, alerts by rule, deliveries by outcome, alert
    // latency
    for name in [
        "keywatch_final_head_height",
        "keywatch_cursor_height",
        "keywatch_lag_blocks",
        "keywatch_blocks_ingested_total",
        "keywatch_rpc_request_duration_seconds_bucket",
        "keywatch_rpc_errors_total",
        "keywatch_alerts_total",
        "keywatch_deliveries_total",
        "keywatch_commit_to_delivery_seconds_bucket",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
    }
    // Prometheus scrapes the compose services that serve /metrics
    let prometheus = read("deploy/prometheus/prometheus.yml");
    for service in ["keywatch", "keywatch-demo"] {
        assert!(
            prometheus.contains(&format!("{service}:9108")),
            "{prometheus}"
        );
    }
}

#[test]
fn the_compose_file_has_the_whole_stack_each_service_under_its_profile() {
    // service -> its profiles line, read off the file's own layout
    let compose = read("docker-compose.yml");
    let mut services: Vec<(String, Option<String>)> = vec![];
    let mut in_services = false;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_services = line == "services:";
        } else if in_services
            && let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':'))
            && !name.starts_with([' ', '#'])
        {
            services.push((name.to_owned(), None));
        } else if in_services && let Some(p) = line.trim().strip_prefix("profiles: ") {
            services.last_mut().unwrap().1 = Some(p.to_owned());
        }
    }
    let want = [
        ("db", None),
        ("mailpit", None),
        ("keywatch", Some("[\"live\"]")),
        ("simulator", Some("[\"demo\"]")),
        ("keywatch-demo", Some("[\"demo\"]")),
        ("prometheus", Some("[\"metrics\"]")),
        ("grafana", Some("[\"metrics\"]")),
    ]
    .map(|(s, p)| (s.to_owned(), p.map(str::to_owned)));
    assert_eq!(services, want);
}

#[test]
fn names_are_read_out_of_promql() {
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le) (rate(keywatch_a_bucket{x=\"keywatch_no\"}[5m]))) / keywatch_b"
        ),
        ["keywatch_a_bucket", "keywatch_no", "keywatch_b"]
    );
}

/// The exposition's value of one series (name and labels as written).
fn series(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} in:\n{exposition}"))
        .parse()
        .unwrap()
}

#[sqlx::test(migrator = "keywatch::store::MIGRATOR")]
async fn run_exports_exactly_what_it_did(pool: sqlx::PgPool) {
    let smtp = crate::smtp::SmtpServer::start().await;
    let (metrics, blocks) = run_the_story(&pool, smtp.port).await;
    let count = |sql: &str| {
        let pool = pool.clone();
        let sql = sql.to_owned();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap() as f64
        }
    };
    let blocks = blocks as f64;
    assert_eq!(series(&metrics, "keywatch_blocks_ingested_total"), blocks);
    assert_eq!(
        series(&metrics, "keywatch_finality_to_commit_seconds_count"),
        blocks
    );
    assert_eq!(
        series(&metrics, "keywatch_key_rows_total"),
        count("select count(*) from key_history where source = 'chain'").await
    );
    assert_eq!(
        series(&metrics, "keywatch_balance_rows_total"),
        count("select count(*) from balance_history where source = 'chain'").await
    );
    let by_rule: Vec<(String, i64)> =
        sqlx::query_as("select rule, count(*) from alerts group by rule")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(by_rule.len() >= 6, "{by_rule:?}");
    for rule in keywatch::config::rules::rule_names() {
        let n = by_rule
            .iter()
            .find(|(r, _)| r == rule)
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            series(
                &metrics,
                &format!("keywatch_alerts_total{{rule=\"{rule}\"}}")
            ),
            n as f64,
            "{rule}"
        );
    }
    assert_eq!(
        series(
            &metrics,
            "keywatch_deliveries_total{channel=\"email\",outcome=\"delivered\"}"
        ),
        12.0
    );
    assert_eq!(
        series(
            &metrics,
            "keywatch_commit_to_delivery_seconds_count{channel=\"email\"}"
        ),
        12.0
    );
    assert_eq!(smtp.mails().len(), 12);
    for method in keywatch::rpc::client::METHOD_NAMES {
        let requests = series(
            &metrics,
            &format!("keywatch_rpc_requests_total{{method=\"{method}\"}}"),
        );
        let timed = series(
            &metrics,
            &format!("keywatch_rpc_request_duration_seconds_count{{method=\"{method}\"}}"),
        );
        // head polls go on while the exposition is rendered: its counters
        // and histograms are read a moment apart
        assert!(
            (requests - timed).abs() <= 2.0,
            "{method}: {requests} {timed}"
        );
    }
    assert!(series(&metrics, "keywatch_rpc_requests_total{method=\"block\"}") >= blocks);
    assert_eq!(
        series(&metrics, "keywatch_cursor_height"),
        count("select block_height from ingest_cursor").await
    );
    assert_eq!(
        series(
            &metrics,
            &format!(
                "keywatch_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
}

/// Plays the attack story (its genesis now) with a real `keywatch run`
/// mailing to `smtp_port`, until the story is ingested and every alert
/// delivered; returns `/metrics` then, and the blocks the run committed.
async fn run_the_story(pool: &sqlx::PgPool, smtp_port: u16) -> (String, i64) {
    use crate::crash::{database_url, keywatch};
    use keywatch::sim::{Clock, Scenario, SimOptions};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/attack.toml");
    let mut scenario = Scenario::load(&path).unwrap();
    scenario.start_now();
    let end = scenario.last_action_height();
    let (sim, _dir, cfg) = crate::crash::attack_story(
        scenario,
        SimOptions {
            clock: Clock::OnRead,
            until: Some(end),
            ..SimOptions::default()
        },
    )
    .await;
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[notify.email]\nenabled = true\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
         from = \"kw@example.com\"\nto = [\"ops@example.com\"]\n\
         [[accounts]]\nid = \"treasury.near\"\n\
         expected_keys = [\"ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6\"]\n\
         [[accounts]]\nid = \"relayer.near\"\n[[accounts]]\nid = \"bob.near\"\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    // [server] listen is 127.0.0.1:0: the log says which port it got
    let mut run = keywatch(&cfg, &database_url(pool), &["run"])
        .env("KEYWATCH_LOG", "info")
        .spawn()
        .unwrap();
    let (listen, log) = listen_address(run.stderr.take().unwrap()).await;
    let last_final = || sim.with_chain(|c| c.final_block().header.height);
    if let Err(state) = story_done(pool, last_final, end).await {
        run.kill().await.unwrap();
        panic!(
            "not ingested and delivered within 60 s: (cursor, alerts, undelivered) {state:?}, \
             end {end}\n{}",
            log.lock().unwrap()
        );
    }
    let blocks: i64 = sqlx::query_scalar("select count(*) from blocks where block_height > 1000")
        .fetch_one(pool)
        .await
        .unwrap();
    // the counters move just after the commit the database shows
    keywatch::rpc::transport::install_crypto_provider();
    let scrape = || async {
        reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut metrics = scrape().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while series(&metrics, "keywatch_blocks_ingested_total") < blocks as f64
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        metrics = scrape().await;
    }
    run.kill().await.unwrap();
    (metrics, blocks)
}

/// Waits (60 s at most) until the cursor is at the final head at the
/// story's end, its 12 alerts are written and every delivery delivered;
/// else the (cursor, alerts, undelivered) seen last.
async fn story_done(
    pool: &sqlx::PgPool,
    last_final: impl Fn() -> u64,
    end: u64,
) -> Result<(), (Option<i64>, i64, i64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state: (Option<i64>, i64, i64) = sqlx::query_as(
            "select (select block_height from ingest_cursor), (select count(*) from alerts),
                    (select count(*) from alert_deliveries where status <> 'delivered')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let head = last_final();
        let (cursor, alerts, undelivered) = state;
        if cursor.is_some_and(|c| c as u64 == head)
            && head + 2 >= end
            && alerts == 12
            && undelivered == 0
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(state);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Reads `keywatch run`'s log until it says where it serves; keeps reading
/// (so the pipe never fills) into the returned log.
async fn listen_address(
    stderr: tokio::process::ChildStderr,
) -> (String, std::sync::Arc<std::sync::Mutex<String>>) {
    use tokio::io::AsyncBufReadExt;
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (found, address) = tokio::sync::oneshot::channel();
    let kept = log.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut found = Some(found);
        while let Ok(Some(line)) = lines.next_line().await {
            let plain = strip_ansi(&line);
            if plain.contains("serving /metrics")
                && let Some(at) = plain.split("listen=").nth(1)
                && let Some(found) = found.take()
            {
                let _ = found.send(at.split_whitespace().next().unwrap_or("").to_owned());
            }
            kept.lock().unwrap().push_str(&plain);
            kept.lock().unwrap().push('\n');
        }
    });
    let address = tokio::time::timeout(std::time::Duration::from_secs(30), address)
        .await
        .unwrap_or_else(|_| panic!("run never said where it serves:\n{}", log.lock().unwrap()))
        .unwrap_or_else(|_| panic!("run ended first:\n{}", log.lock().unwrap()));
    (address, log)
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
