//! One target's poll loop: on schedule (with jitter), one poll at a time, each
//! result handed to the TargetApp's task.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::credentials::Material;
use super::poll::{PollFailure, PollReport, Poller, QueryBody, parse_url};
use crate::tenancy::egress::Trust;
use crate::tenancy::{Egress, Purpose};

/// One finished poll, for the TargetApp's task.
#[derive(Debug)]
pub struct Report {
    /// The target's name (pod name or URL).
    pub target: String,
    /// The URL polled: a report for a URL the target no longer has is stale.
    pub url: String,
    pub report: PollReport,
    /// How late the poll started against its schedule.
    pub lateness: Duration,
    /// When the poll was sent (wall clock).
    pub sent_at: k8s_openapi::jiff::Timestamp,
    pub correlation_id: String,
}

/// What a poll loop needs.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    /// The state query, as the body every poll sends.
    pub query: QueryBody,
    /// The header every poll carries (`spec.auth`), as last read.
    pub credentials: Option<super::credentials::Credentials>,
}

/// How a target is reached, and what is checked before each poll of it: the
/// endpoint policy of the moment applies, so a tightened TenantQuota stops polls
/// that no longer pass within one interval.
#[derive(Clone)]
pub enum Route {
    /// A selected pod on the pod network: its address came from the apiserver.
    Pod,
    /// A selected pod on its node's network (its address is the node's): polled
    /// only while the tenant's `allowedCIDRs` include the address.
    NodeAddress {
        egress: Egress,
        namespace: String,
        ip: IpAddr,
    },
    /// A user-supplied URL: checked as written (an IP address never meets the
    /// resolver), then polled through the policy-checked client of the moment.
    Url { egress: Egress, namespace: String },
}

impl Route {
    /// Moves whenever what [`Route::poller`] says may have changed.
    fn generation(&self) -> u64 {
        match self {
            Self::Pod => 0,
            Self::NodeAddress { egress, .. } | Self::Url { egress, .. } => egress.generation(),
        }
    }

    /// The poller for the next poll of `url`, or why the policy refuses it,
    /// with what the TargetApp's Secrets make (its own TLS settings; a poll that
    /// carries credentials follows no redirect).
    pub fn poller(
        &self,
        base: &Poller,
        url: &str,
        material: Option<&Material>,
    ) -> Result<Poller, PollFailure> {
        let tls = material.and_then(|m| m.tls.as_ref());
        let pod = || match tls {
            Some((_, client)) => base.clone().with_client(client.clone()),
            None => base.clone(),
        };
        match self {
            Self::Pod => Ok(pod()),
            Self::NodeAddress {
                egress,
                namespace,
                ip,
            } => egress
                .check_node_address(namespace, *ip)
                .map(|()| pod())
                .map_err(PollFailure::NotAllowed),
            Self::Url { egress, namespace } => {
                egress
                    .check_url(namespace, Purpose::Graphql, url)
                    .map_err(PollFailure::NotAllowed)?;
                let trust = tls.map_or(Trust::Platform, |(prepared, _)| Trust::Config(prepared));
                let credentials = material.is_some_and(|m| m.header.is_some());
                let client = egress
                    .client_for(namespace, Purpose::Graphql, trust, credentials)
                    .map_err(PollFailure::NotAllowed)?;
                Ok(base.clone().with_client(client))
            }
        }
    }
}

/// What one poll loop polls: the target's name (pod name or URL), its URL, and
/// how it is reached.
#[derive(Clone)]
pub struct Polled {
    pub target: String,
    pub url: String,
    pub route: Route,
    /// Polls at once when notified (a subscription connection opened again).
    pub poke: Option<Arc<tokio::sync::Notify>>,
}

/// A tenant's poll budget, taken before each poll, and its share of the bytes in
/// flight, which each poll's body takes from.
#[derive(Clone)]
pub struct Gate {
    pub tenants: Arc<crate::tenancy::Tenants>,
    pub namespace: String,
    pub metrics: crate::metrics::Metrics,
    pub inflight: super::inflight::InFlight,
}

