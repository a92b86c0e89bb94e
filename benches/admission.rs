//! Admission latency: the review of a typical TargetApp in-process (validation and
//! defaulting), and through the apiserver the added latency of the webhooks on
//! 500 creates (with both webhooks registered against an in-process replica,
//! and without).
//!
//! ```text
//! cargo bench --bench admission
//! cargo bench --bench admission -- --creates 200
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench that cannot run should stop loudly

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let client = cp.admin().await;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for i in 0..creates {
        for (ns, samples) in [(&plain, &mut without), (&hooked, &mut with)] {
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
    cancel.cancel();
    let (w50, w99) = percentiles(with);
    let (o50, o99) = percentiles(without);
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
        "| added by the webhooks | {:.2} ms | {:.2} ms |",
        ms(w50.saturating_sub(o50)),
        ms(w99.saturating_sub(o99))
    );
    // Measured interleaved, so the ratio holds where absolute times swing.
    let ratio = |with: Duration, without: Duration| with.as_secs_f64() / without.as_secs_f64();
    println!(
        "| with / without webhooks | {:.2}× | {:.2}× |",
        ratio(w50, o50),
        ratio(w99, o99)
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
}
