//! The full test cluster: the control plane of [`ControlPlane`] in
//! [`Mode::Cluster`], plus kube-controller-manager and kube-scheduler of the same
//! Kubernetes version and kwok's simulated nodes. Deployments get ReplicaSets and
//! pods, pods are scheduled onto the fake nodes and go Running and Ready with pod
//! IPs from a loopback range, PodDisruptionBudgets get their status from the
//! disruption controller, and `pods/exec` reaches kwok's kubelet endpoint, which
//! runs the command locally.
//!
//! The controller-manager and the scheduler run as their own users
//! (`system:kube-controller-manager`, `system:kube-scheduler`) with the RBAC
//! roles Kubernetes bootstraps for them, and each controller acts as its own
//! service account, as on a real cluster.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kco::simulator::{NodeState, Simulator};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::fixtures::MINA_GRAPHQL_PORT;

use super::controlplane::Mode;
use super::process::{Supervised, free_port};
use super::{ControlPlane, HarnessError, Result, User, io};

/// How many fake nodes the cluster has, each in a zone of its own.
pub const NODES: usize = 3;
/// The annotation kwok manages nodes by.
const KWOK_NODE: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// The container kwok's exec configuration serves (`pods/exec` into any other
/// container of a running pod fails as a kubelet's would).
pub const EXEC_CONTAINER: &str = "mina";
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// A running full cluster. Dropping it stops kwok, the scheduler, the
/// controller-manager and then the control plane.
pub struct Cluster {
    /// The fake nodes' names.
    pub nodes: Vec<String>,
    /// How long start-up took, until a first pod ran on a fake node.
    pub startup: Duration,
    /// Where kwok runs `pods/exec` commands (`bin/mina` there answers `mina client status`).
    pub exec_dir: PathBuf,
    // Field order is drop order: the control plane stops last.
    kwok: Supervised,
    scheduler: Supervised,
    controller_manager: Supervised,
    pub cp: ControlPlane,
}

