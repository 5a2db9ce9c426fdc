//! The config: the shipped file, every problem at once, env overrides, secrets.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use keywatch::config::{ConfigError, Settings, Severity, StartAt};
use secrecy::ExposeSecret;

fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keywatch.toml"))
        .unwrap()
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_toml(text, Path::new("test.toml"), &env)
}

fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match load(text, env) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(|p| p.to_string()).collect()
        }
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_shipped_config_is_valid_and_has_sensible_defaults() {
    let s = load(&shipped(), &[]).unwrap();
    assert_eq!(s.rpc.chain_id, "mainnet");
    assert!(
        s.rpc
            .client
            .urls
            .iter()
            .all(|u| !u.contains("rpc.mainnet.near.org")),
        "not the deprecated endpoint"
    );
    assert_eq!(s.rpc.client.requests_per_second.map(|n| n.get()), Some(15));
    assert_eq!(s.ingest.start, StartAt::Latest);
    assert_eq!(
        s.rules.len(),
        16,
        "every rule of the design table, and ingest_recovered, ingest_stopped, delivery_failing, silence_started"
    );
    assert_eq!(s.rules["new_full_access_key"].severity, Severity::Critical);
    assert_eq!(s.rules["allowance_drain"].settle_blocks, Some(10));
    assert_eq!(s.notify.max_age, Duration::from_secs(3600));
    assert!(
        s.notify.email.is_none() && s.notify.webhook.is_none(),
        "channels are opt-in"
    );
    assert!(s.server.listen.ip().is_loopback());
    assert!(s.schedule.reconcile.is_some());
}

#[test]
fn three_mistakes_are_all_reported_with_their_key_paths() {
    let text = shipped()
        .replacen("timeout = \"10s\"", "timeout = \"10 parsecs\"", 1)
        .replace("[server]", "[server]\nlisen = \"127.0.0.1:1\"")
        .replace(
            "severity = \"warning\"\ncooldown = \"15m\"\n# Severity",
            "severity = \"loud\"\ncooldown = \"15m\"\n# Severity",
        );
    let p = problems(&text, &[]);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].starts_with("rpc.timeout: invalid duration \"10 parsecs\""),
        "{p:?}"
    );
    assert!(p.iter().any(|x| x == "rules.new_function_call_key.severity: unknown severity \"loud\" (expected critical, warning or info)"), "{p:?}");
    assert!(
        p.iter()
            .any(|x| x == "server.lisen: unknown key (did you mean \"listen\"?)"),
        "{p:?}"
    );
}

#[test]
fn account_entries_are_validated_one_by_one() {
    let text = r#"
        [rpc]
        urls = ["http://127.0.0.1:3030", "ftp://x"]
        [[accounts]]
        id = "bad..id"
        [[accounts]]
        id = "ok.near"
        expected_keys = ["ed25519:abc"]
        [accounts.rules.balance_drop]
        min_drop = "1.5"
        window = "2h"
        [accounts.rules.no_such_rule]
        [[accounts]]
        id = "ok.near"
        [schedule]
        reconcile = "every hour"
    "#;
    let p = problems(text, &[]);
    let expect = [
        "rpc.urls[1]: scheme must be http or https",
        "accounts[0].id: invalid account id \"bad..id\": separators '.' and '.' are adjacent at position 4",
        "accounts[1].expected_keys[0]: invalid public key \"ed25519:abc\": base58 decodes to 3 bytes, expected 32 for ed25519",
        "accounts[1].rules.no_such_rule: unknown rule",
        "accounts[2].id: ok.near is listed twice",
    ];
    for e in expect {
        assert!(p.iter().any(|x| x == e), "missing {e:?} in {p:#?}");
    }
    assert!(
        p.iter()
            .any(|x| x.starts_with("schedule.reconcile: invalid cron expression \"every hour\"")),
        "{p:#?}"
    );
    assert_eq!(p.len(), 6, "{p:#?}");
}

#[test]
fn per_account_overrides_merge_over_the_global_rule() {
    let text = shipped()
        + r#"
[[accounts]]
id = "treasury.near"
label = "treasury"
expected_keys = ["ml-dsa-65-hash:4F9TwuSqWwvoyu7JVZDsupPhC7oYbYNsisBV2yQvyXFn"]
[accounts.rules.balance_drop]
min_drop = "1000.5"
"#;
    let s = load(&text, &[]).unwrap();
    let acc = &s.accounts[0];
    let rule = &acc.rules["balance_drop"];
    assert_eq!(
        rule.min_drop,
        Some(keywatch::domain::Yocto(
            1_000_500_000_000_000_000_000_000_000
        ))
    );
    assert_eq!(
        rule.window, s.rules["balance_drop"].window,
        "unset keys keep the global value"
    );
    assert_eq!(acc.expected_keys.len(), 1);
}

