//! Tenancy: what each tenant may do. Cluster admins set TenantQuotas (docs/tenancy.md);
//! a namespace none selects gets the operator's default quota. The effective quota
//! of a namespace decides, at admission, its TargetApp count, minimum interval,
//! allowed actions, replica ceiling and endpoint policy, and at run
//! time its poll and action budgets; outbound clients enforce the endpoint policy
//! at connect time.

pub mod address;
pub mod egress;
pub mod endpoint;
pub mod ledger;
pub mod quota;
pub mod quota_status;
pub mod services;
pub mod tenants;

pub use egress::{Apiserver, DnsOverrides, Egress};
pub use endpoint::{EndpointCheck, EndpointPolicy, Purpose, Reach};
pub use quota::{Effective, TenantQuota, TenantQuotaSpec};
pub use tenants::{ActionBudget, ConnectionPermit, Tenants};

/// The actions a tenant may use unless its quota says otherwise: every built-in
/// action except `exec_command`, which runs commands inside pods and must be
/// granted explicitly.
pub const DEFAULT_ALLOWED_ACTIONS: &[&str] = &[
    "restart_pod",
    "scale_deployment",
    "patch_resource",
    "webhook",
];

/// A tenant's limits, as far as KCO enforces them today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub allowed_actions: Vec<String>,
    pub endpoint_policy: EndpointPolicy,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            allowed_actions: DEFAULT_ALLOWED_ACTIONS
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            endpoint_policy: EndpointPolicy::default(),
        }
    }
}

impl Quota {
    /// Why `action` may not be used in `namespace`, if it may not.
    pub fn refuses_action(&self, namespace: &str, action: &str) -> Option<String> {
        (!self.allowed_actions.iter().any(|a| a == action)).then(|| {
            format!(
                "action {action} is not allowed in namespace {namespace} by its tenant quota (allowed: {})",
                self.allowed_actions.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_command_needs_an_explicit_grant() {
        let quota = Quota::default();
        assert_eq!(quota.refuses_action("chain", "webhook"), None);
        let why = quota.refuses_action("chain", "exec_command").unwrap();
        assert!(
            why.starts_with(
                "action exec_command is not allowed in namespace chain by its tenant quota"
            ),
            "{why}"
        );
    }
}
