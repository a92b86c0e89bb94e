//! Kubernetes Events for on-call engineers: fixed reasons, Normal or Warning, and
//! deduplicated — publishing the same event again raises its series count instead
//! of creating another object.
//!
//! kube's own `Recorder` leaves the message out of its deduplication key, so two
//! different `StateChanged` messages would collapse into one series showing only the
//! first; this recorder keys on the message too (see docs/adr/0003-events.md).

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::metrics::Metrics;

pub mod queue;

/// Why an Event was published. The names are a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TargetDiscovered,
    TargetLost,
    StateChanged,
    PollFailed,
    PollRecovered,
    PollThrottled,
    Subscribed,
    SubscriptionLost,
    TriggerFired,
    ActionSucceeded,
    ActionFailed,
    ActionSkipped,
    QuotaExceeded,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TargetDiscovered => "TargetDiscovered",
            Self::TargetLost => "TargetLost",
            Self::StateChanged => "StateChanged",
            Self::PollFailed => "PollFailed",
            Self::PollRecovered => "PollRecovered",
            Self::PollThrottled => "PollThrottled",
            Self::Subscribed => "Subscribed",
            Self::SubscriptionLost => "SubscriptionLost",
            Self::TriggerFired => "TriggerFired",
            Self::ActionSucceeded => "ActionSucceeded",
            Self::ActionFailed => "ActionFailed",
            Self::ActionSkipped => "ActionSkipped",
            Self::QuotaExceeded => "QuotaExceeded",
        }
    }

    /// Warning for what may need a person: failures, firings, quota; Normal otherwise.
    pub fn is_warning(self) -> bool {
        matches!(
            self,
            Self::PollFailed
                | Self::PollThrottled
                | Self::SubscriptionLost
                | Self::TriggerFired
                | Self::ActionFailed
                | Self::QuotaExceeded
        )
    }

    /// Routine: what happens all the time (a state changed, a target came or answered
    /// again). The others tell of firings, actions, failures and quotas: what on-call
    /// reads, kept first when a tenant's Events are too many.
    pub fn is_routine(self) -> bool {
        matches!(
            self,
            Self::TargetDiscovered | Self::StateChanged | Self::PollRecovered | Self::Subscribed
        )
    }

    /// The `action` field of the Event: what KCO was doing.
    fn action(self) -> &'static str {
        match self {
            Self::TargetDiscovered | Self::TargetLost => "Discover",
            Self::StateChanged | Self::PollFailed | Self::PollRecovered | Self::PollThrottled => {
                "Poll"
            }
            Self::Subscribed | Self::SubscriptionLost => "Subscribe",
            Self::TriggerFired => "Evaluate",
            Self::ActionSucceeded | Self::ActionFailed | Self::ActionSkipped => "Act",
            Self::QuotaExceeded => "Admit",
        }
    }
}

/// One Event to publish.
#[derive(Debug, Clone)]
pub struct Notice {
    pub reason: Reason,
    pub note: String,
    /// The object the Event is about (a TargetApp or a pod).
    pub regarding: ObjectReference,
    /// A second object involved (the pod for a TargetApp's Event, and the other way round).
    pub related: Option<ObjectReference>,
}

/// What makes two notices the same Event: what they regard and relate to, their
/// reason and their note.
#[derive(Hash)]
struct Key<'a> {
    regarding: [Option<&'a str>; 4],
    related: Option<[Option<&'a str>; 3]>,
    reason: Reason,
    note: &'a str,
}

/// A [`Key`] as the series cache keeps it: 128 bits of two keyed hashes, not
/// its strings (a tenant cannot choose notes that collide with keys it does not
/// know, and by chance two of the cache's 10,000 entries share a digest with a
/// probability near 10⁻³⁰).
type Digest = (u64, u64);

/// The longest note the Events API accepts is 1 kB.
const MAX_NOTE: usize = 1000;
/// How long a published Event can be repeated into (kube's recorder uses 6 minutes).
const SERIES_TTL: Duration = Duration::from_secs(10 * 60);

/// Events published at once: a slow apiserver answer for one tenant's Event
/// does not hold the others'.
pub const PUBLISHERS: usize = 8;

/// Publishes what `queue` holds until it is gone, [`PUBLISHERS`] at a time and
/// one at a time per tenant: the same Event repeated is one series, and a
/// tenant's Events keep the order the queue gives them.
pub async fn publish_queued(
    queue: std::sync::Weak<queue::FairQueue<Notice>>,
    recorder: Recorder,
    metrics: Metrics,
) {
    use futures::StreamExt;
    let notices = futures::stream::unfold(queue, |queue| async move {
        let next = queue::FairQueue::next(&queue).await?;
        Some((next, queue))
    });
    let busy = Turns::default();
    notices
        .for_each_concurrent(PUBLISHERS, |(tenant, notice)| {
            let turn = tenant_turn(&busy, &tenant);
            let (recorder, metrics) = (&recorder, &metrics);
            async move {
                let _mine = turn.lock().await;
                if let Err(e) = recorder.publish(notice).await {
                    metrics.errors.with_label_values(&["event_publish"]).inc();
                    tracing::warn!(error = %e, "cannot publish an Event");
                }
            }
        })
        .await;
}

/// Each tenant's turn to publish, while one of its Events is in flight.
type Turns =
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>;

/// The lock that orders `tenant`'s publishing; forgotten once nothing holds it.
fn tenant_turn(busy: &Turns, tenant: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    let mut busy = busy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(turn) = busy.get(tenant).and_then(std::sync::Weak::upgrade) {
        return turn;
    }
    busy.retain(|_, turn| turn.strong_count() > 0);
    let turn = std::sync::Arc::new(tokio::sync::Mutex::new(()));
    busy.insert(tenant.to_owned(), std::sync::Arc::downgrade(&turn));
    turn
}

/// Publishes Events as one reporting controller instance.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    instance: String,
    published: moka::future::Cache<Digest, Published>,
    /// The hash keys of [`Digest`]s, chosen at random when the recorder is made.
    digests: [std::hash::RandomState; 2],
    metrics: Metrics,
}

