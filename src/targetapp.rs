//! The TargetApp resource (`operator.kco.local/v1alpha1`): which pods serve a
//! GraphQL API, what to ask them, how often, and which triggers run which actions.
//!
//! Field names, defaults and status are a contract (see `docs/targetapp.md`); the
//! CRD in `crds/` is generated from these types by `kco crds`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Mina's daemon health query, polled when a TargetApp names no `stateQuery`.
pub const DEFAULT_STATE_QUERY: &str = "query { daemonStatus { syncStatus blockchainLength highestBlockLengthReceived \
     highestUnvalidatedBlockLengthReceived uptimeSecs peers { peerId } } }";

/// Mina's GraphQL port.
pub const DEFAULT_PORT: i32 = 3085;

/// The cooldown of a rule that does not name one.
pub const DEFAULT_COOLDOWN: &str = "5m";

/// Pods serving a GraphQL API that KCO polls, diffs and acts on.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "operator.kco.local",
    version = "v1alpha1",
    kind = "TargetApp",
    doc = "A set of pods serving a GraphQL API (a Mina daemon by default) that KCO polls, diffs and acts on.",
    plural = "targetapps",
    shortname = "ta",
    namespaced,
    status = "TargetAppStatus",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Targets", "type": "string", "description": "targets up / total", "jsonPath": ".status.targetsReady"}"#,
    printcolumn = r#"{"name": "Last Poll", "type": "date", "jsonPath": ".status.lastPollTime"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TargetAppSpec {
    /// Pods to poll, by label, in the TargetApp's namespace. Required when
    /// `graphqlEndpoint` is a path; only Ready pods with an IP are polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// A path (polled on each selected pod at `<scheme>://<podIP>:<port><path>`) or an
    /// absolute http(s) URL (then the URL is the one target).
    #[serde(default = "default_graphql_endpoint")]
    #[schemars(length(min = 1))]
    pub graphql_endpoint: String,

    /// For path endpoints: the port number, or the name of a container port.
    #[serde(default = "default_port")]
    pub port: IntOrString,

    /// `http` or `https`. HTTPS certificates are verified, against `caSecretRef` if given.
    #[serde(default)]
    pub scheme: Scheme,

    /// A Secret key of this namespace holding the PEM CA bundle that signs the
    /// targets' HTTPS certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Seconds between polls of each target (at least 1, and at least the tenant's
    /// minimum). Defaults to the operator's DEFAULT_POLLING_INTERVAL (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub polling_interval: Option<u32>,

    /// Seconds one poll may take. Defaults to the operator's GRAPHQL_TIMEOUT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u32>,

    /// The GraphQL query polled: exactly one `query` operation. Defaults to Mina's
    /// daemon health query.
    #[serde(default = "default_state_query")]
    #[schemars(length(min = 1))]
    pub state_query: String,

    /// The schema `stateQuery` and triggers are checked against.
    #[serde(default)]
    pub schema: SchemaSource,

    /// The ServiceAccount of this namespace whose rights actions run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Evaluate triggers and report the actions they would run, but run none.
    #[serde(default)]
    pub dry_run: bool,

    /// Stop polling (and so firing) until set back to false.
    #[serde(default)]
    pub suspend: bool,

    /// Trigger -> action rules, evaluated on every poll of every target.
    #[serde(default)]
    pub actions: Vec<ActionRule>,
}

fn default_graphql_endpoint() -> String {
    "/graphql".to_owned()
}

fn default_port() -> IntOrString {
    IntOrString::Int(DEFAULT_PORT)
}

fn default_state_query() -> String {
    DEFAULT_STATE_QUERY.to_owned()
}

/// How targets are reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

/// A key of a Secret in the TargetApp's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside the Secret.
    pub key: String,
}

/// A key of a ConfigMap in the TargetApp's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    pub name: String,
    /// The key inside the ConfigMap.
    pub key: String,
}

/// Where the target's GraphQL schema comes from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaSource {
    /// The Mina daemon schema built into KCO (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mina: Option<MinaSchema>,
    /// A ConfigMap key holding the schema as SDL or as an introspection result (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

impl Default for SchemaSource {
    fn default() -> Self {
        Self {
            mina: Some(MinaSchema {}),
            config_map_ref: None,
        }
    }
}

/// Selects the built-in Mina schema; has no settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MinaSchema {}

