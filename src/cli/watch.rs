//! `keywatch watch add|remove|list`.
//!
//! `add` validates every id and key first (exit 2, nothing written), then
//! starts tracking: with `run` leading, its follower reads the baselines
//! between two blocks ([`crate::ingest::baseline::ask_follower`]); with none,
//! they are read here at the cursor's block and written under its lock
//! ([`crate::ingest::baseline::start_tracking`]).

use std::path::Path;

use anyhow::Context;

use crate::cli::{
    CmdResult, Failure, WatchCommand, bad_input, connect, connect_rpc, load_settings,
};
use crate::domain::{AccountId, PublicKey};
use crate::ingest::baseline::{ask_follower, start_tracking};
use crate::store;
use crate::store::watch::{AddOutcome, NewWatch};

pub async fn run(config: &Path, cmd: WatchCommand) -> CmdResult {
    match cmd {
        WatchCommand::Add {
            accounts,
            label,
            expect_keys,
            allow_missing,
        } => add(config, &accounts, label, &expect_keys, allow_missing).await,
        WatchCommand::Remove { accounts } => remove(config, &accounts).await,
        WatchCommand::List { json } => list(config, json).await,
    }
}

fn parse_all<T>(
    raw: &[String],
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, Failure> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for r in raw {
        match parse(r) {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(bad_input(errors.join("\n")))
    }
}

async fn add(
    config: &Path,
    raw_accounts: &[String],
    label: Option<String>,
    raw_keys: &[String],
    allow_missing: bool,
) -> CmdResult {
    let accounts = parse_all(raw_accounts, |s| {
        AccountId::parse(s).map_err(|e| e.to_string())
    })?;
    let expected = parse_all(raw_keys, |s| {
        PublicKey::parse_handle(s).map_err(|e| e.to_string())
    })?;
    let settings = load_settings(config)?;
    let (pool, rpc) = connect_rpc(&settings).await?;
    let watches: Vec<NewWatch> = accounts
        .into_iter()
        .map(|account_id| NewWatch {
            account_id,
            label: label.clone(),
            expected_keys: expected.clone(),
            cold_keys: vec![],
            allow_missing,
        })
        .collect();
    let mut conn = pool.acquire().await.context("connecting to the database")?;
    let leader = store::lease::live_holder(&mut conn, settings.ingest.takeover_after)
        .await
        .context("reading the leader lease")?;
    drop(conn);
    let chain = &settings.rpc.chain_id;
    let outcomes = match leader {
        // The running follower reads the baselines between two blocks.
        Some(_) => ask_follower(&pool, &rpc, chain, &watches, allow_missing).await?,
        None => start_tracking(&pool, &rpc, chain, &watches, allow_missing).await?,
    };
    for t in outcomes {
        let account = &t.account;
        match t.outcome {
            AddOutcome::Tracked { baseline_height } => println!(
                "watching {account}: baseline at block {baseline_height} with {} key(s){}",
                t.keys,
                if t.exists {
                    ""
                } else {
                    " (account does not exist yet)"
                }
            ),
            AddOutcome::Pending => {
                println!("watching {account}: baseline will be read when ingestion starts")
            }
            AddOutcome::Updated => {
                println!("{account} was already watched: label and expected keys updated")
            }
        }
    }
    Ok(())
}

async fn remove(config: &Path, raw: &[String]) -> CmdResult {
    let accounts = parse_all(raw, |s| AccountId::parse(s).map_err(|e| e.to_string()))?;
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut tx = pool.begin().await.context("starting a transaction")?;
    let cursor = store::lock_cursor(&mut tx)
        .await
        .context("locking the ingest cursor")?;
    let mut not_watched = Vec::new();
    for account in &accounts {
        if !store::watch::is_watched(&mut tx, account)
            .await
            .context("reading the watch list")?
        {
            not_watched.push(account.to_string());
        }
    }
    if !not_watched.is_empty() {
        return Err(bad_input(format!(
            "not watched: {}",
            not_watched.join(", ")
        )));
    }
    for account in &accounts {
        store::watch::remove(&mut tx, account, cursor.as_ref())
            .await
            .with_context(|| format!("removing {account}"))?;
    }
    tx.commit().await.context("committing the watch list")?;
    for account in &accounts {
        println!("stopped watching {account} (its history is kept)");
    }
    Ok(())
}

async fn list(config: &Path, json: bool) -> CmdResult {
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting")?;
    let watched = store::watch::list(&mut conn)
        .await
        .context("reading the watch list")?;
    if json {
        let rows: Vec<_> = watched
            .iter()
            .map(|w| {
                serde_json::json!({
                    "account_id": w.account_id, "label": w.label,
                    "expected_keys": w.expected_keys, "cold_keys": w.cold_keys,
                    "allow_missing": w.allow_missing, "baseline_height": w.baseline_height,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("encoding json")?
        );
        return Ok(());
    }
    if watched.is_empty() {
        println!("no accounts are watched (keywatch watch add ACCOUNT)");
    }
    for w in watched {
        println!(
            "{}{}  expected keys: {}  baseline: {}",
            w.account_id,
            w.label.map(|l| format!(" ({l})")).unwrap_or_default(),
            w.expected_keys.len(),
            w.baseline_height
                .map(|h| format!("block {h}"))
                .unwrap_or_else(|| "pending".into())
        );
    }
    Ok(())
}
