//! The task that monitors one TargetApp: it follows the selected pods, runs one
//! poll loop per target, turns poll results into Events and firings, and writes
//! status when it changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::Retryable;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::discovery::{self, NotTarget, PodSummary, Target};
use super::poll::QueryBody;
use super::state::{Observed, TargetState};
use super::status;
use super::target::{Gate, Polled, Report, Route, Schedule, poll_loop};
use super::{AppStats, Context, TargetStats};
use crate::actions::{ActionError, Firing};
use crate::events::queue::Pushed;
use crate::events::{Notice, Reason};
use crate::target_metrics::Answer;
use crate::targetapp::{RuleFiring, SubscriptionState, TargetApp, TargetAppStatus};
use crate::triggers::{self, FieldPath, Rule};
use crate::triggers::{Adoption, Recorded};

/// What `/stats` shows of a target answering the Mina health query.
const HEALTH_SYNC: &str = "daemonStatus.syncStatus";
const HEALTH_LENGTH: &str = "daemonStatus.blockchainLength";

struct Monitor {
    ctx: Arc<Context>,
    app: Arc<TargetApp>,
    namespace: String,
    name: String,
    reference: ObjectReference,
    rules: Vec<Rule>,
    /// The fields whose changes are StateChanged Events: those the rules read
    /// and those `spec.reportChanges` names.
    fields: BTreeSet<FieldPath>,
    /// What is kept of each target's last good result between polls: the fields
    /// the rules read, and for the Mina health query what `/stats` shows.
    kept: Arc<BTreeSet<FieldPath>>,
    schedule: Schedule,
    /// The pods the selector selects, from the namespace's shared pod watch.
    /// Shared with the watch's snapshot: a TargetApp keeps pointers, not copies.
    pods: BTreeMap<String, Arc<PodSummary>>,
    discovered: bool,
    /// Boxed: a map's node holds room for eleven entries, and most TargetApps
    /// have one target.
    targets: BTreeMap<String, Box<TargetState>>,
    /// Each target's running poll loop (the same keys as `targets`).
    loops: BTreeMap<String, CancellationToken>,
    firings: Vec<RuleFiring>,
    /// Targets the status listed when this task started, with whether they were
    /// up and since when: a replica that takes a TargetApp over (or restarts)
    /// does not announce them again, nor move their `since`.
    announced: BTreeMap<String, Option<(bool, Timestamp)>>,
    written: Option<TargetAppStatus>,
    /// Something the status is built from changed since it was last compared
    /// (a poll, the pods, an adopted firing): the next tick builds it again.
    dirty: bool,
    /// When `/stats` last got this TargetApp's targets.
    stats_at: Option<tokio::time::Instant>,
    /// Until when the status found at start (another task's, or another
    /// replica's) is not overwritten with "Initializing": a replica that restarts
    /// or takes over finds it current once its first polls are in.
    inherited_until: Option<tokio::time::Instant>,
    /// Poll reports, and firings the fence found recorded by another replica,
    /// back to this loop.
    inbox: mpsc::Sender<Box<Message>>,
    /// Cancelled when this monitor stops (its actions' waits end with it).
    cancel: CancellationToken,
    /// Set while another replica takes this TargetApp over (see
    /// `monitor::Releasing`): it runs on, fenced, but its status is the new
    /// owner's to write.
    releasing: Arc<AtomicBool>,
    /// Whether `spec.metrics` asks for series, and the targets whose series the
    /// tenant's budget refused at their last poll, with why (for the status).
    exports: bool,
    over_series: BTreeMap<String, String>,
    /// `spec.subscriptions`, named; `None` when there are none.
    wanted: Option<Arc<[crate::subscriptions::connection::Wanted]>>,
    /// Where each target's subscriptions stand (in status), and why not open.
    subscriptions: BTreeMap<String, (SubscriptionState, Option<String>)>,
}

/// What reaches a TargetApp's task from its poll loops and its actions (one
/// channel: each channel is most of a KiB, however little it carries).
pub(super) enum Message {
    Polled(Report),
    Adopt(Adopt),
    Heard(super::listen::Heard),
}

impl From<super::listen::Heard> for Box<Message> {
    fn from(heard: super::listen::Heard) -> Self {
        Box::new(Message::Heard(heard))
    }
}

impl From<Report> for Box<Message> {
    fn from(report: Report) -> Self {
        Box::new(Message::Polled(report))
    }
}

