//! Target state as Prometheus series: the fields a TargetApp names in
//! `spec.metrics`, read from every answer of every one of its targets — a
//! poll's, or a value a subscription pushed (`@name.…` fields) — and exported
//! by the replica that polls them as `kco_target_<name>` gauges, so that
//! on-call engineers alert on chain height or peer count with PromQL.
//!
//! A series is labelled `namespace`, `targetapp`, `target` (the pod, or the URL),
//! the pod labels the TargetApp chose (as `label_<key>`, the kube-state-metrics
//! convention) and, for an enum, the member (`<name>="SYNCED"`: one series per
//! member, 1 for the current one — an OpenMetrics state set). A number or a
//! list's length is the value; a boolean is 1 or 0. Nothing a target answers
//! makes a label: values outside the enum the schema declares set every member to
//! 0, and text is never exported.
//!
//! The series of a target's state query go when its poll fails (their values
//! are unknown; `$up` stays, at 0), those of pushed values when its
//! subscriptions are lost; all of them go when it is no longer a target, and
//! when its TargetApp is deleted or polled by another replica. A tenant's
//! series are bounded by its quota's `maxMetricSeries`, split across replicas
//! as its polls are.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::proto::{Gauge, Metric, MetricFamily, MetricType};
use serde_json::Value;

use crate::metrics::label_pair as pair;
use crate::triggers::{FieldPath, Num};

/// What every exported series' name starts with.
pub const PREFIX: &str = "kco_target_";

/// The most entries of `spec.metrics`.
pub const MAX_METRICS: usize = 20;

/// The most pod labels one entry copies.
pub const MAX_POD_LABELS: usize = 5;

/// The most members of an enum exported as a state set (a series each).
pub const MAX_STATES: usize = 32;

/// The longest `name`, without the prefix.
pub const MAX_NAME: usize = 64;

/// The labels every series carries, and those Prometheus and its operator give
/// a scraped series: a state set's member label may not take one of these names
/// (nor start with `exported_`, what a clash is renamed to).
pub const RESERVED_LABELS: [&str; 9] = [
    "namespace",
    "targetapp",
    "target",
    "job",
    "instance",
    "pod",
    "service",
    "endpoint",
    "container",
];

/// The longest `target` label: a URL target is labelled with its scheme, host,
/// port and path (never its query, which may hold what is not meant for
/// Prometheus), cut to this length.
pub const MAX_TARGET_LABEL: usize = 253;

/// What a series reads of its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A number (or a numeric scalar sent as a string of digits), or a list's
    /// length: the value.
    Number,
    /// `true` is 1, `false` 0.
    Boolean,
    /// An enum: one series per member, 1 for the current one.
    States(Arc<[String]>),
    /// The schema is not at hand (a ConfigMap schema not yet read): numbers and
    /// booleans as above; anything else is not exported.
    Unchecked,
}

/// One entry of `spec.metrics`, checked against the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// The whole name, `kco_target_<name>`.
    pub name: String,
    pub field: FieldPath,
    pub kind: Kind,
    /// Each chosen pod label: the series label it becomes, and its key.
    pub pod_labels: Vec<(String, String)>,
}

/// Why `name` cannot name a series: it must be lowercase letters, digits and
/// underscores, start with a letter, and not be too long.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "is {} characters long; at most {MAX_NAME} are allowed",
            name.len()
        ));
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(format!("{name:?} must start with a lowercase letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "{name:?} may hold only lowercase letters, digits and underscores, not {bad:?}"
        ));
    }
    if name.starts_with("exported_") {
        return Err(format!(
            "{name:?} starts with exported_, which Prometheus gives a label that clashes with its own; choose another name"
        ));
    }
    if name.starts_with("label_") {
        return Err(format!(
            "{name:?} starts with label_, which pod labels' series labels do; choose another name"
        ));
    }
    if RESERVED_LABELS.contains(&name) {
        return Err(format!(
            "{name:?} is a label every series carries, or one Prometheus gives it; choose another name"
        ));
    }
    Ok(())
}

