use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::targetapp::{ActionRule, ConditionKind, Trigger, ValueFrom};

fn trigger(field: &str, condition: ConditionKind, value: Option<Value>) -> Trigger {
    Trigger {
        field: field.into(),
        condition,
        value,
        value_from: None,
        for_: None,
    }
}

fn obs(data: &Value) -> Observation<'_> {
    Observation {
        data: Some(data),
        up: true,
    }
}

fn holds(condition: ConditionKind, value: Option<Value>, leaf: Option<Value>) -> bool {
    let data = match &leaf {
        Some(leaf) => json!({ "x": leaf }),
        None => json!({}),
    };
    let compiled = Condition::compile(&trigger("x", condition, value)).unwrap();
    compiled.holds(
        &Observation {
            data: Some(&data),
            up: true,
        },
        None,
    )
}

/// Every comparing condition against every kind of leaf a Mina result carries.
#[test]
fn comparisons_against_every_leaf_type() {
    use ConditionKind::*;
    let enum_leaf = json!("SYNCED");
    let int = json!(1000);
    let float = json!(2.5);
    let length = json!("1000"); // Mina's Length / UInt32 / Slot ... arrive as digit strings
    let uint64 = json!("18446744073709551615"); // beyond f64's exact range
    let boolean = json!(true);
    let list = json!(["a", "b"]);
    let text = json!("3.0.0-mainnet");
    #[rustfmt::skip]
    let table: Vec<(ConditionKind, Value, &Value, bool)> = vec![
        (Equals, json!("SYNCED"), &enum_leaf, true),
        (Equals, json!("OFFLINE"), &enum_leaf, false),
        (Equals, json!(1000), &int, true),
        (Equals, json!(1000), &length, true),
        (Equals, json!("1000"), &int, true),
        (Equals, json!(2.5), &float, true),
        (Equals, json!(true), &boolean, true),
        (Equals, json!("true"), &boolean, false),
        (Equals, json!("18446744073709551615"), &uint64, true),
        (Equals, json!("18446744073709551614"), &uint64, false),
        (NotEquals, json!("SYNCED"), &enum_leaf, false),
        (NotEquals, json!(999), &length, true),
        (NotEquals, json!(false), &boolean, true),
        (In, json!(["CATCHUP", "SYNCED"]), &enum_leaf, true),
        (In, json!(["OFFLINE"]), &enum_leaf, false),
        (In, json!([1, 1000]), &length, true),
        (In, json!([true]), &boolean, true),
        (NotIn, json!(["OFFLINE", "CONNECTING"]), &enum_leaf, true),
        (NotIn, json!(["1000"]), &int, false),
        (GreaterThan, json!(999), &int, true),
        (GreaterThan, json!(1000), &int, false),
        (GreaterThan, json!(999), &length, true),
        (GreaterThan, json!("18446744073709551614"), &uint64, true),
        (GreaterThan, json!(2), &float, true),
        (GreaterThan, json!(1), &enum_leaf, false),
        (GreaterThan, json!(0), &boolean, false),
        (GreaterThanOrEqual, json!(1000), &length, true),
        (GreaterThanOrEqual, json!(1001), &int, false),
        (LessThan, json!(1001), &length, true),
        (LessThan, json!(2.5), &float, false),
        (LessThan, json!("18446744073709551615"), &uint64, false),
        (LessThanOrEqual, json!(1000), &int, true),
        (LessThanOrEqual, json!(2.4), &float, false),
        (Contains, json!("mainnet"), &text, true),
        (Contains, json!("devnet"), &text, false),
        (Contains, json!("b"), &list, true),
        (Contains, json!("c"), &list, false),
        (Contains, json!("1"), &int, false),
        (Matches, json!("^3\\.[0-9]+"), &text, true),
        (Matches, json!("^SYN"), &enum_leaf, true),
        (Matches, json!("^10+$"), &int, true),
        (Matches, json!("^10+$"), &length, true),
        (Matches, json!("devnet"), &text, false),
        (Matches, json!("a"), &list, false),
    ];
    for (condition, value, leaf, expected) in table {
        assert_eq!(
            holds(condition, Some(value.clone()), Some(leaf.clone())),
            expected,
            "{} {value} against leaf {leaf}",
            condition.as_str()
        );
    }
}

