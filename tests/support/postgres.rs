//! A throwaway PostgreSQL cluster for the protocol tests: `initdb` into
//! the test's temp dir, run as the `postgres` user (the server refuses to
//! run as root), trust authentication from anywhere, listening on all
//! addresses of the pod it is started in.
//!
//! Usage: `let pg = Postgres::init(&net, "db-1")?;` then start
//! `pg.server_argv(5432)` in a pod (e.g. as a `ServerSpec`'s app). Dropping
//! the `Postgres` asks the postmaster for a fast shutdown, so no shared
//! memory or backend outlives the test (backends run in their own sessions,
//! out of reach of the harness's process-group kill).

use super::proc::{command, run_with_timeout};
use super::{path, poll, Net};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Debian installs the server binaries, one dir per major version.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// Bounds initdb (well under a second on a quiet machine).
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the harness kills the rest.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// An initialized cluster: binaries, its directory and data directory.
pub struct Postgres {
    bin: PathBuf,
    /// Owned by `postgres`; holds `data/` and the unix socket.
    dir: PathBuf,
    data: PathBuf,
}

impl Postgres {
    /// The newest `/usr/lib/postgresql/<v>/bin` holding `initdb`, if any.
    pub fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_PG_ROOT)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    /// Runs initdb as `postgres` in a new subdir `<name>-pg` of the net's
    /// dir and opens the cluster to every host (trust: test-only data).
    pub fn init(net: &Net, name: &str) -> Result<Postgres, String> {
        let bin = Postgres::bin_dir().ok_or(format!("no {DEBIAN_PG_ROOT}/*/bin/initdb"))?;
        // The postgres user must be able to traverse down to its dir.
        std::fs::set_permissions(net.dir(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", net.dir().display()))?;
        let dir = net.dir().join(format!("{name}-pg"));
        let data = dir.join("data");
        let mkdir = ["-d", "-o", "postgres", "-g", "postgres", "-m", "0700"];
        let dir_arg = path(&dir);
        run_ok(
            "install",
            &[&mkdir[..], &[dir_arg.as_str()]].concat(),
            net.dir(),
        )?;
        let initdb = path(&bin.join("initdb"));
        let data_arg = path(&data);
        let args = [
            "-u",
            "postgres",
            "--",
            &initdb,
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E",
            "UTF8",
        ];
        run_ok("runuser", &args, net.dir())?;
        let hba = data.join("pg_hba.conf");
        let mut conf = std::fs::read_to_string(&hba).map_err(|e| format!("read pg_hba: {e}"))?;
        conf.push_str("host all all 0.0.0.0/0 trust\n");
        std::fs::write(&hba, conf).map_err(|e| format!("write pg_hba: {e}"))?;
        Ok(Postgres { bin, dir, data })
    }

    /// The command line that runs the server on `port` (all addresses,
    /// socket in the cluster's dir, no fsync), as `postgres`.
    pub fn server_argv(&self, port: u16) -> Vec<String> {
        let postgres = path(&self.bin.join("postgres"));
        let socket_dir = format!("unix_socket_directories={}", path(&self.dir));
        let port = format!("port={port}");
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            &postgres,
            "-D",
            &path(&self.data),
            "-c",
            "listen_addresses=*",
            "-c",
            &port,
            "-c",
            &socket_dir,
            "-c",
            "fsync=off",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The running postmaster's pid, from `postmaster.pid`, if that process
    /// is still a postgres (a stale file must not make us signal another).
    fn postmaster(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("postgres")
            .then_some(pid)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster() else {
            return;
        };
        // SIGINT: fast shutdown (clients disconnected, shared memory freed);
        // the postmaster removes its pid file last.
        if kill(Pid::from_raw(pid), Signal::SIGINT).is_ok() {
            let pid_file = self.data.join("postmaster.pid");
            let gone = poll(SHUTDOWN_TIMEOUT, || (!pid_file.exists()).then_some(()));
            if gone.is_none() {
                eprintln!("postgres {pid} did not shut down within {SHUTDOWN_TIMEOUT:?}");
            }
        }
    }
}

/// Runs a setup command in `cwd` (the postgres user needs a cwd it may
/// enter, or initdb complains).
fn run_ok(program: &str, args: &[&str], cwd: &Path) -> Result<(), String> {
    let mut cmd = command(program, args, &[]);
    cmd.current_dir(cwd);
    let out = run_with_timeout(cmd, INITDB_TIMEOUT);
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}
