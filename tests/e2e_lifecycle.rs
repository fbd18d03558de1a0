//! End-to-end: a sidecar's stop never drops a request. In network
//! namespaces with unmodified apps (python3's http.server, curl, load.py):
//!
//! | story | pods | action | expected |
//! |---|---|---|---|
//! | drain_acknowledged_by_1 | control, hello-1/2, 1 client | SIGTERM hello-2's proxy | its log: deregistered → removal applied by all 3 watching proxies → draining |
//! | drain_acknowledged_by_10 | control, hello-1/2, 10 clients | the same | applied by all 12 |
//! | a_frozen_watcher_holds_the_drain_until_its_timeout | control, hello-1/2, 1 client (SIGSTOPped) | SIGTERM hello-2's proxy | waits `--drain-timeout`, log names the frozen proxy |
//! | a_vanished_watcher_is_dropped_and_not_waited_for | control, hello-1/2, 1 client (all its packets dropped) | wait, then SIGTERM hello-2's proxy | mesh-control drops it within ~15 s; the drain waits for 2, not 3 |
//! | rolling_replacement_loses_nothing | control, hello-1..4, client at ~100 rps | hello-3 up, hello-1 stopped, hello-4 up, hello-2 stopped | every request 200 |
//!
//! Run: `cargo test --test e2e_lifecycle -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::bins::MESH_PROXY;
use support::fault::{Load, LOAD};
use support::mesh::{control_pod, intercept, sidecar_args, wait_ready, ControlPod, Hello};
use support::{secs, strs, wait_for, Net, Pod, Proc};

fn control(net: &Net) -> ControlPod {
    control_pod(net, &["--sweep-interval", "200ms"])
}

/// A client-only pod: interception and a sidecar, no app.
fn client(net: &Net, ctrl: &ControlPod, name: &str) -> (Pod, Proc) {
    let pod = net.pod(name);
    intercept(&pod);
    let cache = net.subdir(&format!("{name}-cache"));
    let proxy = pod.spawn(MESH_PROXY, &strs(&sidecar_args(&ctrl.url, &cache)), &[]);
    wait_ready(&pod, &proxy, secs(15));
    (pod, proxy)
}

/// Waits until `pod`'s proxy routes `hello` to exactly `n` endpoints.
fn wait_endpoints(pod: &Pod, n: usize) {
    wait_for(
        &format!("{} to see {n} hello endpoints", pod.name()),
        secs(15),
        || {
            let (status, body) = pod.curl("http://127.0.0.1:15000/state", &[]);
            if status != 200 {
                return None;
            }
            let state: Value = serde_json::from_str(&body).ok()?;
            let services = state["registry"]["services"].as_array()?;
            let hello = services.iter().find(|s| s["name"] == "hello")?;
            (hello["endpoints"].as_array()?.len() == n).then_some(())
        },
    );
}

/// SIGTERM to a sidecar; how long it took to exit 0.
fn stop(proxy: &Proc) -> Duration {
    let stopped = Instant::now();
    proxy.term();
    let status = proxy
        .wait_exit(secs(30))
        .unwrap_or_else(|| panic!("{} exits", proxy.label()));
    assert!(status.success(), "{}: {status}", proxy.label());
    stopped.elapsed()
}

/// The sidecar's log lines that tell the drain, with their offsets.
struct DrainLog {
    text: String,
}

impl DrainLog {
    fn of(proc: &Proc) -> DrainLog {
        DrainLog {
            text: std::fs::read_to_string(proc.log_path()).unwrap(),
        }
    }

    /// Byte offset of the first line containing `what`.
    fn at(&self, what: &str) -> usize {
        self.text
            .find(what)
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{}", self.text))
    }

    /// `key=N` on the line containing `what`.
    fn field(&self, what: &str, key: &str) -> u64 {
        let line = self.text[self.at(what)..].lines().next().unwrap();
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
        value.trim_matches('"').parse().unwrap()
    }
}

