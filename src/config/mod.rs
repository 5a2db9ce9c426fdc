//! The typed settings tree: the shipped TOML file, `KEYWATCH__SECTION__KEY`
//! environment overrides, `DATABASE_URL`, and secrets from env or files only.
//! [`Settings::load`] reports every problem at once, each with its key path.

pub mod reader;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use toml::{Table, Value};

use crate::domain::{AccountId, PublicKey};
use crate::rpc::RpcSettings;
use reader::Fields;
pub use reader::{Problem, Problems};
pub use rules::{RuleSet, RuleSettings, Severity};

pub const DEFAULT_PATH: &str = "config/keywatch.toml";
const ENV_PREFIX: &str = "KEYWATCH__";

#[derive(Debug)]
pub struct Settings {
    pub rpc: RpcConfig,
    pub database: DatabaseConfig,
    pub ingest: IngestConfig,
    pub accounts: Vec<AccountConfig>,
    pub rules: RuleSet,
    pub notify: NotifyConfig,
    pub schedule: ScheduleConfig,
    pub retention: RetentionConfig,
    pub server: ServerConfig,
}

#[derive(Debug, Clone)]
pub struct RpcConfig {
    pub chain_id: String,
    pub client: RpcSettings,
    /// Blocks fetched at once during backfill.
    pub concurrency: usize,
}

#[derive(Debug)]
pub struct DatabaseConfig {
    /// May hold a password: never logged.
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Latest,
    Height(u64),
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub start: StartAt,
    pub poll_interval: Duration,
    /// Accounts per `changes` request.
    pub accounts_per_request: usize,
    /// A standby takes over when the leader's lease is older than this.
    pub takeover_after: Duration,
}

#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub id: AccountId,
    pub label: Option<String>,
    pub expected_keys: Vec<PublicKey>,
    pub cold_keys: Vec<PublicKey>,
    /// Only the rules this account overrides, already merged over `[rules]`.
    pub rules: RuleSet,
    /// Watch it even if it does not exist yet.
    pub allow_missing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

#[derive(Debug)]
pub struct EmailConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: lettre::message::Mailbox,
    /// Recipients of every alert.
    pub to: Vec<lettre::message::Mailbox>,
    /// Extra recipients by severity.
    pub to_by_severity: BTreeMap<Severity, Vec<lettre::message::Mailbox>>,
    pub timeout: Duration,
    /// PEM certificates to trust besides the system roots (a private CA or
    /// a self-signed SMTP server).
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Keywatch,
    Slack,
}

pub struct WebhookConfig {
    /// A secret: Slack and many receivers carry their token in the path.
    pub url: reqwest::Url,
    pub format: WebhookFormat,
    pub secret: Option<SecretString>,
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &crate::rpc::transport::redact_url(&self.url))
            .field("format", &self.format)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug)]
pub struct NotifyConfig {
    /// Alerts for blocks older than this are recorded as suppressed.
    pub max_age: Duration,
    /// Warning/info alerts per channel and interval before batching starts.
    pub batch_after: u32,
    pub batch_interval: Duration,
    pub max_attempts: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub explorer_url: String,
    /// A critical delivery pending this long raises `delivery_failing`.
    pub escalate_after: Duration,
    /// Pinged while ingestion advances (a dead-man's switch); a secret.
    pub heartbeat_url: Option<SecretString>,
    pub heartbeat_every: Duration,
    pub email: Option<EmailConfig>,
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub reconcile: Option<cron::Schedule>,
    pub daily_report: Option<cron::Schedule>,
    pub retention: Option<cron::Schedule>,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub delivery_attempts: Duration,
    /// Blocks without history are pruned once this much older than the
    /// cursor's block.
    pub blocks: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{} problem(s) in {path}:\n{}", .problems.len(), .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Secret keys: never read from the file itself, only `<key>_file` or env.
const SECRETS: &[(&str, &str)] = &[
    ("rpc", "api_key"),
    ("notify", "heartbeat_url"),
    ("notify.email", "password"),
    ("notify.webhook", "secret"),
    ("notify.webhook", "url"),
];

fn env_name(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}__{}", section.replace('.', "__"), key).to_uppercase()
}

