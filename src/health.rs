//! What a replica tells kubelet about itself: `/readyz` (may it serve admission
//! reviews and poll?) and `/healthz` (is it alive, or wedged and worth a restart?).
//!
//! Readiness needs the apiserver: a replica that has not heard from it for
//! [`APISERVER_STALE`] is taken out of the webhook Service, as its caches, leases
//! and status writes are all going stale. Liveness is a watchdog: a task on the
//! operator's runtime ticks every second, and a replica whose ticks stop for
//! [`WATCHDOG_STALE`] has a starved or blocked runtime. (A runtime wedged so
//! completely that the admin server cannot answer at all fails kubelet's probe by
//! its timeout, to the same effect.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the apiserver is asked whether it answers.
pub const APISERVER_PERIOD: Duration = Duration::from_secs(5);
/// How long without an answer from the apiserver before the replica is not ready.
pub const APISERVER_STALE: Duration = Duration::from_secs(15);
/// How often the watchdog ticks.
pub const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);
/// How long without a tick before the replica is not alive.
pub const WATCHDOG_STALE: Duration = Duration::from_secs(15);
/// The share of its descriptor limit a replica may use and stay ready: past it,
/// new connections (webhook reviews, polls, apiserver requests) start to fail.
pub const DESCRIPTORS_READY_PERCENT: u64 = 95;

/// The facts readiness and liveness are judged from, as other parts report them.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the watchdog's last tick.
    last_tick_ms: AtomicU64,
    apiserver: Mutex<Contact>,
    /// Open descriptors and the limit, when last counted (0, 0: not known).
    descriptors: (AtomicU64, AtomicU64),
}

/// What is known of the apiserver: when it last answered (from `started`) and the
/// last failure since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub last_answer: Option<Duration>,
    pub last_error: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            apiserver: Mutex::new(Contact::default()),
            descriptors: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// The watchdog ran.
    pub fn tick(&self) {
        let ms = u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX);
        self.last_tick_ms.store(ms, Ordering::Release);
    }

    /// The apiserver answered a request of this replica.
    pub fn apiserver_answered(&self) {
        let now = self.now();
        if let Ok(mut contact) = self.apiserver.lock() {
            contact.last_answer = Some(now);
            contact.last_error = None;
        }
    }

    /// Whether the apiserver answered this replica within the last `period`.
    pub fn apiserver_answered_within(&self, period: Duration) -> bool {
        let now = self.now();
        self.apiserver
            .lock()
            .ok()
            .and_then(|c| c.last_answer)
            .is_some_and(|at| now.saturating_sub(at) < period)
    }

    /// A request of this replica to the apiserver failed.
    pub fn apiserver_failed(&self, error: &str) {
        if let Ok(mut contact) = self.apiserver.lock() {
            contact.last_error = Some(error.to_owned());
        }
    }

    /// Why this replica cannot reach the apiserver, if it cannot.
    pub fn apiserver_problem(&self) -> Option<String> {
        let contact = self.apiserver.lock().map(|c| c.clone()).unwrap_or_default();
        apiserver_problem(&contact, self.now())
    }

    /// The process's open descriptors and its limit, as just counted.
    pub fn descriptors_counted(&self, open: u64, limit: u64) {
        self.descriptors.0.store(open, Ordering::Release);
        self.descriptors.1.store(limit, Ordering::Release);
    }

    /// Why this replica is too near its descriptor limit to take more, if it is.
    pub fn descriptor_problem(&self) -> Option<String> {
        descriptor_problem(
            self.descriptors.0.load(Ordering::Acquire),
            self.descriptors.1.load(Ordering::Acquire),
        )
    }

    /// Why this replica is not alive, if it is not.
    pub fn liveness_problem(&self) -> Option<String> {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Acquire));
        watchdog_problem(last, self.now())
    }
}

/// The apiserver is a problem once it has not answered for [`APISERVER_STALE`]
/// (from start-up, if it never has).
pub fn apiserver_problem(contact: &Contact, now: Duration) -> Option<String> {
    let since = contact.last_answer.unwrap_or(Duration::ZERO);
    let silent = now.saturating_sub(since);
    if silent < APISERVER_STALE {
        return None;
    }
    let why = contact
        .last_error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    Some(match contact.last_answer {
        Some(_) => format!(
            "the apiserver has not answered for {}s{why}",
            silent.as_secs()
        ),
        None => format!("the apiserver has not answered since start-up{why}"),
    })
}

