use super::*;
use tokio::time::advance;

fn budget(percent: u32, min_per_second: u32) -> RetryBudget {
    RetryBudget::new(BudgetConfig {
        percent,
        min_per_second,
    })
}

/// Withdraws until refused; returns how many were granted (bounded).
fn drain(b: &RetryBudget) -> u64 {
    let mut n = 0;
    while n < 10_000 && b.try_withdraw() {
        n += 1;
    }
    n
}

#[tokio::test(start_paused = true)]
async fn percent_of_requests_exactly() {
    let b = budget(20, 0);
    assert!(!b.try_withdraw(), "no requests, no floor: nothing");
    for _ in 0..4 {
        b.deposit();
    }
    assert!(!b.try_withdraw(), "4 × 20 % = 0.8 retries: none");
    b.deposit();
    assert_eq!(b.view().budget_available, 1);
    assert!(b.try_withdraw(), "5 × 20 % = 1");
    assert!(!b.try_withdraw());
    for _ in 0..4 {
        b.deposit();
    }
    assert!(!b.try_withdraw(), "9 requests still allow only 1");
    b.deposit();
    assert!(b.try_withdraw(), "10 requests allow 2");
    assert!(!b.try_withdraw());
    assert_eq!(
        b.view(),
        BudgetView {
            retried: 2,
            budget_exhausted: 5,
            budget_available: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn floor_per_second_over_the_window() {
    // 10 s × 3/s = 30 retries with no traffic at all.
    let b = budget(20, 3);
    assert_eq!(b.view().budget_available, 30);
    assert_eq!(drain(&b), 30);
    // 100 requests at 20 % add 20 on top of the floor.
    for _ in 0..100 {
        b.deposit();
    }
    assert_eq!(b.view().budget_available, 20);
    assert_eq!(drain(&b), 20);
    assert_eq!(b.view().retried, 50);
    assert_eq!(b.view().budget_exhausted, 2);
}

#[tokio::test(start_paused = true)]
async fn window_slides() {
    let b = budget(50, 0);
    for _ in 0..10 {
        b.deposit();
    }
    assert_eq!(drain(&b), 5);
    advance(Duration::from_secs(5)).await;
    for _ in 0..4 {
        b.deposit();
    }
    // 14 requests × 50 % = 7, 5 taken.
    assert_eq!(b.view().budget_available, 2);
    // The first 10 requests and 5 retries leave the window at 10 s: 4 × 50 % = 2.
    advance(Duration::from_secs(5)).await;
    assert_eq!(b.view().budget_available, 2);
    assert_eq!(drain(&b), 2);
    // At 15 s the 4 requests have gone but the 2 retries taken at 10 s
    // still count against 2 new requests; by 20 s those retries have gone.
    advance(Duration::from_secs(5)).await;
    b.deposit();
    b.deposit();
    assert_eq!(b.view().budget_available, 0);
    advance(Duration::from_secs(5)).await;
    assert_eq!(b.view().budget_available, 1);
    assert_eq!(drain(&b), 1);
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_history() {
    let b = budget(10, 0);
    for _ in 0..10 {
        b.deposit();
    }
    assert_eq!(b.view().budget_available, 1);
    b.reconfigure(BudgetConfig {
        percent: 50,
        min_per_second: 1,
    });
    assert_eq!(b.view().budget_available, 15);
}
