//! One GraphQL poll of one target: POST the query, bounded in time and size,
//! retried with exponential backoff and jitter, classified when it fails.
//!
//! A hostile target cannot hold more than the response cap in memory (the body is
//! read chunk by chunk and dropped at the cap), nor a poll longer than its timeout
//! (one deadline covers the headers and the body), nor the parser's stack (nesting
//! is counted while reading, before anything is parsed). All bodies being read
//! together are bounded too, per tenant and per replica ([`super::inflight`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value;
use tokio::time::Instant;

use super::inflight::{Held, Share};

/// Why a poll failed. `reason()` is a bounded label for metrics and Events; the
/// Display text is for the message (never a response body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the response started but its body did not finish within {0:?}")]
    SlowBody(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("rate limited (HTTP 429){}", match .0 {
        Some(after) => format!("; the next poll waits {}s as Retry-After asks", after.as_secs()),
        None => String::new(),
    })]
    RateLimited(Option<Duration>),
    #[error("redirect (HTTP {0}) not followed")]
    Redirect(u16),
    #[error("redirect refused: {0}")]
    RedirectForbidden(String),
    #[error("the response is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the response nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("the response is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("the response is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the response is not a GraphQL response (no data and no errors)")]
    NotGraphql,
    #[error("GraphQL errors and no data: {0}")]
    GraphqlErrors(String),
    /// The tenant's endpoint policy refuses the target (checked before every poll).
    #[error("not allowed by the tenant's endpoint policy: {0}")]
    NotAllowed(String),
    /// The body would take more than the bytes left to its tenant (or replica) for
    /// responses being read: the poll stops, telling nothing of the target.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The credentials `spec.auth` asks for cannot be read or used.
    #[error("no credentials to send: {0}")]
    Credentials(String),
}

impl PollFailure {
    /// A short label: metrics label values and Event reasons' detail.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::SlowBody(_) => "slow_body",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Transport(_) => "transport",
            Self::Status(s) if *s >= 500 => "http_5xx",
            Self::Status(_) => "http_4xx",
            Self::RateLimited(_) => "rate_limited",
            Self::Redirect(_) => "redirect",
            Self::RedirectForbidden(_) => "redirect_forbidden",
            Self::TooLarge(_) => "too_large",
            Self::TooDeep(_) => "too_deep",
            Self::InvalidUtf8(_) => "invalid_utf8",
            Self::InvalidJson(_) => "invalid_json",
            Self::NotGraphql => "not_graphql",
            Self::GraphqlErrors(_) => "graphql_errors",
            Self::NotAllowed(_) => "not_allowed",
            Self::Throttled(_) => "throttled",
            Self::Credentials(_) => "credentials",
        }
    }

    /// Every label `reason()` can return (for docs and tests).
    pub const REASONS: &'static [&'static str] = &[
        "timeout",
        "slow_body",
        "connect",
        "tls",
        "transport",
        "http_5xx",
        "http_4xx",
        "rate_limited",
        "redirect",
        "redirect_forbidden",
        "too_large",
        "too_deep",
        "invalid_utf8",
        "invalid_json",
        "not_graphql",
        "graphql_errors",
        "not_allowed",
        "throttled",
        "credentials",
    ];

    /// Whether trying again soon may help. A slow body would be as slow again, and a
    /// rate-limited target asked for fewer requests, not more.
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Connect(_) | Self::Transport(_) => true,
            Self::Status(s) => *s >= 500,
            _ => false,
        }
    }

    /// Whether KCO, not the target, kept the poll from telling anything: its
    /// body was dropped for the bytes in flight, or it could not be sent
    /// without the credentials it needs. The target's state is unknown, not down.
    pub fn told_nothing(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Credentials(_))
    }

    /// How long the target asked to be left alone (Retry-After of a 429), at most
    /// [`MAX_RETRY_AFTER`]: the poll loop delays the next poll by it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(after) => *after,
            _ => None,
        }
    }
}

