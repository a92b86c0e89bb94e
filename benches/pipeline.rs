//! The monitoring pipeline under load: N simulated Mina nodes polled through the
//! whole pipeline (schedule, HTTP, parse, diff, triggers), and, against the same
//! simulators, a bare HTTP client loop at full speed for comparison.
//!
//! ```text
//! cargo bench --bench pipeline                          # 1k, 5k and 10k targets
//! cargo bench --bench pipeline -- --targets 2000 --interval 10 --seconds 30
//! cargo bench --bench pipeline -- --targets 1000 --route url   # URL targets
//! ```
//!
//! `--route url` polls every node as a user-supplied URL, with the endpoint policy
//! checked before every poll and the policy-checked client (what absolute
//! `graphqlEndpoint`s get); the default is a pod target's route.
//!
//! The saturated pipeline (a 1 ms interval: every poll due at once) and the
//! bare client take turns, three of each, so that a slow spell of the shared
//! machine falls on both; besides their throughput, the bench prints the CPU
//! each spends per poll and the simulators' CPU per poll in each, which tells
//! where the remaining difference goes.
//!
//! Each size runs in a fresh process (so peak RSS is its own) with the simulators
//! in child processes (`kco simulate`, at most 4,000 nodes each: the machine allows
//! 20,000 open files per process). Prints one table row per size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

// The allocator `kco` runs with: the figures are the operator's (glibc's malloc
// spent a fifth of the saturated pipeline's CPU in this bench, under lock
// contention between the runtime's threads).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{SimulatorProcess, cpu_seconds, cpu_seconds_of};
use kco::monitor::discovery::Target;
use kco::monitor::poll::{Poller, QueryBody};
use kco::monitor::state::TargetState;
use kco::monitor::target::{Report, Schedule, poll_loop};
use kco::targetapp::{ActionRule, DEFAULT_STATE_QUERY};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NODES_PER_SIMULATOR: usize = 4000;
/// The saturated pipeline and the bare client take turns this many times.
const SATURATED_ROUNDS: u32 = 3;

struct Args {
    targets: Vec<usize>,
    interval: u64,
    seconds: u64,
    single: bool,
    /// Poll as URL targets (the endpoint policy before every poll).
    url: bool,
}

