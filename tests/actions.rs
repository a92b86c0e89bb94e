//! Actions end to end against the real apiserver: they run as the TargetApp's
//! service account (RBAC decides), once per firing, and report what they did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kco::actions::{Dispatched, Dispatcher, Firing};
use kco::simulator::SyncStatus;
use kco::targetapp::TargetApp;
use kco::tenancy::{Egress, Quota, Tenants};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::bed::Bed;
use support::fixtures;
use support::receiver::Receiver;
use support::{ControlPlane, User};

/// Three simulated Mina pods, a `kco-actions` service account with the rights the
/// built-in actions need, one without any (`no-rights`), and an operator.
async fn bed(prefix: &str) -> Bed {
    bed_with(prefix, |_, _| {}).await
}

/// [`bed`] with operator settings that `tweak` changes.
async fn bed_with(prefix: &str, tweak: impl FnOnce(&mut kco::config::Settings, &str)) -> Bed {
    let mut bed = Bed::new(prefix, 3).await;
    bed.grant_actions().await;
    let ns = bed.ns.clone();
    bed.start_operator(|s| {
        s.graphql_max_retries = 0;
        tweak(s, &ns);
    })
    .await;
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
    cp.apply(&file, &[]);
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
        field: "daemonStatus.syncStatus".into(),
        old: Some(json!("SYNCED")),
        new: Some(json!("OFFLINE")),
        state: None,
        correlation_id: "race".into(),
        now: k8s_openapi::jiff::Timestamp::now(),
        after: None,
        false_at: None,
    };
    let dispatcher = |config: kube::Config| {
        let tenants = Tenants::new(Quota::default());
        let egress = Egress::new(
            tenants.clone(),
            kco::tenancy::Apiserver::default(),
            Arc::default(),
            "kco-test".into(),
            None,
        );
        Dispatcher::new(
            client.clone(),
            config,
            Duration::from_secs(10),
            tenants,
            egress,
        )
    };
    let one = dispatcher(config.clone());
    let two = dispatcher(config);
    let (a, b) = tokio::join!(one.dispatch(firing()), two.dispatch(firing()));
    let outcomes = [a.unwrap(), b.unwrap()];
    let ran: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Dispatched::Ran { steps, .. } if steps.iter().all(|s| s.result.is_ok())))
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
    assert!(
        firings[0].done.is_some(),
        "the finished action is recorded: {firings:?}"
    );
    // A third dispatcher later, in the same episode (its end not recorded), skips
    // too; so does one in a new episode inside the cooldown.
    assert!(matches!(
        one.dispatch(firing()).await.unwrap(),
        Dispatched::Skipped(kco::actions::Skip::AlreadyFired { pending: true, .. })
    ));
    let racing_at = apps
        .get_status("mina")
        .await
        .unwrap()
        .status
        .unwrap()
        .firings[0]
        .time
        .0;
    let next_episode = Firing {
        false_at: Some(racing_at + k8s_openapi::jiff::SignedDuration::from_secs(1)),
        now: racing_at + k8s_openapi::jiff::SignedDuration::from_secs(2),
        ..firing()
    };
    assert!(matches!(
        one.dispatch(next_episode).await.unwrap(),
        Dispatched::Skipped(kco::actions::Skip::Cooldown { .. })
    ));

    // A replica that recorded a firing for mina-1 and died before its action
    // finished: a pod restart is not repeated without knowing its outcome
    // (at-most-once for actions that are not resumable).
    let died_at =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
    let died_at = k8s_openapi::jiff::Timestamp::from_second(died_at.as_second()).unwrap();
    unfinished_firing(&apps, "offline", "mina-1", died_at).await;
    let again = Firing {
        target: "mina-1".into(),
        pod: Some("mina-1".into()),
        cooldown: Duration::ZERO,
        ..firing()
    };
    assert!(matches!(
        one.dispatch(again.clone()).await.unwrap(),
        Dispatched::Skipped(kco::actions::Skip::AlreadyFired { at, pending: true }) if at == died_at
    ));
    assert!(
        pods.get_opt("mina-1").await.unwrap().is_some(),
        "not restarted"
    );

    // Its replica's end of that episode, seen after this firing, is recorded: the
    // firing came while the episode went on, so it is still a repeat (pending: an
    // earlier end may yet come from another replica).
    let seconds = |s: i64| k8s_openapi::jiff::SignedDuration::from_secs(s);
    let later = again.now + seconds(5);
    one.clear(&app, "offline", "mina-1", died_at, later)
        .await
        .unwrap();
    assert!(matches!(
        one.dispatch(again.clone()).await.unwrap(),
        Dispatched::Skipped(kco::actions::Skip::AlreadyFired { at, pending: true }) if at == died_at
    ));
    let cleared = || async {
        let status = apps.get_status("mina").await.unwrap().status.unwrap();
        let record = status
            .firings
            .iter()
            .find(|f| f.target == "mina-1")
            .unwrap()
            .clone();
        assert_eq!(
            record.time.0, died_at,
            "still the firing that died: {record:?}"
        );
        record.cleared.map(|c| c.0.as_second())
    };
    // An end in the firing's own second proves nothing; a later view of the end
    // changes nothing.
    one.clear(&app, "offline", "mina-1", died_at, died_at)
        .await
        .unwrap();
    one.clear(&app, "offline", "mina-1", died_at, later + seconds(3))
        .await
        .unwrap();
    assert_eq!(cleared().await, Some(later.as_second()));
    // The replica waiting to adopt that firing (its own firing at `again.now`)
    // writes the end it saw under its own firing's time: it lands on the recorded
    // firing before it, and an earlier end wins.
    one.clear(&app, "offline", "mina-1", again.now, again.now + seconds(2))
        .await
        .unwrap();
    assert_eq!(cleared().await, Some((again.now + seconds(2)).as_second()));
    // A firing after the recorded one is another episode's: nothing changes.
    one.clear(&app, "offline", "mina-1", died_at - seconds(10), again.now)
        .await
        .unwrap();
    assert_eq!(cleared().await, Some((again.now + seconds(2)).as_second()));
    // The replica that saw the episode end before `again` writes it late: `again`
    // turns out to be a new episode, and runs.
    one.clear(&app, "offline", "mina-1", died_at, again.now - seconds(1))
        .await
        .unwrap();
    assert_eq!(cleared().await, Some((again.now - seconds(1)).as_second()));
    assert!(
        matches!(
            one.dispatch(again).await.unwrap(),
            Dispatched::Ran { steps, .. } if steps.iter().all(|s| s.result.is_ok())
        ),
        "a new episode after the recorded end"
    );
}