/// What a series needs of an Event published earlier: its name and count (not
/// the whole object the apiserver returned).
#[derive(Debug, Clone)]
struct Published {
    name: String,
    count: i32,
}

impl Recorder {
    pub fn new(client: kube::Client, instance: &str, metrics: Metrics) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
            published: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SERIES_TTL)
                .build(),
            digests: [std::hash::RandomState::new(), std::hash::RandomState::new()],
            metrics,
        }
    }

    fn digest(&self, key: &Key<'_>) -> Digest {
        use std::hash::BuildHasher;
        (self.digests[0].hash_one(key), self.digests[1].hash_one(key))
    }

    /// Publishes `notice`, or raises the count of the same Event published recently.
    pub async fn publish(&self, notice: Notice) -> Result<(), kube::Error> {
        let note = truncate(&notice.note, MAX_NOTE);
        let namespace = notice
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let key = self.digest(&Key {
            regarding: [
                notice.regarding.namespace.as_deref(),
                notice.regarding.kind.as_deref(),
                notice.regarding.name.as_deref(),
                notice.regarding.uid.as_deref(),
            ],
            related: notice
                .related
                .as_ref()
                .map(|r| [r.namespace.as_deref(), r.kind.as_deref(), r.name.as_deref()]),
            reason: notice.reason,
            note: &note,
        });
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = MicroTime(Timestamp::now());
        let kind = if notice.reason.is_warning() {
            "Warning"
        } else {
            "Normal"
        };
        self.metrics
            .events
            .with_label_values(&[namespace.as_str(), notice.reason.as_str(), kind])
            .inc();
        if let Some(previous) = self.published.get(&key).await {
            // The first repeat makes it a series of two.
            let count = previous.count.max(1) + 1;
            let series = EventSeries {
                count,
                last_observed_time: now.clone(),
            };
            let patch = serde_json::json!({ "series": series });
            match events
                .patch(
                    &previous.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    let name = previous.name;
                    self.published.insert(key, Published { name, count }).await;
                    return Ok(());
                }
                // Gone (expired by the apiserver's TTL): start a new one below.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    notice.regarding.name.as_deref().unwrap_or("kco"),
                    now.0.as_nanosecond()
                )),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(now),
            type_: Some(kind.to_owned()),
            reason: Some(notice.reason.as_str().to_owned()),
            action: Some(notice.reason.action().to_owned()),
            note: Some(note),
            regarding: Some(notice.regarding),
            related: notice.related,
            reporting_controller: Some("operator.kco.local/kco".to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let created = events.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.published
            .insert(key, Published { name, count: 1 })
            .await;
        Ok(())
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), with `...`
/// where it was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_what_needs_a_person() {
        assert!(Reason::PollFailed.is_warning());
        assert!(Reason::TriggerFired.is_warning());
        assert!(Reason::ActionFailed.is_warning());
        assert!(!Reason::PollRecovered.is_warning());
        assert!(!Reason::StateChanged.is_warning());
        assert!(!Reason::ActionSkipped.is_warning());
    }

    #[test]
    fn a_tenants_events_take_turns_and_its_turn_is_forgotten_when_done() {
        let busy = Turns::default();
        let blue = tenant_turn(&busy, "blue");
        assert!(std::sync::Arc::ptr_eq(&blue, &tenant_turn(&busy, "blue")));
        let red = tenant_turn(&busy, "red");
        assert!(!std::sync::Arc::ptr_eq(&blue, &red));
        let held = blue.try_lock().ok();
        assert!(held.is_some());
        assert!(
            tenant_turn(&busy, "blue").try_lock().is_err(),
            "one at a time"
        );
        assert!(red.try_lock().is_ok(), "another tenant's turn is its own");
        drop(held);
        drop((blue, red));
        tenant_turn(&busy, "green");
        assert_eq!(busy.lock().unwrap().len(), 1, "only the live turn is kept");
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        let long = "é".repeat(800);
        let cut = truncate(&long, MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short", MAX_NOTE), "short");
    }
}