#[test]
fn a_missing_or_null_field_only_satisfies_absent() {
    for condition in ConditionKind::ALL {
        let value = match condition {
            ConditionKind::In | ConditionKind::NotIn => Some(json!(["x"])),
            ConditionKind::Changed
            | ConditionKind::Unchanged
            | ConditionKind::Exists
            | ConditionKind::Absent => None,
            ConditionKind::Matches => Some(json!(".*")),
            _ => Some(json!(1)),
        };
        let expected = condition == ConditionKind::Absent;
        assert_eq!(
            holds(condition, value.clone(), None),
            expected,
            "{} on a missing field",
            condition.as_str()
        );
        assert_eq!(
            holds(condition, value, Some(Value::Null)),
            expected,
            "{} on null",
            condition.as_str()
        );
    }
    assert!(holds(ConditionKind::Exists, None, Some(json!(0))));
    assert!(!holds(ConditionKind::Absent, None, Some(json!(""))));
}

#[test]
fn changed_and_unchanged_compare_with_the_previous_result() {
    let changed = Condition::compile(&trigger("d.h", ConditionKind::Changed, None)).unwrap();
    let unchanged = Condition::compile(&trigger("d.h", ConditionKind::Unchanged, None)).unwrap();
    let a = json!({"d": {"h": "10"}});
    let b = json!({"d": {"h": "11"}});
    let same_number = json!({"d": {"h": 10}});
    let gone = json!({"d": {}});
    assert!(
        !changed.holds(&obs(&a), None),
        "no previous result: nothing changed yet"
    );
    assert!(!unchanged.holds(&obs(&a), None));
    assert!(changed.holds(&obs(&b), Some(&obs(&a))));
    assert!(!unchanged.holds(&obs(&b), Some(&obs(&a))));
    assert!(unchanged.holds(&obs(&a), Some(&obs(&a))));
    assert!(
        !changed.holds(&obs(&same_number), Some(&obs(&a))),
        "\"10\" and 10 are the same number"
    );
    assert!(
        changed.holds(&obs(&gone), Some(&obs(&a))),
        "disappearing is a change"
    );
    assert!(
        !unchanged.holds(&obs(&gone), Some(&obs(&gone))),
        "absent is not unchanged"
    );
}

#[test]
fn paths_index_lists_count_them_and_read_up() {
    let data = json!({"daemonStatus": {"peers": [{"peerId": "p0"}, {"peerId": "p1"}], "syncStatus": "SYNCED"},
                      "bestChain": [{"stateHash": "3Nabc"}], "alias": {"0": "key named zero"}});
    let resolve = |p: &str, up| p.parse::<FieldPath>().unwrap().resolve(Some(&data), up);
    assert_eq!(
        resolve("daemonStatus.syncStatus", true),
        Some(json!("SYNCED"))
    );
    assert_eq!(resolve("daemonStatus.peers.#", true), Some(json!(2)));
    assert_eq!(
        resolve("daemonStatus.peers.1.peerId", true),
        Some(json!("p1"))
    );
    assert_eq!(resolve("daemonStatus.peers.2.peerId", true), None);
    assert_eq!(resolve("bestChain.0.stateHash", true), Some(json!("3Nabc")));
    assert_eq!(resolve("alias.0", true), Some(json!("key named zero")));
    assert_eq!(
        resolve("daemonStatus.syncStatus.#", true),
        None,
        "# needs a list"
    );
    assert_eq!(resolve("daemonStatus.nothing", true), None);
    assert_eq!(resolve("$up", false), Some(json!(false)));
    assert_eq!(
        "$up".parse::<FieldPath>().unwrap().resolve(None, true),
        Some(json!(true))
    );
    assert_eq!(
        "a.b".parse::<FieldPath>().unwrap().resolve(None, true),
        None
    );

    for (bad, error) in [
        ("", PathError::Empty),
        ("a..b", PathError::EmptySegment),
        (".a", PathError::EmptySegment),
        ("a.#.b", PathError::MisplacedLength),
        ("#", PathError::MisplacedLength),
        ("a.$up", PathError::MisplacedUp),
        ("a.b-c", PathError::BadSegment("b-c".into())),
        ("a.-1", PathError::BadSegment("-1".into())),
        ("a.@sync", PathError::MisplacedSubscription("sync".into())),
        ("@", PathError::BadSegment("@".into())),
        ("@9lives.x", PathError::BadSegment("@9lives".into())),
        ("@@x", PathError::BadSegment("@@x".into())),
    ] {
        assert_eq!(bad.parse::<FieldPath>(), Err(error), "{bad:?}");
    }
}

