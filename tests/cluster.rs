//! Actions end to end on the full cluster (kube-controller-manager,
//! kube-scheduler, kwok's nodes): what an action does is followed through to
//! its effect — a ReplicaSet re-creating an evicted pod, new pods of a scaled or
//! patched Deployment being scheduled, run and polled, a command run through a
//! kubelet endpoint — and KCO's status and Events tell the story.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kco::simulator::SyncStatus;
use kco::targetapp::TargetAppStatus;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::bed::Bed;
use support::cluster::{Cluster, MINA_CLIENT_STATUS};
use support::fixtures::{self, MINA_GRAPHQL_PORT};
use support::receiver::Receiver;

/// `replicas` Mina pods of the Deployment `mina`, the `kco-actions` account, and
/// an operator whose settings `tweak` may change.
async fn fleet(
    prefix: &str,
    replicas: usize,
    tweak: impl FnOnce(&mut kco::config::Settings, &str),
) -> Bed {
    let mut bed = Bed::on_cluster(prefix, replicas).await;
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

fn app(actions: Vec<Value>) -> Value {
    json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
           "serviceAccountName": "kco-actions", "actions": actions})
}

/// The pods the TargetApp's status lists, by name.
fn listed(status: &TargetAppStatus) -> BTreeSet<String> {
    status
        .targets
        .iter()
        .filter_map(|t| t.pod.clone())
        .collect()
}

fn names(pods: &[(String, Ipv4Addr)]) -> BTreeSet<String> {
    pods.iter().map(|(name, _)| name.clone()).collect()
}

/// Polls `check` every 200 ms until it gives `Some`, for up to `secs`.
async fn eventually<T, F: Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {secs}s\n{}",
            Cluster::shared().logs(10)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the status lists exactly `pods`, all up.
async fn wait_polled(bed: &Bed, pods: &BTreeSet<String>) {
    let ready = format!("{n}/{n}", n = pods.len());
    bed.wait_status(60, &format!("{pods:?} all up"), |s| {
        s.targets_ready.as_deref() == Some(ready.as_str())
            && &listed(s) == pods
            && s.targets.iter().all(|t| t.up)
    })
    .await;
}

/// How many GraphQL requests the simulated node behind `ip` has answered.
async fn requests(bed: &Bed, ip: Ipv4Addr) -> u64 {
    bed.sim
        .node((ip, MINA_GRAPHQL_PORT).into())
        .await
        .map_or(0, |n| n.requests)
}

#[tokio::test]
async fn the_cluster_runs_its_controllers_as_their_own_accounts_on_ready_fake_nodes() {
    let cluster = Cluster::shared();
    eprintln!(
        "full cluster started in {:.1}s (control plane {:.1}s) at {}",
        cluster.startup.as_secs_f64(),
        cluster.cp.startup.as_secs_f64(),
        cluster.cp.url
    );
    let client = cluster.cp.admin().await;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(nodes.len(), support::cluster::NODES);
    for node in &nodes {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "{:?} is Ready", node.metadata.name);
    }
    // `--use-service-account-credentials`: each controller acts as its own account.
    let accounts: BTreeSet<String> =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client, "kube-system")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|a| a.metadata.name)
            .collect();
    for controller in [
        "replicaset-controller",
        "deployment-controller",
        "disruption-controller",
        "generic-garbage-collector",
        "namespace-controller",
    ] {
        assert!(
            accounts.contains(controller),
            "{controller} in {accounts:?}"
        );
    }
}

