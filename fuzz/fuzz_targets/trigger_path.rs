//! A trigger field path (the input's first line) parsed and resolved against a
//! JSON document (the rest of the input, or a Mina-like sample when that is not
//! JSON), and checked against the default state query's shape.
//!
//! Invariants: a parsed path prints as it was written and parses again to
//! itself; it resolves exactly as the documented grammar says (keys in objects,
//! digit segments in lists, a final `#` is a list's length, `$up` stands alone);
//! a document never differs from itself.

#![no_main]

use std::collections::BTreeSet;
use std::sync::LazyLock;

use kco::admission::query::{QuerySchema, QueryShape, check_condition, check_query};
use kco::targetapp::{ConditionKind, DEFAULT_STATE_QUERY};
use kco::triggers::{FieldPath, Segment, changes};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

static SHAPE: LazyLock<Option<QueryShape>> =
    LazyLock::new(|| check_query(&QuerySchema::mina(), DEFAULT_STATE_QUERY).ok());

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

fn sample() -> Value {
    json!({"daemonStatus": {"syncStatus": "SYNCED", "blockchainLength": "1000",
        "peers": [{"peerId": "a"}, {"peerId": "b"}], "uptimeSecs": 7}, "0": [[1, 2], "x"]})
}

/// The documented grammar, walked by hand.
fn reference(raw: &str, data: Option<&Value>, up: bool) -> Option<Value> {
    if raw == "$up" {
        return Some(Value::Bool(up));
    }
    let (body, length) = match raw.strip_suffix(".#") {
        Some(body) => (body, true),
        None => (raw, false),
    };
    let mut current = data?;
    for segment in body.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) if segment.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    if length {
        return current.as_array().map(|items| Value::from(items.len()));
    }
    Some(current.clone())
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fuzz_target!(|input: &[u8]| {
    let (line, rest) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let Ok(raw) = std::str::from_utf8(line) else {
        return;
    };
    let data: Value = serde_json::from_slice(rest).unwrap_or_else(|_| sample());

    let Ok(path) = raw.parse::<FieldPath>() else {
        return;
    };
    assert_eq!(path.to_string(), raw, "a path prints as written");
    assert_eq!(raw.parse::<FieldPath>().as_ref(), Ok(&path));
    assert_eq!(path.is_up(), raw == "$up");
    assert_eq!(path.is_length(), raw.ends_with(".#"));
    if !path.is_up() {
        let body = raw.strip_suffix(".#").unwrap_or(raw);
        for (i, segment) in body.split('.').enumerate() {
            let first = i == 0;
            assert!(
                is_name(segment)
                    || (first && segment.strip_prefix('@').is_some_and(is_name))
                    || (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())),
                "{raw:?} was accepted with the segment {segment:?}, neither a name nor an index"
            );
        }
        assert_eq!(path.segments().len(), body.split('.').count());
        for segment in path.segments() {
            if let Segment::Key(key) = segment {
                assert!(is_name(key) || key.strip_prefix('@').is_some_and(is_name));
            }
        }
    }

    for up in [true, false] {
        assert_eq!(path.resolve(None, up), reference(raw, None, up));
        let resolved = path.resolve(Some(&data), up);
        assert_eq!(
            resolved,
            reference(raw, Some(&data), up),
            "{raw:?} in {data}"
        );
        if path.is_length() {
            assert!(resolved.is_none_or(|n| n.is_u64()), "a length is a count");
        }
    }

    let fields = BTreeSet::from([path.clone()]);
    assert!(
        changes(&fields, &data, &data).is_empty(),
        "a document equals itself"
    );
    let other = sample();
    let diff = changes(&fields, &other, &data);
    let differs = path.resolve(Some(&other), true) != path.resolve(Some(&data), true);
    assert_eq!(diff.len(), usize::from(differs));

    if let Some(shape) = SHAPE.as_ref()
        && let Ok(leaf) = shape.resolve(&path)
    {
        for kind in KINDS {
            let _ = check_condition(kind, &leaf, None);
            let _ = check_condition(kind, &leaf, Some(&json!(["SYNCED", 1, "2", null])));
            let _ = check_condition(kind, &leaf, Some(&data));
        }
    }
});
