//! What a TargetApp's polls carry and trust from its Secrets: the header of
//! `spec.auth`, and the CA, server name and client certificate of `spec.tls`.
//! The Secrets are read in the TargetApp's namespace with the rights of its
//! ServiceAccount — never the operator's — and read again every refresh
//! period, so a rotated Secret is used within one period; what is made of them
//! is made again only when what was read changed. The header's value is marked
//! sensitive (left out of debug output) and goes nowhere but the target: an
//! authenticated poll follows no redirect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::header::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::targetapp::{Auth, TargetTls};
use crate::tls::Prepared;

/// The most bytes a credential may hold.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// The most bytes a Secret key read for polls may hold (a CA bundle).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Headers KCO sets itself, or that would change how the request is carried.
const RESERVED: [&str; 14] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "user-agent",
    "accept-encoding",
    "proxy-authorization",
    "proxy-connection",
];

/// Problems with `auth`, each as (field under `spec.auth`, reason).
pub fn check(auth: &Auth) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    match HeaderName::from_bytes(auth.header.as_bytes()) {
        Err(_) => problems.push(("header", format!("{:?} is not a header name", auth.header))),
        Ok(name) if RESERVED.contains(&name.as_str()) => problems.push((
            "header",
            format!("{name} is set by KCO or by the connection; it cannot carry credentials"),
        )),
        Ok(_) => {}
    }
    if let Some(scheme) = &auth.scheme
        && (scheme.is_empty()
            || scheme.len() > 32
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+".contains(&b)))
    {
        problems.push((
            "scheme",
            format!("{scheme:?} is not an authentication scheme (e.g. Bearer, Basic)"),
        ));
    }
    check_secret_key(
        &auth.secret_ref,
        ("secretRef.name", "secretRef.key"),
        &mut problems,
    );
    problems
}

/// Problems with `tls`, each as (field under `spec.tls`, reason).
pub fn check_tls(tls: &TargetTls) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Some(name) = &tls.server_name
        && (rustls::pki_types::ServerName::try_from(name.as_str()).is_err() || name.is_empty())
    {
        problems.push((
            "serverName",
            format!("{name:?} is not a DNS name or an IP address"),
        ));
    }
    if let Some(ca) = &tls.ca_secret_ref {
        check_secret_key(ca, ("caSecretRef.name", "caSecretRef.key"), &mut problems);
    }
    if let Some(client) = &tls.client_cert_secret_ref
        && let Err(why) = crate::names::subdomain(&client.name)
    {
        problems.push(("clientCertSecretRef.name", why));
    }
    problems
}

fn check_secret_key(
    reference: &crate::targetapp::SecretKeyRef,
    (name_field, key_field): (&'static str, &'static str),
    problems: &mut Vec<(&'static str, String)>,
) {
    if let Err(why) = crate::names::subdomain(&reference.name) {
        problems.push((name_field, why));
    }
    let key = &reference.key;
    if key.is_empty()
        || key.len() > crate::names::MAX_SUBDOMAIN
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        problems.push((
            key_field,
            format!("{key:?} is not a Secret key (letters, digits, '-', '_' and '.')"),
        ));
    }
}

