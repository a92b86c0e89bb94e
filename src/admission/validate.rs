//! The one validator: every check a TargetApp must pass, reporting every problem
//! at once with its field path. The admission webhook, `kco validate` and the
//! monitor (for objects stored before the webhook existed) all call it.

use std::sync::Arc;

use serde_json::Value;

use super::query::{
    QuerySchema, QueryShape, check_condition, check_operation, check_operation_is, check_query,
    check_subscription,
};
use crate::actions::Registry;
use crate::monitor::discovery::{is_absolute, selector_query};
use crate::nesting::{Deepest, Path, Step};
use crate::targetapp::{MAX_STEPS, MAX_VALUE_DEPTH, SchemaSource, TargetApp};
use crate::tenancy::{Egress, Purpose, Quota, Tenants};
use crate::triggers::{self, Operand};
use apollo_compiler::ast::OperationType;

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

/// The most rules (`spec.actions`) one TargetApp may hold: every rule is evaluated
/// on every poll of every target.
pub const MAX_RULES: usize = 100;

/// The longest `graphqlEndpoint`: it names the target in status, Events and
/// metrics.
pub const MAX_ENDPOINT: usize = 2048;

/// The largest spec accepted, in bytes of JSON: far above any real TargetApp, far
/// below what would make validation or a poll's evaluation slow.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// The deepest object the webhooks decode, in nested arrays and objects: above any
/// TargetApp the validator accepts (37 levels, free-form fields at
/// [`MAX_VALUE_DEPTH`]), and well below serde_json's limit of 128.
pub const MAX_OBJECT_DEPTH: usize = 64;

/// Why an object nesting deeper than [`MAX_OBJECT_DEPTH`] is refused, where `deepest`
/// says it does: in a rule's free-form field, the same problem as
/// [`Validator::validate`] reports for one; elsewhere, the path to the deepest point.
pub fn too_deep(deepest: &Deepest) -> Problem {
    // A rule's free-form field is five steps down: spec, actions, the rule's index,
    // then parameters and a key, or trigger and value.
    let free_form = match deepest.path.as_slice() {
        [
            Step::Key(spec),
            Step::Key(actions),
            Step::Index(_),
            Step::Key(a),
            Step::Key(b),
            ..,
        ] => {
            spec == "spec"
                && actions == "actions"
                && (a == "parameters" || (a == "trigger" && b == "value"))
        }
        _ => false,
    };
    if free_form {
        return Problem {
            path: Path(&deepest.path[..5]).to_string(),
            message: nests(deepest.depth.saturating_sub(5)),
        };
    }
    Problem {
        path: Path(&deepest.path).to_string(),
        message: format!(
            "the object nests {} levels deep; at most {MAX_OBJECT_DEPTH} are read",
            deepest.depth
        ),
    }
}

fn nests(depth: usize) -> String {
    format!("nests {depth} levels deep; at most {MAX_VALUE_DEPTH} are allowed")
}

/// Validates TargetApps against the built-in Mina schema, or a schema given for
/// objects that name a ConfigMap schema.
pub struct Validator {
    mina: QuerySchema,
    registry: Registry,
    /// The tenant quota (allowed actions) and endpoint policy applied.
    /// Each namespace's quota (allowed actions, limits, endpoint policy).
    tenants: Arc<Tenants>,
    egress: Egress,
    /// The ServiceAccount names actions may run as (empty: any).
    accounts: Vec<String>,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// The default quota and endpoint policy, without the apiserver's addresses
    /// (what `kco validate` checks offline).
    pub fn new() -> Self {
        Self::offline(Tenants::new(Quota::default()))
    }

    /// Validates with each namespace's quota from `tenants` and the endpoint
    /// policy, without the apiserver's addresses (`kco validate --quota`).
    pub fn offline(tenants: Arc<Tenants>) -> Self {
        let egress = Egress::new(
            tenants.clone(),
            crate::tenancy::Apiserver::default(),
            Arc::default(),
            crate::monitor::poll::user_agent("kco-validate"),
            None,
        );
        Self::with_tenants(tenants, egress)
    }

    /// Validates with each namespace's quota from `tenants`, checking URLs through
    /// `egress`'s endpoint policy.
    pub fn with_tenants(tenants: Arc<Tenants>, egress: Egress) -> Self {
        Self {
            mina: QuerySchema::mina(),
            registry: Registry::builtin(),
            tenants,
            egress,
            accounts: Vec::new(),
        }
    }

    /// Refuses `serviceAccountName`s other than `accounts` (the names KCO's RBAC
    /// lets it impersonate; empty: any name).
    pub fn with_action_accounts(mut self, accounts: Vec<String>) -> Self {
        self.accounts = accounts;
        self
    }

