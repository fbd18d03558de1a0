//! Human durations for flags and documents: `250ms`, `5s`, `1m`, `1h`,
//! combinations like `1m30s`, and `0`/`0s`.

use std::time::Duration;

/// The most one number and its unit may add: 10⁹ seconds (some 31 years),
/// in milliseconds.
const MAX_PART_MS: u64 = 1_000_000_000_000;

/// The number before a unit.
enum Number {
    /// Digits only: counted exactly, in integers.
    Whole(u64),
    /// With a decimal point (`1.5s`): counted in f64 seconds.
    Fraction(f64),
}

/// Parses `"1m30s"`-style durations; the error says what was wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration; expected e.g. 500ms, 5s, 1m".into());
    }
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number before {rest:?}"));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        // A whole number in integers, so a formatted duration reads back as
        // itself: in f64 seconds `8589934599ms` lands nanoseconds off, and
        // a policy's durations must be whole milliseconds. Digits alone
        // fail to parse only by overflow, which is too large in any unit.
        let number = if num.bytes().all(|b| b.is_ascii_digit()) {
            Number::Whole(num.parse::<u64>().unwrap_or(u64::MAX))
        } else {
            let value: f64 = num
                .parse()
                .map_err(|_| format!("{s:?}: {num:?} is not a number"))?;
            Number::Fraction(value)
        };
        let unit_ms: u32 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(format!("{s:?}: missing unit (ms, s, m or h)")),
            other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m or h)")),
        };
        let part = match number {
            Number::Whole(n) => n
                .checked_mul(u64::from(unit_ms))
                .filter(|&ms| ms <= MAX_PART_MS)
                .map(Duration::from_millis),
            Number::Fraction(value) => {
                let secs = match unit_ms {
                    1 => value / 1000.0,
                    _ => value * f64::from(unit_ms / 1000),
                };
                (secs.is_finite() && secs <= 1e9).then(|| Duration::from_secs_f64(secs))
            }
        };
        total += part.ok_or_else(|| format!("{s:?} is too large"))?;
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "-1s", "5", "5x", "s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }

    #[test]
    fn formatted_durations_parse_back() {
        // Once counted in f64 seconds, `8589934s599ms` came out nanoseconds
        // off, and its formatted form failed a policy's whole-milliseconds
        // check.
        assert_eq!(
            parse_duration("8589934s599ms"),
            Ok(Duration::from_millis(8_589_934_599))
        );
        for text in [
            "8589934s599ms",
            "1ms",
            "59m59s999ms",
            "3600s",
            "1h30m",
            "1000000000000ms",
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{text:?} is {d:?}");
            let formatted = format_duration(d);
            assert_eq!(
                parse_duration(&formatted),
                Ok(d),
                "{text:?} as {formatted:?}"
            );
        }
    }

    #[test]
    fn whole_numbers_keep_the_bound() {
        for ok in ["1000000000s", "16666666m", "277777h", "1000000000000ms"] {
            assert!(parse_duration(ok).is_ok(), "{ok:?} refused");
        }
        for big in [
            "1000000001s",
            "16666667m",
            "277778h",
            "1000000000001ms",
            "99999999999999999999999s",
        ] {
            assert_eq!(parse_duration(big), Err(format!("{big:?} is too large")));
        }
    }
}
