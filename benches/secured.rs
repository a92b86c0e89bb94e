//! What credentials and TLS cost a poll: the same polls of simulated Mina nodes
//! over plain http, with a credential header (`spec.auth`), over https with the
//! tenant's CA and a server name (`spec.tls`), with a client certificate as well
//! (mutual TLS), and the last again with a new connection (and handshake) for
//! every poll, as a target polled less often than GRAPHQL_KEEP_ALIVE_BELOW is.
//!
//! ```text
//! cargo bench --bench secured
//! cargo bench --bench secured -- --polls 20000
//! ```
//!
//! The nodes run in a `kco simulate` child process, so the CPU figures are the
//! polling side's alone (this process: request, TLS, parse). Times are compared
//! as ratios to plain http within one run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{SimulatorProcess, cpu_seconds};
use futures::StreamExt;
use kco::monitor::credentials::header_of;
use kco::monitor::poll::{Poller, QueryBody, parse_url};
use kco::targetapp::{Auth, DEFAULT_STATE_QUERY};
use serde_json::json;

/// Nodes polled, in turn.
const NODES: usize = 20;
/// Polls in flight at once.
const CONCURRENCY: usize = 8;
const SERVER_NAME: &str = "mina.chain.svc";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("secured bench: not run (use `cargo bench --bench secured`)");
        return;
    }
    kco::tls::install_crypto_provider();
    let polls = arg("--polls").unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let simulator = Simulator::start();
    let pki = Pki::new();
    println!(
        "secured bench: {polls} polls of {NODES} simulated nodes, {CONCURRENCY} at a time, the default Mina query\n"
    );
    println!("| mode | µs per poll (wall) | CPU µs per poll | CPU × plain http |");
    println!("|---|---|---|---|");
    let mut plain_cpu = None;
    let mut headlines = Vec::new();
    for mode in Mode::ALL {
        runtime.block_on(simulator.serve(mode, &pki));
        let poller = mode.poller(&pki);
        let (wall, cpu) = runtime.block_on(measure(&poller, &simulator.urls(mode), polls));
        let ratio = cpu / *plain_cpu.get_or_insert(cpu);
        println!(
            "| {} | {:.0} | {:.0} | {ratio:.2} |",
            mode.name(),
            wall * 1e6,
            cpu * 1e6
        );
        headlines.push(format!(
            "headline | secured | {}: CPU µs per poll, × plain http | {:.0}, {ratio:.2}",
            mode.name(),
            cpu * 1e6
        ));
    }
    println!();
    for line in headlines {
        println!("{line}");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Http,
    Header,
    Tls,
    Mutual,
    MutualReconnecting,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Self::Http,
        Self::Header,
        Self::Tls,
        Self::Mutual,
        Self::MutualReconnecting,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Http => "plain http",
            Self::Header => "http + credential header",
            Self::Tls => "https, tenant CA + server name",
            Self::Mutual => "https, mutual TLS",
            Self::MutualReconnecting => "https, mutual TLS, a handshake per poll",
        }
    }

    fn https(self) -> bool {
        !matches!(self, Self::Http | Self::Header)
    }

    /// The poller a TargetApp in this mode polls with.
    fn poller(self, pki: &Pki) -> Poller {
        let base = Poller::new(4 * 1024 * 1024, 0, "kco-bench").unwrap();
        let tls = |identity: bool| {
            let prepared = kco::tls::ClientTls {
                ca: Some(pki.ca.as_bytes()),
                server_name: Some(SERVER_NAME),
                identity: identity.then_some((pki.client.0.as_bytes(), pki.client.1.as_bytes())),
            }
            .prepare()
            .unwrap();
            kco::monitor::poll::pod_client("kco-bench")
                .tls_backend_preconfigured((*prepared.config).clone())
                .build()
                .unwrap()
        };
        match self {
            Self::Http => base,
            Self::Header => base.with_header(header_of(&auth(), b"s3cret").unwrap()),
            Self::Tls => base.with_client(tls(false)),
            Self::Mutual => base.with_client(tls(true)),
            Self::MutualReconnecting => base.with_client(tls(true)).with_keep_alive(false),
        }
    }
}

fn auth() -> Auth {
    serde_json::from_value(json!({"secretRef": {"name": "t", "key": "token"}, "scheme": "Bearer"}))
        .unwrap()
}

/// Wall and CPU seconds per poll over `polls` polls of `urls` in turn.
async fn measure(poller: &Poller, urls: &[reqwest::Url], polls: usize) -> (f64, f64) {
    let query = QueryBody::new(DEFAULT_STATE_QUERY);
    let once = |i: usize| {
        let url = &urls[i % urls.len()];
        let query = &query;
        async move {
            let report = poller.poll_url(url, query, Duration::from_secs(5)).await;
            if let Err(failure) = report.result {
                panic!("poll of {url} failed: {failure}");
            }
        }
    };
    // Warm: connections opened, allocator grown.
    futures::stream::iter(0..urls.len() * 2)
        .for_each_concurrent(CONCURRENCY, once)
        .await;
    let (started, cpu) = (Instant::now(), cpu_seconds());
    futures::stream::iter(0..polls)
        .for_each_concurrent(CONCURRENCY, once)
        .await;
    let n = polls as f64;
    (
        started.elapsed().as_secs_f64() / n * CONCURRENCY as f64,
        (cpu_seconds() - cpu) / n,
    )
}

/// The tenant's CA, the nodes' certificate (issued to a Service name), and a
/// client certificate of another CA.
struct Pki {
    ca: String,
    serving: (String, String),
    client_ca: String,
    client: (String, String),
}

impl Pki {
    fn new() -> Self {
        let (ca, ca_issuer) = authority("mina-servers");
        let (client_ca, client_issuer) = authority("mina-clients");
        let leaf = |issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(names).unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Self {
            ca,
            serving: leaf(&ca_issuer, vec![SERVER_NAME.to_owned()]),
            client_ca,
            client: leaf(&client_issuer, Vec::new()),
        }
    }
}

fn authority(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// `kco simulate` serving the nodes, in a child process; killed on drop.
struct Simulator(SimulatorProcess);

impl std::ops::Deref for Simulator {
    type Target = SimulatorProcess;
    fn deref(&self) -> &SimulatorProcess {
        &self.0
    }
}

impl Simulator {
    fn start() -> Self {
        Self(SimulatorProcess::start_here(
            Ipv4Addr::new(127, 30, 0, 1),
            NODES,
        ))
    }

    /// Sets every node to serve as `mode` needs.
    async fn serve(&self, mode: Mode, pki: &Pki) {
        let faults = match mode {
            Mode::Http => json!({}),
            Mode::Header => {
                json!({"requireHeader": {"name": "authorization", "value": "Bearer s3cret"}})
            }
            Mode::Tls => json!({"tls": {"certPem": pki.serving.0, "keyPem": pki.serving.1}}),
            Mode::Mutual | Mode::MutualReconnecting => json!({"tls": {
                "certPem": pki.serving.0, "keyPem": pki.serving.1, "clientCaPem": pki.client_ca
            }}),
        };
        let http = reqwest::Client::new();
        for node in &self.nodes {
            let response = http
                .put(format!("http://{}/nodes/{node}/faults", self.control))
                .json(&faults)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
        }
    }

    fn urls(&self, mode: Mode) -> Vec<reqwest::Url> {
        let scheme = if mode.https() { "https" } else { "http" };
        self.nodes
            .iter()
            .map(|node| parse_url(&format!("{scheme}://{node}/graphql")).unwrap())
            .collect()
    }
}

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}
