//! TargetApps whose free-form fields nest deeper than a JSON decoder's recursion
//! limit, stored while no webhook refuses them (before it is installed, or while it
//! is down: `failurePolicy: Ignore`). KCO, started after they exist, must still
//! list, watch and poll every other tenant, and report the deep ones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use kco::targetapp::{Phase, TargetApp};
use kube::api::Api;
use serde_json::json;
use support::bed::Bed;
use support::fixtures;
use tokio_util::sync::CancellationToken;

/// `{"a":{"a":...1...}}`: a JSON value nesting `depth` objects.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// A TargetApp body whose only rule has `parameters` and `value` as given (raw JSON).
fn deep_app(name: &str, parameters: &str, value: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TargetApp","metadata":{{"name":"{name}"}},
            "spec":{{"selector":{{"matchLabels":{{"app":"mina"}}}},"actions":[{{"action":"restart_pod",
            "parameters":{parameters},"trigger":{{"field":"daemonStatus.syncStatus","condition":"in","value":{value}}}}}]}}}}"#
    )
    .into_bytes()
}

/// Creates a TargetApp from raw bytes (a typed client could not even build a value
/// this deep); returns the apiserver's refusal, if any.
async fn post(client: &kube::Client, namespace: &str, body: Vec<u8>) -> Result<(), String> {
    let request = http::Request::post(format!(
        "/apis/operator.kco.local/v1alpha1/namespaces/{namespace}/targetapps"
    ))
    .header("content-type", "application/json")
    .body(body)
    .unwrap();
    client
        .request_text(request)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn wait_phase(apps: &Api<TargetApp>, name: &str, phase: Phase, secs: u64) -> TargetApp {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let app = apps.get(name).await;
        if let Ok(app) = &app
            && app.status.as_ref().and_then(|s| s.phase) == Some(phase)
        {
            return app.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name} never reached {phase:?}: {:?}",
            app.map(|a| a.status)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn deep_targetapps_stored_past_the_webhook_break_no_other_tenant() {
    let healthy = [Bed::new("nest-ok", 1).await, Bed::new("nest-ok", 1).await];
    for bed in &healthy {
        bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
            .await;
    }
    let cp = healthy[0].cp;
    let client = cp.admin().await;
    // Named to come first in the apiserver's lists (by namespace, then name).
    let deep = cp.namespace("a-nest-deep").await;
    post(
        &client,
        &deep,
        deep_app(
            "deep-parameters",
            &format!("{{\"deep\":{}}}", nested(200)),
            "[\"OFFLINE\"]",
        ),
    )
    .await
    .expect("the apiserver stores 200 levels");
    // Close to the apiserver's own limit: it refuses a body nesting more than
    // 10,000 levels (Go's encoding/json), which is 9,995 below `value` here.
    post(&client, &deep, deep_app("deep-value", "{}", &nested(9_990)))
        .await
        .expect("the apiserver stores 9,995 levels");
    let refused = post(&client, &deep, deep_app("too-deep", "{}", &nested(9_996)))
        .await
        .expect_err("the apiserver refuses 10,001 levels");
    assert!(refused.contains("exceeded max depth"), "{refused}");

    // KCO starts after they exist: its first list holds them.
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut settings = kco::config::Settings::test();
    settings.graphql_timeout = Duration::from_millis(700);
    let config = cp.config(&support::User::Admin).await.unwrap();
    let running = match kco::operator::start(settings, config, cancel.clone()).await {
        Ok(running) => running,
        Err(e) => panic!("KCO does not start beside a deep TargetApp: {e:#}"),
    };

    for bed in &healthy {
        wait_phase(&bed.apps(), "mina", Phase::Monitoring, 30).await;
        let before = bed.sim.node(bed.nodes[0]).await.unwrap().requests;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = bed.sim.node(bed.nodes[0]).await.unwrap().requests;
        assert!(
            after >= before + 2,
            "{} polled {} times in 3 s at a 1 s interval",
            bed.ns,
            after - before
        );
    }

    let ready = fixtures::http_client()
        .get(format!("http://{}/readyz", running.admin_addr))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(ready, 200, "ready: the TargetApps were listed");

    // One more while KCO runs: it comes through the watch, not the list.
    post(
        &client,
        &deep,
        deep_app("deep-later", &format!("{{\"deep\":{}}}", nested(130)), "[]"),
    )
    .await
    .expect("stored");

    // The deep ones are reported where invalid TargetApps are: Failed, with the
    // field and the limit in the Ready condition.
    let apps: Api<TargetApp> = Api::namespaced(client.clone(), &deep);
    for (name, path, depth) in [
        ("deep-parameters", "spec.actions[0].parameters.deep", 200),
        ("deep-value", "spec.actions[0].trigger.value", 9_990),
        ("deep-later", "spec.actions[0].parameters.deep", 130),
    ] {
        let app = wait_phase(&apps, name, Phase::Failed, 30).await;
        let status = app.status.unwrap();
        let message = &status.conditions[0].message;
        assert_eq!(status.conditions[0].reason, "InvalidSpec", "{name}");
        assert!(
            message == &format!("{path}: nests {depth} levels deep; at most 32 are allowed"),
            "{name}: {message}"
        );
    }

    let metrics = fixtures::http_client()
        .get(format!("http://{}/metrics", running.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["targetapp_watch", "status_write"] {
        let line = format!("operator_kco_errors_total{{kind=\"{kind}\"}} ");
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or("0");
        assert_eq!(count, "0", "{kind} errors");
    }
}
