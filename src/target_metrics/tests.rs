use serde_json::json;

use super::*;

fn series(name: &str, field: &str, kind: Kind) -> Series {
    Series {
        name: format!("{PREFIX}{name}"),
        field: field.parse().unwrap(),
        kind,
        pod_labels: Vec::new(),
    }
}

fn sync_states() -> Kind {
    Kind::States(["CONNECTING", "SYNCED", "OFFLINE"].map(String::from).into())
}

fn budget(tenant: &str, max: usize) -> Budget {
    Budget {
        tenant: tenant.to_owned(),
        max,
        named: format!("TenantQuota {tenant}"),
    }
}

fn answer() -> Value {
    json!({"daemonStatus": {
        "blockchainLength": "1234",
        "syncStatus": "SYNCED",
        "peers": [{"peerId": "a"}, {"peerId": "b"}],
        "catchup": true,
        "commit": "abc"
    }})
}

#[test]
fn names_are_metric_names_and_not_the_labels_every_series_carries() {
    for good in ["blockchain_length", "peers", "a1", "sync_status_2"] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "Peers",
        "1peers",
        "_peers",
        "peer-count",
        "peers:total",
        "peers count",
        "target",
        "namespace",
        "targetapp",
        "label_app",
        "instance",
        "job",
        "pod",
        "exported_namespace",
        &"x".repeat(MAX_NAME + 1),
    ] {
        assert!(check_name(bad).is_err(), "{bad:?} must be refused");
    }
}

#[test]
fn pod_labels_become_label_names_as_kube_state_metrics_writes_them() {
    assert_eq!(pod_label("app"), "label_app");
    assert_eq!(
        pod_label("app.kubernetes.io/name"),
        "label_app_kubernetes_io_name"
    );
    assert_eq!(pod_label("topology-zone"), "label_topology_zone");
}

#[test]
fn an_answer_reads_as_numbers_lengths_booleans_and_state_sets() {
    let defs = [
        series("length", "daemonStatus.blockchainLength", Kind::Number),
        series("peers", "daemonStatus.peers.#", Kind::Number),
        series("catchup", "daemonStatus.catchup", Kind::Boolean),
        series("sync", "daemonStatus.syncStatus", sync_states()),
        series("up", "$up", Kind::Boolean),
    ];
    let data = answer();
    let got = read(&defs, Answer::Polled(Some(&data)));
    let expected = vec![
        Reading {
            series: 0,
            state: None,
            value: 1234.0,
        },
        Reading {
            series: 1,
            state: None,
            value: 2.0,
        },
        Reading {
            series: 2,
            state: None,
            value: 1.0,
        },
        Reading {
            series: 3,
            state: Some(0),
            value: 0.0,
        },
        Reading {
            series: 3,
            state: Some(1),
            value: 1.0,
        },
        Reading {
            series: 3,
            state: Some(2),
            value: 0.0,
        },
        Reading {
            series: 4,
            state: None,
            value: 1.0,
        },
    ];
    assert_eq!(got, expected);
    assert_eq!(per_target(&defs), 7);
}

#[test]
fn what_a_target_answers_never_makes_a_label_or_a_sample_of_another_type() {
    let defs = [
        series("sync", "daemonStatus.syncStatus", sync_states()),
        series("length", "daemonStatus.blockchainLength", Kind::Number),
        series("commit", "daemonStatus.commit", Kind::Unchecked),
        series("catchup", "daemonStatus.catchup", Kind::Number),
    ];
    let hostile = json!({"daemonStatus": {
        "syncStatus": "\"} 1\nkco_target_evil{x=\"",
        "blockchainLength": "12e400",
        "commit": "abc",
        "catchup": true
    }});
    let got = read(&defs, Answer::Polled(Some(&hostile)));
    // A value outside the enum sets every member to 0; no new member appears.
    assert_eq!(
        got,
        vec![
            Reading {
                series: 0,
                state: Some(0),
                value: 0.0
            },
            Reading {
                series: 0,
                state: Some(1),
                value: 0.0
            },
            Reading {
                series: 0,
                state: Some(2),
                value: 0.0
            },
        ]
    );
}

#[test]
fn a_failed_poll_keeps_only_up_at_zero() {
    let defs = [
        series("length", "daemonStatus.blockchainLength", Kind::Number),
        series("up", "$up", Kind::Boolean),
    ];
    assert_eq!(
        read(&defs, Answer::Polled(None)),
        vec![Reading {
            series: 1,
            state: None,
            value: 0.0
        }]
    );
}

fn rendered(store: &Store) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&store.families())
        .unwrap()
}

