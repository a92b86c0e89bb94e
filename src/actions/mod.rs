//! Actions: what runs when a trigger fires. Each action is a plugin — one file
//! implementing [`Action`] plus one line in [`Registry::builtin`] — with its own
//! parameter validation (reused by admission), a timeout, and dry-run support.
//!
//! Every Kubernetes call an action makes goes through the execution context's
//! client, which impersonates the TargetApp's service account: the tenant's own
//! RBAC decides what an action may do, never the operator's rights.

mod dispatch;
pub mod exec_command;
mod params;
mod patch_resource;
pub mod receivers;
mod restart_pod;
mod scale_deployment;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

pub use dispatch::{
    Alive, Dispatched, Dispatcher, FENCE_PATIENCE, Fenced, Firing, Skip, StepRun, Stopped, patience,
};
pub use params::{ParamProblem, Params};
pub use patch_resource::{ReplicaSetting, check_ceiling, replica_settings};

use crate::targetapp::TargetApp;
use crate::tenancy::Egress;

/// Everything one action execution knows.
pub struct ActionContext {
    pub app: Arc<TargetApp>,
    pub namespace: String,
    /// The pod whose state fired the rule (None for URL targets).
    pub pod: Option<String>,
    /// The target's name (the pod's name, or the URL).
    pub target: String,
    pub rule: String,
    /// The field the rule watches, and its value before and when it fired.
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
    /// When the rule fired (the fenced firing time).
    pub fired_at: Timestamp,
    /// Which of the rule's actions this is: 0 for its `action`, 1 for its first
    /// `then`, …
    pub step: usize,
    /// The poll result that fired (`data`), if the poll succeeded.
    pub state: Option<Value>,
    pub correlation_id: String,
    /// A client impersonating the TargetApp's service account.
    pub client: kube::Client,
    /// Outbound HTTP under the tenant's endpoint policy (webhook actions).
    pub egress: Egress,
    /// The tenant's replica ceiling for `scale_deployment`.
    pub max_replicas: Option<u32>,
    /// Evaluate and report, change nothing (Kubernetes calls use server-side dry run).
    pub dry_run: bool,
}

impl ActionContext {
    /// The pod that fired, for actions that act on a pod (`action` names the
    /// action in the error for URL targets).
    pub fn target_pod(&self, action: &str) -> Result<&str, ActionError> {
        self.pod.as_deref().ok_or_else(|| {
            ActionError::Invalid(format!("{action} needs a pod target, not a URL endpoint"))
        })
    }

    /// Appended to an outcome's message: what a dry run proved.
    pub fn dry_run_note(&self) -> &'static str {
        if self.dry_run {
            " [dry run: accepted by the apiserver, nothing changed]"
        } else {
            ""
        }
    }
}

/// What an action did, in words for the `ActionSucceeded` Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub message: String,
}

/// Why an action failed. `reason()` is a bounded label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// RBAC refused: the message names the verb and resource the account lacks.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The apiserver refused for another reason (a PodDisruptionBudget, a conflict...).
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid parameters: {0}")]
    Invalid(String),
    #[error("cannot run: {0}")]
    Unavailable(String),
    /// The tenant's quota or endpoint policy does not allow it.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Forbidden(_) => "forbidden",
            Self::Refused(_) => "refused",
            Self::NotFound(_) => "not_found",
            Self::Timeout(_) => "timeout",
            Self::Invalid(_) => "invalid",
            Self::Unavailable(_) => "unavailable",
            Self::NotAllowed(_) => "not_allowed",
            Self::Failed(_) => "failed",
        }
    }

    /// Classifies an apiserver error from `what` ("evict pod mina/mina-0").
    /// Whether the apiserver was unavailable (unreachable, or a 5xx): trying the
    /// same call again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    pub fn from_kube(what: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => match status.code {
                403 => Self::Forbidden(format!("{what}: {}", status.message)),
                404 => Self::NotFound(format!("{what}: {}", status.message)),
                409 | 422 | 429 => Self::Refused(format!("{what}: {}", status.message)),
                500.. => Self::Unavailable(format!("{what}: {} ({})", status.message, status.code)),
                _ => Self::Failed(format!("{what}: {} ({})", status.message, status.code)),
            },
            // The apiserver could not be reached or the connection broke: it may be
            // restarting. Nothing was decided.
            other => Self::Unavailable(format!("{what}: {other}")),
        }
    }
}

