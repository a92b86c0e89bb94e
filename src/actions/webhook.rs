//! `webhook`: POSTs (or PUTs) a JSON description of the firing to a URL the tenant
//! names. The URL passes the tenant's endpoint policy before the request and on
//! every resolved address and redirect; the body is signed with HMAC-SHA256 when a
//! Secret is given; retries reuse the same idempotency key, so a receiver can drop
//! duplicates; no cluster credential is ever sent.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};

use super::params::{Params, done, require};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};
use crate::tenancy::Purpose;
use crate::tenancy::egress::PolicyRefusal;

pub struct Webhook;

const PARAMS: &[&str] = &[
    "url",
    "method",
    "headers",
    "timeoutSeconds",
    "secretRef",
    "caSecretRef",
    "auth",
    "urlSecretRef",
    "format",
    "severity",
    "routingKeySecretRef",
];

/// Headers KCO sets itself: a tenant may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "idempotency-key",
];

/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
/// The time is signed with the body, so that a receiver can refuse a replayed
/// request (docs/targetapp.md shows how to verify it).
pub const SIGNATURE_HEADER: &str = "x-kco-signature";
/// How far a signature's time may be from a receiver's clock in [`verify`].
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// The idempotency key header (also in the body).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Attempts per firing (the first and two retries), all with one idempotency key.
const ATTEMPTS: u32 = 3;
/// Per-request timeout unless `timeoutSeconds` says otherwise.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Secret value used as an HMAC key or a CA bundle.
const MAX_SECRET_BYTES: usize = 64 * 1024;

impl Action for Webhook {
    /// The same firing is sent with the same idempotency key, which receivers
    /// use to apply it once.
    fn resumable(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "webhook"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        match (params.get("url"), params.get("urlSecretRef")) {
            (Some(_), Some(_)) => problems.push(ParamProblem::at(
                "urlSecretRef",
                "give url or urlSecretRef, not both",
            )),
            (None, Some(_)) => {
                secret_ref(params, "urlSecretRef", &mut problems);
            }
            _ => require(params, "url", &mut problems),
        }
        if let Some(url) = params.string("url", &mut problems)
            && let Err(why) = check_url(&url)
        {
            problems.push(ParamProblem::at("url", why));
        }
        check_format(params, &mut problems);
        params.choice("method", &["POST", "PUT"], &mut problems);
        params.int("timeoutSeconds", 1, 300, &mut problems);
        match params.get("headers") {
            None => {}
            Some(Value::Object(headers)) => {
                for (name, value) in headers {
                    let at = format!("headers.{name}");
                    let lower = name.to_ascii_lowercase();
                    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        problems.push(ParamProblem::at(&at, "not a valid header name"));
                    } else if RESERVED_HEADERS.contains(&lower.as_str())
                        || lower.starts_with("x-kco-")
                    {
                        problems.push(ParamProblem::at(&at, "KCO sets this header itself"));
                    }
                    match value.as_str() {
                        Some(v) if reqwest::header::HeaderValue::from_str(v).is_ok() => {}
                        _ => problems
                            .push(ParamProblem::at(&at, "must be a string of visible ASCII")),
                    }
                }
            }
            Some(_) => problems.push(ParamProblem::at(
                "headers",
                "must be a map of header names to strings",
            )),
        }
        for key in ["secretRef", "caSecretRef"] {
            secret_ref(params, key, &mut problems);
        }
        if let Some(auth) = auth_of(params, &mut problems)
            && let Some(Value::Object(headers)) = params.get("headers")
            && let Some(twice) = headers
                .keys()
                .find(|h| h.eq_ignore_ascii_case(&auth.header))
        {
            problems.push(ParamProblem::at(
                &format!("headers.{twice}"),
                "auth sets this header",
            ));
        }
        done(problems)
    }

    /// The whole execution (every attempt) is bounded by ACTION_EXECUTION_TIMEOUT;
    /// `timeoutSeconds` bounds each request.
    fn timeout(&self, _params: &Params) -> Option<Duration> {
        None
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let mut ignored = Vec::new();
            let (url, shown) = destination(ctx, params).await?;
            let method = params.choice("method", &["POST", "PUT"], &mut ignored);
            let method = if method.as_deref() == Some("PUT") {
                reqwest::Method::PUT
            } else {
                reqwest::Method::POST
            };
            // The policy again at run time: the object may predate the policy,
            // and a URL from a Secret is seen only now.
            ctx.egress
                .check_url(&ctx.namespace, Purpose::Webhook, &url)
                .map_err(|why| ActionError::NotAllowed(format!("webhook URL {shown}: {why}")))?;
            let secret = optional_secret(ctx, params, "secretRef").await?;
            let ca = optional_secret(ctx, params, "caSecretRef").await?;
            let auth = auth_header(ctx, params).await?;
            let key = idempotency_key(ctx);
            let body = serde_json::to_vec(&formatted(ctx, params, &key).await?)
                .map_err(|e| ActionError::Failed(format!("cannot encode the body: {e}")))?;
            if ctx.dry_run {
                return Ok(Outcome {
                    message: format!(
                        "would {method} {} bytes to {shown} (idempotency key {key}{}) [dry run: nothing sent]",
                        body.len(),
                        if secret.is_some() { ", signed" } else { "" }
                    ),
                });
            }
            let client = ctx
                .egress
                .client(&ctx.namespace, Purpose::Webhook, ca.as_deref())
                .map_err(ActionError::Invalid)?;
            let mut request = client
                .request(method.clone(), &url)
                .timeout(
                    params
                        .seconds("timeoutSeconds")
                        .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
                )
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(IDEMPOTENCY_HEADER, &key)
                .header("x-kco-correlation-id", &ctx.correlation_id);
            if let Some(Value::Object(headers)) = params.get("headers") {
                for (name, value) in headers {
                    if let Some(value) = value.as_str() {
                        request = request.header(name.as_str(), value);
                    }
                }
            }
            if let Some((name, value)) = auth {
                request = request.header(name, value);
            }
            let delivery = Delivery {
                method,
                shown,
                key,
                body,
                signing: secret,
            };
            delivery.send(request).await
        })
    }
}

