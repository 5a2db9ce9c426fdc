//! One leader, any number of standbys (orchestration). A lock tied to a
//! connection is not enough: a frozen process or a vanished host keeps its
//! connection, and its locks, for hours. So the leader renews a lease row;
//! a standby that finds it older than `[ingest] takeover_after` ends the
//! holder's database sessions and takes the lease with the next epoch.
//! A holder with no database session left (killed, exited) is replaced at
//! once. Every block's transaction checks the epoch (fencing); when it
//! fails, or a renewal finds another epoch, the process steps down at once.
//! A renewal that fails because the database is down does not: nobody can
//! take over through a database that is down, and the leader's watchdog
//! must stay on to report the outage.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::health::{Dependency, Health, Role};
use crate::store::{StoreError, lease};

/// This process's name in the lease and in `application_name`.
pub fn process_name() -> String {
    format!(
        "keywatch-{}-{}",
        std::process::id(),
        hex::encode(rand::rng().random::<[u8; 4]>())
    )
}

/// Held while this process leads.
pub struct Leadership {
    pub epoch: i64,
    /// Becomes true when the lease is lost.
    pub deposed: watch::Receiver<bool>,
    stop_renewing: watch::Sender<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and gives the lease up (when still held), so a
    /// standby takes over at once instead of after `takeover_after`.
    pub async fn release(self) {
        self.stop_renewing.send_replace(true);
        if let Err(e) = self.renewer.await {
            tracing::error!(error = %e, "the lease renewer panicked");
        }
    }
}

pub struct Election {
    pub pool: PgPool,
    pub me: String,
    pub takeover_after: Duration,
    pub health: Arc<Health>,
    /// The `ingest_stalled` rule's `after`, for the readiness reported with
    /// each renewal.
    pub stalled_after: Duration,
}

impl Election {
    fn renew_every(&self) -> Duration {
        (self.takeover_after / 5).max(Duration::from_millis(100))
    }

    /// Waits as a standby until this process leads; `None` once `stop`.
    pub async fn lead(&self, mut stop: watch::Receiver<bool>) -> Option<Leadership> {
        let mut said_standby = false;
        loop {
            match self.try_take().await {
                Ok(Some(epoch)) => {
                    tracing::info!(epoch, me = %self.me, "leading");
                    self.health.recovered(Dependency::Database);
                    self.health.lease_renewed();
                    self.health.set_role(Role::Leader);
                    return Some(self.start_renewing(epoch));
                }
                Ok(None) => {
                    self.health.recovered(Dependency::Database);
                    self.health.set_role(Role::Standby);
                    if !said_standby {
                        tracing::info!("another process leads: waiting as a standby");
                        said_standby = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the leader lease");
                    self.health.failed(Dependency::Database, &e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every()) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return None;
            }
        }
    }

    async fn try_take(&self) -> Result<Option<i64>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        match lease::read(&mut conn).await? {
            None => lease::take(&mut conn, &self.me, None).await,
            Some(l) if l.age_ms.max(0) as u128 > self.takeover_after.as_millis() => {
                tracing::warn!(holder = %l.holder, age_ms = l.age_ms, "the leader's lease is stale: taking over");
                lease::take(&mut conn, &self.me, Some(&l)).await
            }
            Some(l) if !lease::holder_connected(&mut conn, &l.holder).await? => {
                tracing::warn!(holder = %l.holder, "the leader has no session left (it exited or was killed): taking over");
                lease::take(&mut conn, &self.me, Some(&l)).await
            }
            Some(_) => Ok(None),
        }
    }

    fn start_renewing(&self, epoch: i64) -> Leadership {
        let (deposed_tx, deposed) = watch::channel(false);
        let (stop_renewing, mut stop) = watch::channel(false);
        let (pool, health) = (self.pool.clone(), self.health.clone());
        let every = self.renew_every();
        let stalled_after = self.stalled_after;
        let renewer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    release(&pool, epoch).await;
                    return;
                }
                let report = lease::Report {
                    final_head: health.snapshot().head,
                    not_ready: health.not_ready(stalled_after),
                };
                let attempt = || {
                    tokio::time::timeout(every, async {
                        let mut conn = pool.acquire().await?;
                        lease::renew(&mut conn, epoch, &report).await
                    })
                };
                let mut renewed = attempt().await;
                if !matches!(renewed, Ok(Ok(_))) {
                    // Once more on a fresh connection: the first may have
                    // been ended by a standby that took over.
                    renewed = attempt().await;
                }
                if !matches!(renewed, Ok(Ok(false))) {
                    // Awake and still holding the lease as far as it can
                    // tell (renewed, or the database does not answer).
                    health.lease_attempted();
                }
                match renewed {
                    Ok(Ok(true)) => health.lease_renewed(),
                    Ok(Ok(false)) => {
                        tracing::error!(epoch, "another process took the lease: stepping down");
                        health.set_role(Role::Standby);
                        deposed_tx.send_replace(true);
                        return;
                    }
                    // The database is down (for the standbys too, or they
                    // could take over; then fencing stops this process's
                    // next block). Keep leading, so the watchdog reports it.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot renew the leader lease");
                        health.failed(Dependency::Database, &e.to_string());
                    }
                    Err(_) => {
                        tracing::warn!("renewing the leader lease timed out");
                        health.failed(Dependency::Database, "renewing the leader lease timed out");
                    }
                }
            }
        });
        Leadership {
            epoch,
            deposed,
            stop_renewing,
            renewer,
        }
    }
}

async fn release(pool: &PgPool, epoch: i64) {
    let released = async {
        let mut conn = pool.acquire().await?;
        lease::release(&mut conn, epoch).await
    }
    .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "cannot release the leader lease; a standby takes over when it expires");
    }
}

/// A receiver that turns true when either does.
pub fn either(a: watch::Receiver<bool>, b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    for mut r in [a, b] {
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                if *r.borrow() {
                    tx.send_replace(true);
                    return;
                }
                tokio::select! {
                    changed = r.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
    }
    rx
}
