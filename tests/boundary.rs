//! The tenant boundary, tried from a namespace admin's seat against the real
//! apiserver: Service names that lead elsewhere (ExternalName, hand-written
//! EndpointSlices), pods on their node's network, object names that are paths,
//! the replica ceiling through both actions that set replicas, and a quota
//! tightened while its tenant's targets are being polled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kco::simulator::NodeState;
use kco::targetapp::Phase;
use kco::tenancy::TenantQuota;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::bed::Bed;
use support::fixtures::{self, MINA_GRAPHQL_PORT};

/// A TenantQuota named after the bed's namespace that selects only it.
async fn quota(bed: &Bed, spec: Value) {
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    let label = json!({"metadata": {"labels": {"kco-test-tenant": bed.ns}}});
    namespaces
        .patch(&bed.ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let mut spec = spec;
    spec["namespaceSelector"] = json!({"matchLabels": {"kco-test-tenant": bed.ns}});
    let quota: TenantQuota = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TenantQuota",
        "metadata": {"name": bed.ns}, "spec": spec
    }))
    .unwrap();
    Api::<TenantQuota>::all(bed.client.clone())
        .patch(
            &bed.ns,
            &PatchParams::apply("kco-test").force(),
            &Patch::Apply(&quota),
        )
        .await
        .unwrap();
}

/// Creates `object` (JSON) through the apiserver.
async fn create<K>(bed: &Bed, object: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(object).unwrap();
    Api::<K>::namespaced(bed.client.clone(), &bed.ns)
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
}

/// Waits for the TargetApp to be Failed with `needle` in its condition's message.
async fn wait_failed(bed: &Bed, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = bed.status().await;
        let message = status
            .conditions
            .iter()
            .map(|c| c.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        if status.phase == Some(Phase::Failed) && message.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never Failed with {needle:?}: {:?} {message}",
            status.phase
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rule(name: &str, sync: &str, action: &str, parameters: Value) -> Value {
    json!({"name": name, "action": action, "parameters": parameters, "cooldown": "1h",
           "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": sync}})
}

#[tokio::test]
async fn a_tenants_service_names_lead_only_to_its_own_pods() {
    let mut bed = Bed::new("tb-services", 0).await;
    let other = Bed::new("tb-services-other", 0).await;
    // Pods at documentation addresses (192.0.2.0/24): EndpointSlices take no
    // loopback address, and KCO refuses these before connecting, so the test
    // sees how far a name got without a packet leaving the machine.
    let own: std::net::Ipv4Addr = "192.0.2.10".parse().unwrap();
    let stranger: std::net::Ipv4Addr = "192.0.2.20".parse().unwrap();
    let pod = fixtures::mina_pod("web-0", json!({"app": "web"}));
    fixtures::create_running_pod(&bed.client, &bed.ns, &pod, own).await;
    fixtures::create_running_pod(&other.client, &other.ns, &pod, stranger).await;

    create::<Service>(&bed, json!({"metadata": {"name": "alias"},
        "spec": {"type": "ExternalName", "externalName": format!("web.{}.svc.cluster.local", other.ns)}}))
    .await;
    for (name, address) in [("borrowed", stranger), ("web", own)] {
        create::<Service>(
            &bed,
            json!({"metadata": {"name": name},
            "spec": {"clusterIP": "None", "ports": [{"port": MINA_GRAPHQL_PORT}]}}),
        )
        .await;
        create::<EndpointSlice>(
            &bed,
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"port": MINA_GRAPHQL_PORT}],
            "endpoints": [{"addresses": [address.to_string()]}]}),
        )
        .await;
    }
    bed.start_operator(|s| s.graphql_max_retries = 0).await;

    let url = |service: &str| {
        format!(
            "http://{service}.{}.svc:{MINA_GRAPHQL_PORT}/graphql",
            bed.ns
        )
    };
    for (service, needle) in [
        // An alias to anywhere: refused as such.
        ("alias", "Service alias is of type ExternalName"),
        // A hand-written slice to another tenant's pod: refused as such.
        (
            "borrowed",
            "Service borrowed leads to 192.0.2.20, which is not the address of a pod in the namespace",
        ),
        // The tenant's own headless Service, read through the apiserver: it leads
        // to its pod, whose address then meets the endpoint policy.
        (
            "web",
            "resolves to a forbidden address: 192.0.2.10 is a documentation address",
        ),
    ] {
        bed.apply(json!({"graphqlEndpoint": url(service), "pollingInterval": 1}))
            .await;
        let note = bed.wait_event(20, "PollFailed", needle).await;
        assert!(
            note.contains("not allowed by the tenant's endpoint policy"),
            "{note}"
        );
    }
}