impl Gate {
    /// Waits for the budget; a wait is counted (a throttled poll is delayed, never
    /// dropped).
    async fn pass(&self) {
        let waited = self.tenants.poll_permit(&self.namespace).await;
        if waited > Duration::from_millis(1) {
            self.metrics
                .throttled
                .with_label_values(&[self.namespace.as_str(), "poll"])
                .inc();
            self.metrics
                .throttle_wait
                .with_label_values(&[self.namespace.as_str()])
                .inc_by(waited.as_secs_f64());
        }
    }

    /// The poller for the next polls: its body takes from the share of the
    /// namespace's tenant of the moment (a changed TenantQuota moves it to its new
    /// tenant).
    fn shared(&self, poller: Poller) -> Poller {
        let tenant = self
            .tenants
            .effective(&self.namespace)
            .tenant(&self.namespace);
        poller.with_share(self.inflight.share(&tenant))
    }
}

/// Polls `url` every `schedule.interval` until cancelled. The first poll comes after
/// a random part of the interval (at most 2 s), so that many targets started together
/// spread out; later polls keep the rhythm with ±5% jitter and never overlap, each
/// starting on the replica's 100 ms beat. A 429's Retry-After delays the next poll
/// (at most [`super::poll::MAX_RETRY_AFTER`]).
pub fn poll_loop<M: From<Report> + Send + 'static>(
    polled: Polled,
    schedule: Schedule,
    poller: Poller,
    gate: Option<Gate>,
    reports: mpsc::Sender<M>,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send {
    // One allocation holds what the loop keeps: its task (one per target, always
    // alive) then holds a pointer, not the fields and the moved copies of them
    // that an `async fn` keeps side by side.
    run(Box::new(Loop {
        polled,
        schedule,
        poller,
        gate,
        reports,
        cancel,
    }))
}

/// Scheduled polls start on a shared beat: the polls due within one beat start
/// together, so the runtime's threads wake once for all of them rather than once
/// per poll (much of a quiet replica's CPU was threads waking and parking). The
/// beat is 100 ms, or a twentieth of a shorter-than-2-s interval: a poll starts
/// at most that late against its jittered schedule (±5% of the interval).
const BEAT: Duration = Duration::from_millis(100);

/// `at`, moved on to the next beat of the process's schedule for `interval`.
fn on_beat(at: Instant, interval: Duration) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    beat_after(at, *ORIGIN.get_or_init(Instant::now), beat_for(interval))
}

/// The beat of polls every `interval`.
fn beat_for(interval: Duration) -> Duration {
    BEAT.min(interval / 20)
}

/// The first instant at or after `at` a whole number of `beat`s after `origin`
/// (`at` itself before `origin`).
fn beat_after(at: Instant, origin: Instant, beat: Duration) -> Instant {
    let Some(since) = at.checked_duration_since(origin) else {
        return at;
    };
    let beat_ns = beat.as_nanos();
    if beat_ns == 0 {
        return at;
    }
    let beats = since.as_nanos().div_ceil(beat_ns);
    let rounded = u64::try_from(beats.saturating_mul(beat_ns)).unwrap_or(u64::MAX);
    origin
        .checked_add(Duration::from_nanos(rounded))
        .unwrap_or(at)
}

/// What one poll loop keeps.
struct Loop<M> {
    polled: Polled,
    schedule: Schedule,
    poller: Poller,
    gate: Option<Gate>,
    reports: mpsc::Sender<M>,
    cancel: CancellationToken,
}

/// The poller of the last poll and the generation of the quotas, addresses and
/// credentials it was made from: the endpoint check, the policy's client, the
/// tenant's share and the credentials' header are made again only when a
/// TenantQuota, a namespace's labels, the apiserver's addresses or the
/// credentials change, so a tightened policy still stops the next poll.
struct Made {
    generation: u64,
    poller: Result<Poller, PollFailure>,
}