#[test]
fn a_path_from_at_reads_what_a_subscription_pushed() {
    let path: FieldPath = "@newBlock.protocolState.consensusState.blockHeight"
        .parse()
        .unwrap();
    assert_eq!(path.subscription(), Some("newBlock"));
    let state = json!({"daemonStatus": {"syncStatus": "SYNCED"},
                       "@newBlock": {"protocolState": {"consensusState": {"blockHeight": "42"}}}});
    assert_eq!(path.resolve(Some(&state), true), Some(json!("42")));
    assert_eq!(
        "@sync".parse::<FieldPath>().unwrap().subscription(),
        Some("sync")
    );
    for polled in ["daemonStatus.syncStatus", "$up", "bestChain.0.stateHash"] {
        assert_eq!(polled.parse::<FieldPath>().unwrap().subscription(), None);
    }
    // A trigger compares values of one source: they arrive together.
    let mut mixed = trigger(
        "@newBlock.protocolState.consensusState.blockHeight",
        ConditionKind::LessThan,
        None,
    );
    mixed.value_from = Some(crate::targetapp::ValueFrom {
        field: "daemonStatus.highestBlockLengthReceived".into(),
        offset: None,
    });
    let problems = Condition::compile(&mixed).unwrap_err();
    assert_eq!(problems[0].field, "valueFrom.field", "{problems:?}");
    assert!(
        problems[0]
            .message
            .contains("comes from the state query, and the field from subscription newBlock"),
        "{problems:?}"
    );
    mixed.value_from = Some(crate::targetapp::ValueFrom {
        field: "@newBlock.protocolState.consensusState.blockchainLength".into(),
        offset: Some(-1.0),
    });
    assert!(Condition::compile(&mixed).is_ok());
}

#[test]
fn fuzz_regression_an_index_is_digits_only() {
    // fuzz/ (trigger_path) found `+01` accepted: `usize::from_str` takes a sign.
    for bad in ["+01", "a.+0.b", "bestChain.+1.stateHash", "a. 1"] {
        assert!(bad.parse::<FieldPath>().is_err(), "{bad:?}");
    }
    let data = json!({"list": ["zero", "one"]});
    let path = "list.01".parse::<FieldPath>().unwrap();
    assert_eq!(path.resolve(Some(&data), true), Some(json!("one")));
}

#[test]
fn up_and_list_length_as_triggers() {
    let down =
        Condition::compile(&trigger("$up", ConditionKind::Equals, Some(json!(false)))).unwrap();
    assert!(down.holds(
        &Observation {
            data: None,
            up: false
        },
        None
    ));
    assert!(!down.holds(
        &Observation {
            data: None,
            up: true
        },
        None
    ));
    let few_peers = Condition::compile(&trigger(
        "d.peers.#",
        ConditionKind::LessThan,
        Some(json!(2)),
    ))
    .unwrap();
    let data = json!({"d": {"peers": [{"peerId": "only"}]}});
    assert!(few_peers.holds(
        &Observation {
            data: Some(&data),
            up: true
        },
        None
    ));
}

#[test]
fn value_from_compares_two_fields_with_an_offset() {
    // Block lag: blockchainLength < highestBlockLengthReceived - 5.
    let mut t = trigger("d.blockchainLength", ConditionKind::LessThan, None);
    t.value_from = Some(ValueFrom {
        field: "d.highestBlockLengthReceived".into(),
        offset: Some(-5.0),
    });
    let lag = Condition::compile(&t).unwrap();
    assert!(lag.holds(
        &obs(&json!({"d": {"blockchainLength": 94, "highestBlockLengthReceived": "100"}})),
        None
    ));
    assert!(!lag.holds(
        &obs(&json!({"d": {"blockchainLength": 95, "highestBlockLengthReceived": "100"}})),
        None
    ));
    assert!(
        !lag.holds(&obs(&json!({"d": {"blockchainLength": 1}})), None),
        "missing other field: false"
    );
    let mut same = trigger("d.a", ConditionKind::Equals, None);
    same.value_from = Some(ValueFrom {
        field: "d.b".into(),
        offset: None,
    });
    let same = Condition::compile(&same).unwrap();
    assert!(same.holds(&obs(&json!({"d": {"a": "x", "b": "x"}})), None));
}

