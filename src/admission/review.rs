//! AdmissionReview handling, without I/O: a request body in, a response out.
//! The webhook server calls it; tests drive it with fixtures. Every answer is an
//! AdmissionReview except for a body that is not one (400 with the reason).

use std::sync::Arc;

use kube::core::GroupVersionKind;
use kube::core::admission::{AdmissionResponse, Operation};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::access::{AccessCheck, UserInfo};
use super::cache::Caches;
use super::defaults::{self, Defaults};
use super::validate::{MAX_OBJECT_DEPTH, Validator, parse_targetapp, too_deep};
use crate::targetapp::TargetApp;
use crate::tenancy::Tenants;

/// What a webhook endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `/validate/targetapp`
    Validate,
    /// `/mutate/targetapp`
    Mutate,
    /// `/validate/tenantquota`
    ValidateQuota,
}

/// The largest AdmissionReview accepted (the apiserver's own request limit).
pub const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;

/// The refusal while this replica has not read the TenantQuotas yet.
pub const QUOTAS_UNKNOWN: &str = "KCO is starting and has not read the TenantQuotas yet, so it cannot tell what this namespace may do; retry in a few seconds";

/// The steps of the path to a too-deep point that a refusal names.
const PATH_STEPS: usize = 8;

/// The outcome of one review: an HTTP status and a JSON body, and a question
/// left to the server (who may act as the named ServiceAccount) when the object
/// is otherwise accepted.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub access: Option<AccessCheck>,
}

impl Answer {
    /// The answer that denies review `uid` with `message`.
    pub fn denied(uid: &str, message: impl Into<String>) -> Self {
        encode(allow(uid).deny(message.into()))
    }

    /// A server error (HTTP 500): the apiserver applies the webhook's failure policy.
    pub fn unavailable(why: &str) -> Self {
        Self {
            status: 500,
            body: serde_json::json!({ "error": why }),
            access: None,
        }
    }
}

/// The parts of an AdmissionReview the webhooks read. The object stays raw JSON
/// until its depth is measured; the rest, the old object included, is skipped
/// unread (serde_json skips and captures raw JSON without recursion). So a body
/// nesting deeper than serde_json decodes (128 levels; the apiserver stores objects
/// of up to 10,000) still gets an answer: a refusal naming the field, or, for an
/// update of such an object stored before the webhook, the review of the new one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    uid: String,
    kind: GroupVersionKind,
    operation: Operation,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(default)]
    user_info: UserInfo,
}

/// Validates and defaults TargetApps from warm caches: no network call.
#[derive(Clone)]
pub struct Admission {
    validator: Arc<Validator>,
    tenants: Arc<Tenants>,
    defaults: Defaults,
    caches: Caches,
}

impl Admission {
    pub fn new(
        validator: Arc<Validator>,
        tenants: Arc<Tenants>,
        defaults: Defaults,
        caches: Caches,
    ) -> Self {
        Self {
            validator,
            tenants,
            defaults,
            caches,
        }
    }

    /// Whether the TenantQuotas have been read: until then TargetApps are refused
    /// (the default quota is the loosest there is).
    pub fn quotas_known(&self) -> bool {
        self.tenants.synced()
    }

