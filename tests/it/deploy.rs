//! What ships beside the binary stays in step with it: the Grafana
//! dashboard asks only for metrics `/metrics` exports, and shows each of
//! those the issue of record asked for.

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
    // happened (histograms as their _bucket, _sum and _count series)
    for (name, kind, _, _) in keywatch::metrics::EXPORTED {
        let series = match kind {
            keywatch::metrics::Kind::Histogram => format!("{name}_bucket"),
            _ => name.to_string(),
        };
        assert!(exported.contains(&series), "{series} in:\n{exposition}");
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
