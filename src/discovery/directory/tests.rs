use super::*;
use crate::model::{Instance, RemoveReason};

fn inst(service: &str, id: &str, port: u16, health: Health) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        address: "10.0.0.1".parse().unwrap(),
        port,
        metadata: Default::default(),
        health,
        ttl_secs: Some(10),
        inbound_port: None,
        identity: None,
    }
}

fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 100, 0, n)
}

fn dir() -> Directory {
    Directory::new(HashMap::new(), Arc::new(ProxyMetrics::new()))
}

fn upsert(rev: u64, i: Instance) -> WatchEvent {
    WatchEvent::Upsert {
        revision: rev,
        vip: vip(1),
        instance: i,
    }
}

#[test]
fn snapshot_then_events() {
    let d = dir();
    assert_eq!(d.revision(), None);
    d.replace(Snapshot {
        revision: 5,
        policies: Vec::new(),
        authorizations: Vec::new(),
        bundle: None,
        configs: Vec::new(),
        routes: Vec::new(),
        services: vec![ServiceInfo {
            name: "hello".into(),
            vip: vip(1),
            instances: vec![inst("hello", "a", 1, Health::Up)],
        }],
    });
    assert_eq!(d.revision(), Some(5));
    assert_eq!(d.service_by_vip(vip(1)).unwrap().ready.len(), 1);

    d.apply(upsert(6, inst("hello", "b", 2, Health::Up)));
    d.apply(upsert(7, inst("hello", "a", 1, Health::Down)));
    let s = d.service("hello").unwrap();
    assert_eq!(s.all.len(), 2);
    assert_eq!(s.ready.len(), 1);
    assert_eq!(s.ready[0].id, "b");
    assert_eq!(d.table().revision, 7);

    d.apply(WatchEvent::Remove {
        revision: 8,
        service: "hello".into(),
        id: "b".into(),
        reason: RemoveReason::LeaseExpired,
    });
    assert!(d.service("hello").unwrap().ready.is_empty());
    assert_eq!(d.snapshot().revision, 8);
}

#[test]
fn endpoints_carry_the_sidecar_inbound_address() {
    let d = dir();
    let mut sidecar = inst("hello", "a", 8080, Health::Up);
    sidecar.inbound_port = Some(15006);
    d.replace(Snapshot {
        revision: 1,
        policies: Vec::new(),
        authorizations: Vec::new(),
        bundle: None,
        configs: Vec::new(),
        routes: Vec::new(),
        services: vec![ServiceInfo {
            name: "hello".into(),
            vip: vip(1),
            instances: vec![sidecar, inst("hello", "b", 8081, Health::Up)],
        }],
    });
    let s = d.service("hello").unwrap();
    let a = s.all.iter().find(|e| e.id == "a").unwrap();
    assert_eq!(a.addr, "10.0.0.1:8080".parse().unwrap());
    // Connections go proxy to proxy when the instance has a sidecar.
    assert_eq!(a.authority.as_str(), "10.0.0.1:15006");
    assert_eq!(a.inbound, Some("10.0.0.1:15006".parse().unwrap()));
    assert_eq!(a.dial(), "10.0.0.1:15006".parse().unwrap());
    let b = s.all.iter().find(|e| e.id == "b").unwrap();
    assert_eq!(b.inbound, None);
    assert_eq!(b.dial(), b.addr);
    assert_eq!(b.authority.as_str(), b.addr.to_string());
}

#[test]
fn stale_events_are_ignored_and_stats_survive() {
    let d = dir();
    d.replace(Snapshot {
        revision: 10,
        policies: Vec::new(),
        authorizations: Vec::new(),
        bundle: None,
        configs: Vec::new(),
        routes: Vec::new(),
        services: vec![],
    });
    d.apply(upsert(11, inst("hello", "a", 1, Health::Up)));
    let before = d.service("hello").unwrap().ready[0].stats.clone();
    // A replayed older event changes nothing.
    d.apply(upsert(9, inst("hello", "a", 1, Health::Down)));
    assert_eq!(d.service("hello").unwrap().ready.len(), 1);
    // A real change keeps the endpoint's balancer statistics.
    d.apply(upsert(12, inst("hello", "b", 2, Health::Up)));
    let s = d.service("hello").unwrap();
    let a = s.all.iter().find(|e| e.id == "a").unwrap();
    assert!(Arc::ptr_eq(&a.stats, &before));
}

