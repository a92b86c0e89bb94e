//! The monitoring pipeline end to end: a real apiserver, simulated Mina nodes
//! behind Ready pods, and `kco run`'s operator watching one namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kco::simulator::{Faults, NodeState, StatePatch, SyncStatus};
use kco::targetapp::{Phase, TargetAppStatus};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use support::bed::{Bed, metric};
use support::fixtures::{self, MINA_GRAPHQL_PORT};
use support::{ControlPlane, User};

/// The bed, with an operator whose polls time out fast and are not retried.
async fn bed(prefix: &str, pods: usize) -> Bed {
    let mut bed = Bed::new(prefix, pods).await;
    bed.start_operator(fast_polls).await;
    bed
}

/// Polls that time out fast and are not retried.
fn fast_polls(s: &mut kco::config::Settings) {
    s.graphql_timeout = Duration::from_millis(700);
    s.graphql_max_retries = 0;
}

fn offline_rules() -> Value {
    json!([
        {"name": "offline", "action": "restart_pod", "cooldown": "1h",
         "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}},
        {"name": "catchup-3s", "action": "restart_pod", "cooldown": "0s",
         "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "CATCHUP", "for": "3s"}}
    ])
}

#[tokio::test]
async fn a_flipped_node_changes_state_and_fires_its_rule_only_for_its_pod() {
    let bed = bed("mon-flip", 3).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1, "actions": offline_rules()}))
        .await;
    bed.wait_status(30, "Monitoring 3/3", |s| {
        s.phase == Some(Phase::Monitoring) && s.targets_ready.as_deref() == Some("3/3")
    })
    .await;
    let app = bed.apps().get("mina").await.unwrap();
    assert_eq!(
        app.status.as_ref().unwrap().observed_generation,
        app.metadata.generation
    );

    let stats = fixtures::get_json(
        &fixtures::http_client(),
        &format!("http://{}/stats", bed.admin),
    )
    .await;
    let targets = stats["targetApps"][0]["targets"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(targets.len(), 3, "{stats}");
    assert!(
        targets.iter().all(|t| t["syncStatus"] == "SYNCED"
            && t["blockchainLength"] == 1000
            && t["up"] == true),
        "the typed health query result shows in /stats: {stats}"
    );
    assert!(
        targets
            .iter()
            .all(|t| t["lastPollTime"].is_string() && t["since"].is_string()),
        "/stats tells when each target was last polled: {stats}"
    );

    // Status is written on change, never per poll: while every target keeps
    // answering the same, three more polls of each leave the object as it was,
    // and the polls show in the last-poll metric instead.
    let last_poll = |metrics: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("operator_kco_tapp_last_poll_timestamp_seconds{")
                    && l.contains("targetapp=\"mina\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no last-poll series for mina in:\n{metrics}"))
    };
    let polled = last_poll(&bed.metrics().await);
    let version = app.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let quiet = bed.apps().get("mina").await.unwrap();
    assert_eq!(
        quiet.metadata.resource_version, version,
        "nothing changed, so nothing was written: {:?}",
        quiet.status
    );
    assert!(
        last_poll(&bed.metrics().await) >= polled + 2.0,
        "polls went on meanwhile"
    );

    bed.set_state(1, SyncStatus::Offline).await;
    let changed = bed.wait_event(10, "StateChanged", "mina-1").await;
    assert!(
        changed.contains("daemonStatus.syncStatus")
            && changed.contains("\"SYNCED\"")
            && changed.contains("\"OFFLINE\""),
        "{changed}"
    );
    let fired = bed.wait_event(10, "TriggerFired", "mina-1").await;
    assert!(fired.contains("rule offline"), "{fired}");
    let fired_for: Vec<String> = bed
        .events("TriggerFired")
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(
        fired_for.iter().all(|n| n.contains("mina-1")),
        "only mina-1 fired: {fired_for:?}"
    );
    assert!(
        bed.events("StateChanged")
            .await
            .iter()
            .all(|(n, _)| n.contains("mina-1")),
        "uptime does not flood"
    );
    // The pod gets the Event too.
    let events: Api<Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    let on_pod = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("TriggerFired")
                && e.regarding.and_then(|r| r.name).as_deref() == Some("mina-1")
        });
    assert!(on_pod, "the pod should carry its TriggerFired Event");

    // Cooldown (1h): back to SYNCED and OFFLINE again does not fire a second time.
    bed.wait_status(5, "the firing recorded", |s| {
        s.firings.iter().any(|f| f.rule == "offline")
    })
    .await;
    let fired = |s: TargetAppStatus| {
        s.firings
            .into_iter()
            .map(|f| (f.rule, f.target, f.time))
            .collect::<Vec<_>>()
    };
    let first = fired(bed.status().await);
    // Firings are known by the second (status's precision): an end is recorded
    // once it is seen in a later second than the firing.
    let fired_in = first.first().map(|(_, _, time)| time.0).unwrap();
    while k8s_openapi::jiff::Timestamp::now().as_second() <= fired_in.as_second() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bed.set_state(1, SyncStatus::Synced).await;
    bed.wait_event(10, "StateChanged", "to \"SYNCED\"").await;
    // The episode's end is recorded (a replica taking over would fire the next one).
    bed.wait_status(5, "the episode's end recorded", |s| {
        s.firings
            .iter()
            .any(|f| f.rule == "offline" && f.cleared.is_some())
    })
    .await;
    bed.set_state(1, SyncStatus::Offline).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = fired(bed.status().await);
    assert_eq!(first, after, "the cooldown holds the second firing back");
    assert_eq!(
        bed.events("TriggerFired")
            .await
            .iter()
            .map(|(_, c)| c)
            .sum::<i32>(),
        1
    );

    // `for: 3s`: CATCHUP must hold 3 s before the rule fires.
    let set_at = k8s_openapi::jiff::Timestamp::now();
    let set = Instant::now();
    bed.set_state(2, SyncStatus::Catchup).await;
    // Polled every second, CATCHUP is seen within about a second; the rule must
    // still be holding 2 s after the change.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(set.elapsed())).await;
    let early = bed.events("TriggerFired").await;
    assert!(
        !early.iter().any(|(n, _)| n.contains("rule catchup-3s")),
        "fired before its 3 s hold: {early:?}"
    );
    bed.wait_event(15, "TriggerFired", "rule catchup-3s fired for mina-2")
        .await;
    bed.wait_status(5, "the catchup firing recorded", |s| {
        s.firings.iter().any(|f| f.rule == "catchup-3s")
    })
    .await;
    let firings = bed.status().await.firings;
    let firing = firings
        .iter()
        .find(|f| f.rule == "catchup-3s" && f.target == "mina-2")
        .unwrap();
    // Status times have one-second precision (metav1.Time): allow for the truncation.
    let held = firing.time.0.duration_since(set_at);
    assert!(
        held.as_secs_f64() >= 2.0,
        "recorded {held:?} after the change, before the 3 s hold"
    );

    let metrics = bed.metrics().await;
    for name in [
        "operator_kco_tapp_polls_total",
        "operator_kco_tapp_poll_duration_seconds",
        "operator_kco_events_generated_total",
        "operator_kco_errors_total",
        // Values only mean something in the `kco` binary, which runs on jemalloc:
        // the soak test checks them there.
        "operator_kco_heap_allocated_bytes",
        "operator_kco_heap_resident_bytes",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing"
        );
    }
    let firings_metric = metric(
        &metrics,
        "operator_kco_trigger_firings_total",
        &["rule=\"offline\""],
    );
    assert_eq!(firings_metric, 1.0);
    let polls = metric(
        &metrics,
        "operator_kco_tapp_polls_total",
        &["result=\"success\""],
    );
    let mut requests = 0;
    for node in &bed.nodes {
        requests += bed.sim.node(*node).await.unwrap().requests;
    }
    assert!(
        polls >= 9.0 && polls <= requests as f64,
        "polls {polls} vs {requests} requests served"
    );
    let trigger_events = metric(
        &metrics,
        "operator_kco_events_generated_total",
        &["reason=\"TriggerFired\""],
    );
    assert_eq!(
        trigger_events, 4.0,
        "two firings, each on the TargetApp and on the pod"
    );
}

