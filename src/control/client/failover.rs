//! The mesh-control replicas a client knows, and the one it talks to.
//!
//! `--control` may list several replicas, comma separated
//! (`http://10.0.0.1:15010,http://10.0.0.2:15010`); a name that resolves
//! to several addresses is handled below this, per connection, by
//! [`ResolvingConnector`](super::connect::ResolvingConnector). Every clone
//! of one `ControlClient` shares one [`Targets`], so registration,
//! heartbeats, reports and the watch of a process move together: when a
//! replica gives no HTTP answer (or answers 503, as one cut off from its
//! store does), the process moves to the next URL, round robin from the
//! one that failed. An HTTP error answer is that replica's verdict on the
//! request, which another replica would give too: it moves nothing.

use super::{check_base_url, ClientError};
use prometheus_client::metrics::counter::Counter;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The replicas, and which one is in use.
#[derive(Debug)]
pub(super) struct Targets {
    /// Base URLs without trailing slash, checked, in the order given, no
    /// duplicates; never empty.
    urls: Vec<String>,
    /// Index into `urls` of the replica in use. Moved only from the index
    /// that failed (compare-and-swap), so requests that fail together on
    /// one replica move the process one step, not one step each.
    current: AtomicUsize,
}

impl Targets {
    /// `list`: one URL, or several separated by commas (blanks around and
    /// empty items ignored).
    pub(super) fn parse(list: &str) -> Result<Targets, ClientError> {
        Ok(Targets {
            urls: control_urls(list)?,
            current: AtomicUsize::new(0),
        })
    }

    pub(super) fn len(&self) -> usize {
        self.urls.len()
    }

    pub(super) fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The index of the replica in use.
    pub(super) fn current(&self) -> usize {
        self.current.load(Ordering::Acquire) % self.urls.len()
    }

    pub(super) fn url(&self, at: usize) -> &str {
        &self.urls[at % self.urls.len()]
    }

    pub(super) fn position(&self, url: &str) -> Option<usize> {
        self.urls.iter().position(|u| u == url)
    }

    /// The replica at `from` failed: move to the next one if `from` is
    /// still the one in use. Logs and counts a move; `false` when there
    /// was none (a single URL, or another request moved on already).
    pub(super) fn fail_over(
        &self,
        from: usize,
        why: &dyn fmt::Display,
        counter: Option<&Counter>,
    ) -> bool {
        let n = self.urls.len();
        if n < 2 {
            return false;
        }
        let to = next_after(from, n);
        let moved = self
            .current
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            tracing::warn!(from = %self.urls[from], to = %self.urls[to], error = %why, "control plane failover");
            if let Some(c) = counter {
                c.inc();
            }
        }
        moved
    }
}

/// The replica after `from` among `n`, wrapping.
pub(super) fn next_after(from: usize, n: usize) -> usize {
    (from + 1) % n.max(1)
}

/// The URLs of a `--control` value: `http(s)://host[:port]`, comma
/// separated; each checked as a single one is, duplicates dropped.
pub fn control_urls(list: &str) -> Result<Vec<String>, ClientError> {
    let mut urls: Vec<String> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = check_base_url(item)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return Err(ClientError::InvalidUrl(format!(
            "{list:?}: expected https://host:port (several: comma separated)"
        )));
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_trim_and_dedupe() {
        let t = Targets::parse(" http://a:1 , http://b:2/,,http://a:1").unwrap();
        assert_eq!(t.urls(), ["http://a:1", "http://b:2"]);
        assert_eq!(t.current(), 0);
        for bad in ["", " , ", "http://a:1,ftp://b:2", "http://a:1,b:2"] {
            assert!(
                matches!(Targets::parse(bad), Err(ClientError::InvalidUrl(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn failover_is_round_robin_from_the_failed_one_and_wraps() {
        let t = Targets::parse("http://a:1,http://b:1,http://c:1").unwrap();
        let counter = Counter::default();
        let order: Vec<&str> = (0..4)
            .map(|_| {
                assert!(t.fail_over(t.current(), &"down", Some(&counter)));
                t.url(t.current())
            })
            .collect();
        assert_eq!(
            order,
            ["http://b:1", "http://c:1", "http://a:1", "http://b:1"]
        );
        assert_eq!(counter.get(), 4);
        // A second failure reported for a replica already left moves
        // nothing: the requests that failed together move one step.
        assert!(!t.fail_over(0, &"down", Some(&counter)));
        assert_eq!(t.url(t.current()), "http://b:1");
        assert_eq!(counter.get(), 4);
        assert_eq!(next_after(2, 3), 0);
    }

    #[test]
    fn a_single_url_never_moves() {
        let t = Targets::parse("http://a:1").unwrap();
        let counter = Counter::default();
        assert!(!t.fail_over(0, &"down", Some(&counter)));
        assert_eq!((t.current(), counter.get()), (0, 0));
    }
}
