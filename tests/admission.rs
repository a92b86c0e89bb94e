//! The admission webhooks: the router driven in-process with AdmissionReview
//! fixtures, the manifests in `webhooks/`, and the real apiserver calling two
//! replicas over HTTPS with certificates KCO manages and rotates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use kco::admission::access::{AccessCheck, Authorize};
use kco::admission::cache::Caches;
use kco::admission::defaults::Defaults;
use kco::admission::review::{Admission, MAX_REVIEW_BYTES};
use kco::admission::{Validator, server};
use kco::targetapp::TargetApp;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::controlplane::repo_path;
use support::webhooks::{
    labelled_namespace, register, replica, wait_ca_bundle, wait_ready, wait_serving,
};
use support::{ControlPlane, User};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn admission() -> Admission {
    let caches = Caches::default();
    caches.mark_synced();
    caches.put_account("chain", "kco-actions");
    let tenants = kco::tenancy::Tenants::new(kco::tenancy::Quota::default());
    tenants.mark_synced();
    Admission::new(
        Arc::new(Validator::new()),
        tenants,
        Defaults::default(),
        caches,
    )
}

fn review(kind: Value, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": kind,
            "resource": {"group": "operator.kco.local", "version": "v1alpha1", "resource": "targetapps"},
            "name": "mina", "namespace": "chain", "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": object, "oldObject": null, "dryRun": false, "options": null
        }
    })
}

fn targetapp_kind() -> Value {
    json!({"group": "operator.kco.local", "version": "v1alpha1", "kind": "TargetApp"})
}

fn app(spec: Value) -> Value {
    json!({"apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
           "metadata": {"name": "mina", "namespace": "chain"}, "spec": spec})
}

/// In-process reviews: "admin" may act as any ServiceAccount, "no-answer" gets
/// no answer, anyone else is refused. (The real SubjectAccessReview is proved
/// against the apiserver below.)
struct Grants;

impl Authorize for Grants {
    fn may_act_as<'a>(
        &'a self,
        check: &'a AccessCheck,
    ) -> futures::future::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            match check.user.username.as_str() {
                "no-answer" => Err("connection refused".to_owned()),
                user => Ok(user == "admin"),
            }
        })
    }
}