#[test]
fn bad_triggers_are_refused_with_the_field_at_fault() {
    use ConditionKind::*;
    let problems = |t: Trigger| Condition::compile(&t).unwrap_err();
    let first = |t: Trigger| {
        let p = problems(t);
        (p[0].field, p[0].message.clone())
    };
    assert_eq!(first(trigger("a", In, Some(json!("x")))).0, "value");
    assert_eq!(
        first(trigger("a", GreaterThan, Some(json!("high")))).0,
        "value"
    );
    assert_eq!(first(trigger("a", Equals, None)).0, "value");
    assert_eq!(first(trigger("a", Exists, Some(json!(1)))).0, "value");
    let (field, message) = first(trigger("a", Matches, Some(json!("(unclosed"))));
    assert_eq!(field, "value");
    assert!(message.contains("invalid regex"), "{message}");
    assert!(
        first(trigger("a", Matches, Some(json!("a".repeat(2000)))))
            .1
            .contains("longer")
    );
    assert_eq!(first(trigger("a..b", Exists, None)).0, "field");
    let mut both = trigger("a", Equals, Some(json!(1)));
    both.value_from = Some(ValueFrom {
        field: "b".into(),
        offset: None,
    });
    assert_eq!(first(both).0, "value");
    let mut from_for_in = trigger("a", In, None);
    from_for_in.value_from = Some(ValueFrom {
        field: "b".into(),
        offset: None,
    });
    assert_eq!(first(from_for_in).0, "valueFrom");
    // Every problem is reported, not just the first.
    assert_eq!(problems(trigger("", In, Some(json!(3)))).len(), 2);
}

fn rule(name: Option<&str>, t: Trigger, cooldown: Option<&str>) -> ActionRule {
    ActionRule {
        name: name.map(str::to_owned),
        trigger: t,
        action: Some("restart_pod".into()),
        parameters: None,
        then: Vec::new(),
        cooldown: cooldown.map(str::to_owned),
        too_deep: Vec::new(),
    }
}

#[test]
fn rules_compile_with_names_and_durations_or_report_each_problem() {
    let mut held = trigger("a", ConditionKind::Exists, None);
    held.for_ = Some("1m30s".into());
    let rules = compile(&[
        rule(None, held, Some("10m")),
        rule(
            Some("named"),
            trigger("b", ConditionKind::Absent, None),
            None,
        ),
    ])
    .unwrap();
    assert_eq!(rules[0].name, "rule-0");
    assert_eq!(rules[0].hold_for, Duration::from_secs(90));
    assert_eq!(rules[0].cooldown, Duration::from_secs(600));
    assert_eq!(rules[1].name, "named");
    assert_eq!(rules[1].hold_for, Duration::ZERO);
    assert_eq!(
        rules[1].cooldown,
        Duration::from_secs(300),
        "default cooldown is 5m"
    );

    let mut bad_for = trigger("a", ConditionKind::Changed, None);
    bad_for.for_ = Some("5m".into());
    let problems = compile(&[
        rule(
            Some("dup"),
            trigger("a", ConditionKind::Exists, None),
            Some("soon"),
        ),
        rule(
            Some("dup"),
            trigger("a", ConditionKind::In, Some(json!(1))),
            None,
        ),
        rule(None, bad_for, None),
    ])
    .unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.actions[0].cooldown",
            "spec.actions[1].name",
            "spec.actions[1].trigger.value",
            "spec.actions[2].trigger.for"
        ]
    );
    assert!(parse_duration("-5m").is_err());
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

#[test]
fn firing_is_edge_triggered_after_for_and_outside_cooldown() {
    let hold = Duration::from_secs(3);
    let cooldown = Duration::from_secs(60);
    let mut s = FiringState::default();
    assert_eq!(s.step(false, false, at(0), hold, cooldown), Decision::Idle);
    assert_eq!(
        s.step(true, false, at(1), hold, cooldown),
        Decision::Pending {
            remaining: Duration::from_secs(3)
        }
    );
    assert_eq!(
        s.step(true, false, at(3), hold, cooldown),
        Decision::Pending {
            remaining: Duration::from_secs(1)
        }
    );
    assert_eq!(s.step(true, false, at(4), hold, cooldown), Decision::Fire);
    assert_eq!(s.last_fired(), Some(at(4)));
    // Still true: no second firing until it has been false.
    assert_eq!(
        s.step(true, false, at(100), hold, cooldown),
        Decision::Fired
    );
    // Interrupted: `for` starts again.
    assert_eq!(
        s.step(false, false, at(101), hold, cooldown),
        Decision::Idle
    );
    assert_eq!(
        s.step(true, false, at(102), hold, cooldown),
        Decision::Pending {
            remaining: Duration::from_secs(3)
        }
    );
    assert_eq!(s.step(true, false, at(105), hold, cooldown), Decision::Fire);
}

