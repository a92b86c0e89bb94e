//! The admission webhook server: HTTPS (rustls) on every replica, answering from
//! warm caches. The serving certificate is swapped in place when it changes (from
//! KCO's Secret or a mounted directory), without a restart.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::access::Authorize;
use super::review::{Admission, Answer, Hook, MAX_REVIEW_BYTES};
use crate::metrics::Metrics;

/// The serving certificate, replaceable while serving.
#[derive(Debug, Default)]
pub struct Certificate {
    current: RwLock<Option<(Arc<CertifiedKey>, String)>>,
}

impl Certificate {
    /// Loads a PEM certificate chain and key; a no-op when they are what is served.
    /// Returns whether the certificate changed.
    pub fn load(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        let id = crate::admission::certs::fingerprint(cert_pem);
        if self
            .current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|(_, i)| *i == id))
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let key = certified_key(cert_pem, key_pem)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "the certificate store is unavailable".to_owned())?;
        *current = Some((Arc::new(key), id));
        Ok(true)
    }

    pub fn loaded(&self) -> bool {
        self.current.read().map(|c| c.is_some()).unwrap_or(false)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .ok()
            .and_then(|c| c.as_ref().map(|(key, _)| key.clone()))
    }
}

/// When the first certificate in `pem` expires (Unix seconds).
pub fn not_after(pem: &str) -> Option<i64> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A rustls certified key from PEM text.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

#[derive(Clone)]
struct Served {
    admission: Admission,
    metrics: Metrics,
    access: Arc<dyn Authorize>,
    /// Reviews being checked at once ([`reviews_at_once`]).
    reviews: Arc<tokio::sync::Semaphore>,
}

/// How many reviews are checked at once. A review is CPU work (a query parsed and
/// checked against a schema, up to the size limits), done on the blocking pool so
/// that a flood of large TargetApps cannot stall the runtime that answers probes
/// and renews Leases; the rest wait their turn, within the apiserver's timeout.
fn reviews_at_once() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(2)
        .max(2)
}

/// The webhook routes: `/validate/targetapp`, `/mutate/targetapp`, `/healthz`.
/// `access` answers who may act as the ServiceAccount a TargetApp names.
pub fn router(admission: Admission, metrics: Metrics, access: Arc<dyn Authorize>) -> Router {
    Router::new()
        .route("/validate/targetapp", post(validate))
        .route("/mutate/targetapp", post(mutate))
        .route("/validate/tenantquota", post(validate_quota))
        .route("/healthz", get(|| async { "ok\n" }))
        // One byte over the limit so that the review itself reports the size clearly.
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES + 1))
        .with_state(Served {
            admission,
            metrics,
            access,
            reviews: Arc::new(tokio::sync::Semaphore::new(reviews_at_once())),
        })
}

async fn validate(State(s): State<Served>, body: Bytes) -> Response {
    answer(&s, Hook::Validate, body).await
}

async fn mutate(State(s): State<Served>, body: Bytes) -> Response {
    answer(&s, Hook::Mutate, body).await
}

async fn validate_quota(State(s): State<Served>, body: Bytes) -> Response {
    answer(&s, Hook::ValidateQuota, body).await
}

async fn answer(s: &Served, hook: Hook, body: Bytes) -> Response {
    let started = Instant::now();
    let name = match hook {
        Hook::Validate => "validate",
        Hook::Mutate => "mutate",
        Hook::ValidateQuota => "validate_quota",
    };
    let mut answer = review(s, hook, body).await;
    if let Some(check) = answer.access.take() {
        answer = match s.access.may_act_as(&check).await {
            Ok(true) => answer,
            Ok(false) => Answer::denied(&check.uid, check.refusal()),
            Err(why) => {
                tracing::warn!(namespace = %check.namespace, account = %check.account, error = %why,
                    "cannot check who may act as a ServiceAccount; denying");
                Answer::denied(&check.uid, check.unanswered("the apiserver did not answer"))
            }
        };
    }
    let result = if answer.status != 200 {
        "error"
    } else if answer.body.pointer("/response/allowed") == Some(&serde_json::Value::Bool(true)) {
        "allowed"
    } else {
        "denied"
    };
    s.metrics
        .webhook_requests
        .with_label_values(&[name, result])
        .inc();
    s.metrics
        .webhook_duration
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer.body)).into_response()
}

/// The review of `body`, off the async runtime and at most [`reviews_at_once`] at a time.
async fn review(s: &Served, hook: Hook, body: Bytes) -> Answer {
    let Ok(_turn) = s.reviews.clone().acquire_owned().await else {
        return Answer::unavailable("the webhook server is stopping");
    };
    let admission = s.admission.clone();
    match tokio::task::spawn_blocking(move || admission.review(hook, &body)).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "an admission review did not complete");
            Answer::unavailable("the review did not complete")
        }
    }
}

/// Serves `router` over TLS on `listener` until `cancel`, with `certificate`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    certificate: Arc<Certificate>,
    cancel: CancellationToken,
) {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, router, cancel) = (acceptor.clone(), router.clone(), cancel.clone());
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = TowerToHyperService::new(router);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connections.wait()).await;
}

/// Binds the webhook port.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}
