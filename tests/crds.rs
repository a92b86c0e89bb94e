//! The CRDs in `crds/` are exactly what `kco crds` generates from the Rust types,
//! and the real apiserver serves them: structural schema, defaults, printer columns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use kco::targetapp::{DEFAULT_STATE_QUERY, Phase, TargetApp, TargetAppStatus};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::controlplane::repo_path;
use support::{ControlPlane, User};

#[test]
fn the_crd_reference_is_generated_from_the_schemas() {
    let reference = kco::crds::reference();
    let committed =
        std::fs::read_to_string(repo_path("docs/reference/crds.md")).unwrap_or_default();
    assert!(
        committed == reference,
        "docs/reference/crds.md has drifted from the CRD schemas: run `./build.sh crds`"
    );
    for row in [
        "| `spec.pollingInterval` | integer |",
        "| `spec.actions[].trigger.condition` | string |",
        "| `spec.maxPollsPerSecond` | number |",
        "| `status.usage.targetApps` | integer |",
    ] {
        assert!(reference.contains(row), "{row} missing");
    }
}

#[test]
fn committed_crds_match_the_rust_types() {
    let files = kco::crds::files().unwrap();
    assert!(!files.is_empty());
    let mut on_disk: Vec<String> = std::fs::read_dir(repo_path("crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    generated.sort();
    assert_eq!(
        on_disk, generated,
        "crds/ holds other files than `kco crds` generates"
    );
    for (name, yaml) in files {
        let committed = std::fs::read_to_string(repo_path("crds").join(&name)).unwrap();
        assert!(
            committed == yaml,
            "crds/{name} has drifted from the Rust types: run `./build.sh crds` and commit the result"
        );
    }
}

#[test]
fn the_crds_command_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("name: targetapps.operator.kco.local"),
        "{yaml}"
    );
}

#[tokio::test]
async fn the_apiserver_accepts_targetapps_and_applies_the_defaults() {
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("crd-ta").await;
    let apps: Api<TargetApp> = Api::namespaced(cp.admin().await, &ns);
    let minimal: TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": "mina"},
        "spec": {"selector": {"matchLabels": {"app": "mina"}},
                 "actions": [{"trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"},
                              "action": "restart_pod", "parameters": {"gracePeriod": 30}}]}
    }))
    .unwrap();
    // Discovery of a new CRD can lag its Established condition by a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let created = loop {
        match apps.create(&PostParams::default(), &minimal).await {
            Ok(created) => break created,
            Err(e) if Instant::now() > deadline => panic!("create TargetApp: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // Read back raw, so that what we see is what the apiserver stored, not serde defaults.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        cp.admin().await,
        &ns,
        &kube::api::ApiResource::erase::<TargetApp>(&()),
    );
    let stored = raw.get("mina").await.unwrap().data;
    let spec = &stored["spec"];
    assert_eq!(spec["graphqlEndpoint"], "/graphql");
    assert_eq!(spec["port"], 3085);
    assert_eq!(spec["scheme"], "http");
    assert!(
        spec.get("pollingInterval").is_none(),
        "the operator's DEFAULT_POLLING_INTERVAL applies"
    );
    assert_eq!(spec["stateQuery"], DEFAULT_STATE_QUERY);
    assert_eq!(spec["schema"], json!({"mina": {}}));
    assert_eq!(spec["dryRun"], false);
    assert_eq!(spec["suspend"], false);
    assert_eq!(
        spec["actions"][0]["parameters"]["gracePeriod"], 30,
        "parameters must not be pruned"
    );
    assert_eq!(
        spec["actions"][0]["trigger"]["value"], "OFFLINE",
        "values must not be pruned"
    );
    assert_eq!(created.spec.polling_interval, None);

    // The schema refuses what it can: an unknown condition, an interval below 1, a bad duration.
    for (patch, what) in [
        (json!({"spec": {"pollingInterval": 0}}), "pollingInterval"),
        (json!({"spec": {"scheme": "gopher"}}), "scheme"),
        (
            json!({"spec": {"actions": [{"trigger": {"field": "x", "condition": "resembles"}, "action": "webhook"}]}}),
            "condition",
        ),
        (
            json!({"spec": {"actions": [{"trigger": {"field": "x", "condition": "exists", "for": "soon"}, "action": "webhook"}]}}),
            "for",
        ),
    ] {
        match apps
            .patch("mina", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(status.message.contains(what), "{what}: {}", status.message);
            }
            other => panic!("{what} should be refused, got {other:?}"),
        }
    }

    // The status subresource and the printer columns.
    let status = TargetAppStatus {
        phase: Some(Phase::Monitoring),
        targets_ready: Some("2/3".into()),
        ..Default::default()
    };
    apps.patch_status(
        "mina",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .unwrap();
    let table = cp
        .kubectl(&User::Admin)
        .unwrap()
        .args(["get", "ta", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "TARGETS", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["mina", "Monitoring", "2/3"], "{table}");
}
