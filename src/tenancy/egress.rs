//! Outbound HTTP to user-supplied URLs, with the endpoint policy enforced at
//! connect time: every client resolves names through [`PolicyResolver`], which
//! drops forbidden addresses (DNS rebinding cannot slip past admission). A GraphQL
//! client follows a redirect only when its URL passes the policy too; a webhook
//! client follows none. The clients carry
//! no credentials of any kind and ignore proxy settings from the environment.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::endpoint::{EndpointCheck, EndpointPolicy, Purpose, Reach, own_service};
use super::services::Services;

/// How many redirects a client follows (each checked against the policy).
const MAX_REDIRECTS: usize = 3;

/// Host names answered from a fixed table instead of DNS: tests use it to make a
/// name resolve to a forbidden address without touching the machine's resolver.
pub type DnsOverrides = Arc<HashMap<String, Vec<IpAddr>>>;

/// The apiserver's addresses, never a target: kept current (its Service and
/// endpoints can move), read at every check.
#[derive(Clone, Default)]
pub struct Apiserver(Arc<Addresses>);

#[derive(Default)]
struct Addresses {
    current: RwLock<Arc<[IpAddr]>>,
    /// Moves at every change of `current`.
    generation: AtomicU64,
}

impl Apiserver {
    pub fn get(&self) -> Arc<[IpAddr]> {
        self.0
            .current
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    pub fn set(&self, mut addresses: Vec<IpAddr>) {
        addresses.sort();
        addresses.dedup();
        match self.0.current.write() {
            Ok(mut a) => {
                if **a == *addresses {
                    return;
                }
                *a = addresses.into();
            }
            Err(e) => *e.into_inner() = addresses.into(),
        }
        self.0.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}

impl From<Vec<IpAddr>> for Apiserver {
    fn from(addresses: Vec<IpAddr>) -> Self {
        let this = Self::default();
        this.set(addresses);
        this
    }
}

/// Outbound clients per (namespace, purpose, trusted CA), each enforcing the
/// tenant's endpoint policy.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

/// (namespace, purpose, what it trusts, the policy's text, whether redirects are followed).
type ClientKey = (String, Purpose, Vec<u8>, String, bool);

/// What a client trusts (and presents).
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The platform's roots.
    Platform,
    /// This PEM CA bundle instead.
    Ca(&'a [u8]),
    /// A TLS configuration made from a TargetApp's Secrets.
    Config(&'a crate::tls::Prepared),
}

impl Trust<'_> {
    /// What tells clients apart in the cache.
    fn key(&self) -> Vec<u8> {
        match self {
            Self::Platform => Vec::new(),
            Self::Ca(pem) => [b"ca:".as_slice(), pem].concat(),
            Self::Config(prepared) => [b"config:".as_slice(), &prepared.fingerprint].concat(),
        }
    }
}

struct Inner {
    tenants: Arc<super::Tenants>,
    apiserver: Apiserver,
    overrides: DnsOverrides,
    /// Resolves the tenant's own Service names through the apiserver (None
    /// offline: such names are then not resolved at all).
    services: Option<Services>,
    /// By (namespace, purpose, trusted CA, the policy's text): a changed policy
    /// makes a new client.
    clients: moka::sync::Cache<ClientKey, reqwest::Client>,
    user_agent: String,
}

impl Egress {
    /// Each namespace's policy comes from `tenants`; `apiserver` lists the
    /// apiserver's addresses, never reachable; requests say `user_agent`.
    pub fn new(
        tenants: Arc<super::Tenants>,
        apiserver: impl Into<Apiserver>,
        overrides: DnsOverrides,
        user_agent: String,
        services: Option<Services>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenants,
                apiserver: apiserver.into(),
                overrides,
                services,
                clients: moka::sync::Cache::builder()
                    .max_capacity(1000)
                    .time_to_idle(Duration::from_secs(600))
                    .build(),
                user_agent,
            }),
        }
    }

    /// Moves whenever an endpoint check or a client made before may no longer
    /// hold: a TenantQuota, a namespace's labels or the apiserver's addresses
    /// changed. What a poll loop derived at one generation it keeps until then.
    pub fn generation(&self) -> u64 {
        self.inner
            .tenants
            .generation()
            .wrapping_add(self.inner.apiserver.generation())
    }

    /// The endpoint policy of `namespace`.
    pub fn policy(&self, namespace: &str) -> EndpointPolicy {
        self.inner
            .tenants
            .effective(namespace)
            .quota
            .endpoint_policy
    }

    /// Checks `url` for `namespace` and `purpose` as written (before any request).
    pub fn check_url(&self, namespace: &str, purpose: Purpose, url: &str) -> Result<Reach, String> {
        EndpointCheck {
            policy: &self.policy(namespace),
            namespace,
            purpose,
            apiserver: &self.inner.apiserver.get(),
        }
        .url(url)
    }

    /// Checks the address of a pod on its node's network (the node's address):
    /// allowed only where the tenant's `allowedCIDRs` name it, and never the
    /// apiserver's.
    pub fn check_node_address(&self, namespace: &str, ip: IpAddr) -> Result<(), String> {
        let policy = self.policy(namespace);
        let apiserver = self.inner.apiserver.get();
        let check = EndpointCheck {
            policy: &policy,
            namespace,
            purpose: Purpose::Graphql,
            apiserver: &apiserver,
        };
        check.address(ip, Reach::Internal)?;
        if check.allowed_by_cidr(ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is the address of the pod's node (host network); the tenant policy allows node addresses only in its allowedCIDRs"
            ))
        }
    }

    /// The addresses `host` resolves to that the endpoint policy of `namespace`
    /// allows for `purpose`, as an HTTP client of [`Self::client_for`] would
    /// connect to (for connections made without one: subscriptions).
    pub async fn resolve(
        &self,
        namespace: &str,
        purpose: Purpose,
        host: &str,
    ) -> Result<Vec<IpAddr>, String> {
        let resolver = PolicyResolver {
            policy: self.policy(namespace),
            namespace: namespace.to_owned(),
            purpose,
            apiserver: self.inner.apiserver.clone(),
            overrides: self.inner.overrides.clone(),
            services: self.inner.services.clone(),
        };
        let found = resolver
            .lookup(host)
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?;
        resolver.allowed(host, found)
    }

    /// A client for `namespace` and `purpose` that trusts `ca` (PEM) instead of the
    /// platform's roots when given.
    pub fn client(
        &self,
        namespace: &str,
        purpose: Purpose,
        ca: Option<&[u8]>,
    ) -> Result<reqwest::Client, String> {
        let trust = ca.map_or(Trust::Platform, Trust::Ca);
        self.client_with(namespace, purpose, trust, true)
    }

    /// As [`Self::client`], trusting and presenting what `trust` says, and
    /// following no redirect whatever the purpose when `credentials`: a request
    /// that carries them would hand them to another host.
    pub fn client_for(
        &self,
        namespace: &str,
        purpose: Purpose,
        trust: Trust<'_>,
        credentials: bool,
    ) -> Result<reqwest::Client, String> {
        self.client_with(namespace, purpose, trust, !credentials)
    }

    fn client_with(
        &self,
        namespace: &str,
        purpose: Purpose,
        trust: Trust<'_>,
        follow_redirects: bool,
    ) -> Result<reqwest::Client, String> {
        let policy = self.policy(namespace);
        let key = (
            namespace.to_owned(),
            purpose,
            trust.key(),
            format!("{policy:?}"),
            follow_redirects,
        );
        if let Some(client) = self.inner.clients.get(&key) {
            return Ok(client);
        }
        let resolver = PolicyResolver {
            policy,
            namespace: namespace.to_owned(),
            purpose,
            apiserver: self.inner.apiserver.clone(),
            overrides: self.inner.overrides.clone(),
            services: self.inner.services.clone(),
        };
        let redirects = match purpose {
            // A webhook request carries the tenant's headers and signature: a redirect
            // would hand them to another host, so none is followed.
            Purpose::Webhook => reqwest::redirect::Policy::none(),
            Purpose::Graphql if !follow_redirects => reqwest::redirect::Policy::none(),
            Purpose::Graphql => {
                let redirect_check = resolver.clone();
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                    }
                    match redirect_check.check_url(attempt.url().as_str()) {
                        Ok(_) => attempt.follow(),
                        Err(why) => {
                            attempt.error(format!("redirect refused by the endpoint policy: {why}"))
                        }
                    }
                })
            }
        };
        let mut builder = reqwest::Client::builder()
            .user_agent(&self.inner.user_agent)
            .no_proxy()
            .dns_resolver(resolver)
            .redirect(redirects)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2);
        match trust {
            Trust::Platform => {}
            Trust::Ca(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| format!("the CA bundle is not valid PEM: {e}"))?;
                if certs.is_empty() {
                    return Err("the CA bundle holds no certificate".to_owned());
                }
                builder = builder.tls_certs_only(certs);
            }
            Trust::Config(prepared) => {
                builder = builder.tls_backend_preconfigured((*prepared.config).clone());
            }
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        self.inner.clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A name refused at connect time because of where it resolves (the error behind a
/// failed request; callers find it in the error's source chain).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyRefusal(pub String);

/// Resolves names and keeps only the addresses the endpoint policy allows. The
/// tenant's own Service names are resolved through their Service objects
/// ([`Services`]), other names through DNS.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: EndpointPolicy,
    namespace: String,
    purpose: Purpose,
    apiserver: Apiserver,
    overrides: DnsOverrides,
    services: Option<Services>,
}