/// The header `auth` asks for, its value made of `secret` (the Secret key's
/// bytes). An error never holds the value.
pub fn header_of(auth: &Auth, secret: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(auth.header.as_bytes())
        .map_err(|_| format!("{:?} is not a header name", auth.header))?;
    let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    if secret.is_empty() || secret.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!(
            "the credential must hold 1 to {MAX_CREDENTIAL_BYTES} bytes"
        ));
    }
    let credential = match auth.scheme.as_deref() {
        Some(scheme) if scheme.eq_ignore_ascii_case("basic") => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
            format!("{scheme} {encoded}").into_bytes()
        }
        Some(scheme) => [scheme.as_bytes(), b" ", secret].concat(),
        None => secret.to_vec(),
    };
    let mut value = HeaderValue::from_bytes(&credential).map_err(|_| {
        "the credential holds bytes a header cannot carry (control characters or a line break)"
            .to_owned()
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// What a TargetApp's polls carry and trust, made from its Secrets.
#[derive(Clone)]
pub struct Material {
    /// The header every poll carries (`spec.auth`).
    pub header: Option<(HeaderName, HeaderValue)>,
    /// The TLS settings (`spec.tls`), and the pod client made with them.
    pub tls: Option<(Prepared, reqwest::Client)>,
}

/// The material of one TargetApp's polls, as last read.
#[derive(Clone, Default)]
pub struct Credentials {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Moves whenever the material (or the reason there is none) changes.
    generation: AtomicU64,
    /// The material, and a digest of what it was made from.
    current: RwLock<Option<(Made, Vec<u8>)>>,
}

/// The material, or why there is none.
type Made = Result<Material, String>;

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Moves whenever [`Self::material`] may say something else.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// What polls carry and trust, or why they cannot be sent.
    pub fn material(&self) -> Result<Material, String> {
        match self.inner.current.read().ok().as_deref() {
            Some(Some((current, _))) => current.clone(),
            _ => Err("the credentials have not been read yet".to_owned()),
        }
    }

    /// Whether polls can be sent with what was read.
    fn usable(&self) -> bool {
        matches!(
            self.inner.current.read().ok().as_deref(),
            Some(Some((Ok(_), _)))
        )
    }

    /// The material of `wanted` when it names no Secret (a server name alone).
    pub fn without_secrets(wanted: &Wanted) -> Self {
        let credentials = Self::default();
        let read = Read::default();
        credentials.replace(read.digest(wanted), || read.material(wanted));
        credentials
    }

    /// Credentials that cannot be had, for `why`.
    pub fn failed(why: String) -> Self {
        let credentials = Self::default();
        credentials.set_failed(why);
        credentials
    }

    fn set_failed(&self, why: String) {
        let digest = why.as_bytes().to_vec();
        self.replace(digest, || Err(why));
    }

    /// Puts what `make` makes, unless what was read (`digest`) is what the
    /// current material was made from.
    fn replace(&self, digest: Vec<u8>, make: impl FnOnce() -> Result<Material, String>) {
        let unchanged = |current: &Option<(Made, Vec<u8>)>| {
            current
                .as_ref()
                .is_some_and(|(_, made_from)| *made_from == digest)
        };
        if self.inner.current.read().is_ok_and(|c| unchanged(&c)) {
            return;
        }
        // Made outside the lock: polls read the material meanwhile.
        let made = make();
        let Ok(mut current) = self.inner.current.write() else {
            return;
        };
        if unchanged(&current) {
            return;
        }
        *current = Some((made, digest));
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Reads the Secrets `spec.auth` and `spec.tls` name with `client` (acting as
/// ServiceAccount `account` of `namespace`) now, and again every `period` until
/// `cancel` in a task of its own. An apiserver that cannot answer leaves the
/// last material in place; a Secret that is gone, unreadable or unusable stops
/// the polls with the reason.
///
/// Each read takes at most [`READ_TIMEOUT`] and stops with `cancel`; until a
/// first read succeeds, a read that failed for want of an answer is tried again
/// after [`RETRY`], not a whole period. `client` makes the client of each read
/// (the ServiceAccount's, from a shared cache).
pub async fn start(
    client: ClientFor,
    namespace: &str,
    account: &str,
    wanted: Wanted,
    period: Duration,
    cancel: CancellationToken,
) -> Credentials {
    let credentials = Credentials::default();
    let reader = Reader {
        client,
        namespace: namespace.to_owned(),
        account: account.to_owned(),
        wanted,
        credentials: credentials.clone(),
    };
    tokio::select! {
        _ = cancel.cancelled() => return credentials,
        _ = reader.refresh() => {}
    }
    tokio::spawn(async move {
        loop {
            let wait = if reader.credentials.usable() {
                // Spread: TargetApps started together do not read together.
                period.mul_f64(0.9 + 0.2 * fastrand::f64())
            } else {
                RETRY.min(period)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = reader.refresh() => {}
            }
        }
    });
    credentials
}

/// Makes the client a read acts as (the TargetApp's ServiceAccount).
pub type ClientFor = Arc<dyn Fn() -> Result<kube::Client, String> + Send + Sync>;

/// The longest one read of a Secret may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon a read that found no answer is tried again while nothing usable
/// has been read.
pub const RETRY: Duration = Duration::from_secs(5);

/// What a TargetApp's polls need from its Secrets.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub auth: Option<Auth>,
    pub tls: Option<TargetTls>,
    /// Names the replica in the pod client's User-Agent.
    pub instance: String,
}

/// The bytes read for [`Wanted`].
#[derive(Default)]
struct Read {
    credential: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Read {
    /// A digest of everything read (and the settings it goes with).
    fn digest(&self, wanted: &Wanted) -> Vec<u8> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let settings = format!("{:?}{:?}", wanted.auth, wanted.tls);
        let identity = self.identity.as_ref();
        for part in [
            settings.as_bytes(),
            self.credential.as_deref().unwrap_or_default(),
            self.ca.as_deref().unwrap_or_default(),
            identity.map(|(c, _)| c.as_slice()).unwrap_or_default(),
            identity.map(|(_, k)| k.as_slice()).unwrap_or_default(),
        ] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        digest.finish().as_ref().to_vec()
    }

    /// The material made of what was read.
    fn material(&self, wanted: &Wanted) -> Result<Material, String> {
        let header = match (&wanted.auth, &self.credential) {
            (Some(auth), Some(credential)) => Some(header_of(auth, credential)?),
            _ => None,
        };
        let tls = match &wanted.tls {
            None => None,
            Some(tls) => {
                let prepared = crate::tls::ClientTls {
                    ca: self.ca.as_deref(),
                    server_name: tls.server_name.as_deref(),
                    identity: self
                        .identity
                        .as_ref()
                        .map(|(cert, key)| (cert.as_slice(), key.as_slice())),
                }
                .prepare()?;
                let pod = super::poll::pod_client(&wanted.instance)
                    .tls_backend_preconfigured((*prepared.config).clone())
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                Some((prepared, pod))
            }
        };
        Ok(Material { header, tls })
    }
}

struct Reader {
    client: ClientFor,
    namespace: String,
    account: String,
    wanted: Wanted,
    credentials: Credentials,
}

impl Reader {
    async fn refresh(&self) {
        let read = match (self.client)() {
            Ok(client) => {
                let secrets = Api::namespaced(client, &self.namespace);
                tokio::time::timeout(READ_TIMEOUT, self.read(&secrets))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ReadError {
                            message: format!(
                                "the apiserver did not answer within {}s",
                                READ_TIMEOUT.as_secs()
                            ),
                            transient: true,
                        })
                    })
            }
            Err(message) => Err(ReadError {
                message,
                transient: true,
            }),
        };
        match read {
            Ok(read) => {
                let digest = read.digest(&self.wanted);
                self.credentials
                    .replace(digest, || read.material(&self.wanted));
            }
            Err(e) if e.transient && self.credentials.usable() => {
                tracing::warn!(error = %e.message,
                    "cannot read the poll credentials again; the last ones stay in use");
            }
            Err(e) => self.credentials.set_failed(format!(
                "{} (read as ServiceAccount {})",
                e.message, self.account
            )),
        }
    }

    async fn read(&self, secrets: &Api<Secret>) -> Result<Read, ReadError> {
        let mut read = Read::default();
        if let Some(auth) = &self.wanted.auth {
            let (name, key) = (&auth.secret_ref.name, &auth.secret_ref.key);
            read.credential = Some(secret_key(secrets, name, key).await?);
        }
        if let Some(tls) = &self.wanted.tls {
            if let Some(ca) = &tls.ca_secret_ref {
                read.ca = Some(secret_key(secrets, &ca.name, &ca.key).await?);
            }
            if let Some(client) = &tls.client_cert_secret_ref {
                let cert = secret_key(secrets, &client.name, "tls.crt").await?;
                let key = secret_key(secrets, &client.name, "tls.key").await?;
                read.identity = Some((cert, key));
            }
        }
        Ok(read)
    }
}

