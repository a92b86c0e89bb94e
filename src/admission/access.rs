//! Who may lend a ServiceAccount's rights to a TargetApp. A TargetApp's actions
//! run as `spec.serviceAccountName`, so writing a TargetApp that names an account
//! is acting as that account: the user who creates or updates it must be allowed
//! to `impersonate` that ServiceAccount of the namespace, exactly as Kubernetes
//! asks of anyone who would act as it (namespace `admin` and `edit` roles have
//! that right; a Role that only grants TargetApps does not). Every update is
//! checked too: changing a rule changes what is done with the account's rights.
//!
//! The review stays pure ([`super::review`] names the question); the server asks
//! the apiserver with a SubjectAccessReview.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use serde::Deserialize;

/// The user of an admission request (`request.userInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The question one review leaves to the server: may `user` act as ServiceAccount
/// `account` of `namespace`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCheck {
    /// The review's uid, for the answer.
    pub uid: String,
    pub user: UserInfo,
    pub namespace: String,
    pub account: String,
}

impl AccessCheck {
    /// The denial when the answer is no.
    pub fn refusal(&self) -> String {
        format!(
            "spec.serviceAccountName: user {:?} may not act as ServiceAccount {}/{} (a TargetApp's actions run with its rights; ask for impersonate on serviceaccounts/{} in namespace {})",
            self.user.username, self.namespace, self.account, self.account, self.namespace
        )
    }

    /// The denial when no answer could be had (retryable).
    pub fn unanswered(&self, why: &str) -> String {
        format!(
            "spec.serviceAccountName: cannot check now whether user {:?} may act as ServiceAccount {}/{}; try again ({why})",
            self.user.username, self.namespace, self.account
        )
    }
}

/// Answers [`AccessCheck`]s.
pub trait Authorize: Send + Sync {
    /// Whether the user may impersonate the ServiceAccount, or why that is unknown.
    fn may_act_as<'a>(&'a self, check: &'a AccessCheck) -> BoxFuture<'a, Result<bool, String>>;
}

/// How long an answer is reused: a revoked right stops working within it.
const ANSWER_TTL: Duration = Duration::from_secs(10);

/// Asks the apiserver with SubjectAccessReviews (the operator needs `create` on
/// them), each answer reused for a few seconds.
pub struct SubjectAccessReviews {
    client: kube::Client,
    answers: moka::future::Cache<(UserInfo, String, String), bool>,
}

impl SubjectAccessReviews {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            answers: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ANSWER_TTL)
                .build(),
        })
    }

    async fn ask(&self, check: &AccessCheck) -> Result<bool, String> {
        let review = SubjectAccessReview {
            spec: review_spec(check),
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview: {e}"))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// The SubjectAccessReview that asks the check's question.
pub fn review_spec(check: &AccessCheck) -> SubjectAccessReviewSpec {
    SubjectAccessReviewSpec {
        user: Some(check.user.username.clone()),
        uid: check.user.uid.clone(),
        groups: Some(check.user.groups.clone()),
        extra: (!check.user.extra.is_empty()).then(|| check.user.extra.clone()),
        resource_attributes: Some(ResourceAttributes {
            namespace: Some(check.namespace.clone()),
            verb: Some("impersonate".into()),
            resource: Some("serviceaccounts".into()),
            name: Some(check.account.clone()),
            ..ResourceAttributes::default()
        }),
        ..SubjectAccessReviewSpec::default()
    }
}

impl Authorize for SubjectAccessReviews {
    fn may_act_as<'a>(&'a self, check: &'a AccessCheck) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let key = (
                check.user.clone(),
                check.namespace.clone(),
                check.account.clone(),
            );
            if let Some(answer) = self.answers.get(&key).await {
                return Ok(answer);
            }
            let answer = self.ask(check).await?;
            self.answers.insert(key, answer).await;
            Ok(answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_review_asks_for_impersonation_of_that_account_as_that_user() {
        let check = AccessCheck {
            uid: "u1".into(),
            user: UserInfo {
                username: "alice".into(),
                uid: Some("42".into()),
                groups: vec!["team-chain".into(), "system:authenticated".into()],
                extra: BTreeMap::from([("scopes".into(), vec!["a".into()])]),
            },
            namespace: "chain".into(),
            account: "kco-actions".into(),
        };
        let spec = review_spec(&check);
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.uid.as_deref(), Some("42"));
        assert_eq!(spec.groups.as_ref().map(Vec::len), Some(2));
        assert!(spec.extra.is_some());
        let attributes = spec.resource_attributes.unwrap();
        assert_eq!(attributes.verb.as_deref(), Some("impersonate"));
        assert_eq!(attributes.resource.as_deref(), Some("serviceaccounts"));
        assert_eq!(attributes.namespace.as_deref(), Some("chain"));
        assert_eq!(attributes.name.as_deref(), Some("kco-actions"));
        assert!(
            check
                .refusal()
                .contains("may not act as ServiceAccount chain/kco-actions")
        );
    }
}
