//! Memory per TargetApp at scale: one `kco run` process (the release build under
//! `cargo bench`) against the local control plane, with N TargetApps of one target
//! each, polled every 10 s by simulated Mina nodes. Each size gets a fresh `kco`
//! process; memory per TargetApp is a difference against a baseline with none.
//!
//! ```text
//! cargo bench --bench scale                               # 0, 1k and 10k pod targets
//! cargo bench --bench scale -- --apps 1000,10000 --kind url
//! cargo bench --bench scale -- --apps 2000 --namespaces 20 --interval 10 --window 20
//! ```
//!
//! `--kind pod` (default): each TargetApp selects one pod (created, then marked
//! Running and Ready at its node's address, as a kubelet would), followed through
//! `kco`'s one pod watch per namespace. `--kind url`: each TargetApp names its node by absolute
//! URL (`--endpoint-allowed-cidrs 127.0.0.0/8`), no pod and no watch.
//! TargetApps are spread over `--namespaces` (50) and created `--concurrency` (32)
//! at a time; sizes grow in place (1k, then 9k more). The nodes are `kco simulate`
//! child processes (4,000 nodes each: 20,000 open files per process). For each
//! size: start `kco`, wait until every node has been polled, let it settle one
//! interval (or `--settle` seconds), then measure over `--window` seconds (20): CPU time and polls, then
//! VmRSS, VmHWM and open fds from /proc, and the kube-apiserver's CPU meanwhile.
//!
//! `--against-kopf` (with `--kind url`): after `kco`, each size is polled by the
//! design KCO replaces — a minimal Kopf operator (`benches/kopf/operator.py`, one
//! daemon per TargetApp with a shared aiohttp session, packages pinned in
//! `benches/kopf/requirements.txt`, installed into a virtualenv in the tool
//! cache) — measured the same way, and a table gives KCO's CPU, RSS and the
//! apiserver's CPU as ratios of the Kopf run's.
//!
//! `--subscribe` (with `--kind url`; `--latency` for the same rule and
//! measurement without subscriptions): each TargetApp also subscribes to its
//! node's `newBlock` (one WebSocket connection each, as to a Mina daemon), with
//! a rule on the pushed height; run it with `--interval 300` (polling as the
//! safety net) beside a polling run at 10 s with the same rule on the polled
//! height. After the window, both modes measure the time from a new block on
//! `--sample` nodes (200) to the rule's `TriggerFired` Event (p50/p99), and
//! `--subscribe` the CPU per pushed message (`--rounds` (5) blocks announced to
//! every node, under the rule's threshold).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{SimulatorProcess, cpu_seconds_of};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kco::simulator::NodeInfo;
use kco::targetapp::TargetApp;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::ControlPlane;
use support::fixtures;
use support::replicas::Replicas;

const NODES_PER_SIMULATOR: usize = 4000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pod,
    Url,
}

struct Args {
    apps: Vec<usize>,
    kind: Kind,
    namespaces: usize,
    concurrency: usize,
    interval: u64,
    window: u64,
    wait: u64,
    /// Seconds to let a started operator settle before the window (default: one interval).
    settle: Option<u64>,
    against_kopf: bool,
    subscribe: bool,
    /// Measure the time from a new block to the rule's Event (implied by
    /// `--subscribe`).
    latency: bool,
    sample: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        apps: vec![1000, 10_000],
        kind: Kind::Pod,
        namespaces: 50,
        concurrency: 32,
        interval: 10,
        window: 20,
        wait: 300,
        settle: None,
        against_kopf: false,
        subscribe: false,
        latency: false,
        sample: 200,
        rounds: 5,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        let number = |flag: &str| -> u64 {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag} needs a number, got {value:?}"))
        };
        if ["--against-kopf", "--subscribe", "--latency"].contains(&raw[i].as_str()) {
            a.against_kopf |= raw[i] == "--against-kopf";
            a.subscribe |= raw[i] == "--subscribe";
            a.latency |= raw[i] != "--against-kopf";
            i += 1;
            continue;
        }
        match raw[i].as_str() {
            "--apps" => {
                a.apps = value
                    .split(',')
                    .map(|v| v.parse().expect("--apps N[,N...]"))
                    .collect();
            }
            "--kind" => {
                a.kind = match value.as_str() {
                    "pod" => Kind::Pod,
                    "url" => Kind::Url,
                    other => panic!("--kind pod|url, got {other:?}"),
                }
            }
            "--namespaces" => a.namespaces = number("--namespaces").max(1) as usize,
            "--concurrency" => a.concurrency = number("--concurrency").max(1) as usize,
            "--interval" => a.interval = number("--interval").max(1),
            "--window" => a.window = number("--window").max(1),
            "--wait" => a.wait = number("--wait"),
            "--settle" => a.settle = Some(number("--settle")),
            "--sample" => a.sample = number("--sample") as usize,
            "--rounds" => a.rounds = number("--rounds") as usize,
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(
        !a.against_kopf || a.kind == Kind::Url,
        "--against-kopf compares URL targets: add --kind url"
    );
    assert!(
        !a.latency || (a.kind == Kind::Url && !a.against_kopf),
        "--subscribe and --latency measure URL targets, without --against-kopf: add --kind url"
    );
    a.apps.retain(|n| *n > 0);
    a.apps.sort_unstable();
    a.apps.dedup();
    a
}

