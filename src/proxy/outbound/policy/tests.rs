//! The call path under tokio's paused clock, with a scripted attempt: each
//! endpoint answers as its script says, and every try is logged. No
//! sockets, no processes; time moves only when every task waits.

use super::*;
use crate::model::policy::{LoadBalancer, RetryOn};
use crate::model::{Health, Instance, ServiceInfo, ServicePolicy, Snapshot};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

/// How an endpoint answers a try.
#[derive(Clone, Copy, Debug)]
enum Script {
    Status(u16),
    Refuse,
    Reset,
    /// Answers 200 after this long.
    Slow(Duration),
}

#[derive(Default)]
struct Fake {
    scripts: HashMap<String, Script>,
    /// `service/endpoint` of every try, in order.
    sent: Mutex<Vec<String>>,
    idempotent: bool,
    /// Whether the call can be sent twice (a body that was kept).
    replayable: bool,
    /// Successes keep their bulkhead slot here (a response still open).
    held: Mutex<Vec<BulkheadPermit>>,
    hold: bool,
}

impl Fake {
    fn new(scripts: &[(&str, Script)]) -> Self {
        Fake {
            scripts: scripts.iter().map(|(id, s)| (id.to_string(), *s)).collect(),
            idempotent: true,
            replayable: true,
            ..Fake::default()
        }
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

/// A fake answer: the status, and whether a fallback marked it.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    fallback: Option<&'static str>,
}

impl Attempt for Fake {
    type Call = ();
    type Output = Answer;

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    async fn send(&self, (): (), to: Target<'_>) -> Result<Answer, MeshError> {
        let id = to.endpoint.id.clone();
        self.sent
            .lock()
            .unwrap()
            .push(format!("{}/{id}", to.svc.name));
        let addr = to.endpoint.addr;
        match self
            .scripts
            .get(&id)
            .copied()
            .unwrap_or(Script::Status(200))
        {
            Script::Status(status) => Ok(Answer {
                status,
                fallback: None,
            }),
            Script::Refuse => Err(MeshError::ConnectFailed {
                addr,
                reason: "refused".into(),
            }),
            Script::Reset => Err(MeshError::UpstreamReset {
                addr,
                reason: "eof".into(),
            }),
            Script::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(Answer {
                    status: 200,
                    fallback: None,
                })
            }
        }
    }

    fn admit(&self, out: &mut Answer, admitted: Admitted) {
        admitted.verdict.record(out.status >= 500);
        if self.hold {
            self.held.lock().unwrap().push(admitted.slot);
        }
    }

    fn answered<'a>(&self, out: &'a Answer, _from_peer: bool) -> Option<Tried<'a>> {
        Some(Tried::Answered {
            status: out.status,
            peer_error: None,
            grpc_status: None,
        })
    }

    fn again(&self) -> Option<()> {
        self.replayable.then_some(())
    }

    fn static_fallback(&self, f: &Fallback, reason: &'static str) -> Option<Answer> {
        match f {
            Fallback::Static { status, .. } => Some(Answer {
                status: *status,
                fallback: Some(reason),
            }),
            Fallback::Service { .. } => None,
        }
    }

    fn mark_fallback(&self, out: &mut Answer, reason: &'static str) {
        out.fallback = Some(reason);
    }
}

/// A policy with round-robin (so tries go in a known order) and no
/// ejection (so scripts stay in play).
fn policy(service: &str) -> ServicePolicy {
    let mut p = ServicePolicy::defaults(service);
    p.load_balancer = LoadBalancer::RoundRobin;
    p.outlier.consecutive_failures = 0;
    p
}

fn instance(service: &str, id: &str, k: u8) -> Instance {
    Instance {
        id: id.into(),
        service: service.into(),
        address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, k)),
        port: 8080,
        metadata: Default::default(),
        health: Health::Up,
        ttl_secs: None,
        inbound_port: None,
        identity: None,
    }
}

struct World {
    dir: Directory,
    metrics: Arc<ProxyMetrics>,
}