/// A rule's actions run in order, each recorded in status as it finishes; a
/// failed one stops the rest; a replica taking an unfinished firing over runs on
/// from the action under way (when it is safe to repeat), never again the ones
/// recorded as finished.
#[tokio::test]
async fn a_rule_runs_its_actions_in_order_and_a_failed_one_stops_the_rest() {
    let receiver_ip = std::net::IpAddr::V4(fixtures::loopback_ip());
    let bed = bed_with("act-steps", |s, ns| {
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(receiver_ip)];
        s.dns_overrides = vec![(format!("hooks.{ns}.svc"), receiver_ip)];
    })
    .await;
    let host = format!("hooks.{}.svc", bed.ns);
    let receiver = Receiver::start(receiver_ip, &host).await;
    secret(&bed, "kco-webhook-ca", "ca.crt", receiver.ca_pem.as_bytes()).await;
    let hook = json!({"url": format!("https://{host}:{}/kco", receiver.addr.port()),
                      "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}});
    let restart = json!({"action": "restart_pod", "parameters": {"strategy": "delete"}});
    let mut page_then_restart = rule("page-then-restart", "OFFLINE", "webhook", hook.clone());
    page_then_restart["then"] = json!([restart]);
    let mut restart_then_page = rule(
        "restart-then-page",
        "CATCHUP",
        "restart_pod",
        json!({"strategy": "delete"}),
    );
    restart_then_page["then"] = json!([{"action": "webhook", "parameters": hook}]);
    let spec = |suspend: bool| {
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1, "suspend": suspend,
               "serviceAccountName": "kco-actions",
               "actions": [page_then_restart.clone(), restart_then_page.clone()]})
    };
    bed.apply(spec(false)).await;
    bed.wait_status(30, "3/3 up", |s| s.targets_ready.as_deref() == Some("3/3"))
        .await;

    // Both actions, in order: the receiver is called while mina-1 still runs.
    bed.set_state(1, SyncStatus::Offline).await;
    let note = bed
        .wait_event(
            20,
            "ActionSucceeded",
            "restart_pod for mina-1 (rule page-then-restart, step 2 of 2)",
        )
        .await;
    assert!(note.contains("delete pod"), "{note}");
    bed.wait_event(
        5,
        "ActionSucceeded",
        "webhook for mina-1 (rule page-then-restart, step 1 of 2)",
    )
    .await;
    assert!(!bed.pod_exists("mina-1").await);
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (body["target"].as_str(), body["step"].as_u64()),
        (Some("mina-1"), Some(1))
    );
    let record = |status: &kco::targetapp::TargetAppStatus, target: &str| {
        status.firings.iter().find(|f| f.target == target).cloned()
    };
    let recorded = record(&bed.status().await, "mina-1").unwrap();
    let steps: Vec<_> = recorded
        .steps
        .iter()
        .map(|s| (s.action.as_str(), s.result))
        .collect();
    use kco::targetapp::StepOutcome::{Failed, Succeeded};
    assert_eq!(
        steps,
        [("webhook", Succeeded), ("restart_pod", Succeeded)],
        "{recorded:?}"
    );
    assert!(recorded.done.is_some(), "{recorded:?}");

    // The receiver fails every attempt: the restart after it does not run.
    receiver.fail_next(3);
    bed.set_state(2, SyncStatus::Offline).await;
    let note = bed
        .wait_event(
            20,
            "ActionSkipped",
            "restart_pod for mina-2 (rule page-then-restart, step 2 of 2) not run",
        )
        .await;
    assert!(note.contains("step 1 (webhook) failed"), "{note}");
    bed.wait_event(
        5,
        "ActionFailed",
        "webhook for mina-2 (rule page-then-restart, step 1 of 2) failed",
    )
    .await;
    assert!(
        bed.pod_exists("mina-2").await,
        "not restarted after the failed webhook"
    );
    let recorded = record(&bed.status().await, "mina-2").unwrap();
    assert_eq!(recorded.steps.len(), 1, "{recorded:?}");
    assert_eq!(recorded.steps[0].result, Failed);
    assert!(recorded.done.is_some(), "{recorded:?}");

    // A replica recorded mina-0's restart (step 1) and stopped while it called the
    // webhook (step 2). A replica taking over, in the same episode, calls the
    // webhook as that firing and restarts nothing.
    bed.apply(spec(true)).await;
    bed.wait_status(20, "suspended", |s| {
        s.phase == Some(kco::targetapp::Phase::Suspended)
    })
    .await;
    bed.set_state(0, SyncStatus::Catchup).await;
    let died_at = Timestamp::from_second(Timestamp::now().as_second() - 60).unwrap();
    let mut unfinished =
        kco::targetapp::RuleFiring::new("restart-then-page".into(), "mina-0".into(), died_at);
    unfinished.steps.push(kco::targetapp::StepResult {
        action: "restart_pod".into(),
        result: Succeeded,
        reason: None,
        time: Time(died_at),
    });
    let mut current = bed.apps().get_status("mina").await.unwrap();
    current
        .status
        .get_or_insert_default()
        .firings
        .push(unfinished);
    bed.apps()
        .replace_status("mina", &PostParams::default(), &current)
        .await
        .unwrap();
    let calls = receiver.count();
    bed.apply(spec(false)).await;
    let note = bed
        .wait_event(
            30,
            "ActionSucceeded",
            "webhook for mina-0 (rule restart-then-page, step 2 of 2)",
        )
        .await;
    assert!(
        note.contains(&format!("resumed the firing of {died_at}")),
        "{note}"
    );
    assert!(
        bed.pod_exists("mina-0").await,
        "the recorded restart is not run again"
    );
    let got = receiver.received();
    assert_eq!(got.len(), calls + 1, "{got:?}");
    let body: Value = serde_json::from_slice(&got[calls].body).unwrap();
    assert_eq!(
        (body["step"].as_u64(), body["firedAt"].as_str()),
        (Some(2), Some(died_at.to_string().as_str()))
    );
    let recorded = record(&bed.status().await, "mina-0").unwrap();
    let steps: Vec<_> = recorded
        .steps
        .iter()
        .map(|s| (s.action.as_str(), s.result))
        .collect();
    assert_eq!(
        steps,
        [("restart_pod", Succeeded), ("webhook", Succeeded)],
        "{recorded:?}"
    );
    assert!(
        recorded.done.is_some() && recorded.resumed.is_some(),
        "{recorded:?}"
    );
    assert_eq!(
        bed.events("ActionSkipped")
            .await
            .iter()
            .filter(|(n, _)| n.contains("mina-0"))
            .count(),
        0
    );
}

