//! The command line: global flags, subcommands, and the parsers that turn
//! `HOST:PORT`, `k=v` and durations into typed values (bad input is a
//! usage error, exit 2, before anything is sent).

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh::model::{parse_duration, Health, RegisterRequest};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-ctl",
    version,
    about = "Read and change the mesh control plane",
    after_help = "Environment: MESH_CONTROL (--control), MESH_OUTPUT (-o), MESH_TOKEN (the \
                  admin token itself) or MESH_TOKEN_FILE (--token-file), MESH_TRUST_BUNDLE \
                  (--trust-bundle), and for top MESH_ADMIN (--admin) and MESH_INTERVAL \
                  (--interval); a flag wins.\n\
                  Exit codes: 0 done, 1 the request failed, 2 bad usage or invalid input."
)]
pub struct Cli {
    /// Control-plane URL (https://host:port; http:// when its identity is
    /// off); several replicas comma separated, the next one tried when one
    /// gives no answer. `MESH_CONTROL_URL`, its old name, is still read.
    #[arg(
        long,
        global = true,
        env = "MESH_CONTROL",
        default_value = "https://127.0.0.1:15010",
        value_name = "URL"
    )]
    pub control: String,
    /// File holding the admin token (mesh-control's `--admin-token-file`,
    /// or `<data-dir>/identity/admin.token`); writes need it. `MESH_TOKEN`
    /// may hold the token itself.
    #[arg(long, global = true, env = "MESH_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// The roots mesh-control's certificate must chain to
    /// (`<data-dir>/identity/bundle.pem`); needed for https://.
    #[arg(long, global = true, env = "MESH_TRUST_BUNDLE", value_name = "FILE")]
    pub trust_bundle: Option<std::path::PathBuf>,
    /// The SPIFFE trust domain mesh-control proves it belongs to.
    #[arg(long, global = true, env = "MESH_TRUST_DOMAIN", default_value = mesh::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Output format: a table for people, JSON or YAML for scripts (every
    /// command, `top` included).
    #[arg(short = 'o', long, global = true, env = "MESH_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List services with their VIP and instance counts.
    Services,
    /// List the instances of one service.
    Endpoints {
        /// Service name.
        service: String,
    },
    /// Register an instance (static unless --ttl is given).
    Register(RegisterArgs),
    /// Remove an instance.
    Deregister {
        /// Service name.
        service: String,
        /// Instance id (see `endpoints`).
        id: String,
    },
    /// Follow registry changes as they happen (Ctrl-C to stop).
    Watch {
        /// Start after this revision (0: begin with a full snapshot).
        #[arg(long, default_value_t = 0, value_name = "REV")]
        since: u64,
        /// Reconnect when the stream is silent this long (3 missed keep-alives).
        #[arg(long, default_value = "15s", value_parser = parse_duration_arg)]
        idle_timeout: Duration,
    },
    /// Show the control plane's revision, sizes and self-preservation state.
    Status,
    /// Apply the documents of a file (all are validated first; any invalid
    /// document means nothing from the file is applied).
    Apply {
        /// Multi-document YAML file of `kind: ServicePolicy`, `kind:
        /// AuthorizationPolicy`, `kind: Config` and `kind: Route` documents;
        /// `-` reads stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        /// Why: recorded with every Config version this apply makes.
        #[arg(short = 'm', long)]
        message: Option<String>,
    },
    /// Externalized config: versions, history, diffs, rollbacks, and
    /// which proxy delivered which version (`apply -f` makes versions).
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Show applied resources.
    Get {
        #[command(subcommand)]
        what: GetCommand,
    },
    /// Delete a resource.
    Delete {
        #[command(subcommand)]
        what: DeleteCommand,
    },
    /// Watch a proxy's breakers, bulkheads, retries and endpoints live
    /// (the Hystrix dashboard in a terminal; Ctrl-C to stop). With
    /// `-o json|yaml`, the proxy's state itself, once per interval.
    Top(TopArgs),
    /// Bootstrap tokens: what a proxy shows once for its first certificate.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// The trust bundle (each root's expiry) and, with --admin, a proxy's
    /// own certificate; `roots` rotates the bundle.
    Identity(IdentityArgs),
    /// List the proxies watching the registry: service, version, and the
    /// revision each has applied.
    Proxies,
    /// Per service, over the last 10 s of every proxy: success rate,
    /// requests per second, latency percentiles, breaker state (like
    /// `linkerd viz stat`); with SERVICE, also each caller's edge to it.
    Stat {
        /// One destination service (default: all).
        service: Option<String>,
    },
    /// What every proxy decided for one request: the endpoints tried,
    /// breaker and bulkhead verdicts, each retry and why it stopped. Paste
    /// the `x-request-id` of a mesh-made error.
    Explain { request_id: String },
    /// Calls to SERVICE as every proxy carries them, live (the access
    /// log's fields), until Ctrl-C; each shows about a second after it ends.
    Tap { service: String },
    /// Is the mesh healthy: control plane, proxies and their lag,
    /// self-preservation, breakers, certificates; one line each (ok, warn,
    /// fail), exit 1 on a failure.
    Check,
    /// Add the sidecar to Kubernetes workloads (YAML in, YAML out; every
    /// document inject does not handle passes through unchanged).
    Inject(InjectArgs),
    /// Remove what `inject` added.
    Uninject {
        /// Multi-document YAML; `-` (the default) reads stdin.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE",
            default_value = "-"
        )]
        file: String,
    },
}

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Multi-document YAML (Pod, Deployment, StatefulSet, DaemonSet,
    /// ReplicaSet, Job, CronJob, List); `-` (the default) reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: String,
    /// The proxy as a regular container whose postStart waits for it
    /// (Kubernetes before 1.29), instead of a native sidecar.
    #[arg(long)]
    pub legacy_sidecar: bool,
    /// The image of the init container and the proxy.
    #[arg(long, default_value = crate::inject::settings::DEFAULT_IMAGE)]
    pub image: String,
    /// `off`: plaintext to an `http://` mesh-control, no token Secret.
    #[arg(long, default_value = "on", value_parser = mesh::flags::parse_on_off, action = clap::ArgAction::Set)]
    pub identity: bool,
    /// Service of every workload (beats `mesh.io/service`; default: the
    /// workload's name).
    #[arg(long)]
    pub service: Option<String>,
    /// The app's port (beats `mesh.io/app-port`; default: the first
    /// containerPort).
    #[arg(long)]
    pub app_port: Option<String>,
    /// Opaque-TCP ports, comma separated (beats `mesh.io/opaque-ports`).
    #[arg(long)]
    pub opaque_ports: Option<String>,
    /// Outbound ports never intercepted (beats
    /// `mesh.io/exclude-outbound-ports`).
    #[arg(long)]
    pub exclude_outbound_ports: Option<String>,
    /// mesh-control's URL as the pods reach it (beats `mesh.io/control`;
    /// default https://mesh-control.mesh-system.svc:15010).
    #[arg(long, value_name = "URL")]
    pub mesh_control: Option<String>,
    /// Configs the sidecar delivers to the app, `APP[:PROFILE],...`
    /// (beats `mesh.io/config`): files at `mesh.io/config-mount`
    /// (default /etc/mesh/config) in every app container.
    #[arg(long, value_name = "APP[:PROFILE],...")]
    pub config: Option<String>,
}