async fn call(path: &str, body: Vec<u8>) -> (u16, Value) {
    let router = server::router(
        admission(),
        kco::metrics::Metrics::new().unwrap(),
        Arc::new(Grants),
    );
    let response = router
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_router_answers_every_kind_of_review() {
    // Valid: allowed, with the same uid.
    let good = app(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "serviceAccountName": "kco-actions"}),
    );
    let body = serde_json::to_vec(&review(targetapp_kind(), good.clone())).unwrap();
    let (status, answer) = call("/validate/targetapp", body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["warnings"].is_null(), "{answer}");

    // Invalid: refused with every problem and its field path.
    let bad = app(json!({
        "pollingInterval": 0,
        "stateQuery": "mutation { startFilteredLog(filter: [\"x\"]) }",
        "actions": [{"action": "restart_pod", "parameters": {"gracePeriod": -1},
                     "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "DOWN"}}]
    }));
    let body = serde_json::to_vec(&review(targetapp_kind(), bad)).unwrap();
    let (status, answer) = call("/validate/targetapp", body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    for needle in [
        "spec.pollingInterval: must be at least 1 second",
        "spec.selector: required when graphqlEndpoint is a path",
        "spec.stateQuery:",
        "mutation",
        "spec.actions[0].parameters.gracePeriod: -1 is outside 0..=86400",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }

    // A warning for an action account that does not exist (yet).
    let warned = app(json!({"selector": {}, "serviceAccountName": "missing",
        "actions": [{"action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}}]}));
    let body = serde_json::to_vec(&review(targetapp_kind(), warned)).unwrap();
    let (_, answer) = call("/validate/targetapp", body).await;
    assert_eq!(answer["response"]["allowed"], true);
    let warnings = answer["response"]["warnings"].to_string();
    assert!(
        warnings.contains("ServiceAccount missing does not exist"),
        "{warnings}"
    );

    // Undecodable: 400 with the reason.
    let (status, answer) = call("/validate/targetapp", b"{\"kind\": 3".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot decode the AdmissionReview"),
        "{answer}"
    );

    // Another kind: refused by name.
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let body = serde_json::to_vec(&review(
        pod_kind,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
    ))
    .unwrap();
    let (_, answer) = call("/validate/targetapp", body).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("handles operator.kco.local/v1alpha1 TargetApp, not /v1 Pod")
    );

    // Huge: refused before it is parsed.
    let (status, answer) = call("/validate/targetapp", vec![b' '; MAX_REVIEW_BYTES + 1]).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("at most"),
        "{answer}"
    );
    let (status, _) = call("/validate/targetapp", vec![b' '; MAX_REVIEW_BYTES + 4096]).await;
    assert_eq!(
        status, 413,
        "the body limit stops bigger ones while reading"
    );

    // Mutate: a JSON patch that applies and fills in the defaults.
    let body = serde_json::to_vec(&review(targetapp_kind(), good.clone())).unwrap();
    let (_, answer) = call("/mutate/targetapp", body).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch = answer["response"]["patch"]
        .as_str()
        .expect("a base64 patch");
    let patch: json_patch::Patch = serde_json::from_slice(&base64_decode(patch)).unwrap();
    let mut patched = good.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    assert_eq!(patched["spec"]["pollingInterval"], 30);
    assert_eq!(patched["spec"]["timeoutSeconds"], 10);
    // Defaulting the defaulted object: no patch.
    let body = serde_json::to_vec(&review(targetapp_kind(), patched)).unwrap();
    let (_, answer) = call("/mutate/targetapp", body).await;
    assert!(answer["response"]["patch"].is_null(), "{answer}");
}

/// The webhooks' timeout (`webhooks/*.yaml`): every answer must come well within it.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn naming_a_service_account_needs_the_right_to_act_as_it() {
    let named = app(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "serviceAccountName": "kco-actions"}),
    );
    let as_user = |user: &str, operation: &str| {
        let mut r = review(targetapp_kind(), named.clone());
        r["request"]["userInfo"] = json!({"username": user, "groups": ["team"]});
        r["request"]["operation"] = json!(operation);
        serde_json::to_vec(&r).unwrap()
    };
    for operation in ["CREATE", "UPDATE"] {
        let (_, answer) = call("/validate/targetapp", as_user("admin", operation)).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let (_, answer) = call("/validate/targetapp", as_user("mallory", operation)).await;
        assert_eq!(
            answer["response"]["allowed"], false,
            "{operation}: {answer}"
        );
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("spec.serviceAccountName: user \"mallory\" may not act as ServiceAccount chain/kco-actions"),
            "{message}"
        );
    }
    // No answer from the apiserver: refused, saying to try again.
    let (_, answer) = call("/validate/targetapp", as_user("no-answer", "CREATE")).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{answer}"
    );
    // Without an account, nothing is borrowed and nothing is asked.
    let plain = app(json!({"selector": {"matchLabels": {"app": "mina"}}}));
    let mut r = review(targetapp_kind(), plain);
    r["request"]["userInfo"] = json!({"username": "mallory"});
    let (_, answer) = call("/validate/targetapp", serde_json::to_vec(&r).unwrap()).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    // The mutating hook never asks (the validating one does).
    let (_, answer) = call("/mutate/targetapp", as_user("mallory", "CREATE")).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
}

fn rule(i: usize, trigger: Value) -> Value {
    json!({"name": format!("r{i}"), "action": "restart_pod", "trigger": trigger})
}

