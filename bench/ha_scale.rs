//! The control plane's scale simulation (issue 17), driven by
//! bench/harness/ha_scale.py: against one running mesh-control (embedded
//! store or etcd) it registers `--instances` static instances across
//! `--services` services, opens `--watchers` watch streams with the
//! proxies' own client (`ControlClient::watch`, from the revision reached,
//! so no snapshot each), then makes `--changes` registrations one after
//! the other and times each from the request until every watcher has
//! read its event. Prints one JSON object; mesh-control's CPU and memory
//! come from /proc of `--pid`.
//!
//! In one process on purpose: 1000 watchers as 1000 sidecars would not fit
//! on this machine beside the control plane, and what is measured is the
//! control plane's fan-out, which sees 1000 TCP streams either way.

#![forbid(unsafe_code)]
#![allow(clippy::disallowed_types, clippy::unwrap_used)] // a bench driver: fail loudly

use clap::Parser;
use futures_util::stream::{self, StreamExt};
use mesh::control::client::ControlClient;
use mesh::model::{Health, RegisterRequest, WatchEvent};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// mesh-control's URL (http://, identity off).
    #[arg(long)]
    control: String,
    /// mesh-control's process id (CPU and memory from /proc).
    #[arg(long)]
    pid: u32,
    /// The store's process id (etcd), if any.
    #[arg(long)]
    store_pid: Option<u32>,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    #[arg(long, default_value_t = 500)]
    services: usize,
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    #[arg(long, default_value_t = 50)]
    changes: usize,
}

/// utime + stime of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

/// (VmRSS, VmHWM) of `pid`, in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn instance(i: usize) -> RegisterRequest {
    RegisterRequest {
        id: None,
        address: std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
        port: 8000,
        metadata: Default::default(),
        ttl: None,
        health: Health::Up,
        inbound_port: None,
        identity: None,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What a watcher read of one probe: (probe number, when, NDJSON bytes of
/// every event since the previous probe).
type Seen = (usize, Instant, usize);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let client = ControlClient::new(&args.control, None).unwrap();

    // 1. The registry: `instances` across `services`, 32 requests at once.
    let started = Instant::now();
    let failed = stream::iter(0..args.instances)
        .map(|i| {
            let client = client.clone();
            let service = format!("svc-{}", i % args.services);
            async move {
                let mut req = instance(i);
                req.id = Some(format!("i{i}"));
                client.register(&service, &req).await.is_err()
            }
        })
        .buffer_unordered(32)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "registrations failed");
    let populate_secs = started.elapsed().as_secs_f64();
    let (rss_populated, _) = memory_mb(args.pid);

    // 2. The watchers, from the revision reached.
    let since = client.status().await.unwrap().revision;
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let opened = Instant::now();
    let mut streams = Vec::with_capacity(args.watchers);
    for chunk in (0..args.watchers).collect::<Vec<_>>().chunks(50) {
        let opening = chunk.iter().map(|_| {
            let client = client.clone();
            async move { client.watch(since, Duration::from_secs(60), None).await }
        });
        for s in futures_util::future::join_all(opening).await {
            streams.push(s.unwrap());
        }
    }
    let open_secs = opened.elapsed().as_secs_f64();
    for mut s in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut bytes = 0;
            while let Ok(Some(event)) = s.next().await {
                if matches!(event, WatchEvent::Keepalive { .. }) {
                    continue;
                }
                bytes += serde_json::to_vec(&event).map_or(0, |v| v.len() + 1);
                if let WatchEvent::Upsert { instance, .. } = &event {
                    if let Some(n) = instance.id.strip_prefix("probe-") {
                        let n: usize = n.parse().unwrap();
                        let _ = tx.send((n, Instant::now(), std::mem::take(&mut bytes)));
                    }
                }
            }
        });
    }
    drop(tx);
    let (rss_watched, _) = memory_mb(args.pid);

    // 3. The changes, one at a time.
    let cpu_before = cpu_secs(args.pid);
    let store_cpu_before = args.store_pid.map(cpu_secs);
    let mut latencies: Vec<f64> = Vec::new();
    let mut per_change_p99: Vec<f64> = Vec::new();
    let mut bytes: Vec<usize> = Vec::new();
    let changes_started = Instant::now();
    for k in 0..args.changes {
        let service = format!("svc-{}", k % args.services);
        let mut req = instance(args.instances + k);
        req.id = Some(format!("probe-{k}"));
        let t0 = Instant::now();
        client.register(&service, &req).await.unwrap();
        let mut these = Vec::with_capacity(args.watchers);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while these.len() < args.watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((n, at, b))) if n == k => {
                    these.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                    bytes.push(b);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        assert_eq!(
            these.len(),
            args.watchers,
            "change {k}: only {} of {} watchers saw it within 10 s",
            these.len(),
            args.watchers
        );
        these.sort_by(f64::total_cmp);
        per_change_p99.push(percentile(&these, 99.0));
        latencies.extend(these);
    }
    let changes_secs = changes_started.elapsed().as_secs_f64();
    let cpu = cpu_secs(args.pid) - cpu_before;
    let store_cpu = args
        .store_pid
        .zip(store_cpu_before)
        .map(|(pid, before)| cpu_secs(pid) - before);
    latencies.sort_by(f64::total_cmp);
    per_change_p99.sort_by(f64::total_cmp);
    let (rss, hwm) = memory_mb(args.pid);
    let store_mem = args.store_pid.map(memory_mb);
    let out = serde_json::json!({
        "watchers": args.watchers,
        "services": args.services,
        "instances": args.instances,
        "changes": args.changes,
        "populate_secs": populate_secs,
        "open_watchers_secs": open_secs,
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last(),
            "worst_change_p99": per_change_p99.last(),
        },
        "control_cpu_ms_per_change": cpu * 1000.0 / args.changes as f64,
        "control_cpu_share": cpu / changes_secs,
        "store_cpu_ms_per_change": store_cpu.map(|c| c * 1000.0 / args.changes as f64),
        "control_rss_mb": {"populated": rss_populated, "watched": rss_watched, "end": rss, "peak": hwm},
        "store_rss_mb": store_mem.map(|m| m.0),
        "bytes_per_watcher_per_change": bytes.iter().sum::<usize>() as f64 / bytes.len().max(1) as f64,
    });
    println!("{out}");
}