impl InjectArgs {
    pub fn flags(&self) -> crate::inject::Flags {
        crate::inject::Flags {
            mode: if self.legacy_sidecar {
                crate::inject::Mode::Legacy
            } else {
                crate::inject::Mode::Native
            },
            image: self.image.clone(),
            identity: self.identity,
            service: self.service.clone(),
            app_port: self.app_port.clone(),
            opaque_ports: self.opaque_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            control: self.mesh_control.clone(),
            config: self.config.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token proving SERVICE (for every replica, until it expires).
    Create {
        /// The service the token's holder becomes.
        #[arg(long)]
        service: String,
        /// The namespace of the identity (default `default`).
        #[arg(long)]
        namespace: Option<String>,
        /// How long the token is good for.
        #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
        ttl: Duration,
        /// Print a Kubernetes Secret `mesh-token-SERVICE` holding the token
        /// and the trust bundle: what `inject`ed pods mount.
        #[arg(long)]
        secret: bool,
    },
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// A proxy's admin URL: also show its certificate and renewal state.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    #[command(subcommand)]
    pub roots: Option<IdentityCommand>,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Rotate trust roots in three steps: add, activate, remove the old.
    Roots {
        #[command(subcommand)]
        step: RootStep,
    },
}

#[derive(Debug, Subcommand)]
pub enum RootStep {
    /// Add a root to the bundle, not active yet (made by mesh-control, or
    /// the operator's with --cert and --key).
    Add {
        /// The operator's root certificate (PEM).
        #[arg(long, requires = "key", value_name = "FILE")]
        cert: Option<std::path::PathBuf>,
        /// Its private key (PEM).
        #[arg(long, requires = "cert", value_name = "FILE")]
        key: Option<std::path::PathBuf>,
    },
    /// Sign new leaves under this root; proxies renew onto it.
    Activate { id: String },
    /// Drop a root that is no longer active.
    Remove { id: String },
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// A service's policy as a re-appliable YAML document (`-o json` for
    /// JSON); without SERVICE, a table of every applied policy.
    #[command(visible_alias = "policies")]
    Policy {
        /// Service name.
        service: Option<String>,
    },
    /// A service's AuthorizationPolicy (`*` for the mesh-wide defaults);
    /// without SERVICE, every one.
    #[command(visible_alias = "authorizations")]
    Authorization {
        /// Service name, or `*`.
        service: Option<String>,
    },
    /// A gateway Route as a re-appliable document; without NAME, every one.
    #[command(visible_alias = "routes")]
    Route {
        /// Route name.
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every config and its latest version.
    List,
    /// One version as a document `apply -f` takes back (the latest unless
    /// --version); secret values redacted unless --show-secrets.
    Get {
        application: String,
        /// The profile (a config is one application and profile).
        #[arg(short = 'p', long, default_value = "default")]
        profile: String,
        /// Which version (default: the latest).
        #[arg(long, value_name = "N")]
        version: Option<u64>,
        /// Show secret values (needs the admin token).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Every version: when, by whom, why.
    History {
        application: String,
        /// The profile (a config is one application and profile).
        #[arg(short = 'p', long, default_value = "default")]
        profile: String,
    },
    /// A unified diff from version A to version B.
    Diff {
        application: String,
        #[arg(value_name = "A")]
        from: u64,
        #[arg(value_name = "B")]
        to: u64,
        /// The profile (a config is one application and profile).
        #[arg(short = 'p', long, default_value = "default")]
        profile: String,
        /// Show secret values (needs the admin token).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Make a new version with version N's content (history is kept).
    Rollback {
        application: String,
        /// The version whose content the new version takes.
        #[arg(long, value_name = "N")]
        to: u64,
        /// The profile (a config is one application and profile).
        #[arg(short = 'p', long, default_value = "default")]
        profile: String,
        /// Why: recorded with the new version.
        #[arg(short = 'm', long)]
        message: Option<String>,
    },
    /// Every proxy delivering this config: its version, when, and whether
    /// the app acknowledged the reload.
    Status {
        application: String,
        /// The profile (a config is one application and profile).
        #[arg(short = 'p', long, default_value = "default")]
        profile: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a service's policy: it runs the defaults again.
    Policy {
        /// Service name.
        service: String,
    },
    /// Delete a service's AuthorizationPolicy.
    Authorization {
        /// Service name, or `*`.
        service: String,
    },
    /// Delete a gateway Route.
    Route {
        /// Route name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The proxy's admin URL (`host:port` works too).
    #[arg(
        long,
        env = "MESH_ADMIN",
        default_value = "http://127.0.0.1:15000",
        value_name = "URL"
    )]
    pub admin: String,
    /// Time between refreshes.
    #[arg(long, env = "MESH_INTERVAL", default_value = "1s", value_parser = parse_duration_arg)]
    pub interval: Duration,
    /// Print one frame and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Service name (one DNS label: lowercase letters, digits, '-').
    pub service: String,
    /// Where callers reach the instance: an IP and a port (IPv6 as [::1]:80).
    #[arg(value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub address: SocketAddr,
    /// Instance id (default: HOST:PORT).
    #[arg(long)]
    pub id: Option<String>,
    /// Lease length (e.g. 30s); without it the registration is static.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    /// Metadata entry; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Port of the instance's sidecar inbound listener at the same host;
    /// callers' proxies connect there instead of to PORT.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: Option<u16>,
}

impl RegisterArgs {
    pub fn request(&self) -> RegisterRequest {
        RegisterRequest {
            id: self.id.clone(),
            address: self.address.ip(),
            port: self.address.port(),
            metadata: self.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
            ttl: self.ttl,
            health: Health::Up,
            inbound_port: self.inbound_port,
            identity: None,
        }
    }
}

/// `10.0.0.1:8000` or `[::1]:8000`; the host must be an IP because the
/// address is handed to every sidecar as is.
pub fn parse_host_port(s: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("expected HOST:PORT, e.g. 10.0.0.1:8000, got {s:?}"));
    };
    let port = match port.parse::<u64>() {
        Ok(p) if (1..=65535).contains(&p) => p as u16,
        Ok(p) => return Err(format!("port: {p} is outside 1..=65535")),
        Err(_) => return Err(format!("port: {port:?} is not a number")),
    };
    let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner
            .parse::<std::net::Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| format!("host: {inner:?} is not an IPv6 address"))?
    } else if host.contains(':') {
        return Err(format!(
            "host: write IPv6 addresses in brackets, e.g. [{host}]:{port}"
        ));
    } else {
        host.parse::<IpAddr>().map_err(|_| {
            format!("host: {host:?} is not an IP address (names are not accepted here)")
        })?
    };
    Ok(SocketAddr::new(ip, port))
}

/// `key=value`; the value may be empty or contain `=`.
pub fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, _)) if k.trim().is_empty() => Err(format!("{s:?}: the key is empty")),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