static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The cluster shared by every test of this test binary, started on first use.
    /// Panics (failing the calling test) with the reason if it cannot start.
    pub fn shared() -> &'static Cluster {
        let started = SHARED.get_or_init(|| super::start_detached("cluster", Cluster::start));
        match started {
            Ok(cluster) => cluster,
            Err(e) => panic!("the local cluster did not start: {e}"),
        }
    }

    /// Starts a cluster of its own.
    pub async fn start() -> Result<Self> {
        let began = Instant::now();
        let cp = ControlPlane::start(Mode::Cluster).await?;
        let controller_manager = start_controller_manager(&cp)?;
        let scheduler = start_scheduler(&cp)?;
        let exec_dir = cp.dir.join("exec");
        write_mina_cli(&exec_dir.join("bin"))?;
        let subnet = pod_subnet();
        let kwok = start_kwok(&cp, &exec_dir, subnet)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            startup: Duration::ZERO,
            exec_dir,
            kwok,
            scheduler,
            controller_manager,
            cp,
        };
        cluster.nodes = cluster.create_nodes(subnet).await?;
        cluster.wait_until_pods_run(began + START_TIMEOUT).await?;
        cluster.startup = began.elapsed();
        Ok(cluster)
    }

    /// Creates the fake nodes kwok manages: one per zone, each with a pod CIDR
    /// of its own inside `subnet` (127.s.i.0/24 for node i).
    async fn create_nodes(&self, subnet: u8) -> Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.cp.admin().await);
        let mut names = Vec::new();
        for i in 0..NODES {
            let name = format!("kwok-node-{i}");
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {KWOK_NODE.0: KWOK_NODE.1, "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64", "type": "kwok",
                        "topology.kubernetes.io/zone": format!("zone-{}", char::from(b'a' + i as u8)),
                    }
                },
                "spec": {"podCIDR": format!("127.{subnet}.{i}.0/24"),
                         "podCIDRs": [format!("127.{subnet}.{i}.0/24")]},
                "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                           "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
            }))
            .map_err(|e| HarnessError::Kube(format!("fake node manifest: {e}")))?;
            nodes
                .create(&PostParams::default(), &node)
                .await
                .map_err(|e| HarnessError::Kube(format!("create node {name}: {e}")))?;
            names.push(name);
        }
        Ok(names)
    }

    /// Waits until the controllers created the `default` service account and a
    /// probe pod was scheduled onto a fake node and runs with a loopback IP:
    /// every part of the cluster has then done its job once.
    async fn wait_until_pods_run(&mut self, deadline: Instant) -> Result<()> {
        let client = self.cp.admin().await;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let probe: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kco-bed-probe"},
            "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10"}]}
        }))
        .map_err(|e| HarnessError::Kube(format!("probe pod manifest: {e}")))?;
        let mut created = false;
        let mut last = String::from("nothing tried yet");
        loop {
            self.check_alive()?;
            if !created {
                match accounts.get_opt("default").await {
                    Ok(Some(_)) => match pods.create(&PostParams::default(), &probe).await {
                        Ok(_) => created = true,
                        Err(e) => last = format!("create the probe pod: {e}"),
                    },
                    Ok(None) => last = "no `default` service account yet".into(),
                    Err(e) => last = e.to_string(),
                }
            } else {
                match pods.get("kco-bed-probe").await {
                    Ok(pod) if running_ip(&pod).is_some() => break,
                    Ok(pod) => last = format!("probe pod status: {:?}", pod.status),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: "the cluster (a first pod running on a fake node)".into(),
                    seconds: START_TIMEOUT.as_secs(),
                    last,
                    name: self.kwok.name.clone(),
                    log: format!(
                        "{}\n-- kube-scheduler --\n{}\n-- kube-controller-manager --\n{}",
                        self.kwok.log_tail(20),
                        self.scheduler.log_tail(20),
                        self.controller_manager.log_tail(20)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = pods.delete("kco-bed-probe", &DeleteParams::default()).await;
        Ok(())
    }

    fn check_alive(&mut self) -> Result<()> {
        for process in [
            &mut self.controller_manager,
            &mut self.scheduler,
            &mut self.kwok,
        ] {
            if let Some(status) = process.exited() {
                return Err(HarnessError::Died {
                    name: process.name.clone(),
                    status,
                    log: process.log_tail(30),
                });
            }
        }
        Ok(())
    }

    /// The logs of the controller-manager, the scheduler and kwok, for a failing test.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "-- kube-controller-manager --\n{}\n-- kube-scheduler --\n{}\n-- kwok --\n{}",
            self.controller_manager.log_tail(lines),
            self.scheduler.log_tail(lines),
            self.kwok.log_tail(lines)
        )
    }
}

