//! `patch_resource`: a merge, JSON or strategic-merge patch of a named object in
//! the TargetApp's own namespace.

use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;

use super::params::{Params, done, joined, require};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};

pub struct PatchResource;

const PARAMS: &[&str] = &[
    "apiVersion",
    "kind",
    "name",
    "patchType",
    "patch",
    "timeoutSeconds",
];

/// A replica count a patch sets: where, and to what (None when the patch moves or
/// copies a value there, or sets something that is not a whole number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetting {
    pub field: &'static str,
    pub value: Option<i64>,
}

/// The replica counts a patch of `kind` sets: `spec.replicas` of any kind (the
/// scale subresource's field for Deployments, StatefulSets, ReplicaSets and most
/// custom resources), and `spec.minReplicas`/`spec.maxReplicas` of a
/// HorizontalPodAutoscaler.
pub fn replica_settings(kind: &str, patch_type: &str, patch: &Value) -> Vec<ReplicaSetting> {
    let fields: &[&'static str] = if kind == "HorizontalPodAutoscaler" {
        &["replicas", "minReplicas", "maxReplicas"]
    } else {
        &["replicas"]
    };
    let mut found = Vec::new();
    let mut note = |field: &'static str, value: Option<&Value>| {
        if let Some(value) = value {
            found.push(ReplicaSetting {
                field,
                value: value.as_i64(),
            });
        }
    };
    match (patch_type, patch) {
        ("json", Value::Array(ops)) => {
            for op in ops {
                let path = op.get("path").and_then(Value::as_str).unwrap_or_default();
                let verb = op.get("op").and_then(Value::as_str).unwrap_or_default();
                for &field in fields {
                    let target = format!("/spec/{field}");
                    if !writes(path, &target) {
                        continue;
                    }
                    match verb {
                        "add" | "replace" => {
                            let value = op.get("value");
                            let at = match path {
                                "" => value.and_then(|v| v.pointer(&target)),
                                "/spec" => value.and_then(|v| v.get(field)),
                                _ => value,
                            };
                            note(field, at);
                        }
                        "move" | "copy" => note(field, Some(&Value::Null)),
                        _ => {}
                    }
                }
            }
        }
        (_, patch) => {
            for &field in fields {
                note(field, patch.get("spec").and_then(|spec| spec.get(field)));
            }
        }
    }
    found
}

