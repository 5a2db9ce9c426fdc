//! Work another process hands to the running leader: `keywatch reconcile`
//! from the command line runs inside the leader, on the request budget
//! following leaves ([`RpcClient::background`]), so it neither races the
//! follower nor spends a second budget against the same provider.
//!
//! The asker ([`ask_leader`]) listens for answers before it inserts the
//! request; the leader ([`Server`]) listens for requests and also sweeps
//! for open ones, so a notification lost to a reconnect costs a sweep, and a
//! request a former leader claimed and never finished is run by the next.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use crate::domain::AccountId;
use crate::ingest::alerts::AlertContext;
use crate::ingest::reconcile::{Report, reconcile};
use crate::rpc::RpcClient;
use crate::store::StoreError;
use crate::store::requests::{self, ASKED, DONE, Kind, Request};

/// How often the leader looks for open requests without being woken.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Attempts to record an answer before leaving the request to the next
/// leadership period.
const FINISH_ATTEMPTS: u32 = 10;
/// How often an asker re-reads its request without being woken.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs requests inside the leader until `stop`.
pub struct Server {
    pub pool: PgPool,
    /// The background lane: following has first claim on the budget.
    pub rpc: RpcClient,
    pub alerts: AlertContext,
    /// This process's lease name and leadership epoch: requests it claimed
    /// are its own; a later leadership claims again what an earlier one left.
    pub me: String,
}

impl Server {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut listening = crate::store::Listening::new(&[ASKED]);
        loop {
            if *stop.borrow() {
                return;
            }
            listening.connect(&self.pool).await;
            if let Err(e) = self.serve_open().await {
                tracing::warn!(error = %e, "serving requests");
            }
            listening.wait(SWEEP_EVERY, &mut stop).await;
        }
    }

    async fn serve_open(&self) -> Result<(), StoreError> {
        loop {
            let mut conn = self.pool.acquire().await?;
            let Some(request) = requests::claim_next(&mut conn, &self.me).await? else {
                return Ok(());
            };
            drop(conn);
            tracing::info!(
                id = request.id,
                kind = request.kind.as_str(),
                "running a request"
            );
            let answer = self.answer(&request).await;
            if let Err(e) = &answer {
                tracing::warn!(id = request.id, error = %e, "request failed");
            }
            self.finish(request.id, answer.as_ref().map_err(String::as_str))
                .await?;
        }
    }

    /// Records an answer, retrying through a short database outage: the
    /// asker is waiting for it.
    async fn finish(
        &self,
        id: i64,
        answer: Result<&serde_json::Value, &str>,
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            let done = async {
                let mut conn = self.pool.acquire().await?;
                requests::finish(&mut conn, id, answer).await
            }
            .await;
            match done {
                Ok(()) => return Ok(()),
                Err(e) if attempt < FINISH_ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(id, error = %e, "recording a request's answer; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn answer(&self, request: &Request) -> Result<serde_json::Value, String> {
        match request.kind {
            Kind::Reconcile => {
                let accounts = request
                    .accounts
                    .iter()
                    .map(|a| AccountId::parse(a).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let report = reconcile(&self.pool, &self.rpc, &accounts, Some(&self.alerts))
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::to_value(report).map_err(|e| e.to_string())
            }
        }
    }
}

/// Why the leader gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the running leader {holder} has not answered request {id} within {}s; it stays queued and the leader will still run it (see `select * from requests where id = {id}`)",
        .waited.as_secs()
    )]
    Timeout {
        id: i64,
        holder: String,
        waited: Duration,
    },
    #[error("the leader ran request {id} but its answer does not read back: {reason}")]
    Answer { id: i64, reason: String },
}

impl From<sqlx::Error> for AskError {
    fn from(e: sqlx::Error) -> Self {
        AskError::Store(e.into())
    }
}

/// Asks the running leader `holder` to do `kind` and waits up to `wait`
/// for its answer: the request's id, and `Err(reason)` when it ran and
/// failed.
pub async fn ask_leader(
    pool: &PgPool,
    holder: &str,
    kind: Kind,
    accounts: &[String],
    wait: Duration,
) -> Result<(i64, Result<serde_json::Value, String>), AskError> {
    let mut listener = crate::store::listen(pool, &[DONE]).await?;
    let mut tx = pool.begin().await?;
    let id = requests::ask(&mut tx, kind, accounts).await?;
    tx.commit().await?;
    tracing::info!(id, leader = holder, "asked the running leader");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let mut conn = pool.acquire().await?;
        let request = requests::get(&mut conn, id).await?;
        drop(conn);
        if let Some(answer) = request.and_then(|r| r.answer) {
            return Ok((id, answer));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(AskError::Timeout {
                id,
                holder: holder.to_owned(),
                waited: wait,
            });
        }
        // Any answer wakes us; the row says whether it is ours.
        crate::store::notified_within(&mut listener, RECHECK_EVERY.min(deadline - now)).await;
    }
}

/// [`ask_leader`] for a reconcile, with its report read back.
pub async fn reconcile_in_leader(
    pool: &PgPool,
    holder: &str,
    accounts: &[AccountId],
    wait: Duration,
) -> Result<Result<Report, String>, AskError> {
    let names: Vec<String> = accounts.iter().map(|a| a.to_string()).collect();
    let (id, answer) = ask_leader(pool, holder, Kind::Reconcile, &names, wait).await?;
    Ok(match answer {
        Ok(v) => Ok(serde_json::from_value(v).map_err(|e| AskError::Answer {
            id,
            reason: e.to_string(),
        })?),
        Err(e) => Err(e),
    })
}
