//! Which pods are targets, and at which URL. Pure: pods in, targets out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::targetapp::{Scheme, TargetAppSpec};

/// Something polled: a pod's endpoint, or an absolute URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The pod's name; `None` for an absolute URL endpoint.
    pub pod: Option<String>,
    pub url: String,
}

impl Target {
    /// The name this target goes by in status, Events and firings.
    pub fn name(&self) -> &str {
        self.pod.as_deref().unwrap_or(&self.url)
    }
}

/// Whether `graphqlEndpoint` is an absolute URL (one target) rather than a path.
pub fn is_absolute(endpoint: &str) -> bool {
    endpoint.starts_with("http://") || endpoint.starts_with("https://")
}

/// Why a selected pod is not a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotTarget {
    NotReady,
    NoIp,
    Terminating,
    NoSuchPort(String),
}

/// What discovery reads of a pod, and nothing else: a namespace's pods are kept
/// in memory for as long as a TargetApp there follows them, and a `Pod` object,
/// even stripped of what discovery does not read, is several KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSummary {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub terminating: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `status.podIP`, when set and not empty.
    pub ip: Option<String>,
    /// Its IP when that is its node's (host network, or `status.hostIP` equal to
    /// it): polling it reaches the node, not a pod.
    pub node_address: Option<IpAddr>,
    /// Its containers' named ports.
    pub ports: Box<[(String, i32)]>,
}

impl PodSummary {
    /// The summary of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty());
        let parsed = ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
        let host_ip = status
            .and_then(|s| s.host_ip.as_deref())
            .and_then(|h| h.parse::<IpAddr>().ok());
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            node_address: parsed.filter(|ip| host_network || host_ip == Some(*ip)),
            ip,
            ports: spec
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| Some((p.name.clone()?, p.container_port)))
                .collect(),
        }
    }
}

/// The target a pod is, or why it is not one.
pub fn target_of(pod: &PodSummary, spec: &TargetAppSpec) -> Result<Target, NotTarget> {
    if pod.terminating {
        return Err(NotTarget::Terminating);
    }
    if !pod.ready {
        return Err(NotTarget::NotReady);
    }
    let ip = pod.ip.as_deref().ok_or(NotTarget::NoIp)?;
    let port = match &spec.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => pod
            .ports
            .iter()
            .find(|(port, _)| port == name)
            .map(|(_, number)| *number)
            .ok_or_else(|| NotTarget::NoSuchPort(name.clone()))?,
    };
    let scheme = match spec.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    let path = if spec.graphql_endpoint.starts_with('/') {
        spec.graphql_endpoint.clone()
    } else {
        format!("/{}", spec.graphql_endpoint)
    };
    Ok(Target {
        pod: Some(pod.name.clone()),
        url: format!("{scheme}://{host}:{port}{path}"),
    })
}

/// The targets among `pods` (by pod name), or the one URL target.
pub fn targets(
    spec: &TargetAppSpec,
    pods: &BTreeMap<String, Arc<PodSummary>>,
) -> BTreeMap<String, Target> {
    if is_absolute(&spec.graphql_endpoint) {
        let target = Target {
            pod: None,
            url: spec.graphql_endpoint.clone(),
        };
        return BTreeMap::from([(target.name().to_owned(), target)]);
    }
    pods.values()
        .filter_map(|pod| target_of(pod, spec).ok())
        .map(|t| (t.name().to_owned(), t))
        .collect()
}

/// A namespace's pods, as a pod watch reports them. A (re-)list replaces them
/// only once it is complete, so that a watch that restarts (an apiserver restart,
/// an expired resource version) neither loses targets for a moment nor their state.
#[derive(Debug, Default)]
pub struct Pods {
    current: BTreeMap<String, Arc<PodSummary>>,
    /// The pods of a list in progress.
    listing: Option<BTreeMap<String, Arc<PodSummary>>>,
    /// Whether a first list completed.
    listed: bool,
}

impl Pods {
    /// Takes one watch event in; whether the current pods changed.
    pub fn apply(&mut self, event: kube::runtime::watcher::Event<Pod>) -> bool {
        use kube::runtime::watcher::Event;
        let name = |pod: &Pod| pod.metadata.name.clone().unwrap_or_default();
        let summary = |pod: &Pod| Arc::new(PodSummary::of(pod));
        match event {
            Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(pod) => {
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name(&pod), summary(&pod));
                false
            }
            Event::InitDone => {
                self.current = self.listing.take().unwrap_or_default();
                self.listed = true;
                true
            }
            Event::Apply(pod) => {
                self.current.insert(name(&pod), summary(&pod));
                self.listed
            }
            Event::Delete(pod) => {
                self.current.remove(&name(&pod));
                self.listed
            }
        }
    }

    /// Whether a first list completed (until then the targets are unknown).
    pub fn listed(&self) -> bool {
        self.listed
    }

    /// The current pods, by name.
    pub fn current(&self) -> &BTreeMap<String, Arc<PodSummary>> {
        &self.current
    }
}

