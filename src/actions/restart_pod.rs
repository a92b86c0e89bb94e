//! `restart_pod`: evicts the pod that fired (honouring PodDisruptionBudgets), or
//! deletes it with `strategy: delete`.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, PostParams};

use super::params::{Params, done};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};

pub struct RestartPod;

const PARAMS: &[&str] = &["gracePeriod", "strategy", "timeoutSeconds"];

impl Action for RestartPod {
    fn name(&self) -> &'static str {
        "restart_pod"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        params.int("gracePeriod", 0, 86_400, &mut problems);
        params.choice("strategy", &["evict", "delete"], &mut problems);
        params.int("timeoutSeconds", 1, 3600, &mut problems);
        done(problems)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let pod = ctx.target_pod(self.name())?;
            let mut ignored = Vec::new();
            let grace = params.int("gracePeriod", 0, 86_400, &mut ignored);
            let delete = DeleteParams {
                grace_period_seconds: grace.and_then(|g| u32::try_from(g).ok()),
                dry_run: ctx.dry_run,
                ..DeleteParams::default()
            };
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let strategy = params.choice("strategy", &["evict", "delete"], &mut ignored);
            let what = format!(
                "{} pod {}/{pod}",
                strategy.as_deref().unwrap_or("evict"),
                ctx.namespace
            );
            if strategy.as_deref() == Some("delete") {
                pods.delete(pod, &delete)
                    .await
                    .map_err(|e| ActionError::from_kube(&what, e))?;
            } else {
                let evict = EvictParams {
                    delete_options: Some(delete),
                    post_options: PostParams {
                        dry_run: ctx.dry_run,
                        ..PostParams::default()
                    },
                };
                pods.evict(pod, &evict)
                    .await
                    .map_err(|e| ActionError::from_kube(&what, e))?;
            }
            Ok(Outcome {
                message: format!(
                    "{what}{}{}",
                    grace
                        .map(|g| format!(" (grace period {g}s)"))
                        .unwrap_or_default(),
                    ctx.dry_run_note()
                ),
            })
        })
    }
}