/// Hostile manifests, each through both hooks in-process: (what, spec, the refusal
/// expected, or None when it must be allowed).
fn hostile_manifests() -> Vec<(&'static str, Value, Option<String>)> {
    let up = json!({"field": "$up", "condition": "equals", "value": false});
    let text_query = "query { version daemonStatus { syncStatus } }";
    let backtracking = json!({"field": "version", "condition": "matches", "value": "^(a+)+$"});
    // Unicode \w is large: 2,500 of them compile past the regex size limit.
    let too_big = json!({"field": "version", "condition": "matches", "value": "(\\w{50}){50}"});
    let unicode =
        json!({"field": "version", "condition": "matches", "value": "[\\w.-]+@[\\w.-]+\\.\\w+"});
    vec![
        (
            "a 1 MiB TargetApp",
            json!({"selector": {}, "stateQuery": format!("query {{ {} }}", "v: version ".repeat(95_326))}),
            Some("spec: the spec is 1048".to_owned()),
        ),
        (
            "a 16 KiB query",
            json!({"selector": {}, "stateQuery": format!("query {{ {} }}", "v: version ".repeat(1_500))}),
            Some("spec.stateQuery: the query is 16510 bytes; at most 16384 are allowed".to_owned()),
        ),
        (
            "1,000 rules",
            json!({"selector": {}, "actions": (0..1000).map(|i| rule(i, up.clone())).collect::<Vec<_>>()}),
            Some("spec.actions: 1000 rules; at most 100 are allowed per TargetApp".to_owned()),
        ),
        (
            "100 rules (the limit)",
            json!({"selector": {}, "actions": (0..100).map(|i| rule(i, up.clone())).collect::<Vec<_>>()}),
            None,
        ),
        (
            "a query nested 500 levels deep",
            json!({"selector": {}, "stateQuery": format!("query {{ {}version{} }}",
                "daemonStatus { ".repeat(499), " }".repeat(499))}),
            Some(
                "spec.stateQuery: the query nests 500 levels deep; at most 32 are allowed"
                    .to_owned(),
            ),
        ),
        (
            "a regex built to backtrack (the regex crate matches in linear time)",
            json!({"selector": {}, "stateQuery": text_query, "actions": [rule(0, backtracking)]}),
            None,
        ),
        (
            "20 rules (the limit), each a Unicode-class regex within the size limit",
            json!({"selector": {}, "stateQuery": text_query,
                "actions": (0..20).map(|i| rule(i, unicode.clone())).collect::<Vec<_>>()}),
            None,
        ),
        (
            "100 rules, each a Unicode-class regex (past the 20 matches rules allowed)",
            json!({"selector": {}, "stateQuery": text_query,
                "actions": (0..100).map(|i| rule(i, unicode.clone())).collect::<Vec<_>>()}),
            Some(
                "spec.actions[20].trigger.condition: more than 20 matches rules in one TargetApp"
                    .to_owned(),
            ),
        ),
        (
            "100 rules, each a regex past the compiled size limit",
            json!({"selector": {}, "stateQuery": text_query,
                "actions": (0..100).map(|i| rule(i, too_big.clone())).collect::<Vec<_>>()}),
            Some(
                "spec.actions[19].trigger.value: invalid regex: Compiled regex exceeds size limit"
                    .to_owned(),
            ),
        ),
    ]
}

