//! The one validator: every check a TargetApp must pass, reporting every problem
//! at once with its field path. The admission webhook, `kco validate` and the
//! monitor (for objects stored before the webhook existed) all call it.

use std::net::IpAddr;

use serde_json::Value;

use super::query::{QuerySchema, check_condition, check_query};
use crate::actions::Registry;
use crate::monitor::discovery::{is_absolute, selector_query};
use crate::targetapp::{SchemaSource, TargetApp};
use crate::triggers::{self, Operand};

/// A refusal: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What the validator found: problems refuse the object, warnings do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }

    fn refuse(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates TargetApps against the built-in Mina schema, or a schema given for
/// objects that name a ConfigMap schema.
pub struct Validator {
    mina: QuerySchema,
    registry: Registry,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    pub fn new() -> Self {
        Self {
            mina: QuerySchema::mina(),
            registry: Registry::builtin(),
        }
    }

    /// Every problem with `app`. `custom` is the schema for a `configMapRef` schema
    /// source, when the caller has it (otherwise such queries are not checked and a
    /// warning says so).
    pub fn validate(&self, app: &TargetApp, custom: Option<&QuerySchema>) -> Verdict {
        let mut v = Verdict::default();
        let spec = &app.spec;
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");

        if spec.polling_interval == Some(0) {
            v.refuse("spec.pollingInterval", "must be at least 1 second");
        }
        if spec.timeout_seconds == Some(0) {
            v.refuse("spec.timeoutSeconds", "must be at least 1 second");
        }
        if spec.ca_secret_ref.is_some() {
            v.refuse(
                "spec.caSecretRef",
                "a CA bundle from a Secret is not supported yet",
            );
        }
        if is_absolute(&spec.graphql_endpoint) {
            if let Err(message) = check_graphql_url(&spec.graphql_endpoint, namespace) {
                v.refuse("spec.graphqlEndpoint", message);
            }
        } else if spec.graphql_endpoint.contains("://") {
            v.refuse(
                "spec.graphqlEndpoint",
                "only http and https URLs, or a path, are allowed",
            );
        } else {
            match &spec.selector {
                None => v.refuse("spec.selector", "required when graphqlEndpoint is a path"),
                Some(selector) => {
                    if let Err(e) = selector_query(selector) {
                        v.refuse("spec.selector", e);
                    }
                }
            }
        }

        let schema = match (&spec.schema, custom) {
            (
                SchemaSource {
                    config_map_ref: Some(_),
                    ..
                },
                Some(custom),
            ) => Some(custom),
            (
                SchemaSource {
                    config_map_ref: Some(_),
                    mina: None,
                },
                None,
            ) => {
                v.warnings
                    .push("the query is not checked: its schema comes from a ConfigMap".to_owned());
                None
            }
            (
                SchemaSource {
                    config_map_ref: Some(_),
                    mina: Some(_),
                },
                _,
            ) => {
                v.refuse("spec.schema", "give either mina or configMapRef, not both");
                None
            }
            (
                SchemaSource {
                    mina: None,
                    config_map_ref: None,
                },
                _,
            ) => {
                v.refuse("spec.schema", "give mina: {} or configMapRef");
                None
            }
            _ => Some(&self.mina),
        };
        let shape = match schema.map(|s| check_query(s, &spec.state_query)) {
            Some(Ok(shape)) => Some(shape),
            Some(Err(problems)) => {
                for p in problems {
                    v.refuse("spec.stateQuery", p);
                }
                None
            }
            None => None,
        };

        if let Err(problems) = triggers::compile(&spec.actions) {
            for p in problems {
                v.refuse(p.path, p.message);
            }
        }
        for (i, rule) in spec.actions.iter().enumerate() {
            let at = |field: &str| format!("spec.actions[{i}].{field}");
            if let Err(problems) = self
                .registry
                .validate(&rule.action, rule.parameters.as_ref())
            {
                for p in problems {
                    let path = if p.path.is_empty() {
                        at("action")
                    } else {
                        at(&format!("parameters.{}", p.path))
                    };
                    v.refuse(path, p.message);
                }
            }
            let (Some(shape), Ok(condition)) =
                (&shape, triggers::Condition::compile(&rule.trigger))
            else {
                continue;
            };
            match shape.resolve(&condition.field) {
                Err(message) => v.refuse(at("trigger.field"), message),
                Ok(leaf) => {
                    let value = match &condition.operand {
                        Operand::Value(value) => Some(value),
                        _ => None,
                    };
                    if let Err(message) = check_condition(condition.kind, &leaf, value) {
                        let field = if value.is_some() {
                            "trigger.value"
                        } else {
                            "trigger.condition"
                        };
                        v.refuse(at(field), message);
                    }
                }
            }
            if let Operand::Field { path, .. } = &condition.operand
                && let Err(message) = shape.resolve(path)
            {
                v.refuse(at("trigger.valueFrom.field"), message);
            }
        }
        if !spec.actions.is_empty() && spec.service_account_name.is_none() {
            v.warnings.push(
                "spec.serviceAccountName is not set: triggers will fire but their actions will be refused".to_owned(),
            );
        }
        v
    }
}

/// The default endpoint policy for absolute GraphQL URLs: http(s) to a Service of
/// the same namespace, never to loopback, link-local, unspecified or metadata addresses.
pub fn check_graphql_url(raw: &str, namespace: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {} is not allowed (http or https only)",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not allowed".to_owned());
    }
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Err(forbidden_ip(ip).unwrap_or_else(|| {
            format!(
                "{ip} is an IP address; absolute URLs must name a Service of namespace {namespace}"
            )
        }));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Err("loopback hosts are not allowed".to_owned());
    }
    let service = [
        format!(".{namespace}.svc"),
        format!(".{namespace}.svc.cluster.local"),
    ];
    if !service.iter().any(|suffix| host.ends_with(suffix.as_str())) {
        return Err(format!(
            "{host} is not a Service of namespace {namespace} (<service>.{namespace}.svc[.cluster.local])"
        ));
    }
    Ok(())
}

