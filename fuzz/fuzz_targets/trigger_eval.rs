//! Trigger rules built from the input (paths, conditions, values, `valueFrom`
//! with offsets, durations) compiled, then evaluated over a sequence of poll
//! results (JSON documents built from the input, and failed polls).
//!
//! Invariants: compiling reports every refused rule with its field path, or
//! compiles every rule; evaluation is deterministic; opposite conditions
//! (`equals`/`notEquals`, `in`/`notIn`, `greaterThan`/`lessThanOrEqual`,
//! `greaterThanOrEqual`/`lessThan`, `exists`/`absent`) never both hold, and one of
//! them holds whenever both sides are there; a rule fires only while its condition
//! holds; the monitor's `TargetState::observe` fires exactly the rules that
//! evaluating them by hand fires.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use k8s_openapi::jiff::Timestamp;
use kco::monitor::discovery::Target;
use kco::monitor::poll::{PollData, PollFailure};
use kco::monitor::state::{Observed, TargetState};
use kco::targetapp::{ActionRule, ConditionKind, Trigger, ValueFrom};
use kco::triggers::{
    Condition, Decision, FiringState, Num, Observation, Operand, compile, referenced_fields,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const KINDS: [ConditionKind; 14] = [
    ConditionKind::Equals,
    ConditionKind::NotEquals,
    ConditionKind::In,
    ConditionKind::NotIn,
    ConditionKind::GreaterThan,
    ConditionKind::GreaterThanOrEqual,
    ConditionKind::LessThan,
    ConditionKind::LessThanOrEqual,
    ConditionKind::Contains,
    ConditionKind::Matches,
    ConditionKind::Changed,
    ConditionKind::Unchanged,
    ConditionKind::Exists,
    ConditionKind::Absent,
];

const KEYS: [&str; 6] = ["a", "b", "syncStatus", "peers", "blockchainLength", "_x1"];

#[derive(Arbitrary, Debug)]
struct Input {
    rules: Vec<RuleIn>,
    polls: Vec<PollIn>,
}

#[derive(Arbitrary, Debug)]
struct RuleIn {
    name: Option<String>,
    field: PathIn,
    kind: u8,
    operand: OperandIn,
    hold_for: Option<DurationIn>,
    cooldown: Option<DurationIn>,
}

#[derive(Arbitrary, Debug)]
enum PathIn {
    Up,
    Built {
        segments: Vec<SegmentIn>,
        length: bool,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum SegmentIn {
    Key(u8),
    Index(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum OperandIn {
    None,
    Value(ValueIn),
    From(PathIn, Option<f64>),
    Both(ValueIn, PathIn),
}

#[derive(Arbitrary, Debug)]
enum DurationIn {
    Seconds(u16),
    Millis(u32),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum ValueIn {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// A Mina-style number as a string: `"-12.5"`, `"340282366920938463463374607431768211455"`.
    NumText {
        negative: bool,
        whole: u128,
        fraction: Option<u32>,
    },
    Text(String),
    Known(u8),
    List(Vec<ValueIn>),
    Object(Vec<(u8, ValueIn)>),
}

#[derive(Arbitrary, Debug)]
enum PollIn {
    Data { data: Vec<(u8, ValueIn)>, step: u16 },
    Failed { step: u16 },
}

fn path(p: &PathIn) -> String {
    match p {
        PathIn::Up => "$up".to_owned(),
        PathIn::Raw(raw) => raw.clone(),
        PathIn::Built { segments, length } => {
            let mut parts: Vec<String> = segments
                .iter()
                .take(6)
                .map(|s| match s {
                    SegmentIn::Key(k) => KEYS[usize::from(*k) % KEYS.len()].to_owned(),
                    SegmentIn::Index(i) => (i % 4).to_string(),
                    SegmentIn::Raw(raw) => raw.clone(),
                })
                .collect();
            if *length {
                parts.push("#".to_owned());
            }
            parts.join(".")
        }
    }
}

fn duration(d: &DurationIn) -> String {
    match d {
        DurationIn::Seconds(s) => format!("{s}s"),
        DurationIn::Millis(ms) => format!("{ms}ms"),
        DurationIn::Text(text) => text.clone(),
    }
}

fn value(v: &ValueIn, depth: usize) -> Value {
    match v {
        ValueIn::Null => Value::Null,
        ValueIn::Bool(b) => Value::Bool(*b),
        ValueIn::Int(i) => Value::from(*i),
        ValueIn::UInt(u) => Value::from(*u),
        ValueIn::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ValueIn::NumText {
            negative,
            whole,
            fraction,
        } => {
            let sign = if *negative { "-" } else { "" };
            Value::String(match fraction {
                Some(f) => format!("{sign}{whole}.{f}"),
                None => format!("{sign}{whole}"),
            })
        }
        ValueIn::Text(text) => Value::String(text.clone()),
        ValueIn::Known(k) => Value::String(
            [
                "SYNCED",
                "BOOTSTRAP",
                "OFFLINE",
                "CATCHUP",
                "",
                "1000",
                "1e3",
                "NaN",
            ][usize::from(*k) % 8]
                .to_owned(),
        ),
        ValueIn::List(items) if depth < 5 => {
            Value::Array(items.iter().take(8).map(|i| value(i, depth + 1)).collect())
        }
        ValueIn::Object(entries) if depth < 5 => object(entries, depth + 1),
        ValueIn::List(_) | ValueIn::Object(_) => Value::Null,
    }
}

fn object(entries: &[(u8, ValueIn)], depth: usize) -> Value {
    let mut map = Map::new();
    for (k, v) in entries.iter().take(8) {
        map.insert(
            KEYS[usize::from(*k) % KEYS.len()].to_owned(),
            value(v, depth),
        );
    }
    Value::Object(map)
}

fn rule(r: &RuleIn) -> ActionRule {
    let (value_, value_from) = match &r.operand {
        OperandIn::None => (None, None),
        OperandIn::Value(v) => (Some(value(v, 0)), None),
        OperandIn::From(p, offset) => (
            None,
            Some(ValueFrom {
                field: path(p),
                offset: *offset,
            }),
        ),
        OperandIn::Both(v, p) => (
            Some(value(v, 0)),
            Some(ValueFrom {
                field: path(p),
                offset: None,
            }),
        ),
    };
    ActionRule {
        name: r.name.clone(),
        trigger: Trigger {
            field: path(&r.field),
            condition: KINDS[usize::from(r.kind) % KINDS.len()],
            value: value_,
            value_from,
            for_: r.hold_for.as_ref().map(duration),
        },
        action: Some("restart_pod".to_owned()),
        parameters: None,
        then: Vec::new(),
        cooldown: r.cooldown.as_ref().map(duration),
        too_deep: Vec::new(),
    }
}

/// The condition that holds exactly when `kind` does not, where both sides are present.
fn opposite(kind: ConditionKind) -> Option<ConditionKind> {
    use ConditionKind::*;
    Some(match kind {
        Equals => NotEquals,
        NotEquals => Equals,
        In => NotIn,
        NotIn => In,
        GreaterThan => LessThanOrEqual,
        LessThanOrEqual => GreaterThan,
        GreaterThanOrEqual => LessThan,
        LessThan => GreaterThanOrEqual,
        Exists => Absent,
        Absent => Exists,
        _ => return None,
    })
}

fuzz_target!(|input: Input| {
    let raw: Vec<ActionRule> = input.rules.iter().take(4).map(rule).collect();
    let rules = match compile(&raw) {
        Ok(rules) => rules,
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(p.path.starts_with("spec.actions["), "{p}");
                assert!(!p.message.is_empty(), "{p}");
            }
            return;
        }
    };
    assert_eq!(rules.len(), raw.len());
    let opposites: Vec<Option<Condition>> = raw
        .iter()
        .map(|r| {
            let kind = opposite(r.trigger.condition)?;
            let trigger = Trigger {
                condition: kind,
                ..r.trigger.clone()
            };
            Condition::compile(&trigger).ok()
        })
        .collect();

    let fields = referenced_fields(&rules);
    let target = Target {
        pod: Some("mina-0".to_owned()),
        url: "http://127.0.0.1:3085/graphql".to_owned(),
    };
    let mut monitor = TargetState::new(target, &rules, |_| None);
    let mut firing: Vec<FiringState> = rules.iter().map(|_| FiringState::default()).collect();
    let mut previous: Option<(Option<Value>, bool)> = None;
    let mut now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);

    for poll in input.polls.iter().take(12) {
        let (data, step) = match poll {
            PollIn::Data { data, step } => (Some(object(data, 0)), *step),
            PollIn::Failed { step } => (None, *step),
        };
        now = now
            .checked_add(std::time::Duration::from_secs(u64::from(step)))
            .unwrap_or(now);
        let current = Observation {
            data: data.as_ref(),
            up: data.is_some(),
        };
        let before = previous.as_ref().map(|(d, up)| Observation {
            data: d.as_ref(),
            up: *up,
        });

        let mut fired = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let holds = rule.condition.holds(&current, before.as_ref());
            assert_eq!(holds, rule.condition.holds(&current, before.as_ref()));
            if let (Some(other), Operand::None | Operand::Value(_)) =
                (&opposites[index], &rule.condition.operand)
            {
                let flipped = other.holds(&current, before.as_ref());
                assert!(
                    !(holds && flipped),
                    "{:?} and its opposite both hold",
                    raw[index].trigger
                );
                let leaf = rule
                    .condition
                    .field
                    .resolve(current.data, current.up)
                    .filter(|v| !v.is_null());
                let comparable = match rule.condition.kind {
                    ConditionKind::Exists | ConditionKind::Absent => true,
                    ConditionKind::GreaterThan
                    | ConditionKind::GreaterThanOrEqual
                    | ConditionKind::LessThan
                    | ConditionKind::LessThanOrEqual => {
                        leaf.as_ref().and_then(Num::from_value).is_some()
                    }
                    _ => leaf.is_some(),
                };
                if comparable {
                    assert!(
                        holds || flipped,
                        "neither {:?} nor its opposite holds",
                        raw[index].trigger
                    );
                }
            }
            let decision = rule.evaluate(&mut firing[index], &current, before.as_ref(), now);
            if !holds {
                assert_eq!(decision, Decision::Idle);
            }
            if decision == Decision::Fire {
                fired.push(index);
            }
        }

        let result = match &data {
            Some(d) => Ok(PollData {
                data: d.clone(),
                errors: Vec::new(),
            }),
            None => Err(PollFailure::NotGraphql),
        };
        let seen = monitor.observe(result, &rules, &fields, now);
        let monitor_fired: Vec<usize> = seen
            .iter()
            .filter_map(|o| match o {
                Observed::Fired { rule, .. } => Some(*rule),
                _ => None,
            })
            .collect();
        assert_eq!(
            monitor_fired, fired,
            "the monitor fires what evaluation fires"
        );
        let mut changed = BTreeMap::new();
        for o in &seen {
            if let Observed::StateChanged(change) = o {
                assert_ne!(change.old, change.new);
                assert!(fields.contains(&change.field));
                assert!(changed.insert(change.field.to_string(), ()).is_none());
            }
        }
        let up = current.up;
        previous = Some((data, up));
    }
});