/// The IP of a pod that is Running with one.
pub fn running_ip(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

/// The second octet of this cluster's pod addresses (127.s.0.0/16): far above
/// the addresses [`super::fixtures::loopback_ip`] hands out, and apart from
/// another test process's cluster.
fn pod_subnet() -> u8 {
    240 + (std::process::id() % 12) as u8
}

fn start_controller_manager(cp: &ControlPlane) -> Result<Supervised> {
    let kubeconfig = cp.kubeconfig(&User::named("system:kube-controller-manager"))?;
    let cert_dir = cp.dir.join("kube-controller-manager");
    std::fs::create_dir_all(&cert_dir).map_err(io("create the controller-manager directory"))?;
    let k = kubeconfig.display();
    Supervised::spawn(
        "kube-controller-manager",
        &cp.tools().binary("kube-controller-manager")?,
        &[
            format!("--kubeconfig={k}"),
            format!("--authentication-kubeconfig={k}"),
            format!("--authorization-kubeconfig={k}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            format!("--cert-dir={}", cert_dir.display()),
            format!(
                "--service-account-private-key-file={}",
                cp.sa_private_key.display()
            ),
            format!("--root-ca-file={}", cp.server_ca_path.display()),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
        &cp.dir.join("kube-controller-manager.log"),
        None,
    )
}

fn start_scheduler(cp: &ControlPlane) -> Result<Supervised> {
    let kubeconfig = cp.kubeconfig(&User::named("system:kube-scheduler"))?;
    let k = kubeconfig.display();
    Supervised::spawn(
        "kube-scheduler",
        &cp.tools().binary("kube-scheduler")?,
        &[
            format!("--kubeconfig={k}"),
            format!("--authentication-kubeconfig={k}"),
            format!("--authorization-kubeconfig={k}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
        &cp.dir.join("kube-scheduler.log"),
        None,
    )
}

/// kwok with its stock node and pod stages, a kubelet endpoint on loopback whose
/// serving certificate the apiserver verifies, and local exec for the
/// [`EXEC_CONTAINER`] container of every pod, run in `exec_dir` with its `bin/`
/// first on the PATH.
fn start_kwok(cp: &ControlPlane, exec_dir: &Path, subnet: u8) -> Result<Supervised> {
    let dir = cp.dir.join("kwok");
    std::fs::create_dir_all(&dir).map_err(io("create the kwok directory"))?;
    let serving = cp.kubelet_ca.server(&["127.0.0.1", "localhost"])?;
    let cert = dir.join("kubelet.crt");
    let key = dir.join("kubelet.key");
    std::fs::write(&cert, &serving.cert).map_err(io("write kwok's certificate"))?;
    std::fs::write(&key, &serving.key).map_err(io("write kwok's key"))?;
    let config = dir.join("kwok.yaml");
    std::fs::write(&config, kwok_config(&cp.tools().dir, exec_dir)?)
        .map_err(io("write kwok's configuration"))?;
    let port = free_port()?;
    // kwok looks the program up in its own PATH: the `mina` command comes first.
    Supervised::spawn(
        "kwok",
        Path::new("/usr/bin/env"),
        &[
            format!("PATH={}", exec_path(exec_dir)),
            cp.tools().binary("kwok")?.display().to_string(),
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", cp.kubeconfig(&User::Admin)?.display()),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                KWOK_NODE.0, KWOK_NODE.1
            ),
            format!("--cidr=127.{subnet}.255.0/24"),
            "--node-ip=127.0.0.1".into(),
            format!("--node-port={port}"),
            format!("--server-address=127.0.0.1:{port}"),
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-private-key-file={}", key.display()),
            "--node-lease-duration-seconds=40".into(),
        ],
        &cp.dir.join("kwok.log"),
        None,
    )
}

/// What `mina client status` answers in a pod of the cluster (kwok runs
/// `pods/exec` commands on this host, with `dir` first on the PATH).
pub const MINA_CLIENT_STATUS: &str = "Mina daemon status (simulated pod)";

fn write_mina_cli(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io("create the exec directory"))?;
    let script = format!(
        "#!/bin/sh\n# `mina` in a pod on a kwok node: only `mina client status` is simulated.\n\
         if [ \"$1 $2\" = \"client status\" ]; then echo '{MINA_CLIENT_STATUS}'; exit 0; fi\n\
         echo \"mina: only 'mina client status' is simulated here\" >&2\nexit 2\n"
    );
    let path = dir.join("mina");
    std::fs::write(&path, script).map_err(io("write the mina command"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(io("make the mina command executable"))
}

/// The PATH of commands run in pods: `exec_dir/bin` (the `mina` command), then the host's.
fn exec_path(exec_dir: &Path) -> String {
    format!(
        "{}:{}",
        exec_dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )
}

/// kwok's configuration: the stock stages the install script copied from the
/// pinned kwok module, and a ClusterExec that runs `pods/exec` locally.
fn kwok_config(tools: &Path, exec_dir: &Path) -> Result<String> {
    let stages = tools.join("kwok/stages");
    let mut docs = Vec::new();
    for stage in [
        "node-initialize",
        "node-heartbeat-with-lease",
        "pod-ready",
        "pod-complete",
        "pod-delete",
    ] {
        let path = stages.join(format!("{stage}.yaml"));
        docs.push(std::fs::read_to_string(&path).map_err(|e| {
            HarnessError::Tools(format!(
                "kwok stage {} missing ({e}): run `./build.sh tools`",
                path.display()
            ))
        })?);
    }
    let path = exec_path(exec_dir);
    docs.push(format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterExec\nmetadata:\n  name: local\n\
         spec:\n  execs:\n  - containers: [{EXEC_CONTAINER}]\n    local:\n      workDir: {}\n\
         \x20     envs:\n      - name: PATH\n        value: {}\n",
        exec_dir.display(),
        serde_json::Value::String(path)
    ));
    Ok(docs.join("\n---\n"))
}

/// Serves a simulated Mina node at the IP of every running pod of `namespace`
/// that declares the Mina GraphQL port, as the pod's daemon would: a node
/// appears when the pod gets its IP and goes when the pod does. Runs until
/// `cancel`.
pub fn serve_mina_pods(
    client: kube::Client,
    namespace: &str,
    sim: Arc<Simulator>,
    cancel: CancellationToken,
) {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        let mut serving: HashMap<String, Ipv4Addr> = HashMap::new();
        let events = watcher(pods, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => break,
                event = events.next() => event,
            };
            match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let ip = running_ip(&pod).filter(|_| serves_graphql(&pod));
                    if serving.get(&name) == ip.as_ref() {
                        continue;
                    }
                    if let Some(old) = serving.remove(&name) {
                        let _ = sim.remove_node((old, MINA_GRAPHQL_PORT).into()).await;
                    }
                    if let Some(ip) = ip
                        && add_node(&sim, ip).await
                    {
                        serving.insert(name, ip);
                    }
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    let name = pod.metadata.name.unwrap_or_default();
                    if let Some(old) = serving.remove(&name) {
                        let _ = sim.remove_node((old, MINA_GRAPHQL_PORT).into()).await;
                    }
                }
                Some(Ok(_) | Err(_)) => {}
                None => break,
            }
        }
    });
}

