//! Multi-tenancy: TenantQuotas set by cluster admins bound each tenant's
//! TargetApps, polls and actions, and its URLs; other tenants are unaffected.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kco::admission::Validator;
use kco::admission::cache::Caches;
use kco::admission::defaults::Defaults;
use kco::admission::review::{Admission, Hook};
use kco::simulator::SyncStatus;
use kco::targetapp::TargetApp;
use kco::tenancy::{Egress, Quota, TenantQuota, Tenants};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::ControlPlane;
use support::bed::Bed;
use support::webhooks::{
    labelled_namespace, register, replica, wait_ca_bundle, wait_ready, wait_serving,
};
use tokio_util::sync::CancellationToken;

/// Tests here change cluster-wide objects (TenantQuotas, webhooks): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn apply_quota(cp: &ControlPlane, name: &str, spec: Value) {
    let quotas: Api<TenantQuota> = Api::all(cp.admin().await);
    let quota: TenantQuota = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TenantQuota",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    quotas
        .patch(
            name,
            &PatchParams::apply("kco-test").force(),
            &Patch::Apply(&quota),
        )
        .await
        .unwrap();
}

async fn label(cp: &ControlPlane, ns: &str, key: &str, value: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin().await);
    let patch = json!({"metadata": {"labels": {key: value}}});
    namespaces
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn targetapp(name: &str, spec: Value) -> TargetApp {
    serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_targetapp_quota_is_refused_and_another_is_not() {
    let _serial = SERIAL.lock().await;
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let lease_ns = cp.namespace("tq-leases").await;
    let a = labelled_namespace(cp, "tq-a").await;
    let b = labelled_namespace(cp, "tq-b").await;
    label(cp, &a, "tenant", "a").await;
    apply_quota(
        cp,
        "tenant-a",
        json!({"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "maxTargetApps": 2}),
    )
    .await;
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let long = (Duration::from_secs(3600), Duration::from_secs(1800));
    let r = replica(cp, &lease_ns, "kco-tq", "kco-tq", long, cancel.clone()).await;
    let url = format!("https://127.0.0.1:{}", r.webhook_addr.unwrap().port());
    // One registration for both tenants' namespaces (the label register() selects).
    label(cp, &b, "kco-admission-test", &a).await;
    register(cp, "kco-tq", &a, &[url]).await;
    wait_ca_bundle(cp, "kco-tq").await;
    wait_ready(&r).await;
    wait_serving(cp, &a).await;
    wait_serving(cp, &b).await;

    let client = cp.admin().await;
    let apps_a: Api<TargetApp> = Api::namespaced(client.clone(), &a);
    let apps_b: Api<TargetApp> = Api::namespaced(client.clone(), &b);
    let spec = json!({"selector": {"matchLabels": {"app": "mina"}}});
    for i in 0..2 {
        apps_a
            .create(
                &PostParams::default(),
                &targetapp(&format!("a-{i}"), spec.clone()),
            )
            .await
            .unwrap();
    }
    // The count comes from the replica's TargetApp watch: wait until a dry-run
    // create of a third is refused, then the real one must be.
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while apps_a
        .create(&dry, &targetapp("a-2", spec.clone()))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the count never reached the quota"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = apps_a
        .create(&PostParams::default(), &targetapp("a-2", spec.clone()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 2 TargetApps and TenantQuota tenant-a allows at most 2"),
        "{err}"
    );
    // Tenant B (no TenantQuota: the default quota, no count limit) is unaffected.
    for i in 0..3 {
        apps_b
            .create(
                &PostParams::default(),
                &targetapp(&format!("b-{i}"), spec.clone()),
            )
            .await
            .unwrap();
    }

    // Two creates that both passed admission (here: a namespace of the tenant the
    // webhooks do not watch): the newest is marked QuotaExceeded and not polled.
    let late = cp.namespace("tq-a-late").await;
    label(cp, &late, "tenant", "a").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let apps_late: Api<TargetApp> = Api::namespaced(client.clone(), &late);
    apps_late
        .create(&PostParams::default(), &targetapp("late", spec.clone()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = apps_late
            .get("late")
            .await
            .unwrap()
            .status
            .unwrap_or_default();
        let message = status
            .conditions
            .first()
            .map(|c| c.message.clone())
            .unwrap_or_default();
        if message.contains("QuotaExceeded") {
            assert_eq!(status.phase, Some(kco::targetapp::Phase::Failed));
            assert!(
                message.contains("TenantQuota tenant-a allows 2"),
                "{message}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never marked: {status:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The leader writes the TenantQuota's usage: its two namespaces, three TargetApps.
    let quotas: Api<TenantQuota> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let usage = quotas
            .get("tenant-a")
            .await
            .unwrap()
            .status
            .and_then(|s| s.usage);
        if let Some(usage) = &usage
            && usage.target_apps == 3
        {
            assert_eq!(usage.namespaces, 2, "{usage:?}");
            assert_eq!(usage.fullest_namespace.as_deref(), Some(a.as_str()));
            assert_eq!(usage.fullest_count, 2);
            break;
        }
        assert!(Instant::now() < deadline, "usage never written: {usage:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And whether it applies, whether it shares namespaces, and the generation
    // it describes.
    let conditions = |q: &TenantQuota| -> Vec<(String, String, String)> {
        q.status
            .iter()
            .flat_map(|s| &s.conditions)
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    };
    let wait_quota = |what: &'static str, done: Box<dyn Fn(&TenantQuota) -> bool>| {
        let quotas = quotas.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let q = quotas.get("tenant-a").await.unwrap();
                if done(&q) {
                    return q;
                }
                assert!(Instant::now() < deadline, "never {what}: {:?}", q.status);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let q = wait_quota(
        "Ready",
        Box::new(|q| q.status.as_ref().is_some_and(|s| !s.conditions.is_empty())),
    )
    .await;
    assert_eq!(
        conditions(&q),
        [
            ("Ready".into(), "True".into(), "Applied".into()),
            ("Overlapping".into(), "False".into(), "NoOverlap".into())
        ]
    );
    let status = q.status.clone().unwrap();
    assert_eq!(status.observed_generation, q.metadata.generation);
    assert_eq!(status.conditions[0].message, "applies to 2 namespaces");
    // A second quota over one of its namespaces, and a changed spec.
    apply_quota(
        cp,
        "tenant-a-extra",
        json!({"namespaces": [a.clone()], "maxPollsPerSecond": 5}),
    )
    .await;
    apply_quota(
        cp,
        "tenant-a",
        json!({"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "maxTargetApps": 3}),
    )
    .await;
    let q = wait_quota(
        "Overlapping",
        Box::new(|q| {
            q.status.as_ref().is_some_and(|s| {
                s.observed_generation == q.metadata.generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Overlapping" && c.status == "True")
            })
        }),
    )
    .await;
    let overlapping = q
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Overlapping")
        .unwrap();
    assert_eq!(overlapping.reason, "SharedNamespaces");
    assert!(
        overlapping.message.contains(&format!(
            "namespace {a} is also selected by TenantQuota tenant-a-extra"
        )),
        "{overlapping:?}"
    );
    quotas
        .delete("tenant-a-extra", &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_tenantquota_webhook_refuses_nonsense_with_the_field() {
    let caches = Caches::default();
    caches.mark_synced();
    let tenants = Tenants::new(Quota::default());
    tenants.mark_synced();
    let admission = Admission::new(
        Arc::new(Validator::new()),
        tenants,
        Defaults::default(),
        caches,
    );
    let review = |spec: Value| {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "name": "q", "operation": "CREATE",
                "kind": {"group": "operator.kco.local", "version": "v1alpha1", "kind": "TenantQuota"},
                "resource": {"group": "operator.kco.local", "version": "v1alpha1", "resource": "tenantquotas"},
                "userInfo": {"username": "admin"},
                "object": {"apiVersion": "operator.kco.local/v1alpha1", "kind": "TenantQuota",
                           "metadata": {"name": "q"}, "spec": spec},
                "oldObject": null, "dryRun": false
            }
        }))
        .unwrap()
    };
    let answer = admission.review(
        Hook::ValidateQuota,
        &review(
            json!({"namespaces": ["x"], "allowedActions": ["reboot"], "minPollingInterval": 0}),
        ),
    );
    let message = answer.body["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(answer.body["response"]["allowed"], false);
    assert!(
        message.contains("spec.allowedActions[0]: unknown action \"reboot\""),
        "{message}"
    );
    assert!(
        message.contains("spec.minPollingInterval: must be at least 1 second"),
        "{message}"
    );
    let answer = admission.review(
        Hook::ValidateQuota,
        &review(json!({"namespaceSelector": {"matchLabels": {"tenant": "a"}}, "maxTargetApps": 5})),
    );
    assert_eq!(answer.body["response"]["allowed"], true);
}

#[tokio::test]
async fn ssrf_targets_are_refused_by_name_address_and_policy() {
    // What a tenant's quota does not open stays closed, whatever the URL says.
    let tenants = Tenants::new(Quota::default());
    tenants.put_namespace("blue", BTreeMap::from([("tenant".into(), "blue".into())]));
    tenants.put_quota(
        "blue",
        serde_json::from_value(json!({
            "namespaceSelector": {"matchLabels": {"tenant": "blue"}},
            "allowedActions": ["webhook"],
            "webhookAllowedHosts": ["hooks.example.com"],
            "minPollingInterval": 10, "maxReplicas": 3, "maxActionSeconds": 20
        }))
        .unwrap(),
    );
    tenants.mark_synced();
    let egress = Egress::new(
        tenants.clone(),
        vec!["10.96.0.1".parse().unwrap()],
        Arc::default(),
        "kco-test".into(),
        None,
    );
    let validator = Validator::with_tenants(tenants, egress);
    let check = |spec: Value| {
        let app: TargetApp = serde_json::from_value(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "x", "namespace": "blue"}, "spec": spec
        }))
        .unwrap();
        validator
            .validate(&app, None)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let hook = |url: &str| {
        json!({"selector": {}, "actions": [{"action": "webhook", "parameters": {"url": url},
               "trigger": {"field": "$up", "condition": "equals", "value": false}}]})
    };
    let hook_with_timeout = |url: &str, seconds: u32| {
        json!({"selector": {}, "actions": [{"action": "webhook", "parameters": {"url": url, "timeoutSeconds": seconds},
               "trigger": {"field": "$up", "condition": "equals", "value": false}}]})
    };
    for (spec, needle) in [
        (
            json!({"graphqlEndpoint": "http://169.254.169.254/latest"}),
            "link-local",
        ),
        (
            json!({"graphqlEndpoint": "http://127.0.0.1:3085/graphql"}),
            "loopback",
        ),
        (
            json!({"graphqlEndpoint": "https://kubernetes.default.svc/api"}),
            "is the Kubernetes apiserver",
        ),
        (
            json!({"graphqlEndpoint": "http://10.96.0.1/graphql"}),
            "an address of the Kubernetes apiserver",
        ),
        (
            json!({"graphqlEndpoint": "http://[64:ff9b::a9fe:a9fe]/graphql"}),
            "carries 169.254.169.254 (NAT64), a link-local",
        ),
        (
            json!({"graphqlEndpoint": "http://[2002:7f00:1::]/graphql"}),
            "carries 127.0.0.1 (6to4), a loopback",
        ),
        (
            hook("https://93.184.216.34/x"),
            "the tenant policy lists the hosts webhooks may call",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "scale_deployment", "parameters": {"name": "web/scale", "replicas": 1},
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "parameters.name: \"web/scale\" is not a valid name",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "patch_resource", "parameters": {"apiVersion": "v1", "kind": "ConfigMap",
                   "name": "../../../kube-system/configmaps/x", "patch": {"data": {}}},
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "parameters.name: \"../../../kube-system/configmaps/x\" is not a valid name",
        ),
        (
            json!({"selector": {}, "serviceAccountName": "kco:admin"}),
            "spec.serviceAccountName: \"kco:admin\" is not a valid name",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "scale_deployment", "parameters": {"name": "w", "delta": 1, "min": 50},
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "parameters.min: 50 is above the replica ceiling of 3",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "patch_resource", "parameters": {"apiVersion": "apps/v1", "kind": "Deployment",
                   "name": "w", "patch": {"spec": {"replicas": 50}}},
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "parameters.patch: the patch sets spec.replicas to 50, above the tenant's replica ceiling of 3",
        ),
        (
            hook_with_timeout("https://hooks.example.com/kco", 60),
            "parameters.timeoutSeconds: 60s is above the 20s an action may run under TenantQuota blue",
        ),
        (
            json!({"graphqlEndpoint": "http://mina.green.svc:3085/graphql"}),
            "not a Service of namespace blue",
        ),
        (hook("http://169.254.169.254/x"), "link-local"),
        (
            hook("https://evil.example.com/x"),
            "not one of the webhook hosts the tenant policy allows",
        ),
        (
            hook("http://hooks.green.svc/x"),
            "not one of the webhook hosts",
        ),
        (
            json!({"selector": {}, "pollingInterval": 5}),
            "5s is below the minimum of 10s set by TenantQuota blue",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "restart_pod",
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "action restart_pod is not allowed in namespace blue",
        ),
        (
            json!({"selector": {}, "actions": [{"action": "scale_deployment", "parameters": {"name": "w", "replicas": 9},
                   "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
            "9 is above the replica ceiling of 3 set by TenantQuota blue",
        ),
    ] {
        let problems = check(spec.clone());
        assert!(problems.contains(needle), "{spec}: {problems}");
    }
    assert_eq!(check(hook("https://hooks.example.com/kco")), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_budgets_throttle_one_tenant_and_not_the_other() {
    let _serial = SERIAL.lock().await;
    // Tenant A: 10 targets at a 1 s interval under maxPollsPerSecond 2.
    let mut a = Bed::new("tq-polls-a", 10).await;
    let b = Bed::new("tq-polls-b", 3).await;
    label(a.cp, &a.ns, "tenant", "noisy").await;
    apply_quota(
        a.cp,
        "noisy",
        json!({"namespaceSelector": {"matchLabels": {"tenant": "noisy"}}, "maxPollsPerSecond": 2, "maxActionsPerHour": 1}),
    )
    .await;
    // One operator for both tenants, leading (it writes the quotas' status), with
    // its Leases and action ledger in a namespace of its own.
    let leases = a.cp.namespace("tq-polls-leases").await;
    a.start_operator(|s| {
        s.namespace = None;
        s.graphql_max_retries = 0;
        s.lease_namespace = leases;
        s.election = Some(kco::election::Timing {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_secs(1),
        });
    })
    .await;
    let spec = json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "actions": [{"name": "offline", "action": "restart_pod", "cooldown": "0s",
                     "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}}]});
    a.apply(spec.clone()).await;
    b.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    a.wait_status(30, "10/10", |s| s.targets_ready.as_deref() == Some("10/10"))
        .await;
    b.wait_status(30, "3/3", |s| s.targets_ready.as_deref() == Some("3/3"))
        .await;

    for n in a.nodes.iter().chain(&b.nodes) {
        let sim = if a.nodes.contains(n) { &a.sim } else { &b.sim };
        sim.reset_requests(*n).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (polls_a, polls_b) = (requests(&a).await, requests(&b).await);
    println!(
        "20 s: tenant A {polls_a} polls (budget 2/s), tenant B {polls_b} polls (3 targets at 1 s)"
    );
    assert!(
        polls_a <= 2 * 20 + 4,
        "tenant A exceeded its budget: {polls_a}"
    );
    assert!(
        polls_a >= 30,
        "tenant A still polls at its budget: {polls_a}"
    );
    assert!(polls_b >= 3 * 18, "tenant B stays on schedule: {polls_b}");
    // Delayed, never starved: every one of A's targets had its turns.
    for node in &a.nodes {
        let polls = a.sim.node(*node).await.unwrap().requests;
        assert!(polls >= 2, "{node} was starved: {polls} polls in 20 s");
    }
    let metrics = a.metrics().await;
    assert!(
        metrics.contains(&format!(
            "operator_kco_tenant_throttled_total{{kind=\"poll\",namespace=\"{}\"}}",
            a.ns
        )),
        "throttling is counted"
    );

    // The action budget (1 per hour): the first firing runs (and fails: no
    // service account), the second is skipped and reported.
    a.set_state(0, SyncStatus::Offline).await;
    a.wait_event(20, "ActionFailed", "mina-0").await;
    a.set_state(1, SyncStatus::Offline).await;
    let note = a.wait_event(20, "QuotaExceeded", "mina-1").await;
    assert!(
        note.contains("TenantQuota noisy allows 1 actions per hour"),
        "{note}"
    );
    a.wait_event(20, "ActionSkipped", "actions per hour").await;
    // The budget is checked before the firing is recorded: the skipped firing
    // cost no status write.
    let firings = a.status().await.firings;
    assert!(
        firings.iter().any(|f| f.target == "mina-0"),
        "the firing that ran is recorded: {firings:?}"
    );
    assert!(
        !firings.iter().any(|f| f.target == "mina-1"),
        "the firing over the budget is not: {firings:?}"
    );
    // A dry run spends the budget like an action: it is no way around it.
    let mut dry = spec.clone();
    dry["dryRun"] = json!(true);
    a.apply(dry).await;
    a.set_state(2, SyncStatus::Offline).await;
    let note = a.wait_event(30, "QuotaExceeded", "mina-2").await;
    assert!(note.contains("actions per hour"), "{note}");
    // The quota's status counts the hour's actions from the ledger: the one slot.
    let quotas: Api<TenantQuota> = Api::all(a.client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let usage = quotas
            .get("noisy")
            .await
            .unwrap()
            .status
            .and_then(|s| s.usage);
        if usage.as_ref().and_then(|u| u.actions_last_hour) == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "actions never counted: {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Distinct targets of `ns` with `kco_target_*` series in `metrics`.
fn exporting_targets(metrics: &str, ns: &str) -> std::collections::BTreeSet<String> {
    let ns = format!("namespace=\"{ns}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("kco_target_") && l.contains(&ns))
        .filter_map(|l| {
            let (_, rest) = l.split_once("target=\"")?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

/// Waits until `ns` exports series of exactly `count` targets.
async fn wait_exporting(bed: &Bed, ns: &str, count: usize) -> String {
    let what = format!("{count} exporting targets in {ns}");
    bed.wait_metrics(30, &what, |m| exporting_targets(m, ns).len() == count)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_metric_series_exports_no_more_and_another_is_not() {
    let _serial = SERIAL.lock().await;
    let mut a = Bed::new("tq-series-a", 3).await;
    let b = Bed::new("tq-series-b", 2).await;
    label(a.cp, &a.ns, "tenant", "series").await;
    // 7 series per target (6 SyncStatus members and the length): two targets fit.
    apply_quota(
        a.cp,
        "series",
        json!({"namespaceSelector": {"matchLabels": {"tenant": "series"}}, "maxMetricSeries": 15}),
    )
    .await;
    a.start_operator(|s| s.namespace = None).await;
    let spec = json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "metrics": [{"field": "daemonStatus.syncStatus", "name": "sync_status"},
                    {"field": "daemonStatus.blockchainLength", "name": "blockchain_length"}]});
    a.apply(spec.clone()).await;
    b.apply(spec).await;
    wait_exporting(&a, &b.ns, 2).await;
    wait_exporting(&a, &a.ns, 2).await;
    // Its polls go on: only the series are bounded.
    a.wait_status(30, "3/3", |s| s.targets_ready.as_deref() == Some("3/3"))
        .await;
    a.wait_status(10, "MetricsExported False", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "MetricsExported" && c.status == "False")
    })
    .await;
    let refused = a.status().await;
    let condition = refused
        .conditions
        .iter()
        .find(|c| c.type_ == "MetricsExported")
        .unwrap();
    assert_eq!(condition.reason, "QuotaExceeded");
    assert!(
        condition
            .message
            .contains("15 metric series TenantQuota series allows"),
        "{condition:?}"
    );
    let note = a.wait_event(20, "QuotaExceeded", "metric series").await;
    assert!(note.contains("exports no series"), "{note}");
    // Every target polled, and still only two export.
    let metrics = a.metrics().await;
    assert_eq!(
        exporting_targets(&metrics, &a.ns).len(),
        2,
        "over the budget:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "operator_kco_tenant_throttled_total{{kind=\"metric_series\",namespace=\"{}\"}}",
            a.ns
        )),
        "the refusal is counted"
    );
    // The other tenant: every target, and nothing to report.
    b.wait_status(10, "MetricsExported True", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "MetricsExported" && c.status == "True")
    })
    .await;
    let other = b.status().await;
    assert!(other.conditions.iter().all(|c| c.reason != "QuotaExceeded"));

    // A raised quota lets the third target export, and the condition clears.
    apply_quota(
        a.cp,
        "series",
        json!({"namespaceSelector": {"matchLabels": {"tenant": "series"}}, "maxMetricSeries": 100}),
    )
    .await;
    wait_exporting(&a, &a.ns, 3).await;
    a.wait_status(10, "MetricsExported True", |s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "MetricsExported" && c.status == "True")
    })
    .await;
    let quotas: Api<TenantQuota> = Api::all(a.cp.admin().await);
    quotas.delete("series", &Default::default()).await.unwrap();
}

/// A TargetApp asking for an hour-long poll timeout against a node that never
/// answers: its polls are cut at the tenant's ceiling, so the slow answer holds
/// a connection (and its bytes) for seconds, not an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_timeout_is_cut_at_the_tenants_ceiling() {
    let _serial = SERIAL.lock().await;
    let mut bed = Bed::new("tq-timeout", 1).await;
    let tenant = format!("slow-{}", std::process::id());
    label(bed.cp, &bed.ns, "tenant", &tenant).await;
    apply_quota(
        bed.cp,
        &tenant,
        json!({"namespaceSelector": {"matchLabels": {"tenant": tenant}}, "maxPollTimeoutSeconds": 2}),
    )
    .await;
    bed.start_operator(|s| {
        s.namespace = None;
        s.graphql_max_retries = 0;
    })
    .await;
    bed.sim
        .set_faults(
            bed.nodes[0],
            kco::simulator::Faults {
                hang: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "timeoutSeconds": 3600}),
    )
    .await;
    // Without the ceiling the first poll would wait an hour; with it, the target
    // fails its poll after the tenant's 2 s.
    bed.wait_status(30, "the hung target failed on a timeout", |s| {
        s.targets
            .first()
            .and_then(|t| t.last_error.as_deref())
            .is_some_and(|e| e.contains("no answer within 2s"))
    })
    .await;
    let quotas: Api<TenantQuota> = Api::all(bed.client.clone());
    quotas.delete(&tenant, &Default::default()).await.unwrap();
}

/// GraphQL requests the bed's nodes received since their counters were reset.
async fn requests(bed: &Bed) -> u64 {
    let mut total = 0;
    for node in &bed.nodes {
        total += bed.sim.node(*node).await.unwrap().requests;
    }
    total
}

#[test]
fn the_example_quotas_in_policies_are_valid() {
    let names = kco::actions::Registry::builtin().names();
    for file in [
        "policies/tenantquota-strict.yaml",
        "policies/tenantquota-default.yaml",
        "policies/tenantquota-permissive.yaml",
    ] {
        let text = std::fs::read_to_string(support::controlplane::repo_path(file)).unwrap();
        let quota: TenantQuota = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            kco::tenancy::quota::check(&quota.spec, &names),
            Vec::<String>::new(),
            "{file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_with_a_thousand_hanging_targets_does_not_delay_another() {
    let _serial = SERIAL.lock().await;
    // Tenant B: 10 healthy simulated nodes behind Ready pods.
    let mut b = Bed::new("tq-quiet", 10).await;
    // Tenant A: 1,000 TargetApps whose endpoint accepts and never answers.
    let noisy = b.cp.namespace("tq-noisy").await;
    let hang = faulty_node(
        &b,
        kco::simulator::Faults {
            hang: true,
            ..kco::simulator::Faults::default()
        },
    )
    .await;
    let hang_ip = hang.ip();
    let host = format!("hang.{noisy}.svc");
    b.start_operator(|s| {
        s.namespace = None;
        s.graphql_max_retries = 0;
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(hang_ip)];
        s.dns_overrides = vec![(host.clone(), hang_ip)];
    })
    .await;
    let url = format!("http://{host}:{}/graphql", hang.port());
    let apps: Api<TargetApp> = Api::namespaced(b.client.clone(), &noisy);
    let creates = futures::stream::iter(0..1000).map(|i| {
        let (apps, url) = (apps.clone(), url.clone());
        async move {
            apps.create(
                &PostParams::default(),
                &targetapp(
                    &format!("hang-{i}"),
                    json!({"graphqlEndpoint": url, "pollingInterval": 1, "timeoutSeconds": 3}),
                ),
            )
            .await
            .unwrap();
        }
    });
    creates.buffer_unordered(16).collect::<Vec<()>>().await;
    b.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    b.wait_status(60, "10/10", |s| s.targets_ready.as_deref() == Some("10/10"))
        .await;
    // Let the hanging polls pile up, then measure tenant B's lateness for 20 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lateness = |metrics: &str| -> (f64, f64) {
        let series = |suffix: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("operator_kco_tapp_poll_lateness_seconds")
                        && l.contains(&format!("namespace=\"{}\"", b.ns))
                        && l.contains(suffix)
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (series("le=\"1\""), series("_count"))
    };
    let (within_before, count_before) = lateness(&b.metrics().await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let metrics = b.metrics().await;
    let (within_after, count_after) = lateness(&metrics);
    let (within, count) = (within_after - within_before, count_after - count_before);
    let noisy_polls = series_sum(
        &metrics,
        "operator_kco_tapp_polls_total",
        &[&format!("namespace=\"{noisy}\"")],
    );
    println!(
        "tenant B: {count} polls in 20 s, {within} of them less than 1 s late; tenant A: {noisy_polls} hanging polls so far"
    );
    assert!(
        count >= 10.0 * 18.0,
        "tenant B kept its schedule: {count} polls"
    );
    assert!(
        within / count >= 0.99,
        "tenant B's p99 lateness is under 1 s: {within} of {count}"
    );
    assert!(
        noisy_polls >= 1000.0,
        "tenant A's targets were polled (and hung): {noisy_polls}"
    );
    // Leave nothing for the other tests of this binary to monitor (no namespace
    // controller runs here, so deleting the namespace would not delete them).
    apps.delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
}

/// A simulated node on a fresh loopback address of the bed's simulator, answering
/// with `faults`; no pod leads to it (TargetApps reach it by URL).
async fn faulty_node(bed: &Bed, faults: kco::simulator::Faults) -> std::net::SocketAddr {
    let ip = std::net::IpAddr::V4(support::fixtures::loopback_ip());
    let node = bed
        .sim
        .add_node(
            (ip, support::fixtures::MINA_GRAPHQL_PORT).into(),
            kco::simulator::NodeState::default(),
        )
        .await
        .unwrap();
    bed.sim.set_faults(node.address, faults).await.unwrap();
    node.address
}

/// The sum of the `metric` series whose labels contain every one of `labels`.
fn series_sum(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_bytes_in_flight_is_throttled_and_another_is_not() {
    let _serial = SERIAL.lock().await;
    // Tenant B: 2 healthy nodes behind Ready pods.
    let mut b = Bed::new("tq-bytes-quiet", 2).await;
    // Tenant A: 12 TargetApps of one node whose 900 KB bodies arrive in 64 KiB
    // pieces a quarter of a second apart: each poll holds up to 1 MiB for 3-4 s.
    let greedy = b.cp.namespace("tq-bytes-greedy").await;
    let slow = faulty_node(
        &b,
        kco::simulator::Faults {
            body_bytes: Some(900_000),
            trickle_ms: 250,
            trickle_bytes: Some(64 * 1024),
            ..kco::simulator::Faults::default()
        },
    )
    .await;
    let slow_ip = slow.ip();
    let host = format!("slow.{greedy}.svc");
    b.start_operator(|s| {
        s.namespace = None;
        s.graphql_max_retries = 0;
        s.max_response_bytes = 1024 * 1024;
        // Each tenant may hold 3 MiB of bodies being read; the replica 16 MiB.
        s.bytes_in_flight = (16 << 20, 3 << 20);
        s.default_quota.endpoint_policy.allowed_cidrs = vec![ipnet::IpNet::from(slow_ip)];
        s.dns_overrides = vec![(host.clone(), slow_ip)];
    })
    .await;
    let url = format!("http://{host}:{}/graphql", slow.port());
    let apps: Api<TargetApp> = Api::namespaced(b.client.clone(), &greedy);
    for i in 0..12 {
        apps.create(
            &PostParams::default(),
            &targetapp(
                &format!("slow-{i}"),
                json!({"graphqlEndpoint": url, "pollingInterval": 2, "timeoutSeconds": 10}),
            ),
        )
        .await
        .unwrap();
    }
    b.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    b.wait_status(60, "2/2", |s| s.targets_ready.as_deref() == Some("2/2"))
        .await;

    // Tenant A is told, on its own TargetApps, that KCO stopped its polls.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(b.client.clone(), &greedy);
    let deadline = Instant::now() + Duration::from_secs(40);
    let throttled = loop {
        let list = events.list(&Default::default()).await.unwrap();
        if let Some(note) = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("PollThrottled"))
            .find_map(|e| e.message.clone())
        {
            break note;
        }
        assert!(
            Instant::now() < deadline,
            "no PollThrottled Event in {greedy}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        throttled.contains("share of 3145728 bytes"),
        "the Event names the share: {throttled}"
    );

    // Tenant B's polls over the next 10 s all succeed, none throttled.
    let quiet = format!("namespace=\"{}\"", b.ns);
    let before = b.metrics().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = b.metrics().await;
    let polls =
        |m: &str, result: &str| series_sum(m, "operator_kco_tapp_polls_total", &[&quiet, result]);
    let ok = polls(&after, "result=\"success\"") - polls(&before, "result=\"success\"");
    let failed = polls(&after, "result=\"failure\"") - polls(&before, "result=\"failure\"");
    println!("tenant B: {ok} polls in 10 s, {failed} failed");
    assert!(ok >= 2.0 * 8.0, "tenant B kept its schedule: {ok} polls");
    assert_eq!(failed, 0.0, "tenant B's polls all succeeded");
    assert_eq!(
        series_sum(&after, "operator_kco_tenant_throttled_total", &[&quiet]),
        0.0,
        "tenant B was never throttled"
    );
    let greedy_label = format!("namespace=\"{greedy}\"");
    assert!(
        series_sum(
            &after,
            "operator_kco_tenant_throttled_total",
            &[&greedy_label, "kind=\"response_bytes\""]
        ) > 0.0,
        "tenant A's throttled polls are counted"
    );
    assert!(
        series_sum(
            &after,
            "operator_kco_tapp_polls_total",
            &[&greedy_label, "result=\"success\""]
        ) > 0.0,
        "tenant A's polls within its share still get through"
    );
    apps.delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
}

#[test]
fn refusals_name_only_the_tenants_own_bounds() {
    // A refusal tells the tenant what its own quota allows, never what another
    // tenant's quota opens (its name, hosts, ceilings or namespaces).
    let tenants = Tenants::new(Quota::default());
    tenants.put_namespace("blue", BTreeMap::from([("tenant".into(), "blue".into())]));
    tenants.put_namespace(
        "green-private",
        BTreeMap::from([("tenant".into(), "green".into())]),
    );
    tenants.put_quota(
        "blue",
        serde_json::from_value(json!({
            "namespaceSelector": {"matchLabels": {"tenant": "blue"}},
            "allowedActions": ["webhook", "scale_deployment"],
            "webhookAllowedHosts": ["hooks.example.com"],
            "maxReplicas": 3, "maxActionSeconds": 20, "minPollingInterval": 10
        }))
        .unwrap(),
    );
    tenants.put_quota(
        "green-secret-quota",
        serde_json::from_value(json!({
            "namespaceSelector": {"matchLabels": {"tenant": "green"}},
            "allowedActions": ["webhook", "restart_pod", "scale_deployment", "patch_resource"],
            "webhookAllowedHosts": ["green-only.example.org"],
            "endpointPolicy": {"allowedHosts": ["green-graphql.example.org"], "allowedCIDRs": ["203.0.113.0/24"]},
            "maxReplicas": 97, "maxActionSeconds": 580, "minPollingInterval": 1
        }))
        .unwrap(),
    );
    tenants.mark_synced();
    let egress = Egress::new(
        tenants.clone(),
        vec!["10.96.0.1".parse().unwrap()],
        Arc::default(),
        "kco-test".into(),
        None,
    );
    let validator = Validator::with_tenants(tenants, egress);
    let rule = |action: &str, parameters: Value| {
        json!({"selector": {}, "actions": [{"action": action, "parameters": parameters,
               "trigger": {"field": "$up", "condition": "equals", "value": false}}]})
    };
    let refused = [
        rule("webhook", json!({"url": "https://evil.example.com/x"})),
        rule(
            "webhook",
            json!({"url": "https://hooks.example.com/x", "timeoutSeconds": 300}),
        ),
        rule("restart_pod", json!({})),
        rule("scale_deployment", json!({"name": "w", "replicas": 50})),
        json!({"graphqlEndpoint": "https://203.0.113.7/graphql"}),
        json!({"graphqlEndpoint": "https://graphql.example.net/graphql"}),
        json!({"selector": {}, "pollingInterval": 2}),
    ];
    for spec in refused {
        let app: TargetApp = serde_json::from_value(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": "x", "namespace": "blue"}, "spec": spec
        }))
        .unwrap();
        let problems: Vec<String> = validator
            .validate(&app, None)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(!problems.is_empty(), "{spec} should be refused");
        let text = problems.join("\n");
        for secret in [
            "green",
            "97",
            "580",
            "green-only.example.org",
            "green-graphql",
            "203.0.113.0/24",
        ] {
            assert!(
                !text.contains(secret),
                "a refusal of {spec} tells of another tenant's quota ({secret}): {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_tenants_events_drops_none_of_anothers() {
    let _serial = SERIAL.lock().await;
    // Tenant B: one node whose going OFFLINE fires a rule.
    let mut b = Bed::new("tq-events-quiet", 1).await;
    // Tenant A: 20 nodes polled every second by a rule that reads their uptime,
    // which changes on every poll: 20 StateChanged a second, on the TargetApp and
    // on each pod, far over the routine budget of 10 a second.
    let a = Bed::new("tq-events-flood", 20).await;
    b.start_operator(|s| s.namespace = None).await;
    a.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "actions": [{"name": "ancient", "action": "restart_pod", "cooldown": "1h",
            "trigger": {"field": "daemonStatus.uptimeSecs", "condition": "greaterThan", "value": 1_000_000_000}}]}))
    .await;
    b.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "actions": [{"name": "offline", "action": "restart_pod", "cooldown": "1h",
            "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}}]}))
    .await;
    b.wait_status(60, "1/1", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    // Wait until A's flood is over its budget: its routine Events are dropped.
    let flooded = format!("namespace=\"{}\"", a.ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = b.metrics().await;
        if series_sum(
            &m,
            "operator_kco_tenant_throttled_total",
            &[&flooded, "kind=\"event\""],
        ) > 0.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tenant A's flood never went over its Event budget"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // While it floods, B's firing is told, on time.
    b.set_state(0, SyncStatus::Offline).await;
    let fired = b.wait_event(15, "TriggerFired", "mina-0").await;
    assert!(fired.contains("rule offline"), "{fired}");
    // Its action fails (the TargetApp names no service account to act as): that
    // too is told, not dropped.
    let failed = b.wait_event(15, "ActionFailed", "mina-0").await;
    assert!(failed.contains("serviceAccountName"), "{failed}");
    let quiet = format!("namespace=\"{}\"", b.ns);
    let m = b.metrics().await;
    assert_eq!(
        series_sum(&m, "operator_kco_tenant_throttled_total", &[&quiet]),
        0.0,
        "tenant B lost no Event to a budget"
    );
    assert!(
        series_sum(
            &m,
            "operator_kco_tenant_throttled_total",
            &[&flooded, "kind=\"event\""]
        ) > 0.0
    );
    a.apps()
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap();
}