/// One kind of action.
pub trait Action: Send + Sync {
    /// The name used in `spec.actions[].action`.
    fn name(&self) -> &'static str;

    /// Checks parameters; every problem with its path under `parameters`.
    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>>;

    /// A timeout this action's parameters ask for, overriding ACTION_EXECUTION_TIMEOUT.
    fn timeout(&self, params: &Params) -> Option<Duration> {
        params.seconds("timeoutSeconds")
    }

    /// Whether running it again for the same firing is safe when the replica that
    /// started it stopped before recording the outcome. Only then does a replica
    /// taking over resume an unfinished firing; otherwise KCO stays at-most-once
    /// (a pod restarted twice is worse than a restart missed and reported).
    fn resumable(&self) -> bool {
        false
    }

    /// Runs the action (validated parameters), honouring `ctx.dry_run`.
    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>>;
}

/// The actions KCO knows, by name.
pub struct Registry {
    actions: BTreeMap<&'static str, Box<dyn Action>>,
}

impl Registry {
    /// The built-in actions.
    pub fn builtin() -> Self {
        let mut registry = Self {
            actions: BTreeMap::new(),
        };
        registry.register(Box::new(restart_pod::RestartPod));
        registry.register(Box::new(scale_deployment::ScaleDeployment));
        registry.register(Box::new(patch_resource::PatchResource));
        registry.register(Box::new(webhook::Webhook));
        registry.register(Box::new(exec_command::ExecCommand));
        registry
    }

    fn register(&mut self, action: Box<dyn Action>) {
        self.actions.insert(action.name(), action);
    }

    pub fn get(&self, name: &str) -> Option<&dyn Action> {
        self.actions.get(name).map(|a| a.as_ref())
    }

