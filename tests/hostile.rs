//! Hostile endpoints against the whole monitoring pipeline: one TargetApp per way
//! a target can misbehave (trickling, 100 MB, deep nesting, bad UTF-8, a redirect
//! to the cloud metadata address, 429 with Retry-After, an untrusted certificate,
//! silence) beside healthy targets. Each gets `PollFailed` with its own reason,
//! the healthy ones keep their schedule, memory stays bounded, nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kco::simulator::{Faults, NodeState};
use kco::targetapp::TargetApp;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::bed::{Bed, metric};
use support::fixtures::{self, MINA_GRAPHQL_PORT};

/// One hostile case: the TargetApp's name, the fault, the reason and a piece of
/// the message its status must show.
struct Case {
    name: &'static str,
    faults: Faults,
    reason: &'static str,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "trickle",
            // The default query's answer is ~300 bytes: ~15 s at 50 ms a byte.
            faults: Faults {
                trickle_ms: 50,
                ..Default::default()
            },
            reason: "slow_body",
            message: "body did not finish within 2s",
        },
        Case {
            name: "huge",
            faults: Faults {
                body_bytes: Some(100_000_000),
                ..Default::default()
            },
            reason: "too_large",
            message: "larger than 1048576 bytes",
        },
        Case {
            name: "deep",
            faults: Faults {
                nested_depth: Some(100_000),
                ..Default::default()
            },
            reason: "too_deep",
            message: "nests deeper than 100 levels",
        },
        Case {
            name: "utf8",
            faults: Faults {
                invalid_utf8: true,
                ..Default::default()
            },
            reason: "invalid_utf8",
            message: "not valid UTF-8",
        },
        Case {
            name: "metadata",
            faults: Faults {
                redirect_to: Some("http://169.254.169.254/latest/meta-data/".into()),
                ..Default::default()
            },
            reason: "redirect_forbidden",
            message: "169.254.169.254 is a link-local",
        },
        Case {
            name: "limited",
            faults: Faults {
                http_status: Some(429),
                retry_after_secs: Some(3),
                ..Default::default()
            },
            reason: "rate_limited",
            message: "waits 3s as Retry-After asks",
        },
        Case {
            name: "badcert",
            faults: Faults {
                untrusted_tls: true,
                ..Default::default()
            },
            reason: "tls",
            message: "UnknownIssuer",
        },
        Case {
            name: "silent",
            faults: Faults {
                hang: true,
                ..Default::default()
            },
            reason: "timeout",
            message: "no answer within 2s",
        },
    ]
}

const HEALTHY: usize = 3;