#[tokio::test]
async fn each_fault_fails_its_target_with_a_reason_and_the_others_keep_their_schedule() {
    let bed = bed("mon-faults", 7).await;
    let faults = [
        Faults {
            latency_ms: 5_000,
            ..Default::default()
        },
        Faults {
            http_status: Some(500),
            ..Default::default()
        },
        Faults {
            malformed_json: true,
            ..Default::default()
        },
        Faults {
            body_bytes: Some(8 * 1024 * 1024),
            ..Default::default()
        },
        Faults {
            reset: true,
            ..Default::default()
        },
        Faults {
            graphql_error: Some("daemon is bootstrapping".into()),
            ..Default::default()
        },
    ];
    for (i, f) in faults.iter().enumerate() {
        bed.sim.set_faults(bed.nodes[i], f.clone()).await.unwrap();
    }
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    let reasons = [
        "timeout",
        "http_5xx",
        "invalid_json",
        "too_large",
        "transport",
        "graphql_errors",
    ];
    for (i, reason) in reasons.iter().enumerate() {
        let note = bed
            .wait_event(20, "PollFailed", &format!("mina-{i} failed ({reason})"))
            .await;
        assert!(
            !note.contains("daemon is bootstrapping") || *reason == "graphql_errors",
            "{note}"
        );
    }
    bed.wait_status(20, "1/7 up, Degraded", |s| {
        s.phase == Some(Phase::Degraded) && s.targets_ready.as_deref() == Some("1/7")
    })
    .await;
    // The healthy node keeps being polled once a second while the others fail.
    let healthy = bed.nodes[6];
    let before = bed.sim.node(healthy).await.unwrap().requests;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = bed.sim.node(healthy).await.unwrap().requests;
    assert!(
        after - before >= 3,
        "healthy target polled {} times in 4 s",
        after - before
    );
    // Failures do not flood: one PollFailed per target, however many polls failed.
    assert_eq!(bed.events("PollFailed").await.len(), 6);
    let status = bed.status().await;
    assert!(
        status
            .targets
            .iter()
            .filter(|t| !t.up)
            .all(|t| t.last_error.is_some())
    );

    // Recovery is reported; failing the same way again repeats the Event (count 2)
    // instead of creating another one.
    bed.sim
        .set_faults(bed.nodes[1], Faults::default())
        .await
        .unwrap();
    bed.wait_event(10, "PollRecovered", "mina-1 answers again")
        .await;
    bed.sim
        .set_faults(bed.nodes[1], faults[1].clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mina1: Vec<(String, i32)> = bed
            .events("PollFailed")
            .await
            .into_iter()
            .filter(|(n, _)| n.contains("mina-1"))
            .collect();
        if mina1.len() == 1 && mina1[0].1 == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected one PollFailed for mina-1 with count 2: {mina1:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in &bed.nodes {
        bed.sim.set_faults(*node, Faults::default()).await.unwrap();
    }
}

#[tokio::test]
async fn pollers_follow_pods_and_the_targetapp() {
    let bed = bed("mon-life", 2).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    bed.wait_status(30, "2/2", |s| s.targets_ready.as_deref() == Some("2/2"))
        .await;

    // A new Ready pod becomes a target.
    let ip = fixtures::loopback_ip();
    let extra = bed
        .sim
        .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
        .await
        .unwrap();
    fixtures::create_running_pod(
        &bed.client,
        &bed.ns,
        &fixtures::mina_pod("mina-new", json!({"app": "mina"})),
        ip,
    )
    .await;
    bed.wait_event(10, "TargetDiscovered", "mina-new").await;
    bed.wait_status(10, "3/3", |s| s.targets_ready.as_deref() == Some("3/3"))
        .await;

    // Unready: lost; deleted: lost.
    fixtures::set_pod_ready(&bed.client, &bed.ns, "mina-new", ip, false).await;
    bed.wait_event(10, "TargetLost", "mina-new is no longer Ready")
        .await;
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &bed.ns);
    pods.delete("mina-0", &DeleteParams::default())
        .await
        .unwrap();
    let lost = bed.wait_event(10, "TargetLost", "target mina-0").await;
    assert!(
        lost.contains("is terminating") || lost.contains("is gone"),
        "{lost}"
    );
    bed.wait_status(10, "1/1", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    let polled = |n: u64| n;
    let unready_count = bed.sim.node(extra.address).await.unwrap().requests;
    let gone_count = bed.sim.node(bed.nodes[0]).await.unwrap().requests;

    // Edited: the new spec applies (observedGeneration follows).
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 2}))
        .await;
    let generation = bed.apps().get("mina").await.unwrap().metadata.generation;
    bed.wait_status(10, "the new generation", |s| {
        s.observed_generation == generation
    })
    .await;
    // The edit restarted the TargetApp's task: the target it had announced is
    // polled on, not announced again (nor by a replica taking it over).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let discovered: Vec<(String, i32)> = bed
        .events("TargetDiscovered")
        .await
        .into_iter()
        .filter(|(note, _)| note.contains("mina-1"))
        .collect();
    assert!(
        !discovered.is_empty() && discovered.iter().all(|(_, count)| *count == 1),
        "{discovered:?}"
    );

    // Suspended: polling stops.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1, "suspend": true})).await;
    bed.wait_status(10, "Suspended", |s| s.phase == Some(Phase::Suspended))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = bed.nodes[1];
    let suspended_at = bed.sim.node(live).await.unwrap().requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bed.sim.node(live).await.unwrap().requests,
        suspended_at,
        "a suspended TargetApp is not polled"
    );
    assert_eq!(
        polled(bed.sim.node(extra.address).await.unwrap().requests),
        unready_count,
        "unready pods are not polled"
    );
    assert_eq!(
        bed.sim.node(bed.nodes[0]).await.unwrap().requests,
        gone_count,
        "deleted pods are not polled"
    );

    // Resumed, then deleted: polling starts, then stops for good.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    bed.wait_status(10, "Monitoring again", |s| {
        s.phase == Some(Phase::Monitoring)
    })
    .await;
    bed.apps()
        .delete("mina", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deleted_at = bed.sim.node(live).await.unwrap().requests;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bed.sim.node(live).await.unwrap().requests,
        deleted_at,
        "a deleted TargetApp is not polled"
    );
    let stats: Value = fixtures::get_json(
        &fixtures::http_client(),
        &format!("http://{}/stats", bed.admin),
    )
    .await;
    assert_eq!(stats["targetApps"].as_array().unwrap().len(), 0, "{stats}");
}

