//! The series KCO keeps for each TargetApp it polls: polls by outcome, when the
//! latest was sent, how long polls take and how late they start, and the targets
//! up and down.
//!
//! They are kept as plain numbers per TargetApp and rendered at each scrape, not
//! as a `prometheus` series each: that crate gives every series its own copy of
//! the family's description, help text and label pairs, about 4 KiB per
//! TargetApp for these five families — more than the rest of what KCO keeps for
//! a TargetApp with one target. What a scrape shows is unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus::core::Desc;
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType};

use super::label_pair as pair;

/// Upper bounds of the duration and lateness buckets, in seconds.
pub const BOUNDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One family of the series, as the registry and a scrape describe it.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const APP: &[&str] = &["namespace", "targetapp"];

/// The families, in the order they are rendered; [`push`] fills them by these
/// positions.
const FAMILIES: [Family; 5] = [
    Family {
        name: "operator_kco_tapp_last_poll_timestamp_seconds",
        help: "When a TargetApp's latest poll was sent (Unix seconds): status is written on change, not per poll.",
        kind: MetricType::GAUGE,
        labels: APP,
    },
    Family {
        name: "operator_kco_tapp_poll_duration_seconds",
        help: "Duration of one poll, retries included.",
        kind: MetricType::HISTOGRAM,
        labels: APP,
    },
    Family {
        name: "operator_kco_tapp_poll_lateness_seconds",
        help: "How late polls start against their schedule.",
        kind: MetricType::HISTOGRAM,
        labels: APP,
    },
    Family {
        name: "operator_kco_tapp_polls_total",
        help: "GraphQL polls of TargetApp targets, by result and failure reason.",
        kind: MetricType::COUNTER,
        labels: &["namespace", "targetapp", "result", "reason"],
    },
    Family {
        name: "operator_kco_tapp_targets",
        help: "Targets of a TargetApp by state (up, down).",
        kind: MetricType::GAUGE,
        labels: &["namespace", "targetapp", "state"],
    },
];
const LAST_POLL: usize = 0;
const DURATION: usize = 1;
const LATENESS: usize = 2;
const POLLS: usize = 3;
const TARGETS: usize = 4;

/// One poll, as the series count it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Poll {
    /// When it was sent, in Unix seconds.
    pub sent_at: f64,
    pub duration_seconds: f64,
    pub lateness_seconds: f64,
    /// `success` or `failure`.
    pub result: &'static str,
    /// The failure's kind; "" on success.
    pub reason: &'static str,
}

/// Every TargetApp's series, by namespace and name.
#[derive(Clone)]
pub struct TargetApps {
    apps: Arc<Mutex<BTreeMap<String, BTreeMap<String, Counts>>>>,
    /// The families' descriptions, for the registry.
    descs: Arc<[Desc]>,
}

