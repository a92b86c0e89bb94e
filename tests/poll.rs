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
            "rate_limited",
            1,
        ),
        (
            Faults {
                trickle_ms: 50,
                ..Default::default()
            },
            "slow_body",
            1,
        ),
        (
            Faults {
                nested_depth: Some(10_000),
                ..Default::default()
            },
            "too_deep",
            1,
        ),
        (
            Faults {
                invalid_utf8: true,
                ..Default::default()
            },
            "invalid_utf8",
            1,
        ),
        (
            Faults {
                redirect_to: Some("http://169.254.169.254/latest/meta-data".into()),
                ..Default::default()
            },
            "redirect",
            1,
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

#[tokio::test]
async fn a_429_names_its_retry_after_and_is_not_retried() {
    let (sim, addr, poller) = bed().await;
    let faults = Faults {
        http_status: Some(429),
        retry_after_secs: Some(4000),
        ..Default::default()
    };
    sim.set_faults(addr, faults).await.unwrap();
    let report = poller
        .poll(&url(addr), "{ version }", Duration::from_secs(2))
        .await;
    assert_eq!(report.attempts, 1);
    let failure = report.result.unwrap_err();
    assert_eq!(
        failure,
        PollFailure::RateLimited(Some(kco::monitor::poll::MAX_RETRY_AFTER)),
        "capped"
    );
    assert_eq!(sim.node(addr).await.unwrap().requests, 1);
}

#[tokio::test]
async fn a_certificate_nobody_trusts_is_a_tls_failure() {
    let (sim, addr, poller) = bed().await;
    let faults = Faults {
        untrusted_tls: true,
        ..Default::default()
    };
    sim.set_faults(addr, faults).await.unwrap();
    let report = poller
        .poll(
            &format!("https://{addr}/graphql"),
            "{ version }",
            Duration::from_secs(2),
        )
        .await;
    let failure = report.result.unwrap_err();
    assert_eq!(failure.reason(), "tls", "{failure}");
    assert!(failure.to_string().contains("UnknownIssuer"), "{failure}");
    assert_eq!(report.attempts, 1, "a bad certificate stays bad");
}

#[tokio::test]
async fn a_redirect_to_a_forbidden_address_is_refused_by_the_egress_client() {
    let (sim, addr, poller) = bed().await;
    let host = "mina.chain.svc";
    let mut quota = kco::tenancy::Quota::default();
    quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(addr.ip())];
    let egress = kco::tenancy::Egress::new(
        kco::tenancy::Tenants::new(quota),
        kco::tenancy::Apiserver::default(),
        std::sync::Arc::new([(host.to_owned(), vec![addr.ip()])].into_iter().collect()),
        "kco-test".into(),
        None,
    );
    let client = egress
        .client("chain", kco::tenancy::Purpose::Graphql, None)
        .unwrap();
    let poller = poller.with_client(client);
    let target = format!("http://{host}:{}/graphql", addr.port());
    // The client follows redirects the policy allows: healthy, it answers.
    poller
        .poll(&target, "{ version }", Duration::from_secs(2))
        .await
        .result
        .unwrap();
    for location in [
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/latest/meta-data",
    ] {
        let faults = Faults {
            redirect_to: Some(location.into()),
            ..Default::default()
        };
        sim.set_faults(addr, faults).await.unwrap();
        let report = poller
            .poll(&target, "{ version }", Duration::from_secs(2))
            .await;
        let failure = report.result.unwrap_err();
        assert_eq!(failure.reason(), "redirect_forbidden", "{failure}");
        assert!(failure.to_string().contains("endpoint policy"), "{failure}");
        assert_eq!(report.attempts, 1);
    }
}

#[tokio::test]
async fn a_webhook_client_follows_no_redirect_where_a_graphql_client_would() {
    let (sim, first, _) = bed().await;
    let second = sim
        .add_node(
            (fixtures::loopback_ip(), MINA_GRAPHQL_PORT).into(),
            NodeState::default(),
        )
        .await
        .unwrap()
        .address;
    let mut quota = kco::tenancy::Quota::default();
    quota.endpoint_policy.allowed_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    quota.endpoint_policy.allow_external = true;
    let egress = kco::tenancy::Egress::new(
        kco::tenancy::Tenants::new(quota),
        kco::tenancy::Apiserver::default(),
        std::sync::Arc::default(),
        "kco-test".into(),
        None,
    );
    let faults = Faults {
        redirect_to: Some(format!("http://{second}/graphql")),
        ..Default::default()
    };
    sim.set_faults(first, faults).await.unwrap();
    let body = serde_json::json!({"query": "{ version }"});
    // A GraphQL client follows a redirect its policy allows.
    let graphql = egress
        .client("chain", kco::tenancy::Purpose::Graphql, None)
        .unwrap();
    let followed = graphql.post(url(first)).json(&body).send().await.unwrap();
    assert!(followed.status().is_success(), "{}", followed.status());
    assert_eq!(sim.node(second).await.unwrap().requests, 1);
    // A webhook client, carrying the tenant's headers and signature, does not:
    // the redirect comes back as the answer and the other host hears nothing.
    sim.reset_requests(second).await.unwrap();
    let webhook = egress
        .client("chain", kco::tenancy::Purpose::Webhook, None)
        .unwrap();
    let answer = webhook
        .post(url(first))
        .header(kco::actions::webhook::SIGNATURE_HEADER, "t=1,v1=00")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_redirection(), "{}", answer.status());
    assert_eq!(sim.node(second).await.unwrap().requests, 0);
    // Nor does a GraphQL poll that carries credentials: the redirect fails the
    // poll, and the other host never sees the header.
    let auth: kco::targetapp::Auth = serde_json::from_value(serde_json::json!({
        "secretRef": {"name": "t", "key": "token"}, "scheme": "Bearer"
    }))
    .unwrap();
    let header = kco::monitor::credentials::header_of(&auth, b"s3cret").unwrap();
    let client = egress
        .client_for(
            "chain",
            kco::tenancy::Purpose::Graphql,
            kco::tenancy::egress::Trust::Platform,
            true,
        )
        .unwrap();
    let poller = Poller::new(1024 * 1024, 0, "kco-test")
        .unwrap()
        .with_client(client)
        .with_header(header);
    let failure = poller
        .poll(&url(first), "{ version }", Duration::from_secs(2))
        .await
        .result
        .unwrap_err();
    assert_eq!(failure.reason(), "redirect", "{failure}");
    assert_eq!(sim.node(second).await.unwrap().requests, 0);
}

