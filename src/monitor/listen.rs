//! One target's subscription loop: the WebSocket connections carrying its
//! TargetApp's subscriptions (one, or one each for Mina's daemon), opened under
//! the same endpoint policy, address checks, credentials and TLS settings as
//! its polls; each pushed value handed to the TargetApp's task. Lost
//! connections are opened again with backoff and jitter, and the target is
//! polled at once when they are, so that nothing that changed meanwhile is
//! missed; a target that serves no subscriptions is polled only, and the loop
//! ends.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::credentials::{Credentials, Material};
use super::target::Route;
use crate::subscriptions::connection::{Endpoint, Limits, Lost, Pushed, Session, Wanted, open};
use crate::subscriptions::protocol::Protocol;
use crate::tenancy::{ConnectionPermit, Purpose};

/// The protocol offered first: the one Mina's daemon speaks (and the one a
/// target that names none is taken to speak).
pub const MINA_PROTOCOL: Protocol = Protocol::LegacyWs;

/// How long a target over its tenant's connection budget waits before asking
/// again (a connection may have freed, or the quota changed).
const BUDGET_RETRY: Duration = Duration::from_secs(30);

/// Waits before opening a lost connection again: from 1 s, doubling to 60 s.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a connection must have stayed open for the backoff to start over:
/// a target that accepts and drops at once is opened at most once a minute.
pub const STABLE: Duration = Duration::from_secs(60);

/// What one subscription loop tells its TargetApp's task.
#[derive(Debug)]
pub struct Heard {
    /// The target's name (pod name or URL) and the URL subscribed to.
    pub target: String,
    pub url: String,
    pub at: Timestamp,
    pub what: Happened,
}

#[derive(Debug)]
pub enum Happened {
    /// The connection opened (again, after `after` failures) in `protocol`.
    /// `tell`: the first opening, or the first since a loss was told (a
    /// connection that keeps dropping is told lost once, and open once).
    Opened {
        protocol: Protocol,
        after: u32,
        tell: bool,
    },
    /// A subscription pushed a value.
    Pushed(Pushed),
    /// The connection was lost, or could not be opened; it is tried again in
    /// `retry`. `first`: the first failure since it was last open for a while
    /// ([`STABLE`]).
    Lost {
        why: Lost,
        retry: Duration,
        first: bool,
    },
    /// The target serves no subscriptions: polled only from now on.
    Unsupported(Lost),
    /// The tenant's subscription connections are all held: polled only until
    /// one frees.
    OverQuota(String),
}

/// What a subscription loop needs.
pub struct Listen {
    pub target: String,
    pub url: String,
    pub route: Route,
    pub wanted: Arc<[Wanted]>,
    pub credentials: Option<Credentials>,
    /// Asks the target's poll loop to poll now.
    pub poke: Arc<Notify>,
    /// The tenants' quotas: the connection budget and the push rate.
    pub tenants: Arc<crate::tenancy::Tenants>,
    pub namespace: String,
}

