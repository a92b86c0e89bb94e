//! The Helm chart: it lints, renders with default and other values into objects
//! the apiserver accepts (server-side dry run), carries the CRDs of `crds/`, and
//! its RBAC is enough for KCO — and no more: KCO runs here as the chart's
//! ServiceAccount, not as a cluster admin. On the full cluster its pods are
//! scheduled and spread, its PDB gets its status, and upgrade and rollback roll them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod support;

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kco::simulator::SyncStatus;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::bed::Bed;
use support::controlplane::repo_path;
use support::{Cluster, ControlPlane, User};
use tokio_util::sync::CancellationToken;

fn helm(cp: &ControlPlane) -> Command {
    let mut command = Command::new(cp.tools().binary("helm").unwrap());
    let home = cp.dir.join("helm");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    command
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template kco charts/kco -n <ns>` with `args`.
fn render(cp: &ControlPlane, ns: &str, args: &[&str]) -> String {
    let out = helm(cp)
        .args(["template", "kco"])
        .arg(repo_path("charts/kco"))
        .args(["--namespace", ns, "--kube-version", "1.36.0"])
        .args(args)
        .output()
        .unwrap();
    ok(out, "helm template")
}

/// The kco container's literal environment in a rendered chart.
fn operator_env(text: &str) -> Vec<(String, String)> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the chart renders a Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let kco = containers.iter().find(|c| c["name"] == "kco").unwrap();
    kco["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
fn the_charts_settings_are_ones_kco_accepts() {
    // Helm reads numbers in values as floats: a setting rendered as "1.048576e+06"
    // stops every replica at start, which no test of the bare manifests sees.
    let cp = ControlPlane::shared();
    let big = [
        "--set",
        "polling.maxResponseBytes=67108864",
        "--set",
        "polling.maxBytesInFlightPerTenant=134217728",
        "--set",
        "polling.maxBytesInFlight=1099511627776",
    ];
    for args in [&[][..], &big[..]] {
        let env = operator_env(&render(cp, "kco-system", args));
        assert!(
            env.iter().any(|(k, _)| k == "GRAPHQL_MAX_BYTES_IN_FLIGHT"),
            "{env:?}"
        );
        let mut kco = Command::new(env!("CARGO_BIN_EXE_kco"));
        kco.arg("run")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("POD_NAME", "kco-0")
            .env("POD_NAMESPACE", "kco-system")
            .env("KUBECONFIG", cp.dir.join("no-such-kubeconfig"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = kco.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            match child.try_wait().unwrap() {
                Some(status) => break Some(status),
                None if Instant::now() > deadline => break None,
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Exit code 2 is a setting KCO refuses (or cannot parse); past the settings,
        // this KCO stops for want of a cluster, or keeps trying to reach one.
        assert!(
            status.is_none_or(|s| s.code() != Some(2)),
            "the chart's settings {args:?} are refused: {stderr}"
        );
    }
}

#[test]
fn the_chart_lints_and_carries_the_generated_crds() {
    let cp = ControlPlane::shared();
    let out = helm(cp)
        .arg("lint")
        .arg(repo_path("charts/kco"))
        .args(["--strict"])
        .output()
        .unwrap();
    ok(out, "helm lint --strict");
    for entry in std::fs::read_dir(repo_path("crds")).unwrap() {
        let entry = entry.unwrap();
        let copy = repo_path("charts/kco/crds").join(entry.file_name());
        assert_eq!(
            std::fs::read_to_string(entry.path()).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "charts/kco/crds/{:?} differs from crds/: run ./build.sh crds",
            entry.file_name()
        );
    }
    // values.schema.json refuses nonsense.
    let out = helm(cp)
        .args(["template", "kco"])
        .arg(repo_path("charts/kco"))
        .args([
            "--kube-version",
            "1.36.0",
            "--set",
            "webhooks.failurePolicy=Sometimes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failurePolicy"),
        "{out:?}"
    );
}

#[tokio::test]
async fn rendered_manifests_are_accepted_by_the_apiserver() {
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("chart-dry").await;
    for (name, args) in [
        ("default", vec![]),
        (
            "custom",
            vec![
                "--set",
                "replicaCount=5",
                "--set",
                "webhooks.failurePolicy=Fail",
                "--set",
                "networkPolicy.enabled=false",
                "--set",
                "defaultQuota.allowedActions={restart_pod,exec_command}",
                "--set",
                "logLevel=debug",
                "--set",
                "metrics.grafanaDashboard.enabled=true",
            ],
        ),
        (
            "hardened",
            vec![
                "--set",
                "networkPolicy.webhookSourceCIDRs={10.96.0.0/12,192.0.2.10/32}",
                "--set",
                "metrics.statsTokenSecret=kco-stats",
            ],
        ),
    ] {
        let text = render(cp, &ns, &args);
        let file = cp.dir.join(format!("chart-{name}.yaml"));
        std::fs::write(&file, &text).unwrap();
        let out = cp.apply(&file, &["--dry-run=server"]);
        for kind in [
            "deployment.apps/kco",
            "clusterrole.rbac.authorization.k8s.io/kco",
            "validatingwebhookconfiguration.admissionregistration.k8s.io/kco",
            "mutatingwebhookconfiguration.admissionregistration.k8s.io/kco",
            "poddisruptionbudget.policy/kco",
            "service/kco-webhook",
        ] {
            assert!(out.contains(kind), "{name}: {kind} not in {out}");
        }
        if name == "custom" {
            assert!(text.contains("replicas: 5") && text.contains("failurePolicy: Fail"));
            assert!(out.contains("configmap/kco-dashboard"), "{out}");
            assert!(!text.contains("kind: NetworkPolicy"));
        } else if name == "hardened" {
            // The webhook port admits the apiserver's addresses only; /stats opens
            // to the token of the named Secret.
            let policy = webhook_ingress(&text);
            assert_eq!(policy, ["10.96.0.0/12", "192.0.2.10/32"], "{text}");
            assert!(text.contains("STATS_TOKEN_FILE"), "{text}");
            assert!(text.contains("secretName: kco-stats"), "{text}");
        } else {
            assert_eq!(
                webhook_ingress(&text),
                ["0.0.0.0/0"],
                "apiServerCIDRs by default"
            );
            assert!(
                !text.contains("STATS_TOKEN_FILE"),
                "/stats on the loopback only by default"
            );
            assert!(text.contains("kind: NetworkPolicy"));
            assert!(text.contains("readOnlyRootFilesystem: true"));
            assert!(text.contains("runAsUser: 1000"));
        }
    }
}

/// The CIDRs the rendered NetworkPolicy admits to the webhook port.
fn webhook_ingress(text: &str) -> Vec<String> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
    let policy = docs
        .into_iter()
        .find(|doc| doc["kind"] == "NetworkPolicy")
        .unwrap();
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let webhook = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == "webhook")
        .unwrap();
    webhook["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| peer["ipBlock"]["cidr"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kco_works_with_the_charts_rbac_and_no_more() {
    kco::tls::install_crypto_provider();
    // KCO's warnings, to look for refusals.
    let warnings = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = warnings.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .try_init();
    let mut bed = Bed::new("chart-rbac", 2).await;
    bed.grant_actions().await;
    let cp = bed.cp;
    let system = cp.namespace("chart-system").await;
    // The chart's ServiceAccount, RBAC and webhook configurations, for real.
    let text = render(
        cp,
        &system,
        &[
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/webhooks.yaml",
        ],
    );
    let file = cp.dir.join("chart-rbac.yaml");
    std::fs::write(&file, text).unwrap();
    cp.apply(&file, &[]);

    // KCO as the chart's identity: a token of its ServiceAccount, so that every
    // request, its own impersonation of tenants' accounts included, is
    // authorized by the chart's RBAC alone.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(cp.admin().await, &system)
        .create_token_request("kco", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token for the chart's ServiceAccount");
    let mut config = cp.config(&User::Admin).await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..kube::config::AuthInfo::default()
    };
    let as_kco = kube::Client::try_from(config.clone()).unwrap();
    // The authorizer learns of the new bindings through its informer.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Api::<Pod>::all(as_kco.clone())
        .list(&Default::default())
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the chart's binding never applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut settings = kco::config::Settings::test();
    settings.instance = "kco-chart".into();
    settings.lease_namespace = system.clone();
    settings.namespace = None;
    settings.graphql_max_retries = 0;
    settings.election = Some(kco::election::Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_secs(1),
    });
    settings.sharding = Some(kco::shard::Timing {
        lease_duration: Duration::from_secs(3),
        renew_period: Duration::from_secs(1),
    });
    settings.webhooks = Some(kco::config::WebhookSettings {
        address: ([127, 0, 0, 1], support::process::free_port().unwrap()).into(),
        cert_dir: None,
        secret: "kco-webhook-tls".into(),
        config_name: "kco".into(),
        hosts: vec!["127.0.0.1".into()],
        ca_validity: Duration::from_secs(3600),
        cert_validity: Duration::from_secs(1800),
        check_period: Duration::from_secs(1),
    });
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let running = kco::operator::start(settings, config.clone(), cancel)
        .await
        .unwrap();
    support::webhooks::wait_ready(&running).await;
    bed.admin = running.admin_addr;

    // Monitoring and an action through impersonation.
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
                     "serviceAccountName": "kco-actions",
                     "actions": [{"name": "offline", "action": "restart_pod", "parameters": {"gracePeriod": 0},
                                  "trigger": {"field": "daemonStatus.syncStatus", "condition": "equals", "value": "OFFLINE"}}]}))
        .await;
    bed.wait_status(30, "2/2", |s| s.targets_ready.as_deref() == Some("2/2"))
        .await;
    bed.set_state(1, SyncStatus::Offline).await;
    bed.wait_event(20, "ActionSucceeded", "mina-1").await;

    // Leader election, membership and the certificates in its own namespace.
    let leases: Api<Lease> = Api::namespaced(cp.admin().await, &system);
    let leader = leases.get("kco-leader").await.unwrap().spec.unwrap();
    assert_eq!(leader.holder_identity.as_deref(), Some("kco-chart"));
    assert!(
        leases
            .get_opt("kco-member-kco-chart")
            .await
            .unwrap()
            .is_some()
    );
    let secrets: Api<Secret> = Api::namespaced(cp.admin().await, &system);
    assert!(secrets.get_opt("kco-webhook-tls").await.unwrap().is_some());
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(cp.admin().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while configs
        .get("kco")
        .await
        .unwrap()
        .webhooks
        .unwrap_or_default()
        .iter()
        .any(|h| h.client_config.ca_bundle.is_none())
    {
        assert!(Instant::now() < deadline, "caBundle never written");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Not one Forbidden on the way: every warning KCO logged, and the error
    // counters, are checked (a transient apiserver error is not an RBAC failure,
    // but a refusal always says "forbidden").
    let logged = String::from_utf8_lossy(&warnings.lock().unwrap()).into_owned();
    assert!(
        !logged.to_lowercase().contains("forbidden"),
        "a refusal under the chart's RBAC:\n{logged}"
    );
    let metrics = bed.metrics().await;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("operator_kco_errors_total"))
        .filter(|l| !l.ends_with(" 0"))
    {
        println!("{line} (logged warnings:\n{logged})");
    }

    // It may act as the tenants' action account and no other: not a controller of
    // kube-system, not another account of the tenant.
    for (namespace, account, allowed) in [
        (bed.ns.as_str(), "kco-actions", true),
        ("kube-system", "replicaset-controller", false),
        ("kube-system", "namespace-controller", false),
        ("kube-system", "default", false),
        (bed.ns.as_str(), "default", false),
    ] {
        let mut acting = config.clone();
        acting.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{account}"));
        let client = kube::Client::try_from(acting).unwrap();
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(bed.ns.clone()),
                    verb: Some("get".into()),
                    resource: Some("pods".into()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let asked = Api::<SelfSubjectAccessReview>::all(client)
            .create(&PostParams::default(), &review)
            .await;
        match asked {
            Ok(_) => assert!(allowed, "KCO could act as {namespace}/{account}"),
            Err(e) => {
                assert!(!allowed, "KCO could not act as {namespace}/{account}: {e}");
                assert!(e.to_string().contains("impersonate"), "{e}");
            }
        }
    }

    // And no more: no Secrets outside its namespace, no direct writes to tenants'
    // workloads (only by impersonating their ServiceAccount).
    let tenant_secrets: Api<Secret> = Api::namespaced(as_kco.clone(), &bed.ns);
    let err = tenant_secrets.list(&Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    let pods: Api<Pod> = Api::namespaced(as_kco.clone(), &bed.ns);
    let err = pods
        .delete("mina-0", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    let own_secrets: Api<Secret> = Api::namespaced(as_kco, &system);
    assert!(
        own_secrets.get("kco-webhook-tls").await.is_ok(),
        "its own Secret, by name"
    );
    assert!(
        own_secrets.list(&Default::default()).await.is_err(),
        "not every Secret of its namespace"
    );
}

#[tokio::test]
async fn the_validating_admission_policy_enforces_invariants_without_kco() {
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("vap").await;
    // The policy of policies/, its binding narrowed to this test's namespace.
    let text =
        std::fs::read_to_string(repo_path("policies/targetapp-invariants.vap.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut out = Vec::new();
    for mut doc in docs {
        if doc["kind"] == "ValidatingAdmissionPolicyBinding" {
            doc["spec"]["matchResources"] =
                json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}});
        }
        out.push(serde_json::to_string(&doc).unwrap());
    }
    let file = cp.dir.join("vap.json");
    std::fs::write(&file, out.join("\n")).unwrap();
    cp.apply(&file, &[]);
    let apps: Api<kco::targetapp::TargetApp> = Api::namespaced(cp.admin().await, &ns);
    let app = |name: &str, spec: serde_json::Value| -> kco::targetapp::TargetApp {
        serde_json::from_value(json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    let rule = |name: &str, action: &str, parameters: serde_json::Value| {
        json!({"name": name, "action": action, "parameters": parameters,
               "trigger": {"field": "$up", "condition": "equals", "value": false}})
    };
    // The apiserver learns of a new policy within a second or so: retry the first.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let refused = apps
            .create(&Default::default(), &app("no-selector", json!({})))
            .await;
        match refused {
            Err(e) if e.to_string().contains("spec.selector: required") => break,
            Ok(_) => {
                apps.delete("no-selector", &DeleteParams::default())
                    .await
                    .unwrap();
            }
            Err(e) => panic!("unexpected: {e}"),
        }
        assert!(Instant::now() < deadline, "the policy never applied");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (name, spec, needle) in [
        (
            "metadata",
            json!({"graphqlEndpoint": "http://169.254.169.254/latest"}),
            "loopback, link-local and unspecified",
        ),
        (
            "ftp",
            json!({"graphqlEndpoint": "ftp://x.example/"}),
            "a path or an http(s) URL",
        ),
        (
            "twins",
            json!({"selector": {}, "actions": [rule("a", "restart_pod", json!({})), rule("a", "restart_pod", json!({}))]}),
            "rule names must be unique",
        ),
        (
            "reboot",
            json!({"selector": {}, "actions": [rule("a", "reboot_node", json!({}))]}),
            "not a built-in action",
        ),
        (
            "hook",
            json!({"selector": {}, "actions": [rule("a", "webhook", json!({"url": "http://127.0.0.1:9/x"}))]}),
            "a webhook needs a URL",
        ),
    ] {
        let err = apps
            .create(&Default::default(), &app(name, spec))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
    apps.create(
        &Default::default(),
        &app("fine", json!({"selector": {"matchLabels": {"app": "mina"}},
            "actions": [rule("notify", "webhook", json!({"url": "https://hooks.example.com/kco"}))]})),
    )
    .await
    .unwrap();
    let err = apps
        .create(
            &Default::default(),
            &app("path", json!({"selector": {}, "actions": [rule("a", "scale_deployment", json!({"name": "web/scale", "replicas": 1}))]})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("an object name (RFC 1123), never a path"),
        "{err}"
    );

    // Without KCO, a user who may write TargetApps but not impersonate the account
    // one names is still refused; the cluster admin may.
    let writer = format!("{ns}-writer");
    let file = cp.dir.join(format!("{ns}-writer.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: writer, namespace: {ns}}}\n\
             rules: [{{apiGroups: [operator.kco.local], resources: [targetapps], verbs: [create, get]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: writer, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: writer}}\n\
             subjects: [{{kind: User, name: {writer}, apiGroup: rbac.authorization.k8s.io}}]\n"
        ),
    )
    .unwrap();
    cp.apply(&file, &[]);
    let as_writer: Api<kco::targetapp::TargetApp> =
        Api::namespaced(cp.client(&User::named(&writer)).await.unwrap(), &ns);
    let borrowing =
        json!({"selector": {"matchLabels": {"app": "mina"}}, "serviceAccountName": "kco-actions"});
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match as_writer
            .create(&Default::default(), &app("borrowed", borrowing.clone()))
            .await
        {
            Err(e) if e.to_string().contains("may not act as ServiceAccount") => break e,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("forbidden"), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("expected a refusal: {other:?}"),
        }
    };
    assert!(
        err.to_string().contains(&format!(
            "user {writer} may not act as ServiceAccount {ns}/kco-actions"
        )),
        "{err}"
    );
    apps.create(&Default::default(), &app("lent", borrowing))
        .await
        .unwrap();
}

#[test]
fn the_containerfile_builds_what_ci_builds() {
    // No container engine runs here: the image's build step must be the exact
    // command `./build.sh build` runs (and CI proves), and the runtime stage must
    // run KCO as the chart's non-root user without a shell.
    let containerfile = std::fs::read_to_string(repo_path("Containerfile")).unwrap();
    let build_sh = std::fs::read_to_string(repo_path("build.sh")).unwrap();
    let command = "cargo build --locked --release --bin kco";
    assert!(
        containerfile.contains(&format!("RUN {command}")),
        "{containerfile}"
    );
    assert!(
        build_sh.contains(&format!("    {command}\n")),
        "build.sh build runs {command}"
    );
    let runtime = containerfile.rsplit("FROM ").next().unwrap();
    assert!(runtime.starts_with("gcr.io/distroless/"), "{runtime}");
    assert!(runtime.contains("USER 1000:1000"));
    assert!(runtime.contains("org.opencontainers.image.source"));
    let workflow = std::fs::read_to_string(repo_path(".github/workflows/ci.yml")).unwrap();
    assert!(
        workflow.contains("./build.sh build"),
        "CI builds the release binary"
    );
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_path("charts/kco/dashboards/kco.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported = kco::metrics::Metrics::new().unwrap().names();
    let metric = regex::Regex::new(r"operator_kco_[a-z_]+").unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let used: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(!used.is_empty(), "{expr}");
            for name in used {
                let base = name.trim_end_matches("_bucket");
                assert!(
                    exported.iter().any(|e| e == base),
                    "{}: {name}",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn every_alert_has_a_runbook_and_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_path("charts/kco/alerts/kco.rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let exported = kco::metrics::Metrics::new().unwrap().names();
    let metric = regex::Regex::new(r"operator_kco_[a-z_]+").unwrap();
    let mut alerts = Vec::new();
    for rule in rules["groups"][0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap().to_owned();
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let file = url.rsplit("/blob/main/").next().unwrap();
        assert!(repo_path(file).is_file(), "{name}: no runbook at {file}");
        assert!(rule["labels"]["severity"].is_string(), "{name}");
        for used in metric.find_iter(rule["expr"].as_str().unwrap()) {
            let base = used
                .as_str()
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            assert!(
                exported.iter().any(|e| e == base),
                "{name} uses {} which KCO does not export",
                used.as_str()
            );
        }
        alerts.push(name);
    }
    for wanted in [
        "KCONoLeader",
        "KCOFewReplicas",
        "KCOWebhookErrors",
        "KCOWebhookSlow",
        "KCOPollFailures",
        "KCOActionFailures",
        "KCOTenantThrottled",
        "KCOWebhookCertificateExpiring",
        "KCOTargetAppDegraded",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing");
    }
}

/// A writer into a shared buffer.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn promtool_checks_the_alerts_and_kcos_real_metrics() {
    let cp = ControlPlane::shared();
    let promtool = cp.tools().binary("promtool").unwrap();
    let alerts = repo_path("charts/kco/alerts");
    let out = Command::new(&promtool)
        .args(["check", "rules", "kco.rules.yaml"])
        .current_dir(&alerts)
        .output()
        .unwrap();
    assert!(ok(out, "promtool check rules").contains("9 rules found"));
    // Each alert fires on the series that should fire it, and stays silent otherwise.
    let out = Command::new(&promtool)
        .args(["test", "rules", "kco.tests.yaml"])
        .current_dir(&alerts)
        .output()
        .unwrap();
    ok(out, "promtool test rules");

    // The exposition of a working operator passes promtool's lint.
    let mut bed = Bed::new("chart-metrics", 1).await;
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    bed.apply(json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1}))
        .await;
    bed.wait_status(30, "1/1", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    let metrics = bed.metrics().await;
    assert!(metrics.contains("operator_kco_tapp_polls_total"));
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    ok(out, "promtool check metrics");
}

#[tokio::test]
async fn the_policy_examples_are_accepted_by_the_apiserver() {
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    // The namespaced examples name namespace `mina`.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.admin().await);
    if namespaces.get_opt("mina").await.unwrap().is_none() {
        let ns = serde_json::from_value(json!({"metadata": {"name": "mina"}})).unwrap();
        let _ = namespaces.create(&Default::default(), &ns).await;
    }
    let mut files: Vec<_> = std::fs::read_dir(repo_path("policies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        // Server-side: no conflict with the VAP test applying the same policy.
        let out = cp.apply(
            &file,
            &["--server-side", "--force-conflicts", "--dry-run=server"],
        );
        assert!(
            out.contains("(server dry run)"),
            "{}: {out}",
            file.display()
        );
    }
}

#[tokio::test]
async fn helm_install_creates_every_object() {
    let cp = ControlPlane::shared();
    cp.install_kco_crds();
    let ns = cp.namespace("chart-install").await;
    let kubeconfig = cp.kubeconfig(&User::Admin).unwrap();
    // Another release name than the other tests' objects (cluster-scoped names).
    let release = "kco-install";
    let out = helm(cp)
        .args(["install", release])
        .arg(repo_path("charts/kco"))
        .args(["--namespace", &ns, "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--set", "metrics.grafanaDashboard.enabled=true"])
        .output()
        .unwrap();
    let notes = ok(out, "helm install");
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    assert!(
        notes.contains("get leases"),
        "NOTES.txt tells how to see it working: {notes}"
    );
    let out = cp
        .kubectl(&User::Admin)
        .unwrap()
        .args([
            "get",
            "-n",
            &ns,
            "deployment,service,serviceaccount,poddisruptionbudget,networkpolicy,role,rolebinding,configmap",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    let listed = ok(out, "kubectl get");
    for object in [
        format!("deployment.apps/{release}"),
        format!("service/{release}-webhook"),
        format!("service/{release}-metrics"),
        format!("serviceaccount/{release}"),
        format!("poddisruptionbudget.policy/{release}"),
        format!("networkpolicy.networking.k8s.io/{release}"),
        format!("role.rbac.authorization.k8s.io/{release}"),
        format!("rolebinding.rbac.authorization.k8s.io/{release}"),
        format!("configmap/{release}-dashboard"),
    ] {
        assert!(listed.contains(&object), "{object} not in {listed}");
    }
    let out = cp
        .kubectl(&User::Admin)
        .unwrap()
        .args([
            "get",
            &format!("clusterrole/{release}"),
            &format!("clusterrolebinding/{release}"),
            &format!("validatingwebhookconfiguration/{release}"),
            &format!("mutatingwebhookconfiguration/{release}"),
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert_eq!(ok(out, "kubectl get").lines().count(), 4);
    let out = helm(cp)
        .args(["uninstall", release, "--namespace", &ns, "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    ok(out, "helm uninstall");
}

/// `helm <args> --namespace <ns> --kubeconfig <admin>` on `cp`; its output.
fn helm_on(cp: &ControlPlane, ns: &str, args: &[&str]) -> String {
    let out = helm(cp)
        .args(args)
        .args(["--namespace", ns, "--kubeconfig"])
        .arg(cp.kubeconfig(&User::Admin).unwrap())
        .output()
        .unwrap();
    ok(out, &format!("helm {}", args.join(" ")))
}

/// The chart's running pods: (name, node, the LOG_LEVEL it was given).
async fn chart_pods(client: &kube::Client, ns: &str) -> Vec<(String, String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut running: Vec<_> = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=kco"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let spec = p.spec.unwrap_or_default();
            let level = spec.containers[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "LOG_LEVEL")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            (
                p.metadata.name.unwrap_or_default(),
                spec.node_name.unwrap_or_default(),
                level,
            )
        })
        .collect();
    running.sort();
    running
}

#[tokio::test]
async fn the_chart_runs_spread_on_a_cluster_under_the_restricted_pod_security_standard() {
    let cluster = Cluster::shared();
    let cp = &cluster.cp;
    let client = cp.admin().await;
    let ns = "kco-system";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let restricted: Namespace = serde_json::from_value(json!({"metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"}}}))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &restricted)
        .await
        .unwrap();

    // The standard is enforced here: a pod that breaks it is refused.
    let rogue: Pod = serde_json::from_value(json!({"metadata": {"name": "rogue"}, "spec": {
        "containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": true}}]}}))
    .unwrap();
    let refused = Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &rogue)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("violates PodSecurity \"restricted:latest\""),
        "{refused}"
    );

    // `--wait`: helm itself waits until the Deployment's pods are Ready.
    let notes = helm_on(
        cp,
        ns,
        &[
            "install",
            "kco",
            repo_path("charts/kco").to_str().unwrap(),
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    assert!(notes.contains("STATUS: deployed"), "{notes}");
    let pods = chart_pods(&client, ns).await;
    assert_eq!(pods.len(), 3, "{pods:?}");
    let nodes: std::collections::BTreeSet<&str> = pods.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "topology spread puts one replica on each node: {pods:?}"
    );

    // `helm test`: its Job is admitted under the restricted standard, scheduled,
    // and completed. kwok runs no container, so what the probe checks (a
    // replica answering /readyz) is proven by `kco probe`'s own test, not here.
    let tested = helm_on(cp, ns, &["test", "kco", "--timeout", "120s"]);
    assert!(
        tested.contains("TEST SUITE:     kco-test") && tested.contains("Phase:          Succeeded"),
        "{tested}"
    );

    // The disruption controller computes the PDB's status from the pods.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = pdbs.get("kco").await.unwrap().status
            && status.current_healthy == Some(3)
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the PDB never got its status\n{}",
            cluster.logs(10)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (
            status.desired_healthy,
            status.disruptions_allowed,
            status.expected_pods
        ),
        (Some(2), Some(1), Some(3))
    );

    // An upgrade rolls the pods; a rollback rolls them back.
    let first_level = pods[0].2.clone();
    helm_on(
        cp,
        ns,
        &[
            "upgrade",
            "kco",
            repo_path("charts/kco").to_str().unwrap(),
            "--reuse-values",
            "--set",
            "logLevel=debug",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    let upgraded = wait_chart_pods(&client, ns, |pods| {
        pods.len() == 3 && pods.iter().all(|(_, _, level)| level.contains("debug"))
    })
    .await;
    helm_on(
        cp,
        ns,
        &["rollback", "kco", "1", "--wait", "--timeout", "180s"],
    );
    let rolled_back = wait_chart_pods(&client, ns, |pods| {
        pods.len() == 3 && pods.iter().all(|(_, _, level)| *level == first_level)
    })
    .await;
    let names = |pods: &[(String, String, String)]| -> Vec<String> {
        pods.iter().map(|p| p.0.clone()).collect()
    };
    assert_ne!(
        names(&upgraded),
        names(&pods),
        "the upgrade replaced the pods"
    );
    assert_ne!(names(&rolled_back), names(&upgraded), "so did the rollback");
    let history = helm_on(cp, ns, &["history", "kco"]);
    assert!(history.contains("Rollback to 1"), "{history}");
}

async fn wait_chart_pods(
    client: &kube::Client,
    ns: &str,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = chart_pods(client, ns).await;
        if done(&pods) {
            return pods;
        }
        assert!(
            Instant::now() < deadline,
            "chart pods never settled: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The release workflow pushes the image under the tag that the chart it
/// packages pulls by default: both come from `build.sh release-meta`.
#[test]
fn the_packaged_chart_pulls_the_image_the_release_pushes() {
    let tools = support::Tools::locate().unwrap();
    let meta = Command::new("bash")
        .arg(repo_path("build.sh"))
        .args(["release-meta", "v1.2.3-rc.1", "kco-local"])
        .output()
        .unwrap();
    let meta = ok(meta, "build.sh release-meta");
    let field = |name: &str| -> String {
        meta.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {meta}"))
            .to_owned()
    };
    let (version, image) = (field("version"), field("image"));
    assert_eq!(version, "1.2.3-rc.1");

    // Package as the workflow does, then render what a default install creates.
    let dir = tempfile::tempdir().unwrap();
    let helm_bin = tools.binary("helm").unwrap();
    let helm = |args: &[&str]| {
        let out = Command::new(&helm_bin)
            .args(args)
            .env("HELM_CACHE_HOME", dir.path().join("cache"))
            .env("HELM_CONFIG_HOME", dir.path().join("config"))
            .env("HELM_DATA_HOME", dir.path().join("data"))
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        ok(out, &format!("helm {}", args.join(" ")))
    };
    let destination = dir.path().to_str().unwrap();
    helm(&[
        "package",
        repo_path("charts/kco").to_str().unwrap(),
        "--version",
        &version,
        "--app-version",
        &version,
        "--destination",
        destination,
    ]);
    let packaged = dir.path().join(format!("kco-{version}.tgz"));
    let rendered = helm(&[
        "template",
        "kco",
        packaged.to_str().unwrap(),
        "--namespace",
        "kco-system",
        "--kube-version",
        "1.36.0",
    ]);
    let pulled: std::collections::BTreeSet<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .map(|i| i.trim_matches('"'))
        .collect();
    assert_eq!(
        pulled,
        [image.as_str()].into(),
        "every image the chart pulls is the one the release pushes"
    );

    // The workflow takes its tags and versions from there, and nowhere else.
    let workflow = std::fs::read_to_string(repo_path(".github/workflows/release.yml")).unwrap();
    assert!(workflow.contains("./build.sh release-meta \"$GITHUB_REF_NAME\""));
    assert!(workflow.contains("tags: ${{ needs.meta.outputs.image }}"));
    assert!(workflow.contains("version=\"${{ needs.meta.outputs.version }}\""));
    assert!(
        !workflow.contains("github.ref_name }}") && !workflow.contains("GITHUB_REF_NAME#v"),
        "a tag or version derived outside build.sh release-meta"
    );

    // A tag that is not a version publishes nothing.
    let bad = Command::new("bash")
        .arg(repo_path("build.sh"))
        .args(["release-meta", "1.2.3"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "{bad:?}");
}
