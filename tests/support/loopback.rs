//! Real processes on loopback, no root: mesh-control, sidecars in explicit
//! mode, fault-server apps, and addresses that refuse connections.
//!
//! Every listener binds port 0 and the test reads the port the kernel
//! picked from the process itself (the daemons' JSON log line, the fault
//! server's `listening` line), so no port is ever "free a moment ago" and
//! taken by someone else before use. A dead endpoint is a socket bound but
//! never listening, held by the test: connects to it are refused for as
//! long as the test runs. When a test fails, the tail of every log is
//! printed and the directory kept.

use super::bins::{MESH_CONTROL, MESH_PROXY};
use super::fault::{server_args, Fault, Stats};
use super::proc::{command, run_with_timeout, spawn_logged, tail, Proc};
use super::{secs, wait_for};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;
/// How long a daemon may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One test's mesh on loopback. See the module docs.
pub struct Loopback {
    /// Logs, data dirs, caches; kept when the test fails.
    dir: PathBuf,
    pub control: SocketAddr,
    control_proc: Option<Proc>,
    /// Every log written, for the failure dump.
    logs: std::sync::Mutex<Vec<PathBuf>>,
    /// Workload identity on (mTLS, tokens, TLS to mesh-control).
    identity: bool,
    /// Set by a test that runs its own control-plane replicas: the
    /// `--control` every sidecar and mesh-ctl is given instead.
    pub control_urls: Option<String>,
}

/// In each test's directory: one `PID<tab>ARGV` line per process started
/// (arguments joined by [`ARG_SEP`]).
const PIDS_FILE: &str = "pids";
const ARG_SEP: &str = "\u{1f}";

/// Stops the processes that an earlier test process started and could not
/// stop because it died first (killed by a CI timeout, Ctrl-C: the children
/// run in their own process groups, so the signal did not reach them).
/// Only a pid that still runs the very command line it was started with
/// is killed (a reused pid runs something else);
/// the directory is kept (it may be a failed test's, kept for reading).
fn stop_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix("mesh-lo-")
            .and_then(|rest| rest.rsplit('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue; // a test process still running
        }
        let pids = entry.path().join(PIDS_FILE);
        let Ok(text) = std::fs::read_to_string(&pids) else {
            continue;
        };
        for line in text.lines() {
            let Some((pid, argv)) = line.split_once('\t') else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let running: Vec<String> = String::from_utf8_lossy(&cmdline)
                .split('\0')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            let program = argv.split(ARG_SEP).next().unwrap_or_default();
            if !running.is_empty() && running.join(ARG_SEP) == argv {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                eprintln!("stopped {program} (pid {pid}), left behind by test process {owner}");
            }
        }
        let _ = std::fs::remove_file(pids);
    }
}

/// A sidecar and the addresses it bound.
pub struct Sidecar {
    pub proc: Proc,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
}

/// A `mesh-proxy gateway` and the addresses it bound.
pub struct Gateway {
    pub proc: Proc,
    /// `--listen`: where outside clients connect.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    /// The gateway's `/metrics`.
    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").expect("GET /metrics")
    }

    /// Waits until the gateway holds `n` routes (its `/state`).
    pub fn wait_routes(&self, n: usize) {
        wait_for(&format!("{n} routes at the gateway"), secs(10), || {
            self.proc.assert_running();
            let text = get(self.admin, "/state")?;
            let state: Value = serde_json::from_str(&text).ok()?;
            (state["gateway"]["routes"].as_array()?.len() == n).then_some(())
        });
    }
}

/// A fault-server app and where it listens.
pub struct App {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// A loopback address that refuses every connection (see the module docs).
pub struct Refusing {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

pub fn refusing() -> Refusing {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    Refusing {
        _socket: socket,
        addr,
    }
}

// === impl Loopback ===

impl Loopback {
    /// A fresh directory and mesh-control on a port of its own.
    pub fn start(name: &str) -> Loopback {
        Loopback::open(name, false)
    }

    /// Like [`Loopback::start`], with workload identity on: mesh-control
    /// serves TLS, every sidecar gets a bootstrap token for its service
    /// (`--service`, else its label) and the trust bundle.
    pub fn secure(name: &str) -> Loopback {
        Loopback::open(name, true)
    }

    /// A fresh directory and no control plane: the test starts its own
    /// (replicas over etcd) and sets [`Loopback::control_urls`]. The first
    /// replica's data dir should be [`Loopback::control_data`], where the
    /// bundle and admin token are looked for.
    pub fn bare(name: &str, identity: bool) -> Loopback {
        Loopback::open_with(name, identity, false)
    }