/// SIGTERM to hello-2's proxy: it must wait for all `clients` client
/// proxies, hello-1's and its own, before it drains.
fn drain_acknowledged_by(clients: usize) {
    let net = Net::new(&format!("drain{clients}"));
    let ctrl = control(&net);
    let _hello1 = Hello::start(&net, "hello-1", &ctrl.url);
    let hello2 = Hello::start(&net, "hello-2", &ctrl.url);
    let pods: Vec<(Pod, Proc)> = (0..clients)
        .map(|i| client(&net, &ctrl, &format!("client-{i}")))
        .collect();
    let watching = clients as u64 + 2;
    ctrl.wait_watching(watching);
    for (pod, _) in &pods {
        wait_endpoints(pod, 2);
    }
    let took = stop(&hello2.proxy);
    let log = DrainLog::of(&hello2.proxy);
    let applied = "removal applied by every watching proxy";
    assert!(log.at("deregistered") < log.at(applied), "{}", log.text);
    assert!(log.at(applied) < log.at("draining"), "{}", log.text);
    assert_eq!(log.field(applied, "proxies"), watching, "{}", log.text);
    let waited = log.field(applied, "waited_ms");
    println!(
        "drain with {clients} client proxies: removal applied by all {watching} watching proxies in {waited} ms; SIGTERM to exit {} ms",
        took.as_millis()
    );
    assert!(waited < 2000, "acknowledgements took {waited} ms");
    for (pod, _) in &pods {
        wait_endpoints(pod, 1);
    }
}

fn drain_acknowledged_by_1() {
    drain_acknowledged_by(1);
}

fn drain_acknowledged_by_10() {
    drain_acknowledged_by(10);
}

/// A watcher that cannot apply (SIGSTOPped) holds the drain until the
/// drain timeout, and the log says who.
fn a_frozen_watcher_holds_the_drain_until_its_timeout() {
    let net = Net::new("frozen");
    let ctrl = control(&net);
    let _hello1 = Hello::start(&net, "hello-1", &ctrl.url);
    let hello2 = Hello::start_with(&net, "hello-2", &ctrl.url, &["--drain-timeout", "2s"]);
    let (pod, proxy) = client(&net, &ctrl, "client");
    ctrl.wait_watching(3);
    wait_endpoints(&pod, 2);
    let list = ctrl.proxies();
    let frozen = list["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == pod.ip().to_string())
        .and_then(|p| p["proxy"].as_str())
        .unwrap()
        .to_string();
    let signal = |sig: &str| {
        let out = std::process::Command::new("kill")
            .args([sig, &proxy.pid().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "kill {sig}: {out:?}");
    };
    signal("-STOP");
    let took = stop(&hello2.proxy);
    signal("-CONT");
    let log = DrainLog::of(&hello2.proxy);
    let timeout = log.at("drain timeout");
    assert!(
        log.text[timeout..]
            .lines()
            .next()
            .unwrap()
            .contains(&frozen),
        "{}",
        log.text
    );
    assert!(timeout < log.at("draining"), "{}", log.text);
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}, before the drain timeout"
    );
    println!(
        "a frozen watcher held the drain {} ms (timeout 2 s)",
        took.as_millis()
    );
    // Thawed, it catches up.
    wait_endpoints(&pod, 1);
}