/// The `target` label of a target named `target`: a pod's name as it is; a URL's
/// scheme, host, port and path, at most [`MAX_TARGET_LABEL`] bytes.
pub fn target_label(target: &str) -> String {
    let label = match url::Url::parse(target) {
        Ok(url) if url.has_host() => {
            let mut label = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
            if let Some(port) = url.port() {
                label.push_str(&format!(":{port}"));
            }
            label.push_str(url.path());
            label
        }
        _ => target.to_owned(),
    };
    let mut end = label.len().min(MAX_TARGET_LABEL);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label[..end].to_owned()
}

/// The series label a pod label becomes: `label_` and its key with every
/// character but letters, digits and underscores made `_`
/// (`app.kubernetes.io/name` → `label_app_kubernetes_io_name`).
pub fn pod_label(key: &str) -> String {
    let sanitized: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("label_{sanitized}")
}

/// One sample of one answer: the series (an index into the TargetApp's list),
/// the member of a state set, and the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub series: u16,
    pub state: Option<u16>,
    pub value: f64,
}

/// What one target said, for the series that follow what it said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    /// A poll's answer (`None`: the poll failed, so the values are unknown): for
    /// the series of the state query's fields and of `$up`.
    Polled(Option<&'a Value>),
    /// What subscription `name` pushed (its root field's value): for the series
    /// of the fields under `@name`.
    Pushed { name: &'a str, value: &'a Value },
    /// The target's subscriptions were lost (or it serves none): the values they
    /// pushed are no longer known, so the series of `@` fields go.
    Unsubscribed,
}

impl Answer<'_> {
    /// Whether this answer says what `series` holds now (the others keep what
    /// earlier answers said).
    fn speaks_for(&self, series: &Series) -> bool {
        match (self, series.field.subscription()) {
            (Answer::Polled(_), source) => source.is_none(),
            (Answer::Pushed { name, .. }, source) => source == Some(*name),
            (Answer::Unsubscribed, source) => source.is_some(),
        }
    }
}

/// What `series` read of one answer, for the series it speaks for. A field the
/// answer lacks, or that holds another type than its kind, gives no sample.
pub fn read(series: &[Series], answer: Answer<'_>) -> Vec<Reading> {
    let pushed;
    let (data, up) = match answer {
        Answer::Polled(data) => (data, data.is_some()),
        Answer::Pushed { name, value } => {
            let mut map = serde_json::Map::new();
            map.insert(format!("@{name}"), value.clone());
            pushed = Value::Object(map);
            (Some(&pushed), true)
        }
        Answer::Unsubscribed => return Vec::new(),
    };
    let mut readings = Vec::new();
    for (index, s) in series.iter().enumerate() {
        let Ok(index) = u16::try_from(index) else {
            break;
        };
        if !answer.speaks_for(s) {
            continue;
        }
        if data.is_none() && !s.field.is_up() {
            continue;
        }
        let Some(value) = s.field.resolve(data, up) else {
            continue;
        };
        let one = |value: f64| Reading {
            series: index,
            state: None,
            value,
        };
        match (&s.kind, &value) {
            (Kind::States(members), value) => {
                let current = value.as_str();
                readings.extend(members.iter().enumerate().filter_map(|(m, member)| {
                    Some(Reading {
                        series: index,
                        state: Some(u16::try_from(m).ok()?),
                        value: f64::from(u8::from(current == Some(member.as_str()))),
                    })
                }));
            }
            (Kind::Boolean | Kind::Unchecked, Value::Bool(b)) => {
                readings.push(one(f64::from(u8::from(*b))))
            }
            (Kind::Number | Kind::Unchecked, value) => {
                if let Some(n) = Num::from_value(value) {
                    readings.push(one(as_f64(n)));
                }
            }
            (Kind::Boolean, _) => {}
        }
    }
    readings
}

