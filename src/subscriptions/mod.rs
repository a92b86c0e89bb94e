//! GraphQL subscriptions to targets: values a target pushes over a WebSocket
//! the moment they change (Mina's `newSyncUpdate`, `newBlock`,
//! `chainReorganization`), read by triggers as `@<name>` paths.

pub mod connection;
pub mod protocol;

use crate::targetapp::SubscriptionSpec;
use connection::Wanted;

/// The subscriptions a TargetApp asks for, each with its name: as given, or
/// its root field's (response key). One whose query does not parse is left out
/// (admission refuses it).
pub fn wanted(subscriptions: &[SubscriptionSpec]) -> Vec<Wanted> {
    subscriptions
        .iter()
        .filter_map(|s| {
            let name = match &s.name {
                Some(name) => name.clone(),
                None => root_field(&s.query)?,
            };
            Some(Wanted {
                name,
                query: s.query.clone(),
            })
        })
        .collect()
}

/// The response key of the first root field of `query`'s operation.
fn root_field(query: &str) -> Option<String> {
    use apollo_compiler::ast::{Definition, Selection};
    let document = apollo_compiler::ast::Document::parse(query, "subscription").ok()?;
    document.definitions.iter().find_map(|d| match d {
        Definition::OperationDefinition(op) => op.selection_set.iter().find_map(|s| match s {
            Selection::Field(field) => {
                Some(field.alias.as_ref().unwrap_or(&field.name).to_string())
            }
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_named_as_given_or_by_its_root_field() {
        let specs = [
            SubscriptionSpec {
                name: None,
                query: "subscription { newSyncUpdate }".into(),
            },
            SubscriptionSpec {
                name: Some("blocks".into()),
                query: "subscription { newBlock { stateHash } }".into(),
            },
            SubscriptionSpec {
                name: None,
                query: "subscription Reorg { reorg: chainReorganization }".into(),
            },
            SubscriptionSpec {
                name: None,
                query: "subscription {".into(),
            },
        ];
        let names: Vec<String> = wanted(&specs).into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["newSyncUpdate", "blocks", "reorg"]);
    }
}