/// Monitors `app` until `cancel` fires; then stops every poll loop it started.
/// `over_quota` says why the app is beyond its tenant's TargetApp quota: then it
/// is reported, not polled.
pub async fn run(
    ctx: Arc<Context>,
    app: Arc<TargetApp>,
    (cancel, releasing): (CancellationToken, Arc<AtomicBool>),
    over_quota: Option<String>,
) {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    // Boxed messages: a channel allocates its slots in blocks of 32 up front.
    let (tx, mut rx) = mpsc::channel::<Box<Message>>(256);
    let spec = &app.spec;
    let interval = spec
        .polling_interval
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(ctx.settings.default_polling_interval);
    // Never longer than the tenant's ceiling: a slow answer holds a connection and
    // its bytes for the whole timeout.
    let ceiling = ctx
        .tenants
        .effective(&app.namespace().unwrap_or_default())
        .max_poll_timeout_seconds;
    let timeout = spec
        .timeout_seconds
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(ctx.settings.graphql_timeout)
        .min(Duration::from_secs(u64::from(ceiling)));
    let rules = triggers::compile(&spec.actions).unwrap_or_default();
    let mut monitor = Monitor {
        reference: app.object_ref(&()),
        firings: app
            .status
            .as_ref()
            .map(|s| s.firings.clone())
            .unwrap_or_default(),
        rules,
        fields: BTreeSet::new(),
        kept: Arc::default(),
        schedule: Schedule {
            interval,
            timeout,
            query: QueryBody::new(&spec.state_query),
            credentials: None,
        },
        pods: BTreeMap::new(),
        discovered: false,
        targets: BTreeMap::new(),
        loops: BTreeMap::new(),
        announced: app
            .status
            .iter()
            .flat_map(|s| &s.targets)
            .map(|t| {
                let name = t.pod.clone().unwrap_or_else(|| t.endpoint.clone());
                (name, t.since.as_ref().map(|at| (t.up, at.0)))
            })
            .collect(),
        written: app.status.clone(),
        dirty: true,
        stats_at: None,
        inherited_until: app
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|_| tokio::time::Instant::now() + interval + timeout + Duration::from_secs(2)),
        inbox: tx,
        cancel: cancel.clone(),
        releasing,
        exports: false,
        over_series: BTreeMap::new(),
        wanted: Some(crate::subscriptions::wanted(&spec.subscriptions))
            .filter(|w| !w.is_empty())
            .map(Arc::from),
        subscriptions: BTreeMap::new(),
        ctx,
        namespace,
        name,
        app: app.clone(),
    };
    monitor.fields = triggers::referenced_fields(&monitor.rules);
    // Fields the TargetApp asks to hear of (validated: an invalid TargetApp is
    // not polled).
    monitor.fields.extend(
        app.spec
            .report_changes
            .iter()
            .filter_map(|field| field.parse::<triggers::FieldPath>().ok())
            .filter(|field| !field.is_up()),
    );
    let mut kept = monitor.fields.clone();
    if app.spec.state_query == crate::targetapp::DEFAULT_STATE_QUERY {
        kept.extend(
            [HEALTH_SYNC, HEALTH_LENGTH]
                .iter()
                .filter_map(|p| p.parse().ok()),
        );
    }
    monitor.kept = Arc::new(kept);

    // The admission checks again: objects stored before the webhook, or past it.
    let problems = monitor.ctx.recheck(&app);
    let invalid = (!problems.is_empty()).then(|| problems.join("; "));
    // A schema ConfigMap can change without the TargetApp changing: while only
    // the schema makes it invalid, it is checked again every tick.
    let schema_may_heal = over_quota.is_none() && app.spec.schema.config_map_ref.is_some();
    // What this task exports replaces what an earlier one of the same TargetApp
    // did; an invalid or suspended one exports nothing.
    let series = if invalid.is_none() && over_quota.is_none() && !app.spec.suspend {
        monitor.ctx.series_of(&app)
    } else {
        Vec::new()
    };
    monitor.exports = !series.is_empty();
    monitor
        .ctx
        .metrics
        .target_series
        .define(&monitor.namespace, &monitor.name, series.into());
    let invalid = match over_quota {
        Some(why) => {
            monitor
                .notify(Reason::QuotaExceeded, why.clone(), None)
                .await;
            Some(format!("QuotaExceeded: {why}"))
        }
        None => invalid,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if invalid.is_some() || app.spec.suspend {
        // Nothing to poll: report why, retrying the write until it lands.
        monitor.discovered = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    if schema_may_heal && !app.spec.suspend && monitor.ctx.recheck(&app).is_empty() {
                        tracing::info!(namespace = %monitor.namespace, tapp = %monitor.name,
                            "the schema ConfigMap now accepts the spec; polling");
                        monitor.discovered = false;
                        monitor.dirty = true;
                        // Its series too: they wait for the same schema.
                        let series = monitor.ctx.series_of(&app);
                        monitor.exports = !series.is_empty();
                        monitor.ctx.metrics.target_series.define(
                            &monitor.namespace,
                            &monitor.name,
                            series.into(),
                        );
                        break;
                    }
                    if Box::pin(monitor.write_status(invalid.as_deref())).await {
                        tick.reset_after(retry_after());
                    }
                }
            }
        }
    }

    if app.spec.auth.is_some() || app.spec.tls.is_some() {
        let credentials = Box::pin(monitor.credentials()).await;
        monitor.schedule.credentials = Some(credentials);
    }

    // One fixed URL, or the pods of the namespace's shared watch.
    let subscription = if discovery::is_absolute(&app.spec.graphql_endpoint) {
        monitor.discovered = true;
        Box::pin(monitor.reconcile_targets()).await;
        None
    } else {
        Some(monitor.ctx.pods.subscribe(&monitor.namespace))
    };
    let mut snapshots = subscription.as_ref().map(|s| s.receiver());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = async {
                match snapshots.as_mut() {
                    Some(rx) => rx.changed().await.map(|()| rx.borrow_and_update().clone()),
                    None => std::future::pending().await,
                }
            } => match changed {
                // Boxed, here and below: these futures live only while they run,
                // and the task (one per TargetApp, always alive) stays small.
                Ok(snapshot) => Box::pin(monitor.on_pods(&snapshot)).await,
                // The watch stopped (it does not while subscribed): keep the targets.
                Err(_) => snapshots = None,
            },
            Some(message) = rx.recv() => match *message {
                Message::Polled(report) => Box::pin(monitor.on_report(report)).await,
                Message::Adopt(adopted) => Box::pin(monitor.adopt(adopted)).await,
                Message::Heard(heard) => Box::pin(monitor.on_heard(heard)).await,
            },
            // A quiet TargetApp's task sleeps between polls: no tick while nothing changed.
            _ = tick.tick(), if monitor.dirty => {
                if Box::pin(monitor.write_status(None)).await {
                    tick.reset_after(retry_after());
                }
            }
        }
    }
    for running in monitor.loops.values() {
        running.cancel();
    }
}

