//! The endpoint policy (docs/tenancy.md): where a tenant's user-supplied URLs (absolute
//! GraphQL endpoints, webhook actions) may point. It is checked on the URL at
//! admission and again on every resolved address at connect time, so a name that
//! resolves to a forbidden address is refused whatever admission saw.
//!
//! Pure logic: no I/O here (the connect-time resolver lives in `egress`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::address::{canonical, embedded, is_public, special_purpose};

/// What a URL is for: the two kinds of user-supplied URL have different defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// An absolute `graphqlEndpoint`: by default only Services of the same namespace.
    Graphql,
    /// A `webhook` action URL: by default any public host.
    Webhook,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Graphql => "graphql",
            Self::Webhook => "webhook",
        }
    }
}

/// A tenant's endpoint policy. The default: GraphQL URLs to Services
/// of the same namespace, webhook URLs to any public host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// More hosts absolute GraphQL URLs may name: exact names or `*.suffix`.
    pub allowed_hosts: Vec<String>,
    /// Address ranges a URL may reach even where they would be refused otherwise
    /// (private ranges for public hosts, and even loopback or link-local: an explicit
    /// decision by a cluster admin, meant for development clusters).
    pub allowed_cidrs: Vec<IpNet>,
    /// Absolute GraphQL URLs may name any public host.
    pub allow_external: bool,
    /// When set, webhook URLs may only name these hosts (exact or `*.suffix`); set
    /// but empty, no host at all.
    pub webhook_allowed_hosts: Option<Vec<String>>,
}

/// What a checked host may resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A Service of the tenant's namespace or a host the policy names: cluster-internal
    /// (private) addresses are fine.
    Internal,
    /// Any other host: only public addresses (and the policy's allowed ranges).
    Public,
}

/// The apiserver's names inside a cluster: never a target, whatever they resolve to.
const APISERVER_NAMES: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// One check: a tenant's policy, for one namespace and purpose, and the addresses
/// of the apiserver (never allowed, not even by `allowedCIDRs`).
#[derive(Debug, Clone, Copy)]
pub struct EndpointCheck<'a> {
    pub policy: &'a EndpointPolicy,
    pub namespace: &'a str,
    pub purpose: Purpose,
    pub apiserver: &'a [IpAddr],
}

