//! The chain simulator: a scriptable NEAR RPC node on 127.0.0.1 for tests,
//! the demo and benchmarks. No NEAR node runs on our machines, so this
//! stands in for one, byte-for-byte in its shapes.
//!
//! - [`scenario`]: the scenario file format and the seeded generator.
//! - [`chain`]: blocks, state, and the state changes each block writes.
//! - [`wire`]: nearcore's JSON shapes and error envelopes.
//! - [`faults`]: seeded fault injection.
//! - [`server`]: the HTTP server and the [`Simulator`] handle.

pub mod chain;
pub mod faults;
pub mod scenario;
pub mod server;
pub mod wire;

pub use chain::Chain;
pub use faults::{FaultKind, FaultPlan, FaultRule};
pub use scenario::{Profile, Scenario};
pub use server::{Clock, SimOptions, Simulator};