impl Monitor {
    /// What `spec.auth` and `spec.tls` ask for, read as the TargetApp's
    /// ServiceAccount now and every refresh period while this task runs.
    async fn credentials(&self) -> super::credentials::Credentials {
        use super::credentials::{self, Credentials, Wanted};
        let wanted = Wanted {
            auth: self.app.spec.auth.clone(),
            tls: self.app.spec.tls.clone(),
            instance: self.ctx.settings.instance.clone(),
        };
        let reads_secrets = wanted.auth.is_some()
            || wanted
                .tls
                .as_ref()
                .is_some_and(|t| t.ca_secret_ref.is_some() || t.client_cert_secret_ref.is_some());
        if !reads_secrets {
            return Credentials::without_secrets(&wanted);
        }
        // Validated: a TargetApp that reads Secrets names its ServiceAccount.
        let Some(account) = self.app.spec.service_account_name.as_deref() else {
            return Credentials::failed("spec.serviceAccountName is not set".to_owned());
        };
        let (dispatcher, namespace, as_account) = (
            self.ctx.dispatcher.clone(),
            self.namespace.clone(),
            account.to_owned(),
        );
        let client: credentials::ClientFor = Arc::new(move || {
            dispatcher
                .impersonating(&namespace, &as_account)
                .map_err(|e| e.to_string())
        });
        credentials::start(
            client,
            &self.namespace,
            account,
            wanted,
            self.ctx.settings.credentials_refresh,
            self.cancel.clone(),
        )
        .await
    }

    /// The namespace's pods changed: this TargetApp's targets follow its selector.
    async fn on_pods(&mut self, snapshot: &super::pods::Snapshot) {
        if !snapshot.listed {
            return;
        }
        self.dirty = true;
        self.pods = discovery::selected(&snapshot.pods, self.app.spec.selector.as_ref());
        self.discovered = true;
        self.reconcile_targets().await;
    }

