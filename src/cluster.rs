//! KCO's clients of the Kubernetes API.
//!
//! kube's default client keeps every connection it ever opened to the apiserver
//! idle in its pool for as long as the process runs: a start-up's burst of
//! status writes and Events (32 and 8 at a time) leaves about forty TLS
//! connections open, each with its buffers (about 50 KiB) and a descriptor. The
//! client built here is kube's stack over a pool that keeps a few idle
//! connections and closes them after [`IDLE_FOR`] unused; watches hold their own
//! connection as before.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::{BoxError, ServiceBuilder};

/// How long an unused connection to the apiserver stays open.
pub const IDLE_FOR: Duration = Duration::from_secs(30);
/// The most unused connections kept open at once.
pub const MAX_IDLE: usize = 4;

/// A client of the cluster `config` names, with the pool above. A configuration
/// that goes through a proxy gets kube's own client (the proxy connectors are
/// kube's).
pub fn client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config.clone());
    }
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let tls = config.rustls_https_connector_with_connector(tcp)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_FOR)
        .pool_max_idle_per_host(MAX_IDLE)
        .build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(pool);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}