#[tokio::test]
async fn an_invalid_spec_fails_with_the_reason_in_status() {
    let bed = bed("mon-invalid", 1).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "actions": [
        {"action": "restart_pod", "trigger": {"field": "daemonStatus.syncStatus", "condition": "in", "value": "OFFLINE"}}
    ]}))
    .await;
    bed.wait_status(20, "Failed", |s| s.phase == Some(Phase::Failed))
        .await;
    let status = bed.status().await;
    assert!(
        status.conditions[0]
            .message
            .contains("spec.actions[0].trigger.value"),
        "{:?}",
        status.conditions
    );
    // A field that moved is refused, not ignored.
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "scheme": "https",
                     "caSecretRef": {"name": "mina-ca", "key": "ca.crt"}}),
    )
    .await;
    bed.wait_status(20, "Failed on caSecretRef", |s| {
        s.phase == Some(Phase::Failed)
            && s.conditions[0]
                .message
                .contains("spec.caSecretRef: moved: set spec.tls.caSecretRef")
    })
    .await;
    let admin = fixtures::http_client();
    assert_eq!(
        admin
            .get(format!("http://{}/readyz", bed.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        admin
            .get(format!("http://{}/healthz", bed.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A TargetApp stored past the webhooks (down, or failurePolicy Ignore) whose
/// schema comes from a ConfigMap: the monitor checks it as admission would, the
/// operation type whatever the schema, and the fields against that schema; a
/// ConfigMap that appears later heals it without a change to the TargetApp.
#[tokio::test]
async fn a_stored_query_is_checked_against_its_schema_configmap_and_never_mutates() {
    let bed = bed("mon-cmschema", 1).await;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(bed.client.clone(), &bed.ns);
    let schema = "schema { query: Query mutation: Mutation }\n\
                  type Query { daemonStatus: DaemonStatus }\n\
                  type DaemonStatus { syncStatus: String, blockchainLength: Int }\n\
                  type Mutation { reset: Boolean }\n";
    let configmap = |name: &str| -> k8s_openapi::api::core::v1::ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"operator.kco.local/schema": "true"}},
            "data": {"schema.graphql": schema}
        }))
        .unwrap()
    };
    maps.create(&Default::default(), &configmap("custom"))
        .await
        .unwrap();
    let spec = |map: &str, query: &str| {
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
               "schema": {"configMapRef": {"name": map, "key": "schema.graphql"}},
               "stateQuery": query})
    };
    // The ConfigMap's schema has a Mutation type: a mutation is still refused.
    bed.apply(spec("custom", "mutation { reset }")).await;
    bed.wait_status(20, "Failed on the mutation", |s| {
        s.phase == Some(Phase::Failed) && s.conditions[0].message.contains("spec.stateQuery")
    })
    .await;
    assert!(
        bed.status().await.conditions[0].message.contains("query"),
        "the reason names what is allowed: {:?}",
        bed.status().await.conditions
    );
    // A field the ConfigMap's schema does not have.
    bed.apply(spec("custom", "query { daemonStatus { peers } }"))
        .await;
    bed.wait_status(20, "Failed on the unknown field", |s| {
        s.phase == Some(Phase::Failed)
            && s.conditions[0].message.contains("spec.stateQuery")
            && s.conditions[0].message.contains("peers")
    })
    .await;
    // A query the schema answers is polled.
    bed.apply(spec(
        "custom",
        "query { daemonStatus { syncStatus blockchainLength } }",
    ))
    .await;
    bed.wait_status(30, "Monitoring", |s| s.phase == Some(Phase::Monitoring))
        .await;
    // A ConfigMap that does not exist yet fails the TargetApp until it does (and
    // its series wait for it too).
    let mut later = spec(
        "later",
        "query { daemonStatus { syncStatus blockchainLength } }",
    );
    later["metrics"] = json!([{"field": "daemonStatus.blockchainLength", "name": "height"}]);
    bed.apply(later).await;
    bed.wait_status(20, "Failed on the missing ConfigMap", |s| {
        s.phase == Some(Phase::Failed)
            && s.conditions[0].message.contains("spec.schema.configMapRef")
    })
    .await;
    maps.create(&Default::default(), &configmap("later"))
        .await
        .unwrap();
    bed.wait_status(30, "Monitoring once the ConfigMap exists", |s| {
        s.phase == Some(Phase::Monitoring)
    })
    .await;
    bed.wait_metrics(10, "series once healed", |m| {
        metric(m, "kco_target_height", &["targetapp=\"mina\""]) == 1000.0
    })
    .await;
}

