//! The chaos run: three `kco run` replicas and 200 targets whose states flip on a
//! schedule (a quarter of them heard by subscription, the rest polled), a
//! replica killed with SIGKILL at random every 20 s (and started again), and
//! kube-apiserver stopped and started once half-way.
//!
//! Short mode (the default, in `./build.sh test`): 150 s. Long mode:
//! `KCO_CHAOS_SECS=1800 cargo test --test chaos -- --nocapture`. The report
//! (`samples.csv`, `report.txt`) goes to `target/chaos/` (or `$KCO_REPORT_DIR/chaos`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::Duration;

use support::scenario::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_firing_acts_once_through_kills_and_an_apiserver_restart() {
    let plan = Plan {
        prefix: "chaos",
        targets: std::env::var("KCO_CHAOS_TARGETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200),
        duration: scenario::seconds_from_env("KCO_CHAOS_SECS", 150),
        hold: Duration::from_secs(20),
        kill_every: Some(Duration::from_secs(20)),
        signal: "KILL",
        victims: vec![0, 1, 2],
        apiserver_down: Some(Duration::from_secs(5)),
        sample_every: Duration::from_secs(10),
        // A quarter of the TargetApps fire on what their node pushes.
        subscribed_every: 4,
    };
    let outcome = scenario::run(scenario::kco_binary(env!("CARGO_BIN_EXE_kco")), plan).await;
    let dir = scenario::report_dir("chaos");
    outcome.write(&dir).unwrap();
    println!(
        "{}\n{}\n(report in {})",
        outcome.report(),
        outcome.explain(),
        dir.display()
    );

    // One kill every 20 s, none while the apiserver is down and the new
    // TargetApps are checked: at least three in the short run.
    assert!(
        outcome.kills >= 3,
        "the run killed replicas: {}",
        outcome.kills
    );
    assert!(
        outcome.apiserver_outage.is_some(),
        "the apiserver restarted"
    );
    assert!(
        outcome.total_firings() >= 200,
        "every target fired at least once"
    );
    // Exactly once: every episode the harness made got one action, through the
    // kills and the apiserver restart (the report lists the namespaces otherwise).
    outcome.assert_exactly_once();
    // No zombie: after the restart every replica that ran through it polls new
    // TargetApps (so its TargetApp, pod and Namespace watches came back).
    let pollers: std::collections::BTreeSet<&String> =
        outcome.after_restart.values().flatten().collect();
    assert!(
        outcome.after_restart.values().all(|p| !p.is_empty()),
        "each new TargetApp is polled: {:?}",
        outcome.after_restart
    );
    assert_eq!(
        pollers,
        outcome.survivors.iter().collect(),
        "every replica that ran through the restart polls new TargetApps: {:?}",
        outcome.after_restart
    );
    assert_eq!(
        outcome.unexpected_exits,
        Vec::<String>::new(),
        "no replica exited on its own"
    );
}