/// Whether a JSON patch operation at `path` writes `target` (the same pointer or
/// one of its ancestors).
fn writes(path: &str, target: &str) -> bool {
    path.is_empty()
        || target
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Why a patch may not set these replica counts under the tenant's `ceiling`.
pub fn check_ceiling(settings: &[ReplicaSetting], ceiling: Option<u32>) -> Result<(), String> {
    let Some(ceiling) = ceiling else {
        return Ok(());
    };
    for setting in settings {
        match setting.value {
            Some(n) if n <= i64::from(ceiling) => {}
            Some(n) => {
                return Err(format!(
                    "the patch sets spec.{} to {n}, above the tenant's replica ceiling of {ceiling}",
                    setting.field
                ));
            }
            None => {
                return Err(format!(
                    "the patch sets spec.{} to a value KCO cannot check against the tenant's replica ceiling of {ceiling}",
                    setting.field
                ));
            }
        }
    }
    Ok(())
}

impl Action for PatchResource {
    fn name(&self) -> &'static str {
        "patch_resource"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        if params.get("namespace").is_some() {
            problems.retain(|p| p.path != "namespace");
            problems.push(ParamProblem::at(
                "namespace",
                "patch_resource only patches objects in the TargetApp's own namespace",
            ));
        }
        for key in ["apiVersion", "kind", "name", "patch"] {
            require(params, key, &mut problems);
        }
        params.object_name("apiVersion", crate::names::api_version, &mut problems);
        params.object_name("kind", crate::names::kind, &mut problems);
        params.object_name("name", crate::names::subdomain, &mut problems);
        let kind = params.choice("patchType", &["merge", "json", "strategic"], &mut problems);
        params.int("timeoutSeconds", 1, 3600, &mut problems);
        match (kind.as_deref().unwrap_or("merge"), params.get("patch")) {
            ("json", Some(p)) if !p.is_array() => problems.push(ParamProblem::at(
                "patch",
                "a JSON patch is a list of operations",
            )),
            ("json", Some(p)) => {
                if let Err(e) = serde_json::from_value::<json_patch::Patch>(p.clone()) {
                    problems.push(ParamProblem::at(
                        "patch",
                        format!("not a valid JSON patch: {e}"),
                    ));
                }
            }
            (_, Some(p)) if !p.is_object() => {
                problems.push(ParamProblem::at("patch", "a merge patch is an object"))
            }
            _ => {}
        }
        done(problems)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let mut bad = Vec::new();
            let api_version = params
                .object_name("apiVersion", crate::names::api_version, &mut bad)
                .unwrap_or_default();
            let kind = params
                .object_name("kind", crate::names::kind, &mut bad)
                .unwrap_or_default();
            let name = params
                .object_name("name", crate::names::subdomain, &mut bad)
                .unwrap_or_default();
            let patch_type = params.choice("patchType", &["merge", "json", "strategic"], &mut bad);
            let body = params.get("patch").cloned().unwrap_or_default();
            if !bad.is_empty() {
                return Err(ActionError::Invalid(joined(&bad)));
            }
            let settings = replica_settings(&kind, patch_type.as_deref().unwrap_or("merge"), &body);
            check_ceiling(&settings, ctx.max_replicas).map_err(ActionError::NotAllowed)?;
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_owned(), v.to_owned()),
                None => (String::new(), api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            let what = format!("patch {kind} {}/{name}", ctx.namespace);
            let (resource, caps) = kube::discovery::pinned_kind(&ctx.client, &gvk)
                .await
                .map_err(|e| {
                    ActionError::from_kube(&format!("{what}: find {api_version} {kind}"), e)
                })?;
            if caps.scope == Scope::Cluster {
                return Err(ActionError::Refused(format!(
                    "{what}: {kind} is cluster-scoped; patch_resource only patches objects in the TargetApp's namespace"
                )));
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource);
            let pp = PatchParams {
                dry_run: ctx.dry_run,
                field_manager: Some("kco".to_owned()),
                ..PatchParams::default()
            };
            let result = match patch_type.as_deref().unwrap_or("merge") {
                "json" => {
                    let ops: json_patch::Patch = serde_json::from_value(body)
                        .map_err(|e| ActionError::Invalid(format!("parameters.patch: {e}")))?;
                    api.patch(&name, &pp, &Patch::<()>::Json(ops)).await
                }
                "strategic" => api.patch(&name, &pp, &Patch::Strategic(&body)).await,
                _ => api.patch(&name, &pp, &Patch::Merge(&body)).await,
            };
            result.map_err(|e| ActionError::from_kube(&what, e))?;
            Ok(Outcome {
                message: format!(
                    "{what} ({} patch){}",
                    patch_type.as_deref().unwrap_or("merge"),
                    ctx.dry_run_note()
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values(kind: &str, patch_type: &str, patch: Value) -> Vec<(&'static str, Option<i64>)> {
        replica_settings(kind, patch_type, &patch)
            .into_iter()
            .map(|s| (s.field, s.value))
            .collect()
    }

    #[test]
    fn every_way_of_setting_replicas_is_found() {
        assert_eq!(
            values("Deployment", "merge", json!({"spec": {"replicas": 50}})),
            [("replicas", Some(50))]
        );
        assert_eq!(
            values(
                "StatefulSet",
                "strategic",
                json!({"spec": {"replicas": "50"}})
            ),
            [("replicas", None)]
        );
        assert_eq!(
            values(
                "Deployment",
                "json",
                json!([{"op": "replace", "path": "/spec/replicas", "value": 7}])
            ),
            [("replicas", Some(7))]
        );
        assert_eq!(
            values(
                "Deployment",
                "json",
                json!([{"op": "add", "path": "/spec", "value": {"replicas": 8}}])
            ),
            [("replicas", Some(8))]
        );
        assert_eq!(
            values(
                "Deployment",
                "json",
                json!([{"op": "replace", "path": "", "value": {"spec": {"replicas": 9}}}])
            ),
            [("replicas", Some(9))]
        );
        assert_eq!(
            values(
                "Deployment",
                "json",
                json!([{"op": "copy", "from": "/spec/x", "path": "/spec/replicas"}])
            ),
            [("replicas", None)]
        );
        assert_eq!(
            values(
                "HorizontalPodAutoscaler",
                "merge",
                json!({"spec": {"minReplicas": 2, "maxReplicas": 90}})
            ),
            [("minReplicas", Some(2)), ("maxReplicas", Some(90))]
        );
        // Other fields are not replica counts.
        assert!(
            values(
                "Deployment",
                "merge",
                json!({"metadata": {"labels": {"a": "b"}}})
            )
            .is_empty()
        );
        assert!(
            values(
                "Deployment",
                "json",
                json!([{"op": "replace", "path": "/spec/replicasX", "value": 99}])
            )
            .is_empty()
        );
        assert!(values("ConfigMap", "merge", json!({"data": {"replicas": "99"}})).is_empty());
    }

    #[test]
    fn the_ceiling_refuses_counts_above_it_or_unknown() {
        let at = |value| {
            [ReplicaSetting {
                field: "replicas",
                value,
            }]
        };
        assert_eq!(check_ceiling(&at(Some(4)), Some(4)), Ok(()));
        assert_eq!(check_ceiling(&at(Some(400)), None), Ok(()));
        let err = check_ceiling(&at(Some(5)), Some(4)).unwrap_err();
        assert!(
            err.contains("spec.replicas to 5, above the tenant's replica ceiling of 4"),
            "{err}"
        );
        assert!(check_ceiling(&at(None), Some(4)).is_err());
    }
}
