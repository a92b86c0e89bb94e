//! TLS set-up shared by every HTTPS client and server in the process.

/// Installs the ring crypto provider as the process default. Must run before any
/// rustls client or server is built (kube, reqwest and the webhook server all use
/// the process default); calling it again is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What a client trusts and presents beyond the platform's defaults: the PEM CA
/// bundle its servers' certificates must chain to (instead of the platform's
/// roots), the name they must be issued to (instead of the host it connects
/// to: a pod's address), and a PEM certificate chain and key of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls<'a> {
    pub ca: Option<&'a [u8]>,
    pub server_name: Option<&'a str>,
    pub identity: Option<(&'a [u8], &'a [u8])>,
}

/// A client TLS configuration, and a digest of everything it was made from (the
/// PEM bytes and the server name) that tells two apart without comparing keys.
#[derive(Clone)]
pub struct Prepared {
    pub config: Arc<rustls::ClientConfig>,
    pub fingerprint: Vec<u8>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

impl PartialEq for Prepared {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl ClientTls<'_> {
    /// The configuration, with its fingerprint.
    pub fn prepare(&self) -> Result<Prepared, String> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            self.ca.unwrap_or_default(),
            self.server_name.unwrap_or_default().as_bytes(),
            self.identity.map(|(c, _)| c).unwrap_or_default(),
            self.identity.map(|(_, k)| k).unwrap_or_default(),
        ] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        Ok(Prepared {
            config: Arc::new(client_config(self)?),
            fingerprint: digest.finish().as_ref().to_vec(),
        })
    }
}

/// A rustls client configuration for `tls`, or why there is none (the reason
/// never holds key material).
pub fn client_config(tls: &ClientTls<'_>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match tls.ca {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("the CA bundle is not PEM: {e}"))?;
                roots.add(cert).map_err(|e| {
                    format!("the CA bundle holds a certificate that is not one: {e}")
                })?;
            }
            if roots.is_empty() {
                return Err("the CA bundle holds no certificate".to_owned());
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("cannot trust the CA bundle: {e}"))?
        }
        None => platform_verifier()?,
    };
    let verifier = match tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.to_owned())
                .map_err(|_| format!("{name:?} is not a server name"))?;
            Arc::new(IssuedTo {
                inner: verifier,
                name,
            })
        }
        None => verifier,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match tls.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
            if chain.is_empty() {
                return Err("the client certificate holds no certificate".to_owned());
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| "the client key is not a PEM private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the client certificate and key do not go together: {e}"))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The platform's verifier, made once: it reads the system's roots.
fn platform_verifier() -> Result<Arc<dyn ServerCertVerifier>, String> {
    static VERIFIER: std::sync::OnceLock<Result<Arc<dyn ServerCertVerifier>, String>> =
        std::sync::OnceLock::new();
    VERIFIER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls_platform_verifier::Verifier::new(provider)
                .map(|v| Arc::new(v) as Arc<dyn ServerCertVerifier>)
                .map_err(|e| format!("cannot read the platform's roots: {e}"))
        })
        .clone()
}

/// Verifies a server's certificate as issued to `name`, whatever host the
/// connection was made to (a pod's address): the chain, validity and
/// signatures are checked as always.
#[derive(Debug)]
struct IssuedTo {
    inner: Arc<dyn ServerCertVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for IssuedTo {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
