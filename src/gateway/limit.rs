//! Rate limits per rule: `requests` per `per`, bursts up to `burst`, per
//! key (the client's address, a header, or a JWT claim).
//!
//! Local limits are governor's keyed GCRA buckets in this process. A
//! `global: true` limit is one bucket per key in Redis (`--redis`), shared
//! by every gateway replica: one `EVALSHA` of [`GCRA`] per check, which
//! reads and updates the key atomically with Redis's own clock (so the
//! replicas' clocks do not matter). When Redis does not answer within
//! [`REDIS_TIMEOUT`] (down, unreachable, slow), the request passes: a
//! broken limiter must not take the edge down. Each such pass is counted
//! (`mesh_gateway_rate_limit_fail_open_total`).
//!
//! Buckets are kept per (route, rule, limit) across route changes, so a
//! live change elsewhere does not hand every client a fresh burst.

use super::route::RateLimit;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A check that Redis does not answer in this long passes (fail-open).
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failed connect, Redis is tried again no sooner than this.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Keys longer than this are cut (they come from clients).
const MAX_KEY_BYTES: usize = 256;

/// GCRA in Redis: KEYS[1] the bucket; ARGV[1] the emission interval and
/// ARGV[2] the burst, in microseconds and requests. Returns {allowed,
/// remaining, retry-after µs, reset µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
";

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        limit: u32,
        remaining: u32,
        /// Until the bucket is full again.
        reset: Duration,
    },
    Limited {
        limit: u32,
        retry_after: Duration,
        reset: Duration,
    },
    /// Redis did not answer: passed, counted.
    FailedOpen,
}

type Local =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One rule's limit.
pub struct Limiter {
    spec: RateLimit,
    interval: Duration,
    local: Local,
    global: Option<Arc<Redis>>,
    /// `mesh:rl:ROUTE:RULE:`: the Redis key prefix.
    prefix: String,
}

impl Limiter {
    fn new(spec: &RateLimit, route: &str, rule: &str, redis: Option<Arc<Redis>>) -> Limiter {
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let interval = (spec.per / spec.requests.max(1)).max(Duration::from_nanos(1));
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Limiter {
            spec: spec.clone(),
            interval,
            local: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            global: redis.filter(|_| spec.global),
            prefix: format!("mesh:rl:{route}:{rule}:"),
        }
    }

    pub fn spec(&self) -> &RateLimit {
        &self.spec
    }

    /// Takes one request from `key`'s bucket.
    pub async fn check(&self, key: &str) -> Decision {
        let key = cut(key);
        if let Some(redis) = &self.global {
            return match redis
                .check(
                    &format!("{}{key}", self.prefix),
                    self.interval,
                    self.spec.burst,
                )
                .await
            {
                Some(d) => d,
                None => Decision::FailedOpen,
            };
        }
        let limit = self.spec.burst;
        match self.local.check_key(&key.to_string()) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Decision::Allowed {
                    limit,
                    remaining,
                    reset: self.interval * (limit - remaining.min(limit)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Decision::Limited {
                    limit,
                    retry_after: wait,
                    reset: wait + self.interval * limit.saturating_sub(1),
                }
            }
        }
    }

    /// Forgets buckets that are full again (they hold nothing a new
    /// bucket would not).
    fn tidy(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }
}

/// At most [`MAX_KEY_BYTES`], cut on a character boundary.
fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// Every rule's limiter, kept across route changes.
pub struct Limiters {
    redis: Option<Arc<Redis>>,
    by_rule: Mutex<HashMap<(String, String, RateLimit), Arc<Limiter>>>,
}

