//! Actions end to end against the real apiserver: they run as the TargetApp's
//! service account (RBAC decides), once per firing, and report what they did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kco::actions::{Dispatched, Dispatcher, Firing};
use kco::simulator::SyncStatus;
use kco::targetapp::TargetApp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::bed::Bed;
use support::fixtures;
use support::{ControlPlane, User};

/// Three simulated Mina pods, a `kco-actions` service account with the rights the
/// built-in actions need, one without any (`no-rights`), and an operator.
async fn bed(prefix: &str) -> Bed {
    let mut bed = Bed::new(prefix, 3).await;
    let (cp, ns) = (bed.cp, bed.ns.clone());
    let manifests = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: kco-actions, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: no-rights, namespace: {ns}}}
---
{role}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: kco-actions, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: kco-actions}}
subjects: [{{kind: ServiceAccount, name: kco-actions, namespace: {ns}}}]
"#,
        role = std::fs::read_to_string(support::controlplane::repo_path(
            "policies/tenant-actions-role.yaml"
        ))
        .unwrap()
        .split("---")
        .find(|doc| doc.contains("kind: Role\n"))
        .unwrap()
        .replace("namespace: mina", &format!("namespace: {ns}"))
    );
    let file = cp.dir.join(format!("{ns}-rbac.yaml"));
    std::fs::write(&file, manifests).unwrap();
    let out = cp
        .kubectl(&User::Admin)
        .unwrap()
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let config = cp.config(&User::Admin).await.unwrap();
    // The authorizer learns of new bindings through its informer: wait until it applies.
    let mut as_actions = config.clone();
    as_actions.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:kco-actions"));
    let pods_as_actions: Api<Pod> =
        Api::namespaced(kube::Client::try_from(as_actions).unwrap(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pods_as_actions.get("mina-0").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the kco-actions binding never applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    bed
}

fn rule(name: &str, sync: &str, action: &str, parameters: Value) -> Value {
    json!({"name": name, "action": action, "parameters": parameters, "cooldown": "1h",
           "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": sync}})
}

#[tokio::test]
async fn restart_pod_evicts_the_pod_that_fired_and_a_pdb_refusal_is_reported() {
    let bed = bed("act-restart").await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": "kco-actions",
                     "actions": [rule("offline", "OFFLINE", "restart_pod", json!({"gracePeriod": 0}))]}))
        .await;
    bed.set_state(1, SyncStatus::Offline).await;
    let note = bed.wait_event(20, "ActionSucceeded", "mina-1").await;
    assert!(
        note.contains(&format!("evict pod {}/mina-1", bed.ns)),
        "{note}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.pod_exists("mina-1").await {
        assert!(
            Instant::now() < deadline,
            "mina-1 should be gone after its eviction"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bed.pod_exists("mina-0").await && bed.pod_exists("mina-2").await,
        "only the pod that fired"
    );

    // A PodDisruptionBudget that forbids the eviction: the refusal is reported.
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        &bed.ns,
        &kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "policy",
            "v1",
            "PodDisruptionBudget",
        )),
    );
    let pdb: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "mina"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "mina"}}}
    }))
    .unwrap();
    let created = pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    // No controller-manager runs here: set the status its disruption controller would.
    let status = json!({"status": {"observedGeneration": created.metadata.generation, "disruptionsAllowed": 0,
                                   "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}});
    pdbs.patch_status("mina", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    bed.set_state(2, SyncStatus::Offline).await;
    let note = bed.wait_event(20, "ActionFailed", "mina-2").await;
    assert!(
        note.contains("(refused)") && note.contains("disruption budget"),
        "{note}"
    );
    assert!(
        bed.pod_exists("mina-2").await,
        "a refused eviction leaves the pod"
    );
}

#[tokio::test]
async fn actions_run_with_the_service_account_rights_only_and_dry_run_changes_nothing() {
    let bed = bed("act-rbac").await;
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": "no-rights",
                     "actions": [rule("offline", "OFFLINE", "restart_pod", json!({}))]}),
    )
    .await;
    bed.set_state(0, SyncStatus::Offline).await;
    let note = bed.wait_event(20, "ActionFailed", "mina-0").await;
    assert!(note.contains("(forbidden)"), "{note}");
    assert!(
        note.contains("system:serviceaccount:")
            && note.contains("no-rights")
            && note.contains("pods/eviction"),
        "{note}"
    );
    assert!(bed.pod_exists("mina-0").await, "nothing changed");

    // No service account at all: refused, never run with the operator's rights.
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "actions": [rule("offline2", "OFFLINE", "restart_pod", json!({}))]}),
    )
    .await;
    let note = bed
        .wait_event(20, "ActionFailed", "serviceAccountName is not set")
        .await;
    assert!(note.contains("mina-0"), "{note}");

    // Dry run with an account that may: the apiserver accepts, nothing changes.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1, "dryRun": true,
                     "serviceAccountName": "kco-actions",
                     "actions": [rule("offline3", "OFFLINE", "restart_pod", json!({"strategy": "delete"}))]}))
        .await;
    let note = bed
        .wait_event(20, "ActionSkipped", "dry run of restart_pod for mina-0")
        .await;
    assert!(
        note.contains("delete pod") && note.contains("nothing changed"),
        "{note}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(bed.pod_exists("mina-0").await, "a dry run deletes nothing");
}

