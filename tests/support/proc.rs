//! Processes the end-to-end tests start: long-running ones (`Proc`) and
//! one-shot commands with a timeout (`run_with_timeout`).
//!
//! Every process is started in its own process group, so killing it also
//! kills whatever it forked. A process is only ever signalled while we still
//! hold its un-reaped `Child`, so its pid cannot have been reused by then.

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// Proxy settings a developer's shell may carry; a pod must not inherit them
/// or curl would bypass the mesh (or use the wrong proxy).
const PROXY_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// How often the wait loops look at a child again.
const REAP_INTERVAL: Duration = Duration::from_millis(10);

/// A long-running process started by the test. Killed (with its process
/// group) when dropped; the `Net` keeps a weak handle to kill whatever is
/// still alive when the test ends, so nothing outlives the test.
pub struct Proc {
    inner: Arc<ProcInner>,
}

pub(super) struct ProcInner {
    /// Human name for logs: "<pod>/<program>".
    label: String,
    pid: u32,
    /// stdout and stderr of the process, dumped when a test fails.
    log: PathBuf,
    /// Held until reaped; the exit status is kept once known.
    child: Mutex<(Child, Option<ExitStatus>)>,
}

/// Builds a `Command` with the environment hygiene every test process
/// needs: no proxy variables, no `MESH_*` but those in `envs`.
pub fn command(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for var in PROXY_ENV {
        cmd.env_remove(var);
    }
    // The developer's own MESH_* settings (a control URL, a log filter)
    // must not change what a test's processes do.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("MESH_") {
            cmd.env_remove(&var);
        }
    }
    // Stories written before workload identity run the mesh with it off
    // (plaintext, nothing authenticated); the identity stories turn it on
    // with `("MESH_IDENTITY", "on")`, which wins.
    cmd.env("MESH_IDENTITY", "off");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.process_group(0);
    cmd
}

/// Starts `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(mut cmd: Command, label: String, log: PathBuf) -> Proc {
    let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log file handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {label} ({cmd:?}): {e}"));
    Proc {
        inner: Arc::new(ProcInner {
            label,
            pid: child.id(),
            log,
            child: Mutex::new((child, None)),
        }),
    }
}

/// Runs `cmd` to completion, killing its process group after `timeout`.
/// A timed-out command returns an `Output` with a failed status and
/// "timed out" appended to its stderr.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // Readers on their own threads, so a chatty command cannot fill a pipe
    // and block while we wait for it to exit.
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                break child.wait().expect("reap timed-out command");
            }
            Ok(None) => thread::sleep(REAP_INTERVAL),
            Err(e) => panic!("wait for {cmd:?}: {e}"),
        }
    };
    // A grandchild that escaped the group could keep the pipes open; the
    // group kill above covers the timeout case, so joining is bounded.
    let stdout = out_reader.join().unwrap_or_default();
    let mut stderr = err_reader.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\ntimed out after {timeout:?}").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

// === impl Proc ===

impl Proc {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    pub fn label(&self) -> &str {
        &self.inner.label
    }

    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// A handle that does not keep the process alive (for `Net`'s cleanup).
    pub(super) fn weak(&self) -> Weak<ProcInner> {
        Arc::downgrade(&self.inner)
    }

    /// True until the process has exited.
    pub fn is_running(&self) -> bool {
        let mut guard = self.lock();
        Self::reap(&mut guard).is_none()
    }

    /// Panics (naming the process and its exit status) if it has exited:
    /// waits call this so a crashed program fails the test at once.
    pub fn assert_running(&self) {
        let status = Self::reap(&mut self.lock());
        if let Some(status) = status {
            panic!("{} exited unexpectedly ({status})", self.inner.label);
        }
    }

    /// Sends SIGKILL to the process group and reaps the leader.
    pub fn kill(&self) {
        self.inner.kill();
    }

    /// Sends SIGTERM to the process itself (not its group): the graceful
    /// shutdown path of the program under test.
    pub fn term(&self) {
        let mut guard = self.lock();
        if Self::reap(&mut guard).is_none() {
            let _ = kill(Pid::from_raw(self.inner.pid as i32), Signal::SIGTERM);
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still
    /// running then.
    pub fn wait_exit(&self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = Self::reap(&mut self.lock()) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(REAP_INTERVAL);
        }
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.inner.log, lines)
    }

    fn lock(&self) -> MutexGuard<'_, (Child, Option<ExitStatus>)> {
        // A panic while holding the lock leaves the data usable.
        self.inner.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reap(guard: &mut MutexGuard<'_, (Child, Option<ExitStatus>)>) -> Option<ExitStatus> {
        if guard.1.is_none() {
            if let Ok(Some(status)) = guard.0.try_wait() {
                guard.1 = Some(status);
            }
        }
        guard.1
    }
}

// === impl ProcInner ===

impl ProcInner {
    /// SIGKILL to the group unless the leader was already reaped (then its
    /// pid may belong to someone else), and reap it.
    pub(super) fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if Proc::reap(&mut guard).is_none() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            if let Ok(status) = guard.0.wait() {
                guard.1 = Some(status);
            }
        }
    }
}

impl Drop for ProcInner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file, or a note saying it could not be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