/// Why an address may never be a target, if it may not.
pub fn forbidden_ip(ip: IpAddr) -> Option<String> {
    let why = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local (cloud metadata lives here)",
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => "unspecified",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_unspecified() => "unspecified",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return forbidden_ip(IpAddr::V4(v4)),
            None => return None,
        },
        IpAddr::V4(_) => return None,
    };
    Some(format!("{ip} is a {why} address, which is never allowed"))
}

/// Reads a JSON or YAML value into a TargetApp, as the API would.
pub fn parse_targetapp(value: Value) -> Result<TargetApp, String> {
    serde_json::from_value(value).map_err(|e| format!("not a valid TargetApp: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn app(spec: Value) -> TargetApp {
        parse_targetapp(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "mina", "namespace": "chain"}, "spec": spec
        }))
        .unwrap()
    }

    fn paths(verdict: &Verdict) -> Vec<&str> {
        verdict.problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let text = include_str!("../../docs/examples/targetapp-mina.yaml");
        let value: Value = serde_saphyr::from_str(text).unwrap();
        let verdict = Validator::new().validate(&parse_targetapp(value).unwrap(), None);
        assert_eq!(verdict.problems, vec![], "{verdict:?}");
        assert!(verdict.warnings.is_empty(), "{verdict:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let verdict = Validator::new().validate(
            &app(json!({
                "pollingInterval": 0,
                "stateQuery": "query { daemonStatus { syncStatus blockchainLength peers { peerId } } }",
                "actions": [
                    {"action": "restart_pod", "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "DOWN"}},
                    {"action": "restart_pod", "trigger": {"field": "daemonStatus.syncStatus", "condition": "greaterThan", "value": 3}},
                    {"action": "restart_pod", "trigger": {"field": "daemonStatus.chainId", "condition": "exists"}},
                    {"action": "reboot", "trigger": {"field": "$up", "condition": "equals", "value": false}},
                    {"action": "restart_pod", "parameters": {"gracePeriod": -5},
                     "trigger": {"field": "daemonStatus.blockchainLength", "condition": "lessThan",
                                 "valueFrom": {"field": "daemonStatus.highestBlockLengthReceived"}}},
                    {"action": "restart_pod", "trigger": {"field": "daemonStatus.syncStatus", "condition": "matches", "value": "(("}}
                ]
            })),
            None,
        );
        assert_eq!(
            paths(&verdict),
            [
                "spec.pollingInterval",
                "spec.selector",
                "spec.actions[5].trigger.value",
                "spec.actions[0].trigger.value",
                "spec.actions[1].trigger.value",
                "spec.actions[2].trigger.field",
                "spec.actions[3].action",
                "spec.actions[4].parameters.gracePeriod",
                "spec.actions[4].trigger.valueFrom.field",
            ],
            "{verdict:#?}"
        );
        let text: Vec<String> = verdict.problems.iter().map(ToString::to_string).collect();
        assert!(
            text[3].contains("not a value of enum SyncStatus"),
            "{text:?}"
        );
        assert!(text[5].contains("selects no field \"chainId\""), "{text:?}");
        assert!(
            verdict
                .warnings
                .iter()
                .any(|w| w.contains("serviceAccountName"))
        );
    }

    #[test]
    fn queries_must_be_one_valid_query() {
        let v = Validator::new();
        for (query, needle) in [
            ("mutation { startFilteredLog(filter: [\"x\"]) }", "mutation"),
            ("query { daemonStatus { nope } }", "nope"),
            ("{ version } { syncStatus }", "operations"),
        ] {
            let verdict = v.validate(&app(json!({"selector": {}, "stateQuery": query})), None);
            assert!(
                !verdict.problems.is_empty()
                    && paths(&verdict).iter().all(|p| *p == "spec.stateQuery"),
                "{query}: {verdict:?}"
            );
            assert!(
                verdict.problems.iter().any(|p| p.message.contains(needle)),
                "{query}: {verdict:?}"
            );
        }
    }

    #[test]
    fn graphql_urls_follow_the_default_endpoint_policy() {
        for ok in [
            "http://mina.chain.svc:3085/graphql",
            "https://mina.chain.svc.cluster.local/graphql",
        ] {
            assert_eq!(check_graphql_url(ok, "chain"), Ok(()), "{ok}");
        }
        for (bad, needle) in [
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://127.0.0.1:3085/graphql", "loopback"),
            ("http://[::1]/graphql", "loopback"),
            ("http://[::ffff:127.0.0.1]/graphql", "loopback"),
            ("http://[fe80::1]/graphql", "link-local"),
            ("http://0.0.0.0/graphql", "unspecified"),
            ("http://localhost:3085/graphql", "loopback"),
            ("http://10.0.0.5:3085/graphql", "IP address"),
            (
                "http://mina.other.svc:3085/graphql",
                "not a Service of namespace chain",
            ),
            ("https://example.com/graphql", "not a Service"),
            ("http://user:pw@mina.chain.svc/graphql", "credentials"),
        ] {
            let err = check_graphql_url(bad, "chain").unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let verdict =
            Validator::new().validate(&app(json!({"graphqlEndpoint": "file:///etc/passwd"})), None);
        assert_eq!(paths(&verdict), ["spec.graphqlEndpoint"], "{verdict:?}");
    }
}
