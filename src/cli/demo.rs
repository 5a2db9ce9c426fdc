//! `keywatch demo`: the whole pipeline against the built-in chain simulator
//! playing the attack story, in a scratch database (dropped after, unless
//! `--keep`), every alert delivered: through the configured channels, or
//! to a mail receiver on loopback that prints each mail it gets.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::PgConnectOptions;

use crate::cli::ingest::stop_on_signal;
use crate::cli::{CmdResult, Failure, bad_input, load_settings};
use crate::config::{EmailConfig, SmtpTls, StartAt};
use crate::dispatch::Dispatcher;
use crate::ingest::alerts::AlertContext;
use crate::ingest::baseline::{init_cursor, start_tracking};
use crate::ingest::follower::{FollowOptions, follow};
use crate::notify::inbox::Received;
use crate::notify::render::clean;
use crate::rpc::{RpcClient, RpcSettings};
use crate::sim::{Clock, Scenario, SimOptions, Simulator};
use crate::store::alerts::Tally;
use crate::store::watch::NewWatch;
use tokio::sync::oneshot::error::TryRecvError;

const STORY: &str = include_str!("../../scenarios/attack.toml");
const EXPECTED: &str = "ed25519:8FtSP48gqecdyqsH2Xinz5tvneUKJv1i9k77AVNReiB6";

/// Three questions to ask of what the demo stored; the README's SQL
/// cookbook opens with them and a test runs them.
pub const QUERIES: [(&str, &str); 3] = [
    (
        "Which keys could sign for treasury.near at the end of block 1010?",
        "select public_key, permission, allowance
from (
  select distinct on (public_key) *
  from key_history
  where account_id = 'treasury.near'
    and block_height <= 1010 and action <> 'nonce_slot'
  order by public_key, block_height desc,
           case source when 'chain' then 0 when 'baseline' then 1 else 2 end desc,
           index_in_block desc
) last_write
where action <> 'deleted';",
    ),
    (
        "Every full-access key (plain or gas key) added, newest first:",
        "select account_id, public_key, permission, block_height, tx_hash
from key_history
where action = 'added'
  and permission in ('full_access', 'gas_key_full_access')
order by block_height desc, index_in_block desc;",
    ),
    (
        "Every alert and what became of it, channel by channel:",
        "select alert_id, rule, account_id, change_block_height, channel, status
from alert_log
order by alert_id, channel;",
    ),
];

pub async fn demo(config: &std::path::Path, fast: bool, keep: bool) -> CmdResult {
    let mut settings = load_settings(config)?;
    let options: PgConnectOptions = settings
        .database
        .url
        .expose_secret()
        .parse()
        .map_err(|e| bad_input(format!("database.url: {e}")))?;
    let inbox = if settings.notify.email.is_none() && settings.notify.webhook.is_none() {
        Some(use_inbox(&mut settings).await?)
    } else {
        None
    };
    // should warnings come faster than batch_after, their digest goes out
    // within seconds, not minutes
    settings.notify.batch_interval = settings.notify.batch_interval.min(DEMO_BATCH);
    // from before the database exists, so an interruption always drops it
    let interrupted = stop_on_signal();
    let mut admin = crate::store::create::server_connection(&options)
        .await
        .context("connecting to the database server (database.url or DATABASE_URL)")?;
    let name = format!("keywatch_demo_{}", std::process::id());
    crate::store::create::create_database(&mut admin, &name)
        .await
        .with_context(|| {
            format!("creating the scratch database {name} (the role must be allowed to create databases)")
        })?;
    let mut signalled = interrupted.clone();
    let result = tokio::select! {
        r = run_demo(&settings, options.clone().database(&name), fast, inbox, interrupted) => r,
        // the steps before and after following do not watch the signal:
        // given a moment to end on their own, they are cancelled
        () = async {
            let _ = signalled.wait_for(|stop| *stop).await;
            tokio::time::sleep(GRACE).await;
        } => {
            println!("\ninterrupted");
            Ok(())
        }
    };
    if keep {
        println!("\nkept the database: psql {}", psql_url(&options, &name));
        return result;
    }
    let dropped = crate::store::create::drop_database(&mut admin, &name).await;
    match (result, dropped) {
        (Ok(()), Ok(_)) => {
            println!("\ndropped the scratch database {name}; `keywatch demo --keep` keeps it");
            Ok(())
        }
        (Ok(()), Err(e)) => Err(Failure::Other(
            anyhow::Error::new(e).context(format!("dropping the scratch database {name}")),
        )),
        // the demo's own failure is the one to report
        (Err(failed), dropped) => {
            if let Err(e) = dropped {
                tracing::warn!(error = %e, database = %name, "cannot drop the scratch database");
            }
            Err(failed)
        }
    }
}