#[test]
fn environment_overrides_apply_with_their_types() {
    let s = load(
        &shipped(),
        &[
            ("KEYWATCH__RPC__TIMEOUT", "3s"),
            ("KEYWATCH__RPC__URLS", "[\"http://127.0.0.1:3030\"]"),
            ("KEYWATCH__INGEST__START", "12345"),
            ("KEYWATCH__RULES__KEY_USED__ENABLED", "false"),
            ("DATABASE_URL", "postgres://u:p@db/k"),
        ],
    )
    .unwrap();
    assert_eq!(s.rpc.client.timeout, Duration::from_secs(3));
    assert_eq!(s.rpc.client.urls, ["http://127.0.0.1:3030"]);
    assert_eq!(s.ingest.start, StartAt::Height(12345));
    assert!(!s.rules["key_used"].enabled);
    assert_eq!(s.database.url.expose_secret(), "postgres://u:p@db/k");
    let p = problems(&shipped(), &[("KEYWATCH__RPC__TIMOUT", "3s")]);
    assert_eq!(p, ["rpc.timout: unknown key (did you mean \"timeout\"?)"]);
}

#[test]
fn secrets_come_from_env_or_files_never_from_the_config() {
    let email = |extra: &str| {
        shipped().replace(
            "[notify.email]\nenabled = false",
            &format!("[notify.email]\nenabled = true\nfrom = \"kw <kw@example.com>\"\nusername = \"kw\"\n{extra}"),
        )
        .replace("to = []", "to = [\"ops@example.com\"]")
    };
    let p = problems(&email("password = \"hunter2\""), &[]);
    assert!(p.iter().any(|x| x.starts_with("notify.email.password: secrets are not read from the config file: set KEYWATCH__NOTIFY__EMAIL__PASSWORD")), "{p:?}");
    assert!(
        p.iter().all(|x| !x.contains("hunter2")),
        "the secret is never echoed"
    );

    let s = load(
        &email(""),
        &[("KEYWATCH__NOTIFY__EMAIL__PASSWORD", "from-env")],
    )
    .unwrap();
    assert_eq!(
        s.notify.email.unwrap().password.unwrap().expose_secret(),
        "from-env"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-file\n").unwrap();
    let s = load(
        &email(&format!("password_file = {:?}", file.to_str().unwrap())),
        &[],
    )
    .unwrap();
    let email_cfg = s.notify.email.unwrap();
    assert_eq!(
        email_cfg.password.as_ref().unwrap().expose_secret(),
        "from-file"
    );
    assert!(
        !format!("{email_cfg:?}").contains("from-file"),
        "Debug output redacts the secret"
    );

    let p = problems(&email("password_file = \"/nonexistent/pw\""), &[]);
    assert!(
        p.iter()
            .any(|x| x.starts_with("notify.email.password_file: cannot read secret file")),
        "{p:?}"
    );
}

#[test]
fn the_webhook_url_is_a_secret_and_debug_of_the_settings_shows_no_secret() {
    let slack = "https://hooks.slack.com/services/T000/B000/XyZs3cr3tT0ken";
    let hook = |extra: &str| {
        shipped().replace(
            "[notify.webhook]\nenabled = false",
            &format!("[notify.webhook]\nenabled = true\n{extra}"),
        )
    };
    let p = problems(&hook(&format!("url = {slack:?}")), &[]);
    assert!(
        p.iter().any(|x| x.starts_with(
            "notify.webhook.url: secrets are not read from the config file: set KEYWATCH__NOTIFY__WEBHOOK__URL"
        )),
        "{p:?}"
    );
    assert!(p.iter().all(|x| !x.contains("XyZs3cr3tT0ken")), "{p:?}");
    let p = problems(&hook(""), &[]);
    assert!(
        p.iter().any(|x| x.starts_with(
            "notify.webhook.url: is required when the webhook is enabled: set KEYWATCH__NOTIFY__WEBHOOK__URL"
        )),
        "{p:?}"
    );
    let p = problems(
        &hook(""),
        &[("KEYWATCH__NOTIFY__WEBHOOK__URL", "ftp://x/s3cr3tpath")],
    );
    assert_eq!(p, ["notify.webhook.url: scheme must be http or https"]);

    // every secret set, and an rpc url with a key in its path
    let text = hook("").replace(
        "urls = [\"https://free.rpc.fastnear.com\", \"https://near.lava.build\"]",
        "urls = [\"https://rpc.example.com/v1/RpcK3yInPath?key=RpcK3yInQuery\"]",
    );
    let s = load(
        &text,
        &[
            ("KEYWATCH__NOTIFY__WEBHOOK__URL", slack),
            ("KEYWATCH__NOTIFY__WEBHOOK__SECRET", "Hm4cS3cret"),
            ("KEYWATCH__RPC__API_KEY", "ApiK3ySecret"),
            ("DATABASE_URL", "postgres://kw:DbPassw0rd@db/keywatch"),
        ],
    )
    .unwrap();
    assert_eq!(s.notify.webhook.as_ref().unwrap().url.as_str(), slack);
    let shown = format!("{s:?}");
    for secret in [
        "XyZs3cr3tT0ken",
        "Hm4cS3cret",
        "ApiK3ySecret",
        "DbPassw0rd",
        "RpcK3yInPath",
        "RpcK3yInQuery",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("https://hooks.slack.com/…"), "{shown}");
}

#[test]
fn plain_smtp_is_refused_with_a_password_or_beyond_loopback() {
    let email = |lines: &str| {
        shipped()
            .replace(
                "[notify.email]\nenabled = false",
                "[notify.email]\nenabled = true\nfrom = \"kw <kw@example.com>\"",
            )
            .replace("to = []", "to = [\"ops@example.com\"]")
            .replace("\nhost = \"127.0.0.1\"\n", "\n")
            .replace("tls = \"starttls\"\nallow_insecure = false", lines)
    };
    let p = problems(&email("tls = \"none\"\nhost = \"smtp.example.com\""), &[]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(
            "notify.email.tls: \"none\" sends alerts in clear to \"smtp.example.com\""
        ),
        "{p:?}"
    );
    load(
        &email("tls = \"none\"\nhost = \"smtp.example.com\"\nallow_insecure = true"),
        &[],
    )
    .unwrap();
    for host in ["127.0.0.1", "localhost", "::1"] {
        load(&email(&format!("tls = \"none\"\nhost = {host:?}")), &[]).unwrap();
    }
    let p = problems(
        &email("tls = \"none\"\nhost = \"127.0.0.1\"\nusername = \"kw\"\nallow_insecure = true"),
        &[("KEYWATCH__NOTIFY__EMAIL__PASSWORD", "pw")],
    );
    assert_eq!(
        p,
        ["notify.email.tls: \"none\" would send the password in clear: use starttls or implicit"]
    );
}

#[test]
fn the_demo_config_of_docker_compose_is_valid() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml"))
            .unwrap();
    let s = load(&text, &[]).unwrap();
    assert_eq!(s.accounts.len(), 3);
    assert_eq!(s.rpc.chain_id, "localnet");
    assert!(s.notify.email.is_some(), "the demo mails every alert");
}