fn as_f64(n: Num) -> f64 {
    match n {
        // Precision beyond 2^53 is lost, as for any gauge.
        #[allow(clippy::cast_precision_loss)]
        Num::Int(i) => i as f64,
        Num::Float(f) => f,
    }
}

/// What a poll's result says for the series: the answer (`None` inside: the poll
/// failed, so the values are unknown), or nothing at all for a poll throttled for
/// its bytes in flight — other tenants' load can cause that, and it tells
/// nothing of the target, so its series stay as they were.
pub fn answer_of(
    result: &Result<crate::monitor::poll::PollData, crate::monitor::poll::PollFailure>,
) -> Option<Answer<'_>> {
    match result {
        Ok(data) => Some(Answer::Polled(Some(&data.data))),
        Err(crate::monitor::poll::PollFailure::Throttled(_)) => None,
        Err(_) => Some(Answer::Polled(None)),
    }
}

/// How many series `series` export per target at most.
pub fn per_target(series: &[Series]) -> usize {
    series
        .iter()
        .map(|s| match &s.kind {
            Kind::States(members) => members.len(),
            _ => 1,
        })
        .sum()
}

/// A tenant's series budget on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The tenant, as the quotas name it.
    pub tenant: String,
    pub max: usize,
    /// The quota, for messages.
    pub named: String,
}

/// Why a target's series were not exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{wanted} series would take {tenant_label} to {total} of the {max} metric series {named} allows on this replica"
)]
pub struct OverBudget {
    pub wanted: usize,
    pub total: usize,
    pub max: usize,
    pub tenant_label: String,
    pub named: String,
}

type AppKey = (String, String);

struct App {
    series: Arc<[Series]>,
    targets: BTreeMap<String, Exported>,
}

struct Exported {
    tenant: String,
    /// The `target` label when it is not the target's name (a URL's).
    label: Option<String>,
    /// The chosen pod labels' values, by key.
    pod_labels: BTreeMap<String, String>,
    readings: Vec<Reading>,
}

#[derive(Default)]
struct Inner {
    apps: BTreeMap<AppKey, App>,
    /// Series exported per tenant.
    tenants: BTreeMap<String, usize>,
}

impl Inner {
    fn remove_target(&mut self, exported: &Exported) {
        if let Some(count) = self.tenants.get_mut(&exported.tenant) {
            *count = count.saturating_sub(exported.readings.len());
            if *count == 0 {
                self.tenants.remove(&exported.tenant);
            }
        }
    }
}

/// The series this replica exports, by TargetApp and target; a Prometheus
/// collector renders them at each scrape.
#[derive(Clone, Default)]
pub struct Store(Arc<Mutex<Inner>>);

impl Store {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts (or restarts, with new definitions) a TargetApp's series; its
    /// targets' samples until now go.
    pub fn define(&self, namespace: &str, app: &str, series: Arc<[Series]>) {
        self.forget_app(namespace, app);
        if series.is_empty() {
            return;
        }
        self.lock().apps.insert(
            (namespace.to_owned(), app.to_owned()),
            App {
                series,
                targets: BTreeMap::new(),
            },
        );
    }