/// One rule: when `trigger` fires for a target, run `action` with `parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRule {
    /// Unique in the list; defaults to `rule-<index>`. Events and status name rules by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the rule fires.
    pub trigger: Trigger,
    /// The action to run: restart_pod, scale_deployment, patch_resource, webhook or exec_command.
    #[schemars(length(min = 1))]
    pub action: String,
    /// The action's parameters; each action validates its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Minimum time between two firings of this rule for one target (Go duration, e.g.
    /// `10m`). Defaults to 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub cooldown: Option<String>,
}

/// A condition on one field of a target's poll result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Dot-separated path into the result under `data` (`daemonStatus.syncStatus`);
    /// a number indexes a list, a final `#` is a list's length, `$up` is true when the
    /// last poll succeeded.
    #[schemars(length(min = 1))]
    pub field: String,
    /// How the field is compared.
    pub condition: ConditionKind,
    /// What the field is compared with (a list for `in` / `notIn`). Not used by
    /// `changed`, `unchanged`, `exists` and `absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<serde_json::Value>,
    /// Compare with another field of the same result instead of `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFrom>,
    /// How long the condition must hold before the rule fires (Go duration, e.g. `5m`).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub for_: Option<String>,
}

/// Another field of the same result, plus an offset for numeric comparisons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// Path to the other field, in the same syntax as `trigger.field`.
    #[schemars(length(min = 1))]
    pub field: String,
    /// Added to the other field's value (numeric comparisons only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
}

/// The comparisons a trigger can make.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ConditionKind {
    Equals,
    NotEquals,
    In,
    NotIn,
    GreaterThan,
    GreaterThanOrEqual,
    LessThan,
    LessThanOrEqual,
    Contains,
    Matches,
    Changed,
    Unchanged,
    Exists,
    Absent,
}

impl ConditionKind {
    /// The name used in manifests (`greaterThan`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equals => "equals",
            Self::NotEquals => "notEquals",
            Self::In => "in",
            Self::NotIn => "notIn",
            Self::GreaterThan => "greaterThan",
            Self::GreaterThanOrEqual => "greaterThanOrEqual",
            Self::LessThan => "lessThan",
            Self::LessThanOrEqual => "lessThanOrEqual",
            Self::Contains => "contains",
            Self::Matches => "matches",
            Self::Changed => "changed",
            Self::Unchanged => "unchanged",
            Self::Exists => "exists",
            Self::Absent => "absent",
        }
    }

    /// Every condition, for exhaustive tests and documentation.
    pub const ALL: [ConditionKind; 14] = [
        Self::Equals,
        Self::NotEquals,
        Self::In,
        Self::NotIn,
        Self::GreaterThan,
        Self::GreaterThanOrEqual,
        Self::LessThan,
        Self::LessThanOrEqual,
        Self::Contains,
        Self::Matches,
        Self::Changed,
        Self::Unchanged,
        Self::Exists,
        Self::Absent,
    ];
}

/// What KCO last observed of a TargetApp.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetAppStatus {
    /// Initializing, Monitoring, Degraded, Failed or Suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Standard conditions (`Ready`, `Degraded`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The KCO replica that polls this TargetApp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Targets up / total, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_ready: Option<String>,
    /// When the last poll of any target finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// Per-target state, at most `MAX_STATUS_TARGETS` entries (failing targets first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// The last firing of each rule, per target (bounded like `targets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firings: Vec<RuleFiring>,
}

/// The most per-target entries a status holds, whatever the number of pods.
pub const MAX_STATUS_TARGETS: usize = 50;

/// Where a TargetApp is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    Initializing,
    Monitoring,
    Degraded,
    Failed,
    Suspended,
}

/// One target's last poll.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The pod, for selector targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The URL polled.
    pub endpoint: String,
    /// Whether the last poll succeeded.
    pub up: bool,
    /// When the last poll finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<Time>,
    /// Why the last poll failed (a short reason, not a response body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The last time a rule fired for a target; also the fence against running one
/// firing's action twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleFiring {
    /// The rule's name.
    pub rule: String,
    /// The target it fired for (pod name, or the endpoint for URL targets).
    pub target: String,
    /// When it fired.
    pub time: Time,
    /// When its condition was seen false again (the episode ended); until then a
    /// replica taking over does not fire the rule again for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared: Option<Time>,
    /// When its action finished (succeeded, failed or was refused). A firing
    /// recorded but not finished means the replica running it stopped midway: a
    /// replica taking over runs the action again as the same firing (same time,
    /// so the same webhook idempotency key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<Time>,
    /// When a replica took an unfinished firing over to run it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Time>,
}

fn any_value(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn any_object(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}
