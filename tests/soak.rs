//! The soak run: three `kco run` replicas and a few hundred targets whose states
//! change on a schedule, actions firing, and one replica restarted (SIGTERM) now
//! and then. Time is compressed: targets are polled every second (a day at a
//! typical 30 s interval is ~1 hour here). Each replica's RSS, open file
//! descriptors, poll lateness and errors are sampled; the report (`samples.csv`,
//! `report.txt` with ASCII charts) goes to `target/soak/` (or `$KCO_REPORT_DIR/soak`).
//!
//! `./build.sh test` runs 2 minutes; `./build.sh soak [seconds]` runs longer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::time::Duration;

use support::scenario::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_load_keeps_memory_descriptors_and_lateness_flat() {
    let duration = scenario::seconds_from_env("KCO_SOAK_SECS", 120);
    let plan = Plan {
        prefix: "soak",
        targets: std::env::var("KCO_SOAK_TARGETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
        duration,
        hold: Duration::from_secs(30),
        // Only kco-2 restarts, so kco-0 and kco-1 live through the whole run.
        kill_every: Some(Duration::from_secs(
            std::env::var("KCO_SOAK_RESTART_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(60),
        )),
        signal: "TERM",
        victims: vec![2],
        apiserver_down: None,
        sample_every: scenario::seconds_from_env("KCO_SOAK_SAMPLE_EVERY", 5),
        subscribed_every: 0,
    };
    let outcome = scenario::run(scenario::kco_binary(env!("CARGO_BIN_EXE_kco")), plan).await;
    let dir = scenario::report_dir("soak");
    outcome.write(&dir).unwrap();
    println!("{}\n(report in {})", outcome.report(), dir.display());

    assert!(outcome.total_firings() > 0);
    // Exactly once: every episode got one action through the restarts.
    outcome.assert_exactly_once();
    assert_eq!(
        outcome.unexpected_exits,
        Vec::<String>::new(),
        "no replica exited on its own"
    );
    // The replicas that never restarted: no gross leak of descriptors or memory.
    // The bounds are generous: a replica's share of namespaces (and so its pod
    // watches and pooled connections) grows while kco-2 restarts, and idle pooled
    // connections close only after their idle timeout. The long run's report shows
    // the trend.
    for (replica, samples) in outcome.longest_lived() {
        if replica == 2 || samples.len() < 4 {
            continue;
        }
        let (first, last) = (samples[1], samples[samples.len() - 1]);
        assert!(
            last.fds <= first.fds * 2 + 64,
            "kco-{replica} open descriptors grew from {} to {}",
            first.fds,
            last.fds
        );
        assert!(
            last.rss_kib <= first.rss_kib * 2 + 16 * 1024,
            "kco-{replica} RSS grew from {} to {} KiB",
            first.rss_kib,
            last.rss_kib
        );
        // The live heap is exported (jemalloc) and bounded like RSS.
        assert!(last.heap_kib > 1024, "kco-{replica} reports no live heap");
        assert!(
            last.heap_kib <= first.heap_kib * 2 + 16 * 1024,
            "kco-{replica} live heap grew from {} to {} KiB",
            first.heap_kib,
            last.heap_kib
        );
        let idle = samples.iter().filter(|s| s.polls == 0.0).count();
        assert!(
            idle * 10 <= samples.len(),
            "kco-{replica} polled nothing in {idle} of {} samples",
            samples.len()
        );
    }
}
