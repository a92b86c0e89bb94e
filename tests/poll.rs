//! Polling real HTTP targets (the Mina simulator) through every failure mode:
//! each one fails the poll with its own reason, bounded in time and size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use kco::monitor::poll::{PollFailure, Poller};
use kco::simulator::{Faults, NodeState, Simulator};
use kco::targetapp::DEFAULT_STATE_QUERY;
use support::fixtures::{self, MINA_GRAPHQL_PORT};

const RETRIES: u32 = 2;

async fn bed() -> (Simulator, SocketAddr, Poller) {
    kco::tls::install_crypto_provider();
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let node = sim
        .add_node(
            (fixtures::loopback_ip(), MINA_GRAPHQL_PORT).into(),
            NodeState::default(),
        )
        .await
        .unwrap();
    let poller = Poller::new(1024 * 1024, RETRIES, "kco-test")
        .unwrap()
        .with_first_backoff(Duration::from_millis(10));
    (sim, node.address, poller)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/graphql")
}

#[tokio::test]
async fn a_healthy_node_answers_the_default_query() {
    let (sim, addr, poller) = bed().await;
    let report = poller
        .poll(&url(addr), DEFAULT_STATE_QUERY, Duration::from_secs(5))
        .await;
    let data = report.result.unwrap();
    assert_eq!(data.data["daemonStatus"]["syncStatus"], "SYNCED");
    assert_eq!(data.data["daemonStatus"]["blockchainLength"], 1000);
    assert!(data.errors.is_empty());
    assert_eq!(report.attempts, 1);
    assert_eq!(sim.node(addr).await.unwrap().requests, 1);
}

#[tokio::test]
async fn every_fault_fails_the_poll_with_its_own_reason() {
    let (sim, addr, poller) = bed().await;
    let timeout = Duration::from_millis(500);
    let cases: Vec<(Faults, &str, u32)> = vec![
        (
            Faults {
                http_status: Some(500),
                ..Default::default()
            },
            "http_5xx",
            1 + RETRIES,
        ),
        (
            Faults {
                http_status: Some(429),
                ..Default::default()
            },
            "http_4xx",
            1 + RETRIES,
        ),
        (
            Faults {
                http_status: Some(404),
                ..Default::default()
            },
            "http_4xx",
            1,
        ),
        (
            Faults {
                malformed_json: true,
                ..Default::default()
            },
            "invalid_json",
            1,
        ),
        (
            Faults {
                body_bytes: Some(100 * 1024 * 1024),
                ..Default::default()
            },
            "too_large",
            1,
        ),
        (
            Faults {
                reset: true,
                ..Default::default()
            },
            "transport",
            1 + RETRIES,
        ),
        (
            Faults {
                hang: true,
                ..Default::default()
            },
            "timeout",
            1 + RETRIES,
        ),
        (
            Faults {
                latency_ms: 2_000,
                ..Default::default()
            },
            "timeout",
            1 + RETRIES,
        ),
        (
            Faults {
                graphql_error: Some("node exploded".into()),
                ..Default::default()
            },
            "graphql_errors",
            1,
        ),
    ];
    for (faults, reason, attempts) in cases {
        sim.set_faults(addr, faults.clone()).await.unwrap();
        let report = poller.poll(&url(addr), DEFAULT_STATE_QUERY, timeout).await;
        let failure = report.result.expect_err(reason);
        assert_eq!(failure.reason(), reason, "{faults:?}: {failure}");
        assert_eq!(
            report.attempts, attempts,
            "{faults:?}: retried only what may help"
        );
    }
    // Unhang held requests so the simulator's tasks end with the test.
    sim.set_faults(addr, Faults::default()).await.unwrap();
}

#[tokio::test]
async fn partial_data_with_errors_is_a_successful_poll() {
    let (sim, addr, poller) = bed().await;
    let faults = Faults {
        graphql_error: Some("peers unavailable".into()),
        partial_data: true,
        ..Default::default()
    };
    sim.set_faults(addr, faults).await.unwrap();
    let data = poller
        .poll(&url(addr), DEFAULT_STATE_QUERY, Duration::from_secs(5))
        .await
        .result
        .unwrap();
    assert_eq!(data.data["daemonStatus"]["syncStatus"], "SYNCED");
    assert_eq!(data.errors, ["peers unavailable"]);
}

#[tokio::test]
async fn a_body_at_the_cap_passes_and_one_byte_more_fails() {
    let (sim, addr, _) = bed().await;
    let poller = Poller::new(4096, 0, "kco-test").unwrap();
    for (size, ok) in [(4096, true), (4097, false)] {
        let faults = Faults {
            body_bytes: Some(size),
            ..Default::default()
        };
        sim.set_faults(addr, faults).await.unwrap();
        let result = poller
            .poll(&url(addr), "{ version }", Duration::from_secs(5))
            .await
            .result;
        assert_eq!(result.is_ok(), ok, "{size} bytes: {result:?}");
    }
}

#[tokio::test]
async fn nobody_listening_is_a_connect_failure() {
    let (sim, addr, poller) = bed().await;
    sim.remove_node(addr).await.unwrap();
    let failure = poller
        .poll(&url(addr), "{ version }", Duration::from_secs(2))
        .await
        .result
        .unwrap_err();
    assert_eq!(failure.reason(), "connect", "{failure}");
    assert!(
        matches!(failure, PollFailure::Connect(ref m) if m.contains("refused")),
        "{failure}"
    );
}
