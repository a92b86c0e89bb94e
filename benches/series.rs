//! What target state as metrics (`spec.metrics`) costs: heap bytes per exported
//! series, CPU per poll to read an answer into its series, and the time and size
//! of one scrape of `/metrics`, at 1,000 and 10,000 targets each exporting the
//! fields of docs/examples/targetapp-mina.yaml (9 series a target: the height,
//! the highest block received, the peers, and SyncStatus's 6 members).
//!
//! ```text
//! cargo bench --bench series
//! cargo bench --bench series -- --targets 100000
//! ```
//!
//! In process, on jemalloc as `kco` runs; the heap is jemalloc's `stats.allocated`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use kco::admission::Validator;
use kco::target_metrics::{Answer, Budget, Series, Store};
use kco::targetapp::TargetApp;
use serde_json::{Value, json};

/// TargetApps are spread over this many namespaces, one target each.
const NAMESPACES: usize = 50;

fn main() {
    // `cargo test --all-targets` runs benches too, without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("series bench: not run (use `cargo bench --bench series`)");
        return;
    }
    let sizes = targets_arg().unwrap_or_else(|| vec![1_000, 10_000]);
    let series = example_series();
    println!(
        "series bench: {} series per target (the example TargetApp's spec.metrics), {NAMESPACES} namespaces\n",
        kco::target_metrics::per_target(&series)
    );
    println!(
        "| targets | series | heap bytes per series | record µs per poll | scrape ms | scrape KiB |"
    );
    println!("|---|---|---|---|---|---|");
    let mut headlines = Vec::new();
    for n in sizes {
        let row = measure(n, &series);
        println!(
            "| {n} | {} | {:.0} | {:.2} | {:.1} | {:.0} |",
            row.series, row.bytes_per_series, row.record_us, row.scrape_ms, row.scrape_kib
        );
        headlines.push(format!(
            "headline | series | {n} targets, {} series: heap bytes per series, µs per poll to record, ms per scrape | {:.0}, {:.2}, {:.1}",
            row.series, row.bytes_per_series, row.record_us, row.scrape_ms
        ));
    }
    println!();
    for line in headlines {
        println!("{line}");
    }
}

fn targets_arg() -> Option<Vec<usize>> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--targets")?;
    Some(
        args.get(at + 1)?
            .split(',')
            .map(|n| n.parse().expect("--targets N[,N...]"))
            .collect(),
    )
}

/// The example TargetApp's series, as the monitor compiles them.
fn example_series() -> Vec<Series> {
    let text = include_str!("../docs/examples/targetapp-mina.yaml");
    let value: Value = serde_saphyr::from_str(text).unwrap();
    let mut app: TargetApp = serde_json::from_value(value).unwrap();
    app.metadata.namespace = Some("chain".into());
    Validator::new().series(&app, None)
}

struct Row {
    series: usize,
    bytes_per_series: f64,
    record_us: f64,
    scrape_ms: f64,
    scrape_kib: f64,
}

fn answer(height: u64) -> Value {
    json!({"daemonStatus": {
        "syncStatus": "SYNCED",
        "blockchainLength": height.to_string(),
        "highestBlockLengthReceived": (height + 1).to_string(),
        "highestUnvalidatedBlockLengthReceived": (height + 1).to_string(),
        "uptimeSecs": 1000,
        "peers": [{"peerId": "a"}, {"peerId": "b"}, {"peerId": "c"}]
    }})
}

fn measure(targets: usize, series: &[Series]) -> Row {
    let store = Store::default();
    let definitions: Arc<[Series]> = series.to_vec().into();
    let budget = |ns: &str| Budget {
        tenant: format!("namespace/{ns}"),
        max: usize::MAX,
        named: "the default quota".into(),
    };
    let labels = BTreeMap::from([("app".to_owned(), "mina".to_owned())]);
    let name = |i: usize| (format!("ns-{}", i % NAMESPACES), format!("mina-{i}"));
    let data = answer(1000);

    // One poll of target `i`: its answer read into its series.
    let poll = |i: usize| {
        let (ns, app) = name(i);
        store
            .record(
                &ns,
                &app,
                "mina-0",
                Some(&labels),
                Answer::Polled(Some(&data)),
                &budget(&ns),
            )
            .unwrap();
    };

    let before = heap();
    for i in 0..targets {
        let (ns, app) = name(i);
        store.define(&ns, &app, definitions.clone());
        poll(i);
    }
    let exported: usize = (0..NAMESPACES)
        .map(|ns| store.tenant_series(&format!("namespace/ns-{ns}")))
        .sum();
    let bytes = heap().saturating_sub(before);

    // A poll's cost: one answer read into its series, replacing the last ones.
    let rounds = 200_000.max(targets);
    let started = Instant::now();
    for r in 0..rounds {
        poll(r % targets);
    }
    let record = started.elapsed();

    // A scrape: every family rendered as Prometheus text.
    let scrapes = 5;
    let started = Instant::now();
    let mut size = 0;
    for _ in 0..scrapes {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&store.families())
            .unwrap();
        size = text.len();
    }
    let scrape = started.elapsed();

    #[allow(clippy::cast_precision_loss)]
    Row {
        series: exported,
        bytes_per_series: bytes as f64 / exported.max(1) as f64,
        record_us: record.as_secs_f64() * 1e6 / rounds as f64,
        scrape_ms: scrape.as_secs_f64() * 1e3 / f64::from(scrapes),
        scrape_kib: size as f64 / 1024.0,
    }
}

/// Bytes allocated and not freed (jemalloc), or 0 without it.
fn heap() -> usize {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().unwrap();
        stats::allocated::read().unwrap()
    }
    #[cfg(not(feature = "jemalloc"))]
    0
}