impl<M> Loop<M> {
    fn generation(&self) -> u64 {
        let tenants = self.gate.as_ref().map_or(0, |g| g.tenants.generation());
        let credentials = self
            .schedule
            .credentials
            .as_ref()
            .map_or(0, |c| c.generation());
        self.polled
            .route
            .generation()
            .wrapping_add(tenants)
            .wrapping_add(credentials)
    }

    /// The poller for `url` now: the route's, carrying the credentials, taking
    /// from the tenant's share.
    fn make(&self) -> Result<Poller, PollFailure> {
        let material = match &self.schedule.credentials {
            Some(credentials) => Some(credentials.material().map_err(PollFailure::Credentials)?),
            None => None,
        };
        let mut poller =
            self.polled
                .route
                .poller(&self.poller, &self.polled.url, material.as_ref())?;
        if let Some(header) = material.and_then(|m| m.header) {
            poller = poller.with_header(header);
        }
        Ok(match &self.gate {
            Some(gate) => gate.shared(poller),
            None => poller,
        })
    }

    /// The poller for the next poll: the one made before while nothing it
    /// depends on changed.
    fn poller<'a>(&self, made: &'a mut Option<Made>) -> &'a Result<Poller, PollFailure> {
        let generation = self.generation();
        let current = match made.take() {
            Some(kept) if kept.generation == generation => kept,
            _ => Made {
                generation,
                poller: self.make(),
            },
        };
        &made.insert(current).poller
    }
}

/// When the poll scheduled for `next` is due: the first beat at or after
/// `next`, or when `poke` is notified (a pod's readiness changed). A poll
/// already due (behind schedule: a slow poll, a busy runtime) is due at once,
/// without a timer: the runtime is awake anyway. None once `cancel` is.
async fn due(
    next: Instant,
    interval: Duration,
    poke: Option<&tokio::sync::Notify>,
    cancel: &CancellationToken,
) -> Option<Instant> {
    if next <= Instant::now() {
        return (!cancel.is_cancelled()).then_some(next);
    }
    let wake = on_beat(next, interval);
    tokio::select! {
        _ = cancel.cancelled() => None,
        _ = tokio::time::sleep_until(wake) => Some(wake),
        _ = async {
            match poke {
                Some(poke) => poke.notified().await,
                None => std::future::pending().await,
            }
        } => Some(Instant::now()),
    }
}

