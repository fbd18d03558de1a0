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
        services: vec![ServiceInfo {
            name: "hello".into(),
            vip: vip(1),
            instances: vec![inst("hello", "a", 1, Health::Up)],
        }],
    });
    assert_eq!(d.revision(), Some(5));
    let t = d.table();
    assert_eq!(t.by_vip(vip(1)).unwrap().ready.len(), 1);

    d.apply(upsert(6, inst("hello", "b", 2, Health::Up)));
    d.apply(upsert(7, inst("hello", "a", 1, Health::Down)));
    let t = d.table();
    let s = t.by_name("hello").unwrap();
    assert_eq!(s.all.len(), 2);
    assert_eq!(s.ready.len(), 1);
    assert_eq!(s.ready[0].id, "b");
    assert_eq!(t.revision, 7);

    d.apply(WatchEvent::Remove {
        revision: 8,
        service: "hello".into(),
        id: "b".into(),
        reason: RemoveReason::LeaseExpired,
    });
    assert!(d.table().by_name("hello").unwrap().ready.is_empty());
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
        services: vec![ServiceInfo {
            name: "hello".into(),
            vip: vip(1),
            instances: vec![sidecar, inst("hello", "b", 8081, Health::Up)],
        }],
    });
    let t = d.table();
    let s = t.by_name("hello").unwrap();
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
        services: vec![],
    });
    d.apply(upsert(11, inst("hello", "a", 1, Health::Up)));
    let before = d.table().by_name("hello").unwrap().ready[0].stats.clone();
    // A replayed older event changes nothing.
    d.apply(upsert(9, inst("hello", "a", 1, Health::Down)));
    assert_eq!(d.table().by_name("hello").unwrap().ready.len(), 1);
    // A real change keeps the endpoint's balancer statistics.
    d.apply(upsert(12, inst("hello", "b", 2, Health::Up)));
    let t = d.table();
    let a = t
        .by_name("hello")
        .unwrap()
        .all
        .iter()
        .find(|e| e.id == "a")
        .unwrap();
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
        services: vec![ServiceInfo {
            name: "new".into(),
            vip: vip(2),
            instances: vec![],
        }],
    });
    let t = d.table();
    assert!(t.by_name("old").is_none());
    assert!(t.by_vip(vip(2)).is_some());
    assert_eq!(t.len(), 1);
}
