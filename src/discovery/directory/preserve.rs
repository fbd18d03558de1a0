//! Client-side self-preservation: a proxy does not drop most of a
//! service's endpoints at once on the control plane's word alone.
//!
//! mesh-control suspends evictions when too many leases expire at once
//! (the Eureka rule); this is the same rule on the receiving end, for
//! what the server side cannot catch: a replica with a stale or empty
//! store, a bad snapshot, a sweep gone wrong. Envoy's panic threshold is
//! close but different: it routes to every host, healthy or not, once too
//! few are healthy; here the endpoints stay as they were.
//!
//! The rule, per service:
//!
//! - Only *non-deliberate* removals of *ready* (health `up`) endpoints are
//!   checked: a `remove` event with reason `lease-expired`, and an
//!   endpoint a replacing snapshot does not list. A `deregistered` removal
//!   (the instance itself, or an operator: a scale-down) is always applied,
//!   as is the removal of an endpoint that is not ready.
//! - They add up over a window of [`WINDOW`] (10 s), opened by the first
//!   such removal; its *base* is the ready endpoints the service had just
//!   before it (those held included), less each deliberate removal of a
//!   ready one while the window is open.
//! - Within a window, removals are applied while their count stays at or
//!   under `max(⌊base × P / 100⌋, 1)` (P = `--max-endpoint-removal`,
//!   default 50); the others are refused. So with 4 ready endpoints two go
//!   (2/4 = 50 % is not more than 50 %) and the third is refused; a
//!   1-endpoint service loses its one (the rule engages only from 2
//!   removals on); within one update they are taken in instance id order.
//!   P = 100 turns the rule off.
//! - A refused endpoint is *held*: still routed (outlier ejection and the
//!   breakers deal with it if it is dead), but not in the records the disk
//!   cache keeps. Its hold ends when the control plane lists it again (an
//!   upsert, or a snapshot with it), when it is deregistered, or once it
//!   has been held for the hold time (`--endpoint-hold`, default 60 s):
//!   then it is removed. Expiry is checked on every event and keep-alive,
//!   so while the control plane is away nothing expires.

use super::{Directory, Inner, Table};
use crate::model::{Health, Instance, RemoveReason, ServiceInfo};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// The span over which a service's removals add up.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The rule's settings (`--max-endpoint-removal`, `--endpoint-hold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preservation {
    /// The largest share of a window's base that its non-deliberate
    /// removals may take, in percent; 100 turns the rule off.
    max_removal_percent: u8,
    /// How long a refused endpoint is kept before it is removed anyway.
    hold: Duration,
}

impl Default for Preservation {
    fn default() -> Self {
        Preservation {
            max_removal_percent: 50,
            hold: Duration::from_secs(60),
        }
    }
}

impl Preservation {
    /// Checks both settings, reporting every bad one.
    pub fn try_new(max_removal_percent: u8, hold: Duration) -> Result<Self, String> {
        let mut bad = Vec::new();
        if max_removal_percent > 100 {
            bad.push(format!(
                "--max-endpoint-removal {max_removal_percent}: a percentage from 0 to 100"
            ));
        }
        if hold.is_zero() {
            bad.push("--endpoint-hold 0s: a refused endpoint must be held a while".to_string());
        }
        if !bad.is_empty() {
            return Err(bad.join("; "));
        }
        Ok(Preservation {
            max_removal_percent,
            hold,
        })
    }

    pub fn max_removal_percent(&self) -> u8 {
        self.max_removal_percent
    }

    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// How many non-deliberate removals a window of `base` applies.
    fn allowance(&self, base: usize) -> usize {
        if self.max_removal_percent >= 100 {
            return usize::MAX;
        }
        (base * usize::from(self.max_removal_percent) / 100).max(1)
    }
}

/// One service's open window.
struct Window {
    started: Instant,
    /// Ready endpoints when it opened, less those deregistered since.
    base: usize,
    /// Non-deliberate removals applied in it.
    removed: usize,
}

/// An endpoint kept after the control plane dropped it.
struct Held {
    instance: Instance,
    since: Instant,
}

/// What one check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// The first `applied` removals go.
    pub(super) applied: usize,
    pub(super) refused: usize,
    /// The share of the window's base the removals would have taken, in
    /// percent (for the log).
    pub(super) share: usize,
    /// The most the window may take, in percent.
    pub(super) max: u8,
}

/// The windows and the held endpoints of every service.
#[derive(Default)]
pub(super) struct Guard {
    settings: Preservation,
    windows: HashMap<String, Window>,
    /// By service, then instance id.
    held: BTreeMap<String, BTreeMap<String, Held>>,
}

// === impl Guard ===

