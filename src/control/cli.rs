//! The `mesh-control` program: parses flags (each also `MESH_<FLAG>`),
//! sets up logging (`MESH_LOG`, `--log-format`), and runs the control
//! plane until SIGTERM or SIGINT. Here in the library, not in the binary,
//! so that `mesh-proxy` run under the name `mesh-control` is this program
//! too: the container image ships one binary for both (it carries one copy
//! of tokio, hyper, rustls and aws-lc instead of two).

use crate::control::vip::VipCidr;
use crate::control::{run, ControlConfig, IdentityConfig, StoreChoice};
use crate::model::parse_duration;
use crate::telemetry::LogFormat;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The mesh control plane: service registry with leases, VIPs and watch streams.
#[derive(Parser, Debug)]
#[command(name = "mesh-control", version, after_help = crate::flags::ENV_HELP)]
struct Args {
    /// Address of the API (HTTPS with identity on).
    #[arg(long, env = "MESH_LISTEN", default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// Directory of the embedded store.
    #[arg(long, env = "MESH_DATA_DIR", default_value = "./mesh-data")]
    data_dir: PathBuf,
    /// Network that service VIPs are allocated from.
    #[arg(long, env = "MESH_VIP_CIDR", default_value = "127.100.0.0/16", value_parser = VipCidr::network)]
    vip_cidr: VipCidr,
    /// How often expired leases are evicted.
    #[arg(long, env = "MESH_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    sweep_interval: Duration,
    /// Percent of leases expiring in one sweep that suspends evictions.
    #[arg(long, env = "MESH_SELF_PRESERVATION_THRESHOLD", default_value_t = 15,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    self_preservation_threshold: u8,
    /// Minimum number of expired leases for self-preservation to engage.
    #[arg(long, env = "MESH_SELF_PRESERVATION_MIN", default_value_t = 3)]
    self_preservation_min: usize,
    /// Quiet time after which a watch stream sends a keep-alive line.
    #[arg(long, env = "MESH_KEEPALIVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    keepalive_interval: Duration,
    /// Workload identity: the CA, TLS on the API and authentication (`on`,
    /// the default), or `off` (plaintext HTTP, nothing checked).
    #[arg(long, env = "MESH_IDENTITY", default_value = "on", value_parser = crate::flags::parse_on_off, action = clap::ArgAction::Set)]
    identity: bool,
    /// The SPIFFE trust domain of every identity issued.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of workload certificates (renewed at 70 % of it).
    #[arg(long, env = "MESH_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// The operator's root certificate (PEM), made the active root; with
    /// `--ca-key`. Without them a root is made on first start.
    #[arg(long, env = "MESH_CA_CERT", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The private key of `--ca-cert` (PEM).
    #[arg(long, env = "MESH_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// File holding the admin token `mesh-ctl` writes with (default: made
    /// at first start in `<data-dir>/identity/admin.token`).
    #[arg(long, env = "MESH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// DNS name or IP put in mesh-control's own certificate besides its
    /// SPIFFE ID (for clients that check names); repeatable.
    #[arg(long = "tls-name", env = "MESH_TLS_NAME", value_delimiter = ',')]
    tls_names: Vec<String>,
    /// Log line format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line).
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// Where the registry rests: `embedded` (one redb file, one
    /// mesh-control) or `etcd` (replicas sharing an etcd cluster).
    #[arg(long, env = "MESH_STORE", value_enum, default_value_t)]
    store: StoreKind,
    /// With `--store etcd`: the etcd members' URLs, comma separated.
    #[arg(long, env = "MESH_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// With `--store etcd`: the 32-byte key file that seals secrets and the
    /// CA's files in etcd; the same file on every replica (made if absent).
    #[arg(long, env = "MESH_SEAL_KEY")]
    seal_key: Option<PathBuf>,
    /// With `--store etcd`: this replica's name (default: host name and
    /// listen port).
    #[arg(long, env = "MESH_REPLICA_ID")]
    replica_id: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
enum StoreKind {
    #[default]
    Embedded,
    Etcd,
}

/// The program's `main`: flags from the command line and environment.
pub fn main() -> ExitCode {
    let args = Args::parse();
    crate::telemetry::init_logging(args.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-control: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let store = match store_choice(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mesh-control: {e}");
            return ExitCode::from(2);
        }
    };
    let config = ControlConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        vip_cidr: args.vip_cidr,
        sweep_interval: args.sweep_interval,
        self_preservation_threshold: args.self_preservation_threshold,
        self_preservation_min: args.self_preservation_min,
        keepalive_interval: args.keepalive_interval,
        identity: args.identity.then(|| {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
            if !args.listen.ip().is_unspecified() {
                names.push(args.listen.ip().to_string());
            }
            names.extend(args.tls_names.iter().cloned());
            names.dedup();
            IdentityConfig {
                trust_domain: args.trust_domain.clone(),
                cert_ttl: args.cert_ttl,
                ca: args.ca_cert.clone().zip(args.ca_key.clone()),
                admin_token_file: args.admin_token_file.clone(),
                server_names: names,
            }
        }),
        store,
        ..ControlConfig::default()
    };
    match run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `--store` and the flags that go with it, checked together.
fn store_choice(args: &Args) -> Result<StoreChoice, String> {
    match args.store {
        StoreKind::Embedded => Ok(StoreChoice::Embedded),
        StoreKind::Etcd => {
            if args.etcd_endpoints.is_empty() {
                return Err("--store etcd needs --etcd-endpoints URL[,URL...]".into());
            }
            let Some(seal_key) = args.seal_key.clone() else {
                return Err(
                    "--store etcd needs --seal-key FILE (the same key file on every replica)"
                        .into(),
                );
            };
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "mesh-control".into());
            let replica = args
                .replica_id
                .clone()
                .unwrap_or_else(|| format!("{host}-{}", args.listen.port()));
            let scheme = if args.identity { "https" } else { "http" };
            let url = format!("{scheme}://{}", args.listen);
            Ok(StoreChoice::Etcd {
                endpoints: args.etcd_endpoints.clone(),
                seal_key,
                replica,
                url,
            })
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Args;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_and_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let section = |_: &[&str]| "## mesh-control";
        let problems = crate::flags::undocumented(&Args::command(), reference, &section);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn on_off_flags_take_a_value() {
        use clap::Parser;
        for (argv, want) in [
            (&["mesh-control"][..], true),
            (&["mesh-control", "--identity", "off"], false),
            (&["mesh-control", "--identity=off"], false),
            (&["mesh-control", "--identity", "on"], true),
        ] {
            let args = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(args.identity, want, "{argv:?}");
        }
    }
}