    /// Starts loops for new targets, stops them for lost ones, restarts moved ones.
    async fn reconcile_targets(&mut self) {
        self.dirty = true;
        let wanted = discovery::targets(&self.app.spec, &self.pods);
        let lost: Vec<String> = self
            .loops
            .iter()
            .filter(|(name, _)| {
                let polled = self.targets.get(*name).map(|t| t.target.url.as_str());
                wanted
                    .get(*name)
                    .is_none_or(|t| Some(t.url.as_str()) != polled)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in lost {
            if let Some(running) = self.loops.remove(&name) {
                running.cancel();
            }
            self.ctx
                .metrics
                .target_series
                .forget_target(&self.namespace, &self.name, &name);
            if self.over_series.remove(&name).is_some() {
                self.dirty = true;
            }
            self.subscriptions.remove(&name);
            if let Some(state) = self.targets.remove(&name)
                && !wanted.contains_key(&name)
            {
                let why = match self
                    .pods
                    .get(&name)
                    .map(|pod| discovery::target_of(pod, &self.app.spec))
                {
                    None => "is gone".to_owned(),
                    Some(Err(NotTarget::Terminating)) => "is terminating".to_owned(),
                    Some(Err(NotTarget::NotReady)) => "is no longer Ready".to_owned(),
                    Some(Err(NotTarget::NoIp)) => "has no IP".to_owned(),
                    Some(Err(NotTarget::NoSuchPort(port))) => {
                        format!("has no container port named {port:?}")
                    }
                    Some(Ok(_)) => "moved".to_owned(),
                };
                let note = format!("target {name} {why}; stopped polling it");
                self.notify(Reason::TargetLost, note, Some(&state.target))
                    .await;
            }
        }
        for (name, target) in wanted {
            if self.loops.contains_key(&name) {
                continue;
            }
            let rules = &self.rules;
            let firings = &self.firings;
            let state = TargetState::new(target.clone(), rules, |rule| {
                firings
                    .iter()
                    .find(|f| f.rule == rule && f.target == name)
                    .map(|f| Recorded {
                        time: f.time.0,
                        cleared: f.cleared.is_some(),
                    })
            });
            let known = self.announced.remove(&name);
            let state = state.keeping(self.kept.clone());
            let state = match known.flatten() {
                Some((up, at)) => state.with_recorded_since(up, at),
                None => state,
            };
            self.targets.insert(name.clone(), Box::new(state));
            let cancel = CancellationToken::new();
            let route = self.route_to(&target);
            let gate = Gate {
                tenants: self.ctx.tenants.clone(),
                namespace: self.namespace.clone(),
                metrics: self.ctx.metrics.clone(),
                inflight: self.ctx.inflight.clone(),
            };
            let poke = self
                .wanted
                .as_ref()
                .map(|_| Arc::new(tokio::sync::Notify::new()));
            if let (Some(wanted), Some(poke)) = (&self.wanted, &poke) {
                tokio::spawn(super::listen::listen_loop::<Box<Message>>(
                    super::listen::Listen {
                        target: name.clone(),
                        url: target.url.clone(),
                        route: route.clone(),
                        wanted: wanted.clone(),
                        credentials: self.schedule.credentials.clone(),
                        poke: poke.clone(),
                        tenants: self.ctx.tenants.clone(),
                        namespace: self.namespace.clone(),
                    },
                    self.inbox.clone(),
                    cancel.clone(),
                ));
            }
            tokio::spawn(poll_loop(
                Polled {
                    target: name.clone(),
                    url: target.url.clone(),
                    route,
                    poke,
                },
                self.schedule.clone(),
                self.ctx
                    .poller
                    .clone()
                    .with_keep_alive(self.schedule.interval < self.ctx.settings.keep_alive_below),
                Some(gate),
                self.inbox.clone(),
                cancel.clone(),
            ));
            self.loops.insert(name.clone(), cancel);
            // Known from the status (a hand-off or a restart): polled again, not new.
            if known.is_none() {
                self.notify(
                    Reason::TargetDiscovered,
                    format!("polling {name} at {}", target.url),
                    Some(&target),
                )
                .await;
            }
        }
    }

    /// How `target` is reached: pod IPs come from the apiserver (a pod on its
    /// node's network is the node, which the policy must allow); a URL comes from
    /// the user and is checked before every poll.
    fn route_to(&self, target: &Target) -> Route {
        let egress = self.ctx.egress.clone();
        let namespace = self.namespace.clone();
        match &target.pod {
            None => Route::Url { egress, namespace },
            Some(pod) => match self.pods.get(pod).and_then(|pod| pod.node_address) {
                Some(ip) => Route::NodeAddress {
                    egress,
                    namespace,
                    ip,
                },
                None => Route::Pod,
            },
        }
    }

    async fn on_report(&mut self, report: Report) {
        let Some(state) = self.targets.get_mut(&report.target) else {
            return;
        };
        if state.target.url != report.url {
            return;
        }
        self.dirty = true;
        let (result, reason) = match &report.report.result {
            Ok(_) => ("success", ""),
            Err(failure) => ("failure", failure.reason()),
        };
        self.ctx.metrics.targetapps.polled(
            &self.namespace,
            &self.name,
            crate::metrics::Poll {
                sent_at: report.sent_at.as_millisecond() as f64 / 1000.0,
                duration_seconds: report.report.duration.as_secs_f64(),
                lateness_seconds: report.lateness.as_secs_f64(),
                result,
                reason,
            },
        );
        if let Ok(data) = &report.report.result
            && !data.errors.is_empty()
        {
            tracing::debug!(namespace = %self.namespace, tapp = %self.name, target = %report.target,
                correlation_id = %report.correlation_id, errors = ?data.errors, "partial result with GraphQL errors");
        }
        // Times that other replicas compare with (status has one-second precision):
        // what a poll saw holds from when it was sent (a lower bound: firings, and
        // when the condition was seen false), and an end recorded from it holds
        // until the answer was handled (an upper bound). A poll answered slowly, or
        // handled late, then never looks newer than it is.
        let sent_at = report.sent_at;
        let now = Timestamp::now();
        // A late answer of a target that is gone exports nothing.
        if self.exports
            && self.targets.contains_key(&report.target)
            && let Some(answer) = crate::target_metrics::answer_of(&report.report.result)
        {
            self.export(&report.target, answer).await;
        }
        let Some(state) = self.targets.get_mut(&report.target) else {
            return;
        };
        let seen = state.observe(report.report.result, &self.rules, &self.fields, sent_at);
        let target = state.target.clone();
        self.tell(seen, &target, (sent_at, now), &report.correlation_id)
            .await;
    }

    /// Acts on what a poll or a push meant for `target`: Events, firings, the
    /// ends of episodes. `seen_at`: when what was seen held (a lower bound for
    /// firings), and when it was handled (an upper bound for ends).
    async fn tell(
        &mut self,
        seen: Vec<Observed>,
        target: &Target,
        (sent_at, now): (Timestamp, Timestamp),
        correlation_id: &str,
    ) {
        for observed in seen {
            match observed {
                Observed::PollFailed(failure) => {
                    tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %target.name(),
                        correlation_id = %correlation_id, reason = failure.reason(), error = %failure, "poll failed");
                    self.notify(
                        Reason::PollFailed,
                        format!(
                            "polling {} failed ({}): {failure}",
                            target.name(),
                            failure.reason()
                        ),
                        Some(target),
                    )
                    .await;
                }
                Observed::Throttled(failure @ super::poll::PollFailure::Credentials(_)) => {
                    tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %target.name(),
                        correlation_id = %correlation_id, error = %failure, "poll not sent");
                    self.notify(
                        Reason::PollFailed,
                        format!(
                            "polling {} failed (credentials): {failure}; nothing was sent, and the target keeps its last state",
                            target.name()
                        ),
                        Some(target),
                    )
                    .await;
                }
                Observed::Throttled(failure) => {
                    self.ctx
                        .metrics
                        .throttled
                        .with_label_values(&[self.namespace.as_str(), "response_bytes"])
                        .inc();
                    tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %target.name(),
                        correlation_id = %correlation_id, error = %failure, "poll throttled");
                    self.notify(
                        Reason::PollThrottled,
                        format!("polling {} was stopped: {failure}", target.name()),
                        Some(target),
                    )
                    .await;
                }
                Observed::PollRecovered => {
                    self.notify(
                        Reason::PollRecovered,
                        format!("{} answers again", target.name()),
                        Some(target),
                    )
                    .await;
                }
                Observed::StateChanged(change) => {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref()
                            .map_or("(absent)".to_owned(), ToString::to_string)
                    };
                    self.notify(
                        Reason::StateChanged,
                        format!(
                            "{}: {} changed from {} to {}",
                            target.name(),
                            change.field,
                            show(&change.old),
                            show(&change.new)
                        ),
                        Some(target),
                    )
                    .await;
                }
                Observed::Fired {
                    rule,
                    old,
                    new,
                    after,
                    false_at,
                } => {
                    self.fired(
                        rule,
                        target,
                        sent_at,
                        correlation_id,
                        (old, new),
                        (after, false_at),
                    )
                    .await
                }
                Observed::Ended { rule, fired_at } => {
                    if let Some(rule) = self.rules.get(rule).map(|r| r.name.clone()) {
                        self.ended(&rule, target.name(), fired_at, now).await;
                    }
                }
            }
        }
    }

    async fn fired(
        &mut self,
        index: usize,
        target: &Target,
        now: Timestamp,
        correlation_id: &str,
        (old, new): (Option<serde_json::Value>, Option<serde_json::Value>),
        (after, false_at): (Option<Timestamp>, Option<Timestamp>),
    ) {
        let Some(rule) = self.rules.get(index).cloned() else {
            return;
        };
        // A firing is known by its time in status, which has one-second precision:
        // the action runs as that time, so that a replica resuming it after a crash
        // sends the same idempotency key and firedAt.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        self.ctx
            .metrics
            .firings
            .with_label_values(&[
                self.namespace.as_str(),
                self.name.as_str(),
                rule.name.as_str(),
            ])
            .inc();
        tracing::info!(namespace = %self.namespace, tapp = %self.name, target = %target.name(), rule = %rule.name,
            actions = %actions_named(&rule.actions, "(records only)"), correlation_id, "trigger fired");
        // The firings of rules with an action, as the fence will record them
        // (a rule that only records keeps its firings in the target's state).
        if !rule.actions.is_empty() {
            status::record_firing(
                &mut self.firings,
                RuleFiring::new(rule.name.clone(), target.name().to_owned(), now),
            );
        }
        let c = &rule.condition;
        let then = match actions_named(&rule.actions, "") {
            none if none.is_empty() => "recorded only (the rule has no action)".to_owned(),
            actions if self.app.spec.dry_run => format!("running {actions} (dry run)"),
            actions => format!("running {actions}"),
        };
        let note = format!(
            "rule {} fired for {}: {} {}{}; {then}",
            rule.name,
            target.name(),
            c.field,
            c.kind.as_str(),
            match &c.operand {
                triggers::Operand::None => String::new(),
                triggers::Operand::Value(v) => format!(" {v}"),
                triggers::Operand::Field { path, offset } => format!(" {path}{offset:+}"),
            },
        );
        self.notify(Reason::TriggerFired, note, Some(target)).await;
        let Some(spec_rule) = self
            .app
            .spec
            .actions
            .get(index)
            .filter(|r| r.action.is_some())
            .cloned()
        else {
            // A rule that only records is done: its firing is kept by this
            // replica (cooldown and episode), not fenced in status, which is
            // the record of actions run.
            return;
        };
        let state = self
            .targets
            .get(target.name())
            .filter(|t| t.up == Some(true))
            .and_then(|t| t.last_good());
        let firing = Firing {
            app: self.app.clone(),
            rule_name: rule.name.clone(),
            rule: spec_rule,
            cooldown: rule.cooldown,
            target: target.name().to_owned(),
            pod: target.pod.clone(),
            field: rule.condition.field.to_string(),
            old,
            new,
            state,
            correlation_id: correlation_id.to_owned(),
            now,
            after,
            false_at,
        };
        // Off the monitor's loop: an action may take up to its timeout. Tracked, so
        // that a graceful shutdown lets running actions finish.
        self.ctx.actions.spawn(super::acting::act(
            self.ctx.clone(),
            self.reference.clone(),
            firing,
            self.inbox.clone(),
            self.cancel.clone(),
        ));
    }

    /// What a target's subscription loop heard: a value pushed (judged by the
    /// rules on it, as a poll's answer is by the others), or the connection
    /// opened, lost, or not served.
    async fn on_heard(&mut self, heard: super::listen::Heard) {
        use super::listen::Happened;
        let Some(state) = self.targets.get_mut(&heard.target) else {
            return;
        };
        if state.target.url != heard.url {
            return;
        }
        let target = state.target.clone();
        let name = target.name().to_owned();
        let pushed_series = match &heard.what {
            Happened::Pushed(pushed) => Some(Answer::Pushed {
                name: &pushed.name,
                value: &pushed.value,
            }),
            Happened::Lost { .. } | Happened::Unsupported(_) | Happened::OverQuota(_) => {
                Some(Answer::Unsubscribed)
            }
            Happened::Opened { .. } => None,
        };
        if self.exports
            && let Some(answer) = pushed_series
        {
            self.export(&heard.target, answer).await;
        }
        match heard.what {
            Happened::Pushed(pushed) => {
                self.dirty = true;
                let now = Timestamp::now();
                let Some(state) = self.targets.get_mut(&heard.target) else {
                    return;
                };
                let seen = state.push(
                    &pushed.name,
                    pushed.value,
                    &self.rules,
                    &self.fields,
                    heard.at,
                );
                let correlation_id = format!("{:016x}", fastrand::u64(..));
                self.tell(seen, &target, (heard.at, now), &correlation_id)
                    .await;
            }
            Happened::Opened {
                protocol,
                after,
                tell,
            } => {
                let before = self.subscribe_state(&name, SubscriptionState::Subscribed, None);
                if !tell {
                    return;
                }
                let again = before.is_some() || after > 0;
                let note = if again {
                    format!(
                        "subscribed to {name} again ({}); polling it now for what changed meanwhile",
                        protocol.subprotocol()
                    )
                } else {
                    format!("subscribed to {name} ({})", protocol.subprotocol())
                };
                self.notify(Reason::Subscribed, note, Some(&target)).await;
            }
            Happened::Lost { why, retry, first } => {
                tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %name,
                    reason = why.reason(), error = %why, retry_secs = retry.as_secs(), "subscription connection lost");
                let reason = Some(format!("{}: {why}", why.reason()));
                self.subscribe_state(&name, SubscriptionState::Reconnecting, reason);
                if first {
                    let note = format!(
                        "subscriptions to {name} lost ({}): {why}; opening them again with backoff, polling meanwhile",
                        why.reason()
                    );
                    self.notify(Reason::SubscriptionLost, note, Some(&target))
                        .await;
                }
            }
            Happened::OverQuota(why) => {
                self.subscribe_state(&name, SubscriptionState::PollingOnly, Some(why.clone()));
                self.ctx
                    .metrics
                    .throttled
                    .with_label_values(&[self.namespace.as_str(), "subscription"])
                    .inc();
                let note = format!(
                    "subscriptions to {name} not opened: {why}; polling it only until one frees"
                );
                self.notify(Reason::QuotaExceeded, note, Some(&target))
                    .await;
            }
            Happened::Unsupported(why) => {
                let reason = Some(format!("{}: {why}", why.reason()));
                self.subscribe_state(&name, SubscriptionState::PollingOnly, reason);
                let note = format!("{name} serves no subscriptions ({why}): polling it only");
                self.notify(Reason::SubscriptionLost, note, Some(&target))
                    .await;
            }
        }
    }

    /// Records where `target`'s subscriptions stand (status is written if that
    /// changed); what was recorded before.
    fn subscribe_state(
        &mut self,
        target: &str,
        state: SubscriptionState,
        why: Option<String>,
    ) -> Option<(SubscriptionState, Option<String>)> {
        let now = (state, why);
        let before = self.subscriptions.insert(target.to_owned(), now.clone());
        if before.as_ref() != Some(&now) {
            self.dirty = true;
        }
        before
    }

    /// The fence found that this replica's firing at `adopted.own` is recorded as
    /// the firing at `adopted.at` (the same time, or that of an earlier firing of
    /// the same episode): this stretch's firing is that one. If the stretch has
    /// already ended here, its end is recorded again under that time.
    ///
    /// The end was written when it was seen, but it may have found no record yet
    /// (the fence still waiting for the apiserver, or a firing run late after the
    /// wait). Written again now, it is an upper bound (this moment); an earlier end
    /// in status wins over it (`Dispatcher::clear`).
    async fn adopt(&mut self, adopted: Adopt) {
        self.dirty = true;
        let Adopt {
            target,
            rule,
            own,
            at,
        } = adopted;
        let Some(index) = self.rules.iter().position(|r| r.name == rule) else {
            return;
        };
        let Some(firing) = self
            .targets
            .get_mut(&target)
            .and_then(|t| t.firing.get_mut(index))
        else {
            return;
        };
        let adoption = firing.adopt(own, at);
        if adoption == Adoption::Stale {
            return;
        }
        if at.as_second() != own.as_second() {
            status::record_firing(
                &mut self.firings,
                RuleFiring::new(rule.clone(), target.clone(), at),
            );
        }
        if adoption == Adoption::Ended {
            self.ended(&rule, &target, at, Timestamp::now()).await;
        }
    }

    /// The episode of `rule` for `target` that fired at `fired_at` was seen to end
    /// at `ended_at`: recorded in status before the next poll report is handled,
    /// so that a replica taking over fires the next episode (and this one's own
    /// next firing is never mistaken for a repeat).
    async fn ended(&mut self, rule: &str, target: &str, fired_at: Timestamp, ended_at: Timestamp) {
        if let Some(record) = self.firings.iter_mut().find(|f| {
            f.rule == rule && f.target == target && f.time.0.as_second() == fired_at.as_second()
        }) {
            record.cleared = Some(Time(ended_at));
        }
        // Only firings of rules with an action are recorded in status.
        if !self
            .rules
            .iter()
            .any(|r| r.name == rule && !r.actions.is_empty())
        {
            return;
        }
        let what = || {
            self.ctx
                .dispatcher
                .clear(&self.app, rule, target, fired_at, ended_at)
        };
        let Err(e) = what().await else {
            return;
        };
        self.ctx.metrics.errors.with_label_values(&["fence"]).inc();
        if !e.is_transient() {
            tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %target,
                rule = %rule, error = %e, "cannot record the end of an episode");
            return;
        }
        // The apiserver is down: keep trying in the background (a graceful shutdown
        // waits for it), so that a replica taking over later knows the episode ended.
        tracing::warn!(namespace = %self.namespace, tapp = %self.name, target = %target,
            rule = %rule, error = %e, "cannot record the end of an episode yet; retrying");
        let (dispatcher, app, rule, target) = (
            self.ctx.dispatcher.clone(),
            self.app.clone(),
            rule.to_owned(),
            target.to_owned(),
        );
        self.ctx.actions.spawn(async move {
            let retried = (|| dispatcher.clear(&app, &rule, &target, fired_at, ended_at))
                .retry(crate::actions::patience(crate::actions::FENCE_PATIENCE))
                .when(ActionError::is_transient)
                .await;
            if let Err(e) = retried {
                tracing::warn!(tapp = %app.name_any(), target = %target, rule = %rule, error = %e,
                    "cannot record the end of an episode");
            }
        });
    }

    /// Exports what `target`'s answer (a poll's, a push, or its subscriptions
    /// lost) says of the fields in `spec.metrics`, within the tenant's series
    /// budget; the first target the budget refuses is reported (Event, and the
    /// status until none is refused).
    async fn export(&mut self, target: &str, answer: Answer<'_>) {
        let labels = self.pods.get(target).map(|pod| &pod.labels);
        let budget = self.ctx.tenants.series_budget(&self.namespace);
        let recorded = self.ctx.metrics.target_series.record(
            &self.namespace,
            &self.name,
            target,
            labels,
            answer,
            &budget,
        );
        match recorded {
            Ok(()) => {
                if self.over_series.remove(target).is_some() {
                    self.dirty = true;
                }
            }
            Err(over) => {
                let first = self.over_series.is_empty();
                let why = format!(
                    "{target} exports no series: its tenant's series would exceed the {} metric series {} allows on this replica",
                    over.max, over.named
                );
                if self
                    .over_series
                    .insert(target.to_owned(), why.clone())
                    .is_none()
                {
                    self.dirty = true;
                }
                if first {
                    tracing::warn!(namespace = %self.namespace, tapp = %self.name, target, error = %over, "metric series over the tenant's budget");
                    self.ctx
                        .metrics
                        .throttled
                        .with_label_values(&[self.namespace.as_str(), "metric_series"])
                        .inc();
                    self.notify(Reason::QuotaExceeded, why, None).await;
                }
            }
        }
    }

    /// Publishes an Event on the TargetApp and, for a pod target, on the pod too.
    async fn notify(&self, reason: Reason, note: String, target: Option<&Target>) {
        let pod = target.and_then(|t| t.pod.as_deref());
        publish(
            &self.ctx,
            &self.reference,
            &self.namespace,
            reason,
            note,
            pod,
        );
    }

    /// Writes status when something a user would act on changed; refreshes
    /// /stats (which shows each target's last poll) on change and at most once per
    /// interval (at least a minute) otherwise. True when the write was put off
    /// for want of a permit.
    async fn write_status(&mut self, invalid: Option<&str>) -> bool {
        if !self.dirty || self.releasing.load(Ordering::Acquire) {
            return false;
        }
        self.count_targets();
        let now = Timestamp::now();
        let shard = self.ctx.settings.instance.clone();
        let next = status::build(
            &status::Inputs {
                generation: self.app.metadata.generation,
                suspended: self.app.spec.suspend,
                invalid,
                discovered: self.discovered,
                targets: &self.targets,
                subscriptions: &self.subscriptions,
                exports: match self.over_series.values().next() {
                    _ if !self.exports => status::Exports::Nothing,
                    Some(why) => status::Exports::Refused(why),
                    None => status::Exports::All,
                },
                shard: &shard,
                now,
            },
            self.written.as_ref(),
        );
        let refresh = self.schedule.interval.max(Duration::from_secs(60));
        let unpolled = next.phase == Some(crate::targetapp::Phase::Initializing)
            || self.targets.values().any(|t| t.up.is_none());
        if unpolled
            && self
                .inherited_until
                .is_some_and(|until| tokio::time::Instant::now() < until)
        {
            // Still dirty: built again at the next tick, once the polls are in.
            return false;
        }
        if !status::should_write(self.written.as_ref(), &next) {
            if self.stats_at.is_none_or(|at| at.elapsed() >= refresh) {
                self.publish_stats(&next);
            }
            self.dirty = false;
            return false;
        }
        self.publish_stats(&next);
        // A bounded number of status writes at once (each holds an apiserver
        // connection). This loop never waits for a turn: while it waited, its poll
        // reports would queue, and a firing seen late is recorded late (a replica
        // stopped meanwhile loses it). Without a permit, the write is tried again
        // within a second (`retry_after`), with the status of that moment; the
        // status is built each time, so that /stats and the targets' gauges stay
        // current while writes wait.
        let Ok(_permit) = self.ctx.status_writes.try_acquire() else {
            self.ctx.metrics.status_writes_deferred.inc();
            return true;
        };
        let api: Api<TargetApp> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let patch = serde_json::json!({ "status": next });
        match api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.written = Some(next);
                self.dirty = false;
            }
            Err(e) => {
                self.ctx
                    .metrics
                    .errors
                    .with_label_values(&["status_write"])
                    .inc();
                tracing::warn!(namespace = %self.namespace, tapp = %self.name, error = %e, "cannot write status");
            }
        }
        false
    }

    /// The targets up and down, as metrics: set whenever the status is built, so
    /// that a replica that takes a TargetApp over (whose status it need not write)
    /// exports them too.
    fn count_targets(&self) {
        let up = self.targets.values().filter(|t| t.up == Some(true)).count() as i64;
        self.ctx.metrics.targetapps.targets(
            &self.namespace,
            &self.name,
            up,
            self.targets.len() as i64 - up,
        );
    }

    fn publish_stats(&mut self, status: &TargetAppStatus) {
        self.stats_at = Some(tokio::time::Instant::now());
        let health = |data: Option<&serde_json::Value>, path: &str| {
            let path: FieldPath = path.parse().ok()?;
            path.resolve(data, true)
        };
        let stats = AppStats {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            phase: status.phase,
            targets: self
                .targets
                .values()
                .map(|t| {
                    let data = t.last_good();
                    let data = data.as_ref();
                    TargetStats {
                        name: t.target.name().to_owned(),
                        url: t.target.url.clone(),
                        up: t.up,
                        last_poll_time: t.last_poll.map(|at| at.to_string()),
                        since: t.since.map(|at| at.to_string()),
                        last_error: t.last_error.as_ref().map(ToString::to_string),
                        sync_status: health(data, HEALTH_SYNC)
                            .and_then(|v| v.as_str().map(str::to_owned)),
                        blockchain_length: health(data, HEALTH_LENGTH)
                            .and_then(|v| v.as_i64())
                            .and_then(|n| i32::try_from(n).ok()),
                    }
                })
                .collect(),
        };
        if let Ok(mut all) = self.ctx.stats.write() {
            all.insert(format!("{}/{}", self.namespace, self.name), stats);
        }
    }
}

