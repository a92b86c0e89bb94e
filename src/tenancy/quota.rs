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
    category = "kco",
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
    /// Ceiling for replica counts the tenant's actions set: `scale_deployment`, and
    /// `patch_resource` patches of `spec.replicas` (or an HPA's min/max replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<u32>,
    /// Longest one action may run, in seconds (every attempt of a webhook
    /// included): a `timeoutSeconds` above it is refused, and ACTION_EXECUTION_TIMEOUT
    /// is cut to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_action_seconds: Option<u32>,
    /// Longest one poll attempt may take, in seconds: a TargetApp's
    /// `timeoutSeconds` (or GRAPHQL_TIMEOUT) above it is cut to it, with a warning
    /// at admission (default ceiling: 60). A slow answer holds a connection and its
    /// bytes for that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_poll_timeout_seconds: Option<u32>,
    /// Most Prometheus series the tenant's TargetApps export (`spec.metrics`),
    /// split across replicas as its polls are: a target whose series would go
    /// beyond it exports none, and its TargetApp says so (default: 2,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_metric_series: Option<u32>,
    /// Most subscription connections the tenant's targets hold
    /// (`spec.subscriptions`: one per target), split across replicas as its
    /// polls are: a target beyond it is polled only, and its TargetApp says so
    /// (default: 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_subscription_connections: Option<u32>,
    /// Most values one subscription connection may push per second (bursts of
    /// five seconds' worth); a target that pushes faster loses its connection
    /// and opens it again after a backoff (default: 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pushes_per_second: Option<u32>,
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
    /// Actions of the quota's tenants in the last hour, from the action ledger
    /// (when the quota sets maxActionsPerHour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions_last_hour: Option<u32>,
}

/// The longest poll attempt (`timeoutSeconds`) when no TenantQuota of the
/// namespace sets `maxPollTimeoutSeconds` (a quota may set it lower or higher).
pub const DEFAULT_MAX_POLL_TIMEOUT_SECONDS: u32 = 60;

/// The most series a tenant exports when no TenantQuota of its namespaces sets
/// `maxMetricSeries` (a quota may set it lower or higher).
pub const DEFAULT_MAX_METRIC_SERIES: u32 = 2_000;

/// The most subscription connections a tenant's targets hold when no
/// TenantQuota of its namespaces sets `maxSubscriptionConnections`.
pub const DEFAULT_MAX_SUBSCRIPTION_CONNECTIONS: u32 = 1_000;

/// The most values a subscription connection pushes per second when no
/// TenantQuota of its namespace sets `maxPushesPerSecond`.
pub const DEFAULT_MAX_PUSHES_PER_SECOND: u32 = 20;

