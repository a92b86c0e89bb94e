//! Admission latency: the review of a typical TargetApp in-process (validation and
//! defaulting), and through the apiserver the latency of 500 creates in each of
//! four namespaces, interleaved: one no webhook selects, one that KCO's validating
//! webhook alone selects, one that both of KCO's webhooks select (an in-process
//! replica), and one that a webhook answering "allowed" at once selects — the
//! floor: what calling any webhook costs a create on this machine.
//!
//! ```text
//! cargo bench --bench admission
//! cargo bench --bench admission -- --creates 200
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

// The allocator `kco` runs with, so that the in-process review's figures are the
// operator's (on glibc's malloc, allocating and freeing were a third of it).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;

use kco::admission::Validator;
use kco::admission::cache::Caches;
use kco::admission::defaults::Defaults;
use kco::admission::review::{Admission, Hook};
use kco::targetapp::TargetApp;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::ControlPlane;
use support::webhooks::{
    labelled_namespace, register, replica, wait_ca_bundle, wait_ready, wait_serving,
};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99))
}

/// The documented example, as the apiserver would send it for review.
fn example_review() -> Vec<u8> {
    let text = include_str!("../docs/examples/targetapp-mina.yaml");
    let mut object: Value = serde_saphyr::from_str(text).unwrap();
    object["metadata"]["namespace"] = json!("mina");
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "bench", "name": "mina", "namespace": "mina", "operation": "CREATE",
            "kind": {"group": "operator.kco.local", "version": "v1alpha1", "kind": "TargetApp"},
            "resource": {"group": "operator.kco.local", "version": "v1alpha1", "resource": "targetapps"},
            "userInfo": {"username": "admin"}, "object": object, "oldObject": null, "dryRun": false
        }
    }))
    .unwrap()
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    kco::tls::install_crypto_provider();
    let caches = Caches::default();
    caches.mark_synced();
    let tenants = kco::tenancy::Tenants::new(kco::tenancy::Quota::default());
    tenants.mark_synced();
    let admission = Admission::new(
        Arc::new(Validator::new()),
        tenants,
        Defaults::default(),
        caches,
    );
    let body = example_review();
    let iterations = arg("--iterations", 20_000);
    for _ in 0..1000 {
        let _ = admission.review(Hook::Validate, &body);
    }
    let mut validate = Vec::with_capacity(iterations);
    let mut mutate = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let answer = admission.review(Hook::Validate, &body);
        validate.push(started.elapsed());
        assert_eq!(answer.body["response"]["allowed"], true);
        let started = Instant::now();
        let _ = admission.review(Hook::Mutate, &body);
        mutate.push(started.elapsed());
    }
    let (v50, v99) = percentiles(validate);
    let (m50, m99) = percentiles(mutate);

    // Through the apiserver: creates in a namespace the webhooks do not select,
    // then in one they do (both webhooks, one in-process replica).
    let creates = arg("--creates", 500);
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let lease_ns = cp.namespace("bench-adm-leases").await;
    let plain = cp.namespace("bench-adm-plain").await;
    let hooked = labelled_namespace(cp, "bench-adm").await;
    let cancel = CancellationToken::new();
    let long = (Duration::from_secs(3600), Duration::from_secs(1800));
    let replica = replica(
        cp,
        &lease_ns,
        "kco-bench",
        "kco-bench",
        long,
        cancel.clone(),
    )
    .await;
    let url = format!("https://127.0.0.1:{}", replica.webhook_addr.unwrap().port());
    register(cp, "kco-bench", &hooked, &[url]).await;
    wait_ca_bundle(cp, "kco-bench").await;
    wait_ready(&replica).await;
    // The apiserver learns of the configuration through its informer.
    wait_serving(cp, &hooked).await;
    let validate_only = labelled_namespace(cp, "bench-adm-validate").await;
    register_validating_only(cp, "kco-bench", &validate_only).await;
    let floor = labelled_namespace(cp, "bench-adm-floor").await;
    let calls = noop_webhook(cp, &floor, cancel.clone()).await;
    let client = cp.admin().await;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut validated = Vec::new();
    let mut nooped = Vec::new();
    let called_before = calls.load(Ordering::Relaxed);
    for i in 0..creates {
        for (ns, samples) in [
            (&plain, &mut without),
            (&hooked, &mut with),
            (&validate_only, &mut validated),
            (&floor, &mut nooped),
        ] {
            let app: TargetApp = serde_json::from_value(json!({
                "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
                "metadata": {"name": format!("app-{i}")},
                "spec": {"selector": {"matchLabels": {"app": "mina"}}}
            }))
            .unwrap();
            let api: Api<TargetApp> = Api::namespaced(client.clone(), ns);
            let started = Instant::now();
            let created = api.create(&PostParams::default(), &app).await.unwrap();
            samples.push(started.elapsed());
            if ns == &hooked {
                assert!(created.spec.polling_interval.is_some(), "the webhooks ran");
            }
        }
    }
    assert_eq!(
        calls.load(Ordering::Relaxed) - called_before,
        creates,
        "the no-op webhook was called once per create in its namespace"
    );
    cancel.cancel();
    let (w50, w99) = percentiles(with);
    let (o50, o99) = percentiles(without);
    let (v50_, v99_) = percentiles(validated);
    let (n50, n99) = percentiles(nooped);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\n| measure | p50 | p99 |\n|---|---|---|");
    println!(
        "| in-process validate review ({iterations}) | {:.0} µs | {:.0} µs |",
        us(v50),
        us(v99)
    );
    println!(
        "| in-process mutate review ({iterations}) | {:.0} µs | {:.0} µs |",
        us(m50),
        us(m99)
    );
    println!(
        "| create without webhooks ({creates}) | {:.2} ms | {:.2} ms |",
        ms(o50),
        ms(o99)
    );
    println!(
        "| create with both webhooks ({creates}) | {:.2} ms | {:.2} ms |",
        ms(w50),
        ms(w99)
    );
    println!(
        "| create with KCO's validating webhook only ({creates}) | {:.2} ms | {:.2} ms |",
        ms(v50_),
        ms(v99_)
    );
    println!(
        "| create with one webhook that allows at once ({creates}) | {:.2} ms | {:.2} ms |",
        ms(n50),
        ms(n99)
    );
    println!(
        "| added by the webhooks | {:.2} ms | {:.2} ms |",
        ms(w50.saturating_sub(o50)),
        ms(w99.saturating_sub(o99))
    );
    // Measured interleaved, so the ratio holds where absolute times swing.
    let ratio = |with: Duration, without: Duration| with.as_secs_f64() / without.as_secs_f64();
    println!(
        "| with both webhooks / without | {:.2}× | {:.2}× |",
        ratio(w50, o50),
        ratio(w99, o99)
    );
    println!(
        "| with the validating webhook only / without | {:.2}× | {:.2}× |",
        ratio(v50_, o50),
        ratio(v99_, o99)
    );
    println!(
        "| with one no-op webhook / without (the floor) | {:.2}× | {:.2}× |",
        ratio(n50, o50),
        ratio(n99, o99)
    );
    // One line per figure for `./build.sh bench`'s report.
    println!();
    println!(
        "headline | admission | in-process validate review, p50 / p99 µs | {:.0} / {:.0}",
        us(v50),
        us(v99)
    );
    println!(
        "headline | admission | a create through both webhooks, of a plain create, p50 / p99 | {:.2}× / {:.2}×",
        ratio(w50, o50),
        ratio(w99, o99)
    );
    println!(
        "headline | admission | a create through the validating webhook only, of a plain create, p50 / p99 | {:.2}× / {:.2}×",
        ratio(v50_, o50),
        ratio(v99_, o99)
    );
    println!(
        "headline | admission | a create through one no-op webhook (the floor), of a plain create, p50 / p99 | {:.2}× / {:.2}×",
        ratio(n50, o50),
        ratio(n99, o99)
    );
}

