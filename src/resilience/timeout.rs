//! The total timeout of a call, and the deadline that travels with it.
//!
//! A call's deadline is the sooner of its policy's `timeouts.request` and
//! what its caller has left: a `grpc-timeout` the app's gRPC client sent,
//! or the `x-mesh-timeout` a caller's proxy sent (the inbound side hands
//! it on to the app, which may pass it along on its own calls, as it does
//! `traceparent`). Between proxies the deadline travels as the time left,
//! in milliseconds, never as a wall-clock instant: the two hosts' clocks
//! need not agree, and the time on the wire is taken off the budget by
//! whoever forwards it. So a chain A → B → C never works past A's
//! deadline: each hop cuts its own work off when the time is up.

use std::time::Duration;
use tokio::time::Instant;

/// When a call must be over, and the timeout a 504 reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    /// The timeout that set `at`: the policy's, or what the caller had
    /// left when it was shorter.
    pub timeout: Duration,
}

impl Deadline {
    /// The sooner of `policy` and `caller` (the time the caller has left),
    /// counted from `now`.
    pub fn new(now: Instant, policy: Duration, caller: Option<Duration>) -> Self {
        let timeout = caller.map_or(policy, |c| c.min(policy));
        Deadline {
            at: now + timeout,
            timeout,
        }
    }

    /// Time left at `now` (zero once past).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }
}

/// `x-mesh-timeout`: milliseconds left, a plain decimal.
pub fn parse_millis(value: &[u8]) -> Option<Duration> {
    if value.is_empty() || value.len() > 12 {
        return None;
    }
    let ms = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ms))
}

/// Milliseconds, rounded up, so a sub-millisecond rest is not zero (for
/// `x-mesh-timeout`).
pub fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// gRPC's `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for `d`, in the finest unit that fits in 8 digits.
pub fn format_grpc_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let ns = d.as_nanos();
    for (per, unit) in units {
        let n = ns.div_ceil(per);
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sooner_of_policy_and_caller_wins() {
        let now = Instant::now();
        let policy = Duration::from_secs(15);
        let d = Deadline::new(now, policy, None);
        assert_eq!((d.at, d.timeout), (now + policy, policy));
        let short = Duration::from_millis(300);
        let d = Deadline::new(now, policy, Some(short));
        assert_eq!((d.at, d.timeout), (now + short, short));
        let d = Deadline::new(now, policy, Some(Duration::from_secs(60)));
        assert_eq!(d.timeout, policy);
        assert_eq!(d.remaining(now + Duration::from_secs(20)), Duration::ZERO);
        assert_eq!(
            d.remaining(now + Duration::from_secs(5)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn deadline_headers_round_trip_and_reject_garbage() {
        assert_eq!(parse_millis(b"250"), Some(Duration::from_millis(250)));
        assert_eq!(millis_ceil(Duration::from_micros(1)), 1);
        assert_eq!(millis_ceil(Duration::from_millis(1500)), 1500);
        for bad in [&b""[..], b"-1", b"1.5", b"abc", b"9999999999999"] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
        let cases: [(&[u8], Duration); 6] = [
            (b"1H", Duration::from_secs(3600)),
            (b"2M", Duration::from_secs(120)),
            (b"3S", Duration::from_secs(3)),
            (b"400m", Duration::from_millis(400)),
            (b"5u", Duration::from_micros(5)),
            (b"99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (text, d) in cases {
            assert_eq!(parse_grpc_timeout(text), Some(d));
            assert_eq!(
                parse_grpc_timeout(format_grpc_timeout(d).as_bytes()),
                Some(d)
            );
        }
        for bad in [&b""[..], b"S", b"123456789S", b"10x", b"1.5S", b" 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(format_grpc_timeout(Duration::from_secs(1)), "1000000u");
    }
}
