//! Status conditions as Kubernetes resources carry them: a condition keeps its
//! `lastTransitionTime` while its status stays the same. Pure: TargetApp and
//! TenantQuota statuses are built with it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// What a condition says now.
pub struct Said<'a> {
    pub type_: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
    pub message: String,
}

/// The condition `said`, describing `generation`, whose transition time is the
/// one in `previous` while its status there is the same, else `now`.
pub fn condition(
    said: Said<'_>,
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let transition = previous
        .iter()
        .find(|c| c.type_ == said.type_)
        .filter(|c| c.status == said.status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: said.type_.to_owned(),
        status: said.status.to_owned(),
        reason: said.reason.to_owned(),
        message: said.message,
        last_transition_time: transition,
        observed_generation: generation,
    }
}
