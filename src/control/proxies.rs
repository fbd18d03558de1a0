//! The proxies watching the registry, and the revision each has applied.
//!
//! A proxy names itself when it opens its watch; the watch stream holds a
//! [`Connection`] for as long as it is open, so the table lists exactly
//! the proxies connected now. Each proxy reports the revisions it applies
//! (`PUT /v1/proxies/{id}/applied`), and a proxy that is stopping waits
//! until no connected proxy is behind the revision that removed its
//! instance ([`Proxies::wait_caught_up`]): only then can no caller still
//! pick it, and it stops accepting.
//!
//! Concurrency: one mutex over the table, held only for short sections
//! that neither block nor await. Every change a waiter cares about (an
//! applied revision, a disconnection) bumps `epoch`, a watch channel the
//! waiters sleep on; they re-read the table when it moves. A proxy that
//! reconnects before its old stream is dropped gets a new generation, so
//! the old stream's drop does not remove the new entry.

use crate::identity::rfc3339;
use crate::model::proxies::{ProxyInfo, ProxyList, WatcherInfo};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The longest `wait` a caller of [`Proxies::wait_caught_up`] may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Proxies {
    table: Mutex<Table>,
    /// Bumped on every applied revision and every disconnection.
    epoch: watch::Sender<u64>,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    next_generation: u64,
}

struct Entry {
    info: ProxyInfo,
    generation: u64,
}

/// Why an applied revision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppliedError {
    /// No watch is open under this id (never opened, or closed).
    #[error("no proxy {0:?} is watching (a proxy reports what it applied on an open watch)")]
    Unknown(String),
    /// The watch was opened with another identity.
    #[error("proxy {proxy:?} watches as {owner}; {caller} cannot report for it")]
    NotOwner {
        proxy: String,
        owner: String,
        caller: String,
    },
}

/// Held by one open watch stream; dropping it disconnects the proxy.
pub struct Connection {
    proxies: Arc<Proxies>,
    proxy: String,
    generation: u64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut t = self.proxies.table();
        if t.entries
            .get(&self.proxy)
            .is_some_and(|e| e.generation == self.generation)
        {
            t.entries.remove(&self.proxy);
        }
        drop(t);
        self.proxies.epoch.send_modify(|e| *e += 1);
    }
}

impl Proxies {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere while holding the lock leaves a table that is
        // still consistent (every section is one insert or remove).
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A watch opened by `info.proxy` from `address`, starting from
    /// `since` (what the proxy already has applied).
    pub fn connect(
        self: &Arc<Self>,
        info: WatcherInfo,
        identity: Option<String>,
        address: IpAddr,
        since: u64,
    ) -> Connection {
        let mut t = self.table();
        t.next_generation += 1;
        let generation = t.next_generation;
        let proxy = info.proxy.clone();
        t.entries.insert(
            proxy.clone(),
            Entry {
                info: ProxyInfo {
                    watcher: info,
                    identity,
                    address,
                    connected_at: rfc3339(SystemTime::now()),
                    applied: since,
                },
                generation,
            },
        );
        drop(t);
        self.epoch.send_modify(|e| *e += 1);
        Connection {
            proxies: self.clone(),
            proxy,
            generation,
        }
    }

    /// `proxy` has applied `revision`. Revisions only move forward: a
    /// late report of an older one changes nothing. `caller` is the
    /// reporting identity (`None` with identity off).
    pub fn applied(
        &self,
        proxy: &str,
        revision: u64,
        caller: Option<&str>,
    ) -> Result<u64, AppliedError> {
        let mut t = self.table();
        let entry = t
            .entries
            .get_mut(proxy)
            .ok_or_else(|| AppliedError::Unknown(proxy.to_string()))?;
        if let (Some(owner), Some(caller)) = (&entry.info.identity, caller) {
            if owner != caller {
                return Err(AppliedError::NotOwner {
                    proxy: proxy.to_string(),
                    owner: owner.clone(),
                    caller: caller.to_string(),
                });
            }
        }
        entry.info.applied = entry.info.applied.max(revision);
        let applied = entry.info.applied;
        drop(t);
        self.epoch.send_modify(|e| *e += 1);
        Ok(applied)
    }

