//! Pods as Linux network namespaces, for end-to-end tests.
//!
//! A `Net` is one private L2 network: a "bridge namespace" holding a Linux
//! bridge, and one namespace per pod joined to it by a veth pair. The
//! subnet (10.x.y.0/24) exists only inside these namespaces, so nothing a
//! test sends can leave them. Each pod gets its own resolv.conf naming
//! 127.0.0.11, which only the pod's own DNS interception can answer.
//!
//! Dropping the `Net` kills every process it started, deletes the
//! namespaces and their resolv.conf, and — when the test is failing — prints
//! the tail of every process log and keeps the temp dir for inspection.

use super::proc::{self, command, run_with_timeout, spawn_logged, Proc, ProcInner};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Timeout of the `ip`/`curl` one-shots the harness runs itself.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of each process log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Distinguishes several `Net`s in one test process (tests run in parallel
/// threads, so the pid alone is not unique).
static NET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Every namespace of a `Net` is named `mt<pid>-...`: the pid of the test
/// process that made it, so a later run can tell an aborted run's leftovers.
const TAG_PREFIX: &str = "mt";

/// Deletes the namespaces (and kills the processes inside them) that a
/// test process which no longer exists left behind: a run killed before
/// its `Net`s were dropped (Ctrl-C, a CI timeout). Namespaces of live test
/// processes are left alone.
fn clean_leftovers() {
    let out = run_with_timeout(command("ip", &["netns", "list"], &[]), SETUP_TIMEOUT);
    let list = String::from_utf8_lossy(&out.stdout);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(TAG_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let pids = run_with_timeout(command("ip", &["netns", "pids", name], &[]), SETUP_TIMEOUT);
        for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(p) = p.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = run_with_timeout(command("ip", &["netns", "del", name], &[]), SETUP_TIMEOUT);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        eprintln!("removed namespace {name}, left behind by test process {pid}");
    }
}

/// One private network of pods. See the module docs.
pub struct Net {
    inner: Arc<NetInner>,
}

struct NetInner {
    /// Unique per run and per `Net`: "<prefix><pid>n<k>"; prefixes every
    /// namespace name so a leftover can be traced to its test.
    tag: String,
    bridge_ns: String,
    /// First three octets of the pods' /24.
    subnet: [u8; 3],
    /// Logs, data dirs and app files; kept when the test fails.
    dir: PathBuf,
    /// Everything created that Drop must delete or kill, in creation order.
    state: Mutex<NetState>,
}

#[derive(Default)]
struct NetState {
    pod_namespaces: Vec<String>,
    next_host: u8,
    /// Weak so that dropping a `Proc` still kills it right away.
    procs: Vec<Weak<ProcInner>>,
    /// (label, log) of every process ever started, for the failure dump.
    logs: Vec<(String, PathBuf)>,
}

/// One pod: a network namespace with `eth0` on the net's bridge.
pub struct Pod {
    net: Arc<NetInner>,
    name: String,
    ns: String,
    ip: Ipv4Addr,
}

// === impl Net ===

impl Net {
    /// Creates the bridge namespace and a fresh temp dir. Names include the
    /// pid; `prefix` should be short (namespace names are shown by
    /// `ip netns list`).
    pub fn new(prefix: &str) -> Net {
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(clean_leftovers);
        let pid = std::process::id();
        let k = NET_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{TAG_PREFIX}{pid}-{prefix}{k}");
        // 10.64.0.0 .. 10.127.255.0: 16384 /24s chosen by pid and counter.
        let slot = (pid.wrapping_mul(8).wrapping_add(k)) % (64 * 256);
        let subnet = [10, 64 + (slot / 256) as u8, (slot % 256) as u8];
        let dir = std::env::temp_dir().join(format!("mesh-e2e-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test temp dir");
        let net = Net {
            inner: Arc::new(NetInner {
                bridge_ns: format!("{tag}-br"),
                tag,
                subnet,
                dir,
                state: Mutex::new(NetState {
                    next_host: 2,
                    ..NetState::default()
                }),
            }),
        };
        let ns = net.inner.bridge_ns.clone();
        // Registered before it exists, so a failure halfway is cleaned up.
        net.inner.lock().pod_namespaces.push(ns.clone());
        sh(&["ip", "netns", "add", &ns]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
        net
    }

    /// Directory for this test's files (logs, data dirs, app content).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a subdirectory of `dir()` and returns its path.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let path = self.inner.dir.join(name);
        std::fs::create_dir_all(&path).expect("create test subdir");
        path
    }

    /// The namespace holding the bridge `br0` (to capture what pods send).
    pub fn bridge_ns(&self) -> &str {
        &self.inner.bridge_ns
    }

    /// Adds a pod: namespace, veth to the bridge, address .N/24, lo up, and
    /// a resolv.conf naming only 127.0.0.11.
    pub fn pod(&self, name: &str) -> Pod {
        let (ns, host) = {
            let mut state = self.inner.lock();
            let host = state.next_host;
            assert!(host < 250, "too many pods in one Net");
            state.next_host += 1;
            let ns = format!("{}-{name}", self.inner.tag);
            state.pod_namespaces.push(ns.clone());
            (ns, host)
        };
        let [a, b, c] = self.inner.subnet;
        let ip = Ipv4Addr::new(a, b, c, host);
        // ip netns exec bind-mounts /etc/netns/<ns>/* over /etc/*.
        let etc = Path::new("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).expect("create /etc/netns/<ns>");
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.11\n")
            .expect("write pod resolv.conf");

        let br = &self.inner.bridge_ns;
        // Interface names live only inside our namespaces; short and unique.
        let peer = format!("v{host}");
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer,
            "netns", br,
        ]);
        sh(&["ip", "-n", br, "link", "set", &peer, "master", "br0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        Pod {
            net: Arc::clone(&self.inner),
            name: name.to_string(),
            ns,
            ip,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let state = std::mem::take(&mut *self.inner.lock());
        if failing {
            for (label, log) in &state.logs {
                eprintln!(
                    "----- {label} ({}) -----\n{}",
                    log.display(),
                    proc::tail(log, LOG_TAIL_LINES)
                );
            }
            eprintln!(
                "----- test files kept in {} -----",
                self.inner.dir.display()
            );
        }
        for p in state.procs.iter().filter_map(Weak::upgrade) {
            p.kill();
        }
        for ns in state.pod_namespaces.iter().rev() {
            // Deleting a namespace deletes the veth ends inside it.
            let _ = run_with_timeout(command("ip", &["netns", "del", ns], &[]), SETUP_TIMEOUT);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        if !failing {
            let _ = std::fs::remove_dir_all(&self.inner.dir);
        }
    }
}

// === impl NetInner ===

impl NetInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl Pod ===

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace name (for `ip netns exec`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Starts a long-running process inside the pod, output to a log file.
    pub fn spawn(&self, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let base = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.to_string());
        let mut state = self.net.lock();
        let label = format!("{}/{base}#{}", self.name, state.logs.len());
        let log = self
            .net
            .dir
            .join(format!("{}-{base}-{}.log", self.name, state.logs.len()));
        let proc = spawn_logged(self.exec(program, args, envs), label.clone(), log.clone());
        state.procs.push(proc.weak());
        state.logs.push((label, log));
        proc
    }

    /// Runs a command inside the pod to completion (10 s timeout).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.run_with(program, args, &[], SETUP_TIMEOUT)
    }

    /// Runs a command inside the pod to completion, with env and timeout.
    pub fn run_with(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        timeout: Duration,
    ) -> Output {
        run_with_timeout(self.exec(program, args, envs), timeout)
    }

    /// Runs a command that must succeed; panics with its output otherwise.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "in pod {}: {program} {args:?} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `curl -s` from inside the pod (3 s max): (HTTP status, body). Status
    /// 0 means no HTTP response (connection failed, timed out, ...).
    pub fn curl(&self, url: &str, extra_args: &[&str]) -> (u16, String) {
        let mut args = vec!["-s", "-m", "3", "-w", "\n%{http_code}"];
        args.extend_from_slice(extra_args);
        args.push(url);
        let out = self.run_with("curl", &args, &[], Duration::from_secs(5));
        let text = String::from_utf8_lossy(&out.stdout);
        match text.rsplit_once('\n') {
            Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
            None => (0, text.into_owned()),
        }
    }

    fn exec(&self, program: &str, args: &[&str], envs: &[(&str, &str)]) -> std::process::Command {
        let mut full = vec!["netns", "exec", self.ns.as_str(), program];
        full.extend_from_slice(args);
        command("ip", &full, envs)
    }
}

/// Runs a setup command that must succeed.
fn sh(argv: &[&str]) {
    let out = run_with_timeout(command(argv[0], &argv[1..], &[]), SETUP_TIMEOUT);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
