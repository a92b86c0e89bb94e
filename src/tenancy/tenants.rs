//! The tenants this replica serves: the TenantQuotas and namespace labels (from
//! watches), the effective quota of each namespace, and the run-time budgets —
//! a token bucket per tenant for polls (a throttled poll waits), split across
//! replicas by the share of its namespaces each one polls so that the sum over the
//! replicas is the quota, and each tenant's hourly action budget, counted
//! cluster-wide in the action ledger (a throttled action is skipped).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota as Rate, RateLimiter};
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::Quota;
use super::quota::{Effective, TenantQuota, TenantQuotaSpec, effective, selects};

type Labels = BTreeMap<String, String>;

/// A tenant's hourly action budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionBudget {
    /// The ledger's key for the tenant.
    pub tenant: String,
    pub per_hour: u32,
    /// The quota, for messages ("TenantQuota a").
    pub named: String,
}

/// A TenantQuota's generation and status, as the watch last saw them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    pub generation: Option<i64>,
    pub status: Option<super::quota::TenantQuotaStatus>,
}

/// Tenants, quotas and budgets; shared by admission, monitoring and actions.
pub struct Tenants {
    default: Quota,
    quotas: RwLock<BTreeMap<String, TenantQuotaSpec>>,
    namespaces: RwLock<BTreeMap<String, Labels>>,
    /// TargetApps per namespace, as the TargetApp watch sees them.
    apps: RwLock<BTreeMap<String, usize>>,
    /// This replica's share of each tenant (1.0 when absent).
    shares: RwLock<BTreeMap<String, f64>>,
    polls: moka::sync::Cache<String, Arc<PollGate>>,
    synced: AtomicBool,
    /// Each TenantQuota's generation and status as stored (for the leader's
    /// status writes).
    stored: RwLock<BTreeMap<String, Stored>>,
    /// Moves whenever a TenantQuota or a namespace's labels change: what was
    /// derived from an effective quota at one generation holds until it moves.
    generation: AtomicU64,
    /// Subscription connections each tenant's targets hold on this replica.
    connections: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

/// One of a tenant's subscription connections, counted until dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    tenant: String,
    held: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

impl Tenants {
    /// Tenants under `default` until TenantQuotas say otherwise.
    pub fn new(default: Quota) -> Arc<Self> {
        fn cache<V: Clone + Send + Sync + 'static>() -> moka::sync::Cache<String, V> {
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_idle(Duration::from_secs(3600))
                .build()
        }
        Arc::new(Self {
            default,
            quotas: RwLock::default(),
            namespaces: RwLock::default(),
            apps: RwLock::default(),
            shares: RwLock::default(),
            polls: cache(),
            synced: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stored: RwLock::default(),
            connections: Arc::default(),
        })
    }

    /// Moves whenever any namespace's effective quota may have changed (a
    /// TenantQuota or a namespace's labels changed): a poll loop keeps what it
    /// derived from the quota (the endpoint check, the client) until it moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The quota of `namespace`.
    pub fn effective(&self, namespace: &str) -> Effective {
        effective(&self.default, &self.selecting(namespace))
    }