    /// The data dir whose `identity/` the helpers read.
    pub fn control_data(&self) -> PathBuf {
        self.dir.join("control-data")
    }

    fn open(name: &str, identity: bool) -> Loopback {
        Loopback::open_with(name, identity, true)
    }

    fn open_with(name: &str, identity: bool, control: bool) -> Loopback {
        static CLEANED: std::sync::Once = std::sync::Once::new();
        CLEANED.call_once(stop_leftovers);
        let dir = std::env::temp_dir().join(format!("mesh-lo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let mut lo = Loopback {
            dir,
            control: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_proc: None,
            logs: Default::default(),
            identity,
            control_urls: None,
        };
        if control {
            lo.start_control(&[]);
        }
        lo
    }

    /// mesh-control's trust bundle (identity on).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("control-data/identity/bundle.pem")
    }

    /// The admin token's file (identity on).
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("control-data/identity/admin.token")
    }

    /// What mesh-ctl needs to reach this control plane as an operator.
    fn ctl_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("MESH_CONTROL", self.control_url())];
        if self.identity {
            env.push(("MESH_IDENTITY", "on".into()));
            env.push(("MESH_TRUST_BUNDLE", self.bundle().display().to_string()));
            env.push(("MESH_TOKEN_FILE", self.admin_token().display().to_string()));
        }
        env
    }

    /// Runs mesh-ctl with `args` as an operator; its output.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let env = self.ctl_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_with_timeout(command(super::bins::mesh_ctl(), args, &env), secs(10))
    }

    /// A bootstrap token for `service`, in a file of its own.
    pub fn token(&self, service: &str) -> PathBuf {
        let out = self.ctl(&["token", "create", "--service", service]);
        assert!(out.status.success(), "mesh-ctl token create: {out:?}");
        let file = self.dir.join(format!("{service}.token"));
        std::fs::write(&file, &out.stdout).expect("write token");
        file
    }

    /// curl flags that reach mesh-control as an operator.
    fn curl_auth(&self) -> Vec<String> {
        if !self.identity {
            return Vec::new();
        }
        let token = std::fs::read_to_string(self.admin_token()).expect("admin token");
        vec![
            "--cacert".into(),
            self.bundle().display().to_string(),
            "-H".into(),
            format!("authorization: Bearer {}", token.trim()),
        ]
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn control_url(&self) -> String {
        if let Some(urls) = &self.control_urls {
            return urls.clone();
        }
        match self.identity {
            true => format!("https://{}", self.control),
            false => format!("http://{}", self.control),
        }
    }

    /// (Re)starts mesh-control over the same data dir, on its current
    /// port (the first time: one the kernel picks), with `extra` flags.
    pub fn start_control(&mut self, extra: &[&str]) {
        let data = self.dir.join("control-data");
        let listen = self.control.to_string();
        let mut args = vec!["--listen", &listen, "--data-dir", data.to_str().unwrap()];
        args.extend_from_slice(extra);
        let n = self.logs.lock().map(|l| l.len()).unwrap_or(0);
        let proc = self.spawn(&format!("control-{n}"), MESH_CONTROL, &args);
        let ev = log_event(&proc, "mesh-control serving", START_TIMEOUT);
        self.control = addr_field(&ev, "listen");
        self.control_proc = Some(proc);
    }

    /// Stops mesh-control (SIGTERM) and waits for it to exit.
    pub fn stop_control(&mut self) {
        if let Some(p) = self.control_proc.take() {
            p.term();
            p.wait_exit(secs(15))
                .expect("mesh-control exits on SIGTERM");
        }
    }

    /// A sidecar in explicit mode on ports the kernel picks; `extra` adds
    /// flags (`--service`, `--app-port`, ... : then `--inbound` too).
    pub fn sidecar(&self, label: &str, extra: &[&str]) -> Sidecar {
        let control = self.control_url();
        let cache = self.dir.join(format!("{label}-cache"));
        let given = |flag: &str| {
            extra
                .iter()
                .position(|a| *a == flag)
                .and_then(|i| extra.get(i + 1))
        };
        let (bundle, token) = match self.identity {
            true => {
                let service = given("--service").copied().unwrap_or(label);
                // A restart from the cache needs no token (nor the
                // control plane): the certificate is there.
                let cached = cache.join("identity/cert.pem").exists();
                let token = match given("--token-file") {
                    Some(_) => None,
                    None if cached => None,
                    None => Some(self.token(service)),
                };
                (Some(self.bundle()), token)
            }
            false => (None, None),
        };
        let (bundle, token) = (
            bundle.map(|b| b.display().to_string()),
            token.map(|t| t.display().to_string()),
        );
        let mut args = vec![
            "--control",
            &control,
            "--outbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--mark",
            "0",
        ];
        if given("--inbound").is_none() {
            args.extend(["--inbound", "127.0.0.1:0"]);
        }
        if let Some(b) = &bundle {
            args.extend(["--trust-bundle", b.as_str()]);
        }
        if let Some(t) = &token {
            args.extend(["--token-file", t.as_str()]);
        }
        args.extend_from_slice(extra);
        let proc = self.spawn(label, MESH_PROXY, &args);
        let ev = log_event(&proc, "mesh-proxy running", START_TIMEOUT);
        let inbound = ev["inbound"].as_str().and_then(|s| s.parse().ok());
        let sidecar = Sidecar {
            outbound: addr_field(&ev, "outbound"),
            admin: addr_field(&ev, "admin"),
            inbound,
            proc,
        };
        wait_for(&format!("{label} /ready"), secs(10), || {
            sidecar.proc.assert_running();
            get(sidecar.admin, "/ready")
        });
        sidecar
    }

    /// `mesh-proxy gateway` on ports the kernel picks; `extra` adds flags
    /// (`--tls-cert`, `--redis`, ...). Waits until it is ready.
    pub fn gateway(&self, label: &str, extra: &[&str]) -> Gateway {
        let control = self.control_url();
        let cache = self.dir.join(format!("{label}-cache"));
        let token = self.identity.then(|| self.token("gateway"));
        let bundle = self.bundle().display().to_string();
        let token = token.map(|t| t.display().to_string());
        let mut args = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--control",
            &control,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--mark",
            "0",
            "--service",
            "gateway",
        ];
        if let Some(t) = &token {
            args.extend([
                "--trust-bundle",
                bundle.as_str(),
                "--token-file",
                t.as_str(),
            ]);
        }
        args.extend_from_slice(extra);
        let proc = self.spawn(label, MESH_PROXY, &args);
        let ev = log_event(&proc, "mesh-proxy gateway running", START_TIMEOUT);
        let gw = Gateway {
            listen: addr_field(&ev, "listen"),
            admin: addr_field(&ev, "admin"),
            proc,
        };
        wait_for(&format!("{label} /ready"), secs(10), || {
            gw.proc.assert_running();
            get(gw.admin, "/ready")
        });
        gw
    }

    /// Applies YAML with mesh-ctl; its output, whatever the exit code.
    pub fn apply_output(&self, yaml: &str) -> std::process::Output {
        let n = self.logs.lock().map(|l| l.len()).unwrap_or(0);
        let file = self.dir.join(format!("doc-{n}-{}.yaml", fastrand::u32(..)));
        std::fs::write(&file, yaml).expect("write document");
        self.ctl(&["apply", "-f", file.to_str().unwrap()])
    }

    /// The fault server as an app named `name`, on a port it picks.
    pub fn app(&self, name: &str, initial: &Fault) -> App {
        let args = server_args("127.0.0.1", 0, name, initial);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = self.spawn(name, "python3", &args);
        let addr = wait_for(&format!("{name} to listen"), START_TIMEOUT, || {
            proc.assert_running();
            let log = std::fs::read_to_string(proc.log_path()).ok()?;
            log.lines()
                .find_map(|l| l.strip_prefix("listening "))
                .and_then(|a| a.trim().parse().ok())
        });
        App { proc, addr }
    }

    /// Registers an instance over the API; `json` is the request body.
    pub fn register(&self, service: &str, json: &str) {
        let url = format!("{}/v1/services/{service}/instances", self.control_url());
        let auth = self.curl_auth();
        let mut args = vec![
            "-sf",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            json,
            &url,
        ];
        args.extend(auth.iter().map(String::as_str));
        let out = run_with_timeout(command("curl", &args, &[]), secs(5));
        assert!(out.status.success(), "register {service} {json}: {out:?}");
    }

    /// Registers `addr` as a static instance of `service`.
    pub fn register_addr(&self, service: &str, addr: SocketAddr) {
        let json = format!(r#"{{"address":"{}","port":{}}}"#, addr.ip(), addr.port());
        self.register(service, &json);
    }

    /// Applies a policy document with mesh-ctl; panics unless it is taken.
    pub fn apply(&self, yaml: &str) {
        let n = self.logs.lock().map(|l| l.len()).unwrap_or(0);
        let file = self.dir.join(format!("policy-{n}.yaml"));
        std::fs::write(&file, yaml).expect("write policy");
        let out = self.ctl(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "mesh-ctl apply:\n{yaml}\n{out:?}");
    }

    /// Any program as part of this test's mesh (a peer the test needs),
    /// logged and stopped with the rest.
    pub fn spawn(&self, label: &str, program: &str, args: &[&str]) -> Proc {
        let log = self.dir.join(format!("{label}.log"));
        if let Ok(mut logs) = self.logs.lock() {
            logs.push(log.clone());
        }
        let identity = if self.identity { "on" } else { "off" };
        let envs = [("MESH_LOG_FORMAT", "json"), ("MESH_IDENTITY", identity)];
        let proc = spawn_logged(command(program, args, &envs), label.to_string(), log);
        // For `stop_leftovers`, should this test process die before its
        // `Proc`s are dropped.
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(PIDS_FILE))
        {
            let argv: Vec<&str> = std::iter::once(program)
                .chain(args.iter().copied())
                .collect();
            let _ = writeln!(f, "{}\t{}", proc.pid(), argv.join(ARG_SEP));
        }
        proc
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            for log in self.logs.lock().map(|l| l.clone()).unwrap_or_default() {
                eprintln!(
                    "----- {} -----\n{}",
                    log.display(),
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            eprintln!("----- test files kept in {} -----", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// === impl Sidecar ===

impl Sidecar {
    /// The sidecar's `/state`.
    pub fn state(&self) -> Value {
        let text = get(self.admin, "/state").expect("GET /state");
        serde_json::from_str(&text).expect("/state is JSON")
    }

    /// The sidecar's `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").expect("GET /metrics")
    }

    /// Waits until the sidecar routes `service` to `n` ready endpoints.
    pub fn wait_ready_endpoints(&self, service: &str, n: usize) {
        wait_for(
            &format!("{} ready endpoints of {service}", n),
            secs(10),
            || {
                let state = self.state();
                let svc = state["registry"]["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == service)?
                    .clone();
                let ready = svc["endpoints"]
                    .as_array()?
                    .iter()
                    .filter(|e| e["state"] == "ready")
                    .count();
                (ready == n).then_some(())
            },
        );
    }
}

// === impl App ===

impl App {
    /// The app's own counters, asked directly (not through the mesh).
    pub fn stats(&self) -> Stats {
        let text = get(self.addr, "/_stats").expect("GET /_stats");
        serde_json::from_str(&text).expect("/_stats JSON")
    }

    /// Changes the app's faults at run time.
    pub fn set_fault(&self, fault: &Fault) {
        let url = format!("http://{}/_fault", self.addr);
        let body = serde_json::to_string(fault).expect("fault JSON");
        let args = ["-sf", "-X", "POST", "-d", &body, &url];
        let out = run_with_timeout(command("curl", &args, &[]), secs(5));
        assert!(out.status.success(), "POST /_fault {body}: {out:?}");
    }
}

/// A response as curl saw it through a sidecar.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -x` through `sidecar`'s outbound listener (explicit mode).
pub fn call(sidecar: &Sidecar, url: &str, extra: &[&str]) -> Answer {
    let proxy = format!("http://{}", sidecar.outbound);
    let mut args = vec!["-s", "-i", "--max-time", "10", "-x", &proxy];
    args.extend_from_slice(extra);
    args.push(url);
    let out = run_with_timeout(command("curl", &args, &[]), secs(15));
    parse_answer(&String::from_utf8_lossy(&out.stdout))
}

/// A raw `curl -i` response: the last head (after a 100 Continue, or a
/// CONNECT's 200 with the tunnelled response behind it) and the body.
pub fn parse_answer(text: &str) -> Answer {
    let mut rest = text;
    let (mut head, mut body) = ("", "");
    while let Some((h, b)) = rest.split_once("\r\n\r\n") {
        head = h;
        body = b;
        if !b.starts_with("HTTP/") {
            break;
        }
        rest = b;
    }
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `GET http://addr/path` directly; the body when it answered 2xx.
pub fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let url = format!("http://{addr}{path}");
    let out = run_with_timeout(
        command("curl", &["-sf", "--max-time", "2", &url], &[]),
        secs(5),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for the JSON log line whose message is `message`; returns it.
pub fn log_event(proc: &Proc, message: &str, within: Duration) -> Value {
    wait_for(
        &format!("{} to log {message:?}", proc.label()),
        within,
        || {
            proc.assert_running();
            let log = std::fs::read_to_string(proc.log_path()).ok()?;
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == message)
        },
    )
}

pub fn addr_field(ev: &Value, field: &str) -> SocketAddr {
    ev[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not an address in {ev}"))
}
