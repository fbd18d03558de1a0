//! The rule under tokio's paused clock, through the Directory: what
//! routes, what the disk cache keeps, what is counted.

use super::*;
use crate::discovery::Directory;
use crate::model::{Snapshot, WatchEvent};
use crate::telemetry::ProxyMetrics;
use std::net::Ipv4Addr;
use std::sync::Arc;

const VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 1);

fn inst(id: &str, health: Health) -> Instance {
    Instance {
        id: id.into(),
        service: "hello".into(),
        address: "10.0.0.1".parse().unwrap(),
        port: 8080,
        metadata: Default::default(),
        health,
        ttl_secs: Some(10),
        inbound_port: None,
        identity: None,
    }
}

fn snapshot(revision: u64, ids: &[&str]) -> Snapshot {
    Snapshot {
        revision,
        services: vec![ServiceInfo {
            name: "hello".into(),
            vip: VIP,
            instances: ids.iter().map(|id| inst(id, Health::Up)).collect(),
        }],
        ..Snapshot::default()
    }
}

/// A directory with `ids` ready and routed (called once), and its metrics.
fn routed(settings: Preservation, ids: &[&str]) -> (Directory, Arc<ProxyMetrics>) {
    let metrics = Arc::new(ProxyMetrics::new());
    let d = Directory::new(Default::default(), metrics.clone()).with_preservation(settings);
    d.replace(snapshot(1, ids));
    assert!(d.service("hello").is_some());
    (d, metrics)
}

fn remove(d: &Directory, revision: u64, id: &str, reason: RemoveReason) {
    d.apply(WatchEvent::Remove {
        revision,
        service: "hello".into(),
        id: id.into(),
        reason,
    });
}

fn keepalive(d: &Directory, revision: u64) {
    d.apply(WatchEvent::Keepalive { revision });
}

/// The ids routed to, and those ready among them.
fn routes(d: &Directory) -> (Vec<String>, usize) {
    let s = d.service("hello").unwrap();
    (s.all.iter().map(|e| e.id.clone()).collect(), s.ready.len())
}

