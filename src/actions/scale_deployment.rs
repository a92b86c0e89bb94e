//! `scale_deployment`: sets a Deployment's replicas (absolute or relative,
//! clamped to `min`/`max`) through the scale subresource.

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::params::{Params, done, joined, require};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};

pub struct ScaleDeployment;

const PARAMS: &[&str] = &["name", "replicas", "delta", "min", "max", "timeoutSeconds"];
const MAX_REPLICAS: i64 = 10_000;

/// The replica count to set: absolute or relative, clamped to `min..=max`, at
/// least 0, and never above the tenant's `ceiling` (which bounds `min` too).
pub fn target_replicas(
    current: i64,
    replicas: Option<i64>,
    delta: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
    ceiling: Option<i64>,
) -> i64 {
    let wanted = replicas.unwrap_or(current.saturating_add(delta.unwrap_or(0)));
    let top = ceiling.map_or(MAX_REPLICAS, |c| c.clamp(0, MAX_REPLICAS));
    let high = max.map_or(top, |m| m.min(top));
    let low = min.unwrap_or(0).clamp(0, high);
    wanted.clamp(low, high)
}

impl Action for ScaleDeployment {
    fn name(&self) -> &'static str {
        "scale_deployment"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        require(params, "name", &mut problems);
        params.object_name("name", crate::names::subdomain, &mut problems);
        params.int("replicas", 0, MAX_REPLICAS, &mut problems);
        params.int("delta", -MAX_REPLICAS, MAX_REPLICAS, &mut problems);
        let min = params.int("min", 0, MAX_REPLICAS, &mut problems);
        let max = params.int("max", 0, MAX_REPLICAS, &mut problems);
        params.int("timeoutSeconds", 1, 3600, &mut problems);
        match (
            params.get("replicas").is_some(),
            params.get("delta").is_some(),
        ) {
            (true, true) => problems.push(ParamProblem::at(
                "delta",
                "give either replicas or delta, not both",
            )),
            (false, false) => problems.push(ParamProblem::at("replicas", "give replicas or delta")),
            _ => {}
        }
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            problems.push(ParamProblem::at(
                "min",
                format!("min {min} is above max {max}"),
            ));
        }
        done(problems)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let mut ignored = Vec::new();
            let mut bad = Vec::new();
            let name = params
                .object_name("name", crate::names::subdomain, &mut bad)
                .ok_or_else(|| ActionError::Invalid(joined(&bad)))?;
            let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let what = format!("scale deployment {}/{name}", ctx.namespace);
            let scale = deployments
                .get_scale(&name)
                .await
                .map_err(|e| ActionError::from_kube(&what, e))?;
            let current = i64::from(scale.spec.and_then(|s| s.replicas).unwrap_or(0));
            let target = target_replicas(
                current,
                params.int("replicas", 0, MAX_REPLICAS, &mut ignored),
                params.int("delta", -MAX_REPLICAS, MAX_REPLICAS, &mut ignored),
                params.int("min", 0, MAX_REPLICAS, &mut ignored),
                params.int("max", 0, MAX_REPLICAS, &mut ignored),
                ctx.max_replicas.map(i64::from),
            );
            if target == current {
                return Ok(Outcome {
                    message: format!("{what}: already at {current} replicas (within bounds)"),
                });
            }
            let pp = PatchParams {
                dry_run: ctx.dry_run,
                ..PatchParams::default()
            };
            let patch = serde_json::json!({ "spec": { "replicas": target } });
            deployments
                .patch_scale(&name, &pp, &Patch::Merge(&patch))
                .await
                .map_err(|e| ActionError::from_kube(&what, e))?;
            Ok(Outcome {
                message: format!(
                    "{what}: {current} -> {target} replicas{}",
                    ctx.dry_run_note()
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_absolute_or_relative_and_clamped() {
        assert_eq!(target_replicas(3, Some(5), None, None, None, None), 5);
        assert_eq!(target_replicas(3, None, Some(2), None, Some(4), None), 4);
        assert_eq!(target_replicas(3, None, Some(-5), None, None, None), 0);
        assert_eq!(target_replicas(3, None, Some(-5), Some(2), None, None), 2);
        assert_eq!(target_replicas(3, Some(1), None, Some(2), Some(6), None), 2);
    }

    #[test]
    fn the_tenant_ceiling_bounds_every_parameter() {
        // `min` above the ceiling no longer lifts the count past it.
        assert_eq!(
            target_replicas(1, Some(1), None, Some(50), None, Some(4)),
            4
        );
        assert_eq!(
            target_replicas(1, None, Some(100), None, Some(60), Some(4)),
            4
        );
        assert_eq!(target_replicas(1, Some(9), None, None, None, Some(4)), 4);
        // A Deployment already above the ceiling is brought down to it.
        assert_eq!(target_replicas(9, None, Some(1), None, None, Some(4)), 4);
        assert_eq!(target_replicas(3, None, Some(1), None, None, Some(0)), 0);
        assert_eq!(
            target_replicas(i64::MAX, None, Some(i64::MAX), None, None, None),
            MAX_REPLICAS
        );
    }
}