#[tokio::test]
async fn the_kco_run_command_serves_until_terminated_and_refuses_bad_settings() {
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(["run", "--graphql-timeout", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("GRAPHQL_TIMEOUT=0"), "{stderr}");

    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("mon-cli").await;
    let port = support::process::free_port().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .arg("run")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig(&User::Admin).unwrap())
        .args([
            "--metrics-port",
            &port.to_string(),
            "--admin-bind-address",
            "127.0.0.1",
            "--instance",
            "kco-cli",
            "--webhook-port",
            &free_port_text(),
            "--webhook-bind-address",
            "127.0.0.1",
        ])
        .env("WATCH_NAMESPACE", &ns)
        .env_remove("KUBECONFIG")
        .spawn()
        .unwrap();
    // A failed assertion must not leave the process running.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _reaper = KillOnDrop(child.id());
    let http = fixtures::http_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "kco run exited early");
        assert!(Instant::now() < deadline, "kco run never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = fixtures::get_json(&http, &format!("http://127.0.0.1:{port}/stats")).await;
    assert_eq!(stats["instance"], "kco-cli");
    // Alone, it is the only shard member, and it comes to lead.
    assert_eq!(stats["members"], json!(["kco-cli"]));
    assert_eq!(stats["leaving"], json!([]), "no replica leaving");
    let leases: Api<Lease> = Api::namespaced(cp.admin().await, "default");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = fixtures::get_json(&http, &format!("http://127.0.0.1:{port}/stats")).await;
        if stats["leader"] == json!(true) {
            break;
        }
        assert!(Instant::now() < deadline, "never led: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        leases
            .get_opt("kco-member-kco-cli")
            .await
            .unwrap()
            .is_some()
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "kco run should exit 0 on SIGTERM"
    );
    // On its way out it left the shard and released the leader Lease.
    assert!(
        leases
            .get_opt("kco-member-kco-cli")
            .await
            .unwrap()
            .is_none()
    );
    let leader = leases.get("kco-leader").await.unwrap().spec.unwrap();
    assert_eq!(leader.holder_identity, None, "released");
}

