//! Watch-stream framing through real HTTP chunked encoding: the client must
//! rebuild NDJSON lines that chunks split or bundle. A tiny in-process axum
//! server plays the control plane; the real one is tested end to end later.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use mesh::control::client::{ClientError, ControlClient};
use mesh::model::WatchEvent;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

/// Serves `chunks` as the watch body, after a keep-alive echoing `since`.
async fn serve(chunks: Vec<String>) -> String {
    let app = Router::new().route(
        "/v1/watch",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let since = q.get("since").cloned().unwrap_or_default();
            let mut all = vec![format!("{{\"type\":\"keepalive\",\"revision\":{since}}}\n")];
            all.extend(chunks.clone());
            let items = all.into_iter().map(|c| Ok::<_, Infallible>(Bytes::from(c)));
            async move {
                axum::response::Response::builder()
                    .header("content-type", "application/x-ndjson")
                    .body(Body::from_stream(futures_util::stream::iter(items)))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn upsert(rev: u64, id: &str) -> String {
    format!(
        "{{\"type\":\"upsert\",\"revision\":{rev},\"vip\":\"127.100.0.1\",\"instance\":\
         {{\"id\":\"{id}\",\"service\":\"hello\",\"address\":\"10.0.0.1\",\"port\":8000}}}}\n"
    )
}

#[tokio::test]
async fn lines_split_and_bundled_across_chunks() {
    let a = upsert(5, "a");
    let big_id = "x".repeat(1 << 20);
    let big = upsert(6, &big_id);
    let (a1, a2) = a.split_at(17);
    let mut chunks = vec![a1.to_string(), format!("{a2}{}", upsert(7, "b").trim_end())];
    chunks.push(format!("\n{}", &big[..1000]));
    chunks.extend(
        big.as_bytes()[1000..]
            .chunks(4096)
            .map(|c| String::from_utf8(c.to_vec()).unwrap()),
    );
    chunks.push(upsert(8, "c") + &upsert(9, "d"));

    let url = serve(chunks).await;
    let client = ControlClient::new(&url, None).unwrap();
    let mut watch = client.watch(4, Duration::from_secs(5), None).await.unwrap();
    let mut got = Vec::new();
    while let Some(ev) = watch.next().await.unwrap() {
        let id = match &ev {
            WatchEvent::Upsert { instance, .. } => instance.id.len().to_string(),
            _ => "ka".to_string(),
        };
        got.push((ev.revision(), id));
        assert!(got.len() <= 10, "too many events: {got:?}");
    }
    let want: Vec<(u64, String)> = [
        (4, "ka"),
        (5, "1"),
        (7, "1"),
        (6, "1048576"),
        (8, "1"),
        (9, "1"),
    ]
    .iter()
    .map(|(r, s)| (*r, s.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_half_line_then_eof_is_a_decode_error() {
    let url = serve(vec!["{\"type\":\"keepal".into()]).await;
    let client = ControlClient::new(&url, None).unwrap();
    let mut watch = client.watch(1, Duration::from_secs(5), None).await.unwrap();
    assert_eq!(watch.next().await.unwrap().map(|e| e.revision()), Some(1));
    assert!(matches!(watch.next().await, Err(ClientError::Decode(_))));
}