/// The running pods of `namespace` that are not being deleted, as (name, IP), by name.
pub async fn running_pods(
    client: &kube::Client,
    namespace: &str,
) -> std::result::Result<Vec<(String, Ipv4Addr)>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut running: Vec<(String, Ipv4Addr)> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, running_ip(p)?)))
        .collect();
    running.sort();
    Ok(running)
}

/// Waits up to `timeout` until exactly `count` pods run in `namespace` and a
/// node of `sim` answers at each one's IP; returns them (see [`running_pods`]),
/// or what was seen last.
pub async fn wait_serving(
    client: &kube::Client,
    namespace: &str,
    sim: &Simulator,
    count: usize,
    timeout: Duration,
) -> std::result::Result<Vec<(String, Ipv4Addr)>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = running_pods(client, namespace)
            .await
            .map_err(|e| format!("list the pods of {namespace}: {e}"))?;
        let served: Vec<std::net::SocketAddr> =
            sim.nodes().await.iter().map(|n| n.address).collect();
        if pods.len() == count
            && pods
                .iter()
                .all(|(_, ip)| served.contains(&(*ip, MINA_GRAPHQL_PORT).into()))
        {
            return Ok(pods);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{count} served Mina pods expected in {namespace} within {}s; running {pods:?}, served {served:?}",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn serves_graphql(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| {
            c.ports
                .iter()
                .flatten()
                .any(|p| p.container_port == i32::from(MINA_GRAPHQL_PORT))
        })
    })
}

/// Starts a node at `ip`. An address kwok gave back a moment ago may still be
/// served for another namespace's pod that is going: retry for a while.
async fn add_node(sim: &Simulator, ip: Ipv4Addr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sim
            .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
            .await
        {
            Ok(_) => return true,
            Err(e) if Instant::now() > deadline => {
                eprintln!("no simulated Mina node at {ip}: {e}");
                return false;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
