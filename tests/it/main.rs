//! keywatch's integration tests: one binary, one link step.

mod alerts;
mod always_on;
mod campaign;
mod cli;
mod config;
mod crash;
pub mod drains;
pub mod indexes;
pub mod ingest;
mod parsers;
mod pgcluster;
mod proxy;
mod repeats;
mod rpc_client;
pub mod samples;
mod secrets;
mod sim;
mod smtp;
mod store;
mod support;
