//! Webhook certificates managed by KCO: the leader keeps a CA and a serving
//! certificate in a Secret and the CA bundle in both webhook configurations, and
//! rotates them well before they expire. A CA rotation is done in two steps so
//! that nothing ever presents a certificate the apiserver does not trust yet:
//! first the new CA joins the bundle (the old one stays until it expires), then,
//! one check later, the serving certificate is re-issued by the new CA.
//!
//! The decision ([`plan`]) is pure; [`Manager`] does the I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::election::Leadership;

/// Secret keys.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_BUNDLE: &str = "ca-bundle.crt";
const CA_NOT_AFTER: &str = "operator.kco.local/ca-not-after";
const CERT_NOT_AFTER: &str = "operator.kco.local/cert-not-after";
const CERT_ISSUER: &str = "operator.kco.local/cert-issuer";
const CERT_HOSTS: &str = "operator.kco.local/cert-hosts";
const OLD_CA_NOT_AFTER: &str = "operator.kco.local/previous-ca-not-after";

/// How certificates are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// DNS names and IP addresses of the serving certificate.
    pub hosts: Vec<String>,
}

/// What the Secret holds, as far as deciding goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub bundle_pem: String,
    pub ca_not_after: Option<Timestamp>,
    pub cert_not_after: Option<Timestamp>,
    /// The CA (its PEM's fingerprint) that issued the serving certificate.
    pub cert_issuer: String,
    pub cert_hosts: String,
    /// The previous CA, kept in the bundle until it expires.
    pub old_ca_pem: Option<String>,
    pub old_ca_not_after: Option<Timestamp>,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is due.
    Keep,
    /// No usable CA: make a CA and a certificate.
    Create,
    /// The CA is in its last third: a new CA joins the bundle (certificate unchanged).
    RotateCa,
    /// The certificate is due (last third, other hosts, or issued by the old CA).
    IssueCert,
    /// The previous CA has expired: drop it from the bundle.
    PruneBundle,
}

/// The pure decision.
pub fn plan(stored: Option<&Stored>, policy: &Policy, now: Timestamp) -> Step {
    let Some(s) = stored else {
        return Step::Create;
    };
    let (Some(ca_until), Some(cert_until)) = (s.ca_not_after, s.cert_not_after) else {
        return Step::Create;
    };
    if s.ca_pem.is_empty() || s.ca_key_pem.is_empty() || ca_until <= now {
        return Step::Create;
    }
    if in_last_third(ca_until, policy.ca_validity, now) {
        return Step::RotateCa;
    }
    if s.cert_pem.is_empty()
        || s.key_pem.is_empty()
        || in_last_third(cert_until, policy.cert_validity, now)
        || s.cert_issuer != fingerprint(&s.ca_pem)
        || s.cert_hosts != policy.hosts.join(",")
    {
        return Step::IssueCert;
    }
    if s.old_ca_not_after.is_some_and(|until| until <= now) {
        return Step::PruneBundle;
    }
    Step::Keep
}

fn in_last_third(until: Timestamp, validity: Duration, now: Timestamp) -> bool {
    let third = SignedDuration::try_from(validity / 3).unwrap_or(SignedDuration::MAX);
    until
        .checked_sub(third)
        .is_ok_and(|renew_at| renew_at <= now)
}

