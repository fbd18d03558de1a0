//! End-to-end: the mesh in network namespaces, with unmodified apps.
//!
//! Each pod is a network namespace on a private bridge. The apps are
//! python3's `http.server` and the client is plain `curl`: neither knows the
//! mesh exists. Needs root, `ip` and `iptables`; skips otherwise.
//!
//! Run: `cargo test --test e2e_netns -- --nocapture --test-threads 1`
//! (the figures it measures are printed).

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses a different part of the harness
mod support;

use std::time::{Duration, Instant};
use support::bins::{mesh_ctl, MESH_CONTROL, MESH_PROXY};
use support::mesh::{
    call, calls_until_seen, endpoints, expect_only, instance_health, intercept, lists_instance,
    rss_mb, sidecar_args, start_app, wait_ready, Hello, APP_PORT, LEASE_TTL,
};
use support::{ms_between, ms_signed, path, secs, strs, wait_for, words, Net};

/// Port of mesh-control inside the control pod.
const CONTROL_PORT: u16 = 15010;
/// Slack on top of the lease for the sweep (200 ms) and our polling.
const EVICTION_MARGIN: Duration = Duration::from_millis(1500);
/// A registration must reach every proxy in well under a second.
const PROPAGATION_BUDGET_MS: i128 = 1000;
/// How far a polled observation (a process start each) may lag the event.
const OBSERVATION_SLACK_MS: i128 = 500;
/// The health check runs every 500 ms here; reporting and routing around
/// a dead app may take a few rounds, not more.
const DOWN_BUDGET: Duration = Duration::from_secs(3);
/// A debug build's sidecar after this story's traffic (release: ~9 MB).
const RSS_BUDGET_MB: f64 = 40.0;

/// The harness itself: two pods, an app in one, curl from the other, and
/// nothing left behind.
fn harness_pods_talk() {
    let ns_names;
    {
        let net = Net::new("ht");
        let server = net.pod("server");
        let client = net.pod("client");
        ns_names = vec![server.ns().to_string(), client.ns().to_string()];
        let app = start_app(&net, &server);

        let url = format!("http://{}:{APP_PORT}/name", server.ip());
        let body = wait_for("the app to answer across the bridge", secs(10), || {
            let (status, body) = client.curl(&url, &[]);
            (status == 200).then_some(body)
        });
        assert_eq!(body, "server");

        let resolv = client.run_ok("cat", &["/etc/resolv.conf"]);
        assert_eq!(resolv.trim(), "nameserver 127.0.0.11", "pod resolv.conf");
        // Nothing answers DNS in a pod without the mesh.
        let (status, _) = client.curl("http://server.mesh/", &[]);
        assert_eq!(status, 0, "names must not resolve without interception");

        app.kill();
        assert!(!app.is_running());
        let (status, _) = client.curl(&url, &[]);
        assert_eq!(status, 0, "a killed app must not answer");
    }
    let list = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    for ns in ns_names {
        assert!(!list.contains(&ns), "namespace {ns} left behind: {list}");
        assert!(!std::path::Path::new("/etc/netns").join(&ns).exists());
    }
}