#[tokio::test]
async fn an_evicted_pod_is_replaced_by_its_replicaset_and_the_new_pod_is_polled() {
    let bed = fleet("cl-restart", 2, |_, _| {}).await;
    bed.apply(app(vec![rule(
        "offline",
        "OFFLINE",
        "restart_pod",
        json!({}),
    )]))
    .await;
    let before = bed.running_pods().await;
    wait_polled(&bed, &names(&before)).await;
    let (victim, _) = before[0].clone();

    bed.set_pod_state(&victim, SyncStatus::Offline).await;
    let note = bed.wait_event(30, "ActionSucceeded", &victim).await;
    assert!(
        note.contains(&format!("evict pod {}/{victim}", bed.ns)),
        "{note}"
    );

    // The ReplicaSet controller creates a replacement, the scheduler places it,
    // kwok runs it: two pods again, the victim not among them.
    let after = eventually(60, "a replacement pod", || async {
        let pods = bed.running_pods().await;
        (pods.len() == 2 && !pods.iter().any(|(n, _)| *n == victim)).then_some(pods)
    })
    .await;
    let replacement: Vec<_> = after
        .iter()
        .filter(|(n, _)| !names(&before).contains(n))
        .cloned()
        .collect();
    assert_eq!(replacement.len(), 1, "one new pod: {before:?} -> {after:?}");
    let (new_pod, new_ip) = replacement[0].clone();
    let rs_owned = Api::<Pod>::namespaced(bed.client.clone(), &bed.ns)
        .get(&new_pod)
        .await
        .unwrap()
        .metadata
        .owner_references
        .unwrap_or_default()
        .iter()
        .any(|o| o.kind == "ReplicaSet");
    assert!(rs_owned, "{new_pod} is the ReplicaSet's");

    // KCO follows: the victim is lost, the replacement discovered and polled.
    bed.wait_serving(2, 30).await;
    wait_polled(&bed, &names(&after)).await;
    let lost = bed.wait_event(30, "TargetLost", &victim).await;
    assert!(lost.contains("stopped polling it"), "{lost}");
    // Polled at its own address. kwok hands a freed address out again first, so
    // a replacement on the victim's node often gets the victim's IP: KCO keys
    // targets by pod, not by address, and treats it as the new target it is.
    let found = bed.wait_event(30, "TargetDiscovered", &new_pod).await;
    let endpoint = format!("http://{new_ip}:{MINA_GRAPHQL_PORT}/graphql");
    assert!(found.contains(&endpoint), "{found}");
    let status = bed.status().await;
    let listed = status
        .targets
        .iter()
        .find(|t| t.pod.as_deref() == Some(new_pod.as_str()));
    assert_eq!(listed.map(|t| t.endpoint.as_str()), Some(endpoint.as_str()));
    eprintln!(
        "replacement {new_pod} at {new_ip} ({})",
        if before[0].1 == new_ip {
            "the victim's address, reused"
        } else {
            "a new address"
        }
    );
    eventually(30, "a poll of the replacement", || async {
        (requests(&bed, new_ip).await > 0).then_some(())
    })
    .await;
    // The replacement starts SYNCED (a fresh daemon): nothing fires again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bed.events("ActionSucceeded").await.len(),
        1,
        "one firing, one eviction"
    );
}

#[tokio::test]
async fn a_budget_computed_by_the_disruption_controller_refuses_the_restart() {
    let bed = fleet("cl-pdb", 2, |_, _| {}).await;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(bed.client.clone(), &bed.ns);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "mina"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "mina"}}}
    }))
    .unwrap();
    let created = pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    // Nobody but the disruption controller writes this status.
    let status = eventually(60, "the PDB's status", || async {
        let status = pdbs.get("mina").await.unwrap().status?;
        (status.observed_generation == created.metadata.generation
            && status.current_healthy == Some(2))
        .then_some(status)
    })
    .await;
    assert_eq!(
        (status.desired_healthy, status.disruptions_allowed),
        (Some(2), Some(0))
    );

    bed.apply(app(vec![rule(
        "offline",
        "OFFLINE",
        "restart_pod",
        json!({}),
    )]))
    .await;
    let pods = bed.running_pods().await;
    wait_polled(&bed, &names(&pods)).await;
    let (victim, _) = pods[1].clone();
    bed.set_pod_state(&victim, SyncStatus::Offline).await;
    let note = bed.wait_event(30, "ActionFailed", &victim).await;
    assert!(
        note.contains("(refused)") && note.contains("disruption budget"),
        "{note}"
    );
    assert_eq!(
        bed.running_pods().await,
        pods,
        "a refused eviction leaves the pods"
    );
}