impl EndpointCheck<'_> {
    /// Checks a URL as written: scheme, credentials, host. An IP address host is
    /// checked as an address; a name is checked against the policy and gives the
    /// [`Reach`] its resolved addresses must then pass.
    pub fn url(&self, raw: &str) -> Result<Reach, String> {
        let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {} is not allowed (http or https only)",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("credentials in the URL are not allowed".to_owned());
        }
        match url.host() {
            None => Err("the URL has no host".to_owned()),
            Some(url::Host::Ipv4(ip)) => self.ip_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.ip_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.host(name),
        }
    }

    /// An address written in the URL. Allowed only where the policy allows it: a
    /// GraphQL URL must otherwise name a Service, and where the policy lists the
    /// hosts a URL may name, an address is not one of them (only `allowedCIDRs`
    /// open it).
    pub fn ip_literal(&self, ip: IpAddr) -> Result<Reach, String> {
        // Never allowed (the apiserver, special-purpose ranges) before anything else.
        self.address(ip, Reach::Internal)?;
        if self.allowed_by_cidr(ip) {
            return Ok(Reach::Public);
        }
        let ns = self.namespace;
        match self.purpose {
            Purpose::Graphql if !self.policy.allow_external => Err(format!(
                "{ip} is an IP address; absolute URLs must name a Service of namespace {ns}"
            )),
            Purpose::Graphql if !self.policy.allowed_hosts.is_empty() => Err(format!(
                "{ip} is an IP address; the tenant policy lists the hosts GraphQL URLs may name, and allows addresses only in its allowedCIDRs"
            )),
            Purpose::Webhook if self.policy.webhook_allowed_hosts.is_some() => Err(format!(
                "{ip} is an IP address; the tenant policy lists the hosts webhooks may call, and allows addresses only in its allowedCIDRs"
            )),
            _ => self.address(ip, Reach::Public).map(|()| Reach::Public),
        }
    }

    /// Checks a host name against the policy.
    pub fn host(&self, name: &str) -> Result<Reach, String> {
        let host = name.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            return Err("loopback hosts are not allowed".to_owned());
        }
        if APISERVER_NAMES.contains(&host.as_str()) {
            return Err(format!("{host} is the Kubernetes apiserver"));
        }
        let ns = self.namespace;
        let own_service = own_service(&host, ns).is_some();
        let in_cluster = host.ends_with(".svc") || host.ends_with(".svc.cluster.local");
        match self.purpose {
            Purpose::Graphql => {
                if own_service || matches_any(&self.policy.allowed_hosts, &host) {
                    Ok(Reach::Internal)
                } else if self.policy.allow_external && !in_cluster {
                    Ok(Reach::Public)
                } else {
                    Err(format!(
                        "{host} is not a Service of namespace {ns} (<service>.{ns}.svc[.cluster.local]){}",
                        if self.policy.allowed_hosts.is_empty() {
                            ""
                        } else {
                            " nor a host the tenant policy allows"
                        }
                    ))
                }
            }
            Purpose::Webhook => match &self.policy.webhook_allowed_hosts {
                Some(listed) if matches_any(listed, &host) => Ok(Reach::Internal),
                Some(listed) if listed.is_empty() => Err(format!(
                    "{host}: the tenant policy allows webhooks to no host"
                )),
                Some(_) => Err(format!(
                    "{host} is not one of the webhook hosts the tenant policy allows"
                )),
                None if own_service => Ok(Reach::Internal),
                None if in_cluster => Err(format!(
                    "{host} is a Service of another namespace; webhooks may call Services of namespace {ns} only"
                )),
                None => Ok(Reach::Public),
            },
        }
    }

    /// Checks one address a host resolved to (or was written as).
    pub fn address(&self, ip: IpAddr, reach: Reach) -> Result<(), String> {
        let judged = canonical(ip);
        let shown = if judged == ip {
            ip.to_string()
        } else {
            format!("{ip} (which is {judged})")
        };
        if self.apiserver.iter().any(|a| canonical(*a) == judged) {
            return Err(format!("{shown} is an address of the Kubernetes apiserver"));
        }
        if self.allowed_by_cidr(ip) {
            return Ok(());
        }
        if let Some(why) = always_forbidden(ip) {
            return Err(why);
        }
        if reach == Reach::Public && !is_public(ip) {
            return Err(format!(
                "{shown} is a private address; this host may only reach public addresses"
            ));
        }
        Ok(())
    }

    /// Whether the policy's `allowedCIDRs` name `ip` (or the IPv4 address it spells).
    pub fn allowed_by_cidr(&self, ip: IpAddr) -> bool {
        let judged = canonical(ip);
        self.policy
            .allowed_cidrs
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&judged))
    }
}

/// A name under a namespace's Service domain: `<service>.<ns>.svc[.cluster.local]`,
/// or `<hostname>.<service>.<ns>.svc[...]` for one pod of a headless Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceName<'a> {
    pub service: &'a str,
    pub hostname: Option<&'a str>,
}

/// The Service (and pod hostname) `host` names when it is under the Service domain
/// of namespace `namespace` (lowercase, without a final dot).
pub fn own_service<'h>(host: &'h str, namespace: &str) -> Option<ServiceName<'h>> {
    let host = host.strip_suffix(".cluster.local").unwrap_or(host);
    let rest = host
        .strip_suffix(".svc")?
        .strip_suffix(namespace)?
        .strip_suffix('.')?;
    let (hostname, service) = match rest.split_once('.') {
        Some((hostname, service)) => (Some(hostname), service),
        None => (None, rest),
    };
    let label = |s: &str| !s.is_empty() && !s.contains('.');
    (label(service) && hostname.is_none_or(label)).then_some(ServiceName { service, hostname })
}