#[test]
fn a_budget_too_small_for_mainnet_is_refused() {
    let p = problems(
        &shipped().replace("requests_per_second = 15", "requests_per_second = 2"),
        &[],
    );
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with("rpc.requests_per_second: 2 cannot keep up with mainnet"),
        "{p:?}"
    );
}

#[test]
fn too_few_database_connections_are_refused() {
    let text = shipped().replace("max_connections = 10", "max_connections = 2");
    let p = problems(&text, &[]);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("database.max_connections: 2 is too few"),
        "{p:?}"
    );
}

/// Every key line of the shipped file, in order: (`section.key`, the value
/// as written, or None for a key left commented out).
fn shipped_keys() -> Vec<(String, Option<String>)> {
    let mut section = String::new();
    let mut keys = vec![];
    for line in shipped().lines() {
        let (commented, line) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, line),
        };
        let header = line.trim_end();
        if header.starts_with('[') && header.ends_with(']') {
            section = header.trim_matches(['[', ']']).to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        if section.is_empty()
            || key.is_empty()
            || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            continue;
        }
        // `id = "x"        # required`
        let value = value.split("  #").next().unwrap().trim();
        keys.push((
            format!("{section}.{key}"),
            (!commented).then(|| value.to_owned()),
        ));
    }
    keys
}

/// The rows of the README's configuration reference, in order.
fn reference_rows() -> Vec<(String, Option<String>)> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("\n### Reference\n")
        .expect("the README has a reference");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells[0].trim_start_matches("| ").trim_matches('`');
            let default = match cells[1] {
                "—" => None,
                d => Some(
                    d.strip_prefix('`')
                        .and_then(|d| d.strip_suffix('`'))
                        .unwrap_or(d),
                ),
            };
            (key.to_owned(), default.map(str::to_owned))
        })
        .collect()
}

#[test]
fn the_readme_reference_lists_every_key_of_the_shipped_file_with_its_default() {
    let file = shipped_keys();
    assert!(file.len() > 100, "{file:?}");
    assert!(file.contains(&("notify.email.port".into(), None)));
    assert!(file.contains(&("retention.blocks".into(), Some("\"7days\"".into()))));
    let readme = reference_rows();
    for (row, key) in readme.iter().zip(&file) {
        assert_eq!(
            row, key,
            "README reference row against config/keywatch.toml"
        );
    }
    assert_eq!(
        readme.len(),
        file.len(),
        "{:?}",
        &readme[readme.len().min(file.len())..]
    );
}