#[tokio::test]
async fn scaled_up_pods_are_scheduled_and_polled_and_scaling_down_stops_their_polls() {
    let bed = fleet("cl-scale", 1, |_, _| {}).await;
    bed.apply(app(vec![
        rule(
            "more",
            "CATCHUP",
            "scale_deployment",
            json!({"name": "mina", "replicas": 3}),
        ),
        rule(
            "fewer",
            "BOOTSTRAP",
            "scale_deployment",
            json!({"name": "mina", "replicas": 1}),
        ),
    ]))
    .await;
    let first = bed.running_pods().await;
    wait_polled(&bed, &names(&first)).await;
    let (first_pod, _) = first[0].clone();

    bed.set_pod_state(&first_pod, SyncStatus::Catchup).await;
    let note = bed
        .wait_event(30, "ActionSucceeded", "scale_deployment")
        .await;
    assert!(note.contains("1 -> 3 replicas"), "{note}");
    let three = bed.wait_serving(3, 60).await;
    let nodes: BTreeSet<String> = Api::<Pod>::namespaced(bed.client.clone(), &bed.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert!(!nodes.is_empty(), "the scheduler placed the pods");
    wait_polled(&bed, &names(&three)).await;
    for (pod, ip) in &three {
        bed.wait_event(30, "TargetDiscovered", pod).await;
        eventually(30, &format!("a poll of {pod}"), || async {
            (requests(&bed, *ip).await > 0).then_some(())
        })
        .await;
    }

    // Back to one: the ReplicaSet controller picks which pods go; KCO stops
    // polling exactly those.
    bed.set_pod_state(&first_pod, SyncStatus::Bootstrap).await;
    let note = bed.wait_event(30, "ActionSucceeded", "3 -> 1").await;
    assert!(note.contains("scale_deployment"), "{note}");
    let one = bed.wait_serving(1, 60).await;
    wait_polled(&bed, &names(&one)).await;
    for (gone, _) in three.iter().filter(|p| !one.contains(p)) {
        bed.wait_event(30, "TargetLost", gone).await;
    }
}

#[tokio::test]
async fn a_patched_pod_template_rolls_out_and_kco_follows_the_new_pods() {
    let bed = fleet("cl-patch", 2, |_, _| {}).await;
    // The tenant lets its action account patch its Deployments.
    let rbac = bed.cp.dir.join(format!("{}-deployments.yaml", bed.ns));
    std::fs::write(
        &rbac,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: patch-deployments, namespace: {ns}}}\n\
             rules: [{{apiGroups: [apps], resources: [deployments], verbs: [get, patch]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: patch-deployments, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: patch-deployments}}\n\
             subjects: [{{kind: ServiceAccount, name: kco-actions, namespace: {ns}}}]\n",
            ns = bed.ns
        ),
    )
    .unwrap();
    bed.cp.apply(&rbac, &[]);
    bed.apply(app(vec![rule(
        "roll",
        "OFFLINE",
        "patch_resource",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "mina",
               "patch": {"spec": {"template": {"metadata": {"annotations": {"kco.local/rolled-by": "offline"}}}}}}),
    )]))
    .await;
    let before = bed.running_pods().await;
    wait_polled(&bed, &names(&before)).await;

    bed.set_pod_state(&before[0].0, SyncStatus::Offline).await;
    let note = bed
        .wait_event(30, "ActionSucceeded", "patch_resource")
        .await;
    assert!(note.contains("Deployment"), "{note}");

    // The Deployment controller makes a second ReplicaSet and replaces every pod.
    let after = eventually(90, "the rollout", || async {
        let pods = bed.running_pods().await;
        (pods.len() == 2 && names(&pods).is_disjoint(&names(&before))).then_some(pods)
    })
    .await;
    let sets = Api::<ReplicaSet>::namespaced(bed.client.clone(), &bed.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2, "old and new ReplicaSet");
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &bed.ns);
    for (name, _) in &after {
        let pod = pods.get(name).await.unwrap();
        let annotations = pod.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("kco.local/rolled-by").map(String::as_str),
            Some("offline"),
            "{name} runs the patched template"
        );
    }
    bed.wait_serving(2, 30).await;
    wait_polled(&bed, &names(&after)).await;
    for (name, _) in &after {
        bed.wait_event(30, "TargetDiscovered", name).await;
    }
    for (name, _) in &before {
        bed.wait_event(30, "TargetLost", name).await;
    }
}