/// Panics anywhere in the process (the operator's tasks included), counted.
fn count_panics() -> Arc<AtomicUsize> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    panics
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn targetapp(name: &str, spec: Value) -> TargetApp {
    serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hostile_endpoint_fails_with_its_own_reason_and_the_healthy_keep_their_schedule() {
    let panics = count_panics();
    let mut bed = Bed::new("hostile", 0).await;
    let cases = cases();

    // One node and one pod per case (the metadata case through a Service name, the
    // one path where redirects are followed), and healthy pods for one more app.
    let mut nodes: BTreeMap<&str, SocketAddr> = BTreeMap::new();
    for case in &cases {
        let ip = fixtures::loopback_ip();
        let node = bed
            .sim
            .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
            .await
            .unwrap();
        bed.sim
            .set_faults(node.address, case.faults.clone())
            .await
            .unwrap();
        nodes.insert(case.name, node.address);
        if case.name == "metadata" {
            continue;
        }
        let pod = fixtures::mina_pod(case.name, json!({"case": case.name}));
        fixtures::create_running_pod(&bed.client, &bed.ns, &pod, ip).await;
    }
    let mut healthy = Vec::new();
    for i in 0..HEALTHY {
        let ip = fixtures::loopback_ip();
        let node = bed
            .sim
            .add_node((ip, MINA_GRAPHQL_PORT).into(), NodeState::default())
            .await
            .unwrap();
        healthy.push(node.address);
        let pod = fixtures::mina_pod(&format!("healthy-{i}"), json!({"case": "healthy"}));
        fixtures::create_running_pod(&bed.client, &bed.ns, &pod, ip).await;
    }
    let metadata_host = format!("metadata.{}.svc", bed.ns);
    let metadata_ip = nodes["metadata"].ip();
    bed.start_operator(|s| {
        s.graphql_max_retries = 0;
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(metadata_ip)];
        s.dns_overrides = vec![(metadata_host.clone(), metadata_ip)];
    })
    .await;

    let apps: Api<TargetApp> = Api::namespaced(bed.client.clone(), &bed.ns);
    for case in cases.iter().map(|c| c.name).chain(["healthy"]) {
        let mut spec = json!({"selector": {"matchLabels": {"case": case}},
            "pollingInterval": 1, "timeoutSeconds": 2});
        if case == "metadata" {
            spec = json!({"graphqlEndpoint": format!("http://{metadata_host}:{MINA_GRAPHQL_PORT}/graphql"),
                "pollingInterval": 1, "timeoutSeconds": 2});
        }
        if case == "badcert" {
            spec["scheme"] = json!("https");
        }
        apps.create(&PostParams::default(), &targetapp(case, spec))
            .await
            .unwrap();
    }

    // Each hostile target: one PollFailed with its reason, and its status says why.
    let started = Instant::now();
    for case in &cases {
        let target = if case.name == "metadata" {
            format!("http://{metadata_host}")
        } else {
            case.name.to_owned()
        };
        let note = bed
            .wait_event(30, "PollFailed", &format!("polling {target}"))
            .await;
        assert!(
            note.contains(&format!(" failed ({}): ", case.reason)),
            "{}: {note}",
            case.name
        );
        assert!(note.contains(case.message), "{}: {note}", case.name);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for case in &cases {
        loop {
            let status = apps.get(case.name).await.unwrap().status;
            let target = status.as_ref().and_then(|s| s.targets.first());
            if let Some(target) = target
                && !target.up
                && target
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.contains(case.message))
            {
                let ready = &status.as_ref().unwrap().conditions[0];
                assert_eq!(ready.status, "False", "{}: {ready:?}", case.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: status never showed {:?}: {status:#?}",
                case.name,
                case.message
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "every hostile target reported within {:?}",
        started.elapsed()
    );

    // The healthy targets keep their schedule while the hostile ones misbehave; the
    // rate-limited one is polled only as often as its Retry-After allows.
    let count = |addr: SocketAddr| {
        let sim = &bed.sim;
        async move { sim.node(addr).await.unwrap().requests }
    };
    let metrics = bed.metrics().await;
    let lateness_before = (
        metric(
            &metrics,
            "operator_kco_tapp_poll_lateness_seconds_bucket",
            &["targetapp=\"healthy\"", "le=\"0.5\""],
        ),
        metric(
            &metrics,
            "operator_kco_tapp_poll_lateness_seconds_count",
            &["targetapp=\"healthy\""],
        ),
    );
    let mut before = Vec::new();
    for addr in &healthy {
        before.push(count(*addr).await);
    }
    let limited_before = count(nodes["limited"]).await;
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    for (addr, before) in healthy.iter().zip(before) {
        let polled = count(*addr).await - before;
        assert!(
            polled >= 10,
            "healthy target {addr} polled {polled} times in {window:?}"
        );
    }
    let limited = count(nodes["limited"]).await - limited_before;
    assert!(
        (2..=5).contains(&limited),
        "Retry-After: 3 over {window:?} allows about 4 polls, not one a second: {limited}"
    );
    let metrics = bed.metrics().await;
    let within = metric(
        &metrics,
        "operator_kco_tapp_poll_lateness_seconds_bucket",
        &["targetapp=\"healthy\"", "le=\"0.5\""],
    ) - lateness_before.0;
    let polls = metric(
        &metrics,
        "operator_kco_tapp_poll_lateness_seconds_count",
        &["targetapp=\"healthy\""],
    ) - lateness_before.1;
    assert!(
        polls >= 30.0 && within == polls,
        "every healthy poll started less than 0.5 s late: {within} of {polls}"
    );
    let healthy_app = apps.get("healthy").await.unwrap();
    assert_eq!(
        healthy_app.status.unwrap().targets_ready.as_deref(),
        Some("3/3")
    );

    // One PollFailed per hostile target (no flood), each reason distinct.
    let failed = bed.events("PollFailed").await;
    assert_eq!(failed.len(), cases.len(), "{failed:?}");
    let mut reasons: Vec<&str> = cases.iter().map(|c| c.reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), cases.len());
    for case in &cases {
        let failures = metric(
            &metrics,
            "operator_kco_tapp_polls_total",
            &[
                &format!("targetapp=\"{}\"", case.name),
                &format!("reason=\"{}\"", case.reason),
            ],
        );
        assert!(failures >= 1.0, "{}: {failures}", case.name);
    }

    let peak = peak_rss_mib();
    let huge = count(nodes["huge"]).await;
    println!(
        "peak RSS of the test process (operator, simulator, {huge} polls of the 100 MB endpoint): {peak:.1} MiB"
    );
    assert!(
        peak < 100.0,
        "a 100 MB body must never be held: peak RSS {peak:.1} MiB"
    );
    assert_eq!(panics.load(Ordering::SeqCst), 0, "something panicked");

    // Unhang held requests; leave nothing for other tests to monitor.
    for addr in nodes.values() {
        bed.sim.set_faults(*addr, Faults::default()).await.unwrap();
    }
    apps.delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
}