#[tokio::test]
async fn hostile_manifests_are_answered_within_the_timeout_and_refused_with_the_field() {
    for (what, spec, refusal) in hostile_manifests() {
        let body = serde_json::to_vec(&review(targetapp_kind(), app(spec))).unwrap();
        assert!(
            body.len() <= MAX_REVIEW_BYTES,
            "{what}: {} bytes",
            body.len()
        );
        for hook in ["/validate/targetapp", "/mutate/targetapp"] {
            let started = Instant::now();
            let (status, answer) = call(hook, body.clone()).await;
            let took = started.elapsed();
            println!(
                "{what}: {hook} answered in {took:?} ({} KiB)",
                body.len() / 1024
            );
            assert!(took < WEBHOOK_TIMEOUT, "{what}: {hook} took {took:?}");
            assert_eq!(status, 200, "{what}: {answer}");
            if hook == "/mutate/targetapp" {
                assert_eq!(answer["response"]["allowed"], true, "{what}: {answer}");
                continue;
            }
            let message = answer["response"]["status"]["message"]
                .as_str()
                .unwrap_or_default();
            match &refusal {
                Some(needle) => {
                    assert_eq!(answer["response"]["allowed"], false, "{what}: {answer}");
                    assert!(
                        message.contains(needle.as_str()),
                        "{what}: {needle:?} not in {message}"
                    );
                }
                None => assert_eq!(answer["response"]["allowed"], true, "{what}: {message}"),
            }
        }
    }

    // The accepted backtracking regex stays linear when it runs: a 1 MB string that
    // almost matches is decided at once.
    let trigger: kco::targetapp::Trigger = serde_json::from_value(
        json!({"field": "version", "condition": "matches", "value": "^(a+)+$"}),
    )
    .unwrap();
    let condition = kco::triggers::Condition::compile(&trigger).unwrap();
    let data = json!({"version": format!("{}b", "a".repeat(1_000_000))});
    let started = Instant::now();
    let observation = kco::triggers::Observation {
        data: Some(&data),
        up: true,
    };
    assert!(!condition.holds(&observation, None));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn the_webhook_manifests_only_touch_kcos_own_resources() {
    for file in ["webhooks/validating.yaml", "webhooks/mutating.yaml"] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        let config: Value = serde_saphyr::from_str(&text).unwrap();
        for hook in config["webhooks"].as_array().unwrap() {
            assert_eq!(hook["sideEffects"], "None", "{file}");
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]), "{file}");
            assert_eq!(hook["failurePolicy"], "Ignore", "{file}: see ADR 0005");
            assert!(hook["timeoutSeconds"].as_u64().unwrap() <= 10, "{file}");
            for rule in hook["rules"].as_array().unwrap() {
                assert_eq!(rule["apiGroups"], json!(["operator.kco.local"]), "{file}");
                assert!(
                    rule["resources"] == json!(["targetapps"])
                        || rule["resources"] == json!(["tenantquotas"]),
                    "{file}: {rule}"
                );
            }
        }
    }
}

/// Tests against the apiserver register cluster-wide configurations: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn targetapp(name: &str, spec: Value) -> TargetApp {
    serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