/// One firing's request, sent with retries.
struct Delivery {
    method: reqwest::Method,
    /// The URL as reports may show it (a URL from a Secret is not shown).
    shown: String,
    key: String,
    body: Vec<u8>,
    /// The HMAC key the body is signed with.
    signing: Option<Vec<u8>>,
}

impl Delivery {
    async fn send(self, request: reqwest::RequestBuilder) -> Result<Outcome, ActionError> {
        let Self {
            method,
            shown,
            key,
            body,
            signing,
        } = self;
        let request = request.body(body.clone());
        let mut delay = Duration::from_millis(250);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let Some(mut this) = request.try_clone() else {
                return Err(ActionError::Failed("cannot repeat the request".into()));
            };
            // Each attempt is signed at the time it is sent.
            if let Some(signing) = &signing {
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                this = this.header(SIGNATURE_HEADER, sign(signing, now, &body));
            }
            match this.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(Outcome {
                            message: format!(
                                "{method} {shown}: HTTP {} (idempotency key {key}, attempt {attempt})",
                                status.as_u16()
                            ),
                        });
                    }
                    last = format!("{method} {shown}: HTTP {}", status.as_u16());
                    if status.is_redirection() {
                        return Err(ActionError::Refused(format!(
                            "{last}: redirect not followed"
                        )));
                    }
                    let retry = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                    if !retry {
                        return Err(ActionError::Refused(last));
                    }
                }
                Err(e) => {
                    if let Some(refusal) = policy_refusal(&e) {
                        return Err(ActionError::NotAllowed(format!(
                            "webhook URL {shown}: {refusal}"
                        )));
                    }
                    // The error's own copy of the URL stays out: it may be a secret.
                    last = format!("{method} {shown}: {}", describe(&e.without_url()));
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(ActionError::Failed(format!(
            "{last} (after {ATTEMPTS} attempts)"
        )))
    }
}

/// The receiver's URL, and how reports show it: `url` as written, or the URL
/// read from `urlSecretRef` (shown as the Secret it came from).
async fn destination(
    ctx: &ActionContext,
    params: &Params,
) -> Result<(String, String), ActionError> {
    let mut ignored = Vec::new();
    if let Some(url) = params.string("url", &mut ignored) {
        return Ok((url.clone(), url));
    }
    let (name, key) = secret_ref(params, "urlSecretRef", &mut ignored)
        .ok_or_else(|| ActionError::Invalid("url or urlSecretRef is required".into()))?;
    let shown = format!("(the URL in Secret {name})");
    let bytes = read_secret(ctx, &name, &key).await?;
    let url = std::str::from_utf8(&bytes)
        .map(str::trim)
        .map_err(|_| ActionError::Invalid(format!("{shown} is not text")))?
        .to_owned();
    check_url(&url).map_err(|why| ActionError::Invalid(format!("{shown}: {why}")))?;
    Ok((url, shown))
}

