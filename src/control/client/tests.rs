use super::*;
use crate::model::FieldError;
use http::StatusCode;

#[test]
fn base_urls() {
    let ok = |u: &str| check_base_url(u).unwrap();
    assert_eq!(ok("http://127.0.0.1:15010"), "http://127.0.0.1:15010");
    assert_eq!(ok("http://localhost:15010/"), "http://localhost:15010");
    assert_eq!(ok("http://[::1]:15010"), "http://[::1]:15010");
    assert_eq!(ok("https://127.0.0.1:15010/"), "https://127.0.0.1:15010");
    for bad in [
        "ftp://127.0.0.1:15010",
        "127.0.0.1:15010",
        "http://h:1/v1",
        "http://h:1/?x=1",
        "",
        "http://",
    ] {
        assert!(
            matches!(check_base_url(bad), Err(ClientError::InvalidUrl(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn path_segments_are_escaped() {
    assert_eq!(segment("hello-1.0:80_x"), "hello-1.0:80_x");
    assert_eq!(segment("a b/c"), "a%20b%2Fc");
    assert_eq!(segment("é"), "%C3%A9");
}

#[test]
fn api_errors_keep_fields_or_raw_text() {
    let body = br#"{"error":"invalid registration","fields":[{"field":"port","reason":"70000 is outside 1..=65535"}]}"#;
    let err = api_error(StatusCode::BAD_REQUEST, body);
    match &err {
        ClientError::Api { status, error } => {
            assert_eq!(*status, 400);
            assert_eq!(
                error.fields,
                [FieldError {
                    field: "port".into(),
                    reason: "70000 is outside 1..=65535".into()
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "invalid registration (HTTP 400); port: 70000 is outside 1..=65535"
    );
    let folded = br#"{"error":"invalid request: port: 70000 is outside 1..=65535","fields":[{"field":"port","reason":"70000 is outside 1..=65535"}]}"#;
    assert_eq!(
        api_error(StatusCode::BAD_REQUEST, folded).to_string(),
        "invalid request (HTTP 400); port: 70000 is outside 1..=65535"
    );
    let err = api_error(StatusCode::BAD_GATEWAY, b"<html>upstream down</html>");
    assert_eq!(err.to_string(), "<html>upstream down</html> (HTTP 502)");
    let err = api_error(StatusCode::NOT_FOUND, b"");
    assert_eq!(err.to_string(), "not found (HTTP 404)");
}

#[test]
fn unreachable_drops_os_error_noise() {
    let err = ClientError::unreachable(
        "http://127.0.0.1:1",
        io::Error::from_raw_os_error(nix::libc::ECONNREFUSED),
    );
    assert_eq!(
        err.to_string(),
        "cannot reach control plane at http://127.0.0.1:1: connection refused"
    );
    let err = ClientError::unreachable("http://x:1", io::Error::other("lookup failed: x"));
    assert_eq!(
        err.to_string(),
        "cannot reach control plane at http://x:1: lookup failed: x"
    );
}

#[tokio::test]
async fn refused_connection_is_unreachable() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let client = ControlClient::new(&url, None).unwrap();
    let err = client.status().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach control plane at {url}: connection refused")
    );
}

#[tokio::test]
async fn names_are_resolved() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    // "localhost" resolves (to 127.0.0.1 and maybe ::1); the refused
    // connect proves the name got past the IP-only connector.
    let url = format!("http://localhost:{port}");
    let client = ControlClient::new(&url, None).unwrap();
    let err = client.services().await.unwrap_err();
    assert!(err.to_string().ends_with("connection refused"), "{err}");
}

// --- failover, against real loopback replicas (`fake`) ---

use super::fake::{closed, dropping, replica};

fn listing(urls: &[&str]) -> (ControlClient, Counter) {
    let counter = Counter::default();
    let client = ControlClient::new(&urls.join(","), None)
        .unwrap()
        .with_failover_counter(counter.clone());
    (client, counter)
}

#[tokio::test]
async fn an_unreachable_replica_moves_the_client_to_the_next() {
    let dead = closed().await;
    let live = replica(StatusCode::OK, "").await;
    let (client, failovers) = listing(&[&dead, &live.url]);
    assert_eq!(client.base_url(), dead);
    assert!(client.services().await.unwrap().is_empty());
    assert_eq!(client.base_url(), live.url, "moved, and stays");
    assert_eq!(failovers.get(), 1);
    // The clones share the replica in use: the next call goes straight
    // to the live one.
    client.clone().services().await.unwrap();
    assert_eq!((live.hits().len(), failovers.get()), (2, 1));
}

#[tokio::test]
async fn an_api_error_is_final_and_moves_nothing() {
    let refusing = replica(StatusCode::BAD_REQUEST, "").await;
    let failing = replica(StatusCode::INTERNAL_SERVER_ERROR, "").await;
    let live = replica(StatusCode::OK, "").await;
    for answering in [&refusing, &failing] {
        let (client, failovers) = listing(&[&answering.url, &live.url]);
        let err = client.services().await.unwrap_err();
        assert!(matches!(err, ClientError::Api { .. }), "{err}");
        assert_eq!(client.base_url(), answering.url);
        assert_eq!(failovers.get(), 0);
    }
    assert!(live.hits().is_empty(), "no other replica was asked");
}

#[tokio::test]
async fn a_503_moves_to_the_next_replica() {
    let cut_off = replica(StatusCode::SERVICE_UNAVAILABLE, "").await;
    let live = replica(StatusCode::OK, "").await;
    let (client, failovers) = listing(&[&cut_off.url, &live.url]);
    client.heartbeat("hello", "a", Health::Up).await.unwrap();
    assert_eq!((client.base_url(), failovers.get()), (live.url.as_str(), 1));
    // Every replica answering 503: the answer is that 503.
    let (client, _) = listing(&[&cut_off.url]);
    let err = client.services().await.unwrap_err();
    assert!(matches!(err, ClientError::Api { status: 503, .. }), "{err}");
}

#[tokio::test]
async fn a_request_lost_in_flight_is_sent_again_only_when_idempotent() {
    let dying = dropping().await;
    let live = replica(StatusCode::OK, "").await;
    // A heartbeat (PUT) is sent again to the next replica...
    let (client, failovers) = listing(&[&dying, &live.url]);
    client.heartbeat("hello", "a", Health::Up).await.unwrap();
    assert_eq!(failovers.get(), 1);
    assert_eq!(live.hits(), ["/v1/services/hello/instances/a/heartbeat"]);
    // ...a new token (POST) is not: it may have been made. The client
    // still moves on for the next request.
    let (client, failovers) = listing(&[&dying, &live.url]);
    let req = crate::model::identity::TokenRequest {
        service: "hello".into(),
        namespace: None,
        ttl_secs: None,
    };
    let err = client.create_token(&req).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert_eq!((client.base_url(), failovers.get()), (live.url.as_str(), 1));
    assert_eq!(live.hits().len(), 1, "the token request went nowhere else");
}

#[tokio::test]
async fn every_replica_is_tried_once_and_the_last_failure_answers() {
    let (a, b) = (closed().await, closed().await);
    let (client, failovers) = listing(&[&a, &b]);
    let err = client.services().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach control plane at {b}: connection refused")
    );
    // a → b, then b → a: round robin, wrapping.
    assert_eq!((client.base_url(), failovers.get()), (a.as_str(), 2));
}

#[tokio::test]
async fn a_watch_opens_on_the_next_replica_and_a_lost_stream_moves_on() {
    let dead = closed().await;
    let live = replica(StatusCode::OK, "{\"type\":\"keepalive\",\"revision\":9}\n").await;
    let (client, failovers) = listing(&[&dead, &live.url]);
    let mut stream = client
        .watch(9, Duration::from_secs(15), None)
        .await
        .unwrap();
    assert_eq!(stream.url(), live.url);
    assert_eq!(live.hits(), ["/v1/watch?since=9"]);
    assert_eq!(stream.next().await.unwrap().map(|e| e.revision()), Some(9));
    assert_eq!(stream.next().await.unwrap(), None);
    // The stream's replica let us down: the next request goes elsewhere.
    client.fail_over(stream.url(), &"the stream ended");
    assert_eq!((client.base_url(), failovers.get()), (dead.as_str(), 2));
    // A report about a replica no longer in use moves nothing.
    client.fail_over(&live.url, &"late");
    assert_eq!(failovers.get(), 2);
}
