//! The `edgemesh` binary: parses the command line, builds the config and
//! runs the agent of the `edgemesh` library.
//!
//! - [`malloc`]: allocator settings (the one `unsafe` call: `mallopt`).
#![deny(unsafe_code)]
#![warn(clippy::unwrap_used)] // outside tests: an error with context, or an `expect` naming the invariant

mod malloc;

use std::process::ExitCode;

use clap::Parser;
use edgemesh::cli::{AgentArgs, Cli, Command};
use edgemesh::lifecycle::{LogControl, ReloadSource};
use edgemesh::{Agent, Deps};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => run_agent(*args, false),
        Command::Gateway(args) => run_agent(*args, true),
        Command::Status(args) => edgemesh::cli::status::run(&args),
        Command::CheckConfig(args) => edgemesh::cli::check_config::run(&args),
        Command::Migrate(args) => edgemesh::cli::migrate::run(&args),
        Command::Id(args) => match args.key_file() {
            Ok(file) => print_peer_id(&file),
            Err(e) => {
                eprintln!("edgemesh: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// `edgemesh agent`, or with `gateway` `edgemesh gateway`: runs until stopped.
fn run_agent(mut args: AgentArgs, gateway: bool) -> ExitCode {
    if gateway {
        // As `--gateway` would: reloads keep it on.
        args.settings.settings.push(("gateway.enabled", "true".to_owned()));
    }
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
    let logging = LogControl::init(&config.log_level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgemesh: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload = ReloadSource { file: args.config.clone(), flags: args.settings.clone() };
    let run = async {
        // SIGHUP's default action ends the process: catch it from the
        // start (tokio keeps a handler once installed), so a reload
        // asked for while the agent starts is not a kill. The
        // reloader, once running, answers it.
        let _early_hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let deps = Deps { logging: Some(logging), ..Deps::system() };
        let agent = Agent::build(config, deps).await?.with_reload(reload);
        let (stop, force) = stop_signals()?;
        agent.run_until(stop.cancelled_owned(), force.cancelled_owned()).await
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

/// Two tokens: `stop` is cancelled by the first SIGTERM or SIGINT
/// (Ctrl-C), which starts the drain; `force` by the second, which ends it.
fn stop_signals() -> anyhow::Result<(CancellationToken, CancellationToken)> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (stop, force) = (CancellationToken::new(), CancellationToken::new());
    let (first, second) = (stop.clone(), force.clone());
    tokio::spawn(async move {
        for (token, what) in [(first, "stopping"), (second, "stopping at once")] {
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal, "{what}");
            token.cancel();
        }
    });
    Ok((stop, force))
}