    /// Replaces what `target` of the TargetApp exports with what its latest
    /// answer says; `labels` are the pod's (none for a URL target). Over the
    /// tenant's `budget`, the target exports nothing and the error says why.
    pub fn record(
        &self,
        namespace: &str,
        app: &str,
        target: &str,
        labels: Option<&BTreeMap<String, String>>,
        answer: Answer<'_>,
        budget: &Budget,
    ) -> Result<(), OverBudget> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), app.to_owned());
        let Some(entry) = inner.apps.get_mut(&key) else {
            return Ok(());
        };
        let mut readings = read(&entry.series, answer);
        // What the other sources said stays: a poll does not forget what a
        // subscription pushed, nor a push what a poll answered.
        if let Some(old) = entry.targets.get(target) {
            let series = &entry.series;
            readings.extend(old.readings.iter().copied().filter(|r| {
                series
                    .get(usize::from(r.series))
                    .is_some_and(|s| !answer.speaks_for(s))
            }));
            readings.sort_by_key(|r| (r.series, r.state));
        }
        let pod_labels = entry
            .series
            .iter()
            .flat_map(|s| &s.pod_labels)
            .filter_map(|(_, k)| Some((k.clone(), labels?.get(k)?.clone())))
            .collect();
        let old = entry.targets.remove(target);
        if let Some(old) = &old {
            inner.remove_target(old);
        }
        let used = inner.tenants.get(&budget.tenant).copied().unwrap_or(0);
        let total = used + readings.len();
        if total > budget.max {
            return Err(OverBudget {
                wanted: readings.len(),
                total,
                max: budget.max,
                tenant_label: format!("tenant {}", budget.tenant),
                named: budget.named.clone(),
            });
        }
        if readings.is_empty() {
            return Ok(());
        }
        *inner.tenants.entry(budget.tenant.clone()).or_default() += readings.len();
        if let Some(entry) = inner.apps.get_mut(&key) {
            entry.targets.insert(
                target.to_owned(),
                Exported {
                    tenant: budget.tenant.clone(),
                    label: Some(target_label(target)).filter(|l| l != target),
                    pod_labels,
                    readings,
                },
            );
        }
        Ok(())
    }

    /// Removes what `target` exports.
    pub fn forget_target(&self, namespace: &str, app: &str, target: &str) {
        let mut inner = self.lock();
        let removed = inner
            .apps
            .get_mut(&(namespace.to_owned(), app.to_owned()))
            .and_then(|entry| entry.targets.remove(target));
        if let Some(removed) = removed {
            inner.remove_target(&removed);
        }
    }

    /// Removes every series of the TargetApp.
    pub fn forget_app(&self, namespace: &str, app: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.apps.remove(&(namespace.to_owned(), app.to_owned())) {
            for exported in entry.targets.values() {
                inner.remove_target(exported);
            }
        }
    }

    /// Series exported for `tenant` now.
    pub fn tenant_series(&self, tenant: &str) -> usize {
        self.lock().tenants.get(tenant).copied().unwrap_or(0)
    }

    /// Every series, as metric families by name.
    pub fn families(&self) -> Vec<MetricFamily> {
        let inner = self.lock();
        let mut families: BTreeMap<&str, MetricFamily> = BTreeMap::new();
        for ((namespace, app), entry) in &inner.apps {
            for (target, exported) in &entry.targets {
                for reading in &exported.readings {
                    let Some(series) = entry.series.get(usize::from(reading.series)) else {
                        continue;
                    };
                    let family = families.entry(&series.name).or_insert_with(|| {
                        let mut family = MetricFamily::default();
                        family.set_name(series.name.clone());
                        family.set_help(
                            "Target state a TargetApp exports (spec.metrics): the field's value, or 1 for an enum's current member."
                                .to_owned(),
                        );
                        family.set_field_type(MetricType::GAUGE);
                        family
                    });
                    let mut labels = vec![
                        pair("namespace", namespace),
                        pair("targetapp", app),
                        pair("target", exported.label.as_deref().unwrap_or(target)),
                    ];
                    for (label, key) in &series.pod_labels {
                        let value = exported.pod_labels.get(key).map_or("", String::as_str);
                        labels.push(pair(label, value));
                    }
                    if let (Kind::States(members), Some(state)) = (&series.kind, reading.state)
                        && let Some(member) = members.get(usize::from(state))
                    {
                        let label = series.name.strip_prefix(PREFIX).unwrap_or(&series.name);
                        labels.push(pair(label, member));
                    }
                    let mut gauge = Gauge::default();
                    gauge.set_value(reading.value);
                    let mut metric = Metric::default();
                    metric.set_label(labels);
                    metric.set_gauge(gauge);
                    family.mut_metric().push(metric);
                }
            }
        }
        families.into_values().collect()
    }
}

impl prometheus::core::Collector for Store {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        // The families are the tenants' to name: none is declared up front.
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

#[cfg(test)]
mod tests;
