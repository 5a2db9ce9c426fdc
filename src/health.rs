//! What the process knows about its own health, kept in memory so that it
//! can be read and acted on while the database is down: when ingestion last
//! made progress, the last error of each dependency, and this process's
//! role. The follower, dispatcher and leader loop write it; the watchdog,
//! `/ready` and `/metrics` read it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::Cursor;

/// Something keywatch depends on that can fail for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dependency {
    Rpc,
    Database,
    Email,
    Webhook,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Rpc => "rpc",
            Dependency::Database => "database",
            Dependency::Email => "email",
            Dependency::Webhook => "webhook",
        }
    }
}

/// Whether this process follows the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Starting,
    Leader,
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failing {
    /// The last error, already free of secrets (urls are redacted by the adapters).
    pub error: String,
    pub since: Instant,
}

#[derive(Debug)]
struct State {
    role: Role,
    /// The last time ingestion was provably up to date or advancing: a block
    /// committed, or the final head reached.
    last_progress: Instant,
    cursor: Option<Cursor>,
    head: Option<u64>,
    failing: BTreeMap<Dependency, Failing>,
    /// Deliveries that ended `failed` or critical ones pending too long.
    outbox_stuck: Option<String>,
    /// When a renewal of the leader lease last ended in anything but "another
    /// process holds it" (leaders only).
    lease_attempted: Option<Instant>,
}

/// Shared by every loop of the process (`Arc<Health>`).
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
}

/// A copy of the state at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub role: Role,
    pub idle: Duration,
    pub cursor: Option<Cursor>,
    pub head: Option<u64>,
    pub failing: BTreeMap<Dependency, Failing>,
    pub outbox_stuck: Option<String>,
}

impl Snapshot {
    pub fn lag(&self) -> Option<u64> {
        Some(self.head?.saturating_sub(self.cursor.as_ref()?.height))
    }

    /// Why ingestion is not advancing, for an alert or `/ready`: the failing
    /// dependency with its last error, or how far behind it is.
    pub fn stall_reason(&self) -> String {
        if let Some(f) = self.failing.get(&Dependency::Database) {
            return format!("database unreachable: {}", f.error);
        }
        if let Some(f) = self.failing.get(&Dependency::Rpc) {
            // Named with the block it waits on, so a response that keeps
            // failing to parse points at the block to look at.
            return match &self.cursor {
                Some(c) => format!(
                    "rpc failing (waiting on block {}): {}",
                    c.height + 1,
                    f.error
                ),
                None => format!("rpc failing: {}", f.error),
            };
        }
        match self.lag() {
            Some(lag) => format!("behind the final head by {lag} block(s) and not advancing"),
            None => "no block ingested yet".to_owned(),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::new(State {
                role: Role::Starting,
                last_progress: Instant::now(),
                cursor: None,
                head: None,
                failing: BTreeMap::new(),
                outbox_stuck: None,
                lease_attempted: None,
            }),
        }
    }
}

impl Health {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters: every field is set whole.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// A block was committed: the rpc and the database both work.
    pub fn committed(&self, cursor: &Cursor) {
        self.with(|s| {
            s.last_progress = Instant::now();
            s.cursor = Some(cursor.clone());
            s.failing.remove(&Dependency::Rpc);
            s.failing.remove(&Dependency::Database);
        });
    }

    /// The follower has reached the final head it just read.
    pub fn caught_up(&self, cursor: &Cursor, head: u64) {
        self.with(|s| {
            s.last_progress = Instant::now();
            s.cursor = Some(cursor.clone());
            s.head = Some(head);
            s.failing.remove(&Dependency::Rpc);
            s.failing.remove(&Dependency::Database);
        });
    }

    pub fn saw_head(&self, head: u64) {
        self.with(|s| s.head = Some(head));
    }

    /// Where ingestion stands, without claiming progress (at start-up).
    pub fn at_cursor(&self, cursor: &Cursor) {
        self.with(|s| s.cursor = Some(cursor.clone()));
    }

    pub fn failed(&self, dep: Dependency, error: &str) {
        self.with(|s| {
            let now = Instant::now();
            let since = s.failing.get(&dep).map(|f| f.since).unwrap_or(now);
            s.failing.insert(
                dep,
                Failing {
                    error: error.to_owned(),
                    since,
                },
            );
        });
    }

    pub fn recovered(&self, dep: Dependency) {
        self.with(|s| {
            s.failing.remove(&dep);
        });
    }

    pub fn set_role(&self, role: Role) {
        self.with(|s| {
            if s.role != role {
                // A new leader starts its own clock: a standby's idle time is
                // not a stall.
                s.last_progress = Instant::now();
            }
            s.role = role;
        });
    }