impl World {
    /// Services as `(name, endpoint ids, policy)`.
    fn new(services: Vec<(&str, &[&str], ServicePolicy)>) -> Self {
        let metrics = Arc::new(ProxyMetrics::new());
        let dir = Directory::new(Default::default(), metrics.clone());
        let mut infos = Vec::new();
        let mut policies = Vec::new();
        for (k, (name, ids, p)) in services.into_iter().enumerate() {
            infos.push(ServiceInfo {
                name: name.into(),
                vip: Ipv4Addr::new(127, 100, 0, 1 + k as u8),
                instances: ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| instance(name, id, 1 + i as u8))
                    .collect(),
            });
            policies.push(p);
        }
        let names: Vec<String> = infos.iter().map(|i| i.name.clone()).collect();
        dir.replace(Snapshot {
            revision: 1,
            policies,
            services: infos,
            authorizations: Vec::new(),
            bundle: None,
            configs: Vec::new(),
            routes: Vec::new(),
        });
        // Round-robin starts anywhere (so that proxies started together do
        // not all pick the same endpoint first): turn it to the first.
        for svc in names.iter().filter_map(|n| dir.service(n)) {
            if let Some(last) = svc.ready.last() {
                while !Arc::ptr_eq(svc.balancer.pick(&svc.ready).unwrap(), last) {}
            }
        }
        World { dir, metrics }
    }

    fn svc(&self, name: &str) -> Arc<Service> {
        self.dir.service(name).unwrap()
    }

    async fn call(&self, name: &str, fake: &Fake) -> Result<Answer, MeshError> {
        self.call_within(name, fake, None).await
    }

    async fn call_within(
        &self,
        name: &str,
        fake: &Fake,
        caller_left: Option<Duration>,
    ) -> Result<Answer, MeshError> {
        call(
            &self.dir,
            &self.metrics,
            &self.svc(name),
            fake,
            (),
            super::Caps {
                left: caller_left,
                retries: None,
            },
            &mut super::Trail::default(),
        )
        .await
    }
}

