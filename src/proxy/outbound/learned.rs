//! Service ports learned to be opaque: their clients stayed silent past
//! the detection timeout (a server-speaks-first protocol). Later
//! connections skip detection, so only the first one waits.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio::time::Instant;

/// How long a learned port stays opaque. Long enough that a banner
/// protocol waits on detection about once per ten minutes; short enough
/// that one slow HTTP client does not turn a port opaque for good.
pub const LEARNED_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct Learned {
    /// (service, port) → when it was learned.
    ports: RwLock<HashMap<(String, u16), Instant>>,
}

impl Learned {
    pub fn contains(&self, service: &str, port: u16) -> bool {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        if ports.is_empty() {
            return false;
        }
        ports
            .get(&(service.to_string(), port))
            .is_some_and(|at| at.elapsed() < LEARNED_TTL)
    }

    /// Records a silent client; true when the port was not known yet (or
    /// its entry had expired).
    pub fn learn(&self, service: &str, port: u16) -> bool {
        let mut ports = self.ports.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        ports.retain(|_, at| now.duration_since(*at) < LEARNED_TTL);
        ports.insert((service.to_string(), port), now).is_none()
    }

    /// `service:port` of every learned port, for `/state`.
    pub fn list(&self) -> Vec<String> {
        let ports = self.ports.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = ports
            .iter()
            .filter(|(_, at)| at.elapsed() < LEARNED_TTL)
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
}
