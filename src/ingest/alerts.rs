//! Deciding alerts inside the block's transaction: the per-block rules on
//! what each account's writes did, and the window rules (allowance drain,
//! balance drop) on the block `settle_blocks` blocks back, judged on net
//! change in chain time. Drafts become outbox rows in the same transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bigdecimal::BigDecimal;
use sqlx::PgConnection;

use crate::config::{RuleSet, RuleSettings, Settings};
use crate::domain::{AccessKey, AccountId, AccountState, BlockHeader, PublicKey, Yocto};
use crate::ingest::IngestError;
use crate::ingest::recent::{Recent, Written};
use crate::rules::repeat::{Again, Previous, Repeat, again, mark_further};
use crate::rules::{
    AlertDraft, BlockFacts, KeyWrite, TxRef, WindowValues, evaluate_block, window_drop,
};
use crate::store::alerts::{AskLast, Decided, Disposition, insert_many, last_alerts};
use crate::store::convert::{height_to_i64, ns_to_time, numeric_to_yocto};
use crate::store::window;

/// What the ingest needs to decide and queue alerts.
#[derive(Clone)]
pub struct AlertContext {
    pub rules: RuleSet,
    /// Per-account rules, already merged over `rules`.
    pub per_account: HashMap<AccountId, RuleSet>,
    /// Channels an alert is queued for.
    pub channels: Vec<&'static str>,
    /// Older blocks' alerts are recorded as suppressed, when `suppress_old`.
    pub max_age: Duration,
    /// True for `backfill` and a first start from a past height until the
    /// head is first reached; false when following or catching up: blocks
    /// missed while keywatch was down or blind happened while the user
    /// counted on it, so their alerts are sent, marked late. Shared, so the
    /// follower can turn it off when it reaches the head.
    pub suppress_old: Arc<std::sync::atomic::AtomicBool>,
    /// Wall clock, injected (only `max_age` uses it).
    pub now: Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>,
}

impl AlertContext {
    pub fn from_settings(s: &Settings) -> AlertContext {
        let mut channels = vec![];
        if s.notify.email.is_some() {
            channels.push("email");
        }
        if s.notify.webhook.is_some() {
            channels.push("webhook");
        }
        let per_account = s
            .accounts
            .iter()
            .map(|a| {
                let mut merged = s.rules.clone();
                merged.extend(a.rules.iter().map(|(k, v)| (*k, v.clone())));
                (a.id.clone(), merged)
            })
            .collect();
        AlertContext {
            rules: s.rules.clone(),
            per_account,
            channels,
            max_age: s.notify.max_age,
            suppress_old: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            now: Arc::new(chrono::Utc::now),
        }
    }

    /// Every `settle_blocks` an enabled window rule uses.
    pub fn settles(&self) -> BTreeSet<u32> {
        let mut settles = BTreeSet::new();
        for rs in std::iter::once(&self.rules).chain(self.per_account.values()) {
            for name in ["allowance_drain", "balance_drop"] {
                if let Some(r) = rs.get(name).filter(|r| r.enabled) {
                    settles.insert(r.settle_blocks.unwrap_or(0));
                }
            }
        }
        settles
    }

    /// How many heights after a block with history pruning keeps: twice
    /// the longest settle delay (heights a block may skip count against
    /// it), and never fewer than 128, so a settle delay raised later (up
    /// to 64) still finds them.
    pub fn keep_blocks_after_writes(&self) -> i64 {
        let longest = self.settles().last().copied().unwrap_or(0);
        i64::from(longest).saturating_mul(2).max(128)
    }

    pub fn rules_for(&self, account: &AccountId) -> &RuleSet {
        self.per_account.get(account).unwrap_or(&self.rules)
    }
}

