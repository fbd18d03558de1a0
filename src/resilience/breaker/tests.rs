use super::*;
use std::sync::Mutex as StdMutex;
use tokio::time::advance;

const FAST: Duration = Duration::from_millis(5);

fn cfg() -> BreakerConfig {
    BreakerConfig {
        window: Duration::from_secs(10),
        min_requests: 10,
        failure_rate: 50,
        consecutive_failures: 0,
        slow_call: crate::model::policy::SlowCall {
            duration: Duration::from_secs(1),
            rate: 100,
        },
        open_for: Duration::from_secs(5),
        half_open_probes: 1,
    }
}

fn breaker(cfg: BreakerConfig) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(cfg))
}

/// Runs one call through the breaker; false if it was rejected.
fn call(b: &Arc<CircuitBreaker>, failed: bool, elapsed: Duration) -> bool {
    match b.try_acquire() {
        Ok(p) => {
            p.record(Outcome { failed, elapsed });
            true
        }
        Err(_) => false,
    }
}

fn ok(b: &Arc<CircuitBreaker>) -> bool {
    call(b, false, FAST)
}

fn fail(b: &Arc<CircuitBreaker>) -> bool {
    call(b, true, FAST)
}

#[tokio::test(start_paused = true)]
async fn opens_after_exactly_min_requests_failures() {
    let b = breaker(cfg());
    for i in 0..9 {
        assert!(fail(&b), "call {i} admitted");
        assert_eq!(b.state(), BreakerState::Closed, "not before minRequests");
    }
    assert!(fail(&b));
    assert_eq!(b.state(), BreakerState::Open);
    assert!(!ok(&b), "open rejects");
    let v = b.view();
    assert_eq!((v.calls, v.failures, v.slow), (10, 10, 0));
    assert_eq!(v.failure_rate, 100.0);
    assert_eq!(b.transitions().to_open, 1);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_just_under_threshold_stays_closed() {
    // 50 % threshold over 20 calls: 9 failures (45 %) stay closed...
    let b = breaker(cfg());
    for _ in 0..11 {
        ok(&b);
    }
    for _ in 0..9 {
        fail(&b);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.view().calls, 20);
    // ...and the 10th of 21 (47.6 %) too; 11 of 22 (50 %) trips.
    fail(&b);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip() {
    let b = breaker(BreakerConfig {
        slow_call: crate::model::policy::SlowCall {
            duration: Duration::from_secs(1),
            rate: 50,
        },
        ..cfg()
    });
    for _ in 0..5 {
        call(&b, false, Duration::from_millis(999));
    }
    for _ in 0..4 {
        call(&b, false, Duration::from_secs(1));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.view().slow, 4);
    call(&b, false, Duration::from_secs(2));
    assert_eq!(b.state(), BreakerState::Open);
    let v = b.view();
    assert_eq!((v.failures, v.slow, v.slow_rate), (0, 5, 50.0));
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_before_min_requests() {
    let b = breaker(BreakerConfig {
        consecutive_failures: 3,
        min_requests: 100,
        ..cfg()
    });
    fail(&b);
    fail(&b);
    ok(&b); // resets the run
    fail(&b);
    fail(&b);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn window_expiry_forgets_old_failures() {
    let b = breaker(cfg());
    for _ in 0..9 {
        fail(&b);
    }
    advance(Duration::from_secs(10)).await;
    assert_eq!(b.view().calls, 0);
    fail(&b);
    assert_eq!(b.state(), BreakerState::Closed, "old failures forgotten");
    for _ in 0..8 {
        fail(&b);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b);
    assert_eq!(b.state(), BreakerState::Open);
}

/// Trips `b` (built from `cfg()`) with ten failures.
fn trip(b: &Arc<CircuitBreaker>) {
    for _ in 0..10 {
        fail(b);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_opens_after_open_for_and_limits_probes() {
    let b = breaker(BreakerConfig {
        half_open_probes: 2,
        ..cfg()
    });
    trip(&b);
    advance(Duration::from_millis(4999)).await;
    assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::Open);
    advance(Duration::from_millis(1)).await;
    let p1 = b.try_acquire().unwrap();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let p2 = b.try_acquire().unwrap();
    assert!(p1.is_probe() && p2.is_probe());
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state, BreakerState::HalfOpen, "third probe rejected");
    // One probe succeeds: still half-open, and its slot is used up.
    p1.record(Outcome {
        failed: false,
        elapsed: FAST,
    });
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(b.try_acquire().is_err());
    // The second succeeds too: closed, with a fresh window.
    p2.record(Outcome {
        failed: false,
        elapsed: FAST,
    });
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.view().calls, 0);
    let t = b.transitions();
    assert_eq!((t.to_open, t.to_half_open, t.to_closed), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn failed_or_slow_probe_reopens() {
    let b = breaker(cfg());
    trip(&b);
    advance(Duration::from_secs(5)).await;
    assert!(fail(&b), "probe admitted");
    assert_eq!(b.state(), BreakerState::Open);
    assert!(!ok(&b), "open again for another openFor");
    advance(Duration::from_secs(5)).await;
    assert!(call(&b, false, Duration::from_secs(1)), "slow probe");
    assert_eq!(b.state(), BreakerState::Open);
    advance(Duration::from_secs(5)).await;
    assert!(ok(&b));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.transitions().to_open, 3);
}

#[tokio::test(start_paused = true)]
async fn dropped_permits_are_not_counted_but_free_probe_slots() {
    let b = breaker(cfg());
    for _ in 0..20 {
        drop(b.try_acquire().unwrap());
    }
    assert_eq!(b.view().calls, 0);
    trip(&b);
    advance(Duration::from_secs(5)).await;
    let probe = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(probe);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(ok(&b), "the slot is free again");
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn stale_outcomes_and_hook() {
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let log = seen.clone();
    let hook: TransitionHook = Arc::new(move |t| log.lock().unwrap().push(t));
    let b = Arc::new(CircuitBreaker::with_hook(cfg(), hook));
    // Admitted while closed, finishes after the breaker opened: ignored.
    let late = b.try_acquire().unwrap();
    trip(&b);
    advance(Duration::from_secs(5)).await;
    let probe = b.try_acquire().unwrap();
    late.record(Outcome {
        failed: true,
        elapsed: FAST,
    });
    assert_eq!(b.state(), BreakerState::HalfOpen);
    probe.record(Outcome {
        failed: false,
        elapsed: FAST,
    });
    use BreakerState::*;
    let want = [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)];
    let got: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(got, want);
    assert_eq!(serde_json::to_value(b.view()).unwrap()["state"], "closed");
    assert_eq!(serde_json::to_value(HalfOpen).unwrap(), "half-open");
}

#[test]
fn probes_stay_limited_under_contention() {
    use std::sync::atomic::AtomicU32;
    // Trips on every failure and half-opens at once: threads race through
    // every transition.
    let b = breaker(BreakerConfig {
        min_requests: 1,
        failure_rate: 100,
        open_for: Duration::ZERO,
        half_open_probes: 2,
        ..cfg()
    });
    let probing = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (b, probing, most) = (b.clone(), probing.clone(), most.clone());
            std::thread::spawn(move || {
                for n in 0..2000 {
                    let Ok(p) = b.try_acquire() else { continue };
                    if p.is_probe() {
                        let now = probing.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        probing.fetch_sub(1, Ordering::SeqCst);
                        if (i + n) % 3 == 0 {
                            drop(p);
                        } else {
                            p.record(Outcome {
                                failed: false,
                                elapsed: FAST,
                            });
                        }
                    } else {
                        p.record(Outcome {
                            failed: true,
                            elapsed: FAST,
                        });
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(most.load(Ordering::SeqCst) <= 2, "{most:?} probes at once");
    let t = b.transitions();
    assert!(t.to_closed > 0 && t.to_open > 0, "{t:?}");
    // Every close follows a half-open, every half-open follows an open.
    assert!(
        t.to_closed <= t.to_half_open && t.to_half_open <= t.to_open,
        "{t:?}"
    );
    assert!(t.to_open - t.to_half_open <= 1, "{t:?}");
}
