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

const NAMESPACE: &str = "mina-demo";
const NODES: u32 = 3;

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
            blockchain_length: 1000 - 7 * i,
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
    println!(
        "\n{NODES} simulated Mina pods run in namespace {NAMESPACE}. In another terminal:\n\n  \
         export KUBECONFIG={kubeconfig}\n  \
         {kubectl} get pods -n {NAMESPACE} -o wide\n\n\
         Ask a node for its state, as KCO will:\n\n  \
         curl -s http://{first}/graphql -H 'content-type: application/json' \\\n    \
         -d '{{\"query\": \"{{ daemonStatus {{ syncStatus blockchainLength peers {{ peerId }} }} }}\"}}'\n\n\
         Change its state or inject a fault through the simulator's control API:\n\n  \
         curl -s -X PATCH http://{control}/nodes/{first}/state -d '{{\"syncStatus\": \"OFFLINE\"}}'\n  \
         curl -s -X PUT http://{control}/nodes/{first}/faults -d '{{\"httpStatus\": 500}}'\n\n\
         Press Ctrl-C to stop and clean up.",
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        control = sim.control_addr(),
    );
    kco::simulator::wait_for_shutdown_signal().await;
    println!("\nStopping the simulator and the control plane...");
    sim.shutdown().await;
    drop(cp);
    println!("Done.");
    Ok(())
}