/// `*.example.com` matches names under example.com; other patterns match exactly.
fn matches_any(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => host == pattern,
        }
    })
}

/// Why an address is never a target unless a cluster admin's `allowedCIDRs`
/// names it: loopback, link-local (cloud metadata lives there), unspecified,
/// multicast and the other special-purpose ranges, also when an IPv6 address
/// carries such an IPv4 address (NAT64, 6to4, Teredo, mapped, compatible).
pub fn always_forbidden(ip: IpAddr) -> Option<String> {
    if let IpAddr::V6(v6) = ip {
        for (how, v4) in embedded(v6) {
            if let Some(range) = special_purpose(IpAddr::V4(v4)) {
                return Some(format!(
                    "{ip} carries {v4} ({}), a {range} address, which is never allowed",
                    how.as_str()
                ));
            }
        }
    }
    special_purpose(ip).map(|range| format!("{ip} is a {range} address, which is never allowed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const APISERVER: &[IpAddr] = &[IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 1))];

    fn check<'a>(policy: &'a EndpointPolicy, purpose: Purpose) -> EndpointCheck<'a> {
        EndpointCheck {
            policy,
            namespace: "chain",
            purpose,
            apiserver: APISERVER,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn graphql_urls_follow_the_default_policy() {
        let policy = EndpointPolicy::default();
        let c = check(&policy, Purpose::Graphql);
        for ok in [
            "http://mina.chain.svc:3085/graphql",
            "https://mina.chain.svc.cluster.local/graphql",
        ] {
            assert_eq!(c.url(ok), Ok(Reach::Internal), "{ok}");
        }
        for (bad, needle) in [
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://127.0.0.1:3085/graphql", "loopback"),
            ("http://[::1]/graphql", "loopback"),
            ("http://[::ffff:127.0.0.1]/graphql", "loopback"),
            ("http://[fe80::1]/graphql", "link-local"),
            ("http://0.0.0.0/graphql", "unspecified"),
            ("http://localhost:3085/graphql", "loopback"),
            ("http://10.0.0.5:3085/graphql", "IP address"),
            (
                "http://mina.other.svc:3085/graphql",
                "not a Service of namespace chain",
            ),
            ("https://example.com/graphql", "not a Service"),
            ("http://user:pw@mina.chain.svc/graphql", "credentials"),
            ("file:///etc/passwd", "scheme file"),
            ("ftp://mina.chain.svc/x", "scheme ftp"),
            (
                "https://kubernetes.default.svc/api",
                "is the Kubernetes apiserver",
            ),
        ] {
            let err = c.url(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn webhook_urls_reach_public_hosts_and_own_services_only() {
        let policy = EndpointPolicy::default();
        let c = check(&policy, Purpose::Webhook);
        assert_eq!(c.url("https://hooks.example.com/x"), Ok(Reach::Public));
        assert_eq!(c.url("http://alerts.chain.svc:8080/x"), Ok(Reach::Internal));
        assert_eq!(c.url("https://93.184.216.34/x"), Ok(Reach::Public));
        for (bad, needle) in [
            ("http://169.254.169.254/latest", "link-local"),
            ("http://127.0.0.1:9000/", "loopback"),
            ("http://10.96.0.1/", "apiserver"),
            ("http://10.1.2.3/", "private address"),
            ("http://hook.other.svc/", "another namespace"),
            ("https://kubernetes.default/", "apiserver"),
        ] {
            let err = c.url(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn resolved_addresses_are_checked_by_reach() {
        let policy = EndpointPolicy::default();
        let c = check(&policy, Purpose::Webhook);
        assert_eq!(c.address(ip("93.184.216.34"), Reach::Public), Ok(()));
        assert_eq!(c.address(ip("10.1.2.3"), Reach::Internal), Ok(()));
        for (addr, reach, needle) in [
            ("10.1.2.3", Reach::Public, "private"),
            ("100.64.0.9", Reach::Public, "private"),
            ("fd00::1", Reach::Public, "private"),
            ("169.254.169.254", Reach::Internal, "link-local"),
            ("127.0.0.1", Reach::Internal, "loopback"),
            ("::ffff:169.254.169.254", Reach::Internal, "link-local"),
            ("10.96.0.1", Reach::Internal, "apiserver"),
        ] {
            let err = c.address(ip(addr), reach).unwrap_err();
            assert!(err.contains(needle), "{addr}: {err}");
        }
    }

    #[test]
    fn a_tenant_policy_widens_and_narrows() {
        let policy = EndpointPolicy {
            allowed_hosts: vec!["*.monitoring.svc".into(), "node.example.org".into()],
            allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            allow_external: false,
            webhook_allowed_hosts: Some(vec!["*.hooks.example.com".into()]),
        };
        let g = check(&policy, Purpose::Graphql);
        assert_eq!(g.url("http://prom.monitoring.svc/x"), Ok(Reach::Internal));
        assert_eq!(g.url("http://node.example.org/x"), Ok(Reach::Internal));
        assert!(g.url("http://monitoring.svc/x").is_err());
        assert!(g.url("https://example.com/").is_err());
        // An allowed range opens even loopback, but never the apiserver.
        assert_eq!(g.url("http://127.0.0.5:3085/graphql"), Ok(Reach::Public));
        assert_eq!(g.address(ip("127.0.0.5"), Reach::Public), Ok(()));
        assert!(g.address(ip("10.96.0.1"), Reach::Internal).is_err());
        let w = check(&policy, Purpose::Webhook);
        assert_eq!(w.url("https://a.hooks.example.com/"), Ok(Reach::Internal));
        let err = w.url("https://example.com/").unwrap_err();
        assert!(err.contains("not one of the webhook hosts"), "{err}");
        let external = EndpointPolicy {
            allow_external: true,
            ..EndpointPolicy::default()
        };
        let g = check(&external, Purpose::Graphql);
        assert_eq!(g.url("https://rpc.example.org/graphql"), Ok(Reach::Public));
        assert!(g.url("https://mina.other.svc/graphql").is_err());
    }

    #[test]
    fn ipv6_forms_of_forbidden_ipv4_addresses_are_refused_everywhere() {
        let open = EndpointPolicy {
            allow_external: true,
            ..EndpointPolicy::default()
        };
        for purpose in [Purpose::Graphql, Purpose::Webhook] {
            let c = check(&open, purpose);
            for (url, needle) in [
                ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254 (NAT64)"),
                ("http://[64:ff9b:1::7f00:1]/", "127.0.0.1 (local-use NAT64)"),
                ("http://[::a9fe:a9fe]/", "169.254.169.254 (IPv4-compatible)"),
                ("http://[::ffff:a9fe:a9fe]/", "link-local"),
                ("http://[2002:a9fe:a9fe::1]/", "169.254.169.254 (6to4)"),
                ("http://[2002:7f00:1::]/", "127.0.0.1 (6to4)"),
                (
                    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
                    "127.0.0.1 (Teredo)",
                ),
                ("http://[64:ff9b::a60:1]/", "apiserver"),
            ] {
                let err = c.url(url).unwrap_err();
                assert!(err.contains(needle), "{purpose:?} {url}: {err}");
                let ip: IpAddr = url
                    .trim_start_matches("http://[")
                    .trim_end_matches("]/")
                    .parse()
                    .unwrap();
                // The same verdict at connect time, for a name that resolves there.
                assert!(c.address(ip, Reach::Internal).is_err(), "{url}");
            }
            // A NAT64 form of a private address is private.
            let err = c.url("http://[64:ff9b::a01:203]/").unwrap_err();
            assert!(err.contains("private"), "{err}");
        }
    }

    #[test]
    fn special_purpose_ranges_are_refused_unless_allowed() {
        let policy = EndpointPolicy::default();
        let c = check(&policy, Purpose::Webhook);
        for (addr, needle) in [
            ("224.0.0.251", "multicast"),
            ("ff02::1", "multicast"),
            ("fec0::1", "site-local"),
            ("192.0.2.10", "documentation"),
            ("2001:db8::10", "documentation"),
            ("198.18.0.10", "benchmarking"),
        ] {
            // Even as the resolved address of an internal name.
            let err = c.address(ip(addr), Reach::Internal).unwrap_err();
            assert!(err.contains(needle), "{addr}: {err}");
        }
        let lab = EndpointPolicy {
            allowed_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            ..EndpointPolicy::default()
        };
        let c = check(&lab, Purpose::Webhook);
        assert_eq!(c.url("http://192.0.2.10/hook"), Ok(Reach::Public));
        assert_eq!(c.address(ip("::ffff:192.0.2.10"), Reach::Public), Ok(()));
    }

    #[test]
    fn an_allow_list_of_hosts_refuses_addresses_outside_the_allowed_ranges() {
        let listed = EndpointPolicy {
            allowed_cidrs: vec!["203.0.113.0/24".parse().unwrap()],
            webhook_allowed_hosts: Some(vec!["hooks.example.com".into()]),
            allowed_hosts: vec!["rpc.example.org".into()],
            allow_external: true,
        };
        let w = check(&listed, Purpose::Webhook);
        let err = w.url("https://93.184.216.34/x").unwrap_err();
        assert!(err.contains("lists the hosts webhooks may call"), "{err}");
        assert!(w.url("https://[2606:4700::1111]/x").is_err());
        assert_eq!(w.url("https://203.0.113.9/x"), Ok(Reach::Public));
        let g = check(&listed, Purpose::Graphql);
        let err = g.url("https://93.184.216.34/graphql").unwrap_err();
        assert!(
            err.contains("lists the hosts GraphQL URLs may name"),
            "{err}"
        );
        assert_eq!(g.url("https://203.0.113.9/graphql"), Ok(Reach::Public));
        // Without a list, an external GraphQL URL may be a public address.
        let external = EndpointPolicy {
            allow_external: true,
            ..EndpointPolicy::default()
        };
        let g = check(&external, Purpose::Graphql);
        assert_eq!(g.url("https://93.184.216.34/graphql"), Ok(Reach::Public));
    }

    #[test]
    fn an_empty_webhook_list_allows_no_host() {
        let none = EndpointPolicy {
            webhook_allowed_hosts: Some(Vec::new()),
            ..EndpointPolicy::default()
        };
        let w = check(&none, Purpose::Webhook);
        for url in [
            "https://hooks.example.com/x",
            "http://alerts.chain.svc/x",
            "https://93.184.216.34/x",
        ] {
            assert!(w.url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn own_services_are_recognised_by_their_name_only() {
        let service = |service, hostname| Some(ServiceName { service, hostname });
        assert_eq!(
            own_service("mina.chain.svc", "chain"),
            service("mina", None)
        );
        assert_eq!(
            own_service("mina.chain.svc.cluster.local", "chain"),
            service("mina", None)
        );
        assert_eq!(
            own_service("mina-0.mina.chain.svc", "chain"),
            service("mina", Some("mina-0"))
        );
        assert_eq!(own_service("mina.otherchain.svc", "chain"), None);
        assert_eq!(own_service("a.b.c.chain.svc", "chain"), None);
        assert_eq!(own_service(".chain.svc", "chain"), None);
        assert_eq!(own_service("chain.svc", "chain"), None);
    }
}