/// Applies `KEYWATCH__SECTION__KEY=value` overrides. Values are read as TOML
/// (numbers, booleans, arrays) and fall back to a plain string.
fn apply_env(table: &mut Table, env: &HashMap<String, String>, p: &mut Problems) {
    let mut vars: Vec<_> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            p.add(
                name.clone(),
                "malformed override name (expected KEYWATCH__SECTION__KEY)",
            );
            continue;
        }
        let (key, sections) = path.split_last().expect("split yields at least one part");
        if SECRETS
            .iter()
            .any(|(s, k)| *s == sections.join(".") && k == key)
        {
            continue; // read by `secret()`
        }
        let value = toml::from_str::<Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.clone()));
        if let Err(msg) = set_path(table, sections, key, value) {
            p.add(name.clone(), msg);
        }
    }
}

fn set_path(table: &mut Table, sections: &[String], key: &str, value: Value) -> Result<(), String> {
    let Some((first, rest)) = sections.split_first() else {
        table.insert(key.to_owned(), value);
        return Ok(());
    };
    match table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()))
    {
        Value::Table(t) => set_path(t, rest, key, value),
        _ => Err(format!(
            "cannot override inside {first:?}, which is not a table"
        )),
    }
}

/// A secret from `KEYWATCH__SECTION__KEY`, or from the file named by
/// `<key>_file`. Putting the secret itself in the file is an error.
fn secret(
    p: &mut Problems,
    f: &mut Fields<'_>,
    section: &str,
    key: &str,
    env: &HashMap<String, String>,
) -> Option<SecretString> {
    let var = env_name(section, key);
    if f.known(key).is_some() {
        p.add(
            f.path_of(key),
            format!("secrets are not read from the config file: set {var} or {key}_file"),
        );
    }
    let file_key = format!("{key}_file");
    let from_file =
        f.opt::<String>(p, &file_key)
            .and_then(|path| match std::fs::read_to_string(&path) {
                Ok(s) => Some(SecretString::from(
                    s.trim_end_matches(['\n', '\r']).to_owned(),
                )),
                Err(e) => {
                    p.add(
                        f.path_of(&file_key),
                        format!("cannot read secret file {path:?}: {e}"),
                    );
                    None
                }
            });
    match (env.get(&var), from_file) {
        (Some(v), _) => Some(SecretString::from(v.clone())),
        (None, s) => s,
    }
}

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_mailbox(s: String) -> Result<lettre::message::Mailbox, String> {
    lettre::message::Mailbox::from_str(&s).map_err(|e| format!("invalid email address {s:?}: {e}"))
}

fn parse_cron(s: String) -> Result<Option<cron::Schedule>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    cron::Schedule::from_str(&s)
        .map(Some)
        .map_err(|e| format!("invalid cron expression {s:?} ({e}); 6 or 7 fields, seconds first, e.g. \"0 */30 * * * *\""))
}

/// The fewest pooled connections `run` works with.
const MIN_CONNECTIONS: u32 = 5;

impl Settings {
    /// How long ingestion may stand still before it counts as stalled: the
    /// `ingest_stalled` rule's `after` (5 minutes when unset).
    pub fn stalled_after(&self) -> Duration {
        self.rules
            .get("ingest_stalled")
            .and_then(|r| r.after)
            .unwrap_or(Duration::from_secs(300))
    }

    /// Reads and validates the config file at `path`, with `env` as the
    /// process environment.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, path, env)
    }

    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut table: Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut p = Problems::default();
        apply_env(&mut table, env, &mut p);
        let settings = read(&table, env, &mut p);
        match p.0.is_empty() {
            true => Ok(settings),
            false => Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: p.0,
            }),
        }
    }
}

