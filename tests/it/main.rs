//! keywatch's integration tests: one binary, one link step.

/// The server of keywatch's development and CI machines: PostgreSQL on
/// 127.0.0.1 with trust authentication. `DATABASE_URL`, when set, wins.
const LOCAL_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Plain `cargo test`, as the README gives it, works on such a machine:
/// each `#[sqlx::test]` reads `DATABASE_URL` for the server it makes its
/// database on.
#[ctor::ctor(unsafe)]
fn default_database_url() {
    if std::env::var_os("DATABASE_URL").is_none() {
        // SAFETY: a constructor runs before main, while the process has
        // one thread: nothing reads the environment concurrently.
        unsafe { std::env::set_var("DATABASE_URL", LOCAL_SERVER) };
    }
}

mod alerts;
mod always_on;
mod campaign;
mod cli;
mod config;
mod crash;
mod demo;
mod deploy;
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
