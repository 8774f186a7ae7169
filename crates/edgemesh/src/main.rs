//! The `edgemesh` binary: parses the command line, builds the config and
//! runs the agent of the `edgemesh` library.
//!
//! - [`malloc`]: allocator settings (the one `unsafe` call: `mallopt`).
#![deny(unsafe_code)]

mod malloc;

use std::process::ExitCode;

use clap::Parser;
use edgemesh::cli::{Cli, Command};
use edgemesh::{Agent, Deps};
use tracing_subscriber::EnvFilter;

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
                return print_peer_id(&config.key_file());
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
            let run = async {
                let agent = Agent::build(config, Deps::system()).await?;
                agent.run(stop_signal()).await
            };
            match runtime.block_on(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("edgemesh: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status(args) => edgemesh::cli::status::run(&args),
        Command::CheckConfig(args) => edgemesh::cli::check_config::run(&args),
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

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal, "stopping");
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