#[test]
fn cooldown_holds_a_firing_back_until_it_ends() {
    let cooldown = Duration::from_secs(60);
    let mut s = FiringState::default();
    assert_eq!(
        s.step(true, false, at(0), Duration::ZERO, cooldown),
        Decision::Fire
    );
    assert_eq!(
        s.step(false, false, at(10), Duration::ZERO, cooldown),
        Decision::Idle
    );
    assert_eq!(
        s.step(true, false, at(20), Duration::ZERO, cooldown),
        Decision::Cooldown {
            remaining: Duration::from_secs(40)
        }
    );
    assert_eq!(
        s.step(true, false, at(59), Duration::ZERO, cooldown),
        Decision::Cooldown {
            remaining: Duration::from_secs(1)
        }
    );
    assert_eq!(
        s.step(true, false, at(60), Duration::ZERO, cooldown),
        Decision::Fire
    );
    // A firing recorded elsewhere (status, after a hand-off) counts too.
    let mut handed_over = FiringState::with_last_fired(Some(at(60)));
    assert!(matches!(
        handed_over.step(true, false, at(61), Duration::ZERO, cooldown),
        Decision::Cooldown { .. }
    ));
}

#[test]
fn changed_fires_on_every_change_and_unchanged_waits_for_for() {
    let changed = compile(&[rule(
        None,
        trigger("h", ConditionKind::Changed, None),
        Some("0s"),
    )])
    .unwrap()
    .remove(0);
    let mut s = FiringState::default();
    let results = [
        json!({"h": 1}),
        json!({"h": 2}),
        json!({"h": 3}),
        json!({"h": 3}),
        json!({"h": 4}),
    ];
    let mut fired = Vec::new();
    for (i, pair) in results.windows(2).enumerate() {
        let decision = changed.evaluate(
            &mut s,
            &Observation {
                data: Some(&pair[1]),
                up: true,
            },
            Some(&Observation {
                data: Some(&pair[0]),
                up: true,
            }),
            at(i as i64),
        );
        fired.push(decision == Decision::Fire);
    }
    assert_eq!(fired, [true, true, false, true]);

    let mut stuck = trigger("h", ConditionKind::Unchanged, None);
    stuck.for_ = Some("10s".into());
    let stuck = compile(&[rule(None, stuck, None)]).unwrap().remove(0);
    let mut s = FiringState::default();
    let same = json!({"h": 7});
    let obs = Observation {
        data: Some(&same),
        up: true,
    };
    assert!(matches!(
        stuck.evaluate(&mut s, &obs, Some(&obs), at(0)),
        Decision::Pending { .. }
    ));
    assert_eq!(
        stuck.evaluate(&mut s, &obs, Some(&obs), at(10)),
        Decision::Fire
    );
}

#[test]
fn changes_name_only_referenced_fields() {
    let rules = compile(&[
        rule(
            None,
            trigger(
                "d.syncStatus",
                ConditionKind::Equals,
                Some(json!("OFFLINE")),
            ),
            None,
        ),
        rule(
            None,
            trigger("$up", ConditionKind::Equals, Some(json!(false))),
            None,
        ),
    ])
    .unwrap();
    let fields = referenced_fields(&rules);
    assert_eq!(fields.len(), 1, "$up is not a result field");
    let before = json!({"d": {"syncStatus": "SYNCED", "uptimeSecs": 10}});
    let after = json!({"d": {"syncStatus": "OFFLINE", "uptimeSecs": 40}});
    let found = changes(&fields, &before, &after);
    assert_eq!(
        found.len(),
        1,
        "uptime changes every poll and nobody references it"
    );
    assert_eq!(found[0].field.to_string(), "d.syncStatus");
    assert_eq!(found[0].old, Some(json!("SYNCED")));
    assert_eq!(found[0].new, Some(json!("OFFLINE")));
    assert!(changes(&fields, &after, &after).is_empty());
}

#[test]
fn numbers_parse_strictly() {
    for (text, number) in [
        ("0", Some(Num::Int(0))),
        ("-12", Some(Num::Int(-12))),
        ("2.5", Some(Num::Float(2.5))),
    ] {
        assert_eq!(Num::from_value(&json!(text)), number, "{text}");
    }
    for text in [
        "", "-", "1e3", "NaN", "inf", " 7", "7 ", "1.", ".5", "0x10", "1_000",
    ] {
        assert_eq!(
            Num::from_value(&json!(text)),
            None,
            "{text:?} is not a number"
        );
    }
    assert_eq!(Num::from_value(&json!(true)), None);
}

