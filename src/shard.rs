//! Sharding: every replica holds a membership Lease of its own, renewed every few
//! seconds; the live members are the Leases whose renew time plus duration lies
//! ahead. A namespace belongs to the member with the highest rendezvous hash of
//! (namespace, member), so when a member joins or leaves only its share moves, and
//! every replica computes the same owner without a coordinator.
//!
//! A replica that cannot renew its own Lease for three lease durations owns
//! nothing (the others have taken its namespaces over by then). For shorter
//! failures, and while the Leases cannot be read, the ownership stays as it was.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::election::{Held, Leadership, Observations, seconds};
use crate::metrics::Metrics;

/// The label every membership Lease carries: `true` while its replica is a
/// member, `leaving` while it hands its namespaces over before it stops. Replicas
/// that know only `true` see a leaving member as gone, as they did when it deleted
/// its Lease at once.
pub const MEMBER_LABEL: &str = "operator.kco.local/shard-member";

/// [`MEMBER_LABEL`]'s value while a replica is a member.
const MEMBER: &str = "true";

/// [`MEMBER_LABEL`]'s value while a replica leaves.
const LEAVING: &str = "leaving";

/// A membership Lease as this replica has read it.
#[derive(Debug, Clone)]
pub struct MemberLease {
    pub name: String,
    pub held: Held,
    /// Its replica is leaving: it owns nothing, but still runs what it started.
    pub leaving: bool,
}

/// The membership Lease of `instance`.
pub fn member_lease(instance: &str) -> String {
    format!("kco-member-{instance}")
}

/// Who owns what, as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    me: String,
    /// Live members, sorted (this replica among them when it is a member).
    members: Vec<String>,
    /// Live replicas leaving the shard, sorted: they own nothing, but firings they
    /// started are still theirs to finish (not to be resumed elsewhere).
    leaving: Vec<String>,
    /// False until membership is first known; a replica that is not a live member
    /// owns nothing.
    known: bool,
    /// Sharding off: this replica owns every namespace.
    everything: bool,
}

impl Ownership {
    /// Sharding off: every namespace is ours.
    pub fn everything(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            members: vec![me.to_owned()],
            leaving: Vec::new(),
            known: true,
            everything: true,
        }
    }

    /// Not known yet: nothing is ours.
    pub fn unknown(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            members: Vec::new(),
            leaving: Vec::new(),
            known: false,
            everything: false,
        }
    }

    /// `members` are live (this replica counts only if listed).
    pub fn of(me: &str, members: impl IntoIterator<Item = String>) -> Self {
        let members: BTreeSet<String> = members.into_iter().collect();
        Self {
            me: me.to_owned(),
            members: members.into_iter().collect(),
            leaving: Vec::new(),
            known: true,
            everything: false,
        }
    }

    /// The same, with `leaving` as the live replicas that are leaving.
    pub fn with_leaving(mut self, leaving: impl IntoIterator<Item = String>) -> Self {
        let leaving: BTreeSet<String> = leaving.into_iter().collect();
        self.leaving = leaving.into_iter().collect();
        self
    }

    /// This ownership once this replica leaves: the other members own everything,
    /// and this replica is among the leaving.
    pub fn left(&self) -> Self {
        let others = self.members.iter().filter(|m| **m != self.me).cloned();
        let leaving = self.leaving.iter().cloned().chain([self.me.clone()]);
        Self::of(&self.me, others).with_leaving(leaving)
    }

    pub fn known(&self) -> bool {
        self.known
    }

    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn leaving(&self) -> &[String] {
        &self.leaving
    }

    /// Whether this replica polls `namespace`.
    pub fn owns(&self, namespace: &str) -> bool {
        self.everything || owner(namespace, &self.members) == Some(self.me.as_str())
    }
}

/// The member owning `namespace`: the highest rendezvous hash (ties by name).
pub fn owner<'a>(namespace: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (score(namespace, m), m.as_str()))
        .map(String::as_str)
}