/// What one block did to one account, gathered by the apply step.
pub struct AccountBlock {
    pub account: AccountId,
    pub writes: Vec<KeyWrite>,
    pub keys_before: BTreeMap<PublicKey, AccessKey>,
    pub keys_after: BTreeMap<PublicKey, AccessKey>,
    pub nonce_slot_keys: BTreeSet<PublicKey>,
    pub account_deleted: bool,
    pub contract_changed: Option<AccountState>,
    pub unknown: Vec<String>,
    /// The transaction and receipt of the contract change, the deletion,
    /// and the last unknown change.
    pub contract_cause: Option<TxRef>,
    pub deletion_cause: Option<TxRef>,
    pub unknown_cause: Option<TxRef>,
}

/// Rules about keywatch itself and about silences: never silenced.
pub const UNSILENCEABLE: &[&str] = &[
    "silence_started",
    "state_drift",
    "ingest_stalled",
    "ingest_recovered",
    "ingest_stopped",
    "delivery_failing",
];

/// The rule of each alert a transaction wrote. Whoever commits the
/// transaction counts them in the metrics; a transaction rolled back (or
/// never meant to commit, as `rules test`'s) is never counted.
pub type AlertsWritten = Vec<String>;

/// While catching up (`suppress_old` false), an alert decided this long
/// after its block's time is marked late: the block was missed while
/// keywatch was down or blind.
pub const LATE_AFTER: Duration = Duration::from_secs(60);

/// Decides which drafts fire (see [`crate::rules::repeat`]: cooldown in
/// chain time, escalation, one alert per event) and writes them; returns
/// the rule of each alert created.
pub async fn queue(
    tx: &mut PgConnection,
    ctx: &AlertContext,
    header: &BlockHeader,
    drafts: Vec<(AlertDraft, Repeat)>,
) -> Result<AlertsWritten, IngestError> {
    let block_time = ns_to_time(header.timestamp_ns);
    let now = (ctx.now)();
    let suppress_old = ctx.suppress_old.load(std::sync::atomic::Ordering::Relaxed);
    let recent = !suppress_old
        || block_time
            >= now - chrono::Duration::from_std(ctx.max_age).unwrap_or(chrono::Duration::MAX);
    let late = !suppress_old
        && block_time < now - chrono::Duration::from_std(LATE_AFTER).unwrap_or_default();
    let hash = header.hash.to_string();
    let at = Decided {
        block_height: header.height,
        block_hash: &hash,
        block_time,
    };
    let mut drafts = drafts;
    let kept = decide_repeats(tx, &mut drafts, block_time).await?;
    let accounts: Vec<&str> = drafts.iter().map(|(d, _)| d.account_id.as_str()).collect();
    let silences = if accounts.is_empty() {
        vec![]
    } else {
        // the block's time: an alert for a block from before the silence
        // (a catch-up) is not silenced
        crate::store::silences::active(tx, &accounts, block_time).await?
    };
    let mut queued = Vec::new();
    for ((d, _), keep) in drafts.iter_mut().zip(kept) {
        if !keep {
            continue;
        }
        if late
            && d.rule != "silence_started"
            && let Some(obj) = d.details.as_object_mut()
        {
            obj.insert("late".into(), serde_json::Value::Bool(true));
        }
        let silence = silences.iter().find(|s| {
            !UNSILENCEABLE.contains(&d.rule)
                && s.account_id == d.account_id
                && s.rule.as_deref().is_none_or(|r| r == d.rule)
        });
        // Alerts about keywatch itself, and silences, are news whatever the
        // block's age.
        let outcome = if let Some(s) = silence {
            d.details["silenced"] =
                serde_json::json!({"silence_id": s.id, "reason": s.reason, "until": s.ends_at});
            Disposition::Silence
        } else if recent || matches!(d.rule, "ingest_stalled" | "state_drift" | "silence_started") {
            Disposition::Send
        } else {
            Disposition::Suppress
        };
        queued.push((&*d, outcome));
    }
    Ok(insert_many(tx, &queued, &at, &ctx.channels).await?)
}