/// The longest Retry-After honoured: a target cannot silence its monitoring for
/// longer than this per 429.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The deepest nesting of arrays and objects read in a response (below
/// serde_json's own limit of 128, so the reason is always `too_deep`).
pub const MAX_RESPONSE_DEPTH: usize = 100;

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
    /// Where bodies take their bytes from (none: only the response cap bounds them).
    share: Option<Share>,
    /// Whether the connection stays open for the next poll; when not, each poll
    /// asks for `Connection: close` and nothing is held between polls.
    keep_alive: bool,
    /// A header every poll carries (`spec.auth`), its value marked sensitive.
    header: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

/// The client of pod targets, before it is built (a TargetApp with its own TLS
/// settings builds one more).
pub fn pod_client(instance: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(user_agent(instance))
        // Targets are pods and Services: never through a proxy from the environment,
        // and never to wherever a redirect points.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(2)
        .tcp_nodelay(true)
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
        let http = pod_client(instance).build()?;
        Ok(Self {
            http,
            max_bytes,
            max_retries,
            first_backoff: Duration::from_millis(200),
            share: None,
            keep_alive: true,
            header: None,
        })
    }

    /// The same poller over another HTTP client (for user-supplied URLs: a client
    /// that enforces the tenant's endpoint policy at connect time).
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The same poller, its bodies taking their bytes from `share` (a tenant's
    /// share of the replica's bytes in flight).
    pub fn with_share(mut self, share: Share) -> Self {
        self.share = Some(share);
        self
    }

    /// The same poller, keeping its connection between polls or not: a target
    /// polled rarely should not hold a descriptor and buffers while it waits.
    pub fn with_keep_alive(mut self, keep_alive: bool) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// The same poller, every poll carrying `header` (credentials: the client
    /// must follow no redirect).
    pub fn with_header(
        mut self,
        header: (reqwest::header::HeaderName, reqwest::header::HeaderValue),
    ) -> Self {
        self.header = Some(header);
        self
    }

    /// Sets the first retry delay (tests use short ones).
    pub fn with_first_backoff(mut self, delay: Duration) -> Self {
        self.first_backoff = delay;
        self
    }

    /// Polls `url` with `query`; each attempt may take `timeout`.
    pub async fn poll(&self, url: &str, query: &str, timeout: Duration) -> PollReport {
        match parse_url(url) {
            Ok(url) => self.poll_url(&url, &QueryBody::new(query), timeout).await,
            Err(failure) => PollReport {
                result: Err(failure),
                attempts: 1,
                duration: Duration::ZERO,
            },
        }
    }

    /// Polls `url`, parsed once by its poll loop, with a body written once for its
    /// TargetApp; each attempt may take `timeout`.
    pub async fn poll_url(
        &self,
        url: &reqwest::Url,
        body: &QueryBody,
        timeout: Duration,
    ) -> PollReport {
        let started = Instant::now();
        let mut attempts = 0;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.first_backoff)
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_max_times(self.max_retries as usize);
        let result = (|| {
            attempts += 1;
            self.attempt(url, body, timeout)
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
        url: &reqwest::Url,
        body: &QueryBody,
        timeout: Duration,
    ) -> Result<PollData, PollFailure> {
        // One deadline for the whole exchange; where it strikes names the failure.
        let deadline = Instant::now() + timeout;
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, JSON)
            .body(body.0.clone());
        if !self.keep_alive {
            request = request.header(reqwest::header::CONNECTION, "close");
        }
        if let Some((name, value)) = &self.header {
            request = request.header(name.clone(), value.clone());
        }
        // One timer for the whole exchange (a timer costs a lock of the runtime's
        // timer wheel to set and to clear); whether the answer's head had come
        // says where it struck.
        let answered = AtomicBool::new(false);
        let exchange = async {
            let response = request.send().await.map_err(classify)?;
            answered.store(true, Ordering::Relaxed);
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(PollFailure::RateLimited(retry_after(response.headers())));
            }
            if status.is_redirection() {
                return Err(PollFailure::Redirect(status.as_u16()));
            }
            if !status.is_success() {
                return Err(PollFailure::Status(status.as_u16()));
            }
            // The bytes stay taken until the body is parsed.
            let (bytes, _held) = self.read_body(response).await?;
            parse_response(&bytes)
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) if answered.load(Ordering::Relaxed) => Err(PollFailure::SlowBody(timeout)),
            Err(_) => Err(PollFailure::Timeout(timeout)),
        }
    }

    /// Reads the body up to the cap, counting nesting as it arrives: never more
    /// than `max_bytes` in memory, and a too-deep body stops at the offending byte.
    /// The buffer takes its bytes from the share before it grows; they are given
    /// back when the returned `Held` is dropped.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
    ) -> Result<(Vec<u8>, Held), PollFailure> {
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(PollFailure::TooLarge(self.max_bytes));
        }
        // Enforced while reading: a body without (or lying about) its length stops at the cap.
        let cap = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        let mut held = Held::default();
        let mut depth = DepthScanner::default();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            let needed = bytes.len().saturating_add(chunk.len());
            if needed > cap {
                return Err(PollFailure::TooLarge(self.max_bytes));
            }
            depth.feed(&chunk)?;
            if needed > bytes.capacity() {
                // Doubling, but never past the cap: a poll holds at most `max_bytes`.
                let target = needed.max(bytes.capacity().saturating_mul(2)).min(cap);
                if let Some(share) = &self.share {
                    share
                        .take(&mut held, target - bytes.capacity())
                        .map_err(|over| PollFailure::Throttled(over.to_string()))?;
                }
                bytes.reserve_exact(target - bytes.len());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((bytes, held))
    }
}

