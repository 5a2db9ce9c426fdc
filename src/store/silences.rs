//! Silences (`keywatch silence`): alerts for an account, or one rule of it,
//! are recorded but not sent until a time. One takes effect only once the
//! leader announced it ([`crate::ingest::silences`]).

use sqlx::PgConnection;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Silence {
    pub id: i64,
    pub account_id: String,
    /// `None`: every rule.
    pub rule: Option<String>,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub ends_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub announced_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Records a silence from now (the database's clock) for `seconds`;
/// returns its id and its end.
pub async fn add(
    conn: &mut PgConnection,
    account: &str,
    rule: Option<&str>,
    seconds: i64,
    reason: &str,
) -> Result<(i64, chrono::DateTime<chrono::Utc>), StoreError> {
    Ok(sqlx::query_as(
        "insert into silences (account_id, rule, ends_at, reason)
         values ($1, $2, now() + $3 * interval '1 second', $4)
         returning id, ends_at",
    )
    .bind(account)
    .bind(rule)
    .bind(seconds)
    .bind(reason)
    .fetch_one(conn)
    .await?)
}

/// Whether any silence waits for its announcement: one statement on the
/// partial index, for the follower to ask at every turn.
pub async fn any_unannounced(pool: &sqlx::PgPool) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("select exists (select 1 from silences where announced_at is null)")
            .fetch_one(pool)
            .await?,
    )
}

/// Silences not announced yet, locked for the transaction that announces
/// them (another leader skips them).
pub async fn unannounced(conn: &mut PgConnection) -> Result<Vec<Silence>, StoreError> {
    Ok(sqlx::query_as(
        "select * from silences where announced_at is null order by id for update skip locked",
    )
    .fetch_all(conn)
    .await?)
}

pub async fn mark_announced(conn: &mut PgConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("update silences set announced_at = now() where id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The silences of `accounts` in effect for a block at `at`: announced
/// by then, started and not ended.
pub async fn active(
    conn: &mut PgConnection,
    accounts: &[&str],
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Silence>, StoreError> {
    if accounts.is_empty() {
        return Ok(vec![]);
    }
    Ok(sqlx::query_as(
        "select * from silences where account_id = any($1) and ends_at > $2 and starts_at <= $2
           and announced_at <= $2 order by id",
    )
    .bind(accounts)
    .bind(at)
    .fetch_all(conn)
    .await?)
}

/// Silences not yet over at `at`, announced or not, for `keywatch alerts`.
pub async fn current(
    conn: &mut PgConnection,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Silence>, StoreError> {
    Ok(
        sqlx::query_as("select * from silences where ends_at > $1 order by ends_at, id")
            .bind(at)
            .fetch_all(conn)
            .await?,
    )
}
