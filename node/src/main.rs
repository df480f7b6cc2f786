//! The `stillpoint` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;
use stillpoint_node::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match &cli.command {
        // openraft logs routine vote races at WARN; operators need them only when debugging.
        stillpoint_node::cli::Command::Agent { .. }
        | stillpoint_node::cli::Command::Hba(stillpoint_node::cli::HbaCommand::Serve { .. }) => {
            "info,openraft=error"
        }
        _ => "warn,openraft=error",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(stillpoint_node::cli::run(cli))
}