#[tokio::test]
async fn a_node_behind_an_authenticating_proxy_answers_only_its_credentials() {
    let (sim, addr, poller) = bed().await;
    let faults = Faults {
        require_header: Some(kco::simulator::RequiredHeader {
            name: "authorization".into(),
            value: "Bearer s3cret".into(),
        }),
        ..Default::default()
    };
    sim.set_faults(addr, faults).await.unwrap();
    let without = poller
        .poll(&url(addr), "{ version }", Duration::from_secs(2))
        .await;
    assert_eq!(without.result.unwrap_err(), PollFailure::Status(401));
    let auth = |scheme: &str| -> kco::targetapp::Auth {
        serde_json::from_value(serde_json::json!({
            "secretRef": {"name": "t", "key": "token"}, "scheme": scheme
        }))
        .unwrap()
    };
    let header = kco::monitor::credentials::header_of(&auth("Bearer"), b"s3cret\n").unwrap();
    let with = poller
        .clone()
        .with_header(header)
        .poll(&url(addr), "{ version }", Duration::from_secs(2))
        .await;
    with.result.unwrap();
    let wrong = kco::monitor::credentials::header_of(&auth("Basic"), b"s3cret").unwrap();
    let refused = poller
        .with_header(wrong)
        .poll(&url(addr), "{ version }", Duration::from_secs(2))
        .await;
    assert_eq!(refused.result.unwrap_err(), PollFailure::Status(401));
}

#[tokio::test]
async fn a_body_beyond_its_tenants_share_is_throttled_and_gives_its_bytes_back() {
    let (sim, addr, poller) = bed().await;
    // 300 KB sent in 64 KiB pieces: its buffer grows to 512 KiB.
    sim.set_faults(
        addr,
        Faults {
            body_bytes: Some(300_000),
            trickle_ms: 20,
            trickle_bytes: Some(64 * 1024),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let inflight = kco::monitor::inflight::InFlight::new(4 << 20, 256 * 1024);
    let small = poller.clone().with_share(inflight.share("small"));
    let report = small
        .poll(&url(addr), DEFAULT_STATE_QUERY, Duration::from_secs(5))
        .await;
    let Err(PollFailure::Throttled(why)) = &report.result else {
        panic!("expected a throttled poll: {:?}", report.result);
    };
    assert!(why.contains("share of 262144 bytes"), "{why}");
    assert_eq!(report.attempts, 1, "a throttled poll is not retried");
    assert_eq!(inflight.held(), 0, "the bytes taken are given back");

    // The same body within a larger share is read whole, and its bytes given back.
    let inflight = kco::monitor::inflight::InFlight::new(4 << 20, 1 << 20);
    let large = poller.with_share(inflight.share("large"));
    let report = large
        .poll(&url(addr), DEFAULT_STATE_QUERY, Duration::from_secs(5))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(inflight.held(), 0);
}

/// A minimal HTTP/1.1 GraphQL server that counts the connections it accepts and
/// honours `Connection: close` as any server would.
async fn counting_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_lowercase();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    let close = text[..end].contains("connection: close");
                    buf.drain(..end + 4 + length);
                    let body = r#"{"data":{"version":"1"}}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{body}",
                        body.len(),
                        if close { "connection: close\r\n" } else { "" }
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_rarely_polled_target_gets_a_new_connection_each_poll_and_keeps_none() {
    use std::sync::atomic::Ordering;
    kco::tls::install_crypto_provider();
    let poller = Poller::new(1024 * 1024, 0, "kco-test").unwrap();
    let poll_three_times = |poller: Poller, addr: SocketAddr| async move {
        for _ in 0..3 {
            let data = poller
                .poll(&url(addr), "{ version }", Duration::from_secs(5))
                .await
                .result
                .unwrap();
            assert_eq!(data.data["version"], "1");
        }
    };
    // Polled often: one connection, kept between polls.
    let (often, accepted_often) = counting_server().await;
    poll_three_times(poller.clone().with_keep_alive(true), often).await;
    assert_eq!(accepted_often.load(Ordering::SeqCst), 1);
    // Polled rarely: each poll connects and closes; nothing is kept meanwhile.
    let (rarely, accepted_rarely) = counting_server().await;
    poll_three_times(poller.with_keep_alive(false), rarely).await;
    assert_eq!(accepted_rarely.load(Ordering::SeqCst), 3);
}
