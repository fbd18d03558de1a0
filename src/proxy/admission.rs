//! Who may connect: each listener's connection limit, and the process's
//! overload state (Envoy's overload manager, reduced to what a sidecar
//! needs). Both refuse at accept, so connections already established
//! keep working while new ones are turned away fast: closed with a reset
//! the moment they are accepted, counted in
//! `mesh_listener_refused_total{listener,reason}`, and logged at most
//! once per [`LOG_EVERY`] per listener.
//!
//! The overload state is sampled, not computed per accept: once a second
//! the monitor counts open file descriptors against the soft limit and
//! reads the resident set against `--max-memory`. [`judge`] is the rule,
//! with hysteresis so a process at the edge does not flap.

use crate::telemetry::ProxyMetrics;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Refusals are logged at most this often per listener (with a count).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the monitor samples file descriptors and memory.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A resource the process is short of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Short {
    /// Open file descriptors at 95 % of the soft limit (until below 90 %).
    Fds,
    /// Resident memory at `--max-memory` (until below 95 % of it).
    Memory,
}

impl Short {
    pub fn reason(self) -> &'static str {
        match self {
            Short::Fds => "overload-fds",
            Short::Memory => "overload-memory",
        }
    }

    fn code(self) -> u8 {
        match self {
            Short::Fds => 1,
            Short::Memory => 2,
        }
    }

    fn from_code(c: u8) -> Option<Short> {
        match c {
            1 => Some(Short::Fds),
            2 => Some(Short::Memory),
            _ => None,
        }
    }
}

/// One sample of the process's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressure {
    pub fds: u64,
    pub fd_limit: u64,
    pub rss: u64,
    pub max_memory: Option<u64>,
}

/// Whether new connections are refused, given a sample and the state
/// before it: refusal starts at 95 % of the descriptor limit or at the
/// memory bound, and ends only below 90 % / 95 % of them.
pub fn judge(p: Pressure, was: Option<Short>) -> Option<Short> {
    let fds_high = p.fd_limit > 0 && p.fds * 100 >= p.fd_limit * 95;
    let fds_low = p.fd_limit == 0 || p.fds * 100 < p.fd_limit * 90;
    let (mem_high, mem_low) = match p.max_memory {
        Some(max) => (p.rss >= max, p.rss * 100 < max * 95),
        None => (false, true),
    };
    if fds_high {
        return Some(Short::Fds);
    }
    if mem_high {
        return Some(Short::Memory);
    }
    match was {
        Some(Short::Fds) if !fds_low => Some(Short::Fds),
        Some(Short::Memory) if !mem_low => Some(Short::Memory),
        _ => None,
    }
}

/// The process-wide overload state, shared by every listener.
pub struct Overload {
    short: AtomicU8,
    max_memory: Option<u64>,
    metrics: Arc<ProxyMetrics>,
}

impl Overload {
    pub fn new(max_memory: Option<u64>, metrics: Arc<ProxyMetrics>) -> Arc<Self> {
        Arc::new(Overload {
            short: AtomicU8::new(0),
            max_memory,
            metrics,
        })
    }

    /// What the process is short of now, if anything (one atomic load).
    pub fn short(&self) -> Option<Short> {
        Short::from_code(self.short.load(Ordering::Relaxed))
    }

    /// Takes a sample and updates the state; returns the new state.
    pub fn update(&self, p: Pressure) -> Option<Short> {
        let was = self.short();
        let now = judge(p, was);
        self.short
            .store(now.map_or(0, Short::code), Ordering::Relaxed);
        self.metrics
            .listeners
            .overloaded
            .set(i64::from(now.is_some()));
        if now != was {
            match now {
                Some(s) => tracing::warn!(
                    reason = s.reason(),
                    fds = p.fds,
                    fd_limit = p.fd_limit,
                    rss = p.rss,
                    max_memory = ?p.max_memory,
                    "overloaded: refusing new connections; established ones keep working"
                ),
                None => tracing::info!(
                    fds = p.fds,
                    rss = p.rss,
                    "no longer overloaded: accepting connections"
                ),
            }
        }
        now
    }

    /// Samples every [`SAMPLE_EVERY`] until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            match sample(self.max_memory) {
                Ok(p) => {
                    self.update(p);
                }
                Err(e) => tracing::debug!(error = %e, "cannot sample the process's resources"),
            }
        }
    }
}

/// Open descriptors (`/proc/self/fd`), their soft limit, and the resident
/// set (`VmRSS` of `/proc/self/status`).
pub fn sample(max_memory: Option<u64>) -> io::Result<Pressure> {
    let fds = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(io::Error::from)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/self/status")
        })?;
    Ok(Pressure {
        fds,
        fd_limit: soft,
        rss: rss_kib * 1024,
        max_memory,
    })
}

