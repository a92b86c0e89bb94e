//! A trigger's condition, compiled once (paths parsed, regex built, operand
//! checked) and then evaluated against each poll result.

use std::cmp::Ordering;

use serde_json::Value;

use super::path::FieldPath;
use super::value::{Num, as_text, contains, loosely_equal};
use crate::targetapp::{ConditionKind, Trigger};

/// The longest regex source a trigger may use, and the compiled size limit: the
/// `regex` crate matches in linear time, so these bound memory and compile time
/// (a TargetApp of 100 rules must validate well within the webhook's 5 s), not
/// backtracking. 256 KiB holds Unicode classes such as `[\w.-]+@[\w.-]+`.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// One poll's view of a target: the result's `data`, and whether the poll succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub data: Option<&'a Value>,
    pub up: bool,
}

/// What a condition compares the field with.
#[derive(Debug, Clone)]
pub enum Operand {
    None,
    Value(Value),
    Field { path: FieldPath, offset: f64 },
}

/// A compiled trigger condition.
#[derive(Debug, Clone)]
pub struct Condition {
    pub field: FieldPath,
    pub kind: ConditionKind,
    pub operand: Operand,
    regex: Option<regex::Regex>,
}

/// A problem with a trigger, with the field (relative to the trigger) it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerProblem {
    /// `field`, `value`, `valueFrom.field`, `condition`, ...
    pub field: &'static str,
    pub message: String,
}

fn problem(field: &'static str, message: impl Into<String>) -> TriggerProblem {
    TriggerProblem {
        field,
        message: message.into(),
    }
}

impl Condition {
    /// Compiles a trigger, reporting every problem found.
    pub fn compile(trigger: &Trigger) -> Result<Condition, Vec<TriggerProblem>> {
        use ConditionKind::*;
        let mut problems = Vec::new();
        let field = trigger
            .field
            .parse::<FieldPath>()
            .map_err(|e| problem("field", e.to_string()));
        let takes_operand = !matches!(trigger.condition, Changed | Unchanged | Exists | Absent);
        let operand = match (&trigger.value, &trigger.value_from) {
            (Some(_), Some(_)) => Err(problem("value", "give either value or valueFrom, not both")),
            (None, None) if takes_operand => Err(problem(
                "value",
                format!(
                    "condition {} needs a value or valueFrom",
                    trigger.condition.as_str()
                ),
            )),
            (Some(_), None) | (None, Some(_)) if !takes_operand => Err(problem(
                "value",
                format!("condition {} takes no value", trigger.condition.as_str()),
            )),
            (None, None) => Ok(Operand::None),
            (Some(value), None) => Ok(Operand::Value(value.clone())),
            (None, Some(from)) => match from.field.parse::<FieldPath>() {
                Ok(path) => Ok(Operand::Field {
                    path,
                    offset: from.offset.unwrap_or(0.0),
                }),
                Err(e) => Err(problem("valueFrom.field", e.to_string())),
            },
        };
        if let (Ok(Operand::Field { .. }), In | NotIn | Matches | Contains) =
            (&operand, trigger.condition)
        {
            problems.push(problem(
                "valueFrom",
                format!(
                    "condition {} compares with a value, not another field",
                    trigger.condition.as_str()
                ),
            ));
        }
        if let (Ok(field), Ok(Operand::Field { path, .. })) = (&field, &operand)
            && field.subscription() != path.subscription()
        {
            let source = |p: &FieldPath| {
                p.subscription()
                    .map_or("the state query".to_owned(), |name| {
                        format!("subscription {name}")
                    })
            };
            problems.push(problem(
                "valueFrom.field",
                format!(
                    "{} comes from {}, and the field from {}: a trigger compares values of one source, which arrive together",
                    path,
                    source(path),
                    source(field)
                ),
            ));
        }
        if let Ok(Operand::Field { offset, .. }) = &operand
            && !offset.is_finite()
        {
            problems.push(problem(
                "valueFrom.offset",
                "the offset must be a finite number",
            ));
        }
        if let Ok(Operand::Value(value)) = &operand {
            match trigger.condition {
                In | NotIn if !value.is_array() => problems.push(problem(
                    "value",
                    format!("condition {} needs a list", trigger.condition.as_str()),
                )),
                GreaterThan | GreaterThanOrEqual | LessThan | LessThanOrEqual
                    if Num::from_value(value).is_none() =>
                {
                    problems.push(problem(
                        "value",
                        format!("condition {} needs a number", trigger.condition.as_str()),
                    ))
                }
                Matches if !value.is_string() => {
                    problems.push(problem("value", "matches needs a regex string"))
                }
                _ => {}
            }
        }
        let regex = match (&operand, trigger.condition) {
            (Ok(Operand::Value(Value::String(source))), Matches) => {
                if source.len() > MAX_REGEX_LEN {
                    problems.push(problem(
                        "value",
                        format!("the regex is longer than {MAX_REGEX_LEN} characters"),
                    ));
                    None
                } else {
                    match regex::RegexBuilder::new(source)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                    {
                        Ok(re) => Some(re),
                        Err(e) => {
                            problems.push(problem("value", format!("invalid regex: {e}")));
                            None
                        }
                    }
                }
            }
            _ => None,
        };
        let field = field.map_err(|p| problems.push(p)).ok();
        let operand = operand.map_err(|p| problems.push(p)).ok();
        match (field, operand) {
            (Some(field), Some(operand)) if problems.is_empty() => Ok(Condition {
                field,
                kind: trigger.condition,
                operand,
                regex,
            }),
            _ => Err(problems),
        }
    }

