//! High-availability figures with real `kco run` processes against the local
//! control plane: fail-over after SIGKILL and SIGTERM of the leader, hand-off of a
//! dead replica's namespaces, and polls per replica with one and three replicas.
//!
//! ```text
//! cargo bench --bench failover                  # 10 runs of each
//! cargo bench --bench failover -- --runs 20
//! ```
//!
//! Replicas use the test timing: leader Lease 4 s (renew deadline 3 s, retry 1 s),
//! membership Lease 3 s renewed every 1 s. Production defaults are 15/10/2 and 10/2:
//! scale the figures accordingly (fail-over ≈ lease + retry, hand-off ≈ member
//! lease + renew period).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::replicas::{Replicas, fleet};

fn runs() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    println!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        ms(samples[0]),
        ms(median),
        ms(max)
    );
    let runs = samples.len();
    format!(
        "headline | failover | {name}, median ms ({runs} run{}) | {:.0}",
        if runs == 1 { "" } else { "s" },
        ms(median)
    )
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` runs benches with --test: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = runs();
    let kco = PathBuf::from(env!("CARGO_BIN_EXE_kco"));

    // Fail-over: kill the leader (SIGKILL, then SIGTERM alternately), time until
    // another replica says it leads, restart the victim.
    let mut replicas = Replicas::start(kco.clone(), "bench-leader", 3, &[]).await;
    let (mut leader, _) = replicas.wait_leader(None, Duration::from_secs(15)).await;
    let (mut killed, mut termed) = (Vec::new(), Vec::new());
    for run in 0..runs * 2 {
        let signal = if run % 2 == 0 { "KILL" } else { "TERM" };
        replicas.kill(leader, signal);
        let (next, took) = replicas
            .wait_leader(Some(leader), Duration::from_secs(20))
            .await;
        if signal == "KILL" {
            killed.push(took);
        } else {
            termed.push(took);
        }
        replicas.wait_exit(leader).await;
        replicas.spawn(leader);
        replicas.wait_ready(leader).await;
        leader = next;
    }
    drop(replicas);

    // Hand-off: 30 namespaces over 3 replicas; kill the one owning most, time until
    // the survivors own all of them (their /stats), restart it, let it settle.
    let fleet = fleet(
        "bench-shard",
        30,
        |_| json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}),
    )
    .await;
    let all: BTreeSet<String> = fleet.nodes.keys().cloned().collect();
    let mut replicas = Replicas::start(kco.clone(), "bench-shard-leases", 3, &[]).await;
    let mut handoffs = Vec::new();
    for run in 0..runs {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let victim = run % 3;
        replicas.kill(victim, "KILL");
        let started = Instant::now();
        loop {
            let mut covered = BTreeSet::new();
            for i in (0..3).filter(|i| *i != victim) {
                if let Some(stats) = replicas.stats(i).await {
                    let owned: BTreeSet<String> =
                        serde_json::from_value(stats["ownedNamespaces"].clone())
                            .unwrap_or_default();
                    covered.extend(owned.into_iter().filter(|ns| all.contains(ns)));
                }
            }
            if covered == all {
                handoffs.push(started.elapsed());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no hand-off");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replicas.wait_exit(victim).await;
        replicas.spawn(victim);
        replicas.wait_ready(victim).await;
    }

    // Polls per replica, same fleet (30 targets at 1 s): three replicas, then one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let per_replica = |seen: &BTreeMap<String, BTreeSet<String>>| {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for pollers in seen.values() {
            for p in pollers {
                *count.entry(p.clone()).or_default() += 1;
            }
        }
        count
    };
    let three = per_replica(&fleet.pollers(Duration::from_secs(5)).await);
    let three_polls = fleet_polls(&fleet, Duration::from_secs(10)).await;
    replicas.kill(1, "TERM");
    replicas.kill(2, "TERM");
    replicas.wait_exit(1).await;
    replicas.wait_exit(2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let one = per_replica(&fleet.pollers(Duration::from_secs(5)).await);
    let one_polls = fleet_polls(&fleet, Duration::from_secs(10)).await;

    println!("\n| figure | runs | min ms | median ms | max ms |\n|---|---|---|---|---|");
    let headlines = [
        summary("fail-over after SIGKILL of the leader", killed),
        summary("fail-over after SIGTERM of the leader", termed),
        summary("hand-off of a dead replica's namespaces", handoffs),
    ];
    println!("\n| replicas | namespaces per replica | polls/s per replica |\n|---|---|---|");
    println!("| 3 | {three:?} | {three_polls:?} |");
    println!("| 1 | {one:?} | {one_polls:?} |");
    // One line per figure for `./build.sh bench`'s report.
    println!();
    for line in headlines {
        println!("{line}");
    }
}

/// Polls per second each replica made over `window`, from the nodes' counters.
async fn fleet_polls(fleet: &support::replicas::Fleet, window: Duration) -> BTreeMap<String, f64> {
    for addr in fleet.nodes.values() {
        fleet.sim.reset_requests(*addr).await.unwrap();
    }
    tokio::time::sleep(window).await;
    let mut polls: BTreeMap<String, f64> = BTreeMap::new();
    for addr in fleet.nodes.values() {
        let info = fleet.sim.node(*addr).await.unwrap();
        for (agent, n) in info.requests_by_agent {
            let replica = agent
                .split_once('(')
                .map(|(_, r)| r.trim_end_matches(')').to_owned())
                .unwrap_or(agent);
            *polls.entry(replica).or_default() += n as f64 / window.as_secs_f64();
        }
    }
    polls
}
