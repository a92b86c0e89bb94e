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

use super::{ActionContext, ActionError, Outcome, Params, Registry, params};
use crate::monitor::status::record_firing;
use crate::targetapp::{ActionRule, RuleFiring, Step, StepOutcome, StepResult, TargetApp};
use crate::tenancy::ledger::{Ledger, Refused};
use crate::tenancy::{ActionBudget, Egress, Tenants};

/// How many times the fence re-reads after a conflict caused by other status writes.
const FENCE_ATTEMPTS: usize = 10;

/// How long a firing waits for an unavailable apiserver (restarting, overloaded)
/// before its fence gives up; the wait backs off from 250 ms to 2 s.
pub const FENCE_PATIENCE: Duration = Duration::from_secs(120);

/// How long recording that an action finished waits for an unavailable apiserver.
const FINISH_PATIENCE: Duration = Duration::from_secs(30);

/// Sets an unset time; whether it changed anything.
fn set_once(slot: &mut Option<Time>, at: Timestamp) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(Time(at));
    true
}

/// Keeps the earliest of two times (an unset one counts as none); whether it
/// changed anything. Every replica that saw an episode end writes when it saw it:
/// the earliest is the closest to the real end.
fn keep_earliest(slot: &mut Option<Time>, at: Timestamp) -> bool {
    if slot.as_ref().is_some_and(|t| t.0 <= at) {
        return false;
    }
    *slot = Some(Time(at));
    true
}

/// Which status record of a rule for a target a write is for.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// The firing at this time (whole seconds).
    At(Timestamp),
    /// The firing at this time, or one recorded before it (the one whose episode
    /// this replica's firing at this time was waiting to adopt).
    AtOrBefore(Timestamp),
}

impl Which {
    fn matches(self, record: &RuleFiring) -> bool {
        let time = record.time.0.as_second();
        match self {
            Self::At(at) => time == at.as_second(),
            Self::AtOrBefore(at) => time <= at.as_second(),
        }
    }
}

/// What a change to a status record comes to.
enum Edit {
    /// Write the changed record.
    Write,
    /// The record is as it should be already.
    Keep,
    /// The record is not the one the change is for (it moved on).
    Gone,
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
#[derive(Clone)]
pub struct Firing {
    pub app: Arc<TargetApp>,
    pub rule_name: String,
    /// The rule, whose actions (`ActionRule::steps`) run in order (a rule that
    /// only records is never dispatched).
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
    /// The last time this replica saw the condition not hold: a firing recorded at
    /// least a second before it belongs to an episode that has ended.
    pub false_at: Option<Timestamp>,
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
    /// its condition not seen false since). `pending`: no end of that episode is
    /// recorded before this firing, and an earlier one may still arrive from a
    /// replica that saw it (see `Dispatcher::clear`); otherwise a later firing is
    /// recorded, which overtakes this one.
    AlreadyFired { at: Timestamp, pending: bool },
}

/// What dispatching a firing came to.
#[derive(Debug)]
pub enum Dispatched {
    Skipped(Skip),
    /// The rule's actions ran (for real, or as a dry run) from step `from` on, as
    /// the firing at `fired_at` (earlier than this firing's own time, and `from`
    /// past the first step, when it resumed an unfinished one).
    Ran {
        steps: Vec<StepRun>,
        /// How many actions the rule has.
        of: usize,
        from: usize,
        /// Why the steps after the last one in `steps` did not run, if they did not.
        stopped: Option<Stopped>,
        dry_run: bool,
        fired_at: Timestamp,
    },
}

/// One action of a firing that ran.
#[derive(Debug)]
pub struct StepRun {
    /// The step: 0 for the rule's `action`, then 1 for its first `then`, …
    pub index: usize,
    pub action: String,
    pub result: Result<Outcome, ActionError>,
    pub duration: Duration,
}

/// Why a firing's remaining actions did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The last step that ran failed.
    Failed,
    /// The tenant's hourly budget was used up before the next step.
    Quota(String),
    /// Another replica moved the firing's record on (it took the firing over).
    TakenOver,
    /// The last step's result could not be recorded: running the next one could
    /// run it twice (a replica taking over cannot know it ran).
    Unrecorded(String),
}

