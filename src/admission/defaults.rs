//! Defaulting (the mutating webhook, and `kco validate` before it validates): every
//! default of the TargetApp reference (docs/targetapp.md) written into the object,
//! so that what is stored says what KCO will do. Applying it to its own result
//! changes nothing.

use serde_json::{Map, Value, json};

use crate::targetapp::{DEFAULT_COOLDOWN, DEFAULT_PORT, DEFAULT_STATE_QUERY};
use crate::triggers::default_rule_name;

/// Defaults that come from the operator's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// DEFAULT_POLLING_INTERVAL, in seconds.
    pub polling_interval: u64,
    /// GRAPHQL_TIMEOUT, in seconds.
    pub timeout_seconds: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            polling_interval: 30,
            timeout_seconds: 10,
        }
    }
}

/// Fills in every default of a TargetApp's `spec` (a JSON object; anything else
/// is left as it is for validation to refuse).
pub fn apply(spec: &mut Value, defaults: Defaults) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    set(spec, "graphqlEndpoint", json!("/graphql"));
    set(spec, "port", json!(DEFAULT_PORT));
    set(spec, "scheme", json!("http"));
    set(spec, "pollingInterval", json!(defaults.polling_interval));
    set(spec, "timeoutSeconds", json!(defaults.timeout_seconds));
    set(spec, "stateQuery", json!(DEFAULT_STATE_QUERY));
    set(spec, "schema", json!({"mina": {}}));
    set(spec, "dryRun", json!(false));
    set(spec, "suspend", json!(false));
    set(spec, "actions", json!([]));
    // Normalisation: a query with surrounding blank space is the same query.
    if let Some(Value::String(query)) = spec.get_mut("stateQuery") {
        let trimmed = query.trim();
        if trimmed.len() != query.len() && !trimmed.is_empty() {
            *query = trimmed.to_owned();
        }
    }
    if let Some(Value::Array(rules)) = spec.get_mut("actions") {
        for (index, rule) in rules.iter_mut().enumerate() {
            let Some(rule) = rule.as_object_mut() else {
                continue;
            };
            if !rule.contains_key("name") {
                rule.insert("name".into(), json!(default_rule_name(index)));
            }
            set(rule, "cooldown", json!(DEFAULT_COOLDOWN));
            // A rule that only records has no action to take parameters.
            if rule.get("action").is_some_and(|a| !a.is_null()) {
                set(rule, "parameters", json!({}));
            }
            if let Some(Value::Array(steps)) = rule.get_mut("then") {
                for step in steps.iter_mut().filter_map(Value::as_object_mut) {
                    set(step, "parameters", json!({}));
                }
            }
        }
    }
}

/// Sets `key` when it is absent or null.
fn set(object: &mut Map<String, Value>, key: &str, value: Value) {
    if object.get(key).is_none_or(Value::is_null) {
        object.insert(key.to_owned(), value);
    }
}

/// The JSON patch that defaults `object` (a whole TargetApp), or an empty patch.
pub fn patch(object: &Value, defaults: Defaults) -> json_patch::Patch {
    let Some(spec) = object.get("spec") else {
        return json_patch::Patch(Vec::new());
    };
    let mut defaulted = spec.clone();
    apply(&mut defaulted, defaults);
    let mut ops = json_patch::diff(spec, &defaulted).0;
    for op in &mut ops {
        prefix(op, "/spec");
    }
    json_patch::Patch(ops)
}

fn prefix(op: &mut json_patch::PatchOperation, root: &str) {
    use json_patch::PatchOperation as Op;
    let path = match op {
        Op::Add(o) => &mut o.path,
        Op::Remove(o) => &mut o.path,
        Op::Replace(o) => &mut o.path,
        Op::Move(o) => &mut o.path,
        Op::Copy(o) => &mut o.path,
        Op::Test(o) => &mut o.path,
    };
    let joined = format!("{root}{path}");
    if let Ok(pointer) = json_patch::jsonptr::PointerBuf::parse(joined) {
        *path = pointer;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_written() {
        let mut spec = json!({
            "selector": {"matchLabels": {"app": "mina"}},
            "stateQuery": "  query { version }\n",
            "actions": [
                {"action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}},
                {"name": "lag", "action": "webhook", "cooldown": "1h", "parameters": {"url": "https://x.example"},
                 "trigger": {"field": "$up", "condition": "equals", "value": false},
                 "then": [{"action": "restart_pod"}, {"action": "restart_pod", "parameters": {"gracePeriod": 5}}]},
                {"trigger": {"field": "$up", "condition": "changed"}}
            ]
        });
        apply(
            &mut spec,
            Defaults {
                polling_interval: 15,
                timeout_seconds: 5,
            },
        );
        assert_eq!(
            spec,
            json!({
                "selector": {"matchLabels": {"app": "mina"}},
                "graphqlEndpoint": "/graphql", "port": 3085, "scheme": "http",
                "pollingInterval": 15, "timeoutSeconds": 5,
                "stateQuery": "query { version }",
                "schema": {"mina": {}}, "dryRun": false, "suspend": false,
                "actions": [
                    {"name": "rule-0", "action": "restart_pod", "cooldown": "5m", "parameters": {},
                     "trigger": {"field": "$up", "condition": "equals", "value": false}},
                    {"name": "lag", "action": "webhook", "cooldown": "1h", "parameters": {"url": "https://x.example"},
                     "trigger": {"field": "$up", "condition": "equals", "value": false},
                     "then": [{"action": "restart_pod", "parameters": {}},
                              {"action": "restart_pod", "parameters": {"gracePeriod": 5}}]},
                    {"name": "rule-2", "cooldown": "5m", "trigger": {"field": "$up", "condition": "changed"}}
                ]
            })
        );
    }

    #[test]
    fn defaulting_twice_changes_nothing_and_the_patch_applies() {
        let object = json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "m", "namespace": "chain"},
            "spec": {"selector": {}, "pollingInterval": 60,
                     "actions": [{"action": "restart_pod", "trigger": {"field": "$up", "condition": "exists"}}]}
        });
        let first = patch(&object, Defaults::default());
        assert!(!first.0.is_empty());
        assert!(
            first
                .0
                .iter()
                .all(|op| matches!(op, json_patch::PatchOperation::Add(a) if a.path.to_string().starts_with("/spec/"))),
            "{first:?}"
        );
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &first).unwrap();
        assert_eq!(patched["spec"]["pollingInterval"], 60, "given values stay");
        assert_eq!(patched["spec"]["actions"][0]["name"], "rule-0");
        assert_eq!(patch(&patched, Defaults::default()).0, vec![], "idempotent");
    }

    #[test]
    fn garbage_is_left_for_validation() {
        let mut spec = json!("not an object");
        apply(&mut spec, Defaults::default());
        assert_eq!(spec, json!("not an object"));
        let object = json!({"spec": {"actions": "nope"}});
        let p = patch(&object, Defaults::default());
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &p).unwrap();
        assert_eq!(patched["spec"]["actions"], "nope");
    }
}
