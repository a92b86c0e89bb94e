//! The TargetApp resource (`operator.kco.local/v1alpha1`): which pods serve a
//! GraphQL API, what to ask them, how often, and which triggers run which actions.
//!
//! Field names, defaults and status are a contract (see `docs/targetapp.md`); the
//! CRD in `crds/` is generated from these types by `kco crds`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// Mina's daemon health query, polled when a TargetApp names no `stateQuery`.
pub const DEFAULT_STATE_QUERY: &str = "query { daemonStatus { syncStatus blockchainLength highestBlockLengthReceived \
     highestUnvalidatedBlockLengthReceived uptimeSecs peers { peerId } } }";

/// Mina's GraphQL port.
pub const DEFAULT_PORT: i32 = 3085;

/// The cooldown of a rule that does not name one.
pub const DEFAULT_COOLDOWN: &str = "5m";

/// How deep a free-form field (a value of `parameters`, `trigger.value`) may nest
/// arrays and objects. Far above what an action or a comparison needs, and far below
/// serde_json's limit of 128 levels for a whole object, which a list of TargetApps
/// must stay under (with the 7 levels above a parameter's value there).
pub const MAX_VALUE_DEPTH: usize = 32;

/// Pods serving a GraphQL API that KCO polls, diffs and acts on.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "operator.kco.local",
    version = "v1alpha1",
    kind = "TargetApp",
    doc = "A set of pods serving a GraphQL API (a Mina daemon by default) that KCO polls, diffs and acts on.",
    plural = "targetapps",
    shortname = "ta",
    category = "kco",
    namespaced,
    status = "TargetAppStatus",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Targets", "type": "string", "description": "targets up / total", "jsonPath": ".status.targetsReady"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TargetAppSpec {
    /// Pods to poll, by label, in the TargetApp's namespace. Required when
    /// `graphqlEndpoint` is a path; only Ready pods with an IP are polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,

    /// A path (polled on each selected pod at `<scheme>://<podIP>:<port><path>`) or an
    /// absolute http(s) URL (then the URL is the one target); at most 2,048 characters.
    #[serde(default = "default_graphql_endpoint")]
    #[schemars(length(min = 1, max = 2048))]
    pub graphql_endpoint: String,

    /// For path endpoints: the port number, or the name of a container port.
    #[serde(default = "default_port")]
    pub port: IntOrString,

    /// `http` or `https`. HTTPS certificates are verified, against `tls.caSecretRef`
    /// if given.
    #[serde(default)]
    pub scheme: Scheme,

    /// Replaced by `tls.caSecretRef`; refused when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// How HTTPS targets are verified, and the certificate polls present; the
    /// Secrets are read with `serviceAccountName`'s rights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TargetTls>,

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

    /// A header every poll carries, its value from a Secret of this namespace read
    /// with `serviceAccountName`'s rights (never the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,

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

    /// Fields of each target's answer exported as Prometheus gauges
    /// `kco_target_<name>` by the replica that polls it (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricField>,

    /// Fields of the answer (paths as in triggers) whose every change is reported
    /// as a StateChanged Event, besides the fields the rules compare (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_changes: Vec<String>,

    /// GraphQL subscriptions to each target (Mina's `newSyncUpdate`, `newBlock`,
    /// `chainReorganization`), carried by one WebSocket connection per target:
    /// the values they push are read by trigger paths
    /// `@<name>.<path in the root field's value>` the moment they arrive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// The most subscriptions a TargetApp holds.
pub const MAX_SUBSCRIPTIONS: usize = 8;

/// One GraphQL subscription to each target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// How trigger paths name what it pushes (`@<name>`): a GraphQL name,
    /// unique in the list. Defaults to the subscription's root field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[_A-Za-z][_0-9A-Za-z]{0,62}$"))]
    pub name: Option<String>,
    /// The subscription operation, e.g. `subscription { newSyncUpdate }`: one
    /// root field, checked against the schema like the state query.
    #[schemars(length(min = 1, max = 16384))]
    pub query: String,
}

