//! Running an action for a firing, exactly once: the firing is recorded in the
//! TargetApp's status with optimistic concurrency first (the fence), then the action
//! runs with the tenant's service account, bounded by its timeout.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::Value;

use super::{ActionContext, ActionError, Outcome, Params, Registry};
use crate::monitor::status::record_firing;
use crate::targetapp::{ActionRule, RuleFiring, TargetApp};
use crate::tenancy::{Egress, Tenants};

/// How many times the fence re-reads after a conflict caused by other status writes.
const FENCE_ATTEMPTS: usize = 10;

/// How long a firing waits for an unavailable apiserver (restarting, overloaded)
/// before its fence gives up; the wait backs off from 250 ms to 2 s.
pub const FENCE_PATIENCE: Duration = Duration::from_secs(120);

/// How long recording that an action finished waits for an unavailable apiserver.
const FINISH_PATIENCE: Duration = Duration::from_secs(30);

/// Sets an unset time to now; whether it changed anything.
fn stamp(slot: &mut Option<Time>) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(Time(Timestamp::now()));
    true
}

/// Backoff from 250 ms to 2 s, with jitter, for at most `total`.
pub fn patience(total: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(total))
        .without_max_times()
        .with_jitter()
}

/// One firing to act on.
pub struct Firing {
    pub app: Arc<TargetApp>,
    pub rule_name: String,
    pub rule: ActionRule,
    pub cooldown: Duration,
    /// The target's name (pod name, or URL) and its pod, if any.
    pub target: String,
    pub pod: Option<String>,
    /// The field the rule watches, and its value in the previous and firing polls.
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
    pub state: Option<Value>,
    pub correlation_id: String,
    pub now: Timestamp,
    /// The previous firing whose episode this replica saw end (its condition turned
    /// false): a recorded firing at that time does not make this one a repeat.
    pub after: Option<Timestamp>,
}

/// Why a firing's action did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The rule fired for this target within its cooldown (here or on another replica).
    Cooldown { last: Timestamp },
    /// Another dispatcher recorded this firing first (at `at`).
    LostRace { at: Timestamp },
    /// The tenant's hourly action budget is used up.
    QuotaExceeded { why: String },
    /// The rule already fired for this episode (recorded by another replica, and
    /// its condition not seen false since).
    AlreadyFired { at: Timestamp },
}

/// What dispatching a firing came to.
#[derive(Debug)]
pub enum Dispatched {
    Skipped(Skip),
    /// The action ran (for real, or as a dry run), as the firing at `fired_at`
    /// (earlier than this firing's own time when it resumed an unfinished one).
    Ran {
        result: Result<Outcome, ActionError>,
        dry_run: bool,
        duration: Duration,
        fired_at: Timestamp,
    },
}

/// Fences firings and runs their actions.
#[derive(Clone)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    /// The operator's own client: reads and fences TargetApps, never runs actions.
    operator: kube::Client,
    /// The operator's configuration, from which impersonating clients are made.
    config: kube::Config,
    clients: moka::sync::Cache<String, kube::Client>,
    default_timeout: Duration,
    /// Each tenant's quota (allowed actions, action budget) and outbound HTTP.
    tenants: Arc<Tenants>,
    egress: Egress,
}

impl Dispatcher {
    pub fn new(
        operator: kube::Client,
        config: kube::Config,
        default_timeout: Duration,
        tenants: Arc<Tenants>,
        egress: Egress,
    ) -> Self {
        Self {
            tenants,
            egress,
            registry: Arc::new(Registry::builtin()),
            operator,
            config,
            clients: moka::sync::Cache::builder()
                .max_capacity(1000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            default_timeout,
        }
    }

    /// A client that acts as `system:serviceaccount:<namespace>:<account>`.
    fn impersonating(&self, namespace: &str, account: &str) -> Result<kube::Client, ActionError> {
        let user = format!("system:serviceaccount:{namespace}:{account}");
        if let Some(client) = self.clients.get(&user) {
            return Ok(client);
        }
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.clone());
        config.auth_info.impersonate_groups = None;
        // A 429 from an action is a refusal (an eviction a PodDisruptionBudget forbids):
        // report it, do not retry it in a loop.
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(|e| {
            ActionError::Unavailable(format!("cannot build a client for {user}: {e}"))
        })?;
        self.clients.insert(user, client.clone());
        Ok(client)
    }

