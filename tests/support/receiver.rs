//! A local HTTPS webhook receiver: records every request (headers and body) as it
//! arrives and answers 200, or a chosen status for the next few requests, at once
//! or after a chosen delay.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;

use super::pki::Authority;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// The CA that signed the receiver's certificate (PEM).
    pub ca_pem: String,
    received: Arc<Mutex<Vec<Received>>>,
    failures: Arc<AtomicU32>,
    /// How long each answer waits, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on `ip` (port chosen by the system) with a certificate for `host`.
    pub async fn start(ip: IpAddr, host: &str) -> Self {
        kco::tls::install_crypto_provider();
        let ca = Authority::new("kco-test-receiver-ca").expect("a CA");
        let pem = ca.server(&[host]).expect("a server certificate");
        let certs = rustls_pemfile_certs(&pem.cert);
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
            .expect("a private key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a TLS configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("a receiver port");
        let addr = listener.local_addr().expect("an address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let failures = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (log, fail, delay) = (received.clone(), failures.clone(), delay_ms.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, log, fail, delay) =
                    (acceptor.clone(), log.clone(), fail.clone(), delay.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, fail, delay) = (log.clone(), fail.clone(), delay.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().expect("lock").push(Received {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body: body.to_vec(),
                            });
                            let failing = fail
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let status = if failing { 503 } else { 200 };
                            let wait = delay.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .expect("a response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            ca_pem: ca.cert_pem.clone(),
            received,
            failures,
            delay_ms,
            task,
        }
    }

    /// Every answer from now on comes `delay` after its request (recorded at once).
    pub fn answer_after(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The next `n` requests get 503.
    pub fn fail_next(&self, n: u32) {
        self.failures.store(n, Ordering::SeqCst);
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}
