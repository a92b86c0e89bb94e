//! A namespace of simulated Mina pods, with an operator watching it: the test bed
//! of the monitoring and action tests. On the bare control plane its pods are
//! created with their status written by the test ([`Bed::new`]); on the full
//! cluster they come from a Deployment, run on kwok's nodes and get their IPs
//! from kwok ([`Bed::on_cluster`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::Ipv4Addr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kco::simulator::{NodeState, Simulator, StatePatch, SyncStatus};
use kco::targetapp::{TargetApp, TargetAppStatus};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::cluster::{Cluster, running_ip, running_pods, serve_mina_pods, wait_serving};
use super::fixtures::{self, MINA_GRAPHQL_PORT};
use super::{ControlPlane, User};

async fn start_simulator() -> Simulator {
    match Simulator::start("127.0.0.1:0".parse().expect("an address")).await {
        Ok(sim) => sim,
        Err(e) => panic!("simulator: {e}"),
    }
}

/// Ready pods whose IPs reach simulated Mina nodes, in a namespace of their own;
/// the TargetApp under test is always named `mina`. On the bare control plane
/// the pods are `mina-0`, `mina-1`... at [`Bed::nodes`]; on the full cluster
/// they belong to the Deployment `mina` and [`Bed::nodes`] is empty (see
/// [`Bed::running_pods`]).
pub struct Bed {
    pub cp: &'static ControlPlane,
    pub ns: String,
    pub client: kube::Client,
    pub sim: Arc<Simulator>,
    pub nodes: Vec<SocketAddr>,
    /// The operator's admin server, once [`Bed::start_operator`] ran.
    pub admin: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Bed {
    /// A namespace starting with `prefix` holding `pods` simulated Mina pods.
    pub async fn new(prefix: &str, pods: usize) -> Self {
        kco::tls::install_crypto_provider();
        let cp = ControlPlane::shared();
        cp.install_kco_crds();
        let ns = cp.namespace(prefix).await;
        let client = cp.admin().await;
        let sim = start_simulator().await;
        let mut nodes = Vec::new();
        for i in 0..pods {
            let ip = fixtures::loopback_ip();
            match sim
                .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
                .await
            {
                Ok(node) => nodes.push(node.address),
                Err(e) => panic!("simulated node at {ip}: {e}"),
            }
            let pod = fixtures::mina_pod(&format!("mina-{i}"), json!({"app": "mina"}));
            fixtures::create_running_pod(&client, &ns, &pod, ip).await;
        }
        Self {
            cp,
            ns,
            client,
            sim: Arc::new(sim),
            nodes,
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            cancel: CancellationToken::new(),
        }
    }

    /// A namespace starting with `prefix` on the full cluster, holding the
    /// Deployment `mina` of `replicas` Mina pods (label `app: mina`, port 3085),
    /// each answered by a simulated node at its pod IP. Returns once they all run.
    pub async fn on_cluster(prefix: &str, replicas: usize) -> Self {
        kco::tls::install_crypto_provider();
        let cluster = Cluster::shared();
        let cp = &cluster.cp;
        cp.install_kco_crds();
        let ns = cp.namespace(prefix).await;
        let client = cp.admin().await;
        let sim = Arc::new(start_simulator().await);
        let cancel = CancellationToken::new();
        serve_mina_pods(client.clone(), &ns, sim.clone(), cancel.clone());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = deployments
            .create(&PostParams::default(), &fixtures::mina_deployment(replicas))
            .await
        {
            panic!("create the mina Deployment in {ns}: {e}");
        }
        let bed = Self {
            cp,
            ns,
            client,
            sim,
            nodes: Vec::new(),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            cancel,
        };
        bed.wait_serving(replicas, 60).await;
        bed
    }

    /// The running pods (name, IP), by name.
    pub async fn running_pods(&self) -> Vec<(String, Ipv4Addr)> {
        running_pods(&self.client, &self.ns)
            .await
            .expect("apiserver call")
    }

    /// Waits (up to `secs`) until exactly `count` pods run and a simulated node
    /// answers at each one's IP; returns them.
    pub async fn wait_serving(&self, count: usize, secs: u64) -> Vec<(String, Ipv4Addr)> {
        match wait_serving(
            &self.client,
            &self.ns,
            &self.sim,
            count,
            Duration::from_secs(secs),
        )
        .await
        {
            Ok(pods) => pods,
            Err(e) => panic!("{e}\n{}", Cluster::shared().logs(15)),
        }
    }

    /// Sets the sync status of the simulated node behind pod `pod`.
    pub async fn set_pod_state(&self, pod: &str, sync: SyncStatus) {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let got = pods.get(pod).await.expect("apiserver call");
        let ip = running_ip(&got).unwrap_or_else(|| panic!("pod {pod} is not running"));
        let patch = StatePatch {
            sync_status: Some(sync),
            ..Default::default()
        };
        self.sim
            .patch_state((ip, MINA_GRAPHQL_PORT).into(), patch)
            .await
            .unwrap_or_else(|e| panic!("no simulated node for pod {pod} at {ip}: {e}"));
    }

    /// Starts an operator (as cluster admin) watching only this namespace, with
    /// test settings that `tweak` may change.
    pub async fn start_operator(&mut self, tweak: impl FnOnce(&mut kco::config::Settings)) {
        let mut settings = kco::config::Settings::test();
        settings.namespace = Some(self.ns.clone());
        tweak(&mut settings);
        let config = match self.cp.config(&User::Admin).await {
            Ok(config) => config,
            Err(e) => panic!("admin config: {e}"),
        };
        match kco::operator::start(settings, config, self.cancel.clone()).await {
            Ok(running) => self.admin = running.admin_addr,
            Err(e) => panic!("operator: {e:#}"),
        }
    }

    /// Stops the operator and starts another with the same settings and name, as a
    /// replica whose container restarted would be.
    pub async fn restart_operator(&mut self, tweak: impl FnOnce(&mut kco::config::Settings)) {
        self.cancel.cancel();
        // Let it leave: its admin server and tasks stop with the token.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        self.cancel = CancellationToken::new();
        self.start_operator(tweak).await;
    }

    /// A `kco-actions` ServiceAccount with the Role of
    /// `policies/tenant-actions-role.yaml`, and a `no-rights` one; waits until the
    /// authorizer applies the binding.
    pub async fn grant_actions(&self) {
        let (cp, ns) = (self.cp, self.ns.clone());
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
            role = std::fs::read_to_string(super::controlplane::repo_path(
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
        cp.apply(&file, &[]);

        let config = cp.config(&User::Admin).await.unwrap();
        // The authorizer learns of new bindings through its informer: wait until it applies.
        let mut as_actions = config.clone();
        as_actions.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:kco-actions"));
        let pods_as_actions: Api<Pod> =
            Api::namespaced(kube::Client::try_from(as_actions).unwrap(), &ns);
        // The account may get pods, not list them: probe with a pod of the bed.
        let probe = match self.running_pods().await.into_iter().next() {
            Some((name, _)) => name,
            None => "mina-0".to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while pods_as_actions.get(&probe).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the kco-actions binding never applied"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn apps(&self) -> Api<TargetApp> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn apply(&self, spec: Value) {
        let app: TargetApp = serde_json::from_value(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "mina"}, "spec": spec
        }))
        .expect("apiserver call");
        self.apps()
            .patch(
                "mina",
                &PatchParams::apply("kco-test").force(),
                &Patch::Apply(&app),
            )
            .await
            .expect("apiserver call");
    }

    pub async fn set_state(&self, node: usize, sync: SyncStatus) {
        let patch = StatePatch {
            sync_status: Some(sync),
            ..Default::default()
        };
        self.sim
            .patch_state(self.nodes[node], patch)
            .await
            .expect("apiserver call");
    }

    pub async fn status(&self) -> TargetAppStatus {
        self.apps()
            .get("mina")
            .await
            .expect("apiserver call")
            .status
            .expect("the TargetApp has a status")
    }

    /// Waits (up to `secs`) for the TargetApp's status to satisfy `check`.
    pub async fn wait_status(
        &self,
        secs: u64,
        what: &str,
        check: impl Fn(&TargetAppStatus) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let app = self.apps().get("mina").await.expect("apiserver call");
            if let Some(status) = &app.status
                && check(status)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "status never showed {what}: {:#?}",
                app.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Events about the TargetApp with `reason`, as (note, count).
    pub async fn events(&self, reason: &str) -> Vec<(String, i32)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        events
            .list(&ListParams::default())
            .await
            .expect("apiserver call")
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("TargetApp"))
            .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
            .collect()
    }

    pub async fn wait_event(&self, secs: u64, reason: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some((note, _)) = self
                .events(reason)
                .await
                .into_iter()
                .find(|(n, _)| n.contains(needle))
            {
                return note;
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} Event mentioning {needle:?}; have {:?}",
                self.events(reason).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> String {
        fixtures::http_client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("the admin server answers")
            .text()
            .await
            .expect("the admin server answers")
    }

    /// Waits until the operator's `/metrics` text passes `check`, and returns it.
    pub async fn wait_metrics(
        &self,
        secs: u64,
        what: &str,
        check: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let metrics = self.metrics().await;
            if check(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics never showed {what}:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn pod_exists(&self, name: &str) -> bool {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        pods.get_opt(name).await.expect("apiserver call").is_some()
    }
}

/// The sum of the samples of series `name` in a `/metrics` text whose lines hold
/// every one of `labels` (`key="value"`).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
