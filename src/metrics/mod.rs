//! Prometheus metrics. Names are a contract (alerts and dashboards use them);
//! labels stay bounded: namespace, targetapp, action, result, reason — never pod
//! IPs, URLs or error text.

mod targetapps;

pub use targetapps::{Poll, TargetApps};

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric KCO exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Each TargetApp's polls (by outcome: `result` success|failure, `reason` the
    /// failure kind, "" on success), their duration and lateness, when the latest
    /// was sent, and its targets up and down.
    pub targetapps: TargetApps,
    /// Events published, by reason and type.
    pub events: IntCounterVec,
    pub actions: IntCounterVec,
    pub action_duration: HistogramVec,
    /// Internal errors by kind (apiserver writes, watches, ...).
    pub errors: IntCounterVec,
    /// Trigger firings by rule.
    pub firings: IntCounterVec,
    /// 1 while this replica leads.
    pub leader: IntGauge,
    /// Times this replica became leader.
    pub leader_transitions: IntCounter,
    /// Status writes put off to the next tick: every write permit was taken.
    pub status_writes_deferred: IntCounter,
    /// Live shard members, as this replica sees them.
    pub shard_members: IntGauge,
    /// Namespaces (with TargetApps) this replica polls.
    pub shard_namespaces: IntGauge,
    /// TargetApps taken over from or handed to other replicas, by direction.
    pub shard_handoffs: IntCounterVec,
    /// Admission reviews by hook (validate, mutate) and result (allowed, denied, error).
    pub webhook_requests: IntCounterVec,
    pub webhook_duration: HistogramVec,
    /// When the served webhook certificate expires (Unix seconds; 0 before one is loaded).
    pub webhook_cert_expiry: IntGauge,
    /// Polls delayed and actions skipped by a tenant's budget, by namespace and kind.
    pub throttled: IntCounterVec,
    /// Time polls waited for their tenant's budget, by namespace.
    pub throttle_wait: CounterVec,
    /// What TargetApps export of their targets' answers (`spec.metrics`).
    pub target_series: crate::target_metrics::Store,
    /// The allocator's live and resident bytes (jemalloc), read at each scrape.
    #[cfg(feature = "jemalloc")]
    heap_allocated: IntGauge,
    #[cfg(feature = "jemalloc")]
    heap_resident: IntGauge,
}