#[tokio::test]
async fn exec_command_runs_through_the_kubelet_and_reports_its_exit_code_and_output() {
    let bed = fleet("cl-exec", 4, |s, _| {
        s.default_quota.allowed_actions.push("exec_command".into());
    })
    .await;
    bed.apply(app(vec![
        rule(
            "status",
            "CATCHUP",
            "exec_command",
            json!({"command": ["mina", "client", "status"], "reportOutput": true}),
        ),
        rule(
            "broken",
            "OFFLINE",
            "exec_command",
            json!({"command": ["sh", "-c", "echo cannot reach peers >&2; exit 3"]}),
        ),
        rule(
            "sidecar",
            "BOOTSTRAP",
            "exec_command",
            json!({"command": ["true"], "container": "sidecar"}),
        ),
        rule(
            "chatty",
            "LISTENING",
            "exec_command",
            json!({"command": ["sh", "-c", "yes peer | head -n 2000"], "reportOutput": true}),
        ),
    ]))
    .await;
    let pods = bed.running_pods().await;
    wait_polled(&bed, &names(&pods)).await;

    bed.set_pod_state(&pods[0].0, SyncStatus::Catchup).await;
    let note = bed.wait_event(30, "ActionSucceeded", &pods[0].0).await;
    assert!(note.contains("exit code 0"), "{note}");
    assert!(
        note.contains(&format!("stdout: {MINA_CLIENT_STATUS}")),
        "{note}"
    );

    // kwok reports a command that failed as an internal error naming its exit
    // status (a kubelet sends a NonZeroExitCode status, which KCO reports as
    // `exit code N`; see the exec_command unit tests).
    bed.set_pod_state(&pods[1].0, SyncStatus::Offline).await;
    let note = bed.wait_event(30, "ActionFailed", &pods[1].0).await;
    assert!(note.contains("exit status 3"), "{note}");

    bed.set_pod_state(&pods[2].0, SyncStatus::Bootstrap).await;
    let note = bed.wait_event(30, "ActionFailed", &pods[2].0).await;
    assert!(
        note.contains("the pod has no container \"sidecar\" (its containers: mina)"),
        "{note}"
    );

    // 10,000 bytes of output (9,999 once the last newline is trimmed): the Event
    // keeps the first 256 and counts the rest.
    bed.set_pod_state(&pods[3].0, SyncStatus::Listening).await;
    let note = bed.wait_event(30, "ActionSucceeded", &pods[3].0).await;
    assert!(note.contains("exit code 0; stdout: peer\npeer"), "{note}");
    assert!(note.ends_with("… (9743 more bytes)"), "{note}");
}

#[tokio::test]
async fn a_webhook_fires_for_a_pod_of_a_real_deployment() {
    let receiver_ip = std::net::IpAddr::V4(fixtures::loopback_ip());
    let bed = fleet("cl-hook", 2, |s, ns| {
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(receiver_ip)];
        s.dns_overrides = vec![(format!("hooks.{ns}.svc"), receiver_ip)];
    })
    .await;
    let host = format!("hooks.{}.svc", bed.ns);
    let receiver = Receiver::start(receiver_ip, &host).await;
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &bed.ns);
    let ca: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kco-webhook-ca"},
        "stringData": {"ca.crt": receiver.ca_pem}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &ca).await.unwrap();
    let url = format!("https://{host}:{}/kco", receiver.addr.port());
    bed.apply(app(vec![rule(
        "notify",
        "OFFLINE",
        "webhook",
        json!({"url": url, "caSecretRef": {"name": "kco-webhook-ca", "key": "ca.crt"}}),
    )]))
    .await;
    let pods = bed.running_pods().await;
    wait_polled(&bed, &names(&pods)).await;
    let (pod, _) = pods[1].clone();

    bed.set_pod_state(&pod, SyncStatus::Offline).await;
    let note = bed.wait_event(30, "ActionSucceeded", "webhook").await;
    assert!(note.contains("HTTP 200"), "{note}");
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["pod"], pod.as_str());
    assert_eq!(body["newValue"], "OFFLINE");
    let deployment = Api::<Deployment>::namespaced(bed.client.clone(), &bed.ns)
        .get("mina")
        .await
        .unwrap();
    assert!(
        pod.starts_with("mina-"),
        "{pod} is a pod of {:?}",
        deployment.metadata.name
    );
}
