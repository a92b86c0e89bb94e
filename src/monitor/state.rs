//! What KCO knows about one target between polls, and what each new poll result
//! means: state changes, `$up` flips and trigger firings. Pure: the caller does
//! the I/O (Events, status, actions) for what `observe` returns.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::discovery::Target;
use super::poll::{PollData, PollFailure};
use crate::triggers::{
    Change, Decision, FieldPath, FiringState, Observation, Recorded, Rule, changes,
};

/// One target's memory.
#[derive(Debug, Clone)]
pub struct TargetState {
    pub target: Target,
    /// Whether the last poll succeeded (`None` before the first poll).
    pub up: Option<bool>,
    /// What the last successful poll returned, as far as it is kept (see
    /// [`Self::keeping`]).
    last_good: Option<Kept>,
    /// The fields kept of a result between polls (`None`: all of it).
    keeping: Option<Arc<BTreeSet<FieldPath>>>,
    pub last_poll: Option<Timestamp>,
    /// When `up` last changed (the first poll counts as a change).
    pub since: Option<Timestamp>,
    /// What the status said of this target when its task started (up, since): a
    /// first poll that agrees keeps that `since`.
    recorded_since: Option<(bool, Timestamp)>,
    pub last_error: Option<PollFailure>,
    /// Whether the last poll told nothing of the target (throttled, or not sent).
    pub throttled: bool,
    /// Whether a poll has succeeded yet (the kept state may hold pushed values
    /// only).
    answered: bool,
    /// One firing state per rule, in rule order.
    pub firing: Vec<FiringState>,
}

/// A kept result. As compact JSON text when that reads back exactly: a `Value`
/// takes a map node of about 600 bytes for each object in it, however few fields
/// it holds. A result with a number that has a fraction or an exponent stays a
/// `Value`: `serde_json` reads such numbers back from its own text only to
/// within the last bit, and a value that moved by a bit would look changed.
#[derive(Debug, Clone)]
enum Kept {
    Text(Box<str>),
    Value(Box<Value>),
}

impl Kept {
    fn of(value: Value) -> Self {
        if has_float(&value) {
            return Self::Value(Box::new(value));
        }
        match serde_json::to_string(&value) {
            Ok(text) => Self::Text(text.into_boxed_str()),
            Err(_) => Self::Value(Box::new(value)),
        }
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

/// What one poll result meant.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// `$up` turned false (or the first poll failed).
    PollFailed(PollFailure),
    /// `$up` turned true again.
    PollRecovered,
    /// A poll told nothing after one that did: KCO, not the target, stopped it
    /// (throttled) or could not send it (no credentials), so `$up`, the data
    /// and every rule stay as they were.
    Throttled(PollFailure),
    /// A field a trigger references changed.
    StateChanged(Change),
    /// Rule number `rule` fired; its field was `old` in the previous poll and is `new`.
    /// `after` is the previous firing whose episode this replica saw end;
    /// `false_at` the last time this replica saw the condition not hold.
    Fired {
        rule: usize,
        old: Option<Value>,
        new: Option<Value>,
        after: Option<Timestamp>,
        false_at: Option<Timestamp>,
    },
    /// The episode of rule number `rule` that fired at `fired_at` ended: its
    /// condition no longer holds (to be recorded, so that another replica taking
    /// over knows a new firing is a new episode).
    Ended { rule: usize, fired_at: Timestamp },
}

impl TargetState {
    /// A target not polled yet; `recorded(rule_name)` gives firings recorded earlier
    /// (in status, by this or another replica) so that cooldowns and episodes
    /// survive restarts and hand-offs.
    pub fn new(
        target: Target,
        rules: &[Rule],
        recorded: impl Fn(&str) -> Option<Recorded>,
    ) -> Self {
        Self {
            target,
            up: None,
            last_good: None,
            keeping: None,
            last_poll: None,
            since: None,
            recorded_since: None,
            last_error: None,
            throttled: false,
            answered: false,
            firing: rules
                .iter()
                .map(|r| FiringState::restored(recorded(&r.name)))
                .collect(),
        }
    }