impl Limiters {
    pub fn new(redis: Option<Arc<Redis>>) -> Limiters {
        Limiters {
            redis,
            by_rule: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, route: &str, rule: &str, spec: &RateLimit) -> Arc<Limiter> {
        if spec.global && self.redis.is_none() {
            tracing::warn!(
                route,
                rule,
                "rateLimit.global without --redis: limited per gateway replica"
            );
        }
        let mut by = self.by_rule.lock().unwrap_or_else(|p| p.into_inner());
        by.entry((route.to_string(), rule.to_string(), spec.clone()))
            .or_insert_with(|| Arc::new(Limiter::new(spec, route, rule, self.redis.clone())))
            .clone()
    }

    /// Drops limiters no rule uses any more, and tidies the others.
    pub fn tidy(&self) {
        let mut by = self.by_rule.lock().unwrap_or_else(|p| p.into_inner());
        by.retain(|_, l| Arc::strong_count(l) > 1);
        for l in by.values() {
            l.tidy();
        }
    }
}

/// The Redis behind global limits.
pub struct Redis {
    client: redis::Client,
    script: redis::Script,
    conn: tokio::sync::Mutex<Conn>,
    fail_open: Counter,
}

#[derive(Default)]
struct Conn {
    manager: Option<redis::aio::ConnectionManager>,
    last_try: Option<tokio::time::Instant>,
}

impl Redis {
    /// `url`: `redis://host:port[/db]`; nothing is dialled yet.
    pub fn new(url: &str, fail_open: Counter) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Redis {
            client,
            script: redis::Script::new(GCRA),
            conn: tokio::sync::Mutex::new(Conn::default()),
            fail_open,
        })
    }

    /// The connection, dialled on first use and again at most once per
    /// [`RECONNECT_EVERY`] while Redis is away (the manager reconnects by
    /// itself once it has been connected).
    async fn manager(&self) -> Option<redis::aio::ConnectionManager> {
        let mut c = self.conn.lock().await;
        if let Some(m) = &c.manager {
            return Some(m.clone());
        }
        if c.last_try.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
            return None;
        }
        c.last_try = Some(tokio::time::Instant::now());
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let dial = redis::aio::ConnectionManager::new_with_config(self.client.clone(), config);
        match tokio::time::timeout(REDIS_TIMEOUT * 2, dial).await {
            Ok(Ok(m)) => {
                tracing::info!("connected to Redis for global rate limits");
                c.manager = Some(m.clone());
                Some(m)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to Redis; global rate limits fail open");
                None
            }
            Err(_) => {
                tracing::warn!("Redis did not answer the connect; global rate limits fail open");
                None
            }
        }
    }

    /// One atomic check; `None` (counted) when Redis did not answer.
    async fn check(&self, key: &str, interval: Duration, burst: u32) -> Option<Decision> {
        let answer = async {
            let mut m = self.manager().await?;
            let mut call = self.script.key(key);
            call.arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
                .arg(burst);
            let got: Result<(i64, i64, i64, i64), redis::RedisError> =
                call.invoke_async(&mut m).await;
            match got {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::debug!(error = %e, "Redis rate-limit check failed");
                    None
                }
            }
        };
        let got = tokio::time::timeout(REDIS_TIMEOUT, answer)
            .await
            .ok()
            .flatten();
        let Some((allowed, remaining, retry_us, reset_us)) = got else {
            self.fail_open.inc();
            return None;
        };
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Some(match allowed {
            1 => Decision::Allowed {
                limit: burst,
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset: us(reset_us),
            },
            _ => Decision::Limited {
                limit: burst,
                retry_after: us(retry_us),
                reset: us(reset_us),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(requests: u32, per: Duration, burst: u32) -> RateLimit {
        RateLimit {
            requests,
            per,
            burst,
            key: "client".into(),
            global: false,
        }
    }

    #[tokio::test]
    async fn exactly_the_burst_passes_per_key() {
        let l = Limiter::new(&spec(1, Duration::from_secs(60), 5), "r", "rules[0]", None);
        let mut passed = 0;
        for _ in 0..20 {
            if matches!(l.check("10.0.0.1").await, Decision::Allowed { .. }) {
                passed += 1;
            }
        }
        assert_eq!(passed, 5);
        match l.check("10.0.0.1").await {
            Decision::Limited {
                limit, retry_after, ..
            } => {
                assert_eq!(limit, 5);
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        // Another key has its own bucket.
        assert!(matches!(
            l.check("10.0.0.2").await,
            Decision::Allowed { remaining: 4, .. }
        ));
        assert_eq!(cut(&"é".repeat(200)).len(), 256);
    }

    #[test]
    fn limiters_are_kept_for_an_unchanged_rule() {
        let all = Limiters::new(None);
        let s = spec(10, Duration::from_secs(1), 10);
        let a = all.get("r", "rules[0]", &s);
        let b = all.get("r", "rules[0]", &s);
        assert!(Arc::ptr_eq(&a, &b));
        let c = all.get("r", "rules[0]", &spec(20, Duration::from_secs(1), 20));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((b, c));
        all.tidy();
        assert_eq!(all.by_rule.lock().unwrap().len(), 1, "the unused one went");
    }
}
