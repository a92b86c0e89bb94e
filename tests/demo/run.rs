//! `./build.sh demo`: a local cluster (control plane, controllers, scheduler,
//! kwok's nodes) with a Deployment of simulated Mina pods and three `kco run`
//! replicas, to look at with kubectl. Runs until Ctrl-C, then stops everything
//! and removes its files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use kco::simulator::{Simulator, StatePatch, SyncStatus};
use serde_json::json;
use support::cluster::{Cluster, serve_mina_pods, wait_serving};
use support::fixtures::MINA_GRAPHQL_PORT;
use support::{ControlPlane, User};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "mina";
/// Mina pods (the Deployment's replicas) and `kco run` replicas.
const REPLICAS: usize = 3;
const LEASE_NAMESPACE: &str = "kco-system";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kco::tls::install_crypto_provider();
    println!(
        "Starting a local cluster on loopback: etcd, kube-apiserver, kube-controller-manager,\n\
         kube-scheduler and kwok with {} simulated nodes...",
        support::cluster::NODES
    );
    let cluster = Cluster::start()
        .await
        .context("the local cluster did not start")?;
    let cp = &cluster.cp;
    println!(
        "Cluster ready in {:.1}s at {}",
        cluster.startup.as_secs_f64(),
        cp.url
    );

    let control: SocketAddr = std::env::var("KCO_SIM_CONTROL")
        .unwrap_or_else(|_| "127.0.0.1:8090".to_owned())
        .parse()
        .context("KCO_SIM_CONTROL must be an address like 127.0.0.1:8090")?;
    let sim = Arc::new(
        Simulator::start(control)
            .await
            .context("the Mina simulator did not start")?,
    );

    let client = cp.admin().await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces
        .create(&Default::default(), &ns)
        .await
        .context("create the demo namespace")?;

    // The Mina pods come from a Deployment; a simulated node answers at each
    // pod's IP for as long as the pod runs.
    let cancel = CancellationToken::new();
    serve_mina_pods(client.clone(), NAMESPACE, sim.clone(), cancel.clone());
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    apply(
        cp,
        &repo.join("docs/examples/mina-deployment.yaml"),
        NAMESPACE,
    )?;
    let pods = wait_serving(
        &client,
        NAMESPACE,
        &sim,
        REPLICAS,
        std::time::Duration::from_secs(120),
    )
    .await
    .map_err(|e| anyhow::anyhow!("the Mina pods did not start: {e}"))?;
    // The last pod's node lags 14 blocks behind: the sample's `lagging` rule fires for it.
    let (lagging_pod, lagging_ip) = pods.last().cloned().context("no Mina pod runs")?;
    let lag = StatePatch {
        sync_status: Some(SyncStatus::Catchup),
        blockchain_length: Some(986),
        ..Default::default()
    };
    sim.patch_state((lagging_ip, MINA_GRAPHQL_PORT).into(), lag)
        .await?;
    let (first_pod, first_ip) = pods.first().cloned().context("no Mina pod runs")?;
    let first: SocketAddr = (first_ip, MINA_GRAPHQL_PORT).into();

    let kubeconfig = cp.kubeconfig(&User::Admin)?;
    let kubectl = cp.tools().binary("kubectl")?;

    // The CRDs; the tenant's quota (exec_command allowed), its action account
    // and Role; then the sample TargetApps, and the operator processes.
    cp.apply_crds(&repo.join("crds"), "targetapps.operator.kco.local")?;
    cp.apply_crds(&repo.join("crds"), "tenantquotas.operator.kco.local")?;
    apply(
        cp,
        &repo.join("docs/examples/tenantquota-mina.yaml"),
        NAMESPACE,
    )?;
    apply(
        cp,
        &repo.join("policies/tenant-actions-role.yaml"),
        NAMESPACE,
    )?;
    apply(
        cp,
        &repo.join("docs/examples/targetapp-mina.yaml"),
        NAMESPACE,
    )?;
    apply(
        cp,
        &repo.join("docs/examples/targetapp-mina-ops.yaml"),
        NAMESPACE,
    )?;
    apply(
        cp,
        &repo.join("docs/examples/targetapp-mina-blocks.yaml"),
        NAMESPACE,
    )?;
    // Three replicas, as a Helm install runs them: one leads (Lease kco-leader), and
    // they share the polling by namespace through membership Leases in kco-system.
    let system = serde_json::from_value(json!({"metadata": {"name": LEASE_NAMESPACE}}))?;
    namespaces
        .create(&Default::default(), &system)
        .await
        .context("create the operator's namespace")?;
    let mut operators = Vec::new();
    let mut admin_ports = Vec::new();
    let mut webhook_ports = Vec::new();
    for i in 0..REPLICAS {
        let admin_port = support::process::free_port()?;
        let webhook_port = support::process::free_port()?;
        webhook_ports.push(webhook_port);
        let log = cp.dir.join(format!("kco-{i}.log"));
        let operator = std::process::Command::new(repo.join("target/debug/kco"))
            .args(["--log-format", "text", "run", "--kubeconfig"])
            .arg(&kubeconfig)
            .args([
                "--metrics-port",
                &admin_port.to_string(),
                "--admin-bind-address",
                "127.0.0.1",
                "--instance",
                &format!("kco-{i}"),
                "--lease-namespace",
                LEASE_NAMESPACE,
                "--webhook-port",
                &webhook_port.to_string(),
                "--webhook-bind-address",
                "127.0.0.1",
                "--webhook-cert-hosts",
                "127.0.0.1",
            ])
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()
            .context("cannot start `kco run` (build it with `cargo build --bin kco`)")?;
        operators.push(operator);
        admin_ports.push(admin_port);
    }
    let admin_port = admin_ports[0];
    // The admission webhooks of webhooks/, pointed at replica kco-0 (no Service
    // here); the leader fills in their caBundle.
    register_webhooks(cp, webhook_ports[0])?;
    println!(
        "\n{REPLICAS} Mina pods of the Deployment `mina` run on kwok's nodes in namespace {NAMESPACE},\n\
         polled by three TargetApps (mina, mina-ops, mina-blocks) and three `kco run` replicas (logs: {logs}).\n\
         In other terminals:\n\n  \
         export KUBECONFIG={kubeconfig}\n  \
         alias kubectl={kubectl}\n  \
         kubectl get pods -n {NAMESPACE} -o wide -w\n  \
         kubectl events -n {NAMESPACE} --watch\n\n\
         Restart: pod {lagging_pod} lags 14 blocks behind. After 15 s its `lagging` rule fires,\n\
         KCO evicts it (ActionSucceeded), its ReplicaSet creates a new pod on a node the\n\
         scheduler picks, and KCO polls that one instead (TargetLost, TargetDiscovered).\n\n\
         Scale and exec: send pod {first_pod} back to BOOTSTRAP. mina-ops runs `mina client status`\n\
         in it (the output is in the ActionSucceeded Event) and adds a replica (a fourth pod appears):\n\n  \
         curl -s -X PATCH http://{control}/nodes/{first}/state -d '{{\"syncStatus\": \"BOOTSTRAP\"}}'\n\n\
         Offline: a node that goes OFFLINE has its pod restarted (StateChanged, TriggerFired):\n\n  \
         curl -s -X PATCH http://{control}/nodes/{first}/state -d '{{\"syncStatus\": \"OFFLINE\"}}'\n\n\
         Push: mina-blocks subscribes to every node's new blocks and sync changes (Subscribed),\n\
         polling only every 5 minutes. A new block is an Event at once (StateChanged; from the\n\
         second, TriggerFired for rule new-block); drop the connection and KCO subscribes again:\n\n  \
         curl -s -X POST http://{control}/nodes/{first}/announce -d '\"block\"'\n  \
         curl -s -X POST http://{control}/nodes/{first}/announce -d '\"drop\"'\n\n\
         Or make a node fail (PollFailed), then heal it (PollRecovered):\n\n  \
         curl -s -X PUT http://{control}/nodes/{first}/faults -d '{{\"httpStatus\": 500}}'\n  \
         curl -s -X DELETE http://{control}/nodes/{first}/faults\n\n\
         Admission: an invalid TargetApp is refused at apply time, with the field and reason:\n\n  \
         kubectl apply -f docs/examples/targetapp-invalid.yaml\n\n\
         Which replica leads, and which polls namespace {NAMESPACE} (status.shard):\n\n  \
         kubectl get leases -n {LEASE_NAMESPACE}\n  \
         kubectl get targetapp mina -n {NAMESPACE} -o jsonpath='{{.status.shard}}{{\"\\n\"}}'\n\n\
         The operator's metrics and state (replicas on ports {ports}):\n\n  \
         curl -s http://127.0.0.1:{admin_port}/metrics | grep operator_kco\n  \
         curl -s http://127.0.0.1:{admin_port}/stats\n\n\
         Each node's chain height, peers and sync status as Prometheus series (spec.metrics of\n\
         mina; kco_target_announced_block_height is what each node last pushed to mina-blocks),\n\
         exported by the replica that polls them:\n\n  \
         for port in {ports_spaced}; do curl -s http://127.0.0.1:$port/metrics | grep '^kco_target_'; done\n\n\
         Ask a node directly, as KCO does, or run a command in a pod, as exec_command does:\n\n  \
         curl -s http://{first}/graphql -H 'content-type: application/json' \\\n    \
         -d '{{\"query\": \"{{ daemonStatus {{ syncStatus blockchainLength }} }}\"}}'\n  \
         kubectl exec -n {NAMESPACE} {first_pod} -- mina client status\n\n\
         Press Ctrl-C to stop and clean up.",
        logs = cp.dir.join("kco-*.log").display(),
        ports = admin_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        ports_spaced = admin_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        control = sim.control_addr(),
    );
    kco::shutdown::requested().await;
    println!("\nStopping kco, the simulator and the control plane...");
    for operator in &operators {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &operator.id().to_string()])
            .status();
    }
    for mut operator in operators {
        let _ = operator.wait();
    }
    cancel.cancel();
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
    drop(cluster);
    println!("Done.");
    Ok(())
}

