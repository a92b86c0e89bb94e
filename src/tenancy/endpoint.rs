//! The endpoint policy (DESIGN §3): where a tenant's user-supplied URLs (absolute
//! GraphQL endpoints, webhook actions) may point. It is checked on the URL at
//! admission and again on every resolved address at connect time, so a name that
//! resolves to a forbidden address is refused whatever admission saw.
//!
//! Pure logic: no I/O here (the connect-time resolver lives in `egress`).

use std::net::IpAddr;

use ipnet::IpNet;

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

/// A tenant's endpoint policy. The default is DESIGN §3's: GraphQL URLs to Services
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
    /// When not empty, webhook URLs may only name these hosts (exact or `*.suffix`).
    pub webhook_allowed_hosts: Vec<String>,
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

    /// An address written in the URL: allowed only where the policy allows it (for
    /// GraphQL, absolute URLs must otherwise name a Service).
    fn ip_literal(&self, ip: IpAddr) -> Result<Reach, String> {
        if self.allowed_by_cidr(ip) {
            self.address(ip, Reach::Public)?;
            return Ok(Reach::Public);
        }
        if let Some(why) = always_forbidden(ip) {
            return Err(why);
        }
        match self.purpose {
            Purpose::Graphql if !self.policy.allow_external => Err(format!(
                "{ip} is an IP address; absolute URLs must name a Service of namespace {}",
                self.namespace
            )),
            _ => {
                self.address(ip, Reach::Public)?;
                Ok(Reach::Public)
            }
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
        let own_service = [format!(".{ns}.svc"), format!(".{ns}.svc.cluster.local")]
            .iter()
            .any(|suffix| host.ends_with(suffix.as_str()));
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
                            String::new()
                        } else {
                            format!(
                                " nor a host the tenant policy allows ({})",
                                self.policy.allowed_hosts.join(", ")
                            )
                        }
                    ))
                }
            }
            Purpose::Webhook => {
                let listed = &self.policy.webhook_allowed_hosts;
                if !listed.is_empty() {
                    return if matches_any(listed, &host) {
                        Ok(Reach::Internal)
                    } else {
                        Err(format!(
                            "{host} is not one of the webhook hosts the tenant policy allows ({})",
                            listed.join(", ")
                        ))
                    };
                }
                if own_service {
                    Ok(Reach::Internal)
                } else if in_cluster {
                    Err(format!(
                        "{host} is a Service of another namespace; webhooks may call Services of namespace {ns} only"
                    ))
                } else {
                    Ok(Reach::Public)
                }
            }
        }
    }

    /// Checks one address a host resolved to (or was written as).
    pub fn address(&self, ip: IpAddr, reach: Reach) -> Result<(), String> {
        let ip = canonical(ip);
        if self.apiserver.iter().any(|a| canonical(*a) == ip) {
            return Err(format!("{ip} is an address of the Kubernetes apiserver"));
        }
        if self.allowed_by_cidr(ip) {
            return Ok(());
        }
        if let Some(why) = always_forbidden(ip) {
            return Err(why);
        }
        if reach == Reach::Public && !is_public(ip) {
            return Err(format!(
                "{ip} is a private address; this host may only reach public addresses"
            ));
        }
        Ok(())
    }

    fn allowed_by_cidr(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.policy
            .allowed_cidrs
            .iter()
            .any(|net| net.contains(&ip))
    }
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

/// IPv4-mapped IPv6 addresses are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why an address is never a target unless a cluster admin's `allowedCIDRs`
/// names it: loopback, link-local (cloud metadata lives there), unspecified.
pub fn always_forbidden(ip: IpAddr) -> Option<String> {
    let ip = canonical(ip);
    let why = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_link_local() => "link-local (cloud metadata lives here)",
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => "unspecified",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if v6.is_unspecified() => "unspecified",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => "link-local",
        _ => return None,
    };
    Some(format!("{ip} is a {why} address, which is never allowed"))
}

/// Whether an address is reachable on the public internet (not private, shared,
/// unique-local or reserved).
fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
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
            webhook_allowed_hosts: vec!["*.hooks.example.com".into()],
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
}
