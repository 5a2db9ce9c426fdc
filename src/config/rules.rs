//! Rule settings: the table of rules from DESIGN.md, their defaults, and
//! per-account overrides.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::reader::{Fields, Problems};
use crate::domain::Yocto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Result<Severity, String> {
        match s {
            "critical" => Ok(Severity::Critical),
            "warning" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            _ => Err(format!(
                "unknown severity {s:?} (expected critical, warning or info)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Settings of one rule (after per-account overrides are applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSettings {
    pub enabled: bool,
    pub severity: Severity,
    /// Measured in chain time.
    pub cooldown: Duration,
    /// Net drop that fires a window rule.
    pub min_drop: Option<Yocto>,
    /// Net drop as a percentage of the value before the window.
    pub min_drop_percent: Option<u32>,
    pub window: Option<Duration>,
    /// Fires when the value ends a block below this.
    pub floor: Option<Yocto>,
    /// Blocks to wait before judging a window (so a gas refund can land).
    pub settle_blocks: Option<u32>,
    /// new_function_call_key: severity for unlimited allowance or any method.
    pub unrestricted_severity: Option<Severity>,
    /// ingest_stalled: no progress for this long.
    pub after: Option<Duration>,
}

/// Which thresholds a rule takes beyond enabled/severity/cooldown.
#[derive(Clone, Copy)]
enum Extras {
    None,
    Window,
    Unrestricted,
    Stalled,
}

struct RuleDef {
    name: &'static str,
    severity: Severity,
    extras: Extras,
}

const RULES: &[RuleDef] = &[
    RuleDef {
        name: "new_full_access_key",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "new_function_call_key",
        severity: Severity::Warning,
        extras: Extras::Unrestricted,
    },
    RuleDef {
        name: "key_deleted",
        severity: Severity::Warning,
        extras: Extras::None,
    },
    RuleDef {
        name: "key_used",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "account_locked",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "allowance_drain",
        severity: Severity::Warning,
        extras: Extras::Window,
    },
    RuleDef {
        name: "balance_drop",
        severity: Severity::Critical,
        extras: Extras::Window,
    },
    RuleDef {
        name: "contract_deployed",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "account_deleted",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "unknown_permission",
        severity: Severity::Warning,
        extras: Extras::None,
    },
    RuleDef {
        name: "state_drift",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "ingest_stalled",
        severity: Severity::Critical,
        extras: Extras::Stalled,
    },
    RuleDef {
        name: "ingest_recovered",
        severity: Severity::Info,
        extras: Extras::None,
    },
    RuleDef {
        name: "ingest_stopped",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "delivery_failing",
        severity: Severity::Critical,
        extras: Extras::None,
    },
    RuleDef {
        name: "silence_started",
        severity: Severity::Warning,
        extras: Extras::None,
    },
];

pub fn rule_names() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|r| r.name)
}

fn defaults(def: &RuleDef) -> RuleSettings {
    let near = |n: u128| Some(Yocto(n * crate::domain::YOCTO_PER_NEAR));
    let mut s = RuleSettings {
        enabled: true,
        severity: def.severity,
        cooldown: Duration::from_secs(15 * 60),
        min_drop: None,
        min_drop_percent: None,
        window: None,
        floor: None,
        settle_blocks: None,
        unrestricted_severity: None,
        after: None,
    };
    match (def.extras, def.name) {
        (Extras::Window, "allowance_drain") => {
            s.min_drop = near(1);
            s.min_drop_percent = Some(50);
            s.window = Some(Duration::from_secs(3600));
            s.settle_blocks = Some(10);
        }
        (Extras::Window, _) => {
            s.min_drop = near(100);
            s.min_drop_percent = Some(20);
            s.window = Some(Duration::from_secs(3600));
            s.settle_blocks = Some(10);
        }
        (Extras::Unrestricted, _) => s.unrestricted_severity = Some(Severity::Critical),
        (Extras::Stalled, _) => s.after = Some(Duration::from_secs(5 * 60)),
        (Extras::None, _) => {}
    }
    s
}

fn read_near(p: &mut Problems, f: &mut Fields<'_>, key: &str) -> Option<Option<Yocto>> {
    f.parsed(p, key, |s: String| {
        Yocto::parse_near(&s).map_err(|e| format!("{e}; write NEAR as a string such as \"1.5\""))
    })
    .map(Some)
}

/// Reads the keys of one rule table over `base`.
fn read_rule(
    p: &mut Problems,
    f: &mut Fields<'_>,
    def: &RuleDef,
    base: &RuleSettings,
) -> RuleSettings {
    let mut s = base.clone();
    s.enabled = f.get(p, "enabled", s.enabled);
    if let Some(sev) = f.parsed(p, "severity", |v: String| Severity::parse(&v)) {
        s.severity = sev;
    }
    s.cooldown = f.get(p, "cooldown", s.cooldown);
    match def.extras {
        Extras::Window => {
            if let Some(v) = read_near(p, f, "min_drop") {
                s.min_drop = v;
            }
            if let Some(v) = f.parsed(p, "min_drop_percent", |v: u32| {
                if (1..=100).contains(&v) {
                    Ok(v)
                } else {
                    Err(format!("{v} is not a percentage from 1 to 100"))
                }
            }) {
                s.min_drop_percent = Some(v);
            }
            if let Some(v) = f.opt(p, "window") {
                s.window = Some(v);
            }
            if let Some(v) = read_near(p, f, "floor") {
                s.floor = v;
            }
            if let Some(v) = f.opt(p, "settle_blocks") {
                s.settle_blocks = Some(v);
            }
        }
        Extras::Unrestricted => {
            if let Some(v) = f.parsed(p, "unrestricted_severity", |v: String| Severity::parse(&v)) {
                s.unrestricted_severity = Some(v);
            }
        }
        Extras::Stalled => {
            if let Some(v) = f.opt(p, "after") {
                s.after = Some(v);
            }
        }
        Extras::None => {}
    }
    s
}

pub type RuleSet = BTreeMap<&'static str, RuleSettings>;

/// `[rules]`: every rule with its defaults, then the file's values.
pub fn read_rules(p: &mut Problems, f: &mut Fields<'_>) -> RuleSet {
    let mut out = RuleSet::new();
    for key in f.present_keys() {
        if !RULES.iter().any(|r| r.name == key) {
            p.add(
                f.path_of(&key),
                format!(
                    "unknown rule (known: {})",
                    rule_names().collect::<Vec<_>>().join(", ")
                ),
            );
            f.known(&key);
        }
    }
    for def in RULES {
        let mut t = f.table(p, def.name);
        out.insert(def.name, read_rule(p, &mut t, def, &defaults(def)));
        t.finish(p);
    }
    out
}

/// `[accounts.rules]`: overrides applied over the global rule set.
pub fn read_overrides(p: &mut Problems, f: &mut Fields<'_>, global: &RuleSet) -> RuleSet {
    let mut out = RuleSet::new();
    for key in f.present_keys() {
        match RULES.iter().find(|r| r.name == key) {
            Some(def) => {
                let mut t = f.table(p, def.name);
                out.insert(def.name, read_rule(p, &mut t, def, &global[def.name]));
                t.finish(p);
            }
            None => {
                p.add(f.path_of(&key), "unknown rule");
                f.known(&key);
            }
        }
    }
    out
}
