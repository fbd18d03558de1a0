//! `mesh-proxy init`: the iptables rules that make interception transparent.
//!
//! Everything lives in one chain of the `nat` table, `MESH_OUTPUT`, jumped to
//! from `OUTPUT`, so it is installed and removed as a unit and never mixes
//! with other tools' rules. In order, the chain:
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
//! Installing is idempotent (create the chain if missing, flush, append, add
//! the `OUTPUT` jump only if absent); between flush and append the chain is
//! briefly empty, which is fine before the app starts. Removing deletes every
//! `OUTPUT` jump, then flushes and deletes the chain; removing rules that were
//! never installed succeeds.
//!
//! IPv4 only: IPv6 traffic is not intercepted yet (no ip6tables rules), so an
//! app that reaches a service over IPv6 bypasses the mesh.

mod args;
#[cfg(test)]
mod tests;

pub use args::{parse_mark, parse_port, parse_port_or_addr, InitArgs, Ipv4Cidr};

use std::process::{Command, Output};

/// Our chain in the `nat` table.
pub const CHAIN: &str = "MESH_OUTPUT";
/// The DNS port whose traffic is always sent to the responder.
const DNS_PORT: &str = "53";
/// Bound on `OUTPUT` jump deletions (a jump added by hand many times over).
const MAX_JUMPS: usize = 64;

/// Why installing or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A flag value that cannot produce sensible rules.
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    /// The iptables (or ip) binary could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// An iptables command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

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
    Ok(())
}

/// Installs the rules (idempotent: running it again leaves the same rules).
pub fn install(args: &InitArgs) -> Result<(), InitError> {
    let rules = rules(args)?;
    let ipt = Iptables::new(args);
    if !ipt.chain_exists()? {
        ipt.ok(&["-t", "nat", "-N", CHAIN])?;
    }
    ipt.ok(&["-t", "nat", "-F", CHAIN])?;
    for rule in &rules {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        ipt.ok(&rule)?;
    }
    let jump = ["-t", "nat", "-C", "OUTPUT", "-j", CHAIN];
    let out = ipt.run(&jump)?;
    match out.status.code() {
        Some(0) => {}
        // 1: no such rule.
        Some(1) => ipt.ok(&["-t", "nat", "-A", "OUTPUT", "-j", CHAIN])?,
        _ => return Err(ipt.failure(&jump, &out)),
    }
    tracing::info!(
        chain = CHAIN,
        rules = rules.len(),
        "interception rules installed"
    );
    Ok(())
}

/// Removes every rule `install` adds; succeeds when none were installed.
pub fn remove(args: &InitArgs) -> Result<(), InitError> {
    let ipt = Iptables::new(args);
    // iptables refuses jumps to a missing chain, so no chain means no jump either.
    if !ipt.chain_exists()? {
        return Ok(());
    }
    let delete = ["-t", "nat", "-D", "OUTPUT", "-j", CHAIN];
    for _ in 0..MAX_JUMPS {
        let out = ipt.run(&delete)?;
        match out.status.code() {
            Some(0) => continue,
            Some(1) => break, // no (more) such rule
            _ => return Err(ipt.failure(&delete, &out)),
        }
    }
    ipt.ok(&["-t", "nat", "-F", CHAIN])?;
    ipt.ok(&["-t", "nat", "-X", CHAIN])?;
    tracing::info!(chain = CHAIN, "interception rules removed");
    Ok(())
}

/// `mesh-proxy init`: install, or remove with `--remove`.
pub fn run(args: &InitArgs) -> Result<(), InitError> {
    if args.remove {
        remove(args)
    } else {
        install(args)
    }
}

/// Runs iptables (optionally inside a named netns) with `-w`.
struct Iptables<'a> {
    /// The iptables binary.
    binary: &'a str,
    /// Namespace to enter with `ip netns exec`, if any.
    netns: Option<&'a str>,
}

// === impl Iptables ===

impl<'a> Iptables<'a> {
    fn new(args: &'a InitArgs) -> Self {
        Iptables {
            binary: &args.iptables,
            netns: args.netns.as_deref(),
        }
    }

    fn command_line(&self, args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.push(self.binary.to_string());
        // Wait for the xtables lock instead of failing when another tool holds it.
        argv.push("-w".into());
        argv.extend(args.iter().map(|s| s.to_string()));
        argv
    }

    fn run(&self, args: &[&str]) -> Result<Output, InitError> {
        let argv = self.command_line(args);
        tracing::debug!(command = %argv.join(" "), "iptables");
        Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|source| InitError::Spawn {
                program: argv[0].clone(),
                source,
            })
    }

    /// Runs and requires success.
    fn ok(&self, args: &[&str]) -> Result<(), InitError> {
        let out = self.run(args)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failure(args, &out))
        }
    }

    fn chain_exists(&self) -> Result<bool, InitError> {
        let list = ["-t", "nat", "-S", CHAIN];
        let out = self.run(&list)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failure(&list, &out)),
        }
    }

    fn failure(&self, args: &[&str], out: &Output) -> InitError {
        InitError::Command {
            command: self.command_line(args).join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}
