//! `mesh-proxy`: the sidecar. `mesh-proxy [run] [FLAGS]` serves;
//! `mesh-proxy init [FLAGS]` installs the interception rules.

use clap::{Parser, Subcommand};
use mesh::proxy::config::ProxyArgs;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "Sidecar proxy of the mesh",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: ProxyArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    Run(Box<ProxyArgs>),
    /// Install (or with --remove, remove) the iptables interception rules
    /// in the current network namespace.
    Init(mesh::proxy::intercept::InitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    mesh::telemetry::init_logging();
    let args = match cli.cmd {
        Some(Cmd::Init(init)) => {
            return match mesh::proxy::intercept::run(&init) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mesh-proxy init: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Cmd::Run(args)) => *args,
        None => cli.run,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(usize::from(workers));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mesh::proxy::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