/// Listens to `listen`'s target until cancelled, or until the target shows it
/// serves no subscriptions.
pub async fn listen_loop<M: From<Heard> + Send + 'static>(
    listen: Listen,
    reports: mpsc::Sender<M>,
    cancel: CancellationToken,
) {
    // The tenant's connections this target holds: before each opening, one per
    // subscription (the most it can need: the legacy protocol takes one each);
    // once open, as many as it uses.
    let mut permits = Vec::new();
    let mut failures: u32 = 0;
    // Whether the next opening is told: the first is, and the first after a
    // loss that was.
    let mut owed = true;
    loop {
        let Some(topped) = reserve(&listen, &reports, &cancel, permits).await else {
            return;
        };
        permits = topped;
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            opened = connect(&listen) => opened,
        };
        let why = match opened {
            Ok(mut session) => {
                permits.truncate(session.connections());
                let tell = Happened::Opened {
                    protocol: session.protocol(),
                    after: failures,
                    tell: std::mem::take(&mut owed),
                };
                if !send(&listen, &reports, tell).await {
                    return;
                }
                // What changed while no connection was open is seen by a poll.
                if failures > 0 {
                    listen.poke.notify_one();
                }
                let opened = tokio::time::Instant::now();
                match relay(&listen, &mut session, &reports, &cancel).await {
                    Relayed::Stopped => {
                        session.close().await;
                        return;
                    }
                    Relayed::Lost(why) => {
                        if opened.elapsed() >= STABLE {
                            failures = 0;
                        }
                        why
                    }
                }
            }
            Err(why @ Lost::Unsupported(_)) => {
                let _ = send(&listen, &reports, Happened::Unsupported(why)).await;
                return;
            }
            Err(why) => why,
        };
        let retry = backoff(failures);
        let first = failures == 0;
        owed |= first;
        let tell = Happened::Lost { why, retry, first };
        failures = failures.saturating_add(1);
        if !send(&listen, &reports, tell).await {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// `held` topped up to one connection per subscription, waiting while the
/// tenant's budget has no room (told once per wait); `None` when cancelled.
async fn reserve<M: From<Heard>>(
    listen: &Listen,
    reports: &mpsc::Sender<M>,
    cancel: &CancellationToken,
    mut held: Vec<ConnectionPermit>,
) -> Option<Vec<ConnectionPermit>> {
    let wanted = listen.wanted.len().max(1);
    let mut told = false;
    loop {
        let missing = wanted.saturating_sub(held.len());
        match listen.tenants.take_connections(&listen.namespace, missing) {
            Ok(more) => {
                held.extend(more);
                return Some(held);
            }
            Err(why) if !told => {
                told = true;
                if !send(listen, reports, Happened::OverQuota(why)).await {
                    return None;
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(BUDGET_RETRY) => {}
        }
    }
}

/// How long to wait after `failures` failures in a row, with ±20 % jitter.
fn backoff(failures: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

async fn send<M: From<Heard>>(listen: &Listen, reports: &mpsc::Sender<M>, what: Happened) -> bool {
    let heard = Heard {
        target: listen.target.clone(),
        url: listen.url.clone(),
        at: Timestamp::now(),
        what,
    };
    reports.send(M::from(heard)).await.is_ok()
}

enum Relayed {
    Stopped,
    Lost(Lost),
}

/// Hands each pushed value on until the connection is lost or the loop stops.
async fn relay<M: From<Heard>>(
    listen: &Listen,
    session: &mut Session,
    reports: &mpsc::Sender<M>,
    cancel: &CancellationToken,
) -> Relayed {
    let rate = listen
        .tenants
        .effective(&listen.namespace)
        .max_pushes_per_second;
    let mut bucket = Bucket::full(f64::from(rate), std::time::Instant::now());
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return Relayed::Stopped,
            next = session.next() => next,
        };
        let pushed = match next {
            Ok(pushed) => pushed,
            Err(why) => return Relayed::Lost(why),
        };
        if !bucket.take(std::time::Instant::now()) {
            return Relayed::Lost(Lost::Protocol(format!(
                "more than {rate} values a second (the tenant's maxPushesPerSecond)"
            )));
        }
        if !send(listen, reports, Happened::Pushed(pushed)).await {
            return Relayed::Stopped;
        }
    }
}

/// A token bucket: `rate` a second, five seconds' worth at most.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    fn full(rate: f64, now: std::time::Instant) -> Self {
        Self {
            rate,
            tokens: rate * 5.0,
            at: now,
        }
    }

    /// Takes a token at `now`, if there is one.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate * 5.0);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Opens the connection: the endpoint the policy allows now, with the
/// credentials and TLS settings of the moment.
async fn connect(listen: &Listen) -> Result<Session, Lost> {
    let material = match &listen.credentials {
        Some(credentials) => Some(credentials.material().map_err(Lost::Connect)?),
        None => None,
    };
    let endpoint = endpoint(listen, material.as_ref()).await?;
    open(&endpoint, &listen.wanted, Limits::default(), MINA_PROTOCOL).await
}

/// Where to connect: the pod's address, or the URL's host resolved to an
/// address the tenant's policy allows (checked now, as before every poll).
async fn endpoint(listen: &Listen, material: Option<&Material>) -> Result<Endpoint, Lost> {
    let url: reqwest::Url = listen
        .url
        .parse()
        .map_err(|e| Lost::Connect(format!("{}: {e}", listen.url)))?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_or_known_default().unwrap_or(80);
    let refused = |why: String| {
        Lost::Connect(format!(
            "not allowed by the tenant's endpoint policy: {why}"
        ))
    };
    let ip = match &listen.route {
        Route::Pod => host
            .parse()
            .map_err(|_| Lost::Connect(format!("{host} is not a pod address")))?,
        Route::NodeAddress {
            egress,
            namespace,
            ip,
        } => {
            egress.check_node_address(namespace, *ip).map_err(refused)?;
            *ip
        }
        Route::Url { egress, namespace } => {
            egress
                .check_url(namespace, Purpose::Graphql, &listen.url)
                .map_err(refused)?;
            let allowed = egress
                .resolve(namespace, Purpose::Graphql, host)
                .await
                .map_err(refused)?;
            *allowed
                .first()
                .ok_or_else(|| Lost::Connect(format!("{host} resolves to no address")))?
        }
    };
    let tls = match url.scheme() {
        "https" => Some(match material.and_then(|m| m.tls.as_ref()) {
            Some((prepared, _)) => prepared.config.clone(),
            None => platform_tls().map_err(Lost::Tls)?,
        }),
        _ => None,
    };
    Ok(Endpoint {
        url,
        address: SocketAddr::new(ip, port),
        tls,
        header: material.and_then(|m| m.header.clone()),
    })
}

/// The platform's roots, made once.
fn platform_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::tls::client_config(&crate::tls::ClientTls::default()).map(Arc::new))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter() {
        for (failures, base) in [(0, 1.0), (1, 2.0), (3, 8.0), (6, 60.0), (40, 60.0)] {
            let waited = backoff(failures).as_secs_f64();
            assert!(
                (base * 0.8..=base * 1.2).contains(&waited),
                "{failures} failures: {waited} s"
            );
        }
    }

    #[test]
    fn a_flood_empties_the_bucket_and_a_steady_rate_never_does() {
        let start = std::time::Instant::now();
        let mut bucket = Bucket::full(20.0, start);
        let burst = (0..200).take_while(|_| bucket.take(start)).count();
        assert_eq!(burst, 100, "five seconds' worth");
        // Refilled at the rate: one more a 20th of a second later, not two.
        let later = start + Duration::from_millis(50);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        let mut steady = Bucket::full(20.0, start);
        for i in 1..=1_000u32 {
            let now = start + Duration::from_secs_f64(f64::from(i) / 20.0);
            assert!(steady.take(now), "value {i}");
        }
    }
}