#[tokio::test]
async fn url_targets_are_polled_only_where_they_resolve_to_allowed_addresses() {
    let mut bed = Bed::new("mon-url", 1).await;
    let node = bed.nodes[0];
    let ns = bed.ns.clone();
    // `node.<ns>.svc` resolves to the simulated node (a loopback address this
    // operator's default quota allows); `rebind.<ns>.svc` passes admission by name
    // but resolves to 127.0.0.1, the apiserver's address.
    bed.start_operator(|s| {
        s.graphql_max_retries = 0;
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(node.ip())];
        s.dns_overrides = vec![
            (format!("node.{ns}.svc"), node.ip()),
            (format!("rebind.{ns}.svc"), "127.0.0.1".parse().unwrap()),
        ];
    })
    .await;
    bed.apply(
        json!({"graphqlEndpoint": format!("http://node.{ns}.svc:{}/graphql", node.port()),
                     "pollingInterval": 1}),
    )
    .await;
    bed.wait_status(30, "1/1 up", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;

    bed.apply(
        json!({"graphqlEndpoint": format!("http://rebind.{ns}.svc:{}/graphql", node.port()),
                     "pollingInterval": 1}),
    )
    .await;
    let note = bed.wait_event(20, "PollFailed", "rebind").await;
    assert!(
        note.contains("(not_allowed)") && note.contains("resolves to a forbidden address"),
        "{note}"
    );
}

fn free_port_text() -> String {
    support::process::free_port().unwrap().to_string()
}