/// Adds to status a firing of `rule` for `target` at `at` that a replica recorded
/// but never finished (it died midway).
async fn unfinished_firing(
    apps: &Api<TargetApp>,
    rule: &str,
    target: &str,
    at: k8s_openapi::jiff::Timestamp,
) {
    let mut current = apps.get_status("mina").await.unwrap();
    let mut status = current.status.clone().unwrap_or_default();
    status.firings.push(kco::targetapp::RuleFiring::new(
        rule.into(),
        target.into(),
        at,
    ));
    current.status = Some(status);
    apps.replace_status("mina", &PostParams::default(), &current)
        .await
        .unwrap();
}

/// Creates a Secret with one key in the bed's namespace.
async fn secret(bed: &Bed, name: &str, key: &str, value: &[u8]) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(bed.client.clone(), &bed.ns);
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([(key.to_owned(), k8s_openapi::ByteString(value.to_vec()))].into()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn webhook_sends_the_signed_body_once_per_firing_and_refuses_forbidden_addresses() {
    let receiver_ip = std::net::IpAddr::V4(fixtures::loopback_ip());
    // The receiver stands for a Service of the bed's namespace: the test resolver
    // answers its name with the receiver's loopback address, which this operator's
    // default quota allows (and nothing else on loopback). `evil.example.com`
    // resolves to 127.0.0.1, the apiserver's address.
    let bed = bed_with("act-hook", |s, ns| {
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(receiver_ip)];
        s.dns_overrides = vec![
            (format!("hooks.{ns}.svc"), receiver_ip),
            ("evil.example.com".to_owned(), "127.0.0.1".parse().unwrap()),
        ];
    })
    .await;
    let host = format!("hooks.{}.svc", bed.ns);
    let receiver = Receiver::start(receiver_ip, &host).await;
    secret(&bed, "kco-webhook-hmac", "key", b"tenant-secret").await;
    secret(&bed, "kco-webhook-ca", "ca.crt", receiver.ca_pem.as_bytes()).await;
    secret(&bed, "kco-webhook-auth", "token", b"pd-token\n").await;
    let url = format!("https://{host}:{}/kco", receiver.addr.port());
    // PagerDuty's integration: its URL and its routing key, in one Secret.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(bed.client.clone(), &bed.ns);
    let pagerduty = serde_json::from_value(json!({
        "metadata": {"name": "kco-webhook-url"},
        "stringData": {"url": format!("{url}/page\n"), "routing": "R0UT1NG"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &pagerduty)
        .await
        .unwrap();
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "serviceAccountName": "kco-actions",
        "actions": [
           rule("notify", "OFFLINE", "webhook",
                json!({"url": url, "headers": {"X-Team": "chain"},
                       "secretRef": {"name": "kco-webhook-hmac", "key": "key"},
                       "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}})),
           rule("retry", "CATCHUP", "webhook",
                json!({"url": url, "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"},
                       "auth": {"secretRef": {"name": "kco-webhook-auth", "key": "token"}, "scheme": "Bearer"}})),
           rule("evil", "BOOTSTRAP", "webhook",
                json!({"url": "https://evil.example.com/x"})),
           rule("page", "LISTENING", "webhook",
                json!({"urlSecretRef": {"name": "kco-webhook-url", "key": "url"},
                       "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"},
                       "format": "pagerduty", "severity": "critical",
                       "routingKeySecretRef": {"name": "kco-webhook-url", "key": "routing"}})),
        ]}),
    )
    .await;
    // Every target polled once (SYNCED) before the state flips: the body then
    // carries the old value too.
    bed.wait_status(30, "3/3 up", |s| s.targets_ready.as_deref() == Some("3/3"))
        .await;

    bed.set_state(1, SyncStatus::Offline).await;
    let note = bed.wait_event(20, "ActionSucceeded", "webhook").await;
    assert!(
        note.contains("HTTP 200") && note.contains("attempt 1"),
        "{note}"
    );
    // Later polls see the same state: edge-triggered, nothing more is sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    let request = &got[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/kco")
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["targetApp"], "mina");
    assert_eq!(body["namespace"], bed.ns.as_str());
    assert_eq!(body["pod"], "mina-1");
    assert_eq!(body["rule"], "notify");
    assert_eq!(body["field"], "daemonStatus.syncStatus");
    assert_eq!(body["oldValue"], "SYNCED");
    assert_eq!(body["newValue"], "OFFLINE");
    let key = body["idempotencyKey"].as_str().unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(request.headers["idempotency-key"], key);
    assert_eq!(request.headers["x-team"], "chain");
    let signature = request.headers["x-kco-signature"].to_str().unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    assert_eq!(
        kco::actions::webhook::verify(
            signature,
            b"tenant-secret",
            &request.body,
            now,
            kco::actions::webhook::SIGNATURE_TOLERANCE
        ),
        Ok(()),
        "the time and body are signed with the tenant's key: {signature}"
    );
    assert!(
        request.headers.get("authorization").is_none(),
        "no credential of any kind"
    );

    // A 503 is retried with the same idempotency key; the receiver sees two copies
    // of one delivery, and the action succeeds on the second attempt.
    receiver.fail_next(1);
    bed.set_state(2, SyncStatus::Catchup).await;
    let note = bed.wait_event(20, "ActionSucceeded", "attempt 2").await;
    assert!(note.contains("HTTP 200"), "{note}");
    let got = receiver.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[1].headers["idempotency-key"],
        got[2].headers["idempotency-key"]
    );
    assert_ne!(got[1].headers["idempotency-key"], key);
    assert!(
        got[1].headers.get("x-kco-signature").is_none(),
        "no secretRef, no signature"
    );
    // The receiver's credential, from the tenant's Secret, on every attempt, and
    // nowhere in what KCO reports.
    for attempt in &got[1..] {
        assert_eq!(attempt.headers["authorization"], "Bearer pd-token");
    }
    assert!(!note.contains("pd-token"), "{note}");

    // A name that resolves to a forbidden address is refused at connect time.
    bed.set_state(0, SyncStatus::Bootstrap).await;
    let note = bed.wait_event(20, "ActionFailed", "evil.example.com").await;
    assert!(
        note.contains("(not_allowed)") && note.contains("resolves to a forbidden address"),
        "{note}"
    );
    assert_eq!(receiver.received().len(), 3, "nothing else was sent");

    // A PagerDuty event to a URL kept in a Secret: the event as PagerDuty's
    // Events API v2 reads it, and the URL nowhere in what KCO reports.
    bed.set_state(2, SyncStatus::Listening).await;
    let note = bed.wait_event(20, "ActionSucceeded", "rule page").await;
    assert!(
        note.contains("(the URL in Secret kco-webhook-url): HTTP 200") && !note.contains(&host),
        "{note}"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 4, "{got:?}");
    let page = &got[3];
    assert_eq!(page.path, "/kco/page");
    let event: Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(event["routing_key"], "R0UT1NG");
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(
        event["dedup_key"],
        page.headers["idempotency-key"].to_str().unwrap()
    );
    assert_eq!(event["payload"]["severity"], "critical");
    assert_eq!(event["payload"]["source"], format!("{}/mina", bed.ns));
    assert_eq!(event["payload"]["custom_details"]["newValue"], "LISTENING");

    // A replica recorded a firing of `notify` for mina-0 and died before it
    // finished: the replica that sees the episode next sends it as that firing
    // (same firedAt, so the same idempotency key), and records that it finished.
    // The take-over is modelled by suspending the TargetApp meanwhile: when it is
    // resumed, its monitor starts again from status, like a replica taking over
    // (one that had seen the condition false since would fire a new episode).
    let suspend = |on: bool| {
        let apps = bed.apps();
        async move {
            apps.patch(
                "mina",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": on}})),
            )
            .await
            .unwrap();
        }
    };
    suspend(true).await;
    bed.wait_status(20, "Suspended", |s| {
        s.phase == Some(kco::targetapp::Phase::Suspended)
    })
    .await;
    // (A minute ago, inside the rule's one-hour cooldown: an unfinished firing is
    // resumed at once, not when the cooldown ends.)
    let died_at =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
    let died_at = k8s_openapi::jiff::Timestamp::from_second(died_at.as_second()).unwrap();
    unfinished_firing(&bed.apps(), "notify", "mina-0", died_at).await;
    bed.set_state(0, SyncStatus::Offline).await;
    suspend(false).await;
    let note = bed
        .wait_event(20, "ActionSucceeded", "resumed the firing")
        .await;
    assert!(note.contains(&died_at.to_string()), "{note}");
    let got = receiver.received();
    assert_eq!(got.len(), 5, "{got:?}");
    let body: Value = serde_json::from_slice(&got[4].body).unwrap();
    assert_eq!(body["firedAt"], died_at.to_string());
    assert_eq!(body["pod"], "mina-0");
    let record = bed
        .status()
        .await
        .firings
        .into_iter()
        .find(|f| f.rule == "notify" && f.target == "mina-0")
        .unwrap();
    assert_eq!(record.time.0, died_at);
    assert!(
        record.done.is_some() && record.resumed.is_some(),
        "{record:?}"
    );
}