    /// Answers one AdmissionReview body for `hook`.
    pub fn review(&self, hook: Hook, body: &[u8]) -> Answer {
        if body.len() > MAX_REVIEW_BYTES {
            return bad_request(format!(
                "the AdmissionReview is {} bytes; at most {MAX_REVIEW_BYTES} are accepted",
                body.len()
            ));
        }
        let review: Review = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(e) => return bad_request(format!("cannot decode the AdmissionReview: {e}")),
        };
        // The answer echoes the review's type: answer only what the webhooks are
        // registered for (admissionReviewVersions: [v1]).
        if (review.api_version.as_str(), review.kind.as_str())
            != ("admission.k8s.io/v1", "AdmissionReview")
        {
            return bad_request(format!(
                "the body is {} {}, not an admission.k8s.io/v1 AdmissionReview",
                review.api_version, review.kind
            ));
        }
        let Some(request) = review.request else {
            return bad_request("the AdmissionReview has no request".to_owned());
        };
        let response = self.respond(hook, &request);
        let mut answer = encode(response);
        if hook == Hook::Validate
            && answer.body.pointer("/response/allowed") == Some(&Value::Bool(true))
        {
            answer.access = access_check(&request);
        }
        answer
    }

    fn respond(&self, hook: Hook, request: &Request) -> AdmissionResponse {
        let allowed = allow(&request.uid);
        let kind = &request.kind;
        let handles = if hook == Hook::ValidateQuota {
            "TenantQuota"
        } else {
            "TargetApp"
        };
        if (
            kind.group.as_str(),
            kind.version.as_str(),
            kind.kind.as_str(),
        ) != ("operator.kco.local", "v1alpha1", handles)
        {
            return allowed.deny(format!(
                "this webhook handles operator.kco.local/v1alpha1 {handles}, not {}/{} {}",
                kind.group, kind.version, kind.kind
            ));
        }
        if matches!(request.operation, Operation::Delete | Operation::Connect) {
            return allowed;
        }
        let Some(object) = request.object else {
            return allowed.deny("the request carries no object");
        };
        let deepest = crate::nesting::deepest(object.get().as_bytes(), PATH_STEPS);
        if deepest.depth > MAX_OBJECT_DEPTH {
            return allowed.deny(too_deep(&deepest).to_string());
        }
        let mut value: Value = match serde_json::from_str(object.get()) {
            Ok(value) => value,
            Err(e) => return allowed.deny(format!("cannot read the object: {e}")),
        };
        if let (Some(ns), Some(meta)) = (
            request.namespace.as_deref(),
            value.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            meta.entry("namespace")
                .or_insert_with(|| Value::String(ns.to_owned()));
        }
        match hook {
            Hook::ValidateQuota => {
                let quota: crate::tenancy::TenantQuota = match serde_json::from_value(value) {
                    Ok(quota) => quota,
                    Err(e) => return allowed.deny(format!("not a valid TenantQuota: {e}")),
                };
                let names = crate::actions::Registry::builtin().names();
                let problems = crate::tenancy::quota::check(&quota.spec, &names);
                if problems.is_empty() {
                    allowed
                } else {
                    allowed.deny(problems.join("; "))
                }
            }
            Hook::Mutate => {
                let patch = defaults::patch(&value, self.defaults);
                if patch.0.is_empty() {
                    return allowed;
                }
                match allowed.clone().with_patch(patch) {
                    Ok(response) => response,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode a defaulting patch");
                        allowed.deny("internal error")
                    }
                }
            }
            Hook::Validate => {
                // Quotas decide what is allowed: none is assumed before they are read.
                if !self.quotas_known() {
                    return allowed.deny(QUOTAS_UNKNOWN);
                }
                // Validate what will be stored: defaults included (the mutating hook ran
                // first, unless it is not installed).
                if let Some(spec) = value.get_mut("spec") {
                    defaults::apply(spec, self.defaults);
                }
                let app = match parse_targetapp(value) {
                    Ok(app) => app,
                    Err(e) => return allowed.deny(e),
                };
                let creating = matches!(request.operation, Operation::Create);
                let (verdict, warnings) = self.check(&app, creating);
                let mut response = if verdict.is_empty() {
                    allowed
                } else {
                    allowed.deny(verdict.join("; "))
                };
                if !warnings.is_empty() {
                    response.warnings = Some(warnings);
                }
                response
            }
        }
    }

    /// Problems (each `path: reason`) and warnings for `app`; `creating` adds the
    /// tenant's TargetApp count.
    pub fn check(&self, app: &TargetApp, creating: bool) -> (Vec<String>, Vec<String>) {
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
        let mut problems = Vec::new();
        if creating && let Some(why) = self.tenants.refuses_another_app(namespace) {
            problems.push(why);
        }
        let custom = self.caches.schema_of(app).unwrap_or_else(|why| {
            problems.push(format!("spec.schema.configMapRef: {why}"));
            None
        });
        let verdict = self.validator.validate(app, custom.as_deref());
        problems.extend(verdict.problems.iter().map(ToString::to_string));
        let mut warnings = verdict.warnings;
        if custom.is_none() && app.spec.schema.config_map_ref.is_some() {
            warnings.retain(|w| !w.contains("schema comes from a ConfigMap"));
        }
        if let Some(account) = &app.spec.service_account_name
            && self.caches.accounts_synced()
            && !self.caches.account_exists(namespace, account)
        {
            warnings.push(format!(
                "spec.serviceAccountName: ServiceAccount {account} does not exist in namespace {namespace} yet; actions are refused until it does"
            ));
        }
        (problems, warnings)
    }
}