/// The bytes of `key` in Secret `name`.
async fn secret_key(secrets: &Api<Secret>, name: &str, key: &str) -> Result<Vec<u8>, ReadError> {
    {
        let secret = secrets.get_opt(name).await.map_err(|e| ReadError {
            transient: !matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 401),
            message: format!("cannot read Secret {name}: {}", short(&e)),
        })?;
        let secret = secret.ok_or_else(|| ReadError {
            message: format!("Secret {name} does not exist"),
            transient: false,
        })?;
        let value = secret
            .data
            .and_then(|mut data| data.remove(key))
            .map(|bytes| bytes.0)
            .ok_or_else(|| ReadError {
                message: format!("Secret {name} has no key {key:?}"),
                transient: false,
            })?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(ReadError {
                message: format!(
                    "Secret {name} key {key:?} holds more than {MAX_SECRET_BYTES} bytes"
                ),
                transient: false,
            });
        }
        Ok(value)
    }
}

/// Why a Secret could not be read, and whether an earlier value should stand.
struct ReadError {
    message: String,
    transient: bool,
}

/// An apiserver error without its body: a refusal's reason, or the error kind.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.reason, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targetapp::SecretKeyRef;

    fn auth(header: &str, scheme: Option<&str>) -> Auth {
        Auth {
            secret_ref: SecretKeyRef {
                name: "mina-token".to_owned(),
                key: "token".to_owned(),
            },
            header: header.to_owned(),
            scheme: scheme.map(str::to_owned),
        }
    }

    #[test]
    fn the_header_is_the_scheme_and_the_secret_and_is_sensitive() {
        let (name, value) = header_of(&auth("Authorization", Some("Bearer")), b"s3cret\n").unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer s3cret");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cret"));
        let (_, basic) = header_of(&auth("Authorization", Some("Basic")), b"kco:pw").unwrap();
        assert_eq!(basic, "Basic a2NvOnB3");
        let (name, bare) = header_of(&auth("X-Api-Key", None), b"k\r\n").unwrap();
        assert_eq!((name.as_str(), bare.to_str().unwrap()), ("x-api-key", "k"));
    }

    #[test]
    fn a_credential_a_header_cannot_carry_is_refused_without_showing_it() {
        for secret in [
            &b"sekrit\nsekrit"[..],
            b"",
            b"\n",
            &[b'a'; MAX_CREDENTIAL_BYTES + 1],
        ] {
            let err = header_of(&auth("Authorization", Some("Bearer")), secret).unwrap_err();
            assert!(!err.contains("sekrit") && !err.contains("aaaa"), "{err}");
        }
    }

    #[test]
    fn headers_kco_or_the_connection_set_are_refused() {
        for header in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "User-Agent",
            "bad header",
            "",
        ] {
            let problems = check(&auth(header, None));
            assert_eq!(problems.len(), 1, "{header}: {problems:?}");
            assert_eq!(problems[0].0, "header");
        }
        assert_eq!(check(&auth("Authorization", Some("Bearer"))), vec![]);
        assert_eq!(check(&auth("X-Api-Key", None)), vec![]);
        let odd = check(&Auth {
            secret_ref: SecretKeyRef {
                name: "../kube-system".to_owned(),
                key: "a/b".to_owned(),
            },
            ..auth("Authorization", Some("Bearer token"))
        });
        let fields: Vec<&str> = odd.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["scheme", "secretRef.name", "secretRef.key"]);
    }

    #[test]
    fn the_generation_moves_only_when_what_was_read_changes() {
        let credentials = Credentials::default();
        assert!(credentials.material().is_err());
        let wanted = Wanted {
            auth: Some(auth("Authorization", None)),
            tls: None,
            instance: "kco-test".to_owned(),
        };
        let read = |token: &[u8]| Read {
            credential: Some(token.to_vec()),
            ..Read::default()
        };
        let mut made = 0;
        let mut put = |token: &[u8]| {
            let read = read(token);
            credentials.replace(read.digest(&wanted), || {
                made += 1;
                read.material(&wanted)
            });
            credentials.generation()
        };
        let first = put(b"a");
        assert_eq!(put(b"a"), first, "the same Secret again changes nothing");
        let second = put(b"b");
        assert_ne!(second, first);
        assert_eq!(made, 2, "made only when what was read changed");
        credentials.set_failed("gone".to_owned());
        assert_ne!(credentials.generation(), second);
        assert_eq!(credentials.material().err().as_deref(), Some("gone"));
    }
}