fn read(table: &Table, env: &HashMap<String, String>, p: &mut Problems) -> Settings {
    let mut root = Fields::root(table);

    let mut f = root.table(p, "rpc");
    let urls: Vec<String> = f.get(p, "urls", vec![]);
    if urls.is_empty() {
        p.add(f.path_of("urls"), "at least one NEAR RPC url is required");
    }
    for (i, u) in urls.iter().enumerate() {
        match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => p.add(format!("rpc.urls[{i}]"), "scheme must be http or https"),
            Err(e) => p.add(format!("rpc.urls[{i}]"), format!("invalid url: {e}")),
        }
    }
    let chain_id: String = f.get(p, "chain_id", "mainnet".into());
    let rps: u32 = f.get(p, "requests_per_second", 15);
    if matches!(chain_id.as_str(), "mainnet" | "testnet") && (1..4).contains(&rps) {
        p.add(f.path_of("requests_per_second"), format!("{rps} cannot keep up with {chain_id}: about 1.7 blocks/s need at least 4 requests/s (0 means unlimited)"));
    }
    let defaults = RpcSettings::default();
    let client = RpcSettings {
        urls,
        timeout: f.get(p, "timeout", defaults.timeout),
        requests_per_second: NonZeroU32::new(rps),
        attempts_per_url: f
            .get(p, "attempts_per_url", defaults.attempts_per_url)
            .max(1),
        backoff_min: f.get(p, "backoff_min", defaults.backoff_min),
        backoff_max: f.get(p, "backoff_max", defaults.backoff_max),
        max_response_bytes: f.get(p, "max_response_bytes", defaults.max_response_bytes),
        api_key: secret(p, &mut f, "rpc", "api_key", env),
    };
    if client.backoff_min > client.backoff_max {
        p.add("rpc.backoff_min", "must not exceed rpc.backoff_max");
    }
    let rpc = RpcConfig {
        chain_id,
        client,
        concurrency: f.get(p, "concurrency", 8usize).max(1),
    };
    f.finish(p);

    let mut f = root.table(p, "database");
    let file_url: String = f.get(
        p,
        "url",
        "postgres://postgres@127.0.0.1:5432/keywatch".into(),
    );
    let database = DatabaseConfig {
        url: SecretString::from(env.get("DATABASE_URL").cloned().unwrap_or(file_url)),
        max_connections: f.get(p, "max_connections", 10),
    };
    if database.max_connections < MIN_CONNECTIONS {
        p.add(
            "database.max_connections",
            format!(
                "{} is too few: the leader keeps two listening connections besides the follower, the lease renewer and the dispatcher; at least {MIN_CONNECTIONS}",
                database.max_connections
            ),
        );
    }
    f.finish(p);

    let mut f = root.table(p, "ingest");
    let start = match f.known("start") {
        None => StartAt::Latest,
        Some(Value::String(s)) if s == "latest" => StartAt::Latest,
        Some(Value::Integer(h)) if *h >= 0 => StartAt::Height(*h as u64),
        Some(other) => {
            p.add(
                "ingest.start",
                format!("expected \"latest\" or a block height, got {other}"),
            );
            StartAt::Latest
        }
    };
    let ingest = IngestConfig {
        start,
        poll_interval: f.get(p, "poll_interval", Duration::from_millis(500)),
        accounts_per_request: f.get(p, "accounts_per_request", 100usize).max(1),
        takeover_after: f
            .get(p, "takeover_after", Duration::from_secs(10))
            .max(Duration::from_millis(500)),
    };
    f.finish(p);

    let mut f = root.table(p, "rules");
    let rules = rules::read_rules(p, &mut f);
    f.finish(p);

    let mut accounts = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for mut a in root.tables(p, "accounts") {
        let id = a.parsed(p, "id", |s: String| {
            AccountId::parse(&s).map_err(|e| e.to_string())
        });
        if a.known("id").is_none() {
            p.add(a.path_of("id"), "is required");
        }
        let keys = |p: &mut Problems, a: &mut Fields<'_>, key: &str| -> Vec<PublicKey> {
            let raw: Vec<String> = a.get(p, key, vec![]);
            raw.iter()
                .enumerate()
                .filter_map(|(i, k)| {
                    PublicKey::parse_handle(k)
                        .map_err(|e| p.add(format!("{}[{i}]", a.path_of(key)), e.to_string()))
                        .ok()
                })
                .collect()
        };
        let expected_keys = keys(p, &mut a, "expected_keys");
        let cold_keys = keys(p, &mut a, "cold_keys");
        let label = a.opt(p, "label");
        let allow_missing = a.get(p, "allow_missing", false);
        let mut rf = a.table(p, "rules");
        let overrides = rules::read_overrides(p, &mut rf, &rules);
        rf.finish(p);
        if let Some(id) = &id
            && !seen.insert(id.clone())
        {
            p.add(a.path_of("id"), format!("{id} is listed twice"));
        }
        a.finish(p);
        if let Some(id) = id {
            accounts.push(AccountConfig {
                id,
                label,
                expected_keys,
                cold_keys,
                rules: overrides,
                allow_missing,
            });
        }
    }

    let mut f = root.table(p, "notify");
    let mut ef = f.table(p, "email");
    let email = read_email(p, &mut ef, env);
    ef.finish(p);
    let mut wf = f.table(p, "webhook");
    let webhook = read_webhook(p, &mut wf, env);
    wf.finish(p);
    let heartbeat_url = secret(p, &mut f, "notify", "heartbeat_url", env);
    if let Some(url) = &heartbeat_url {
        use secrecy::ExposeSecret;
        match reqwest::Url::parse(url.expose_secret()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            // The url may hold a secret token: name the problem, not the url.
            Ok(_) => p.add("notify.heartbeat_url", "scheme must be http or https"),
            Err(e) => p.add("notify.heartbeat_url", format!("invalid url: {e}")),
        }
    }
    let notify = NotifyConfig {
        max_age: f.get(p, "max_age", Duration::from_secs(3600)),
        batch_after: f.get(p, "batch_after", 10),
        batch_interval: f.get(p, "batch_interval", Duration::from_secs(300)),
        max_attempts: f.get(p, "max_attempts", 10u32).max(1),
        retry_min: f.get(p, "retry_min", Duration::from_secs(5)),
        retry_max: f.get(p, "retry_max", Duration::from_secs(1800)),
        explorer_url: f.get(p, "explorer_url", "https://nearblocks.io".into()),
        escalate_after: f.get(p, "escalate_after", Duration::from_secs(15 * 60)),
        heartbeat_url,
        heartbeat_every: f.get(p, "heartbeat_every", Duration::from_secs(60)),
        email,
        webhook,
    };
    f.finish(p);

    let mut f = root.table(p, "schedule");
    let mut cron_at = |key: &str, default: &str| -> Option<cron::Schedule> {
        match f.parsed(p, key, parse_cron) {
            Some(s) => s,
            None => parse_cron(default.into()).expect("default cron expressions are valid"),
        }
    };
    let schedule = ScheduleConfig {
        reconcile: cron_at("reconcile", "0 */30 * * * *"),
        daily_report: cron_at("daily_report", "0 0 8 * * *"),
        retention: cron_at("retention", "0 30 3 * * *"),
    };
    f.finish(p);

    let mut f = root.table(p, "retention");
    let retention = RetentionConfig {
        delivery_attempts: f.get(p, "delivery_attempts", Duration::from_secs(30 * 86400)),
        blocks: f.get(p, "blocks", Duration::from_secs(7 * 86400)),
    };
    f.finish(p);

    let mut f = root.table(p, "server");
    let listen = f
        .parsed(p, "listen", |s: String| {
            SocketAddr::from_str(&s).map_err(|e| format!("invalid listen address {s:?}: {e}"))
        })
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9108)));
    f.finish(p);

    root.finish(p);
    Settings {
        rpc,
        database,
        ingest,
        accounts,
        rules,
        notify,
        schedule,
        retention,
        server: ServerConfig { listen },
    }
}

