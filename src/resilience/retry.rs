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

/// What an attempt came to, as the retry rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tried<'a> {
    /// No response: the connection could not be made, or it broke.
    Failed(FailureKind),
    /// A response arrived.
    Answered {
        status: u16,
        /// `x-mesh-error` when the response came from a peer proxy, which
        /// names its own failures there (the app's headers are stripped
        /// of it, so it cannot be forged by the app).
        peer_error: Option<&'a [u8]>,
        /// `grpc-status` in the headers (a trailers-only response).
        grpc_status: Option<u32>,
    },
}

/// A failure that a policy may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retryable {
    pub class: RetryOn,
    /// The request may be sent again whatever its method: the app surely
    /// never saw it (a connect failure, here or at the peer proxy, or the
    /// peer shedding load), or the policy declares the answer safe to
    /// repeat after (`unavailable`).
    pub unseen: bool,
}

const fn retryable(class: RetryOn, unseen: bool) -> Option<Retryable> {
    Some(Retryable { class, unseen })
}

/// The retry class of an attempt's result. `None`: not a retryable
/// failure (a success, a 4xx, a 500, ...).
pub fn classify(tried: Tried<'_>) -> Option<Retryable> {
    match tried {
        Tried::Failed(FailureKind::ConnectFailure) => retryable(RetryOn::ConnectFailure, true),
        Tried::Failed(FailureKind::Reset) => retryable(RetryOn::Reset, false),
        Tried::Answered {
            status,
            peer_error,
            grpc_status,
        } => match (peer_error, status) {
            (Some(b"connect-failed" | b"overloaded"), _) => {
                retryable(RetryOn::ConnectFailure, true)
            }
            (Some(b"upstream-reset"), _) => retryable(RetryOn::Reset, false),
            (_, 502..=504) => retryable(RetryOn::GatewayError, false),
            // gRPC UNAVAILABLE (trailers-only): repeatable when the policy
            // lists `unavailable`, whatever the method.
            _ if grpc_status == Some(GRPC_UNAVAILABLE) => retryable(RetryOn::Unavailable, true),
            _ => None,
        },
    }
}

/// gRPC's UNAVAILABLE code.
const GRPC_UNAVAILABLE: u32 = 14;

/// Whether a policy retrying on `on` retries this result.
pub fn should_retry(on: &[RetryOn], tried: Tried<'_>) -> bool {
    classify(tried).is_some_and(|r| on.contains(&r.class))
}

/// Whether a request may be sent again after `failure`: always when the
/// app never saw it (or the policy says the answer is safe to repeat
/// after), else only idempotent methods.
pub fn may_repeat(idempotent: bool, failure: Retryable) -> bool {
    failure.unseen || idempotent
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

    fn answered(status: u16) -> Tried<'static> {
        Tried::Answered {
            status,
            peer_error: None,
            grpc_status: None,
        }
    }

    #[test]
    fn classes_against_policies() {
        let default = crate::model::policy::Retries::default().on;
        let all = [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::GatewayError,
            RetryOn::Unavailable,
        ];
        let peer = |e: &'static [u8]| Tried::Answered {
            status: 502,
            peer_error: Some(e),
            grpc_status: None,
        };
        let grpc = |code| Tried::Answered {
            status: 200,
            peer_error: None,
            grpc_status: Some(code),
        };
        use RetryOn::*;
        type Case = (Tried<'static>, Option<(RetryOn, bool)>, bool);
        let cases: [Case; 14] = [
            // tried, (class, unseen), default policy retries
            (answered(200), None, false),
            (answered(404), None, false),
            (answered(500), None, false),
            (answered(501), None, false),
            (answered(502), Some((GatewayError, false)), true),
            (answered(503), Some((GatewayError, false)), true),
            (answered(504), Some((GatewayError, false)), true),
            (
                Tried::Failed(FailureKind::ConnectFailure),
                Some((ConnectFailure, true)),
                true,
            ),
            (
                Tried::Failed(FailureKind::Reset),
                Some((Reset, false)),
                false,
            ),
            (peer(b"connect-failed"), Some((ConnectFailure, true)), true),
            (peer(b"overloaded"), Some((ConnectFailure, true)), true),
            (peer(b"upstream-reset"), Some((Reset, false)), false),
            (grpc(14), Some((Unavailable, true)), false),
            (grpc(13), None, false),
        ];
        for (tried, class, by_default) in cases {
            let got = classify(tried).map(|r| (r.class, r.unseen));
            assert_eq!(got, class, "{tried:?}");
            assert_eq!(should_retry(&default, tried), by_default, "{tried:?}");
            assert_eq!(should_retry(&all, tried), class.is_some(), "{tried:?}");
            assert!(!should_retry(&[], tried));
        }
    }

    #[test]
    fn repeatable_requests() {
        let connect = classify(Tried::Failed(FailureKind::ConnectFailure)).unwrap();
        let reset = classify(Tried::Failed(FailureKind::Reset)).unwrap();
        let gateway = classify(answered(503)).unwrap();
        let post = is_idempotent(&Method::POST);
        assert!(may_repeat(post, connect));
        assert!(!may_repeat(post, reset));
        assert!(!may_repeat(is_idempotent(&Method::PATCH), gateway));
        assert!(may_repeat(is_idempotent(&Method::GET), reset));
        assert!(may_repeat(is_idempotent(&Method::PUT), gateway));
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