fn args() -> Args {
    let mut a = Args {
        targets: vec![1000, 5000, 10_000],
        interval: 10,
        seconds: 30,
        single: false,
        url: false,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        match raw[i].as_str() {
            "--targets" => {
                a.targets = value
                    .split(',')
                    .map(|v| v.parse().expect("--targets N[,N...]"))
                    .collect()
            }
            "--interval" => a.interval = value.parse().expect("--interval SECONDS"),
            "--seconds" => a.seconds = value.parse().expect("--seconds SECONDS"),
            "--route" => a.url = value == "url",
            "--single" => {
                a.single = true;
                i += 1;
                continue;
            }
            // cargo bench passes --bench; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn main() {
    // `cargo test --all-targets` runs benches too, without `--bench`: a measurement
    // of several minutes is not a test, so it only builds there.
    if !std::env::args().any(|a| a == "--bench" || a == "--single") {
        println!("pipeline bench: not run (use `cargo bench --bench pipeline`)");
        return;
    }
    let a = args();
    if a.single {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let row = runtime.block_on(run(a.targets[0], a.interval, a.seconds, a.url));
        println!("{row}");
        return;
    }
    println!(
        "pipeline bench: {} targets, interval {}s, {}s measured per phase, {} cores\n",
        if a.url { "URL" } else { "pod" },
        a.interval,
        a.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| targets | scheduled polls/s | CPU s / 1k polls | CPU % of a core | peak RSS MiB | lateness p50 ms | p99 ms | pipeline polls/s (saturated) | bare client polls/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut headlines = Vec::new();
    let mut costs = Vec::new();
    let mut saturated = Vec::new();
    for n in a.targets {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--single",
                "--targets",
                &n.to_string(),
                "--interval",
                &a.interval.to_string(),
            ])
            .args(["--seconds", &a.seconds.to_string()])
            .args(["--route", if a.url { "url" } else { "pod" }])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("bad output: {line}"));
        println!(
            "| {} | {:.0} | {:.3} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |",
            r["targets"],
            r["scheduled_polls_per_s"].as_f64().unwrap(),
            r["cpu_s_per_1k_polls"].as_f64().unwrap(),
            r["cpu_percent_of_core"].as_f64().unwrap(),
            r["peak_rss_mib"].as_f64().unwrap(),
            r["lateness_p50_ms"].as_f64().unwrap(),
            r["lateness_p99_ms"].as_f64().unwrap(),
            r["pipeline_polls_per_s"].as_f64().unwrap(),
            r["bare_polls_per_s"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
        );
        let us = |key: &str| r[key].as_f64().unwrap_or(0.0);
        let cpu = us("cpu_us_per_poll");
        let parse = us("parse_us_per_poll");
        let observe = us("observe_us_per_poll");
        costs.push(format!(
            "| {} | {cpu:.0} | {parse:.1} | {observe:.1} | {:.0} |",
            r["targets"],
            (cpu - parse - observe).max(0.0)
        ));
        saturated.push(format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            r["targets"],
            us("saturated_pipeline_cpu_us_per_poll"),
            us("saturated_bare_cpu_us_per_poll"),
            us("saturated_pipeline_simulators_us_per_poll"),
            us("saturated_bare_simulators_us_per_poll"),
            r["ratio"].as_f64().unwrap(),
        ));
        headlines.push(format!(
            "headline | pipeline | {} targets: saturated throughput, of the bare client's | {:.2}",
            r["targets"],
            r["ratio"].as_f64().unwrap()
        ));
        headlines.push(format!(
            "headline | pipeline | {} targets: CPU s per 1,000 scheduled polls | {:.3}",
            r["targets"],
            r["cpu_s_per_1k_polls"].as_f64().unwrap()
        ));
    }
    println!(
        "\nwhere a scheduled poll's CPU goes (µs per poll, the process's CPU over the polls):\n"
    );
    println!(
        "| targets | all | parse the answer | diff and rules | the rest: HTTP on loopback, scheduling, channels |"
    );
    println!("|---|---|---|---|---|");
    for line in costs {
        println!("{line}");
    }
    println!(
        "\nsaturated, the pipeline and the bare client taking turns ({SATURATED_ROUNDS} each): CPU µs per poll\n"
    );
    println!(
        "| targets | pipeline | bare client | simulators, for the pipeline | simulators, for the bare client | throughput ratio |"
    );
    println!("|---|---|---|---|---|---|");
    for line in saturated {
        println!("{line}");
    }
    // One line per figure for `./build.sh bench`'s report.
    println!();
    for line in headlines {
        println!("{line}");
    }
}

/// Simulator processes serving `n` nodes; killed on drop.
struct Simulators {
    processes: Vec<SimulatorProcess>,
    nodes: Vec<SocketAddr>,
}

impl Simulators {
    /// The CPU seconds the simulator processes have used.
    fn cpu_seconds(&self) -> f64 {
        self.processes.iter().map(|p| cpu_seconds_of(p.pid())).sum()
    }
}

fn simulators(n: usize) -> Simulators {
    let mut sims = Simulators {
        processes: Vec::new(),
        nodes: Vec::new(),
    };
    for (k, start) in (0..n).step_by(NODES_PER_SIMULATOR).enumerate() {
        let count = NODES_PER_SIMULATOR.min(n - start);
        let first = Ipv4Addr::new(127, 20 + k as u8, 0, 1);
        let process = SimulatorProcess::start_here(first, count);
        sims.nodes.extend(&process.nodes);
        sims.processes.push(process);
    }
    sims
}