/// Where the kept database is, for `psql`: user, host, port and name only
/// (a password, in the url or its query, is never printed).
fn psql_url(options: &PgConnectOptions, name: &str) -> String {
    let (user, host, port) = (
        options.get_username(),
        options.get_host(),
        options.get_port(),
    );
    if host.starts_with('/') {
        format!("\"postgres://{user}@/{name}?host={host}&port={port}\"")
    } else {
        format!("\"postgres://{user}@{host}:{port}/{name}\"")
    }
}

/// No channel is configured: every alert is mailed to a receiver on
/// loopback, which prints each mail as it arrives.
async fn use_inbox(settings: &mut crate::config::Settings) -> Result<Inbox, Failure> {
    let (port, mails) = crate::notify::inbox::start()
        .await
        .context("starting the demo's mail receiver on 127.0.0.1")?;
    let mailbox = |s: &str| {
        s.parse::<lettre::message::Mailbox>()
            .expect("a valid address")
    };
    settings.notify.email = Some(EmailConfig {
        host: "127.0.0.1".into(),
        port,
        tls: SmtpTls::None,
        username: None,
        password: None,
        from: mailbox("keywatch <keywatch@localhost>"),
        to: vec![mailbox("you@localhost")],
        to_by_severity: Default::default(),
        timeout: Duration::from_secs(10),
        ca_pem: None,
    });
    Ok(Inbox { port, mails })
}

const DEMO_BATCH: Duration = Duration::from_secs(2);

/// How long the demo has to end on its own after Ctrl-C or SIGTERM.
const GRACE: Duration = Duration::from_secs(2);

/// The demo's own mail receiver.
struct Inbox {
    port: u16,
    mails: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

/// How many lines of each mail's text are printed.
const MAIL_LINES: usize = 6;

/// Prints a mail, cleaned: anything on 127.0.0.1 may connect to the
/// receiver, and the terminal must not take its text for commands.
fn print_mail(n: usize, mail: &Received) {
    println!(
        "\n  mail {n} to {}: {}",
        clean(&mail.to.join(", ")),
        clean(&mail.subject)
    );
    for line in mail
        .text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && *l != mail.subject)
        .take(MAIL_LINES)
    {
        println!("  | {}", clean(line));
    }
}

