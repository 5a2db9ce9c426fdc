//! When a rule that already fired fires again: the contract of the README's
//! "Dedup, cooldown and escalation" as pure functions. A window rule that
//! stays true is quiet within its cooldown unless the value fell by a
//! further threshold from the value at its last alert (a second drain is
//! news); event rules repeat when the event differs from the last one
//! (another code hash, another difference), never on time alone; the other
//! rules are quiet within their cooldown for the same account and key.
//! Suppressed alerts (old blocks, never sent) are not "last alerts": the
//! store does not return them.

use std::time::Duration;

use crate::config::RuleSettings;
use crate::domain::Yocto;
use crate::rules::AlertDraft;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Quiet within `cooldown` (chain time) of the last alert for the same
    /// account and key.
    Cooldown(Duration),
    /// Quiet within `cooldown` unless the value (`details.value`, else
    /// `details.now`) fell by a further `min_drop` or `min_drop_percent`
    /// from the value at the last alert.
    Escalate {
        cooldown: Duration,
        min_drop: Option<Yocto>,
        min_drop_percent: Option<u32>,
    },
    /// Quiet while the last alert for the same account and key was about
    /// the same event (`details.event`), however long ago; for
    /// `state_drift`, until the follower corrected the account's drift.
    SameEvent,
    /// Every change is news (a replay of the same block is not: the dedup
    /// key holds the block and the change).
    EveryChange,
}

impl Repeat {
    pub fn of(rule: &str, r: &RuleSettings) -> Repeat {
        match rule {
            "allowance_drain" | "balance_drop" => Repeat::Escalate {
                cooldown: r.cooldown,
                min_drop: r.min_drop,
                min_drop_percent: r.min_drop_percent,
            },
            "contract_deployed" | "state_drift" => Repeat::SameEvent,
            "unknown_permission" => Repeat::EveryChange,
            _ => Repeat::Cooldown(r.cooldown),
        }
    }

    /// How far back (chain time) the last alert counts; `None`: forever.
    pub fn lookback(self) -> Option<Duration> {
        match self {
            Repeat::Cooldown(c) | Repeat::Escalate { cooldown: c, .. } => Some(c),
            Repeat::EveryChange => Some(Duration::ZERO),
            Repeat::SameEvent => None,
        }
    }
}

/// The last alert of the same rule, account and key within the lookback.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub id: i64,
    pub block_height: i64,
    pub details: &'a serde_json::Value,
    /// The account's drift was corrected after it.
    pub corrected_since: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Again {
    Fire,
    /// A window rule within its cooldown whose value fell further.
    Further {
        previous_now: Yocto,
        further: Yocto,
    },
    Quiet,
}

fn yocto_at(details: &serde_json::Value, key: &str) -> Option<Yocto> {
    details
        .get(key)
        .and_then(serde_json::Value::as_str)
        .and_then(|s| s.parse::<u128>().ok())
        .map(Yocto)
}

/// Whether `draft` fires, given the last alert of its rule, account and key
/// within [`Repeat::lookback`].
pub fn again(repeat: Repeat, draft: &AlertDraft, previous: Option<Previous<'_>>) -> Again {
    let Some(previous) = previous else {
        return Again::Fire;
    };
    match repeat {
        Repeat::Cooldown(c) if c.is_zero() => Again::Fire,
        Repeat::Cooldown(_) => Again::Quiet,
        Repeat::EveryChange => Again::Fire,
        Repeat::Escalate {
            min_drop,
            min_drop_percent,
            ..
        } => {
            // the value compared (for balances, stake moved into `locked`
            // counted back in); an alert from before values were recorded
            // cannot be compared with, so the rule speaks
            let value = |d: &serde_json::Value| yocto_at(d, "value").or_else(|| yocto_at(d, "now"));
            let (Some(previous_now), Some(now)) = (value(previous.details), value(&draft.details))
            else {
                return Again::Fire;
            };
            let further = previous_now.0.saturating_sub(now.0);
            let by_amount = min_drop.is_some_and(|m| further > 0 && further >= m.0);
            let by_pct = min_drop_percent.is_some_and(|p| {
                further > 0
                    && further.saturating_mul(100) >= previous_now.0.saturating_mul(u128::from(p))
            });
            if by_amount || by_pct {
                Again::Further {
                    previous_now,
                    further: Yocto(further),
                }
            } else {
                Again::Quiet
            }
        }
        Repeat::SameEvent => {
            let same = draft.details.get("event").is_some()
                && previous.details.get("event") == draft.details.get("event");
            if same && !(draft.rule == "state_drift" && previous.corrected_since) {
                Again::Quiet
            } else {
                Again::Fire
            }
        }
    }
}

