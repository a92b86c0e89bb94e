//! The input as a sequence of GraphQL response bodies from one target (separated
//! by NUL bytes, which JSON never contains), each read as the poller reads it
//! (`parse_response`) and fed to the monitor's per-target state (`observe`) with
//! rules on Mina's fields.
//!
//! Invariants: a body is data (an object, with bounded error messages) or one
//! classified failure with a bounded message; a document never differs from
//! itself; `observe` reports a poll failure only when the target goes down, a
//! recovery only when it comes back, changes only of referenced fields whose
//! value differs, and fires rules only while their condition holds.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kco::monitor::discovery::Target;
use kco::monitor::poll::{PollData, PollFailure, parse_response};
use kco::monitor::state::{Observed, TargetState};
use kco::targetapp::ActionRule;
use kco::triggers::{Observation, Rule, changes, compile, referenced_fields};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// The longest failure message: a 200-character cut plus the ellipsis, inside the
/// longest fixed text.
const MAX_FAILURE_TEXT: usize = 260;

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let raw: Vec<ActionRule> = serde_json::from_value(json!([
        {"name": "offline", "action": "restart_pod", "cooldown": "0s",
         "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}},
        {"name": "lag", "action": "webhook", "cooldown": "30s", "trigger": {
            "field": "daemonStatus.blockchainLength", "condition": "lessThan",
            "valueFrom": {"field": "daemonStatus.highestBlockLengthReceived", "offset": -5}}},
        {"name": "peers", "action": "webhook", "trigger": {
            "field": "daemonStatus.peers.#", "condition": "lessThanOrEqual", "value": 1, "for": "1m"}},
        {"name": "flip", "action": "webhook", "cooldown": "0s",
         "trigger": {"field": "daemonStatus.syncStatus", "condition": "changed"}},
        {"name": "stuck", "action": "webhook", "trigger": {
            "field": "daemonStatus.blockchainLength", "condition": "unchanged", "for": "2m"}},
        {"name": "fork", "action": "webhook", "trigger": {
            "field": "bestChain.0.stateHash", "condition": "matches", "value": "^3N[a-zA-Z0-9]{4}"}},
        {"name": "peer", "action": "webhook", "trigger": {
            "field": "daemonStatus.peers", "condition": "contains", "value": "12D3"}},
        {"name": "down", "action": "webhook", "cooldown": "0s",
         "trigger": {"field": "$up", "condition": "equals", "value": false}}
    ]))
    .unwrap_or_default();
    compile(&raw).unwrap_or_default()
});

fuzz_target!(|input: &[u8]| {
    let rules = RULES.as_slice();
    assert!(!rules.is_empty(), "the target's rules compile");
    let fields = referenced_fields(rules);
    let target = Target {
        pod: Some("mina-0".to_owned()),
        url: "http://127.0.0.1:3085/graphql".to_owned(),
    };
    let mut state = TargetState::new(target, rules, |_| None);
    let mut now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let mut was_up: Option<bool> = None;

    for body in input.split(|&b| b == 0).take(16) {
        let result = parse_response(body);
        match &result {
            Ok(PollData { data, errors }) => {
                assert!(data.is_object());
                assert!(
                    errors.iter().all(|e| e.chars().count() <= 201),
                    "{errors:?}"
                );
                assert!(changes(&fields, data, data).is_empty());
            }
            Err(failure) => {
                assert!(
                    matches!(
                        failure,
                        PollFailure::InvalidJson(_)
                            | PollFailure::InvalidUtf8(_)
                            | PollFailure::TooDeep(_)
                            | PollFailure::NotGraphql
                            | PollFailure::GraphqlErrors(_)
                    ),
                    "{failure:?}"
                );
                let text = failure.to_string();
                if !matches!(failure, PollFailure::GraphqlErrors(_)) {
                    assert!(text.chars().count() <= MAX_FAILURE_TEXT, "{text}");
                }
                assert!(!failure.reason().is_empty());
            }
        }
        let up = result.is_ok();
        let data = result.as_ref().ok().map(|d| d.data.clone());
        now = now.checked_add(Duration::from_secs(20)).unwrap_or(now);

        let seen = state.observe(result, rules, &fields, now);
        let current = Observation {
            data: data.as_ref(),
            up,
        };
        for observed in &seen {
            match observed {
                Observed::PollFailed(_) => assert!(!up && was_up != Some(false)),
                Observed::PollRecovered => assert!(up && was_up == Some(false)),
                Observed::StateChanged(change) => {
                    assert!(up);
                    assert!(fields.contains(&change.field));
                    assert_ne!(change.old, change.new);
                    assert_eq!(change.new, change.field.resolve(data.as_ref(), true));
                }
                Observed::Fired { rule, new, .. } => {
                    let rule = &rules[*rule];
                    assert_eq!(*new, rule.condition.field.resolve(data.as_ref(), up));
                    if rule.condition.kind != kco::targetapp::ConditionKind::Changed
                        && rule.condition.kind != kco::targetapp::ConditionKind::Unchanged
                    {
                        assert!(rule.condition.holds(&current, None));
                    }
                }
                Observed::Ended { rule, .. } => assert!(*rule < rules.len()),
                // Only KCO's own bytes-in-flight bound throttles; a response never does.
                Observed::Throttled(failure) => panic!("a response was throttled: {failure}"),
            }
        }
        assert_eq!(state.up, Some(up));
        if up {
            assert_eq!(state.last_good(), data);
        }
        was_up = Some(up);
    }
});
