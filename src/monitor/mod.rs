//! Watching targets: discovering them, polling them, and turning what they
//! answer into state changes, trigger firings, Events, status and metrics.
//!
//! [`run`] follows TargetApps and keeps one task per TargetApp ([`app`]), which
//! keeps one poll loop per target ([`target`]). The decisions are pure
//! ([`discovery`], [`state`], [`status`], [`crate::triggers`]); the tasks do the I/O.

pub mod acting;
pub mod app;
pub mod credentials;
pub mod discovery;
pub mod inflight;
pub mod listen;
pub mod pods;
pub mod poll;
pub mod state;
pub mod status;
pub mod target;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::election::Leadership;
use crate::events::queue::FairQueue;
use crate::events::{Notice, Recorder};
use crate::metrics::Metrics;
use crate::shard::Ownership;
use crate::targetapp::{Phase, TargetApp};

/// How many TargetApp status writes one replica has in flight at most.
pub const STATUS_WRITES: usize = 32;

/// What every monitoring task shares; built once at start-up.
pub struct Context {
    pub client: kube::Client,
    /// Fences firings and runs actions as the tenant's service account.
    pub dispatcher: crate::actions::Dispatcher,
    /// The same checks as admission, for TargetApps stored before (or without) it.
    pub validator: Arc<crate::admission::Validator>,
    /// Schema ConfigMaps and ServiceAccount names, as admission reads them.
    pub caches: crate::admission::cache::Caches,
    /// Outbound clients for user-supplied URLs, under the tenant's endpoint policy.
    pub egress: crate::tenancy::Egress,
    /// Each namespace's quota and budgets.
    pub tenants: Arc<crate::tenancy::Tenants>,
    pub poller: poll::Poller,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Events to publish, queued per tenant and taken in turn; a tenant over its
    /// share drops its own (counted) rather than slows polling or another tenant.
    pub events: Arc<FairQueue<Notice>>,
    pub stats: Arc<RwLock<BTreeMap<String, AppStats>>>,
    /// True once the TargetApp list has been read and the shard membership is known.
    pub ready: Arc<AtomicBool>,
    /// Set once the TargetApps have been listed: until then this replica does not
    /// join the shard (it could not poll what it would own).
    pub listed: Arc<AtomicBool>,
    /// True once the admission webhooks can answer (certificate and caches loaded),
    /// or when they are off.
    pub webhook_ready: Arc<AtomicBool>,
    /// Running actions: a graceful shutdown waits for them.
    pub actions: tokio_util::task::TaskTracker,
    /// Whether the apiserver answers and the runtime runs (`/readyz`, `/healthz`).
    pub health: Arc<crate::health::Health>,
    /// One pod watch per namespace, shared by its TargetApps.
    pub pods: pods::PodWatches,
    /// Bytes the poll bodies being read may hold, per tenant and in all.
    pub inflight: inflight::InFlight,
    /// Permits for status writes in flight ([`STATUS_WRITES`]).
    pub status_writes: tokio::sync::Semaphore,
    /// Whether this replica leads (for `/stats` and leader-only work).
    pub leadership: Leadership,
    /// The shard as this replica sees it (for `/stats`).
    pub shard: Arc<RwLock<ShardView>>,
}

/// The shard as `/stats` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardView {
    pub members: Vec<String>,
    /// Replicas leaving the shard: they own nothing, but finish what they started.
    pub leaving: Vec<String>,
    /// Namespaces with TargetApps that this replica polls.
    pub owned: BTreeSet<String>,
    /// TargetApps this replica runs, those handed over but not let go yet
    /// among them: a replica leaving the shard stops once none is left.
    pub held: usize,
}

/// One TargetApp as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStats {
    pub namespace: String,
    pub name: String,
    pub phase: Option<Phase>,
    pub targets: Vec<TargetStats>,
}

/// One target as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStats {
    pub name: String,
    pub url: String,
    pub up: Option<bool>,
    /// When the target was last polled (RFC 3339), as of the last refresh of
    /// `/stats` (on change, else at most one interval, at least a minute, old).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<String>,
    /// Since when it has been up (or down), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub last_error: Option<String>,
    /// For the built-in Mina health query: the node's sync status and height.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockchain_length: Option<i32>,
}