fn read_email(
    p: &mut Problems,
    f: &mut Fields<'_>,
    env: &HashMap<String, String>,
) -> Option<EmailConfig> {
    let enabled: bool = f.get(p, "enabled", false);
    let host: String = f.get(p, "host", "127.0.0.1".into());
    let tls = f
        .parsed(p, "tls", |s: String| match s.as_str() {
            "none" => Ok(SmtpTls::None),
            "starttls" => Ok(SmtpTls::StartTls),
            "implicit" => Ok(SmtpTls::Implicit),
            _ => Err(format!(
                "unknown tls mode {s:?} (expected none, starttls or implicit)"
            )),
        })
        .unwrap_or(SmtpTls::StartTls);
    let default_port = match tls {
        SmtpTls::None => 25,
        SmtpTls::StartTls => 587,
        SmtpTls::Implicit => 465,
    };
    let port = f.get(p, "port", default_port);
    let username = f.opt(p, "username");
    let password = secret(p, f, "notify.email", "password", env);
    let from = f.parsed(p, "from", parse_mailbox);
    let to: Vec<String> = f.get(p, "to", vec![]);
    let mut to_by_severity = BTreeMap::new();
    let parse_list =
        |p: &mut Problems, path: String, list: Vec<String>| -> Vec<lettre::message::Mailbox> {
            list.into_iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    parse_mailbox(s)
                        .map_err(|e| p.add(format!("{path}[{i}]"), e))
                        .ok()
                })
                .collect()
        };
    let to = parse_list(p, f.path_of("to"), to);
    for sev in [Severity::Critical, Severity::Warning, Severity::Info] {
        let key = format!("to_{}", sev.as_str());
        let list: Vec<String> = f.get(p, &key, vec![]);
        let parsed = parse_list(p, f.path_of(&key), list);
        to_by_severity.insert(sev, parsed);
    }
    let timeout = f.get(p, "timeout", Duration::from_secs(15));
    let allow_insecure: bool = f.get(p, "allow_insecure", false);
    let ca_pem = f.parsed(p, "ca_file", |path: String| {
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("{path:?} holds no PEM certificate"));
        }
        Ok(bytes)
    });
    if !enabled {
        return None;
    }
    if from.is_none() && f.known("from").is_none() {
        p.add(f.path_of("from"), "is required when email is enabled");
    }
    if to.is_empty() && to_by_severity.values().all(Vec::is_empty) {
        p.add(f.path_of("to"), "email is enabled but has no recipients");
    }
    if username.is_some() != password.is_some() {
        p.add(
            f.path_of("username"),
            "username and password go together (password from env or password_file)",
        );
    }
    // Plain text only where nobody can listen: alerts say which keys can
    // sign for an account, and a password must never cross a network in
    // clear.
    if tls == SmtpTls::None {
        if password.is_some() {
            p.add(
                f.path_of("tls"),
                "\"none\" would send the password in clear: use starttls or implicit",
            );
        } else if !is_loopback(&host) && !allow_insecure {
            p.add(
                f.path_of("tls"),
                format!(
                    "\"none\" sends alerts in clear to {host:?}, which is not loopback: use starttls or implicit, or set allow_insecure = true"
                ),
            );
        }
    }
    Some(EmailConfig {
        host,
        port,
        tls,
        username,
        password,
        from: from?,
        to,
        to_by_severity,
        timeout,
        ca_pem,
    })
}