#[tokio::test]
async fn a_restarted_replica_exports_its_targets_though_it_has_no_status_to_write() {
    let mut bed = bed("mon-restart", 1).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    bed.wait_status(30, "1/1", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    let version = bed
        .apps()
        .get("mina")
        .await
        .unwrap()
        .metadata
        .resource_version;
    // Same name, same targets: the status it would write is the one stored.
    bed.restart_operator(fast_polls).await;
    let up_series = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("operator_kco_tapp_targets{")
                && l.contains("targetapp=\"mina\"")
                && l.contains("state=\"up\"")
                && l.ends_with(" 1")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up_series(&bed.metrics().await) {
        assert!(
            Instant::now() < deadline,
            "the restarted replica does not export mina's targets:\n{}",
            bed.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        bed.apps()
            .get("mina")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version,
        "nothing changed, so the status was not written again"
    );
}

/// The `kco_target_*` lines of `metrics` that name `target`.
fn target_series<'a>(metrics: &'a str, target: &str) -> Vec<&'a str> {
    let target = format!("target=\"{target}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("kco_target_") && l.contains(&target))
        .collect()
}

#[tokio::test]
async fn chosen_fields_are_reported_and_a_rule_without_an_action_only_records() {
    let bed = bed("mon-record", 2).await;
    bed.apply(json!({
        "selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "reportChanges": ["daemonStatus.peers.#"],
        "actions": [{"name": "offline", "cooldown": "0s",
                     "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}}]
    }))
    .await;
    bed.wait_status(30, "Monitoring 2/2", |s| {
        s.phase == Some(Phase::Monitoring) && s.targets_ready.as_deref() == Some("2/2")
    })
    .await;

    // A field no rule reads, reported because the TargetApp asks for it.
    let peers = StatePatch {
        peer_count: Some(5),
        ..Default::default()
    };
    bed.sim.patch_state(bed.nodes[0], peers).await.unwrap();
    let changed = bed.wait_event(10, "StateChanged", "mina-0").await;
    assert!(
        changed.contains("daemonStatus.peers.# changed from 3 to 5"),
        "{changed}"
    );

    // The rule fires and records: an Event and the firings metric, no action.
    bed.set_state(1, SyncStatus::Offline).await;
    let fired = bed.wait_event(10, "TriggerFired", "mina-1").await;
    assert!(
        fired.contains("rule offline fired for mina-1") && fired.contains("recorded only"),
        "{fired}"
    );
    let ns = format!("namespace=\"{}\"", bed.ns);
    bed.wait_metrics(10, "one firing counted", |m| {
        metric(
            m,
            "operator_kco_trigger_firings_total",
            &[&ns, "rule=\"offline\""],
        ) == 1.0
    })
    .await;
    // The rule's own field is reported too, as always.
    bed.wait_event(10, "StateChanged", "mina-1").await;
    // Polls go on each second: had an action been dispatched, its outcome would
    // be an Event by now, and its firing recorded in status.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for reason in ["ActionSucceeded", "ActionFailed", "ActionSkipped"] {
        assert_eq!(bed.events(reason).await, vec![], "{reason}");
    }
    assert_eq!(bed.status().await.firings, vec![]);
    assert_eq!(
        bed.events("TriggerFired").await.len(),
        1,
        "one firing for one episode"
    );
}

/// Every node answers only requests carrying `Authorization: Bearer <token>`.
async fn require_token(bed: &Bed, token: &str) {
    for node in &bed.nodes {
        let faults = Faults {
            require_header: Some(kco::simulator::RequiredHeader {
                name: "authorization".into(),
                value: format!("Bearer {token}"),
            }),
            ..Default::default()
        };
        bed.sim.set_faults(*node, faults).await.unwrap();
    }
}

async fn put_token(bed: &Bed, name: &str, token: &str) {
    put_secret(bed, name, "Opaque", json!({"token": format!("{token}\n")})).await;
}

#[tokio::test]
async fn polls_carry_credentials_read_as_the_tenant_and_follow_the_secret() {
    let mut bed = Bed::new("mon-auth", 2).await;
    bed.start_operator(|s| {
        fast_polls(s);
        s.credentials_refresh = Duration::from_secs(1);
    })
    .await;
    bed.grant_actions().await;
    require_token(&bed, "s3cret-one").await;
    put_token(&bed, "kco-graphql-auth", "s3cret-one").await;
    let spec = |secret: &str| {
        json!({
            "selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
            "serviceAccountName": "kco-actions",
            "auth": {"secretRef": {"name": secret, "key": "token"}, "scheme": "Bearer"}
        })
    };
    bed.apply(spec("kco-graphql-auth")).await;
    bed.wait_status(30, "Monitoring 2/2 with the token", |s| {
        s.phase == Some(Phase::Monitoring) && s.targets_ready.as_deref() == Some("2/2")
    })
    .await;

    // The nodes move to a new token: polls fail until the Secret has it too,
    // then recover within a refresh period, with no change to the TargetApp.
    require_token(&bed, "s3cret-two").await;
    let failed = bed.wait_event(10, "PollFailed", "mina-0").await;
    assert!(failed.contains("HTTP status 401"), "{failed}");
    put_token(&bed, "kco-graphql-auth", "s3cret-two").await;
    bed.wait_event(10, "PollRecovered", "mina-0").await;
    bed.wait_status(10, "2/2 with the rotated token", |s| {
        s.targets_ready.as_deref() == Some("2/2")
    })
    .await;

    // A Secret the account may not read is never read with the operator's
    // rights instead: the polls fail, saying why.
    put_token(&bed, "other", "s3cret-two").await;
    bed.apply(spec("other")).await;
    let refused = bed.wait_event(15, "PollFailed", "Forbidden").await;
    assert!(
        refused.contains(
            "cannot read Secret other: Forbidden (403) (read as ServiceAccount kco-actions)"
        ) && refused.contains("nothing was sent"),
        "{refused}"
    );
    // Not sent is not down: `$up` rules do not fire on it, and status says why.
    bed.wait_status(10, "the reason in status", |s| {
        s.targets.len() == 2
            && s.targets.iter().all(|t| {
                t.last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("no credentials to send"))
            })
    })
    .await;

    // Nothing KCO writes or serves shows the credential.
    let events: Api<Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    let written =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    let status = serde_json::to_string(&bed.status().await).unwrap();
    let metrics = bed.metrics().await;
    for (what, text) in [
        ("Events", written),
        ("status", status),
        ("metrics", metrics),
    ] {
        assert!(
            !text.contains("s3cret"),
            "the credential is in the {what}: {text}"
        );
    }
}

async fn put_secret(bed: &Bed, name: &str, type_: &str, data: Value) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(bed.client.clone(), &bed.ns);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "type": type_, "stringData": data
    });
    secrets
        .patch(
            name,
            &kube::api::PatchParams::apply("kco-test").force(),
            &kube::api::Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn https_targets_are_verified_against_the_tenants_ca_and_name_and_see_its_certificate() {
    let mut bed = Bed::new("mon-tls", 2).await;
    bed.start_operator(fast_polls).await;
    bed.grant_actions().await;
    // The nodes serve a certificate of the tenant's own CA, issued to a Service
    // name (not to the pod addresses polled), and ask for a client certificate
    // of another CA.
    let servers = support::pki::Authority::new("mina-servers").unwrap();
    let clients = support::pki::Authority::new("mina-clients").unwrap();
    let name = format!("mina.{}.svc", bed.ns);
    let serving = servers.server(&[&name]).unwrap();
    let client = clients.client("kco", None).unwrap();
    for node in &bed.nodes {
        let faults = Faults {
            tls: Some(kco::simulator::ServeTls {
                cert_pem: serving.cert.clone(),
                key_pem: serving.key.clone(),
                client_ca_pem: Some(clients.cert_pem.clone()),
            }),
            ..Default::default()
        };
        bed.sim.set_faults(*node, faults).await.unwrap();
    }
    put_secret(
        &bed,
        "kco-graphql-ca",
        "Opaque",
        json!({"ca.crt": servers.cert_pem}),
    )
    .await;
    put_secret(
        &bed,
        "kco-graphql-client",
        "kubernetes.io/tls",
        json!({"tls.crt": client.cert, "tls.key": client.key}),
    )
    .await;
    let spec = |tls: Value| {
        json!({
            "selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
            "scheme": "https", "serviceAccountName": "kco-actions", "tls": tls
        })
    };
    let ca = json!({"name": "kco-graphql-ca", "key": "ca.crt"});
    let certificate = json!({"name": "kco-graphql-client"});
    bed.apply(spec(
        json!({"caSecretRef": ca, "serverName": name, "clientCertSecretRef": certificate}),
    ))
    .await;
    bed.wait_status(30, "Monitoring 2/2 over mutual TLS", |s| {
        s.phase == Some(Phase::Monitoring) && s.targets_ready.as_deref() == Some("2/2")
    })
    .await;

    // Each setting is needed: without the client certificate the node refuses
    // the handshake, under another name or against the platform's roots the
    // node's certificate is refused.
    for (what, tls) in [
        (
            "no client certificate",
            json!({"caSecretRef": ca, "serverName": name}),
        ),
        (
            "another name",
            json!({"caSecretRef": ca, "serverName": "mina.other.svc", "clientCertSecretRef": certificate}),
        ),
        (
            "the platform's roots",
            json!({"serverName": name, "clientCertSecretRef": certificate}),
        ),
    ] {
        bed.apply(spec(tls)).await;
        bed.wait_status(20, what, |s| {
            s.targets_ready.as_deref() == Some("0/2")
                && s.targets.iter().all(|t| {
                    t.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("TLS handshake failed"))
                })
        })
        .await;
        bed.apply(spec(
            json!({"caSecretRef": ca, "serverName": name, "clientCertSecretRef": certificate}),
        ))
        .await;
        bed.wait_status(20, "2/2 again", |s| {
            s.targets_ready.as_deref() == Some("2/2")
        })
        .await;
    }
}