impl Context {
    /// Builds the context and starts the Event publisher it feeds.
    pub fn new(
        client: kube::Client,
        config: kube::Config,
        settings: Settings,
        metrics: Metrics,
        apiserver: crate::tenancy::Apiserver,
        leadership: Leadership,
        tenants: Arc<crate::tenancy::Tenants>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let poller = poll::Poller::new(
            settings.max_response_bytes,
            settings.graphql_max_retries,
            &settings.instance,
        )?;
        let recorder = Recorder::new(client.clone(), &settings.instance, metrics.clone());
        let watch_clients = crate::cluster::WatchClients::new(config.clone());
        let events = Arc::new(FairQueue::new());
        let queue = Arc::downgrade(&events);
        // Ends with the context (the queue's last owner).
        tokio::spawn(crate::events::publish_queued(
            queue,
            recorder,
            metrics.clone(),
        ));
        let mut overrides: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
            std::collections::HashMap::new();
        for (host, ip) in &settings.dns_overrides {
            overrides.entry(host.clone()).or_default().push(*ip);
        }
        let egress = crate::tenancy::Egress::new(
            tenants.clone(),
            apiserver,
            Arc::new(overrides),
            poll::user_agent(&settings.instance),
            Some(crate::tenancy::services::Services::new(client.clone())),
        );
        let dispatcher = crate::actions::Dispatcher::new(
            client.clone(),
            config,
            settings.action_execution_timeout,
            tenants.clone(),
            egress.clone(),
        )
        .with_ledger(crate::tenancy::ledger::Ledger::new(
            client.clone(),
            &settings.lease_namespace,
        ));
        let shard: Arc<RwLock<ShardView>> = Arc::default();
        let view = shard.clone();
        let alive: crate::actions::Alive = Arc::new(move |replica: &str| {
            view.read()
                .is_ok_and(|v| v.members.iter().chain(&v.leaving).any(|m| m == replica))
        });
        let dispatcher = dispatcher.with_replica(settings.instance.clone(), alive);
        let pods = pods::PodWatches::new(watch_clients, client.clone(), metrics.clone());
        Ok(Arc::new(Self {
            pods,
            status_writes: tokio::sync::Semaphore::new(STATUS_WRITES),
            inflight: inflight::InFlight::new(
                settings.bytes_in_flight.0,
                settings.bytes_in_flight.1,
            ),
            validator: Arc::new(
                crate::admission::Validator::with_tenants(tenants.clone(), egress.clone())
                    .with_action_accounts(settings.action_accounts.clone()),
            ),
            caches: crate::admission::cache::Caches::default(),
            tenants,
            dispatcher,
            egress,
            client,
            poller,
            metrics,
            settings,
            events,
            stats: Arc::default(),
            ready: Arc::default(),
            listed: Arc::default(),
            leadership,
            shard,
            actions: tokio_util::task::TaskTracker::new(),
            webhook_ready: Arc::default(),
            health: Arc::default(),
        }))
    }

    /// The series `app` exports (`spec.metrics`), with kinds from its schema
    /// (the same cache as [`Context::recheck`]).
    pub fn series_of(&self, app: &TargetApp) -> Vec<crate::target_metrics::Series> {
        let custom = self.caches.schema_of(app).ok().flatten();
        self.validator.series(app, custom.as_deref())
    }

    /// What admission would say of `app` now, with the schema of its `configMapRef`
    /// from the same cache (a stored TargetApp may predate the webhooks or have
    /// passed them while they were down): each problem as `path: reason`.
    pub fn recheck(&self, app: &TargetApp) -> Vec<String> {
        let mut problems = Vec::new();
        let custom = self.caches.schema_of(app).unwrap_or_else(|why| {
            problems.push(format!("spec.schema.configMapRef: {why}"));
            None
        });
        let verdict = self.validator.validate(app, custom.as_deref());
        problems.extend(verdict.problems.iter().map(ToString::to_string));
        problems
    }
}

struct Running {
    /// The uid and generation the task was started for, whether it was over quota,
    /// and the tenant's quota then (a changed quota can make a TargetApp valid or
    /// invalid, so it is checked again): a change restarts it.
    fingerprint: (Option<String>, Option<i64>, bool, u64),
    cancel: CancellationToken,
    handle: JoinHandle<()>,
    /// Set while the TargetApp is handed over to another replica (its status is
    /// then the new owner's to write).
    releasing: Arc<AtomicBool>,
    /// Until when it runs on after its namespace moved away.
    release_by: Option<tokio::time::Instant>,
}

