//! `patch_resource`: a merge, JSON or strategic-merge patch of a named object in
//! the TargetApp's own namespace.

use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;

use super::params::{Params, done, require};
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
        for key in ["apiVersion", "kind", "name"] {
            params.string(key, &mut problems);
        }
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
            let api_version = params.string("apiVersion", &mut bad).unwrap_or_default();
            let kind = params.string("kind", &mut bad).unwrap_or_default();
            let name = params.string("name", &mut bad).unwrap_or_default();
            let patch_type = params.choice("patchType", &["merge", "json", "strategic"], &mut bad);
            let body = params.get("patch").cloned().unwrap_or_default();
            if !bad.is_empty() {
                return Err(ActionError::Invalid(
                    bad.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
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