/// `kco simulate` processes serving the nodes; killed on drop.
struct Simulators {
    processes: Vec<SimulatorProcess>,
    nodes: Vec<SocketAddr>,
}

fn simulators(kco: &Path, n: usize) -> Simulators {
    let mut sims = Simulators {
        processes: Vec::new(),
        nodes: Vec::new(),
    };
    for (k, start) in (0..n).step_by(NODES_PER_SIMULATOR).enumerate() {
        let count = NODES_PER_SIMULATOR.min(n - start);
        // 127.100.0.0/14 and up: away from fixtures::loopback_ip (127.1.x.y) and the
        // pipeline bench (127.20.x.y), which other test binaries may use meanwhile.
        let first = Ipv4Addr::new(127, 100 + k as u8, 0, 1);
        let control = support::process::free_port().expect("a free port for a simulator");
        let control = SocketAddr::from(([127, 0, 0, 1], control));
        let process = SimulatorProcess::start(kco, first, count, control);
        sims.nodes.extend(&process.nodes);
        sims.processes.push(process);
    }
    sims
}

impl Simulators {
    /// Requests each node has received so far.
    async fn requests(&self, http: &reqwest::Client) -> HashMap<SocketAddr, u64> {
        let mut all = HashMap::new();
        for control in self.processes.iter().map(|p| p.control) {
            let url = format!("http://{control}/nodes");
            let nodes: Vec<NodeInfo> = http
                .get(&url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .unwrap_or_else(|e| panic!("GET {url}: {e}"))
                .json()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: not a node list: {e}"));
            all.extend(nodes.into_iter().map(|n| (n.address, n.requests)));
        }
        all
    }
}

/// A number from `/proc/<pid>/status` (VmRSS, VmHWM, RssAnon in KiB; Threads).
fn status_field(pid: u32, key: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
}

/// Creates TargetApps `from..to` (and their pods for `Kind::Pod`).
async fn create_apps(
    client: &kube::Client,
    namespaces: &[String],
    nodes: &[SocketAddr],
    a: &Args,
    range: std::ops::Range<usize>,
) {
    let (kind, interval, concurrency) = (a.kind, a.interval, a.concurrency);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = range.len();
    futures::stream::iter(range)
        .map(|i| {
            let ns = &namespaces[i % namespaces.len()];
            let name = format!("mina-{i:05}");
            let node = nodes[i];
            let done = &done;
            async move {
                let spec = match kind {
                    Kind::Pod => {
                        let ip = match node.ip() {
                            std::net::IpAddr::V4(ip) => ip,
                            std::net::IpAddr::V6(ip) => panic!("node {ip} is not IPv4"),
                        };
                        let pod: Pod =
                            fixtures::mina_pod(&name, json!({"app": "mina", "target": name}));
                        fixtures::create_running_pod(client, ns, &pod, ip).await;
                        json!({"selector": {"matchLabels": {"target": name}},
                               "pollingInterval": interval})
                    }
                    Kind::Url => json!({"graphqlEndpoint": format!("http://{node}/graphql"),
                                        "pollingInterval": interval}),
                };
                let spec = with_height_rule(spec, a);
                let app: TargetApp = serde_json::from_value(json!({
                    "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec
                }))
                .expect("a TargetApp from the bench's JSON");
                Api::<TargetApp>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &app)
                    .await
                    .unwrap_or_else(|e| panic!("create TargetApp {ns}/{name}: {e}"));
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) || n == total {
                    eprintln!("  created {n}/{total}");
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

struct Row {
    apps: usize,
    rss_kib: f64,
    hwm_kib: f64,
    anon_kib: f64,
    cpu_percent: f64,
    /// The kube-apiserver's CPU over the same window.
    apiserver_percent: f64,
    /// The requests the apiserver served per second over the window (from
    /// anyone: the simulated nodes' controllers too), by verb and resource.
    apiserver_requests: Vec<(String, f64)>,
    polls_per_s: f64,
    fds: usize,
    threads: f64,
    polled: usize,
    stats_targets: Option<u64>,
    /// The allocator's live heap and resident pages, KiB (`kco` only).
    heap_kib: Option<(f64, f64)>,
    /// Status writes put off for want of a permit, since start (`kco` only).
    status_deferred: Option<f64>,
    setup: Duration,
    to_polled: Duration,
    detection: Option<Detection>,
}

/// What a measurement of `kco` reaches: the nodes, and the apiserver's
/// namespaces of TargetApps.
struct Fleet<'a> {
    sims: &'a Simulators,
    http: &'a reqwest::Client,
    client: &'a kube::Client,
    namespaces: &'a [String],
}

/// What one process under measurement is: its pid and its log, if any.
struct Measured {
    pid: u32,
    log: Option<PathBuf>,
}

/// Starts a fresh `kco run`, waits until the first `apps` nodes have each been
/// polled (or `wait` runs out), settles, measures.
async fn measure(
    kco: &Path,
    extra: &[&str],
    fleet: &Fleet<'_>,
    a: &Args,
    apps: usize,
    setup: Duration,
) -> Row {
    let (sims, http) = (fleet.sims, fleet.http);
    let before = sims.requests(http).await;
    let started = Instant::now();
    // The Lease timing a deployment runs with, not the tests' faster one: the
    // apiserver's work for KCO is compared with another operator's.
    let replicas = Replicas::start_as_deployed(kco.to_owned(), "scale-leases", 1, extra).await;
    let process = Measured {
        pid: replicas.pid(0).expect("the kco process's pid"),
        log: replicas.log(0),
    };
    let mut row = observe(&process, sims, http, a, apps, (before, started), setup).await;
    if a.latency && apps > 0 {
        row.detection = Some(detection(process.pid, fleet, a, apps, row.cpu_percent).await);
    }
    row.stats_targets = replicas.stats(0).await.and_then(|s| s["targets"].as_u64());
    let text = replicas.metrics(0).await.unwrap_or_default();
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    row.heap_kib = read("operator_kco_heap_allocated_bytes ")
        .zip(read("operator_kco_heap_resident_bytes "))
        .map(|(live, resident)| (live / 1024.0, resident / 1024.0));
    row.status_deferred = read("operator_kco_status_writes_deferred_total ");
    drop(replicas);
    row
}

/// Runs the Kopf reference operator over the same TargetApps and measures it
/// as [`measure`] measures `kco`.
async fn measure_kopf(
    python: &Path,
    kubeconfig: &Path,
    sims: &Simulators,
    http: &reqwest::Client,
    a: &Args,
    apps: usize,
    setup: Duration,
) -> Row {
    let before = sims.requests(http).await;
    let started = Instant::now();
    let log =
        std::env::temp_dir().join(format!("kco-bench-kopf-{}-{apps}.log", std::process::id()));
    let out = std::fs::File::create(&log).expect("the Kopf log file");
    let err = out.try_clone().expect("the Kopf log file");
    let mut child = Command::new(python)
        .args([
            "-m",
            "kopf",
            "run",
            "--standalone",
            "--all-namespaces",
            "--quiet",
        ])
        .arg(support::controlplane::repo_path("benches/kopf/operator.py"))
        .env("KUBECONFIG", kubeconfig)
        .env("KCO_BENCH_QUERY", kco::targetapp::DEFAULT_STATE_QUERY)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("start Kopf with {}: {e}", python.display()));
    let process = Measured {
        pid: child.id(),
        log: None,
    };
    let row = observe(&process, sims, http, a, apps, (before, started), setup).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = text.lines().filter(|l| l.contains("WARNING")).count();
    eprintln!("  Kopf log: {warnings} warnings ({})", log.display());
    row
}

/// Waits until `process` has polled each of the first `apps` nodes once (counted
/// from `since`), lets it settle one interval, and measures it (and the
/// apiserver) over the window.
async fn observe(
    process: &Measured,
    sims: &Simulators,
    http: &reqwest::Client,
    a: &Args,
    apps: usize,
    since: (HashMap<SocketAddr, u64>, Instant),
    setup: Duration,
) -> Row {
    let (before, started) = since;
    let pid = process.pid;
    let nodes = &sims.nodes[..apps];
    let deadline = started + Duration::from_secs(a.wait);
    let mut polled;
    loop {
        let now = sims.requests(http).await;
        polled = nodes
            .iter()
            .filter(|n| now.get(n).copied().unwrap_or(0) > before.get(n).copied().unwrap_or(0))
            .count();
        if polled == apps || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let to_polled = started.elapsed();
    eprintln!(
        "  {apps} apps: {polled} polled {:.1}s after the operator started",
        to_polled.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(a.settle.unwrap_or(a.interval))).await;
    let apiserver = ControlPlane::shared().apiserver_pid();
    let admin = ControlPlane::shared().admin().await;
    let requests0 = apiserver_requests(&admin).await;
    let before = sims.requests(http).await;
    let cpu0 = cpu_seconds_of(pid);
    let api0 = apiserver.map(cpu_seconds_of);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.window)).await;
    let cpu = cpu_seconds_of(pid) - cpu0;
    let api = apiserver.map(cpu_seconds_of).zip(api0).map(|(b, a)| b - a);
    let wall = t0.elapsed().as_secs_f64();
    let mut served: Vec<(String, f64)> = apiserver_requests(&admin)
        .await
        .into_iter()
        .map(|(what, n)| {
            let rate = (n - requests0.get(&what).copied().unwrap_or(0.0)) / wall;
            (what, rate)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    served.sort_by(|a, b| b.1.total_cmp(&a.1));
    let after = sims.requests(http).await;
    let polls: u64 = nodes
        .iter()
        .map(|n| after.get(n).copied().unwrap_or(0) - before.get(n).copied().unwrap_or(0))
        .sum();
    let row = Row {
        apps,
        rss_kib: status_field(pid, "VmRSS:"),
        hwm_kib: status_field(pid, "VmHWM:"),
        anon_kib: status_field(pid, "RssAnon:"),
        cpu_percent: cpu / wall * 100.0,
        apiserver_percent: api.map_or(f64::NAN, |s| s / wall * 100.0),
        apiserver_requests: served,
        polls_per_s: polls as f64 / wall,
        fds: open_fds(pid),
        threads: status_field(pid, "Threads:"),
        polled,
        stats_targets: None,
        heap_kib: None,
        status_deferred: None,
        setup,
        to_polled,
        detection: None,
    };
    if let Some(log) = &process.log {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let warnings = text.lines().filter(|l| l.contains("\"WARN\"")).count();
        let errors = text.lines().filter(|l| l.contains("\"ERROR\"")).count();
        eprintln!(
            "  kco log: {warnings} warnings, {errors} errors ({})",
            log.display()
        );
        for level in ["ERROR", "WARN"] {
            let marked = format!("\"{level}\"");
            if let Some(last) = text.lines().rfind(|l| l.contains(&marked)) {
                eprintln!("  last {level}: {}", truncate(last, 400));
            }
        }
    }
    row
}

/// The requests the apiserver has served since it started, by verb and resource
/// (`apiserver_request_total` summed over scopes and successful codes, other
/// codes apart; WATCH counts the
/// watches started, not their events).
async fn apiserver_requests(admin: &kube::Client) -> HashMap<String, f64> {
    let mut by = HashMap::new();
    let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
        return by;
    };
    let Ok(text) = admin.request_text(request).await else {
        return by;
    };
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let subresource = label("subresource");
        let code = label("code");
        let what = format!(
            "{} {}{}{}{}",
            label("verb"),
            label("resource"),
            if subresource.is_empty() { "" } else { "/" },
            subresource,
            // Refusals (429 from the apiserver's fairness, conflicts) apart.
            if code.starts_with('2') || code.is_empty() {
                String::new()
            } else {
                format!(" ({code})")
            }
        );
        *by.entry(what).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    by
}

/// The busiest `n` kinds of request, as `1.5/s PUT leases, …`.
fn busiest(requests: &[(String, f64)], n: usize) -> String {
    requests
        .iter()
        .take(n)
        .map(|(what, rate)| format!("{rate:.2}/s {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Python of a virtualenv with the Kopf reference operator's pinned
/// packages, made once in the tool cache (keyed by the requirements' content).
fn kopf_python() -> PathBuf {
    let requirements = support::controlplane::repo_path("benches/kopf/requirements.txt");
    let pinned = std::fs::read_to_string(&requirements).expect("benches/kopf/requirements.txt");
    let digest = pinned.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let home = std::env::var_os("HOME").map(PathBuf::from).expect("HOME");
    let venv = home.join(format!(".cache/kco/kopf-venv-{digest:016x}"));
    let python = venv.join("bin/python");
    if python.exists() {
        return python;
    }
    eprintln!(
        "installing the Kopf reference operator into {}",
        venv.display()
    );
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--requirement"])
            .arg(&requirements)
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        // Half a virtualenv is not reused.
        let _ = std::fs::remove_dir_all(&venv);
        panic!(
            "cannot install benches/kopf/requirements.txt into {}",
            venv.display()
        );
    }
    python
}

/// The height a new block crosses in the detection measurement.
const THRESHOLD: u32 = 1_000_000;

/// With `--latency` (or `--subscribe`): a rule that records when the height
/// passes [`THRESHOLD`] — the pushed `newBlock` height with `--subscribe`, the
/// polled one without.
fn with_height_rule(mut spec: serde_json::Value, a: &Args) -> serde_json::Value {
    if !a.latency {
        return spec;
    }
    let field = if a.subscribe {
        spec["subscriptions"] = json!([{"name": "blocks",
            "query": "subscription { newBlock { protocolState { consensusState { blockHeight } } } }"}]);
        "@blocks.protocolState.consensusState.blockHeight"
    } else {
        "daemonStatus.blockchainLength"
    };
    spec["actions"] = json!([{"name": "height",
        "trigger": {"field": field, "condition": "greaterThan", "value": THRESHOLD}}]);
    spec
}

/// What the detection measurement saw.
struct Detection {
    sample: usize,
    seen: usize,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU per pushed message (µs), with `--subscribe`.
    cpu_per_message_us: Option<f64>,
}

impl Simulators {
    /// The control API of the process serving `node`.
    fn control_of(&self, node: SocketAddr) -> SocketAddr {
        let index = self.nodes.iter().position(|n| *n == node).unwrap_or(0);
        self.processes[index / NODES_PER_SIMULATOR].control
    }

    /// Sends `body` to `path` under each of `nodes` (64 at a time).
    async fn tell(
        &self,
        http: &reqwest::Client,
        nodes: &[SocketAddr],
        (method, path): (reqwest::Method, &str),
        body: &serde_json::Value,
    ) {
        futures::stream::iter(nodes)
            .map(|node| {
                let url = format!("http://{}/nodes/{node}/{path}", self.control_of(*node));
                let request = http.request(method.clone(), &url).json(body);
                async move {
                    request
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .unwrap_or_else(|e| panic!("{url}: {e}"));
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<()>>()
            .await;
    }
}

/// With `--subscribe`, the CPU `pid` spends per pushed message: `rounds` blocks
/// announced to every node, less what it spends idle (`idle_percent`).
async fn cpu_per_message(
    pid: u32,
    sims: &Simulators,
    http: &reqwest::Client,
    (apps, rounds): (usize, usize),
    idle_percent: f64,
) -> f64 {
    let nodes = &sims.nodes[..apps];
    let cpu0 = cpu_seconds_of(pid);
    let t0 = Instant::now();
    for _ in 0..rounds {
        sims.tell(
            http,
            nodes,
            (reqwest::Method::POST, "announce"),
            &json!("block"),
        )
        .await;
    }
    // Let the last round's messages be read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = idle_percent / 100.0 * t0.elapsed().as_secs_f64();
    let spent = cpu_seconds_of(pid) - cpu0 - idle;
    spent.max(0.0) / (apps * rounds) as f64 * 1e6
}

/// The time from a new block on a sample of the first `apps` nodes to the
/// rule's `TriggerFired` Event: the height set to [`THRESHOLD`] first (the
/// rule stays false), then one block more on each, the moment noted.
async fn detection(
    pid: u32,
    fleet: &Fleet<'_>,
    a: &Args,
    apps: usize,
    idle_percent: f64,
) -> Detection {
    let (sims, http) = (fleet.sims, fleet.http);
    let cpu_per_message_us = if a.subscribe && a.rounds > 0 {
        Some(cpu_per_message(pid, sims, http, (apps, a.rounds), idle_percent).await)
    } else {
        None
    };
    let step = (apps / a.sample.max(1)).max(1);
    let sample: Vec<usize> = (0..apps).step_by(step).take(a.sample).collect();
    let nodes: Vec<SocketAddr> = sample.iter().map(|i| sims.nodes[*i]).collect();
    let patch = (reqwest::Method::PATCH, "state");
    sims.tell(
        http,
        &nodes,
        patch.clone(),
        &json!({"blockchainLength": THRESHOLD}),
    )
    .await;
    // Polled (or pushed) at the threshold before the block that crosses it.
    let settle = if a.subscribe { 3 } else { a.interval + 2 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let mut at = HashMap::new();
    for (i, node) in sample.iter().zip(&nodes) {
        at.insert(format!("mina-{i:05}"), k8s_openapi::jiff::Timestamp::now());
        if a.subscribe {
            sims.tell(
                http,
                &[*node],
                (reqwest::Method::POST, "announce"),
                &json!("block"),
            )
            .await;
        } else {
            sims.tell(
                http,
                &[*node],
                patch.clone(),
                &json!({"blockchainLength": THRESHOLD + 1}),
            )
            .await;
        }
    }
    let wait = if a.subscribe { 10 } else { a.interval + 10 };
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let mut latencies = Vec::new();
    for ns in fleet.namespaces {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(fleet.client.clone(), ns);
        let listed = events
            .list(&kube::api::ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("list Events in {ns}: {e}"));
        for event in listed {
            let fired = event.reason.as_deref() == Some("TriggerFired")
                && event
                    .note
                    .as_deref()
                    .is_some_and(|n| n.contains("rule height fired"));
            let name = event.regarding.as_ref().and_then(|r| r.name.clone());
            let (Some(name), Some(time)) = (name.filter(|_| fired), event.event_time) else {
                continue;
            };
            // An Event of an earlier run (the same TargetApp names) is older.
            if let Some(start) = at.get(&name).copied()
                && time.0 >= start
            {
                at.remove(&name);
                let ms = time.0.duration_since(start).as_secs_f64() * 1000.0;
                latencies.push(ms);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Detection {
        sample: sample.len(),
        seen: latencies.len(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        cpu_per_message_us,
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs benches too, without `--bench`: a measurement
    // of several minutes is not a test, so it only builds there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale bench: not run (use `cargo bench --bench scale`)");
        return;
    }
    let a = args();
    let kco = PathBuf::from(env!("CARGO_BIN_EXE_kco"));
    let max = a.apps.last().copied().unwrap_or(0);
    let kind = match a.kind {
        Kind::Pod => "pod",
        Kind::Url => "url",
    };
    eprintln!(
        "scale bench: {} ({kind} targets, {}s interval, {} namespaces, {} in flight)",
        kco.display(),
        a.interval,
        a.namespaces,
        a.concurrency
    );
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let client = cp.admin().await;
    let http = fixtures::http_client();
    let sims = simulators(&kco, max);
    let mut namespaces = Vec::new();
    for _ in 0..a.namespaces {
        namespaces.push(cp.namespace("scale").await);
    }
    let extra: &[&str] = match a.kind {
        Kind::Pod => &[],
        Kind::Url => &["--endpoint-allowed-cidrs", "127.0.0.0/8"],
    };

    let kopf = a.against_kopf.then(|| {
        let kubeconfig = cp
            .kubeconfig(&support::User::Admin)
            .expect("an admin kubeconfig for Kopf");
        (kopf_python(), kubeconfig)
    });
    let mut rows = Vec::new();
    let mut kopf_rows = Vec::new();
    eprintln!("baseline: no TargetApps");
    let fleet = Fleet {
        sims: &sims,
        http: &http,
        client: &client,
        namespaces: &namespaces,
    };
    rows.push(measure(&kco, extra, &fleet, &a, 0, Duration::ZERO).await);
    let mut have = 0;
    for &n in &a.apps {
        eprintln!("creating TargetApps {have}..{n}");
        let t0 = Instant::now();
        create_apps(&client, &namespaces, &sims.nodes, &a, have..n).await;
        let setup = t0.elapsed();
        eprintln!(
            "  {} TargetApps in {:.1}s ({:.0}/s)",
            n - have,
            setup.as_secs_f64(),
            (n - have) as f64 / setup.as_secs_f64()
        );
        have = n;
        rows.push(measure(&kco, extra, &fleet, &a, n, setup).await);
        if let Some((python, kubeconfig)) = &kopf {
            eprintln!("  the same {n} TargetApps polled by the Kopf reference operator");
            kopf_rows.push(measure_kopf(python, kubeconfig, &sims, &http, &a, n, setup).await);
        }
    }

    let base = &rows[0];
    let (base_rss, base_hwm, base_anon) = (base.rss_kib, base.hwm_kib, base.anon_kib);
    println!(
        "\nscale bench: {kind} targets, {}s interval, {} namespaces, {}s measured, {}\n",
        a.interval,
        a.namespaces,
        a.window,
        kco.display()
    );
    println!(
        "| TargetApps | polled | RSS MiB | peak RSS MiB | KiB per TargetApp (RSS) | KiB per TargetApp (peak) | CPU % of a core | apiserver CPU % | polls/s | fds | threads | setup s | start to all polled s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let per = |v: f64, b: f64| {
            if r.apps == 0 {
                "—".to_owned()
            } else {
                format!("{:.1}", (v - b) / r.apps as f64)
            }
        };
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {:.0} | {:.1} |",
            r.apps,
            r.polled,
            r.rss_kib / 1024.0,
            r.hwm_kib / 1024.0,
            per(r.rss_kib, base_rss),
            per(r.hwm_kib, base_hwm),
            r.cpu_percent,
            r.apiserver_percent,
            r.polls_per_s,
            r.fds,
            r.threads,
            r.setup.as_secs_f64(),
            r.to_polled.as_secs_f64(),
        );
    }
    println!();
    for r in &rows {
        let anon_per = if r.apps == 0 {
            0.0
        } else {
            (r.anon_kib - base_anon) / r.apps as f64
        };
        // The allocator's view: what is live, and what it keeps resident for it.
        let heap = match (r.heap_kib, base.heap_kib) {
            (Some((live, resident)), Some((base_live, base_resident))) if r.apps > 0 => format!(
                "live heap {:.1} MiB ({:.1} KiB per TargetApp), allocator resident {:.1} MiB ({:.1} KiB per TargetApp)",
                live / 1024.0,
                (live - base_live) / r.apps as f64,
                resident / 1024.0,
                (resident - base_resident) / r.apps as f64
            ),
            (Some((live, resident)), _) => format!(
                "live heap {:.1} MiB, allocator resident {:.1} MiB",
                live / 1024.0,
                resident / 1024.0
            ),
            (None, _) => "live heap unavailable".to_owned(),
        };
        println!(
            "- {} TargetApps: RssAnon {:.1} MiB ({anon_per:.1} KiB per TargetApp), {heap}, /stats targets {}, status writes put off {}",
            r.apps,
            r.anon_kib / 1024.0,
            r.stats_targets
                .map_or_else(|| "unavailable".to_owned(), |t| t.to_string()),
            r.status_deferred
                .map_or_else(|| "unavailable".to_owned(), |n| format!("{n:.0}")),
        );
    }
    println!();
    for r in &rows {
        println!(
            "- apiserver requests with {} TargetApps and KCO: {}",
            r.apps,
            busiest(&r.apiserver_requests, 8)
        );
    }
    for r in &kopf_rows {
        println!(
            "- apiserver requests with {} TargetApps and Kopf: {}",
            r.apps,
            busiest(&r.apiserver_requests, 8)
        );
    }
    if !kopf_rows.is_empty() {
        compare_with_kopf(&rows[1..], &kopf_rows);
    }
    let mode = if a.subscribe {
        format!("subscribed (newBlock), polled every {} s", a.interval)
    } else {
        format!("polled every {} s", a.interval)
    };
    if a.latency {
        println!("\nfrom a new block to the rule's Event ({mode}):\n");
        println!(
            "| TargetApps | sample | Events seen | p50 ms | p99 ms | CPU per pushed message µs |"
        );
        println!("|---|---|---|---|---|---|");
    }
    for r in &rows[1..] {
        if let Some(d) = &r.detection {
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {} |",
                r.apps,
                d.sample,
                d.seen,
                d.p50_ms,
                d.p99_ms,
                d.cpu_per_message_us
                    .map_or_else(|| "—".to_owned(), |us| format!("{us:.0}")),
            );
        }
    }
    // One line per figure for `./build.sh bench`'s report.
    println!();
    for r in &rows[1..] {
        println!(
            "headline | scale | {} {kind} TargetApps: KiB per TargetApp (RSS), descriptors, s from start to all polled | {:.1}, {}, {:.1}",
            r.apps,
            (r.rss_kib - base_rss) / r.apps as f64,
            r.fds,
            r.to_polled.as_secs_f64()
        );
    }
    for r in &rows[1..] {
        if let Some(d) = &r.detection {
            println!(
                "headline | scale | {} URL TargetApps {mode}: new block to Event p50, p99 ms; KiB per TargetApp; CPU % idle | {:.0}, {:.0}, {:.1}, {:.1}",
                r.apps,
                d.p50_ms,
                d.p99_ms,
                (r.rss_kib - base_rss) / r.apps as f64,
                r.cpu_percent
            );
        }
    }
    for (k, p) in rows[1..].iter().zip(&kopf_rows) {
        println!(
            "headline | scale | {} URL TargetApps, of the Kopf operator's: CPU, RSS, apiserver CPU | {:.2}×, {:.2}×, {:.2}×",
            k.apps,
            k.cpu_percent / p.cpu_percent,
            k.rss_kib / p.rss_kib,
            k.apiserver_percent / p.apiserver_percent
        );
    }
}

/// KCO against the Kopf reference operator on the same TargetApps, as ratios
/// (goals: CPU ≤ 0.25×, RSS ≤ 0.5×, apiserver CPU ≤ 1.25×).
fn compare_with_kopf(kco: &[Row], kopf: &[Row]) {
    println!("\nagainst the Kopf reference operator (same TargetApps, same window):\n");
    println!(
        "| TargetApps | polled (KCO / Kopf) | CPU % KCO | CPU % Kopf | CPU ratio | RSS MiB KCO | RSS MiB Kopf | RSS ratio | apiserver CPU % with KCO | with Kopf | apiserver ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, p) in kco.iter().zip(kopf) {
        println!(
            "| {} | {} / {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
            k.apps,
            k.polled,
            p.polled,
            k.cpu_percent,
            p.cpu_percent,
            k.cpu_percent / p.cpu_percent,
            k.rss_kib / 1024.0,
            p.rss_kib / 1024.0,
            k.rss_kib / p.rss_kib,
            k.apiserver_percent,
            p.apiserver_percent,
            k.apiserver_percent / p.apiserver_percent,
        );
    }
}
