//! What an alert says: the subject a person understands at a glance, a body
//! that says what happened, where, and what to do next, and the versioned
//! webhook payload.

use serde_json::{Value, json};

use crate::store::alerts::Delivery;

/// Webhook payload version; bump on incompatible changes.
pub const PAYLOAD_VERSION: u32 = 1;

/// The subject line, cleaned like every on-chain string (see [`clean`]).
pub fn subject(d: &Delivery) -> String {
    clean(&format!("[{}] {}", d.severity.to_uppercase(), d.title))
}

pub fn batch_subject(ds: &[Delivery]) -> String {
    let accounts: std::collections::BTreeSet<&str> =
        ds.iter().map(|d| d.account_id.as_str()).collect();
    let worst = if ds.iter().any(|d| d.severity == "warning") {
        "WARNING"
    } else {
        "INFO"
    };
    format!(
        "[{worst}] {} alerts on {}",
        ds.len(),
        accounts.into_iter().collect::<Vec<_>>().join(", ")
    )
}

fn advice(rule: &str) -> &'static str {
    match rule {
        "new_full_access_key" => {
            "If you did not add this key, someone else can now do anything with this account. From a machine you trust, delete the key with a full-access key you control, move the funds to a safe account, and rotate every other key."
        }
        "new_function_call_key" => {
            "Check that you added this key and that its receiver and methods are what you expect; delete it otherwise."
        }
        "key_deleted" => {
            "Confirm that this deletion was intended. If not, a full-access key is in someone else's hands: act as for a new full-access key."
        }
        "key_used" => {
            "A key kept cold has signed a transaction. Treat it as compromised: delete it with another full-access key and move the funds."
        }
        "account_locked" => {
            "No full-access key can sign for this account any more: nobody can add keys or move funds with a full-access key. If that was not intended, it cannot be undone on chain."
        }
        "allowance_drain" => {
            "A key is spending its allowance or gas balance fast. Check what it signed; delete the key if the spending is not yours."
        }
        "balance_drop" => {
            "Check the transactions that moved the funds; if they are not yours, the account's keys are compromised."
        }
        "contract_deployed" => {
            "Code now runs on this account and can move its funds. If you did not deploy it, the account is compromised."
        }
        "account_deleted" => {
            "The account no longer exists; its remaining balance went to the beneficiary named in the deletion."
        }
        "unknown_permission" => {
            "The chain reported a permission or change this version of keywatch does not know. It is stored raw; upgrade keywatch to judge it."
        }
        "state_drift" => {
            "keywatch's stored state differs from the chain. It has been corrected; check the reconcile rows and the rpc node."
        }
        "ingest_stalled" => {
            "keywatch is not following the chain: check the reason above, the rpc urls and the logs. It keeps trying; alerts for blocks missed meanwhile are sent, marked late, once it catches up."
        }
        "ingest_recovered" => {
            "keywatch follows the chain again. Alerts for the blocks it missed follow (or came with this message), marked late."
        }
        "ingest_stopped" => {
            "keywatch has exited on an error it cannot wait out (configuration, or a chain that does not continue its history). Nothing is being watched until it is fixed and restarted."
        }
        "silence_started" => {
            "Alerts for this account are recorded but not sent until the time above. If you did not ask for this, someone with access to keywatch's database or host is hiding what happens to the account: treat it as an attack, and list the silenced alerts with `keywatch alerts`."
        }
        "delivery_failing" => {
            "A channel keeps failing to deliver alerts: check its server, credentials and the last error. Alerts keep being retried; read the missed ones with `keywatch alerts`."
        }
        _ => "Check the account.",
    }
}

fn link(explorer: &str, what: &str, id: &str) -> String {
    format!("{}/{what}/{id}", explorer.trim_end_matches('/'))
}

