//! `kco run` replicas as separate processes against the local control plane, and a
//! fleet of namespaces with simulated Mina pods: the HA tests and the fail-over
//! bench.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kco::simulator::{NodeState, Simulator};
use kco::targetapp::TargetApp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::fixtures::{self, MINA_GRAPHQL_PORT};
use super::process::{Supervised, free_port};
use super::{ControlPlane, User};

/// Lease timing of the replicas under test (seconds): leader Lease 4 s, renew
/// deadline 3 s, retry 1 s; membership Lease 3 s, renewed every 1 s.
pub const LEASE: u64 = 4;
pub const RETRY: u64 = 1;
pub const MEMBER_LEASE: u64 = 3;

/// Replicas of `kco run`, their Leases in a namespace of their own.
pub struct Replicas {
    pub cp: &'static ControlPlane,
    pub lease_ns: String,
    binary: PathBuf,
    kubeconfig: PathBuf,
    ports: Vec<u16>,
    /// Each replica's webhook (HTTPS) port.
    pub webhook_ports: Vec<u16>,
    processes: Vec<Option<Supervised>>,
    extra: Vec<String>,
    /// Leader and membership Lease durations (s) the replicas run with.
    pub timing: (u64, u64),
    /// Leader renew deadline, leader retry period and membership renew period (s).
    periods: (u64, u64, u64),
    http: reqwest::Client,
}

impl Replicas {
    /// Starts `n` replicas of `binary` (the `kco` executable) with `extra` flags,
    /// their Leases in a new namespace named after `prefix`; waits until all are ready.
    pub async fn start(binary: PathBuf, prefix: &str, n: usize, extra: &[&str]) -> Self {
        Self::start_with(binary, prefix, n, extra, (LEASE, MEMBER_LEASE)).await
    }

    /// [`Replicas::start`] with other leader and membership Lease durations (s).
    pub async fn start_with(
        binary: PathBuf,
        prefix: &str,
        n: usize,
        extra: &[&str],
        timing: (u64, u64),
    ) -> Self {
        Self::start_on(ControlPlane::shared(), binary, prefix, n, extra, timing).await
    }

    /// Replicas with the Lease timing `kco run` (and the chart) defaults to:
    /// leader Lease 15 s, renew deadline 10 s, retry every 2 s; membership Lease
    /// 10 s, renewed every 2 s. What benches that compare with other operators run.
    pub async fn start_as_deployed(
        binary: PathBuf,
        prefix: &str,
        n: usize,
        extra: &[&str],
    ) -> Self {
        Self::start_timed(
            ControlPlane::shared(),
            binary,
            prefix,
            n,
            extra,
            (15, 10),
            (10, 2, 2),
        )
        .await
    }

    /// [`Replicas::start_with`] on the control plane `cp` (the full cluster's, say).
    pub async fn start_on(
        cp: &'static ControlPlane,
        binary: PathBuf,
        prefix: &str,
        n: usize,
        extra: &[&str],
        timing: (u64, u64),
    ) -> Self {
        let periods = (timing.0 - 1, RETRY, 1);
        Self::start_timed(cp, binary, prefix, n, extra, timing, periods).await
    }

    async fn start_timed(
        cp: &'static ControlPlane,
        binary: PathBuf,
        prefix: &str,
        n: usize,
        extra: &[&str],
        timing: (u64, u64),
        periods: (u64, u64, u64),
    ) -> Self {
        kco::tls::install_crypto_provider();
        cp.install_kco_crds();
        let lease_ns = cp.namespace(prefix).await;
        let mut replicas = Self {
            cp,
            lease_ns,
            binary,
            kubeconfig: cp.kubeconfig(&User::Admin).unwrap(),
            ports: Vec::new(),
            webhook_ports: Vec::new(),
            processes: Vec::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            timing,
            periods,
            http: fixtures::http_client(),
        };
        for i in 0..n {
            replicas.ports.push(free_port().unwrap());
            replicas.webhook_ports.push(free_port().unwrap());
            replicas.processes.push(None);
            replicas.spawn(i);
        }
        for i in 0..n {
            replicas.wait_ready(i).await;
        }
        replicas
    }