fn read_webhook(
    p: &mut Problems,
    f: &mut Fields<'_>,
    env: &HashMap<String, String>,
) -> Option<WebhookConfig> {
    let enabled: bool = f.get(p, "enabled", false);
    // A secret (a Slack url is its token): from env or `url_file` only, and
    // an invalid one is reported without its text.
    let url = secret(p, f, "notify.webhook", "url", env).and_then(|url| {
        use secrecy::ExposeSecret;
        let problem = match reqwest::Url::parse(url.expose_secret()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => return Some(u),
            Ok(_) => "scheme must be http or https".to_owned(),
            Err(e) => format!("invalid url: {e}"),
        };
        p.add(f.path_of("url"), problem);
        None
    });
    let format = f
        .parsed(p, "format", |s: String| match s.as_str() {
            "keywatch" => Ok(WebhookFormat::Keywatch),
            "slack" => Ok(WebhookFormat::Slack),
            _ => Err(format!("unknown format {s:?} (expected keywatch or slack)")),
        })
        .unwrap_or(WebhookFormat::Keywatch);
    let secret = secret(p, f, "notify.webhook", "secret", env);
    let timeout = f.get(p, "timeout", Duration::from_secs(10));
    if !enabled {
        return None;
    }
    if url.is_none() && !p.mentions(&f.path_of("url")) {
        p.add(
            f.path_of("url"),
            format!(
                "is required when the webhook is enabled: set {} or url_file",
                env_name("notify.webhook", "url")
            ),
        );
    }
    Some(WebhookConfig {
        url: url?,
        format,
        secret,
        timeout,
    })
}
