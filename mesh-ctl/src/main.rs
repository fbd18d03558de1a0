//! mesh-ctl: the operator's command line for the mesh control plane.
//!
//! `cli` declares the commands (clap), `commands` runs them, `error` maps
//! every failure to an exit code and a message, `output` renders tables, JSON and YAML,
//! `watch` follows the change stream, `policy` applies, shows and deletes
//! policy documents, `config` reads config versions and who delivered
//! them, `top` is a live dashboard of one proxy, and `observe` explains a
//! request and checks the whole mesh.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod config;
mod error;
mod identity;
mod inject;
mod observe;
mod output;
mod policy;
mod top;
mod watch;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    for warning in mesh::flags::apply_renamed_env() {
        eprintln!("warning: {warning}");
    }
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(commands::run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
