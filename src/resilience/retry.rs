//! Retry decisions: which failures a policy retries, which requests are
//! safe to send again, and how long to wait before the next attempt.
//!
//! Plain functions over plain inputs, so the request path can call them
//! with whatever it has in hand and the rules are tested here exactly.

use crate::model::policy::RetryOn;
use http::Method;
use std::time::Duration;

/// First backoff ceiling; doubles per retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// The most any retry waits.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How an attempt failed before any response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection could be made (refused, unreachable, connect timeout):
    /// the request never reached the upstream.
    ConnectFailure,
    /// The connection broke before a response arrived: the upstream may
    /// have seen (part of) the request.
    Reset,
}

/// Methods RFC 9110 §9.2.2 makes idempotent: sending one twice has the
/// effect of sending it once.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The retry class of an attempt's result: `Ok(status)` for a response,
/// `Err(kind)` for a failure before one. `None`: not a retryable failure
/// (a success, a 4xx, a 500, ...).
pub fn classify(result: Result<u16, FailureKind>) -> Option<RetryOn> {
    match result {
        Ok(502..=504) => Some(RetryOn::GatewayError),
        Ok(_) => None,
        Err(FailureKind::ConnectFailure) => Some(RetryOn::ConnectFailure),
        Err(FailureKind::Reset) => Some(RetryOn::Reset),
    }
}

/// Whether a policy retrying on `on` retries this result.
pub fn should_retry(on: &[RetryOn], result: Result<u16, FailureKind>) -> bool {
    classify(result).is_some_and(|class| on.contains(&class))
}

/// Whether a request may be sent again after failing with `class`: always
/// after a connect failure (the upstream never saw it; the caller must
/// still be able to replay the body), else only idempotent methods.
pub fn may_repeat(method: &Method, class: RetryOn) -> bool {
    class == RetryOn::ConnectFailure || is_idempotent(method)
}

/// The longest wait before retry number `attempt` (1 = the first retry):
/// 25 ms, 50, 100, 200, then 250 ms.
pub fn backoff_ceiling(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (BACKOFF_BASE * (1u32 << doublings)).min(BACKOFF_MAX)
}

/// The wait before retry number `attempt`: uniform in
/// `[0, backoff_ceiling(attempt)]` ("full jitter"), so clients that failed
/// together do not retry together.
pub fn retry_delay(attempt: u32) -> Duration {
    let ceiling = backoff_ceiling(attempt);
    let ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn classes_against_policies() {
        use FailureKind::*;
        let default = crate::model::policy::Retries::default().on;
        let all = [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError,
        ];
        type Case = (Result<u16, FailureKind>, Option<RetryOn>, bool, bool);
        let cases: [Case; 9] = [
            // result, class, default policy retries, all-classes retries
            (Ok(200), None, false, false),
            (Ok(404), None, false, false),
            (Ok(500), None, false, false),
            (Ok(501), None, false, false),
            (Ok(502), Some(RetryOn::GatewayError), true, true),
            (Ok(503), Some(RetryOn::GatewayError), true, true),
            (Ok(504), Some(RetryOn::GatewayError), true, true),
            (
                Err(ConnectFailure),
                Some(RetryOn::ConnectFailure),
                true,
                true,
            ),
            (Err(Reset), Some(RetryOn::Reset), false, true),
        ];
        for (result, class, by_default, by_all) in cases {
            assert_eq!(classify(result), class, "{result:?}");
            assert_eq!(should_retry(&default, result), by_default, "{result:?}");
            assert_eq!(should_retry(&all, result), by_all, "{result:?}");
            assert!(!should_retry(&[], result));
        }
        assert!(should_retry(&[RetryOn::Reset], Err(Reset)));
        assert!(!should_retry(&[RetryOn::Reset], Ok(503)));
    }

    #[test]
    fn repeatable_requests() {
        assert!(may_repeat(&Method::POST, RetryOn::ConnectFailure));
        assert!(!may_repeat(&Method::POST, RetryOn::Reset));
        assert!(!may_repeat(&Method::PATCH, RetryOn::GatewayError));
        assert!(may_repeat(&Method::GET, RetryOn::Reset));
        assert!(may_repeat(&Method::PUT, RetryOn::GatewayError));
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_full_jitter() {
        let ms = |a| backoff_ceiling(a).as_millis();
        let ceilings: Vec<u128> = (0..=7).map(ms).collect();
        assert_eq!(ceilings, [25, 25, 50, 100, 200, 250, 250, 250]);
        assert_eq!(ms(u32::MAX), 250);
        for attempt in 1..=6 {
            let delays: Vec<Duration> = (0..200).map(|_| retry_delay(attempt)).collect();
            let ceiling = backoff_ceiling(attempt);
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Full jitter spreads over the whole range, not around a point.
            assert!(delays.iter().any(|d| *d < ceiling / 4), "attempt {attempt}");
            assert!(
                delays.iter().any(|d| *d > ceiling * 3 / 4),
                "attempt {attempt}"
            );
        }
    }
}
