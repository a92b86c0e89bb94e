//! Objects tests create through the apiserver. On the bare control plane there is
//! no kubelet: a "running" pod is one whose status the test sets (Running, Ready,
//! a loopback pod IP where a simulated Mina node listens). On the full cluster,
//! kwok's nodes do that for the pods the controllers create.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The port Mina daemons serve GraphQL on.
pub const MINA_GRAPHQL_PORT: u16 = 3085;

/// A loopback address no other test of this process uses (127.x.y.z, never
/// 127.0.0.1), so that many simulated nodes can each listen on port 3085.
pub fn loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread test processes apart so that two binaries running at once rarely meet.
    let base = 0x7F01_0000 + (std::process::id() % 200) * 0x100;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ipv4Addr::from(base + 0x10000 * (n / 254) + n % 254 + 1)
}

/// A pod spec like a Mina daemon's: one container with a named GraphQL port.
pub fn mina_pod(name: &str, labels: serde_json::Value) -> Pod {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{
            "name": "mina",
            "image": "minaprotocol/mina-daemon:3.0.0",
            "ports": [{"name": "graphql", "containerPort": MINA_GRAPHQL_PORT}]
        }]}
    });
    match serde_json::from_value(pod) {
        Ok(pod) => pod,
        Err(e) => panic!("fixture pod does not deserialize: {e}"),
    }
}

/// The Deployment `mina`: `replicas` pods like [`mina_pod`]'s, labelled `app: mina`.
pub fn mina_deployment(replicas: usize) -> k8s_openapi::api::apps::v1::Deployment {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mina", "labels": {"app": "mina"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "mina"}},
            "template": {
                "metadata": {"labels": {"app": "mina"}},
                "spec": {"containers": [{
                    "name": "mina",
                    "image": "minaprotocol/mina-daemon:3.0.0",
                    "ports": [{"name": "graphql", "containerPort": MINA_GRAPHQL_PORT}]
                }]}
            }
        }
    });
    match serde_json::from_value(deployment) {
        Ok(d) => d,
        Err(e) => panic!("fixture Deployment does not deserialize: {e}"),
    }
}

/// The scheduler a hand-made pod names: none runs by that name, so that on the
/// full cluster neither kube-scheduler nor kwok touches the status a test wrote.
pub const HAND_MADE: &str = "kco-test-hand-made";

/// Creates `pod` in `namespace` and marks it Running and Ready at `ip`, as a kubelet would.
pub async fn create_running_pod(
    client: &kube::Client,
    namespace: &str,
    pod: &Pod,
    ip: Ipv4Addr,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        spec.scheduler_name
            .get_or_insert_with(|| HAND_MADE.to_owned());
    }
    let created = match pods.create(&PostParams::default(), &pod).await {
        Ok(p) => p,
        Err(e) => panic!("create pod in {namespace}: {e}"),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    set_pod_ready(client, namespace, &name, ip, true).await
}

/// Sets a pod's status: Running at `ip`, Ready or not.
pub async fn set_pod_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ip: Ipv4Addr,
    ready: bool,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let flag = if ready { "True" } else { "False" };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip.to_string(),
        "podIPs": [{"ip": ip.to_string()}],
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now}
        ],
        "containerStatuses": [{
            "name": "mina", "ready": ready, "restartCount": 0,
            "image": "minaprotocol/mina-daemon:3.0.0", "imageID": "",
            "state": {"running": {"startedAt": now}}
        }]
    }});
    match pods
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        Ok(p) => p,
        Err(e) => panic!("set status of pod {namespace}/{name}: {e}"),
    }
}

/// Posts a GraphQL query to `url`; returns the HTTP status and the body as JSON
/// (or `Err` with the transport error or the raw body that is not JSON).
pub async fn graphql(
    http: &reqwest::Client,
    url: &str,
    query: &str,
) -> Result<(u16, serde_json::Value), String> {
    let response = http
        .post(url)
        .json(&json!({ "query": query }))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| format!("{e:?}"))?;
    serde_json::from_slice(&body)
        .map(|v| (status, v))
        .map_err(|_| {
            format!(
                "status {status}, body not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })
}

/// GETs `url` and returns its JSON body; panics (failing the test) otherwise.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = match http.get(url).send().await {
        Ok(r) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    match response.json().await {
        Ok(v) => v,
        Err(e) => panic!("GET {url}: body is not JSON: {e}"),
    }
}

/// An HTTP client for tests (rustls, no proxies from the environment).
pub fn http_client() -> reqwest::Client {
    kco::tls::install_crypto_provider();
    match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => panic!("http client: {e}"),
    }
}