/// One field of the answer exported as a Prometheus series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricField {
    /// Path into the query result, as in triggers: a number (or numeric scalar),
    /// a boolean, an enum (one series per member, 1 for the current one), a
    /// list's length (`.#`), or `$up`.
    #[schemars(length(min = 1))]
    pub field: String,
    /// The series is `kco_target_<name>`: lowercase letters, digits and
    /// underscores, starting with a letter.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// Keys of the pod's labels to copy onto its series, as `label_<key>` with
    /// `.`, `/` and `-` made `_` (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_labels: Vec<String>,
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

/// How HTTPS targets are verified, and what polls present to them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetTls {
    /// A Secret key holding the PEM CA bundle the targets' certificates must
    /// chain to (instead of the platform's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// The name the targets' certificates must be issued to, instead of the host
    /// polled (a pod's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) whose certificate
    /// polls present (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
}

/// A Secret in the TargetApp's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
}

/// Credentials a poll carries: one header, its value from a Secret key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    /// The Secret key holding the credential (a token, or `user:password` for
    /// `Basic`); one trailing newline is dropped.
    pub secret_ref: SecretKeyRef,
    /// The header that carries it.
    #[serde(default = "default_auth_header")]
    pub header: String,
    /// Sent before the credential, as in `Authorization: Bearer <token>`: `Bearer`,
    /// `Basic` (the credential is base64-encoded), or none (the header is the
    /// credential alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

fn default_auth_header() -> String {
    "Authorization".to_owned()
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

/// One rule: when `trigger` fires for a target, run `action` with `parameters`;
/// a rule without an action only records the firing (a TriggerFired Event and
/// the firings metric).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionRule {
    /// Unique in the list; defaults to `rule-<index>`. Events and status name rules by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the rule fires.
    pub trigger: Trigger,
    /// The action to run: restart_pod, scale_deployment, patch_resource, webhook or
    /// exec_command. Without one the rule only records its firings: a TriggerFired
    /// Event and the firings metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub action: Option<String>,
    /// The action's parameters; each action validates its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// More actions to run after `action`, in order, for the same firing: each
    /// runs when the one before it succeeded, is recorded in
    /// `status.firings[].steps` when it finishes, and counts as one action
    /// against the tenant's hourly budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub then: Vec<ActionStep>,
    /// Minimum time between two firings of this rule for one target (Go duration, e.g.
    /// `10m`). Defaults to 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub cooldown: Option<String>,
    /// The free-form fields of this rule that nest deeper than [`MAX_VALUE_DEPTH`],
    /// left out when the rule is decoded: a value too deep to decode would fail the
    /// whole object, and with it the list of every TargetApp it is in. Validation
    /// refuses a rule with any. Not part of the resource.
    #[serde(skip)]
    pub too_deep: Vec<TooDeep>,
}

/// The most actions a rule runs for one firing: `action` and up to four `then`.
pub const MAX_STEPS: usize = 5;

/// An action a rule runs after its first one.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionStep {
    /// restart_pod, scale_deployment, patch_resource, webhook or exec_command.
    #[schemars(length(min = 1))]
    pub action: String,
    /// The action's parameters; each action validates its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
}

/// One action of a rule, as it runs: the rule's `action` (step 0) or one of
/// its `then` (step 1 and on).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step<'a> {
    pub index: usize,
    pub action: &'a str,
    pub parameters: Option<&'a BTreeMap<String, serde_json::Value>>,
}

impl Step<'_> {
    /// Where the step's `field` is in rule `rule` of a TargetApp:
    /// `spec.actions[1].then[0].parameters`.
    pub fn path(&self, rule: usize, field: &str) -> String {
        match self.index {
            0 => format!("spec.actions[{rule}].{field}"),
            n => format!("spec.actions[{rule}].then[{}].{field}", n - 1),
        }
    }
}

impl ActionRule {
    /// The actions the rule runs for a firing, in order (none for a rule that
    /// only records; `then` without `action` is refused at admission and runs
    /// nothing).
    pub fn steps(&self) -> Vec<Step<'_>> {
        let Some(first) = self.action.as_deref() else {
            return Vec::new();
        };
        std::iter::once((first, self.parameters.as_ref()))
            .chain(
                self.then
                    .iter()
                    .map(|s| (s.action.as_str(), s.parameters.as_ref())),
            )
            .enumerate()
            .map(|(index, (action, parameters))| Step {
                index,
                action,
                parameters,
            })
            .collect()
    }
}

