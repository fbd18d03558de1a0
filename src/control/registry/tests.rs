//! Registry tests: leases and self-preservation under tokio's paused clock,
//! VIP allocation, persistence across reopen, and watch resumption.

use super::*;
use crate::model::{RegisterRequest, RemoveReason};
use std::path::Path;
use tokio::time::advance;

fn open(dir: &Path, cidr: &str, settings: RegistrySettings) -> Registry {
    let store = Store::open(dir).unwrap();
    Registry::open(store, cidr.parse().unwrap(), settings).unwrap()
}

fn fresh() -> (tempfile::TempDir, Registry) {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(dir.path(), "127.100.0.0/16", RegistrySettings::default());
    (dir, reg)
}

fn req(id: &str, ttl: Option<u64>) -> RegisterRequest {
    RegisterRequest {
        id: Some(id.into()),
        address: "127.0.0.1".parse().unwrap(),
        port: 8080,
        metadata: Default::default(),
        ttl,
        health: Health::Up,
        inbound_port: None,
        identity: None,
    }
}

fn ids(reg: &Registry, service: &str) -> Vec<String> {
    reg.service(service)
        .map(|s| s.instances.into_iter().map(|i| i.id).collect())
        .unwrap_or_default()
}

fn events(lines: &[Bytes]) -> Vec<WatchEvent> {
    lines
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn lease_expires_at_ttl_and_not_before() {
    let (_dir, reg) = fresh();
    reg.register("web", req("a", Some(10))).unwrap();
    let mut rx = reg.subscribe(reg.revision()).rx;

    advance(Duration::from_millis(9_999)).await;
    let out = reg.sweep(Instant::now()).unwrap();
    assert_eq!((out.leased, out.expired), (1, 0));
    assert_eq!(ids(&reg, "web"), ["a"]);

    advance(Duration::from_millis(1)).await;
    let out = reg.sweep(Instant::now()).unwrap();
    assert_eq!(out.evicted, [("web".to_string(), "a".to_string())]);
    assert!(ids(&reg, "web").is_empty());
    let change = rx.try_recv().unwrap();
    match events(&[change.line]).remove(0) {
        WatchEvent::Remove {
            id,
            reason,
            revision,
            ..
        } => {
            assert_eq!(
                (id.as_str(), reason, revision),
                ("a", RemoveReason::LeaseExpired, 2)
            );
        }
        other => panic!("expected a Remove, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeat_renews_the_lease() {
    let (_dir, reg) = fresh();
    reg.register("web", req("a", Some(10))).unwrap();
    advance(Duration::from_secs(8)).await;
    let rev = reg.heartbeat("web", "a", Health::Up).unwrap();
    assert_eq!(rev, 1, "a plain renewal is not a change");

    advance(Duration::from_secs(8)).await; // t=16: past the first lease
    assert!(reg.sweep(Instant::now()).unwrap().evicted.is_empty());
    assert_eq!(ids(&reg, "web"), ["a"]);

    advance(Duration::from_secs(2)).await; // t=18: renewed lease ends
    assert_eq!(reg.sweep(Instant::now()).unwrap().evicted.len(), 1);
    assert!(matches!(
        reg.heartbeat("web", "a", Health::Up),
        Err(RegistryError::UnknownInstance { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn health_change_bumps_revision() {
    let (_dir, reg) = fresh();
    reg.register("web", req("a", Some(10))).unwrap();
    assert_eq!(reg.heartbeat("web", "a", Health::Down).unwrap(), 2);
    assert_eq!(reg.heartbeat("web", "a", Health::Down).unwrap(), 2);
    assert_eq!(reg.services()[0].healthy, 0);
}

#[tokio::test(start_paused = true)]
async fn static_registrations_never_expire() {
    let (_dir, reg) = fresh();
    reg.register("db", req("s", None)).unwrap();
    advance(Duration::from_secs(365 * 24 * 3600)).await;
    let out = reg.sweep(Instant::now()).unwrap();
    assert_eq!((out.leased, out.expired), (0, 0));
    assert_eq!(ids(&reg, "db"), ["s"]);
}

#[tokio::test(start_paused = true)]
async fn self_preservation_engages_and_recovers() {
    let (_dir, reg) = fresh(); // threshold 15%, min 3
    for i in 0..10 {
        reg.register("web", req(&format!("i{i}"), Some(10)))
            .unwrap();
    }
    advance(Duration::from_secs(5)).await;
    for i in 3..10 {
        reg.heartbeat("web", &format!("i{i}"), Health::Up).unwrap();
    }
    advance(Duration::from_secs(5)).await; // i0..i2 expire: 30% of 10, and 3 >= min
    let rev = reg.revision();
    let out = reg.sweep(Instant::now()).unwrap();
    assert_eq!((out.leased, out.expired), (10, 3));
    assert!(out.self_preservation && out.evicted.is_empty());
    assert!(reg.status().self_preservation);
    assert_eq!(ids(&reg, "web").len(), 10, "nothing evicted");
    assert_eq!(reg.revision(), rev);

    // Still too many on the next sweep: stays on.
    advance(Duration::from_secs(1)).await;
    assert!(reg.sweep(Instant::now()).unwrap().self_preservation);

    // Two of the three come back; one expired of ten is 10% <= 15%.
    reg.heartbeat("web", "i0", Health::Up).unwrap();
    reg.heartbeat("web", "i1", Health::Up).unwrap();
    let out = reg.sweep(Instant::now()).unwrap();
    assert!(!out.self_preservation);
    assert!(!reg.status().self_preservation);
    assert_eq!(out.evicted, [("web".to_string(), "i2".to_string())]);
    assert_eq!(ids(&reg, "web").len(), 9);
}

#[tokio::test(start_paused = true)]
async fn lone_expiry_is_evicted() {
    let (_dir, reg) = fresh();
    // One of one is 100%, but below the minimum of 3.
    reg.register("web", req("only", Some(5))).unwrap();
    advance(Duration::from_secs(5)).await;
    let out = reg.sweep(Instant::now()).unwrap();
    assert!(!out.self_preservation);
    assert_eq!(out.evicted.len(), 1);

    // One of ten is 10%: below the threshold.
    for i in 0..10 {
        let ttl = if i == 0 { 5 } else { 60 };
        reg.register("api", req(&format!("i{i}"), Some(ttl)))
            .unwrap();
    }
    advance(Duration::from_secs(5)).await;
    let out = reg.sweep(Instant::now()).unwrap();
    assert!(!out.self_preservation);
    assert_eq!(out.evicted, [("api".to_string(), "i0".to_string())]);
}

#[tokio::test(start_paused = true)]
async fn re_registration_replaces_and_bumps_only_on_change() {
    let (_dir, reg) = fresh();
    let first = reg.register("web", req("a", Some(10))).unwrap();
    let same = reg.register("web", req("a", Some(10))).unwrap();
    assert_eq!(same.revision, first.revision);
    let mut changed = req("a", Some(10));
    changed.port = 9090;
    let changed = reg.register("web", changed).unwrap();
    assert_eq!(changed.revision, first.revision + 1);
    assert_eq!(reg.service("web").unwrap().instances[0].port, 9090);
    // Gaining a sidecar inbound is a change callers must see.
    let mut inbound = req("a", Some(10));
    inbound.port = 9090;
    inbound.inbound_port = Some(15006);
    let inbound = reg.register("web", inbound).unwrap();
    assert_eq!(inbound.revision, changed.revision + 1);
    assert_eq!(inbound.instance.inbound_port, Some(15006));
    assert_eq!(
        reg.service("web").unwrap().instances[0].inbound_port,
        Some(15006)
    );
}

#[tokio::test(start_paused = true)]
async fn vips_stable_unique_persistent_and_exhaustible() {
    let dir = tempfile::tempdir().unwrap();
    let (web, api) = {
        let reg = open(dir.path(), "10.9.0.0/29", RegistrySettings::default()); // 6 hosts
        let web = reg.register("web", req("a", None)).unwrap().vip;
        assert_eq!(
            reg.register("web", req("b", None)).unwrap().vip,
            web,
            "stable per service"
        );
        let api = reg.register("api", req("a", None)).unwrap().vip;
        assert_ne!(web, api);
        assert_eq!(web.octets()[3], 1, "network address skipped");
        (web, api)
    };
    let reg = open(dir.path(), "10.9.0.0/29", RegistrySettings::default());
    assert_eq!(reg.service("web").unwrap().vip, web, "survives restart");
    assert_eq!(reg.service("api").unwrap().vip, api);
    let mut seen = vec![web, api];
    for i in 0..4 {
        let vip = reg.register(&format!("s{i}"), req("a", None)).unwrap().vip;
        assert!(!seen.contains(&vip), "{vip} handed out twice");
        assert_ne!(vip.octets()[3], 7, "broadcast address skipped");
        seen.push(vip);
    }
    let err = reg.register("full", req("a", None)).unwrap_err();
    assert!(matches!(err, RegistryError::VipExhausted(_)));
    assert!(
        err.to_string().contains("no free VIP left in 10.9.0.0/29"),
        "{err}"
    );
    assert!(
        reg.service("full").is_none(),
        "a failed registration leaves nothing behind"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_restores_instances_revision_and_fresh_leases() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let reg = open(dir.path(), "127.100.0.0/16", RegistrySettings::default());
        reg.register("db", req("static", None)).unwrap();
        reg.register("web", req("leased", Some(10))).unwrap();
        reg.register("web", req("gone", None)).unwrap();
        reg.deregister("web", "gone").unwrap()
    };
    advance(Duration::from_secs(9)).await;
    let reg = open(dir.path(), "127.100.0.0/16", RegistrySettings::default());
    assert_eq!(reg.revision(), rev);
    assert_eq!(ids(&reg, "db"), ["static"]);
    assert_eq!(ids(&reg, "web"), ["leased"]);
    // The lease restarted at reopen: still alive 9s later.
    advance(Duration::from_secs(9)).await;
    assert!(reg.sweep(Instant::now()).unwrap().evicted.is_empty());
    assert!(reg.register("api", req("x", None)).unwrap().revision > rev);
}

#[tokio::test(start_paused = true)]
async fn subscribe_resumes_from_the_change_log_or_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let settings = RegistrySettings {
        change_log_capacity: 3,
        ..RegistrySettings::default()
    };
    let reg = open(dir.path(), "127.100.0.0/16", settings);
    for i in 0..5 {
        reg.register("web", req(&format!("i{i}"), None)).unwrap(); // revisions 1..=5
    }
    let sub = reg.subscribe(3);
    let revs: Vec<u64> = events(&sub.backlog)
        .iter()
        .map(WatchEvent::revision)
        .collect();
    assert_eq!(revs, [4, 5], "exactly the changes after 3");
    assert_eq!(sub.revision, 5);
    assert!(reg.subscribe(5).backlog.is_empty());

    for since in [0, 1, 99] {
        let sub = reg.subscribe(since);
        match events(&sub.backlog).as_slice() {
            [WatchEvent::Snapshot { snapshot }] => {
                assert_eq!(snapshot.revision, 5);
                assert_eq!(snapshot.services[0].instances.len(), 5);
            }
            other => panic!("since={since}: expected one snapshot, got {other:?}"),
        }
    }
}