async fn run<M: From<Report>>(l: Box<Loop<M>>) {
    let Polled {
        target, url, poke, ..
    } = &l.polled;
    let (schedule, cancel) = (&l.schedule, &l.cancel);
    let parsed = parse_url(url);
    let mut made = None;
    let interval = schedule.interval;
    let first = interval
        .min(Duration::from_secs(2))
        .mul_f64(fastrand::f64());
    // The schedule, jittered; each poll waits for the first beat at or after it,
    // unless it is already late (`due`).
    let mut next = Instant::now() + first;
    loop {
        let Some(due) = due(next, interval, poke.as_deref(), cancel).await else {
            return;
        };
        next = next.min(due);
        if let Some(gate) = &l.gate {
            tokio::select! {
                _ = cancel.cancelled() => return,
                // Boxed, as the poll below: it lives only while it waits.
                _ = Box::pin(gate.pass()) => {}
            }
        }
        let started = Instant::now();
        let sent_at = k8s_openapi::jiff::Timestamp::now();
        let lateness = started.saturating_duration_since(due);
        let correlation_id = format!("{:016x}", fastrand::u64(..));
        let span = tracing::debug_span!("poll", target = %target, correlation_id = %correlation_id);
        let report = match (l.poller(&mut made), &parsed) {
            (Err(refused), _) | (Ok(_), Err(refused)) => PollReport {
                result: Err(refused.clone()),
                attempts: 0,
                duration: Duration::ZERO,
            },
            (Ok(poller), Ok(parsed)) => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    // Boxed: the poll's future is large and lives only while polling, so the
                    // loop's own task stays small.
                    report = Box::pin(poller.poll_url(parsed, &schedule.query, schedule.timeout).instrument(span)) => report,
                }
            }
        };
        // A rate-limited target's Retry-After (capped) pushes the next poll back.
        let asked = report
            .result
            .as_ref()
            .err()
            .and_then(PollFailure::retry_after);
        let sent = l
            .reports
            .send(M::from(Report {
                target: target.clone(),
                url: url.clone(),
                report,
                lateness,
                sent_at,
                correlation_id,
            }))
            .await;
        if sent.is_err() {
            return;
        }
        let jitter = interval.mul_f64(0.05 * fastrand::f64());
        next += interval;
        next = if fastrand::bool() {
            next + jitter
        } else {
            next.checked_sub(jitter).unwrap_or(next)
        };
        // Behind schedule (a slow poll, a busy runtime): poll now rather than in a burst.
        next = next.max(Instant::now());
        if let Some(after) = asked {
            next = next.max(Instant::now() + after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_on_to_the_next_beat() {
        let origin = Instant::now();
        let beat = Duration::from_millis(100);
        let at = |ms| origin + Duration::from_millis(ms);
        assert_eq!(beat_after(at(0), origin, beat), at(0));
        assert_eq!(beat_after(at(1), origin, beat), at(100));
        assert_eq!(beat_after(at(100), origin, beat), at(100));
        assert_eq!(beat_after(at(10_001), origin, beat), at(10_100));
        // Polls due within one beat start together, never before they are due.
        let starts: std::collections::BTreeSet<_> = (201..300)
            .map(|ms| beat_after(at(ms), origin, beat))
            .collect();
        assert_eq!(starts.into_iter().collect::<Vec<_>>(), vec![at(300)]);
    }

    #[test]
    fn a_short_interval_keeps_a_short_beat() {
        let origin = Instant::now();
        let at = origin + Duration::from_micros(1_234);
        // A 1 ms interval: a beat of 50 µs, nothing of 100 ms.
        let beat = beat_for(Duration::from_millis(1));
        assert_eq!(beat, Duration::from_micros(50));
        assert_eq!(beat_after(at, origin, beat), at + Duration::from_micros(16));
        assert_eq!(beat_after(at, origin, Duration::ZERO), at);
        assert_eq!(beat_for(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(beat_for(Duration::from_secs(10)), BEAT);
        assert_eq!(beat_for(Duration::from_secs(3600)), BEAT);
    }

    #[test]
    fn a_deadline_before_the_origin_is_kept() {
        let origin = Instant::now() + Duration::from_secs(5);
        let at = Instant::now() + Duration::from_secs(1);
        assert_eq!(beat_after(at, origin, Duration::from_millis(100)), at);
    }

    #[tokio::test]
    async fn a_poll_behind_schedule_is_due_at_once_and_one_ahead_waits_for_its_beat() {
        use futures::FutureExt;
        let cancel = CancellationToken::new();
        let interval = Duration::from_secs(10);
        // The process's beats start before the instants below.
        on_beat(Instant::now(), interval);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Behind: due as it was scheduled, on the first try, with no timer.
        let behind = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            due(behind, interval, None, &cancel).now_or_never(),
            Some(Some(behind))
        );
        // Ahead: not before the first beat at or after it.
        let ahead = Instant::now() + Duration::from_millis(200);
        assert_eq!(due(ahead, interval, None, &cancel).now_or_never(), None);
        let woke = due(ahead, interval, None, &cancel).await;
        assert_eq!(woke, Some(on_beat(ahead, interval)));
        assert!(Instant::now() >= ahead);
        // A poke makes it due now; a cancelled loop is due never.
        let poke = tokio::sync::Notify::new();
        poke.notify_one();
        let far = Instant::now() + Duration::from_secs(3600);
        let poked = due(far, interval, Some(&poke), &cancel).await;
        assert!(poked.is_some_and(|at| at < far));
        cancel.cancel();
        assert_eq!(
            due(behind, interval, None, &cancel).now_or_never(),
            Some(None)
        );
        assert_eq!(due(far, interval, None, &cancel).now_or_never(), Some(None));
    }
}