/// The bytes of the Secret key `field` names, if it names one.
async fn optional_secret(
    ctx: &ActionContext,
    params: &Params,
    field: &str,
) -> Result<Option<Vec<u8>>, ActionError> {
    match secret_ref(params, field, &mut Vec::new()) {
        Some((name, key)) => Ok(Some(read_secret(ctx, &name, &key).await?)),
        None => Ok(None),
    }
}

/// The header `auth` asks for, its value from its Secret.
async fn auth_header(
    ctx: &ActionContext,
    params: &Params,
) -> Result<Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>, ActionError> {
    let Some(auth) = auth_of(params, &mut Vec::new()) else {
        return Ok(None);
    };
    let (name, key) = (&auth.secret_ref.name, &auth.secret_ref.key);
    let credential = read_secret(ctx, name, key).await?;
    crate::monitor::credentials::header_of(&auth, &credential)
        .map(Some)
        .map_err(|why| ActionError::Invalid(format!("Secret {name} key {key:?}: {why}")))
}

/// The body in the receiver's `format`.
async fn formatted(ctx: &ActionContext, params: &Params, key: &str) -> Result<Value, ActionError> {
    use super::receivers::{Extra, FORMATS, Format, SEVERITIES, render};
    let mut ignored = Vec::new();
    let format = params
        .choice("format", FORMATS, &mut ignored)
        .and_then(|f| Format::named(&f))
        .unwrap_or(Format::Json);
    let routing_key = match optional_secret(ctx, params, "routingKeySecretRef").await? {
        Some(bytes) => Some(
            String::from_utf8(bytes)
                .map(|k| k.trim().to_owned())
                .map_err(|_| ActionError::Invalid("the routing key is not text".into()))?,
        ),
        None => None,
    };
    let severity = params
        .choice("severity", SEVERITIES, &mut ignored)
        .unwrap_or_else(|| "warning".to_owned());
    let extra = Extra {
        routing_key: routing_key.as_deref(),
        severity: &severity,
    };
    Ok(render(format, &body(ctx, key), extra))
}

/// Why `url` cannot be a receiver's URL.
fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Err(e) => Err(format!("not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Err(format!(
            "scheme {} is not allowed (http or https only)",
            u.scheme()
        )),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => Err(
            "credentials in the URL are not allowed (use secretRef to sign the body, or auth)"
                .to_owned(),
        ),
        Ok(_) => Ok(()),
    }
}

/// Checks `format` and what it needs: PagerDuty's `routingKeySecretRef` and
/// `severity` go with it alone.
fn check_format(params: &Params, problems: &mut Vec<ParamProblem>) {
    let format = params
        .choice("format", super::receivers::FORMATS, problems)
        .and_then(|f| super::receivers::Format::named(&f))
        .unwrap_or(super::receivers::Format::Json);
    let pagerduty = format == super::receivers::Format::PagerDuty;
    params.choice("severity", super::receivers::SEVERITIES, problems);
    match (pagerduty, params.get("routingKeySecretRef").is_some()) {
        (true, false) => problems.push(ParamProblem::at(
            "routingKeySecretRef",
            "format pagerduty needs the integration key's Secret",
        )),
        (false, true) => problems.push(ParamProblem::at(
            "routingKeySecretRef",
            "only format pagerduty takes a routing key",
        )),
        (true, true) => {
            secret_ref(params, "routingKeySecretRef", problems);
        }
        (false, false) => {}
    }
    if !pagerduty && params.get("severity").is_some() {
        problems.push(ParamProblem::at(
            "severity",
            "only format pagerduty takes a severity",
        ));
    }
}

/// `auth`: a header whose value comes from a Secret, as a TargetApp's
/// `spec.auth`.
fn auth_of(params: &Params, problems: &mut Vec<ParamProblem>) -> Option<crate::targetapp::Auth> {
    let value = params.get("auth")?;
    if let Some(extra) = value.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["secretRef", "header", "scheme"].contains(&k.as_str()))
    }) {
        problems.push(ParamProblem::at(&format!("auth.{extra}"), "unknown field"));
        return None;
    }
    let auth: crate::targetapp::Auth = match serde_json::from_value(value.clone()) {
        Ok(auth) => auth,
        Err(e) => {
            problems.push(ParamProblem::at(
                "auth",
                format!("must be {{secretRef: {{name, key}}, header?, scheme?}}: {e}"),
            ));
            return None;
        }
    };
    let mut found = crate::monitor::credentials::check(&auth);
    let lower = auth.header.to_ascii_lowercase();
    if found.iter().all(|(field, _)| *field != "header")
        && (RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-kco-"))
    {
        found.push(("header", format!("{} is set by KCO", auth.header)));
    }
    if found.is_empty() {
        return Some(auth);
    }
    for (field, why) in found {
        problems.push(ParamProblem::at(&format!("auth.{field}"), why));
    }
    None
}