    /// Every connected proxy, or with `behind` only those whose applied
    /// revision is below it.
    pub fn list(&self, revision: u64, behind: Option<u64>) -> ProxyList {
        let t = self.table();
        ProxyList {
            revision,
            watching: t.entries.len(),
            proxies: t
                .entries
                .values()
                .filter(|e| behind.is_none_or(|r| e.info.applied < r))
                .map(|e| e.info.clone())
                .collect(),
        }
    }

    /// Answers once no connected proxy is behind `revision`, or after
    /// `wait` (at most [`MAX_WAIT`]) with those still behind.
    /// `current` reads the registry's revision for the answer.
    pub async fn wait_caught_up(
        &self,
        revision: u64,
        wait: Duration,
        current: impl Fn() -> u64,
    ) -> ProxyList {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut epoch = self.epoch.subscribe();
        loop {
            epoch.mark_unchanged();
            let list = self.list(current(), Some(revision));
            if list.proxies.is_empty() {
                return list;
            }
            tokio::select! {
                r = epoch.changed() => if r.is_err() { return list },
                () = tokio::time::sleep_until(deadline) => return self.list(current(), Some(revision)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> WatcherInfo {
        WatcherInfo {
            proxy: id.into(),
            service: Some("web".into()),
            ..WatcherInfo::default()
        }
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_connection_lists_the_proxy_until_it_is_dropped() {
        let p = Arc::new(Proxies::default());
        let a = p.connect(info("a"), None, HERE, 4);
        let b = p.connect(info("b"), None, HERE, 7);
        let all = p.list(9, None);
        assert_eq!(all.watching, 2);
        assert_eq!(
            all.proxies.iter().map(|i| i.applied).collect::<Vec<_>>(),
            [4, 7]
        );
        assert_eq!(p.list(9, Some(5)).proxies[0].watcher.proxy, "a");
        drop(a);
        assert_eq!(p.list(9, None).watching, 1);
        drop(b);
        assert_eq!(p.list(9, None).watching, 0);
    }

    #[test]
    fn a_reconnect_outlives_the_old_stream() {
        let p = Arc::new(Proxies::default());
        let old = p.connect(info("a"), None, HERE, 1);
        let new = p.connect(info("a"), None, HERE, 3);
        drop(old);
        assert_eq!(p.list(3, None).proxies[0].applied, 3, "new entry kept");
        drop(new);
        assert!(p.list(3, None).proxies.is_empty());
    }

    #[test]
    fn applied_moves_forward_for_its_owner_only() {
        let p = Arc::new(Proxies::default());
        let _c = p.connect(info("a"), Some("spiffe://t/ns/d/sa/web".into()), HERE, 5);
        assert_eq!(p.applied("a", 8, Some("spiffe://t/ns/d/sa/web")), Ok(8));
        assert_eq!(p.applied("a", 6, None), Ok(8), "older report ignored");
        assert!(matches!(
            p.applied("a", 9, Some("spiffe://t/ns/d/sa/other")),
            Err(AppliedError::NotOwner { .. })
        ));
        assert_eq!(
            p.applied("nobody", 9, None),
            Err(AppliedError::Unknown("nobody".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_the_last_proxy_catches_up_or_leaves() {
        let p = Arc::new(Proxies::default());
        let _a = p.connect(info("a"), None, HERE, 1);
        let b = p.connect(info("b"), None, HERE, 1);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_caught_up(2, Duration::from_secs(30), || 2).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        p.applied("a", 2, None).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "b is still behind");
        let started = tokio::time::Instant::now();
        drop(b);
        let list = waiter.await.unwrap();
        assert!(list.proxies.is_empty());
        assert_eq!(list.watching, 1);
        assert!(started.elapsed() < Duration::from_millis(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_deadline_naming_who_is_behind() {
        let p = Arc::new(Proxies::default());
        let _a = p.connect(info("a"), None, HERE, 1);
        let started = tokio::time::Instant::now();
        let list = p.wait_caught_up(2, Duration::from_secs(3), || 2).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(list.proxies[0].watcher.proxy, "a");
        let capped = p.wait_caught_up(2, Duration::from_secs(3600), || 2).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3) + MAX_WAIT);
        assert_eq!(capped.proxies.len(), 1);
    }
}