/// Which drafts fire, given the last alert of each one's rule, account and
/// key (all asked at once); a draft repeating one kept earlier in this
/// block is quiet, unless its rule speaks per event or per change. Drafts
/// that fire again because their value fell further are marked so.
async fn decide_repeats(
    tx: &mut PgConnection,
    drafts: &mut [(AlertDraft, Repeat)],
    block_time: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<bool>, IngestError> {
    let asked: Vec<AskLast> = drafts
        .iter()
        .map(|(d, repeat)| AskLast {
            rule: d.rule,
            account: d.account_id.as_str(),
            public_key: d.public_key.as_deref(),
            // forever, or a cooldown too long to subtract: since 1970
            since: repeat
                .lookback()
                .and_then(|c| chrono::Duration::from_std(c).ok())
                .and_then(|c| block_time.checked_sub_signed(c))
                .unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH),
        })
        .collect();
    let last = last_alerts(tx, &asked).await?;
    let mut kept_here: HashSet<(&str, String, Option<String>)> = HashSet::new();
    let mut keep = Vec::with_capacity(drafts.len());
    for ((d, repeat), last) in drafts.iter_mut().zip(last) {
        let key = (d.rule, d.account_id.clone(), d.public_key.clone());
        if kept_here.contains(&key) && !matches!(repeat, Repeat::EveryChange | Repeat::SameEvent) {
            // said already in this block (its dedup key would be the same)
            keep.push(false);
            continue;
        }
        let previous = last.as_ref().map(|l| Previous {
            id: l.id,
            block_height: l.block_height,
            details: &l.details,
            corrected_since: l.fixed_since,
        });
        let fires = match again(*repeat, d, previous) {
            Again::Fire => true,
            Again::Quiet => false,
            Again::Further {
                previous_now,
                further,
            } => {
                let previous = previous.expect("a further drop has a previous alert");
                mark_further(d, previous, previous_now, further);
                true
            }
        };
        if fires {
            kept_here.insert(key);
        }
        keep.push(fires);
    }
    Ok(keep)
}

fn repeats(rules: &RuleSet, drafts: Vec<AlertDraft>) -> Vec<(AlertDraft, Repeat)> {
    drafts
        .into_iter()
        .map(|d| {
            let repeat = rules
                .get(d.rule)
                .map(|r| Repeat::of(d.rule, r))
                .unwrap_or(Repeat::Cooldown(Duration::ZERO));
            (d, repeat)
        })
        .collect()
}

/// The per-block rules for every account the block wrote to.
pub async fn block_rules(
    tx: &mut PgConnection,
    ctx: &AlertContext,
    header: &BlockHeader,
    accounts: &[AccountBlock],
) -> Result<AlertsWritten, IngestError> {
    if accounts.is_empty() {
        return Ok(AlertsWritten::new());
    }
    let names: Vec<&AccountId> = accounts.iter().map(|ab| &ab.account).collect();
    let watch = crate::store::watch::get_many(tx, &names).await?;
    let mut drafts = Vec::new();
    for ab in accounts {
        let Some(w) = watch.get(&ab.account) else {
            continue;
        };
        let rules = ctx.rules_for(&ab.account);
        let cold_moved: Vec<PublicKey> = w
            .cold_keys
            .iter()
            .filter(|k| {
                ab.nonce_slot_keys.contains(*k)
                    || matches!((ab.keys_before.get(*k), ab.keys_after.get(*k)), (Some(b), Some(a)) if a.nonce > b.nonce)
            })
            .cloned()
            .collect();
        let facts = BlockFacts {
            account: &ab.account,
            label: w.label.as_deref(),
            expected_keys: &w.expected_keys,
            cold_keys: &w.cold_keys,
            rules,
            writes: &ab.writes,
            keys_before: &ab.keys_before,
            keys_after: &ab.keys_after,
            cold_nonce_moved: &cold_moved,
            account_deleted: ab.account_deleted,
            contract_changed: ab.contract_changed.as_ref(),
            unknown: &ab.unknown,
            contract_cause: ab.contract_cause.as_ref(),
            deletion_cause: ab.deletion_cause.as_ref(),
            unknown_cause: ab.unknown_cause.as_ref(),
        };
        let mut d = evaluate_block(&facts);
        for draft in &mut d {
            draft.details["block_height"] = serde_json::json!(header.height);
            draft.details["block_hash"] = serde_json::json!(header.hash.as_str());
        }
        drafts.extend(repeats(rules, d));
    }
    queue(tx, ctx, header, drafts).await
}

