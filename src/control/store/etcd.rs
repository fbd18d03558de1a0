//! `--store etcd`: mesh-control replicas over one etcd cluster.
//!
//! Key layout (all under `/mesh/v1/`; values are the API's JSON shapes):
//!
//! | key | value |
//! |---|---|
//! | `inst/<service>/<id>` | an instance |
//! | `vip/<service>` | its VIP, as text |
//! | `vip-ip/<ip>` | the service holding that VIP (the other half of the CAS) |
//! | `policy/<service>`, `authz/<service>`, `route/<name>` | the documents |
//! | `config/<app>/<profile>/<version:020>` | one config version, secrets sealed |
//! | `bundle` | the trust bundle |
//! | `identity/<path>` | the CA's files, sealed with the shared key |
//! | `seal-check` | a keyed hash proving every replica has the same key |
//! | `self-preservation` | the eviction leader's state |
//! | `beats/<replica>` | instances heartbeated at that replica in the last second |
//! | `evicted/<service>/<id>` | marks a delete as an eviction (60 s lease) |
//! | `replicas/<replica>` | a live replica's URL (its lease) |
//! | `leader` | the election (etcd's election API) |
//!
//! The revision is etcd's, so a proxy's `since=REV` means the same on any
//! replica. Every replica watches the whole prefix and applies each
//! revision's rows through `Registry::apply`.
//!
//! Leases: an instance's liveness is *not* an etcd lease. A heartbeat is
//! taken by whichever replica gets it and flushed once a second in that
//! replica's `beats/` key; every replica renews the instance when it reads
//! it. Exactly one replica, the elected leader, runs the sweep and its
//! self-preservation rule, and each eviction is a transaction guarded by
//! the leader key (a deposed leader cannot evict) and by the revision the
//! instance was written at (a re-registration wins). etcd leases hold only
//! what should vanish with a replica: its election key, `replicas/` and
//! `beats/` rows; nothing an instance needs.

use super::{Backend, Committed, Loaded, StoreError, StoredConfig, Write};
use crate::config::seal::Sealer;
use crate::control::registry::Registry;
use crate::model::config::ConfigMeta;
use crate::model::{Instance, RemoveReason};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, LeaderKey,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::watch as signal;

const PREFIX: &str = "/mesh/v1/";
/// Every etcd call gives up after this long (etcd elects a leader in ~1 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The replica's lease: its election key and rows vanish this long after it
/// stops renewing. Short, so a dead leader is replaced quickly.
const REPLICA_TTL: i64 = 5;
/// Renewals of the replica's lease, and heartbeat flushes.
const PULSE: Duration = Duration::from_secs(1);
/// How long an eviction marker lives: only the watch that reads the delete
/// beside it needs it.
const MARKER_TTL: i64 = 60;

/// What `mesh-ctl status` shows about the replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// This replica.
    pub replica: String,
    /// The replica running evictions, if one is elected.
    pub leader: Option<String>,
    /// Every live replica and its URL.
    pub replicas: Vec<Replica>,
    /// Could this replica reach etcd at its last try?
    pub store_reachable: bool,
    pub endpoints: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    pub url: String,
}

/// A connection to etcd and this replica's place among the others.
pub struct EtcdStore {
    client: Client,
    /// The runtime the blocking trait methods run etcd calls on.
    rt: Handle,
    endpoints: Vec<String>,
    replica: String,
    url: String,
    /// Whether the last etcd call (or the watch) worked: `/ready`.
    reachable: AtomicBool,
    /// The election key while this replica leads: evictions are guarded by
    /// its existence.
    fence: Mutex<Option<Vec<u8>>>,
}