    /// The TenantQuotas selecting `namespace`, by name.
    pub fn selecting(&self, namespace: &str) -> Vec<(String, TenantQuotaSpec)> {
        let labels = self
            .namespaces
            .read()
            .ok()
            .and_then(|n| n.get(namespace).cloned())
            .unwrap_or_default();
        self.quotas
            .read()
            .map(|q| {
                q.iter()
                    .filter(|(_, spec)| selects(spec, namespace, &labels))
                    .map(|(name, spec)| (name.clone(), spec.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The spec, generation and stored status of TenantQuota `name`.
    pub fn quota(&self, name: &str) -> Option<(TenantQuotaSpec, Stored)> {
        let spec = self.quotas.read().ok()?.get(name).cloned()?;
        let stored = self
            .stored
            .read()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .unwrap_or_default();
        Some((spec, stored))
    }

    fn store(&self, q: &TenantQuota) {
        if let Ok(mut stored) = self.stored.write() {
            stored.insert(
                q.name_any(),
                Stored {
                    generation: q.metadata.generation,
                    status: q.status.clone(),
                },
            );
        }
    }

    /// Every TenantQuota with the namespaces it selects.
    pub fn quotas(&self) -> Vec<(String, Vec<String>)> {
        let namespaces = self
            .namespaces
            .read()
            .map(|n| n.clone())
            .unwrap_or_default();
        self.quotas
            .read()
            .map(|q| {
                q.iter()
                    .map(|(name, spec)| {
                        let selected = namespaces
                            .iter()
                            .filter(|(ns, labels)| selects(spec, ns, labels))
                            .map(|(ns, _)| ns.clone())
                            .collect();
                        (name.clone(), selected)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every namespace known, with the tenant it belongs to.
    pub fn tenants_of(
        &self,
        namespaces: impl IntoIterator<Item = String>,
    ) -> BTreeMap<String, String> {
        namespaces
            .into_iter()
            .map(|ns| {
                let tenant = self.effective(&ns).tenant(&ns);
                (ns, tenant)
            })
            .collect()
    }

    /// Whether TenantQuotas and namespaces have been read once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn put_quota(&self, name: &str, spec: TenantQuotaSpec) {
        if let Ok(mut quotas) = self.quotas.write() {
            quotas.insert(name.to_owned(), spec);
        }
        self.changed();
    }

    pub fn remove_quota(&self, name: &str) {
        if let Ok(mut quotas) = self.quotas.write() {
            quotas.remove(name);
        }
        self.changed();
    }

    /// Whether the labels of namespace `name` are known.
    pub fn has_namespace(&self, name: &str) -> bool {
        self.namespaces
            .read()
            .is_ok_and(|namespaces| namespaces.contains_key(name))
    }

    pub fn put_namespace(&self, name: &str, labels: Labels) {
        if let Ok(mut namespaces) = self.namespaces.write() {
            namespaces.insert(name.to_owned(), labels);
        }
        self.changed();
    }

    /// Records how many TargetApps each namespace holds.
    pub fn set_app_counts(&self, counts: BTreeMap<String, usize>) {
        if let Ok(mut apps) = self.apps.write() {
            *apps = counts;
        }
    }

    /// TargetApps of `namespace`'s tenant: every namespace its TenantQuotas select
    /// (for the quota check at admission).
    pub fn tenant_app_count(&self, namespace: &str) -> usize {
        let tenant = self.effective(namespace).tenant(namespace);
        let counts = self.apps.read().map(|a| a.clone()).unwrap_or_default();
        counts
            .iter()
            .filter(|(ns, _)| self.effective(ns).tenant(ns) == tenant)
            .map(|(_, n)| n)
            .sum()
    }

    /// Why a new TargetApp in `namespace` is over its tenant's `maxTargetApps`
    /// (as `path: reason`), if it is.
    pub fn refuses_another_app(&self, namespace: &str) -> Option<String> {
        let quota = self.effective(namespace);
        let max = quota.max_target_apps?;
        let count = self.tenant_app_count(namespace);
        (count >= max as usize).then(|| {
            format!(
                "metadata.namespace: the tenant of namespace {namespace} has {count} TargetApps and {} allows at most {max}",
                quota.named()
            )
        })
    }

    /// This replica's share of each tenant's budgets (tenant → 0..=1).
    pub fn set_shares(&self, shares: BTreeMap<String, f64>) {
        if let Ok(mut current) = self.shares.write() {
            *current = shares;
        }
    }

    fn share(&self, tenant: &str) -> f64 {
        self.shares
            .read()
            .ok()
            .and_then(|s| s.get(tenant).copied())
            .unwrap_or(1.0)
            .clamp(0.01, 1.0)
    }

    /// `namespace`'s tenant's series budget on this replica: its quota's
    /// `maxMetricSeries` times this replica's share of the tenant, so that the
    /// replicas together stay within the quota.
    pub fn series_budget(&self, namespace: &str) -> crate::target_metrics::Budget {
        let e = self.effective(namespace);
        let tenant = e.tenant(namespace);
        let share = self.share(&tenant);
        // Rounded down: the replicas' budgets add up to at most the quota.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let max = (f64::from(e.max_metric_series) * share).floor() as usize;
        crate::target_metrics::Budget {
            tenant,
            max,
            named: e.named(),
        }
    }

    /// Takes `count` of `namespace`'s tenant's subscription connections on this
    /// replica (its share of `maxSubscriptionConnections`), all or none.
    pub fn take_connections(
        &self,
        namespace: &str,
        count: usize,
    ) -> Result<Vec<ConnectionPermit>, String> {
        let e = self.effective(namespace);
        let tenant = e.tenant(namespace);
        let share = self.share(&tenant);
        // Rounded down: the replicas' budgets add up to at most the quota.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let max = (f64::from(e.max_subscription_connections) * share).floor() as usize;
        let mut held = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let taken = held.entry(tenant.clone()).or_insert(0);
        if taken.saturating_add(count) > max {
            return Err(format!(
                "{} allows {} subscription connections and they are held ({max} on this replica)",
                e.named(),
                e.max_subscription_connections
            ));
        }
        *taken += count;
        Ok((0..count)
            .map(|_| ConnectionPermit {
                tenant: tenant.clone(),
                held: self.connections.clone(),
            })
            .collect())
    }

    /// Waits for a poll of `namespace` to be within its tenant's budget; how long
    /// it waited (zero when unlimited or within budget).
    pub async fn poll_permit(&self, namespace: &str) -> Duration {
        let e = self.effective(namespace);
        let Some(rate) = e.max_polls_per_second else {
            return Duration::ZERO;
        };
        let tenant = e.tenant(namespace);
        let rate = rate * self.share(&tenant);
        let key = format!("{tenant}@{rate:.4}");
        let gate = self.polls.get_with(key, || {
            Arc::new(PollGate {
                limiter: RateLimiter::direct(per_second(rate, rate)),
                queue: tokio::sync::Mutex::new(()),
            })
        });
        let started = Instant::now();
        // First come, first served: the queue (a fair mutex) keeps a target that
        // waits from being overtaken again and again by busier ones.
        let _turn = gate.queue.lock().await;
        gate.limiter.until_ready().await;
        started.elapsed()
    }

    /// `namespace`'s tenant's hourly action budget, if its quota sets one. It is
    /// counted cluster-wide in the action ledger ([`super::ledger`]), not split
    /// across replicas.
    pub fn action_budget(&self, namespace: &str) -> Option<ActionBudget> {
        let e = self.effective(namespace);
        let per_hour = e.max_actions_per_hour?;
        Some(ActionBudget {
            tenant: e.tenant(namespace),
            per_hour,
            named: e.named(),
        })
    }

    /// Keeps TenantQuotas and namespace labels current until `cancel`.
    pub async fn run(self: Arc<Self>, client: kube::Client, cancel: CancellationToken) {
        let quotas: Api<TenantQuota> = Api::all(client.clone());
        let mut quota_events = watcher(quotas, watcher::Config::default())
            .default_backoff()
            .boxed();
        let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let mut namespace_events = watcher(namespaces, watcher::Config::default())
            .default_backoff()
            .boxed();
        let (mut quotas_done, mut namespaces_done) = (false, false);
        let mut listing_quotas: Option<BTreeMap<String, TenantQuotaSpec>> = None;
        let mut listing_namespaces: Option<BTreeMap<String, Labels>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                event = quota_events.next() => match event {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "TenantQuota watch failed; retrying"),
                    Some(Ok(watcher::Event::Init)) => listing_quotas = Some(BTreeMap::new()),
                    Some(Ok(watcher::Event::InitApply(q))) => {
                        self.store(&q);
                        if let Some(list) = listing_quotas.as_mut() {
                            list.insert(q.name_any(), q.spec);
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let (Some(list), Ok(mut current)) = (listing_quotas.take(), self.quotas.write()) {
                            if let Ok(mut stored) = self.stored.write() {
                                stored.retain(|name, _| list.contains_key(name));
                            }
                            *current = list;
                        }
                        self.changed();
                        quotas_done = true;
                    }
                    Some(Ok(watcher::Event::Apply(q))) => {
                        self.store(&q);
                        self.put_quota(&q.name_any(), q.spec);
                    }
                    Some(Ok(watcher::Event::Delete(q))) => {
                        if let Ok(mut stored) = self.stored.write() {
                            stored.remove(&q.name_any());
                        }
                        self.remove_quota(&q.name_any());
                    }
                },
                event = namespace_events.next() => match event {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "Namespace watch failed; retrying"),
                    Some(Ok(watcher::Event::Init)) => listing_namespaces = Some(BTreeMap::new()),
                    Some(Ok(watcher::Event::InitApply(ns))) => {
                        if let Some(list) = listing_namespaces.as_mut() {
                            list.insert(ns.name_any(), ns.labels().clone());
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let (Some(list), Ok(mut current)) = (listing_namespaces.take(), self.namespaces.write()) {
                            *current = list;
                        }
                        self.changed();
                        namespaces_done = true;
                    }
                    Some(Ok(watcher::Event::Apply(ns))) => self.put_namespace(&ns.name_any(), ns.labels().clone()),
                    Some(Ok(watcher::Event::Delete(ns))) => {
                        if let Ok(mut current) = self.namespaces.write() {
                            current.remove(&ns.name_any());
                        }
                        self.changed();
                    }
                },
            }
            if quotas_done && namespaces_done {
                self.synced.store(true, Ordering::Release);
            }
        }
    }

    /// Marks the tenants read (tests that fill them by hand).
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }
}

/// A tenant's poll bucket and the queue in front of it.
struct PollGate {
    limiter: DefaultDirectRateLimiter,
    queue: tokio::sync::Mutex<()>,
}

/// A bucket refilled at `rate` per second holding at most `burst` (both ≥ 1 token
/// per period; fractional rates become a longer period).
fn per_second(rate: f64, burst: f64) -> Rate {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        0.001
    };
    let period = Duration::from_secs_f64((1.0 / rate).clamp(1e-6, 86_400.0));
    let burst = NonZeroU32::new(burst.clamp(1.0, 1_000_000.0) as u32).unwrap_or(NonZeroU32::MIN);
    Rate::with_period(period)
        .unwrap_or_else(|| Rate::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::quota::TenantQuotaSpec;

    fn tenants() -> Arc<Tenants> {
        let t = Tenants::new(Quota::default());
        t.put_namespace("blue-1", [("tenant".to_owned(), "blue".to_owned())].into());
        t.put_namespace("other", Labels::new());
        t.put_quota(
            "blue",
            TenantQuotaSpec {
                namespace_selector: Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: Some([("tenant".to_owned(), "blue".to_owned())].into()),
                        match_expressions: None,
                    },
                ),
                max_polls_per_second: Some(2.0),
                max_actions_per_hour: Some(3),
                ..TenantQuotaSpec::default()
            },
        );
        t
    }

    #[test]
    fn namespaces_get_their_tenants_quota_or_the_default() {
        let t = tenants();
        assert_eq!(t.effective("blue-1").sources, ["blue"]);
        assert!(t.effective("other").sources.is_empty());
        assert_eq!(t.effective("blue-1").tenant("blue-1"), "quota/blue");
    }

    #[test]
    fn every_change_an_effective_quota_reads_moves_the_generation() {
        let t = tenants();
        let mut seen = t.generation();
        let mut moved = |what: &str, t: &Tenants| {
            let now = t.generation();
            assert_ne!(now, seen, "{what} must move the generation");
            seen = now;
        };
        t.put_quota("red", TenantQuotaSpec::default());
        moved("a new TenantQuota", &t);
        t.put_quota("red", TenantQuotaSpec::default());
        moved("a changed TenantQuota", &t);
        t.remove_quota("red");
        moved("a deleted TenantQuota", &t);
        t.put_namespace("other", [("tenant".to_owned(), "blue".to_owned())].into());
        moved("a namespace's new labels", &t);
        assert_eq!(t.effective("other").sources, ["blue"]);
        // What does not change an effective quota leaves it where it is.
        let before = t.generation();
        t.set_app_counts(BTreeMap::from([("other".to_owned(), 3)]));
        t.set_shares(BTreeMap::from([("quota/blue".to_owned(), 0.5)]));
        assert_eq!(t.generation(), before);
    }

    #[test]
    fn subscription_connections_are_counted_per_tenant_within_this_replicas_share() {
        let t = tenants();
        t.put_namespace("blue-2", [("tenant".to_owned(), "blue".to_owned())].into());
        let mut spec = TenantQuotaSpec {
            namespace_selector: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("tenant".to_owned(), "blue".to_owned())].into()),
                    match_expressions: None,
                },
            ),
            max_subscription_connections: Some(4),
            max_pushes_per_second: Some(5),
            ..TenantQuotaSpec::default()
        };
        t.put_quota("blue", spec.clone());
        assert_eq!(t.effective("blue-1").max_pushes_per_second, 5);
        // Half the tenant's polls are here: two of its four connections.
        t.set_shares(BTreeMap::from([("quota/blue".to_owned(), 0.5)]));
        // All or none: three are more than two.
        assert!(t.take_connections("blue-1", 3).is_err());
        let first = t.take_connections("blue-1", 1).unwrap();
        let _second = t.take_connections("blue-2", 1).unwrap();
        let refused = t.take_connections("blue-1", 1).unwrap_err();
        assert_eq!(
            refused,
            "TenantQuota blue allows 4 subscription connections and they are held (2 on this replica)"
        );
        // Another tenant is not touched, and its default is the default's.
        let others: Vec<_> = (0..10)
            .map(|_| t.take_connections("other", 1).unwrap())
            .collect();
        assert_eq!(others.len(), 10);
        assert_eq!(
            t.effective("other").max_subscription_connections,
            crate::tenancy::quota::DEFAULT_MAX_SUBSCRIPTION_CONNECTIONS
        );
        // A connection closed frees its place.
        drop(first);
        let _third = t.take_connections("blue-1", 1).unwrap();
        // A quota of none refuses every connection.
        spec.max_subscription_connections = Some(0);
        t.put_quota("blue", spec);
        assert!(t.take_connections("blue-2", 1).is_err());
    }