#[tokio::test]
async fn scale_and_patch_change_their_objects_within_bounds() {
    let bed = bed("act-scale").await;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &bed.ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &bed.ns);
    let flags: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "mina-flags"}, "data": {"mode": "normal"}}),
    )
    .unwrap();
    configmaps
        .create(&PostParams::default(), &flags)
        .await
        .unwrap();

    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": "kco-actions",
                     "actions": [
                        rule("scale-up", "CATCHUP", "scale_deployment", json!({"name": "web", "delta": 5, "max": 3})),
                        rule("flag", "OFFLINE", "patch_resource",
                             json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "mina-flags",
                                    "patch": {"data": {"mode": "degraded"}}}))
                     ]}))
        .await;
    bed.set_state(0, SyncStatus::Catchup).await;
    let note = bed
        .wait_event(20, "ActionSucceeded", "scale_deployment")
        .await;
    assert!(note.contains("1 -> 3 replicas"), "clamped to max 3: {note}");
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(3)
    );

    bed.set_state(1, SyncStatus::Offline).await;
    bed.wait_event(20, "ActionSucceeded", "patch_resource")
        .await;
    let data = configmaps.get("mina-flags").await.unwrap().data.unwrap();
    assert_eq!(data["mode"], "degraded");

    // A patch aimed at another namespace is refused before anything is sent: the
    // monitor runs the admission checks too, so the TargetApp fails with the reason.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": "kco-actions",
                     "actions": [rule("elsewhere", "BOOTSTRAP", "patch_resource",
                             json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "mina-flags", "namespace": "kube-system",
                                    "patch": {"data": {"mode": "hijacked"}}}))]}))
        .await;
    bed.set_state(2, SyncStatus::Bootstrap).await;
    let apps: Api<TargetApp> = Api::namespaced(bed.client.clone(), &bed.ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = apps.get("mina").await.unwrap().status.unwrap_or_default();
        let message = status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if status.phase == Some(kco::targetapp::Phase::Failed) {
            assert!(
                message.contains("spec.actions[0].parameters.namespace"),
                "{message}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TargetApp should fail on the foreign namespace: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        configmaps.get("mina-flags").await.unwrap().data.unwrap()["mode"],
        "degraded"
    );
}

#[tokio::test]
async fn two_dispatchers_racing_on_one_firing_run_one_action() {
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("act-race").await;
    let client = cp.admin().await;
    for i in 0..2 {
        let pod = fixtures::mina_pod(&format!("mina-{i}"), json!({"app": "mina"}));
        fixtures::create_running_pod(&client, &ns, &pod, fixtures::loopback_ip()).await;
    }
    let apps: Api<TargetApp> = Api::namespaced(client.clone(), &ns);
    let app: TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp", "metadata": {"name": "mina"},
        "spec": {"selector": {"matchLabels": {"app": "mina"}}, "serviceAccountName": "default",
                 "actions": [rule("offline", "OFFLINE", "restart_pod", json!({"strategy": "delete"}))]}
    }))
    .unwrap();
    let app = Arc::new(apps.create(&PostParams::default(), &app).await.unwrap());
    // The impersonated `default` account may delete pods here.
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: deleter, namespace: {ns}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [pods], verbs: [get, delete]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: deleter, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: deleter}}\n\
         subjects: [{{kind: ServiceAccount, name: default, namespace: {ns}}}]\n"
    );
    let file = cp.dir.join(format!("{ns}-deleter.yaml"));
    std::fs::write(&file, role).unwrap();
    assert!(
        cp.kubectl(&User::Admin)
            .unwrap()
            .args(["apply", "-f"])
            .arg(&file)
            .status()
            .unwrap()
            .success()
    );
    let config = cp.config(&User::Admin).await.unwrap();
    // The authorizer learns of the binding through its informer: wait until it applies.
    let mut as_default = config.clone();
    as_default.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:default"));
    let pods_as_default: Api<Pod> =
        Api::namespaced(kube::Client::try_from(as_default).unwrap(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    while pods_as_default.get("mina-1").await.is_err() {
        assert!(Instant::now() < deadline, "the Role binding never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let firing = || Firing {
        app: app.clone(),
        rule_name: "offline".into(),
        rule: app.spec.actions[0].clone(),
        cooldown: Duration::from_secs(300),
        target: "mina-0".into(),
        pod: Some("mina-0".into()),
        state: None,
        correlation_id: "race".into(),
        now: k8s_openapi::jiff::Timestamp::now(),
    };
    let one = Dispatcher::new(client.clone(), config.clone(), Duration::from_secs(10));
    let two = Dispatcher::new(client.clone(), config, Duration::from_secs(10));
    let (a, b) = tokio::join!(one.dispatch(firing()), two.dispatch(firing()));
    let outcomes = [a.unwrap(), b.unwrap()];
    let ran: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Dispatched::Ran { result: Ok(_), .. }))
        .collect();
    let skipped = outcomes
        .iter()
        .filter(|o| matches!(o, Dispatched::Skipped(_)))
        .count();
    assert_eq!(
        (ran.len(), skipped),
        (1, 1),
        "exactly one action: {outcomes:?}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    assert!(pods.get_opt("mina-0").await.unwrap().is_none());
    assert!(pods.get_opt("mina-1").await.unwrap().is_some());
    let firings = apps.get("mina").await.unwrap().status.unwrap().firings;
    assert_eq!(firings.len(), 1, "{firings:?}");
    // A third dispatcher later, inside the cooldown, skips too.
    assert!(matches!(
        one.dispatch(firing()).await.unwrap(),
        Dispatched::Skipped(kco::actions::Skip::Cooldown { .. })
    ));
}