/// The pods `selector` selects (all of them when there is none).
pub fn selected(
    pods: &BTreeMap<String, Arc<PodSummary>>,
    selector: Option<&LabelSelector>,
) -> BTreeMap<String, Arc<PodSummary>> {
    pods.iter()
        .filter(|(_, pod)| {
            selector.is_none_or(|s| crate::tenancy::quota::selector_matches(s, &pod.labels))
        })
        .map(|(name, pod)| (name.clone(), Arc::clone(pod)))
        .collect()
}

/// A label selector in the apiserver's query syntax (`app=mina,tier in (a,b),!x`).
pub fn selector_query(selector: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = || expr.values.clone().unwrap_or_default().join(",");
        parts.push(match expr.operator.as_str() {
            "In" => format!("{} in ({})", expr.key, values()),
            "NotIn" => format!("{} notin ({})", expr.key, values()),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            other => return Err(format!("unknown label selector operator {other:?}")),
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(extra: serde_json::Value) -> TargetAppSpec {
        let mut base = json!({"selector": {"matchLabels": {"app": "mina"}}});
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    fn pod(name: &str, ready: &str, ip: Option<&str>) -> PodSummary {
        PodSummary::of(&full_pod(name, ready, ip))
    }

    fn full_pod(name: &str, ready: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "mina", "ports": [{"name": "graphql", "containerPort": 3085},
                                                                {"name": "metrics", "containerPort": 9100}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_pods_with_an_ip_are_targets() {
        let s = spec(json!({}));
        assert_eq!(
            target_of(&pod("a", "True", Some("10.0.0.5")), &s),
            Ok(Target {
                pod: Some("a".into()),
                url: "http://10.0.0.5:3085/graphql".into()
            })
        );
        assert_eq!(
            target_of(&pod("a", "False", Some("10.0.0.5")), &s),
            Err(NotTarget::NotReady)
        );
        assert_eq!(target_of(&pod("a", "True", None), &s), Err(NotTarget::NoIp));
        let mut terminating = full_pod("a", "True", Some("10.0.0.5"));
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(
            target_of(&PodSummary::of(&terminating), &s),
            Err(NotTarget::Terminating)
        );
        assert_eq!(
            target_of(&pod("a", "True", Some("")), &s),
            Err(NotTarget::NoIp),
            "an empty podIP is no IP"
        );
    }

    #[test]
    fn ports_by_number_or_name_and_https_and_ipv6() {
        let named = spec(json!({"port": "metrics", "scheme": "https", "graphqlEndpoint": "gql"}));
        assert_eq!(
            target_of(&pod("a", "True", Some("fd00::5")), &named)
                .unwrap()
                .url,
            "https://[fd00::5]:9100/gql"
        );
        let missing = spec(json!({"port": "nope"}));
        assert_eq!(
            target_of(&pod("a", "True", Some("10.0.0.5")), &missing),
            Err(NotTarget::NoSuchPort("nope".into()))
        );
        let number = spec(json!({"port": 8080}));
        assert_eq!(
            target_of(&pod("a", "True", Some("10.0.0.5")), &number)
                .unwrap()
                .url,
            "http://10.0.0.5:8080/graphql"
        );
    }

    #[test]
    fn an_absolute_endpoint_is_the_one_target() {
        let s = spec(json!({"graphqlEndpoint": "http://mina.ns.svc:3085/graphql"}));
        let pods = BTreeMap::from([("a".to_owned(), Arc::new(pod("a", "True", Some("10.0.0.5"))))]);
        let found = targets(&s, &pods);
        assert_eq!(found.len(), 1);
        let t = &found["http://mina.ns.svc:3085/graphql"];
        assert_eq!(t.pod, None);
        assert_eq!(t.name(), "http://mina.ns.svc:3085/graphql");
    }

    #[test]
    fn selectors_render_in_query_syntax() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "mina", "net": "main"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "old", "operator": "NotIn", "values": ["x"]},
                {"key": "role", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_query(&selector).unwrap(),
            "app=mina,net=main,tier in (a,b),old notin (x),role,!canary"
        );
        let bad: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "k", "operator": "Near"}]}))
                .unwrap();
        assert!(selector_query(&bad).is_err());
    }

    #[test]
    fn a_relist_replaces_the_pods_only_once_complete() {
        use kube::runtime::watcher::Event;
        let pod = |name: &str| {
            let mut pod = Pod::default();
            pod.metadata.name = Some(name.to_owned());
            pod
        };
        let names = |pods: &Pods| pods.current().keys().cloned().collect::<Vec<_>>();
        let mut pods = Pods::default();
        assert!(!pods.apply(Event::Init));
        assert!(!pods.apply(Event::InitApply(pod("a"))));
        assert!(!pods.listed(), "not listed before InitDone");
        assert!(pods.apply(Event::InitDone));
        assert!(pods.listed());
        assert!(pods.apply(Event::Apply(pod("b"))));
        assert_eq!(names(&pods), ["a", "b"]);

        // The watch restarts: until the new list is complete, the targets stay.
        assert!(!pods.apply(Event::Init));
        assert!(!pods.apply(Event::InitApply(pod("b"))));
        assert_eq!(names(&pods), ["a", "b"], "kept while listing");
        assert!(pods.apply(Event::InitDone));
        assert_eq!(names(&pods), ["b"], "then replaced: a went away meanwhile");
        assert!(pods.apply(Event::Delete(pod("b"))));
        assert!(names(&pods).is_empty());
    }

    #[test]
    fn a_selector_picks_its_pods_from_the_namespace() {
        let pod = |name: &str, app: &str| {
            let pod = PodSummary {
                name: name.to_owned(),
                labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
                ..PodSummary::default()
            };
            (name.to_owned(), Arc::new(pod))
        };
        let pods = BTreeMap::from([pod("m0", "mina"), pod("m1", "mina"), pod("x", "other")]);
        let mina: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "mina"}})).unwrap();
        let names = |selector: Option<&LabelSelector>| {
            selected(&pods, selector).into_keys().collect::<Vec<_>>()
        };
        assert_eq!(names(Some(&mina)), ["m0", "m1"]);
        assert_eq!(names(None), ["m0", "m1", "x"], "no selector: every pod");
        assert_eq!(names(Some(&LabelSelector::default())), ["m0", "m1", "x"]);
        let not_mina: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["mina"]}]}),
        )
        .unwrap();
        assert_eq!(names(Some(&not_mina)), ["x"]);
    }

    #[test]
    fn a_pod_is_kept_as_what_discovery_reads_of_it() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "mina-0", "labels": {"app": "mina"},
                         "annotations": {"big": "x".repeat(10_000)},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"containers": [{"name": "mina", "image": "mina:1", "env": [{"name": "A", "value": "b"}],
                                     "ports": [{"name": "graphql", "containerPort": 3085},
                                               {"containerPort": 9000}]},
                                    {"name": "sidecar", "ports": [{"name": "metrics", "containerPort": 9100}]}]},
            "status": {"podIP": "10.0.0.7", "hostIP": "192.168.1.4", "phase": "Running",
                       "conditions": [{"type": "PodScheduled", "status": "True"},
                                      {"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert_eq!(
            PodSummary::of(&pod),
            PodSummary {
                name: "mina-0".into(),
                labels: BTreeMap::from([("app".into(), "mina".into())]),
                terminating: false,
                ready: true,
                ip: Some("10.0.0.7".into()),
                node_address: None,
                ports: Box::new([("graphql".into(), 3085), ("metrics".into(), 9100)]),
            },
            "every container's named ports, nothing else"
        );
        let summary = PodSummary::of(&pod);
        assert_eq!(
            target_of(&summary, &spec(json!({"port": "metrics"}))).map(|t| t.url),
            Ok("http://10.0.0.7:9100/graphql".to_owned())
        );
    }

    #[test]
    fn a_pod_on_its_nodes_network_is_its_node() {
        let on = |spec: serde_json::Value, status: serde_json::Value| -> Option<IpAddr> {
            let mut value =
                serde_json::to_value(full_pod("mina-0", "True", Some("10.0.0.7"))).unwrap();
            json_patch::merge(&mut value, &json!({"spec": spec, "status": status}));
            PodSummary::of(&serde_json::from_value(value).unwrap()).node_address
        };
        let node: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(on(json!({"hostNetwork": true}), json!({})), Some(node));
        assert_eq!(on(json!({}), json!({"hostIP": "10.0.0.7"})), Some(node));
        assert_eq!(on(json!({}), json!({"hostIP": "192.168.1.4"})), None);
        assert_eq!(
            on(
                json!({}),
                json!({"hostIP": "fd00::7", "podIP": "fd00:0::7"})
            ),
            Some("fd00::7".parse().unwrap()),
            "addresses are compared, not their spellings"
        );
    }
}