fn yocto(n: &Option<BigDecimal>) -> Result<Option<Yocto>, IngestError> {
    Ok(n.as_ref()
        .map(|n| numeric_to_yocto("amount", n))
        .transpose()?)
}

/// The window rules for changes made `settle_blocks` blocks before `header`.
/// The settled block's writes come from `recent` when it holds them, else
/// from history.
pub async fn window_rules(
    tx: &mut PgConnection,
    ctx: &AlertContext,
    header: &BlockHeader,
    recent: Option<&Recent>,
) -> Result<AlertsWritten, IngestError> {
    let h = height_to_i64("height", header.height)?;
    let now_ns = header.timestamp_ns as i64;
    let settles = ctx.settles();
    let mut drafts = Vec::new();
    for settle in settles {
        // function-call and gas keys, and balances, the settled block wrote
        let Some(Written {
            height: settled,
            hash: settled_hash,
            timestamp_ns: settled_ns,
            keys,
            accounts,
        }) = settled_writes(tx, header, settle, recent).await?
        else {
            continue;
        };
        let settled = height_to_i64("height", settled)?;
        let mut judged = Vec::new();
        // the keys and accounts whose rule settles at this depth
        let rule = |account: &str, name: &str| {
            let id = AccountId::parse(account).ok()?;
            let r = ctx
                .rules_for(&id)
                .get(name)
                .filter(|r| r.enabled && r.settle_blocks.unwrap_or(0) == settle)?;
            Some((id, r))
        };
        let judged_keys: Vec<_> = keys
            .iter()
            .filter_map(|k| rule(&k.account_id, "allowance_drain").map(|(id, r)| (id, k, r)))
            .collect();
        let asked: Vec<window::WindowKey> = judged_keys
            .iter()
            .map(|(_, k, r)| window::WindowKey {
                account_id: &k.account_id,
                public_key: &k.public_key,
                window_start_ns: window_start(r, now_ns),
            })
            .collect();
        let found = window::keys_in_window(tx, &asked, h, settled).await?;
        for ((account, k, r), w) in judged_keys.iter().zip(found) {
            if let Some(d) = drain(r, account, &k.public_key, w)? {
                let repeat = Repeat::of(d.rule, r);
                judged.push((d, repeat));
            }
        }
        let judged_accounts: Vec<_> = accounts
            .iter()
            .filter_map(|a| rule(a, "balance_drop"))
            .collect();
        let asked: Vec<(&str, i64)> = judged_accounts
            .iter()
            .map(|(id, r)| (id.as_str(), window_start(r, now_ns)))
            .collect();
        let found = window::balances_in_window(tx, &asked, h, settled).await?;
        for ((account, r), w) in judged_accounts.iter().zip(found) {
            if let Some(d) = balance_drop(r, account, w)? {
                let repeat = Repeat::of(d.rule, r);
                judged.push((d, repeat));
            }
        }
        for (d, _) in &mut judged {
            // the block whose write is judged, and the one that decided
            d.details["change_block_height"] = serde_json::json!(settled);
            d.details["change_block_hash"] = serde_json::json!(settled_hash);
            d.details["change_block_time"] = serde_json::json!(ns_to_time(settled_ns));
        }
        drafts.append(&mut judged);
    }
    for (d, _) in &mut drafts {
        d.details["block_height"] = serde_json::json!(header.height);
        d.details["block_hash"] = serde_json::json!(header.hash.as_str());
    }
    queue(tx, ctx, header, drafts).await
}