fn refused(m: &ProxyMetrics) -> u64 {
    let (_, text) = m.encode(None);
    text.lines()
        .find_map(|l| l.strip_prefix(r#"mesh_endpoint_removals_refused_total{service="hello"} "#))
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn lease_expiries_past_half_of_the_ready_endpoints_are_refused() {
    let (d, m) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    remove(&d, 2, "a", RemoveReason::LeaseExpired);
    tokio::time::advance(Duration::from_secs(3)).await;
    // 2 of 4 is 50 %: not more than the share, applied.
    remove(&d, 3, "b", RemoveReason::LeaseExpired);
    assert_eq!(routes(&d), (vec!["c".into(), "d".into()], 2));
    // A third within the window would be 75 %: refused, held, routed.
    tokio::time::advance(Duration::from_secs(3)).await;
    remove(&d, 4, "c", RemoveReason::LeaseExpired);
    assert_eq!(routes(&d), (vec!["c".into(), "d".into()], 2));
    assert_eq!(refused(&m), 1);
    assert_eq!(d.revision(), Some(4), "the revision moves on all the same");
    // The disk cache keeps what the control plane lists.
    let cached: Vec<String> = d.snapshot().services[0]
        .instances
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(cached, ["d"]);
}

#[tokio::test(start_paused = true)]
async fn deregistrations_are_always_applied() {
    let (d, m) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    for (rev, id) in [(2, "a"), (3, "b"), (4, "c"), (5, "d")] {
        remove(&d, rev, id, RemoveReason::Deregistered);
    }
    assert_eq!(routes(&d), (vec![], 0));
    assert_eq!(refused(&m), 0);
}

#[tokio::test(start_paused = true)]
async fn a_scale_down_lowers_the_base_the_share_is_counted_against() {
    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    remove(&d, 2, "a", RemoveReason::LeaseExpired); // window of 4 opens
    remove(&d, 3, "b", RemoveReason::Deregistered); // base 3
                                                    // 2 removals of a base of 3 is 67 %: refused.
    remove(&d, 4, "c", RemoveReason::LeaseExpired);
    assert_eq!(routes(&d).0, ["c", "d"]);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_missing_three_of_four_holds_one_until_the_hold_time() {
    let (d, m) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    d.replace(snapshot(5, &["d"]));
    // In id order: a and b go (50 %), c is held.
    assert_eq!(routes(&d), (vec!["c".into(), "d".into()], 2));
    assert_eq!(refused(&m), 1);
    // Nothing expires before the hold time, whatever events come.
    tokio::time::advance(Duration::from_secs(59)).await;
    keepalive(&d, 5);
    assert_eq!(routes(&d).0, ["c", "d"]);
    // Past it, the first event (a keep-alive) removes it: the control
    // plane still does not list it.
    tokio::time::advance(Duration::from_secs(1)).await;
    keepalive(&d, 5);
    assert_eq!(routes(&d), (vec!["d".into()], 1));
    assert_eq!(d.revision(), Some(5));
}

#[tokio::test(start_paused = true)]
async fn an_upsert_ends_the_hold() {
    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    d.replace(snapshot(5, &["d"]));
    d.apply(WatchEvent::Upsert {
        revision: 6,
        vip: VIP,
        instance: inst("c", Health::Up),
    });
    tokio::time::advance(Duration::from_secs(61)).await;
    keepalive(&d, 6);
    assert_eq!(routes(&d).0, ["c", "d"], "listed again: no longer held");
    assert_eq!(d.snapshot().services[0].instances.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_listing_it_or_a_deregistration_ends_the_hold() {
    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    d.replace(snapshot(5, &["d"]));
    d.replace(snapshot(6, &["c", "d"]));
    tokio::time::advance(Duration::from_secs(61)).await;
    keepalive(&d, 6);
    assert_eq!(routes(&d).0, ["c", "d"]);

    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    d.replace(snapshot(5, &["d"]));
    remove(&d, 6, "c", RemoveReason::Deregistered);
    assert_eq!(routes(&d).0, ["d"], "deliberate: gone at once");
}

#[tokio::test(start_paused = true)]
async fn a_one_instance_service_loses_its_instance() {
    let (d, m) = routed(Preservation::default(), &["a"]);
    remove(&d, 2, "a", RemoveReason::LeaseExpired);
    assert_eq!(routes(&d), (vec![], 0));
    let (d, _) = routed(Preservation::default(), &["a"]);
    d.replace(snapshot(2, &[]));
    assert_eq!(routes(&d), (vec![], 0));
    assert_eq!(refused(&m), 0);
}

#[tokio::test(start_paused = true)]
async fn the_window_closes_after_ten_seconds() {
    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d", "e", "f"]);
    remove(&d, 2, "a", RemoveReason::LeaseExpired);
    remove(&d, 3, "b", RemoveReason::LeaseExpired);
    remove(&d, 4, "c", RemoveReason::LeaseExpired);
    tokio::time::advance(WINDOW).await;
    // A new window, of the 3 ready now: one more may go, not two.
    remove(&d, 5, "d", RemoveReason::LeaseExpired);
    remove(&d, 6, "e", RemoveReason::LeaseExpired);
    assert_eq!(routes(&d).0, ["e", "f"]);
}

#[tokio::test(start_paused = true)]
async fn endpoints_that_are_not_ready_go_without_counting() {
    let (d, m) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    for (rev, id) in [(2, "a"), (3, "b"), (4, "c")] {
        d.apply(WatchEvent::Upsert {
            revision: rev,
            vip: VIP,
            instance: inst(id, Health::Down),
        });
    }
    for (rev, id) in [(5, "a"), (6, "b"), (7, "c")] {
        remove(&d, rev, id, RemoveReason::LeaseExpired);
    }
    assert_eq!(routes(&d).0, ["d"]);
    assert_eq!(refused(&m), 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_a_snapshot_omits_keeps_its_held_endpoints_routed() {
    let (d, _) = routed(Preservation::default(), &["a", "b", "c", "d"]);
    d.replace(Snapshot {
        revision: 5,
        ..Snapshot::default()
    });
    assert_eq!(routes(&d).0, ["c", "d"]);
    assert_eq!(d.service_by_vip(VIP).unwrap().ready.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn at_100_percent_the_rule_is_off() {
    let off = Preservation::try_new(100, Duration::from_secs(60)).unwrap();
    let (d, m) = routed(off, &["a", "b", "c", "d"]);
    d.replace(snapshot(5, &[]));
    assert_eq!(routes(&d), (vec![], 0));
    assert_eq!(refused(&m), 0);
}

#[test]
fn allowances_and_settings() {
    let p = |pct| Preservation::try_new(pct, Duration::from_secs(60)).unwrap();
    // (percent, base) → removals a window applies.
    for (pct, base, want) in [
        (50, 4, 2),
        (50, 3, 1),
        (50, 2, 1),
        (50, 1, 1),
        (50, 0, 1),
        (25, 10, 2),
        (0, 10, 1),
        (100, 4, usize::MAX),
    ] {
        assert_eq!(p(pct).allowance(base), want, "{pct}% of {base}");
    }
    let err = Preservation::try_new(101, Duration::ZERO).unwrap_err();
    assert!(
        err.contains("--max-endpoint-removal 101") && err.contains("--endpoint-hold"),
        "{err}"
    );
}
