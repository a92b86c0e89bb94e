//! Reading an action's `parameters` (free-form JSON) with typed accessors that
//! report problems with their path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

/// A parameter problem: `path` under `parameters` ("" for the action itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    pub path: String,
    pub message: String,
}

impl ParamProblem {
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

/// Problems in one line, `; `-separated (an `ActionError::Invalid`'s text).
pub fn joined(problems: &[ParamProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl std::fmt::Display for ParamProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "parameters.{}: {}", self.path, self.message)
        }
    }
}

/// An action's parameters.
#[derive(Debug, Clone, Default)]
pub struct Params {
    map: BTreeMap<String, Value>,
}

impl Params {
    pub fn new(map: Option<&BTreeMap<String, Value>>) -> Self {
        Self {
            map: map.cloned().unwrap_or_default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Problems for keys not in `known`.
    pub fn unknown(&self, known: &[&str]) -> Vec<ParamProblem> {
        self.map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .map(|k| {
                ParamProblem::at(
                    k,
                    format!("unknown parameter; expected one of: {}", known.join(", ")),
                )
            })
            .collect()
    }

    /// An integer parameter within `min..=max`, if present.
    pub fn int(
        &self,
        key: &str,
        min: i64,
        max: i64,
        problems: &mut Vec<ParamProblem>,
    ) -> Option<i64> {
        let value = self.map.get(key)?;
        match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                problems.push(ParamProblem::at(
                    key,
                    format!("{n} is outside {min}..={max}"),
                ));
                None
            }
            None => {
                problems.push(ParamProblem::at(
                    key,
                    format!("must be an integer, not {value}"),
                ));
                None
            }
        }
    }

    /// A non-empty string parameter, if present.
    pub fn string(&self, key: &str, problems: &mut Vec<ParamProblem>) -> Option<String> {
        let value = self.map.get(key)?;
        match value.as_str() {
            Some(s) if !s.is_empty() => Some(s.to_owned()),
            _ => {
                problems.push(ParamProblem::at(key, "must be a non-empty string"));
                None
            }
        }
    }

    /// A parameter that names an object, if present: a string that passes `rule`
    /// (one of [`crate::names`]'s), so that it can only ever be a name in a
    /// request path, never a subresource or another namespace's path.
    pub fn object_name(
        &self,
        key: &str,
        rule: fn(&str) -> Result<(), String>,
        problems: &mut Vec<ParamProblem>,
    ) -> Option<String> {
        let name = self.string(key, problems)?;
        match rule(&name) {
            Ok(()) => Some(name),
            Err(why) => {
                problems.push(ParamProblem::at(key, why));
                None
            }
        }
    }

    /// A string parameter that must be one of `choices`, if present.
    pub fn choice(
        &self,
        key: &str,
        choices: &[&str],
        problems: &mut Vec<ParamProblem>,
    ) -> Option<String> {
        let s = self.string(key, problems)?;
        if choices.contains(&s.as_str()) {
            Some(s)
        } else {
            problems.push(ParamProblem::at(
                key,
                format!("{s:?} is not one of: {}", choices.join(", ")),
            ));
            None
        }
    }

    /// `timeoutSeconds` and the like, for callers that validated them already.
    pub fn seconds(&self, key: &str) -> Option<Duration> {
        self.map
            .get(key)?
            .as_u64()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }
}

/// Adds a problem when a required key is missing.
pub fn require(params: &Params, key: &str, problems: &mut Vec<ParamProblem>) {
    if params.get(key).is_none() {
        problems.push(ParamProblem::at(key, "is required"));
    }
}

/// `Ok` when there are no problems.
pub fn done(problems: Vec<ParamProblem>) -> Result<(), Vec<ParamProblem>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
