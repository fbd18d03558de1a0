use super::*;
use crate::model::FieldError;

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
