//! Fields a manifest sets that its kind's schema does not know: what the
//! apiserver refuses under kubectl's default strict field validation
//! (`unknown field "spec.pollingIntervall"`), and what decoding it into the Rust
//! types would silently drop. `kco validate` reports each with its path, so a
//! typo is an error before apply, not a setting lost after. Pure logic over the
//! CRD's OpenAPI schema.

use std::sync::OnceLock;

use serde_json::Value;

use super::Problem;

/// The fields of `document` (a TargetApp manifest) that the TargetApp CRD's
/// schema does not have, each with its path and the closest known field.
pub fn unknown_in_targetapp(document: &Value) -> Vec<Problem> {
    use kube::CustomResourceExt;
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    unknown(
        document,
        SCHEMA.get_or_init(|| schema_of(&crate::targetapp::TargetApp::crd())),
    )
}

/// The fields of `document` (a TenantQuota manifest) that the TenantQuota CRD's
/// schema does not have.
pub fn unknown_in_tenantquota(document: &Value) -> Vec<Problem> {
    use kube::CustomResourceExt;
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    unknown(
        document,
        SCHEMA.get_or_init(|| schema_of(&crate::tenancy::TenantQuota::crd())),
    )
}

/// The OpenAPI schema of a whole object of `crd`'s kind.
fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .map(|mut schema| {
            // Every object has these; the CRD's schema leaves them out, and the
            // apiserver checks `metadata` on its own.
            if let Some(properties) = schema["properties"].as_object_mut() {
                for (field, kind) in [
                    ("apiVersion", "string"),
                    ("kind", "string"),
                    ("metadata", "object"),
                ] {
                    properties.insert(field.to_owned(), serde_json::json!({"type": kind}));
                }
            }
            schema
        })
        .unwrap_or(Value::Null)
}

/// The fields of `value` that `schema` (an OpenAPI v3 structural schema) does not
/// have. Objects without `properties` (such as `metadata`, which the apiserver
/// checks on its own) and fields marked `x-kubernetes-preserve-unknown-fields`
/// are free-form.
pub fn unknown(value: &Value, schema: &Value) -> Vec<Problem> {
    let mut found = Vec::new();
    walk(value, schema, "", &mut found);
    found
}

fn walk(value: &Value, schema: &Value, path: &str, found: &mut Vec<Problem>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match value {
        Value::Object(fields) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (key, child) in fields {
                let at = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match properties.get(key) {
                    Some(child_schema) => walk(child, child_schema, &at, found),
                    None => found.push(Problem {
                        message: match closest(key, properties.keys()) {
                            Some(known) => format!("unknown field; did you mean {known:?}?"),
                            None => format!(
                                "unknown field; {} has {}",
                                if path.is_empty() { "the object" } else { path },
                                properties
                                    .keys()
                                    .map(String::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        },
                        path: at,
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// The known field `key` is most likely a typo of: at most two edits away, or
/// the same but for case.
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    known
        .map(|k| (distance(&key.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn typos_anywhere_are_unknown_fields_with_their_path_and_the_likely_field() {
        let problems = unknown_in_targetapp(&json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "mina", "labels": {"any": "thing"}, "annotations": {"a": "b"}},
            "spec": {
                "selector": {"matchLabels": {"app": "mina"}, "matchLabel": {"x": "y"}},
                "pollingIntervall": 5,
                "actions": [
                    {"action": "restart_pod", "trigger": {"field": "$up", "condition": "exists"}},
                    {"action": "webhook", "paramters": {"url": "https://x.example"},
                     "trigger": {"field": "$up", "condition": "equals", "value": {"free": "form"}, "For": "1m"}}
                ],
                "metrics": [{"field": "$up", "name": "up", "podLabel": ["app"]}],
                "somethingElse": true
            },
            "spce": {}
        }));
        assert_eq!(
            paths(&problems),
            [
                "spce",
                "spec.actions[1].paramters",
                "spec.actions[1].trigger.For",
                "spec.metrics[0].podLabel",
                "spec.pollingIntervall",
                "spec.selector.matchLabel",
                "spec.somethingElse",
            ],
            "{problems:#?}"
        );
        let message = |path: &str| {
            problems
                .iter()
                .find(|p| p.path == path)
                .map(|p| p.message.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            message("spec.pollingIntervall"),
            "unknown field; did you mean \"pollingInterval\"?"
        );
        assert_eq!(
            message("spec.actions[1].paramters"),
            "unknown field; did you mean \"parameters\"?"
        );
        assert_eq!(
            message("spec.actions[1].trigger.For"),
            "unknown field; did you mean \"for\"?"
        );
        assert!(
            message("spec.somethingElse").contains("spec has "),
            "{problems:?}"
        );
    }

    #[test]
    fn the_documented_examples_have_no_unknown_field() {
        for text in [
            include_str!("../../docs/examples/targetapp-mina.yaml"),
            include_str!("../../docs/examples/targetapp-mina-ops.yaml"),
        ] {
            let value: Value = serde_saphyr::from_str(text).unwrap();
            assert_eq!(unknown_in_targetapp(&value), vec![]);
        }
    }

    #[test]
    fn distances_are_edits() {
        assert_eq!(distance("pollingIntervall", "pollingInterval"), 1);
        assert_eq!(distance("paramters", "parameters"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