fn key(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

fn config_key(application: &str, profile: &str, version: u64) -> String {
    key(&format!("config/{application}/{profile}/{version:020}"))
}

/// A row of the prefix, read back (one at a time, never stored, so the
/// size of `Write` does not matter here).
#[allow(clippy::large_enum_variant)]
enum Row {
    Write(Write),
    /// `beats/<replica>`: instances renewed there.
    Beats(Vec<String>),
    /// `evicted/<service>/<id>`.
    Evicted(String),
    /// Rows the view does not hold (identity files, replicas, election).
    Other,
}

// === impl EtcdStore ===

impl EtcdStore {
    /// Connects (the client balances over `endpoints` and fails over by
    /// itself) and checks that etcd answers.
    pub async fn connect(
        endpoints: Vec<String>,
        replica: String,
        url: String,
    ) -> Result<Arc<Self>, StoreError> {
        let err = |e: etcd_client::Error| StoreError::Etcd {
            endpoints: endpoints.join(","),
            reason: e.to_string(),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            // No per-request timeout: a campaign and a watch last long.
            // Each short call is bounded by `within` instead.
            // HTTP/2 pings notice a dead member under an idle watch.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // Refuse a member cut off from its quorum instead of hanging.
            .with_require_leader(true);
        let client = Client::connect(&endpoints, Some(options))
            .await
            .map_err(err)?;
        retried(|| {
            let mut c = client.clone();
            async move { c.status().await }
        })
        .await
        .map_err(err)?;
        Ok(Arc::new(EtcdStore {
            client,
            rt: Handle::current(),
            endpoints,
            replica,
            url,
            reachable: AtomicBool::new(true),
            fence: Mutex::new(None),
        }))
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        self.reachable.store(false, Ordering::Relaxed);
        StoreError::Etcd {
            endpoints: self.endpoints.join(","),
            reason: e.to_string(),
        }
    }

    /// Runs an etcd call from a blocking thread ([`retried`]: `call` makes
    /// each attempt).
    fn block<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        match self.rt.block_on(retried(call)) {
            Ok(v) => {
                self.reachable.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every replica must seal with the same key: the first one records a
    /// keyed hash of a fixed text, the others compare theirs.
    pub fn check_seal(&self, sealer: &Sealer) -> Result<(), StoreError> {
        let mine = sealer.hash(b"mesh seal check v1");
        let k = key("seal-check");
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), mine.clone(), None)])
            .or_else([TxnOp::get(k.clone(), None)]);
        let c = self.client.clone();
        let resp = self.block(|| {
            let (mut c, txn) = (c.clone(), txn.clone());
            async move { c.txn(txn).await }
        })?;
        if resp.succeeded() {
            return Ok(());
        }
        let theirs = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match theirs.as_deref() == Some(mine.as_bytes()) {
            true => Ok(()),
            false => Err(self.err(
                "--seal-key differs from the key the other replicas use (every replica needs the same file)",
            )),
        }
    }

    /// Makes `dir` (the CA's files) the cluster's: fetched if another
    /// replica published them, else made here by `make` and published; if
    /// two replicas race, the loser takes the winner's files and makes
    /// again. Values are sealed with the shared key.
    pub fn share_identity<T, E: std::fmt::Display>(
        &self,
        dir: &Path,
        sealer: &Sealer,
        make: impl Fn() -> Result<T, E>,
    ) -> Result<T, StoreError> {
        let prefix = key("identity/");
        for _ in 0..2 {
            let c = self.client.clone();
            let p = prefix.clone();
            let got = self.block(|| {
                let (mut c, p) = (c.clone(), p.clone());
                async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
            })?;
            if !got.kvs().is_empty() {
                let _ = std::fs::remove_dir_all(dir);
                for kv in got.kvs() {
                    let rel = kv.key_str().map_err(|e| self.err(e))?;
                    let rel = rel.trim_start_matches(prefix.as_str());
                    if rel.split('/').any(|part| part == ".." || part.is_empty()) {
                        return Err(self.err(format!("identity row {rel:?} is not a plain path")));
                    }
                    let sealed = kv.value_str().map_err(|e| self.err(e))?;
                    let plain = sealer.open(&format!("identity/{rel}"), sealed)?;
                    let path = dir.join(rel);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| self.err(e))?;
                    }
                    write_private(&path, &plain).map_err(|e| self.err(e))?;
                }
                return make().map_err(|e| self.err(e));
            }
            let _ = std::fs::remove_dir_all(dir);
            let made = make().map_err(|e| self.err(e))?;
            let mut ops = Vec::new();
            for (rel, bytes) in files_under(dir).map_err(|e| self.err(e))? {
                let sealed = sealer.seal(&format!("identity/{rel}"), &bytes)?;
                ops.push(TxnOp::put(format!("{prefix}{rel}"), sealed, None));
            }
            let marker = key("identity/.owner");
            ops.push(TxnOp::put(
                marker.clone(),
                sealer.seal("identity/.owner", self.replica.as_bytes())?,
                None,
            ));
            let txn = Txn::new()
                .when([Compare::create_revision(marker, CompareOp::Equal, 0)])
                .and_then(ops);
            let c = self.client.clone();
            if self
                .block(|| {
                    let (mut c, txn) = (c.clone(), txn.clone());
                    async move { c.txn(txn).await }
                })?
                .succeeded()
            {
                tracing::info!("identity made here and shared through etcd");
                return Ok(made);
            }
            // Another replica won the race: take its files.
        }
        Err(self.err("cannot agree on the identity files"))
    }

    /// What `mesh-ctl status` shows.
    pub async fn ha_status(&self) -> HaStatus {
        let c = self.client.clone();
        let replicas = retried(|| {
            let mut c = c.clone();
            async move {
                c.get(key("replicas/"), Some(GetOptions::new().with_prefix()))
                    .await
            }
        })
        .await
        .map(|r| {
            r.kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Replica>(kv.value()).ok())
                .collect()
        });
        let leader = retried(|| {
            let mut c = c.clone();
            async move { c.leader(key("leader")).await }
        })
        .await
        .ok()
        .and_then(|r| {
            r.kv()
                .and_then(|kv| kv.value_str().ok().map(str::to_string))
        });
        HaStatus {
            replica: self.replica.clone(),
            leader,
            store_reachable: replicas.is_ok(),
            replicas: replicas.unwrap_or_default(),
            endpoints: self.endpoints.clone(),
        }
    }

    /// Reads one row of the prefix.
    fn decode(&self, kv: &KeyValue) -> Result<Row, StoreError> {
        let k = kv.key_str().map_err(|e| self.err(e))?;
        let rest = k.strip_prefix(PREFIX).unwrap_or(k);
        let (kind, name) = rest.split_once('/').unwrap_or((rest, ""));
        let json = |what: &'static str| StoreError::Corrupt {
            path: self.endpoints.join(",").into(),
            table: what,
            key: k.to_string(),
            reason: "not the JSON this key holds".into(),
        };
        let v = kv.value();
        Ok(match kind {
            "inst" => Row::Write(Write::PutInstance(
                serde_json::from_slice::<Instance>(v).map_err(|_| json("instance"))?,
            )),
            "vip" => Row::Write(Write::PutVip {
                service: name.to_string(),
                vip: kv
                    .value_str()
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| json("vip"))?,
            }),
            "policy" => Row::Write(Write::PutPolicy(
                serde_json::from_slice(v).map_err(|_| json("policy"))?,
            )),
            "authz" => Row::Write(Write::PutAuthorization(
                serde_json::from_slice(v).map_err(|_| json("authorization"))?,
            )),
            "route" => Row::Write(Write::PutRoute(
                serde_json::from_slice(v).map_err(|_| json("route"))?,
            )),
            "config" => {
                let mut c: StoredConfig = serde_json::from_slice(v).map_err(|_| json("config"))?;
                // The revision it was made at is etcd's.
                c.meta.revision = kv.create_revision() as u64;
                Row::Write(Write::PutConfig(c))
            }
            "bundle" => Row::Write(Write::PutBundle(
                serde_json::from_slice(v).map_err(|_| json("bundle"))?,
            )),
            "self-preservation" => Row::Write(Write::SelfPreservation(v == b"true")),
            "beats" => Row::Beats(serde_json::from_slice(v).map_err(|_| json("beats"))?),
            "evicted" => Row::Evicted(name.to_string()),
            _ => Row::Other,
        })
    }

    /// The delete of a row, as the view applies it.
    fn decode_delete(k: &str, evicted: &BTreeSet<String>) -> Option<Write> {
        let rest = k.strip_prefix(PREFIX)?;
        let (kind, name) = rest.split_once('/')?;
        Some(match kind {
            "inst" => {
                let (service, id) = name.split_once('/')?;
                let reason = match evicted.contains(name) {
                    true => RemoveReason::LeaseExpired,
                    false => RemoveReason::Deregistered,
                };
                Write::DeleteInstance {
                    service: service.to_string(),
                    id: id.to_string(),
                    reason,
                    if_written_at: None,
                }
            }
            "policy" => Write::DeletePolicy {
                service: name.to_string(),
            },
            "authz" => Write::DeleteAuthorization {
                service: name.to_string(),
            },
            "route" => Write::DeleteRoute {
                name: name.to_string(),
            },
            _ => return None,
        })
    }

    /// The transaction for `writes`: its guards and its operations.
    fn txn(&self, writes: &[Write]) -> Result<Txn, StoreError> {
        let mut when = Vec::new();
        let mut ops = Vec::new();
        let mut marker_lease = None;
        let put = |k: String, v: Vec<u8>| TxnOp::put(k, v, None);
        for w in writes {
            match w {
                Write::PutInstance(i) => ops.push(put(
                    key(&format!("inst/{}/{}", i.service, i.id)),
                    serde_json::to_vec(i).unwrap_or_default(),
                )),
                Write::DeleteInstance {
                    service,
                    id,
                    reason,
                    if_written_at,
                } => {
                    let k = key(&format!("inst/{service}/{id}"));
                    if let Some(rev) = if_written_at {
                        when.push(Compare::mod_revision(
                            k.clone(),
                            CompareOp::Equal,
                            *rev as i64,
                        ));
                        when.push(self.fence_guard()?);
                    }
                    ops.push(TxnOp::delete(k, None));
                    if *reason == RemoveReason::LeaseExpired {
                        let lease = match marker_lease {
                            Some(l) => l,
                            None => {
                                let c = self.client.clone();
                                let l = self
                                    .block(|| {
                                        let mut c = c.clone();
                                        async move { c.lease_grant(MARKER_TTL, None).await }
                                    })?
                                    .id();
                                marker_lease = Some(l);
                                l
                            }
                        };
                        ops.push(TxnOp::put(
                            key(&format!("evicted/{service}/{id}")),
                            "",
                            Some(PutOptions::new().with_lease(lease)),
                        ));
                    }
                }
                Write::PutVip { service, vip } => {
                    let (by_name, by_ip) = (
                        key(&format!("vip/{service}")),
                        key(&format!("vip-ip/{vip}")),
                    );
                    when.push(Compare::create_revision(
                        by_name.clone(),
                        CompareOp::Equal,
                        0,
                    ));
                    when.push(Compare::create_revision(by_ip.clone(), CompareOp::Equal, 0));
                    ops.push(put(by_name, vip.to_string().into_bytes()));
                    ops.push(put(by_ip, service.clone().into_bytes()));
                }
                Write::PutPolicy(p) => ops.push(put(
                    key(&format!("policy/{}", p.service)),
                    serde_json::to_vec(p).unwrap_or_default(),
                )),
                Write::DeletePolicy { service } => {
                    ops.push(TxnOp::delete(key(&format!("policy/{service}")), None))
                }
                Write::PutAuthorization(p) => ops.push(put(
                    key(&format!("authz/{}", p.service)),
                    serde_json::to_vec(p).unwrap_or_default(),
                )),
                Write::DeleteAuthorization { service } => {
                    ops.push(TxnOp::delete(key(&format!("authz/{service}")), None))
                }
                Write::PutConfig(c) => {
                    let k = config_key(&c.meta.application, &c.meta.profile, c.meta.version);
                    when.push(Compare::create_revision(k.clone(), CompareOp::Equal, 0));
                    ops.push(put(k, serde_json::to_vec(c).unwrap_or_default()));
                }
                Write::PutRoute(r) => ops.push(put(
                    key(&format!("route/{}", r.name)),
                    serde_json::to_vec(r).unwrap_or_default(),
                )),
                Write::DeleteRoute { name } => {
                    ops.push(TxnOp::delete(key(&format!("route/{name}")), None))
                }
                Write::PutBundle(b) => ops.push(put(
                    key("bundle"),
                    serde_json::to_vec(b).unwrap_or_default(),
                )),
                Write::SelfPreservation(on) => {
                    when.push(self.fence_guard()?);
                    ops.push(put(key("self-preservation"), on.to_string().into_bytes()));
                }
            }
        }
        Ok(Txn::new().when(when).and_then(ops))
    }

    fn set_fence(&self, key: Option<Vec<u8>>) {
        *self.fence.lock().unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// "This replica still holds the leader key."
    fn fence_guard(&self) -> Result<Compare, StoreError> {
        let fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        match &*fence {
            Some(k) => Ok(Compare::create_revision(k.clone(), CompareOp::Greater, 0)),
            None => Err(self.err("not the leader: this replica may not evict")),
        }
    }

    /// Follows the prefix from the registry's revision until `stop`:
    /// every revision's rows applied, heartbeats renewed, and a reload if
    /// etcd compacted past us while we were away.
    pub async fn follow(
        self: Arc<Self>,
        registry: Arc<Registry>,
        mut stop: signal::Receiver<bool>,
    ) {
        let mut backoff =
            crate::discovery::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let from = registry.store_revision() + 1;
            let mut c = self.client.clone();
            let opened = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = c.watch(PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(from as i64))) => r,
            };
            match opened {
                Ok(mut stream) => loop {
                    let msg = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(resp)) if resp.compact_revision() > 0 => {
                            tracing::warn!(
                                compacted = resp.compact_revision(),
                                from,
                                "etcd compacted past this replica's view; reloading it"
                            );
                            let (me, reg) = (self.clone(), registry.clone());
                            match tokio::task::spawn_blocking(move || {
                                me.load().map(|l| reg.replace(l))
                            })
                            .await
                            {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => {
                                    tracing::error!(error = %e, "cannot reload from etcd")
                                }
                                Err(e) => tracing::error!(error = %e, "reload task failed"),
                            }
                            break;
                        }
                        Ok(Some(resp)) if resp.canceled() => {
                            tracing::warn!(
                                reason = resp.cancel_reason(),
                                "etcd cancelled the watch; watching again"
                            );
                            break;
                        }
                        Ok(Some(resp)) => {
                            self.reachable.store(true, Ordering::Relaxed);
                            backoff.reset();
                            let header = resp.header().map_or(0, |h| h.revision() as u64);
                            self.apply_events(&registry, resp.events());
                            if resp.events().is_empty() && header > 0 {
                                registry.advance(header);
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("etcd watch ended; watching again");
                            break;
                        }
                        Err(e) => {
                            self.reachable.store(false, Ordering::Relaxed);
                            tracing::warn!(error = %e, "etcd watch failed; watching again");
                            break;
                        }
                    }
                },
                Err(e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot watch etcd; retrying");
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One watch response: its events grouped by revision (one etcd
    /// transaction each), each group applied as one registry revision.
    fn apply_events(&self, registry: &Registry, events: &[etcd_client::Event]) {
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv().map_or(0, |kv| kv.mod_revision());
            let mut j = i;
            while j < events.len() && events[j].kv().map_or(0, |kv| kv.mod_revision()) == rev {
                j += 1;
            }
            let group = &events[i..j];
            i = j;
            let mut evicted = BTreeSet::new();
            let mut writes = Vec::new();
            let mut beats = Vec::new();
            for ev in group {
                let (Some(kv), EventType::Put) = (ev.kv(), ev.event_type()) else {
                    continue;
                };
                match self.decode(kv) {
                    Ok(Row::Write(w)) => writes.push(w),
                    Ok(Row::Beats(b)) => beats.extend(b),
                    Ok(Row::Evicted(name)) => {
                        evicted.insert(name);
                    }
                    Ok(Row::Other) => {}
                    Err(e) => tracing::error!(error = %e, "unreadable row in etcd; skipped"),
                }
            }
            for ev in group {
                if let (Some(kv), EventType::Delete) = (ev.kv(), ev.event_type()) {
                    if let Some(w) = kv
                        .key_str()
                        .ok()
                        .and_then(|k| Self::decode_delete(k, &evicted))
                    {
                        writes.push(w);
                    }
                }
            }
            if !beats.is_empty() {
                registry.renew(&beats);
            }
            match writes.is_empty() {
                true => registry.advance(rev as u64),
                false => registry.apply(rev as u64, &writes),
            }
        }
    }

    /// Holds this replica's lease: flushes heartbeats, lists the replica,
    /// campaigns for leadership and, while leader, lets the registry evict.
    /// Runs until `stop`; then gives the lease up so another replica leads
    /// at once.
    pub async fn lead(self: Arc<Self>, registry: Arc<Registry>, mut stop: signal::Receiver<bool>) {
        let mut backoff =
            crate::discovery::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            let term = self.clone().term(registry.clone(), stop.clone()).await;
            registry.set_evicts(false);
            self.set_fence(None);
            match term {
                Ok(()) => return,
                Err(e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "lost the replica lease; starting over");
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One lease: `Ok` when stopped, `Err` when the lease is lost.
    async fn term(
        self: Arc<Self>,
        registry: Arc<Registry>,
        stop: signal::Receiver<bool>,
    ) -> Result<(), etcd_client::Error> {
        let stopped = stopped(stop);
        tokio::pin!(stopped);
        let mut c = self.client.clone();
        let lease = retried(|| {
            let mut c = c.clone();
            async move { c.lease_grant(REPLICA_TTL, None).await }
        })
        .await?
        .id();
        let (mut keeper, mut acks) = within(c.lease_keep_alive(lease)).await?;
        let me = serde_json::to_vec(&Replica {
            id: self.replica.clone(),
            url: self.url.clone(),
        })
        .unwrap_or_default();
        let opts = || Some(PutOptions::new().with_lease(lease));
        within(c.put(key(&format!("replicas/{}", self.replica)), me, opts())).await?;
        let mut campaign = {
            let mut c = self.client.clone();
            let id = self.replica.clone();
            Box::pin(async move { c.campaign(key("leader"), id, lease).await })
        };
        let mut leader: Option<LeaderKey> = None;
        let mut ticks = tokio::time::interval(PULSE);
        let mut last_ack = tokio::time::Instant::now();
        let result = loop {
            tokio::select! {
                () = &mut stopped => break Ok(()),
                r = &mut campaign, if leader.is_none() => {
                    let key = r?.take_leader();
                    if let Some(k) = &key {
                        self.set_fence(Some(k.key().to_vec()));
                        registry.set_evicts(true);
                        tracing::info!(replica = %self.replica, "elected: this replica runs the lease sweep");
                    }
                    leader = key;
                    if leader.is_none() {
                        break Err(etcd_client::Error::ElectError("campaign ended without a leader key".into()));
                    }
                }
                _ = ticks.tick() => {
                    if last_ack.elapsed() > Duration::from_secs(REPLICA_TTL as u64 / 2) {
                        // Our lease may be gone in etcd: stop evicting now,
                        // before another leader starts.
                        registry.set_evicts(false);
                        self.set_fence(None);
                        break Err(etcd_client::Error::LeaseKeepAliveError("no renewal acknowledged in time".into()));
                    }
                    within(keeper.keep_alive()).await?;
                    let beats = registry.take_beats();
                    if !beats.is_empty() {
                        let v = serde_json::to_vec(&beats).unwrap_or_default();
                        if let Err(e) = within(c.put(key(&format!("beats/{}", self.replica)), v, opts())).await {
                            tracing::warn!(error = %e, "cannot flush heartbeats to etcd");
                            self.reachable.store(false, Ordering::Relaxed);
                        }
                    }
                }
                a = acks.message() => match a? {
                    Some(ack) if ack.ttl() > 0 => {
                        last_ack = tokio::time::Instant::now();
                        self.reachable.store(true, Ordering::Relaxed);
                    }
                    _ => break Err(etcd_client::Error::LeaseKeepAliveError("lease expired".into())),
                },
            }
        };
        // Give the lease up: the election key and rows go with it, and the
        // next replica in line leads at once.
        let _ = tokio::time::timeout(CALL_TIMEOUT, c.lease_revoke(lease)).await;
        result
    }
}

impl Backend for Arc<EtcdStore> {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let c = self.client.clone();
        let resp = self.block(|| {
            let mut c = c.clone();
            async move { c.get(PREFIX, Some(GetOptions::new().with_prefix())).await }
        })?;
        let mut loaded = Loaded {
            revision: resp.header().map_or(0, |h| h.revision() as u64),
            ..Loaded::default()
        };
        let mut configs: std::collections::BTreeMap<(String, String), StoredConfig> =
            Default::default();
        let mut last = 0;
        for kv in resp.kvs() {
            last = last.max(kv.mod_revision() as u64);
            match self.decode(kv)? {
                Row::Write(Write::PutInstance(i)) => {
                    loaded.instances.push((i, kv.mod_revision() as u64))
                }
                Row::Write(Write::PutVip { service, vip }) => {
                    loaded.vips.insert(service, vip);
                }
                Row::Write(Write::PutPolicy(p)) => loaded.policies.push(p),
                Row::Write(Write::PutAuthorization(p)) => loaded.authorizations.push(p),
                Row::Write(Write::PutRoute(r)) => loaded.routes.push(r),
                // Keys sort by version: the last of each is the latest.
                Row::Write(Write::PutConfig(c)) => {
                    configs.insert((c.meta.application.clone(), c.meta.profile.clone()), c);
                }
                Row::Write(Write::SelfPreservation(on)) => loaded.self_preservation = on,
                _ => {}
            }
        }
        loaded.configs = configs.into_values().collect();
        // Watchers' revision: the last change they could have seen.
        loaded.revision = loaded.revision.max(last);
        Ok(loaded)
    }

    fn commit(&self, _next: u64, writes: &[Write]) -> Result<Committed, StoreError> {
        let txn = self.txn(writes)?;
        let c = self.client.clone();
        let resp = self.block(|| {
            let (mut c, txn) = (c.clone(), txn.clone());
            async move { c.txn(txn).await }
        })?;
        let rev = resp.header().map_or(0, |h| h.revision() as u64);
        Ok(match resp.succeeded() {
            true => Committed::Done(rev),
            false => Committed::Conflict(rev),
        })
    }

    fn config_version(
        &self,
        application: &str,
        profile: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let k = config_key(application, profile, version);
        let c = self.client.clone();
        let resp = self.block(|| {
            let (mut c, k) = (c.clone(), k.clone());
            async move { c.get(k, None).await }
        })?;
        match resp.kvs().first().map(|kv| self.decode(kv)) {
            Some(Ok(Row::Write(Write::PutConfig(c)))) => Ok(Some(c)),
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }

    fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, StoreError> {
        let p = key(&format!("config/{application}/{profile}/"));
        let c = self.client.clone();
        let resp = self.block(|| {
            let (mut c, p) = (c.clone(), p.clone());
            async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
        })?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            if let Row::Write(Write::PutConfig(c)) = self.decode(kv)? {
                out.push(c.meta);
            }
        }
        Ok(out)
    }
}

/// An etcd call bounded by [`CALL_TIMEOUT`], made again while it fails
/// before it left: the client balances over every endpoint, and a call
/// that lands on a dead member's connection fails at connect (nothing was
/// sent, so any call may be repeated) while the live members would answer.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, call()).await {
            Ok(Err(e)) if unsent(&e) && tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                tracing::debug!(error = %e, "etcd call not sent; again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(res) => return res,
            Err(_) => {
                return Err(etcd_client::Error::InvalidArgs(
                    "etcd gave no answer in time".into(),
                ))
            }
        }
    }
}

/// Pause between attempts of [`retried`].
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The call failed opening its connection: no member saw it.
fn unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect")
        }
        _ => false,
    }
}

/// An etcd call bounded by [`CALL_TIMEOUT`] (one attempt: for calls on
/// a stream or a borrowed keeper, which cannot be remade).
async fn within<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::InvalidArgs(
                "etcd gave no answer in time".into(),
            ))
        })
}

/// Completes once `stop` says so.
async fn stopped(mut stop: signal::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Every file under `dir`, as (path relative to `dir`, bytes).
fn files_under(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push((rel.to_string_lossy().into_owned(), std::fs::read(&path)?));
            }
        }
    }
    Ok(out)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}
