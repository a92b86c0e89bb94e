//! Actions: what runs when a trigger fires. Each action is a plugin — one file
//! implementing [`Action`] plus one line in [`Registry::builtin`] — with its own
//! parameter validation (reused by admission), a timeout, and dry-run support.
//!
//! Every Kubernetes call an action makes goes through the execution context's
//! client, which impersonates the TargetApp's service account: the tenant's own
//! RBAC decides what an action may do, never the operator's rights.

mod dispatch;
mod params;
mod patch_resource;
mod restart_pod;
mod scale_deployment;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

pub use dispatch::{Dispatched, Dispatcher, Firing, Skip};
pub use params::{ParamProblem, Params};

use crate::targetapp::TargetApp;

/// Everything one action execution knows.
pub struct ActionContext {
    pub app: Arc<TargetApp>,
    pub namespace: String,
    /// The pod whose state fired the rule (None for URL targets).
    pub pod: Option<String>,
    pub rule: String,
    /// The poll result that fired (`data`), if the poll succeeded.
    pub state: Option<Value>,
    pub correlation_id: String,
    /// A client impersonating the TargetApp's service account.
    pub client: kube::Client,
    /// Evaluate and report, change nothing (Kubernetes calls use server-side dry run).
    pub dry_run: bool,
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
            Self::Failed(_) => "failed",
        }
    }

    /// Classifies an apiserver error from `what` ("evict pod mina/mina-0").
    pub fn from_kube(what: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => match status.code {
                403 => Self::Forbidden(format!("{what}: {}", status.message)),
                404 => Self::NotFound(format!("{what}: {}", status.message)),
                409 | 422 | 429 => Self::Refused(format!("{what}: {}", status.message)),
                _ => Self::Failed(format!("{what}: {} ({})", status.message, status.code)),
            },
            other => Self::Failed(format!("{what}: {other}")),
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
    /// The built-in actions. `webhook` and `exec_command` are not built yet and are
    /// refused by name (see [`Registry::validate`]).
    pub fn builtin() -> Self {
        let mut registry = Self {
            actions: BTreeMap::new(),
        };
        registry.register(Box::new(restart_pod::RestartPod));
        registry.register(Box::new(scale_deployment::ScaleDeployment));
        registry.register(Box::new(patch_resource::PatchResource));
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
            let planned = ["webhook", "exec_command"];
            let message = if planned.contains(&name) {
                format!("action {name:?} is not available in this version of KCO")
            } else {
                format!(
                    "unknown action {name:?}; known actions: {}",
                    self.names().join(", ")
                )
            };
            return Err(vec![ParamProblem::at("", message)]);
        };
        action.validate(&Params::new(parameters))
    }
}