    /// The lease was renewed: the database answers.
    pub fn lease_renewed(&self) {
        self.recovered(Dependency::Database);
    }

    pub fn lease_attempted(&self) {
        self.with(|s| s.lease_attempted = Some(Instant::now()));
    }

    /// Whether this process may act as the leader: it leads, and (when it
    /// holds a lease) it has tried to renew it within `window`. A leader
    /// that was frozen has not, and must not raise a stall about the time
    /// it was asleep before its renewer learns whether it was deposed; one
    /// whose renewals fail because the database is down has, and reports.
    pub fn leads(&self, window: Duration) -> bool {
        self.with(|s| {
            s.role == Role::Leader && s.lease_attempted.is_none_or(|t| t.elapsed() < window)
        })
    }

    pub fn set_outbox_stuck(&self, why: Option<String>) {
        self.with(|s| s.outbox_stuck = why);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| Snapshot {
            role: s.role,
            idle: s.last_progress.elapsed(),
            cursor: s.cursor.clone(),
            head: s.head,
            failing: s.failing.clone(),
            outbox_stuck: s.outbox_stuck.clone(),
        })
    }

    /// Why this process is not ready (empty when it is), for `/ready` and
    /// `keywatch status`; `stalled_after` is the `ingest_stalled` rule's `after`.
    pub fn not_ready(&self, stalled_after: Duration) -> Vec<String> {
        self.reasons(stalled_after, true)
    }

    /// [`Health::not_ready`] as an unauthenticated endpoint may say it:
    /// which dependency fails and for how long, without the error's text
    /// (a node's or a server's words are not for anyone who asks).
    pub fn not_ready_public(&self, stalled_after: Duration) -> Vec<String> {
        self.reasons(stalled_after, false)
    }

    fn reasons(&self, stalled_after: Duration, with_errors: bool) -> Vec<String> {
        let snap = self.snapshot();
        let mut reasons = Vec::new();
        match snap.role {
            Role::Starting => reasons.push("starting".to_owned()),
            Role::Standby => reasons.push("standby: another process leads".to_owned()),
            Role::Leader => {}
        }
        for (dep, f) in &snap.failing {
            let mut reason = format!(
                "{} failing for {}s",
                dep.as_str(),
                f.since.elapsed().as_secs()
            );
            if with_errors {
                reason.push_str(&format!(": {}", f.error));
            }
            reasons.push(reason);
        }
        if snap.role == Role::Leader && snap.idle >= stalled_after {
            reasons.push(if with_errors {
                format!(
                    "stalled for {}s: {}",
                    snap.idle.as_secs(),
                    snap.stall_reason()
                )
            } else {
                format!("stalled for {}s", snap.idle.as_secs())
            });
        }
        if let Some(why) = snap.outbox_stuck {
            reasons.push(format!("outbox: {why}"));
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(height: u64) -> Cursor {
        Cursor {
            height,
            hash: format!("hash{height}"),
            timestamp_ns: height * 1_000_000_000,
        }
    }

    #[test]
    fn the_stall_reason_names_the_failing_dependency_first() {
        let h = Health::default();
        h.at_cursor(&header(10));
        h.saw_head(15);
        assert_eq!(
            h.snapshot().stall_reason(),
            "behind the final head by 5 block(s) and not advancing"
        );
        h.failed(Dependency::Rpc, "gave up after 3 attempts");
        assert_eq!(
            h.snapshot().stall_reason(),
            "rpc failing (waiting on block 11): gave up after 3 attempts"
        );
        h.failed(Dependency::Database, "connection refused");
        assert!(
            h.snapshot()
                .stall_reason()
                .starts_with("database unreachable")
        );
        h.committed(&header(11));
        assert!(h.snapshot().failing.is_empty());
    }

    #[test]
    fn a_leader_that_keeps_trying_its_lease_still_leads() {
        let h = Health::default();
        h.set_role(Role::Leader);
        assert!(h.leads(Duration::ZERO), "no lease yet: the role decides");
        // renewals that fail because the database is down still count
        h.lease_attempted();
        assert!(h.leads(Duration::from_secs(60)));
        // one that has not tried within the window was asleep (frozen)
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.leads(Duration::from_millis(10)));
        h.set_role(Role::Standby);
        assert!(!h.leads(Duration::from_secs(60)));
    }

    #[test]
    fn a_standby_is_not_ready_but_not_stalled() {
        let h = Health::default();
        h.set_role(Role::Standby);
        let reasons = h.not_ready(Duration::ZERO);
        assert_eq!(reasons, vec!["standby: another process leads".to_owned()]);
        h.set_role(Role::Leader);
        assert!(h.not_ready(Duration::from_secs(60)).is_empty());
        assert_eq!(h.not_ready(Duration::ZERO).len(), 1);
    }
}