/// The body of a GraphQL-over-HTTP request for one query, written once: every
/// poll of a TargetApp's targets sends the same bytes.
#[derive(Debug, Clone)]
pub struct QueryBody(bytes::Bytes);

impl QueryBody {
    /// The body of `query`. TargetApps that poll the default state query (most
    /// do) share one copy of its body.
    pub fn new(query: &str) -> Self {
        static DEFAULT: std::sync::LazyLock<bytes::Bytes> =
            std::sync::LazyLock::new(|| body_of(crate::targetapp::DEFAULT_STATE_QUERY));
        if query == crate::targetapp::DEFAULT_STATE_QUERY {
            return Self(DEFAULT.clone());
        }
        Self(body_of(query))
    }

    /// The JSON text sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn body_of(query: &str) -> bytes::Bytes {
    serde_json::json!({ "query": query }).to_string().into()
}

const JSON: reqwest::header::HeaderValue =
    reqwest::header::HeaderValue::from_static("application/json");

/// A target's URL, parsed once for all its polls; a URL that does not parse is
/// a failed poll (admission and discovery only let valid ones through).
pub fn parse_url(url: &str) -> Result<reqwest::Url, PollFailure> {
    reqwest::Url::parse(url).map_err(|e| PollFailure::Transport(format!("not a URL: {e}")))
}

/// A 429's Retry-After in seconds (an HTTP date is not honoured), capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

fn classify(e: reqwest::Error) -> PollFailure {
    if let Some(refusal) = policy_refusal(&e) {
        return PollFailure::NotAllowed(truncate(&refusal));
    }
    if e.is_redirect() {
        // Only the egress client follows redirects, and only where its policy allows.
        return PollFailure::RedirectForbidden(root_cause(&e));
    }
    if let Some(tls) = tls_error(&e) {
        return PollFailure::Tls(truncate(&tls.to_string()));
    }
    let text = root_cause(&e);
    if e.is_connect() {
        PollFailure::Connect(text)
    } else if e.is_timeout() {
        PollFailure::Timeout(Duration::ZERO)
    } else {
        PollFailure::Transport(text)
    }
}