/// How long a replica that handed a TargetApp with subscriptions over keeps
/// its connections, at most: the new owner subscribes before the old one lets
/// go, and the fence keeps the firings of the overlap to one.
pub const HANDOVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `app`'s status shows that another replica than `me` holds it, with
/// every target's subscriptions open (or known not to be served): what the
/// replica that handed it over waits for before it lets go.
pub fn handed_over(app: &TargetApp, me: &str) -> bool {
    use crate::targetapp::SubscriptionState::{PollingOnly, Subscribed};
    let Some(status) = &app.status else {
        return false;
    };
    status.shard.as_deref().is_some_and(|owner| owner != me)
        && !status.targets.is_empty()
        && status
            .targets
            .iter()
            .all(|t| matches!(t.subscriptions, Some(Subscribed | PollingOnly)))
}

/// Follows TargetApps (in `namespace`, or everywhere) and keeps one monitoring task
/// per TargetApp in the namespaces this replica owns, until `cancel` fires. When
/// ownership changes, tasks start and stop to match; readiness waits for both the
/// TargetApp list and the first membership.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    mut ownership: watch::Receiver<Ownership>,
    cancel: CancellationToken,
) {
    // The TenantQuotas decide what is valid and where polls may go, and schema
    // ConfigMaps what a query may ask: nothing is checked or polled before both
    // are known.
    while !(ctx.tenants.synced() && ctx.caches.synced()) {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
    let api: Api<TargetApp> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        // Nothing reads who wrote which field: a TargetApp is kept without it.
        .modify(|app| app.metadata.managed_fields = None)
        .boxed();
    let mut shard = Shard {
        apps: HashMap::new(),
        running: HashMap::new(),
        releasing: HashMap::new(),
        owns: ownership.borrow_and_update().clone(),
        listed: false,
    };
    let mut listing: Option<HashSet<String>> = None;
    // The TenantQuota usage this replica last wrote, by quota: written on change.
    let mut usage_written: HashMap<String, crate::tenancy::quota::TenantQuotaStatus> =
        HashMap::new();
    let mut quota_ticks: u64 = 0;
    // Without sharding nobody sends ownership changes: the channel closes at once.
    let mut follow = true;
    // TenantQuotas change without a TargetApp event: re-check now and then; the
    // leader also writes each TenantQuota's usage then.
    let mut quotas = tokio::time::interval(std::time::Duration::from_secs(10));
    quotas.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = quotas.tick() => {
                shard.let_go(&ctx, |r| {
                    r.release_by.is_none_or(|by| tokio::time::Instant::now() >= by)
                })
                .await;
                shard.refresh_all(&ctx).await;
                quota_ticks += 1;
                if quota_ticks.is_multiple_of(60) {
                    // Every ten minutes, all again: a TenantQuota deleted and made
                    // anew under its name starts without usage.
                    usage_written.clear();
                }
                if ctx.leadership.confirm() {
                    write_quota_usage(&ctx, &shard.apps, &mut usage_written).await;
                } else {
                    // Whoever leads next writes every usage once.
                    usage_written.clear();
                }
                continue;
            }
            changed = ownership.changed(), if follow => {
                if changed.is_err() {
                    follow = false;
                    continue;
                }
                let next = ownership.borrow_and_update().clone();
                shard.owns = next;
                shard.rebalance(&ctx).await;
                continue;
            }
            event = events.next() => event,
        };
        match event {
            None => break,
            Some(Err(e)) => {
                ctx.metrics
                    .errors
                    .with_label_values(&["targetapp_watch"])
                    .inc();
                tracing::warn!(error = %e, "TargetApp watch failed; retrying");
            }
            Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(app))) => {
                if let Some(keys) = listing.as_mut() {
                    keys.insert(key(&app));
                }
                // Tasks start once the whole list is in (quotas order TargetApps).
                shard.apps.insert(key(&app), Arc::new(app));
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let keys = listing.take().unwrap_or_default();
                let gone: Vec<String> = shard
                    .apps
                    .keys()
                    .filter(|k| !keys.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    shard.delete(&ctx, &k).await;
                }
                shard.listed = true;
                ctx.listed.store(true, Ordering::Release);
                shard.publish(&ctx);
                shard.refresh_all(&ctx).await;
            }
            Some(Ok(watcher::Event::Apply(app))) => shard.apply(&ctx, app).await,
            Some(Ok(watcher::Event::Delete(app))) => shard.delete(&ctx, &key(&app)).await,
        }
    }
    let keys: Vec<String> = shard.running.keys().cloned().collect();
    stop_all(&ctx, &mut shard.running, keys).await;
    shard.let_go(&ctx, |_| true).await;
}