/// A value at the end of the settled block plus the increases after it.
/// Saturates: no real chain refunds more than u128 holds, and a hostile
/// node's numbers must not stop ingestion (an error here would be fatal).
fn settled_value(at: Yocto, increases: &BigDecimal) -> Yocto {
    let up = numeric_to_yocto("increase", increases).unwrap_or(Yocto(u128::MAX));
    Yocto(at.0.saturating_add(up.0))
}

/// What the block `settle` blocks before `header` wrote, from `recent`
/// when it holds it, else from history (`None` before the first block).
async fn settled_writes(
    tx: &mut PgConnection,
    header: &BlockHeader,
    settle: u32,
    recent: Option<&Recent>,
) -> Result<Option<Written>, IngestError> {
    if let Some(w) = recent.and_then(|r| r.settled(header.height, settle)) {
        return Ok(Some(w.clone()));
    }
    let h = height_to_i64("height", header.height)?;
    let Some(b) = window::settled_block(tx, h, settle).await? else {
        return Ok(None);
    };
    use crate::store::convert::i64_to_height;
    Ok(Some(Written {
        height: i64_to_height("height", b.block_height)?,
        hash: b.block_hash,
        timestamp_ns: i64_to_height("block time", b.block_timestamp_ns)?,
        keys: window::keys_written_at(tx, b.block_height).await?,
        accounts: window::accounts_written_at(tx, b.block_height).await?,
    }))
}

fn window_start(r: &RuleSettings, now_ns: i64) -> i64 {
    now_ns.saturating_sub(
        r.window
            .map(|w| w.as_nanos().min(i64::MAX as u128) as i64)
            .unwrap_or(i64::MAX),
    )
}

/// `allowance_drain` for one key, from what the window look-up found: its
/// settled value (at the end of the block whose write settled, plus every
/// refund that landed up to the judged block) against its value at the
/// window's start, which begins no earlier than its last addition.
fn drain(
    r: &RuleSettings,
    account: &AccountId,
    key: &str,
    w: window::KeyWindow,
) -> Result<Option<AlertDraft>, IngestError> {
    match w.action.as_deref() {
        None | Some("deleted") => return Ok(None),
        Some(_) => {}
    }
    // the settled value: at the end of the settled block, plus the refunds
    // that landed since
    let (at, refunded, is_gas) = match (yocto(&w.allowance)?, yocto(&w.gas_key_balance)?) {
        (_, Some(g)) => (g, &w.refunded_gas_key_balance, true),
        (Some(a), None) => (a, &w.refunded_allowance, false),
        (None, None) => return Ok(None), // unlimited: nothing to drain
    };
    let now = settled_value(at, refunded);
    let before = if is_gas {
        yocto(&w.before_gas_key_balance)?
    } else {
        yocto(&w.before_allowance)?
    };
    let Some(before) = before else {
        return Ok(None);
    };
    let Some((drop, pct)) = window_drop(
        r,
        WindowValues {
            before,
            now,
            locked_increase: Yocto::ZERO,
        },
    ) else {
        return Ok(None);
    };
    let what = if is_gas {
        "Gas-key balance"
    } else {
        "Allowance"
    };
    Ok(Some(AlertDraft {
        rule: "allowance_drain",
        severity: r.severity,
        account_id: account.to_string(),
        public_key: Some(key.to_owned()),
        title: format!(
            "{what} of a key on {account} fell by {}",
            drop.to_near_string()
        ),
        details: serde_json::json!({"account_id": account, "public_key": key, "before": before.to_string(), "now": now.to_string(),
            "tx_hash": w.tx_hash, "receipt_hash": w.receipt_hash,
            "drop": drop.to_string(), "percent": pct, "window": r.window.map(|w| humantime::format_duration(w).to_string())}),
    }))
}