/// `{name, key}` of a Secret in the TargetApp's namespace, if `key` is given.
fn secret_ref(
    params: &Params,
    field: &str,
    problems: &mut Vec<ParamProblem>,
) -> Option<(String, String)> {
    let value = params.get(field)?;
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let key = value
        .get("key")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let extra = value
        .as_object()
        .map(|o| o.keys().any(|k| k != "name" && k != "key"))
        .unwrap_or(true);
    match (name, key) {
        (Some(name), Some(key)) if !extra => match crate::names::subdomain(name) {
            Ok(()) => Some((name.to_owned(), key.to_owned())),
            Err(why) => {
                problems.push(ParamProblem::at(&format!("{field}.name"), why));
                None
            }
        },
        _ => {
            problems.push(ParamProblem::at(
                field,
                "must be {name, key} of a Secret in the TargetApp's namespace",
            ));
            None
        }
    }
}

/// Reads one key of a Secret with the tenant's service account.
async fn read_secret(ctx: &ActionContext, name: &str, key: &str) -> Result<Vec<u8>, ActionError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let what = format!("get secret {}/{name}", ctx.namespace);
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| ActionError::from_kube(&what, e))?;
    let value = secret
        .data
        .and_then(|mut data| data.remove(key))
        .map(|bytes| bytes.0)
        .ok_or_else(|| ActionError::NotFound(format!("{what}: it has no key {key:?}")))?;
    if value.is_empty() || value.len() > MAX_SECRET_BYTES {
        return Err(ActionError::Invalid(format!(
            "{what}: key {key:?} must hold 1..={MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(value)
}

/// One key per firing and action: the same on every attempt and on every replica.
pub fn idempotency_key(ctx: &ActionContext) -> String {
    let uid = ctx.app.metadata.uid.as_deref().unwrap_or_default();
    let mut material = format!("{uid}/{}/{}/{}", ctx.rule, ctx.target, ctx.fired_at);
    // The first action's key is the firing's alone; a later one's names its step.
    if ctx.step > 0 {
        material.push_str(&format!("/{}", ctx.step));
    }
    hex(&ring::digest::digest(&ring::digest::SHA256, material.as_bytes()).as_ref()[..16])
}

/// The JSON body a receiver gets.
pub fn body(ctx: &ActionContext, key: &str) -> Value {
    json!({
        "targetApp": ctx.app.metadata.name,
        "namespace": ctx.namespace,
        "target": ctx.target,
        "pod": ctx.pod,
        "rule": ctx.rule,
        "field": ctx.field,
        "oldValue": ctx.old,
        "newValue": ctx.new,
        "firedAt": ctx.fired_at.to_string(),
        "step": ctx.step + 1,
        "idempotencyKey": key,
        "correlationId": ctx.correlation_id,
    })
}

/// `t=<timestamp>,v1=<hex>`: HMAC-SHA256 under `secret` of the timestamp (Unix
/// seconds), a dot and the body.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign().as_ref().to_vec()
}

/// What a receiver does with [`SIGNATURE_HEADER`]: checks that `header` signs
/// `body` under `secret` at a time within `tolerance` of `now` (Unix seconds).
pub fn verify(
    header: &str,
    secret: &[u8],
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("the signature has no valid t=")?;
    let age = now.abs_diff(timestamp);
    if age > tolerance.as_secs() {
        return Err(format!(
            "the signature is {age}s from now; at most {}s are accepted",
            tolerance.as_secs()
        ));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = timestamp.to_string().into_bytes();
    message.push(b'.');
    message.extend_from_slice(body);
    let matches = signatures
        .iter()
        .any(|sig| unhex(sig).is_some_and(|tag| ring::hmac::verify(&key, &message, &tag).is_ok()));
    if matches {
        Ok(())
    } else {
        Err("no v1 signature matches the body".to_owned())
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The endpoint-policy refusal behind a request error, if that is what it was.
fn policy_refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refusal) = err.downcast_ref::<PolicyRefusal>() {
            return Some(refusal.to_string());
        }
        source = err.source();
    }
    None
}

/// A request error in words (reqwest's Display hides the cause).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        text = format!("{text}: {err}");
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_take_what_they_need_and_nothing_else() {
        let problems = |params: Value| -> Vec<String> {
            let params = serde_json::from_value(params).unwrap();
            match super::super::Registry::builtin().validate("webhook", Some(&params)) {
                Ok(()) => Vec::new(),
                Err(found) => found.into_iter().map(|p| p.path).collect(),
            }
        };
        let url = "https://events.pagerduty.com/v2/enqueue";
        let key = json!({"name": "kco-webhook-auth", "key": "pagerduty"});
        assert_eq!(
            problems(
                json!({"url": url, "format": "pagerduty", "severity": "critical", "routingKeySecretRef": key})
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(
                json!({"urlSecretRef": {"name": "kco-webhook-url", "key": "url"}, "format": "slack"})
            ),
            Vec::<String>::new()
        );
        for (params, path) in [
            (
                json!({"url": url, "format": "pagerduty"}),
                "routingKeySecretRef",
            ),
            (
                json!({"url": url, "routingKeySecretRef": key}),
                "routingKeySecretRef",
            ),
            (
                json!({"url": url, "format": "slack", "severity": "critical"}),
                "severity",
            ),
            (json!({"url": url, "format": "xml"}), "format"),
            (
                json!({"url": url, "urlSecretRef": {"name": "a", "key": "b"}}),
                "urlSecretRef",
            ),
            (json!({"format": "slack"}), "url"),
        ] {
            assert_eq!(problems(params.clone()), [path], "{params}");
        }
    }

    #[test]
    fn a_receivers_credential_is_a_header_from_a_secret_checked_like_a_polls() {
        let problems = |auth: Value, headers: Value| -> Vec<String> {
            let params = serde_json::from_value(json!({
                "url": "https://hooks.example.com/x", "auth": auth, "headers": headers
            }))
            .unwrap();
            match super::super::Registry::builtin().validate("webhook", Some(&params)) {
                Ok(()) => Vec::new(),
                Err(found) => found.into_iter().map(|p| p.path).collect(),
            }
        };
        let good =
            json!({"secretRef": {"name": "kco-webhook-auth", "key": "token"}, "scheme": "Bearer"});
        assert_eq!(
            problems(good.clone(), json!({"X-Team": "chain"})),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(good, json!({"authorization": "Bearer in-the-clear"})),
            ["headers.authorization"]
        );
        assert_eq!(
            problems(
                json!({"secretRef": {"name": "a", "key": "b"}, "header": "Host"}),
                json!({})
            ),
            ["auth.header"]
        );
        assert_eq!(
            problems(
                json!({"secretRef": {"name": "a", "key": "b"}, "shceme": "Bearer"}),
                json!({})
            ),
            ["auth.shceme"]
        );
        assert_eq!(problems(json!({"scheme": "Bearer"}), json!({})), ["auth"]);
        for own in ["Idempotency-Key", "X-KCO-Signature", "x-kco-correlation-id"] {
            assert_eq!(
                problems(
                    json!({"secretRef": {"name": "a", "key": "b"}, "header": own}),
                    json!({})
                ),
                ["auth.header"],
                "{own}"
            );
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_of_the_time_and_the_body() {
        // RFC 4231 test case 2's key and message, with the message written as
        // "<t>.<body>": the MAC is HMAC-SHA256 of exactly that text.
        let header = sign(b"Jefe", 1_700_000_000, b"what do ya want for nothing?");
        let expected = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe"),
            b"1700000000.what do ya want for nothing?",
        );
        assert_eq!(
            header,
            format!("t=1700000000,v1={}", hex(expected.as_ref()))
        );
        let tolerance = SIGNATURE_TOLERANCE;
        let body = b"what do ya want for nothing?";
        assert_eq!(
            verify(&header, b"Jefe", body, 1_700_000_100, tolerance),
            Ok(())
        );
        for (why, result) in [
            (
                "another key",
                verify(&header, b"other", body, 1_700_000_000, tolerance),
            ),
            (
                "another body",
                verify(&header, b"Jefe", b"x", 1_700_000_000, tolerance),
            ),
            (
                "replayed late",
                verify(&header, b"Jefe", body, 1_700_000_301, tolerance),
            ),
            (
                "another time",
                verify(
                    &header.replace("t=1700000000", "t=1700000001"),
                    b"Jefe",
                    body,
                    1_700_000_000,
                    tolerance,
                ),
            ),
            ("no time", verify("v1=00", b"Jefe", body, 0, tolerance)),
        ] {
            assert!(result.is_err(), "{why}");
        }
    }

    #[test]
    fn hex_encodes_every_byte() {
        assert_eq!(hex(&[0, 15, 16, 255]), "000f10ff");
    }
}
