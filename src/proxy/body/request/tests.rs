//! Replay of streamed request bodies across attempts.

use super::*;
use http_body_util::{BodyExt, StreamBody};
use std::convert::Infallible;

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

fn frames(parts: &[&'static str], trailers: bool) -> StreamBody<Frames> {
    let mut v: Vec<Result<Frame<Bytes>, Infallible>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    if trailers {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("42"));
        v.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(futures_util::stream::iter(v))
}

async fn all<B: Body<Data = Bytes> + Unpin>(body: B) -> (Bytes, Option<HeaderMap>)
where
    B::Error: std::fmt::Debug,
{
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

#[tokio::test]
async fn a_whole_body_is_replayed_with_its_trailers() {
    let (first, shared) = StreamedBody::recorded(frames(&["hello ", "world"], true));
    let (bytes, trailers) = all(first).await;
    assert_eq!(bytes, "hello world");
    assert_eq!(trailers.unwrap()["x-checksum"], "42");
    for _ in 0..2 {
        let again = StreamedBody::replay(&shared).expect("replayable");
        let (bytes, trailers) = all(again).await;
        assert_eq!(bytes, "hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "42");
    }
}

#[tokio::test]
async fn after_a_connect_failure_the_untouched_body_goes_to_the_retry() {
    let (first, shared) = StreamedBody::recorded(frames(&["a", "b", "c"], false));
    drop(first); // the request died before its body was read
    let again = StreamedBody::replay(&shared).expect("replayable");
    assert_eq!(all(again).await.0, "abc");
}

#[tokio::test]
async fn a_partly_sent_body_is_replayed_then_continued() {
    let (mut first, shared) = StreamedBody::recorded(frames(&["a", "b", "c"], false));
    let f = first.frame().await.unwrap().unwrap();
    assert_eq!(f.data_ref().unwrap(), "a");
    // Still held by the first attempt: no replay yet.
    assert!(StreamedBody::replay(&shared).is_none());
    drop(first);
    let again = StreamedBody::replay(&shared).expect("replayable");
    assert_eq!(all(again).await.0, "abc");
    // And once more, now that it has ended.
    assert_eq!(all(StreamedBody::replay(&shared).unwrap()).await.0, "abc");
}

#[tokio::test]
async fn long_bodies_stream_once_and_are_not_replayed() {
    let big: &'static str = Box::leak("x".repeat(MAX_REPLAY_BODY).into_boxed_str());
    let (first, shared) = StreamedBody::recorded(frames(&[big, "y"], false));
    assert_eq!(all(first).await.0.len(), MAX_REPLAY_BODY + 1);
    assert!(StreamedBody::replay(&shared).is_none());
}

#[tokio::test]
async fn a_body_that_says_it_ended_is_complete_without_none() {
    let full = http_body_util::Full::new(Bytes::from_static(b"all"));
    let (mut first, shared) = StreamedBody::recorded(full);
    assert_eq!(
        first.frame().await.unwrap().unwrap().data_ref().unwrap(),
        "all"
    );
    assert!(first.is_end_stream());
    // hyper would stop here and keep the body until the request is done.
    let again = StreamedBody::replay(&shared).expect("ended, so replayable");
    assert_eq!(all(again).await.0, "all");
    drop(first);
}

#[tokio::test]
async fn plain_bodies_pass_through() {
    let plain = StreamedBody::plain(frames(&["x", "y"], true));
    let (bytes, trailers) = all(plain).await;
    assert_eq!(bytes, "xy");
    assert!(trailers.is_some());
}