/// The ServiceAccount question a create or update of a TargetApp naming one asks.
fn access_check(request: &Request) -> Option<AccessCheck> {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return None;
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Named {
        #[serde(default)]
        service_account_name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Object {
        spec: Option<Named>,
        metadata: Option<kube::core::ObjectMeta>,
    }
    let object: Object = serde_json::from_str(request.object?.get()).ok()?;
    let account = object.spec?.service_account_name?;
    let namespace = request
        .namespace
        .clone()
        .or_else(|| object.metadata.and_then(|m| m.namespace))
        .unwrap_or_default();
    Some(AccessCheck {
        uid: request.uid.clone(),
        user: request.user_info.clone(),
        namespace,
        account,
    })
}

/// An AdmissionReview body for `response` (status 200), or a 500.
fn encode(response: AdmissionResponse) -> Answer {
    match serde_json::to_value(response.into_review()) {
        Ok(mut body) => {
            // The API wants the patch as base64 text ([]byte in Go).
            if let Some(patch) = body.pointer_mut("/response/patch")
                && let Some(bytes) = patch.as_array().map(|items| {
                    items
                        .iter()
                        .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                        .collect::<Vec<u8>>()
                })
            {
                use base64::Engine as _;
                *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            Answer {
                status: 200,
                body,
                access: None,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an AdmissionReview response");
            Answer {
                status: 500,
                body: serde_json::json!({"error": "internal error"}),
                access: None,
            }
        }
    }
}

/// An answer allowing the request `uid`, to deny or patch.
fn allow(uid: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(String::new());
    response.uid = uid.to_owned();
    response.allowed = true;
    response.result = Default::default();
    response
}

fn bad_request(message: String) -> Answer {
    Answer {
        status: 400,
        body: serde_json::json!({ "error": message }),
        access: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        let caches = Caches::default();
        caches.mark_synced();
        let tenants = Tenants::new(crate::tenancy::Quota::default());
        tenants.mark_synced();
        Admission::new(
            Arc::new(Validator::new()),
            tenants,
            Defaults::default(),
            caches,
        )
    }

    #[test]
    fn before_the_quotas_are_read_targetapps_are_refused_for_now() {
        let caches = Caches::default();
        caches.mark_synced();
        let tenants = Tenants::new(crate::tenancy::Quota::default());
        let admission = Admission::new(
            Arc::new(Validator::new()),
            tenants.clone(),
            Defaults::default(),
            caches,
        );
        let object = targetapp("{}", "false");
        let body = review("CREATE", "TargetApp", &object, "null");
        let answer = admission.review(Hook::Validate, &body);
        assert_eq!(
            answer.body.pointer("/response/allowed"),
            Some(&Value::Bool(false))
        );
        assert_eq!(
            answer.body.pointer("/response/status/message"),
            Some(&Value::String(QUOTAS_UNKNOWN.to_owned()))
        );
        // Defaulting needs no quota; a deletion is never held up.
        for (hook, operation) in [(Hook::Mutate, "CREATE"), (Hook::Validate, "DELETE")] {
            let body = review(operation, "TargetApp", &object, "null");
            let answer = admission.review(hook, &body);
            assert_eq!(
                answer.body.pointer("/response/allowed"),
                Some(&Value::Bool(true)),
                "{hook:?} {operation}: {answer:?}"
            );
        }
        tenants.mark_synced();
        let answer = admission.review(Hook::Validate, &body);
        assert_eq!(
            answer.body.pointer("/response/allowed"),
            Some(&Value::Bool(true)),
            "{answer:?}"
        );
    }

    /// `{"a":{"a":...1...}}`: `depth` nested objects, as text.
    fn nested(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    /// A TargetApp whose only rule has `parameters` and `trigger.value` as given.
    fn targetapp(parameters: &str, value: &str) -> String {
        format!(
            r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TargetApp","metadata":{{"name":"mina","namespace":"chain"}},
                "spec":{{"selector":{{}},"actions":[{{"action":"restart_pod","parameters":{parameters},
                "trigger":{{"field":"$up","condition":"equals","value":{value}}}}}]}}}}"#
        )
    }

    fn review(operation: &str, kind: &str, object: &str, old_object: &str) -> Vec<u8> {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{
                "uid":"705ab4f5","operation":"{operation}","userInfo":{{}},"namespace":"chain",
                "kind":{{"group":"operator.kco.local","version":"v1alpha1","kind":"{kind}"}},
                "resource":{{"group":"operator.kco.local","version":"v1alpha1","resource":"targetapps"}},
                "object":{object},"oldObject":{old_object}}}}}"#
        )
        .into_bytes()
    }

    /// (allowed, message) of a 200 answer with the request's uid.
    fn verdict(answer: Answer) -> (bool, String) {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["kind"], "AdmissionReview");
        let response = &answer.body["response"];
        assert_eq!(response["uid"], "705ab4f5", "{}", answer.body);
        (
            response["allowed"].as_bool().unwrap(),
            response["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    #[test]
    fn an_object_too_deep_to_decode_is_denied_with_the_field_not_answered_400() {
        let admission = admission();
        for (object, field, depth) in [
            // Past what the webhook decodes (64 levels), measured on the bytes.
            (
                targetapp(&format!(r#"{{"deep":{}}}"#, nested(200)), "false"),
                "parameters.deep",
                200,
            ),
            // Close to the apiserver's own limit (10,000 levels in all).
            (targetapp("{}", &nested(9_990)), "trigger.value", 9_990),
            // Decoded, then refused by the validator, in the same words.
            (
                targetapp(&format!(r#"{{"deep":{}}}"#, nested(50)), "false"),
                "parameters.deep",
                50,
            ),
        ] {
            let body = review("CREATE", "TargetApp", &object, "null");
            let (allowed, message) = verdict(admission.review(Hook::Validate, &body));
            assert!(!allowed);
            assert_eq!(
                message,
                format!(
                    "spec.actions[0].{field}: nests {depth} levels deep; at most 32 are allowed"
                )
            );
            if depth > MAX_OBJECT_DEPTH {
                let (allowed, mutated) = verdict(admission.review(Hook::Mutate, &body));
                assert!(!allowed && mutated == message, "{mutated}");
            }
        }
        let quota = format!(
            r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TenantQuota","metadata":{{"name":"q"}},"spec":{{"x":{}}}}}"#,
            nested(300)
        );
        let body = review("CREATE", "TenantQuota", &quota, "null");
        let (allowed, message) = verdict(admission.review(Hook::ValidateQuota, &body));
        assert!(!allowed);
        assert_eq!(
            message,
            "spec.x.a.a.a.a.a.a: the object nests 302 levels deep; at most 64 are read"
        );
    }

    #[test]
    fn a_deep_object_stored_past_the_webhook_can_be_fixed_and_deleted() {
        let admission = admission();
        let old = targetapp(&format!(r#"{{"deep":{}}}"#, nested(9_000)), "false");
        let fixed = targetapp("{}", "false");
        let body = review("UPDATE", "TargetApp", &fixed, &old);
        assert!(verdict(admission.review(Hook::Validate, &body)).0);
        assert!(verdict(admission.review(Hook::Mutate, &body)).0);
        let body = review("DELETE", "TargetApp", "null", &old);
        assert!(verdict(admission.review(Hook::Validate, &body)).0);
    }

    #[test]
    fn fuzz_regression_only_a_v1_admission_review_is_answered() {
        // fuzz/ (admission_review) found the request's kind echoed into the answer.
        let admission = admission();
        let review = |api_version: &str, kind: &str| {
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": api_version, "kind": kind,
                "request": {
                    "uid": "705ab4f5", "operation": "DELETE", "userInfo": {},
                    "kind": {"group": "operator.kco.local", "version": "v1alpha1", "kind": "TargetApp"},
                    "resource": {"group": "operator.kco.local", "version": "v1alpha1", "resource": "targetapps"}
                }
            }))
            .unwrap()
        };
        for (api_version, kind) in [
            ("admission.k8s.io/v1", "AdmissiobjectonReview"),
            ("admission.k8s.io/v1beta1", "AdmissionReview"),
            ("", ""),
        ] {
            let answer = admission.review(Hook::Validate, &review(api_version, kind));
            assert_eq!(answer.status, 400, "{api_version} {kind}: {}", answer.body);
            assert!(answer.body["error"].as_str().unwrap().contains(kind));
        }
        let answer = admission.review(
            Hook::Validate,
            &review("admission.k8s.io/v1", "AdmissionReview"),
        );
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["kind"], "AdmissionReview");
        assert_eq!(answer.body["response"]["uid"], "705ab4f5");
    }
}
