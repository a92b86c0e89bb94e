//! What a `webhook` action's receiver gets, by `format`: KCO's own JSON
//! description of the firing (`json`), a Slack incoming-webhook message
//! (`slack`), or a PagerDuty Events API v2 event (`pagerduty`). A fixed set of
//! formats rather than templates: nothing a tenant writes is evaluated, and
//! every body is valid for its receiver. Pure.

use serde_json::{Value, json};

/// The formats a receiver may ask for.
pub const FORMATS: &[&str] = &["json", "slack", "pagerduty"];

/// PagerDuty's severities.
pub const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

/// The longest summary PagerDuty takes.
const MAX_SUMMARY: usize = 1024;

/// The longest Slack message KCO sends (Slack shows about this much of a text
/// before it folds it).
const MAX_SLACK_TEXT: usize = 3000;

/// The longest value (as JSON text) a PagerDuty event's details carry: the
/// whole event must stay under PagerDuty's 512 KB.
const MAX_DETAIL_VALUE: usize = 16 * 1024;

/// A body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Slack,
    PagerDuty,
}

impl Format {
    /// The format named `name` (one of [`FORMATS`]).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "slack" => Some(Self::Slack),
            "pagerduty" => Some(Self::PagerDuty),
            _ => None,
        }
    }
}

/// What a format needs besides the firing.
#[derive(Debug, Clone, Copy)]
pub struct Extra<'a> {
    /// PagerDuty's integration key.
    pub routing_key: Option<&'a str>,
    /// PagerDuty's severity (one of [`SEVERITIES`]).
    pub severity: &'a str,
}

/// One line saying what fired, from KCO's JSON description of the firing.
pub fn summary(firing: &Value) -> String {
    let text = |key: &str| match &firing[key] {
        Value::String(s) => s.clone(),
        Value::Null => "(absent)".to_owned(),
        other => other.to_string(),
    };
    format!(
        "KCO: rule {} fired for {} of TargetApp {}/{}: {} changed from {} to {}",
        text("rule"),
        text("target"),
        text("namespace"),
        text("targetApp"),
        text("field"),
        text("oldValue"),
        text("newValue"),
    )
}

/// `text` with Slack's control characters escaped.
fn slack_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The body `format` sends for `firing` (KCO's JSON description, as the
/// `json` format sends it).
pub fn render(format: Format, firing: &Value, extra: Extra<'_>) -> Value {
    match format {
        Format::Json => firing.clone(),
        // A target's values are the target's to choose: Slack's markup
        // (`<!channel>`, `<https://…|link>`) is escaped, as Slack documents.
        Format::Slack => json!({ "text": cut(&slack_escaped(&summary(firing)), MAX_SLACK_TEXT) }),
        Format::PagerDuty => {
            let summary = cut(&summary(firing), MAX_SUMMARY);
            let mut details = firing.clone();
            for key in ["oldValue", "newValue"] {
                let size = details[key].to_string().len();
                if size > MAX_DETAIL_VALUE {
                    details[key] = json!(format!("({size} bytes of JSON, left out)"));
                }
            }
            json!({
                "routing_key": extra.routing_key,
                "event_action": "trigger",
                // One incident per firing, whatever the retries.
                "dedup_key": firing["idempotencyKey"],
                "payload": {
                    "summary": summary,
                    "source": format!(
                        "{}/{}",
                        firing["namespace"].as_str().unwrap_or_default(),
                        firing["targetApp"].as_str().unwrap_or_default()
                    ),
                    "severity": extra.severity,
                    "timestamp": firing["firedAt"],
                    "component": firing["target"],
                    "group": firing["namespace"],
                    "class": firing["rule"],
                    "custom_details": details,
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing() -> Value {
        json!({
            "targetApp": "mina", "namespace": "chain", "target": "mina-1", "pod": "mina-1",
            "rule": "offline", "field": "daemonStatus.syncStatus",
            "oldValue": "SYNCED", "newValue": "OFFLINE",
            "firedAt": "2026-12-04T22:00:00Z", "idempotencyKey": "0123abcd", "correlationId": "c"
        })
    }

    const EXTRA: Extra<'static> = Extra {
        routing_key: Some("R0UT1NG"),
        severity: "critical",
    };

    #[test]
    fn each_format_is_what_its_receiver_reads() {
        assert_eq!(render(Format::Json, &firing(), EXTRA), firing());
        assert_eq!(
            render(Format::Slack, &firing(), EXTRA),
            json!({"text": "KCO: rule offline fired for mina-1 of TargetApp chain/mina: daemonStatus.syncStatus changed from SYNCED to OFFLINE"})
        );
        let event = render(Format::PagerDuty, &firing(), EXTRA);
        assert_eq!(event["routing_key"], "R0UT1NG");
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], "0123abcd");
        assert_eq!(event["payload"]["severity"], "critical");
        assert_eq!(event["payload"]["source"], "chain/mina");
        assert_eq!(event["payload"]["custom_details"], firing());
        assert!(
            event["payload"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("KCO: rule offline")
        );
    }

    #[test]
    fn a_long_summary_is_cut_where_pagerduty_wants_it_on_a_character() {
        let mut long = firing();
        long["newValue"] = json!("é".repeat(2_000));
        let event = render(Format::PagerDuty, &long, EXTRA);
        let summary = event["payload"]["summary"].as_str().unwrap();
        assert!(summary.len() <= MAX_SUMMARY && summary.len() > MAX_SUMMARY - 2);
        assert!(summary.ends_with('é'), "cut on a whole character");
        // A missing value reads as absent, not as null.
        let mut absent = firing();
        absent["oldValue"] = Value::Null;
        assert!(super::summary(&absent).contains("from (absent) to"));
    }

    #[test]
    fn a_targets_values_are_text_to_slack_and_bounded_for_pagerduty() {
        let mut hostile = firing();
        hostile["newValue"] = json!("<!channel> see <https://evil.example|the docs> & more");
        let text = render(Format::Slack, &hostile, EXTRA)["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(
            text.contains("&lt;!channel&gt;") && text.contains("&amp; more"),
            "{text}"
        );
        let mut huge = firing();
        huge["newValue"] = json!("x".repeat(MAX_DETAIL_VALUE + 1));
        let event = render(Format::PagerDuty, &huge, EXTRA);
        let detail = event["payload"]["custom_details"]["newValue"]
            .as_str()
            .unwrap();
        assert!(detail.ends_with("bytes of JSON, left out)"), "{detail}");
        assert_eq!(event["payload"]["custom_details"]["oldValue"], "SYNCED");
        let long = render(Format::Slack, &huge, EXTRA);
        assert!(long["text"].as_str().unwrap().len() <= MAX_SLACK_TEXT);
    }

    #[test]
    fn every_format_has_a_name() {
        for name in FORMATS {
            assert!(Format::named(name).is_some(), "{name}");
        }
        assert_eq!(Format::named("xml"), None);
    }
}