/// The limits that apply to one namespace, with the TenantQuotas they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub quota: Quota,
    pub max_target_apps: Option<u32>,
    pub min_polling_interval: Option<u32>,
    pub max_polls_per_second: Option<f64>,
    pub max_actions_per_hour: Option<u32>,
    pub max_replicas: Option<u32>,
    pub max_action_seconds: Option<u32>,
    /// Longest poll attempt (`timeoutSeconds`): the lowest the quotas set, or
    /// [`DEFAULT_MAX_POLL_TIMEOUT_SECONDS`] when none does.
    pub max_poll_timeout_seconds: u32,
    /// Most series exported (`spec.metrics`): the lowest the quotas set, or
    /// [`DEFAULT_MAX_METRIC_SERIES`] when none does.
    pub max_metric_series: u32,
    /// Most subscription connections, and values pushed per second on each:
    /// the lowest the quotas set, or the defaults.
    pub max_subscription_connections: u32,
    pub max_pushes_per_second: u32,
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
            max_action_seconds: None,
            max_poll_timeout_seconds: DEFAULT_MAX_POLL_TIMEOUT_SECONDS,
            max_metric_series: DEFAULT_MAX_METRIC_SERIES,
            max_subscription_connections: DEFAULT_MAX_SUBSCRIPTION_CONNECTIONS,
            max_pushes_per_second: DEFAULT_MAX_PUSHES_PER_SECOND,
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
///
/// Each TenantQuota stands for its limits, a field it leaves unset standing for
/// the default quota's; several combine to what every one of them allows: the
/// smallest maximum, the largest minimum, the actions all allow, the hosts and
/// ranges all allow (two disjoint host lists allow none), and external hosts only
/// if all allow them. The result does not depend on the quotas' order or names.
pub fn effective(default: &Quota, quotas: &[(String, TenantQuotaSpec)]) -> Effective {
    let mut e = Effective::default_for(default.clone());
    if quotas.is_empty() {
        return e;
    }
    let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut poll_ceiling = None;
    let mut series_ceiling = None;
    let mut connections = None;
    let mut pushes = None;
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
        e.max_action_seconds = min(e.max_action_seconds, q.max_action_seconds);
        poll_ceiling = min(poll_ceiling, q.max_poll_timeout_seconds);
        series_ceiling = min(series_ceiling, q.max_metric_series);
        connections = min(connections, q.max_subscription_connections);
        pushes = min(pushes, q.max_pushes_per_second);
    }
    e.max_subscription_connections = connections.unwrap_or(DEFAULT_MAX_SUBSCRIPTION_CONNECTIONS);
    e.max_pushes_per_second = pushes.unwrap_or(DEFAULT_MAX_PUSHES_PER_SECOND).max(1);
    e.max_metric_series = series_ceiling.unwrap_or(DEFAULT_MAX_METRIC_SERIES);
    // The quotas' ceiling (the lowest set), above the default or below it.
    e.max_poll_timeout_seconds = poll_ceiling.unwrap_or(DEFAULT_MAX_POLL_TIMEOUT_SECONDS);
    e.sources.sort();
    if let Some(combined) = quotas
        .iter()
        .map(|(_, q)| own_quota(default, q))
        .reduce(|a, b| meet(&a, &b))
    {
        e.quota = combined;
    }
    e
}

/// What one TenantQuota allows: its own lists, the default's where it sets none.
fn own_quota(default: &Quota, q: &TenantQuotaSpec) -> Quota {
    let mut actions: Vec<String> = q
        .allowed_actions
        .clone()
        .unwrap_or_else(|| default.allowed_actions.clone());
    actions.sort();
    actions.dedup();
    let endpoint = match &q.endpoint_policy {
        Some(policy) => EndpointPolicy {
            allowed_hosts: policy.allowed_hosts.clone(),
            // Invalid ranges are refused by the quota's webhook; one that slipped past
            // allows nothing.
            allowed_cidrs: policy
                .allowed_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            allow_external: policy.allow_external,
            webhook_allowed_hosts: default.endpoint_policy.webhook_allowed_hosts.clone(),
        },
        None => default.endpoint_policy.clone(),
    };
    Quota {
        allowed_actions: actions,
        endpoint_policy: EndpointPolicy {
            webhook_allowed_hosts: q
                .webhook_allowed_hosts
                .clone()
                .or(endpoint.webhook_allowed_hosts.clone()),
            ..endpoint
        },
    }
}

/// What both `a` and `b` allow.
fn meet(a: &Quota, b: &Quota) -> Quota {
    let (pa, pb) = (&a.endpoint_policy, &b.endpoint_policy);
    Quota {
        allowed_actions: a
            .allowed_actions
            .iter()
            .filter(|action| b.allowed_actions.contains(action))
            .cloned()
            .collect(),
        endpoint_policy: EndpointPolicy {
            allowed_hosts: meet_hosts(&pa.allowed_hosts, &pb.allowed_hosts),
            allowed_cidrs: meet_ranges(&pa.allowed_cidrs, &pb.allowed_cidrs),
            allow_external: pa.allow_external && pb.allow_external,
            webhook_allowed_hosts: match (&pa.webhook_allowed_hosts, &pb.webhook_allowed_hosts) {
                (Some(x), Some(y)) => Some(meet_hosts(x, y)),
                (x, y) => x.clone().or_else(|| y.clone()),
            },
        },
    }
}