#[tokio::test]
async fn exported_fields_are_series_that_follow_the_answers_and_go_with_their_target() {
    let bed = bed("mon-series", 2).await;
    bed.apply(json!({
        "selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "metrics": [
            {"field": "daemonStatus.blockchainLength", "name": "blockchain_length", "podLabels": ["app"]},
            {"field": "daemonStatus.syncStatus", "name": "sync_status"},
            {"field": "daemonStatus.peers.#", "name": "peers"}
        ]
    }))
    .await;
    let length = format!(
        "kco_target_blockchain_length{{namespace=\"{}\",targetapp=\"mina\",target=\"mina-0\",label_app=\"mina\"}} 1000",
        bed.ns
    );
    // Both targets polled once: each exports its series after its first answer.
    let metrics = bed
        .wait_metrics(30, &length, |m| {
            m.contains(&length) && !target_series(m, "mina-1").is_empty()
        })
        .await;
    assert!(metrics.contains("# TYPE kco_target_blockchain_length gauge"));
    assert_eq!(
        metric(&metrics, "kco_target_peers", &["target=\"mina-1\""]),
        3.0
    );
    // A state set: one series per member of the schema's enum, 1 for the current.
    let sync = target_series(&metrics, "mina-1")
        .into_iter()
        .filter(|l| l.starts_with("kco_target_sync_status{"))
        .count();
    assert_eq!(sync, 6, "every SyncStatus member:\n{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "kco_target_sync_status",
            &["target=\"mina-1\"", "sync_status=\"SYNCED\""]
        ),
        1.0
    );
    bed.wait_status(10, "MetricsExported", |s| {
        s.conditions.iter().any(|c| c.type_ == "MetricsExported")
    })
    .await;
    let status = bed.status().await;
    let exported = status
        .conditions
        .iter()
        .find(|c| c.type_ == "MetricsExported")
        .unwrap();
    assert_eq!(
        (exported.status.as_str(), exported.reason.as_str()),
        ("True", "Exported")
    );

    // The series follow the answer.
    bed.set_state(1, SyncStatus::Offline).await;
    let member = |m: &str, member: &str| {
        let member = format!("sync_status=\"{member}\"");
        metric(m, "kco_target_sync_status", &["target=\"mina-1\"", &member])
    };
    bed.wait_metrics(10, "mina-1 OFFLINE", |m| {
        member(m, "OFFLINE") == 1.0 && member(m, "SYNCED") == 0.0
    })
    .await;

    // A pod that goes takes its series along; the other's stay.
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &bed.ns);
    pods.delete("mina-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let metrics = bed
        .wait_metrics(15, "mina-1's series gone", |m| {
            target_series(m, "mina-1").is_empty()
        })
        .await;
    assert!(!target_series(&metrics, "mina-0").is_empty(), "{metrics}");

    // And a deleted TargetApp takes all of them.
    bed.apps()
        .delete("mina", &DeleteParams::default())
        .await
        .unwrap();
    bed.wait_metrics(15, "no series after the TargetApp", |m| {
        !m.lines().any(|l| l.starts_with("kco_target_"))
    })
    .await;
}