impl Default for TargetApps {
    fn default() -> Self {
        let descs = FAMILIES
            .iter()
            .filter_map(|family| {
                let labels = family.labels.iter().map(|l| (*l).to_owned()).collect();
                // Constant, valid names: this cannot fail.
                Desc::new(
                    family.name.to_owned(),
                    family.help.to_owned(),
                    labels,
                    HashMap::new(),
                )
                .ok()
            })
            .collect();
        Self {
            apps: Arc::default(),
            descs,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    last_poll: Option<f64>,
    /// Up and down, once the TargetApp's targets were counted.
    targets: Option<(i64, i64)>,
    /// Polls by (result, reason): a handful of kinds at most.
    polls: Vec<(&'static str, &'static str, u64)>,
    duration: Buckets,
    lateness: Buckets,
}

/// A histogram's observations: a count per bucket (the last one above every
/// bound), and their sum.
#[derive(Debug, Default)]
struct Buckets {
    counts: [u64; BOUNDS.len() + 1],
    sum: f64,
}

impl Buckets {
    fn observe(&mut self, value: f64) {
        let index = BOUNDS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(BOUNDS.len());
        self.counts[index] += 1;
        self.sum += value;
    }

    fn histogram(&self) -> Histogram {
        let mut histogram = Histogram::default();
        let mut below = 0;
        let mut buckets = Vec::with_capacity(BOUNDS.len());
        for (bound, count) in BOUNDS.iter().zip(self.counts) {
            below += count;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(below);
            buckets.push(bucket);
        }
        histogram.set_bucket(buckets);
        histogram.set_sample_count(below + self.counts[BOUNDS.len()]);
        histogram.set_sample_sum(self.sum);
        histogram
    }
}

impl TargetApps {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BTreeMap<String, Counts>>> {
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the TargetApp's counts, made when it has none.
    fn with(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Counts)) {
        let mut apps = self.lock();
        let names = match apps.get_mut(namespace) {
            Some(names) => names,
            None => apps.entry(namespace.to_owned()).or_default(),
        };
        match names.get_mut(name) {
            Some(counts) => f(counts),
            None => f(names.entry(name.to_owned()).or_default()),
        }
    }

    /// Counts one poll of one of the TargetApp's targets.
    pub fn polled(&self, namespace: &str, name: &str, poll: Poll) {
        self.with(namespace, name, |counts| {
            counts.last_poll = Some(poll.sent_at);
            counts.duration.observe(poll.duration_seconds);
            counts.lateness.observe(poll.lateness_seconds);
            match counts
                .polls
                .iter_mut()
                .find(|(result, reason, _)| *result == poll.result && *reason == poll.reason)
            {
                Some((_, _, n)) => *n += 1,
                None => counts.polls.push((poll.result, poll.reason, 1)),
            }
        });
    }

    /// Sets how many of the TargetApp's targets are up and down.
    pub fn targets(&self, namespace: &str, name: &str, up: i64, down: i64) {
        self.with(namespace, name, |counts| counts.targets = Some((up, down)));
    }

    /// Removes the TargetApp's series.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut apps = self.lock();
        if let Some(names) = apps.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                apps.remove(namespace);
            }
        }
    }

    /// The five families, each with a series per TargetApp (and per result and
    /// reason, or state) that has one.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .map(|f| {
                let mut family = MetricFamily::default();
                family.set_name(f.name.to_owned());
                family.set_help(f.help.to_owned());
                family.set_field_type(f.kind);
                family
            })
            .collect();
        // One namespace at a time: a poll's count waits for at most one
        // namespace's series to be rendered, not every TargetApp's.
        let namespaces: Vec<String> = self.lock().keys().cloned().collect();
        for namespace in namespaces {
            let apps = self.lock();
            for (name, counts) in apps.get(&namespace).into_iter().flatten() {
                push(&mut families, &namespace, name, counts);
            }
        }
        families.retain(|family| !family.get_metric().is_empty());
        families
    }
}

/// Adds one TargetApp's series to `families` (in [`FAMILIES`]' order).
fn push(families: &mut [MetricFamily], namespace: &str, name: &str, counts: &Counts) {
    // Label pairs in name order, as the `prometheus` crate writes them.
    let metric = |extra: &[(&str, &str)]| {
        let mut labels = vec![pair("namespace", namespace), pair("targetapp", name)];
        labels.extend(extra.iter().map(|(n, v)| pair(n, v)));
        labels.sort_by(|a, b| a.name().cmp(b.name()));
        let mut metric = Metric::default();
        metric.set_label(labels);
        metric
    };
    if let Some(sent_at) = counts.last_poll {
        let mut m = metric(&[]);
        let mut gauge = Gauge::default();
        gauge.set_value(sent_at);
        m.set_gauge(gauge);
        families[LAST_POLL].mut_metric().push(m);
        let mut m = metric(&[]);
        m.set_histogram(counts.duration.histogram());
        families[DURATION].mut_metric().push(m);
        let mut m = metric(&[]);
        m.set_histogram(counts.lateness.histogram());
        families[LATENESS].mut_metric().push(m);
    }
    for (result, reason, n) in &counts.polls {
        let mut m = metric(&[("result", result), ("reason", reason)]);
        let mut counter = Counter::default();
        counter.set_value(*n as f64);
        m.set_counter(counter);
        families[POLLS].mut_metric().push(m);
    }
    if let Some((up, down)) = counts.targets {
        for (state, n) in [("up", up), ("down", down)] {
            let mut m = metric(&[("state", state)]);
            let mut gauge = Gauge::default();
            gauge.set_value(n as f64);
            m.set_gauge(gauge);
            families[TARGETS].mut_metric().push(m);
        }
    }
}