fn ok() -> Answer {
    Answer {
        status: 200,
        fallback: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_is_one_try_and_one_breaker_call() {
    let w = World::new(vec![("api", &["a", "b"], policy("api"))]);
    let fake = Fake::new(&[]);
    assert_eq!(w.call("api", &fake).await.unwrap(), ok());
    assert_eq!(fake.sent(), ["api/a"]);
    assert_eq!(w.svc("api").resilience.view().breaker.calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_retried_on_another_endpoint() {
    let w = World::new(vec![("api", &["dead", "live"], policy("api"))]);
    let fake = Fake::new(&[("dead", Script::Refuse)]);
    assert_eq!(w.call("api", &fake).await.unwrap(), ok());
    assert_eq!(fake.sent(), ["api/dead", "api/live"]);
    // Both tries were judged: one failure, one success.
    let breaker = w.svc("api").resilience.view().breaker;
    assert_eq!(breaker.calls, 2);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_policys_attempts() {
    let ids = ["a", "b", "c", "d"];
    let w = World::new(vec![("api", &ids, policy("api"))]);
    let fake = Fake::new(&ids.map(|id| (id, Script::Status(503))));
    // Default policy: 2 retries on gateway errors, each on an endpoint not
    // tried yet; the last answer stands.
    let answer = w.call("api", &fake).await.unwrap();
    assert_eq!(answer.status, 503);
    let sent = fake.sent();
    let distinct: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(distinct.len(), 3, "an endpoint was tried twice: {sent:?}");
}

#[tokio::test(start_paused = true)]
async fn only_calls_the_app_never_saw_are_repeated_whatever_their_method() {
    let mut p = policy("api");
    p.retries.on = vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ];
    let w = World::new(vec![("api", &["a", "b"], p)]);
    // A POST (not idempotent) that met a reset: the app may have seen it.
    let mut post = Fake::new(&[("a", Script::Reset)]);
    post.idempotent = false;
    let err = w.call("api", &post).await.unwrap_err();
    assert_eq!(err.reason(), "upstream-reset");
    assert_eq!(post.sent(), ["api/a"]);
    // The same POST refused at connect: the app never saw it.
    let mut post = Fake::new(&[("b", Script::Refuse)]);
    post.idempotent = false;
    assert_eq!(w.call("api", &post).await.unwrap(), ok());
    assert_eq!(post.sent(), ["api/b", "api/a"]);
    // A GET after a reset: idempotent, repeated.
    let get = Fake::new(&[("a", Script::Reset)]);
    assert_eq!(w.call("api", &get).await.unwrap(), ok());
    assert_eq!(get.sent(), ["api/a", "api/b"]);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_cannot_be_sent_again_is_not_retried() {
    let w = World::new(vec![("api", &["dead", "live"], policy("api"))]);
    let mut fake = Fake::new(&[("dead", Script::Refuse)]);
    fake.replayable = false;
    let err = w.call("api", &fake).await.unwrap_err();
    assert_eq!(err.reason(), "connect-failed");
    assert_eq!(fake.sent(), ["api/dead"]);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_says_so() {
    let mut p = policy("api");
    p.retries.budget.percent = 0;
    p.retries.budget.min_per_second = 0;
    let w = World::new(vec![("api", &["dead", "live"], p)]);
    let fake = Fake::new(&[("dead", Script::Refuse)]);
    let err = w.call("api", &fake).await.unwrap_err();
    assert_eq!(err.reason(), "retry-budget-exhausted");
    assert_eq!(err.status(), 503);
    assert_eq!(fake.sent(), ["api/dead"]);
    assert_eq!(w.svc("api").resilience.view().retries.budget_exhausted, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_without_a_try() {
    let mut p = policy("api");
    p.retries.attempts = 0;
    p.breaker.consecutive_failures = 1;
    let w = World::new(vec![("api", &["a"], p)]);
    let fake = Fake::new(&[("a", Script::Refuse)]);
    assert_eq!(
        w.call("api", &fake).await.unwrap_err().reason(),
        "connect-failed"
    );
    assert_eq!(
        w.call("api", &fake).await.unwrap_err().reason(),
        "breaker-open"
    );
    assert_eq!(fake.sent(), ["api/a"], "the open breaker let a try through");
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_queues_then_refuses_after_its_queue_timeout() {
    let mut p = policy("api");
    p.bulkhead.max_concurrent = 1;
    p.bulkhead.max_queued = 1;
    p.bulkhead.queue_timeout = Duration::from_millis(100);
    let w = World::new(vec![("api", &["a"], p)]);
    let mut fake = Fake::new(&[]);
    fake.hold = true;
    // The first call's response is still open: it holds the only slot.
    assert_eq!(w.call("api", &fake).await.unwrap(), ok());
    let start = Instant::now();
    let err = w.call("api", &fake).await.unwrap_err();
    assert_eq!(err.reason(), "bulkhead-full");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(fake.sent().len(), 1);
    // Once the response ends, the slot is free.
    fake.held.lock().unwrap().clear();
    assert_eq!(w.call("api", &fake).await.unwrap(), ok());
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_cuts_a_slow_try_and_blames_its_endpoint() {
    let mut p = policy("api");
    p.timeouts.request = Duration::from_secs(1);
    let w = World::new(vec![("api", &["slow"], p)]);
    let fake = Fake::new(&[("slow", Script::Slow(Duration::from_secs(30)))]);
    let start = Instant::now();
    let err = w.call("api", &fake).await.unwrap_err();
    assert_eq!(err.reason(), "timeout");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let breaker = w.svc("api").resilience.view().breaker;
    assert_eq!((breaker.calls, breaker.failures), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn the_callers_deadline_caps_the_policys_timeout() {
    let w = World::new(vec![("api", &["slow"], policy("api"))]);
    let fake = Fake::new(&[("slow", Script::Slow(Duration::from_secs(30)))]);
    let start = Instant::now();
    let left = Duration::from_millis(250);
    let err = w.call_within("api", &fake, Some(left)).await.unwrap_err();
    assert!(matches!(err, MeshError::Timeout(d) if d == left), "{err}");
    assert_eq!(start.elapsed(), left);
    // A caller with more time than the policy gets the policy's.
    let fast = Fake::new(&[("slow", Script::Slow(Duration::from_secs(1)))]);
    let long = Some(Duration::from_secs(3600));
    assert_eq!(w.call_within("api", &fast, long).await.unwrap(), ok());
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_would_end_past_the_deadline() {
    let w = World::new(vec![("api", &["dead", "live"], policy("api"))]);
    let fake = Fake::new(&[("dead", Script::Refuse)]);
    // Less time left than any backoff could need: one try only.
    let err = w
        .call_within("api", &fake, Some(Duration::from_nanos(1)))
        .await
        .unwrap_err();
    assert!(
        ["connect-failed", "timeout"].contains(&err.reason()),
        "{err}"
    );
    assert_eq!(fake.sent(), ["api/dead"]);
}

#[tokio::test(start_paused = true)]
async fn a_static_fallback_answers_for_each_reason() {
    let fallback = Some(Fallback::Static {
        status: 299,
        headers: Default::default(),
        body: "cached".into(),
    });
    // (endpoints, script, policy tweak, expected reason)
    type Tweak = fn(&mut ServicePolicy);
    let cases: [(&[&str], Script, Tweak, &str); 5] = [
        (
            &["a"],
            Script::Refuse,
            |p| p.retries.attempts = 0,
            "connect-failed",
        ),
        (&[], Script::Refuse, |_| {}, "no-endpoints"),
        (
            &["a"],
            Script::Slow(Duration::from_secs(60)),
            |p| p.timeouts.request = Duration::from_secs(1),
            "timeout",
        ),
        (
            &["a", "b"],
            Script::Refuse,
            |p| {
                p.retries.budget.percent = 0;
                p.retries.budget.min_per_second = 0;
            },
            "retry-budget-exhausted",
        ),
        (
            &["a"],
            Script::Status(200),
            |p| {
                p.bulkhead.max_concurrent = 0;
            },
            "bulkhead-full",
        ),
    ];
    for (ids, script, tweak, reason) in cases {
        let mut p = policy("api");
        p.fallback = fallback.clone();
        tweak(&mut p);
        let w = World::new(vec![("api", ids, p)]);
        let scripts: Vec<(&str, Script)> = ids.iter().map(|id| (*id, script)).collect();
        let fake = Fake::new(&scripts);
        let answer = w.call("api", &fake).await.unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 299,
                fallback: Some(reason)
            },
            "{reason}"
        );
    }

    // breaker-open: a failure opens it, the next call is answered.
    let mut p = policy("api");
    p.fallback = fallback.clone();
    p.retries.attempts = 0;
    p.breaker.consecutive_failures = 1;
    let w = World::new(vec![("api", &["a"], p)]);
    let fake = Fake::new(&[("a", Script::Refuse)]);
    assert_eq!(
        w.call("api", &fake).await.unwrap().fallback,
        Some("connect-failed")
    );
    assert_eq!(
        w.call("api", &fake).await.unwrap().fallback,
        Some("breaker-open")
    );
    assert_eq!(fake.sent().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_service_fallback_sends_the_call_through_the_other_services_policy() {
    let mut p = policy("api");
    p.retries.attempts = 0;
    p.fallback = Some(Fallback::Service {
        service: "api-backup".into(),
    });
    let w = World::new(vec![
        ("api", &["a"], p),
        ("api-backup", &["z"], policy("api-backup")),
    ]);
    let fake = Fake::new(&[("a", Script::Refuse)]);
    let answer = w.call("api", &fake).await.unwrap();
    assert_eq!(
        answer,
        Answer {
            status: 200,
            fallback: Some("connect-failed")
        }
    );
    assert_eq!(fake.sent(), ["api/a", "api-backup/z"]);
    assert_eq!(w.svc("api-backup").resilience.view().breaker.calls, 1);

    // A call that cannot be sent again is not: the first failure stands.
    let mut once = Fake::new(&[("a", Script::Refuse)]);
    once.replayable = false;
    let err = w.call("api", &once).await.unwrap_err();
    assert_eq!(err.reason(), "connect-failed");
    assert_eq!(once.sent(), ["api/a"]);
}

#[tokio::test(start_paused = true)]
async fn mesh_mistakes_are_not_for_the_fallback() {
    let mut p = policy("api");
    p.fallback = Some(Fallback::Static {
        status: 200,
        headers: Default::default(),
        body: String::new(),
    });
    let w = World::new(vec![("api", &["a"], p)]);
    // The attempt itself refuses the call as a bad request.
    struct Bad;
    impl Attempt for Bad {
        type Call = ();
        type Output = Answer;
        fn idempotent(&self) -> bool {
            true
        }
        async fn send(&self, (): (), _: Target<'_>) -> Result<Answer, MeshError> {
            Err(MeshError::BadRequest("no".into()))
        }
        fn admit(&self, _: &mut Answer, _: Admitted) {}
        fn answered<'a>(&self, _: &'a Answer, _: bool) -> Option<Tried<'a>> {
            None
        }
        fn again(&self) -> Option<()> {
            Some(())
        }
    }
    let err = call(
        &w.dir,
        &w.metrics,
        &w.svc("api"),
        &Bad,
        (),
        super::Caps::default(),
        &mut super::Trail::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "bad-request");
}
