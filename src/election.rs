//! Leader election on the Lease `kco-leader` (client-go's semantics): one replica
//! leads; it renews the Lease every retry period and stops acting as leader once
//! it could not renew within the renew deadline, which ends before the lease
//! duration — so a deposed leader stops before anyone else can take over. Every
//! write to the Lease carries its resourceVersion: of two candidates that see it
//! expired, exactly one acquires it (see ADR 0004 for why this is not the
//! kube-leader-election crate). SIGTERM releases the Lease so a standby leads at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
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

/// What a Lease says, as far as deciding goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration_seconds: Option<i32>,
}

impl Held {
    pub fn of(spec: Option<&LeaseSpec>) -> Self {
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
        }
    }

    /// Whether the Lease is still held at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        match (&self.holder, self.renewed, self.duration_seconds) {
            (Some(_), Some(renewed), Some(seconds)) => renewed
                .checked_add(SignedDuration::from_secs(i64::from(seconds)))
                .is_ok_and(|until| until > now),
            _ => false,
        }
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
pub fn decide(lease: Option<&Held>, me: &str, now: Timestamp) -> Step {
    let Some(held) = lease else {
        return Step::Create;
    };
    match &held.holder {
        Some(holder) if holder == me => Step::Renew,
        Some(holder) if held.live(now) => Step::Follow {
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
            },
            view,
        )
    }

    /// Campaigns and leads until `cancel`; then releases the Lease if held.
    pub async fn run(self, cancel: CancellationToken) {
        self.metrics.leader.set(0);
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_once().await {
                Ok(true) => {
                    last_renewal = Some(Instant::now());
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
    async fn try_once(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(LEADER_LEASE).await?;
        let held = current.as_ref().map(|l| Held::of(l.spec.as_ref()));
        match decide(held.as_ref(), &self.me, now) {
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
                conflict_is_lost(self.api.create(&PostParams::default(), &lease).await)
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
                conflict_is_lost(
                    self.api
                        .replace(LEADER_LEASE, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
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

/// A 409 (someone else wrote first) means we do not hold the Lease.
fn conflict_is_lost(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
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

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn held(holder: Option<&str>, renewed: i64, duration: i32) -> Held {
        Held {
            holder: holder.map(str::to_owned),
            renewed: Some(at(renewed)),
            duration_seconds: Some(duration),
        }
    }

    #[test]
    fn candidates_create_renew_acquire_or_follow() {
        assert_eq!(decide(None, "kco-0", at(0)), Step::Create);
        assert_eq!(
            decide(Some(&held(Some("kco-0"), 0, 15)), "kco-0", at(5)),
            Step::Renew
        );
        // Our own expired Lease is still ours to renew (and to be raced for).
        assert_eq!(
            decide(Some(&held(Some("kco-0"), 0, 15)), "kco-0", at(60)),
            Step::Renew
        );
        assert_eq!(
            decide(Some(&held(Some("kco-1"), 0, 15)), "kco-0", at(14)),
            Step::Follow {
                holder: "kco-1".into()
            }
        );
        assert_eq!(
            decide(Some(&held(Some("kco-1"), 0, 15)), "kco-0", at(16)),
            Step::Acquire,
            "expired"
        );
        assert_eq!(
            decide(Some(&held(None, 0, 1)), "kco-0", at(0)),
            Step::Acquire,
            "released"
        );
        assert_eq!(
            decide(Some(&Held::default()), "kco-0", at(0)),
            Step::Acquire,
            "a Lease without a spec"
        );
    }

    #[test]
    fn a_lease_lives_for_its_duration_after_renewal() {
        let h = held(Some("kco-1"), 0, 10);
        assert!(h.live(at(9)));
        assert!(!h.live(at(10)));
        assert!(!held(None, 0, 10).live(at(1)), "no holder, not held");
        assert_eq!(seconds(Duration::from_millis(300)), 1);
        assert_eq!(seconds(Duration::from_secs(15)), 15);
    }
}
