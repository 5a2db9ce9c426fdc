//! The figures `keywatch status` shows, each read through an index or from
//! a small table.

use sqlx::PgConnection;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    pub watched: i64,
    /// Watched accounts whose baseline the follower has not read yet.
    pub awaiting_baseline: i64,
    pub pending_deliveries: i64,
    pub failed_deliveries: i64,
    /// Accounts whose drift the follower has yet to correct.
    pub fixes_pending: i64,
}

pub async fn counts(conn: &mut PgConnection) -> Result<Counts, StoreError> {
    Ok(sqlx::query_as(
        "select (select count(*) from watched_accounts) as watched,
                (select count(*) from watched_accounts where baseline_height is null) as awaiting_baseline,
                (select count(*) from alert_deliveries where status = 'pending') as pending_deliveries,
                (select count(*) from alert_deliveries where status = 'failed') as failed_deliveries,
                (select count(*) from watched_accounts where fix_requested_at is not null) as fixes_pending",
    )
    .fetch_one(conn)
    .await?)
}

/// The last reconcile run.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LastReconcile {
    pub block_height: i64,
    pub accounts: i32,
    pub differences: i32,
    pub ran_at: chrono::DateTime<chrono::Utc>,
}

pub async fn last_reconcile(conn: &mut PgConnection) -> Result<Option<LastReconcile>, StoreError> {
    Ok(sqlx::query_as(
        "select block_height, accounts, differences, ran_at from reconcile_runs order by id desc limit 1",
    )
    .fetch_optional(conn)
    .await?)
}
