//! `mesh-proxy`: the sidecar. `mesh-proxy [run] [FLAGS]` serves;
//! `mesh-proxy init [FLAGS]` installs the interception rules.

use clap::{Parser, Subcommand};
use mesh::proxy::config::ProxyArgs;
use mesh::telemetry::LogFormat;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "Sidecar proxy of the mesh",
    args_conflicts_with_subcommands = true,
    after_help = mesh::flags::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: ProxyArgs,
    /// Log line format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "MESH_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve (the default).
    #[command(after_help = mesh::flags::ENV_HELP)]
    Run(Box<ProxyArgs>),
    /// Install (or with --remove, remove) the iptables interception rules
    /// in the current network namespace.
    #[command(after_help = mesh::flags::ENV_HELP)]
    Init(mesh::proxy::intercept::InitArgs),
    /// Gateway mode: the mesh's front door for outside clients, routing
    /// by `kind: Route` documents to mesh services (registers nothing).
    #[command(after_help = mesh::flags::ENV_HELP)]
    Gateway(Box<mesh::gateway::GatewayArgs>),
    /// Block until the local proxy is ready (`/ready` answers 200): exit 0
    /// then, 1 on timeout. For a sidecar's `postStart` and for scripts.
    #[command(after_help = mesh::flags::ENV_HELP)]
    Wait(mesh::proxy::lifecycle::WaitArgs),
}

fn main() -> ExitCode {
    // One binary, two programs: run as `mesh-control` (a link, as in the
    // container image), it is the control plane.
    let name = std::env::args_os().next().map(std::path::PathBuf::from);
    if name.as_deref().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("mesh-control")) {
        return mesh::control::cli::main();
    }
    let renamed = mesh::flags::apply_renamed_env();
    let cli = Cli::parse();
    mesh::telemetry::init_logging(cli.log_format);
    for warning in renamed {
        tracing::warn!("{warning}");
    }
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
        Some(Cmd::Wait(wait)) => return wait_ready(&wait),
        Some(Cmd::Gateway(gw)) => {
            let workers = gw.proxy.workers;
            return serve(workers, "mesh-proxy gateway", mesh::gateway::run(*gw));
        }
        Some(Cmd::Run(args)) => *args,
        None => cli.run,
    };
    serve(args.workers, "mesh-proxy", mesh::proxy::run(args))
}

/// Runs `main` on a runtime of `workers` threads (default: one per core).
fn serve(
    workers: Option<u16>,
    name: &str,
    main: impl std::future::Future<Output = Result<(), mesh::proxy::ProxyError>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(usize::from(workers));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mesh-proxy wait`, on a runtime of one thread.
fn wait_ready(args: &mesh::proxy::lifecycle::WaitArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy wait: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(mesh::proxy::lifecycle::wait_ready(args)) {
        Ok(took) => {
            eprintln!("mesh-proxy wait: ready after {} ms", took.as_millis());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-proxy wait: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_and_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let section = |path: &[&str]| match path {
            [_, "init", ..] => "## mesh-proxy init",
            [_, "wait", ..] => "## mesh-proxy wait",
            [_, "gateway", ..] => "## mesh-proxy gateway",
            _ => "## mesh-proxy",
        };
        let problems = mesh::flags::undocumented(&Cli::command(), reference, &section);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn on_off_flags_take_a_value() {
        use clap::Parser;
        for (argv, want) in [
            (&["mesh-proxy"][..], true),
            (&["mesh-proxy", "--identity", "off"], false),
            (&["mesh-proxy", "run", "--identity=off"], false),
            (&["mesh-proxy", "--identity", "on"], true),
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let run = match cli.cmd {
                Some(super::Cmd::Run(args)) => *args,
                _ => cli.run,
            };
            assert_eq!(run.identity, want, "{argv:?}");
        }
    }
}
