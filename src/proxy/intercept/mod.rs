//! `mesh-proxy init`: the iptables rules that make interception transparent.
//!
//! Everything lives in chains of the `nat` table that only we write, so
//! they are installed and removed as a unit and never mix with other tools'
//! rules.
//!
//! Outbound, `MESH_OUTPUT`, jumped to from `OUTPUT`. In order, the chain:
//!
//! 1. lets the proxy's own sockets through (`RETURN`), identified either by
//!    `SO_MARK` (`--mark`, default `0x4d45`: `net::connect` and the DNS
//!    forwarder set it; needs CAP_NET_ADMIN) or, with `--uid`, by the owner
//!    uid the proxy runs as (then the app must run as another uid). Without
//!    this exemption the proxy's upstream connections would be redirected
//!    back into itself;
//! 2. redirects all DNS, udp and tcp port 53, to the `--dns` port, including
//!    queries to loopback resolvers such as Docker's 127.0.0.11;
//! 3. lets `--exclude-cidrs` destinations and `--exclude-ports` TCP ports
//!    through untouched (after DNS: lookups always go through the mesh);
//! 4. redirects TCP to the VIP range (`--vip-cidr`) to the `--outbound` port;
//! 5. lets other loopback traffic through (`-d 127.0.0.0/8`, `-o lo`), so the
//!    app can still talk to itself and to the proxy's admin port;
//! 6. redirects all remaining TCP to the `--outbound` port.
//!
//! Inbound, only with `--app-port`: `MESH_INBOUND`, jumped to from
//! `PREROUTING` for TCP, redirects TCP arriving for each app port to the
//! `--inbound` listener, which forwards to the app on loopback.
//! `PREROUTING` sees only packets from other hosts, so the app's own calls
//! to itself and the inbound listener's forward (loopback, via `OUTPUT`)
//! are not redirected again.
//!
//! Installing is idempotent (create each chain if missing, flush, append,
//! add the jump only if absent); installing without `--app-port` removes an
//! inbound chain left by an earlier install. Removing deletes every jump,
//! then flushes and deletes the chains; removing rules that were never
//! installed succeeds.
//!
//! IPv4 only: IPv6 traffic is not intercepted yet (no ip6tables rules), so an
//! app that reaches a service over IPv6 bypasses the mesh.

mod args;
mod error;
mod iptables;
#[cfg(test)]
mod tests;

pub use args::{parse_mark, parse_port, parse_port_or_addr, InitArgs, Ipv4Cidr};
pub use error::InitError;

use iptables::{Hook, Iptables};

/// Our outbound chain in the `nat` table.
pub const CHAIN: &str = "MESH_OUTPUT";
/// Our inbound chain in the `nat` table.
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// The DNS port whose traffic is always sent to the responder.
const DNS_PORT: &str = "53";

const OUTBOUND_HOOK: Hook = Hook {
    chain: CHAIN,
    from: "OUTPUT",
    matches: &[],
};
const INBOUND_HOOK: Hook = Hook {
    chain: INBOUND_CHAIN,
    from: "PREROUTING",
    matches: &["-p", "tcp"],
};