/// Facts of one alert as `(label, value, optional link)` lines.
fn facts(d: &Delivery, explorer: &str) -> Vec<(String, String, Option<String>)> {
    let detail = |k: &str| d.details.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut out = vec![];
    let account = match detail("label") {
        Some(label) => format!("{} ({label})", d.account_id),
        None => d.account_id.clone(),
    };
    if !d.account_id.is_empty() {
        out.push((
            "Account".into(),
            account,
            Some(link(explorer, "address", &d.account_id)),
        ));
    }
    if let Some(k) = &d.public_key {
        out.push(("Key".into(), k.clone(), None));
    }
    if let Some(p) = detail("permission_text") {
        out.push(("Permission".into(), p, None));
    }
    for (k, label) in [("before", "Before"), ("now", "Now"), ("drop", "Drop")] {
        if let Some(v) = detail(k).and_then(|v| crate::domain::Yocto::parse(&v).ok()) {
            out.push((label.into(), v.to_near_string(), None));
        }
    }
    let cause = cause(d);
    if cause.block_height != d.block_height {
        // a window rule: the change, then the block that decided it
        out.push((
            "Change".into(),
            format!(
                "block {} at {}",
                cause.block_height,
                cause.block_time.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Some(link(explorer, "blocks", &cause.block_hash)),
        ));
    }
    out.push((
        if cause.block_height != d.block_height {
            "Decided at".into()
        } else {
            "Block".into()
        },
        format!(
            "{} at {}",
            d.block_height,
            d.block_time.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        Some(link(explorer, "blocks", &d.block_hash)),
    ));
    if let Some(tx) = detail("tx_hash") {
        out.push((
            "Transaction".into(),
            tx.clone(),
            Some(link(explorer, "txns", &tx)),
        ));
    }
    if let Some(r) = detail("receipt_hash") {
        out.push(("Receipt".into(), r, None));
    }
    if let Some(reason) = detail("reason") {
        out.push(("Reason".into(), reason, None));
    }
    if let Some(s) = d.details.get("silenced") {
        out.push((
            "Silenced".into(),
            format!(
                "until {}: {}",
                s["until"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("")
            ),
            None,
        ));
    }
    if let (Some(further), Some(previous)) = (
        detail("further_drop").and_then(|v| crate::domain::Yocto::parse(&v).ok()),
        detail("previous_now").and_then(|v| crate::domain::Yocto::parse(&v).ok()),
    ) {
        out.push((
            "Further drop".into(),
            format!(
                "{} since the last alert (then {})",
                further.to_near_string(),
                previous.to_near_string()
            ),
            None,
        ));
    }
    if d.details.get("late").and_then(Value::as_bool) == Some(true) {
        out.push((
            "Late".into(),
            format!(
                "decided while catching up; the block is from {}",
                d.block_time.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None,
        ));
    }
    out
}

/// The change an alert is about: its block (for a window rule the block
/// whose write it judged, earlier than the deciding block) and, when known,
/// its transaction and receipt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Cause {
    pub block_height: i64,
    pub block_hash: String,
    pub block_time: chrono::DateTime<chrono::Utc>,
    pub tx_hash: Option<String>,
    pub receipt_hash: Option<String>,
}

pub fn cause(d: &Delivery) -> Cause {
    let detail = |k: &str| d.details.get(k).and_then(Value::as_str).map(str::to_owned);
    let height = d.details.get("change_block_height").and_then(Value::as_i64);
    let time = detail("change_block_time")
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    // field by field: alerts recorded before the change's time was kept
    // still name its block
    Cause {
        block_height: height.unwrap_or(d.block_height),
        block_hash: detail("change_block_hash").unwrap_or_else(|| d.block_hash.clone()),
        block_time: time.unwrap_or(d.block_time),
        tx_hash: detail("tx_hash"),
        receipt_hash: detail("receipt_hash"),
    }
}

/// The longest on-chain string an alert shows, in characters.
pub const MAX_SHOWN: usize = 200;

/// An on-chain string (method names, receiver ids, error text) made safe to
/// show in any output: control characters (terminal escapes, line breaks
/// that would forge lines) become spaces, and it is cut to [`MAX_SHOWN`]
/// characters. Markup is escaped by each renderer on top of this.
pub fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_SHOWN)
        .map(|c| if c.is_control() || is_bidi(c) { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX_SHOWN).is_some() {
        out.push('…');
    }
    out
}

/// Unicode bidirectional controls, which can make text read in another
/// order than it is (an account id that displays as another).
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

/// Slack mrkdwn: `&`, `<` and `>` are its control characters (`<!channel>`
/// pings everyone, `<https://x|y>` disguises a link).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The facts with every value cleaned (see [`clean`]).
fn shown_facts(d: &Delivery, explorer: &str) -> Vec<(String, String, Option<String>)> {
    facts(d, explorer)
        .into_iter()
        .map(|(label, value, link)| (label, clean(&value), link))
        .collect()
}

pub fn text(ds: &[Delivery], explorer: &str) -> String {
    let mut s = String::new();
    for d in ds {
        s.push_str(&format!("{}\n\n", subject(d)));
        for (label, value, link) in shown_facts(d, explorer) {
            s.push_str(&format!(
                "{label}: {value}{}\n",
                link.map(|l| format!(" <{l}>")).unwrap_or_default()
            ));
        }
        s.push_str(&format!(
            "\nWhat to do: {}\n\nRule {}, alert {}.\n\n",
            advice(&d.rule),
            d.rule,
            d.alert_id
        ));
    }
    s.push_str("-- keywatch\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn html(ds: &[Delivery], explorer: &str) -> String {
    let mut s = String::from("<html><body style=\"font-family:sans-serif\">");
    for d in ds {
        let color = match d.severity.as_str() {
            "critical" => "#b00020",
            "warning" => "#b26a00",
            _ => "#333333",
        };
        s.push_str(&format!(
            "<h2 style=\"color:{color}\">{}</h2><table>",
            esc(&subject(d))
        ));
        for (label, value, link) in shown_facts(d, explorer) {
            let v = match link {
                Some(l) => format!("<a href=\"{}\">{}</a>", esc(&l), esc(&value)),
                None => format!("<code>{}</code>", esc(&value)),
            };
            s.push_str(&format!(
                "<tr><th align=\"left\">{}</th><td>{v}</td></tr>",
                esc(&label)
            ));
        }
        s.push_str(&format!(
            "</table><p><b>What to do:</b> {}</p><p style=\"color:#777\">Rule {}, alert {}.</p>",
            esc(advice(&d.rule)),
            esc(&d.rule),
            d.alert_id
        ));
    }
    s.push_str("</body></html>");
    s
}

pub fn alert_json(d: &Delivery) -> Value {
    json!({
        "id": d.alert_id, "rule": d.rule, "severity": d.severity, "account_id": d.account_id,
        "public_key": d.public_key, "block_height": d.block_height, "block_hash": d.block_hash,
        "block_time": d.block_time, "title": d.title, "details": d.details, "created_at": d.created_at,
        "cause": cause(d),
    })
}

/// The keywatch webhook payload (`version` 1): one alert, or a batch.
pub fn payload(ds: &[Delivery], batch_id: Option<&str>) -> Value {
    match (ds, batch_id) {
        ([one], None) => json!({"version": PAYLOAD_VERSION, "alert": alert_json(one)}),
        _ => {
            json!({"version": PAYLOAD_VERSION, "batch_id": batch_id, "alerts": ds.iter().map(alert_json).collect::<Vec<_>>()})
        }
    }
}

/// A Slack-compatible incoming-webhook body.
pub fn slack(ds: &[Delivery], explorer: &str) -> Value {
    let lines: Vec<String> = ds
        .iter()
        .map(|d| {
            let mut l = format!("*{}*", slack_escape(&subject(d)));
            for (label, value, link) in shown_facts(d, explorer) {
                let value = slack_escape(&value);
                l.push_str(&format!(
                    "\n{label}: {}",
                    link.map(|u| format!("<{}|{value}>", slack_escape(&u)))
                        .unwrap_or(value)
                ));
            }
            l
        })
        .collect();
    json!({"text": lines.join("\n\n")})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(details: Value) -> Delivery {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        Delivery {
            delivery_id: 1,
            alert_id: 2,
            dedup_key: "k".into(),
            channel: "webhook".into(),
            attempts: 0,
            rule: "new_function_call_key".into(),
            severity: "warning".into(),
            account_id: "dao.near".into(),
            public_key: Some("ed25519:EddTahJwZpJjYPPmat7DBm1m2vdrFBzVv7e3T4hzkENd".into()),
            block_height: 110,
            block_hash: "h110".into(),
            block_time: t,
            title: "New function-call key on dao.near".into(),
            details,
            created_at: t,
            batch_id: None,
        }
    }

    /// A permission whose receiver and method names an attacker chose.
    fn hostile() -> Delivery {
        let methods = format!(
            "<!channel> <https://evil.example|dao.near> \u{1b}[2J\nFake: line \u{202e}raen.oad {}",
            "m".repeat(5_000)
        );
        delivery(json!({"permission_text": methods}))
    }

    #[test]
    fn slack_shows_hostile_strings_as_text_not_pings_or_links() {
        let body = slack(&[hostile()], "https://nearblocks.io")["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!body.contains("<!channel>"), "{body}");
        assert!(!body.contains("<https://evil"), "{body}");
        assert!(body.contains("&lt;!channel&gt;"), "{body}");
        // our own links stay links
        assert!(body.contains("<https://nearblocks.io/address/dao.near|dao.near>"));
    }

    #[test]
    fn text_and_html_carry_no_control_characters_and_bounded_values() {
        let d = hostile();
        let t = text(std::slice::from_ref(&d), "https://nearblocks.io");
        assert!(!t.contains('\u{1b}') && !t.contains('\u{202e}'), "{t:?}");
        assert!(!t.contains("\nFake: line"), "no forged line: {t}");
        let permission = t.lines().find(|l| l.starts_with("Permission: ")).unwrap();
        assert!(permission.chars().count() <= "Permission: ".len() + MAX_SHOWN + 1);
        assert!(permission.ends_with('…'));
        let h = html(&[d], "https://nearblocks.io");
        assert!(!h.contains("<!channel>") && h.contains("&lt;!channel&gt;"));
        assert!(!h.contains('\u{1b}'));
    }

    #[test]
    fn a_window_alert_names_the_change_and_the_deciding_block() {
        let d = Delivery {
            rule: "allowance_drain".into(),
            ..delivery(json!({
                "change_block_height": 100, "change_block_hash": "h100",
                "change_block_time": "2026-11-30T09:59:54Z", "tx_hash": "T1", "receipt_hash": "R1"
            }))
        };
        let t = text(std::slice::from_ref(&d), "https://x");
        assert!(
            t.contains("Change: block 100 at 2026-11-30 09:59:54 UTC <https://x/blocks/h100>"),
            "{t}"
        );
        assert!(
            t.contains("Decided at: 110 at 2026-11-30 10:00:00 UTC"),
            "{t}"
        );
        assert!(t.contains("Transaction: T1"), "{t}");
        let p = payload(&[d], None);
        assert_eq!(p["version"], 1);
        assert_eq!(p["alert"]["cause"]["block_height"], 100);
        assert_eq!(p["alert"]["cause"]["tx_hash"], "T1");
        assert_eq!(
            p["alert"]["block_height"], 110,
            "the deciding block, as before"
        );
        // any other alert's cause is its own block
        let plain = delivery(json!({"tx_hash": "T2"}));
        assert_eq!(
            payload(&[plain], None)["alert"]["cause"]["block_height"],
            110
        );
    }
}
