//! The PostgreSQL adapter: migrations, the watch list, key and balance
//! history, and the queries behind `keys` and `history`.
//!
//! Queries are runtime-checked (`sqlx::query`), each exercised by the
//! integration tests, so a clean clone builds without a database.

pub mod alerts;
pub mod convert;
pub mod create;
pub mod history;
pub mod keys;
pub mod lease;
pub mod overview;
pub mod prune;
pub mod replay;
pub mod requests;
pub mod silences;
pub mod watch;
pub mod window;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use convert::ConvertError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error("{0}")]
    Invalid(String),
}

/// Every statement that reads `key_events` or `balance_events` (directly
/// or through the views), by name: the index test `EXPLAIN`s each one over a
/// million rows, so a statement added here without an index fails it.
pub const HISTORY_READS: &[(&str, &str)] = &[
    ("window::SETTLED_BLOCK", window::SETTLED_BLOCK),
    ("window::BLOCKS_UP_TO", window::BLOCKS_UP_TO),
    ("window::KEYS_WRITTEN_AT", window::KEYS_WRITTEN_AT),
    ("window::ACCOUNTS_WRITTEN_AT", window::ACCOUNTS_WRITTEN_AT),
    ("window::KEYS_IN_WINDOW", window::KEYS_IN_WINDOW),
    ("window::BALANCES_IN_WINDOW", window::BALANCES_IN_WINDOW),
    ("keys::KEYS_AT", keys::KEYS_AT),
    ("history::ACCOUNT_AT", history::ACCOUNT_AT),
    ("history::HISTORY_KEYS", history::HISTORY_KEYS),
    ("history::HISTORY_BALANCES", history::HISTORY_BALANCES),
    ("replay::BLOCKS_BETWEEN", replay::BLOCKS_BETWEEN),
    ("replay::ACCOUNTS_IN_BLOCK", replay::ACCOUNTS_IN_BLOCK),
    ("replay::KEY_WRITES_IN_BLOCK", replay::KEY_WRITES_IN_BLOCK),
    (
        "replay::BALANCE_WRITES_IN_BLOCK",
        replay::BALANCE_WRITES_IN_BLOCK,
    ),
    ("replay::UNKNOWN_IN_BLOCK", replay::UNKNOWN_IN_BLOCK),
];

/// A connection listening on `channels` (LISTEN/NOTIFY). A notification
/// is only a wake-up: listeners re-read the rows it is about.
pub async fn listen(
    pool: &PgPool,
    channels: &[&str],
) -> Result<sqlx::postgres::PgListener, StoreError> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

/// Waits at most `max` for a notification on `listener` (or a moment, if
/// the connection failed: it reconnects on the next call).
pub async fn notified_within(listener: &mut sqlx::postgres::PgListener, max: std::time::Duration) {
    if let Ok(Err(e)) = tokio::time::timeout(max, listener.recv()).await {
        tracing::debug!(error = %e, "listening");
        tokio::time::sleep(max.min(std::time::Duration::from_millis(200))).await;
    }
}

/// A long-lived listener that reconnects: a loop calls [`Self::connect`]
/// each round and [`Self::wait`] between rounds.
pub struct Listening {
    channels: &'static [&'static str],
    listener: Option<sqlx::postgres::PgListener>,
}

impl Listening {
    pub fn new(channels: &'static [&'static str]) -> Listening {
        Listening {
            channels,
            listener: None,
        }
    }

    /// Listens again if the connection was lost; false while it cannot.
    pub async fn connect(&mut self, pool: &PgPool) -> bool {
        if self.listener.is_none() {
            self.listener = listen(pool, self.channels)
                .await
                .inspect_err(|e| tracing::warn!(error = %e, channels = ?self.channels, "cannot listen; polling meanwhile"))
                .ok();
        }
        self.listener.is_some()
    }

    /// Waits for a notification, `max`, or `stop`, whichever comes first.
    pub async fn wait(
        &mut self,
        max: std::time::Duration,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let woken = async {
            match self.listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = woken => if r.is_err() { self.listener = None },
            _ = tokio::time::sleep(max) => {}
            _ = stop.changed() => {}
        }
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    connect_with(url.parse()?, max_connections).await
}

/// [`connect`], to the database `options` name.
pub async fn connect_with(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool, StoreError> {
    Ok(pool_options(max_connections).connect_with(options).await?)
}

/// A pool that connects on first use, so a process can start (and report
/// that the database is down) before the database answers.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
}

/// `run`'s sessions: named after the process (so a standby can end a stale
/// leader's sessions), and set up so the server notices a dead client
/// (keepalives, `tcp_user_timeout`) and never keeps a frozen client's
/// transaction, and its locks, open for long.
pub fn connect_service(url: &str, max_connections: u32, name: &str) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let options = options.application_name(name).options([
        ("idle_in_transaction_session_timeout", "2min"),
        ("tcp_keepalives_idle", "5"),
        ("tcp_keepalives_interval", "2"),
        ("tcp_keepalives_count", "3"),
        ("tcp_user_timeout", "10000"),
    ]);
    Ok(pool_options(max_connections).connect_lazy_with(options))
}

