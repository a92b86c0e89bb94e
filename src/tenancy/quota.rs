//! The TenantQuota resource (cluster-scoped, set by cluster admins) and how the
//! quota of a namespace is worked out: every TenantQuota that selects the
//! namespace applies, combined into the most restrictive quota (the smallest
//! limits, the actions and hosts all of them allow); a namespace none selects gets
//! the operator's default quota. Pure logic; the watches live in `tenants`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EndpointPolicy, Quota};

/// Limits a cluster admin sets for the namespaces of one tenant.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "operator.kco.local",
    version = "v1alpha1",
    kind = "TenantQuota",
    doc = "Limits for the TargetApps of a tenant's namespaces, set by cluster admins.",
    plural = "tenantquotas",
    shortname = "tq",
    status = "TenantQuotaStatus",
    printcolumn = r#"{"name": "Namespaces", "type": "integer", "jsonPath": ".status.usage.namespaces"}"#,
    printcolumn = r#"{"name": "TargetApps", "type": "integer", "jsonPath": ".status.usage.targetApps"}"#,
    printcolumn = r#"{"name": "Max", "type": "integer", "jsonPath": ".spec.maxTargetApps"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaSpec {
    /// The tenant's namespaces, by label. With `namespaces`, a namespace either
    /// selects is the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The tenant's namespaces, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Most TargetApps over all the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_target_apps: Option<u32>,
    /// Smallest `pollingInterval` (seconds) a TargetApp may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_polling_interval: Option<u32>,
    /// Polls per second over all the tenant's targets (a token bucket; a throttled
    /// poll waits, it is never dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01))]
    pub max_polls_per_second: Option<f64>,
    /// Actions per hour over all the tenant's TargetApps; more are skipped with
    /// `ActionSkipped` (QuotaExceeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_actions_per_hour: Option<u32>,
    /// The actions the tenant may use (default: the operator's DEFAULT_ALLOWED_ACTIONS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_actions: Option<Vec<String>>,
    /// Ceiling for `scale_deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<u32>,
    /// Where absolute GraphQL endpoints may point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_policy: Option<EndpointPolicySpec>,
    /// When set, the only hosts webhook actions may call (exact or `*.suffix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_allowed_hosts: Option<Vec<String>>,
}

/// The endpoint policy part of a TenantQuota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPolicySpec {
    /// More hosts absolute GraphQL URLs may name (exact or `*.suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Address ranges user-supplied URLs may reach even where they would be refused.
    #[serde(
        default,
        rename = "allowedCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allowed_cidrs: Vec<String>,
    /// Absolute GraphQL URLs may name any public host.
    #[serde(default)]
    pub allow_external: bool,
}

/// What the leader last counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantQuotaStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// `Ready`, and `Overlapping` when another TenantQuota selects one of the same
    /// namespaces (the most restrictive combination applies there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Current use of a TenantQuota.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Namespaces the quota selects.
    pub namespaces: u32,
    /// TargetApps in them.
    pub target_apps: u32,
    /// The namespace with the most TargetApps, and how many (against maxTargetApps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullest_namespace: Option<String>,
    #[serde(default)]
    pub fullest_count: u32,
}

/// The limits that apply to one namespace, with the TenantQuotas they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub quota: Quota,
    pub max_target_apps: Option<u32>,
    pub min_polling_interval: Option<u32>,
    pub max_polls_per_second: Option<f64>,
    pub max_actions_per_hour: Option<u32>,
    pub max_replicas: Option<u32>,
    /// The TenantQuotas that select the namespace (empty: the default quota).
    pub sources: Vec<String>,
}

impl Effective {
    /// The default quota: the operator's configuration, no numeric limits.
    pub fn default_for(quota: Quota) -> Self {
        Self {
            quota,
            max_target_apps: None,
            min_polling_interval: None,
            max_polls_per_second: None,
            max_actions_per_hour: None,
            max_replicas: None,
            sources: Vec::new(),
        }
    }

    /// "TenantQuota a, b" or "the default quota", for messages.
    pub fn named(&self) -> String {
        if self.sources.is_empty() {
            "the default tenant quota".to_owned()
        } else {
            format!("TenantQuota {}", self.sources.join(", "))
        }
    }

    /// The bucket this namespace's polls and actions count against: the
    /// TenantQuotas' names, or the namespace itself under the default quota.
    pub fn tenant(&self, namespace: &str) -> String {
        if self.sources.is_empty() {
            format!("namespace/{namespace}")
        } else {
            format!("quota/{}", self.sources.join("+"))
        }
    }
}

