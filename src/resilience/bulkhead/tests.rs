use super::*;
use tokio::time::{advance, Instant};

fn bulkhead(max_concurrent: u32, max_queued: u32, queue_timeout: Duration) -> Arc<Bulkhead> {
    Arc::new(Bulkhead::new(BulkheadConfig {
        max_concurrent,
        max_queued,
        queue_timeout,
    }))
}

/// Lets spawned tasks run until they block (the clock is paused, so this
/// does not move time).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn call_after_the_limit_is_rejected_at_once() {
    let b = bulkhead(3, 0, Duration::ZERO);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(b.acquire().await.unwrap());
    }
    assert_eq!(b.in_flight(), 3);
    let start = Instant::now();
    let err = b.acquire().await.unwrap_err();
    assert!(!err.timed_out);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(b.queued(), 0);
    drop(held.pop());
    assert_eq!(b.in_flight(), 2);
    let again = b.acquire().await;
    assert!(again.is_ok(), "a released slot is reusable");
    drop(again);
    drop(held);
    assert_eq!(b.in_flight(), 0);
    assert_eq!(
        b.view(),
        BulkheadView {
            in_flight: 0,
            queued: 0,
            max_concurrent: 3,
            max_queued: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn queued_callers_are_admitted_in_order() {
    let b = bulkhead(1, 3, Duration::from_secs(10));
    let first = b.acquire().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (b, tx) = (b.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let p = b.acquire().await.unwrap();
            tx.send(i).unwrap();
            // Hold the slot until the test moves time.
            tokio::time::sleep(Duration::from_millis(1)).await;
            drop(p);
        }));
        settle().await; // queue them in a known order
    }
    assert_eq!(b.queued(), 3);
    assert!(b.acquire().await.is_err(), "queue full: rejected at once");
    drop(first);
    for _ in 0..3 {
        settle().await;
        advance(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(order, [0, 1, 2]);
    assert_eq!((b.in_flight(), b.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn queue_timeout() {
    let b = bulkhead(1, 1, Duration::from_millis(250));
    let _held = b.acquire().await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            (b.acquire().await.map(drop), start.elapsed())
        })
    };
    settle().await;
    assert_eq!(b.queued(), 1);
    let (result, waited) = waiter.await.unwrap();
    assert_eq!(result, Err(BulkheadFull { timed_out: true }));
    assert_eq!(waited, Duration::from_millis(250));
    assert_eq!(b.queued(), 0, "a timed-out waiter leaves the queue");
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let b = bulkhead(1, 1, Duration::from_secs(60));
    let _held = b.acquire().await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.acquire().await.map(drop) })
    };
    settle().await;
    assert_eq!(b.queued(), 1);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(b.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn resizes_in_place() {
    let b = bulkhead(4, 0, Duration::ZERO);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(b.acquire().await.unwrap());
    }
    // Shrink to 1 with 3 running: the free slot goes now, two more as
    // calls finish; nothing new is admitted until only 0 run.
    b.reconfigure(BulkheadConfig {
        max_concurrent: 1,
        max_queued: 0,
        queue_timeout: Duration::ZERO,
    });
    assert!(b.acquire().await.is_err());
    drop(held.pop());
    drop(held.pop());
    assert!(
        b.acquire().await.is_err(),
        "one still running fills the new limit"
    );
    drop(held.pop());
    let one = b.acquire().await.unwrap();
    assert!(b.acquire().await.is_err());
    // Grow to 3: two more at once.
    b.reconfigure(BulkheadConfig {
        max_concurrent: 3,
        max_queued: 0,
        queue_timeout: Duration::ZERO,
    });
    let two = b.acquire().await.unwrap();
    let three = b.acquire().await.unwrap();
    assert!(b.acquire().await.is_err());
    assert_eq!(b.view().max_concurrent, 3);
    drop((one, two, three));
    assert_eq!(b.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_over_the_limit_under_contention() {
    use std::sync::atomic::AtomicU32;
    let b = bulkhead(3, 64, Duration::from_secs(60));
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (b, running, most) = (b.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                for _ in 0..300 {
                    let p = b.acquire().await.unwrap();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 3);
    assert_eq!((b.in_flight(), b.queued()), (0, 0));
}