/// The iptables argument lists `install` appends to `MESH_OUTPUT`, in order
/// (each without the binary name and `-w`). Pure: validates and builds.
pub fn rules(args: &InitArgs) -> Result<Vec<Vec<String>>, InitError> {
    validate(args)?;
    let outbound = args.outbound.to_string();
    let dns = args.dns.to_string();
    let rule = |spec: &[&str]| -> Vec<String> {
        ["-t", "nat", "-A", CHAIN]
            .iter()
            .chain(spec)
            .map(|s| s.to_string())
            .collect()
    };
    let mut out = Vec::new();

    let exempt = match args.uid {
        Some(uid) => rule(&[
            "-m",
            "owner",
            "--uid-owner",
            &uid.to_string(),
            "-j",
            "RETURN",
        ]),
        None => rule(&[
            "-m",
            "mark",
            "--mark",
            &format!("{:#x}", args.mark),
            "-j",
            "RETURN",
        ]),
    };
    out.push(exempt);
    for proto in ["udp", "tcp"] {
        out.push(rule(&[
            "-p",
            proto,
            "--dport",
            DNS_PORT,
            "-j",
            "REDIRECT",
            "--to-ports",
            &dns,
        ]));
    }
    for cidr in &args.exclude_cidrs {
        out.push(rule(&["-d", &cidr.to_string(), "-j", "RETURN"]));
    }
    for port in &args.exclude_ports {
        out.push(rule(&[
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    let vips = args.vip_cidr.to_string();
    out.push(rule(&[
        "-p",
        "tcp",
        "-d",
        &vips,
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));
    out.push(rule(&["-d", "127.0.0.0/8", "-j", "RETURN"]));
    out.push(rule(&["-o", "lo", "-j", "RETURN"]));
    out.push(rule(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));
    Ok(out)
}

/// The iptables argument lists `install` appends to `MESH_INBOUND`: one
/// redirect per `--app-port`; empty without app ports. Pure.
pub fn inbound_rules(args: &InitArgs) -> Result<Vec<Vec<String>>, InitError> {
    validate(args)?;
    let inbound = args.inbound_port.to_string();
    Ok(args
        .app_ports
        .iter()
        .map(|port| {
            [
                "-t",
                "nat",
                "-A",
                INBOUND_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "REDIRECT",
                "--to-ports",
                &inbound,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
        .collect())
}

fn validate(args: &InitArgs) -> Result<(), InitError> {
    let invalid = |flag, reason: String| Err(InitError::Invalid { flag, reason });
    if args.outbound == 0 {
        return invalid("outbound", "port 0 is not a listener port".into());
    }
    if args.dns == 0 {
        return invalid("dns", "port 0 is not a listener port".into());
    }
    if args.dns == args.outbound {
        return invalid(
            "dns",
            format!("port {} is also the --outbound port", args.dns),
        );
    }
    if args.uid.is_none() && args.mark == 0 {
        // `-m mark --mark 0` matches every unmarked packet: nothing would be intercepted.
        return invalid("mark", "must be non-zero (or exempt by --uid)".into());
    }
    if args.exclude_ports.contains(&0) {
        return invalid("exclude-ports", "port 0 is not a port".into());
    }
    if args.iptables.trim().is_empty() {
        return invalid("iptables", "empty binary name".into());
    }
    validate_inbound(args)
}

/// The inbound flags matter only with app ports to redirect.
fn validate_inbound(args: &InitArgs) -> Result<(), InitError> {
    let invalid = |flag, reason: String| Err(InitError::Invalid { flag, reason });
    if args.app_ports.is_empty() {
        return Ok(());
    }
    let inbound = args.inbound_port;
    if inbound == 0 {
        return invalid("inbound", "port 0 is not a listener port".into());
    }
    for (other, flag) in [(args.outbound, "--outbound"), (args.dns, "--dns")] {
        if inbound == other {
            return invalid("inbound", format!("port {inbound} is also the {flag} port"));
        }
    }
    for (i, &port) in args.app_ports.iter().enumerate() {
        if port == 0 {
            return invalid("app-port", "port 0 is not a port".into());
        }
        if port == inbound {
            return invalid(
                "app-port",
                format!("port {port} is also the --inbound port (it would redirect to itself)"),
            );
        }
        if args.app_ports[..i].contains(&port) {
            return invalid("app-port", format!("port {port} is listed twice"));
        }
    }
    Ok(())
}

/// Installs the rules (idempotent: running it again leaves the same rules).
pub fn install(args: &InitArgs) -> Result<(), InitError> {
    let outbound = rules(args)?;
    let inbound = inbound_rules(args)?;
    let ipt = Iptables::new(args);
    ipt.install(OUTBOUND_HOOK, &outbound)?;
    if inbound.is_empty() {
        // An earlier init may have had app ports: leave no stale redirect.
        ipt.remove(INBOUND_HOOK)?;
    } else {
        ipt.install(INBOUND_HOOK, &inbound)?;
    }
    tracing::info!(
        chain = CHAIN,
        rules = outbound.len(),
        inbound_rules = inbound.len(),
        "interception rules installed"
    );
    Ok(())
}

/// Removes every rule `install` adds; succeeds when none were installed.
pub fn remove(args: &InitArgs) -> Result<(), InitError> {
    let ipt = Iptables::new(args);
    ipt.remove(INBOUND_HOOK)?;
    ipt.remove(OUTBOUND_HOOK)?;
    tracing::info!(chain = CHAIN, "interception rules removed");
    Ok(())
}

/// `mesh-proxy init`: install, or remove with `--remove`; first, the
/// config volume made writable when `--config-dir` names one.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    if let Some(dir) = args.config_dir.as_ref().filter(|_| !args.remove) {
        share_config_dir(dir)?;
    }
    if args.remove {
        remove(args)
    } else {
        install(args)
    }
}

/// Mode 1777 on `dir` (made if missing): anyone may write, nobody may
/// remove another's files. The init container runs first, so the volume
/// is its own and it may change the mode without any capability.
fn share_config_dir(dir: &std::path::Path) -> Result<(), InitError> {
    use std::os::unix::fs::PermissionsExt as _;
    let failed = |source| InitError::ConfigDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)) {
        // Not ours to change, but writable for everyone already: enough.
        let open = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0);
        if !open {
            return Err(failed(e));
        }
    }
    tracing::info!(dir = %dir.display(), "config volume writable for the proxy");
    Ok(())
}