#[tokio::test]
async fn a_pod_on_its_nodes_network_is_polled_only_where_the_policy_allows_it() {
    let mut bed = Bed::new("tb-hostnet", 0).await;
    let ip = fixtures::loopback_ip();
    let node = bed
        .sim
        .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
        .await
        .unwrap();
    bed.nodes.push(node.address);
    let mut pod = fixtures::mina_pod("mina-0", json!({"app": "mina"}));
    if let Some(spec) = pod.spec.as_mut() {
        spec.host_network = Some(true);
    }
    fixtures::create_running_pod(&bed.client, &bed.ns, &pod, ip).await;
    // As a kubelet reports a host-network pod: its IP is its node's.
    let status = json!({"status": {"hostIP": ip.to_string()}});
    Api::<Pod>::namespaced(bed.client.clone(), &bed.ns)
        .patch_status("mina-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    // (Here the node's address is loopback, refused as such; a real node's is
    // refused as "the address of the pod's node".)
    let note = bed
        .wait_event(
            20,
            "PollFailed",
            "not allowed by the tenant's endpoint policy",
        )
        .await;
    assert!(note.contains(&ip.to_string()), "{note}");
    assert_eq!(bed.sim.node(node.address).await.unwrap().requests, 0);

    // A cluster admin who allows that address: polled.
    quota(
        &bed,
        json!({"endpointPolicy": {"allowedCIDRs": [format!("{ip}/32")]}}),
    )
    .await;
    bed.wait_status(30, "1/1 up", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
}

#[tokio::test]
async fn a_tightened_quota_stops_url_polls_within_an_interval() {
    let mut bed = Bed::new("tb-tighten", 1).await;
    let address = bed.nodes[0];
    quota(
        &bed,
        json!({"endpointPolicy": {"allowedCIDRs": [format!("{}/32", address.ip())]}}),
    )
    .await;
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    bed.apply(
        json!({"graphqlEndpoint": format!("http://{address}/graphql"), "pollingInterval": 1}),
    )
    .await;
    bed.wait_status(30, "1/1 up", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;

    // The cluster admin takes the range back.
    quota(&bed, json!({"endpointPolicy": {"allowedCIDRs": []}})).await;
    let note = bed
        .wait_event(
            10,
            "PollFailed",
            "not allowed by the tenant's endpoint policy",
        )
        .await;
    assert!(note.contains("127.") && note.contains("loopback"), "{note}");
    // No poll reaches the target any more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.sim.reset_requests(address).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.sim.node(address).await.unwrap().requests, 0);
}

#[tokio::test]
async fn the_replica_ceiling_holds_through_both_actions_and_names_stay_names() {
    let mut bed = Bed::new("tb-ceiling", 3).await;
    bed.grant_actions().await;
    quota(&bed, json!({"maxReplicas": 3})).await;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &bed.ns);
    create::<Deployment>(&bed, json!({"metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}))
    .await;
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    let replicas = || async { deployments.get("web").await.unwrap().spec.unwrap().replicas };

    // Up by ten: it stops at the ceiling.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "serviceAccountName": "kco-actions",
        "actions": [rule("up", "CATCHUP", "scale_deployment", json!({"name": "web", "delta": 10}))]}))
        .await;
    bed.set_state(0, kco::simulator::SyncStatus::Catchup).await;
    let note = bed
        .wait_event(20, "ActionSucceeded", "scale_deployment")
        .await;
    assert!(note.contains("1 -> 3 replicas"), "{note}");
    assert_eq!(replicas().await, Some(3));

    // Stored past admission (no webhooks here), each of these is refused by the
    // checks the monitor runs, and nothing is changed: `min` above the ceiling, a
    // patch of spec.replicas, and names that are request paths.
    for (actions, needle) in [
        (
            json!([rule(
                "floor",
                "OFFLINE",
                "scale_deployment",
                json!({"name": "web", "delta": 1, "min": 50})
            )]),
            "parameters.min: 50 is above the replica ceiling of 3",
        ),
        (
            json!([rule(
                "patch",
                "OFFLINE",
                "patch_resource",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "web", "patchType": "json", "patch": [{"op": "replace", "path": "/spec/replicas", "value": 50}]})
            )]),
            "the patch sets spec.replicas to 50, above the tenant's replica ceiling of 3",
        ),
        (
            json!([rule(
                "sub",
                "OFFLINE",
                "scale_deployment",
                json!({"name": "web/scale", "replicas": 1})
            )]),
            "parameters.name: \"web/scale\" is not a valid name",
        ),
        (
            json!([rule(
                "path",
                "OFFLINE",
                "patch_resource",
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                "name": "../../../kube-system/configmaps/x", "patch": {"data": {"a": "b"}}})
            )]),
            "\"../../../kube-system/configmaps/x\" is not a valid name",
        ),
    ] {
        bed.apply(
            json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
            "serviceAccountName": "kco-actions", "actions": actions}),
        )
        .await;
        wait_failed(&bed, needle).await;
    }
    bed.set_state(1, kco::simulator::SyncStatus::Offline).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replicas().await, Some(3), "the ceiling held");
}
