//! What connections have taught the proxy about service ports nobody
//! declared: *opaque* (the server spoke first: a server-speaks-first
//! protocol, relayed without detection from then on) or *client-first*
//! (the client spoke first: later connections wait for its bytes without
//! opening an upstream early). Both expire, since a port may change hands.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio::time::Instant;

/// How long a learned port keeps what it taught. Long enough that a
/// banner protocol waits on detection about once per ten minutes; short
/// enough that a port that changed hands is soon learned again.
pub const LEARNED_TTL: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Opaque,
    ClientFirst,
}

#[derive(Debug, Default)]
pub struct Learned {
    /// (service, port) → what it is, and when that was last seen.
    ports: RwLock<HashMap<(String, u16), (Kind, Instant)>>,
}

impl Learned {
    /// Learned opaque: relay without detection.
    pub fn contains(&self, service: &str, port: u16) -> bool {
        self.is(service, port, Kind::Opaque, LEARNED_TTL)
    }

    /// Learned client-first: detect without an early upstream.
    pub fn is_client_first(&self, service: &str, port: u16) -> bool {
        self.is(service, port, Kind::ClientFirst, LEARNED_TTL)
    }

    fn is(&self, service: &str, port: u16, kind: Kind, within: Duration) -> bool {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        if ports.is_empty() {
            return false;
        }
        ports
            .get(&(service.to_string(), port))
            .is_some_and(|(k, at)| *k == kind && at.elapsed() < within)
    }

    /// The server spoke first; true when the port was not known opaque
    /// yet (or its entry had expired).
    pub fn learn(&self, service: &str, port: u16) -> bool {
        self.record(service, port, Kind::Opaque) != Some(Kind::Opaque)
    }

    /// The client spoke first. Refreshed at most once per half TTL, so a
    /// busy port takes the write lock rarely.
    pub fn learn_client_first(&self, service: &str, port: u16) {
        if !self.is(service, port, Kind::ClientFirst, LEARNED_TTL / 2) {
            self.record(service, port, Kind::ClientFirst);
        }
    }

    /// Stores `kind`; returns what the port was before (if not expired).
    fn record(&self, service: &str, port: u16, kind: Kind) -> Option<Kind> {
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        ports.retain(|_, (_, at)| now.duration_since(*at) < LEARNED_TTL);
        ports
            .insert((service.to_string(), port), (kind, now))
            .map(|(k, _)| k)
    }

    /// `service:port` of every port learned opaque, for `/state`.
    pub fn list(&self) -> Vec<String> {
        self.list_kind(Kind::Opaque)
    }

    /// `service:port` of every port learned client-first, for `/state`.
    pub fn list_client_first(&self) -> Vec<String> {
        self.list_kind(Kind::ClientFirst)
    }

    fn list_kind(&self, kind: Kind) -> Vec<String> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = ports
            .iter()
            .filter(|(_, (k, at))| *k == kind && at.elapsed() < LEARNED_TTL)
            .map(|((s, p), _)| format!("{s}:{p}"))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn learned_ports_expire() {
        let l = Learned::default();
        assert!(!l.contains("db", 7777));
        assert!(l.learn("db", 7777));
        assert!(!l.learn("db", 7777));
        assert!(l.contains("db", 7777) && !l.contains("db", 7778));
        assert_eq!(l.list(), ["db:7777"]);
        tokio::time::advance(LEARNED_TTL).await;
        assert!(!l.contains("db", 7777));
        assert!(l.learn("db", 7777));
    }

    #[tokio::test(start_paused = true)]
    async fn client_first_is_refreshed_and_yields_to_opaque() {
        let l = Learned::default();
        l.learn_client_first("web", 80);
        assert!(l.is_client_first("web", 80) && !l.contains("web", 80));
        assert_eq!(l.list_client_first(), ["web:80"]);
        // Seen again after most of its life: it lives on from then.
        tokio::time::advance(LEARNED_TTL * 3 / 4).await;
        l.learn_client_first("web", 80);
        tokio::time::advance(LEARNED_TTL / 2).await;
        assert!(l.is_client_first("web", 80));
        // The port changed hands: a server spoke first.
        assert!(l.learn("web", 80));
        assert!(l.contains("web", 80) && !l.is_client_first("web", 80));
        assert!(l.list_client_first().is_empty());
    }
}