/// The TargetApps this replica knows, and the tasks it runs for those it owns.
struct Shard {
    /// Shared with the TargetApps' tasks.
    apps: HashMap<String, Arc<TargetApp>>,
    running: HashMap<String, Running>,
    /// Tasks of TargetApps with subscriptions handed over to another replica,
    /// running on until it holds them ([`handed_over`]) or [`HANDOVER_LIMIT`].
    releasing: HashMap<String, Running>,
    owns: Ownership,
    listed: bool,
}

impl Shard {
    fn owned(&self, app: &TargetApp) -> bool {
        self.owns
            .owns(app.metadata.namespace.as_deref().unwrap_or_default())
    }

    async fn apply(&mut self, ctx: &Arc<Context>, app: TargetApp) {
        let k = key(&app);
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        let same_spec = self.apps.get(&k).is_some_and(|known| {
            known.metadata.uid == app.metadata.uid
                && known.metadata.generation == app.metadata.generation
        });
        if self.releasing.contains_key(&k) && handed_over(&app, &ctx.settings.instance) {
            let uid = app.metadata.uid.clone();
            self.let_go(ctx, |task| task.fingerprint.0 == uid).await;
        }
        self.apps.insert(k, Arc::new(app));
        // A status write (this replica's or another's) changes neither the set of
        // TargetApps nor what their tasks run: nothing to count or restart.
        if same_spec {
            return;
        }
        self.publish(ctx);
        self.refresh(ctx, &namespace).await;
    }

    async fn delete(&mut self, ctx: &Arc<Context>, k: &str) {
        self.apps.remove(k);
        stop(ctx, &mut self.running, k).await;
        stop(ctx, &mut self.releasing, k).await;
        self.publish(ctx);
        if let Some((namespace, _)) = k.split_once('/') {
            self.refresh(ctx, namespace).await;
        }
    }

    /// [`Shard::refresh`] for every namespace with TargetApps.
    async fn refresh_all(&mut self, ctx: &Arc<Context>) {
        let namespaces: BTreeSet<String> = self
            .apps
            .values()
            .filter_map(|a| a.metadata.namespace.clone())
            .collect();
        for namespace in namespaces {
            self.refresh(ctx, &namespace).await;
        }
    }