    /// The operand's value in this observation (`None` when a `valueFrom` field is missing
    /// or not a number while an offset is given).
    fn operand(&self, observation: &Observation<'_>) -> Option<Value> {
        match &self.operand {
            Operand::None => None,
            Operand::Value(value) => Some(value.clone()),
            Operand::Field { path, offset } => {
                let other = path.resolve(observation.data, observation.up)?;
                if *offset == 0.0 {
                    return Some(other);
                }
                match Num::from_value(&other)?.plus(*offset) {
                    Num::Int(i) => Some(Value::from(i64::try_from(i).ok()?)),
                    Num::Float(f) => serde_json::Number::from_f64(f).map(Value::Number),
                }
            }
        }
    }

    /// Whether the condition holds for `current`, given the previous observation of the
    /// same target (for `changed` / `unchanged`). A missing field makes every comparison
    /// false; only `absent` (and `changed`, when it disappears) see it.
    pub fn holds(&self, current: &Observation<'_>, previous: Option<&Observation<'_>>) -> bool {
        use ConditionKind::*;
        let leaf = self
            .field
            .resolve(current.data, current.up)
            .filter(|v| !v.is_null());
        match self.kind {
            Exists => leaf.is_some(),
            Absent => leaf.is_none(),
            Changed | Unchanged => {
                let Some(previous) = previous else {
                    return false;
                };
                // A failed poll says nothing about whether a result field changed.
                if !self.field.is_up() && (current.data.is_none() || previous.data.is_none()) {
                    return false;
                }
                let before = self
                    .field
                    .resolve(previous.data, previous.up)
                    .filter(|v| !v.is_null());
                let same = match (&before, &leaf) {
                    (Some(a), Some(b)) => loosely_equal(a, b),
                    (None, None) => true,
                    _ => false,
                };
                if self.kind == Changed {
                    !same
                } else {
                    same && leaf.is_some()
                }
            }
            _ => {
                let (Some(leaf), Some(operand)) = (leaf, self.operand(current)) else {
                    return false;
                };
                self.compare(&leaf, &operand)
            }
        }
    }

    fn compare(&self, leaf: &Value, operand: &Value) -> bool {
        use ConditionKind::*;
        let ordering = || Some(Num::from_value(leaf)?.compare(Num::from_value(operand)?));
        match self.kind {
            Equals => loosely_equal(leaf, operand),
            NotEquals => !loosely_equal(leaf, operand),
            In => operand
                .as_array()
                .is_some_and(|list| list.iter().any(|v| loosely_equal(leaf, v))),
            NotIn => operand
                .as_array()
                .is_some_and(|list| !list.iter().any(|v| loosely_equal(leaf, v))),
            GreaterThan => ordering() == Some(Ordering::Greater),
            GreaterThanOrEqual => matches!(ordering(), Some(Ordering::Greater | Ordering::Equal)),
            LessThan => ordering() == Some(Ordering::Less),
            LessThanOrEqual => matches!(ordering(), Some(Ordering::Less | Ordering::Equal)),
            Contains => contains(leaf, operand),
            Matches => match (&self.regex, as_text(leaf)) {
                (Some(re), Some(text)) => re.is_match(&text),
                _ => false,
            },
            Changed | Unchanged | Exists | Absent => false,
        }
    }
}