/// Where a fenced firing's actions start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    /// The firing's time, which its actions run as.
    pub at: Timestamp,
    /// The first step to run (past 0 when resuming an unfinished firing).
    pub from: usize,
}

/// What a replica knows of a firing's episode, for `judge`.
#[derive(Debug, Clone, Copy)]
pub struct Episode {
    /// The firing's time (whole seconds).
    pub now: Timestamp,
    pub cooldown: Duration,
    /// The firing whose episode this replica saw end.
    pub after: Option<Timestamp>,
    /// The last time this replica saw the condition not hold.
    pub false_at: Option<Timestamp>,
}

impl Episode {
    fn of(firing: &Firing) -> Self {
        Self {
            now: firing.now,
            cooldown: firing.cooldown,
            after: firing.after,
            false_at: firing.false_at,
        }
    }
}

/// What the fence does with a firing, given the latest recorded firing of the
/// same rule for the same target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precedent {
    /// Record this firing and run its action.
    Fire,
    /// Run the recorded firing's actions on as that firing, from the step under
    /// way: it was recorded and never finished (its replica stopped midway), its
    /// episode goes on, and that step's action is safe to repeat.
    Resume,
    Skip(Skip),
}

/// Judges a firing against the latest recorded one (pure: the fence reads status);
/// `resumable` says whether the recorded firing's step under way is safe to repeat.
///
/// The recorded firing's episode has ended before this firing when this replica
/// saw it end, or saw the condition false after it was recorded, or its end is
/// recorded before this firing. Status times have one-second precision, so
/// "after" and "before" mean another second: when the same second leaves the
/// order open, the firing is taken as a repeat (a duplicate restart is worse than
/// a missed one, and that needs a state shorter than a second).
pub fn judge(previous: &RuleFiring, episode: &Episode, resumable: bool) -> Precedent {
    let last = previous.time.0.as_second();
    let now = episode.now.as_second();
    if last > now {
        // A later firing is recorded: this one is overtaken.
        return Precedent::Skip(Skip::AlreadyFired {
            at: previous.time.0,
            pending: false,
        });
    }
    let ended_here = episode.after.map(Timestamp::as_second) == Some(last);
    let seen_false = episode.false_at.is_some_and(|f| f.as_second() > last);
    let cleared = previous.cleared.as_ref().map(|c| c.0.as_second());
    let recorded_end = cleared.is_some_and(|c| c < now);
    let open = !(ended_here || seen_false || recorded_end);
    if open {
        if previous.done.is_none() && resumable {
            return Precedent::Resume;
        }
        // With no end recorded before this firing, an earlier one may still come
        // from a replica that saw it (the earliest end recorded wins).
        return Precedent::Skip(Skip::AlreadyFired {
            at: previous.time.0,
            pending: true,
        });
    }
    let since =
        Duration::try_from(episode.now.duration_since(previous.time.0)).unwrap_or(Duration::ZERO);
    if since < episode.cooldown {
        return Precedent::Skip(Skip::Cooldown {
            last: previous.time.0,
        });
    }
    Precedent::Fire
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
    /// Where each tenant's actions of the last hour are counted, for every replica.
    ledger: Option<Ledger>,
    /// This replica, and whether another replica is alive (a member of the
    /// shard): a firing under way on a live replica is not resumed here.
    replica: Option<(String, Alive)>,
}