    /// Starts (or restarts) the tasks of `namespace`'s TargetApps if it is ours,
    /// each knowing whether it is beyond the tenant's TargetApp quota: the oldest
    /// ones (by creation, then name) are within it.
    async fn refresh(&mut self, ctx: &Arc<Context>, namespace: &str) {
        if !self.owns.owns(namespace) {
            return;
        }
        let quota = ctx.tenants.effective(namespace);
        let version = quota_version(&quota);
        let in_namespace =
            |app: &&Arc<TargetApp>| app.metadata.namespace.as_deref() == Some(namespace);
        let Some(max) = quota.max_target_apps else {
            // No TargetApp quota (the common case): nothing to order.
            let apps: Vec<Arc<TargetApp>> =
                self.apps.values().filter(in_namespace).cloned().collect();
            for app in apps {
                ensure(ctx, &mut self.running, app, None, version).await;
            }
            return;
        };
        let tenant = quota.tenant(namespace);
        let namespaces: BTreeSet<&str> = self
            .apps
            .values()
            .filter_map(|a| a.metadata.namespace.as_deref())
            .collect();
        let tenant_namespaces: BTreeSet<&str> = namespaces
            .into_iter()
            .filter(|ns| *ns == namespace || ctx.tenants.effective(ns).tenant(ns) == tenant)
            .collect();
        // The tenant's TargetApps in every namespace, oldest first.
        let mut apps: Vec<&Arc<TargetApp>> = self
            .apps
            .values()
            .filter(|a| {
                tenant_namespaces.contains(a.metadata.namespace.as_deref().unwrap_or_default())
            })
            .collect();
        apps.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                a.name_any(),
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    b.name_any(),
                ))
        });
        let total = apps.len();
        let plan: Vec<(Arc<TargetApp>, Option<String>)> = apps
            .into_iter()
            .enumerate()
            .filter(|(_, app)| in_namespace(app))
            .map(|(i, app)| {
                let over = (i >= max as usize).then(|| {
                    format!(
                        "the tenant of namespace {namespace} holds {total} TargetApps and {} allows {max}; this one (created after the first {max}) is not polled until others are deleted or the quota is raised",
                        quota.named()
                    )
                });
                (app.clone(), over)
            })
            .collect();
        for (app, over) in plan {
            ensure(ctx, &mut self.running, app, over, version).await;
        }
    }

    /// Starts and stops tasks after an ownership change. A TargetApp with
    /// subscriptions that moves away runs on until its new owner holds them.
    async fn rebalance(&mut self, ctx: &Arc<Context>) {
        let (mut acquired, mut released) = (0, Vec::new());
        let keys: Vec<String> = self.apps.keys().cloned().collect();
        for k in keys {
            let Some(app) = self.apps.get(&k).cloned() else {
                continue;
            };
            let owned = self.owned(&app);
            // Back before it was let go: it carries on as it was.
            if owned && let Some(mut back) = self.releasing.remove(&k) {
                back.releasing.store(false, Ordering::Release);
                back.release_by = None;
                self.running.insert(k.clone(), back);
            }
            let runs = self.running.contains_key(&k);
            if owned && !runs {
                acquired += 1;
                let namespace = app.metadata.namespace.clone().unwrap_or_default();
                self.refresh(ctx, &namespace).await;
            } else if !owned && runs {
                released.push(k);
            }
        }
        let n = released.len() as u64;
        // With no member left to take them over, nothing is held for a successor.
        let successors = !self.owns.members().is_empty();
        let (overlap, now): (Vec<String>, Vec<String>) = released.into_iter().partition(|k| {
            successors
                && self
                    .apps
                    .get(k)
                    .is_some_and(|app| !app.spec.subscriptions.is_empty() && !app.spec.suspend)
        });
        for k in overlap {
            if let Some(mut task) = self.running.remove(&k) {
                task.releasing.store(true, Ordering::Release);
                task.release_by = Some(tokio::time::Instant::now() + HANDOVER_LIMIT);
                self.releasing.insert(k, task);
            }
        }
        let released = {
            stop_all(ctx, &mut self.running, now).await;
            n
        };
        if acquired + released > 0 {
            tracing::info!(acquired, released, members = ?self.owns.members(), "shard hand-off");
            ctx.metrics
                .shard_handoffs
                .with_label_values(&["acquired"])
                .inc_by(acquired);
            ctx.metrics
                .shard_handoffs
                .with_label_values(&["released"])
                .inc_by(released);
        }
        self.publish(ctx);
    }

    /// Stops the handed-over tasks that `done` picks.
    async fn let_go(&mut self, ctx: &Arc<Context>, done: impl Fn(&Running) -> bool) {
        let keys: Vec<String> = self
            .releasing
            .iter()
            .filter(|(_, task)| done(task))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        tracing::info!(count = keys.len(), "handed-over TargetApps let go");
        stop_all(ctx, &mut self.releasing, keys).await;
        self.publish(ctx);
    }

    /// Readiness, the owned namespaces for `/stats` and their metric, the
    /// TargetApp counts and this replica's share of each tenant's budgets.
    fn publish(&self, ctx: &Context) {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for k in self.apps.keys() {
            if let Some((ns, _)) = k.split_once('/') {
                *counts.entry(ns.to_owned()).or_default() += 1;
            }
        }
        let tenants = ctx.tenants.tenants_of(counts.keys().cloned());
        let mut shares: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (ns, tenant) in &tenants {
            let entry = shares.entry(tenant.clone()).or_default();
            entry.1 += 1;
            if self.owns.owns(ns) {
                entry.0 += 1;
            }
        }
        ctx.tenants.set_shares(
            shares
                .into_iter()
                .map(|(t, (owned, all))| (t, owned as f64 / all.max(1) as f64))
                .collect(),
        );
        ctx.tenants.set_app_counts(counts);
        let owned: BTreeSet<String> = self
            .running
            .keys()
            .filter_map(|k| k.split_once('/').map(|(ns, _)| ns.to_owned()))
            .collect();
        ctx.metrics.shard_namespaces.set(owned.len() as i64);
        if let Ok(mut view) = ctx.shard.write() {
            view.members = self.owns.members().to_vec();
            view.leaving = self.owns.leaving().to_vec();
            view.owned = owned;
            view.held = self.running.len() + self.releasing.len();
        }
        if self.listed && self.owns.known() {
            ctx.ready.store(true, Ordering::Release);
        }
    }
}

