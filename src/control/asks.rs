//! Questions operators put to every proxy: `mesh-ctl explain REQUEST-ID`
//! and `mesh-ctl tap SERVICE`.
//!
//! mesh-control cannot call a proxy (its admin port listens on the pod's
//! own loopback), but every proxy pushes its statistics each second, and
//! the answer to that push says what is being asked ([`Asked`]): the
//! request ids waited for. A proxy that holds the decision trail of one
//! sends it (`PUT /v1/proxies/{id}/trails`), and the operator's `GET
//! /v1/explain/{id}` returns what came once every proxy has had a push to
//! see the question (or at the end of its wait).
//!
//! A tap works the same way: the answer names the services tapped, the
//! proxies' next pushes carry their calls to them, and each open `GET
//! /v1/tap/{service}` stream gets them through a broadcast channel (a
//! stream that falls [`TAP_BUFFER`] lines behind loses the oldest, and is
//! told how many).
//!
//! Bounds: at most [`MAX_OPEN`] questions at once (the rest 503), trails
//! per question capped at [`MAX_TRAILS`]; at most [`MAX_TAPS`] taps open.
//!
//! Concurrency: one mutex over the open questions, held for short
//! sections that never await; each question has its own `Notify`.

use crate::model::stats::{Asked, DecisionTrail, TapLine};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Questions open at once.
pub const MAX_OPEN: usize = 64;
/// Trails kept per question.
pub const MAX_TRAILS: usize = 32;
/// After the first trail arrives, how long the others may take: every
/// proxy pushes once a second, so by then each has seen the question.
pub const GRACE: Duration = Duration::from_millis(1500);

/// Taps open at once.
pub const MAX_TAPS: usize = 5;
/// Lines a tap stream may fall behind.
pub const TAP_BUFFER: usize = 4096;

#[derive(Default)]
pub struct Asks {
    open: Mutex<HashMap<String, Question>>,
    taps: Mutex<HashMap<String, Tapped>>,
}

struct Tapped {
    streams: usize,
    lines: tokio::sync::broadcast::Sender<Arc<TapLine>>,
}

/// One open tap; dropping it closes it.
pub struct Tapping<'a> {
    asks: &'a Asks,
    service: String,
    pub lines: tokio::sync::broadcast::Receiver<Arc<TapLine>>,
}

impl Drop for Tapping<'_> {
    fn drop(&mut self) {
        let mut taps = self.asks.taps();
        if let Some(t) = taps.get_mut(&self.service) {
            t.streams -= 1;
            if t.streams == 0 {
                taps.remove(&self.service);
            }
        }
    }
}

struct Question {
    askers: usize,
    trails: Vec<DecisionTrail>,
    arrived: Arc<Notify>,
}

/// Why a question was not asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many questions or taps are open already ({MAX_OPEN} explains, {MAX_TAPS} taps); try again shortly")]
pub struct TooMany;

impl Asks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Question>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn taps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tapped>> {
        self.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the proxies are asked now (the answer to their pushes).
    pub fn asked(&self) -> Asked {
        let mut explain: Vec<String> = self.lock().keys().cloned().collect();
        explain.sort();
        let mut tap: Vec<String> = self.taps().keys().cloned().collect();
        tap.sort();
        Asked { explain, tap }
    }

    /// Opens a tap of `service` (several streams may tap one service).
    pub fn tap(&self, service: &str) -> Result<Tapping<'_>, TooMany> {
        let mut taps = self.taps();
        let open: usize = taps.values().map(|t| t.streams).sum();
        if open >= MAX_TAPS {
            return Err(TooMany);
        }
        let t = taps.entry(service.to_string()).or_insert_with(|| Tapped {
            streams: 0,
            lines: tokio::sync::broadcast::channel(TAP_BUFFER).0,
        });
        t.streams += 1;
        let lines = t.lines.subscribe();
        Ok(Tapping {
            asks: self,
            service: service.to_string(),
            lines,
        })
    }

    /// Calls a proxy pushed; those to services no longer tapped are dropped.
    pub fn tapped(&self, proxy: &str, lines: Vec<TapLine>) {
        let taps = self.taps();
        for mut line in lines {
            if let Some(t) = taps.get(&line.destination) {
                line.proxy = proxy.to_string();
                let _ = t.lines.send(Arc::new(line));
            }
        }
    }

    /// Trails a proxy sent; those of questions no longer open are dropped.
    pub fn answer(&self, trails: Vec<DecisionTrail>) {
        let mut open = self.lock();
        for t in trails {
            if let Some(q) = open.get_mut(&t.request_id) {
                if q.trails.len() < MAX_TRAILS && !q.trails.contains(&t) {
                    q.trails.push(t);
                    q.arrived.notify_waiters();
                }
            }
        }
    }

    /// Asks every proxy for `id`'s trails and waits at most `wait`: once
    /// one arrives, [`GRACE`] longer for the others.
    pub async fn explain(&self, id: &str, wait: Duration) -> Result<Vec<DecisionTrail>, TooMany> {
        let arrived = {
            let mut open = self.lock();
            if !open.contains_key(id) && open.len() >= MAX_OPEN {
                return Err(TooMany);
            }
            let q = open.entry(id.to_string()).or_insert_with(|| Question {
                askers: 0,
                trails: Vec::new(),
                arrived: Arc::new(Notify::new()),
            });
            q.askers += 1;
            q.arrived.clone()
        };
        // Forgets the question however the wait ends (the asker may go
        // away mid-wait: its request future is dropped).
        let _asking = Asking { asks: self, id };
        let deadline = Instant::now() + wait;
        let mut until = deadline;
        loop {
            let notified = arrived.notified();
            let some = self.lock().get(id).is_some_and(|q| !q.trails.is_empty());
            if some && until == deadline {
                until = (Instant::now() + GRACE).min(deadline);
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => break,
            }
        }
        let trails = self
            .lock()
            .get(id)
            .map(|q| q.trails.clone())
            .unwrap_or_default();
        Ok(trails)
    }
}

