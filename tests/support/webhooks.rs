//! Admission webhooks against the real apiserver: in-process replicas serving them,
//! and the configurations of `webhooks/` pointed at those replicas.

use std::time::{Duration, Instant};

use kco::config::WebhookSettings;
use kube::api::Api;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::controlplane::repo_path;
use super::process::free_port;
use super::{ControlPlane, User};

/// An in-process replica with webhooks on 127.0.0.1, managing certificates.
pub async fn replica(
    cp: &ControlPlane,
    lease_ns: &str,
    instance: &str,
    config_name: &str,
    validity: (Duration, Duration),
    cancel: CancellationToken,
) -> kco::operator::Running {
    let mut settings = kco::config::Settings::test();
    settings.instance = instance.to_owned();
    // Every namespace: the tenant checks count TargetApps wherever they are.
    settings.namespace = None;
    settings.lease_namespace = lease_ns.to_owned();
    settings.election = Some(kco::election::Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_secs(1),
    });
    settings.webhooks = Some(WebhookSettings {
        address: ([127, 0, 0, 1], free_port().unwrap()).into(),
        cert_dir: None,
        secret: format!("{config_name}-tls"),
        config_name: config_name.to_owned(),
        hosts: vec!["127.0.0.1".to_owned()],
        ca_validity: validity.0,
        cert_validity: validity.1,
        check_period: Duration::from_secs(1),
    });
    let config = cp.config(&User::Admin).await.unwrap();
    kco::operator::start(settings, config, cancel)
        .await
        .unwrap()
}

/// Registers both configurations (from `webhooks/`, renamed) for namespaces
/// labelled `kco-admission-test=<ns>`, each calling every URL in `urls`.
pub async fn register(cp: &ControlPlane, name: &str, ns: &str, urls: &[String]) {
    let mut docs = Vec::new();
    for (file, path) in [
        ("webhooks/validating.yaml", "/validate/targetapp"),
        ("webhooks/mutating.yaml", "/mutate/targetapp"),
    ] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        let mut config: Value = serde_saphyr::from_str(&text).unwrap();
        config["metadata"]["name"] = json!(name);
        let template = config["webhooks"][0].clone();
        let hooks: Vec<Value> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let mut hook = template.clone();
                let base = hook["name"].as_str().unwrap().to_owned();
                hook["name"] = json!(format!("r{i}.{base}"));
                hook["clientConfig"] = json!({"url": format!("{url}{path}")});
                // In these tests a failing webhook must fail the request.
                hook["failurePolicy"] = json!("Fail");
                hook["namespaceSelector"] = json!({"matchLabels": {"kco-admission-test": ns}});
                hook
            })
            .collect();
        config["webhooks"] = json!(hooks);
        docs.push(serde_json::to_string(&config).unwrap());
    }
    let file = cp.dir.join(format!("{name}-webhooks.json"));
    std::fs::write(&file, docs.join("\n")).unwrap();
    cp.apply(&file, &[]);
}

pub async fn labelled_namespace(cp: &ControlPlane, prefix: &str) -> String {
    let ns = cp.namespace(prefix).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin().await);
    let patch = json!({"metadata": {"labels": {"kco-admission-test": ns}}});
    namespaces
        .patch(
            &ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    ns
}

/// Waits until the replica is ready (certificate loaded, caches synced).
pub async fn wait_ready(running: &kco::operator::Running) {
    let http = super::fixtures::http_client();
    let url = format!("http://{}/readyz", running.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "replica never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `config`'s webhooks carry a caBundle.
pub async fn wait_ca_bundle(cp: &ControlPlane, name: &str) {
    let configs: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(cp.admin().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let config = configs.get(name).await.unwrap();
        if config
            .webhooks
            .unwrap_or_default()
            .iter()
            .all(|h| h.client_config.ca_bundle.is_some())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never set the caBundle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the apiserver calls the webhooks successfully for namespace `ns`
/// (it picks a new caBundle up from its informer a moment after it is written):
/// a server-side dry-run create of a valid TargetApp must pass.
pub async fn wait_serving(cp: &ControlPlane, ns: &str) {
    let apps: Api<kco::targetapp::TargetApp> = Api::namespaced(cp.admin().await, ns);
    let probe: kco::targetapp::TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": "webhook-probe"}, "spec": {"selector": {"matchLabels": {"app": "probe"}}}
    }))
    .expect("a TargetApp");
    let dry = kube::api::PostParams {
        dry_run: true,
        ..kube::api::PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match apps.create(&dry, &probe).await {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the apiserver cannot call the webhooks: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