/// The story of one small mesh: a control plane, a `hello` service that
/// grows and shrinks, and callers in transparent and explicit mode.
fn hello_mesh_in_namespaces() {
    let ctl = mesh_ctl();
    let net = Net::new("e2e");

    // --- The control plane, reachable from other pods. ---
    let control_pod = net.pod("control");
    let ctrl_url = format!("http://{}:{CONTROL_PORT}", control_pod.ip());
    let data_dir = net.subdir("control-data");
    let control = control_pod.spawn(
        MESH_CONTROL,
        &[
            "--listen",
            &format!("{}:{CONTROL_PORT}", control_pod.ip()),
            "--data-dir",
            &path(&data_dir),
            "--sweep-interval",
            "200ms",
        ],
        &[],
    );
    let client_pod = net.pod("client");
    wait_for("mesh-control /healthz", secs(15), || {
        control.assert_running();
        (client_pod.curl(&format!("{ctrl_url}/healthz"), &[]).0 == 200).then_some(())
    });

    // --- Two instances of `hello`, each app with its sidecar. ---
    let hello1 = Hello::start(&net, "hello-1", &ctrl_url);
    let hello2 = Hello::start(&net, "hello-2", &ctrl_url);

    // --- A client pod whose traffic and DNS are intercepted. ---
    intercept(&client_pod);
    let client_cache = net.subdir("client-cache");
    let client_args = sidecar_args(&ctrl_url, &client_cache);
    let mut client_proxy = client_pod.spawn(MESH_PROXY, &strs(&client_args), &[]);
    wait_ready(&client_pod, &client_proxy, secs(15));

    // Plain curl by mesh name; the pod's resolv.conf points at 127.0.0.11.
    let seen = calls_until_seen(
        &client_pod,
        "http://hello.mesh:80/name",
        &["hello-1", "hello-2"],
    );
    println!("client reached hello-1 and hello-2 after {seen} calls via hello.mesh");
    let body = call(&client_pod, "http://hello/name").expect("bare name `hello` answers");
    assert!(body.starts_with("hello-"), "bare name answered {body:?}");

    // --- Explicit mode: no interception, the app names the proxy. ---
    let explicit_pod = net.pod("explicit");
    let explicit_cache = net.subdir("explicit-cache");
    let explicit_proxy = explicit_pod.spawn(
        MESH_PROXY,
        &strs(&sidecar_args(&ctrl_url, &explicit_cache)),
        &[],
    );
    wait_ready(&explicit_pod, &explicit_proxy, secs(15));
    let out = explicit_pod.run_with(
        "curl",
        &["-s", "-m", "3", "http://hello/name"],
        &[("http_proxy", "http://127.0.0.1:15001")],
        secs(5),
    );
    let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        body.starts_with("hello-"),
        "explicit mode answered {body:?}"
    );
    let via_proxy = "-s -m 3 -D - -o /dev/null -w %{http_code} -x http://127.0.0.1:15001";
    let out = explicit_pod.run_ok("curl", &words(&format!("{via_proxy} http://nosuch.mesh/")));
    assert!(out.ends_with("503"), "unknown service status: {out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-mesh-error: unknown-service"),
        "unknown service header: {out}"
    );

    // --- A third instance joins: how fast does traffic reach it? ---
    let started = Instant::now();
    let hello3 = Hello::spawn(&net, "hello-3", &ctrl_url);
    let (listed_at, ready_at, reached_at) = std::thread::scope(|s| {
        let listed = s.spawn(|| {
            wait_for("mesh-ctl to list hello-3", secs(10), || {
                endpoints(&control_pod, ctl, &ctrl_url)
                    .filter(|v| lists_instance(v, "hello-3"))
                    .map(|_| Instant::now())
            })
        });
        let ready_at = wait_ready(&hello3.pod, &hello3.proxy, secs(15));
        let reached_at = wait_for("client traffic to reach hello-3", secs(10), || {
            (call(&client_pod, "http://hello.mesh/name").as_deref() == Some("hello-3"))
                .then(Instant::now)
        });
        (listed.join().expect("listing thread"), ready_at, reached_at)
    });
    // Signed: traffic may reach hello-3 a little before a poll observes it
    // listed or ready (each poll takes a process start), never by much.
    let from_listed = ms_signed(listed_at, reached_at);
    let from_ready = ms_signed(ready_at, reached_at);
    for (what, ms) in [("listed", from_listed), ("ready", from_ready)] {
        assert!(
            ms > -OBSERVATION_SLACK_MS,
            "traffic reached hello-3 {} ms before it was {what}: the clocks are off",
            -ms
        );
    }
    println!(
        "hello-3: ready {} ms after start, listed {} ms after start; traffic reached it \
         {from_ready} ms after /ready, {from_listed} ms after mesh-ctl listed it",
        ms_between(started, ready_at),
        ms_between(started, listed_at),
    );
    assert!(
        from_listed < PROPAGATION_BUDGET_MS,
        "propagation took {from_listed} ms"
    );
    assert!(
        from_ready < PROPAGATION_BUDGET_MS,
        "propagation took {from_ready} ms"
    );

    // --- hello-2's app dies; its sidecar's health check takes it out. ---
    hello2.app.kill();
    let killed = Instant::now();
    wait_for("mesh-ctl to show hello-2 down", secs(5), || {
        endpoints(&control_pod, ctl, &ctrl_url)
            .filter(|v| instance_health(v, "hello-2").as_deref() == Some("down"))
    });
    let reported = killed.elapsed();
    println!(
        "hello-2 reported down {} ms after its app died",
        reported.as_millis()
    );
    assert!(reported < DOWN_BUDGET, "reported down after {reported:?}");
    let mut streak = 0;
    wait_for("20 consecutive calls without hello-2", secs(5), || {
        match call(&client_pod, "http://hello.mesh/name").as_deref() {
            Some("hello-1") | Some("hello-3") => streak += 1,
            _ => streak = 0,
        }
        (streak >= 20).then_some(())
    });
    // The streak's own 20 calls are part of this figure.
    let out_of_rotation = killed.elapsed();
    println!(
        "hello-2 out of rotation {} ms after its app died",
        out_of_rotation.as_millis()
    );
    assert!(
        out_of_rotation < DOWN_BUDGET + secs(2),
        "out of rotation after {out_of_rotation:?}"
    );

    // --- hello-3 vanishes without a word; its lease runs out. ---
    hello3.proxy.kill();
    hello3.app.kill();
    let killed = Instant::now();
    wait_for("hello-3's lease to be evicted", LEASE_TTL + secs(8), || {
        endpoints(&control_pod, ctl, &ctrl_url).filter(|v| !lists_instance(v, "hello-3"))
    });
    let evicted = killed.elapsed();
    println!(
        "hello-3 evicted {:.2} s after SIGKILL (lease {:?})",
        evicted.as_secs_f64(),
        LEASE_TTL
    );
    assert!(
        evicted <= LEASE_TTL + EVICTION_MARGIN,
        "eviction took {evicted:?}"
    );

    // The client converges on hello-1, the only healthy instance left.
    let mut streak = 0;
    wait_for("client to route only to hello-1", secs(5), || {
        match call(&client_pod, "http://hello.mesh/name").as_deref() {
            Some("hello-1") => streak += 1,
            _ => streak = 0,
        }
        (streak >= 5).then_some(())
    });
    let rss = rss_mb(&client_proxy);
    println!("client proxy idle RSS after the traffic: {rss:.1} MB");
    assert!(rss < RSS_BUDGET_MB, "client proxy RSS {rss:.1} MB");

    // --- The control plane goes away; the data plane carries on. ---
    control.term();
    let status = control
        .wait_exit(secs(10))
        .expect("mesh-control exits on SIGTERM");
    println!("mesh-control stopped ({status})");
    expect_only(&client_pod, "hello-1", 10);

    // The client proxy restarts with the control plane still down: it starts
    // from its on-disk cache.
    client_proxy.term();
    let status = client_proxy
        .wait_exit(secs(15))
        .expect("client proxy exits on SIGTERM");
    assert!(status.success(), "client proxy exit status: {status}");
    client_proxy = client_pod.spawn(MESH_PROXY, &strs(&client_args), &[]);
    wait_ready(&client_pod, &client_proxy, secs(15));
    expect_only(&client_pod, "hello-1", 10);
    println!("client proxy restarted from its cache with the control plane down");

    // Everything still running stops when `net` is dropped.
    drop(client_proxy);
    drop(hello1);
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    support::stories::run(
        "e2e_netns",
        stories![
            [Pods] => harness_pods_talk,
            [Pods] => hello_mesh_in_namespaces,
        ],
    )
}
