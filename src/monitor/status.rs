//! A TargetApp's status from what its monitor knows, and when it is worth writing.
//! Pure: the monitor writes what `build` returns when `should_write` says so.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::state::TargetState;
use crate::targetapp::{
    MAX_STATUS_TARGETS, Phase, RuleFiring, SubscriptionState, TargetAppStatus, TargetStatus,
};

/// The most firings a status keeps (the newest).
pub const MAX_STATUS_FIRINGS: usize = 100;

/// What the status is built from.
pub struct Inputs<'a> {
    pub generation: Option<i64>,
    pub suspended: bool,
    /// Why the spec cannot be monitored, if it cannot.
    pub invalid: Option<&'a str>,
    /// Whether the pod list has been read at least once.
    pub discovered: bool,
    pub targets: &'a BTreeMap<String, Box<TargetState>>,
    /// Where each target's subscriptions stand, and why not open.
    pub subscriptions: &'a BTreeMap<String, (SubscriptionState, Option<String>)>,
    pub shard: &'a str,
    pub now: Timestamp,
    pub exports: Exports<'a>,
}

/// What the status says of `spec.metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exports<'a> {
    /// The TargetApp exports no series.
    Nothing,
    /// Every target's series are exported.
    All,
    /// Some target's series are not: why (the tenant's budget).
    Refused(&'a str),
}

/// The status for `inputs`; conditions keep their transition time from `previous`
/// while their status does not change.
pub fn build(inputs: &Inputs<'_>, previous: Option<&TargetAppStatus>) -> TargetAppStatus {
    let total = inputs.targets.len();
    let up = inputs
        .targets
        .values()
        .filter(|t| t.up == Some(true))
        .count();
    let polled = inputs.targets.values().filter(|t| t.up.is_some()).count();
    let (phase, ready, reason, message) = if let Some(problem) = inputs.invalid {
        (Phase::Failed, false, "InvalidSpec", problem.to_owned())
    } else if inputs.suspended {
        (
            Phase::Suspended,
            false,
            "Suspended",
            "spec.suspend is true: not polling".to_owned(),
        )
    } else if !inputs.discovered || (total > 0 && polled == 0) {
        (
            Phase::Initializing,
            false,
            "Initializing",
            "discovering and polling targets".to_owned(),
        )
    } else if total == 0 {
        (
            Phase::Degraded,
            false,
            "NoTargets",
            "no Ready pod with an IP matches the selector".to_owned(),
        )
    } else if up < total {
        (
            Phase::Degraded,
            false,
            "TargetsDown",
            format!("{} of {total} targets failed their last poll", total - up),
        )
    } else {
        (
            Phase::Monitoring,
            true,
            "AllTargetsUp",
            format!("all {total} targets answer"),
        )
    };

    let mut targets: Vec<&TargetState> = inputs.targets.values().map(|t| &**t).collect();
    // Failing targets first: with many pods, the ones an on-call engineer needs stay in.
    targets.sort_by_key(|t| (t.up == Some(true), t.target.name().to_owned()));
    let targets = targets
        .into_iter()
        .take(MAX_STATUS_TARGETS)
        .map(|t| {
            let subscribing = inputs.subscriptions.get(t.target.name());
            TargetStatus {
                pod: t.target.pod.clone(),
                endpoint: t.target.url.clone(),
                up: t.up == Some(true),
                since: t.since.map(Time),
                last_error: t.last_error.as_ref().map(ToString::to_string),
                subscriptions: subscribing.map(|(state, _)| *state),
                subscription_error: subscribing.and_then(|(_, why)| why.clone()),
            }
        })
        .collect();

    let ready_status = if ready { "True" } else { "False" };
    let mut conditions = vec![condition(
        inputs,
        previous,
        ("Ready", ready_status, reason),
        message,
    )];
    match inputs.exports {
        Exports::Nothing => {}
        Exports::All => conditions.push(condition(
            inputs,
            previous,
            ("MetricsExported", "True", "Exported"),
            "the fields of spec.metrics are exported as kco_target_* series".to_owned(),
        )),
        Exports::Refused(why) => conditions.push(condition(
            inputs,
            previous,
            ("MetricsExported", "False", "QuotaExceeded"),
            why.to_owned(),
        )),
    }
    TargetAppStatus {
        phase: Some(phase),
        conditions,
        observed_generation: inputs.generation,
        shard: Some(inputs.shard.to_owned()),
        targets_ready: Some(format!("{up}/{total}")),
        targets,
        // Firings are written only by the action dispatcher's fence (optimistic
        // concurrency); leaving them out here keeps this merge patch off them.
        firings: Vec::new(),
    }
}

