//! A TargetApp's poll credentials (`spec.auth`): one header whose value is read
//! from a Secret of the TargetApp's namespace with the rights of its
//! ServiceAccount — never the operator's — and read again every refresh period,
//! so a rotated Secret is used within one period. The value is marked sensitive
//! (left out of debug output) and goes nowhere but the target: an
//! authenticated poll follows no redirect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use reqwest::header::{HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::targetapp::Auth;

/// The most bytes a credential may hold.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

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
    if let Err(why) = crate::names::subdomain(&auth.secret_ref.name) {
        problems.push(("secretRef.name", why));
    }
    let key = &auth.secret_ref.key;
    if key.is_empty()
        || key.len() > crate::names::MAX_SUBDOMAIN
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        problems.push((
            "secretRef.key",
            format!("{key:?} is not a Secret key (letters, digits, '-', '_' and '.')"),
        ));
    }
    problems
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

/// The credentials of one TargetApp's polls, as last read.
#[derive(Clone, Default)]
pub struct Credentials {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Moves whenever the header (or the reason there is none) changes.
    generation: AtomicU64,
    current: RwLock<Option<Result<(HeaderName, HeaderValue), String>>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Moves whenever [`Self::header`] may say something else.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The header to send, or why polls cannot be sent.
    pub fn header(&self) -> Result<(HeaderName, HeaderValue), String> {
        match self.inner.current.read().ok().as_deref() {
            Some(Some(current)) => current.clone(),
            _ => Err("the credentials have not been read yet".to_owned()),
        }
    }

    fn set(&self, next: Result<(HeaderName, HeaderValue), String>) {
        let Ok(mut current) = self.inner.current.write() else {
            return;
        };
        if current.as_ref() != Some(&next) {
            *current = Some(next);
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Why a Secret could not be read, and whether an earlier value should stand.
struct ReadError {
    message: String,
    transient: bool,
}

/// Reads `auth`'s Secret with `client` (acting as ServiceAccount `account` of
/// `namespace`) now, and again every `period` until `cancel` in a task of its
/// own. An apiserver that cannot answer leaves the last value in place; a
/// Secret that is gone, unreadable or unusable stops the polls with the reason.
pub async fn start(
    client: kube::Client,
    namespace: &str,
    account: &str,
    auth: Auth,
    period: Duration,
    cancel: CancellationToken,
) -> Credentials {
    let credentials = Credentials::default();
    let reader = Reader {
        secrets: Api::namespaced(client, namespace),
        account: account.to_owned(),
        auth,
        credentials: credentials.clone(),
    };
    reader.refresh().await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(period) => reader.refresh().await,
            }
        }
    });
    credentials
}

impl Credentials {
    /// Credentials that cannot be had, for `why`.
    pub fn failed(why: String) -> Self {
        let credentials = Self::default();
        credentials.set(Err(why));
        credentials
    }
}

struct Reader {
    secrets: Api<Secret>,
    account: String,
    auth: Auth,
    credentials: Credentials,
}

impl Reader {
    async fn refresh(&self) {
        let (credentials, auth) = (&self.credentials, &self.auth);
        match read(&self.secrets, auth).await {
            Ok(bytes) => credentials.set(header_of(auth, &bytes)),
            Err(e) if e.transient && credentials.header().is_ok() => {
                tracing::warn!(secret = %auth.secret_ref.name, error = %e.message,
                    "cannot read the poll credentials again; the last ones stay in use");
            }
            Err(e) => credentials.set(Err(format!(
                "{} (read as ServiceAccount {})",
                e.message, self.account
            ))),
        }
    }
}

async fn read(secrets: &Api<Secret>, auth: &Auth) -> Result<Vec<u8>, ReadError> {
    let (name, key) = (&auth.secret_ref.name, &auth.secret_ref.key);
    let secret = secrets.get_opt(name).await.map_err(|e| ReadError {
        transient: !matches!(&e, kube::Error::Api(s) if s.code == 403 || s.code == 401),
        message: format!("cannot read Secret {name}: {}", short(&e)),
    })?;
    let secret = secret.ok_or_else(|| ReadError {
        message: format!("Secret {name} does not exist"),
        transient: false,
    })?;
    secret
        .data
        .and_then(|mut data| data.remove(key))
        .map(|bytes| bytes.0)
        .ok_or_else(|| ReadError {
            message: format!("Secret {name} has no key {key:?}"),
            transient: false,
        })
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
    fn the_generation_moves_only_when_the_header_changes() {
        let credentials = Credentials::default();
        assert!(credentials.header().is_err());
        let a = header_of(&auth("Authorization", None), b"a").unwrap();
        credentials.set(Ok(a.clone()));
        let first = credentials.generation();
        credentials.set(Ok(a));
        assert_eq!(credentials.generation(), first);
        credentials.set(Err("gone".to_owned()));
        assert_ne!(credentials.generation(), first);
        assert_eq!(credentials.header().unwrap_err(), "gone");
    }
}