impl Guard {
    pub(super) fn new(settings: Preservation) -> Guard {
        Guard {
            settings,
            ..Guard::default()
        }
    }

    /// Of `proposed` non-deliberate removals of `service`'s ready
    /// endpoints, how many are applied; `ready` is how many it routes to
    /// just before them (held ones included).
    pub(super) fn admit(
        &mut self,
        service: &str,
        ready: usize,
        proposed: usize,
        now: Instant,
    ) -> Verdict {
        if self.settings.max_removal_percent >= 100 || proposed == 0 {
            return Verdict {
                applied: proposed,
                refused: 0,
                share: 0,
                max: self.settings.max_removal_percent,
            };
        }
        let window = self
            .windows
            .entry(service.to_string())
            .or_insert_with(|| Window {
                started: now,
                base: ready,
                removed: 0,
            });
        if now.duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                base: ready,
                removed: 0,
            };
        }
        let allowance = self.settings.allowance(window.base);
        let applied = allowance.saturating_sub(window.removed).min(proposed);
        let share = match window.base {
            0 => 100,
            base => (window.removed + proposed) * 100 / base,
        };
        window.removed += applied;
        Verdict {
            applied,
            refused: proposed - applied,
            share,
            max: self.settings.max_removal_percent,
        }
    }

    /// A ready endpoint of `service` was deregistered: one fewer that the
    /// open window's share is counted against.
    pub(super) fn deliberate(&mut self, service: &str, now: Instant) {
        if let Some(w) = self.windows.get_mut(service) {
            if now.duration_since(w.started) < WINDOW {
                w.base = w.base.saturating_sub(1);
            }
        }
    }

    /// Keeps `instance` (refused removal) from `now`.
    pub(super) fn hold(&mut self, instance: Instance, now: Instant) {
        self.held
            .entry(instance.service.clone())
            .or_default()
            .insert(
                instance.id.clone(),
                Held {
                    instance,
                    since: now,
                },
            );
    }

    /// Ends a hold (the control plane listed or deregistered it); `true`
    /// if it was held.
    pub(super) fn release(&mut self, service: &str, id: &str) -> bool {
        let Some(ids) = self.held.get_mut(service) else {
            return false;
        };
        let was = ids.remove(id).is_some();
        if ids.is_empty() {
            self.held.remove(service);
        }
        was
    }

    /// Ends the holds on what `services` (a replacing snapshot) lists.
    pub(super) fn release_listed(&mut self, services: &BTreeMap<String, ServiceInfo>) {
        self.held.retain(|name, ids| {
            if let Some(info) = services.get(name) {
                ids.retain(|id, _| !info.instances.iter().any(|i| &i.id == id));
            }
            !ids.is_empty()
        });
    }

    pub(super) fn is_held(&self, service: &str, id: &str) -> bool {
        self.held
            .get(service)
            .is_some_and(|ids| ids.contains_key(id))
    }

    pub(super) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// The services with held endpoints.
    pub(super) fn held_services(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(String::as_str)
    }

    /// Every held endpoint as (service, instance id).
    pub(super) fn held_keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.held
            .iter()
            .flat_map(|(s, ids)| ids.keys().map(move |id| (s.as_str(), id.as_str())))
    }

    /// How many of `service`'s held endpoints are ready.
    pub(super) fn held_ready(&self, service: &str) -> usize {
        self.held.get(service).map_or(0, |ids| {
            ids.values()
                .filter(|h| h.instance.health == Health::Up)
                .count()
        })
    }

    /// `info` with its service's held endpoints, in id order.
    pub(super) fn with_held<'a>(&self, info: &'a ServiceInfo) -> Cow<'a, ServiceInfo> {
        let Some(ids) = self.held.get(&info.name) else {
            return Cow::Borrowed(info);
        };
        let mut merged = info.clone();
        merged
            .instances
            .extend(ids.values().map(|h| h.instance.clone()));
        merged.instances.sort_by(|a, b| a.id.cmp(&b.id));
        Cow::Owned(merged)
    }

    /// Ends the holds that lasted the hold time (and forgets windows that
    /// closed); the endpoints to remove, as (service, instance id).
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        self.windows
            .retain(|_, w| now.duration_since(w.started) < WINDOW);
        let hold = self.settings.hold;
        let mut gone = Vec::new();
        self.held.retain(|service, ids| {
            ids.retain(|id, h| {
                let keep = now.duration_since(h.since) < hold;
                if !keep {
                    gone.push((service.clone(), id.clone()));
                }
                keep
            });
            !ids.is_empty()
        });
        gone
    }
}

// === impl Directory ===