#[test]
fn a_store_exports_each_target_with_its_labels_and_forgets_what_goes() {
    let store = Store::default();
    let mut length = series(
        "blockchain_length",
        "daemonStatus.blockchainLength",
        Kind::Number,
    );
    length.pod_labels = vec![(
        pod_label("app.kubernetes.io/name"),
        "app.kubernetes.io/name".to_owned(),
    )];
    store.define(
        "chain",
        "mina",
        vec![
            length,
            series("sync_status", "daemonStatus.syncStatus", sync_states()),
        ]
        .into(),
    );
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "mina".to_owned()),
        ("secret".to_owned(), "x".to_owned()),
    ]);
    let data = answer();
    let b = budget("quota/blue", 100);
    store
        .record(
            "chain",
            "mina",
            "mina-0",
            Some(&labels),
            Answer::Polled(Some(&data)),
            &b,
        )
        .unwrap();
    store
        .record(
            "chain",
            "mina",
            "mina-1",
            None,
            Answer::Polled(Some(&data)),
            &b,
        )
        .unwrap();
    let text = rendered(&store);
    assert!(
        text.contains("# TYPE kco_target_blockchain_length gauge"),
        "{text}"
    );
    assert!(
        text.contains(r#"kco_target_blockchain_length{namespace="chain",targetapp="mina",target="mina-0",label_app_kubernetes_io_name="mina"} 1234"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kco_target_sync_status{namespace="chain",targetapp="mina",target="mina-1",sync_status="SYNCED"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kco_target_sync_status{namespace="chain",targetapp="mina",target="mina-1",sync_status="OFFLINE"} 0"#),
        "{text}"
    );
    assert!(
        !text.contains("secret"),
        "only the chosen pod labels: {text}"
    );
    assert_eq!(store.tenant_series("quota/blue"), 8);

    // A failed poll: the target's values are unknown, so its series go.
    store
        .record("chain", "mina", "mina-1", None, Answer::Polled(None), &b)
        .unwrap();
    assert!(!rendered(&store).contains("mina-1"));
    assert_eq!(store.tenant_series("quota/blue"), 4);
    store.forget_target("chain", "mina", "mina-0");
    assert_eq!(store.tenant_series("quota/blue"), 0);
    store
        .record(
            "chain",
            "mina",
            "mina-0",
            None,
            Answer::Polled(Some(&data)),
            &b,
        )
        .unwrap();
    store.forget_app("chain", "mina");
    assert_eq!(rendered(&store), "");
    assert_eq!(store.tenant_series("quota/blue"), 0);
    // A forgotten TargetApp's late report exports nothing.
    store
        .record(
            "chain",
            "mina",
            "mina-0",
            None,
            Answer::Polled(Some(&data)),
            &b,
        )
        .unwrap();
    assert_eq!(rendered(&store), "");
}

