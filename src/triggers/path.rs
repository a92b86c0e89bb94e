//! Field paths: where in a poll result a trigger looks.
//!
//! `daemonStatus.syncStatus` — keys under `data` (an alias is the key);
//! `bestChain.0.stateHash` — a numeric segment indexes a list;
//! `daemonStatus.peers.#` — a final `#` is a list's length;
//! `$up` — true when the last poll of the target succeeded;
//! `@newBlock.protocolState.consensusState.blockHeight` — a value pushed by the
//! subscription named `newBlock` (`spec.subscriptions[].name`, by default its
//! root field): `@` and the name, then the path inside the root field's value.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// A parsed field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath {
    raw: String,
    kind: PathKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PathKind {
    /// `$up`.
    Up,
    /// Keys (or list indexes) from `data`, and whether the path ends in `#`.
    Data { segments: Vec<String>, length: bool },
}

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path has an empty segment (two dots, or a leading or trailing dot)")]
    EmptySegment,
    #[error("`#` (a list's length) can only be the last segment, after a list")]
    MisplacedLength,
    #[error("`$up` stands alone: it is not part of the query result")]
    MisplacedUp,
    #[error("segment {0:?} is not a GraphQL name or a list index")]
    BadSegment(String),
    #[error("`@{0}` names a subscription, and only a path's first segment does")]
    MisplacedSubscription(String),
}

impl FromStr for FieldPath {
    type Err = PathError;

    fn from_str(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw == "$up" {
            return Ok(Self {
                raw: raw.to_owned(),
                kind: PathKind::Up,
            });
        }
        let mut segments: Vec<String> = raw.split('.').map(str::to_owned).collect();
        let length = segments.last().is_some_and(|s| s == "#");
        if length {
            segments.pop();
        }
        if segments.is_empty() {
            return Err(PathError::MisplacedLength);
        }
        for (i, segment) in segments.iter().enumerate() {
            if let Some(name) = segment.strip_prefix('@') {
                if i > 0 {
                    return Err(PathError::MisplacedSubscription(name.to_owned()));
                }
                if !is_name(name) {
                    return Err(PathError::BadSegment(segment.clone()));
                }
                continue;
            }
            if segment.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if segment == "#" {
                return Err(PathError::MisplacedLength);
            }
            if segment == "$up" {
                return Err(PathError::MisplacedUp);
            }
            if !is_name(segment) && !is_index(segment) {
                return Err(PathError::BadSegment(segment.clone()));
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            kind: PathKind::Data { segments, length },
        })
    }
}

/// A GraphQL name: `[_A-Za-z][_0-9A-Za-z]*`.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A list index: ASCII digits only (`usize`'s parser alone would also take `+1`).
fn is_index(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<usize>().is_ok()
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One segment of a data path, for callers that walk a schema alongside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A response key (field name or alias).
    Key(&'a str),
    /// A list index.
    Index(usize),
}

impl FieldPath {
    /// Whether this is `$up`.
    pub fn is_up(&self) -> bool {
        matches!(self.kind, PathKind::Up)
    }

    /// The subscription whose pushed value the path reads (`@name...`), or
    /// `None` for a path into the state query's answer (or `$up`).
    pub fn subscription(&self) -> Option<&str> {
        match &self.kind {
            PathKind::Data { segments, .. } => segments.first()?.strip_prefix('@'),
            PathKind::Up => None,
        }
    }

    /// Whether the path ends in `#` (a list's length).
    pub fn is_length(&self) -> bool {
        matches!(self.kind, PathKind::Data { length: true, .. })
    }

    /// The data segments, numeric ones as indexes (empty for `$up`).
    pub fn segments(&self) -> Vec<Segment<'_>> {
        match &self.kind {
            PathKind::Up => Vec::new(),
            PathKind::Data { segments, .. } => segments
                .iter()
                .map(|s| match s.parse::<usize>() {
                    Ok(i) => Segment::Index(i),
                    Err(_) => Segment::Key(s),
                })
                .collect(),
        }
    }

    /// The value at this path in `data` (the result's `data` object, if any), or
    /// `None` when the path leads nowhere. `up` answers `$up`.
    pub fn resolve(&self, data: Option<&Value>, up: bool) -> Option<Value> {
        let (segments, length) = match &self.kind {
            PathKind::Up => return Some(Value::Bool(up)),
            PathKind::Data { segments, length } => (segments, *length),
        };
        let mut current = data?;
        for segment in segments {
            current = match current {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        if length {
            return match current {
                Value::Array(items) => Some(Value::from(items.len())),
                _ => None,
            };
        }
        Some(current.clone())
    }

    /// Copies into `kept` what [`FieldPath::resolve`] reads of `data` at this
    /// path, and nothing else: resolving the path in `kept` then gives what it
    /// gives in `data`. A list whose length is read keeps its length, not its
    /// items. Poll results are kept this way between polls.
    pub fn keep(&self, data: &Value, kept: &mut Value) {
        let PathKind::Data { segments, length } = &self.kind else {
            return;
        };
        if self.resolve(Some(data), true).is_none() {
            return;
        }
        let mut from = data;
        let mut into = kept;
        for segment in segments {
            match from {
                Value::Object(map) => {
                    let Some(next) = map.get(segment) else { return };
                    if !into.is_object() {
                        *into = Value::Object(serde_json::Map::new());
                    }
                    let Value::Object(target) = into else { return };
                    into = target.entry(segment.clone()).or_insert(Value::Null);
                    from = next;
                }
                Value::Array(items) => {
                    let Some((index, next)) = segment
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| items.get(i).map(|n| (i, n)))
                    else {
                        return;
                    };
                    if !into.is_array() {
                        *into = Value::Array(Vec::new());
                    }
                    let Value::Array(target) = into else { return };
                    if target.len() <= index {
                        target.resize(index + 1, Value::Null);
                    }
                    into = &mut target[index];
                    from = next;
                }
                _ => return,
            }
        }
        match (length, from) {
            (true, Value::Array(items)) => {
                if !into.is_array() {
                    *into = Value::Array(Vec::new());
                }
                if let Value::Array(target) = into
                    && target.len() < items.len()
                {
                    target.resize(items.len(), Value::Null);
                }
            }
            _ => *into = from.clone(),
        }
    }
}