/// The same notice published again is one Event whose series counts it; a
/// notice that differs in its note, or regards another object, is an Event of
/// its own.
#[tokio::test]
async fn a_repeated_notice_is_one_event_whose_series_counts_it() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use kco::events::{Notice, Reason, Recorder};

    let cp = ControlPlane::shared();
    let ns = cp.namespace("mon-series").await;
    let client = cp.admin().await;
    let recorder = Recorder::new(
        client.clone(),
        "kco-test",
        kco::metrics::Metrics::new().unwrap(),
    );
    let regarding = |name: &str| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.clone()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    };
    let notice = |name: &str, note: &str| Notice {
        reason: Reason::PollFailed,
        note: note.into(),
        regarding: regarding(name),
        related: None,
    };
    for (name, note) in [
        ("mina-0", "timed out"),
        ("mina-0", "timed out"),
        ("mina-0", "timed out"),
        ("mina-0", "refused"),
        ("mina-1", "timed out"),
    ] {
        recorder.publish(notice(name, note)).await.unwrap();
    }
    let events: Api<Event> = Api::namespaced(client, &ns);
    let mut seen: Vec<(String, String, i32)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.regarding.and_then(|r| r.name).unwrap_or_default(),
                e.note.unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("mina-0".into(), "refused".into(), 1),
            ("mina-0".into(), "timed out".into(), 3),
            ("mina-1".into(), "timed out".into(), 1),
        ]
    );
}