#[test]
fn over_its_budget_a_tenants_target_exports_nothing_and_other_tenants_are_untouched() {
    let store = Store::default();
    let defs: Arc<[Series]> = vec![series(
        "sync_status",
        "daemonStatus.syncStatus",
        sync_states(),
    )]
    .into();
    store.define("blue-1", "mina", defs.clone());
    store.define("red-1", "mina", defs);
    let data = answer();
    let blue = budget("quota/blue", 5);
    let red = budget("quota/red", 5);
    store
        .record(
            "blue-1",
            "mina",
            "a",
            None,
            Answer::Polled(Some(&data)),
            &blue,
        )
        .unwrap();
    let over = store
        .record(
            "blue-1",
            "mina",
            "b",
            None,
            Answer::Polled(Some(&data)),
            &blue,
        )
        .unwrap_err();
    assert_eq!((over.wanted, over.total, over.max), (3, 6, 5));
    assert!(
        over.to_string().contains("TenantQuota quota/blue"),
        "{over}"
    );
    store
        .record(
            "red-1",
            "mina",
            "a",
            None,
            Answer::Polled(Some(&data)),
            &red,
        )
        .unwrap();
    let text = rendered(&store);
    assert!(text.contains(r#"namespace="blue-1",targetapp="mina",target="a""#));
    assert!(!text.contains(r#"target="b""#), "{text}");
    assert!(text.contains(r#"namespace="red-1""#));
    assert_eq!(store.tenant_series("quota/blue"), 3);
    // Its own next answer replaces what it exported: no double counting.
    store
        .record(
            "blue-1",
            "mina",
            "a",
            None,
            Answer::Polled(Some(&data)),
            &blue,
        )
        .unwrap();
    assert_eq!(store.tenant_series("quota/blue"), 3);
}

#[test]
fn a_url_target_is_labelled_without_its_query_and_never_longer_than_a_name() {
    assert_eq!(target_label("mina-0"), "mina-0");
    assert_eq!(
        target_label("http://mina.chain.svc:3085/graphql?token=secret#x"),
        "http://mina.chain.svc:3085/graphql"
    );
    let padded = format!("http://mina.chain.svc/{}", "é".repeat(10_000));
    let label = target_label(&padded);
    assert!(label.len() <= MAX_TARGET_LABEL, "{}", label.len());
    assert!(label.starts_with("http://mina.chain.svc/"));

    let store = Store::default();
    store.define(
        "chain",
        "mina",
        vec![series("up", "$up", Kind::Boolean)].into(),
    );
    let url = format!("http://mina.chain.svc/graphql?pad={}", "x".repeat(100_000));
    store
        .record(
            "chain",
            "mina",
            &url,
            None,
            Answer::Polled(None),
            &budget("t", 10),
        )
        .unwrap();
    let text = rendered(&store);
    assert!(
        text.contains(r#"kco_target_up{namespace="chain",targetapp="mina",target="http://mina.chain.svc/graphql"} 0"#),
        "{text}"
    );
    assert!(text.len() < 1024, "{} bytes", text.len());
}

#[test]
fn a_throttled_poll_leaves_the_series_and_a_failed_one_does_not() {
    use crate::monitor::poll::{PollData, PollFailure};
    let data = answer();
    let ok: Result<PollData, PollFailure> = Ok(PollData {
        data: data.clone(),
        errors: Vec::new(),
    });
    assert_eq!(answer_of(&ok), Some(Answer::Polled(Some(&data))));
    assert_eq!(
        answer_of(&Err(PollFailure::Status(500))),
        Some(Answer::Polled(None))
    );
    assert_eq!(
        answer_of(&Err(PollFailure::Throttled("the share is used".into()))),
        None,
        "another tenant's load must not read as the target down"
    );
}

#[test]
fn pushed_values_and_polled_ones_each_keep_their_series_until_their_own_source_fails() {
    let store = Store::default();
    store.define(
        "chain",
        "mina",
        vec![
            series("length", "daemonStatus.blockchainLength", Kind::Number),
            series(
                "height",
                "@blocks.protocolState.consensusState.blockHeight",
                Kind::Number,
            ),
            series("pushed_sync", "@newSyncUpdate", sync_states()),
            series("up", "$up", Kind::Boolean),
        ]
        .into(),
    );
    let b = budget("quota/blue", 100);
    let record = |answer: Answer<'_>| {
        store
            .record("chain", "mina", "mina-0", None, answer, &b)
            .unwrap();
        rendered(&store)
    };
    let block = json!({"protocolState": {"consensusState": {"blockHeight": "42"}}});
    let polled = answer();
    record(Answer::Polled(Some(&polled)));
    let text = record(Answer::Pushed {
        name: "blocks",
        value: &block,
    });
    assert!(
        text.contains(
            "kco_target_height{namespace=\"chain\",targetapp=\"mina\",target=\"mina-0\"} 42"
        ),
        "{text}"
    );
    assert!(
        text.contains("kco_target_length{") && text.contains("} 1234"),
        "a push keeps the polled series: {text}"
    );
    assert!(
        !text.contains("kco_target_pushed_sync"),
        "nothing pushed on newSyncUpdate yet: {text}"
    );
    let text = record(Answer::Pushed {
        name: "newSyncUpdate",
        value: &json!("OFFLINE"),
    });
    assert!(
        text.contains("pushed_sync=\"OFFLINE\"} 1") && text.contains("} 42"),
        "{text}"
    );
    assert_eq!(store.tenant_series("quota/blue"), 1 + 1 + 3 + 1);

    // A failed poll: the polled values go, `$up` is 0, the pushed ones stay.
    let text = record(Answer::Polled(None));
    assert!(!text.contains("kco_target_length"), "{text}");
    assert!(
        text.contains("kco_target_up{") && text.contains("} 0"),
        "{text}"
    );
    assert!(
        text.contains("kco_target_height{") && text.contains("pushed_sync=\"OFFLINE\"} 1"),
        "{text}"
    );
    // A push's value that is not of its kind: that series has no sample.
    let text = record(Answer::Pushed {
        name: "blocks",
        value: &json!({"protocolState": null}),
    });
    assert!(!text.contains("kco_target_height"), "{text}");
    // The subscriptions lost: what they pushed is no longer known.
    record(Answer::Pushed {
        name: "blocks",
        value: &block,
    });
    let text = record(Answer::Unsubscribed);
    assert!(
        !text.contains("kco_target_height") && !text.contains("pushed_sync"),
        "{text}"
    );
    assert!(text.contains("kco_target_up{"), "{text}");
    assert_eq!(store.tenant_series("quota/blue"), 1);
}
