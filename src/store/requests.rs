//! Work another process asks the running leader to do (`requests`), and
//! the notification channels that carry the asking and the answers.
//!
//! An asker LISTENs on [`DONE`] before it inserts, so an answer cannot slip
//! past it; the leader LISTENs on [`ASKED`]. A notification is only a
//! wake-up: both sides read the rows, so a missed one costs a poll, never a
//! request.

use sqlx::PgConnection;

use crate::store::StoreError;

/// The leader hears new requests here (payload: the request id).
pub const ASKED: &str = "keywatch_request";
/// Askers hear finished requests here (payload: the request id).
pub const DONE: &str = "keywatch_request_done";
/// Askers hear here that the follower wrote baselines.
pub const BASELINES: &str = "keywatch_baselines";

/// What can be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Compare the chain with history at the cursor (`keywatch reconcile`).
    Reconcile,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Reconcile => "reconcile",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "reconcile" => Ok(Kind::Reconcile),
            other => Err(StoreError::Invalid(format!(
                "unknown request kind {other:?}"
            ))),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    kind: String,
    accounts: Vec<String>,
    finished: bool,
    outcome: Option<serde_json::Value>,
    error: Option<String>,
}

/// A request as the leader runs it or the asker reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: i64,
    pub kind: Kind,
    /// Account ids as given (empty: every watched account).
    pub accounts: Vec<String>,
    /// `None` while the leader has not finished it.
    pub answer: Option<Result<serde_json::Value, String>>,
}

impl TryFrom<Row> for Request {
    type Error = StoreError;

    fn try_from(r: Row) -> Result<Self, StoreError> {
        let answer = match (r.finished, r.outcome, r.error) {
            (false, _, _) => None,
            (true, _, Some(e)) => Some(Err(e)),
            (true, Some(v), None) => Some(Ok(v)),
            (true, None, None) => {
                return Err(StoreError::Invalid(format!(
                    "request {} finished without an answer",
                    r.id
                )));
            }
        };
        Ok(Request {
            id: r.id,
            kind: Kind::parse(&r.kind)?,
            accounts: r.accounts,
            answer,
        })
    }
}

/// Inserts a request and wakes the leader (on commit of `tx`).
pub async fn ask(
    tx: &mut PgConnection,
    kind: Kind,
    accounts: &[String],
) -> Result<i64, StoreError> {
    let id: i64 =
        sqlx::query_scalar("insert into requests (kind, accounts) values ($1, $2) returning id")
            .bind(kind.as_str())
            .bind(accounts)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("select pg_notify($1, $2::text)")
        .bind(ASKED)
        .bind(id.to_string())
        .execute(tx)
        .await?;
    Ok(id)
}

pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<Request>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "select id, kind, accounts, finished_at is not null as finished, outcome, error
         from requests where id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    row.map(Request::try_from).transpose()
}

/// Claims the oldest open request `me` is not already running: one nobody
/// claimed, or one a former leader claimed and never finished.
pub async fn claim_next(conn: &mut PgConnection, me: &str) -> Result<Option<Request>, StoreError> {
    let row: Option<Row> = sqlx::query_as(
        "update requests set claimed_by = $1, claimed_at = now()
         where id = (select id from requests
                     where finished_at is null and claimed_by is distinct from $1
                     order by id limit 1 for update skip locked)
         returning id, kind, accounts, finished_at is not null as finished, outcome, error",
    )
    .bind(me)
    .fetch_optional(conn)
    .await?;
    row.map(Request::try_from).transpose()
}

/// Records the answer and wakes the asker.
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    answer: Result<&serde_json::Value, &str>,
) -> Result<(), StoreError> {
    let (outcome, error) = match answer {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    sqlx::query(
        "with done as (update requests set finished_at = now(), outcome = $2, error = $3
                       where id = $1 and finished_at is null returning id)
         select pg_notify($4, id::text) from done",
    )
    .bind(id)
    .bind(outcome)
    .bind(error)
    .bind(DONE)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inside the transaction that writes baselines: wakes `watch add`ers.
pub async fn baselines_written(tx: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("select pg_notify($1, '')")
        .bind(BASELINES)
        .execute(tx)
        .await?;
    Ok(())
}