/// Whether the replica of this name is alive.
pub type Alive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Whether a firing run `by` a replica is under way on another one than `me`
/// that is `alive`.
fn runs_elsewhere(by: Option<&str>, me: &str, alive: &dyn Fn(&str) -> bool) -> bool {
    by.is_some_and(|by| by != me && alive(by))
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
            ledger: None,
            replica: None,
        }
    }

    /// Counts actions against `maxActionsPerHour` in `ledger` (without one, a
    /// tenant whose quota sets a budget has no action run).
    pub fn with_ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Names the firings this dispatcher records `me`, and leaves alone a
    /// firing under way on another replica that `alive` says still runs (two
    /// replicas both hear a target while one hands it over to the other).
    pub fn with_replica(mut self, me: String, alive: Alive) -> Self {
        self.replica = Some((me, alive));
        self
    }

    /// Whether `firing` is under way on another replica that is alive.
    fn run_elsewhere(&self, firing: &RuleFiring) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|(me, alive)| runs_elsewhere(firing.by.as_deref(), me, &**alive))
    }

    /// The action ledger, when actions are counted in one.
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Takes a slot of the tenant's hourly budget for an action in `namespace`, or
    /// says why not; waits (bounded) while the apiserver is unavailable.
    async fn take_budget(&self, namespace: &str) -> Result<(), String> {
        let Some(budget) = self.tenants.action_budget(namespace) else {
            return Ok(());
        };
        let ActionBudget {
            tenant,
            per_hour,
            named,
        } = budget;
        if per_hour == 0 {
            return Err(format!("{named} allows no actions"));
        }
        let Some(ledger) = &self.ledger else {
            return Err(format!(
                "{named} limits actions to {per_hour} per hour and this replica has no action ledger"
            ));
        };
        let taken = (|| ledger.take(&tenant, per_hour, Timestamp::now().as_second()))
            .retry(patience(FENCE_PATIENCE))
            .when(|r: &Refused| matches!(r, Refused::Unavailable(_)))
            .await;
        match taken {
            Ok(()) => Ok(()),
            Err(Refused::UsedUp { frees_at, .. }) => {
                let next = Timestamp::from_second(frees_at)
                    .map(|t| format!("; the next frees at {t}"))
                    .unwrap_or_default();
                Err(format!(
                    "{named} allows {per_hour} actions per hour and they are used up{next}"
                ))
            }
            Err(Refused::Unavailable(why) | Refused::Unreadable(why)) => Err(format!(
                "{named} limits actions to {per_hour} per hour and {why}"
            )),
        }
    }

    /// A client that acts as `system:serviceaccount:<namespace>:<account>`.
    pub fn impersonating(
        &self,
        namespace: &str,
        account: &str,
    ) -> Result<kube::Client, ActionError> {
        // A name with a `:` would make another user name than a ServiceAccount's.
        crate::names::subdomain(account)
            .map_err(|why| ActionError::Invalid(format!("spec.serviceAccountName: {why}")))?;
        let user = format!("system:serviceaccount:{namespace}:{account}");
        if let Some(client) = self.clients.get(&user) {
            return Ok(client);
        }
        let client = crate::cluster::client(&acting_as(&self.config, &user)).map_err(|e| {
            ActionError::Unavailable(format!("cannot build a client for {user}: {e}"))
        })?;
        self.clients.insert(user, client.clone());
        Ok(client)
    }

    /// Whether the action of step `index` of `rule` is safe to repeat.
    fn resumable(&self, rule: &ActionRule, index: usize) -> bool {
        rule.steps()
            .get(index)
            .and_then(|step| self.registry.get(step.action))
            .is_some_and(|a| a.resumable())
    }

    /// Records the firing in status unless it is inside the cooldown or another
    /// dispatcher recorded it first; the time the actions run as (the firing's
    /// own, or that of an unfinished firing of the same episode it resumes) and
    /// the step to start at.
    pub async fn fence(&self, firing: &Firing) -> Result<Result<Fenced, Skip>, ActionError> {
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
        let mut record =
            RuleFiring::new(firing.rule_name.clone(), firing.target.clone(), firing.now);
        record.by = self.replica.as_ref().map(|(me, _)| me.clone());
        if let Some(previous) = &seen {
            let under_way = previous.steps.len();
            let resumable = under_way < firing.rule.steps().len()
                && self.resumable(&firing.rule, under_way)
                && !self.run_elsewhere(previous);
            match judge(previous, &Episode::of(firing), resumable) {
                Precedent::Fire => {}
                Precedent::Resume => {
                    record = RuleFiring {
                        resumed: Some(Time(Timestamp::now())),
                        by: record.by.clone(),
                        ..previous.clone()
                    };
                }
                Precedent::Skip(skip) => return Ok(Err(skip)),
            }
        }
        let fenced = Fenced {
            at: record.time.0,
            from: record.steps.len(),
        };
        for _ in 0..FENCE_ATTEMPTS {
            let mut status = app.status.clone().unwrap_or_default();
            record_firing(&mut status.firings, record.clone());
            app.status = Some(status);
            // replace_status carries metadata.resourceVersion: a concurrent write fails it.
            match apps
                .replace_status(&name, &PostParams::default(), &app)
                .await
            {
                Ok(_) => return Ok(Ok(fenced)),
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

    /// Records how step `index` of the firing of `firing`'s rule for its target
    /// at `fired_at` ended, and with the `last` step that the firing is done, so
    /// that no replica runs it again (`dispatch` retries it through a short
    /// apiserver outage). Whether the record was still this dispatcher's to
    /// write: `false` when it has moved on (another replica took the firing
    /// over and recorded this step first) or is gone.
    pub async fn finish_step(
        &self,
        firing: &Firing,
        fired_at: Timestamp,
        index: usize,
        result: &StepResult,
        last: bool,
    ) -> Result<bool, ActionError> {
        self.update_record(
            &firing.app,
            &firing.rule_name,
            &firing.target,
            Which::At(fired_at),
            "record that an action finished",
            |r| {
                if r.done.is_some() || r.steps.len() != index {
                    return Edit::Gone;
                }
                r.steps.push(result.clone());
                if last {
                    set_once(&mut r.done, Timestamp::now());
                }
                Edit::Write
            },
        )
        .await
    }

    /// Records that the episode of `rule` for `target` that fired at `fired_at`
    /// ended, as seen at `ended_at` (the poll that saw its condition false), so
    /// that a replica taking over fires the next one.
    ///
    /// A firing recorded *before* `fired_at` ended by then too (the condition held
    /// at `fired_at` and was false at `ended_at`, later): it is the episode this
    /// replica's firing was still waiting to adopt (see `act` in the monitor), and
    /// its end is written now, so that it survives this replica stopping during
    /// the wait. The earliest end seen wins (`keep_earliest`): another replica's
    /// earlier view of the end may still arrive and make that firing a new episode.
    /// Nothing to do when status holds a later firing by then.
    pub async fn clear(
        &self,
        app: &TargetApp,
        rule: &str,
        target: &str,
        fired_at: Timestamp,
        ended_at: Timestamp,
    ) -> Result<(), ActionError> {
        self.update_record(
            app,
            rule,
            target,
            Which::AtOrBefore(fired_at),
            "record the end of an episode",
            |r| {
                if r.time.0.as_second() < ended_at.as_second()
                    && keep_earliest(&mut r.cleared, ended_at)
                {
                    Edit::Write
                } else {
                    Edit::Keep
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Applies `change` to the status record of `rule` for `target` that `which`
    /// names, with optimistic concurrency; whether the record was there to
    /// change (`change` did not find it `Gone`, nor status another firing).
    async fn update_record(
        &self,
        app: &TargetApp,
        rule: &str,
        target: &str,
        which: Which,
        doing: &str,
        change: impl Fn(&mut RuleFiring) -> Edit,
    ) -> Result<bool, ActionError> {
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
                s.firings
                    .iter_mut()
                    .find(|f| f.rule == rule && f.target == target && which.matches(f))
            }) else {
                return Ok(false);
            };
            match change(record) {
                Edit::Write => {}
                Edit::Keep => return Ok(true),
                Edit::Gone => return Ok(false),
            }
            match apps
                .replace_status(&name, &PostParams::default(), &current)
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(ActionError::from_kube(&what, e)),
            }
        }
        Err(ActionError::Refused(format!(
            "{what}: status kept changing; gave up"
        )))
    }

    /// Takes the tenant's budget, fences `firing` and, if it is ours, runs its
    /// rule's actions in order, recording each as it finishes.
    pub async fn dispatch(&self, firing: Firing) -> Result<Dispatched, ActionError> {
        let dry_run = firing.app.spec.dry_run;
        let namespace = firing.app.namespace().unwrap_or_default();
        // The tenant's budget first, dry runs included: a tenant over it costs the
        // apiserver no status write (and a dry run is no way around it).
        if let Err(why) = self.take_budget(&namespace).await {
            return Ok(Dispatched::Skipped(Skip::QuotaExceeded { why }));
        }
        // A firing seen while the apiserver is down is not lost: the fence waits for
        // it (bounded), and then decides on fresh status as always.
        let fenced = match (|| self.fence(&firing))
            .retry(patience(FENCE_PATIENCE))
            .when(ActionError::is_transient)
            .await?
        {
            Ok(fenced) => fenced,
            Err(skip) => return Ok(Dispatched::Skipped(skip)),
        };
        let steps = firing.rule.steps();
        let mut ran = Vec::new();
        let mut stopped = None;
        for step in steps.iter().skip(fenced.from) {
            // The first step's budget was taken before the fence.
            if step.index > fenced.from
                && let Err(why) = self.take_budget(&namespace).await
            {
                let result = step_result(step, StepOutcome::NotRun, Some("quota"));
                // Recorded as not run, which ends the firing (a record that
                // cannot be written is logged, and the firing ends here anyway).
                let _ = self
                    .record_step(&firing, fenced.at, step.index, &result, true)
                    .await;
                stopped = Some(Stopped::Quota(why));
                break;
            }
            let run = self.run_step(&firing, step, fenced.at, dry_run).await;
            let failed = run.result.is_err();
            let last = failed || step.index + 1 == steps.len();
            let result = run.recorded(step, dry_run);
            ran.push(run);
            match self
                .record_step(&firing, fenced.at, step.index, &result, last)
                .await
            {
                Ok(true) if failed => stopped = Some(Stopped::Failed),
                Ok(true) => continue,
                Ok(false) if !last => stopped = Some(Stopped::TakenOver),
                Err(why) if !last => stopped = Some(Stopped::Unrecorded(why)),
                _ => {}
            }
            break;
        }
        Ok(Dispatched::Ran {
            steps: ran,
            of: steps.len(),
            from: fenced.from,
            stopped,
            dry_run,
            fired_at: fenced.at,
        })
    }

    /// Runs one step of a fenced firing; an action that is safe to repeat (see
    /// `Action::resumable`) is tried again while the apiserver is unavailable
    /// (reading its Secrets).
    async fn run_step(
        &self,
        firing: &Firing,
        step: &Step<'_>,
        fired_at: Timestamp,
        dry_run: bool,
    ) -> StepRun {
        let started = std::time::Instant::now();
        let resumable = self.resumable(&firing.rule, step.index);
        let result = (|| self.run(firing, step, fired_at, dry_run))
            .retry(patience(FINISH_PATIENCE))
            .when(|e: &ActionError| resumable && e.is_transient())
            .await;
        StepRun {
            index: step.index,
            action: step.action.to_owned(),
            result,
            duration: started.elapsed(),
        }
    }

    /// Records a step's result (`finish_step`), waiting out a short apiserver
    /// outage; whether the record was still this dispatcher's, or why it could
    /// not be written (then a replica taking over may run the step again, with
    /// the same idempotency key, if it is safe to repeat).
    async fn record_step(
        &self,
        firing: &Firing,
        fired_at: Timestamp,
        index: usize,
        result: &StepResult,
        last: bool,
    ) -> Result<bool, String> {
        let recorded = (|| self.finish_step(firing, fired_at, index, result, last))
            .retry(patience(FINISH_PATIENCE))
            .when(ActionError::is_transient)
            .await;
        recorded.map_err(|e| {
            tracing::warn!(namespace = %firing.app.namespace().unwrap_or_default(), tapp = %firing.app.name_any(),
                target = %firing.target, rule = %firing.rule_name, step = index, error = %e,
                "cannot record that an action finished; a replica taking over may run it again (same idempotency key)");
            e.to_string()
        })
    }

    async fn run(
        &self,
        firing: &Firing,
        step: &Step<'_>,
        fired_at: Timestamp,
        dry_run: bool,
    ) -> Result<Outcome, ActionError> {
        let name = step.action;
        self.registry
            .validate(name, step.parameters)
            .map_err(|problems| ActionError::Invalid(params::joined(&problems)))?;
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
            step: step.index,
            dry_run,
        };
        let params = Params::new(step.parameters);
        let timeout = action.timeout(&params).unwrap_or(self.default_timeout);
        let timeout = quota
            .max_action_seconds
            .map_or(timeout, |max| timeout.min(Duration::from_secs(max.into())));
        match tokio::time::timeout(timeout, action.run(&ctx, &params)).await {
            Ok(result) => result,
            Err(_) => Err(ActionError::Timeout(timeout)),
        }
    }
}

/// What status records of a step: how it ended, and why when it failed or did
/// not run.
fn step_result(step: &Step<'_>, result: StepOutcome, reason: Option<&str>) -> StepResult {
    StepResult {
        action: step.action.to_owned(),
        result,
        reason: reason.map(str::to_owned),
        time: Time(Timestamp::now()),
    }
}

impl StepRun {
    /// What status records of this step.
    fn recorded(&self, step: &Step<'_>, dry_run: bool) -> StepResult {
        match &self.result {
            Ok(_) if dry_run => step_result(step, StepOutcome::DryRun, None),
            Ok(_) => step_result(step, StepOutcome::Succeeded, None),
            Err(e) => step_result(step, StepOutcome::Failed, Some(e.reason())),
        }
    }
}

/// The operator's client configuration, acting as `user` and as nothing else:
/// whatever identity the operator's own kubeconfig impersonates (a user, its
/// groups, UID or extra fields) is replaced, never combined with the tenant's.
fn acting_as(base: &kube::Config, user: &str) -> kube::Config {
    let mut config = base.clone();
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = None;
    config.auth_info.impersonate_uid = None;
    config.auth_info.impersonate_user_extra = None;
    // A 429 from an action is a refusal (an eviction a PodDisruptionBudget forbids):
    // report it, do not retry it in a loop.
    config.default_retry = false;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_client_acts_as_the_tenants_account_alone() {
        let mut operator = kube::Config::new("https://apiserver:6443".parse().unwrap_or_default());
        operator.auth_info.impersonate = Some("admin".into());
        operator.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
        operator.auth_info.impersonate_uid = Some("0000-admin".into());
        operator.auth_info.impersonate_user_extra =
            Some([("scopes".to_owned(), vec!["everything".to_owned()])].into());
        let user = "system:serviceaccount:team-a:probe";
        let tenant = acting_as(&operator, user);
        assert_eq!(tenant.auth_info.impersonate.as_deref(), Some(user));
        assert_eq!(tenant.auth_info.impersonate_groups, None);
        assert_eq!(tenant.auth_info.impersonate_uid, None);
        assert_eq!(tenant.auth_info.impersonate_user_extra, None);
        assert!(!tenant.default_retry);
        assert_eq!(tenant.cluster_url, operator.cluster_url);
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn recorded(time: i64, cleared: Option<i64>, done: bool) -> RuleFiring {
        RuleFiring {
            rule: "r".into(),
            target: "t".into(),
            time: Time(at(time)),
            cleared: cleared.map(|c| Time(at(c))),
            done: done.then(|| Time(at(time))),
            resumed: None,
            by: None,
            steps: Vec::new(),
        }
    }

    #[test]
    fn a_firing_under_way_on_a_live_replica_is_left_to_it() {
        let alive = |replica: &str| replica == "kco-1";
        assert!(runs_elsewhere(Some("kco-1"), "kco-0", &alive));
        // Its replica gone, or this one, or nobody named: taken over as before.
        assert!(!runs_elsewhere(Some("kco-2"), "kco-0", &alive));
        assert!(!runs_elsewhere(Some("kco-1"), "kco-1", &alive));
        assert!(!runs_elsewhere(None, "kco-0", &alive));
    }

    fn episode(now: i64) -> Episode {
        Episode {
            now: at(now),
            cooldown: Duration::ZERO,
            after: None,
            false_at: None,
        }
    }

    fn already(at_: i64, pending: bool) -> Precedent {
        Precedent::Skip(Skip::AlreadyFired {
            at: at(at_),
            pending,
        })
    }

    #[test]
    fn an_open_episode_is_not_fired_again() {
        let open = recorded(0, None, true);
        assert_eq!(judge(&open, &episode(30), false), already(0, true));
        // Seen false in the same second as the record: it may be the record's own
        // stretch starting, so it proves nothing.
        let same_second = Episode {
            false_at: Some(at(0)),
            ..episode(30)
        };
        assert_eq!(judge(&open, &same_second, false), already(0, true));
    }

    #[test]
    fn an_episode_seen_to_end_here_fires_anew() {
        let open = recorded(0, None, true);
        let ended_here = Episode {
            after: Some(at(0)),
            ..episode(30)
        };
        assert_eq!(judge(&open, &ended_here, false), Precedent::Fire);
        let seen_false = Episode {
            false_at: Some(at(1)),
            ..episode(30)
        };
        assert_eq!(judge(&open, &seen_false, false), Precedent::Fire);
    }

    #[test]
    fn a_recorded_end_counts_only_before_the_firing() {
        // Ended at 20 as seen by its replica: a firing at 30 is a new episode.
        assert_eq!(
            judge(&recorded(0, Some(20), true), &episode(30), false),
            Precedent::Fire
        );
        // The same second leaves the order open: taken as a repeat.
        // (An earlier end may still be recorded by another replica: pending.)
        assert_eq!(
            judge(&recorded(0, Some(30), true), &episode(30), false),
            already(0, true)
        );
        // Ended at 40: the firing at 30 came while that episode went on.
        assert_eq!(
            judge(&recorded(0, Some(40), true), &episode(30), false),
            already(0, true)
        );
    }

    #[test]
    fn the_earliest_end_seen_is_kept() {
        let mut cleared = None;
        assert!(keep_earliest(&mut cleared, at(20)));
        assert!(
            !keep_earliest(&mut cleared, at(25)),
            "a later view changes nothing"
        );
        assert!(!keep_earliest(&mut cleared, at(20)));
        assert!(keep_earliest(&mut cleared, at(12)), "an earlier view wins");
        assert_eq!(cleared, Some(Time(at(12))));
        // So a firing at 15, first judged a repeat (end 20 recorded after it), is a
        // new episode once the earlier end arrives.
        assert_eq!(
            judge(&recorded(0, Some(20), true), &episode(15), false),
            already(0, true)
        );
        assert_eq!(
            judge(&recorded(0, Some(12), true), &episode(15), false),
            Precedent::Fire
        );
    }

    #[test]
    fn an_end_is_written_to_its_firing_or_the_one_it_was_adopting() {
        let record = recorded(10, None, true);
        assert!(Which::At(at(10)).matches(&record));
        assert!(!Which::At(at(12)).matches(&record));
        assert!(
            Which::AtOrBefore(at(12)).matches(&record),
            "the firing at 12 was waiting to adopt the one at 10"
        );
        assert!(
            !Which::AtOrBefore(at(8)).matches(&record),
            "a later firing is another episode's"
        );
    }

    #[test]
    fn a_firing_overtaken_by_a_later_record_is_skipped() {
        let later = recorded(40, None, false);
        assert_eq!(judge(&later, &episode(30), true), already(40, false));
    }

    #[test]
    fn the_cooldown_holds_back_a_new_episode_not_the_same_one() {
        let cooled = Episode {
            cooldown: Duration::from_secs(60),
            ..episode(30)
        };
        assert_eq!(
            judge(&recorded(0, Some(5), true), &cooled, false),
            Precedent::Skip(Skip::Cooldown { last: at(0) })
        );
        // The same episode is a repeat, cooldown or not; an unfinished firing of
        // it is resumed at once (a replica taking over within the cooldown).
        assert_eq!(
            judge(&recorded(0, None, true), &cooled, false),
            already(0, true)
        );
        assert_eq!(
            judge(&recorded(0, None, false), &cooled, true),
            Precedent::Resume
        );
    }

    #[test]
    fn only_an_unfinished_open_firing_of_a_resumable_action_is_resumed() {
        let unfinished = recorded(0, None, false);
        assert_eq!(judge(&unfinished, &episode(30), true), Precedent::Resume);
        assert_eq!(
            judge(&unfinished, &episode(30), false),
            already(0, true),
            "not resumable: never repeated without knowing its outcome"
        );
        assert_eq!(
            judge(&recorded(0, None, true), &episode(30), true),
            already(0, true),
            "finished"
        );
        assert_eq!(
            judge(&recorded(0, Some(10), false), &episode(30), true),
            Precedent::Fire,
            "its episode ended: this is a new one"
        );
    }
}