// Multi-threaded: the replicas under test serve from this runtime while the test
// waits on kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_refuses_invalid_targetapps_and_stores_valid_ones_with_defaults() {
    let _serial = SERIAL.lock().await;
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let lease_ns = cp.namespace("adm-leases").await;
    let ns = labelled_namespace(cp, "adm").await;
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let long = (Duration::from_secs(3600), Duration::from_secs(1800));
    let a = replica(cp, &lease_ns, "kco-a", "kco-adm", long, cancel.clone()).await;
    let b = replica(cp, &lease_ns, "kco-b", "kco-adm", long, cancel.clone()).await;
    let urls: Vec<String> = [&a, &b]
        .iter()
        .map(|r| format!("https://127.0.0.1:{}", r.webhook_addr.unwrap().port()))
        .collect();
    register(cp, "kco-adm", &ns, &urls).await;
    wait_ca_bundle(cp, "kco-adm").await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    wait_serving(cp, &ns).await;

    // Valid: stored, with the defaults written by the mutating webhook.
    let apps: Api<TargetApp> = Api::namespaced(cp.admin().await, &ns);
    let created = apps
        .create(
            &PostParams::default(),
            &targetapp("good", json!({"selector": {"matchLabels": {"app": "mina"}},
                "actions": [{"action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}}]})),
        )
        .await
        .unwrap();
    assert_eq!(
        created.spec.polling_interval,
        Some(1),
        "DEFAULT_POLLING_INTERVAL of the test settings"
    );
    assert_eq!(created.spec.timeout_seconds, Some(2));
    assert_eq!(created.spec.actions[0].name.as_deref(), Some("rule-0"));
    assert_eq!(created.spec.actions[0].cooldown.as_deref(), Some("5m"));

    // Invalid: refused, with the field and the reason, by both replicas' webhooks.
    let err = apps
        .create(
            &PostParams::default(),
            &targetapp("bad", json!({"selector": {},
                "actions": [{"action": "restart_pod", "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "DOWN"}}]})),
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("spec.actions[0].trigger.value")
            && text.contains("not a value of enum SyncStatus"),
        "{text}"
    );

    // Through kubectl, as a namespace admin sees it.
    let file = cp.dir.join(format!("{ns}-bad.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: operator.kco.local/v1alpha1\nkind: TargetApp\nmetadata: {{name: worse, namespace: {ns}}}\n\
             spec:\n  graphqlEndpoint: http://169.254.169.254/latest\n"
        ),
    )
    .unwrap();
    let mut kubectl = cp.kubectl(&User::Admin).unwrap();
    kubectl.args(["apply", "-f"]).arg(&file);
    let out = tokio::task::spawn_blocking(move || kubectl.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("denied the request")
            && stderr.contains("spec.graphqlEndpoint: 169.254.169.254 is a link-local"),
        "{stderr}"
    );
    assert!(
        apps.get_opt("worse").await.unwrap().is_none(),
        "nothing stored"
    );

    // `kco validate --cluster` asks the same webhooks by a server-side dry run,
    // with the apiserver's strict field validation, and stores nothing.
    let file = cp.dir.join(format!("{ns}-validate.yaml"));
    let manifest = |name: &str, spec: &str| {
        format!(
            "apiVersion: operator.kco.local/v1alpha1\nkind: TargetApp\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    };
    let documents = [
        manifest("dry", "{selector: {matchLabels: {app: mina}}}"),
        manifest(
            "dry-link",
            "{graphqlEndpoint: 'http://169.254.169.254/latest'}",
        ),
        manifest("dry-typo", "{selector: {}, pollingIntervall: 5}"),
    ];
    std::fs::write(&file, documents.join("---\n")).unwrap();
    let mut validate = std::process::Command::new(env!("CARGO_BIN_EXE_kco"));
    validate
        .args(["validate", "--cluster"])
        .arg(&file)
        .env("KUBECONFIG", cp.kubeconfig(&User::Admin).unwrap());
    let out = tokio::task::spawn_blocking(move || validate.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].ends_with(&format!("{ns}/dry: accepted")),
        "{stdout}"
    );
    assert!(
        lines[1].contains(&format!("{ns}/dry-link: "))
            && lines[1].contains("denied the request")
            && lines[1].contains("spec.graphqlEndpoint: 169.254.169.254 is a link-local"),
        "{stdout}"
    );
    assert!(
        lines[2].contains(&format!("{ns}/dry-typo: "))
            && lines[2].contains(".spec.pollingIntervall: field not declared in schema"),
        "{stdout}"
    );
    assert!(
        apps.get_opt("dry").await.unwrap().is_none(),
        "a dry run stores nothing"
    );

    // Hostile manifests reach the webhooks (the apiserver takes up to 3 MiB) and are
    // refused with the field, in time.
    let up = json!({"field": "$up", "condition": "equals", "value": false});
    for (name, spec, needle) in [
        (
            "megabyte",
            json!({"selector": {}, "stateQuery": format!("query {{ {} }}", "v: version ".repeat(95_326))}),
            "spec: the spec is 1048",
        ),
        (
            "many-rules",
            json!({"selector": {}, "actions": (0..1000).map(|i| rule(i, up.clone())).collect::<Vec<_>>()}),
            "spec.actions: 1000 rules; at most 100",
        ),
    ] {
        let started = Instant::now();
        let err = apps
            .create(&PostParams::default(), &targetapp(name, spec))
            .await
            .unwrap_err();
        let took = started.elapsed();
        println!("{name}: refused through the apiserver in {took:?}");
        let text = err.to_string();
        assert!(
            text.contains("denied the request") && text.contains(needle),
            "{name}: {text}"
        );
        assert!(took < WEBHOOK_TIMEOUT, "{name}: {took:?}");
        assert!(apps.get_opt(name).await.unwrap().is_none(), "{name}");
    }

    // Nested deeper than a JSON decoder takes (128 levels; the apiserver stores up
    // to 10,000): denied with the field, not answered 400, which the webhooks'
    // failurePolicy (Ignore) would turn into storing the object.
    let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let admin = cp.admin().await;
    for (name, parameters, value, needle) in [
        (
            "deep-parameters",
            format!(r#"{{"deep":{}}}"#, nested(200)),
            "false".to_owned(),
            "spec.actions[0].parameters.deep: nests 200 levels deep; at most 32 are allowed",
        ),
        (
            "deep-value",
            "{}".to_owned(),
            nested(9_990),
            "spec.actions[0].trigger.value: nests 9990 levels deep; at most 32 are allowed",
        ),
    ] {
        let body = format!(
            r#"{{"apiVersion":"operator.kco.local/v1alpha1","kind":"TargetApp","metadata":{{"name":"{name}"}},
                "spec":{{"selector":{{}},"actions":[{{"action":"restart_pod","parameters":{parameters},
                "trigger":{{"field":"$up","condition":"equals","value":{value}}}}}]}}}}"#
        );
        let request = Request::post(format!(
            "/apis/operator.kco.local/v1alpha1/namespaces/{ns}/targetapps"
        ))
        .header("content-type", "application/json")
        .body(body.into_bytes())
        .unwrap();
        let err = admin.request_text(request).await.unwrap_err().to_string();
        assert!(
            err.contains("denied the request") && err.contains(needle),
            "{name}: {err}"
        );
        let names: Vec<String> = apps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|a| a.metadata.name)
            .collect();
        assert!(!names.iter().any(|n| n == name), "{name} stored: {names:?}");
    }

    // Borrowing a ServiceAccount's rights: a user who may write TargetApps but may
    // not impersonate the account it names is refused by the webhooks' question to
    // the apiserver; once granted that right, the same object is accepted.
    let writer = "tapp-writer";
    let file = cp.dir.join(format!("{ns}-writer.yaml"));
    std::fs::write(
        &file,
        format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: tapp-writer, namespace: {ns}}}
rules:
- apiGroups: [operator.kco.local]
  resources: [targetapps]
  verbs: [get, list, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tapp-writer, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tapp-writer}}
subjects: [{{kind: User, name: {writer}, apiGroup: rbac.authorization.k8s.io}}]
"#
        ),
    )
    .unwrap();
    cp.apply(&file, &[]);
    let as_writer: Api<TargetApp> =
        Api::namespaced(cp.client(&User::named(writer)).await.unwrap(), &ns);
    let borrowing = |name: &str| {
        targetapp(
            name,
            json!({"selector": {"matchLabels": {"app": "mina"}}, "serviceAccountName": "kco-actions",
                "actions": [{"action": "restart_pod", "trigger": {"field": "$up", "condition": "equals", "value": false}}]}),
        )
    };
    // The authorizer learns of the binding through its informer.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        match as_writer
            .create(&PostParams::default(), &borrowing("borrowed"))
            .await
        {
            Err(e) if e.to_string().contains("may not act as ServiceAccount") => break e,
            Err(e) if Instant::now() < deadline && e.to_string().contains("forbidden") => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("expected a refusal of the borrowed account: {other:?}"),
        }
    };
    assert!(
        refused.to_string().contains(&format!(
            "user \"{writer}\" may not act as ServiceAccount {ns}/kco-actions"
        )),
        "{refused}"
    );
    // Without an account nothing is borrowed: accepted.
    let plain = targetapp(
        "plain",
        json!({"selector": {"matchLabels": {"app": "mina"}}}),
    );
    as_writer
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let grant = cp.dir.join(format!("{ns}-writer-grant.yaml"));
    std::fs::write(
        &grant,
        format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: act-as-kco-actions, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [serviceaccounts]
  resourceNames: [kco-actions]
  verbs: [impersonate]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: act-as-kco-actions, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: act-as-kco-actions}}
subjects: [{{kind: User, name: {writer}, apiGroup: rbac.authorization.k8s.io}}]
"#
        ),
    )
    .unwrap();
    cp.apply(&grant, &[]);
    // Answers are reused for 10 s, and the authorizer learns of the binding.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match as_writer
            .create(&PostParams::default(), &borrowing("granted"))
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("may not act as"), "{e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the granted account is still refused: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_rotates_while_creates_keep_succeeding() {
    let _serial = SERIAL.lock().await;
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let lease_ns = cp.namespace("rot-leases").await;
    let ns = labelled_namespace(cp, "rot").await;
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    // CA for 24 s, certificates for 9 s: a certificate every ~6 s, a CA every ~16 s.
    let short = (Duration::from_secs(24), Duration::from_secs(9));
    let a = replica(cp, &lease_ns, "kco-a", "kco-rot", short, cancel.clone()).await;
    let url = format!("https://127.0.0.1:{}", a.webhook_addr.unwrap().port());
    register(cp, "kco-rot", &ns, &[url]).await;
    wait_ca_bundle(cp, "kco-rot").await;
    wait_ready(&a).await;
    wait_serving(cp, &ns).await;

    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(cp.admin().await, &lease_ns);
    let apps: Api<TargetApp> = Api::namespaced(cp.admin().await, &ns);
    let mut seen_certs = std::collections::BTreeSet::new();
    let mut seen_cas = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut created = 0;
    while started.elapsed() < Duration::from_secs(40) {
        let name = format!("app-{created}");
        apps.create(
            &PostParams::default(),
            &targetapp(&name, json!({"selector": {}})),
        )
        .await
        .unwrap_or_else(|e| panic!("create {name} after {:?}: {e}", started.elapsed()));
        created += 1;
        let secret = secrets.get("kco-rot-tls").await.unwrap();
        let data = secret.data.unwrap();
        seen_certs.insert(data["tls.crt"].0.clone());
        seen_cas.insert(data["ca.crt"].0.clone());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "{created} creates, {} certificates, {} CAs",
        seen_certs.len(),
        seen_cas.len()
    );
    assert!(
        seen_certs.len() >= 4,
        "certificates rotated: {}",
        seen_certs.len()
    );
    assert!(seen_cas.len() >= 2, "the CA rotated: {}", seen_cas.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_certificate_is_served_and_reloaded_when_it_changes() {
    let _serial = SERIAL.lock().await;
    kco::tls::install_crypto_provider();
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("adm-mounted").await;
    let dir = tempfile::tempdir().unwrap();
    let write = |cn: &str| {
        let ca = support::pki::Authority::new(cn).unwrap();
        let pem = ca.server(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &pem.cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &pem.key).unwrap();
        ca.cert_pem.clone()
    };
    let first_ca = write("mounted-ca-1");
    let mut settings = kco::config::Settings::test();
    settings.namespace = Some(ns.clone());
    settings.lease_namespace = ns.clone();
    settings.webhooks = Some(kco::config::WebhookSettings {
        address: ([127, 0, 0, 1], support::process::free_port().unwrap()).into(),
        cert_dir: Some(dir.path().to_owned()),
        secret: "unused".into(),
        config_name: "unused".into(),
        hosts: vec![],
        ca_validity: Duration::from_secs(3600),
        cert_validity: Duration::from_secs(1800),
        check_period: Duration::from_secs(60),
    });
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let running = kco::operator::start(settings, cp.config(&User::Admin).await.unwrap(), cancel)
        .await
        .unwrap();
    wait_ready(&running).await;
    let url = format!(
        "https://127.0.0.1:{}/healthz",
        running.webhook_addr.unwrap().port()
    );
    let trusting = |ca: &str| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
            .build()
            .unwrap()
    };
    let ok = trusting(&first_ca).get(&url).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // No Secret is made when the certificate is mounted.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(cp.admin().await, &ns);
    assert!(secrets.get_opt("unused").await.unwrap().is_none());

    // A new certificate in the directory is served within the reload period.
    let second_ca = write("mounted-ca-2");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if trusting(&second_ca).get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        trusting(&first_ca).get(&url).send().await.is_err(),
        "the old certificate is gone"
    );
}
