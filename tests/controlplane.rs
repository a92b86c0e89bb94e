//! The test bed is real: a kube-apiserver backed by etcd, RBAC enforced,
//! CRDs served, pods whose IPs reach simulated Mina nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use support::fixtures::{self, MINA_GRAPHQL_PORT};
use support::{ControlPlane, Mode, User};

const DAEMON_STATUS: &str = "query { daemonStatus { syncStatus blockchainLength highestBlockLengthReceived peers { peerId } } }";

#[tokio::test]
async fn apiserver_is_the_pinned_version_and_ready() {
    let cp = ControlPlane::shared();
    eprintln!(
        "control plane started in {:.1}s at {}",
        cp.startup.as_secs_f64(),
        cp.url
    );
    let version = cp.admin().await.apiserver_version().await.unwrap();
    let versions =
        std::fs::read_to_string(support::controlplane::repo_path("tests/tools/versions.env"))
            .unwrap();
    assert!(
        versions.contains(&format!("KUBERNETES_VERSION={}", version.git_version)),
        "apiserver reports {} which is not the pinned version",
        version.git_version
    );
}

#[tokio::test]
async fn a_ready_pod_ip_reaches_its_simulated_node() {
    let cp = ControlPlane::shared();
    let client = cp.admin().await;
    let ns = cp.namespace("sim").await;
    let http = fixtures::http_client();

    let sim = kco::simulator::Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let control = format!("http://{}", sim.control_addr());
    let ip = fixtures::loopback_ip();
    let node: SocketAddr = (ip, MINA_GRAPHQL_PORT).into();
    let created = http
        .post(format!("{control}/nodes"))
        .json(&json!({"address": node, "state": {"syncStatus": "CATCHUP", "blockchainLength": 4200,
                                                  "highestBlockLengthReceived": 4300, "peerCount": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        201,
        "{}",
        created.text().await.unwrap_or_default()
    );

    let pod = fixtures::mina_pod("mina-0", json!({"app": "mina"}));
    fixtures::create_running_pod(&client, &ns, &pod, ip).await;

    // Discover the pod the way KCO will: by label, Ready, its IP and named port.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let found = pods
        .list(&ListParams::default().labels("app=mina"))
        .await
        .unwrap();
    assert_eq!(found.items.len(), 1);
    let status = found.items[0].status.clone().unwrap();
    let ready = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "pod should be Ready");
    let pod_ip = status.pod_ip.unwrap();
    let port = found.items[0].spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0]
        .container_port;
    let url = format!("http://{pod_ip}:{port}/graphql");

    let (code, body) = fixtures::graphql(&http, &url, DAEMON_STATUS).await.unwrap();
    assert_eq!(code, 200);
    let daemon = &body["data"]["daemonStatus"];
    assert_eq!(daemon["syncStatus"], "CATCHUP");
    assert_eq!(daemon["blockchainLength"], 4200);
    assert_eq!(daemon["highestBlockLengthReceived"], 4300);
    assert_eq!(daemon["peers"].as_array().unwrap().len(), 2);

    // State changes through the control API show up in the next answer.
    let patched = http
        .patch(format!("{control}/nodes/{node}/state"))
        .json(&json!({"syncStatus": "SYNCED", "blockchainLength": 4301}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let (_, body) = fixtures::graphql(&http, &url, DAEMON_STATUS).await.unwrap();
    assert_eq!(body["data"]["daemonStatus"]["syncStatus"], "SYNCED");
    assert_eq!(body["data"]["daemonStatus"]["blockchainLength"], 4301);

    // So do faults.
    let faulted = http
        .put(format!("{control}/nodes/{node}/faults"))
        .json(&json!({"httpStatus": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(faulted.status(), 200);
    let answer = http
        .post(&url)
        .json(&json!({"query": DAEMON_STATUS}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);
    let info = fixtures::get_json(&http, &format!("{control}/nodes/{node}")).await;
    assert_eq!(info["requests"], 3, "the node counts every request: {info}");
}

#[tokio::test]
async fn rbac_forbids_until_a_rolebinding_allows() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("rbac").await;
    let other = cp.namespace("rbac-other").await;
    let alice = User::named("alice");
    let alice_pods: Api<Pod> = Api::namespaced(cp.client(&alice).await.unwrap(), &ns);

    match alice_pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("alice should be forbidden before any binding, got {other:?}"),
    }
    let denied = cp
        .kubectl(&alice)
        .unwrap()
        .args(["get", "pods", "-n", &ns])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("Forbidden"),
        "{denied:?}"
    );

    let admin = cp.admin().await;
    let role: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &rbac("Role"));
    let binding: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), &ns, &rbac("RoleBinding"));
    role.create(&PostParams::default(), &object(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    }))).await.unwrap();
    binding.create(&PostParams::default(), &object(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    }))).await.unwrap();

    // The authorizer learns of new bindings through its informer: allow it a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match alice_pods.list(&ListParams::default()).await {
            Ok(list) => {
                assert!(list.items.is_empty());
                break;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("alice still cannot list pods after the binding: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let allowed = cp
        .kubectl(&alice)
        .unwrap()
        .args(["get", "pods", "-n", &ns])
        .output()
        .unwrap();
    assert!(allowed.status.success(), "{allowed:?}");

    // The binding is namespaced: other namespaces stay closed, and so do writes.
    let elsewhere: Api<Pod> = Api::namespaced(cp.client(&alice).await.unwrap(), &other);
    assert!(
        matches!(elsewhere.list(&ListParams::default()).await, Err(kube::Error::Api(s)) if s.code == 403)
    );
    let pod = fixtures::mina_pod("not-allowed", json!({}));
    assert!(
        matches!(alice_pods.create(&PostParams::default(), &pod).await, Err(kube::Error::Api(s)) if s.code == 403)
    );
}

#[tokio::test]
async fn a_crd_is_established_and_serves_objects() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("crd").await;
    let crd = cp.dir.join("widgets-crd.yaml");
    std::fs::write(&crd, WIDGET_CRD).unwrap();
    cp.apply_crds(&crd, "widgets.test.kco.local").unwrap();

    let gvk = GroupVersionKind::gvk("test.kco.local", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(cp.admin().await, &ns, &ApiResource::from_gvk(&gvk));
    // Discovery in the apiserver can lag the Established condition by a moment.
    let widget = object(json!({"apiVersion": "test.kco.local/v1", "kind": "Widget",
                               "metadata": {"name": "w1"}, "spec": {"size": 3}}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match widgets.create(&PostParams::default(), &widget).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("create widget: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let read = widgets.get("w1").await.unwrap();
    assert_eq!(read.data["spec"]["size"], 3);

    // The structural schema is enforced: a wrong type is refused.
    let bad = object(json!({"apiVersion": "test.kco.local/v1", "kind": "Widget",
                            "metadata": {"name": "w2"}, "spec": {"size": "three"}}));
    match widgets.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
        other => panic!("a string size should be refused, got {other:?}"),
    }
    let listed = cp
        .kubectl(&User::Admin)
        .unwrap()
        .args(["get", "widgets", "-n", &ns, "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).trim(),
        "widget.test.kco.local/w1"
    );
}

#[tokio::test]
async fn a_control_plane_of_its_own_cleans_up_when_dropped() {
    let cp = ControlPlane::start(Mode::Bare).await.unwrap();
    let dir = cp.dir.clone();
    let url = cp.url.clone();
    cp.admin().await.apiserver_version().await.unwrap();
    drop(cp);
    assert!(!dir.exists(), "{} should be removed", dir.display());
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "apiserver still listening"
    );
}

fn rbac(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "rbac.authorization.k8s.io",
        "v1",
        kind,
    ))
}

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kco.local
spec:
  group: test.kco.local
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"#;

/// The established TCP connections of this process to `port` on the loopback.
fn connections_to(port: u16) -> usize {
    let sockets: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .flat_map(|table| {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let remote_port = columns
                .get(2)
                .and_then(|remote| remote.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            columns.get(3) == Some(&"01")
                && remote_port == Some(port)
                && columns.get(9).is_some_and(|inode| sockets.contains(*inode))
        })
        .count()
}

/// Follows `namespace`'s pods on `client`, sending the name of each pod seen.
fn follow_pods(
    client: kube::Client,
    namespace: String,
    seen: tokio::sync::mpsc::UnboundedSender<(String, Option<String>)>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let mut events = watcher(
            Api::<Pod>::namespaced(client, &namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed();
        while let Some(event) = events.next().await {
            let name = match event {
                Ok(watcher::Event::InitDone) => None,
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    pod.metadata.name
                }
                _ => continue,
            };
            if seen.send((namespace.clone(), name)).is_err() {
                return;
            }
        }
    })
}

#[tokio::test]
async fn many_namespaces_pod_watches_share_one_connection_and_outlive_an_apiserver_restart() {
    const NAMESPACES: usize = 30;
    let cp = ControlPlane::start(Mode::Bare).await.unwrap();
    let admin = cp.admin().await;
    let port: u16 = cp.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(cp.namespace("h2").await);
    }
    let config = cp.config(&User::Admin).await.unwrap();
    let clients = kco::cluster::WatchClients::new(config);
    let before = connections_to(port);
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut slots = Vec::new();
    let mut tasks = Vec::new();
    for ns in &namespaces {
        let slot = clients.slot().unwrap();
        tasks.push(follow_pods(slot.client.clone(), ns.clone(), tx.clone()));
        slots.push(slot);
    }
    let mut listed = std::collections::HashSet::new();
    while listed.len() < NAMESPACES {
        let (ns, pod) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await
            .expect("every watch lists its namespace")
            .unwrap();
        if pod.is_none() {
            listed.insert(ns);
        }
    }
    let during = connections_to(port);
    assert!(
        during <= before + 2,
        "{NAMESPACES} watches opened {} connections to the apiserver ({before} before): they should share one",
        during.saturating_sub(before)
    );
    assert_eq!(clients.clients(), 1);

    // A pod created in a namespace arrives on that namespace's watch, also after
    // the apiserver restarts under the shared connection.
    let pod = |name: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "mina"}]}}))
        .unwrap()
    };
    async fn arrives(
        seen: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>)>,
        namespace: &str,
        name: &str,
    ) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (ns, pod) = tokio::time::timeout(left, seen.recv())
                .await
                .unwrap_or_else(|_| panic!("pod {namespace}/{name} never arrived on its watch"))
                .unwrap();
            if ns == namespace && pod.as_deref() == Some(name) {
                return;
            }
        }
    }
    let last = namespaces.last().unwrap().clone();
    Api::<Pod>::namespaced(admin.clone(), &last)
        .create(&PostParams::default(), &pod("before-restart"))
        .await
        .unwrap();
    arrives(&mut seen, &last, "before-restart").await;
    cp.restart_apiserver(Duration::from_secs(1)).await.unwrap();
    let first = namespaces[0].clone();
    let admin = cp.admin().await;
    Api::<Pod>::namespaced(admin, &first)
        .create(&PostParams::default(), &pod("after-restart"))
        .await
        .unwrap();
    arrives(&mut seen, &first, "after-restart").await;
    assert_eq!(clients.clients(), 1, "the watches still share one client");
    for task in tasks {
        task.abort();
    }
}
