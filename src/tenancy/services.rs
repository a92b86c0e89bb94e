//! A tenant's own Service names (`<service>.<ns>.svc`), resolved through the
//! Service object and its EndpointSlices, never through DNS: a tenant controls
//! both, so what they lead to is checked, not trusted. An ExternalName Service is
//! refused (it is a DNS alias to anywhere); a Service's traffic may only ever reach
//! pods of the tenant's own namespace, so a hand-written EndpointSlice that points
//! at a node, another tenant's pod or the apiserver refuses the whole Service.
//!
//! [`addresses`] is the pure decision; [`Services`] fetches what it needs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

/// The label that ties an EndpointSlice to its Service (what kube-proxy reads).
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How long one resolution is reused: a changed Service or slice is seen within it.
const TTL: Duration = Duration::from_secs(5);

/// The addresses a Service name leads to: the Service's cluster IPs, or for a
/// headless Service (or a `hostname`) its endpoints' addresses. `pods` maps the
/// namespace's pod IPs to whether the pod uses its node's network.
pub fn addresses(
    service: &Service,
    slices: &[EndpointSlice],
    pods: &BTreeMap<IpAddr, bool>,
    hostname: Option<&str>,
) -> Result<Vec<IpAddr>, String> {
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(format!(
            "Service {name} is of type ExternalName (an alias to {}); only Services that lead to pods of the namespace are polled or called",
            spec.external_name.as_deref().unwrap_or("another host")
        ));
    }
    let mut endpoints: Vec<(IpAddr, Option<&str>)> = Vec::new();
    for slice in slices {
        for endpoint in slice.endpoints.iter().flatten() {
            for address in &endpoint.addresses {
                let ip: IpAddr = address.parse().map_err(|_| {
                    format!("Service {name} has an endpoint address {address:?} that is not an IP address")
                })?;
                endpoints.push((ip, endpoint.hostname.as_deref()));
            }
        }
    }
    // Every endpoint, whichever answers: kube-proxy spreads a Service's traffic over
    // all of them.
    for (ip, _) in &endpoints {
        match pods.get(ip) {
            None => {
                return Err(format!(
                    "Service {name} leads to {ip}, which is not the address of a pod in the namespace"
                ));
            }
            Some(true) => {
                return Err(format!(
                    "Service {name} leads to {ip}, a pod on its node's network (the node's address)"
                ));
            }
            Some(false) => {}
        }
    }
    if let Some(host) = hostname {
        let found: Vec<IpAddr> = endpoints
            .iter()
            .filter(|(_, h)| *h == Some(host))
            .map(|(ip, _)| *ip)
            .collect();
        return if found.is_empty() {
            Err(format!(
                "Service {name} has no endpoint with hostname {host}"
            ))
        } else {
            Ok(found)
        };
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip)
        .filter(|ip| ip != "None" && !ip.is_empty())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let mut found = if cluster_ips.is_empty() {
        endpoints.into_iter().map(|(ip, _)| ip).collect()
    } else {
        cluster_ips
    };
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(format!("Service {name} has no address and no endpoints"));
    }
    Ok(found)
}

/// (namespace, Service, pod hostname).
type ServiceKey = (String, String, Option<String>);

/// Resolves a tenant's Service names through the apiserver, with the operator's
/// own (read-only) rights, each answer reused for a few seconds.
#[derive(Clone)]
pub struct Services {
    client: kube::Client,
    cache: moka::future::Cache<ServiceKey, Result<Arc<[IpAddr]>, String>>,
}

impl Services {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TTL)
                .build(),
        }
    }

    /// The addresses `service` (and `hostname`) of `namespace` leads to.
    pub async fn resolve(
        &self,
        namespace: &str,
        service: &str,
        hostname: Option<&str>,
    ) -> Result<Arc<[IpAddr]>, String> {
        let key = (
            namespace.to_owned(),
            service.to_owned(),
            hostname.map(str::to_owned),
        );
        self.cache
            .get_with(key, self.fetch(namespace, service, hostname))
            .await
    }

    async fn fetch(
        &self,
        namespace: &str,
        service: &str,
        hostname: Option<&str>,
    ) -> Result<Arc<[IpAddr]>, String> {
        let what = format!("Service {namespace}/{service}");
        let found = Api::<Service>::namespaced(self.client.clone(), namespace)
            .get_opt(service)
            .await
            .map_err(|e| format!("cannot read {what}: {e}"))?
            .ok_or_else(|| format!("{what} does not exist"))?;
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), namespace)
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}")))
            .await
            .map_err(|e| format!("cannot list the EndpointSlices of {what}: {e}"))?
            .items;
        let pods = if slices
            .iter()
            .any(|s| s.endpoints.as_ref().is_some_and(|e| !e.is_empty()))
        {
            pod_addresses(&self.client, namespace)
                .await
                .map_err(|e| format!("cannot list the pods of namespace {namespace}: {e}"))?
        } else {
            BTreeMap::new()
        };
        addresses(&found, &slices, &pods, hostname).map(Into::into)
    }
}

/// How often the apiserver's own addresses are read again.
const APISERVER_REFRESH: Duration = Duration::from_secs(30);