/// Whether a database error is an outage that waiting can fix (the server
/// is down, restarting, failing over, or out of connections), rather than
/// bad configuration (wrong password, no such database) or a bad query.
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 57P0x: shutdown, crash, cannot connect
        // now; 53: insufficient resources; 40001/40P01: retry the transaction.
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
        }),
        _ => false,
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The last committed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub height: u64,
    pub hash: String,
    pub timestamp_ns: u64,
}

pub async fn cursor(exec: impl sqlx::PgExecutor<'_>) -> Result<Option<Cursor>, StoreError> {
    let row: Option<(i64, String, i64)> = sqlx::query_as(
        "select c.block_height, c.block_hash, b.block_timestamp_ns
         from ingest_cursor c join blocks b on b.block_hash = c.block_hash",
    )
    .fetch_optional(exec)
    .await?;
    row.map(|(h, hash, ts)| {
        Ok(Cursor {
            height: convert::i64_to_height("cursor height", h)?,
            hash,
            timestamp_ns: convert::i64_to_height("block timestamp", ts)?,
        })
    })
    .transpose()
}

/// A read-only transaction that sees one snapshot for all its statements
/// (REPEATABLE READ), for rebuilding in-memory state that must agree with
/// itself.
pub async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Key of the transaction-scoped advisory lock that serializes everything
/// that reads or moves the cursor ("kw" in ASCII, an arbitrary constant).
const CURSOR_LOCK: i64 = 0x6b77;

/// Locks the cursor for the rest of the transaction, so that the follower
/// cannot advance past a baseline being written (and vice versa). An
/// advisory lock, so it also serializes the creation of the first cursor.
pub async fn lock_cursor(tx: &mut sqlx::PgConnection) -> Result<Option<Cursor>, StoreError> {
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(CURSOR_LOCK)
        .execute(&mut *tx)
        .await?;
    cursor(&mut *tx).await
}

/// Records a block header (idempotent).
pub async fn insert_block(
    tx: &mut sqlx::PgConnection,
    header: &crate::domain::BlockHeader,
) -> Result<(), StoreError> {
    insert_blocks(tx, &[header]).await
}

/// Records block headers in one statement (idempotent).
pub async fn insert_blocks(
    tx: &mut sqlx::PgConnection,
    headers: &[&crate::domain::BlockHeader],
) -> Result<(), StoreError> {
    let mut heights = Vec::with_capacity(headers.len());
    let mut stamps = Vec::with_capacity(headers.len());
    for h in headers {
        heights.push(convert::height_to_i64("block height", h.height)?);
        stamps.push(convert::height_to_i64("block timestamp", h.timestamp_ns)?);
    }
    let hashes: Vec<&str> = headers.iter().map(|h| h.hash.as_str()).collect();
    let parents: Vec<&str> = headers.iter().map(|h| h.prev_hash.as_str()).collect();
    let times: Vec<chrono::DateTime<chrono::Utc>> = headers
        .iter()
        .map(|h| convert::ns_to_time(h.timestamp_ns))
        .collect();
    sqlx::query(
        "insert into blocks (block_hash, block_height, prev_hash, block_timestamp_ns, block_time)
         select * from unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::timestamptz[])
         on conflict (block_hash) do nothing",
    )
    .bind(hashes)
    .bind(heights)
    .bind(parents)
    .bind(stamps)
    .bind(times)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves the cursor to `header` (which must already be in `blocks`). Only
/// forward: an older height leaves the cursor where it is.
pub async fn advance_cursor(
    tx: &mut sqlx::PgConnection,
    header: &crate::domain::BlockHeader,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into ingest_cursor (id, block_height, block_hash) values (1, $1, $2)
         on conflict (id) do update set block_height = excluded.block_height,
             block_hash = excluded.block_hash, updated_at = now()
         where ingest_cursor.block_height < excluded.block_height",
    )
    .bind(convert::height_to_i64("block height", header.height)?)
    .bind(header.hash.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records one reconcile run and what it found.
pub async fn record_reconcile(
    conn: &mut sqlx::PgConnection,
    cursor: &Cursor,
    accounts: usize,
    differences: usize,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into reconcile_runs (block_height, block_hash, accounts, differences) values ($1, $2, $3, $4)",
    )
    .bind(convert::height_to_i64("height", cursor.height)?)
    .bind(&cursor.hash)
    .bind(accounts as i32)
    .bind(differences as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether ingestion is still working through a past range it was started
/// at (a backfill), rather than following or catching up.
pub async fn from_history(exec: impl sqlx::PgExecutor<'_>) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar::<_, bool>("select from_history from ingest_cursor where id = 1")
            .fetch_optional(exec)
            .await?
            .unwrap_or(false),
    )
}

pub async fn set_from_history(
    exec: impl sqlx::PgExecutor<'_>,
    value: bool,
) -> Result<(), StoreError> {
    sqlx::query("update ingest_cursor set from_history = $1 where id = 1 and from_history <> $1")
        .bind(value)
        .execute(exec)
        .await?;
    Ok(())
}
