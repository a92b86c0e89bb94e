//! The Mina node simulator over real HTTP: its control API, its GraphQL answers
//! and every fault it can inject.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use kco::simulator::Simulator;
use serde_json::{Value, json};
use support::fixtures::{self, MINA_GRAPHQL_PORT};

const STATUS: &str = "{ syncStatus version daemonStatus { syncStatus blockchainLength highestBlockLengthReceived \
                      highestUnvalidatedBlockLengthReceived uptimeSecs chainId peers { peerId host libp2pPort } \
                      addrsAndPorts { externalIp clientPort } consensusTimeNow { epoch slot globalSlot } } }";

struct Bed {
    sim: Simulator,
    http: reqwest::Client,
    control: String,
}

impl Bed {
    async fn new() -> Self {
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let control = format!("http://{}", sim.control_addr());
        Self {
            sim,
            http: fixtures::http_client(),
            control,
        }
    }

    async fn add(&self, state: Value) -> SocketAddr {
        let addr: SocketAddr = (fixtures::loopback_ip(), MINA_GRAPHQL_PORT).into();
        let response = self
            .http
            .post(format!("{}/nodes", self.control))
            .json(&json!({"address": addr, "state": state}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
        addr
    }

    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.control));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn faults(&self, addr: SocketAddr, faults: Value) {
        let (status, body) = self
            .control(
                reqwest::Method::PUT,
                &format!("/nodes/{addr}/faults"),
                Some(&faults.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The node's raw HTTP answer to the status query.
    async fn raw(&self, addr: SocketAddr) -> reqwest::Response {
        let query = json!({"query": STATUS});
        self.http.post(url(addr)).json(&query).send().await.unwrap()
    }

    async fn query(&self, addr: SocketAddr) -> Result<(u16, Value), String> {
        fixtures::graphql(&self.http, &url(addr), STATUS).await
    }

    async fn requests(&self, addr: SocketAddr) -> u64 {
        let (_, info) = self
            .control(reqwest::Method::GET, &format!("/nodes/{addr}"), None)
            .await;
        info["requests"].as_u64().unwrap()
    }
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/graphql")
}

#[tokio::test]
async fn answers_monitoring_queries_with_the_state_that_was_set() {
    let bed = Bed::new().await;
    let addr = bed
        .add(json!({"syncStatus": "BOOTSTRAP", "blockchainLength": 12, "highestBlockLengthReceived": 20,
                    "highestUnvalidatedBlockLengthReceived": 21, "peerCount": 4, "uptimeSecs": 3600,
                    "version": "3.1.0"}))
        .await;
    let (status, body) = bed.query(addr).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
    let data = &body["data"];
    assert_eq!(data["syncStatus"], "BOOTSTRAP");
    assert_eq!(data["version"], "3.1.0");
    let d = &data["daemonStatus"];
    assert_eq!(d["syncStatus"], "BOOTSTRAP");
    assert_eq!(d["blockchainLength"], 12);
    assert_eq!(d["highestBlockLengthReceived"], 20);
    assert_eq!(d["highestUnvalidatedBlockLengthReceived"], 21);
    assert!(d["uptimeSecs"].as_i64().unwrap() >= 3600);
    assert_eq!(d["peers"].as_array().unwrap().len(), 4);
    assert_eq!(d["addrsAndPorts"]["externalIp"], addr.ip().to_string());
    assert_eq!(d["addrsAndPorts"]["clientPort"], MINA_GRAPHQL_PORT);
    // Mina's UInt32 and slot scalars travel as strings of digits.
    assert!(
        d["consensusTimeNow"]["epoch"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .is_ok(),
        "{d}"
    );

    // bestChain: the newest blocks, oldest first, heights as Length strings.
    let (_, chain) = fixtures::graphql(
        &bed.http,
        &url(addr),
        "{ bestChain(maxLength: 3) { stateHash protocolState { consensusState { blockHeight } } } }",
    )
    .await
    .unwrap();
    let heights: Vec<&str> = chain["data"]["bestChain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["protocolState"]["consensusState"]["blockHeight"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(heights, ["10", "11", "12"]);

    // A query the schema does not have gets a GraphQL error, not a crash.
    let (status, bad) =
        fixtures::graphql(&bed.http, &url(addr), "{ daemonStatus { noSuchField } }")
            .await
            .unwrap();
    assert_eq!(status, 200);
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("noSuchField"),
        "{bad}"
    );
}

#[tokio::test]
async fn state_changes_apply_to_the_next_answer_and_requests_are_counted() {
    let bed = Bed::new().await;
    let addr = bed.add(json!({})).await;
    let (_, before) = bed.query(addr).await.unwrap();
    assert_eq!(before["data"]["daemonStatus"]["syncStatus"], "SYNCED");

    let (status, info) = bed
        .control(
            reqwest::Method::PATCH,
            &format!("/nodes/{addr}/state"),
            Some(r#"{"syncStatus": "OFFLINE", "peerCount": 0, "blockchainLength": 77}"#),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"]["syncStatus"], "OFFLINE");
    let (_, after) = bed.query(addr).await.unwrap();
    let d = &after["data"]["daemonStatus"];
    assert_eq!(d["syncStatus"], "OFFLINE");
    assert_eq!(d["blockchainLength"], 77);
    assert_eq!(d["peers"].as_array().unwrap().len(), 0);

    assert_eq!(bed.requests(addr).await, 2);
    let (_, reset) = bed
        .control(
            reqwest::Method::DELETE,
            &format!("/nodes/{addr}/requests"),
            None,
        )
        .await;
    assert_eq!(reset["requests"], 2);
    assert_eq!(bed.requests(addr).await, 0);
}

#[tokio::test]
async fn answer_faults_break_the_answer_the_way_they_say() {
    let bed = Bed::new().await;
    let addr = bed.add(json!({})).await;

    bed.faults(addr, json!({"httpStatus": 503})).await;
    let response = bed.raw(addr).await;
    assert_eq!(response.status(), 503);

    bed.faults(addr, json!({"graphqlError": "node is restarting"}))
        .await;
    let (status, body) = bed.query(addr).await.unwrap();
    assert_eq!(status, 200);
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(body["errors"][0]["message"], "node is restarting");

    bed.faults(
        addr,
        json!({"graphqlError": "peers unavailable", "partialData": true}),
    )
    .await;
    let (_, body) = bed.query(addr).await.unwrap();
    assert_eq!(body["data"]["daemonStatus"]["syncStatus"], "SYNCED");
    assert_eq!(body["errors"][0]["message"], "peers unavailable");

    bed.faults(addr, json!({"malformedJson": true})).await;
    let err = bed.query(addr).await.unwrap_err();
    assert!(err.contains("body not JSON"), "{err}");

    bed.faults(addr, json!({"bodyBytes": 3_000_000})).await;
    let response = bed.raw(addr).await;
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 3_000_000);
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert!(parsed["data"]["version"].is_string());

    let (status, _) = bed
        .control(
            reqwest::Method::DELETE,
            &format!("/nodes/{addr}/faults"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = bed.query(addr).await.unwrap();
    assert_eq!(status, 200);
    assert!(body.get("errors").is_none(), "{body}");
}

#[tokio::test]
async fn hostile_faults_misbehave_the_way_they_say() {
    let bed = Bed::new().await;
    let addr = bed.add(json!({})).await;
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |client: &reqwest::Client, url: String| {
        client
            .post(url)
            .json(&json!({"query": "{ version }"}))
            .send()
    };

    bed.faults(addr, json!({"httpStatus": 429, "retryAfterSecs": 7}))
        .await;
    let response = bed.raw(addr).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");

    bed.faults(
        addr,
        json!({"redirectTo": "http://169.254.169.254/latest/meta-data"}),
    )
    .await;
    let response = post(&no_redirects, url(addr)).await.unwrap();
    assert_eq!(response.status(), 307);
    assert_eq!(
        response.headers()["location"],
        "http://169.254.169.254/latest/meta-data"
    );

    bed.faults(addr, json!({"invalidUtf8": true})).await;
    let body = bed.raw(addr).await.bytes().await.unwrap();
    assert!(std::str::from_utf8(&body).is_err(), "{body:?}");
    assert!(body.starts_with(b"{\"data\""), "{body:?}");

    // Nested: valid JSON (well-formed brackets), deeper than any parser's limit.
    bed.faults(addr, json!({"nestedDepth": 100_000})).await;
    let body = bed.raw(addr).await.bytes().await.unwrap();
    let opened = body.iter().filter(|b| **b == b'[').count();
    assert_eq!(opened, 100_000 - 2);
    assert_eq!(body.iter().filter(|b| **b == b']').count(), opened);
    assert!(body.starts_with(b"{\"data\":{\"nested\":[[") && body.ends_with(b"]]}}"));

    // Trickle: the headers at once, then the body a byte every 20 ms.
    bed.faults(addr, json!({"trickleMs": 20})).await;
    let started = std::time::Instant::now();
    let mut response = post(&bed.http, url(addr)).await.unwrap();
    let headers_after = started.elapsed();
    let mut body = Vec::new();
    let mut pieces = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        pieces += 1;
    }
    let took = started.elapsed();
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["data"]["version"], "3.0.0-simulated");
    assert!(
        headers_after < Duration::from_millis(500),
        "{headers_after:?}"
    );
    assert!(
        took >= Duration::from_millis(20) * (body.len() as u32 - 1),
        "{} bytes in {took:?}",
        body.len()
    );
    assert!(
        pieces >= body.len() / 2,
        "{pieces} pieces for {} bytes",
        body.len()
    );

    // Untrusted TLS: HTTPS with a certificate no client trusts (plain HTTP fails).
    bed.faults(addr, json!({"untrustedTls": true})).await;
    let https = format!("https://{addr}/graphql");
    let err = post(&bed.http, https.clone()).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let response = post(&trusting, https).await.unwrap();
    assert_eq!(response.status(), 200);
    // A new connection speaks TLS only (pooled ones keep their protocol).
    assert!(post(&fixtures::http_client(), url(addr)).await.is_err());

    // Refused combinations, with the reason.
    for (faults, needle) in [
        (json!({"retryAfterSecs": 3}), "needs httpStatus"),
        (json!({"nestedDepth": 0}), "nestedDepth"),
        (json!({"invalidUtf8": true, "bodyBytes": 10}), "at most one"),
        (json!({"redirectTo": "http://x/\r\nX: y"}), "redirectTo"),
    ] {
        let (status, body) = bed
            .control(
                reqwest::Method::PUT,
                &format!("/nodes/{addr}/faults"),
                Some(&faults.to_string()),
            )
            .await;
        assert_eq!(status, 422, "{faults}: {body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    bed.faults(addr, json!({})).await;
    let (status, _) = bed.query(addr).await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connection_faults_reset_delay_and_hang() {
    let bed = Bed::new().await;
    let addr = bed.add(json!({})).await;

    bed.faults(addr, json!({"reset": true})).await;
    let err = bed.query(addr).await.unwrap_err();
    assert!(
        err.to_lowercase().contains("reset") || err.contains("IncompleteMessage"),
        "{err}"
    );

    // Latency: a client with a shorter timeout gives up; without the fault it does not.
    bed.faults(addr, json!({"latencyMs": 3000})).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = impatient
        .post(url(addr))
        .json(&json!({"query": STATUS}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    // Hang: the request is held until the fault is lifted, then answered.
    bed.faults(addr, json!({"hang": true})).await;
    let before = bed.requests(addr).await;
    let http = bed.http.clone();
    let held = tokio::spawn(async move { fixtures::graphql(&http, &url(addr), STATUS).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bed.requests(addr).await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the held request never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!held.is_finished(), "a hanging node must not answer");
    bed.faults(addr, json!({})).await;
    let (status, body) = held.await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"]["daemonStatus"]["syncStatus"], "SYNCED");
}

#[tokio::test]
async fn malformed_control_requests_get_400_and_the_simulator_keeps_serving() {
    let bed = Bed::new().await;
    let addr = bed.add(json!({})).await;
    let cases: [(reqwest::Method, String, &str); 6] = [
        (reqwest::Method::POST, "/nodes".into(), "{not json"),
        (
            reqwest::Method::POST,
            "/nodes".into(),
            r#"{"address": "nowhere"}"#,
        ),
        (
            reqwest::Method::PATCH,
            format!("/nodes/{addr}/state"),
            r#"{"syncStatus": "ASLEEP"}"#,
        ),
        (
            reqwest::Method::PATCH,
            format!("/nodes/{addr}/state"),
            r#"{"blockHeight": 3}"#,
        ),
        (
            reqwest::Method::PUT,
            format!("/nodes/{addr}/faults"),
            r#"{"latencyMs": "soon"}"#,
        ),
        (reqwest::Method::GET, "/nodes/not-an-address".into(), ""),
    ];
    for (method, path, body) in cases {
        let (status, answer) = bed
            .control(method.clone(), &path, (!body.is_empty()).then_some(body))
            .await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // Well-formed but refused: 422 with the reason; unknown node: 404; duplicate: 409.
    let (status, answer) = bed
        .control(
            reqwest::Method::PUT,
            &format!("/nodes/{addr}/faults"),
            Some(r#"{"httpStatus": 200}"#),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("httpStatus"));
    let (status, _) = bed
        .control(reqwest::Method::GET, "/nodes/127.9.9.9:1", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = bed
        .control(
            reqwest::Method::POST,
            "/nodes",
            Some(&json!({"address": addr}).to_string()),
        )
        .await;
    assert_eq!(status, 409);

    let (status, body) = bed.query(addr).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"]["daemonStatus"]["syncStatus"], "SYNCED");
}

#[tokio::test]
async fn one_process_serves_many_nodes_each_with_its_own_state() {
    let bed = Bed::new().await;
    let mut addrs = Vec::new();
    for i in 0..200u32 {
        let info = bed
            .sim
            .add_node(
                (fixtures::loopback_ip(), MINA_GRAPHQL_PORT).into(),
                kco::simulator::NodeState {
                    blockchain_length: 1000 + i,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        addrs.push(info.address);
    }
    assert_eq!(bed.sim.nodes().await.len(), 200);
    for (i, addr) in addrs.iter().enumerate().step_by(17) {
        let (_, body) = bed.query(*addr).await.unwrap();
        assert_eq!(
            body["data"]["daemonStatus"]["blockchainLength"],
            1000 + i as u64,
            "node {addr}"
        );
    }
    // A removed node stops answering; the others go on.
    let (status, _) = bed
        .control(
            reqwest::Method::DELETE,
            &format!("/nodes/{}", addrs[0]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(bed.query(addrs[0]).await.is_err());
    assert!(bed.query(addrs[1]).await.is_ok());
}

#[test]
fn the_kco_simulate_command_serves_until_terminated() {
    use std::io::{BufRead, BufReader};
    let control = support::process::free_port().unwrap();
    let node = fixtures::loopback_ip();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
        .args([
            "simulate",
            "--control",
            &format!("127.0.0.1:{control}"),
            "--count",
            "3",
            "--first-ip",
        ])
        .arg(node.to_string())
        .args(["--port", "3085"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("3 node(s)"), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = runtime.block_on(async {
        let http = fixtures::http_client();
        let nodes = fixtures::get_json(&http, &format!("http://127.0.0.1:{control}/nodes")).await;
        assert_eq!(nodes.as_array().unwrap().len(), 3);
        fixtures::graphql(&http, &format!("http://{node}:3085/graphql"), STATUS)
            .await
            .unwrap()
            .1
    });
    assert_eq!(body["data"]["daemonStatus"]["syncStatus"], "SYNCED");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "kco simulate should exit cleanly on SIGTERM: {status}"
    );
}

/// `kco probe` against the simulator's control API: 0 on a 2xx answer, 1 on
/// anything else (an error status, a refused connection, a URL it cannot probe).
#[tokio::test]
async fn kco_probe_exits_zero_only_on_a_successful_answer() {
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let control = sim.control_addr();
    let probe = |url: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kco"))
                .args(["probe", &url, "--timeout-seconds", "2"])
                .output()
                .unwrap()
        })
    };
    let ok = probe(format!("http://{control}/nodes")).await.unwrap();
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("HTTP 200 OK"));

    let missing = probe(format!("http://{control}/no-such-page"))
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("HTTP 404"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = probe(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");

    let file = probe("file:///etc/passwd".to_owned()).await.unwrap();
    assert_eq!(file.status.code(), Some(1), "{file:?}");
    assert!(String::from_utf8_lossy(&file.stderr).contains("only http:// and https://"));
}