/// A watcher whose pod vanished without closing its connection (every
/// packet dropped) is dropped by mesh-control within its dead-peer bound,
/// so the next drain does not wait for it.
fn a_vanished_watcher_is_dropped_and_not_waited_for() {
    let net = Net::new("vanish");
    let ctrl = control(&net);
    let _hello1 = Hello::start(&net, "hello-1", &ctrl.url);
    let hello2 = Hello::start(&net, "hello-2", &ctrl.url);
    let (pod, _proxy) = client(&net, &ctrl, "client");
    ctrl.wait_watching(3);
    let cut = Instant::now();
    for chain in ["INPUT", "OUTPUT"] {
        pod.run_ok("iptables", &["-I", chain, "-j", "DROP"]);
    }
    // Keep-alive lines every 5 s, unacknowledged for 10 s: gone by ~15 s.
    wait_for(
        "mesh-control to drop the vanished watcher",
        secs(30),
        || (ctrl.proxies()["watching"].as_u64() == Some(2)).then_some(()),
    );
    let dropped = cut.elapsed();
    stop(&hello2.proxy);
    let log = DrainLog::of(&hello2.proxy);
    let applied = "removal applied by every watching proxy";
    assert_eq!(log.field(applied, "proxies"), 2, "{}", log.text);
    println!(
        "a vanished watcher was dropped {} ms after its packets stopped; the next drain waited {} ms",
        dropped.as_millis(),
        log.field(applied, "waited_ms")
    );
    for chain in ["INPUT", "OUTPUT"] {
        pod.run_ok("iptables", &["-D", chain, "-j", "DROP"]);
    }
    // Back on the network, it reconnects and learns the removal.
    wait_endpoints(&pod, 1);
}

/// All instances replaced one by one (new up, old SIGTERMed) under a
/// steady load: not one request fails.
fn rolling_replacement_loses_nothing() {
    let net = Net::new("roll");
    let ctrl = control(&net);
    let hello1 = Hello::start(&net, "hello-1", &ctrl.url);
    let hello2 = Hello::start(&net, "hello-2", &ctrl.url);
    let (pod, _proxy) = client(&net, &ctrl, "client");
    wait_endpoints(&pod, 2);
    let args = [
        "-u",
        LOAD,
        "--url",
        "http://hello.mesh/name",
        "--requests",
        "3000",
        "--concurrency",
        "4",
        "--duration",
        "14",
        "--timeout",
        "5",
        "--interval-ms",
        "40",
    ];
    let started = Instant::now();
    let mut fresh = Vec::new();
    let (load, order) = std::thread::scope(|s| {
        let run = s.spawn(|| pod.run_with("python3", &args, &[], secs(40)));
        let mut order = Vec::new();
        for (old, new) in [(&hello1, "hello-3"), (&hello2, "hello-4")] {
            fresh.push(Hello::start(&net, new, &ctrl.url));
            wait_endpoints(&pod, 3);
            stop(&old.proxy);
            old.app.kill();
            wait_endpoints(&pod, 2);
            order.push((old.pod.name().to_string(), started.elapsed()));
        }
        (run.join().unwrap(), order)
    });
    assert!(load.status.success(), "load.py: {load:?}");
    let load = Load::parse(&load.stdout);
    let failed: Vec<_> = load.results.iter().filter(|c| c.status != 200).collect();
    let mut by = std::collections::BTreeMap::<&str, usize>::new();
    for c in &load.results {
        *by.entry(c.body.trim()).or_default() += 1;
    }
    println!(
        "rolling replacement: {} requests in {:.1} s ({:.0} rps), {} failed; answered by {by:?}; stopped {order:?}",
        load.results.len(),
        load.elapsed_ms / 1000.0,
        load.results.len() as f64 / (load.elapsed_ms / 1000.0),
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // Not one of them needed a retry: the drain, not the retry policy,
    // kept them whole.
    let (_, body) = pod.curl("http://127.0.0.1:15000/state", &[]);
    let state: Value = serde_json::from_str(&body).unwrap();
    let hello = state["registry"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "hello")
        .unwrap()
        .clone();
    assert_eq!(hello["retries"]["retried"], 0, "{hello}");
    assert_eq!(
        hello["requests"]["attempts"], hello["requests"]["total"],
        "{hello}"
    );
    for name in ["hello-1", "hello-2", "hello-3", "hello-4"] {
        assert!(by.contains_key(name), "{name} never answered: {by:?}");
    }
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    support::stories::run(
        "e2e_lifecycle",
        stories![
            [Pods] => drain_acknowledged_by_1,
            [Pods] => drain_acknowledged_by_10,
            [Pods] => a_frozen_watcher_holds_the_drain_until_its_timeout,
            [Pods] => a_vanished_watcher_is_dropped_and_not_waited_for,
            [Pods] => rolling_replacement_loses_nothing,
        ],
    )
}