impl Directory {
    /// Puts `services` (a replacing snapshot's) in place of the records:
    /// the ready endpoints it no longer lists are non-deliberate removals,
    /// checked per service; the refused ones are held. A service the
    /// snapshot omits keeps an empty record while it has held endpoints,
    /// so they stay routed.
    pub(super) fn replace_services(
        &self,
        inner: &mut Inner,
        mut services: BTreeMap<String, ServiceInfo>,
    ) {
        let now = Instant::now();
        let old = std::mem::take(&mut inner.services);
        for (name, before) in &old {
            let listed: HashSet<&str> = services
                .get(name)
                .map(|s| s.instances.iter().map(|i| i.id.as_str()).collect())
                .unwrap_or_default();
            let missing: Vec<&Instance> = before
                .instances
                .iter()
                .filter(|i| i.health == Health::Up && !listed.contains(i.id.as_str()))
                .collect();
            let ready = ready_count(before) + inner.guard.held_ready(name);
            let verdict = inner.guard.admit(name, ready, missing.len(), now);
            for i in missing.iter().skip(verdict.applied) {
                inner.guard.hold((*i).clone(), now);
            }
            self.refused(name, verdict, "missing from a snapshot");
        }
        // Held before and listed now: the control plane has them again.
        inner.guard.release_listed(&services);
        let kept: Vec<String> = inner
            .guard
            .held_services()
            .filter(|s| !services.contains_key(*s))
            .map(str::to_string)
            .collect();
        for name in kept {
            if let Some(before) = old.get(&name) {
                services.insert(
                    name.clone(),
                    ServiceInfo {
                        name,
                        vip: before.vip,
                        instances: Vec::new(),
                    },
                );
            }
        }
        inner.services = services;
    }

    /// A `remove` event: applied, unless it is a non-deliberate removal of
    /// a ready endpoint that the rule refuses (then the endpoint is held).
    pub(super) fn remove(&self, inner: &mut Inner, service: &str, id: &str, reason: RemoveReason) {
        let now = Instant::now();
        let deliberate = reason == RemoveReason::Deregistered;
        let key = (service.to_string(), id.to_string());
        let listed = inner
            .services
            .get_mut(service)
            .and_then(|svc| Some((svc.instances.iter().position(|i| i.id == id)?, svc)));
        let Some((at, svc)) = listed else {
            // Not listed: held, or unknown. Only a deregistration ends a
            // hold; an expiry of what is held already changes nothing.
            let released = deliberate && inner.guard.release(service, id);
            if released || !inner.guard.is_held(service, id) {
                inner.stats.remove(&key);
            }
            return;
        };
        let ready = svc.instances[at].health == Health::Up;
        if !ready || deliberate {
            svc.instances.remove(at);
            inner.stats.remove(&key);
            if ready {
                inner.guard.deliberate(service, now);
            }
            return;
        }
        let count = ready_count(svc) + inner.guard.held_ready(service);
        let instance = svc.instances.remove(at);
        let verdict = inner.guard.admit(service, count, 1, now);
        if verdict.applied == 1 {
            inner.stats.remove(&key);
        } else {
            inner.guard.hold(instance, now);
        }
        self.refused(service, verdict, "lease expired");
    }

    /// Removes the endpoints held for the hold time (the control plane
    /// still does not list them: listing them ends the hold) and
    /// publishes the services they were in, at the same revision.
    pub fn expire_held(&self) {
        let mut inner = self.lock();
        if !inner.guard.has_held() {
            return;
        }
        let gone = inner.guard.expire(Instant::now());
        if gone.is_empty() {
            return;
        }
        let mut services = BTreeSet::new();
        for (service, id) in gone {
            tracing::info!(service = %service, instance = %id, "held endpoint removed: still not listed after the hold time");
            inner.stats.remove(&(service.clone(), id));
            services.insert(service);
        }
        let mut table = Table::clone(&self.table.load());
        for name in services {
            if inner.routed.contains(&name) {
                if let Some(svc) = self.build_routed(&mut inner, &name) {
                    table.set_route(svc);
                }
            }
        }
        self.publish(table);
    }

    /// Logs and counts what `verdict` refused.
    fn refused(&self, service: &str, verdict: Verdict, why: &str) {
        if verdict.refused == 0 {
            return;
        }
        tracing::warn!(
            service,
            refused = verdict.refused,
            applied = verdict.applied,
            share = %format!("{}%", verdict.share),
            max = %format!("{}%", verdict.max),
            why,
            "refusing to remove endpoints: too many of the service at once; held"
        );
        self.metrics
            .endpoint_removals_refused(service, verdict.refused as u64);
    }
}

/// How many of `info`'s endpoints are ready.
fn ready_count(info: &ServiceInfo) -> usize {
    info.instances
        .iter()
        .filter(|i| i.health == Health::Up)
        .count()
}

#[cfg(test)]
mod tests;
