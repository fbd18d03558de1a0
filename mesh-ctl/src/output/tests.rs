use super::*;
use mesh::model::{Health, RemoveReason, Snapshot};
use std::collections::BTreeMap;

fn instance(id: &str, addr: &str, ttl: Option<u64>, meta: &[(&str, &str)]) -> Instance {
    Instance {
        id: id.into(),
        service: "hello".into(),
        address: addr.parse().unwrap(),
        port: 8000,
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        health: Health::Up,
        ttl_secs: ttl,
        inbound_port: None,
        identity: None,
    }
}

#[test]
fn tables_align_columns_without_trailing_blanks() {
    let services = vec![
        ServiceSummary {
            name: "hello".into(),
            vip: "127.100.0.1".parse().unwrap(),
            instances: 12,
            healthy: 3,
        },
        ServiceSummary {
            name: "orders-readonly".into(),
            vip: "127.100.0.2".parse().unwrap(),
            instances: 1,
            healthy: 1,
        },
    ];
    assert_eq!(
        services_table(&services),
        "NAME             VIP          INSTANCES  HEALTHY\n\
         hello            127.100.0.1  12         3\n\
         orders-readonly  127.100.0.2  1          1"
    );
    assert_eq!(services_table(&[]), "NAME  VIP  INSTANCES  HEALTHY");
}

#[test]
fn endpoints_show_inbound_ttl_and_metadata() {
    let mut down = instance("b", "::1", None, &[]);
    down.health = Health::Down;
    let mut sidecar = instance(
        "10.0.0.1:8000",
        "10.0.0.1",
        Some(10),
        &[("zone", "a"), ("v", "2")],
    );
    sidecar.inbound_port = Some(15006);
    let info = ServiceInfo {
        name: "hello".into(),
        vip: "127.100.0.1".parse().unwrap(),
        instances: vec![sidecar, down],
    };
    assert_eq!(
        endpoints_table(&info),
        "ID             ADDRESS   PORT  INBOUND  HEALTH  TTL  METADATA\n\
         10.0.0.1:8000  10.0.0.1  8000  15006    up      10s  v=2,zone=a\n\
         b              ::1       8000  -        down    -    -"
    );
}

#[test]
fn watch_lines() {
    let up = WatchEvent::Upsert {
        revision: 12,
        vip: "127.100.0.1".parse().unwrap(),
        instance: instance("x", "::1", None, &[]),
    };
    assert_eq!(event_line(&up).unwrap(), "12  upsert hello/x [::1]:8000 up");
    let rm = WatchEvent::Remove {
        revision: 13,
        service: "hello".into(),
        id: "x".into(),
        reason: RemoveReason::LeaseExpired,
    };
    assert_eq!(event_line(&rm).unwrap(), "13  remove hello/x lease-expired");
    let snap = WatchEvent::Snapshot {
        snapshot: Snapshot {
            revision: 9,
            policies: Vec::new(),
            services: vec![ServiceInfo {
                name: "hello".into(),
                vip: "127.100.0.1".parse().unwrap(),
                instances: vec![instance("a", "10.0.0.1", None, &[])],
            }],
            authorizations: Vec::new(),
            bundle: None,
            configs: Vec::new(),
            routes: Vec::new(),
        },
    };
    assert_eq!(
        event_line(&snap).unwrap(),
        "9  snapshot 1 services, 1 instances"
    );
    let ka = WatchEvent::Keepalive { revision: 13 };
    assert_eq!(event_line(&ka), None);
    assert_eq!(event_doc(Output::Json, &ka).unwrap(), None);

    let json = event_doc(Output::Json, &rm).unwrap().unwrap();
    assert!(!json.contains('\n'), "{json}");
    assert_eq!(serde_json::from_str::<WatchEvent>(&json).unwrap(), rm);
    let yaml = event_doc(Output::Yaml, &rm).unwrap().unwrap();
    assert!(
        yaml.starts_with("---\n") && yaml.contains("reason: lease-expired"),
        "{yaml}"
    );
}

#[test]
fn json_and_yaml_round_trip() {
    let status = ControlStatus {
        revision: 4,
        services: 1,
        instances: 2,
        policies: 3,
        self_preservation: true,
        ..ControlStatus::default()
    };
    let json = render(Output::Json, &status, |_| unreachable!()).unwrap();
    assert_eq!(
        serde_json::from_str::<ControlStatus>(&json).unwrap(),
        status
    );
    let yaml = render(Output::Yaml, &status, |_| unreachable!()).unwrap();
    assert_eq!(
        serde_norway::from_str::<ControlStatus>(&yaml).unwrap(),
        status
    );
    let table = render(Output::Table, &status, |s| status_table("http://h:1", s)).unwrap();
    assert_eq!(
        table,
        "control            http://h:1\n\
         revision           4\n\
         services           1\n\
         instances          2\n\
         policies           3\n\
         self-preservation  ON (evictions suspended)"
    );
}

#[test]
fn registered_summary() {
    let r = Registered {
        revision: 7,
        vip: "127.100.0.3".parse().unwrap(),
        instance: instance("h-1", "10.0.0.1", Some(30), &[]),
    };
    assert_eq!(
        registered_line(&r),
        "registered hello/h-1 at 10.0.0.1:8000 ttl 30s (vip 127.100.0.3, revision 7)"
    );
}