impl PolicyResolver {
    /// Checks a URL (a redirect's) against the policy.
    fn check_url(&self, url: &str) -> Result<Reach, String> {
        EndpointCheck {
            policy: &self.policy,
            namespace: &self.namespace,
            purpose: self.purpose,
            apiserver: &self.apiserver.get(),
        }
        .url(url)
    }

    /// The allowed addresses among `found` for host `name`, or why there are none.
    fn allowed(&self, name: &str, found: Vec<IpAddr>) -> Result<Vec<IpAddr>, String> {
        let apiserver = self.apiserver.get();
        let check = EndpointCheck {
            policy: &self.policy,
            namespace: &self.namespace,
            purpose: self.purpose,
            apiserver: &apiserver,
        };
        // A name that is an address is judged as a URL's address literal is.
        let literal = name.trim_matches(['[', ']']).parse::<IpAddr>();
        let reach = match literal {
            Ok(ip) => check.ip_literal(ip)?,
            Err(_) => check.host(name)?,
        };
        let mut refused = None;
        let allowed: Vec<IpAddr> = found
            .into_iter()
            .filter(|ip| match check.address(*ip, reach) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert(why);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(why)) => Err(format!("{name} resolves to a forbidden address: {why}")),
            (true, None) => Err(format!("{name} resolves to no address")),
        }
    }

    /// What `name` resolves to: the test table, the tenant's Service, or DNS.
    async fn lookup(
        &self,
        name: &str,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(fixed) = self.overrides.get(name) {
            return Ok(fixed.clone());
        }
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(own) = own_service(&host, &self.namespace) {
            let services = self.services.as_ref().ok_or_else(|| {
                PolicyRefusal(format!(
                    "{name}: Services are resolved only through the apiserver"
                ))
            })?;
            let found = services
                .resolve(&self.namespace, own.service, own.hostname)
                .await
                .map_err(|why| PolicyRefusal(format!("{name}: {why}")))?;
            return Ok(found.to_vec());
        }
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found = this.lookup(&name).await?;
            let allowed = this.allowed(&name, found).map_err(PolicyRefusal)?;
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_apiserver_addresses_move_the_generation_and_the_same_ones_do_not() {
        let apiserver = Apiserver::from(vec!["10.96.0.1".parse().unwrap()]);
        let first = apiserver.generation();
        apiserver.set(vec!["10.96.0.1".parse().unwrap()]);
        assert_eq!(apiserver.generation(), first, "the same address");
        apiserver.set(vec![
            "10.96.0.1".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
        ]);
        assert_ne!(apiserver.generation(), first, "an added address");
        assert_eq!(
            &*apiserver.get(),
            &[
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "10.96.0.1".parse().unwrap()
            ]
        );
    }

    fn resolver(purpose: Purpose) -> PolicyResolver {
        PolicyResolver {
            policy: EndpointPolicy::default(),
            namespace: "chain".into(),
            purpose,
            apiserver: vec!["10.96.0.1".parse().unwrap()].into(),
            overrides: Arc::default(),
            services: None,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn forbidden_addresses_are_dropped_and_all_forbidden_is_an_error() {
        let r = resolver(Purpose::Webhook);
        assert_eq!(
            r.allowed(
                "hooks.example.com",
                ips(&["169.254.169.254", "93.184.216.34"])
            ),
            Ok(ips(&["93.184.216.34"]))
        );
        let err = r
            .allowed("evil.example.com", ips(&["127.0.0.1", "10.0.0.8"]))
            .unwrap_err();
        assert!(
            err.starts_with(
                "evil.example.com resolves to a forbidden address: 127.0.0.1 is a loopback"
            ),
            "{err}"
        );
        let err = r
            .allowed("hook.chain.svc", ips(&["10.96.0.1"]))
            .unwrap_err();
        assert!(err.contains("apiserver"), "{err}");
        assert_eq!(
            r.allowed("hook.chain.svc", ips(&["10.0.0.8"])),
            Ok(ips(&["10.0.0.8"]))
        );
        let g = resolver(Purpose::Graphql);
        assert!(g.allowed("node.other.svc", ips(&["10.0.0.8"])).is_err());
    }

    #[test]
    fn an_address_for_a_name_is_judged_as_a_urls_address() {
        // Where the policy opens a range, an address in it is allowed; the
        // apiserver's and the metadata service's never are.
        let mut g = resolver(Purpose::Graphql);
        g.policy.allowed_cidrs = vec!["127.100.0.0/16".parse().unwrap()];
        assert_eq!(
            g.allowed("127.100.0.10", ips(&["127.100.0.10"])),
            Ok(ips(&["127.100.0.10"]))
        );
        let err = g.allowed("10.96.0.1", ips(&["10.96.0.1"])).unwrap_err();
        assert!(err.contains("apiserver"), "{err}");
        let err = g
            .allowed("169.254.169.254", ips(&["169.254.169.254"]))
            .unwrap_err();
        assert!(err.contains("169.254.169.254"), "{err}");
        // Outside it, an address is no Service of the namespace.
        let err = g.allowed("10.0.0.8", ips(&["10.0.0.8"])).unwrap_err();
        assert!(err.contains("is an IP address"), "{err}");
    }
}
