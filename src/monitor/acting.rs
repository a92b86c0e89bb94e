//! Running a firing's actions off the monitor's loop, and telling what came of
//! them: an Event per action that ran (on the TargetApp and the pod), one for
//! the actions that did not, and the actions metrics.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::app::{Adopt, Message, actions_named, publish};
use crate::actions::{ActionError, Dispatched, Firing, Skip, StepRun, Stopped};
use crate::events::Reason;

/// How long a firing that found its episode already fired, with no recorded end,
/// waits for that end, in steps (about 30 s in all): the replica that saw it may
/// still be writing it (a hand-off in progress, an apiserver coming back). An end
/// recorded before this firing makes it a new episode, fired late.
const END_WAITS: [Duration; 5] = [
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(8),
    Duration::from_secs(12),
];

/// Fences a firing, runs its actions, and reports what happened.
pub(super) async fn act(
    ctx: Arc<Context>,
    reference: ObjectReference,
    firing: Firing,
    inbox: mpsc::Sender<Box<Message>>,
    cancel: CancellationToken,
) {
    let mut dispatched = ctx.dispatcher.dispatch(firing.clone()).await;
    // Re-judged while an earlier end of the episode may still be recorded by the
    // replica that saw it. Meanwhile the monitor knows this stretch by its own
    // time; an end it sees is written at once to the recorded firing (before this
    // one: `Dispatcher::clear`), where the earliest end wins, so that it is not
    // lost if this replica stops during the wait.
    let mut waited = false;
    for wait in END_WAITS {
        let Ok(Dispatched::Skipped(Skip::AlreadyFired { pending: true, .. })) = &dispatched else {
            break;
        };
        waited = true;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        dispatched = ctx.dispatcher.dispatch(firing.clone()).await;
    }
    // What this stretch's firing is known as in the end, for the monitor's state.
    let known_as = match &dispatched {
        Ok(Dispatched::Skipped(Skip::AlreadyFired { at, .. } | Skip::LostRace { at })) => Some(*at),
        Ok(Dispatched::Ran {
            fired_at: ran_as, ..
        }) => Some(*ran_as),
        _ => None,
    };
    // Told even when it is this firing's own time: the stretch may have ended
    // while the fence waited, its end then finding no record to go to.
    if let Some(at) = known_as {
        let _ = inbox
            .send(Box::new(Message::Adopt(Adopt {
                target: firing.target.clone(),
                rule: firing.rule_name.clone(),
                own: firing.now,
                at,
            })))
            .await;
    }
    let teller = Teller::new(&ctx, &reference, &firing);
    match dispatched {
        Ok(Dispatched::Skipped(skip)) => teller.skipped(skip),
        Ok(Dispatched::Ran {
            steps,
            of,
            from,
            stopped,
            dry_run,
            fired_at,
        }) => {
            let late = if fired_at.as_second() != firing.now.as_second() {
                format!(
                    " (resumed the firing of {fired_at}, whose replica stopped before it finished)"
                )
            } else if waited {
                " (late: the end of the episode before it was recorded meanwhile)".to_owned()
            } else {
                String::new()
            };
            for (i, step) in steps.iter().enumerate() {
                teller.ran(step, of, dry_run, if i == 0 { late.as_str() } else { "" });
            }
            let next = steps.last().map_or(from, |s| s.index + 1);
            if let Some(stopped) = stopped
                && next < of
            {
                teller.stopped(&stopped, next, steps.last());
            }
        }
        Err(e) => {
            ctx.metrics.errors.with_label_values(&["fence"]).inc();
            teller.not_run(&e);
        }
    }
}

/// Tells what became of one firing's actions.
struct Teller<'a> {
    ctx: &'a Context,
    reference: &'a ObjectReference,
    firing: &'a Firing,
    namespace: String,
    app: String,
    /// The rule's actions, in order.
    actions: Vec<String>,
}

impl<'a> Teller<'a> {
    fn new(ctx: &'a Context, reference: &'a ObjectReference, firing: &'a Firing) -> Self {
        Self {
            ctx,
            reference,
            firing,
            namespace: firing.app.namespace().unwrap_or_default(),
            app: firing.app.name_any(),
            actions: firing
                .rule
                .steps()
                .iter()
                .map(|s| s.action.to_owned())
                .collect(),
        }
    }

    fn count(&self, action: &str, result: &str) {
        self.ctx
            .metrics
            .actions
            .with_label_values(&[self.namespace.as_str(), self.app.as_str(), action, result])
            .inc();
    }

    fn publish(&self, reason: Reason, note: String) {
        publish(
            self.ctx,
            self.reference,
            &self.namespace,
            reason,
            note,
            self.firing.pod.as_deref(),
        );
    }