/// Whether `spec` selects namespace `name` with `labels`.
pub fn selects(spec: &TenantQuotaSpec, name: &str, labels: &BTreeMap<String, String>) -> bool {
    spec.namespaces.iter().any(|n| n == name)
        || spec
            .namespace_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, labels))
}

/// A LabelSelector against labels (matchLabels and matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|wanted| wanted.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.clone().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

/// Combines the TenantQuotas selecting a namespace (name, spec) over the default.
pub fn effective(default: &Quota, quotas: &[(String, TenantQuotaSpec)]) -> Effective {
    let mut e = Effective::default_for(default.clone());
    if quotas.is_empty() {
        return e;
    }
    let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut webhook_hosts: Option<BTreeSet<String>> = None;
    let mut graphql_hosts: Option<BTreeSet<String>> = None;
    let mut cidrs: Option<BTreeSet<String>> = None;
    let mut allow_external = true;
    let mut actions: BTreeSet<String> = default.allowed_actions.iter().cloned().collect();
    let mut any_endpoint = false;
    for (name, q) in quotas {
        e.sources.push(name.clone());
        e.max_target_apps = min(e.max_target_apps, q.max_target_apps);
        e.min_polling_interval = match (e.min_polling_interval, q.min_polling_interval) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        e.max_polls_per_second = match (e.max_polls_per_second, q.max_polls_per_second) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        e.max_actions_per_hour = min(e.max_actions_per_hour, q.max_actions_per_hour);
        e.max_replicas = min(e.max_replicas, q.max_replicas);
        if let Some(allowed) = &q.allowed_actions {
            let allowed: BTreeSet<String> = allowed.iter().cloned().collect();
            actions = if e.sources.len() == 1 {
                allowed
            } else {
                actions.intersection(&allowed).cloned().collect()
            };
        }
        if let Some(hosts) = &q.webhook_allowed_hosts {
            let hosts: BTreeSet<String> = hosts.iter().cloned().collect();
            webhook_hosts = Some(match webhook_hosts {
                None => hosts,
                Some(current) => current.intersection(&hosts).cloned().collect(),
            });
        }
        let policy = q.endpoint_policy.clone().unwrap_or_default();
        any_endpoint |= q.endpoint_policy.is_some();
        let hosts: BTreeSet<String> = policy.allowed_hosts.into_iter().collect();
        graphql_hosts = Some(match graphql_hosts {
            None => hosts,
            Some(current) => current.intersection(&hosts).cloned().collect(),
        });
        let ranges: BTreeSet<String> = policy.allowed_cidrs.into_iter().collect();
        cidrs = Some(match cidrs {
            None => ranges,
            Some(current) => current.intersection(&ranges).cloned().collect(),
        });
        allow_external &= policy.allow_external;
    }
    e.sources.sort();
    e.quota.allowed_actions = actions.into_iter().collect();
    if any_endpoint {
        e.quota.endpoint_policy = EndpointPolicy {
            allowed_hosts: graphql_hosts.unwrap_or_default().into_iter().collect(),
            allowed_cidrs: cidrs
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            allow_external,
            webhook_allowed_hosts: webhook_hosts
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
    } else if let Some(hosts) = webhook_hosts {
        e.quota.endpoint_policy.webhook_allowed_hosts = hosts.into_iter().collect();
    }
    e
}

/// Problems with a TenantQuota's spec, each with its field path (its webhook).
pub fn check(spec: &TenantQuotaSpec, known_actions: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.namespaces.is_empty() && spec.namespace_selector.is_none() {
        problems.push(
            "spec: give namespaces or namespaceSelector (a quota that selects nothing does nothing)"
                .to_owned(),
        );
    }
    if let Some(selector) = &spec.namespace_selector
        && selector
            .match_labels
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
    {
        problems.push(
            "spec.namespaceSelector: an empty selector selects every namespace; list them or use labels"
                .to_owned(),
        );
    }
    if let Some(selector) = &spec.namespace_selector {
        for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
            if !["In", "NotIn", "Exists", "DoesNotExist"].contains(&e.operator.as_str()) {
                problems.push(format!(
                    "spec.namespaceSelector.matchExpressions[{i}].operator: {:?} is not In, NotIn, Exists or DoesNotExist",
                    e.operator
                ));
            }
        }
    }
    if spec.min_polling_interval == Some(0) {
        problems.push("spec.minPollingInterval: must be at least 1 second".to_owned());
    }
    if let Some(rate) = spec.max_polls_per_second
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push("spec.maxPollsPerSecond: must be a positive number".to_owned());
    }
    for (i, action) in spec.allowed_actions.iter().flatten().enumerate() {
        if !known_actions.contains(&action.as_str()) {
            problems.push(format!(
                "spec.allowedActions[{i}]: unknown action {action:?}; known actions: {}",
                known_actions.join(", ")
            ));
        }
    }
    if let Some(policy) = &spec.endpoint_policy {
        for (i, cidr) in policy.allowed_cidrs.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() {
                problems.push(format!(
                    "spec.endpointPolicy.allowedCIDRs[{i}]: {cidr:?} is not a CIDR such as 10.0.0.0/8"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn namespaces_are_selected_by_name_or_labels() {
        let spec = TenantQuotaSpec {
            namespaces: vec!["a".into()],
            namespace_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("tenant", "blue")])),
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["system".into()]),
                }]),
            }),
            ..TenantQuotaSpec::default()
        };
        assert!(selects(&spec, "a", &labels(&[])));
        assert!(selects(&spec, "b", &labels(&[("tenant", "blue")])));
        assert!(!selects(
            &spec,
            "b",
            &labels(&[("tenant", "blue"), ("tier", "system")])
        ));
        assert!(!selects(&spec, "c", &labels(&[("tenant", "red")])));
    }

    #[test]
    fn overlapping_quotas_combine_to_the_most_restrictive() {
        let default = Quota::default();
        let strict = TenantQuotaSpec {
            max_target_apps: Some(2),
            min_polling_interval: Some(30),
            max_polls_per_second: Some(5.0),
            allowed_actions: Some(vec!["restart_pod".into(), "webhook".into()]),
            webhook_allowed_hosts: Some(vec!["hooks.example.com".into()]),
            ..TenantQuotaSpec::default()
        };
        let loose = TenantQuotaSpec {
            max_target_apps: Some(10),
            min_polling_interval: Some(10),
            max_polls_per_second: Some(50.0),
            max_actions_per_hour: Some(20),
            allowed_actions: Some(vec![
                "restart_pod".into(),
                "exec_command".into(),
                "webhook".into(),
            ]),
            endpoint_policy: Some(EndpointPolicySpec {
                allowed_hosts: vec!["*.monitoring.svc".into()],
                allowed_cidrs: vec!["10.0.0.0/8".into()],
                allow_external: true,
            }),
            ..TenantQuotaSpec::default()
        };
        let e = effective(
            &default,
            &[
                ("strict".into(), strict.clone()),
                ("loose".into(), loose.clone()),
            ],
        );
        assert_eq!(e.max_target_apps, Some(2));
        assert_eq!(e.min_polling_interval, Some(30));
        assert_eq!(e.max_polls_per_second, Some(5.0));
        assert_eq!(e.max_actions_per_hour, Some(20));
        assert_eq!(e.quota.allowed_actions, ["restart_pod", "webhook"]);
        assert_eq!(
            e.quota.endpoint_policy.webhook_allowed_hosts,
            ["hooks.example.com"]
        );
        // strict names no endpoint policy: nothing extra is allowed.
        assert!(e.quota.endpoint_policy.allowed_hosts.is_empty());
        assert!(!e.quota.endpoint_policy.allow_external);
        assert_eq!(e.sources, ["loose", "strict"]);
        assert_eq!(e.named(), "TenantQuota loose, strict");
        assert_eq!(e.tenant("ns"), "quota/loose+strict");

        let alone = effective(&default, &[("loose".into(), loose)]);
        assert_eq!(
            alone.quota.allowed_actions,
            ["exec_command", "restart_pod", "webhook"]
        );
        assert!(alone.quota.endpoint_policy.allow_external);
        assert_eq!(alone.quota.endpoint_policy.allowed_cidrs.len(), 1);

        let none = effective(&default, &[]);
        assert_eq!(none.quota, default);
        assert_eq!(none.named(), "the default tenant quota");
        assert_eq!(none.tenant("ns"), "namespace/ns");
    }

    #[test]
    fn bad_quotas_are_refused_with_their_path() {
        let spec = TenantQuotaSpec {
            namespace_selector: Some(LabelSelector::default()),
            min_polling_interval: Some(0),
            max_polls_per_second: Some(-1.0),
            allowed_actions: Some(vec!["reboot".into()]),
            endpoint_policy: Some(EndpointPolicySpec {
                allowed_cidrs: vec!["10.0.0.0/33".into()],
                ..EndpointPolicySpec::default()
            }),
            ..TenantQuotaSpec::default()
        };
        let problems = check(&spec, &["restart_pod"]);
        let paths: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "spec.namespaceSelector",
                "spec.minPollingInterval",
                "spec.maxPollsPerSecond",
                "spec.allowedActions[0]",
                "spec.endpointPolicy.allowedCIDRs[0]"
            ],
            "{problems:?}"
        );
        let empty = check(&TenantQuotaSpec::default(), &["restart_pod"]);
        assert!(empty[0].contains("give namespaces or namespaceSelector"));
    }
}