#[test]
fn an_offset_never_overflows() {
    // Found while writing fuzz/ (trigger_eval): the largest integer a digit string
    // can hold plus an offset overflowed i128 (a panic in debug builds, a wrap in release).
    let mut t = trigger("d.a", ConditionKind::GreaterThan, None);
    t.value_from = Some(ValueFrom {
        field: "d.b".into(),
        offset: Some(1.0),
    });
    let c = Condition::compile(&t).unwrap();
    let max = i128::MAX.to_string();
    assert!(!c.holds(&obs(&json!({"d": {"a": max, "b": max}})), None));
    assert_eq!(
        Num::Int(i128::MAX).plus(1.0),
        Num::Float(i128::MAX as f64 + 1.0)
    );
    assert_eq!(
        Num::Int(i128::MIN).plus(-1.0),
        Num::Float(i128::MIN as f64 - 1.0)
    );
}

#[test]
fn negative_zero_equals_zero() {
    let c = Condition::compile(&trigger("d.a", ConditionKind::Equals, Some(json!(0)))).unwrap();
    assert!(c.holds(&obs(&json!({"d": {"a": -0.0}})), None));
    assert!(c.holds(&obs(&json!({"d": {"a": "-0.0"}})), None));
    let c = Condition::compile(&trigger("d.a", ConditionKind::LessThan, Some(json!(0)))).unwrap();
    assert!(!c.holds(&obs(&json!({"d": {"a": -0.0}})), None));
}

#[test]
fn an_unconfirmed_firing_leaves_the_cooldown_to_the_fence() {
    let cooldown = Duration::from_secs(300);
    let recorded = |cleared| {
        FiringState::restored(Some(Recorded {
            time: at(0),
            cleared,
        }))
    };
    // Its episode may be this one: the fence judges (and resumes an unfinished one).
    let mut s = recorded(false);
    assert_eq!(
        s.step(true, false, at(10), Duration::ZERO, cooldown),
        Decision::Fire
    );
    // Once judged, the cooldown applies as usual.
    assert_eq!(
        s.step(false, false, at(11), Duration::ZERO, cooldown),
        Decision::Idle
    );
    assert!(matches!(
        s.step(true, false, at(12), Duration::ZERO, cooldown),
        Decision::Cooldown { .. }
    ));
    // An ended episode: a new one within the cooldown is held back here.
    let mut s = recorded(true);
    assert!(matches!(
        s.step(true, false, at(10), Duration::ZERO, cooldown),
        Decision::Cooldown { .. }
    ));
}

#[test]
fn a_kept_result_holds_what_the_rules_read_and_nothing_else() {
    let data = json!({"daemonStatus": {
        "peers": [{"peerId": "p0"}, {"peerId": "p1"}, {"peerId": "p2"}],
        "syncStatus": "SYNCED", "blockchainLength": 1000, "uptimeSecs": 77,
        "consensusConfiguration": {"k": 290, "slotsPerEpoch": 7140}},
        "bestChain": [{"stateHash": "3Nabc"}, {"stateHash": "3Ndef"}],
        "alias": {"0": "key named zero"}});
    let paths = [
        "daemonStatus.syncStatus",
        "daemonStatus.peers.2.peerId",
        "daemonStatus.peers.#",
        "bestChain.1.stateHash",
        "alias.0",
        "daemonStatus.missing",
        "$up",
    ];
    let paths: Vec<FieldPath> = paths.iter().map(|p| p.parse().unwrap()).collect();
    let mut kept = Value::Null;
    for path in &paths {
        path.keep(&data, &mut kept);
    }
    // Every path reads the same from what is kept as from the whole result.
    for path in &paths {
        assert_eq!(
            path.resolve(Some(&kept), true),
            path.resolve(Some(&data), true),
            "{path}"
        );
    }
    // And only that is kept: no uptime, no configuration, no other peer ids.
    assert_eq!(
        kept,
        json!({"daemonStatus": {"syncStatus": "SYNCED",
                                "peers": [null, null, {"peerId": "p2"}]},
               "bestChain": [null, {"stateHash": "3Ndef"}],
               "alias": {"0": "key named zero"}})
    );
    // In whatever order the paths come.
    let mut reversed = Value::Null;
    for path in paths.iter().rev() {
        path.keep(&data, &mut reversed);
    }
    assert_eq!(reversed, kept);
}