/// A lease in whole seconds, at least one.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err(format!(
            "{s:?}: a lease is a whole number of seconds, at least 1s"
        ));
    }
    Ok(d.as_secs())
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help_and_is_in_the_reference() {
        let reference = include_str!("../../docs/reference.md");
        let section = |_: &[&str]| "## mesh-ctl";
        let problems = mesh::flags::undocumented(&Cli::command(), reference, &section);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("10.0.0.1:8000"),
            Ok("10.0.0.1:8000".parse().unwrap())
        );
        assert_eq!(parse_host_port("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        let err = |s: &str| parse_host_port(s).unwrap_err();
        assert_eq!(err("10.0.0.1:70000"), "port: 70000 is outside 1..=65535");
        assert_eq!(err("10.0.0.1:0"), "port: 0 is outside 1..=65535");
        assert!(err("10.0.0.1:http").starts_with("port:"));
        assert!(err("10.0.0.1").starts_with("expected HOST:PORT"));
        assert!(err("::1:80").contains("brackets"));
        assert!(err("[10.0.0.1]:80").starts_with("host:"));
        assert!(err("localhost:80").contains("not an IP address"));
    }

    #[test]
    fn meta_and_ttl() {
        assert_eq!(parse_meta("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(parse_meta("q=a=b"), Ok(("q".into(), "a=b".into())));
        assert_eq!(parse_meta("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=v").is_err());
        assert_eq!(parse_ttl("1m"), Ok(60));
        assert!(parse_ttl("500ms").is_err());
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("ten").is_err());
    }

    #[test]
    fn register_command_line() {
        let cli = Cli::try_parse_from([
            "mesh-ctl",
            "register",
            "hello",
            "[::1]:8080",
            "--ttl",
            "30s",
            "--meta",
            "zone=a",
            "--meta",
            "v=2",
            "--id",
            "h-1",
            "-o",
            "json",
            "--control",
            "http://localhost:1",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.control, "http://localhost:1");
        let Command::Register(args) = cli.command else {
            panic!("not register: {:?}", cli.command);
        };
        let req = args.request();
        assert_eq!(req.address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (req.port, req.ttl, req.id.as_deref()),
            (8080, Some(30), Some("h-1"))
        );
        assert_eq!(req.metadata.len(), 2);
        assert_eq!(req.metadata["v"], "2");
        assert_eq!(req.inbound_port, None);
        let cli = Cli::try_parse_from([
            "mesh-ctl",
            "register",
            "hello",
            "10.0.0.1:80",
            "--inbound-port",
            "15006",
        ])
        .unwrap();
        let Command::Register(args) = cli.command else {
            panic!("not register: {:?}", cli.command);
        };
        assert_eq!(args.request().inbound_port, Some(15006));
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for argv in [
            &["mesh-ctl", "register", "hello", "10.0.0.1:70000"][..],
            &[
                "mesh-ctl",
                "register",
                "hello",
                "10.0.0.1:80",
                "--meta",
                "x",
            ],
            &["mesh-ctl", "register", "hello"],
            &[
                "mesh-ctl",
                "register",
                "hello",
                "10.0.0.1:80",
                "--inbound-port",
                "0",
            ],
            &[
                "mesh-ctl",
                "register",
                "hello",
                "10.0.0.1:80",
                "--inbound-port",
                "65536",
            ],
            &["mesh-ctl", "services", "-o", "xml"],
            &["mesh-ctl", "watch", "--since", "-1"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}
