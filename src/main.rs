use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = keywatch::cli::Cli::parse();
    keywatch::cli::init_tracing();
    keywatch::cli::run(cli).await
}