/// Keeps `apiserver` current: the addresses it started with (the cluster URL's
/// host), the `default/kubernetes` Service's cluster IPs and its endpoints (the
/// apiserver's real addresses, which a Service of a tenant could otherwise lead
/// to), read again every 30 seconds until `cancel`.
pub async fn keep_apiserver_current(
    client: kube::Client,
    apiserver: super::Apiserver,
    cancel: tokio_util::sync::CancellationToken,
) {
    let base: Vec<IpAddr> = apiserver.get().to_vec();
    let mut known = base.clone();
    tracing::info!(addresses = ?known, "the apiserver's addresses are never a target");
    loop {
        match apiserver_addresses(&client).await {
            Ok(found) => {
                let mut all: Vec<IpAddr> = base.iter().copied().chain(found).collect();
                all.sort();
                all.dedup();
                if all != known {
                    tracing::info!(addresses = ?all, "the apiserver's addresses are never a target");
                    apiserver.set(all.clone());
                    known = all;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the apiserver's Service and endpoints; keeping the addresses known");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(APISERVER_REFRESH) => {}
        }
    }
}

/// The `default/kubernetes` Service's cluster IPs and endpoint addresses.
async fn apiserver_addresses(client: &kube::Client) -> Result<Vec<IpAddr>, kube::Error> {
    let mut found = Vec::new();
    if let Some(service) = Api::<Service>::namespaced(client.clone(), "default")
        .get_opt("kubernetes")
        .await?
        && let Some(spec) = service.spec
    {
        found.extend(
            spec.cluster_ips
                .unwrap_or_default()
                .into_iter()
                .chain(spec.cluster_ip)
                .filter_map(|ip| ip.parse::<IpAddr>().ok()),
        );
    }
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=kubernetes")))
        .await?;
    for slice in slices.items {
        for endpoint in slice.endpoints.into_iter().flatten() {
            found.extend(
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok()),
            );
        }
    }
    Ok(found)
}

/// The namespace's pod IPs, each with whether the pod uses its node's network.
async fn pod_addresses(
    client: &kube::Client,
    namespace: &str,
) -> Result<BTreeMap<IpAddr, bool>, kube::Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?;
    let mut out = BTreeMap::new();
    for pod in pods.items {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let status = pod.status.unwrap_or_default();
        let ips = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .chain(status.pod_ip);
        for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            // A pod IP that is also a host-network pod's is the node's address.
            let entry = out.entry(ip).or_insert(false);
            *entry |= host_network || status.host_ip.as_deref() == Some(&ip.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(type_: &str, cluster_ip: Option<&str>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("mina".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: cluster_ip.map(Into::into),
                external_name: (type_ == "ExternalName").then(|| "kubernetes.default.svc".into()),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn slice(endpoints: &[(&str, Option<&str>)]) -> EndpointSlice {
        EndpointSlice {
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, host)| Endpoint {
                        addresses: vec![(*ip).to_owned()],
                        hostname: host.map(Into::into),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ..EndpointSlice::default()
        }
    }

    fn pods(list: &[(&str, bool)]) -> BTreeMap<IpAddr, bool> {
        list.iter()
            .map(|(ip, host)| (ip.parse().unwrap(), *host))
            .collect()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn external_name_services_are_refused() {
        let err = addresses(&service("ExternalName", None), &[], &pods(&[]), None).unwrap_err();
        assert!(err.contains("ExternalName"), "{err}");
    }

    #[test]
    fn a_cluster_ip_leads_to_pods_of_the_namespace_only() {
        let svc = service("ClusterIP", Some("10.96.5.5"));
        let ours = pods(&[("10.1.0.7", false), ("10.1.0.8", false)]);
        assert_eq!(
            addresses(&svc, &[slice(&[("10.1.0.7", None)])], &ours, None),
            Ok(ips(&["10.96.5.5"]))
        );
        // A hand-written slice pointing at the apiserver, a node or another tenant.
        for stranger in ["10.0.0.1", "192.168.1.10", "10.2.0.9"] {
            let slices = [slice(&[("10.1.0.7", None)]), slice(&[(stranger, None)])];
            let err = addresses(&svc, &slices, &ours, None).unwrap_err();
            assert!(
                err.contains("not the address of a pod in the namespace"),
                "{err}"
            );
        }
        let on_node = pods(&[("10.1.0.7", true)]);
        let err = addresses(&svc, &[slice(&[("10.1.0.7", None)])], &on_node, None).unwrap_err();
        assert!(err.contains("node's network"), "{err}");
    }

    #[test]
    fn headless_services_lead_to_their_endpoints() {
        let svc = service("ClusterIP", Some("None"));
        let ours = pods(&[("10.1.0.7", false), ("10.1.0.8", false)]);
        let slices = [slice(&[
            ("10.1.0.8", Some("mina-1")),
            ("10.1.0.7", Some("mina-0")),
        ])];
        assert_eq!(
            addresses(&svc, &slices, &ours, None),
            Ok(ips(&["10.1.0.7", "10.1.0.8"]))
        );
        assert_eq!(
            addresses(&svc, &slices, &ours, Some("mina-1")),
            Ok(ips(&["10.1.0.8"]))
        );
        assert!(addresses(&svc, &slices, &ours, Some("mina-9")).is_err());
        assert!(addresses(&svc, &[], &ours, None).is_err());
        let bad = [slice(&[("not-an-ip", None)])];
        assert!(addresses(&svc, &bad, &ours, None).is_err());
    }
}
