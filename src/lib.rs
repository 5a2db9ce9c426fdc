//! keywatch: watches NEAR accounts for access-key and balance changes.
//!
//! - [`domain`]: pure types (account ids, keys, permissions, amounts, changes).
//! - adapters: [`rpc`] (NEAR JSON-RPC), [`store`] (PostgreSQL).
//! - [`config`]: the typed settings tree and its validation.
//! - [`cli`]: the command line.

pub mod cli;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod health;
pub mod ingest;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod rpc;
pub mod rules;
pub mod schedule;
pub mod sim;
pub mod store;
