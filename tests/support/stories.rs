//! The test harness of the story binaries (`harness = false`): each
//! binary's `main` lists its stories with what they need from the machine
//! (root and iptables for pods, a peer program), in one table.
//!
//! A story whose needs are missing is reported as *ignored* (libtest's
//! own count), and the binary ends with one line per skipped story saying
//! why, so `cargo test` on a laptop passes and says what it did not run.
//! With `CI` set (as `.ci/run` sets it), a missing need fails the story
//! instead: CI must have installed everything.
//!
//! Built on libtest-mimic, so the usual flags work: a name filter,
//! `--exact`, `--skip`, `--test-threads`, `--list`. Output is not
//! captured: a story's own lines (measurements, a failing pod's logs)
//! appear as they are printed.

use super::proc::{command, run_with_timeout};
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

/// Something a story needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Root, `ip`, `iptables`, `curl` and `python3`: pods as network
    /// namespaces with real interception rules.
    Pods,
    /// A program, checked by running it (`program args...` must exit 0),
    /// with how to get it (`apt-get install ...`, `pip install ...`).
    Tool {
        program: &'static str,
        args: &'static [&'static str],
        package: &'static str,
    },
}

/// `Need::Tool` in one line: `tool("redis-server", &["--version"], "redis-server")`.
pub const fn tool(
    program: &'static str,
    args: &'static [&'static str],
    package: &'static str,
) -> Need {
    Need::Tool {
        program,
        args,
        package,
    }
}

pub const CURL: Need = tool("curl", &["--version"], "apt-get install curl");
pub const PYTHON3: Need = tool("python3", &["--version"], "apt-get install python3");
pub const OPENSSL: Need = tool("openssl", &["version"], "apt-get install openssl");
pub const CHROMIUM: Need = tool("chromium", &["--version"], "apt-get install chromium");
/// playwright-core, installed with `npm install -g` (found by NODE_PATH).
pub const PLAYWRIGHT: Need = tool(
    "sh",
    &[
        "-c",
        "NODE_PATH=$(npm root -g) node -e \"require('playwright-core')\"",
    ],
    "npm install -g playwright-core",
);
/// PyPI's opentelemetry-proto, for the OTLP receiver of the tests.
pub const OTLP_PROTO: Need = tool(
    "python3",
    &[
        "-c",
        "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    ],
    "pip install opentelemetry-proto",
);

/// One story: its test name, what it needs, and its body (which panics
/// to fail, like a `#[test]`).
pub struct Story {
    pub name: String,
    pub needs: Vec<Need>,
    pub run: fn(),
}

/// `stories![[needs...] => module::function, ...]`: the story table of a
/// binary, named as libtest would name the functions.
#[macro_export]
macro_rules! stories {
    ($([$($need:expr),* $(,)?] => $($story:ident)::+),* $(,)?) => {
        vec![$($crate::support::stories::Story {
            name: stringify!($($story)::+).replace(' ', ""),
            needs: vec![$($need),*],
            run: $($story)::+,
        }),*]
    };
}

/// How long a need's check may take (a JVM's `-version` is the slowest).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `stories` as the test binary `binary`; returns its exit code.
pub fn run(binary: &str, stories: Vec<Story>) -> ExitCode {
    let args = Arguments::from_args();
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let mut checks = Checks::default();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let total = stories.len();
    let trials: Vec<Trial> = stories
        .into_iter()
        .map(|story| {
            let missing = checks.missing(&story.needs);
            let Story { name, run, .. } = story;
            match missing {
                None => Trial::test(name, move || {
                    run();
                    Ok(())
                }),
                Some(why) if ci => Trial::test(name, move || {
                    Err(Failed::from(format!(
                        "{why} (CI is set: .ci/run must install it)"
                    )))
                }),
                Some(why) => {
                    if selected(&args, &name) {
                        skipped.push((name.clone(), why.clone()));
                    }
                    // Run anyway (`-- --ignored`), it fails saying why: a
                    // skipped story never passes without running.
                    let not_run = move || Err(Failed::from(format!("cannot run here: {why}")));
                    Trial::test(name, not_run).with_ignored_flag(true)
                }
            }
        })
        .collect();
    let listing = args.list;
    let conclusion = libtest_mimic::run(&args, trials);
    if !skipped.is_empty() && !listing {
        report(binary, total, &skipped);
    }
    conclusion.exit_code()
}

/// Whether libtest-mimic will consider `name` (not filtered out), so the
/// skip report lists only stories the caller asked for.
fn selected(args: &Arguments, name: &str) -> bool {
    let matches = |pattern: &str| match args.exact {
        true => name == pattern,
        false => name.contains(pattern),
    };
    args.filter.as_deref().is_none_or(matches) && !args.skip.iter().any(|s| matches(s))
}

/// The closing lines: how many stories were skipped, and why. Written to
/// stderr directly, after libtest-mimic's summary, so it is the last thing
/// the binary prints.
fn report(binary: &str, total: usize, skipped: &[(String, String)]) {
    let mut text = format!(
        "{binary}: {} of {total} stories skipped (this machine lacks what they need; \
         .ci/run installs everything):\n",
        skipped.len()
    );
    for (name, why) in skipped {
        text.push_str(&format!("  skipped {name}: {why}\n"));
    }
    eprintln!("{text}");
}

/// Each need checked once per binary.
#[derive(Default)]
struct Checks {
    results: HashMap<String, Option<String>>,
}

impl Checks {
    /// Why the needs are not met (every missing one named), or `None`.
    fn missing(&mut self, needs: &[Need]) -> Option<String> {
        let why: Vec<String> = needs.iter().filter_map(|n| self.check(n)).collect();
        (!why.is_empty()).then(|| format!("needs {}", why.join(", ")))
    }

    fn check(&mut self, need: &Need) -> Option<String> {
        let key = format!("{need:?}");
        if let Some(r) = self.results.get(&key) {
            return r.clone();
        }
        let result = match need {
            Need::Pods => pods_missing(),
            Need::Tool {
                program,
                args,
                package,
            } => (!runs(program, args)).then(|| {
                let check = [&[*program][..], args].concat().join(" ");
                format!("`{check}` to succeed ({package})")
            }),
        };
        self.results.insert(key, result.clone());
        result
    }
}

/// Why pods cannot be built here, if they cannot.
fn pods_missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("root (pods are network namespaces with iptables rules)".into());
    }
    let missing: Vec<&str> = [
        ("ip", &["-V"][..]),
        ("iptables", &["--version"][..]),
        ("curl", &["--version"][..]),
        ("python3", &["--version"][..]),
    ]
    .into_iter()
    .filter(|(program, args)| !runs(program, args))
    .map(|(program, _)| program)
    .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} for pods (apt-get install iproute2 iptables curl python3)",
            missing.join(", ")
        )
    })
}

/// Whether `program args...` runs and exits 0; a program that is not
/// installed at all is simply missing (never a panic).
fn runs(program: &str, args: &[&str]) -> bool {
    match which(program) {
        Some(path) => run_with_timeout(command(&path, args, &[]), CHECK_TIMEOUT)
            .status
            .success(),
        None => false,
    }
}

/// `program` on `PATH`, if it is there.
fn which(program: &str) -> Option<String> {
    if program.contains('/') {
        return std::path::Path::new(program)
            .exists()
            .then(|| program.to_string());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}
