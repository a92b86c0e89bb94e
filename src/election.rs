//! Leader election on the Lease `kco-leader`: one replica leads; it renews the
//! Lease every retry period and stops acting as leader once it could not renew
//! within the renew deadline, which ends before the lease duration — so a
//! deposed leader stops before anyone else can take over. Every write to the
//! Lease carries its resourceVersion: of two candidates that see it expired,
//! exactly one acquires it (see ADR 0004 for why this is not the
//! kube-leader-election crate). SIGTERM releases the Lease so a standby leads at once.
//!
//! Time is judged as client-go's leader election judges it, never by comparing
//! clocks: a Lease has expired when *this* replica has seen its record unchanged
//! for the lease duration, on its own monotonic clock ([`Observations`]); the
//! `renewTime` a holder writes is for people, not for the decision. The leader
//! counts its renew deadline from the moment it *sent* its last successful
//! renewal, so that its own view ends before any other replica's can.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The leader Lease's name.
pub const LEADER_LEASE: &str = "kco-leader";

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease holds without renewal (what other replicas wait for).
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry_period: Duration,
}

/// What a Lease says, as far as deciding goes, and how long this replica has
/// seen it say so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub holder: Option<String>,
    pub duration_seconds: Option<i32>,
    /// How long this replica has read the record unchanged (its observed time).
    pub unchanged_for: Duration,
}

impl Held {
    pub fn of(spec: Option<&LeaseSpec>, unchanged_for: Duration) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            unchanged_for,
        }
    }

    /// Whether the Lease is still held: it has a holder, and has not stayed
    /// unchanged for its whole duration in this replica's eyes.
    pub fn live(&self) -> bool {
        match (&self.holder, self.duration_seconds) {
            (Some(_), Some(seconds)) => {
                self.unchanged_for < Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
            }
            _ => false,
        }
    }
}

/// When this replica first read each Lease's record as it reads now: the
/// observed time of client-go, on the local monotonic clock. A record seen for
/// the first time counts as just renewed, whatever its `renewTime` says, so a
/// holder whose clock runs ahead or behind can neither keep a Lease past its
/// duration nor lose it early.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, (Option<LeaseSpec>, std::time::Instant)>,
}

impl Observations {
    /// `name`'s record, read at `now`, with how long it has read the same.
    pub fn observe(
        &mut self,
        name: &str,
        spec: Option<&LeaseSpec>,
        now: std::time::Instant,
    ) -> Held {
        let unchanged_for = match self.seen.get(name) {
            Some((seen, since)) if seen.as_ref() == spec => now.saturating_duration_since(*since),
            _ => {
                self.seen.insert(name.to_owned(), (spec.cloned(), now));
                Duration::ZERO
            }
        };
        Held::of(spec, unchanged_for)
    }

    /// Forgets every Lease but `names` (the others were deleted).
    pub fn keep_only(&mut self, names: &[&str]) {
        self.seen.retain(|name, _| names.contains(&name.as_str()));
    }
}

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Another replica holds it.
    Follow { holder: String },
}

/// The pure decision: what `me` does with the Lease as read (None: absent).
pub fn decide(lease: Option<&Held>, me: &str) -> Step {
    let Some(held) = lease else {
        return Step::Create;
    };
    match &held.holder {
        Some(holder) if holder == me => Step::Renew,
        Some(holder) if held.live() => Step::Follow {
            holder: holder.clone(),
        },
        _ => Step::Acquire,
    }
}

/// This replica's view of the leadership, shared with leader-only work.
#[derive(Clone)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// When the Lease was last renewed by us (monotonic clock).
    renewed: Arc<Mutex<Option<Instant>>>,
    renew_deadline: Duration,
}

