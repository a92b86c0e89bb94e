//! Admission: checking and defaulting TargetApps before they are stored.
//!
//! - [`validate`] and [`query`]: the one pure validator (the webhook, `kco validate`
//!   and the monitor share it), every problem with its field path;
//! - [`defaults`]: the mutating webhook's defaults, as a JSON patch;
//! - [`review`]: AdmissionReview in, AdmissionReview out, no I/O;
//! - [`access`]: who may act as the ServiceAccount a TargetApp names (asked of
//!   the apiserver by the server, after the review);
//! - [`cache`]: the warm caches reviews read (schema ConfigMaps, ServiceAccounts);
//! - [`server`]: HTTPS on every replica, with a certificate swapped in place;
//! - [`certs`]: the certificates the leader manages (or a mounted directory).

pub mod access;
pub mod cache;
pub mod certs;
pub mod defaults;
pub mod fields;
pub mod query;
pub mod review;
pub mod server;
pub mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

pub use validate::{Problem, Validator, Verdict};

use crate::config::WebhookSettings;
use crate::election::Leadership;
use crate::metrics::Metrics;

/// What starting the webhooks needs.
pub struct Webhooks {
    pub settings: WebhookSettings,
    /// Where the Secret lives (the operator's namespace).
    pub namespace: String,
    pub client: kube::Client,
    pub admission: review::Admission,
    pub caches: cache::Caches,
    pub metrics: Metrics,
    pub leadership: Leadership,
    /// Set once a certificate is loaded, the caches are filled and the
    /// TenantQuotas are known.
    pub ready: Arc<AtomicBool>,
}

impl Webhooks {
    /// Binds the webhook port and starts serving, the certificate source and
    /// (while leading) certificate management. Returns the address. The caches are
    /// the monitor's, filled by watches the operator starts.
    pub async fn start(self, cancel: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = server::bind(self.settings.address).await?;
        let address = listener.local_addr()?;
        tracing::info!(address = %address, "admission webhooks listening (HTTPS)");
        let certificate = Arc::new(server::Certificate::default());
        let router = server::router(
            self.admission.clone(),
            self.metrics.clone(),
            access::SubjectAccessReviews::new(self.client.clone()),
        );
        tokio::spawn(server::serve(
            listener,
            router,
            certificate.clone(),
            cancel.clone(),
        ));
        match &self.settings.cert_dir {
            Some(dir) => {
                tokio::spawn(watch_dir(
                    dir.clone(),
                    certificate.clone(),
                    self.metrics.clone(),
                    cancel.clone(),
                ));
            }
            None => {
                tokio::spawn(watch_secret(
                    Api::namespaced(self.client.clone(), &self.namespace),
                    self.settings.secret.clone(),
                    certificate.clone(),
                    self.metrics.clone(),
                    cancel.clone(),
                ));
                let manager = certs::Manager {
                    secrets: Api::namespaced(self.client.clone(), &self.namespace),
                    secret_name: self.settings.secret.clone(),
                    config_name: self.settings.config_name.clone(),
                    validating: Api::all(self.client.clone()),
                    mutating: Api::all(self.client.clone()),
                    policy: certs::Policy {
                        ca_validity: self.settings.ca_validity,
                        cert_validity: self.settings.cert_validity,
                        hosts: self.settings.hosts.clone(),
                    },
                    leadership: self.leadership.clone(),
                };
                tokio::spawn(manage(
                    manager,
                    self.settings.check_period,
                    self.metrics.clone(),
                    cancel.clone(),
                ));
            }
        }
        let (ready, caches, admission) = (
            self.ready.clone(),
            self.caches.clone(),
            self.admission.clone(),
        );
        tokio::spawn(async move {
            while !(certificate.loaded() && caches.synced() && admission.quotas_known()) {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            ready.store(true, Ordering::Release);
        });
        Ok(address)
    }
}

/// Loads the certificate from KCO's Secret whenever it changes.
async fn watch_secret(
    secrets: Api<Secret>,
    name: String,
    certificate: Arc<server::Certificate>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut events = watcher(
        secrets,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    loop {
        let secret = tokio::select! {
            _ = cancel.cancelled() => return,
            event = events.next() => match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "webhook Secret watch failed; retrying");
                    continue;
                }
                Some(Ok(secret)) => secret,
            },
        };
        let Some(stored) = certs::Stored::from_secret(&secret) else {
            continue;
        };
        load(
            &certificate,
            &stored.cert_pem,
            &stored.key_pem,
            &metrics,
            &name,
        );
    }
}

/// Loads the certificate from a mounted directory, re-reading it every 10 s.
async fn watch_dir(
    dir: std::path::PathBuf,
    certificate: Arc<server::Certificate>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    loop {
        match (
            std::fs::read_to_string(dir.join("tls.crt")),
            std::fs::read_to_string(dir.join("tls.key")),
        ) {
            (Ok(cert), Ok(key)) => load(&certificate, &cert, &key, &metrics, &display(&dir)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the webhook certificate")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn load(certificate: &server::Certificate, cert: &str, key: &str, metrics: &Metrics, source: &str) {
    match certificate.load(cert, key) {
        Ok(true) => {
            let expiry = server::not_after(cert).unwrap_or(0);
            metrics.webhook_cert_expiry.set(expiry);
            tracing::info!(source, expires = expiry, "webhook certificate loaded");
        }
        Ok(false) => {}
        Err(e) => {
            metrics
                .errors
                .with_label_values(&["webhook_certificate"])
                .inc();
            tracing::error!(source, error = %e, "the webhook certificate is not usable");
        }
    }
}

/// While leading, keeps the certificates and caBundles right.
async fn manage(
    manager: certs::Manager,
    period: Duration,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut leading = manager.leadership.watch();
    loop {
        if *leading.borrow_and_update() {
            if let Err(e) = manager.round().await {
                metrics
                    .errors
                    .with_label_values(&["webhook_certificate"])
                    .inc();
                tracing::warn!(error = %e, "webhook certificate management failed; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        } else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leading.changed() => if changed.is_err() {
                    // Leader election is off: nobody manages certificates here.
                    cancel.cancelled().await;
                    return;
                },
            }
        }
    }
}