/// The kinds of internal error, each a value of `operator_kco_errors_total{kind}`.
pub const ERROR_KINDS: [&str; 9] = [
    "fence",
    "webhook_certificate",
    "status_write",
    "event_publish",
    "event_dropped",
    "pod_watch",
    "targetapp_watch",
    "leader_election",
    "shard_membership",
];

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let latency = targetapps::BOUNDS.to_vec();
        let targetapps = TargetApps::default();
        registry.register(Box::new(targetapps.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        // Which build runs, for dashboards and for spotting a mixed fleet mid-rollout.
        let build = IntGaugeVec::new(
            Opts::new(
                "operator_kco_build_info",
                "Always 1; its labels name the running build.",
            ),
            &["version", "revision", "build_date"],
        )?;
        build
            .with_label_values(&[
                crate::version::VERSION,
                crate::version::REVISION,
                crate::version::BUILD_DATE,
            ])
            .set(1);
        registry.register(Box::new(build))?;
        let errors = counter(
            "operator_kco_errors_total",
            "Internal errors, by kind.",
            &["kind"],
        )?;
        // Known kinds start at zero, so that rate() and alerts see them before the first error.
        for kind in ERROR_KINDS {
            errors.with_label_values(&[kind]).inc_by(0);
        }
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let leader_transitions = IntCounter::new(
            "operator_kco_leader_transitions_total",
            "Times this replica became the leader.",
        )?;
        registry.register(Box::new(leader_transitions.clone()))?;
        let status_writes_deferred = IntCounter::new(
            "operator_kco_status_writes_deferred_total",
            "TargetApp status writes put off (tried again within a second) because this replica had the most status writes in flight already.",
        )?;
        registry.register(Box::new(status_writes_deferred.clone()))?;
        let shard_handoffs = counter(
            "operator_kco_shard_handoffs_total",
            "TargetApps taken over from (acquired) or handed to (released) other replicas.",
            &["direction"],
        )?;
        for direction in ["acquired", "released"] {
            shard_handoffs.with_label_values(&[direction]).inc_by(0);
        }
        let webhook_requests = counter(
            "operator_kco_webhook_requests_total",
            "Admission reviews answered, by hook and result.",
            &["hook", "result"],
        )?;
        for hook in ["validate", "mutate", "validate_quota"] {
            for result in ["allowed", "denied", "error"] {
                webhook_requests
                    .with_label_values(&[hook, result])
                    .inc_by(0);
            }
        }
        let throttle_wait = CounterVec::new(
            Opts::new(
                "operator_kco_tenant_throttle_wait_seconds_total",
                "Time polls waited for their tenant's poll budget.",
            ),
            &["namespace"],
        )?;
        registry.register(Box::new(throttle_wait.clone()))?;
        let target_series = crate::target_metrics::Store::default();
        registry.register(Box::new(target_series.clone()))?;
        Ok(Self {
            target_series,
            #[cfg(feature = "jemalloc")]
            heap_allocated: gauge(
                "operator_kco_heap_allocated_bytes",
                "Bytes allocated and not yet freed (jemalloc stats.allocated): the live heap.",
            )?,
            #[cfg(feature = "jemalloc")]
            heap_resident: gauge(
                "operator_kco_heap_resident_bytes",
                "Bytes of the allocator's pages resident in memory (jemalloc stats.resident).",
            )?,
            throttle_wait,
            throttled: counter(
                "operator_kco_tenant_throttled_total",
                "Polls delayed (kind=poll), actions skipped (kind=action), Events dropped (kind=event), polls stopped for their bytes in flight (kind=response_bytes) and targets whose series were not exported (kind=metric_series) by a tenant's budget.",
                &["namespace", "kind"],
            )?,
            webhook_requests,
            webhook_duration: histogram(
                "operator_kco_webhook_duration_seconds",
                "Time to answer one admission review.",
                &["hook"],
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
                ],
            )?,
            webhook_cert_expiry: gauge(
                "operator_kco_webhook_certificate_expiry_timestamp_seconds",
                "When the served webhook certificate expires (Unix seconds).",
            )?,
            leader: gauge(
                "operator_kco_leader",
                "1 while this replica holds the leader Lease.",
            )?,
            leader_transitions,
            status_writes_deferred,
            shard_members: gauge(
                "operator_kco_shard_members",
                "Live shard members as this replica sees them.",
            )?,
            shard_namespaces: gauge(
                "operator_kco_shard_owned_namespaces",
                "Namespaces with TargetApps that this replica polls.",
            )?,
            shard_handoffs,
            targetapps,
            events: counter(
                "operator_kco_events_generated_total",
                "Kubernetes Events published (repeats included), by reason and type.",
                &["namespace", "reason", "type"],
            )?,
            actions: counter(
                "operator_kco_actions_executed_total",
                "Actions run, by action and result.",
                &["namespace", "targetapp", "action", "result"],
            )?,
            action_duration: histogram(
                "operator_kco_action_duration_seconds",
                "Duration of one action.",
                &["namespace", "targetapp", "action"],
                latency,
            )?,
            errors,
            firings: counter(
                "operator_kco_trigger_firings_total",
                "Trigger firings, by rule.",
                &["namespace", "targetapp", "rule"],
            )?,
            registry,
        })
    }

    /// Removes the series of a TargetApp that is no longer monitored here.
    pub fn forget_targetapp(&self, namespace: &str, name: &str) {
        self.target_series.forget_app(namespace, name);
        let matches = |labels: &std::collections::HashMap<&str, &str>| {
            labels.get("namespace") == Some(&namespace) && labels.get("targetapp") == Some(&name)
        };
        self.targetapps.forget(namespace, name);
        // Series with further labels: remove every one that names this TargetApp.
        // Only these families are read: the whole registry holds every tenant's
        // exported series too, which a hand-off of many TargetApps would render
        // once for each.
        use prometheus::core::Collector;
        let families: [&dyn Collector; 3] = [&self.actions, &self.action_duration, &self.firings];
        for family in families.iter().flat_map(|c| c.collect()) {
            for metric in family.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = metric
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if !matches(&labels) {
                    continue;
                }
                let values = |names: &[&str]| {
                    names
                        .iter()
                        .map(|n| labels.get(n).copied().unwrap_or(""))
                        .collect::<Vec<_>>()
                };
                match family.name() {
                    "operator_kco_actions_executed_total" => {
                        let _ = self.actions.remove_label_values(&values(&[
                            "namespace",
                            "targetapp",
                            "action",
                            "result",
                        ]));
                    }
                    "operator_kco_action_duration_seconds" => {
                        let _ = self.action_duration.remove_label_values(&values(&[
                            "namespace",
                            "targetapp",
                            "action",
                        ]));
                    }
                    "operator_kco_trigger_firings_total" => {
                        let _ = self.firings.remove_label_values(&values(&[
                            "namespace",
                            "targetapp",
                            "rule",
                        ]));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The name of every metric family KCO exports (also those with no series yet).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 17] = [
            &self.targetapps,
            &self.events,
            &self.actions,
            &self.action_duration,
            &self.errors,
            &self.firings,
            &self.leader,
            &self.leader_transitions,
            &self.status_writes_deferred,
            &self.shard_members,
            &self.shard_namespaces,
            &self.shard_handoffs,
            &self.webhook_requests,
            &self.webhook_duration,
            &self.webhook_cert_expiry,
            &self.throttled,
            &self.throttle_wait,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect();
        // And what always has a series: the build info, the process metrics.
        for family in self.registry.gather() {
            if !names.iter().any(|n| n == family.name()) {
                names.push(family.name().to_owned());
            }
        }
        names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        #[cfg(feature = "jemalloc")]
        self.refresh_heap();
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// Reads jemalloc's statistics (a live heap that grows while RSS does is a
    /// leak; RSS growing over a flat heap is the allocator keeping pages). In the
    /// `kco` binary jemalloc is the allocator; elsewhere it reads near zero.
    #[cfg(feature = "jemalloc")]
    fn refresh_heap(&self) {
        use tikv_jemalloc_ctl::{epoch, stats};
        // The statistics are a snapshot taken when the epoch advances.
        if epoch::advance().is_err() {
            return;
        }
        if let Ok(bytes) = stats::allocated::read() {
            self.heap_allocated
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Ok(bytes) = stats::resident::read() {
            self.heap_resident
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }
}

/// One label of a series that KCO renders itself.
pub(crate) fn label_pair(name: &str, value: &str) -> prometheus::proto::LabelPair {
    let mut pair = prometheus::proto::LabelPair::default();
    pair.set_name(name.to_owned());
    pair.set_value(value.to_owned());
    pair
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_names_are_exported() {
        let m = Metrics::new().unwrap();
        m.targetapps.polled(
            "ns",
            "app",
            Poll {
                sent_at: 1.0,
                duration_seconds: 0.1,
                lateness_seconds: 0.0,
                result: "success",
                reason: "",
            },
        );
        m.events
            .with_label_values(&["ns", "StateChanged", "Normal"])
            .inc();
        m.actions
            .with_label_values(&["ns", "app", "restart_pod", "success"])
            .inc();
        m.action_duration
            .with_label_values(&["ns", "app", "restart_pod"])
            .observe(1.0);
        m.errors.with_label_values(&["status_write"]).inc();
        let text = m.render().unwrap();
        for name in [
            "operator_kco_tapp_polls_total",
            "operator_kco_tapp_poll_duration_seconds",
            "operator_kco_events_generated_total",
            "operator_kco_actions_executed_total",
            "operator_kco_action_duration_seconds",
            "operator_kco_errors_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from\n{text}"
            );
        }
    }

    #[test]
    fn a_forgotten_targetapp_leaves_no_series() {
        let m = Metrics::new().unwrap();
        for app in ["gone", "kept"] {
            m.targetapps.polled(
                "ns",
                app,
                Poll {
                    sent_at: 1.0,
                    duration_seconds: 0.1,
                    lateness_seconds: 0.0,
                    result: "failure",
                    reason: "timeout",
                },
            );
            m.targetapps.targets("ns", app, 3, 0);
            m.firings.with_label_values(&["ns", app, "offline"]).inc();
        }
        m.forget_targetapp("ns", "gone");
        let text = m.render().unwrap();
        assert!(!text.contains("targetapp=\"gone\""), "{text}");
        assert!(text.contains("targetapp=\"kept\""));
    }
}