/// A short fingerprint of a PEM text (SHA-256, hex, 16 bytes).
pub fn fingerprint(pem: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies `step` to `stored`, making keys and certificates as needed.
pub fn apply(
    step: &Step,
    stored: Option<&Stored>,
    policy: &Policy,
    now: Timestamp,
) -> Result<Stored, rcgen::Error> {
    let mut next = stored.cloned().unwrap_or_default();
    match step {
        Step::Keep => {}
        Step::Create => {
            let (ca_pem, ca_key_pem, until) = new_ca(policy.ca_validity, now)?;
            next = Stored {
                bundle_pem: ca_pem.clone(),
                ca_pem,
                ca_key_pem,
                ca_not_after: Some(until),
                ..Stored::default()
            };
            issue_into(&mut next, policy, now)?;
        }
        Step::RotateCa => {
            let (ca_pem, ca_key_pem, until) = new_ca(policy.ca_validity, now)?;
            next.old_ca_pem = Some(std::mem::replace(&mut next.ca_pem, ca_pem));
            next.old_ca_not_after = next.ca_not_after.replace(until);
            next.ca_key_pem = ca_key_pem;
            next.bundle_pem = bundle(&next);
        }
        Step::IssueCert => issue_into(&mut next, policy, now)?,
        Step::PruneBundle => {
            next.old_ca_pem = None;
            next.old_ca_not_after = None;
            next.bundle_pem = bundle(&next);
        }
    }
    Ok(next)
}

fn bundle(s: &Stored) -> String {
    let mut text = s.ca_pem.clone();
    if let Some(old) = &s.old_ca_pem {
        text.push_str(old);
    }
    text
}

fn not_after(now: Timestamp, validity: Duration) -> Timestamp {
    SignedDuration::try_from(validity)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .unwrap_or(now)
}

fn to_offset(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn new_ca(validity: Duration, now: Timestamp) -> Result<(String, String, Timestamp), rcgen::Error> {
    let until = not_after(now, validity);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("kco-webhook-ca-{}", now.as_second()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(now) - time::Duration::minutes(5);
    params.not_after = to_offset(until);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), until))
}

fn issue_into(s: &mut Stored, policy: &Policy, now: Timestamp) -> Result<(), rcgen::Error> {
    let ca_key = KeyPair::from_pem(&s.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&s.ca_pem, ca_key)?;
    let until = not_after(now, policy.cert_validity).min(s.ca_not_after.unwrap_or(now));
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        policy
            .hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "kco-webhook".into()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = policy
        .hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = to_offset(now) - time::Duration::minutes(5);
    params.not_after = to_offset(until);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    s.cert_pem = cert.pem();
    s.key_pem = key.serialize_pem();
    s.cert_not_after = Some(until);
    s.cert_issuer = fingerprint(&s.ca_pem);
    s.cert_hosts = policy.hosts.join(",");
    Ok(())
}

impl Stored {
    /// Reads the Secret's data and annotations.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .unwrap_or_default()
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let time = |key: &str| {
            annotations
                .get(key)
                .and_then(|t| t.parse::<Timestamp>().ok())
        };
        let bundle = text(CA_BUNDLE);
        let ca = text(CA_CERT);
        let old = bundle
            .strip_prefix(ca.as_str())
            .filter(|rest| !rest.trim().is_empty())
            .map(str::to_owned);
        Some(Self {
            ca_pem: ca,
            ca_key_pem: text(CA_KEY),
            cert_pem: text(TLS_CERT),
            key_pem: text(TLS_KEY),
            bundle_pem: bundle,
            ca_not_after: time(CA_NOT_AFTER),
            cert_not_after: time(CERT_NOT_AFTER),
            cert_issuer: annotations.get(CERT_ISSUER).cloned().unwrap_or_default(),
            cert_hosts: annotations.get(CERT_HOSTS).cloned().unwrap_or_default(),
            old_ca_not_after: if old.is_some() {
                time(OLD_CA_NOT_AFTER)
            } else {
                None
            },
            old_ca_pem: old,
        })
    }

    /// Writes data and annotations into `secret`.
    pub fn into_secret(self, mut secret: Secret) -> Secret {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        secret.type_ = Some("kubernetes.io/tls".to_owned());
        secret.data = Some(BTreeMap::from([
            (CA_CERT.to_owned(), bytes(&self.ca_pem)),
            (CA_KEY.to_owned(), bytes(&self.ca_key_pem)),
            (TLS_CERT.to_owned(), bytes(&self.cert_pem)),
            (TLS_KEY.to_owned(), bytes(&self.key_pem)),
            (CA_BUNDLE.to_owned(), bytes(&self.bundle_pem)),
        ]));
        let annotations = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let mut put = |key: &str, value: Option<String>| match value {
            Some(v) => {
                annotations.insert(key.to_owned(), v);
            }
            None => {
                annotations.remove(key);
            }
        };
        put(CA_NOT_AFTER, self.ca_not_after.map(|t| t.to_string()));
        put(CERT_NOT_AFTER, self.cert_not_after.map(|t| t.to_string()));
        put(CERT_ISSUER, Some(self.cert_issuer));
        put(CERT_HOSTS, Some(self.cert_hosts));
        put(
            OLD_CA_NOT_AFTER,
            self.old_ca_not_after.map(|t| t.to_string()),
        );
        secret
    }
}

