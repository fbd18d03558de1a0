//! The sidecar's place in its pod's lifecycle, beyond serving: `mesh-proxy
//! wait` (block until the local proxy is ready: for a legacy sidecar's
//! `postStart`, and for scripts), and `--exit-when-app-exits` (a Job's
//! sidecar stops once the app is gone, in pods without native sidecars).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often readiness, the app's port or its processes are looked at.
const EVERY: Duration = Duration::from_millis(200);

/// What `--exit-when-app-exits` watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppWatch {
    /// The app's port (`--app-port`): once it has accepted a connection,
    /// the app is gone when it stops accepting.
    Port,
    /// The pod's shared PID namespace (`shareProcessNamespace: true`):
    /// the app is gone when no process but PID 1 and the proxy's own is left.
    Process,
}

/// Flags of `mesh-proxy wait`.
#[derive(clap::Args, Debug, Clone)]
pub struct WaitArgs {
    /// The proxy's admin listener, whose `/ready` is polled.
    #[arg(long, env = "MESH_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "2m", value_parser = crate::model::parse_duration)]
    pub timeout: Duration,
}

/// `mesh-proxy wait`: `Ok` once `/ready` answers 200, `Err` saying what it
/// last saw when the timeout passes first.
pub async fn wait_ready(args: &WaitArgs) -> Result<Duration, String> {
    let mut admin = args.admin;
    if admin.ip().is_unspecified() {
        admin.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let url = format!("http://{admin}/ready");
    let started = Instant::now();
    let deadline = started + args.timeout;
    loop {
        let asked = tokio::time::timeout(
            Duration::from_secs(1),
            crate::net::local_get(admin, "/ready", "mesh-proxy-wait"),
        )
        .await;
        let last = match asked {
            Ok(Ok(http::StatusCode::OK)) => return Ok(started.elapsed()),
            Ok(Ok(status)) => format!("{url} answered {status}"),
            Ok(Err(e)) => format!("{url}: {e}"),
            Err(_) => format!("{url}: no answer within 1s"),
        };
        if Instant::now() + EVERY > deadline {
            return Err(format!("not ready after {:?}: {last}", args.timeout));
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// Watches the app and cancels `shutdown` once it has gone (after having
/// been seen at least once), so the proxy stops as if sent SIGTERM.
pub async fn exit_when_app_exits(
    watched: AppWatch,
    app_port: Option<u16>,
    shutdown: CancellationToken,
) {
    let mut seen = false;
    let mut missing = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let alive = match (watched, app_port) {
            (AppWatch::Port, Some(port)) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                crate::net::connect(addr, crate::net::LOOPBACK)
                    .await
                    .is_ok()
            }
            // Checked at startup (the flag requires --app-port).
            (AppWatch::Port, None) => return,
            (AppWatch::Process, _) => {
                match tokio::task::spawn_blocking(|| {
                    other_processes(std::path::Path::new("/proc"), std::process::id())
                })
                .await
                {
                    Ok(n) => n > 0,
                    Err(_) => return,
                }
            }
        };
        if alive && !seen {
            tracing::info!(watching = ?watched, "the app is up; the proxy stops when it exits");
        }
        seen |= alive;
        // Two misses in a row: a port briefly refusing during a restart
        // of its listener is not an exit.
        missing = if alive { 0 } else { missing + 1 };
        if seen && missing >= 2 {
            tracing::info!(watching = ?watched, "the app exited; shutting down");
            shutdown.cancel();
            return;
        }
    }
}

/// Processes in this PID namespace other than PID 1 (the pod's pause or
/// init), `own`, zombies, and other `mesh-proxy` processes (a `postStart`
/// `mesh-proxy wait` is not the app).
fn other_processes(proc: &std::path::Path, own: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1 && pid != own)
        .filter(|pid| {
            let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat"))
                .unwrap_or_default();
            // `pid (comm) S ...`: comm may hold spaces and parentheses, so
            // the state is what follows the last ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let state = rest.trim_start().chars().next();
            !matches!(state, Some('Z' | 'X') | None) && comm != "mesh-proxy"
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(entries: &[(u32, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, stat) in entries {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("stat"), stat).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn the_app_is_every_live_process_but_init_the_proxy_and_its_helpers() {
        let proc = fake_proc(&[
            (1, "1 (pause) S 0 1"),
            (7, "7 (mesh-proxy) S 0 7"),
            (9, "9 (mesh-proxy) S 0 9"),
            (12, "12 (python3 (x)) R 1 12"),
            (13, "13 (sh) Z 1 13"),
        ]);
        assert_eq!(other_processes(proc.path(), 7), 1, "python3 only");
        let gone = fake_proc(&[(1, "1 (catatonit) S 0 1"), (7, "7 (mesh-proxy) S 0 7")]);
        assert_eq!(other_processes(gone.path(), 7), 0);
    }

    #[tokio::test]
    async fn port_watch_stops_the_proxy_once_the_app_stops_listening() {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = app.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(exit_when_app_exits(
            AppWatch::Port,
            Some(port),
            shutdown.clone(),
        ));
        // Up for a few looks: nothing happens.
        tokio::time::sleep(EVERY * 4).await;
        assert!(!shutdown.is_cancelled());
        drop(app);
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("the watch ends once the port is closed")
            .unwrap();
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn wait_gives_up_naming_what_it_saw() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = silent.local_addr().unwrap();
        drop(silent);
        let args = WaitArgs {
            admin,
            timeout: Duration::from_millis(500),
        };
        let err = wait_ready(&args).await.unwrap_err();
        assert!(err.contains("not ready after 500ms"), "{err}");
        assert!(err.contains("/ready"), "{err}");
    }
}