impl Leadership {
    /// A replica that never leads (leader election disabled).
    pub fn never() -> Self {
        let (_, leading) = watch::channel(false);
        Self {
            leading,
            renewed: Arc::default(),
            renew_deadline: Duration::ZERO,
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The check before each leader-only write: we lead and renewed the Lease within
    /// the renew deadline (which ends before any other replica may acquire it).
    pub fn confirm(&self) -> bool {
        self.is_leader()
            && self
                .renewed
                .lock()
                .ok()
                .and_then(|r| *r)
                .is_some_and(|at| at.elapsed() < self.renew_deadline)
    }

    /// Changes of leadership (true: leading).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// A candidate for the leader Lease.
pub struct Election {
    api: Api<Lease>,
    me: String,
    timing: Timing,
    metrics: Metrics,
    leading: watch::Sender<bool>,
    renewed: Arc<Mutex<Option<Instant>>>,
    observations: Observations,
    /// The Lease as this replica last wrote it, while it leads: renewed from it
    /// without reading it first.
    written: Option<Lease>,
    /// Told of every answer from the apiserver (readiness needs no probe of its own).
    health: Option<Arc<crate::health::Health>>,
}

impl Election {
    /// A candidate named `me` for the Lease in `namespace`, and the view of it that
    /// leader-only work uses.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        me: &str,
        timing: Timing,
        metrics: Metrics,
    ) -> (Self, Leadership) {
        let (leading, watch) = watch::channel(false);
        let renewed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let view = Leadership {
            leading: watch,
            renewed: renewed.clone(),
            renew_deadline: timing.renew_deadline,
        };
        (
            Self {
                api: Api::namespaced(client, namespace),
                me: me.to_owned(),
                timing,
                metrics,
                leading,
                renewed,
                observations: Observations::default(),
                written: None,
                health: None,
            },
            view,
        )
    }

    /// The same candidate, telling `health` whenever the apiserver answers it.
    pub fn reporting_to(mut self, health: Arc<crate::health::Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// Campaigns and leads until `cancel`; then releases the Lease if held.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.metrics.leader.set(0);
        let mut last_renewal: Option<Instant> = None;
        loop {
            // Stamped before the request: the others' view of this renewal starts
            // when they read it, after it was sent.
            let attempt = Instant::now();
            let round = self.try_once().await;
            if let (Ok(_), Some(health)) = (&round, &self.health) {
                health.apiserver_answered();
            }
            match round {
                Ok(true) => {
                    last_renewal = Some(attempt);
                    if let Ok(mut renewed) = self.renewed.lock() {
                        *renewed = last_renewal;
                    }
                    self.set_leading(true);
                }
                Ok(false) => {
                    last_renewal = None;
                    self.set_leading(false);
                }
                Err(e) => {
                    self.metrics
                        .errors
                        .with_label_values(&["leader_election"])
                        .inc();
                    tracing::warn!(error = %e, "cannot read or renew the leader Lease");
                    // Keep leading only within the renew deadline.
                    if last_renewal.is_none_or(|at| at.elapsed() >= self.timing.renew_deadline) {
                        self.set_leading(false);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        let was_leading = *self.leading.borrow();
        self.set_leading(false);
        if was_leading {
            match self.release().await {
                Ok(()) => tracing::info!(lease = LEADER_LEASE, "released the leader Lease"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release the leader Lease; it expires on its own")
                }
            }
        }
    }

    fn set_leading(&self, now: bool) {
        let before = self.leading.send_replace(now);
        if before != now {
            self.metrics.leader.set(i64::from(now));
            if now {
                self.metrics.leader_transitions.inc();
                tracing::info!(instance = %self.me, lease = LEADER_LEASE, "leading");
            } else {
                tracing::info!(instance = %self.me, lease = LEADER_LEASE, "no longer leading");
            }
        }
    }

    /// One round: Ok(true) when we hold the Lease afterwards.
    async fn try_once(&mut self) -> Result<bool, kube::Error> {
        // Leading: renew the Lease as last written, with its resourceVersion, so
        // that a write by anyone else since fails it — one request, not a read and
        // a write. Any failure leaves the decision to a fresh read.
        if let Some(mut lease) = self.written.take() {
            let old = lease.spec.take().unwrap_or_default();
            lease.spec = Some(self.spec(
                Timestamp::now(),
                old.acquire_time,
                old.lease_transitions.unwrap_or(0),
            ));
            match self
                .api
                .replace(LEADER_LEASE, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => {
                    self.written = Some(written);
                    return Ok(true);
                }
                // Written by someone else since, or deleted: read and decide.
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let current = self.api.get_opt(LEADER_LEASE).await?;
        let held = current.as_ref().map(|l| {
            self.observations
                .observe(LEADER_LEASE, l.spec.as_ref(), std::time::Instant::now())
        });
        // The time written into the Lease, for people reading it.
        let now = Timestamp::now();
        match decide(held.as_ref(), &self.me) {
            Step::Follow { holder } => {
                tracing::debug!(leader = %holder, "following");
                Ok(false)
            }
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEADER_LEASE.to_owned()),
                        labels: Some(
                            [("app.kubernetes.io/name".to_owned(), "kco".to_owned())].into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                let created = self.api.create(&PostParams::default(), &lease).await;
                Ok(self.hold(conflict_is_lost(created)?))
            }
            Step::Renew | Step::Acquire => {
                let Some(mut lease) = current else {
                    return Ok(false);
                };
                let old = lease.spec.take().unwrap_or_default();
                let renewing = old.holder_identity.as_deref() == Some(self.me.as_str());
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if renewing {
                    self.spec(now, old.acquire_time, transitions)
                } else {
                    self.spec(now, None, transitions.saturating_add(1))
                });
                // replace carries metadata.resourceVersion: a concurrent writer fails it.
                let replaced = self
                    .api
                    .replace(LEADER_LEASE, &PostParams::default(), &lease)
                    .await;
                Ok(self.hold(conflict_is_lost(replaced)?))
            }
        }
    }

    /// Keeps the Lease this replica wrote, if it won it; whether it did.
    fn hold(&mut self, won: Option<Lease>) -> bool {
        self.written = won;
        self.written.is_some()
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(seconds(self.timing.lease_duration)),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up: no holder, expired at once (if we still hold it).
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEADER_LEASE).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(LEADER_LEASE, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// A 409 (someone else wrote first) means we do not hold the Lease; else the
/// Lease as written.
fn conflict_is_lost(result: Result<Lease, kube::Error>) -> Result<Option<Lease>, kube::Error> {
    match result {
        Ok(lease) => Ok(Some(lease)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whole seconds, at least 1, as the Lease wants them.
pub fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(holder: Option<&str>, unchanged_for: u64, duration: i32) -> Held {
        Held {
            holder: holder.map(str::to_owned),
            duration_seconds: Some(duration),
            unchanged_for: Duration::from_secs(unchanged_for),
        }
    }

    fn record(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(1_700_000_000 + renewed).unwrap(),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn candidates_create_renew_acquire_or_follow() {
        assert_eq!(decide(None, "kco-0"), Step::Create);
        assert_eq!(
            decide(Some(&held(Some("kco-0"), 5, 15)), "kco-0"),
            Step::Renew
        );
        // Our own expired Lease is still ours to renew (and to be raced for).
        assert_eq!(
            decide(Some(&held(Some("kco-0"), 60, 15)), "kco-0"),
            Step::Renew
        );
        assert_eq!(
            decide(Some(&held(Some("kco-1"), 14, 15)), "kco-0"),
            Step::Follow {
                holder: "kco-1".into()
            }
        );
        assert_eq!(
            decide(Some(&held(Some("kco-1"), 15, 15)), "kco-0"),
            Step::Acquire,
            "expired"
        );
        assert_eq!(
            decide(Some(&held(None, 0, 1)), "kco-0"),
            Step::Acquire,
            "released"
        );
        assert_eq!(
            decide(Some(&Held::default()), "kco-0"),
            Step::Acquire,
            "a Lease without a spec"
        );
    }

    #[test]
    fn a_lease_lives_for_its_duration_after_it_was_last_seen_to_change() {
        let h = held(Some("kco-1"), 9, 10);
        assert!(h.live());
        assert!(!held(Some("kco-1"), 10, 10).live());
        assert!(!held(None, 0, 10).live(), "no holder, not held");
        assert!(!held(Some("kco-1"), 0, -5).live(), "a negative duration");
        assert_eq!(seconds(Duration::from_millis(300)), 1);
        assert_eq!(seconds(Duration::from_secs(15)), 15);
    }

    #[test]
    fn the_holders_clock_never_counts_only_how_long_the_record_stays_the_same() {
        let t0 = std::time::Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        // A holder whose clock runs an hour behind: its renewTime looks long
        // expired, but a record seen for the first time counts as just renewed.
        let mut seen = Observations::default();
        let behind = record("kco-1", -3600);
        let first = seen.observe(LEADER_LEASE, Some(&behind), t0);
        assert_eq!(
            decide(Some(&first), "kco-0"),
            Step::Follow {
                holder: "kco-1".into()
            }
        );
        // It keeps renewing (every read shows a new record): it keeps the Lease.
        let renewed = record("kco-1", -3598);
        let again = seen.observe(LEADER_LEASE, Some(&renewed), later(14));
        assert!(again.live(), "{again:?}");
        assert!(seen.observe(LEADER_LEASE, Some(&renewed), later(28)).live());
        // It stops: one lease duration after the last change, it has expired.
        assert_eq!(
            decide(
                Some(&seen.observe(LEADER_LEASE, Some(&renewed), later(29))),
                "kco-0"
            ),
            Step::Acquire
        );

        // A holder whose clock runs an hour ahead: its renewTime looks valid
        // for an hour, but a record that stops changing expires on time.
        let mut seen = Observations::default();
        let ahead = record("kco-1", 3600);
        assert!(seen.observe(LEADER_LEASE, Some(&ahead), t0).live());
        assert!(seen.observe(LEADER_LEASE, Some(&ahead), later(14)).live());
        assert_eq!(
            decide(
                Some(&seen.observe(LEADER_LEASE, Some(&ahead), later(15))),
                "kco-0"
            ),
            Step::Acquire
        );
    }

    #[test]
    fn a_deleted_lease_is_forgotten_and_a_recreated_one_starts_afresh() {
        let t0 = std::time::Instant::now();
        let mut seen = Observations::default();
        let spec = record("kco-1", 0);
        seen.observe("kco-member-kco-1", Some(&spec), t0);
        seen.keep_only(&[]);
        let back = seen.observe(
            "kco-member-kco-1",
            Some(&spec),
            t0 + Duration::from_secs(60),
        );
        assert_eq!(back.unchanged_for, Duration::ZERO);
        assert!(back.live());
    }
}
