use super::*;
use tokio::time::advance;

const EJECT: Duration = Duration::from_secs(30);

fn detector(consecutive_failures: u32, max_ejected_percent: u32) -> OutlierDetector {
    OutlierDetector::new(OutlierConfig {
        consecutive_failures,
        eject_for: EJECT,
        max_ejected_percent,
    })
}

/// Fails `ep` `n` times; returns whether the last failure ejected it.
fn fail(d: &OutlierDetector, ep: &EjectionState, n: u32, total: usize) -> bool {
    let mut ejected = false;
    for _ in 0..n {
        ejected = d.record(ep, false, total);
    }
    ejected
}

#[tokio::test(start_paused = true)]
async fn ejected_after_exactly_n_failures() {
    let d = detector(5, 50);
    let ep = EjectionState::default();
    assert!(!fail(&d, &ep, 4, 4));
    assert!(!d.is_ejected(&ep, Instant::now()));
    assert_eq!(ep.consecutive_failures(), 4);
    assert!(d.record(&ep, false, 4));
    assert!(d.is_ejected(&ep, Instant::now()));
    assert_eq!((ep.times_ejected(), d.ejections_total()), (1, 1));
    assert_eq!(ep.consecutive_failures(), 0);
    // Failures of calls sent before the ejection change nothing.
    assert!(!fail(&d, &ep, 10, 4));
    assert_eq!((ep.consecutive_failures(), d.ejections_total()), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn success_resets_the_run() {
    let d = detector(3, 50);
    let ep = EjectionState::default();
    fail(&d, &ep, 2, 4);
    assert!(!d.record(&ep, true, 4));
    assert_eq!(ep.consecutive_failures(), 0);
    assert!(!fail(&d, &ep, 2, 4));
    assert!(fail(&d, &ep, 1, 4));
}

#[tokio::test(start_paused = true)]
async fn returns_by_itself_and_each_ejection_lasts_longer() {
    let d = detector(1, 50);
    let ep = EjectionState::default();
    assert!(d.record(&ep, false, 4));
    let t0 = Instant::now();
    assert_eq!(ep.ejected_until(t0), Some(t0 + EJECT));
    advance(EJECT - Duration::from_millis(1)).await;
    assert!(d.is_ejected(&ep, Instant::now()));
    assert_eq!(d.ejected_now(Instant::now()), 1);
    advance(Duration::from_millis(1)).await;
    assert!(!d.is_ejected(&ep, Instant::now()), "back after ejectFor");
    assert_eq!(d.ejected_now(Instant::now()), 0);
    // Second ejection: 2 × ejectFor.
    assert!(d.record(&ep, false, 4));
    advance(EJECT * 2 - Duration::from_millis(1)).await;
    assert!(d.is_ejected(&ep, Instant::now()));
    advance(Duration::from_millis(1)).await;
    assert!(!d.is_ejected(&ep, Instant::now()));
    // The multiplier stops at 10.
    for times in 3..=12u32 {
        assert!(d.record(&ep, false, 4));
        let now = Instant::now();
        let want = EJECT * times.min(MAX_EJECTION_MULTIPLIER);
        assert_eq!(ep.ejected_until(now), Some(now + want), "ejection {times}");
        advance(want).await;
    }
    assert_eq!(ep.times_ejected(), 12);
}

#[tokio::test(start_paused = true)]
async fn capped_by_percent() {
    // 3 endpoints at 50 %: one ejected is 33 %, two would be 67 %.
    let d = detector(2, 50);
    let eps: Vec<EjectionState> = (0..3).map(|_| EjectionState::default()).collect();
    assert!(fail(&d, &eps[0], 2, 3));
    assert!(!fail(&d, &eps[1], 2, 3), "second ejection over the cap");
    assert!(!d.record(&eps[1], false, 3), "still refused");
    assert!(!d.is_ejected(&eps[1], Instant::now()));
    assert_eq!(d.ejected_now(Instant::now()), 1);
    // Once the first returns, the second may go (its run is still counted).
    advance(EJECT).await;
    assert!(d.record(&eps[1], false, 3));
    assert!(!d.is_ejected(&eps[0], Instant::now()));
    assert_eq!(d.ejections_total(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_endpoint_always_stays() {
    let d = detector(1, 100);
    let eps: Vec<EjectionState> = (0..3).map(|_| EjectionState::default()).collect();
    assert!(d.record(&eps[0], false, 3));
    assert!(d.record(&eps[1], false, 3));
    assert!(!d.record(&eps[2], false, 3), "the last one stays");
    let single = EjectionState::default();
    let d1 = detector(1, 100);
    assert!(!d1.record(&single, false, 1));
    assert_eq!(d1.ejections_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn zero_threshold_is_off() {
    let d = detector(0, 100);
    let ep = EjectionState::default();
    assert!(!fail(&d, &ep, 100, 10));
    assert_eq!(d.ejections_total(), 0);
}