    /// The same target, with what a status written earlier said of it: up or
    /// down since `at`.
    pub fn with_recorded_since(mut self, up: bool, at: Timestamp) -> Self {
        self.recorded_since = Some((up, at));
        self
    }

    /// The same target, keeping of each result only `fields` (those the rules
    /// compare, and what `/stats` shows): a whole result can be kilobytes (a Mina
    /// node's peer list).
    pub fn keeping(mut self, fields: Arc<BTreeSet<FieldPath>>) -> Self {
        self.keeping = Some(fields);
        self
    }

    /// The data of the last successful poll, as far as it is kept.
    pub fn last_good(&self) -> Option<Value> {
        match self.last_good.as_ref()? {
            Kept::Text(text) => serde_json::from_str(text).ok(),
            Kept::Value(value) => Some((**value).clone()),
        }
    }

    fn keep(&mut self, data: &Value) {
        let kept = match &self.keeping {
            None => data.clone(),
            Some(fields) => {
                let mut kept = Value::Null;
                for field in fields.iter() {
                    field.keep(data, &mut kept);
                }
                kept
            }
        };
        self.last_good = Some(Kept::of(kept));
    }

    /// Takes one poll result in, returning what it meant, in order: availability,
    /// changes, firings.
    pub fn observe(
        &mut self,
        result: Result<PollData, PollFailure>,
        rules: &[Rule],
        fields: &BTreeSet<FieldPath>,
        now: Timestamp,
    ) -> Vec<Observed> {
        if let Err(failure) = result.as_ref()
            && failure.told_nothing()
        {
            let failure = failure.clone();
            let first = !self.throttled;
            self.throttled = true;
            // Why nothing is sent shows in status until a poll is.
            if matches!(failure, PollFailure::Credentials(_)) {
                self.last_error = Some(failure.clone());
            }
            return if first {
                vec![Observed::Throttled(failure)]
            } else {
                Vec::new()
            };
        }
        self.throttled = false;
        let mut seen = Vec::new();
        let previous_up = self.up;
        // Compared with even after failed polls: a recovery shows what changed.
        let last_good = self.last_good();
        let previous_data = if previous_up == Some(true) {
            last_good.clone()
        } else {
            None
        };
        let (data, up) = match result {
            Ok(PollData { mut data, .. }) => {
                // The values subscriptions pushed are not part of the answer:
                // they are kept beside it, as they were.
                if let Some(before) = &last_good {
                    carry_pushed(before, &mut data);
                }
                if previous_up == Some(false) {
                    seen.push(Observed::PollRecovered);
                }
                if self.answered
                    && let Some(before) = &last_good
                {
                    seen.extend(
                        changes(fields, before, &data)
                            .into_iter()
                            .map(Observed::StateChanged),
                    );
                }
                self.last_error = None;
                self.answered = true;
                (Some(data), true)
            }
            Err(failure) => {
                if previous_up != Some(false) {
                    seen.push(Observed::PollFailed(failure.clone()));
                }
                self.last_error = Some(failure);
                (None, false)
            }
        };
        let current = Observation {
            data: data.as_ref(),
            up,
        };
        let previous = previous_up.map(|up| Observation {
            data: previous_data.as_ref(),
            up,
        });
        for (index, (rule, firing)) in rules.iter().zip(self.firing.iter_mut()).enumerate() {
            // A rule on a subscription's values is judged when they arrive.
            if rule.subscription().is_some() {
                continue;
            }
            judge(
                rule,
                index,
                firing,
                &current,
                previous.as_ref(),
                now,
                &mut seen,
            );
        }
        if previous_up != Some(up) {
            self.since = match (previous_up, self.recorded_since.take()) {
                (None, Some((was_up, at))) if was_up == up => Some(at),
                _ => Some(now),
            };
        }
        self.up = Some(up);
        self.last_poll = Some(now);
        // A failed poll keeps the last good data for diffs after recovery.
        if let Some(data) = &data {
            self.keep(data);
        }
        seen
    }
}

impl TargetState {
    /// Takes in `value`, which subscription `name` pushed (its root field's
    /// value), returning what it meant: changes of the fields read under
    /// `@name`, and the firings of the rules on them. A push says nothing of
    /// `$up` nor of the state query's fields, and only the rules on this
    /// subscription are judged.
    pub fn push(
        &mut self,
        name: &str,
        value: Value,
        rules: &[Rule],
        fields: &BTreeSet<FieldPath>,
        now: Timestamp,
    ) -> Vec<Observed> {
        let up = self.up == Some(true);
        let before = self.last_good();
        let mut after = before
            .clone()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(map) = &mut after {
            map.insert(format!("@{name}"), value);
        }
        let mut seen = Vec::new();
        if let Some(before) = &before {
            let pushed: BTreeSet<FieldPath> = fields
                .iter()
                .filter(|f| f.subscription() == Some(name))
                .cloned()
                .collect();
            seen.extend(
                changes(&pushed, before, &after)
                    .into_iter()
                    .map(Observed::StateChanged),
            );
        }
        let current = Observation {
            data: Some(&after),
            up,
        };
        // Before the first push, there is nothing to compare with.
        let had = before
            .as_ref()
            .is_some_and(|b| b.get(format!("@{name}").as_str()).is_some());
        let previous = had.then_some(Observation {
            data: before.as_ref(),
            up,
        });
        for (index, (rule, firing)) in rules.iter().zip(self.firing.iter_mut()).enumerate() {
            if rule.subscription() != Some(name) {
                continue;
            }
            judge(
                rule,
                index,
                firing,
                &current,
                previous.as_ref(),
                now,
                &mut seen,
            );
        }
        self.keep(&after);
        seen
    }
}

/// Copies into `data` (a new answer) the values subscriptions pushed that
/// `before` (the kept state) holds, under their `@name` keys.
fn carry_pushed(before: &Value, data: &mut Value) {
    let (Value::Object(before), Value::Object(data)) = (before, data) else {
        return;
    };
    for (key, value) in before.iter().filter(|(k, _)| k.starts_with('@')) {
        data.insert(key.clone(), value.clone());
    }
}

/// Evaluates rule `index` on an observation, adding its firing or the end of
/// its episode to `seen`.
fn judge(
    rule: &Rule,
    index: usize,
    firing: &mut FiringState,
    current: &Observation<'_>,
    previous: Option<&Observation<'_>>,
    now: Timestamp,
    seen: &mut Vec<Observed>,
) {
    let ended = firing.ended();
    let decision = rule.evaluate(firing, current, previous, now);
    if firing.ended() != ended
        && let Some(fired_at) = firing.ended()
    {
        seen.push(Observed::Ended {
            rule: index,
            fired_at,
        });
    }
    if decision == Decision::Fire {
        let field = &rule.condition.field;
        seen.push(Observed::Fired {
            rule: index,
            old: previous.and_then(|p| field.resolve(p.data, p.up)),
            new: field.resolve(current.data, current.up),
            after: firing.ended(),
            false_at: firing.false_at(),
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::targetapp::ActionRule;
    use crate::triggers::Adoption;
    use crate::triggers::{compile, referenced_fields};

    fn rules() -> Vec<Rule> {
        let raw: Vec<ActionRule> = serde_json::from_value(json!([
            {"name": "offline", "action": "restart_pod", "cooldown": "0s",
             "trigger": {"field": "d.syncStatus", "condition": "equals", "value": "OFFLINE"}},
            {"name": "down", "action": "webhook", "cooldown": "0s",
             "trigger": {"field": "$up", "condition": "equals", "value": false}}
        ]))
        .unwrap();
        compile(&raw).unwrap()
    }

    /// Status as another replica left it: "offline" fired at 0, its end never seen.
    fn latched(name: &str) -> Option<Recorded> {
        (name == "offline").then_some(Recorded {
            time: at(0),
            cleared: false,
        })
    }

    fn ok(sync: &str, uptime: u64) -> Result<PollData, PollFailure> {
        Ok(PollData {
            data: json!({"d": {"syncStatus": sync, "uptimeSecs": uptime}}),
            errors: vec![],
        })
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// Pod mina-0's target, not polled yet, with nothing recorded earlier.
    fn unpolled_mina_0(rules: &[Rule]) -> TargetState {
        let target = Target {
            pod: Some("mina-0".into()),
            url: "http://x/graphql".into(),
        };
        TargetState::new(target, rules, |_| None)
    }

    #[test]
    fn pushed_values_are_judged_by_their_own_rules_and_outlive_polls() {
        let raw: Vec<ActionRule> = serde_json::from_value(json!([
            {"name": "offline", "action": "restart_pod", "cooldown": "0s",
             "trigger": {"field": "d.syncStatus", "condition": "equals", "value": "OFFLINE"}},
            {"name": "pushed-offline", "action": "webhook", "cooldown": "0s",
             "trigger": {"field": "@sync", "condition": "equals", "value": "OFFLINE"}},
            {"name": "new-block", "cooldown": "0s",
             "trigger": {"field": "@blocks.height", "condition": "changed"}}
        ]))
        .unwrap();
        let rules = compile(&raw).unwrap();
        let fields = referenced_fields(&rules);
        let mut t = unpolled_mina_0(&rules);
        let sync: FieldPath = "@sync".parse().unwrap();
        let changed = |field: &FieldPath, old: &str, new: &str| {
            Observed::StateChanged(crate::triggers::Change {
                field: field.clone(),
                old: Some(json!(old)),
                new: Some(json!(new)),
            })
        };

        // Pushed before the first poll: kept, nothing to compare with yet.
        assert_eq!(
            t.push("sync", json!("SYNCED"), &rules, &fields, at(0)),
            vec![]
        );
        // The first answer: no change reported (nothing answered before it),
        // and the pushed value stays.
        assert_eq!(t.observe(ok("SYNCED", 1), &rules, &fields, at(1)), vec![]);
        assert_eq!(t.last_good().unwrap()["@sync"], "SYNCED");

        // A push fires the rule on it, and only that rule.
        let seen = t.push("sync", json!("OFFLINE"), &rules, &fields, at(2));
        assert_eq!(seen[0], changed(&sync, "SYNCED", "OFFLINE"));
        assert!(
            matches!(&seen[1], Observed::Fired { rule: 1, new: Some(n), .. } if n == "OFFLINE"),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 2, "{seen:?}");
        // Polls (good or failed) neither change nor end what was pushed.
        assert_eq!(t.observe(ok("SYNCED", 3), &rules, &fields, at(3)), vec![]);
        let timeout = PollFailure::Timeout(std::time::Duration::from_secs(1));
        assert_eq!(
            t.observe(Err(timeout.clone()), &rules, &fields, at(4)),
            vec![Observed::PollFailed(timeout)]
        );
        assert_eq!(t.up, Some(false));
        // A push while the target does not answer polls is judged all the same,
        // and leaves `$up` alone.
        let seen = t.push("sync", json!("SYNCED"), &rules, &fields, at(5));
        assert_eq!(
            seen,
            vec![
                changed(&sync, "OFFLINE", "SYNCED"),
                Observed::Ended {
                    rule: 1,
                    fired_at: at(2)
                }
            ]
        );
        assert_eq!(t.up, Some(false));

        // A poll rule is judged by polls alone.
        assert!(matches!(
            t.observe(ok("OFFLINE", 6), &rules, &fields, at(6))
                .as_slice(),
            [
                Observed::PollRecovered,
                Observed::StateChanged(_),
                Observed::Fired { rule: 0, .. }
            ]
        ));
        let seen = t.push("blocks", json!({"height": "5"}), &rules, &fields, at(7));
        assert!(
            seen.iter().all(|o| !matches!(o, Observed::Fired { .. })),
            "the first block has nothing to differ from: {seen:?}"
        );
        let seen = t.push("blocks", json!({"height": "6"}), &rules, &fields, at(8));
        assert!(
            matches!(seen.last(), Some(Observed::Fired { rule: 2, .. })),
            "{seen:?}"
        );
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn a_poll_sequence_reports_flips_changes_and_firings() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let mut t = unpolled_mina_0(&rules);

        assert_eq!(
            t.observe(ok("SYNCED", 1), &rules, &fields, at(0)),
            vec![],
            "first poll: nothing to compare"
        );
        assert_eq!(
            t.observe(ok("SYNCED", 2), &rules, &fields, at(1)),
            vec![],
            "uptime is not referenced"
        );
        let seen = t.observe(ok("OFFLINE", 3), &rules, &fields, at(2));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            matches!(&seen[0], Observed::StateChanged(c) if c.old == Some(json!("SYNCED")) && c.new == Some(json!("OFFLINE")))
        );
        assert_eq!(
            seen[1],
            Observed::Fired {
                rule: 0,
                old: Some(json!("SYNCED")),
                new: Some(json!("OFFLINE")),
                after: None,
                false_at: Some(at(1)),
            }
        );
        assert_eq!(
            t.observe(ok("OFFLINE", 4), &rules, &fields, at(3)),
            vec![],
            "still OFFLINE: edge-triggered"
        );

        let timeout = PollFailure::Timeout(std::time::Duration::from_secs(1));
        let seen = t.observe(Err(timeout.clone()), &rules, &fields, at(4));
        assert_eq!(
            seen,
            vec![
                Observed::PollFailed(timeout.clone()),
                // No data: syncStatus is no longer OFFLINE, so rule 0's episode ended.
                Observed::Ended {
                    rule: 0,
                    fired_at: at(2)
                },
                Observed::Fired {
                    rule: 1,
                    old: Some(json!(true)),
                    new: Some(json!(false)),
                    after: None,
                    false_at: Some(at(3)),
                }
            ]
        );
        assert_eq!(t.up, Some(false));
        assert_eq!(
            t.observe(Err(timeout.clone()), &rules, &fields, at(5)),
            vec![],
            "still down: no flood"
        );

        let seen = t.observe(ok("SYNCED", 5), &rules, &fields, at(6));
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0], Observed::PollRecovered);
        assert!(
            matches!(&seen[1], Observed::StateChanged(c) if c.old == Some(json!("OFFLINE")) && c.new == Some(json!("SYNCED"))),
            "changes are against the last good result: {seen:?}"
        );
        assert_eq!(
            seen[2],
            Observed::Ended {
                rule: 1,
                fired_at: at(4)
            }
        );
        // A new episode of rule 0 names the one it follows, for the fence.
        let seen = t.observe(ok("OFFLINE", 6), &rules, &fields, at(7));
        assert!(
            matches!(seen.last(), Some(Observed::Fired { rule: 0, after: Some(a), .. }) if *a == at(2)),
            "{seen:?}"
        );
        assert_eq!(t.last_error, None);
    }

    #[test]
    fn only_the_kept_fields_outlive_a_poll_and_they_still_show_every_change() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let mut t = unpolled_mina_0(&rules).keeping(Arc::new(fields.clone()));
        t.observe(ok("SYNCED", 1), &rules, &fields, at(0));
        assert_eq!(
            t.last_good(),
            Some(json!({"d": {"syncStatus": "SYNCED"}})),
            "uptimeSecs is read by no rule: not kept"
        );
        let down = Err(PollFailure::Status(500));
        t.observe(down, &rules, &fields, at(1));
        assert_eq!(
            t.last_good(),
            Some(json!({"d": {"syncStatus": "SYNCED"}})),
            "a failed poll keeps the last good data"
        );
        let seen = t.observe(ok("CATCHUP", 9), &rules, &fields, at(2));
        assert!(
            seen.iter().any(|o| matches!(o, Observed::StateChanged(c)
                if c.old == Some(json!("SYNCED")) && c.new == Some(json!("CATCHUP")))),
            "the recovery is compared with what was kept before the failure: {seen:?}"
        );
        let mut all = unpolled_mina_0(&rules);
        all.observe(ok("SYNCED", 1), &rules, &fields, at(0));
        assert_eq!(
            all.last_good(),
            Some(json!({"d": {"syncStatus": "SYNCED", "uptimeSecs": 1}})),
            "without a kept set, the whole result"
        );
    }

    #[test]
    fn a_kept_number_reads_back_exactly_and_an_unchanged_one_is_no_change() {
        let rules: Vec<Rule> = compile(
            &serde_json::from_value::<Vec<ActionRule>>(json!([
                {"name": "moved", "action": "restart_pod", "cooldown": "0s",
                 "trigger": {"field": "n", "condition": "changed"}}
            ]))
            .unwrap(),
        )
        .unwrap();
        let fields = referenced_fields(&rules);
        let mut rng = fastrand::Rng::with_seed(7);
        for i in 0..20_000 {
            // Finite doubles over the whole range of exponents, and integers.
            let bits = rng.u64(..);
            let float = f64::from_bits(bits);
            let n = if i % 2 == 0 && float.is_finite() {
                json!(float)
            } else {
                json!(rng.i64(..))
            };
            let data = json!({"n": n, "s": "x"});
            let mut t = unpolled_mina_0(&rules).keeping(Arc::new(fields.clone()));
            let poll = |data: &Value| {
                Ok(PollData {
                    data: data.clone(),
                    errors: vec![],
                })
            };
            t.observe(poll(&data), &rules, &fields, at(0));
            assert_eq!(t.last_good(), Some(json!({"n": n})), "{n}");
            let again = t.observe(poll(&data), &rules, &fields, at(1));
            assert!(again.is_empty(), "{n} looked changed: {again:?}");
        }
    }

    #[test]
    fn since_is_when_up_changed_and_survives_a_restart_that_agrees() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let mut fresh = unpolled_mina_0(&rules);
        fresh.observe(ok("SYNCED", 1), &rules, &fields, at(5));
        fresh.observe(ok("SYNCED", 2), &rules, &fields, at(6));
        assert_eq!(fresh.since, Some(at(5)), "up since the first poll");
        let down = Err(PollFailure::Status(500));
        fresh.observe(down.clone(), &rules, &fields, at(9));
        assert_eq!(fresh.since, Some(at(9)), "down since it failed");

        // A task that restarts finds "up since 0" in the status.
        let mut restarted = unpolled_mina_0(&rules).with_recorded_since(true, at(0));
        restarted.observe(ok("SYNCED", 1), &rules, &fields, at(100));
        assert_eq!(restarted.since, Some(at(0)), "still up: since stays");
        let mut now_down = unpolled_mina_0(&rules).with_recorded_since(true, at(0));
        now_down.observe(down, &rules, &fields, at(100));
        assert_eq!(now_down.since, Some(at(100)), "down now: since moves");
    }