    /// The names of the registered actions.
    pub fn names(&self) -> Vec<&'static str> {
        self.actions.keys().copied().collect()
    }

    /// Validates `parameters` for the action `name`.
    pub fn validate(
        &self,
        name: &str,
        parameters: Option<&BTreeMap<String, Value>>,
    ) -> Result<(), Vec<ParamProblem>> {
        let Some(action) = self.get(name) else {
            return Err(vec![ParamProblem::at(
                "",
                format!(
                    "unknown action {name:?}; known actions: {}",
                    self.names().join(", ")
                ),
            )]);
        };
        action.validate(&Params::new(parameters))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use super::*;

    fn check(action: &str, params: Value) -> Result<(), Vec<String>> {
        let map: BTreeMap<String, Value> = serde_json::from_value(params).unwrap();
        Registry::builtin()
            .validate(action, Some(&map))
            .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn good_parameters_pass() {
        assert_eq!(check("restart_pod", json!({})), Ok(()));
        assert_eq!(
            check(
                "restart_pod",
                json!({"gracePeriod": 30, "strategy": "delete"})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "scale_deployment",
                json!({"name": "web", "delta": -1, "min": 1, "max": 5})
            ),
            Ok(())
        );
        assert_eq!(
            check("scale_deployment", json!({"name": "web", "replicas": 0})),
            Ok(())
        );
        assert_eq!(
            check(
                "patch_resource",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "patch": {"data": {"a": "b"}}})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "patch_resource",
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "patchType": "json",
                                            "patch": [{"op": "replace", "path": "/spec/replicas", "value": 2}]})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "webhook",
                json!({"url": "https://hooks.example.com/kco", "method": "PUT", "timeoutSeconds": 5,
                       "headers": {"X-Team": "chain"}, "secretRef": {"name": "hmac", "key": "key"}})
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "exec_command",
                json!({"command": ["mina", "client", "status"], "container": "mina"})
            ),
            Ok(())
        );
    }

    #[test]
    fn bad_parameters_are_refused_with_their_path() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "restart_pod",
                json!({"gracePeriod": -1}),
                "parameters.gracePeriod: -1 is outside 0..=86400",
            ),
            (
                "restart_pod",
                json!({"gracePeriod": "30s"}),
                "parameters.gracePeriod: must be an integer",
            ),
            (
                "restart_pod",
                json!({"strategy": "reboot"}),
                "parameters.strategy: \"reboot\" is not one of: evict, delete",
            ),
            (
                "restart_pod",
                json!({"force": true}),
                "parameters.force: unknown parameter",
            ),
            (
                "scale_deployment",
                json!({"replicas": 2}),
                "parameters.name: is required",
            ),
            (
                "scale_deployment",
                json!({"name": "w"}),
                "parameters.replicas: give replicas or delta",
            ),
            (
                "scale_deployment",
                json!({"name": "w", "replicas": 2, "delta": 1}),
                "parameters.delta: give either replicas or delta",
            ),
            (
                "scale_deployment",
                json!({"name": "w", "delta": 1, "min": 5, "max": 2}),
                "parameters.min: min 5 is above max 2",
            ),
            (
                "patch_resource",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "patch": {}, "namespace": "other"}),
                "parameters.namespace: patch_resource only patches objects in the TargetApp's own namespace",
            ),
            (
                "patch_resource",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "patchType": "json", "patch": {"a": 1}}),
                "parameters.patch: a JSON patch is a list of operations",
            ),
            (
                "patch_resource",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "patchType": "json", "patch": [{"op": "fly"}]}),
                "parameters.patch: not a valid JSON patch",
            ),
            (
                "patch_resource",
                json!({"kind": "ConfigMap", "name": "c", "patch": {}}),
                "parameters.apiVersion: is required",
            ),
            ("reboot_node", json!({}), "unknown action \"reboot_node\""),
            ("webhook", json!({}), "parameters.url: is required"),
            (
                "webhook",
                json!({"url": "ftp://example.com/x"}),
                "parameters.url: scheme ftp is not allowed",
            ),
            (
                "webhook",
                json!({"url": "https://u:p@example.com/x"}),
                "parameters.url: credentials in the URL are not allowed",
            ),
            (
                "webhook",
                json!({"url": "https://example.com", "method": "GET"}),
                "parameters.method: \"GET\" is not one of: POST, PUT",
            ),
            (
                "webhook",
                json!({"url": "https://example.com", "headers": {"Host": "evil"}}),
                "parameters.headers.Host: KCO sets this header itself",
            ),
            (
                "webhook",
                json!({"url": "https://example.com", "headers": {"X-Team": 5}}),
                "parameters.headers.X-Team: must be a string",
            ),
            (
                "webhook",
                json!({"url": "https://example.com", "secretRef": {"name": "s"}}),
                "parameters.secretRef: must be {name, key}",
            ),
            (
                "webhook",
                json!({"url": "https://example.com", "timeoutSeconds": 0}),
                "parameters.timeoutSeconds: 0 is outside 1..=300",
            ),
            ("exec_command", json!({}), "parameters.command: is required"),
            (
                "exec_command",
                json!({"command": "reboot"}),
                "parameters.command: must be a list of 1 to 64 strings",
            ),
            (
                "exec_command",
                json!({"command": ["sh", 3]}),
                "parameters.command[1]: must be a string",
            ),
            (
                "exec_command",
                json!({"command": [""]}),
                "parameters.command[0]: must name a program",
            ),
        ];
        for (action, params, expected) in cases {
            let problems = check(action, params.clone()).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{action} {params}: {problems:?}"
            );
        }
    }

    #[test]
    fn api_errors_become_reasons() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("nope", "Reason")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(
            ActionError::from_kube("evict", status(403)).reason(),
            "forbidden"
        );
        assert_eq!(
            ActionError::from_kube("evict", status(429)).reason(),
            "refused"
        );
        assert_eq!(
            ActionError::from_kube("evict", status(404)).reason(),
            "not_found"
        );
        assert!(
            ActionError::from_kube("evict pod a/b", status(403))
                .to_string()
                .contains("evict pod a/b: nope")
        );
    }
}
