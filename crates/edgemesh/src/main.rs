//! The `edgemesh` binary.
//!
//! - [`cli`]: command line; flags override the config file.
//! - [`config`]: the configuration struct, its defaults and validation.
//! - [`agent`]: wiring of source, registry, DNS, proxy and admin.
//! - [`admin`]: `/healthz`, `/readyz`, `/services`, `/config`.
//! - [`limits`]: process limits (open files).
#![forbid(unsafe_code)]

mod admin;
mod agent;
mod cli;
mod config;
mod limits;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => {
            let config = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("edgemesh: {e}");
                    return ExitCode::from(2);
                }
            };
            if args.print_config {
                match serde_saphyr::to_string(&config) {
                    Ok(yaml) => {
                        print!("{yaml}");
                        return ExitCode::SUCCESS;
                    }
                    Err(e) => {
                        eprintln!("edgemesh: cannot print config: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            init_logging(&config.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("edgemesh: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("edgemesh: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins over the configured level.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        // hickory-server logs every TCP query at info; keep info quiet.
        .or_else(|_| EnvFilter::try_new(format!("{level},hickory_server=warn")))
        .unwrap_or_else(|e| {
            eprintln!("edgemesh: invalid log level {level:?} ({e}); using info");
            EnvFilter::new("info")
        });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