/// A condition of `type_` with `status`, keeping its transition time from
/// `previous` while its status does not change.
fn condition(
    inputs: &Inputs<'_>,
    previous: Option<&TargetAppStatus>,
    (type_, status, reason): (&str, &str, &str),
    message: String,
) -> Condition {
    crate::conditions::condition(
        crate::conditions::Said {
            type_,
            status,
            reason,
            message,
        },
        previous.map_or(&[][..], |p| &p.conditions),
        inputs.generation,
        inputs.now,
    )
}

/// Records a firing, replacing the previous one of the same rule and target and
/// keeping the newest `MAX_STATUS_FIRINGS`.
pub fn record_firing(firings: &mut Vec<RuleFiring>, firing: RuleFiring) {
    firings.retain(|f| !(f.rule == firing.rule && f.target == firing.target));
    firings.push(firing);
    if firings.len() > MAX_STATUS_FIRINGS {
        firings.sort_by_key(|f| f.time.0);
        let excess = firings.len() - MAX_STATUS_FIRINGS;
        firings.drain(..excess);
    }
}

/// Whether to write `next` given what was written last: only when something a
/// user would act on changed (phase, conditions, a target up or down, its error,
/// the shard). Never as a heartbeat: with thousands of TargetApps, a periodic
/// rewrite of each is a steady write load on the apiserver, fanned out to every
/// replica's watch, that tells nobody anything.
pub fn should_write(written: Option<&TargetAppStatus>, next: &TargetAppStatus) -> bool {
    let Some(written) = written else {
        return true;
    };
    // Every field but the firings, which are the dispatcher's and never part of
    // this write; a field added to the status must be named here.
    let TargetAppStatus {
        phase,
        conditions,
        observed_generation,
        shard,
        targets_ready,
        targets,
        firings: _,
    } = next;
    *phase != written.phase
        || *conditions != written.conditions
        || *observed_generation != written.observed_generation
        || *shard != written.shard
        || *targets_ready != written.targets_ready
        || *targets != written.targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::discovery::Target;
    use crate::monitor::poll::PollFailure;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn target(name: &str, up: Option<bool>, polled: i64) -> (String, Box<TargetState>) {
        let mut t = TargetState::new(
            Target {
                pod: Some(name.into()),
                url: format!("http://{name}/graphql"),
            },
            &[],
            |_| None,
        );
        t.up = up;
        t.last_poll = up.map(|_| at(polled));
        t.since = t.last_poll;
        if up == Some(false) {
            t.last_error = Some(PollFailure::Status(500));
        }
        (name.to_owned(), Box::new(t))
    }

    static UNSUBSCRIBED: BTreeMap<String, (SubscriptionState, Option<String>)> = BTreeMap::new();

    fn inputs(targets: &BTreeMap<String, Box<TargetState>>) -> Inputs<'_> {
        Inputs {
            generation: Some(3),
            suspended: false,
            invalid: None,
            discovered: true,
            targets,
            subscriptions: &UNSUBSCRIBED,
            shard: "kco-0",
            now: at(100),
            exports: Exports::Nothing,
        }
    }

    #[test]
    fn each_target_says_where_its_subscriptions_stand() {
        let targets: BTreeMap<_, _> =
            [target("a", Some(true), 1), target("b", Some(true), 2)].into();
        let s = build(&inputs(&targets), None);
        assert_eq!(
            s.targets[0].subscriptions, None,
            "no subscriptions asked for"
        );
        let standing = BTreeMap::from([(
            "b".to_owned(),
            (
                SubscriptionState::PollingOnly,
                Some("unsupported: HTTP 400".to_owned()),
            ),
        )]);
        let s = build(
            &Inputs {
                subscriptions: &standing,
                ..inputs(&targets)
            },
            None,
        );
        let b = s
            .targets
            .iter()
            .find(|t| t.pod.as_deref() == Some("b"))
            .unwrap();
        assert_eq!(b.subscriptions, Some(SubscriptionState::PollingOnly));
        assert_eq!(
            b.subscription_error.as_deref(),
            Some("unsupported: HTTP 400")
        );
    }

    #[test]
    fn phase_follows_the_targets() {
        let all_up: BTreeMap<_, _> =
            [target("a", Some(true), 1), target("b", Some(true), 2)].into();
        let s = build(&inputs(&all_up), None);
        assert_eq!(s.phase, Some(Phase::Monitoring));
        assert_eq!(s.targets_ready.as_deref(), Some("2/2"));
        assert_eq!(s.targets[0].since, Some(Time(at(1))));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions[0].status, "True");

        let one_down: BTreeMap<_, _> =
            [target("a", Some(true), 1), target("b", Some(false), 2)].into();
        let s = build(&inputs(&one_down), None);
        assert_eq!(s.phase, Some(Phase::Degraded));
        assert_eq!(s.targets_ready.as_deref(), Some("1/2"));
        assert_eq!(
            s.targets[0].pod.as_deref(),
            Some("b"),
            "failing targets first"
        );
        assert_eq!(s.targets[0].last_error.as_deref(), Some("HTTP status 500"));

        let none: BTreeMap<String, Box<TargetState>> = BTreeMap::new();
        assert_eq!(
            build(&inputs(&none), None).conditions[0].reason,
            "NoTargets"
        );
        let unpolled: BTreeMap<_, _> = [target("a", None, 0)].into();
        assert_eq!(
            build(&inputs(&unpolled), None).phase,
            Some(Phase::Initializing)
        );
        let mut suspended = inputs(&all_up);
        suspended.suspended = true;
        assert_eq!(build(&suspended, None).phase, Some(Phase::Suspended));
        let mut invalid = inputs(&all_up);
        invalid.invalid = Some("spec.actions[0].trigger.value: needs a list");
        let failed = build(&invalid, None);
        assert_eq!(failed.phase, Some(Phase::Failed));
        assert!(failed.conditions[0].message.contains("needs a list"));
    }

    #[test]
    fn status_is_bounded_whatever_the_number_of_pods() {
        let many: BTreeMap<_, _> = (0..500)
            .map(|i| target(&format!("pod-{i:03}"), Some(i % 7 != 0), i))
            .collect();
        let s = build(&inputs(&many), None);
        assert_eq!(s.targets.len(), MAX_STATUS_TARGETS);
        assert!(
            s.targets.iter().all(|t| !t.up),
            "all kept entries are failing ones (72 fail)"
        );
        assert_eq!(s.targets_ready.as_deref(), Some("428/500"));

        let mut firings = Vec::new();
        for i in 0..300 {
            record_firing(
                &mut firings,
                RuleFiring::new("r".into(), format!("p{i}"), at(i)),
            );
        }
        record_firing(
            &mut firings,
            RuleFiring::new("r".into(), "p299".into(), at(999)),
        );
        assert_eq!(firings.len(), MAX_STATUS_FIRINGS);
        assert_eq!(firings.iter().filter(|f| f.target == "p299").count(), 1);
        assert!(
            firings.iter().all(|f| f.time.0 >= at(200)),
            "the oldest are dropped"
        );
    }

    #[test]
    fn status_is_written_on_change_never_as_a_heartbeat() {
        let before: BTreeMap<_, _> = [target("a", Some(true), 1)].into();
        let first = build(&inputs(&before), None);
        assert!(should_write(None, &first));
        assert_eq!(first.targets[0].since, Some(Time(at(1))));

        // Polled again an hour later, nothing changed: nothing to write, however
        // long it has been.
        let mut later: BTreeMap<_, _> = [target("a", Some(true), 1)].into();
        if let Some(t) = later.get_mut("a") {
            t.last_poll = Some(at(3600));
        }
        let mut hour = inputs(&later);
        hour.now = at(3600);
        let polled_again = build(&hour, Some(&first));
        assert_eq!(
            polled_again.conditions, first.conditions,
            "transition time is kept"
        );
        assert!(!should_write(Some(&first), &polled_again));

        // Firings recorded by the dispatcher are not this write's business.
        let mut with_firings = first.clone();
        with_firings
            .firings
            .push(RuleFiring::new("r".into(), "a".into(), at(50)));
        assert!(!should_write(Some(&with_firings), &polled_again));

        // A target going down is news: written, with a new transition time.
        let down: BTreeMap<_, _> = [target("a", Some(false), 31)].into();
        let mut now_down = inputs(&down);
        now_down.now = at(131);
        let changed = build(&now_down, Some(&first));
        assert!(should_write(Some(&first), &changed));
        assert_eq!(changed.targets[0].since, Some(Time(at(31))));
        assert_ne!(
            changed.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        // So are a new error text, another shard and a new generation.
        let mut error = changed.clone();
        error.targets[0].last_error = Some("timed out after 5s".into());
        assert!(should_write(Some(&changed), &error));
        let mut moved = changed.clone();
        moved.shard = Some("kco-1".into());
        assert!(should_write(Some(&changed), &moved));
        let mut edited = changed.clone();
        edited.observed_generation = Some(4);
        assert!(should_write(Some(&changed), &edited));
    }
}
