//! The input as a TargetApp's `stateQuery`, checked against the embedded Mina
//! schema and against a schema read from a ConfigMap (`parse_schema`: SDL, or an
//! introspection result), then trigger paths resolved against what it selects.
//!
//! Invariants: no panic; a refused query says why; every path the query selects
//! has a type, and a condition check on it answers.

#![no_main]

use std::sync::LazyLock;

use kco::admission::cache::parse_schema;
use kco::admission::query::{QuerySchema, check_condition, check_query};
use kco::targetapp::ConditionKind;
use kco::triggers::FieldPath;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

static MINA: LazyLock<QuerySchema> = LazyLock::new(QuerySchema::mina);

const PATHS: [&str; 9] = [
    "$up",
    "daemonStatus.syncStatus",
    "daemonStatus.blockchainLength",
    "daemonStatus.peers.#",
    "daemonStatus.peers.0.peerId",
    "version",
    "bestChain.0.stateHash",
    "a.b.c",
    "daemonStatus",
];

fn exercise(schema: &QuerySchema, query: &str) {
    match check_query(schema, query) {
        Err(problems) => {
            assert!(!problems.is_empty(), "a refused query says why");
            assert!(problems.iter().all(|p| !p.is_empty()));
        }
        Ok(shape) => {
            for raw in PATHS {
                let Ok(path) = raw.parse::<FieldPath>() else {
                    continue;
                };
                if let Ok(leaf) = shape.resolve(&path) {
                    let _ = check_condition(ConditionKind::Equals, &leaf, Some(&json!("SYNCED")));
                    let _ = check_condition(ConditionKind::In, &leaf, Some(&json!([1, "2", true])));
                    let _ = check_condition(ConditionKind::GreaterThan, &leaf, Some(&json!(3)));
                    let _ = check_condition(ConditionKind::Contains, &leaf, Some(&json!("x")));
                }
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // `query<NUL>schema`: the part after a NUL is a ConfigMap schema for the query.
    let (query, schema) = match text.split_once('\0') {
        Some((query, schema)) => (query, Some(schema)),
        None => (text, None),
    };
    exercise(&MINA, query);
    if let Some(schema) = schema
        && let Ok(custom) = parse_schema(schema)
    {
        exercise(&custom, query);
    }
});
