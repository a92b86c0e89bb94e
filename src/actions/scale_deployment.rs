//! `scale_deployment`: sets a Deployment's replicas (absolute or relative,
//! clamped to `min`/`max`) through the scale subresource.

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

use super::params::{Params, done, require};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};

pub struct ScaleDeployment;

const PARAMS: &[&str] = &["name", "replicas", "delta", "min", "max", "timeoutSeconds"];
const MAX_REPLICAS: i64 = 10_000;

/// The replica count to set: absolute or relative, clamped to `min..=max` and at least 0.
pub fn target_replicas(
    current: i64,
    replicas: Option<i64>,
    delta: Option<i64>,
    min: Option<i64>,
    max: Option<i64>,
) -> i64 {
    let wanted = replicas.unwrap_or(current + delta.unwrap_or(0));
    let low = min.unwrap_or(0).max(0);
    let high = max.unwrap_or(MAX_REPLICAS).max(low);
    wanted.clamp(low, high)
}

impl Action for ScaleDeployment {
    fn name(&self) -> &'static str {
        "scale_deployment"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        require(params, "name", &mut problems);
        params.string("name", &mut problems);
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
            let name = params
                .string("name", &mut ignored)
                .ok_or_else(|| ActionError::Invalid("parameters.name is required".into()))?;
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
                // The tenant's replica ceiling bounds `max` (and so every target).
                match (
                    params.int("max", 0, MAX_REPLICAS, &mut ignored),
                    ctx.max_replicas,
                ) {
                    (Some(max), Some(ceiling)) => Some(max.min(i64::from(ceiling))),
                    (max, ceiling) => max.or(ceiling.map(i64::from)),
                },
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
        assert_eq!(target_replicas(3, Some(5), None, None, None), 5);
        assert_eq!(target_replicas(3, None, Some(2), None, Some(4)), 4);
        assert_eq!(target_replicas(3, None, Some(-5), None, None), 0);
        assert_eq!(target_replicas(3, None, Some(-5), Some(2), None), 2);
        assert_eq!(target_replicas(3, Some(1), None, Some(2), Some(6)), 2);
    }
}
