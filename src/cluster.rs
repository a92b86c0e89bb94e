//! KCO's clients of the Kubernetes API.
//!
//! kube's default client keeps every connection it ever opened to the apiserver
//! idle in its pool for as long as the process runs: a start-up's burst of
//! status writes and Events (32 and 8 at a time) leaves about forty TLS
//! connections open, each with its buffers (about 50 KiB) and a descriptor. The
//! client built here is kube's stack over a pool that keeps a few idle
//! connections and closes them after [`IDLE_FOR`] unused. It speaks HTTP/1.1,
//! as kube's does (exec and port-forward upgrade the connection), so each of its
//! watches holds a connection of its own.
//!
//! The pod watches — one per namespace with pod TargetApps, the only watches
//! whose number grows with the tenants — go through [`WatchClients`] instead:
//! clients that offer HTTP/2, on which one connection carries up to
//! [`WATCHES_PER_CONNECTION`] watches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_timeout::TimeoutConnector;
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
    let tls = config.rustls_https_connector_with_connector(tcp())?;
    let pool = pool().build(with_timeouts(tls, config));
    over(pool, config)
}

/// How often an HTTP/2 connection to the apiserver is pinged, and how long a
/// ping may go unanswered before the connection is dropped (and its watches
/// start again on a new one): client-go's read-idle and ping timeouts. Many
/// watches share the connection, so a dead one must not go unnoticed.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A client for long-lived watches: like [`client`], but it offers HTTP/2 (ALPN
/// `h2`, then `http/1.1`) and pings its HTTP/2 connection while it is open.
/// Where the server (or a proxy in front of it) speaks only HTTP/1.1, each
/// watch has a connection of its own, as with [`client`].
pub fn watch_client(config: &kube::Config) -> Result<kube::Client, kube::Error> {
    if config.proxy_url.is_some() {
        return kube::Client::try_from(config.clone());
    }
    let mut tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
        })?;
        tls = tls.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let tls = tls.enable_all_versions().wrap_connector(tcp());
    let pool = pool()
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(with_timeouts(tls, config));
    over(pool, config)
}

type Connector = TimeoutConnector<HttpsConnector<HttpConnector>>;

/// The connection pool both clients share the settings of: at most
/// [`MAX_IDLE`] idle connections, closed after [`IDLE_FOR`] unused.
fn pool() -> hyper_util::client::legacy::Builder {
    let mut pool = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    pool.pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_FOR)
        .pool_max_idle_per_host(MAX_IDLE);
    pool
}

fn tcp() -> HttpConnector {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp
}

/// The connect, read and write timeouts `config` asks for, as kube sets them.
fn with_timeouts(tls: HttpsConnector<HttpConnector>, config: &kube::Config) -> Connector {
    let mut connector = TimeoutConnector::new(tls);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    connector
}

/// kube's stack (base URI, retries, authentication, headers) over `pool`.
fn over(
    pool: hyper_util::client::legacy::Client<Connector, kube::client::Body>,
    config: &kube::Config,
) -> Result<kube::Client, kube::Error> {
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

/// The most watches one connection of [`WatchClients`] carries. kube-apiserver
/// lets a client open 1,000 streams on an HTTP/2 connection (Go's default, which
/// other API servers keep, is 250); past the server's limit hyper holds a new
/// request until a stream ends, so a watch would wait for another to stop. A
/// hundred stays well below either, with room for the lists that start and
/// restart the watches.
pub const WATCHES_PER_CONNECTION: usize = 100;

/// Clients for long-lived watches, each carrying at most
/// [`WATCHES_PER_CONNECTION`]: a replica watching the pods of 250 namespaces
/// holds three HTTP/2 connections to the apiserver rather than 250.
pub struct WatchClients {
    make: Box<dyn Fn() -> Result<kube::Client, kube::Error> + Send + Sync>,
    open: Mutex<Vec<Shared>>,
}

struct Shared {
    client: kube::Client,
    /// One clone per watch that uses the client.
    watches: Arc<()>,
}

impl Shared {
    fn watches(&self) -> usize {
        Arc::strong_count(&self.watches) - 1
    }
}

/// A watch's place on one of the [`WatchClients`]: the client counts the watch
/// until this is dropped.
pub struct WatchSlot {
    pub client: kube::Client,
    _held: Arc<()>,
}

impl WatchClients {
    /// Clients of the cluster `config` names ([`watch_client`]).
    pub fn new(config: kube::Config) -> Self {
        Self::with(move || watch_client(&config))
    }

    /// Clients that `make` builds (tests give one of an address nobody serves).
    pub fn with(
        make: impl Fn() -> Result<kube::Client, kube::Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            make: Box::new(make),
            open: Mutex::default(),
        }
    }

    /// A client for one more watch: the first with room, or a new one.
    pub fn slot(&self) -> Result<WatchSlot, kube::Error> {
        let mut open = match self.open.lock() {
            Ok(open) => open,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A client no watch uses any more goes; its connection closes with it.
        open.retain(|shared| shared.watches() > 0);
        let index = match first_with_room(open.iter().map(Shared::watches), WATCHES_PER_CONNECTION)
        {
            Some(index) => index,
            None => {
                open.push(Shared {
                    client: (self.make)()?,
                    watches: Arc::new(()),
                });
                open.len() - 1
            }
        };
        let shared = &open[index];
        Ok(WatchSlot {
            client: shared.client.clone(),
            _held: Arc::clone(&shared.watches),
        })
    }

    /// How many clients (connections, over HTTP/2) the watches use.
    pub fn clients(&self) -> usize {
        self.open
            .lock()
            .map(|open| open.iter().filter(|s| s.watches() > 0).count())
            .unwrap_or_default()
    }
}

/// The first of clients carrying `watches` each with room for one more.
fn first_with_room(watches: impl Iterator<Item = usize>, per_client: usize) -> Option<usize> {
    watches
        .enumerate()
        .find(|&(_, n)| n < per_client)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_watch_goes_to_the_first_client_with_room() {
        assert_eq!(first_with_room([].into_iter(), 100), None);
        assert_eq!(first_with_room([5].into_iter(), 100), Some(0));
        assert_eq!(first_with_room([100, 3, 0].into_iter(), 100), Some(1));
        assert_eq!(first_with_room([100, 100].into_iter(), 100), None);
    }

    #[tokio::test]
    async fn watch_clients_carry_at_most_their_share_and_go_when_unused() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let clients = WatchClients::with(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
        });
        let mut slots: Vec<WatchSlot> = (0..=WATCHES_PER_CONNECTION)
            .map(|_| clients.slot().unwrap())
            .collect();
        assert_eq!(
            made.load(Ordering::SeqCst),
            2,
            "one client per hundred watches"
        );
        assert_eq!(clients.clients(), 2);
        // A watch of the first client ends: the next one takes its place there.
        slots.remove(0);
        slots.push(clients.slot().unwrap());
        assert_eq!(made.load(Ordering::SeqCst), 2);
        // Every watch ends: the clients go, and the next watch gets a new one.
        slots.clear();
        assert_eq!(clients.clients(), 0);
        let _again = clients.slot().unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 3);
        assert_eq!(clients.clients(), 1);
    }
}