async fn run_demo(
    settings: &crate::config::Settings,
    database: PgConnectOptions,
    fast: bool,
    inbox: Option<Inbox>,
    interrupted: tokio::sync::watch::Receiver<bool>,
) -> CmdResult {
    let pool = crate::store::connect_with(database, 5)
        .await
        .context("connecting to the demo database")?;
    crate::store::migrate(&pool)
        .await
        .context("migrating the demo database")?;
    let mut scenario = Scenario::from_toml(STORY, "the built-in demo story")
        .map_err(|e| Failure::Other(e.into()))?;
    // the story happens now: its alerts are news, as live ones are
    scenario.start_now();
    let (start, end) = (scenario.chain.start_height, scenario.last_action_height());
    let clock = if fast { Clock::OnRead } else { Clock::RealTime };
    let sim = Simulator::start(
        scenario,
        SimOptions {
            clock,
            until: Some(end + 3),
            ..SimOptions::default()
        },
    )
    .await
    .context("starting the simulator")?;
    println!(
        "simulated chain at {} ({}), heights {start}..{end}",
        sim.url(),
        if fast {
            "as fast as read"
        } else {
            "one block per 600 ms"
        }
    );
    match &inbox {
        Some(inbox) => println!(
            "no channel configured: alerts are mailed to the demo's receiver on 127.0.0.1:{}",
            inbox.port
        ),
        None => println!(
            "the story's alerts (treasury.near, relayer.near and bob.near on a simulated chain) \
             go out through the configured channels: {}",
            AlertContext::from_settings(settings).channels.join(", ")
        ),
    }
    let rpc = RpcClient::new(RpcSettings {
        urls: vec![sim.url()],
        ..RpcSettings::default()
    })
    .map_err(bad_input)?;
    let watch = |id: &str, expected: Vec<crate::domain::PublicKey>| NewWatch {
        account_id: crate::domain::AccountId::parse(id).expect("the story's ids are valid"),
        label: None,
        expected_keys: expected,
        cold_keys: vec![],
        allow_missing: false,
    };
    let expected = vec![crate::domain::PublicKey::parse(EXPECTED).expect("valid key")];
    let watches = [
        watch("treasury.near", expected),
        watch("relayer.near", vec![]),
        watch("bob.near", vec![]),
    ];
    start_tracking(&pool, &rpc, "localnet", &watches, false)
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    println!(
        "watching treasury.near (expecting key {}…), relayer.near and bob.near",
        &EXPECTED[..16]
    );
    while sim.with_chain(|c| c.final_block().header.height) < start + 1 {
        rpc.status().await.context("waiting for the first block")?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    init_cursor(&pool, &rpc, StartAt::Height(start + 1))
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    let played = play(settings, &pool, &rpc, end, inbox, interrupted).await;
    // closed before the caller drops the database, whatever happened
    pool.close().await;
    played
}

/// Follows the story to its end with the rules on, delivering and printing
/// as it goes, then prints what it did and the queries to try. Ctrl-C or
/// SIGTERM (`interrupted`) stops following after the current block and
/// ends at once, deliveries pending or not, so the caller still drops the
/// scratch database.
async fn play(
    settings: &crate::config::Settings,
    pool: &sqlx::PgPool,
    rpc: &RpcClient,
    end: u64,
    inbox: Option<Inbox>,
    interrupted: tokio::sync::watch::Receiver<bool>,
) -> CmdResult {
    let ctx = AlertContext::from_settings(settings);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let dispatcher = Dispatcher::new(pool.clone(), settings, Arc::new(chrono::Utc::now))
        .map_err(|e| Failure::Other(e.into()))?;
    let dispatching = tokio::spawn(async move { dispatcher.run(stop, DRAIN).await });
    let (alerts_done, done) = tokio::sync::oneshot::channel();
    let printing = tokio::spawn(print_alerts(pool.clone(), done));
    let (mails_done, done) = tokio::sync::oneshot::channel();
    let mails = inbox.map(|inbox| tokio::spawn(print_mails(inbox.mails, done)));
    let opts = FollowOptions {
        until_height: Some(end),
        poll_interval: Duration::from_millis(100),
        ..FollowOptions::default()
    };
    let mut interrupted = interrupted;
    let summary = follow(pool, rpc, &opts, Some(&ctx), interrupted.clone()).await;
    // every delivery is attempted before the demo ends, unless interrupted
    let _ = stop_tx.send(true);
    let mut dispatching = dispatching;
    let dispatched = tokio::select! {
        d = &mut dispatching => Some(d),
        _ = interrupted.wait_for(|stop| *stop) => None,
    };
    let Some(dispatched) = dispatched else {
        dispatching.abort();
        printing.abort();
        if let Some(task) = mails {
            task.abort();
        }
        if let Err(e) = summary {
            tracing::warn!(error = %e, "following ended with an error before the interruption");
        }
        println!("\ninterrupted");
        return Ok(());
    };
    let _ = alerts_done.send(());
    let printed = printing.await;
    let summary = summary.map_err(|e| Failure::Other(e.into()))?;
    dispatched
        .context("the dispatcher ended abnormally")?
        .map_err(|e| Failure::Other(e.into()))?;
    printed.context("printing alerts")?;
    let mut conn = pool.acquire().await.context("counting alerts")?;
    let Tally {
        alerts,
        delivered,
        undelivered,
    } = crate::store::alerts::tally(&mut conn)
        .await
        .context("counting alerts")?;
    let _ = mails_done.send(());
    let received = match mails {
        Some(task) => format!(", {} mails received", task.await.context("printing mails")?),
        None => String::new(),
    };
    println!(
        "\ndone: {} blocks ingested, {} key rows, {} balance rows, {alerts} alerts, \
         {delivered} deliveries made{received}",
        summary.blocks, summary.key_rows, summary.balance_rows
    );
    if undelivered > 0 {
        println!("{undelivered} deliveries did not go out: see `keywatch alerts` or alert_log");
    }
    println!(
        "\nTry these on what it stored (views: key_history, current_keys, balance_history, alert_log):"
    );
    for (question, sql) in QUERIES {
        println!("\n-- {question}\n{sql}");
    }
    Ok(())
}

/// How long the demo keeps delivering after the story ends.
const DRAIN: Duration = Duration::from_secs(30);

/// Prints each alert as it is decided (looking every 100 ms), until
/// `done`; then those written since the last look.
async fn print_alerts(pool: sqlx::PgPool, mut done: tokio::sync::oneshot::Receiver<()>) {
    let mut seen = 0i64;
    loop {
        let rows = async {
            let mut conn = pool.acquire().await?;
            crate::store::alerts::headlines_after(&mut conn, seen).await
        }
        .await;
        match rows {
            Ok(rows) => {
                for a in rows {
                    let severity = a.severity.to_uppercase();
                    println!("block {}  [{severity}] {}", a.block_height, clean(&a.title));
                    seen = a.id;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the alerts to print them"),
        }
        if matches!(done.try_recv(), Ok(()) | Err(TryRecvError::Closed)) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            // one more look, for what was written since this one
            _ = &mut done => {}
        }
    }
}

/// Prints each mail the receiver gets until `done`, then those already
/// received (the receiver queues a mail before it accepts it, so once the
/// dispatcher has finished every mail is queued); returns how many.
async fn print_mails(
    mut mails: tokio::sync::mpsc::UnboundedReceiver<Received>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> usize {
    let mut n = 0;
    loop {
        tokio::select! {
            mail = mails.recv() => match mail {
                Some(mail) => {
                    n += 1;
                    print_mail(n, &mail);
                }
                None => return n,
            },
            _ = &mut done => break,
        }
    }
    while let Ok(mail) = mails.try_recv() {
        n += 1;
        print_mail(n, &mail);
    }
    n
}
