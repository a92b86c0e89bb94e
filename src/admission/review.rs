//! AdmissionReview handling, without I/O: a request body in, a response out.
//! The webhook server calls it; tests drive it with fixtures. Every answer is an
//! AdmissionReview except for a body that is not one (400 with the reason).

use std::sync::Arc;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use super::cache::Caches;
use super::defaults::{self, Defaults};
use super::validate::{Validator, parse_targetapp};
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

/// The outcome of one review: an HTTP status and a JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
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

    /// Answers one AdmissionReview body for `hook`.
    pub fn review(&self, hook: Hook, body: &[u8]) -> Answer {
        if body.len() > MAX_REVIEW_BYTES {
            return bad_request(format!(
                "the AdmissionReview is {} bytes; at most {MAX_REVIEW_BYTES} are accepted",
                body.len()
            ));
        }
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(review) => review,
            Err(e) => return bad_request(format!("cannot decode the AdmissionReview: {e}")),
        };
        // The answer echoes the review's type: answer only what the webhooks are
        // registered for (admissionReviewVersions: [v1]).
        if (
            review.types.api_version.as_str(),
            review.types.kind.as_str(),
        ) != ("admission.k8s.io/v1", "AdmissionReview")
        {
            return bad_request(format!(
                "the body is {} {}, not an admission.k8s.io/v1 AdmissionReview",
                review.types.api_version, review.types.kind
            ));
        }
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(request) => request,
            Err(_) => return bad_request("the AdmissionReview has no request".to_owned()),
        };
        let response = self.respond(hook, &request);
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
                Answer { status: 200, body }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an AdmissionReview response");
                Answer {
                    status: 500,
                    body: serde_json::json!({"error": "internal error"}),
                }
            }
        }
    }

    fn respond(&self, hook: Hook, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
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
        let Some(object) = &request.object else {
            return allowed.deny("the request carries no object");
        };
        let mut value = match serde_json::to_value(object) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(error = %e, "cannot re-encode an admitted object");
                return allowed.deny("internal error");
            }
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
        if creating {
            let quota = self.tenants.effective(namespace);
            let count = self.tenants.tenant_app_count(namespace);
            if let Some(max) = quota.max_target_apps
                && count >= max as usize
            {
                problems.push(format!(
                    "metadata.namespace: the tenant of namespace {namespace} has {count} TargetApps and {} allows at most {max}",
                    quota.named()
                ));
            }
        }
        let custom = match &app.spec.schema.config_map_ref {
            Some(reference) => match self.caches.schema(namespace, reference) {
                Ok(schema) => Some(schema),
                Err(why) => {
                    problems.push(format!("spec.schema.configMapRef: {why}"));
                    None
                }
            },
            None => None,
        };
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

fn bad_request(message: String) -> Answer {
    Answer {
        status: 400,
        body: serde_json::json!({ "error": message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzz_regression_only_a_v1_admission_review_is_answered() {
        // fuzz/ (admission_review) found the request's kind echoed into the answer.
        let caches = Caches::default();
        caches.mark_synced();
        let admission = Admission::new(
            Arc::new(Validator::new()),
            Tenants::new(crate::tenancy::Quota::default()),
            Defaults::default(),
            caches,
        );
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