/// One asker's hold on a question.
struct Asking<'a> {
    asks: &'a Asks,
    id: &'a str,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut open = self.asks.lock();
        if let Some(q) = open.get_mut(self.id) {
            q.askers -= 1;
            if q.askers == 0 {
                open.remove(self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tap_gets_its_service_calls_until_it_is_closed() {
        let asks = Asks::default();
        let line = |dest: &str| TapLine {
            destination: dest.into(),
            ..TapLine::default()
        };
        {
            let mut t = asks.tap("orders").unwrap();
            assert_eq!(asks.asked().tap, ["orders"]);
            asks.tapped("mesh-1", vec![line("users"), line("orders")]);
            let got = t.lines.recv().await.unwrap();
            assert_eq!(
                (got.destination.as_str(), got.proxy.as_str()),
                ("orders", "mesh-1")
            );
            assert!(t.lines.try_recv().is_err(), "users is not tapped");
            let more: Vec<Tapping<'_>> =
                (1..MAX_TAPS).map(|_| asks.tap("users").unwrap()).collect();
            assert!(asks.tap("x").is_err(), "past the cap");
            drop(more);
        }
        assert!(asks.asked().tap.is_empty(), "closed taps are forgotten");
    }

    fn trail(id: &str, proxy: &str) -> DecisionTrail {
        DecisionTrail {
            request_id: id.into(),
            proxy: proxy.into(),
            ..DecisionTrail::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_question_is_asked_until_answered_then_forgotten() {
        let asks = Arc::new(Asks::default());
        let waiting = tokio::spawn({
            let asks = asks.clone();
            async move { asks.explain("r-1", Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(asks.asked().explain, ["r-1"]);
        // Trails of other ids are not kept.
        asks.answer(vec![trail("r-2", "a")]);
        // Pushes a second apart, on the paused clock.
        tokio::time::advance(Duration::from_millis(300)).await;
        asks.answer(vec![trail("r-1", "a")]);
        tokio::time::advance(Duration::from_millis(700)).await;
        asks.answer(vec![trail("r-1", "b"), trail("r-1", "b")]);
        let started = Instant::now();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.len(), 2, "one per proxy, no duplicate: {got:?}");
        assert!(
            started.elapsed() <= GRACE,
            "answered within the grace after the first"
        );
        assert!(asks.asked().explain.is_empty(), "forgotten once answered");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_comes_back_at_the_end_of_the_wait_and_questions_are_capped() {
        let asks = Arc::new(Asks::default());
        let started = Instant::now();
        let got = asks
            .explain("nobody", Duration::from_secs(3))
            .await
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        let mut held = Vec::new();
        for i in 0..MAX_OPEN {
            let asks = asks.clone();
            held.push(tokio::spawn(async move {
                asks.explain(&format!("q{i}"), Duration::from_secs(60))
                    .await
            }));
        }
        // Let every asker register: bounded rounds of the scheduler.
        for _ in 0..10 * MAX_OPEN {
            if asks.asked().explain.len() == MAX_OPEN {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(asks.asked().explain.len(), MAX_OPEN);
        assert_eq!(
            asks.explain("one-more", Duration::from_secs(1)).await,
            Err(TooMany)
        );
        for h in held {
            h.abort();
            let _ = h.await;
        }
        assert!(
            asks.asked().explain.is_empty(),
            "askers that went away free their questions"
        );
    }
}