/// Leader-only: each TenantQuota's status — its namespaces and TargetApps, whether
/// it applies and overlaps another, the generation it describes — when it says
/// something the stored one (or the last written, until the watch shows it) does
/// not.
async fn write_quota_usage(
    ctx: &Context,
    apps: &HashMap<String, Arc<TargetApp>>,
    written: &mut HashMap<String, crate::tenancy::quota::TenantQuotaStatus>,
) {
    use crate::tenancy::quota_status;
    let api: Api<crate::tenancy::TenantQuota> = Api::all(ctx.client.clone());
    let all = ctx.tenants.quotas();
    written.retain(|name, _| all.iter().any(|(n, _)| n == name));
    let known_actions = crate::actions::Registry::builtin().names();
    let now = k8s_openapi::jiff::Timestamp::now();
    // One list of the ledger's Leases for every quota (none: not counted).
    let actions = match ctx.dispatcher.ledger() {
        Some(ledger) if !all.is_empty() => ledger.counts(now.as_second()).await.ok(),
        _ => None,
    };
    for (name, namespaces) in &all {
        let Some((spec, stored)) = ctx.tenants.quota(name) else {
            continue;
        };
        let previous = stored.status.as_ref();
        let next = quota_status::build(
            &quota_status::Inputs {
                name,
                spec: &spec,
                generation: stored.generation,
                usage: crate::tenancy::quota::Usage {
                    // Counted only where a budget is: the ledger holds no others.
                    actions_last_hour: actions
                        .as_ref()
                        .filter(|_| spec.max_actions_per_hour.is_some())
                        .map(|counts| crate::tenancy::ledger::quota_actions(name, counts)),
                    ..usage_of(namespaces, apps)
                },
                selected: namespaces,
                all: &all,
                known_actions: &known_actions,
                now,
            },
            previous.or(written.get(name)),
        );
        if !quota_status::changed(previous, &next) {
            // The watch shows what was written.
            written.remove(name);
            continue;
        }
        if written
            .get(name)
            .is_some_and(|w| !quota_status::changed(Some(w), &next))
        {
            // Written already; the watch has not shown it yet.
            continue;
        }
        let patch = serde_json::json!({"status": next});
        if !ctx.leadership.confirm() {
            return;
        }
        match api
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                written.insert(name.clone(), next);
            }
            Err(e) => {
                ctx.metrics
                    .errors
                    .with_label_values(&["status_write"])
                    .inc();
                tracing::debug!(quota = %name, error = %e, "cannot write TenantQuota status");
            }
        }
    }
}

/// The namespaces a quota selects and the TargetApps in them.
fn usage_of(
    namespaces: &[String],
    apps: &HashMap<String, Arc<TargetApp>>,
) -> crate::tenancy::quota::Usage {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for app in apps.values() {
        if let Some(ns) = app.metadata.namespace.as_deref()
            && namespaces.iter().any(|n| n == ns)
        {
            *counts.entry(ns).or_default() += 1;
        }
    }
    let fullest = counts.iter().max_by_key(|(_, n)| **n);
    crate::tenancy::quota::Usage {
        namespaces: u32::try_from(namespaces.len()).unwrap_or(u32::MAX),
        target_apps: counts.values().sum(),
        fullest_namespace: fullest.map(|(ns, _)| (*ns).to_owned()),
        fullest_count: fullest.map(|(_, n)| *n).unwrap_or(0),
        actions_last_hour: None,
    }
}