/// Publishes an Event on the TargetApp (`app`) and, when `pod` is given, on the pod too.
pub(super) fn publish(
    ctx: &Context,
    app: &ObjectReference,
    namespace: &str,
    reason: Reason,
    note: String,
    pod: Option<&str>,
) {
    let pod = pod.map(|pod| ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(pod.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    });
    let mut notices = vec![Notice {
        reason,
        note: note.clone(),
        regarding: app.clone(),
        related: pod.clone(),
    }];
    if let Some(pod) = pod {
        notices.push(Notice {
            reason,
            note,
            regarding: pod,
            related: Some(app.clone()),
        });
    }
    let tenant = ctx.tenants.effective(namespace).tenant(namespace);
    for notice in notices {
        match ctx.events.push(&tenant, !reason.is_routine(), notice) {
            Pushed::Queued => {}
            Pushed::OverBudget => ctx
                .metrics
                .throttled
                .with_label_values(&[namespace, "event"])
                .inc(),
            Pushed::QueuedDroppingOlder | Pushed::Full => ctx
                .metrics
                .errors
                .with_label_values(&["event_dropped"])
                .inc(),
        }
    }
}

/// This replica's firing of `rule` for `target` at `own` is recorded as the
/// firing at `at`: its own time, or an earlier firing of the same episode
/// (recorded by another replica, or run here as an earlier unfinished one).
pub(super) struct Adopt {
    pub(super) target: String,
    pub(super) rule: String,
    pub(super) own: Timestamp,
    pub(super) at: Timestamp,
}

/// Actions' names as Events tell them: `webhook, then restart_pod`, or `none`
/// when there are none.
pub(super) fn actions_named(actions: &[String], none: &str) -> String {
    if actions.is_empty() {
        none.to_owned()
    } else {
        actions.join(", then ")
    }
}

/// When a status write put off for want of a permit is tried again: within the
/// next second, at a random point. The TargetApps a replica starts together (at
/// start-up, or when it takes over a shard) tick together; retrying on that
/// shared tick let only as many writes through each second as there are
/// permits (about 30 a second for a thousand TargetApps waiting), though each
/// takes a few tens of milliseconds.
fn retry_after() -> Duration {
    Duration::from_millis(fastrand::u64(1..1000))
}