/// `kubectl apply -n <namespace> -f <file>` as the admin.
fn apply(cp: &ControlPlane, file: &std::path::Path, namespace: &str) -> anyhow::Result<()> {
    let applied = cp
        .kubectl(&User::Admin)?
        .args(["apply", "-n", namespace, "-f"])
        .arg(file)
        .output()?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply {}: {}",
        file.display(),
        String::from_utf8_lossy(&applied.stderr)
    );
    Ok(())
}

/// Applies `webhooks/*.yaml` with `clientConfig.url` on 127.0.0.1:`port`.
fn register_webhooks(cp: &ControlPlane, port: u16) -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = Vec::new();
    for (file, path) in [
        ("webhooks/validating.yaml", "/validate/targetapp"),
        ("webhooks/mutating.yaml", "/mutate/targetapp"),
    ] {
        let text = std::fs::read_to_string(repo.join(file))?;
        let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
        if let Some(hooks) = config["webhooks"].as_array_mut() {
            for hook in hooks {
                hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{port}{path}")});
            }
        }
        docs.push(serde_json::to_string(&config)?);
    }
    let file = cp.dir.join("webhooks.json");
    std::fs::write(&file, docs.join("\n"))?;
    let applied = cp
        .kubectl(&User::Admin)?
        .args(["apply", "-f"])
        .arg(&file)
        .output()?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply webhooks: {applied:?}"
    );
    Ok(())
}
