//! `./build.sh demo`: a local control plane with simulated Mina pods to look at
//! with kubectl. Runs until Ctrl-C, then stops everything and removes its files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;

use anyhow::Context;
use kco::simulator::{NodeState, Simulator, SyncStatus};
use serde_json::json;
use support::fixtures::{self, MINA_GRAPHQL_PORT};
use support::{ControlPlane, User};

const NAMESPACE: &str = "mina";
const NODES: u32 = 3;
const REPLICAS: usize = 3;
const LEASE_NAMESPACE: &str = "kco-system";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kco::tls::install_crypto_provider();
    println!("Starting etcd and kube-apiserver on loopback...");
    let cp = ControlPlane::start()
        .await
        .context("the local control plane did not start")?;
    println!(
        "Control plane ready in {:.1}s at {}",
        cp.startup.as_secs_f64(),
        cp.url
    );

    let control: SocketAddr = std::env::var("KCO_SIM_CONTROL")
        .unwrap_or_else(|_| "127.0.0.1:8090".to_owned())
        .parse()
        .context("KCO_SIM_CONTROL must be an address like 127.0.0.1:8090")?;
    let sim = Simulator::start(control)
        .await
        .context("the Mina simulator did not start")?;

    let client = cp.admin().await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    namespaces
        .create(&Default::default(), &ns)
        .await
        .context("create the demo namespace")?;

    let mut first = None;
    for i in 0..NODES {
        let ip = fixtures::loopback_ip();
        let state = NodeState {
            sync_status: if i == NODES - 1 {
                SyncStatus::Catchup
            } else {
                SyncStatus::Synced
            },
            // The last node lags 14 blocks behind: the sample's `lagging` rule fires for it.
            blockchain_length: if i == NODES - 1 { 986 } else { 1000 },
            ..Default::default()
        };
        let node = sim.add_node((ip, MINA_GRAPHQL_PORT).into(), state).await?;
        let pod = fixtures::mina_pod(&format!("mina-{i}"), json!({"app": "mina"}));
        fixtures::create_running_pod(&client, NAMESPACE, &pod, ip).await;
        first.get_or_insert(node.address);
    }
    let first = first.context("no node started")?;

    let kubeconfig = cp.kubeconfig(&User::Admin)?;
    let kubectl = cp.tools().binary("kubectl")?;

    // The CRD, a sample TargetApp, and one operator process watching them.
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cp.apply_crds(&repo.join("crds"), "targetapps.operator.kco.local")?;
    // The tenant's action account and its Role, then the sample TargetApp.
    let role = repo.join("policies/tenant-actions-role.yaml");
    let applied = cp
        .kubectl(&User::Admin)?
        .args(["apply", "-f"])
        .arg(&role)
        .output()?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply {}: {applied:?}",
        role.display()
    );
    let sample = repo.join("docs/examples/targetapp-mina.yaml");
    let applied = cp
        .kubectl(&User::Admin)?
        .args(["apply", "-n", NAMESPACE, "-f"])
        .arg(&sample)
        .output()?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply {}: {applied:?}",
        sample.display()
    );
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
    register_webhooks(&cp, webhook_ports[0])?;
    println!(
        "\n{NODES} simulated Mina pods and a TargetApp run in namespace {NAMESPACE}, watched by three\n\
         `kco run` replicas (logs: {logs}). In another terminal:\n\n  \
         export KUBECONFIG={kubeconfig}\n  \
         alias kubectl={kubectl}\n  \
         kubectl get pods,targetapps -n {NAMESPACE} -o wide\n  \
         kubectl events -n {NAMESPACE} --watch\n\n\
         Admission: an invalid TargetApp is refused at apply time, with the field and reason:\n\n  \
         kubectl apply -f docs/examples/targetapp-invalid.yaml\n\n\
         Which replica leads, and which polls namespace {NAMESPACE} (status.shard):\n\n  \
         kubectl get leases -n {LEASE_NAMESPACE}\n  \
         kubectl get targetapp mina -n {NAMESPACE} -o jsonpath='{{.status.shard}}{{\"\\n\"}}'\n  \
         curl -s http://127.0.0.1:{admin_port}/stats   # replicas on ports {ports}\n\n\
         The last node lags behind: after 15 s its `lagging` rule fires and KCO evicts its pod\n\
         (ActionSucceeded). Take another node offline and watch StateChanged, TriggerFired and\n\
         the restart appear:\n\n  \
         curl -s -X PATCH http://{control}/nodes/{first}/state -d '{{\"syncStatus\": \"OFFLINE\"}}'\n\n\
         Or make it fail (PollFailed), then heal it (PollRecovered):\n\n  \
         curl -s -X PUT http://{control}/nodes/{first}/faults -d '{{\"httpStatus\": 500}}'\n  \
         curl -s -X DELETE http://{control}/nodes/{first}/faults\n\n\
         The operator's metrics and state:\n\n  \
         curl -s http://127.0.0.1:{admin_port}/metrics | grep operator_kco\n  \
         curl -s http://127.0.0.1:{admin_port}/stats\n\n\
         Ask a node directly, as KCO does:\n\n  \
         curl -s http://{first}/graphql -H 'content-type: application/json' \\\n    \
         -d '{{\"query\": \"{{ daemonStatus {{ syncStatus blockchainLength }} }}\"}}'\n\n\
         Press Ctrl-C to stop and clean up.",
        logs = cp.dir.join("kco-*.log").display(),
        ports = admin_ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        control = sim.control_addr(),
    );
    kco::simulator::wait_for_shutdown_signal().await;
    println!("\nStopping kco, the simulator and the control plane...");
    for operator in &operators {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &operator.id().to_string()])
            .status();
    }
    for mut operator in operators {
        let _ = operator.wait();
    }
    sim.shutdown().await;
    drop(cp);
    println!("Done.");
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