/// The endpoint policy's refusal behind a failed request (a name that resolves to
/// a forbidden address, or a Service that leads out of the namespace), if any.
fn policy_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<crate::tenancy::egress::PolicyRefusal>() {
            return Some(refusal.0.clone());
        }
        current = error.source();
    }
    None
}

/// The rustls error behind a failed request, if any. `io::Error::source()` skips
/// the error it wraps, so wrapped errors are looked into as well.
fn tls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // An io::Error wrapping another: its source() skips both, get_ref() does not.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            current = Some(inner);
            continue;
        }
        current = error.source();
    }
    None
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

/// Counts the nesting of JSON arrays and objects over a body read in pieces.
/// Strings are skipped (brackets inside them do not count); invalid JSON is left
/// to the parser.
#[derive(Debug, Default)]
struct DepthScanner {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl DepthScanner {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), PollFailure> {
        for &b in bytes {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_RESPONSE_DEPTH {
                        return Err(PollFailure::TooDeep(MAX_RESPONSE_DEPTH));
                    }
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }
}

/// How many GraphQL error messages a poll result keeps.
const MAX_ERRORS: usize = 5;

/// Reads a GraphQL response body: `data` (possibly partial) and `errors`.
/// Checked in order: nesting (before the recursive parser runs), UTF-8, JSON.
pub fn parse_response(bytes: &[u8]) -> Result<PollData, PollFailure> {
    DepthScanner::default().feed(bytes)?;
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(PollFailure::InvalidUtf8(e.valid_up_to()));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| PollFailure::InvalidJson(truncate(&e.to_string())))?;
    let Value::Object(mut top) = value else {
        return Err(PollFailure::NotGraphql);
    };
    // At most MAX_ERRORS messages are kept: they end up in Events and logs.
    let errors: Vec<String> = match top.remove("errors") {
        Some(Value::Array(errors)) => {
            let mut kept: Vec<String> = errors
                .iter()
                .take(MAX_ERRORS)
                .map(|e| {
                    truncate(
                        e.get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("(no message)"),
                    )
                })
                .collect();
            if errors.len() > MAX_ERRORS {
                kept.push(format!("(and {} more)", errors.len() - MAX_ERRORS));
            }
            kept
        }
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
    fn targetapps_of_the_default_query_share_its_body() {
        use crate::targetapp::DEFAULT_STATE_QUERY;
        let (one, two) = (
            QueryBody::new(DEFAULT_STATE_QUERY),
            QueryBody::new(DEFAULT_STATE_QUERY),
        );
        assert_eq!(one.as_bytes().as_ptr(), two.as_bytes().as_ptr());
        let sent: serde_json::Value = serde_json::from_slice(one.as_bytes()).unwrap();
        assert_eq!(sent, serde_json::json!({"query": DEFAULT_STATE_QUERY}));
        let other = QueryBody::new("query { version }");
        assert_eq!(other.as_bytes(), br#"{"query":"query { version }"}"#);
    }

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
        let many = serde_json::json!({
            "errors": (0..1000).map(|i| serde_json::json!({"message": format!("e{i}")})).collect::<Vec<_>>()
        });
        assert_eq!(
            parse_response(many.to_string().as_bytes()),
            Err(PollFailure::GraphqlErrors(
                "e0; e1; e2; e3; e4; (and 995 more)".into()
            ))
        );
        assert_eq!(parse_response(b"[]"), Err(PollFailure::NotGraphql));
        assert_eq!(
            parse_response(br#"{"data": 3}"#),
            Err(PollFailure::NotGraphql)
        );
        assert_eq!(
            parse_response(b"{\"data\": {\"a\": \"\xff\"}}"),
            Err(PollFailure::InvalidUtf8(16))
        );
        assert!(matches!(
            parse_response(br#"{"data": {"#),
            Err(PollFailure::InvalidJson(_))
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse_response(deep.as_bytes()),
            Err(PollFailure::TooDeep(MAX_RESPONSE_DEPTH))
        );
    }

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"data": {{"x": {}1{}}}}}"#,
            "[".repeat(depth - 2),
            "]".repeat(depth - 2)
        )
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_across_chunks() {
        assert!(parse_response(nested(MAX_RESPONSE_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse_response(nested(MAX_RESPONSE_DEPTH + 1).as_bytes()),
            Err(PollFailure::TooDeep(MAX_RESPONSE_DEPTH))
        );
        // Brackets in strings, escaped quotes included, are text.
        let text = format!(r#"{{"data": {{"x": "\"{}"}}}}"#, "[{".repeat(500));
        assert!(parse_response(text.as_bytes()).is_ok(), "{text}");
        // Fed a byte at a time (a trickled body), the count is the same.
        let body = nested(MAX_RESPONSE_DEPTH + 1);
        let mut scanner = DepthScanner::default();
        let fed: Result<Vec<()>, _> = body.as_bytes().chunks(1).map(|b| scanner.feed(b)).collect();
        assert_eq!(fed, Err(PollFailure::TooDeep(MAX_RESPONSE_DEPTH)));
        let mut scanner = DepthScanner::default();
        for piece in text.as_bytes().chunks(3) {
            scanner.feed(piece).unwrap();
        }
        assert_eq!(scanner.depth, 0);
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let headers = |value: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::RETRY_AFTER,
                reqwest::header::HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        assert_eq!(retry_after(&headers("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(" 0 ")), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&headers("-3")), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
        let limited = PollFailure::RateLimited(Some(Duration::from_secs(7)));
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        assert!(limited.to_string().contains("waits 7s"), "{limited}");
        assert_eq!(PollFailure::Status(503).retry_after(), None);
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        // io::Error::source() skips what it wraps: the wrapped error is looked into.
        assert!(std::error::Error::source(&io).is_none());
        let found = tls_error(&io).unwrap();
        assert!(found.to_string().contains("UnknownIssuer"), "{found}");
        // As hyper's connector wraps it: an io::Error in an io::Error.
        let twice = std::io::Error::other(io);
        assert!(tls_error(&twice).is_some());
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(tls_error(&plain).is_none());
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
        let every = [
            PollFailure::Timeout(Duration::ZERO),
            PollFailure::SlowBody(Duration::ZERO),
            PollFailure::Connect(String::new()),
            PollFailure::Tls(String::new()),
            PollFailure::Transport(String::new()),
            PollFailure::Status(503),
            PollFailure::Status(404),
            PollFailure::RateLimited(None),
            PollFailure::Redirect(302),
            PollFailure::RedirectForbidden(String::new()),
            PollFailure::TooLarge(1),
            PollFailure::TooDeep(1),
            PollFailure::InvalidUtf8(0),
            PollFailure::InvalidJson(String::new()),
            PollFailure::NotGraphql,
            PollFailure::GraphqlErrors(String::new()),
            PollFailure::NotAllowed(String::new()),
            PollFailure::Throttled(String::new()),
            PollFailure::Credentials(String::new()),
        ];
        let labels: Vec<&str> = every.iter().map(PollFailure::reason).collect();
        assert_eq!(labels, PollFailure::REASONS, "one distinct label each");
        assert!(!PollFailure::Status(429).retryable());
        assert!(!PollFailure::RateLimited(None).retryable());
        assert!(!PollFailure::SlowBody(Duration::ZERO).retryable());
        assert!(!PollFailure::Tls(String::new()).retryable());
        assert_eq!(PollFailure::Status(503).reason(), "http_5xx");
        assert_eq!(PollFailure::Status(404).reason(), "http_4xx");
        assert!(!PollFailure::Status(404).retryable());
        assert!(!PollFailure::TooLarge(1).retryable());
        assert!(PollFailure::Timeout(Duration::ZERO).retryable());
        assert!(!PollFailure::Throttled(String::new()).retryable());
    }
}
