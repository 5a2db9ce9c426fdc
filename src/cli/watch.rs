//! `keywatch watch add|remove|list`.
//!
//! `add` validates every id and key first (exit 2, nothing written), reads
//! each account's baseline at the ingest cursor's block, then writes all of
//! them in one transaction holding the cursor lock. If the follower moved
//! the cursor meanwhile, the baselines are read again at the new cursor.

use std::path::Path;

use anyhow::Context;

use crate::cli::{CmdResult, Failure, WatchCommand, bad_input, connect, load_settings};
use crate::domain::{AccountId, PublicKey};
use crate::rpc::{BlockRef, RpcClient};
use crate::store::watch::{AddOutcome, Baseline, NewWatch};
use crate::store::{self, Cursor};

/// Attempts to catch the cursor still; the follower commits a block every
/// ~0.6 s, and reading a baseline takes a few requests.
const CURSOR_RACE_ATTEMPTS: usize = 10;

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
    let pool = connect(&settings).await?;
    let rpc = RpcClient::new(settings.rpc.client.clone()).map_err(bad_input)?;
    rpc.verify_chain(&settings.rpc.chain_id)
        .await
        .context("checking the rpc node")?;

    for _ in 0..CURSOR_RACE_ATTEMPTS {
        let cursor = store::cursor(&pool)
            .await
            .context("reading the ingest cursor")?;
        let mut reads = Vec::new();
        for account in &accounts {
            reads
                .push(read_baseline(&rpc, account, cursor.as_ref(), &settings.rpc.chain_id).await?);
        }
        let missing: Vec<String> = accounts
            .iter()
            .zip(&reads)
            .filter(|(_, b)| b.account.is_none())
            .map(|(a, _)| a.to_string())
            .collect();
        if !missing.is_empty() && !allow_missing {
            let at = cursor
                .as_ref()
                .map(|c| format!("block {}", c.height))
                .unwrap_or_else(|| "the final block".into());
            return Err(bad_input(format!(
                "account(s) {} do not exist on {} at {at}; pass --allow-missing to watch them anyway",
                missing.join(", "),
                settings.rpc.chain_id
            )));
        }
        let mut tx = pool.begin().await.context("starting a transaction")?;
        let locked = store::lock_cursor(&mut tx)
            .await
            .context("locking the ingest cursor")?;
        if locked != cursor {
            tracing::info!("the ingest cursor moved while reading baselines; reading them again");
            continue;
        }
        let mut outcomes = Vec::new();
        for (account, baseline) in accounts.iter().zip(&reads) {
            let watch = NewWatch {
                account_id: account.clone(),
                label: label.clone(),
                expected_keys: expected.clone(),
                cold_keys: vec![],
                allow_missing: baseline.account.is_none(),
            };
            let outcome = store::watch::add(
                &mut tx,
                &watch,
                cursor.as_ref(),
                cursor.as_ref().map(|_| baseline),
            )
            .await
            .with_context(|| format!("adding {account}"))?;
            outcomes.push((account, baseline, outcome));
        }
        tx.commit().await.context("committing the watch list")?;
        for (account, baseline, outcome) in outcomes {
            match outcome {
                AddOutcome::Tracked { baseline_height } => println!(
                    "watching {account}: baseline at block {baseline_height} with {} key(s){}",
                    baseline.keys.len(),
                    if baseline.account.is_none() {
                        " (account does not exist yet)"
                    } else {
                        ""
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
        return Ok(());
    }
    Err(Failure::Other(anyhow::anyhow!(
        "the ingest cursor kept moving while reading baselines ({CURSOR_RACE_ATTEMPTS} attempts); try again"
    )))
}

/// Reads an account's keys and balance at the cursor's block (or, with no
/// cursor, only checks that it exists at the final block).
async fn read_baseline(
    rpc: &RpcClient,
    account: &AccountId,
    cursor: Option<&Cursor>,
    chain: &str,
) -> Result<Baseline, Failure> {
    let block = match cursor {
        Some(c) => {
            BlockRef::Hash(crate::domain::CryptoHash::parse(&c.hash).context("stored cursor hash")?)
        }
        None => BlockRef::Final,
    };
    let gc_hint = |e: crate::rpc::RpcError| {
        let hint = if e.is_garbage_collected() || e.is_unknown_block() {
            " the rpc node no longer serves that block: configure an archival rpc url"
        } else {
            ""
        };
        Failure::Other(anyhow::Error::new(e).context(format!(
                "reading the state of {account} on {chain} at {}{hint}",
                cursor
                    .map(|c| format!("the cursor's block {}", c.height))
                    .unwrap_or_else(|| "the final block".into())
            )))
    };
    let Some((state, _)) = rpc
        .view_account_opt(&block, account)
        .await
        .map_err(gc_hint)?
    else {
        return Ok(Baseline {
            account: None,
            keys: vec![],
        });
    };
    let keys = if cursor.is_some() {
        let (entries, _) = rpc
            .view_access_key_list(&block, account)
            .await
            .map_err(gc_hint)?;
        entries
            .into_iter()
            .map(|e| (e.public_key, e.access_key.into()))
            .collect()
    } else {
        vec![]
    };
    Ok(Baseline {
        account: Some(state),
        keys,
    })
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