/// A stable 64-bit hash of (namespace, member): FNV-1a, then a finalizer that
/// spreads its bits (the same in every build and every replica).
fn score(namespace: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace
        .bytes()
        .chain(std::iter::once(0))
        .chain(member.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The live members given the membership `leases` as this replica has seen them. This replica
/// (`me`) counts only while its own renewals succeed (`alive`). During `grace`
/// (just after the Leases could not be read for a while, when nobody could renew)
/// a member in `known` whose Lease still exists counts as live too: it gets one
/// lease duration to renew before its namespaces move. A deleted Lease (a member
/// that left) never counts.
pub fn live_members(
    leases: &[MemberLease],
    me: &str,
    alive: bool,
    known: &[String],
    grace: bool,
) -> Vec<String> {
    leases
        .iter()
        .filter_map(|MemberLease { held, .. }| {
            let member = held.holder.clone()?;
            // This replica knows best whether it renews: a slow apiserver can make
            // its own Lease look stale to itself when the list arrives.
            let counts = if member == me {
                alive
            } else {
                held.live() || (grace && known.contains(&member))
            };
            counts.then_some(member)
        })
        .collect()
}

/// The ownership among the `live` members: those whose Lease says they are
/// leaving (and this replica, when it is `leaving`) own nothing.
pub fn ownership_of(
    me: &str,
    live: Vec<String>,
    leases: &[MemberLease],
    leaving: bool,
) -> Ownership {
    let is_leaving = |member: &String| {
        if member == me {
            leaving
        } else {
            leases
                .iter()
                .any(|l| l.leaving && l.held.holder.as_deref() == Some(member.as_str()))
        }
    };
    let (going, staying): (Vec<String>, Vec<String>) = live.into_iter().partition(is_leaving);
    Ownership::of(me, staying).with_leaving(going)
}

/// Timing of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a membership Lease holds without renewal.
    pub lease_duration: Duration,
    /// How often a member renews its Lease and re-reads the membership.
    pub renew_period: Duration,
}

/// This replica's membership: renews its Lease, follows the others', publishes
/// the ownership. When it leaves, its Lease says so while it hands its namespaces
/// over (they move at once; it is still known to run); it deletes its Lease when it
/// stops.
pub struct Membership {
    api: Api<Lease>,
    me: String,
    timing: Timing,
    metrics: Metrics,
    leadership: Leadership,
    /// How long each membership Lease has read the same (its observed time).
    observations: std::sync::Mutex<Observations>,
    /// Told of every renewal (readiness needs no probe of the apiserver of its own).
    health: Option<std::sync::Arc<crate::health::Health>>,
}

impl Membership {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        me: &str,
        timing: Timing,
        metrics: Metrics,
        leadership: Leadership,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            me: me.to_owned(),
            timing,
            metrics,
            leadership,
            observations: std::sync::Mutex::default(),
            health: None,
        }
    }

    /// The same member, telling `health` whenever the apiserver answers a renewal.
    pub fn reporting_to(mut self, health: std::sync::Arc<crate::health::Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// Joins the shard once `listed` is set (the monitor knows every TargetApp, so
    /// it polls what it owns at once: a replica restarting under the same name
    /// would otherwise renew its Lease and own namespaces it cannot poll yet),
    /// then renews and follows the membership; from `leave` on, owns nothing and
    /// renews its Lease as leaving (the others take its namespaces over, and know
    /// it still finishes the firings it started); deletes its Lease at `stop`.
    pub async fn run(
        self,
        ownership: watch::Sender<Ownership>,
        leave: CancellationToken,
        stop: CancellationToken,
        listed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) {
        while !listed.load(std::sync::atomic::Ordering::Acquire) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let mut renewed: Option<Instant> = None;
        // While the Leases cannot be read (the apiserver is down or restarting), no
        // member can renew: keep the ownership as it was, and for one lease
        // duration after they can be read again, do not judge the members known
        // before by Leases they could not renew (see `live_members`).
        let mut unreadable = false;
        let mut grace_until: Option<Instant> = None;
        let mut waited_for_others = false;
        // At start, the first ownership waits until two reads of the members one
        // renew period apart agree (three reads at most): replicas started together
        // have all registered by then, so none takes every namespace for the
        // moments before the others appear (and hands most of them off again, its
        // monitors starting and stopping while the new owners start theirs).
        let mut settling = Some((0u32, None::<Vec<String>>));
        let mut leaving = false;
        loop {
            let renewed_now = match self.renew(leaving).await {
                Ok(()) => {
                    renewed = Some(Instant::now());
                    if let Some(health) = &self.health {
                        health.apiserver_answered();
                    }
                    true
                }
                Err(e) => {
                    self.metrics
                        .errors
                        .with_label_values(&["shard_membership"])
                        .inc();
                    tracing::warn!(error = %e, "cannot renew the membership Lease");
                    false
                }
            };
            let alive = renewed.is_some_and(|at| at.elapsed() < self.timing.lease_duration);
            // Renewals failing for a short while (an apiserver restarting, shutting
            // down or overloaded): the ownership stays frozen, as it does when the
            // Leases cannot be read. Failing for three lease durations: this replica
            // is cut off, and owns nothing.
            let cut_off = renewed.is_none_or(|at| at.elapsed() >= self.timing.lease_duration * 3);
            let read = match self.members().await {
                Ok(_) if !renewed_now && !cut_off => Err(
                    "the membership Lease could not be renewed; keeping the current ownership"
                        .to_owned(),
                ),
                Ok(leases) => Ok(leases),
                Err(e) => Err(format!(
                    "cannot list the membership Leases; keeping the current ownership: {e}"
                )),
            };
            match read {
                Ok(leases) => {
                    if std::mem::take(&mut unreadable) {
                        grace_until = Some(Instant::now() + self.timing.lease_duration);
                        tracing::info!("membership Leases readable again");
                    }
                    let known = ownership.borrow().members().to_vec();
                    let mut grace = grace_until.is_some_and(|until| Instant::now() < until);
                    let mut live = live_members(&leases, &self.me, alive, &known, grace);
                    // Every other member gone at once is far more often a stalled
                    // apiserver (renewals late) than two crashes: give them one lease
                    // duration to show up before their namespaces move.
                    let others = |members: &[String]| members.iter().any(|m| *m != self.me);
                    if others(&live) {
                        waited_for_others = false;
                    } else if !grace && !waited_for_others && others(&known) {
                        waited_for_others = true;
                        grace_until = Some(Instant::now() + self.timing.lease_duration);
                        grace = true;
                        live = live_members(&leases, &self.me, alive, &known, grace);
                        tracing::warn!(
                            "every other member's Lease looks expired; waiting one lease duration before moving their namespaces"
                        );
                    }
                    if let Some((reads, previous)) = settling.take() {
                        let agreed = previous.as_ref() == Some(&live);
                        if !agreed && reads + 1 < 3 {
                            settling = Some((reads + 1, Some(live.clone())));
                        }
                    }
                    if settling.is_none() {
                        let next = ownership_of(&self.me, live, &leases, leaving);
                        self.metrics.shard_members.set(next.members().len() as i64);
                        ownership.send_if_modified(|current| {
                            if *current == next {
                                false
                            } else {
                                tracing::info!(members = ?next.members(), "shard membership changed");
                                *current = next;
                                true
                            }
                        });
                    }
                    self.collect_expired(&leases).await;
                }
                Err(why) => {
                    self.metrics
                        .errors
                        .with_label_values(&["shard_membership"])
                        .inc();
                    tracing::warn!("{why}");
                    // Every replica is in the same position, so the split stays as it
                    // was: polls go on (they need no apiserver), and actions wait for
                    // their status fence, which decides on fresh status afterwards.
                    unreadable = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = leave.cancelled(), if !leaving => {
                    // The others own everything now, as they compute once they
                    // read this Lease as leaving, renewed at once (TargetApps with
                    // subscriptions run on here until their new owners hold them).
                    tracing::info!("leaving the shard");
                    leaving = true;
                    ownership.send_modify(|current| *current = current.left());
                }
                _ = tokio::time::sleep(self.timing.renew_period) => {}
            }
        }
        // Stopping: this replica owns nothing any more.
        let left = ownership.borrow().left();
        let _ = ownership.send(left);
        match self
            .api
            .delete(&member_lease(&self.me), &DeleteParams::default())
            .await
        {
            Ok(_) => tracing::info!("left the shard: membership Lease deleted"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete the membership Lease; it expires on its own")
            }
        }
    }

    /// Renews this replica's Lease, marked as `leaving` or not.
    async fn renew(&self, leaving: bool) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let mark = if leaving { LEAVING } else { MEMBER };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(member_lease(&self.me)),
                labels: Some(
                    [
                        (MEMBER_LABEL.to_owned(), mark.to_owned()),
                        ("app.kubernetes.io/name".to_owned(), "kco".to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some(seconds(self.timing.lease_duration)),
                renew_time: Some(MicroTime(now)),
                ..LeaseSpec::default()
            }),
        };
        // Only this replica writes its membership Lease: server-side apply, no races.
        self.api
            .patch(
                &member_lease(&self.me),
                &PatchParams::apply("kco-shard").force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
    }

    async fn members(&self) -> Result<Vec<MemberLease>, kube::Error> {
        let selector = format!("{MEMBER_LABEL} in ({MEMBER},{LEAVING})");
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await?;
        let now = std::time::Instant::now();
        let mut seen = self
            .observations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let names: Vec<&str> = list
            .items
            .iter()
            .filter_map(|l| l.metadata.name.as_deref())
            .collect();
        seen.keep_only(&names);
        Ok(list
            .items
            .iter()
            .map(|l| {
                let name = l.metadata.name.clone().unwrap_or_default();
                let held = seen.observe(&name, l.spec.as_ref(), now);
                let leaving = l
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(MEMBER_LABEL))
                    .is_some_and(|mark| mark == LEAVING);
                MemberLease {
                    name,
                    held,
                    leaving,
                }
            })
            .collect())
    }

    /// Leader-only cleanup: membership Leases of replicas gone for ten durations
    /// (pods replaced by a rollout) are deleted.
    async fn collect_expired(&self, leases: &[MemberLease]) {
        for MemberLease { name, held, .. } in leases {
            let stale = held.unchanged_for > self.timing.lease_duration * 10;
            if !stale || held.holder.as_deref() == Some(self.me.as_str()) {
                continue;
            }
            // The claim is checked before each leader-only write.
            if !self.leadership.confirm() {
                return;
            }
            match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(lease = %name, "deleted a long-expired membership Lease"),
                Err(e) => {
                    tracing::debug!(lease = %name, error = %e, "cannot delete a stale membership Lease")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("kco-{i}")).collect()
    }

    #[test]
    fn every_namespace_has_one_owner_and_shares_are_even() {
        let members = names(3);
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..3000 {
            let ns = format!("tenant-{i}");
            let owner = owner(&ns, &members).unwrap();
            *count.entry(owner).or_default() += 1;
            let owning: Vec<bool> = members
                .iter()
                .map(|m| Ownership::of(m, members.clone()).owns(&ns))
                .collect();
            assert_eq!(owning.iter().filter(|o| **o).count(), 1, "{ns}");
        }
        assert_eq!(count.len(), 3);
        for (member, n) in count {
            assert!((800..=1200).contains(&n), "{member} owns {n} of 3000");
        }
    }

    #[test]
    fn a_member_leaving_moves_only_its_namespaces() {
        let three = names(3);
        let two: Vec<String> = three[..2].to_vec();
        for i in 0..1000 {
            let ns = format!("tenant-{i}");
            let before = owner(&ns, &three).unwrap();
            let after = owner(&ns, &two).unwrap();
            if before != "kco-2" {
                assert_eq!(before, after, "{ns} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn the_hash_is_stable() {
        // Replicas of different builds must agree during a rolling upgrade: the value
        // is fixed (a seeded or std hasher would fail this).
        assert_eq!(score("mina", "kco-0"), 0x0973_0425_9e18_a9d8);
        assert_eq!(owner("mina", &names(3)), owner("mina", &names(3)));
        assert_ne!(score("mina", "kco-0"), score("mina", "kco-1"));
        assert_ne!(score("ab", "c"), score("a", "bc"), "the separator counts");
    }

    fn lease(holder: &str, unchanged_for: Duration) -> MemberLease {
        MemberLease {
            name: member_lease(holder),
            held: Held {
                holder: Some(holder.to_owned()),
                duration_seconds: Some(3),
                unchanged_for,
            },
            leaving: false,
        }
    }

    #[test]
    fn after_an_outage_known_members_get_a_lease_duration_to_renew() {
        let now = Duration::ZERO;
        let stale = Duration::from_secs(30);
        // Only kco-0 has renewed since the apiserver came back.
        let leases = vec![
            lease("kco-0", now),
            lease("kco-1", stale),
            lease("kco-2", stale),
            lease("kco-9", stale),
        ];
        let known = names(3);
        // Without the grace, kco-0 would own every namespace for a moment.
        assert_eq!(
            live_members(&leases, "kco-0", true, &known, false),
            vec!["kco-0".to_owned()]
        );
        // With it, the split stays as it was; a stale member not known before
        // (kco-9) does not come back, and a deleted Lease counts for nothing.
        assert_eq!(live_members(&leases, "kco-0", true, &known, true), names(3));
        assert_eq!(
            live_members(&leases[..2], "kco-0", true, &known, true),
            names(2)
        );
        // A replica that renews counts itself even when the list shows its Lease
        // stale (a slow apiserver); one whose own renewals fail never does.
        assert_eq!(
            live_members(
                &[lease("kco-0", stale), lease("kco-1", now)],
                "kco-0",
                true,
                &known,
                false
            ),
            names(2)
        );
        assert_eq!(
            live_members(&leases, "kco-0", false, &known, true),
            vec!["kco-1".to_owned(), "kco-2".to_owned()]
        );
    }

    #[test]
    fn a_leaving_member_owns_nothing_and_is_known_to_run() {
        let now = Duration::ZERO;
        let mut leases = vec![
            lease("kco-0", now),
            lease("kco-1", now),
            lease("kco-2", now),
        ];
        leases[1].leaving = true;
        let live = live_members(&leases, "kco-0", true, &[], false);
        assert_eq!(live, names(3), "a leaving member's Lease is live");
        let seen = ownership_of("kco-0", live.clone(), &leases, false);
        assert_eq!(seen.members(), ["kco-0", "kco-2"]);
        assert_eq!(seen.leaving(), ["kco-1"]);
        // Its namespaces move as if it were gone; the others' stay.
        for i in 0..300 {
            let ns = format!("tenant-{i}");
            let owners = [&names(3)[..1], &names(3)[2..]].concat();
            assert_eq!(owner(&ns, seen.members()), owner(&ns, &owners), "{ns}");
            assert_ne!(owner(&ns, seen.members()), Some("kco-1"));
        }
        // The leaving replica itself owns nothing, whatever its Lease read.
        leases[1].leaving = false;
        let mine = ownership_of("kco-1", live, &leases, true);
        assert_eq!(mine.members(), ["kco-0", "kco-2"]);
        assert_eq!(mine.leaving(), ["kco-1"]);
        assert!((0..300).all(|i| !mine.owns(&format!("tenant-{i}"))));
        // Leaving at once, before its Lease is read again.
        let left = Ownership::of("kco-2", names(3)).left();
        assert_eq!(left.members(), ["kco-0", "kco-1"]);
        assert_eq!(left.leaving(), ["kco-2"]);
    }

    #[test]
    fn unknown_or_absent_members_own_nothing() {
        assert!(!Ownership::unknown("kco-0").owns("mina"));
        assert!(!Ownership::of("kco-0", names(3)[1..].to_vec()).owns("mina"));
        assert!(Ownership::everything("kco-0").owns("anything"));
        assert!(Ownership::of("kco-0", vec!["kco-0".into()]).owns("mina"));
    }
}