/// `balance_drop` for one account, from what the window look-up found.
fn balance_drop(
    r: &RuleSettings,
    account: &AccountId,
    w: window::BalanceWindow,
) -> Result<Option<AlertDraft>, IngestError> {
    let window::BalanceWindow {
        amount: Some(amount),
        locked: Some(locked),
        deleted: Some(false),
        tx_hash,
        receipt_hash,
        refunded_amount,
        before_amount: Some(b_amount),
        before_locked: Some(b_locked),
        ..
    } = w
    else {
        return Ok(None);
    };
    let (now_amount, now_locked) = (
        settled_value(numeric_to_yocto("amount", &amount)?, &refunded_amount),
        numeric_to_yocto("locked", &locked)?,
    );
    let (b_amount, b_locked) = (
        numeric_to_yocto("amount", &b_amount)?,
        numeric_to_yocto("locked", &b_locked)?,
    );
    let v = WindowValues {
        before: b_amount,
        now: now_amount,
        locked_increase: Yocto(now_locked.0.saturating_sub(b_locked.0)),
    };
    let Some((drop, pct)) = window_drop(r, v) else {
        return Ok(None);
    };
    Ok(Some(AlertDraft {
        rule: "balance_drop",
        severity: r.severity,
        account_id: account.to_string(),
        public_key: None,
        title: format!(
            "Balance of {account} dropped by {}{}",
            drop.to_near_string(),
            pct.map(|p| format!(" ({p}%)")).unwrap_or_default()
        ),
        details: serde_json::json!({"account_id": account, "before": b_amount.to_string(), "now": now_amount.to_string(),
            "tx_hash": tx_hash, "receipt_hash": receipt_hash,
            "value": Yocto(now_amount.0.saturating_add(v.locked_increase.0)).to_string(),
            "drop": drop.to_string(), "percent": pct, "window": r.window.map(|w| humantime::format_duration(w).to_string())}),
    }))
}

/// The cursor's block as the block a system alert is decided at (its
/// parent is not known here, nor needed).
pub fn cursor_block(cursor: &crate::store::Cursor) -> Result<BlockHeader, IngestError> {
    Ok(BlockHeader {
        height: cursor.height,
        hash: crate::domain::CryptoHash::parse(&cursor.hash)
            .map_err(|e| IngestError::Invalid(format!("stored cursor hash: {e}")))?,
        prev_hash: crate::domain::CryptoHash::from_bytes([0; 32]),
        timestamp_ns: cursor.timestamp_ns,
    })
}

/// A system alert (not tied to an account's block writes): state drift found
/// by reconcile, or ingestion that stalled or skipped history.
pub struct SystemAlert {
    pub rule: &'static str,
    /// Empty for alerts about keywatch itself.
    pub account: String,
    pub key: Option<String>,
    pub title: String,
    pub details: serde_json::Value,
}

pub async fn system_alert(
    tx: &mut PgConnection,
    ctx: &AlertContext,
    at: &BlockHeader,
    a: SystemAlert,
) -> Result<AlertsWritten, IngestError> {
    let Some(r) = ctx.rules.get(a.rule).filter(|r| r.enabled) else {
        return Ok(AlertsWritten::new());
    };
    let d = AlertDraft {
        rule: a.rule,
        severity: r.severity,
        account_id: a.account,
        public_key: a.key,
        title: a.title,
        details: a.details,
    };
    let repeat = Repeat::of(d.rule, r);
    queue(tx, ctx, at, vec![(d, repeat)]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn a_settled_value_adds_the_refunds_and_saturates_instead_of_failing() {
        let n = |s: &str| BigDecimal::from_str(s).unwrap();
        assert_eq!(settled_value(Yocto(5), &n("7")), Yocto(12));
        // two refunds near u128::MAX from a hostile node: more than u128
        let huge = format!("{}", u128::MAX as f64 * 2.0);
        assert_eq!(settled_value(Yocto(1), &n(&huge)), Yocto(u128::MAX));
        assert_eq!(settled_value(Yocto(u128::MAX), &n("1")), Yocto(u128::MAX));
    }
}