impl prometheus::core::Collector for TargetApps {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    fn render(apps: &TargetApps) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&apps.families(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn poll(result: &'static str, reason: &'static str, seconds: f64) -> Poll {
        Poll {
            sent_at: 1_800_000_000.5,
            duration_seconds: seconds,
            lateness_seconds: 0.001,
            result,
            reason,
        }
    }

    #[test]
    fn polls_render_as_the_prometheus_crate_would_write_them() {
        let apps = TargetApps::default();
        apps.polled("chain", "mina", poll("success", "", 0.02));
        apps.polled("chain", "mina", poll("success", "", 0.3));
        apps.polled("chain", "mina", poll("failure", "timeout", 40.0));
        apps.targets("chain", "mina", 2, 1);
        let text = render(&apps);
        for line in [
            "# TYPE operator_kco_tapp_polls_total counter",
            r#"operator_kco_tapp_polls_total{namespace="chain",reason="",result="success",targetapp="mina"} 2"#,
            r#"operator_kco_tapp_polls_total{namespace="chain",reason="timeout",result="failure",targetapp="mina"} 1"#,
            "# TYPE operator_kco_tapp_poll_duration_seconds histogram",
            r#"operator_kco_tapp_poll_duration_seconds_bucket{namespace="chain",targetapp="mina",le="0.01"} 0"#,
            r#"operator_kco_tapp_poll_duration_seconds_bucket{namespace="chain",targetapp="mina",le="0.025"} 1"#,
            r#"operator_kco_tapp_poll_duration_seconds_bucket{namespace="chain",targetapp="mina",le="0.5"} 2"#,
            r#"operator_kco_tapp_poll_duration_seconds_bucket{namespace="chain",targetapp="mina",le="30"} 2"#,
            r#"operator_kco_tapp_poll_duration_seconds_bucket{namespace="chain",targetapp="mina",le="+Inf"} 3"#,
            r#"operator_kco_tapp_poll_duration_seconds_sum{namespace="chain",targetapp="mina"} 40.32"#,
            r#"operator_kco_tapp_poll_duration_seconds_count{namespace="chain",targetapp="mina"} 3"#,
            r#"operator_kco_tapp_poll_lateness_seconds_bucket{namespace="chain",targetapp="mina",le="0.005"} 3"#,
            r#"operator_kco_tapp_last_poll_timestamp_seconds{namespace="chain",targetapp="mina"} 1800000000.5"#,
            "# TYPE operator_kco_tapp_targets gauge",
            r#"operator_kco_tapp_targets{namespace="chain",state="up",targetapp="mina"} 2"#,
            r#"operator_kco_tapp_targets{namespace="chain",state="down",targetapp="mina"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn a_targetapp_has_no_series_before_it_is_polled_or_counted_and_none_once_forgotten() {
        let apps = TargetApps::default();
        assert_eq!(render(&apps), "");
        apps.targets("chain", "counted", 0, 1);
        let text = render(&apps);
        assert!(text.contains(r#"targetapp="counted""#), "{text}");
        assert!(!text.contains("operator_kco_tapp_poll"), "{text}");
        apps.polled("chain", "polled", poll("success", "", 0.1));
        apps.polled("other", "polled", poll("success", "", 0.1));
        apps.forget("chain", "polled");
        apps.forget("chain", "never-there");
        let text = render(&apps);
        assert!(
            !text.contains(r#"namespace="chain",targetapp="polled""#),
            "{text}"
        );
        assert!(text.contains(r#"namespace="other",targetapp="polled""#));
        assert!(text.contains(r#"targetapp="counted""#));
        apps.forget("chain", "counted");
        apps.forget("other", "polled");
        assert_eq!(render(&apps), "");
        assert!(apps.lock().is_empty(), "emptied namespaces are dropped");
        assert_eq!(
            prometheus::core::Collector::desc(&apps).len(),
            FAMILIES.len()
        );
    }

    #[test]
    fn a_value_on_a_bound_is_in_that_bounds_bucket() {
        let mut buckets = Buckets::default();
        for value in [0.005, 30.0, 30.000_001, -1.0] {
            buckets.observe(value);
        }
        let histogram = buckets.histogram();
        let counts: Vec<u64> = histogram
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(counts[0], 2, "0.005 and a negative value: {counts:?}");
        assert_eq!(counts[BOUNDS.len() - 1], 3);
        assert_eq!(histogram.get_sample_count(), 4);
    }
}
