//! Memory and schedule under hostile endpoints: healthy targets polled once a
//! second through KCO's poll loops, alone and beside targets that trickle, send
//! 100 MB, nest 100,000 levels, send invalid UTF-8, redirect, answer 429, present
//! an untrusted certificate or never answer; and beside 500 targets of another
//! tenant that each send a body just under the cap, slowly, with and without the
//! bound on bytes in flight.
//!
//! ```text
//! cargo bench --bench hostile
//! cargo bench --bench hostile -- --healthy 200 --seconds 30
//! ```
//!
//! Each scenario runs in a fresh process (so peak RSS, VmHWM, is its own) with the
//! simulated nodes in a `kco simulate` child process. Prints one table row per
//! scenario: peak RSS, the healthy targets' polls and lateness, and the hostile
//! targets' failures by reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

// The allocator `kco` runs with: the peak RSS figures are the operator's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::SimulatorProcess;
use kco::monitor::inflight::{DEFAULT_REPLICA_BYTES, DEFAULT_TENANT_BYTES, InFlight};
use kco::monitor::poll::{Poller, QueryBody};
use kco::monitor::target::{Report, Schedule, poll_loop};
use kco::simulator::Faults;
use kco::targetapp::DEFAULT_STATE_QUERY;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Hostile targets of a scenario: URL scheme and faults.
type Hostile = Vec<(&'static str, Faults)>;

/// One scenario: name, hostile targets, response cap, and whether the two tenants
/// (healthy and hostile) read their bodies within their shares of the bytes in
/// flight (`monitor::inflight`, default sizes).
type Scenario = (&'static str, Hostile, u64, bool);

/// The scenarios.
fn scenarios() -> Vec<Scenario> {
    let mib = 1024 * 1024;
    // A body just under the cap, sent in 64 KiB pieces 200 ms apart: it holds its
    // reader's buffer (1 MiB once grown) until the 2 s timeout cuts it.
    let slow_mib = || {
        (
            "http",
            Faults {
                body_bytes: Some(1_000_000),
                trickle_ms: 200,
                trickle_bytes: Some(64 * 1024),
                ..Default::default()
            },
        )
    };
    let huge = || Faults {
        body_bytes: Some(100_000_000),
        ..Default::default()
    };
    let every = vec![
        (
            "http",
            Faults {
                trickle_ms: 50,
                ..Default::default()
            },
        ),
        ("http", huge()),
        (
            "http",
            Faults {
                nested_depth: Some(100_000),
                ..Default::default()
            },
        ),
        (
            "http",
            Faults {
                invalid_utf8: true,
                ..Default::default()
            },
        ),
        (
            "http",
            Faults {
                redirect_to: Some("http://169.254.169.254/latest/meta-data/".into()),
                ..Default::default()
            },
        ),
        (
            "http",
            Faults {
                http_status: Some(429),
                retry_after_secs: Some(3),
                ..Default::default()
            },
        ),
        (
            "https",
            Faults {
                untrusted_tls: true,
                ..Default::default()
            },
        ),
        (
            "http",
            Faults {
                hang: true,
                ..Default::default()
            },
        ),
    ];
    vec![
        ("healthy only", Vec::new(), mib, false),
        ("+ one of each hostile", every, mib, false),
        (
            "+ 20 x 100 MB",
            (0..20).map(|_| ("http", huge())).collect(),
            mib,
            false,
        ),
        (
            "+ 20 x 100 MB, 64 MiB cap",
            (0..20).map(|_| ("http", huge())).collect(),
            64 * mib,
            false,
        ),
        (
            "+ 500 x 1 MB slowly, one tenant, no bytes-in-flight bound",
            (0..500).map(|_| slow_mib()).collect(),
            mib,
            false,
        ),
        (
            "+ 500 x 1 MB slowly, one tenant, within its share",
            (0..500).map(|_| slow_mib()).collect(),
            mib,
            true,
        ),
    ]
}

struct Args {
    healthy: usize,
    seconds: u64,
    single: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        healthy: 100,
        seconds: 20,
        single: None,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < raw.len() {
        let value = raw.get(i + 1).cloned().unwrap_or_default();
        match raw[i].as_str() {
            "--healthy" => a.healthy = value.parse().expect("--healthy N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds SECONDS"),
            "--single" => a.single = Some(value.parse().expect("--single INDEX")),
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
    // of minutes is not a test, so it only builds there.
    if !std::env::args().any(|a| a == "--bench" || a == "--single") {
        println!("hostile bench: not run (use `cargo bench --bench hostile`)");
        return;
    }
    let a = args();
    if let Some(index) = a.single {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let row = runtime.block_on(run(index, a.healthy, a.seconds));
        println!("{row}");
        return;
    }
    println!(
        "hostile bench: {} healthy targets polled every 1 s, {} s measured per scenario, {} cores\n",
        a.healthy,
        a.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| scenario | response cap | peak RSS MiB | healthy polls/s | healthy lateness p99 ms | healthy failures | hostile failures by reason |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut headlines = Vec::new();
    for (index, (name, _, cap, _)) in scenarios().iter().enumerate() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--single", &index.to_string()])
            .args(["--healthy", &a.healthy.to_string()])
            .args(["--seconds", &a.seconds.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let r: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|_| panic!("bad output: {line}"));
        println!(
            "| {name} | {} MiB | {:.0} | {:.1} | {:.1} | {} | {} |",
            cap / 1024 / 1024,
            r["peak_rss_mib"].as_f64().unwrap(),
            r["healthy_polls_per_s"].as_f64().unwrap(),
            r["healthy_lateness_p99_ms"].as_f64().unwrap(),
            r["healthy_failures"],
            r["hostile"].as_str().unwrap(),
        );
        headlines.push(format!(
            "headline | hostile | {name} ({} MiB cap): peak RSS MiB, healthy lateness p99 ms | {:.0}, {:.1}",
            cap / 1024 / 1024,
            r["peak_rss_mib"].as_f64().unwrap(),
            r["healthy_lateness_p99_ms"].as_f64().unwrap(),
        ));
    }
    // One line per figure for `./build.sh bench`'s report.
    println!();
    for line in headlines {
        println!("{line}");
    }
}

/// A `kco simulate` child serving `count` nodes from 127.31.0.1; killed on drop.
fn simulator(count: usize) -> SimulatorProcess {
    SimulatorProcess::start_here(Ipv4Addr::new(127, 31, 0, 1), count)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(index: usize, healthy: usize, seconds: u64) -> serde_json::Value {
    kco::tls::install_crypto_provider();
    let (_, hostile, cap, shares) = scenarios().swap_remove(index);
    let sim = simulator(healthy + hostile.len());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut targets = Vec::new();
    for (i, addr) in sim.nodes.iter().enumerate() {
        let scheme = match hostile.get(i.wrapping_sub(healthy)) {
            Some((scheme, faults)) if i >= healthy => {
                let url = format!("http://{}/nodes/{addr}/faults", sim.control);
                let response = http.put(url).json(faults).send().await.unwrap();
                assert!(response.status().is_success(), "faults for {addr}");
                scheme
            }
            _ => "http",
        };
        targets.push((i < healthy, format!("{scheme}://{addr}/graphql")));
    }

    let poller = Poller::new(cap, 0, "kco-bench").unwrap();
    let inflight = InFlight::new(DEFAULT_REPLICA_BYTES, DEFAULT_TENANT_BYTES);
    let poller_of = |healthy: bool| match (shares, healthy) {
        (false, _) => poller.clone(),
        (true, true) => poller.clone().with_share(inflight.share("healthy")),
        (true, false) => poller.clone().with_share(inflight.share("hostile")),
    };
    let schedule = Schedule {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        query: QueryBody::new(DEFAULT_STATE_QUERY),
        credentials: None,
    };
    let (tx, mut rx) = mpsc::channel::<Box<Report>>(4096);
    let cancel = CancellationToken::new();
    let healthy_urls: std::collections::BTreeSet<String> = targets
        .iter()
        .filter(|(h, _)| *h)
        .map(|(_, u)| u.clone())
        .collect();
    for (healthy, url) in &targets {
        tokio::spawn(poll_loop(
            kco::monitor::target::Polled {
                target: url.clone(),
                url: url.clone(),
                route: kco::monitor::target::Route::Pod,
                poke: None,
            },
            schedule.clone(),
            poller_of(*healthy),
            None,
            tx.clone(),
            cancel.clone(),
        ));
    }
    drop(tx);
    // Warm up (every loop has started), then measure.
    let warmup = Instant::now() + Duration::from_secs(3);
    let end = warmup + Duration::from_secs(seconds);
    let mut lateness = Vec::new();
    let mut healthy_failures = 0u64;
    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut measured_from = None;
    while let Ok(Some(report)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
        if Instant::now() < warmup {
            continue;
        }
        measured_from.get_or_insert_with(Instant::now);
        if healthy_urls.contains(&report.url) {
            lateness.push(report.lateness.as_secs_f64() * 1000.0);
            if report.report.result.is_err() {
                healthy_failures += 1;
            }
        } else if let Err(failure) = &report.report.result {
            *reasons.entry(failure.reason()).or_default() += 1;
        }
    }
    cancel.cancel();
    let wall = measured_from.map_or(1.0, |t| t.elapsed().as_secs_f64());
    let polls = lateness.len();
    lateness.sort_by(f64::total_cmp);
    let hostile = reasons
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    json!({
        "peak_rss_mib": peak_rss_mib(),
        "healthy_polls_per_s": polls as f64 / wall,
        "healthy_lateness_p99_ms": percentile(&lateness, 0.99),
        "healthy_failures": healthy_failures,
        "hostile": if hostile.is_empty() { "-".to_owned() } else { hostile },
    })
}
