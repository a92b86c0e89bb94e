//! What a TenantQuota's status says: its usage, whether it applies (`Ready`:
//! a quota stored past its webhook with problems says which), whether another
//! quota selects some of the same namespaces (`Overlapping`: there the most
//! restrictive combination applies), and the generation it describes. Pure: the
//! leader writes what [`build`] returns when [`changed`] says so.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::quota::{TenantQuotaSpec, TenantQuotaStatus, Usage, check};

/// The most namespaces an `Overlapping` message names.
const MAX_NAMED: usize = 10;

/// What one quota's status is built from.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub spec: &'a TenantQuotaSpec,
    pub generation: Option<i64>,
    pub usage: Usage,
    /// The namespaces this quota selects.
    pub selected: &'a [String],
    /// Every quota with the namespaces it selects (this one among them).
    pub all: &'a [(String, Vec<String>)],
    pub known_actions: &'a [&'a str],
    pub now: Timestamp,
}

/// The status for `inputs`; a condition keeps its transition time from
/// `previous` while its status does not change.
pub fn build(inputs: &Inputs<'_>, previous: Option<&TenantQuotaStatus>) -> TenantQuotaStatus {
    let problems = check(inputs.spec, inputs.known_actions);
    let ready = if problems.is_empty() {
        (
            "True",
            "Applied",
            format!(
                "applies to {} namespace{}",
                inputs.selected.len(),
                if inputs.selected.len() == 1 { "" } else { "s" }
            ),
        )
    } else {
        ("False", "InvalidSpec", problems.join("; "))
    };
    let overlapping = match overlaps(inputs) {
        None => (
            "False",
            "NoOverlap",
            "no other TenantQuota selects its namespaces".to_owned(),
        ),
        Some(message) => ("True", "SharedNamespaces", message),
    };
    let condition = |(type_, (status, reason, message)): (&str, (&str, &str, String))| {
        crate::conditions::condition(
            crate::conditions::Said {
                type_,
                status,
                reason,
                message,
            },
            previous.map_or(&[][..], |p| &p.conditions),
            inputs.generation,
            inputs.now,
        )
    };
    TenantQuotaStatus {
        usage: Some(inputs.usage.clone()),
        conditions: vec![
            condition(("Ready", ready)),
            condition(("Overlapping", overlapping)),
        ],
        observed_generation: inputs.generation,
    }
}

/// "namespaces a, b are also selected by TenantQuota x, ..." or `None`.
fn overlaps(inputs: &Inputs<'_>) -> Option<String> {
    let mut shared: Vec<&str> = Vec::new();
    let mut others: Vec<&str> = Vec::new();
    for (other, namespaces) in inputs.all {
        if other == inputs.name {
            continue;
        }
        let common: Vec<&str> = namespaces
            .iter()
            .filter(|ns| inputs.selected.contains(ns))
            .map(String::as_str)
            .collect();
        if !common.is_empty() {
            others.push(other);
            for ns in common {
                if !shared.contains(&ns) {
                    shared.push(ns);
                }
            }
        }
    }
    if shared.is_empty() {
        return None;
    }
    shared.sort_unstable();
    let more = shared.len().saturating_sub(MAX_NAMED);
    let mut named = shared
        .iter()
        .take(MAX_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        named.push_str(&format!(" and {more} more"));
    }
    Some(format!(
        "namespace{} {named} {} also selected by TenantQuota {}; there the most restrictive combination of the quotas applies",
        if shared.len() == 1 { "" } else { "s" },
        if shared.len() == 1 { "is" } else { "are" },
        others.join(", ")
    ))
}

/// Whether `next` says something `written` does not (transition times aside).
pub fn changed(written: Option<&TenantQuotaStatus>, next: &TenantQuotaStatus) -> bool {
    let Some(written) = written else {
        return true;
    };
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    written.usage != next.usage
        || written.observed_generation != next.observed_generation
        || written.conditions.iter().map(key).collect::<Vec<_>>()
            != next.conditions.iter().map(key).collect::<Vec<_>>()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec(namespaces: &[&str]) -> TenantQuotaSpec {
        TenantQuotaSpec {
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            ..TenantQuotaSpec::default()
        }
    }

    fn usage(apps: u32) -> Usage {
        Usage {
            namespaces: 2,
            target_apps: apps,
            fullest_namespace: None,
            fullest_count: 0,
            actions_last_hour: None,
        }
    }

    #[test]
    fn a_quota_that_applies_alone_is_ready_and_not_overlapping() {
        let selected = vec!["a".to_owned(), "b".to_owned()];
        let all = vec![("q".to_owned(), selected.clone())];
        let s = spec(&["a", "b"]);
        let status = build(
            &Inputs {
                name: "q",
                spec: &s,
                generation: Some(4),
                usage: usage(3),
                selected: &selected,
                all: &all,
                known_actions: &["restart_pod"],
                now: at(0),
            },
            None,
        );
        assert_eq!(status.observed_generation, Some(4));
        let c: Vec<(&str, &str, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            c,
            [
                ("Ready", "True", "Applied"),
                ("Overlapping", "False", "NoOverlap")
            ]
        );
        assert_eq!(status.conditions[0].message, "applies to 2 namespaces");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn shared_namespaces_and_an_invalid_spec_are_said_and_times_move_only_on_change() {
        let selected = vec!["a".to_owned(), "b".to_owned()];
        let all = vec![
            ("q".to_owned(), selected.clone()),
            ("wide".to_owned(), vec!["b".to_owned(), "c".to_owned()]),
            ("other".to_owned(), vec!["z".to_owned()]),
        ];
        fn inputs<'a>(
            s: &'a TenantQuotaSpec,
            selected: &'a [String],
            all: &'a [(String, Vec<String>)],
            now: Timestamp,
        ) -> Inputs<'a> {
            Inputs {
                name: "q",
                spec: s,
                generation: Some(1),
                usage: usage(1),
                selected,
                all,
                known_actions: &[],
                now,
            }
        }
        // Selects nothing by itself: stored past its webhook.
        let invalid = TenantQuotaSpec::default();
        let first = build(&inputs(&invalid, &selected, &all, at(0)), None);
        assert_eq!(first.conditions[0].status, "False");
        assert_eq!(first.conditions[0].reason, "InvalidSpec");
        assert!(
            first.conditions[0]
                .message
                .contains("namespaces or namespaceSelector")
        );
        assert_eq!(first.conditions[1].status, "True");
        assert_eq!(
            first.conditions[1].message,
            "namespace b is also selected by TenantQuota wide; there the most restrictive combination of the quotas applies"
        );
        // Nothing changed: the same times, and nothing to write.
        let again = build(&inputs(&invalid, &selected, &all, at(60)), Some(&first));
        assert_eq!(again, first);
        assert!(!changed(Some(&first), &again));
        // Fixed: Ready moves, and its time with it; Overlapping keeps its time.
        let valid = spec(&["a", "b"]);
        let fixed = build(&inputs(&valid, &selected, &all, at(120)), Some(&first));
        assert!(changed(Some(&first), &fixed));
        assert_eq!(fixed.conditions[0].last_transition_time, Time(at(120)));
        assert_eq!(fixed.conditions[1].last_transition_time, Time(at(0)));
    }
}