/// A free-form field left out of a decoded rule because it nests too deep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// The field, from the rule: `parameters.<key>`, `then[<n>].parameters.<key>`
    /// or `trigger.value`.
    pub field: String,
    /// How deep it nests.
    pub depth: usize,
}

/// Decodes through `wire::Rule`: the free-form fields are measured on their raw
/// JSON before they are decoded.
impl<'de> Deserialize<'de> for ActionRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let rule = wire::Rule::deserialize(deserializer)?;
        let mut too_deep = Vec::new();
        let parameters = match rule.parameters {
            None => None,
            Some(raw) => Some(decode_parameters(raw, "parameters", &mut too_deep)?),
        };
        let mut then = Vec::with_capacity(rule.then.len());
        for (index, step) in rule.then.into_iter().enumerate() {
            let parameters = match step.parameters {
                None => None,
                Some(raw) => Some(decode_parameters(
                    raw,
                    &format!("then[{index}].parameters"),
                    &mut too_deep,
                )?),
            };
            then.push(ActionStep {
                action: step.action,
                parameters,
            });
        }
        let value = match rule.trigger.value {
            None => None,
            Some(raw) => shallow(&raw, "trigger.value".to_owned(), &mut too_deep)
                .map_err(serde::de::Error::custom)?,
        };
        Ok(Self {
            name: rule.name,
            trigger: Trigger {
                field: rule.trigger.field,
                condition: rule.trigger.condition,
                value,
                value_from: rule.trigger.value_from,
                for_: rule.trigger.for_,
            },
            action: rule.action,
            parameters,
            then,
            cooldown: rule.cooldown,
            too_deep,
        })
    }
}

/// A rule's or step's parameters decoded, leaving out (as [`TooDeep`]s under
/// `at`) those that nest too deep.
fn decode_parameters<E: serde::de::Error>(
    raw: BTreeMap<String, Box<RawValue>>,
    at: &str,
    too_deep: &mut Vec<TooDeep>,
) -> Result<BTreeMap<String, serde_json::Value>, E> {
    let mut parameters = BTreeMap::new();
    for (key, value) in raw {
        if let Some(value) = shallow(&value, format!("{at}.{key}"), too_deep).map_err(E::custom)? {
            parameters.insert(key, value);
        }
    }
    Ok(parameters)
}

/// `raw` decoded, or None (and a [`TooDeep`] for `field`) when it nests deeper than
/// [`MAX_VALUE_DEPTH`].
fn shallow(
    raw: &RawValue,
    field: String,
    too_deep: &mut Vec<TooDeep>,
) -> Result<Option<serde_json::Value>, serde_json::Error> {
    let depth = crate::nesting::depth(raw.get().as_bytes());
    if depth > MAX_VALUE_DEPTH {
        too_deep.push(TooDeep { field, depth });
        return Ok(None);
    }
    serde_json::from_str(raw.get()).map(Some)
}