    /// Every problem with `app`. `custom` is the schema for a `configMapRef` schema
    /// source, when the caller has it (otherwise such queries are not checked and a
    /// warning says so).
    pub fn validate(&self, app: &TargetApp, custom: Option<&QuerySchema>) -> Verdict {
        let mut v = Verdict::default();
        let spec = &app.spec;
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
        let quota = self.tenants.effective(namespace);

        // Size limits first: beyond them nothing else is looked at, so that a hostile
        // object costs no more than reading it.
        let size = serde_json::to_vec(spec).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_SPEC_BYTES {
            v.refuse(
                "spec",
                format!("the spec is {size} bytes of JSON; at most {MAX_SPEC_BYTES} are allowed"),
            );
            return v;
        }
        if spec.actions.len() > MAX_RULES {
            v.refuse(
                "spec.actions",
                format!(
                    "{} rules; at most {MAX_RULES} are allowed per TargetApp (split them across TargetApps)",
                    spec.actions.len()
                ),
            );
            return v;
        }
        // Free-form fields too deep to decode were left out when the object was read.
        for (i, rule) in spec.actions.iter().enumerate() {
            for field in &rule.too_deep {
                v.refuse(
                    format!("spec.actions[{i}].{}", field.field),
                    nests(field.depth),
                );
            }
        }
        if !v.accepted() {
            return v;
        }

        if spec.polling_interval == Some(0) {
            v.refuse("spec.pollingInterval", "must be at least 1 second");
        }
        if let (Some(interval), Some(min)) = (spec.polling_interval, quota.min_polling_interval)
            && interval < min
        {
            v.refuse(
                "spec.pollingInterval",
                format!(
                    "{interval}s is below the minimum of {min}s set by {}",
                    quota.named()
                ),
            );
        }
        match spec.timeout_seconds {
            Some(0) => v.refuse("spec.timeoutSeconds", "must be at least 1 second"),
            // Cut, not refused: a cluster admin who lowers the ceiling must not
            // fail every TargetApp stored with the default.
            Some(t) if t > quota.max_poll_timeout_seconds => v.warnings.push(format!(
                "spec.timeoutSeconds: {t}s is above the longest poll of {}s that {} allows; polls are cut at {}s",
                quota.max_poll_timeout_seconds,
                quota.named(),
                quota.max_poll_timeout_seconds
            )),
            _ => {}
        }
        if let Some(account) = &spec.service_account_name {
            if let Err(why) = crate::names::subdomain(account) {
                v.refuse("spec.serviceAccountName", why);
            } else if !self.accounts.is_empty() && !self.accounts.contains(account) {
                v.refuse(
                    "spec.serviceAccountName",
                    format!(
                        "KCO may run actions only as a ServiceAccount named {} (its RBAC lets it impersonate no other)",
                        self.accounts.join(" or ")
                    ),
                );
            }
        }
        if let Some(reference) = &spec.schema.config_map_ref
            && let Err(why) = crate::names::subdomain(&reference.name)
        {
            v.refuse("spec.schema.configMapRef.name", why);
        }
        if spec.ca_secret_ref.is_some() {
            v.refuse("spec.caSecretRef", "moved: set spec.tls.caSecretRef");
        }
        if let Some(tls) = &spec.tls {
            check_tls(&mut v, spec, tls);
        }
        if let Some(auth) = &spec.auth {
            check_auth(&mut v, spec, auth);
        }
        if spec.graphql_endpoint.len() > MAX_ENDPOINT {
            v.refuse(
                "spec.graphqlEndpoint",
                format!(
                    "{} characters; at most {MAX_ENDPOINT} are allowed",
                    spec.graphql_endpoint.len()
                ),
            );
        } else if is_absolute(&spec.graphql_endpoint) {
            if let Err(message) =
                self.egress
                    .check_url(namespace, Purpose::Graphql, &spec.graphql_endpoint)
            {
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

        let shape = self.shape(spec, custom, &mut v);
        self.check_metrics(&mut v, spec, shape.as_ref());
        check_reported(&mut v, spec, shape.as_ref());

        // Triggers that failed here are not compiled again below (a regex at the size
        // limit costs milliseconds to refuse).
        let mut failed_triggers = std::collections::BTreeSet::new();
        // When every rule compiles, their conditions are reused below (a costly regex
        // is compiled once).
        let compiled = match triggers::compile(&spec.actions) {
            Ok(rules) => Some(rules),
            Err(problems) => {
                for p in problems {
                    if let Some(index) = p
                        .path
                        .strip_prefix("spec.actions[")
                        .and_then(|rest| rest.split_once("].trigger"))
                        .and_then(|(index, _)| index.parse::<usize>().ok())
                    {
                        failed_triggers.insert(index);
                    }
                    v.refuse(p.path, p.message);
                }
                None
            }
        };
        for (i, rule) in spec.actions.iter().enumerate() {
            let at = |field: &str| format!("spec.actions[{i}].{field}");
            for step in rule.steps() {
                self.check_step_quota(&mut v, i, &step, namespace, &quota);
                if let Err(problems) = self.registry.validate(step.action, step.parameters) {
                    for p in problems {
                        let path = if p.path.is_empty() {
                            step.path(i, "action")
                        } else {
                            step.path(i, &format!("parameters.{}", p.path))
                        };
                        v.refuse(path, p.message);
                    }
                }
            }
            if rule.action.is_none() {
                if rule.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                    v.refuse(
                        at("parameters"),
                        "parameters without an action: name the action they are for, or leave them out (a rule without an action only records its firings)",
                    );
                }
                if !rule.then.is_empty() {
                    v.refuse(
                        at("then"),
                        "then without an action: the rule's first action goes in `action`, the ones after it in `then`",
                    );
                }
            }
            if rule.then.len() >= MAX_STEPS {
                v.refuse(
                    at("then"),
                    format!(
                        "{} actions after the first: a rule runs at most {MAX_STEPS}, its `action` and {} in `then`",
                        rule.then.len(),
                        MAX_STEPS - 1
                    ),
                );
            }
            if failed_triggers.contains(&i) {
                continue;
            }
            let Some(shape) = &shape else {
                continue;
            };
            let recompiled;
            let condition = match compiled.as_ref().and_then(|rules| rules.get(i)) {
                Some(compiled) => &compiled.condition,
                None => match triggers::Condition::compile(&rule.trigger) {
                    Ok(condition) => {
                        recompiled = condition;
                        &recompiled
                    }
                    Err(_) => continue,
                },
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
        if spec.actions.iter().any(|r| r.action.is_some()) && spec.service_account_name.is_none() {
            v.warnings.push(
                "spec.serviceAccountName is not set: triggers will fire but their actions will be refused".to_owned(),
            );
        }
        v
    }
}

impl Validator {
    /// The shape of the state query's answer, checked against the TargetApp's
    /// schema (`custom` for a `configMapRef` source, when the caller has it);
    /// `None` when there is no schema at hand or the query is refused.
    fn shape(
        &self,
        spec: &crate::targetapp::TargetAppSpec,
        custom: Option<&QuerySchema>,
        v: &mut Verdict,
    ) -> Option<QueryShape> {
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
                v.warnings.push(
                    "the query's fields are not checked: its schema comes from a ConfigMap"
                        .to_owned(),
                );
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
        let shape = self.query_shape(spec, schema, v);
        check_subscriptions(v, spec, schema, shape)
    }

    /// The state query's shape ([`Self::shape`]).
    fn query_shape(
        &self,
        spec: &crate::targetapp::TargetAppSpec,
        schema: Option<&QuerySchema>,
        v: &mut Verdict,
    ) -> Option<QueryShape> {
        match schema.map(|s| check_query(s, &spec.state_query)) {
            Some(Ok(shape)) => Some(shape),
            Some(Err(problems)) => {
                for p in problems {
                    v.refuse("spec.stateQuery", p);
                }
                None
            }
            // No schema at hand: what holds for every schema is still checked (a
            // mutation is never sent).
            None => {
                if let Err(problems) = check_operation(&spec.state_query) {
                    for p in problems {
                        v.refuse("spec.stateQuery", p);
                    }
                }
                None
            }
        }
    }

    /// The series `spec.metrics` asks for, as the monitor exports them: each
    /// entry's kind comes from the schema (unchecked without one). Problems are
    /// what [`Validator::validate`] reports of them.
    pub fn series(
        &self,
        app: &TargetApp,
        custom: Option<&QuerySchema>,
    ) -> Vec<crate::target_metrics::Series> {
        let mut v = Verdict::default();
        let shape = self.shape(&app.spec, custom, &mut v);
        self.check_metrics(&mut v, &app.spec, shape.as_ref())
    }

    /// Checks `spec.metrics`: names unique and valid, fields selected by the
    /// query and exportable, pod labels few and distinct. Returns the entries
    /// that pass.
    fn check_metrics(
        &self,
        v: &mut Verdict,
        spec: &crate::targetapp::TargetAppSpec,
        shape: Option<&QueryShape>,
    ) -> Vec<crate::target_metrics::Series> {
        use crate::target_metrics::{self as tm, Kind, MAX_METRICS, MAX_POD_LABELS, PREFIX};
        if spec.metrics.len() > MAX_METRICS {
            v.refuse(
                "spec.metrics",
                format!(
                    "{} entries; at most {MAX_METRICS} are allowed",
                    spec.metrics.len()
                ),
            );
            return Vec::new();
        }
        let mut compiled = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, entry) in spec.metrics.iter().enumerate() {
            let at = |field: &str| format!("spec.metrics[{i}].{field}");
            let before = v.problems.len();
            if let Err(why) = tm::check_name(&entry.name) {
                v.refuse(at("name"), why);
            } else if !names.insert(entry.name.as_str()) {
                v.refuse(
                    at("name"),
                    format!("{:?} is exported by an earlier entry", entry.name),
                );
            }
            if entry.pod_labels.len() > MAX_POD_LABELS {
                v.refuse(
                    at("podLabels"),
                    format!(
                        "{} labels; at most {MAX_POD_LABELS} are allowed",
                        entry.pod_labels.len()
                    ),
                );
            }
            let mut labels: Vec<(String, String)> = Vec::new();
            for (j, key) in entry.pod_labels.iter().enumerate() {
                let label = tm::pod_label(key);
                if let Err(why) = crate::names::label_key(key) {
                    v.refuse(at(&format!("podLabels[{j}]")), why);
                } else if labels.iter().any(|(l, _)| *l == label) {
                    v.refuse(
                        at(&format!("podLabels[{j}]")),
                        format!("{key:?} becomes the series label {label}, as an earlier key does"),
                    );
                }
                labels.push((label, key.clone()));
            }
            let kind = match entry.field.parse::<crate::triggers::FieldPath>() {
                Err(e) => {
                    v.refuse(at("field"), e.to_string());
                    continue;
                }
                Ok(path) => match shape {
                    Some(shape) => match shape
                        .resolve(&path)
                        .and_then(|leaf| super::query::series_kind(&leaf))
                    {
                        Ok(kind) => (path, kind),
                        Err(why) => {
                            v.refuse(at("field"), why);
                            continue;
                        }
                    },
                    None => (path, Kind::Unchecked),
                },
            };
            if v.problems.len() == before {
                compiled.push(tm::Series {
                    name: format!("{PREFIX}{}", entry.name),
                    field: kind.0,
                    kind: kind.1,
                    pod_labels: labels,
                });
            }
        }
        compiled
    }
}

/// Checks `spec.auth`: a header and scheme that can carry a credential, a
/// Secret key by name, and the ServiceAccount it is read as.
fn check_auth(
    v: &mut Verdict,
    spec: &crate::targetapp::TargetAppSpec,
    auth: &crate::targetapp::Auth,
) {
    for (field, why) in crate::monitor::credentials::check(auth) {
        v.refuse(format!("spec.auth.{field}"), why);
    }
    if spec.service_account_name.is_none() {
        v.refuse(
            "spec.auth",
            "the Secret is read with the rights of spec.serviceAccountName, which is not set",
        );
    }
    if !over_https(spec) {
        v.warnings.push(
            "spec.auth: the credentials are sent over plain http, readable by anything on the path; use https".to_owned(),
        );
    }
}

/// Whether the targets are polled over https: an `https://` URL, or pods with
/// `scheme: https`.
fn over_https(spec: &crate::targetapp::TargetAppSpec) -> bool {
    if is_absolute(&spec.graphql_endpoint) {
        spec.graphql_endpoint
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    } else {
        spec.scheme == crate::targetapp::Scheme::Https
    }
}

/// Checks `spec.tls`: names and Secret keys, https targets, and the
/// ServiceAccount its Secrets are read as.
fn check_tls(
    v: &mut Verdict,
    spec: &crate::targetapp::TargetAppSpec,
    tls: &crate::targetapp::TargetTls,
) {
    for (field, why) in crate::monitor::credentials::check_tls(tls) {
        v.refuse(format!("spec.tls.{field}"), why);
    }
    if !over_https(spec) {
        v.refuse(
            "spec.tls",
            "the targets are polled over http; set scheme: https (or an https URL) for TLS settings to apply",
        );
    }
    if (tls.ca_secret_ref.is_some() || tls.client_cert_secret_ref.is_some())
        && spec.service_account_name.is_none()
    {
        v.refuse(
            "spec.tls",
            "its Secrets are read with the rights of spec.serviceAccountName, which is not set",
        );
    }
}

/// Checks `spec.reportChanges`: few, distinct paths into the answer that the
/// query selects.
fn check_reported(
    v: &mut Verdict,
    spec: &crate::targetapp::TargetAppSpec,
    shape: Option<&QueryShape>,
) {
    if spec.report_changes.len() > MAX_REPORTED {
        v.refuse(
            "spec.reportChanges",
            format!(
                "{} fields; at most {MAX_REPORTED} are allowed",
                spec.report_changes.len()
            ),
        );
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, field) in spec.report_changes.iter().enumerate() {
        let at = format!("spec.reportChanges[{i}]");
        let path = match field.parse::<crate::triggers::FieldPath>() {
            Ok(path) => path,
            Err(e) => {
                v.refuse(at, e.to_string());
                continue;
            }
        };
        if path.is_up() {
            v.refuse(
                at,
                "$up is reported already, as PollFailed and PollRecovered Events",
            );
        } else if !seen.insert(path.clone()) {
            v.refuse(at, format!("{field:?} is named by an earlier entry"));
        } else if let Some(Err(why)) = shape.map(|shape| shape.resolve(&path)) {
            v.refuse(at, why);
        }
    }
}

/// The most fields `spec.reportChanges` may name.
pub const MAX_REPORTED: usize = 20;

/// Checks `spec.subscriptions` against `schema` (when at hand) like the state
/// query, and their names; `shape` (the state query's) with what each pushes
/// under `@<name>`, for trigger paths.
fn check_subscriptions(
    v: &mut Verdict,
    spec: &crate::targetapp::TargetAppSpec,
    schema: Option<&QuerySchema>,
    mut shape: Option<QueryShape>,
) -> Option<QueryShape> {
    use crate::targetapp::MAX_SUBSCRIPTIONS;
    if spec.subscriptions.is_empty() {
        return shape;
    }
    if spec.subscriptions.len() > MAX_SUBSCRIPTIONS {
        v.refuse(
            "spec.subscriptions",
            format!(
                "{} subscriptions; at most {MAX_SUBSCRIPTIONS} are allowed",
                spec.subscriptions.len()
            ),
        );
        return shape;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, subscription) in spec.subscriptions.iter().enumerate() {
        let at = |field: &str| format!("spec.subscriptions[{i}].{field}");
        let checked = match schema {
            Some(schema) => check_subscription(schema, &subscription.query).map(Some),
            None => {
                check_operation_is(&subscription.query, OperationType::Subscription).map(|()| None)
            }
        };
        let pushed = match checked {
            Ok(pushed) => pushed,
            Err(problems) => {
                for p in problems {
                    v.refuse(at("query"), p);
                }
                shape = None;
                continue;
            }
        };
        let Some(name) = subscription
            .name
            .clone()
            .or_else(|| pushed.as_ref().map(|(root, _)| root.clone()))
        else {
            continue;
        };
        if !names.insert(name.clone()) {
            v.refuse(
                at("name"),
                format!("{name:?} names an earlier subscription too: give each its own name"),
            );
            continue;
        }
        if let (Some(query), Some((root, pushed))) = (shape.take(), pushed) {
            shape = Some(query.with_pushed(&name, &root, pushed));
        }
    }
    shape
}

impl Validator {
    /// What the tenant's quota says of an action of rule `i`: the action is
    /// allowed, its replica counts are under the ceiling, its URL passes the
    /// endpoint policy.
    fn check_step_quota(
        &self,
        v: &mut Verdict,
        i: usize,
        step: &crate::targetapp::Step<'_>,
        namespace: &str,
        quota: &crate::tenancy::Effective,
    ) {
        let action = step.action;
        let at = |field: &str| step.path(i, field);
        let params = step.parameters;
        let param = |key: &str| params.and_then(|p| p.get(key));
        if self.registry.get(action).is_some()
            && let Some(why) = quota.quota.refuses_action(namespace, action)
        {
            v.refuse(at("action"), why);
        }
        if let (Some(max), Some(asked)) = (
            quota.max_action_seconds,
            param("timeoutSeconds").and_then(Value::as_i64),
        ) && asked > i64::from(max)
        {
            v.refuse(
                at("parameters.timeoutSeconds"),
                format!(
                    "{asked}s is above the {max}s an action may run under {}",
                    quota.named()
                ),
            );
        }
        match action {
            "scale_deployment" => {
                let Some(ceiling) = quota.max_replicas else {
                    return;
                };
                for key in ["replicas", "min", "max"] {
                    if let Some(n) = param(key).and_then(Value::as_i64)
                        && n > i64::from(ceiling)
                    {
                        v.refuse(
                            at(&format!("parameters.{key}")),
                            format!(
                                "{n} is above the replica ceiling of {ceiling} set by {}",
                                quota.named()
                            ),
                        );
                    }
                }
            }
            "patch_resource" => {
                let kind = param("kind").and_then(Value::as_str).unwrap_or_default();
                let patch_type = param("patchType")
                    .and_then(Value::as_str)
                    .unwrap_or("merge");
                if let Some(patch) = param("patch") {
                    let settings = crate::actions::replica_settings(kind, patch_type, patch);
                    if let Err(why) = crate::actions::check_ceiling(&settings, quota.max_replicas) {
                        v.refuse(
                            at("parameters.patch"),
                            format!("{why} (set by {})", quota.named()),
                        );
                    }
                }
            }
            "webhook" => {
                if let Some(url) = param("url").and_then(Value::as_str)
                    && let Err(message) = self.egress.check_url(namespace, Purpose::Webhook, url)
                {
                    v.refuse(at("parameters.url"), message);
                }
            }
            _ => {}
        }
    }
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

    fn messages(verdict: &Verdict) -> Vec<String> {
        verdict.problems.iter().map(ToString::to_string).collect()
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
        let text = messages(&verdict);
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
    fn a_rule_without_an_action_records_and_takes_no_parameters() {
        let rule = |extra: Value| {
            let mut rule =
                json!({"trigger": {"field": "daemonStatus.syncStatus", "condition": "changed"}});
            if let (Some(rule), Some(extra)) = (rule.as_object_mut(), extra.as_object()) {
                rule.extend(extra.clone());
            }
            app(json!({"selector": {}, "actions": [rule]}))
        };
        let v = Validator::new();
        let records = v.validate(&rule(json!({})), None);
        assert_eq!(records.problems, vec![], "{records:?}");
        // No action to run: no ServiceAccount to run it as is needed.
        assert!(records.warnings.is_empty(), "{records:?}");
        assert_eq!(
            v.validate(&rule(json!({"parameters": {}})), None).problems,
            vec![]
        );
        let stray = v.validate(&rule(json!({"parameters": {"gracePeriod": 0}})), None);
        assert_eq!(paths(&stray), ["spec.actions[0].parameters"]);
        assert!(
            messages(&stray)[0].contains("without an action"),
            "{stray:?}"
        );
    }

    #[test]
    fn credentials_need_a_service_account_to_be_read_as_and_a_header_to_go_in() {
        let v = Validator::new();
        let auth =
            json!({"secretRef": {"name": "kco-graphql-auth", "key": "token"}, "scheme": "Bearer"});
        let https = v.validate(
            &app(json!({"selector": {}, "scheme": "https", "serviceAccountName": "kco-actions", "auth": auth})),
            None,
        );
        assert_eq!(https.problems, vec![], "{https:?}");
        assert!(https.warnings.is_empty(), "{https:?}");
        let plain = v.validate(
            &app(json!({"graphqlEndpoint": "http://mina.chain.svc/graphql",
                        "serviceAccountName": "kco-actions", "auth": auth})),
            None,
        );
        assert_eq!(plain.problems, vec![], "{plain:?}");
        assert!(
            plain.warnings.iter().any(|w| w.contains("plain http")),
            "{plain:?}"
        );
        let anonymous = v.validate(
            &app(json!({"selector": {}, "scheme": "https", "auth": auth})),
            None,
        );
        assert_eq!(paths(&anonymous), ["spec.auth"]);
        assert!(
            messages(&anonymous)[0].contains("serviceAccountName"),
            "{anonymous:?}"
        );
        let host = v.validate(
            &app(
                json!({"selector": {}, "scheme": "https", "serviceAccountName": "kco-actions",
                        "auth": {"secretRef": {"name": "s", "key": "k"}, "header": "Host"}}),
            ),
            None,
        );
        assert_eq!(paths(&host), ["spec.auth.header"]);
    }

    #[test]
    fn tls_settings_apply_to_https_targets_and_their_secrets_need_an_account() {
        let v = Validator::new();
        let tls = json!({"caSecretRef": {"name": "kco-graphql-ca", "key": "ca.crt"},
                         "serverName": "mina.chain.svc", "clientCertSecretRef": {"name": "kco-graphql-client"}});
        let good = v.validate(
            &app(json!({"selector": {}, "scheme": "https", "serviceAccountName": "kco-actions", "tls": tls})),
            None,
        );
        assert_eq!(good.problems, vec![], "{good:?}");
        let plain = v.validate(
            &app(json!({"selector": {}, "serviceAccountName": "kco-actions", "tls": tls})),
            None,
        );
        assert_eq!(paths(&plain), ["spec.tls"]);
        let anonymous = v.validate(
            &app(json!({"selector": {}, "scheme": "https", "tls": tls})),
            None,
        );
        assert_eq!(paths(&anonymous), ["spec.tls"]);
        // A server name alone reads no Secret: no account is needed.
        let named = v.validate(
            &app(
                json!({"selector": {}, "scheme": "https", "tls": {"serverName": "mina.chain.svc"}}),
            ),
            None,
        );
        assert_eq!(named.problems, vec![], "{named:?}");
        let odd = v.validate(
            &app(json!({"selector": {}, "scheme": "https", "serviceAccountName": "kco-actions",
                        "caSecretRef": {"name": "a", "key": "b"},
                        "tls": {"serverName": "not a name", "caSecretRef": {"name": "../x", "key": "ca.crt"}}})),
            None,
        );
        assert_eq!(
            paths(&odd),
            [
                "spec.caSecretRef",
                "spec.tls.serverName",
                "spec.tls.caSecretRef.name"
            ]
        );
        assert!(
            messages(&odd)[0].contains("spec.tls.caSecretRef"),
            "{odd:?}"
        );
    }

    #[test]
    fn reported_fields_are_paths_the_query_selects_named_once() {
        let verdict = Validator::new().validate(
            &app(json!({
                "selector": {},
                "stateQuery": "query { daemonStatus { syncStatus blockchainLength peers { peerId } } }",
                "reportChanges": [
                    "daemonStatus.syncStatus", "daemonStatus.peers.#", "daemonStatus.uptimeSecs",
                    "$up", "daemonStatus..x", "daemonStatus.syncStatus"
                ]
            })),
            None,
        );
        assert_eq!(
            paths(&verdict),
            [
                "spec.reportChanges[2]",
                "spec.reportChanges[3]",
                "spec.reportChanges[4]",
                "spec.reportChanges[5]",
            ],
            "{verdict:#?}"
        );
        let text = messages(&verdict);
        assert!(
            text[0].contains("selects no field \"uptimeSecs\""),
            "{text:?}"
        );
        assert!(text[1].contains("PollFailed"), "{text:?}");
        assert!(text[3].contains("earlier entry"), "{text:?}");
        let many = Validator::new().validate(
            &app(json!({
                "selector": {},
                "reportChanges": (0..=MAX_REPORTED).map(|_| "daemonStatus.syncStatus").collect::<Vec<_>>()
            })),
            None,
        );
        assert_eq!(paths(&many), ["spec.reportChanges"]);
    }

    #[test]
    fn exported_fields_are_checked_against_the_query_and_compiled_with_their_kinds() {
        use crate::target_metrics::Kind;
        let target = app(json!({
            "selector": {"matchLabels": {"app": "mina"}},
            "metrics": [
                {"field": "daemonStatus.blockchainLength", "name": "blockchain_length", "podLabels": ["app.kubernetes.io/name"]},
                {"field": "daemonStatus.syncStatus", "name": "sync_status"},
                {"field": "daemonStatus.peers.#", "name": "peers"},
                {"field": "$up", "name": "up"}
            ]
        }));
        let v = Validator::new();
        let verdict = v.validate(&target, None);
        assert_eq!(verdict.problems, vec![], "{verdict:?}");
        let series = v.series(&target, None);
        let kinds: Vec<(&str, &Kind)> = series.iter().map(|s| (s.name.as_str(), &s.kind)).collect();
        assert_eq!(kinds[0], ("kco_target_blockchain_length", &Kind::Number));
        assert!(
            matches!(kinds[1], ("kco_target_sync_status", Kind::States(members)) if members.contains(&"SYNCED".to_owned()) && members.contains(&"OFFLINE".to_owned())),
            "{kinds:?}"
        );
        assert_eq!(kinds[2], ("kco_target_peers", &Kind::Number));
        assert_eq!(kinds[3], ("kco_target_up", &Kind::Boolean));
        assert_eq!(
            series[0].pod_labels,
            [(
                "label_app_kubernetes_io_name".to_owned(),
                "app.kubernetes.io/name".to_owned()
            )]
        );
    }

    #[test]
    fn an_endpoint_longer_than_a_name_should_be_is_refused() {
        let long = format!(
            "http://mina.chain.svc/graphql?pad={}",
            "x".repeat(MAX_ENDPOINT)
        );
        let verdict = Validator::new().validate(&app(json!({"graphqlEndpoint": long})), None);
        assert_eq!(paths(&verdict), ["spec.graphqlEndpoint"], "{verdict:?}");
        assert!(
            messages(&verdict)[0].contains("at most 2048"),
            "{verdict:?}"
        );
    }

    #[test]
    fn an_export_that_cannot_be_a_series_is_refused_with_its_path() {
        let verdict = Validator::new().validate(
            &app(json!({
                "selector": {"matchLabels": {"app": "mina"}},
                "stateQuery": "query { daemonStatus { syncStatus blockchainLength commitId peers { peerId } } }",
                "metrics": [
                    {"field": "daemonStatus.commitId", "name": "commit"},
                    {"field": "daemonStatus.peers", "name": "peers"},
                    {"field": "daemonStatus.uptimeSecs", "name": "uptime"},
                    {"field": "daemonStatus.blockchainLength", "name": "Height"},
                    {"field": "daemonStatus.blockchainLength", "name": "height", "podLabels": ["a.b", "a-b", "bad key"]},
                    {"field": "daemonStatus.syncStatus", "name": "height"},
                    {"field": "daemonStatus..x", "name": "broken"}
                ]
            })),
            None,
        );
        assert_eq!(
            paths(&verdict),
            [
                "spec.metrics[0].field",
                "spec.metrics[1].field",
                "spec.metrics[2].field",
                "spec.metrics[3].name",
                "spec.metrics[4].podLabels[1]",
                "spec.metrics[4].podLabels[2]",
                "spec.metrics[5].name",
                "spec.metrics[6].field",
            ],
            "{verdict:#?}"
        );
        let text = messages(&verdict);
        assert!(
            text[0].contains("only numbers, booleans, enums and list lengths"),
            "{text:?}"
        );
        assert!(text[1].contains("export its length"), "{text:?}");
        assert!(text[2].contains("uptimeSecs"), "{text:?}");
        assert!(text[4].contains("label_a_b"), "{text:?}");
        assert!(text[6].contains("earlier entry"), "{text:?}");
        let many = Validator::new().validate(
            &app(json!({
                "selector": {"matchLabels": {"app": "mina"}},
                "metrics": (0..=crate::target_metrics::MAX_METRICS)
                    .map(|i| json!({"field": "$up", "name": format!("up_{i}")}))
                    .collect::<Vec<_>>()
            })),
            None,
        );
        assert_eq!(paths(&many), ["spec.metrics"]);
    }

    #[test]
    fn a_poll_timeout_above_the_ceiling_is_cut_with_a_warning() {
        let v = Validator::new();
        let spec = |t: u32| {
            app(json!({"selector": {"matchLabels": {"app": "mina"}}, "timeoutSeconds": t}))
        };
        let long = v.validate(&spec(300), None);
        assert!(long.accepted(), "{long:?}");
        assert!(
            long.warnings
                .iter()
                .any(|w| w.starts_with("spec.timeoutSeconds")
                    && w.contains(&format!(
                        "cut at {}s",
                        crate::tenancy::quota::DEFAULT_MAX_POLL_TIMEOUT_SECONDS
                    ))),
            "{long:?}"
        );
        let short = v.validate(&spec(30), None);
        assert!(
            short.accepted() && !short.warnings.iter().any(|w| w.contains("timeoutSeconds")),
            "{short:?}"
        );
        assert!(!v.validate(&spec(0), None).accepted());
    }

    #[test]
    fn size_limits_refuse_before_anything_else_is_checked() {
        let rule = json!({"action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}});
        let v = Validator::new();
        let at_limit = v.validate(
            &app(json!({"selector": {}, "actions": vec![rule.clone(); MAX_RULES]})),
            None,
        );
        assert!(!paths(&at_limit).contains(&"spec.actions"), "{at_limit:?}");
        let over = v.validate(
            &app(json!({"pollingInterval": 0, "actions": vec![rule; MAX_RULES + 1]})),
            None,
        );
        assert_eq!(
            messages(&over),
            [
                "spec.actions: 101 rules; at most 100 are allowed per TargetApp (split them across TargetApps)"
            ]
        );
        let huge = v.validate(
            &app(json!({"selector": {}, "stateQuery": "x".repeat(MAX_SPEC_BYTES)})),
            None,
        );
        assert_eq!(paths(&huge), ["spec"], "{huge:?}");
        assert!(
            huge.problems[0].message.contains("at most 262144"),
            "{huge:?}"
        );
    }

    #[test]
    fn free_form_fields_nest_at_most_32_levels() {
        let deep = |depth: usize| (0..depth).fold(json!(1), |v, _| json!({"a": v}));
        let rule = |patch: Value, value: Value| {
            json!({"action": "patch_resource",
                   "parameters": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mina", "patch": patch},
                   "trigger": {"field": "$up", "condition": "equals", "value": value}})
        };
        let v = Validator::new();
        let at_limit = v.validate(
            &app(json!({"selector": {}, "actions": [rule(deep(MAX_VALUE_DEPTH), json!(false))]})),
            None,
        );
        assert_eq!(at_limit.problems, vec![], "{at_limit:?}");
        // Beyond it, the fields are refused before anything else is looked at.
        let over = v.validate(
            &app(json!({"pollingInterval": 0, "actions": [
                rule(json!({}), json!(false)),
                rule(deep(MAX_VALUE_DEPTH + 1), deep(40)),
            ]})),
            None,
        );
        assert_eq!(
            messages(&over),
            [
                "spec.actions[1].parameters.patch: nests 33 levels deep; at most 32 are allowed",
                "spec.actions[1].trigger.value: nests 40 levels deep; at most 32 are allowed",
            ]
        );
    }

    #[test]
    fn an_object_too_deep_to_read_is_refused_where_it_nests() {
        let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        let refusal =
            |json: String| too_deep(&crate::nesting::deepest(json.as_bytes(), 8)).to_string();
        let rules = |second: String| {
            format!(
                r#"{{"metadata":{{"name":"m"}},"spec":{{"actions":[{{"action":"a","parameters":{{"p":[1]}}}},{second}]}}}}"#
            )
        };
        assert_eq!(
            refusal(rules(format!(
                r#"{{"parameters":{{"patch":{}}}}}"#,
                nested(200)
            ))),
            "spec.actions[1].parameters.patch: nests 200 levels deep; at most 32 are allowed"
        );
        assert_eq!(
            refusal(rules(format!(
                r#"{{"trigger":{{"field":"f","value":[{}]}}}}"#,
                nested(9_000)
            ))),
            "spec.actions[1].trigger.value: nests 9001 levels deep; at most 32 are allowed"
        );
        assert_eq!(
            refusal(format!(
                r#"{{"spec":{{"selector":{{"x":{}}}}}}}"#,
                nested(100)
            )),
            "spec.selector.x.a.a.a.a.a: the object nests 103 levels deep; at most 64 are read"
        );
    }

    /// `query` was refused at `spec.stateQuery` only, one reason naming `needle`.
    fn assert_query_refused(verdict: &Verdict, query: &str, needle: &str) {
        assert!(
            !verdict.problems.is_empty() && paths(verdict).iter().all(|p| *p == "spec.stateQuery"),
            "{query}: {verdict:?}"
        );
        assert!(
            verdict.problems.iter().any(|p| p.message.contains(needle)),
            "{query}: {verdict:?}"
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
            assert_query_refused(&verdict, query, needle);
        }
    }

    #[test]
    fn without_its_schema_a_query_is_still_one_query() {
        // A configMapRef schema the caller does not have: the query cannot be checked
        // against it, but a mutation, a subscription or two operations never pass.
        let v = Validator::new();
        let from_configmap = |query: &str| {
            app(json!({"selector": {}, "stateQuery": query,
                       "schema": {"configMapRef": {"name": "schema", "key": "schema.graphql"}}}))
        };
        for (query, needle) in [
            (
                "mutation { sendPayment(input: {}) { payment { id } } }",
                "is a mutation",
            ),
            (
                "subscription { newBlock { stateHash } }",
                "is a subscription",
            ),
            ("query A { a } query B { b }", "2 operations"),
            ("fragment F on Query { a }", "no operation"),
            ("query {", "syntax error"),
        ] {
            let verdict = v.validate(&from_configmap(query), None);
            assert_query_refused(&verdict, query, needle);
        }
        // Any query at all passes (the fields are the ConfigMap's schema's business).
        let verdict = v.validate(&from_configmap("query { anything { at all } }"), None);
        assert_eq!(verdict.problems, vec![], "{verdict:?}");
    }
    #[test]
    fn urls_and_actions_follow_the_tenant_quota() {
        let verdict = Validator::new().validate(
            &app(json!({
                "graphqlEndpoint": "http://169.254.169.254/latest/meta-data",
                "serviceAccountName": "kco-actions",
                "actions": [
                    {"action": "exec_command", "parameters": {"command": ["true"]},
                     "trigger": {"field": "$up", "condition": "equals", "value": false}},
                    {"action": "webhook", "parameters": {"url": "http://hook.other.svc/x"},
                     "trigger": {"field": "$up", "condition": "equals", "value": false}},
                    {"action": "webhook", "parameters": {"url": "https://hooks.example.com/x"},
                     "trigger": {"field": "$up", "condition": "equals", "value": false}}
                ]
            })),
            None,
        );
        let text = messages(&verdict);
        assert_eq!(
            text,
            [
                "spec.graphqlEndpoint: 169.254.169.254 is a link-local (cloud metadata lives here) address, which is never allowed",
                "spec.actions[0].action: action exec_command is not allowed in namespace chain by its tenant quota (allowed: restart_pod, scale_deployment, patch_resource, webhook)",
                "spec.actions[1].parameters.url: hook.other.svc is a Service of another namespace; webhooks may call Services of namespace chain only",
            ],
        );
        let verdict =
            Validator::new().validate(&app(json!({"graphqlEndpoint": "file:///etc/passwd"})), None);
        assert_eq!(paths(&verdict), ["spec.graphqlEndpoint"], "{verdict:?}");
    }

    #[test]
    fn pushed_fields_are_exported_as_the_schema_types_them() {
        let series = Validator::new().series(
            &app(json!({
                "selector": {},
                "subscriptions": [
                    {"query": "subscription { newSyncUpdate }"},
                    {"name": "blocks", "query": "subscription { newBlock { protocolState { consensusState { blockHeight } } } }"},
                ],
                "metrics": [
                    {"field": "@blocks.protocolState.consensusState.blockHeight", "name": "height"},
                    {"field": "@newSyncUpdate", "name": "pushed_sync"},
                ],
            })),
            None,
        );
        let kinds: Vec<_> = series
            .iter()
            .map(|s| (s.name.as_str(), s.field.subscription(), &s.kind))
            .collect();
        assert!(
            matches!(
                kinds.as_slice(),
                [
                    ("kco_target_height", Some("blocks"), crate::target_metrics::Kind::Number),
                    ("kco_target_pushed_sync", Some("newSyncUpdate"), crate::target_metrics::Kind::States(members)),
                ] if members.contains(&"SYNCED".to_owned())
            ),
            "{kinds:?}"
        );
    }

    #[test]
    fn subscriptions_are_checked_like_the_query_and_triggers_read_them_by_name() {
        let v = Validator::new();
        let rule = |field: &str, condition: &str, value: Value| json!({"trigger": {"field": field, "condition": condition, "value": value}});
        let fine = v.validate(
            &app(json!({
                "selector": {},
                "subscriptions": [
                    {"query": "subscription { newSyncUpdate }"},
                    {"name": "blocks", "query": "subscription { newBlock { protocolState { consensusState { blockHeight } } } }"},
                ],
                "actions": [
                    rule("@newSyncUpdate", "equals", json!("OFFLINE")),
                    rule("@blocks.protocolState.consensusState.blockHeight", "greaterThan", json!(5)),
                    rule("@nope.x", "equals", json!(1)),
                    rule("@newSyncUpdate", "equals", json!("DOWN")),
                    rule("@blocks.protocolState.consensusState.epoch", "equals", json!(1)),
                ],
                "metrics": [
                    {"field": "@blocks.protocolState.consensusState.blockHeight", "name": "height"},
                    {"field": "@newSyncUpdate", "name": "pushed_sync"},
                    {"field": "@nope.x", "name": "nope"},
                ],
            })),
            None,
        );
        assert_eq!(
            messages(&fine),
            [
                "spec.metrics[2].field: `@nope` reads subscription nope, and spec.subscriptions has none by that name",
                "spec.actions[2].trigger.field: `@nope` reads subscription nope, and spec.subscriptions has none by that name",
                "spec.actions[3].trigger.value: \"DOWN\" is not a value of enum SyncStatus (CONNECTING, LISTENING, OFFLINE, BOOTSTRAP, SYNCED, CATCHUP)",
                "spec.actions[4].trigger.field: @blocks.protocolState.consensusState selects no field \"epoch\" (it selects: blockHeight)",
            ],
            "{fine:#?}"
        );
        let wrong = v.validate(
            &app(json!({
                "selector": {},
                "subscriptions": [
                    {"query": "query { version }"},
                    {"query": "subscription { newSyncUpdate chainReorganization }"},
                    {"query": "subscription { newBlock { nothing } }"},
                    {"query": "subscription { chainReorganization }"},
                    {"name": "chainReorganization", "query": "subscription { newSyncUpdate }"},
                ]
            })),
            None,
        );
        assert_eq!(
            paths(&wrong),
            [
                "spec.subscriptions[0].query",
                "spec.subscriptions[1].query",
                "spec.subscriptions[2].query",
                "spec.subscriptions[2].query",
                "spec.subscriptions[4].name",
            ],
            "{wrong:#?}"
        );
        let text = messages(&wrong);
        assert!(
            text[0].contains("only a subscription is subscribed to"),
            "{text:?}"
        );
        assert!(text[1].contains("only have one root field"), "{text:?}");
        assert!(
            text[3].contains("does not have a field `nothing`"),
            "{text:?}"
        );
    }

    #[test]
    fn a_rules_later_actions_are_checked_like_its_first() {
        let fired = json!({"field": "$up", "condition": "equals", "value": false});
        let verdict = Validator::new().validate(
            &app(json!({
                "selector": {},
                "serviceAccountName": "kco-actions",
                "actions": [
                    {"action": "webhook", "parameters": {"url": "https://hooks.example.com/x"}, "trigger": fired,
                     "then": [
                        {"action": "reboot"},
                        {"action": "restart_pod", "parameters": {"gracePeriod": -5}},
                        {"action": "exec_command", "parameters": {"command": ["true"]}},
                        {"action": "webhook", "parameters": {"url": "http://hook.other.svc/x"}},
                     ]},
                    {"trigger": fired, "then": [{"action": "restart_pod"}]},
                    {"action": "restart_pod", "trigger": fired, "then": vec![json!({"action": "restart_pod"}); 5]},
                ]
            })),
            None,
        );
        assert_eq!(
            messages(&verdict),
            [
                "spec.actions[0].then[0].action: unknown action \"reboot\"; known actions: exec_command, patch_resource, restart_pod, scale_deployment, webhook",
                "spec.actions[0].then[1].parameters.gracePeriod: -5 is outside 0..=86400",
                "spec.actions[0].then[2].action: action exec_command is not allowed in namespace chain by its tenant quota (allowed: restart_pod, scale_deployment, patch_resource, webhook)",
                "spec.actions[0].then[3].parameters.url: hook.other.svc is a Service of another namespace; webhooks may call Services of namespace chain only",
                "spec.actions[1].then: then without an action: the rule's first action goes in `action`, the ones after it in `then`",
                "spec.actions[2].then: 5 actions after the first: a rule runs at most 5, its `action` and 4 in `then`",
            ],
            "{verdict:#?}"
        );
    }
}
