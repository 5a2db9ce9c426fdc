//! `keywatch alerts` and `keywatch alerts test`.

use std::path::Path;

use anyhow::Context;

use crate::cli::{CmdResult, Failure, bad_input, connect, load_settings};
use crate::store::alerts::Delivery;

pub async fn list(config: &Path, json: bool) -> CmdResult {
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting")?;
    let rows = crate::store::alerts::log(&mut conn)
        .await
        .context("reading alert_log")?;
    let unsent = crate::store::alerts::undelivered(&mut conn)
        .await
        .context("reading alerts")?;
    let silences = crate::store::silences::current(&mut conn, chrono::Utc::now())
        .await
        .context("reading silences")?;
    if json {
        let unsent: Vec<_> = unsent
            .iter()
            .map(|(id, rule, sev, title, h)| serde_json::json!({"alert_id": id, "rule": rule, "severity": sev, "title": title, "block_height": h, "channel": null, "status": "no channel"}))
            .collect();
        let all = serde_json::json!({"deliveries": rows, "without_channel": unsent, "silences": silences});
        println!(
            "{}",
            serde_json::to_string_pretty(&all).context("encoding json")?
        );
        return Ok(());
    }
    for s in &silences {
        println!(
            "silence #{} on {} ({}) until {} UTC: {}{}",
            s.id,
            s.account_id,
            s.rule.as_deref().unwrap_or("all rules"),
            s.ends_at.format("%Y-%m-%d %H:%M:%S"),
            crate::notify::render::clean(&s.reason),
            if s.announced_at.is_some() {
                ""
            } else {
                " (not in effect until the leader announces it)"
            }
        );
    }
    if rows.is_empty() && unsent.is_empty() {
        println!("no alerts");
    }
    for r in &rows {
        let mut block = format!("block {}", r.block_height);
        if r.change_block_height != r.block_height {
            block = format!(
                "change at block {}, decided at {block}",
                r.change_block_height
            );
        }
        if let Some(tx) = &r.tx_hash {
            block.push_str(&format!(", tx {tx}"));
        }
        println!(
            "#{} [{}] {} ({block})  {}: {} after {} attempt(s){}{}",
            r.alert_id,
            r.severity,
            crate::notify::render::clean(&r.title),
            r.channel,
            r.status,
            r.attempts,
            r.delivered_at
                .map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S")))
                .unwrap_or_default(),
            r.last_error
                .as_ref()
                .map(|e| format!(" (last error: {})", crate::notify::render::clean(e)))
                .unwrap_or_default()
        );
    }
    for (id, _, sev, title, h) in &unsent {
        let title = crate::notify::render::clean(title);
        println!("#{id} [{sev}] {title} (block {h})  no channel configured");
    }
    Ok(())
}

/// The longest silence: one always ends by itself.
const MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(30 * 86400);

pub async fn silence(
    config: &Path,
    raw_account: &str,
    rule: Option<&str>,
    duration: std::time::Duration,
    reason: &str,
) -> CmdResult {
    let account = crate::cli::parse_account(raw_account)?;
    if let Some(r) = rule
        && !crate::config::rules::rule_names().any(|n| n == r)
    {
        return Err(bad_input(format!(
            "unknown rule {r:?} (expected one of {})",
            crate::config::rules::rule_names()
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(r) = rule
        && crate::ingest::alerts::UNSILENCEABLE.contains(&r)
    {
        return Err(bad_input(format!(
            "{r} cannot be silenced: it is about keywatch itself or about silences"
        )));
    }
    if duration.is_zero() || duration > MAX_SILENCE {
        return Err(bad_input(format!(
            "--for {}: a silence lasts more than 0 and at most 30 days",
            humantime::format_duration(duration)
        )));
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(bad_input(
            "--reason is required: it is shown with every silenced alert",
        ));
    }
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let mut conn = pool.acquire().await.context("connecting")?;
    let seconds = i64::try_from(duration.as_secs()).context("the duration")?;
    let (id, ends_at) =
        crate::store::silences::add(&mut conn, account.as_str(), rule, seconds, reason)
            .await
            .context("recording the silence")?;
    println!(
        "silence #{id}: {} on {account} until {} UTC ({reason}). It takes effect once the running leader has queued its announcement on every channel.",
        rule.map(|r| format!("{r} alerts"))
            .unwrap_or_else(|| "all alerts".into()),
        ends_at.format("%Y-%m-%d %H:%M:%S")
    );
    Ok(())
}

pub async fn test(config: &Path, channel: &str) -> CmdResult {
    let settings = load_settings(config)?;
    let now = chrono::Utc::now();
    let d = Delivery {
        delivery_id: 0,
        alert_id: 0,
        dedup_key: format!("test|{}", now.timestamp_nanos_opt().unwrap_or_default()),
        channel: channel.to_owned(),
        attempts: 0,
        rule: "test".into(),
        severity: "info".into(),
        account_id: "example.near".into(),
        public_key: None,
        block_height: 0,
        block_hash: "11111111111111111111111111111111".into(),
        block_time: now,
        title: "keywatch test alert".into(),
        details: serde_json::json!({}),
        created_at: now,
        batch_id: None,
    };
    let n = &settings.notify;
    let result = match channel {
        "email" => {
            let cfg = n
                .email
                .as_ref()
                .ok_or_else(|| bad_input("notify.email is not enabled"))?;
            let sender =
                crate::notify::email::EmailSender::new(cfg, &n.explorer_url).map_err(bad_input)?;
            sender
                .send(
                    std::slice::from_ref(&d),
                    Some(&format!("test-{}", now.timestamp())),
                )
                .await
        }
        _ => {
            let cfg = n
                .webhook
                .as_ref()
                .ok_or_else(|| bad_input("notify.webhook is not enabled"))?;
            let sender = crate::notify::webhook::WebhookSender::new(cfg, &n.explorer_url)
                .map_err(bad_input)?;
            sender
                .send(
                    std::slice::from_ref(&d),
                    Some(&format!("test-{}", now.timestamp())),
                    now,
                )
                .await
        }
    };
    match result {
        Ok(()) => {
            println!("test alert sent through {channel}");
            Ok(())
        }
        Err(e) => Err(Failure::Other(anyhow::anyhow!(
            "sending the test alert through {channel} failed: {e}"
        ))),
    }
}

pub async fn rules_test(config: &Path, from: u64, to: u64) -> CmdResult {
    if to < from {
        return Err(bad_input(format!("--to {to} is below --from {from}")));
    }
    let settings = load_settings(config)?;
    let pool = connect(&settings).await?;
    let ctx = crate::ingest::alerts::AlertContext::from_settings(&settings);
    let fired = crate::ingest::replay::rules_test(&pool, &ctx, from, to)
        .await
        .map_err(|e| Failure::Other(e.into()))?;
    for f in &fired {
        println!(
            "block {}: [{}] {} ({})",
            f.block_height,
            f.severity.to_uppercase(),
            f.title,
            f.rule
        );
    }
    println!(
        "{} alert(s) would have fired for blocks {from}..={to}; nothing was stored or sent",
        fired.len()
    );
    Ok(())
}
