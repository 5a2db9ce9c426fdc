//! `keywatch keys` and `keywatch history`: read-only views of the store.

use std::path::Path;

use anyhow::Context;

use crate::cli::{CmdResult, Failure, bad_input, connect, load_settings, parse_account};
use crate::domain::Yocto;
use crate::store::history::HistoryEntry;
use crate::store::keys::{KeyInfo, KeysAtError};

fn near(y: Option<Yocto>) -> String {
    y.map(Yocto::to_near_string)
        .unwrap_or_else(|| "unlimited".into())
}

fn describe_key(k: &KeyInfo) -> String {
    let mut parts = vec![k.permission.clone()];
    match k.permission.as_str() {
        "function_call" => parts.push(format!("allowance {}", near(k.allowance))),
        "gas_key_function_call" | "gas_key_full_access" => {
            parts.push(format!("gas balance {}", near(k.gas_key_balance)))
        }
        _ => {}
    }
    // receiver and method names are chosen by whoever added the key
    let clean = crate::notify::render::clean;
    if let Some(r) = &k.receiver_id {
        parts.push(format!("receiver {}", clean(r)));
    }
    if let Some(m) = &k.method_names {
        parts.push(if m.is_empty() {
            "any method".into()
        } else {
            format!("methods {}", clean(&m.join(",")))
        });
    }
    parts.push(format!("nonce {}", k.nonce));
    parts.join("  ")
}

pub async fn keys(config: &Path, raw: &str, at: Option<u64>, json: bool) -> CmdResult {
    let account = parse_account(raw)?;
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting")?;
    let keys = match at {
        Some(h) => crate::store::keys::keys_at(&mut conn, &account, h)
            .await
            .map_err(|e| match e {
                KeysAtError::Store(e) => Failure::Other(e.into()),
                other => bad_input(other),
            })?,
        None => {
            if !crate::store::watch::is_watched(&mut conn, &account)
                .await
                .context("reading the watch list")?
            {
                return Err(bad_input(format!(
                    "{account} is not watched (keywatch watch add {account}); --at H answers from history"
                )));
            }
            crate::store::keys::keys_now(&mut conn, &account)
                .await
                .context("reading keys")?
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&keys).context("encoding json")?
        );
        return Ok(());
    }
    let when = at
        .map(|h| format!("at height {h}"))
        .unwrap_or_else(|| "now".into());
    println!("{account} {when}: {} key(s)", keys.len());
    for k in &keys {
        println!("  {}  {}", k.public_key, describe_key(k));
    }
    Ok(())
}

pub async fn history(config: &Path, raw: &str, json: bool) -> CmdResult {
    let account = parse_account(raw)?;
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting")?;
    let entries = crate::store::history::history(&mut conn, &account)
        .await
        .context("reading history")?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).context("encoding json")?
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("no history for {account}");
    }
    for e in &entries {
        println!("{}", history_line(e));
    }
    Ok(())
}

fn cause_text(cause: &Option<String>, tx: &Option<String>, receipt: &Option<String>) -> String {
    let mut s = cause.clone().unwrap_or_default();
    if let Some(t) = tx {
        s.push_str(&format!(" tx {t}"));
    }
    if let Some(r) = receipt {
        s.push_str(&format!(" receipt {r}"));
    }
    s
}

fn history_line(e: &HistoryEntry) -> String {
    match e {
        HistoryEntry::Key {
            block_height,
            block_time,
            index_in_block,
            public_key,
            action,
            permission,
            allowance,
            gas_key_balance,
            nonce,
            cause,
            tx_hash,
            receipt_hash,
            source,
        } => {
            let mut detail = permission.clone().unwrap_or_default();
            if permission.as_deref() == Some("function_call") {
                detail.push_str(&format!(" allowance {}", near(*allowance)));
            }
            if let Some(b) = gas_key_balance {
                detail.push_str(&format!(" gas balance {}", b.to_near_string()));
            }
            if let Some(n) = nonce {
                detail.push_str(&format!(" nonce {n}"));
            }
            format!(
                "{block_height}.{index_in_block}  {}  key {action:<10} {public_key}  {detail}  [{source}] {}",
                block_time.format("%Y-%m-%dT%H:%M:%SZ"),
                cause_text(cause, tx_hash, receipt_hash)
            )
        }
        HistoryEntry::Balance {
            block_height,
            block_time,
            index_in_block,
            amount,
            locked,
            code_hash,
            deleted,
            cause,
            tx_hash,
            receipt_hash,
            source,
        } => {
            let detail = if *deleted {
                "account deleted".to_owned()
            } else {
                format!(
                    "amount {} locked {} code {}",
                    amount.map(Yocto::to_near_string).unwrap_or_default(),
                    locked.map(Yocto::to_near_string).unwrap_or_default(),
                    code_hash.clone().unwrap_or_default()
                )
            };
            format!(
                "{block_height}.{index_in_block}  {}  balance  {detail}  [{source}] {}",
                block_time.format("%Y-%m-%dT%H:%M:%SZ"),
                cause_text(cause, tx_hash, receipt_hash)
            )
        }
    }
}
