//! Ingestion (orchestration): follows the chain and records every access-key
//! and balance write of every watched account, exactly once, block by block.
//!
//! - [`baseline`]: starting to track accounts, and the first cursor.
//! - [`headers`]: which blocks come after the cursor, proven by `prev_hash`.
//! - [`fetch`]: one block's changes for the watched accounts it touched.
//! - [`plan`]: what a block means, decided in memory from its changes and the state before it.
//! - [`apply`]: consecutive blocks in one transaction, one statement per table, with the cursor advance.
//! - [`recent`]: what the last committed blocks wrote, for the window rules.
//! - [`follower`]: the loop behind `run` and `backfill`.
//! - [`pace`]: when to ask for the next final head.
//! - [`reconcile`]: stored state against the chain at a height the cursor has reached.
//! - [`requests`]: work another process asks the running leader to do.
//! - [`supervise`]: `run`'s follower, kept going through rpc and database outages.
//! - [`watchdog`]: `ingest_stalled` and `ingest_recovered`, even with the database down.

pub mod alerts;
pub mod apply;
pub mod baseline;
pub mod fetch;
pub mod follower;
pub mod headers;
pub mod pace;
pub mod plan;
pub mod recent;
pub mod reconcile;
pub mod replay;
pub mod requests;
pub mod silences;
pub mod supervise;
pub mod watchdog;

use crate::rpc::RpcError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Convert(#[from] crate::store::ConvertError),
    #[error(
        "block {height} ({hash}) names {got} as its parent, but the previous block is {expected}: \
         the node's chain does not continue ours (checked on every rpc url); ingestion stopped with block {last} as the last one written"
    )]
    Continuity {
        height: u64,
        hash: String,
        expected: String,
        got: String,
        last: u64,
    },
    #[error(
        "the next block to ingest ({next}) is below the rpc node's history, which starts at {earliest}: \
         heights {next}..{earliest} can no longer be served. Configure an archival rpc url in rpc.urls, \
         or run with --accept-gap to record the gap, re-read every baseline at {earliest} and continue"
    )]
    HistoryGone { next: u64, earliest: u64 },
    #[error(
        "the node's final head ({height}) is {hash}, but our cursor at that height is {cursor}: the chains differ"
    )]
    Fork {
        height: u64,
        hash: String,
        cursor: String,
    },
    /// A node's answer that does not fit the question (another block than
    /// the one asked for): retried like any rpc fault.
    #[error("the rpc node answered inconsistently: {0}")]
    Node(String),
    /// The cursor moved under this process: retried from the new cursor.
    #[error("{0}")]
    Moved(String),
    /// Another process took the leader lease: this one must step down.
    #[error("another process leads now (this one held epoch {epoch})")]
    Deposed { epoch: i64 },
    #[error("{} not watched: reconcile checks watched accounts only (see `keywatch watch list`)", .0.join(", "))]
    NotWatched(Vec<String>),
    #[error("{0}")]
    Invalid(String),
}

impl IngestError {
    /// Whether following must stop for good: bad input or a broken chain.
    /// Everything else (an rpc or database outage, a response that does not
    /// parse) is waited out and retried from the cursor.
    pub fn is_fatal(&self) -> bool {
        match self {
            IngestError::Rpc(e) => e.is_wrong_chain(),
            IngestError::Node(_) | IngestError::Moved(_) => false,
            IngestError::Store(StoreError::Db(_)) | IngestError::Db(_) => false,
            IngestError::Store(_) | IngestError::Convert(_) => true,
            IngestError::Continuity { .. }
            | IngestError::HistoryGone { .. }
            | IngestError::Fork { .. }
            | IngestError::Deposed { .. }
            | IngestError::NotWatched(_)
            | IngestError::Invalid(_) => true,
        }
    }

    /// The dependency a transient error points at.
    pub fn dependency(&self) -> crate::health::Dependency {
        match self {
            IngestError::Rpc(_) | IngestError::Node(_) => crate::health::Dependency::Rpc,
            _ => crate::health::Dependency::Database,
        }
    }
}