/// Marks a draft that fires again within its cooldown because the value
/// fell further: says so in the title, and gives both totals.
pub fn mark_further(
    draft: &mut AlertDraft,
    previous: Previous<'_>,
    previous_now: Yocto,
    further: Yocto,
) {
    draft.title = format!(
        "{}: a further drop of {} since the alert at block {}",
        draft.title,
        further.to_near_string(),
        previous.block_height
    );
    draft.details["further_drop"] = serde_json::json!(further.to_string());
    draft.details["previous_now"] = serde_json::json!(previous_now.to_string());
    draft.details["previous_alert_id"] = serde_json::json!(previous.id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Severity;

    const NEAR: u128 = crate::domain::YOCTO_PER_NEAR;

    fn draft(rule: &'static str, details: serde_json::Value) -> AlertDraft {
        AlertDraft {
            rule,
            severity: Severity::Warning,
            account_id: "a.near".into(),
            public_key: None,
            title: "Balance of a.near dropped".into(),
            details,
        }
    }

    fn previous(details: &serde_json::Value, corrected_since: bool) -> Previous<'_> {
        Previous {
            id: 7,
            block_height: 100,
            details,
            corrected_since,
        }
    }

    fn now(n: u128) -> serde_json::Value {
        serde_json::json!({"now": (n * NEAR).to_string()})
    }

    #[test]
    fn stake_is_no_further_drop_and_an_alert_without_values_does_not_silence() {
        let repeat = Repeat::Escalate {
            cooldown: Duration::from_secs(900),
            min_drop: Some(Yocto(100 * NEAR)),
            min_drop_percent: Some(20),
        };
        // 500 of the 1,000 left moved into stake: the compared value holds
        let last = serde_json::json!({"now": (1000 * NEAR).to_string(), "value": (1000 * NEAR).to_string()});
        let staked = serde_json::json!({"now": (500 * NEAR).to_string(), "value": (1000 * NEAR).to_string()});
        assert_eq!(
            again(
                repeat,
                &draft("balance_drop", staked),
                Some(previous(&last, false))
            ),
            Again::Quiet
        );
        let old = serde_json::json!({});
        assert_eq!(
            again(
                repeat,
                &draft("balance_drop", now(1)),
                Some(previous(&old, false))
            ),
            Again::Fire
        );
    }

    #[test]
    fn a_drain_within_its_cooldown_fires_again_only_when_it_fell_a_further_threshold() {
        let repeat = Repeat::Escalate {
            cooldown: Duration::from_secs(900),
            min_drop: Some(Yocto(1000 * NEAR)),
            min_drop_percent: Some(20),
        };
        let last = now(1000);
        // 79% of what was left after the first alert: news
        assert_eq!(
            again(
                repeat,
                &draft("balance_drop", now(210)),
                Some(previous(&last, false))
            ),
            Again::Further {
                previous_now: Yocto(1000 * NEAR),
                further: Yocto(790 * NEAR)
            }
        );
        // 19% further: below both thresholds, quiet
        assert_eq!(
            again(
                repeat,
                &draft("balance_drop", now(810)),
                Some(previous(&last, false))
            ),
            Again::Quiet
        );
        // exactly 20% further fires; a rise is quiet
        assert!(matches!(
            again(
                repeat,
                &draft("balance_drop", now(800)),
                Some(previous(&last, false))
            ),
            Again::Further { .. }
        ));
        assert_eq!(
            again(
                repeat,
                &draft("balance_drop", now(1200)),
                Some(previous(&last, false))
            ),
            Again::Quiet
        );
        // no earlier alert within the cooldown: fires
        assert_eq!(
            again(repeat, &draft("balance_drop", now(1)), None),
            Again::Fire
        );
    }

    #[test]
    fn a_deploy_fires_for_each_new_code_and_a_drift_once_until_corrected() {
        let x = serde_json::json!({"event": "X"});
        let y = serde_json::json!({"event": "Y"});
        let deploy = |d: &serde_json::Value| draft("contract_deployed", d.clone());
        // X, then Y, then X again: each is news
        assert_eq!(again(Repeat::SameEvent, &deploy(&x), None), Again::Fire);
        assert_eq!(
            again(Repeat::SameEvent, &deploy(&y), Some(previous(&x, false))),
            Again::Fire
        );
        assert_eq!(
            again(Repeat::SameEvent, &deploy(&x), Some(previous(&y, false))),
            Again::Fire
        );
        assert_eq!(
            again(Repeat::SameEvent, &deploy(&x), Some(previous(&x, false))),
            Again::Quiet
        );
        let drift = draft("state_drift", x.clone());
        assert_eq!(
            again(Repeat::SameEvent, &drift, Some(previous(&x, false))),
            Again::Quiet,
            "the same unresolved drift"
        );
        assert_eq!(
            again(Repeat::SameEvent, &drift, Some(previous(&x, true))),
            Again::Fire,
            "found again after it was corrected"
        );
    }

    #[test]
    fn other_rules_are_quiet_within_their_cooldown_unless_it_is_zero() {
        let d = draft("key_deleted", serde_json::json!({}));
        let last = serde_json::json!({});
        let p = Some(previous(&last, false));
        assert_eq!(
            again(Repeat::Cooldown(Duration::from_secs(60)), &d, p),
            Again::Quiet
        );
        assert_eq!(again(Repeat::Cooldown(Duration::ZERO), &d, p), Again::Fire);
    }
}