#[test]
fn snapshot_replaces_everything() {
    let d = dir();
    d.apply(upsert(3, inst("old", "x", 1, Health::Up)));
    d.replace(Snapshot {
        revision: 4,
        policies: Vec::new(),
        authorizations: Vec::new(),
        bundle: None,
        configs: Vec::new(),
        routes: Vec::new(),
        services: vec![ServiceInfo {
            name: "new".into(),
            vip: vip(2),
            instances: vec![],
        }],
    });
    assert!(d.service("old").is_none());
    assert!(d.service_by_vip(vip(2)).is_some());
    assert_eq!(d.table().len(), 1);
}

#[test]
fn routing_state_is_built_for_called_services_only() {
    let d = dir();
    let services: Vec<ServiceInfo> = (0..100u8)
        .map(|n| ServiceInfo {
            name: format!("s{n}"),
            vip: vip(n),
            instances: vec![inst(&format!("s{n}"), "a", 1, Health::Up)],
        })
        .collect();
    d.replace(Snapshot {
        revision: 1,
        policies: Vec::new(),
        authorizations: Vec::new(),
        bundle: None,
        configs: Vec::new(),
        routes: Vec::new(),
        services,
    });
    let t = d.table();
    assert_eq!(
        (t.len(), t.routed()),
        (100, 0),
        "records for all, routes for none"
    );
    assert_eq!(crate::proxy::dns::VipLookup::vip(&d, "s7"), Some(vip(7)));
    // A change to a service nobody called touches its record only.
    let mut moved = inst("s7", "b", 2, Health::Up);
    moved.port = 2;
    d.apply(WatchEvent::Upsert {
        revision: 2,
        vip: vip(7),
        instance: moved,
    });
    assert_eq!(d.table().routed(), 0);
    // The first call builds it, with what the events said so far.
    let s7 = d.service_by_vip(vip(7)).unwrap();
    assert_eq!(s7.ready.len(), 2);
    assert_eq!(d.table().routed(), 1);
    // From then on, its events rebuild it.
    d.apply(WatchEvent::Remove {
        revision: 3,
        service: "s7".into(),
        id: "a".into(),
        reason: RemoveReason::Deregistered,
    });
    assert_eq!(d.service("s7").unwrap().ready.len(), 1);
    // /state shows every service: the routed one live, the others from
    // their records.
    let st = d.state();
    assert_eq!(st.services.len(), 100);
    let s0 = st.services.iter().find(|s| s.name == "s0").unwrap();
    assert_eq!(s0.endpoints.as_ref().unwrap()[0].state, "ready");
    assert!(
        s0.bulkhead.is_some(),
        "the policy's configuration shows before a call"
    );
    assert_eq!(d.table().routed(), 1, "/state built nothing");
    // A snapshot keeps the routed set.
    d.replace(d.snapshot());
    assert_eq!(d.table().routed(), 1);
    assert!(d.table().by_name("s7").is_some());
}

#[test]
fn written_snapshot_is_the_snapshot() {
    let d = dir();
    d.apply(upsert(3, inst("b", "x", 1, Health::Up)));
    d.apply(upsert(4, inst("a", "y", 2, Health::Down)));
    d.apply(WatchEvent::Policy {
        revision: 5,
        policy: ServicePolicy::defaults("a"),
    });
    let mut json = Vec::new();
    d.write_snapshot(&mut json).unwrap();
    let parsed: Snapshot = serde_json::from_slice(&json).unwrap();
    assert_eq!(parsed, d.snapshot());
    assert_eq!(parsed.revision, 5);
}

#[test]
fn config_heads_follow_snapshots_and_events_and_reach_the_cache() {
    use crate::model::config::ConfigHead;
    let d = dir();
    let mut heads = d.config_heads();
    let head = |version: u64| ConfigHead {
        application: "hello".into(),
        profile: "default".into(),
        version,
        hash: format!("h{version}"),
    };
    d.replace(Snapshot {
        revision: 4,
        configs: vec![head(1)],
        ..Snapshot::default()
    });
    assert!(heads.has_changed().unwrap());
    assert_eq!(heads.borrow_and_update()["hello/default"].version, 1);
    d.apply(WatchEvent::Config {
        revision: 5,
        config: head(2),
    });
    assert_eq!(heads.borrow_and_update()["hello/default"].version, 2);
    assert_eq!(d.revision(), Some(5), "a config event moves the revision");
    // A replay at or below the revision changes nothing.
    d.apply(WatchEvent::Config {
        revision: 5,
        config: head(1),
    });
    assert_eq!(heads.borrow()["hello/default"].version, 2);
    let mut cached = Vec::new();
    d.write_snapshot(&mut cached).unwrap();
    let back: Snapshot = serde_json::from_slice(&cached).unwrap();
    assert_eq!(
        back.configs,
        vec![head(2)],
        "the disk cache carries the heads"
    );
    assert_eq!(d.snapshot().configs, vec![head(2)]);
}
