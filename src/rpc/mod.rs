//! The NEAR JSON-RPC adapter: transport (retries, failover, budget), typed
//! methods, and the JSON views turned into domain types.

pub mod budget;
pub mod client;
pub mod error;
pub mod transport;
pub mod views;

pub use client::{BlockRef, ChangesKind, RpcClient};
pub use error::RpcError;
pub use transport::{RpcSettings, SetupError};