    #[test]
    fn a_throttled_poll_is_told_once_and_changes_nothing() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let mut t = unpolled_mina_0(&rules);
        assert_eq!(t.observe(ok("SYNCED", 1), &rules, &fields, at(0)), vec![]);
        let throttled = PollFailure::Throttled("share used".into());
        assert_eq!(
            t.observe(Err(throttled.clone()), &rules, &fields, at(1)),
            vec![Observed::Throttled(throttled.clone())]
        );
        assert_eq!(
            t.observe(Err(throttled.clone()), &rules, &fields, at(2)),
            vec![],
            "still throttled: told once"
        );
        // Not a failure of the target: `$up` stays true, no rule fired, and the
        // next poll is compared with the last one that got through.
        assert_eq!(t.up, Some(true));
        assert_eq!(t.last_poll, Some(at(0)));
        let seen = t.observe(ok("OFFLINE", 2), &rules, &fields, at(3));
        assert!(
            matches!(&seen[0], Observed::StateChanged(c) if c.old == Some(json!("SYNCED"))),
            "{seen:?}"
        );
        assert!(
            matches!(seen[1], Observed::Fired { rule: 0, .. }),
            "{seen:?}"
        );
        assert_eq!(
            t.observe(Err(throttled.clone()), &rules, &fields, at(4)),
            vec![Observed::Throttled(throttled)],
            "throttled again after a poll got through: told again"
        );
    }

    #[test]
    fn a_poll_not_sent_for_want_of_credentials_is_no_sign_of_the_target() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let mut t = unpolled_mina_0(&rules);
        assert_eq!(t.observe(ok("SYNCED", 1), &rules, &fields, at(0)), vec![]);
        let missing = PollFailure::Credentials("Secret t does not exist".into());
        assert_eq!(
            t.observe(Err(missing.clone()), &rules, &fields, at(1)),
            vec![Observed::Throttled(missing.clone())]
        );
        assert_eq!(
            t.observe(Err(missing.clone()), &rules, &fields, at(2)),
            vec![]
        );
        // `$up` stays as it was (no `$up` rule fires), and the reason shows
        // until a poll is sent again.
        assert_eq!(t.up, Some(true));
        assert_eq!(t.last_error, Some(missing));
        assert_eq!(t.observe(ok("SYNCED", 3), &rules, &fields, at(3)), vec![]);
        assert_eq!(t.last_error, None);
    }

    #[test]
    fn the_first_poll_failing_is_reported() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let target = Target {
            pod: None,
            url: "http://svc/graphql".into(),
        };
        let mut t = TargetState::new(target, &rules, |_| None);
        let seen = t.observe(Err(PollFailure::Status(500)), &rules, &fields, at(0));
        assert_eq!(seen[0], Observed::PollFailed(PollFailure::Status(500)));
    }

    #[test]
    fn firings_recorded_earlier_keep_their_cooldown() {
        let raw: Vec<ActionRule> = serde_json::from_value(json!([
            {"name": "offline", "action": "restart_pod", "cooldown": "10m",
             "trigger": {"field": "d.syncStatus", "condition": "equals", "value": "OFFLINE"}}
        ]))
        .unwrap();
        let rules = compile(&raw).unwrap();
        let fields = referenced_fields(&rules);
        let target = Target {
            pod: Some("mina-0".into()),
            url: "u".into(),
        };
        let mut t = TargetState::new(target, &rules, |name| {
            (name == "offline").then_some(Recorded {
                time: at(0),
                cleared: true,
            })
        });
        assert!(
            t.observe(ok("OFFLINE", 1), &rules, &fields, at(60))
                .is_empty(),
            "inside the recorded cooldown"
        );
        assert_eq!(
            t.observe(ok("OFFLINE", 2), &rules, &fields, at(600)),
            vec![Observed::Fired {
                rule: 0,
                old: Some(json!("OFFLINE")),
                new: Some(json!("OFFLINE")),
                after: Some(at(0)),
                false_at: None,
            }]
        );
    }

    #[test]
    fn an_episode_recorded_by_another_replica_is_not_fired_again() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let target = Target {
            pod: Some("mina-0".into()),
            url: "u".into(),
        };
        let mut t = TargetState::new(target.clone(), &rules, latched);
        // Still OFFLINE when taken over: whether that is the same episode is for the
        // fence to say (it reads the latest status); here it was, and is adopted.
        let seen = t.observe(ok("OFFLINE", 1), &rules, &fields, at(10));
        assert!(
            matches!(
                seen.as_slice(),
                [Observed::Fired {
                    rule: 0,
                    after: None,
                    ..
                }]
            ),
            "{seen:?}"
        );
        assert_eq!(
            t.firing[0].adopt(at(10), at(0)),
            Adoption::Ongoing,
            "the stretch goes on: its end is still to come"
        );
        assert_eq!(
            t.observe(ok("OFFLINE", 2), &rules, &fields, at(11)),
            vec![],
            "the same episode: no second firing"
        );
        assert_eq!(
            t.observe(ok("SYNCED", 3), &rules, &fields, at(12)),
            vec![
                Observed::StateChanged(Change {
                    field: "d.syncStatus".parse().unwrap(),
                    old: Some(json!("OFFLINE")),
                    new: Some(json!("SYNCED"))
                }),
                Observed::Ended {
                    rule: 0,
                    fired_at: at(0)
                }
            ],
            "the end of the adopted firing's episode"
        );
        let seen = t.observe(ok("OFFLINE", 4), &rules, &fields, at(13));
        assert!(
            matches!(seen.last(), Some(Observed::Fired { rule: 0, after: Some(a), false_at: Some(f), .. })
                if *a == at(0) && *f == at(12)),
            "a new episode fires, naming the one it follows and when it was seen false: {seen:?}"
        );

        // Taken over while the condition no longer holds: the end is reported at once.
        let mut t = TargetState::new(target, &rules, latched);
        let seen = t.observe(ok("SYNCED", 1), &rules, &fields, at(10));
        assert_eq!(
            seen,
            vec![Observed::Ended {
                rule: 0,
                fired_at: at(0)
            }]
        );
    }

    #[test]
    fn an_adoption_arriving_after_the_stretch_ended_names_the_end() {
        let rules = rules();
        let fields = referenced_fields(&rules);
        let target = Target {
            pod: Some("mina-0".into()),
            url: "u".into(),
        };
        let mut t = TargetState::new(target, &rules, latched);
        let seen = t.observe(ok("OFFLINE", 1), &rules, &fields, at(10));
        assert!(matches!(seen.as_slice(), [Observed::Fired { rule: 0, .. }]));
        // The stretch ends here before the fence answers: the end is reported under
        // this replica's own firing time (the dispatcher writes it to the firing
        // recorded before it, see `Dispatcher::clear`).
        let seen = t.observe(ok("SYNCED", 2), &rules, &fields, at(12));
        assert!(
            seen.contains(&Observed::Ended {
                rule: 0,
                fired_at: at(10)
            }),
            "{seen:?}"
        );
        // The fence then says the firing was the one recorded at 0: its episode
        // has ended, for the caller to make sure it is recorded.
        assert_eq!(t.firing[0].adopt(at(10), at(0)), Adoption::Ended);
        assert_eq!(t.firing[0].ended(), Some(at(0)));
        // A later firing, recorded by another replica, that overtook this one is
        // not given this stretch's end (that end came before it).
        let mut overtaken = TargetState::new(
            Target {
                pod: Some("mina-1".into()),
                url: "u".into(),
            },
            &rules,
            latched,
        );
        overtaken.observe(ok("OFFLINE", 1), &rules, &fields, at(10));
        overtaken.observe(ok("SYNCED", 2), &rules, &fields, at(12));
        assert_eq!(overtaken.firing[0].adopt(at(10), at(20)), Adoption::Ongoing);
        assert_eq!(overtaken.firing[0].last_fired(), Some(at(20)));
        assert_eq!(overtaken.firing[0].ended(), Some(at(10)));
        // A stale adoption (the rule fired again since) changes nothing.
        assert_eq!(t.firing[0].adopt(at(10), at(5)), Adoption::Stale);
        assert_eq!(t.firing[0].last_fired(), Some(at(0)));
        let seen = t.observe(ok("OFFLINE", 3), &rules, &fields, at(13));
        assert!(
            matches!(seen.last(), Some(Observed::Fired { rule: 0, after: Some(a), .. }) if *a == at(0)),
            "the next episode follows the adopted firing: {seen:?}"
        );
    }
}
