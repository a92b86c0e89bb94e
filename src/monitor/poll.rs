//! One GraphQL poll of one target: POST the query, bounded in time and size,
//! retried with exponential backoff and jitter, classified when it fails.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;

/// Why a poll failed. `reason()` is a bounded label for metrics and Events; the
/// Display text is for the message (never a response body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("redirect (HTTP {0}) not followed")]
    Redirect(u16),
    #[error("the response is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the response is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the response is not a GraphQL response (no data and no errors)")]
    NotGraphql,
    #[error("GraphQL errors and no data: {0}")]
    GraphqlErrors(String),
}

impl PollFailure {
    /// A short label: metrics label values and Event reasons' detail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::Transport(_) => "transport",
            Self::Status(s) if *s >= 500 => "http_5xx",
            Self::Status(_) => "http_4xx",
            Self::Redirect(_) => "redirect",
            Self::TooLarge(_) => "too_large",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotGraphql => "not_graphql",
            Self::GraphqlErrors(_) => "graphql_errors",
        }
    }

    /// Whether trying again soon may help.
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) | Self::Transport(_) => true,
            Self::Status(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

/// A successful poll: the `data` object, and the messages of any GraphQL errors
/// that came with it (a partial result).
#[derive(Debug, Clone, PartialEq)]
pub struct PollData {
    pub data: Value,
    pub errors: Vec<String>,
}

/// A poll and how it went.
#[derive(Debug, Clone)]
pub struct PollReport {
    pub result: Result<PollData, PollFailure>,
    pub attempts: u32,
    pub duration: Duration,
}

/// Polls targets over one shared, pooled HTTP client.
#[derive(Clone)]
pub struct Poller {
    http: reqwest::Client,
    max_bytes: u64,
    max_retries: u32,
    first_backoff: Duration,
}

/// `kco/<version> (<instance>)`.
pub fn user_agent(instance: &str) -> String {
    format!("kco/{} ({instance})", env!("CARGO_PKG_VERSION"))
}

/// The longest error message kept from a GraphQL response.
const MAX_MESSAGE: usize = 200;

impl Poller {
    /// A poller whose responses may be at most `max_bytes` long, retrying retryable
    /// failures up to `max_retries` times.
    /// `instance` names the replica in the User-Agent, so that a target's operators
    /// see which replica polls it.
    pub fn new(max_bytes: u64, max_retries: u32, instance: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(user_agent(instance))
            // Targets are pods and Services: never through a proxy from the environment,
            // and never to wherever a redirect points.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            http,
            max_bytes,
            max_retries,
            first_backoff: Duration::from_millis(200),
        })
    }

    /// The same poller over another HTTP client (for user-supplied URLs: a client
    /// that enforces the tenant's endpoint policy at connect time).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Sets the first retry delay (tests use short ones).
    pub fn with_first_backoff(mut self, delay: Duration) -> Self {
        self.first_backoff = delay;
        self
    }

    /// Polls `url` with `query`; each attempt may take `timeout`.
    pub async fn poll(&self, url: &str, query: &str, timeout: Duration) -> PollReport {
        let started = Instant::now();
        let mut attempts = 0;
        let body = serde_json::json!({ "query": query });
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_backoff)
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_max_times(self.max_retries as usize);
        let result = (|| {
            attempts += 1;
            self.attempt(url, &body, timeout)
        })
        .retry(backoff)
        .when(PollFailure::retryable)
        .await;
        PollReport {
            result,
            attempts,
            duration: started.elapsed(),
        }
    }

    async fn attempt(
        &self,
        url: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<PollData, PollFailure> {
        match tokio::time::timeout(timeout, self.exchange(url, body)).await {
            Ok(result) => result,
            Err(_) => Err(PollFailure::Timeout(timeout)),
        }
    }

    async fn exchange(&self, url: &str, body: &Value) -> Result<PollData, PollFailure> {
        let mut response = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(PollFailure::Redirect(status.as_u16()));
        }
        if !status.is_success() {
            return Err(PollFailure::Status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(PollFailure::TooLarge(self.max_bytes));
        }
        // Enforced while reading: a body without (or lying about) its length stops at the cap.
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if bytes.len() as u64 + chunk.len() as u64 > self.max_bytes {
                return Err(PollFailure::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        parse_response(&bytes)
    }
}

fn classify(e: reqwest::Error) -> PollFailure {
    let text = root_cause(&e);
    if e.is_connect() {
        PollFailure::Connect(text)
    } else if e.is_timeout() {
        PollFailure::Timeout(Duration::ZERO)
    } else {
        PollFailure::Transport(text)
    }
}

/// The innermost error's text: "connection refused", not reqwest's URL-laden wrapper.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    truncate(&current.to_string())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Reads a GraphQL response body: `data` (possibly partial) and `errors`.
pub fn parse_response(bytes: &[u8]) -> Result<PollData, PollFailure> {
    // serde_json refuses nesting deeper than 128 levels and invalid UTF-8.
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| PollFailure::InvalidJson(truncate(&e.to_string())))?;
    let Value::Object(mut top) = value else {
        return Err(PollFailure::NotGraphql);
    };
    let errors: Vec<String> = match top.remove("errors") {
        Some(Value::Array(errors)) => errors
            .iter()
            .map(|e| {
                truncate(
                    e.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)"),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    match top.remove("data") {
        Some(data @ Value::Object(_)) => Ok(PollData { data, errors }),
        _ if !errors.is_empty() => Err(PollFailure::GraphqlErrors(errors.join("; "))),
        _ => Err(PollFailure::NotGraphql),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_as_graphql() {
        let ok = parse_response(br#"{"data": {"syncStatus": "SYNCED"}}"#).unwrap();
        assert_eq!(ok.data["syncStatus"], "SYNCED");
        assert!(ok.errors.is_empty());
        let partial =
            parse_response(br#"{"data": {"a": null}, "errors": [{"message": "peers down"}]}"#)
                .unwrap();
        assert_eq!(partial.errors, ["peers down"]);
        assert_eq!(
            parse_response(br#"{"data": null, "errors": [{"message": "x"}, {"nope": 1}]}"#),
            Err(PollFailure::GraphqlErrors("x; (no message)".into()))
        );
        assert_eq!(parse_response(b"[]"), Err(PollFailure::NotGraphql));
        assert_eq!(
            parse_response(br#"{"data": 3}"#),
            Err(PollFailure::NotGraphql)
        );
        assert!(matches!(
            parse_response(b"{\"data\": {\"a\": \"\xff\"}}"),
            Err(PollFailure::InvalidJson(_))
        ));
        assert!(matches!(
            parse_response(br#"{"data": {"#),
            Err(PollFailure::InvalidJson(_))
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_response(deep.as_bytes()),
            Err(PollFailure::InvalidJson(_))
        ));
    }

    #[test]
    fn long_messages_are_cut() {
        let long = format!(r#"{{"errors": [{{"message": "{}"}}]}}"#, "é".repeat(1000));
        let Err(PollFailure::GraphqlErrors(message)) = parse_response(long.as_bytes()) else {
            panic!("expected GraphQL errors");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE + 1);
    }

    #[test]
    fn reasons_are_bounded_labels() {
        assert_eq!(PollFailure::Status(503).reason(), "http_5xx");
        assert_eq!(PollFailure::Status(404).reason(), "http_4xx");
        assert!(PollFailure::Status(429).retryable());
        assert!(!PollFailure::Status(404).retryable());
        assert!(!PollFailure::TooLarge(1).retryable());
        assert!(PollFailure::Timeout(Duration::ZERO).retryable());
    }
}
