//! Running iptables for `mesh-proxy init`: one command at a time, optionally
//! inside a named network namespace, plus the chain operations `install`
//! and `remove` are made of (each one idempotent on its own).

use super::args::InitArgs;
use super::error::InitError;
use std::process::{Command, Output};

/// Bound on jump deletions (a jump added by hand many times over).
const MAX_JUMPS: usize = 64;

/// One of our nat chains and the built-in chain that jumps to it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hook {
    /// Our chain, e.g. `MESH_OUTPUT`.
    pub chain: &'static str,
    /// The built-in chain holding the jump, e.g. `OUTPUT`.
    pub from: &'static str,
    /// Matches on the jump itself (e.g. `-p tcp`).
    pub matches: &'static [&'static str],
}

impl Hook {
    /// The jump rule with `op` (`-C`, `-A`, `-D`).
    pub fn jump(&self, op: &'static str) -> Vec<&'static str> {
        let mut v = vec!["-t", "nat", op, self.from];
        v.extend_from_slice(self.matches);
        v.extend(["-j", self.chain]);
        v
    }
}

/// Runs iptables (optionally inside a named netns) with `-w`.
pub(super) struct Iptables<'a> {
    /// The iptables binary.
    binary: &'a str,
    /// Namespace to enter with `ip netns exec`, if any.
    netns: Option<&'a str>,
}

// === impl Iptables ===

impl<'a> Iptables<'a> {
    pub fn new(args: &'a InitArgs) -> Self {
        Iptables {
            binary: &args.iptables,
            netns: args.netns.as_deref(),
        }
    }

    pub fn command_line(&self, args: &[&str]) -> Vec<String> {
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

    fn chain_exists(&self, chain: &str) -> Result<bool, InitError> {
        let list = ["-t", "nat", "-S", chain];
        let out = self.run(&list)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failure(&list, &out)),
        }
    }

    /// Makes `hook.chain` hold exactly `rules` and be jumped to once.
    ///
    /// Between flush and append the chain is briefly empty, which is fine
    /// before the app starts.
    pub fn install(&self, hook: Hook, rules: &[Vec<String>]) -> Result<(), InitError> {
        if !self.chain_exists(hook.chain)? {
            self.ok(&["-t", "nat", "-N", hook.chain])?;
        }
        self.ok(&["-t", "nat", "-F", hook.chain])?;
        for rule in rules {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            self.ok(&rule)?;
        }
        let check = hook.jump("-C");
        let out = self.run(&check)?;
        match out.status.code() {
            Some(0) => Ok(()),
            // 1: no such rule.
            Some(1) => self.ok(&hook.jump("-A")),
            _ => Err(self.failure(&check, &out)),
        }
    }

    /// Deletes every jump to `hook.chain`, then the chain; succeeds when
    /// there is no such chain.
    pub fn remove(&self, hook: Hook) -> Result<(), InitError> {
        // iptables refuses jumps to a missing chain, so no chain means no jump either.
        if !self.chain_exists(hook.chain)? {
            return Ok(());
        }
        let delete = hook.jump("-D");
        for _ in 0..MAX_JUMPS {
            let out = self.run(&delete)?;
            match out.status.code() {
                Some(0) => continue,
                Some(1) => break, // no (more) such rule
                _ => return Err(self.failure(&delete, &out)),
            }
        }
        self.ok(&["-t", "nat", "-F", hook.chain])?;
        self.ok(&["-t", "nat", "-X", hook.chain])
    }

    fn failure(&self, args: &[&str], out: &Output) -> InitError {
        InitError::Command {
            command: self.command_line(args).join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
}