/// Descriptors are a problem from [`DESCRIPTORS_READY_PERCENT`] of the limit on
/// (an unknown limit, 0, is none).
pub fn descriptor_problem(open: u64, limit: u64) -> Option<String> {
    (limit > 0 && open.saturating_mul(100) >= limit.saturating_mul(DESCRIPTORS_READY_PERCENT))
        .then(|| {
            format!(
                "{open} of {limit} open descriptors in use: new connections would fail (spread the TargetApps over more replicas, or raise the limit)"
            )
        })
}

/// This process's open descriptors and its soft limit, from /proc (Linux).
pub fn count_descriptors() -> Option<(u64, u64)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let limit = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some((open, limit))
}

/// The runtime is wedged once the watchdog has not ticked for [`WATCHDOG_STALE`].
pub fn watchdog_problem(last_tick: Duration, now: Duration) -> Option<String> {
    let silent = now.saturating_sub(last_tick);
    (silent >= WATCHDOG_STALE).then(|| {
        format!(
            "the runtime has not run its watchdog for {}s (blocked or starved)",
            silent.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_apiserver_is_a_problem_only_after_it_has_been_silent_long_enough() {
        let answered = Contact {
            last_answer: Some(secs(100)),
            last_error: None,
        };
        assert_eq!(apiserver_problem(&answered, secs(114)), None);
        let failing = Contact {
            last_answer: Some(secs(100)),
            last_error: Some("connection refused".into()),
        };
        // One failed request is not yet a problem: the last answer is recent.
        assert_eq!(apiserver_problem(&failing, secs(105)), None);
        assert_eq!(
            apiserver_problem(&failing, secs(115)).as_deref(),
            Some("the apiserver has not answered for 15s: connection refused")
        );
        assert_eq!(
            apiserver_problem(&answered, secs(160)).as_deref(),
            Some("the apiserver has not answered for 60s")
        );
    }

    #[test]
    fn a_replica_that_never_reached_the_apiserver_says_so_after_the_grace() {
        let never = Contact::default();
        assert_eq!(apiserver_problem(&never, secs(3)), None);
        let problem = apiserver_problem(
            &Contact {
                last_answer: None,
                last_error: Some("dns error".into()),
            },
            secs(20),
        );
        assert_eq!(
            problem.as_deref(),
            Some("the apiserver has not answered since start-up: dns error")
        );
    }

    #[test]
    fn a_watchdog_that_stops_ticking_fails_liveness() {
        assert_eq!(watchdog_problem(secs(10), secs(11)), None);
        assert_eq!(watchdog_problem(secs(10), secs(24)), None);
        assert_eq!(
            watchdog_problem(secs(10), secs(25)).as_deref(),
            Some("the runtime has not run its watchdog for 15s (blocked or starved)")
        );
        // A clock read before the tick was stored is not a negative silence.
        assert_eq!(watchdog_problem(secs(30), secs(29)), None);
    }

    #[test]
    fn a_replica_near_its_descriptor_limit_is_not_ready() {
        assert_eq!(descriptor_problem(18_999, 20_000), None);
        assert_eq!(
            descriptor_problem(19_000, 20_000).as_deref(),
            Some(
                "19000 of 20000 open descriptors in use: new connections would fail (spread the TargetApps over more replicas, or raise the limit)"
            )
        );
        assert_eq!(descriptor_problem(500, 0), None, "an unknown limit");
        let health = Health::new();
        assert_eq!(health.descriptor_problem(), None, "not counted yet");
        health.descriptors_counted(1_020, 1_024);
        assert!(health.descriptor_problem().is_some());
        // This process has a limit and some descriptors open.
        let (open, limit) = count_descriptors().unwrap();
        assert!(open > 0 && limit >= open, "{open} of {limit}");
    }

    #[test]
    fn health_records_what_it_is_told() {
        let health = Health::new();
        assert!(
            !health.apiserver_answered_within(Duration::from_secs(5)),
            "never answered: the apiserver must be asked"
        );
        health.tick();
        assert_eq!(health.liveness_problem(), None);
        health.apiserver_failed("refused");
        health.apiserver_answered();
        assert_eq!(health.apiserver_problem(), None);
        let contact = health
            .apiserver
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        assert_eq!(contact.last_error, None, "an answer clears the last error");
        assert!(contact.last_answer.is_some());
        assert!(health.apiserver_answered_within(Duration::from_secs(5)));
        assert!(
            !health.apiserver_answered_within(Duration::ZERO),
            "an answer is old once its period has passed"
        );
    }
}
