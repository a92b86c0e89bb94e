//! `kco probe`: does an endpoint answer? The chart's `helm test` hooks use it to
//! ask every replica for `/readyz` and the webhook Service for its TLS health
//! endpoint, as KCO's image has no shell or curl.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What to probe and how.
#[derive(Debug, Clone)]
pub struct Probe {
    /// An http:// or https:// URL.
    pub url: String,
    /// How long each answer may take.
    pub timeout: Duration,
    /// Trust only the certificates of this PEM file for https (else the system's
    /// roots).
    pub ca_file: Option<PathBuf>,
    /// Ask every address the host resolves to, and require at least this many.
    pub every_address: Option<usize>,
}

/// Runs `probe`: the lines to print when every answer is a 2xx, else why not.
pub async fn run(probe: &Probe) -> anyhow::Result<Vec<String>> {
    let url =
        reqwest::Url::parse(&probe.url).map_err(|e| anyhow::anyhow!("{:?}: {e}", probe.url))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "{:?}: only http:// and https:// URLs can be probed",
        probe.url
    );
    let ca = match &probe.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not PEM certificates: {e}", path.display()))?;
            anyhow::ensure!(
                !certs.is_empty(),
                "{}: holds no certificate",
                path.display()
            );
            Some(certs)
        }
        None => None,
    };
    let Some(wanted) = probe.every_address else {
        let client = client(probe.timeout, ca, None)?;
        return Ok(vec![get(&client, &url).await?]);
    };
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses = addresses(&host, port).await?;
    anyhow::ensure!(
        addresses.len() >= wanted,
        "{host} resolves to {} address(es), {wanted} expected: {addresses:?}",
        addresses.len()
    );
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for address in addresses {
        // Each address is asked under the URL's own name (TLS server name and
        // Host header), as a client of the Service would.
        let client = client(probe.timeout, ca.clone(), Some((&host, address)))?;
        match get(&client, &url).await {
            Ok(line) => lines.push(format!("{address}: {line}")),
            Err(e) => failures.push(format!("{address}: {e}")),
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    Ok(lines)
}

fn client(
    timeout: Duration,
    ca: Option<Vec<reqwest::Certificate>>,
    pinned: Option<(&str, SocketAddr)>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(certs) = ca {
        builder = builder.tls_certs_only(certs);
    }
    if let Some((host, address)) = pinned {
        builder = builder.resolve(host, address);
    }
    Ok(builder.build()?)
}

async fn get(client: &reqwest::Client, url: &reqwest::Url) -> anyhow::Result<String> {
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {}", chain(&e)))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {url}: HTTP {status}");
    Ok(format!("GET {url}: HTTP {status}"))
}

/// Every address of `host` (an IP address is its own), deduplicated, in order.
async fn addresses(host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let mut found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve {host}: {e}"))?
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// An error and its causes on one line (a TLS failure hides behind "error
/// sending request").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
