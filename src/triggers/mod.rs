//! The trigger language: field paths, conditions, and when a rule fires.
//! Pure code: plain data in, plain data out, the clock passed in.

mod condition;
mod firing;
mod path;
mod value;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

pub use condition::{Condition, Observation, Operand, TriggerProblem};
pub use firing::{Adoption, Decision, FiringState, Recorded};
pub use path::{FieldPath, PathError, Segment};
pub use value::Num;

use crate::targetapp::{ActionRule, ConditionKind, DEFAULT_COOLDOWN};

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name (`rule-<index>` when the manifest gives none).
    pub name: String,
    pub condition: Condition,
    /// How long the condition must hold before firing.
    pub hold_for: Duration,
    /// Minimum time between firings for one target.
    pub cooldown: Duration,
    /// The actions to run, in order; none for a rule that only records its firings.
    pub actions: Vec<String>,
}

/// A problem with one rule, with its field path in the TargetApp
/// (`spec.actions[1].trigger.value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The name a rule goes by.
pub fn rule_name(rule: &ActionRule, index: usize) -> String {
    rule.name
        .clone()
        .unwrap_or_else(|| default_rule_name(index))
}

/// The name of the rule at `index` that names none (what defaulting writes).
pub fn default_rule_name(index: usize) -> String {
    format!("rule-{index}")
}

/// Parses a Go duration (`90s`, `5m`, `1h30m`); negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    if parsed.is_negative() {
        return Err(format!("duration {text:?} is negative"));
    }
    Ok(parsed.into())
}

/// The most `matches` rules one TargetApp may have: each regex costs up to tens of
/// milliseconds to compile (more in debug builds), and admission must answer
/// within its timeout.
pub const MAX_REGEX_RULES: usize = 20;

/// Compiles every rule, reporting every problem of every rule at once.
pub fn compile(rules: &[ActionRule]) -> Result<Vec<Rule>, Vec<RuleProblem>> {
    let mut compiled = Vec::with_capacity(rules.len());
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut regexes = 0;
    for (index, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("spec.actions[{index}].{field}");
        let name = rule_name(rule, index);
        if !names.insert(name.clone()) {
            problems.push(RuleProblem {
                path: at("name"),
                message: format!("rule name {name:?} is used more than once"),
            });
        }
        if rule.trigger.condition == ConditionKind::Matches {
            regexes += 1;
            if regexes > MAX_REGEX_RULES {
                // Refused before its regex is compiled.
                problems.push(RuleProblem {
                    path: at("trigger.condition"),
                    message: format!(
                        "more than {MAX_REGEX_RULES} matches rules in one TargetApp (split them across TargetApps)"
                    ),
                });
                continue;
            }
        }
        let condition = Condition::compile(&rule.trigger).map_err(|found| {
            problems.extend(found.into_iter().map(|p| RuleProblem {
                path: at(&format!("trigger.{}", p.field)),
                message: p.message,
            }))
        });
        let mut duration = |field: &str, text: Option<&str>, default: &str| {
            parse_duration(text.unwrap_or(default)).map_err(|message| {
                problems.push(RuleProblem {
                    path: at(field),
                    message,
                })
            })
        };
        let hold_for = duration("trigger.for", rule.trigger.for_.as_deref(), "0s");
        let cooldown = duration("cooldown", rule.cooldown.as_deref(), DEFAULT_COOLDOWN);
        if rule.trigger.for_.is_some() && rule.trigger.condition == ConditionKind::Changed {
            problems.push(RuleProblem {
                path: at("trigger.for"),
                message: "changed fires on every change; `for` cannot apply to it (use unchanged with for)".into(),
            });
        }
        if let (Ok(condition), Ok(hold_for), Ok(cooldown)) = (condition, hold_for, cooldown) {
            compiled.push(Rule {
                name,
                condition,
                hold_for,
                cooldown,
                actions: rule.steps().iter().map(|s| s.action.to_owned()).collect(),
            });
        }
    }
    if problems.is_empty() {
        Ok(compiled)
    } else {
        Err(problems)
    }
}

impl Rule {
    /// The subscription whose pushed values the rule compares, or `None` when it
    /// compares the state query's answer.
    pub fn subscription(&self) -> Option<&str> {
        self.condition.field.subscription()
    }

    /// Evaluates the rule for one target and advances its firing state.
    pub fn evaluate(
        &self,
        state: &mut FiringState,
        current: &Observation<'_>,
        previous: Option<&Observation<'_>>,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Decision {
        let holds = self.condition.holds(current, previous);
        let new_edge = self.condition.kind == ConditionKind::Changed;
        state.step(holds, new_edge, now, self.hold_for, self.cooldown)
    }
}

/// The fields the rules look at (their `field` and `valueFrom` paths), without `$up`.
pub fn referenced_fields(rules: &[Rule]) -> BTreeSet<FieldPath> {
    let mut fields = BTreeSet::new();
    for rule in rules {
        fields.insert(rule.condition.field.clone());
        if let Operand::Field { path, .. } = &rule.condition.operand {
            fields.insert(path.clone());
        }
    }
    fields.retain(|f| !f.is_up());
    fields
}

/// A referenced field whose value differs between two results.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub field: FieldPath,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// The referenced fields that changed from `previous` to `current` (both `data` of
/// successful polls). Fields nobody references (uptime counters) never show up.
pub fn changes(fields: &BTreeSet<FieldPath>, previous: &Value, current: &Value) -> Vec<Change> {
    fields
        .iter()
        .filter_map(|field| {
            let old = field.resolve(Some(previous), true);
            let new = field.resolve(Some(current), true);
            (old != new).then(|| Change {
                field: field.clone(),
                old,
                new,
            })
        })
        .collect()
}