/// A rule as it is read: its free-form fields kept as raw JSON, which serde_json
/// captures without recursion, until their depth is known. The fields and their
/// serde attributes are [`ActionRule`]'s and [`Trigger`]'s.
mod wire {
    use super::*;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Rule {
        #[serde(default)]
        pub name: Option<String>,
        pub trigger: Trigger,
        #[serde(default)]
        pub action: Option<String>,
        #[serde(default)]
        pub parameters: Option<BTreeMap<String, Box<RawValue>>>,
        #[serde(default)]
        pub then: Vec<Step>,
        #[serde(default)]
        pub cooldown: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Step {
        pub action: String,
        #[serde(default)]
        pub parameters: Option<BTreeMap<String, Box<RawValue>>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Trigger {
        pub field: String,
        pub condition: ConditionKind,
        #[serde(default)]
        pub value: Option<Box<RawValue>>,
        #[serde(default)]
        pub value_from: Option<ValueFrom>,
        #[serde(default, rename = "for")]
        pub for_: Option<String>,
    }
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
    /// Since when the target has been up (or down): the poll that changed `up`.
    /// Status is written when something changes, never per poll: the time of the
    /// last poll is in `/stats` and `operator_kco_tapp_last_poll_timestamp_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Why the last poll failed (a short reason, not a response body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Where the target's subscriptions stand, when the TargetApp has some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<SubscriptionState>,
    /// Why they are not open (a short reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_error: Option<String>,
}

/// Where a target's subscriptions stand. Polling goes on in every state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubscriptionState {
    /// Open: pushed values are read as they come.
    Subscribed,
    /// Lost: opened again with backoff; the target is polled at once when it is.
    Reconnecting,
    /// Not opened: the target serves no subscriptions, or the tenant's
    /// subscription connections are all held (tried again every 30 s).
    PollingOnly,
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
    /// The replica that runs it (fired it, or took it over). While that replica
    /// is alive, no other runs it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The rule's actions that finished for this firing, in order: `action`
    /// first, then each of `then`. Until `done`, the next one is the step under
    /// way; a replica taking over resumes there (only an action safe to repeat
    /// is run again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepResult>,
}

impl RuleFiring {
    /// A firing of `rule` for `target` at `time`, not ended, not finished.
    pub fn new(rule: String, target: String, time: Timestamp) -> Self {
        Self {
            rule,
            target,
            time: Time(time),
            cleared: None,
            done: None,
            resumed: None,
            by: None,
            steps: Vec::new(),
        }
    }
}

/// How one action of a firing ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    /// The action.
    pub action: String,
    /// Succeeded, Failed, DryRun, or NotRun (the tenant's hourly budget was
    /// used up before it).
    pub result: StepOutcome,
    /// Why it failed or did not run: a short reason such as `timeout`,
    /// `forbidden` or `quota` (the Event says more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it finished.
    pub time: Time,
}

/// How an action of a firing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepOutcome {
    Succeeded,
    Failed,
    DryRun,
    NotRun,
}