/// One listener's admission: its connection limit and the shared
/// overload state.
pub struct Admission {
    listener: &'static str,
    slots: Arc<Semaphore>,
    overload: Arc<Overload>,
    metrics: Arc<ProxyMetrics>,
    /// `mesh_listener_connections` of this listener.
    open: prometheus_client::metrics::gauge::Gauge,
    /// Refusals not yet logged, and when the last line was (ms since
    /// `born`).
    unlogged: AtomicU64,
    logged_ms: AtomicU64,
    born: tokio::time::Instant,
}

/// An admitted connection's slot, shared by whatever outlives the
/// connection's own task: a WebSocket or CONNECT tunnel holds it until it
/// ends, so tunnels count against `--max-connections` too.
#[derive(Clone)]
pub struct ConnSlot {
    _permit: Arc<Permit>,
}

impl ConnSlot {
    pub fn new(permit: Permit) -> Self {
        ConnSlot {
            _permit: Arc::new(permit),
        }
    }
}

/// Held by an admitted connection until it ends.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Admission {
    pub fn new(
        listener: &'static str,
        max_connections: usize,
        overload: Arc<Overload>,
        metrics: Arc<ProxyMetrics>,
    ) -> Self {
        Admission {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            overload,
            open: metrics.listeners.open(listener),
            metrics,
            unlogged: AtomicU64::new(0),
            logged_ms: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// A slot for a connection just accepted, or `None` (refused, counted
    /// and logged) when the listener is full or the process overloaded.
    pub fn admit(&self) -> Option<Permit> {
        if let Some(short) = self.overload.short() {
            self.refused(short.reason());
            return None;
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.open.inc();
                Some(Permit {
                    _slot: slot,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused("connection-limit");
                None
            }
        }
    }

    /// `accept` itself failed (EMFILE and friends): counted like a refusal.
    pub fn accept_failed(&self, e: &io::Error) {
        tracing::debug!(listener = self.listener, error = %e, "accept failed");
        self.refused("accept-error");
    }

    fn refused(&self, reason: &'static str) {
        self.metrics.listeners.refused(self.listener, reason);
        let pending = self.unlogged.fetch_add(1, Ordering::Relaxed) + 1;
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        let first = last == 0 && pending == 1;
        if (first || now.saturating_sub(last) >= every)
            && self
                .logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::warn!(
                listener = self.listener,
                reason,
                refused = n,
                "refusing new connections (this message at most every {}s)",
                LOG_EVERY.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(fds: u64, rss: u64) -> Pressure {
        Pressure {
            fds,
            fd_limit: 1000,
            rss,
            max_memory: Some(1000),
        }
    }

    #[test]
    fn judge_has_hysteresis() {
        assert_eq!(judge(p(949, 0), None), None);
        assert_eq!(judge(p(950, 0), None), Some(Short::Fds));
        assert_eq!(
            judge(p(920, 0), Some(Short::Fds)),
            Some(Short::Fds),
            "stays until below 90 %"
        );
        assert_eq!(judge(p(899, 0), Some(Short::Fds)), None);
        assert_eq!(judge(p(0, 1000), None), Some(Short::Memory));
        assert_eq!(judge(p(0, 960), Some(Short::Memory)), Some(Short::Memory));
        assert_eq!(judge(p(0, 949), Some(Short::Memory)), None);
        let unbounded = Pressure {
            max_memory: None,
            ..p(0, u64::MAX / 200)
        };
        assert_eq!(judge(unbounded, None), None);
    }

    #[tokio::test]
    async fn limit_then_overload_refuse_and_count() {
        let metrics = Arc::new(ProxyMetrics::new());
        let overload = Overload::new(Some(1000), metrics.clone());
        let adm = Admission::new("outbound", 2, overload.clone(), metrics.clone());
        let a = adm.admit().expect("first");
        let _b = adm.admit().expect("second");
        assert!(adm.admit().is_none(), "the limit is 2");
        drop(a);
        let c = adm.admit().expect("a slot came back");
        overload.update(p(0, 2000));
        drop(c);
        assert!(
            adm.admit().is_none(),
            "overloaded: refused though a slot is free"
        );
        overload.update(p(0, 10));
        assert!(adm.admit().is_some());
        let text = metrics.encode(None).1;
        assert!(
            text.contains(
                r#"mesh_listener_refused_total{listener="outbound",reason="connection-limit"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mesh_listener_refused_total{listener="outbound",reason="overload-memory"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("mesh_overloaded 0"), "{text}");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(None).unwrap();
        assert!(s.fds >= 3 && s.fd_limit >= s.fds && s.rss > 0, "{s:?}");
    }
}