    #[test]
    fn the_action_budget_is_the_tenants_whole_quota_on_every_replica() {
        let t = tenants();
        // Whatever this replica's share of the tenant: the ledger counts for all.
        t.set_shares(BTreeMap::from([("quota/blue".to_owned(), 0.25)]));
        assert_eq!(
            t.action_budget("blue-1"),
            Some(ActionBudget {
                tenant: "quota/blue".to_owned(),
                per_hour: 3,
                named: "TenantQuota blue".to_owned()
            })
        );
        assert_eq!(
            t.action_budget("other"),
            None,
            "the default quota sets none"
        );
    }

    #[tokio::test]
    async fn polls_beyond_the_rate_wait() {
        let t = tenants();
        // A burst of 2 is immediate; the next two wait about half a second each.
        let mut waited = Duration::ZERO;
        for _ in 0..4 {
            waited += t.poll_permit("blue-1").await;
        }
        assert!(waited >= Duration::from_millis(800), "{waited:?}");
        assert_eq!(t.poll_permit("other").await, Duration::ZERO);
    }

    #[test]
    fn fractional_rates_become_long_periods() {
        let rate = per_second(0.5, 1.0);
        assert_eq!(rate.replenish_interval(), Duration::from_secs(2));
        assert_eq!(rate.burst_size().get(), 1);
    }
}
