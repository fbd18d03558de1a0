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
use crate::model::stats::StatsReport;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

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
    /// Its latest rolling window, and when it came.
    stats: Option<(Instant, Arc<StatsReport>)>,
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

impl Entry {
    /// `caller` may act for this entry: the identity its watch was opened
    /// with, or anyone when either side has none (identity off, operators).
    fn owned_by(&self, proxy: &str, caller: Option<&str>) -> Result<(), AppliedError> {
        match (&self.info.identity, caller) {
            (Some(owner), Some(caller)) if owner != caller => Err(AppliedError::NotOwner {
                proxy: proxy.to_string(),
                owner: owner.clone(),
                caller: caller.to_string(),
            }),
            _ => Ok(()),
        }
    }
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
    /// `since` (what the proxy already has applied) while the registry is
    /// at `current`. A `since` ahead of the registry (a proxy's cache from
    /// a control plane that lost its data) counts as nothing applied.
    /// Refused when another identity holds the id: a workload cannot take
    /// over another's entry (and make drains stop waiting for it).
    pub fn connect(
        self: &Arc<Self>,
        info: WatcherInfo,
        identity: Option<String>,
        address: IpAddr,
        since: u64,
        current: u64,
    ) -> Result<Connection, AppliedError> {
        let mut t = self.table();
        if let Some(held) = t.entries.get(&info.proxy) {
            held.owned_by(&info.proxy, identity.as_deref())?;
        }
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
                    applied: if since <= current { since } else { 0 },
                    configs: Vec::new(),
                },
                generation,
                stats: None,
            },
        );
        drop(t);
        self.epoch.send_modify(|e| *e += 1);
        Ok(Connection {
            proxies: self.clone(),
            proxy,
            generation,
        })
    }

    /// `proxy` has applied `revision`. Revisions only move forward: a
    /// late report of an older one changes nothing, and one past the
    /// registry's `current` counts as `current`. `caller` is the reporting
    /// identity (`None` with identity off).
    pub fn applied(
        &self,
        proxy: &str,
        revision: u64,
        current: u64,
        caller: Option<&str>,
    ) -> Result<u64, AppliedError> {
        let revision = revision.min(current);
        let applied = self.report(proxy, caller, |info| {
            info.applied = info.applied.max(revision);
            info.applied
        })?;
        self.epoch.send_modify(|e| *e += 1);
        Ok(applied)
    }

    /// What `proxy`'s config subscriptions have delivered (replaces the
    /// last report).
    pub fn delivered(
        &self,
        proxy: &str,
        report: crate::model::config::DeliveredConfigs,
        caller: Option<&str>,
    ) -> Result<(), AppliedError> {
        self.report(proxy, caller, |info| info.configs = report.configs)
    }

    /// `proxy`'s rolling window (replaces the last one).
    pub fn stats(
        &self,
        proxy: &str,
        report: StatsReport,
        caller: Option<&str>,
    ) -> Result<(), AppliedError> {
        self.entry(proxy, caller, |e| {
            e.stats = Some((Instant::now(), Arc::new(report)));
        })
    }

    /// `caller` may report for `proxy` (it is connected, and its own).
    pub fn stats_owner(&self, proxy: &str, caller: Option<&str>) -> Result<(), AppliedError> {
        self.report(proxy, caller, |_| ())
    }

    /// The latest window of every connected proxy that pushed one within
    /// `fresh`, with the service it calls from.
    pub fn reports(&self, fresh: Duration) -> Vec<crate::control::dashboard::Reported> {
        let now = Instant::now();
        self.table()
            .entries
            .values()
            .filter_map(|e| {
                let (at, report) = e.stats.as_ref()?;
                (now.saturating_duration_since(*at) <= fresh).then(|| {
                    crate::control::dashboard::Reported {
                        caller: e.info.watcher.service.clone(),
                        report: report.clone(),
                    }
                })
            })
            .collect()
    }

    /// Changes what the table holds for `proxy`, reported by `caller`: an
    /// open watch of that id, opened by that identity (or by anyone, when
    /// either has none).
    fn report<T>(
        &self,
        proxy: &str,
        caller: Option<&str>,
        change: impl FnOnce(&mut ProxyInfo) -> T,
    ) -> Result<T, AppliedError> {
        self.entry(proxy, caller, |e| change(&mut e.info))
    }

    /// Changes `proxy`'s entry, for `caller` (see [`Proxies::report`]).
    fn entry<T>(
        &self,
        proxy: &str,
        caller: Option<&str>,
        change: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, AppliedError> {
        let mut t = self.table();
        let entry = t
            .entries
            .get_mut(proxy)
            .ok_or_else(|| AppliedError::Unknown(proxy.to_string()))?;
        entry.owned_by(proxy, caller)?;
        Ok(change(entry))
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
        let a = p.connect(info("a"), None, HERE, 4, 9).unwrap();
        let b = p.connect(info("b"), None, HERE, 7, 9).unwrap();
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
        let old = p.connect(info("a"), None, HERE, 1, 3).unwrap();
        let new = p.connect(info("a"), None, HERE, 3, 3).unwrap();
        drop(old);
        assert_eq!(p.list(3, None).proxies[0].applied, 3, "new entry kept");
        drop(new);
        assert!(p.list(3, None).proxies.is_empty());
    }

    #[test]
    fn applied_moves_forward_for_its_owner_only() {
        let p = Arc::new(Proxies::default());
        let web = "spiffe://t/ns/d/sa/web";
        let other = "spiffe://t/ns/d/sa/other";
        let _c = p.connect(info("a"), Some(web.into()), HERE, 5, 9).unwrap();
        assert_eq!(p.applied("a", 8, 9, Some(web)), Ok(8));
        assert_eq!(p.applied("a", 6, 9, None), Ok(8), "older report ignored");
        assert_eq!(
            p.applied("a", 1000, 9, None),
            Ok(9),
            "not past the registry"
        );
        assert!(matches!(
            p.applied("a", 9, 9, Some(other)),
            Err(AppliedError::NotOwner { .. })
        ));
        assert!(
            matches!(
                p.connect(info("a"), Some(other.into()), HERE, 9, 9),
                Err(AppliedError::NotOwner { .. })
            ),
            "another identity cannot take the entry over"
        );
        assert_eq!(p.list(9, None).proxies[0].identity.as_deref(), Some(web));
        assert_eq!(
            p.applied("nobody", 9, 9, None),
            Err(AppliedError::Unknown("nobody".into()))
        );
        let ahead = p.connect(info("b"), None, HERE, 50, 9).unwrap();
        assert_eq!(
            p.list(9, Some(1)).proxies.len(),
            1,
            "since past the registry: nothing applied"
        );
        drop(ahead);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_the_last_proxy_catches_up_or_leaves() {
        let p = Arc::new(Proxies::default());
        let _a = p.connect(info("a"), None, HERE, 1, 2).unwrap();
        let b = p.connect(info("b"), None, HERE, 1, 2).unwrap();
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_caught_up(2, Duration::from_secs(30), || 2).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        p.applied("a", 2, 2, None).unwrap();
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
        let _a = p.connect(info("a"), None, HERE, 1, 2).unwrap();
        let started = tokio::time::Instant::now();
        let list = p.wait_caught_up(2, Duration::from_secs(3), || 2).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(list.proxies[0].watcher.proxy, "a");
        let capped = p.wait_caught_up(2, Duration::from_secs(3600), || 2).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3) + MAX_WAIT);
        assert_eq!(capped.proxies.len(), 1);
    }
}