fn key(app: &TargetApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// Starts a task for `app`, or restarts it when its spec changed.
async fn ensure(
    ctx: &Arc<Context>,
    running: &mut HashMap<String, Running>,
    app: Arc<TargetApp>,
    over_quota: Option<String>,
    quota: u64,
) {
    let k = key(&app);
    let fingerprint = (
        app.metadata.uid.clone(),
        app.metadata.generation,
        over_quota.is_some(),
        quota,
    );
    if running
        .get(&k)
        .is_some_and(|r| r.fingerprint == fingerprint)
    {
        return;
    }
    if let Some(old) = running.remove(&k) {
        old.cancel.cancel();
        let _ = old.handle.await;
    }
    tracing::info!(targetapp = %k, generation = ?app.metadata.generation, "monitoring");
    let cancel = CancellationToken::new();
    let releasing = Arc::new(AtomicBool::new(false));
    let control = (cancel.clone(), releasing.clone());
    let handle = tokio::spawn(app::run(ctx.clone(), app, control, over_quota));
    running.insert(
        k,
        Running {
            fingerprint,
            cancel,
            handle,
            releasing,
            release_by: None,
        },
    );
}

/// A digest of a namespace's effective quota: equal while the quota is.
fn quota_version(quota: &crate::tenancy::Effective) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{quota:?}").hash(&mut hasher);
    hasher.finish()
}

async fn stop(ctx: &Arc<Context>, running: &mut HashMap<String, Running>, k: &str) {
    stop_all(ctx, running, [k.to_owned()]).await;
}

/// Stops the tasks of `keys` together: all are told at once, then awaited, so
/// that a hand-off of many TargetApps takes as long as the slowest one, not the
/// sum of them (a replica that keeps polling what it handed off doubles the work
/// of the moment, and the new owners fence against it meanwhile).
async fn stop_all(
    ctx: &Arc<Context>,
    running: &mut HashMap<String, Running>,
    keys: impl IntoIterator<Item = String>,
) {
    let keys: Vec<String> = keys.into_iter().collect();
    let mut stopping = Vec::new();
    for k in &keys {
        if let Some(old) = running.remove(k) {
            old.cancel.cancel();
            stopping.push((k.as_str(), old.handle));
        }
    }
    let stopped = futures::future::join_all(stopping.into_iter().map(|(k, handle)| async move {
        let _ = handle.await;
        k
    }))
    .await;
    for k in stopped {
        tracing::info!(targetapp = %k, "stopped monitoring");
    }
    for k in &keys {
        if let Some((namespace, name)) = k.split_once('/') {
            ctx.metrics.forget_targetapp(namespace, name);
        }
        if let Ok(mut stats) = ctx.stats.write() {
            stats.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targetapp::{SubscriptionState, TargetAppStatus, TargetStatus};

    fn app(shard: Option<&str>, targets: &[Option<SubscriptionState>]) -> TargetApp {
        let mut app: TargetApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "mina", "namespace": "blue"},
            "spec": {"graphqlEndpoint": "http://10.0.0.1:3085/graphql"}
        }))
        .unwrap();
        app.status = Some(TargetAppStatus {
            shard: shard.map(str::to_owned),
            targets: targets
                .iter()
                .map(|state| TargetStatus {
                    pod: None,
                    endpoint: "http://10.0.0.1:3085/graphql".into(),
                    up: true,
                    since: None,
                    last_error: None,
                    subscriptions: *state,
                    subscription_error: None,
                })
                .collect(),
            ..TargetAppStatus::default()
        });
        app
    }

    #[test]
    fn a_handed_over_targetapp_is_let_go_once_another_replica_holds_its_subscriptions() {
        use SubscriptionState::{PollingOnly, Reconnecting, Subscribed};
        let held = app(Some("kco-1"), &[Some(Subscribed), Some(PollingOnly)]);
        assert!(handed_over(&held, "kco-0"));
        // Still this replica's status, or not yet subscribed everywhere.
        assert!(!handed_over(&held, "kco-1"));
        assert!(!handed_over(&app(None, &[Some(Subscribed)]), "kco-0"));
        assert!(!handed_over(
            &app(Some("kco-1"), &[Some(Subscribed), Some(Reconnecting)]),
            "kco-0"
        ));
        assert!(!handed_over(&app(Some("kco-1"), &[None]), "kco-0"));
        assert!(!handed_over(&app(Some("kco-1"), &[]), "kco-0"));
        let mut none = held.clone();
        none.status = None;
        assert!(!handed_over(&none, "kco-0"));
    }
}