#[tokio::test]
async fn exec_command_runs_as_the_service_account_and_fails_clearly_without_a_kubelet() {
    let bed = bed_with("act-exec", |s, _| {
        s.default_quota.allowed_actions.push("exec_command".into());
    })
    .await;
    let exec = |name: &str, sync: &str, account: &str| {
        (
            rule(
                name,
                sync,
                "exec_command",
                json!({"command": ["mina", "client", "status"]}),
            ),
            account.to_owned(),
        )
    };
    // Without the right: refused by RBAC, as the impersonated account.
    let (r, account) = exec("probe", "OFFLINE", "no-rights");
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": account, "actions": [r]}),
    )
    .await;
    bed.set_state(0, SyncStatus::Offline).await;
    let note = bed.wait_event(20, "ActionFailed", "exec").await;
    assert!(note.contains("(forbidden)"), "{note}");
    assert!(note.contains("mina-0"), "{note}");
    // The apiserver's own words say which right is missing, for whom.
    assert!(note.contains("create pods/exec refused"), "{note}");
    assert!(
        note.contains("system:serviceaccount:") && note.contains("no-rights"),
        "{note}"
    );

    // With the right: the apiserver accepts the request and then cannot reach a
    // kubelet (none runs here): a clear failure, not a hang or a panic.
    let (r, account) = exec("probe2", "CATCHUP", "kco-actions");
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": account, "actions": [r]}),
    )
    .await;
    bed.set_state(1, SyncStatus::Catchup).await;
    let note = bed.wait_event(20, "ActionFailed", "mina-1").await;
    assert!(
        note.contains("exec \"mina client status\" in pod"),
        "{note}"
    );
    assert!(!note.contains("(forbidden)"), "{note}");

    // Dry run: the apiserver is asked whether the account may exec; nothing runs.
    let (r, account) = exec("probe3", "BOOTSTRAP", "kco-actions");
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1, "dryRun": true,
                     "serviceAccountName": account, "actions": [r]}),
    )
    .await;
    bed.set_state(2, SyncStatus::Bootstrap).await;
    let note = bed.wait_event(20, "ActionSkipped", "mina-2").await;
    assert!(note.contains("the apiserver allows it"), "{note}");
}