/// Registers KCO's validating webhook (only) for `ns`, with the caBundle the
/// replica wrote into its own configuration `name`; returns once the apiserver
/// calls it (a dry-run create it refuses).
async fn register_validating_only(cp: &ControlPlane, name: &str, ns: &str) {
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin().await);
    let mut config = configs.get(name).await.unwrap();
    config.metadata = kube::api::ObjectMeta {
        name: Some(format!("{name}-validate-only")),
        ..Default::default()
    };
    for hook in config.webhooks.iter_mut().flatten() {
        hook.name = format!("only.{}", hook.name);
        hook.namespace_selector = Some(
            serde_json::from_value(json!({"matchLabels": {"kco-admission-test": ns}})).unwrap(),
        );
    }
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    // A query on a field the Mina schema lacks: only the webhook refuses it.
    let refused: TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"app": "mina"}}, "stateQuery": "{ noSuchField }"}
    }))
    .unwrap();
    dry_run_until(cp, ns, &refused, "the validating webhook", |created| {
        !created
    })
    .await;
}

/// Dry-run creates `probe` in `ns` until `called(whether it was created)` says
/// the apiserver called the webhook under test (it picks a new configuration up
/// from its informer a moment after it is written); panics after 30 s.
async fn dry_run_until(
    cp: &ControlPlane,
    ns: &str,
    probe: &TargetApp,
    webhook: &str,
    mut called: impl FnMut(bool) -> bool,
) {
    let apps: Api<TargetApp> = Api::namespaced(cp.admin().await, ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !called(apps.create(&dry, probe).await.is_ok()) {
        assert!(Instant::now() < deadline, "{webhook} was never called");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Serves a webhook that allows every request at once (over the same TLS server
/// KCO's webhooks use) and registers it for `ns`; returns its call count once the
/// apiserver calls it.
async fn noop_webhook(cp: &ControlPlane, ns: &str, cancel: CancellationToken) -> Arc<AtomicUsize> {
    use axum::routing::post;
    let authority = support::pki::Authority::new("kco-bench-noop").unwrap();
    let pem = authority.server(&["127.0.0.1"]).unwrap();
    let certificate = Arc::new(kco::admission::server::Certificate::default());
    certificate.load(&pem.cert, &pem.key).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let router = axum::Router::new().route(
        "/allow",
        post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                axum::Json(json!({
                    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": review["request"]["uid"], "allowed": true}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(kco::admission::server::serve(
        listener,
        router,
        certificate,
        cancel,
    ));
    use base64::Engine as _;
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "kco-bench-noop"},
        "webhooks": [{
            "name": "allow.bench.kco.local",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "matchPolicy": "Equivalent", "timeoutSeconds": 10,
            "namespaceSelector": {"matchLabels": {"kco-admission-test": ns}},
            "rules": [{"apiGroups": ["operator.kco.local"], "apiVersions": ["*"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["targetapps"]}],
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/allow"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&authority.cert_pem)
            }
        }]
    }))
    .unwrap();
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin().await);
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    let probe: TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": "probe"}, "spec": {"selector": {"matchLabels": {"app": "mina"}}}
    }))
    .unwrap();
    dry_run_until(cp, ns, &probe, "the no-op webhook", |_| {
        calls.load(Ordering::Relaxed) > 0
    })
    .await;
    calls
}
