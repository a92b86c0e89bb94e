//! Outbound HTTP to user-supplied URLs, with the endpoint policy enforced at
//! connect time: every client resolves names through [`PolicyResolver`], which
//! drops forbidden addresses (DNS rebinding cannot slip past admission), and
//! follows a redirect only when its URL passes the policy too. The clients carry
//! no credentials of any kind and ignore proxy settings from the environment.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::endpoint::{EndpointCheck, EndpointPolicy, Purpose, Reach};

/// How many redirects a client follows (each checked against the policy).
const MAX_REDIRECTS: usize = 3;

/// Host names answered from a fixed table instead of DNS: tests use it to make a
/// name resolve to a forbidden address without touching the machine's resolver.
pub type DnsOverrides = Arc<HashMap<String, Vec<IpAddr>>>;

/// Outbound clients per (namespace, purpose, trusted CA), each enforcing the
/// tenant's endpoint policy.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

/// (namespace, purpose, trusted CA, the policy's text).
type ClientKey = (String, Purpose, Option<Vec<u8>>, String);

struct Inner {
    tenants: Arc<super::Tenants>,
    apiserver: Arc<[IpAddr]>,
    overrides: DnsOverrides,
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
        apiserver: Vec<IpAddr>,
        overrides: DnsOverrides,
        user_agent: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenants,
                apiserver: apiserver.into(),
                overrides,
                clients: moka::sync::Cache::builder()
                    .max_capacity(1000)
                    .time_to_idle(Duration::from_secs(600))
                    .build(),
                user_agent,
            }),
        }
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
            apiserver: &self.inner.apiserver,
        }
        .url(url)
    }

    /// A client for `namespace` and `purpose` that trusts `ca` (PEM) instead of the
    /// platform's roots when given.
    pub fn client(
        &self,
        namespace: &str,
        purpose: Purpose,
        ca: Option<&[u8]>,
    ) -> Result<reqwest::Client, String> {
        let policy = self.policy(namespace);
        let key = (
            namespace.to_owned(),
            purpose,
            ca.map(<[u8]>::to_vec),
            format!("{policy:?}"),
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
        };
        let redirect_check = resolver.clone();
        let mut builder = reqwest::Client::builder()
            .user_agent(&self.inner.user_agent)
            .no_proxy()
            .dns_resolver(resolver)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match redirect_check.check().url(attempt.url().as_str()) {
                    Ok(_) => attempt.follow(),
                    Err(why) => {
                        attempt.error(format!("redirect refused by the endpoint policy: {why}"))
                    }
                }
            }))
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(2);
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the CA bundle is not valid PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA bundle holds no certificate".to_owned());
            }
            builder = builder.tls_certs_only(certs);
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

/// Resolves names and keeps only the addresses the endpoint policy allows.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: EndpointPolicy,
    namespace: String,
    purpose: Purpose,
    apiserver: Arc<[IpAddr]>,
    overrides: DnsOverrides,
}

impl PolicyResolver {
    fn check(&self) -> EndpointCheck<'_> {
        EndpointCheck {
            policy: &self.policy,
            namespace: &self.namespace,
            purpose: self.purpose,
            apiserver: &self.apiserver,
        }
    }

    /// The allowed addresses among `found` for host `name`, or why there are none.
    fn allowed(&self, name: &str, found: Vec<IpAddr>) -> Result<Vec<IpAddr>, String> {
        let check = self.check();
        let reach = check.host(name)?;
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
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<IpAddr> = match this.overrides.get(&name) {
                Some(fixed) => fixed.clone(),
                None => tokio::net::lookup_host((name.as_str(), 0))
                    .await?
                    .map(|a| a.ip())
                    .collect(),
            };
            let allowed = this.allowed(&name, found).map_err(PolicyRefusal)?;
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(purpose: Purpose) -> PolicyResolver {
        PolicyResolver {
            policy: EndpointPolicy::default(),
            namespace: "chain".into(),
            purpose,
            apiserver: vec!["10.96.0.1".parse().unwrap()].into(),
            overrides: Arc::default(),
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
}
