//! The `edgemesh` binary.
//!
//! - [`cli`]: command line; flags override the config file.
//! - [`config`]: the configuration struct, its defaults and validation.
//! - [`agent`]: wiring of source, registry, DNS, proxy and admin.
//! - [`admin`]: `/healthz`, `/readyz`, `/services`, `/config`.
//! - [`limits`]: process limits (open files).
//! - [`tunnel`]: the cross-node tunnel's settings, node directory, and the
//!   proxy's way to endpoints on other nodes.
//! - [`malloc`]: allocator settings (the one `unsafe` call: `mallopt`).
#![deny(unsafe_code)]

mod admin;
mod agent;
mod cli;
mod config;
mod limits;
mod malloc;
mod tunnel;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    malloc::tune();
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
            if args.print_peer_id {
                return print_peer_id(&crate::tunnel::key_file(&config));
            }
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
        Command::Id(args) => match args.key_file() {
            Ok(file) => print_peer_id(&file),
            Err(e) => {
                eprintln!("edgemesh: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Prints the peer ID of the identity in `key_file`, creating it if missing.
fn print_peer_id(key_file: &std::path::Path) -> ExitCode {
    match edgemesh_tunnel::load_or_create_identity(key_file) {
        Ok(key) => {
            println!("{}", key.public().to_peer_id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("edgemesh: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins over the configured level.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        // hickory-server logs every TCP query at info, libp2p-swarm its
        // peer ID (the tunnel logs it once); keep info quiet.
        .or_else(|_| EnvFilter::try_new(format!("{level},hickory_server=warn,libp2p_swarm=warn")))
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