fn any_value(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn any_object(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

#[cfg(test)]
mod tests {
    use kube::core::ObjectList;
    use kube::core::WatchEvent;
    use serde_json::json;

    use super::*;

    /// `{"a":{"a":...1...}}`: `depth` nested objects, as text (a serde_json Value
    /// this deep could not be decoded, which is the point).
    fn nested(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    fn app_json(parameters: &str, value: &str) -> String {
        format!(
            r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TargetApp",
                "metadata":{{"name":"deep","namespace":"chain"}},
                "spec":{{"selector":{{}},"actions":[{{"action":"patch_resource",
                "parameters":{parameters},"cooldown":"1m",
                "trigger":{{"field":"version","condition":"in","value":{value},"for":"5s"}}}}]}}}}"#
        )
    }

    #[test]
    fn free_form_fields_too_deep_are_left_out_and_recorded() {
        let text = app_json(
            &format!(
                r#"{{"kind":"Deployment","patch":{},"x":{}}}"#,
                nested(200),
                nested(32)
            ),
            &nested(9_000),
        );
        let app: TargetApp = serde_json::from_str(&text).unwrap();
        let rule = &app.spec.actions[0];
        assert_eq!(
            rule.too_deep,
            [
                TooDeep {
                    field: "parameters.patch".to_owned(),
                    depth: 200
                },
                TooDeep {
                    field: "trigger.value".to_owned(),
                    depth: 9_000
                },
            ]
        );
        let parameters = rule.parameters.as_ref().unwrap();
        assert_eq!(
            parameters.keys().collect::<Vec<_>>(),
            ["kind", "x"],
            "the field at the limit is kept"
        );
        assert_eq!(parameters["kind"], "Deployment");
        assert_eq!(rule.trigger.value, None);
        assert_eq!(rule.trigger.condition, ConditionKind::In);
        assert_eq!(rule.trigger.for_.as_deref(), Some("5s"));
        assert_eq!(rule.cooldown.as_deref(), Some("1m"));

        // The same through a JSON value (the webhook and `kco validate` read so).
        let value: serde_json::Value = serde_json::from_str(&app_json(
            &format!(r#"{{"patch":{}}}"#, nested(MAX_VALUE_DEPTH + 1)),
            "null",
        ))
        .unwrap();
        let app: TargetApp = serde_json::from_value(value).unwrap();
        assert_eq!(app.spec.actions[0].too_deep[0].depth, MAX_VALUE_DEPTH + 1);
        assert_eq!(app.spec.actions[0].parameters, Some(BTreeMap::new()));

        // A later action's parameters are measured the same way.
        let then = app_json("{}", "null").replace(
            r#""cooldown":"1m","#,
            &format!(
                r#""cooldown":"1m","then":[{{"action":"webhook","parameters":{{"url":"https://x.example","body":{}}}}}],"#,
                nested(MAX_VALUE_DEPTH + 1)
            ),
        );
        let app: TargetApp = serde_json::from_str(&then).unwrap();
        let rule = &app.spec.actions[0];
        assert_eq!(
            rule.too_deep,
            [TooDeep {
                field: "then[0].parameters.body".to_owned(),
                depth: MAX_VALUE_DEPTH + 1
            }]
        );
        assert_eq!(
            rule.then[0]
                .parameters
                .as_ref()
                .map(|p| p.keys().collect::<Vec<_>>()),
            Some(vec![&"url".to_owned()])
        );
    }

    #[test]
    fn a_list_or_watch_event_holding_a_deep_targetapp_decodes() {
        let deep = app_json(&format!(r#"{{"patch":{}}}"#, nested(5_000)), "1");
        let fine = app_json("{}", "[1, 2]");
        let list = format!(
            r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TargetAppList","metadata":{{}},"items":[{deep},{fine}]}}"#
        );
        let list: ObjectList<TargetApp> = serde_json::from_str(&list).unwrap();
        assert_eq!(list.items.len(), 2);
        assert_eq!(list.items[0].spec.actions[0].too_deep.len(), 1);
        assert!(list.items[1].spec.actions[0].too_deep.is_empty());
        assert_eq!(
            list.items[1].spec.actions[0].trigger.value,
            Some(json!([1, 2]))
        );
        let event = format!(r#"{{"type":"ADDED","object":{deep}}}"#);
        let event: WatchEvent<TargetApp> = serde_json::from_str(&event).unwrap();
        assert!(matches!(event, WatchEvent::Added(app) if app.spec.actions[0].too_deep.len() == 1));
    }

    #[test]
    fn a_rule_decodes_to_what_it_encodes() {
        // Every field set: a field the decoding copy misses fails here.
        let rule = ActionRule {
            name: Some("r".to_owned()),
            trigger: Trigger {
                field: "daemonStatus.blockchainLength".to_owned(),
                condition: ConditionKind::LessThan,
                value: Some(json!({"a": [1, "b", null]})),
                value_from: Some(ValueFrom {
                    field: "daemonStatus.highestBlockLengthReceived".to_owned(),
                    offset: Some(-2.5),
                }),
                for_: Some("1m".to_owned()),
            },
            action: Some("webhook".to_owned()),
            parameters: Some(BTreeMap::from([
                ("url".to_owned(), json!("https://hooks.example.com")),
                ("headers".to_owned(), json!({"x": "y"})),
            ])),
            then: vec![
                ActionStep {
                    action: "restart_pod".to_owned(),
                    parameters: None,
                },
                ActionStep {
                    action: "scale_deployment".to_owned(),
                    parameters: Some(BTreeMap::from([("replicas".to_owned(), json!(2))])),
                },
            ],
            cooldown: Some("10m".to_owned()),
            too_deep: Vec::new(),
        };
        let text = serde_json::to_string(&rule).unwrap();
        assert_eq!(serde_json::from_str::<ActionRule>(&text).unwrap(), rule);
        let value = serde_json::to_value(&rule).unwrap();
        assert!(value.get("tooDeep").is_none(), "{value}");
        assert_eq!(serde_json::from_value::<ActionRule>(value).unwrap(), rule);
        // Absent and null free-form fields are None, as before.
        let bare: ActionRule = serde_json::from_str(
            r#"{"action":"restart_pod","parameters":null,"trigger":{"field":"$up","condition":"exists","value":null}}"#,
        )
        .unwrap();
        assert_eq!((bare.parameters, bare.trigger.value), (None, None));
    }
}