    /// Records the firing in status unless it is inside the cooldown or another
    /// dispatcher recorded it first; the time the action runs as (the firing's
    /// own, or that of an unfinished firing of the same episode it resumes).
    pub async fn fence(&self, firing: &Firing) -> Result<Result<Timestamp, Skip>, ActionError> {
        let namespace = firing.app.namespace().unwrap_or_default();
        let name = firing.app.name_any();
        let apps: Api<TargetApp> = Api::namespaced(self.operator.clone(), &namespace);
        let what = format!("record the firing in TargetApp {namespace}/{name}");
        let mut app = apps
            .get_status(&name)
            .await
            .map_err(|e| ActionError::from_kube(&what, e))?;
        let find = |app: &TargetApp| {
            app.status
                .as_ref()
                .and_then(|s| {
                    s.firings
                        .iter()
                        .find(|f| f.rule == firing.rule_name && f.target == firing.target)
                })
                .cloned()
        };
        let seen = find(&app);
        let mut record = RuleFiring {
            rule: firing.rule_name.clone(),
            target: firing.target.clone(),
            time: Time(firing.now),
            cleared: None,
            done: None,
            resumed: None,
        };
        if let Some(previous) = &seen {
            let last = previous.time.0;
            // Status times have one-second precision.
            let ended_here = firing.after.map(Timestamp::as_second) == Some(last.as_second());
            let open = previous.cleared.is_none() && !ended_here;
            let resumable = self
                .registry
                .get(firing.rule.action.as_str())
                .is_some_and(|a| a.resumable());
            if open && previous.done.is_none() && resumable {
                // Recorded, never finished: the replica running it stopped midway.
                // Run it again as that same firing.
                record = RuleFiring {
                    resumed: Some(Time(Timestamp::now())),
                    ..previous.clone()
                };
            } else {
                let since =
                    Duration::try_from(firing.now.duration_since(last)).unwrap_or(Duration::ZERO);
                if since < firing.cooldown {
                    return Ok(Err(Skip::Cooldown { last }));
                }
                if open {
                    return Ok(Err(Skip::AlreadyFired { at: last }));
                }
            }
        }
        for _ in 0..FENCE_ATTEMPTS {
            let mut status = app.status.clone().unwrap_or_default();
            record_firing(&mut status.firings, record.clone());
            app.status = Some(status);
            // replace_status carries metadata.resourceVersion: a concurrent write fails it.
            match apps
                .replace_status(&name, &PostParams::default(), &app)
                .await
            {
                Ok(_) => return Ok(Ok(record.time.0)),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    app = apps
                        .get_status(&name)
                        .await
                        .map_err(|e| ActionError::from_kube(&what, e))?;
                    let now = find(&app);
                    let moved = |a: &RuleFiring, b: &RuleFiring| {
                        a.time != b.time || a.resumed != b.resumed || a.done != b.done
                    };
                    let changed = match (&now, &seen) {
                        (Some(now), Some(seen)) => moved(now, seen),
                        (Some(_), None) => true,
                        _ => false,
                    };
                    if changed && let Some(theirs) = now {
                        return Ok(Err(Skip::LostRace { at: theirs.time.0 }));
                    }
                }
                Err(e) => return Err(ActionError::from_kube(&what, e)),
            }
        }
        Err(ActionError::Refused(format!(
            "{what}: status kept changing; gave up"
        )))
    }

    /// Records that the action of the firing of `rule` for `target` at `fired_at`
    /// finished, so that no replica runs it again (`dispatch` retries it through a
    /// short apiserver outage); a record it cannot update is at worst run once
    /// more, with the same idempotency key.
    pub async fn finish(
        &self,
        app: &TargetApp,
        rule: &str,
        target: &str,
        fired_at: Timestamp,
    ) -> Result<(), ActionError> {
        self.update_record(
            app,
            rule,
            target,
            fired_at,
            "record that an action finished",
            |r| stamp(&mut r.done),
        )
        .await
    }

    /// Records that the episode of `rule` for `target` that fired at `fired_at`
    /// ended, so that a replica taking over fires the next one. Nothing to do when
    /// status holds another firing by then.
    pub async fn clear(
        &self,
        app: &TargetApp,
        rule: &str,
        target: &str,
        fired_at: Timestamp,
    ) -> Result<(), ActionError> {
        self.update_record(
            app,
            rule,
            target,
            fired_at,
            "record the end of an episode",
            |r| stamp(&mut r.cleared),
        )
        .await
    }

    /// Applies `change` (which says whether it changed anything) to the status
    /// record of the firing of `rule` for `target` at `fired_at`, with optimistic
    /// concurrency. Nothing to do when status holds another firing by then.
    async fn update_record(
        &self,
        app: &TargetApp,
        rule: &str,
        target: &str,
        fired_at: Timestamp,
        doing: &str,
        change: impl Fn(&mut RuleFiring) -> bool,
    ) -> Result<(), ActionError> {
        let namespace = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let apps: Api<TargetApp> = Api::namespaced(self.operator.clone(), &namespace);
        let what = format!("{doing} in TargetApp {namespace}/{name}");
        for _ in 0..FENCE_ATTEMPTS {
            let mut current = apps
                .get_status(&name)
                .await
                .map_err(|e| ActionError::from_kube(&what, e))?;
            let Some(record) = current.status.as_mut().and_then(|s| {
                s.firings.iter_mut().find(|f| {
                    f.rule == rule
                        && f.target == target
                        && f.time.0.as_second() == fired_at.as_second()
                })
            }) else {
                return Ok(());
            };
            if !change(record) {
                return Ok(());
            }
            match apps
                .replace_status(&name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(ActionError::from_kube(&what, e)),
            }
        }
        Err(ActionError::Refused(format!(
            "{what}: status kept changing; gave up"
        )))
    }

    /// Fences `firing` and, if it is ours, runs its action, then records that it
    /// finished.
    pub async fn dispatch(&self, firing: Firing) -> Result<Dispatched, ActionError> {
        // A firing seen while the apiserver is down is not lost: the fence waits for
        // it (bounded), and then decides on fresh status as always.
        let fired_at = match (|| self.fence(&firing))
            .retry(patience(FENCE_PATIENCE))
            .when(ActionError::is_transient)
            .await?
        {
            Ok(at) => at,
            Err(skip) => return Ok(Dispatched::Skipped(skip)),
        };
        let dry_run = firing.app.spec.dry_run;
        let namespace = firing.app.namespace().unwrap_or_default();
        let outcome = match (!dry_run)
            .then(|| self.tenants.action_permit(&namespace))
            .transpose()
        {
            Err(why) => Dispatched::Skipped(Skip::QuotaExceeded { why }),
            Ok(_) => {
                let started = std::time::Instant::now();
                // An action that is safe to repeat (see `Action::resumable`) is tried
                // again while the apiserver is unavailable (reading its Secrets).
                let resumable = self
                    .registry
                    .get(firing.rule.action.as_str())
                    .is_some_and(|a| a.resumable());
                let result = (|| self.run(&firing, fired_at, dry_run))
                    .retry(patience(FINISH_PATIENCE))
                    .when(|e: &ActionError| resumable && e.is_transient())
                    .await;
                Dispatched::Ran {
                    result,
                    dry_run,
                    duration: started.elapsed(),
                    fired_at,
                }
            }
        };
        let finished = (|| self.finish(&firing.app, &firing.rule_name, &firing.target, fired_at))
            .retry(patience(FINISH_PATIENCE))
            .when(ActionError::is_transient)
            .await;
        if let Err(e) = finished {
            tracing::warn!(namespace = %namespace, tapp = %firing.app.name_any(), target = %firing.target,
                rule = %firing.rule_name, error = %e, "cannot record that the action finished; a replica taking over may run it again (same idempotency key)");
        }
        Ok(outcome)
    }

    async fn run(
        &self,
        firing: &Firing,
        fired_at: Timestamp,
        dry_run: bool,
    ) -> Result<Outcome, ActionError> {
        let name = firing.rule.action.as_str();
        self.registry
            .validate(name, firing.rule.parameters.as_ref())
            .map_err(|problems| {
                ActionError::Invalid(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            })?;
        let action = self
            .registry
            .get(name)
            .ok_or_else(|| ActionError::Invalid(format!("unknown action {name:?}")))?;
        let namespace = firing.app.namespace().unwrap_or_default();
        let quota = self.tenants.effective(&namespace);
        if let Some(why) = quota.quota.refuses_action(&namespace, name) {
            return Err(ActionError::NotAllowed(why));
        }
        let account = firing.app.spec.service_account_name.as_deref().ok_or_else(|| {
            ActionError::Invalid(
                "spec.serviceAccountName is not set: actions run only with a service account of the TargetApp's namespace"
                    .into(),
            )
        })?;
        let ctx = ActionContext {
            app: firing.app.clone(),
            client: self.impersonating(&namespace, account)?,
            namespace,
            pod: firing.pod.clone(),
            target: firing.target.clone(),
            rule: firing.rule_name.clone(),
            field: firing.field.clone(),
            old: firing.old.clone(),
            new: firing.new.clone(),
            fired_at,
            state: firing.state.clone(),
            egress: self.egress.clone(),
            max_replicas: quota.max_replicas,
            correlation_id: firing.correlation_id.clone(),
            dry_run,
        };
        let params = Params::new(firing.rule.parameters.as_ref());
        let timeout = action.timeout(&params).unwrap_or(self.default_timeout);
        match tokio::time::timeout(timeout, action.run(&ctx, &params)).await {
            Ok(result) => result,
            Err(_) => Err(ActionError::Timeout(timeout)),
        }
    }
}