    /// `webhook, then restart_pod for mina-0 (rule stuck)`: the rule's actions
    /// from `from` on; past the first, with the step they start at (`… (rule
    /// stuck, step 2 of 2)`).
    fn subject(&self, from: usize) -> String {
        let (target, rule) = (&self.firing.target, &self.firing.rule_name);
        let actions = actions_named(self.actions.get(from..).unwrap_or_default(), "");
        if from == 0 {
            format!("{actions} for {target} (rule {rule})")
        } else {
            let of = self.actions.len();
            format!(
                "{actions} for {target} (rule {rule}, step {} of {of})",
                from + 1
            )
        }
    }

    /// The whole firing was skipped: no action ran.
    fn skipped(&self, skip: Skip) {
        let (counted, why) = match skip {
            Skip::Cooldown { last } => (
                "skipped",
                format!(
                    "it last ran at {last}, within the cooldown of {}s",
                    self.firing.cooldown.as_secs()
                ),
            ),
            Skip::QuotaExceeded { why } => {
                self.throttled(&format!("{} not run: {why}", self.subject(0)));
                ("throttled", why)
            }
            Skip::AlreadyFired { at, .. } => (
                "skipped",
                format!(
                    "it already ran for this episode at {at} (the condition has not been seen false since)"
                ),
            ),
            Skip::LostRace { .. } => (
                "skipped",
                "another KCO replica acted on this firing".to_owned(),
            ),
        };
        for action in &self.actions {
            self.count(action, counted);
        }
        self.publish(
            Reason::ActionSkipped,
            format!("{} skipped: {why}", self.subject(0)),
        );
    }

    /// The tenant's budget refused an action: a QuotaExceeded Event.
    fn throttled(&self, note: &str) {
        self.ctx
            .metrics
            .throttled
            .with_label_values(&[self.namespace.as_str(), "action"])
            .inc();
        self.publish(Reason::QuotaExceeded, note.to_owned());
    }

    /// One action ran: its Event, its result and duration metrics.
    fn ran(&self, step: &StepRun, of: usize, dry_run: bool, late: &str) {
        let action = step.action.as_str();
        let (target, rule) = (&self.firing.target, &self.firing.rule_name);
        let subject = if of > 1 {
            format!(
                "{action} for {target} (rule {rule}, step {} of {of})",
                step.index + 1
            )
        } else {
            format!("{action} for {target} (rule {rule})")
        };
        self.ctx
            .metrics
            .action_duration
            .with_label_values(&[self.namespace.as_str(), self.app.as_str(), action])
            .observe(step.duration.as_secs_f64());
        let (reason, result, note) = match &step.result {
            Ok(outcome) if dry_run => (
                Reason::ActionSkipped,
                "dry_run",
                format!("dry run of {subject}: {}", outcome.message),
            ),
            Ok(outcome) => (
                Reason::ActionSucceeded,
                "success",
                format!("{subject}: {}{late}", outcome.message),
            ),
            Err(e) => {
                tracing::warn!(namespace = %self.namespace, tapp = %self.app, target = %self.firing.target,
                    rule = %self.firing.rule_name, action, step = step.index, correlation_id = %self.firing.correlation_id,
                    reason = e.reason(), error = %e, "action failed");
                (
                    Reason::ActionFailed,
                    "failure",
                    format!("{subject} failed ({}): {e}{late}", e.reason()),
                )
            }
        };
        self.count(action, result);
        self.publish(reason, note);
    }

    /// The actions from `next` on did not run, for `stopped`'s reason.
    fn stopped(&self, stopped: &Stopped, next: usize, last: Option<&StepRun>) {
        let before = last.map_or_else(String::new, |s| {
            format!("step {} ({})", s.index + 1, s.action)
        });
        let (counted, why) = match stopped {
            Stopped::Failed => ("skipped", format!("{before} failed")),
            Stopped::Quota(why) => {
                self.throttled(&format!("{} not run: {why}", self.subject(next)));
                ("throttled", why.clone())
            }
            Stopped::TakenOver => (
                "skipped",
                "another KCO replica took this firing over".to_owned(),
            ),
            Stopped::Unrecorded(e) => (
                "skipped",
                format!(
                    "the result of {before} could not be recorded ({e}), and a replica taking over could run them again"
                ),
            ),
        };
        for action in self.actions.iter().skip(next) {
            self.count(action, counted);
        }
        self.publish(
            Reason::ActionSkipped,
            format!("{} not run: {why}", self.subject(next)),
        );
    }

    /// The firing could not be fenced: no action ran.
    fn not_run(&self, e: &ActionError) {
        for action in &self.actions {
            self.count(action, "failure");
        }
        self.publish(
            Reason::ActionFailed,
            format!("{} not run: {e}", self.subject(0)),
        );
    }
}
