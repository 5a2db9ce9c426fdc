//! The leader lease (one row) and the session settings that let a standby
//! take over from a leader that is frozen or gone.

use sqlx::PgConnection;

use crate::store::StoreError;

/// The lease as a standby sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lease {
    pub holder: String,
    pub epoch: i64,
    /// Milliseconds since the holder last renewed it (database clock).
    pub age_ms: i64,
}

pub async fn read(conn: &mut PgConnection) -> Result<Option<Lease>, StoreError> {
    Ok(sqlx::query_as(
        "select holder, epoch, (extract(epoch from now() - renewed_at) * 1000)::bigint as age_ms
         from leader_lease where id = 1",
    )
    .fetch_optional(conn)
    .await?)
}

/// Takes the lease if nobody holds it, or if `stale` (the lease read before)
/// is still the current one; returns the new epoch, or `None` when someone
/// else got there first. Ends the deposed holder's sessions first, so its
/// locks and open transactions go with it.
pub async fn take(
    conn: &mut PgConnection,
    me: &str,
    stale: Option<&Lease>,
) -> Result<Option<i64>, StoreError> {
    match stale {
        None => Ok(sqlx::query_scalar(
            "insert into leader_lease (id, holder, epoch, renewed_at) values (1, $1, 1, now())
             on conflict (id) do nothing returning epoch",
        )
        .bind(me)
        .fetch_optional(conn)
        .await?),
        Some(old) => {
            let ended: Vec<bool> = sqlx::query_scalar(
                "select pg_terminate_backend(pid) from pg_stat_activity
                 where application_name = $1 and pid <> pg_backend_pid()",
            )
            .bind(&old.holder)
            .fetch_all(&mut *conn)
            .await?;
            if !ended.is_empty() {
                tracing::warn!(
                    holder = %old.holder,
                    sessions = ended.len(),
                    "ended the stale leader's database sessions"
                );
            }
            Ok(sqlx::query_scalar(
                "update leader_lease set holder = $1, epoch = epoch + 1, renewed_at = now()
                 where id = 1 and epoch = $2 returning epoch",
            )
            .bind(me)
            .bind(old.epoch)
            .fetch_optional(conn)
            .await?)
        }
    }
}

/// Whether the holder still has a session open. A killed process's
/// sessions end with it (its sockets close), so a standby need not wait for
/// the lease to age; a frozen one keeps them, and the lease's age decides.
pub async fn holder_connected(conn: &mut PgConnection, holder: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "select exists(select 1 from pg_stat_activity where application_name = $1)",
    )
    .bind(holder)
    .fetch_one(conn)
    .await?)
}

/// What the leader reports with each renewal (for `keywatch status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub final_head: Option<u64>,
    /// Why it is not ready; empty when it is.
    pub not_ready: Vec<String>,
}

/// Renews the lease with the leader's report; false when `epoch` is no
/// longer the current one.
pub async fn renew(
    conn: &mut PgConnection,
    epoch: i64,
    report: &Report,
) -> Result<bool, StoreError> {
    let head = report
        .final_head
        .map(|h| {
            i64::try_from(h)
                .map_err(|_| StoreError::Invalid(format!("final head {h} is beyond i64")))
        })
        .transpose()?;
    Ok(sqlx::query(
        "update leader_lease set renewed_at = now(), final_head = $2, not_ready = $3
         where id = 1 and epoch = $1",
    )
    .bind(epoch)
    .bind(head)
    .bind(&report.not_ready)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// The lease as `keywatch status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Overview {
    pub holder: String,
    pub epoch: i64,
    pub age_ms: i64,
    pub final_head: Option<i64>,
    pub not_ready: Vec<String>,
    pub holder_connected: bool,
    /// Other `run` processes connected: standbys waiting to take over.
    pub standbys: i64,
}

impl Overview {
    /// Renewed within `stale_after` by a process that still has a session.
    pub fn is_live(&self, stale_after: std::time::Duration) -> bool {
        self.holder_connected && (self.age_ms.max(0) as u128) < stale_after.as_millis()
    }
}

pub async fn overview(conn: &mut PgConnection) -> Result<Option<Overview>, StoreError> {
    if !table_exists(conn).await? {
        return Ok(None);
    }
    Ok(sqlx::query_as(
        "select l.holder, l.epoch, (extract(epoch from now() - l.renewed_at) * 1000)::bigint as age_ms,
                l.final_head, l.not_ready,
                exists(select 1 from pg_stat_activity where application_name = l.holder) as holder_connected,
                (select count(distinct application_name) from pg_stat_activity
                 where datname = current_database() and application_name like 'keywatch-%'
                   and application_name <> l.holder) as standbys
         from leader_lease l where l.id = 1",
    )
    .fetch_optional(conn)
    .await?)
}

/// Inside a block's transaction: whether `epoch` still leads. The row is
/// share-locked until the block commits, so the epoch cannot change under
/// a block being written: a standby taking over ends the old leader's
/// sessions first (rolling its block back), and a block begun after the
/// takeover sees the new epoch and is refused.
pub async fn holds(tx: &mut PgConnection, epoch: i64) -> Result<bool, StoreError> {
    let current: Option<i64> =
        sqlx::query_scalar("select epoch from leader_lease where id = 1 for share")
            .fetch_optional(tx)
            .await?;
    Ok(current == Some(epoch))
}

/// Gives the lease up on a clean stop, so a standby takes over at once.
pub async fn release(conn: &mut PgConnection, epoch: i64) -> Result<(), StoreError> {
    sqlx::query(
        "update leader_lease set renewed_at = now() - interval '1 day' where id = 1 and epoch = $1",
    )
    .bind(epoch)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the lease table exists yet (a database no process has migrated).
pub async fn table_exists(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("select to_regclass('leader_lease') is not null")
            .fetch_one(conn)
            .await?,
    )
}

/// The newest migration the database has applied.
pub async fn schema_version(conn: &mut PgConnection) -> Result<Option<i64>, StoreError> {
    let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success")
            .fetch_one(conn)
            .await?,
    )
}

/// Three statements outside a transaction on one connection reach three
/// different backends only behind a pooler in transaction mode, where
/// advisory locks, `LISTEN` and the lease's session identity do not hold.
pub async fn behind_transaction_pooler(conn: &mut PgConnection) -> Result<bool, StoreError> {
    let mut pids = Vec::new();
    for _ in 0..3 {
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        pids.push(pid);
    }
    Ok(pids.windows(2).any(|w| w[0] != w[1]))
}

/// The holder of a lease that is being renewed (younger than `stale_after`)
/// by a process that still has a session: a leader another process can ask
/// to do work. `None` with no lease table yet.
pub async fn live_holder(
    conn: &mut PgConnection,
    stale_after: std::time::Duration,
) -> Result<Option<String>, StoreError> {
    // Only the columns of the lease's first migration: this runs before
    // migrating, against any older schema (or none).
    if !table_exists(conn).await? {
        return Ok(None);
    }
    match read(conn).await? {
        Some(l) if (l.age_ms.max(0) as u128) < stale_after.as_millis() => {
            Ok(holder_connected(conn, &l.holder).await?.then_some(l.holder))
        }
        _ => Ok(None),
    }
}
