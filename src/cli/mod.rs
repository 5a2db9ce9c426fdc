//! The `keywatch` command line: argument parsing, exit codes, dispatch.
//!
//! Exit codes: 0 success, 2 bad input (config, arguments), 1 anything else.

mod alerts;
pub mod demo;
mod ingest;
mod output;
mod run;
mod status;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::{self, Settings};
use crate::domain::AccountId;

#[derive(Debug, Parser)]
#[command(
    name = "keywatch",
    version,
    about = "Watches NEAR accounts for access-key and balance changes"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations.
    Migrate,
    /// Validate the config: exit 0, or list every problem and exit 2.
    CheckConfig,
    /// Manage the watch list.
    #[command(subcommand)]
    Watch(WatchCommand),
    /// Keys of an account now, or at a past height.
    Keys {
        account: String,
        /// Block height to answer for (from history).
        #[arg(long)]
        at: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Key and balance events of an account, oldest first.
    History {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow the chain and record every key and balance change of the
    /// watched accounts, until Ctrl-C or SIGTERM.
    Run {
        /// Stop once the cursor's block height is at least H.
        #[arg(long)]
        until_height: Option<u64>,
        /// Stop at the final head seen at start.
        #[arg(long)]
        exit_when_caught_up: bool,
        /// Skip history the rpc can no longer serve (recorded as a gap).
        #[arg(long)]
        accept_gap: bool,
        /// How long to wait for pending deliveries before exiting.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: std::time::Duration,
    },
    /// With no history yet: start at H and index up to --to or the head.
    Backfill {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
    /// Alerts and their delivery state per channel.
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsAction>,
        #[arg(long)]
        json: bool,
    },
    /// Planned changes without noise: alerts for ACCOUNT (or one rule of it)
    /// are decided and recorded, not sent, for a while. The running leader
    /// announces the silence on every channel before it takes effect.
    Silence {
        account: String,
        /// Only this rule (default: every rule).
        #[arg(long)]
        rule: Option<String>,
        /// How long, e.g. 2h (at most 30 days).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Why: shown in the announcement and on every silenced alert.
        #[arg(long)]
        reason: String,
    },
    /// The configured rules.
    #[command(subcommand)]
    Rules(RulesAction),
    /// Compare stored keys and balances with the chain at the cursor's block.
    Reconcile { accounts: Vec<String> },
    /// Whether keywatch is ready and why not: leader, head, cursor, lag,
    /// outbox, last reconcile. Exit 1 when not ready.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    /// `keywatch completions bash > /etc/bash_completion.d/keywatch`.
    Completions { shell: clap_complete::Shell },
    /// Run the whole pipeline against the built-in simulator playing an
    /// attack on a treasury, delivering every alert (through the configured
    /// channels, or to a mail receiver on loopback that prints each mail),
    /// in a scratch database dropped after.
    Demo {
        /// Produce blocks as fast as they are read instead of every 600 ms.
        #[arg(long)]
        fast: bool,
        /// Keep the scratch database, to query what the demo stored.
        #[arg(long)]
        keep: bool,
    },
    /// Serve a scripted NEAR chain over JSON-RPC (see scenarios/README.md).
    Simulate {
        #[arg(long)]
        scenario: PathBuf,
        #[arg(long, default_value = "127.0.0.1:3030")]
        listen: std::net::SocketAddr,
        /// real-time (one block per block_time), on-read (one block per
        /// read of the head) or stepped (only the genesis block).
        #[arg(long, default_value = "real-time")]
        clock: String,
        /// Produce no block above this height.
        #[arg(long)]
        until: Option<u64>,
        /// Start the chain now instead of at the scenario's genesis_time,
        /// so its blocks are news to a follower rather than history.
        #[arg(long)]
        genesis_now: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// Send a test alert through one channel now (nothing is stored).
    Test {
        #[arg(long, value_parser = ["email", "webhook"])]
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Replay stored history through the configured rules and print what
    /// would have fired (nothing is stored or sent).
    Test {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    /// Start watching accounts (baseline read at the ingest cursor's block).
    Add {
        #[arg(required = true)]
        accounts: Vec<String>,
        #[arg(long)]
        label: Option<String>,
        /// A key the account is expected to have (no alert when it is added).
        #[arg(long = "expect-key")]
        expect_keys: Vec<String>,
        /// Watch an account that does not exist yet.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Stop watching accounts (their history is kept).
    Remove {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// List watched accounts.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: the user's input (config, arguments) is wrong.
    BadInput(anyhow::Error),
    /// Exit 1.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

pub type CmdResult = Result<(), Failure>;

/// An account that does not exist is bad input; anything else is not.
impl From<crate::ingest::baseline::TrackError> for Failure {
    fn from(e: crate::ingest::baseline::TrackError) -> Self {
        match e {
            crate::ingest::baseline::TrackError::Missing { .. } => Failure::BadInput(e.into()),
            other => Failure::Other(other.into()),
        }
    }
}

pub fn bad_input(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(anyhow::anyhow!("{msg}"))
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,keywatch=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::CheckConfig => check_config(&cli.config),
        Command::Migrate => migrate(&cli.config).await,
        Command::Watch(cmd) => watch::run(&cli.config, cmd).await,
        Command::Keys { account, at, json } => output::keys(&cli.config, &account, at, json).await,
        Command::History { account, json } => output::history(&cli.config, &account, json).await,
        Command::Simulate {
            scenario,
            listen,
            clock,
            until,
            genesis_now,
        } => simulate(&scenario, listen, &clock, until, genesis_now).await,
        Command::Run {
            until_height,
            exit_when_caught_up,
            accept_gap,
            drain_timeout,
        } => {
            let opts = crate::ingest::follower::FollowOptions {
                until_height,
                exit_when_caught_up,
                accept_gap,
                ..Default::default()
            };
            run::run(&cli.config, opts, drain_timeout).await
        }
        Command::Alerts { action: None, json } => alerts::list(&cli.config, json).await,
        Command::Alerts {
            action: Some(AlertsAction::Test { channel }),
            ..
        } => alerts::test(&cli.config, &channel).await,
        Command::Rules(RulesAction::Test { from, to }) => {
            alerts::rules_test(&cli.config, from, to).await
        }
        Command::Silence {
            account,
            rule,
            duration,
            reason,
        } => alerts::silence(&cli.config, &account, rule.as_deref(), duration, &reason).await,
        Command::Demo { fast, keep } => demo::demo(&cli.config, fast, keep).await,
        Command::Backfill { from, to } => ingest::backfill(&cli.config, from, to).await,
        Command::Reconcile { accounts } => ingest::reconcile(&cli.config, &accounts).await,
        Command::Status { json } => status::status(&cli.config, json).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "keywatch",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub fn load_settings(path: &std::path::Path) -> Result<Settings, Failure> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Settings::load(path, &env).map_err(|e| Failure::BadInput(e.into()))
}

fn check_config(path: &std::path::Path) -> CmdResult {
    let settings = load_settings(path)?;
    println!(
        "{}: ok ({} rpc url(s) on {}, {} configured account(s))",
        path.display(),
        settings.rpc.client.urls.len(),
        settings.rpc.chain_id,
        settings.accounts.len()
    );
    Ok(())
}

pub async fn connect(settings: &Settings) -> Result<sqlx::PgPool, Failure> {
    let pool = connect_as_is(settings).await?;
    migrate_unless_led(settings, &pool).await?;
    Ok(pool)
}

/// The database without migrating it (read-only commands); created first
/// when the server says it does not exist and the role may create it.
pub async fn connect_as_is(settings: &Settings) -> Result<sqlx::PgPool, Failure> {
    use anyhow::Context;
    match crate::store::create::ensure_database(settings.database.url.expose_secret()).await {
        Ok(_) => {}
        Err(crate::store::StoreError::Invalid(why)) => return Err(bad_input(why)),
        // an unreachable server: the connection below reports it
        Err(e) => tracing::debug!(error = %e, "could not check that the database exists"),
    }
    Ok(crate::store::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await
    .context("cannot connect to the database (database.url or DATABASE_URL)")?)
}

/// Brings the schema up to this binary's, unless a running leader uses an
/// older one: only the leader migrates under a live deployment, so a newer
/// command-line binary never changes the schema under an older `run`.
async fn migrate_unless_led(settings: &Settings, pool: &sqlx::PgPool) -> Result<(), Failure> {
    use anyhow::Context;
    let mine = crate::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let theirs = crate::store::lease::schema_version(&mut conn)
        .await
        .context("reading the schema version")?;
    if theirs.is_some_and(|v| v >= mine) {
        return Ok(());
    }
    let leader = crate::store::lease::live_holder(&mut conn, settings.ingest.takeover_after)
        .await
        .context("reading the leader lease")?;
    drop(conn);
    if let Some(holder) = leader {
        return Err(Failure::Other(anyhow::anyhow!(
            "the running leader {holder} uses schema {}, older than this keywatch's {mine}; only the leader migrates: upgrade and restart it (or stop it and run `keywatch migrate`)",
            theirs.unwrap_or_default()
        )));
    }
    crate::store::migrate(pool)
        .await
        .context("cannot apply migrations")?;
    Ok(())
}

/// The database (migrated) and an RPC client whose every url serves the
/// configured chain.
pub async fn connect_rpc(
    settings: &Settings,
) -> Result<(sqlx::PgPool, crate::rpc::RpcClient), Failure> {
    use anyhow::Context;
    let pool = connect(settings).await?;
    let rpc = crate::rpc::RpcClient::new(settings.rpc.client.clone()).map_err(bad_input)?;
    rpc.verify_chain(&settings.rpc.chain_id)
        .await
        .context("checking the rpc node")?;
    Ok((pool, rpc))
}

async fn migrate(path: &std::path::Path) -> CmdResult {
    let settings = load_settings(path)?;
    connect(&settings).await?;
    println!("migrations applied");
    Ok(())
}

pub fn parse_account(raw: &str) -> Result<AccountId, Failure> {
    AccountId::parse(raw).map_err(bad_input)
}

async fn simulate(
    path: &std::path::Path,
    listen: std::net::SocketAddr,
    clock: &str,
    until: Option<u64>,
    genesis_now: bool,
) -> CmdResult {
    use crate::sim::{Clock, Scenario, SimOptions, Simulator};
    let clock = match clock {
        "real-time" => Clock::RealTime,
        "on-read" => Clock::OnRead,
        "stepped" => Clock::Stepped,
        other => {
            return Err(bad_input(format!(
                "--clock {other:?}: expected real-time, on-read or stepped"
            )));
        }
    };
    let mut scenario = Scenario::load(path).map_err(bad_input)?;
    if genesis_now {
        scenario.start_now();
    }
    let (chain_id, profile, start) = (
        scenario.chain.chain_id.clone(),
        scenario.chain.profile,
        scenario.chain.start_height,
    );
    let sim = Simulator::start(
        scenario,
        SimOptions {
            listen,
            clock,
            until,
            faults: None,
        },
    )
    .await
    .map_err(|e| Failure::Other(anyhow::anyhow!("cannot listen on {listen}: {e}")))?;
    println!(
        "simulating {chain_id} ({profile:?} node) from height {start} at {}",
        sim.url()
    );
    // Tests and scripts read the url from this line.
    use std::io::Write;
    std::io::stdout()
        .flush()
        .map_err(|e| Failure::Other(e.into()))?;
    shutdown_signal()
        .map_err(|e| Failure::Other(e.into()))?
        .await;
    let head = sim.with_chain(|c| c.head().header.height);
    println!("stopped at height {head}");
    Ok(())
}

/// A future that resolves on Ctrl-C or SIGTERM. Both handlers are in
/// place when this returns (from then on neither signal kills the
/// process), not only once the future is first polled.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}