/// The leader's certificate loop: keeps the Secret and the caBundles right.
pub struct Manager {
    pub secrets: Api<Secret>,
    pub secret_name: String,
    pub config_name: String,
    pub validating: Api<ValidatingWebhookConfiguration>,
    pub mutating: Api<MutatingWebhookConfiguration>,
    pub policy: Policy,
    pub leadership: Leadership,
}

impl Manager {
    /// One round: rotate what is due, then make both configurations trust the
    /// bundle. Returns the step taken.
    pub async fn round(&self) -> Result<Step, String> {
        let current = self
            .secrets
            .get_opt(&self.secret_name)
            .await
            .map_err(|e| format!("cannot read Secret {}: {e}", self.secret_name))?;
        let stored = current.as_ref().and_then(Stored::from_secret);
        let now = Timestamp::now();
        let step = plan(stored.as_ref(), &self.policy, now);
        let bundle = if step == Step::Keep {
            stored.map(|s| s.bundle_pem).unwrap_or_default()
        } else {
            let next = apply(&step, stored.as_ref(), &self.policy, now)
                .map_err(|e| format!("cannot make certificates: {e}"))?;
            let bundle = next.bundle_pem.clone();
            if !self.leadership.confirm() {
                return Err("no longer the leader".to_owned());
            }
            let result = match current {
                Some(secret) => {
                    self.secrets
                        .replace(
                            &self.secret_name,
                            &PostParams::default(),
                            &next.into_secret(secret),
                        )
                        .await
                }
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.secret_name.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/name".to_owned(),
                                "kco".to_owned(),
                            )])),
                            ..ObjectMeta::default()
                        },
                        ..Secret::default()
                    };
                    self.secrets
                        .create(&PostParams::default(), &next.into_secret(secret))
                        .await
                }
            };
            result.map_err(|e| format!("cannot write Secret {}: {e}", self.secret_name))?;
            tracing::info!(step = ?step, secret = %self.secret_name, "webhook certificates updated");
            bundle
        };
        self.trust(&bundle).await?;
        Ok(step)
    }

    /// Writes `bundle` into every webhook of both configurations (when they exist).
    async fn trust(&self, bundle: &str) -> Result<(), String> {
        let wanted = ByteString(bundle.as_bytes().to_vec());
        self.trust_in(&self.validating, &wanted, |c| {
            c.webhooks
                .iter_mut()
                .flatten()
                .map(|h| &mut h.client_config)
                .collect()
        })
        .await?;
        self.trust_in(&self.mutating, &wanted, |c| {
            c.webhooks
                .iter_mut()
                .flatten()
                .map(|h| &mut h.client_config)
                .collect()
        })
        .await
    }

    /// Sets the caBundle of every webhook of one configuration, if it differs.
    async fn trust_in<K>(
        &self,
        api: &Api<K>,
        wanted: &ByteString,
        hooks: impl Fn(&mut K) -> Vec<&mut WebhookClientConfig>,
    ) -> Result<(), String>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let kind = K::kind(&());
        let Some(mut config) = api
            .get_opt(&self.config_name)
            .await
            .map_err(|e| format!("cannot read {kind} {}: {e}", self.config_name))?
        else {
            return Ok(());
        };
        let mut clients = hooks(&mut config);
        if clients.iter().all(|c| c.ca_bundle.as_ref() == Some(wanted)) {
            return Ok(());
        }
        for client in clients.iter_mut() {
            client.ca_bundle = Some(wanted.clone());
        }
        if !self.leadership.confirm() {
            return Err("no longer the leader".to_owned());
        }
        api.replace(&self.config_name, &PostParams::default(), &config)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot update {kind} {}: {e}", self.config_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            ca_validity: Duration::from_secs(3000),
            cert_validity: Duration::from_secs(900),
            hosts: vec!["kco-webhook.kco-system.svc".into(), "127.0.0.1".into()],
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn the_lifecycle_creates_rotates_in_two_steps_and_prunes() {
        let p = policy();
        assert_eq!(plan(None, &p, at(0)), Step::Create);
        let s0 = apply(&Step::Create, None, &p, at(0)).unwrap();
        assert_eq!(s0.bundle_pem, s0.ca_pem);
        assert_eq!(plan(Some(&s0), &p, at(100)), Step::Keep);
        // The certificate's last third (900 s validity: from 600 s on).
        assert_eq!(plan(Some(&s0), &p, at(650)), Step::IssueCert);
        let s1 = apply(&Step::IssueCert, Some(&s0), &p, at(650)).unwrap();
        assert_ne!(s1.cert_pem, s0.cert_pem);
        assert_eq!(s1.ca_pem, s0.ca_pem, "same CA");
        assert_eq!(plan(Some(&s1), &p, at(700)), Step::Keep);
        // The CA's last third (from 2000 s): a new CA joins the bundle first...
        assert_eq!(plan(Some(&s1), &p, at(2100)), Step::RotateCa);
        let s2 = apply(&Step::RotateCa, Some(&s1), &p, at(2100)).unwrap();
        assert_eq!(
            s2.cert_pem, s1.cert_pem,
            "the certificate is not touched yet"
        );
        assert!(s2.bundle_pem.starts_with(&s2.ca_pem) && s2.bundle_pem.ends_with(&s1.ca_pem));
        // ...then the certificate is re-issued by it.
        assert_eq!(plan(Some(&s2), &p, at(2101)), Step::IssueCert);
        let s3 = apply(&Step::IssueCert, Some(&s2), &p, at(2101)).unwrap();
        assert_eq!(s3.cert_issuer, fingerprint(&s3.ca_pem));
        assert_eq!(plan(Some(&s3), &p, at(2200)), Step::Keep);
        // When the old CA expires (3000 s), it leaves the bundle (once the certificate,
        // due again by then, has been renewed: one step per round).
        assert_eq!(plan(Some(&s3), &p, at(3001)), Step::IssueCert);
        let s4 = apply(&Step::IssueCert, Some(&s3), &p, at(3001)).unwrap();
        assert_eq!(plan(Some(&s4), &p, at(3002)), Step::PruneBundle);
        let s5 = apply(&Step::PruneBundle, Some(&s4), &p, at(3002)).unwrap();
        assert_eq!(s5.bundle_pem, s5.ca_pem);
        assert_eq!(plan(Some(&s5), &p, at(3003)), Step::Keep);
    }

    #[test]
    fn other_hosts_or_a_broken_secret_reissue() {
        let p = policy();
        let s = apply(&Step::Create, None, &p, at(0)).unwrap();
        let mut other = p.clone();
        other.hosts.push("kco-webhook.other.svc".into());
        assert_eq!(plan(Some(&s), &other, at(1)), Step::IssueCert);
        let mut broken = s.clone();
        broken.ca_not_after = None;
        assert_eq!(plan(Some(&broken), &p, at(1)), Step::Create);
    }

    #[test]
    fn the_secret_round_trips() {
        let p = policy();
        let s = apply(&Step::Create, None, &p, at(0)).unwrap();
        let s = apply(&Step::RotateCa, Some(&s), &p, at(2100)).unwrap();
        let secret = s.clone().into_secret(Secret::default());
        assert_eq!(Stored::from_secret(&secret), Some(s));
    }

    #[test]
    fn the_serving_certificate_chains_to_the_bundle_for_every_host() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        crate::tls::install_crypto_provider();
        let p = policy();
        let s = apply(&Step::Create, None, &p, at(0)).unwrap();
        let s = apply(&Step::RotateCa, Some(&s), &p, at(2100)).unwrap();
        let s = apply(&Step::IssueCert, Some(&s), &p, at(2101)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(s.bundle_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let leaf = CertificateDer::from_pem_slice(s.cert_pem.as_bytes()).unwrap();
        let when = UnixTime::since_unix_epoch(Duration::from_secs(1_800_002_200));
        for host in ["kco-webhook.kco-system.svc", "127.0.0.1"] {
            let name = ServerName::try_from(host).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], when)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        let other = ServerName::try_from("evil.example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], when)
                .is_err()
        );
        assert!(crate::admission::server::certified_key(&s.cert_pem, &s.key_pem).is_ok());
        let bad = crate::admission::server::certified_key(&s.cert_pem, "nope").unwrap_err();
        assert!(bad.contains("private key"), "{bad}");
    }
}