    pub fn name(i: usize) -> String {
        format!("kco-{i}")
    }

    pub fn spawn(&mut self, i: usize) {
        let mut args: Vec<String> = [
            "--log-format",
            "json",
            "run",
            "--instance",
            &Self::name(i),
            "--metrics-port",
            &self.ports[i].to_string(),
            "--admin-bind-address",
            "127.0.0.1",
            "--lease-namespace",
            &self.lease_ns,
            "--lease-duration",
            &self.timing.0.to_string(),
            "--lease-renew-deadline",
            &self.periods.0.to_string(),
            "--lease-retry-period",
            &self.periods.1.to_string(),
            "--member-lease-duration",
            &self.timing.1.to_string(),
            "--member-renew-period",
            &self.periods.2.to_string(),
            "--graphql-timeout",
            "2",
            "--graphql-max-retries",
            "0",
            // Fail-over tests stop replicas mid-action: a stopping replica waits
            // for its running actions at most this long.
            "--action-execution-timeout",
            "30",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // Every replica serves the admission webhooks (certificates from the leader).
        args.extend([
            "--webhook-port".to_owned(),
            self.webhook_ports[i].to_string(),
            "--webhook-bind-address".to_owned(),
            "127.0.0.1".to_owned(),
            "--webhook-cert-hosts".to_owned(),
            "127.0.0.1".to_owned(),
        ]);
        args.push("--kubeconfig".into());
        args.push(self.kubeconfig.display().to_string());
        args.extend(self.extra.iter().cloned());
        let log = self.cp.dir.join(format!(
            "{}-{}-{}.log",
            self.lease_ns,
            Self::name(i),
            fastrand::u32(..)
        ));
        let process = Supervised::spawn(&Self::name(i), &self.binary, &args, &log, None).unwrap();
        self.processes[i] = Some(process);
    }

    pub async fn stats(&self, i: usize) -> Option<Value> {
        self.processes[i].as_ref()?;
        let url = format!("http://127.0.0.1:{}/stats", self.ports[i]);
        let response = self.http.get(url).send().await.ok()?;
        response.json().await.ok()
    }

    /// Replica `i`'s answer to `path` on its admin port: (status, body).
    pub async fn admin_get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.ports[i]);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    pub async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .stats(i)
                .await
                .is_some_and(|s| s["ready"] == json!(true))
            {
                return;
            }
            let process = self.processes[i].as_mut().unwrap();
            assert!(
                process.exited().is_none(),
                "{} exited: {}",
                process.name,
                process.log_tail(30)
            );
            assert!(
                Instant::now() < deadline,
                "{} not ready: {}",
                process.name,
                process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id of replica `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.processes[i].as_ref()?.pid()
    }

    /// The log file of replica `i`'s current process, if it runs.
    pub fn log(&self, i: usize) -> Option<PathBuf> {
        Some(self.processes[i].as_ref()?.log.clone())
    }

    /// How many replicas this set has (running or not).
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Replica `i`'s `/metrics` text, if it answers.
    pub async fn metrics(&self, i: usize) -> Option<String> {
        self.processes[i].as_ref()?;
        let url = format!("http://127.0.0.1:{}/metrics", self.ports[i]);
        let response = self.http.get(url).send().await.ok()?;
        response.text().await.ok()
    }

    /// The replicas that say they lead.
    pub async fn leaders(&self) -> Vec<usize> {
        let mut leaders = Vec::new();
        for i in 0..self.processes.len() {
            if self
                .stats(i)
                .await
                .is_some_and(|s| s["leader"] == json!(true))
            {
                leaders.push(i);
            }
        }
        leaders
    }

    /// Waits for exactly one leader other than `not`, checking that there is never
    /// more than one; returns it and how long it took.
    pub async fn wait_leader(&self, not: Option<usize>, within: Duration) -> (usize, Duration) {
        let started = Instant::now();
        loop {
            let leaders = self.leaders().await;
            assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
            if let Some(&leader) = leaders.first()
                && Some(leader) != not
            {
                return (leader, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "no new leader within {within:?} (leaders: {leaders:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(&mut self, i: usize, signal: &str) {
        let process = self.processes[i].as_mut().unwrap();
        assert!(process.signal(signal), "cannot signal {}", process.name);
    }

    /// Waits until replica `i` has exited; its exit status. After SIGTERM a
    /// replica first lets its running actions finish (bounded by the action
    /// timeout, 30 s), so this waits up to a minute.
    pub async fn wait_exit(&mut self, i: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let process = self.processes[i].as_mut().unwrap();
            if let Some(status) = process.exited() {
                self.processes[i] = None;
                return status;
            }
            if Instant::now() >= deadline {
                // What it was doing: the end of its log.
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{i} did not exit within 60 s; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replicas still running that exited on their own (none should).
    pub fn unexpected_exits(&mut self) -> Vec<String> {
        self.processes
            .iter_mut()
            .flatten()
            .filter_map(|p| {
                p.exited()
                    .map(|status| format!("{} {status}: {}", p.name, p.log_tail(20)))
            })
            .collect()
    }
}

/// Namespaces, each with one simulated Mina pod and a TargetApp polling it every
/// second.
pub struct Fleet {
    pub cp: &'static ControlPlane,
    pub sim: Simulator,
    /// Namespace → its node's address.
    pub nodes: BTreeMap<String, SocketAddr>,
}

pub async fn fleet(prefix: &str, n: usize, spec: impl Fn(&str) -> Value) -> Fleet {
    fleet_on(ControlPlane::shared(), prefix, n, spec).await
}

/// [`fleet`] on the control plane `cp` (the full cluster's, say).
pub async fn fleet_on(
    cp: &'static ControlPlane,
    prefix: &str,
    n: usize,
    spec: impl Fn(&str) -> Value,
) -> Fleet {
    kco::tls::install_crypto_provider();
    cp.install_kco_crds();
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut fleet = Fleet {
        cp,
        sim,
        nodes: BTreeMap::new(),
    };
    for _ in 0..n {
        fleet.add(prefix, &spec).await;
    }
    fleet
}

impl Fleet {
    /// One more namespace with a node, its pod and a TargetApp `mina` with `spec`;
    /// returns the namespace.
    pub async fn add(&mut self, prefix: &str, spec: impl Fn(&str) -> Value) -> String {
        let cp = self.cp;
        let client = cp.admin().await;
        let ns = cp.namespace(prefix).await;
        // Another test process may hold an address of this range (two binaries
        // running at once): take the next one.
        let mut attempt = 0;
        let (ip, node) = loop {
            let ip = fixtures::loopback_ip();
            match self
                .sim
                .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
                .await
            {
                Ok(node) => break (ip, node),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("simulated node at {ip}: {e}; trying another address");
                }
                Err(e) => panic!("no free loopback address for a simulated node: {e}"),
            }
        };
        let pod = fixtures::mina_pod("mina-0", json!({"app": "mina"}));
        fixtures::create_running_pod(&client, &ns, &pod, ip).await;
        let app: TargetApp = serde_json::from_value(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "mina", "namespace": ns}, "spec": spec(&ns)
        }))
        .unwrap();
        Api::<TargetApp>::namespaced(client.clone(), &ns)
            .patch(
                "mina",
                &PatchParams::apply("kco-test").force(),
                &Patch::Apply(&app),
            )
            .await
            .unwrap();
        self.nodes.insert(ns.clone(), node.address);
        ns
    }
}

impl Fleet {
    /// Which replicas polled each namespace's node during `window`.
    pub async fn pollers(&self, window: Duration) -> BTreeMap<String, BTreeSet<String>> {
        for addr in self.nodes.values() {
            self.sim.reset_requests(*addr).await.unwrap();
        }
        tokio::time::sleep(window).await;
        let mut seen = BTreeMap::new();
        for (ns, addr) in &self.nodes {
            let info = self.sim.node(*addr).await.unwrap();
            let agents: BTreeSet<String> = info
                .requests_by_agent
                .keys()
                .filter_map(|agent| {
                    agent
                        .split_once('(')
                        .map(|(_, rest)| rest.trim_end_matches(')').to_owned())
                })
                .collect();
            seen.insert(ns.clone(), agents);
        }
        seen
    }
}