fn proc_field(file: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn rules() -> Vec<kco::triggers::Rule> {
    let raw: Vec<ActionRule> = serde_json::from_value(json!([
        {"name": "offline", "action": "restart_pod",
         "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}},
        {"name": "lagging", "action": "restart_pod", "trigger": {"field": "daemonStatus.blockchainLength",
         "condition": "lessThan", "valueFrom": {"field": "daemonStatus.highestBlockLengthReceived", "offset": -5}}},
        {"name": "down", "action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}},
        {"name": "few-peers", "action": "restart_pod",
         "trigger": {"field": "daemonStatus.peers.#", "condition": "lessThan", "value": 2}}
    ]))
    .unwrap();
    kco::triggers::compile(&raw).unwrap()
}

/// Runs the pipeline over the simulators' nodes with `interval` for `seconds`; returns what
/// was taken in while measuring and what the measured stretch took.
async fn pipeline(
    sims: &Simulators,
    interval: Duration,
    warmup: Duration,
    seconds: u64,
    url: bool,
) -> (Consumed, Measured) {
    let nodes = &sims.nodes;
    let route = if url {
        // What an absolute graphqlEndpoint gets: the policy of the moment before
        // every poll, through the policy-checked client.
        let mut quota = kco::tenancy::Quota::default();
        quota.endpoint_policy.allow_external = true;
        quota.endpoint_policy.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        kco::monitor::target::Route::Url {
            egress: kco::tenancy::Egress::new(
                kco::tenancy::Tenants::new(quota),
                kco::tenancy::Apiserver::default(),
                Arc::default(),
                "kco-bench".into(),
                None,
            ),
            namespace: "bench".into(),
        }
    } else {
        kco::monitor::target::Route::Pod
    };
    let poller = Poller::new(1024 * 1024, 2, "kco-test").unwrap();
    let rules = Arc::new(rules());
    // The fields the rules read: what `kco run` compares and keeps of each result.
    let fields = Arc::new(kco::triggers::referenced_fields(&rules));
    let query = QueryBody::new(DEFAULT_STATE_QUERY);
    let cancel = CancellationToken::new();
    let measuring = Arc::new(AtomicU64::new(0));
    let mut consumers = Vec::with_capacity(nodes.len());
    // As in `kco run`, each target's reports go to its TargetApp's own task (here
    // one TargetApp per target), which diffs them and evaluates the rules.
    for addr in nodes {
        let (tx, rx) = mpsc::channel::<Box<Report>>(64);
        let schedule = Schedule {
            interval,
            timeout: Duration::from_secs(5),
            query: query.clone(),
            credentials: None,
        };
        tokio::spawn(poll_loop(
            kco::monitor::target::Polled {
                target: addr.to_string(),
                url: format!("http://{addr}/graphql"),
                route: route.clone(),
                poke: None,
            },
            schedule,
            poller.clone(),
            None,
            tx,
            cancel.clone(),
        ));
        let state = TargetState::new(
            Target {
                pod: Some(addr.to_string()),
                url: format!("http://{addr}/graphql"),
            },
            &rules,
            |_| None,
        )
        .keeping(fields.clone());
        consumers.push(tokio::spawn(consume(
            rx,
            state,
            (rules.clone(), fields.clone()),
            measuring.clone(),
        )));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(1, Ordering::Relaxed);
    let window = Window::open(sims);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let measured = window.close(sims);
    measuring.store(2, Ordering::Relaxed);
    cancel.cancel();
    let mut total = Consumed::default();
    for consumer in consumers {
        let one = consumer.await.unwrap();
        total.polls += one.polls;
        total.failures += one.failures;
        total.observe += one.observe;
        total.lateness.extend(one.lateness);
    }
    if total.failures > 0 {
        eprintln!("  ({} polls failed)", total.failures);
    }
    (total, measured)
}

/// A measured stretch of time: the wall time, this process's CPU and the
/// simulators'.
struct Window {
    t0: Instant,
    cpu0: f64,
    simulators0: f64,
}

struct Measured {
    wall: f64,
    cpu: f64,
    simulators_cpu: f64,
}

impl Window {
    fn open(sims: &Simulators) -> Self {
        Self {
            t0: Instant::now(),
            cpu0: cpu_seconds(),
            simulators0: sims.cpu_seconds(),
        }
    }

    fn close(self, sims: &Simulators) -> Measured {
        Measured {
            wall: self.t0.elapsed().as_secs_f64(),
            cpu: cpu_seconds() - self.cpu0,
            simulators_cpu: sims.cpu_seconds() - self.simulators0,
        }
    }
}

/// What the reports taken in while measuring were.
#[derive(Default)]
struct Consumed {
    polls: u64,
    failures: u64,
    /// Time spent diffing and evaluating rules (`TargetState::observe`).
    observe: Duration,
    lateness: Vec<f64>,
}

/// One target's reports, taken in as its TargetApp's task does.
async fn consume(
    mut rx: mpsc::Receiver<Box<Report>>,
    mut state: TargetState,
    (rules, fields): (
        Arc<Vec<kco::triggers::Rule>>,
        Arc<std::collections::BTreeSet<kco::triggers::FieldPath>>,
    ),
    measuring: Arc<AtomicU64>,
) -> Consumed {
    let mut out = Consumed::default();
    while let Some(report) = rx.recv().await {
        let counted = measuring.load(Ordering::Relaxed) == 1;
        if counted && report.report.result.is_err() {
            out.failures += 1;
        }
        let started = Instant::now();
        let _ = state.observe(
            report.report.result,
            &rules,
            &fields,
            k8s_openapi::jiff::Timestamp::now(),
        );
        if counted {
            out.observe += started.elapsed();
            out.polls += 1;
            out.lateness.push(report.lateness.as_secs_f64() * 1000.0);
        }
    }
    out
}

/// A bare client loop per node: POST the same query and read the body, at full
/// speed, for `seconds` after 2 s of warm-up. Returns the polls and what the
/// measured stretch took.
async fn bare(sims: &Simulators, seconds: u64) -> (u64, Measured) {
    let nodes = &sims.nodes;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(2)
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let cancel = CancellationToken::new();
    let body = json!({ "query": DEFAULT_STATE_QUERY });
    let mut loops = Vec::with_capacity(nodes.len());
    for addr in nodes {
        let (http, count, cancel, body) =
            (http.clone(), count.clone(), cancel.clone(), body.clone());
        let url = format!("http://{addr}/graphql");
        loops.push(tokio::spawn(async move {
            while !cancel.is_cancelled() {
                if let Ok(r) = http.post(&url).json(&body).send().await
                    && r.bytes().await.is_ok()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c0 = count.load(Ordering::Relaxed);
    let window = Window::open(sims);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let polls = count.load(Ordering::Relaxed) - c0;
    let measured = window.close(sims);
    cancel.cancel();
    for one in loops {
        let _ = one.await;
    }
    (polls, measured)
}

/// The saturated phases: the pipeline (a 1 ms interval, so every poll is due
/// at once) and the bare client, in turns of `seconds` each, `rounds` times
/// (so that a slow spell of the shared machine falls on both). Each side's
/// polls, wall time and CPU (the bench process's, the simulators') are summed
/// over its turns.
async fn saturated(sims: &Simulators, seconds: u64, rounds: u32, url: bool) -> Saturated {
    let mut out = Saturated::default();
    for round in 0..rounds {
        eprintln!("  turn {}/{rounds}: pipeline, then bare client", round + 1);
        let (consumed, measured) = pipeline(
            sims,
            Duration::from_millis(1),
            Duration::from_secs(2),
            seconds,
            url,
        )
        .await;
        out.pipeline.add(consumed.polls, &measured);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (polls, measured) = bare(sims, seconds).await;
        out.bare.add(polls, &measured);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out
}

#[derive(Default)]
struct Saturated {
    pipeline: Side,
    bare: Side,
}

/// One side's saturated turns, summed.
#[derive(Default)]
struct Side {
    polls: u64,
    wall: f64,
    cpu: f64,
    simulators_cpu: f64,
}

impl Side {
    fn add(&mut self, polls: u64, measured: &Measured) {
        self.polls += polls;
        self.wall += measured.wall;
        self.cpu += measured.cpu;
        self.simulators_cpu += measured.simulators_cpu;
    }

    fn rate(&self) -> f64 {
        if self.wall > 0.0 {
            self.polls as f64 / self.wall
        } else {
            0.0
        }
    }

    fn us_per_poll(&self, cpu: f64) -> f64 {
        us_per_poll(cpu, self.polls)
    }
}

/// `seconds` spread over `polls`, in µs per poll.
fn us_per_poll(seconds: f64, polls: u64) -> f64 {
    if polls > 0 {
        seconds / polls as f64 * 1e6
    } else {
        0.0
    }
}

/// Microseconds to parse a node's answer to the default query, as each poll does.
async fn parse_cost(node: &SocketAddr) -> f64 {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = http
        .post(format!("http://{node}/graphql"))
        .json(&json!({ "query": DEFAULT_STATE_QUERY }))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let rounds = 20_000;
    let t0 = Instant::now();
    for _ in 0..rounds {
        let parsed: serde_json::Value =
            serde_json::from_slice(std::hint::black_box(&body)).unwrap();
        std::hint::black_box(parsed);
    }
    t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(n: usize, interval: u64, seconds: u64, url: bool) -> serde_json::Value {
    kco::tls::install_crypto_provider();
    let sims = simulators(n);
    eprintln!("{n} targets: scheduled phase ({interval}s interval, {seconds}s measured)");
    let interval = Duration::from_secs(interval);
    let (scheduled, Measured { wall, cpu, .. }) = pipeline(
        &sims,
        interval,
        interval + Duration::from_secs(2),
        seconds,
        url,
    )
    .await;
    let polls = scheduled.polls;
    let mut lateness = scheduled.lateness;
    lateness.sort_by(f64::total_cmp);
    let parse_us = parse_cost(&sims.nodes[0]).await;
    let rss_scheduled = proc_field("/proc/self/status", "VmHWM:") / 1024.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let turn = (seconds.min(15) / SATURATED_ROUNDS as u64).max(1);
    eprintln!(
        "{n} targets: saturated pipeline and bare client ({SATURATED_ROUNDS} turns of {turn}s each)"
    );
    let sat = saturated(&sims, turn, SATURATED_ROUNDS, url).await;
    let (pipeline_rate, bare_rate) = (sat.pipeline.rate(), sat.bare.rate());
    json!({
        "targets": n,
        "scheduled_polls_per_s": polls as f64 / wall,
        "cpu_s_per_1k_polls": us_per_poll(cpu, polls) / 1000.0,
        "cpu_percent_of_core": cpu / wall * 100.0,
        "cpu_us_per_poll": us_per_poll(cpu, polls),
        "parse_us_per_poll": parse_us,
        "observe_us_per_poll": us_per_poll(scheduled.observe.as_secs_f64(), polls),
        "peak_rss_mib": rss_scheduled,
        "lateness_p50_ms": percentile(&lateness, 0.5),
        "lateness_p99_ms": percentile(&lateness, 0.99),
        "pipeline_polls_per_s": pipeline_rate,
        "bare_polls_per_s": bare_rate,
        "saturated_pipeline_cpu_us_per_poll": sat.pipeline.us_per_poll(sat.pipeline.cpu),
        "saturated_bare_cpu_us_per_poll": sat.bare.us_per_poll(sat.bare.cpu),
        "saturated_pipeline_simulators_us_per_poll": sat.pipeline.us_per_poll(sat.pipeline.simulators_cpu),
        "saturated_bare_simulators_us_per_poll": sat.bare.us_per_poll(sat.bare.simulators_cpu),
        "ratio": if bare_rate > 0.0 { pipeline_rate / bare_rate } else { 0.0 },
    })
}