/// The host patterns (exact or `*.suffix`) that both lists allow.
fn meet_hosts(a: &[String], b: &[String]) -> Vec<String> {
    let norm = |p: &String| p.trim_end_matches('.').to_ascii_lowercase();
    // Does pattern `wide` allow every name `narrow` allows?
    let covers =
        |wide: &str, narrow: &str| match (wide.strip_prefix("*."), narrow.strip_prefix("*.")) {
            (None, _) => wide == narrow,
            (Some(suffix), Some(inner)) => {
                inner == suffix || inner.ends_with(&format!(".{suffix}"))
            }
            (Some(suffix), None) => narrow.ends_with(&format!(".{suffix}")),
        };
    let mut out: BTreeSet<String> = BTreeSet::new();
    for x in a.iter().map(norm) {
        for y in b.iter().map(norm) {
            if covers(&x, &y) {
                out.insert(y.clone());
            } else if covers(&y, &x) {
                out.insert(x.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// The address ranges both lists allow (two CIDRs either nest or are disjoint).
fn meet_ranges(a: &[ipnet::IpNet], b: &[ipnet::IpNet]) -> Vec<ipnet::IpNet> {
    let mut out: BTreeSet<ipnet::IpNet> = BTreeSet::new();
    for x in a {
        for y in b {
            if x.contains(y) {
                out.insert(*y);
            } else if y.contains(x) {
                out.insert(*x);
            }
        }
    }
    out.into_iter().collect()
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
    if spec.max_action_seconds == Some(0) {
        problems.push("spec.maxActionSeconds: must be at least 1 second".to_owned());
    }
    if spec.max_poll_timeout_seconds == Some(0) {
        problems.push("spec.maxPollTimeoutSeconds: must be at least 1 second".to_owned());
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
            Some(vec!["hooks.example.com".to_owned()])
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

    fn endpoint(hosts: &[&str], cidrs: &[&str], external: bool) -> Option<EndpointPolicySpec> {
        Some(EndpointPolicySpec {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            allow_external: external,
        })
    }

    fn strings(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Every order of `quotas` gives the same quota; that quota.
    fn combined(quotas: &[TenantQuotaSpec]) -> Quota {
        let named = |order: &[usize]| -> Vec<(String, TenantQuotaSpec)> {
            order
                .iter()
                .map(|&i| (format!("q{i}"), quotas[i].clone()))
                .collect()
        };
        let forward: Vec<usize> = (0..quotas.len()).collect();
        let backward: Vec<usize> = forward.iter().rev().copied().collect();
        let a = effective(&Quota::default(), &named(&forward)).quota;
        let b = effective(&Quota::default(), &named(&backward)).quota;
        assert_eq!(a, b, "the order of the quotas changed the result");
        a
    }

    #[test]
    fn the_poll_timeout_ceiling_is_the_lowest_set_or_the_default() {
        let ceiling = |set: &[Option<u32>]| {
            let quotas: Vec<(String, TenantQuotaSpec)> = set
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let spec = TenantQuotaSpec {
                        max_poll_timeout_seconds: *t,
                        ..TenantQuotaSpec::default()
                    };
                    (format!("q{i}"), spec)
                })
                .collect();
            effective(&Quota::default(), &quotas).max_poll_timeout_seconds
        };
        assert_eq!(ceiling(&[]), DEFAULT_MAX_POLL_TIMEOUT_SECONDS);
        assert_eq!(ceiling(&[None]), DEFAULT_MAX_POLL_TIMEOUT_SECONDS);
        assert_eq!(ceiling(&[Some(5)]), 5);
        assert_eq!(ceiling(&[Some(300)]), 300, "a cluster admin may raise it");
        assert_eq!(ceiling(&[Some(300), None, Some(20)]), 20);
        assert_eq!(ceiling(&[Some(20), Some(300)]), 20);
        assert!(
            check(
                &TenantQuotaSpec {
                    max_poll_timeout_seconds: Some(0),
                    ..TenantQuotaSpec::default()
                },
                &[]
            )
            .iter()
            .any(|p| p.starts_with("spec.maxPollTimeoutSeconds"))
        );
    }

    #[test]
    fn disjoint_webhook_host_lists_allow_no_host() {
        let a = TenantQuotaSpec {
            webhook_allowed_hosts: strings(&["a.example.com"]),
            ..TenantQuotaSpec::default()
        };
        let b = TenantQuotaSpec {
            webhook_allowed_hosts: strings(&["b.example.com"]),
            ..TenantQuotaSpec::default()
        };
        assert_eq!(
            combined(&[a, b]).endpoint_policy.webhook_allowed_hosts,
            Some(Vec::new())
        );
        // Set but empty on its own: no host either; unset: not narrowed.
        let empty = TenantQuotaSpec {
            webhook_allowed_hosts: strings(&[]),
            ..TenantQuotaSpec::default()
        };
        assert_eq!(
            combined(&[empty]).endpoint_policy.webhook_allowed_hosts,
            Some(Vec::new())
        );
        assert_eq!(
            combined(&[TenantQuotaSpec::default()])
                .endpoint_policy
                .webhook_allowed_hosts,
            None
        );
    }

    #[test]
    fn host_patterns_and_ranges_meet_at_the_narrower() {
        let a = TenantQuotaSpec {
            webhook_allowed_hosts: strings(&["*.example.com", "hooks.other.org"]),
            endpoint_policy: endpoint(
                &["*.svc.example.net"],
                &["10.0.0.0/8", "192.168.0.0/16"],
                true,
            ),
            ..TenantQuotaSpec::default()
        };
        let b = TenantQuotaSpec {
            webhook_allowed_hosts: strings(&["hooks.example.com", "*.eu.example.com"]),
            endpoint_policy: endpoint(
                &["rpc.svc.example.net"],
                &["10.1.0.0/16", "172.16.0.0/12"],
                false,
            ),
            ..TenantQuotaSpec::default()
        };
        let q = combined(&[a, b]);
        assert_eq!(
            q.endpoint_policy.webhook_allowed_hosts,
            strings(&["*.eu.example.com", "hooks.example.com"])
        );
        assert_eq!(q.endpoint_policy.allowed_hosts, ["rpc.svc.example.net"]);
        assert_eq!(
            q.endpoint_policy.allowed_cidrs,
            ["10.1.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
        assert!(!q.endpoint_policy.allow_external);
    }

    #[test]
    fn allowed_actions_do_not_depend_on_the_quotas_order() {
        let grants_exec = TenantQuotaSpec {
            allowed_actions: strings(&["exec_command", "restart_pod"]),
            ..TenantQuotaSpec::default()
        };
        let silent = TenantQuotaSpec::default();
        // The quota that says nothing stands for the default list, without exec_command.
        assert_eq!(
            combined(&[grants_exec.clone(), silent.clone()]).allowed_actions,
            ["restart_pod"]
        );
        assert_eq!(
            combined(&[grants_exec]).allowed_actions,
            ["exec_command", "restart_pod"]
        );
        let mut default = Quota::default().allowed_actions;
        default.sort();
        assert_eq!(combined(&[silent]).allowed_actions, default);
    }

    #[test]
    fn a_quota_without_an_endpoint_policy_keeps_the_default_one() {
        let widening = TenantQuotaSpec {
            endpoint_policy: endpoint(&["*.monitoring.svc"], &["10.0.0.0/8"], true),
            ..TenantQuotaSpec::default()
        };
        let q = combined(&[widening.clone(), TenantQuotaSpec::default()]);
        assert_eq!(q.endpoint_policy, EndpointPolicy::default());
        assert!(combined(&[widening]).endpoint_policy.allow_external);
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
