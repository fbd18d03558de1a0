//! `mesh-ctl tap SERVICE`: the calls to a service, live.
//!
//! mesh-control says which services are tapped in its answer to each
//! stats push ([`Tap::want`]); until one is, the request path pays one
//! atomic load per call ([`Tap::on`]). A call to a tapped service leaves a
//! line here, and the next push carries the lines (at most
//! [`MAX_TAP_LINES`] a second; the rest are counted in the next line's
//! `dropped`), so a tap shows calls about a second after they end.

use crate::model::stats::{TapLine, MAX_TAP_LINES};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Tap {
    wanted: ArcSwap<Vec<String>>,
    lines: Mutex<Vec<TapLine>>,
    dropped: AtomicU64,
}

impl Tap {
    /// The services mesh-control wants tapped now.
    pub fn want(&self, services: Vec<String>) {
        if **self.wanted.load() != services {
            self.wanted.store(std::sync::Arc::new(services));
        }
    }

    /// Whether calls to `service` are tapped.
    pub fn on(&self, service: &str) -> bool {
        let wanted = self.wanted.load();
        !wanted.is_empty() && wanted.iter().any(|s| s == service)
    }

    pub fn record(&self, mut line: TapLine) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= MAX_TAP_LINES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.dropped = self.dropped.swap(0, Ordering::Relaxed);
        lines.push(line);
    }

    /// The lines since the last push.
    pub fn take(&self) -> Vec<TapLine> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_services_are_tapped_and_lines_are_bounded() {
        let t = Tap::default();
        assert!(!t.on("orders"));
        t.want(vec!["orders".into()]);
        assert!(t.on("orders") && !t.on("users"));
        for i in 0..MAX_TAP_LINES + 3 {
            t.record(TapLine {
                request_id: i.to_string(),
                ..TapLine::default()
            });
        }
        assert_eq!(t.take().len(), MAX_TAP_LINES);
        t.record(TapLine::default());
        assert_eq!(t.take()[0].dropped, 3, "what did not fit is counted");
        assert!(t.take().is_empty());
        t.want(Vec::new());
        assert!(!t.on("orders"));
    }
}
