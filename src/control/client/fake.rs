//! Scripted mesh-control replicas on `127.0.0.1:0` for the client's tests
//! and the watch loop's: real sockets, no mocks.

use axum::body::Body;
use axum::http::{StatusCode, Uri};
use axum::Router;
use tokio::sync::watch;

/// A replica answering every request with one status.
pub(crate) struct Replica {
    pub(crate) url: String,
    /// The path and query of each request it got, in order.
    hits: watch::Receiver<Vec<String>>,
}

impl Replica {
    pub(crate) fn hits(&self) -> Vec<String> {
        self.hits.borrow().clone()
    }
}

/// Answers `status`: a 2xx with `watch` as the body of `/v1/watch` (then
/// the stream ends) and `[]` elsewhere, an error with an API error body.
pub(crate) async fn replica(status: StatusCode, watch: &'static str) -> Replica {
    let (tx, hits) = watch::channel(Vec::new());
    let app = Router::new().fallback(move |uri: Uri| {
        let tx = tx.clone();
        async move {
            let path = uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            tx.send_modify(|h| h.push(path.clone()));
            let body = if !status.is_success() {
                r#"{"error":"scripted"}"#
            } else if path.starts_with("/v1/watch") {
                watch
            } else {
                "[]"
            };
            axum::response::Response::builder()
                .status(status)
                .body(Body::from(body))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Replica { url, hits }
}

/// Takes each connection, reads the request, and closes it unanswered: a
/// replica that dies with the request in hand.
pub(crate) async fn dropping() -> String {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    url
}

/// A URL nobody listens at: connections are refused.
pub(crate) async fn closed() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}
