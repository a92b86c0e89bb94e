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

/// The rendered objects of `text`.
fn objects(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(text)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one rendered object of `kind` (and `name`, when given).
fn object(text: &str, kind: &str, name: Option<&str>) -> serde_json::Value {
    let found: Vec<_> = objects(text)
        .into_iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name:?} in {text}");
    found.into_iter().next().unwrap()
}

/// The kco container's environment in a rendered chart: the settings ConfigMap
/// it loads, then its literal variables (which win, as in a pod).
fn operator_env(text: &str) -> Vec<(String, String)> {
    let deployment = object(text, "Deployment", None);
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let kco = containers.iter().find(|c| c["name"] == "kco").unwrap();
    let config_name = kco["envFrom"][0]["configMapRef"]["name"].as_str().unwrap();
    let config = object(text, "ConfigMap", Some(config_name));
    let mut env: Vec<(String, String)> = config["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    for var in kco["env"].as_array().unwrap() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            env.retain(|(k, _)| k != name);
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    env
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
fn the_chart_lints_and_carries_the_generated_crds_and_the_policy() {
    let cp = ControlPlane::shared();
    let out = helm(cp)
        .arg("lint")
        .arg(repo_path("charts/kco"))
        .args(["--strict"])
        .output()
        .unwrap();
    ok(out, "helm lint --strict");
    let mut copies: Vec<(std::path::PathBuf, std::path::PathBuf)> =
        std::fs::read_dir(repo_path("crds"))
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.path(),
                    repo_path("charts/kco/files/crds").join(entry.file_name()),
                )
            })
            .collect();
    copies.push((
        repo_path("policies/targetapp-invariants.vap.yaml"),
        repo_path("charts/kco/files/targetapp-invariants.vap.yaml"),
    ));
    for (source, copy) in copies {
        assert_eq!(
            std::fs::read_to_string(&source).unwrap(),
            std::fs::read_to_string(&copy).unwrap_or_default(),
            "{} differs from {}: run ./build.sh crds",
            copy.display(),
            source.display()
        );
    }
    // The rendered CRDs are the generated ones, with the chart's labels and the
    // keep policy.
    let text = render(cp, "kco-system", &[]);
    for (path, _) in [
        ("crds/targetapps.operator.kco.local.yaml", ()),
        ("crds/tenantquotas.operator.kco.local.yaml", ()),
    ] {
        let generated: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(repo_path(path)).unwrap()).unwrap();
        let name = generated["metadata"]["name"].as_str().unwrap();
        let rendered = object(&text, "CustomResourceDefinition", Some(name));
        // (Helm reads every number as a float: compare numbers as numbers.)
        assert_eq!(
            numbers_as_floats(&rendered["spec"]),
            numbers_as_floats(&generated["spec"]),
            "{name}"
        );
        assert_eq!(generated["spec"]["names"]["categories"], json!(["kco"]));
        assert_eq!(
            rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        assert_eq!(
            rendered["metadata"]["labels"]["app.kubernetes.io/instance"],
            "kco"
        );
    }
    let without = render(cp, "kco-system", &["--set", "crds.install=false"]);
    assert!(!without.contains("kind: CustomResourceDefinition"));
    let unkept = render(cp, "kco-system", &["--set", "crds.keep=false"]);
    assert!(
        unkept.contains("kind: CustomResourceDefinition") && !unkept.contains("resource-policy")
    );
}

fn numbers_as_floats(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Number(n) => json!(n.as_f64()),
        serde_json::Value::Array(items) => items.iter().map(numbers_as_floats).collect(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

/// `helm template` of the chart with `args`: its error output when it fails.
fn refusal(cp: &ControlPlane, args: &[&str]) -> String {
    let out = helm(cp)
        .args(["template", "kco"])
        .arg(repo_path("charts/kco"))
        .args(["--kube-version", "1.36.0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn values_the_chart_does_not_know_fail_the_install() {
    let cp = ControlPlane::shared();
    // Nonsense in a known key, and misspelt keys at every depth.
    let err = refusal(cp, &["--set", "webhooks.failurePolicy=Sometimes"]);
    assert!(err.contains("failurePolicy"), "{err}");
    for (typo, key) in [
        ("replicaCuont=2", "replicaCuont"),
        ("polling.defaultIntervall=10", "defaultIntervall"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        ("webhooks.certManager.issuerRef.nmae=x", "nmae"),
        ("podDisruptionBudget.minAvaliable=1", "minAvaliable"),
        ("image.digets=sha256:00", "digets"),
    ] {
        let err = refusal(cp, &["--set", typo]);
        assert!(
            err.contains("additional properties") && err.contains(key),
            "{typo}: {err}"
        );
    }
    // The same from a values file, as a platform team would write it.
    let file = cp.dir.join("typo-values.yaml");
    std::fs::write(&file, "polling:\n  maxRetires: 5\n").unwrap();
    let err = refusal(cp, &["-f", file.to_str().unwrap()]);
    assert!(err.contains("maxRetires"), "{err}");
    // A ServiceAccount the chart does not create must be named.
    let err = refusal(cp, &["--set", "serviceAccount.create=false"]);
    assert!(err.contains("serviceAccount.name"), "{err}");
}

#[test]
fn the_charts_readme_is_generated_from_its_values() {
    let tools = support::Tools::locate().unwrap();
    let out = Command::new(tools.binary("helm-docs").unwrap())
        .args(["--chart-search-root"])
        .arg(repo_path("charts"))
        .args([
            "--skip-version-footer",
            "--sort-values-order",
            "file",
            "--dry-run",
            "--log-level",
            "warning",
        ])
        .output()
        .unwrap();
    let generated = ok(out, "helm-docs --dry-run");
    let committed = std::fs::read_to_string(repo_path("charts/kco/README.md")).unwrap();
    assert_eq!(
        generated.trim_end(),
        committed.trim_end(),
        "charts/kco/README.md is stale: run ./build.sh chart-docs"
    );
    // Every value the schema allows is in the table, with a description.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("charts/kco/values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut leaves = Vec::new();
    schema_leaves(&schema, "", &mut leaves);
    for key in leaves.iter().filter(|k| *k != "global") {
        let row = committed
            .lines()
            .find(|l| l.starts_with(&format!("| {key} |")))
            .unwrap_or_else(|| panic!("{key} is not documented in charts/kco/README.md"));
        let description = row.rsplit('|').nth(1).unwrap_or_default().trim();
        assert!(!description.is_empty(), "{key} has no description: {row}");
    }
}

/// The keys of `schema`'s objects, down to the ones that are not objects of
/// known keys themselves.
fn schema_leaves(schema: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        out.push(prefix.to_owned());
        return;
    };
    for (key, sub) in properties {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let closed = sub["additionalProperties"] == json!(false);
        if closed
            && sub["properties"].as_object().is_some_and(|p| !p.is_empty())
            && !documented_whole(&path)
        {
            schema_leaves(sub, &path, out);
        } else {
            out.push(path);
        }
    }
}

/// Objects documented as one value (their keys are Kubernetes fields).
fn documented_whole(path: &str) -> bool {
    matches!(path, "resources" | "webhooks.certManager.issuerRef")
}

/// The rendered PodDisruptionBudget's spec, if one is rendered.
fn pdb(cp: &ControlPlane, args: &[&str]) -> Option<serde_json::Value> {
    objects(&render(cp, "kco-system", args))
        .into_iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .map(|d| d["spec"].clone())
}

#[test]
fn the_defaulting_webhook_can_be_left_out_and_validation_stays() {
    let cp = ControlPlane::shared();
    let kinds = |args: &[&str]| -> Vec<String> {
        let mut kinds: Vec<String> = objects(&render(cp, "kco-system", args))
            .into_iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_owned))
            .filter(|k| k.ends_with("WebhookConfiguration"))
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(
        kinds(&[]),
        [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration"
        ]
    );
    let off = ["--set", "webhooks.defaulting=false"];
    assert_eq!(kinds(&off), ["ValidatingWebhookConfiguration"]);
    let validating = object(
        &render(cp, "kco-system", &off),
        "ValidatingWebhookConfiguration",
        None,
    );
    let hooks: Vec<_> = validating["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        hooks,
        [
            "validate.targetapps.operator.kco.local",
            "validate.tenantquotas.operator.kco.local"
        ]
    );
    refusal(cp, &["--set", "webhooks.defaulting=sometimes"]);
}

#[test]
fn a_disruption_budget_is_rendered_only_where_it_cannot_block_a_drain() {
    let cp = ControlPlane::shared();
    let spec = pdb(cp, &[]).expect("a PDB by default");
    assert_eq!(spec["maxUnavailable"], 1);
    assert!(spec.get("minAvailable").is_none(), "{spec}");
    let spec = pdb(cp, &["--set", "podDisruptionBudget.minAvailable=2"]).unwrap();
    assert_eq!(
        (spec["minAvailable"].clone(), spec.get("maxUnavailable")),
        (json!(2), None)
    );
    for blocking in [
        &["--set", "replicaCount=1"][..],
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.minAvailable=2",
        ],
        &["--set", "podDisruptionBudget.minAvailable=3"],
        &["--set", "podDisruptionBudget.enabled=false"],
    ] {
        assert_eq!(pdb(cp, blocking), None, "{blocking:?}");
    }
    let spec = pdb(cp, &["--set", "podDisruptionBudget.maxUnavailable=50%"]).unwrap();
    assert_eq!(spec["maxUnavailable"], "50%");
    for refused in [
        "podDisruptionBudget.maxUnavailable=0",
        "podDisruptionBudget.maxUnavailable=0%",
    ] {
        refusal(cp, &["--set", refused]);
    }
}

#[test]
fn the_chart_takes_the_values_platform_teams_expect() {
    let cp = ControlPlane::shared();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let text = render(
        cp,
        "kco-system",
        &[
            "--set",
            "fullnameOverride=ops",
            "--set",
            &format!("image.digest={digest}"),
            "--set",
            "image.tag=ignored",
            "--set",
            "serviceAccount.name=kco-operator",
            "--set",
            "serviceAccount.annotations.iam\\.example\\.com/role=kco",
            "--set",
            "podAnnotations.team=platform",
            "--set",
            "podLabels.tier=ops",
            "--set",
            "priorityClassName=system-cluster-critical",
            "--set",
            "revisionHistoryLimit=3",
            "--set",
            "extraEnv[0].name=RUST_BACKTRACE",
            "--set-string",
            "extraEnv[0].value=1",
            "--set-json",
            r#"extraArgs=["--graphql-timeout=20"]"#,
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "nodeSelector.pool=system",
            "--set",
            "topologySpreadConstraints[0].maxSkew=2",
            "--set",
            "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
            "--set",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.additionalLabels.release=prometheus",
            "--set",
            "metrics.serviceMonitor.scrapeTimeout=10s",
            "--set",
            "metrics.serviceMonitor.relabelings[0].action=labeldrop",
            "--set",
            "metrics.serviceMonitor.relabelings[0].regex=pod_template_hash",
            "--set",
            "validatingAdmissionPolicy.enabled=true",
        ],
    );
    let deployment = object(&text, "Deployment", Some("ops"));
    let pod = &deployment["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("ghcr.io/kco-local/kco@{digest}"),
        "the digest wins"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "kco-operator");
    assert_eq!(pod["metadata"]["annotations"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["tier"], "ops");
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert_eq!(deployment["spec"]["revisionHistoryLimit"], 3);
    assert_eq!(container["args"], json!(["run", "--graphql-timeout=20"]));
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "RUST_BACKTRACE", "value": "1"}))
    );
    assert_eq!(pod["spec"]["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["spec"]["nodeSelector"], json!({"pool": "system"}));
    let spread = pod["spec"]["topologySpreadConstraints"].as_array().unwrap();
    assert_eq!(spread.len(), 1, "{spread:?}");
    assert_eq!(spread[0]["whenUnsatisfiable"], "DoNotSchedule");
    assert_eq!(
        spread[0]["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "a constraint gets the replicas' selector"
    );
    let account = object(&text, "ServiceAccount", Some("kco-operator"));
    assert_eq!(
        account["metadata"]["annotations"]["iam.example.com/role"],
        "kco"
    );
    for binding in objects(&text)
        .iter()
        .filter(|d| d["kind"].as_str().is_some_and(|k| k.ends_with("Binding")))
    {
        if binding["kind"] == "ValidatingAdmissionPolicyBinding" {
            continue;
        }
        assert_eq!(binding["subjects"][0]["name"], "kco-operator", "{binding}");
    }
    // The ServiceMonitor selects the metrics Service and no other.
    let monitor = object(&text, "ServiceMonitor", Some("ops"));
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["scrapeTimeout"], "10s");
    // The tenant's namespace stays `namespace`: alerts group by tenant, and one
    // tenant's series never land in another's group.
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(
        monitor["spec"]["endpoints"][0]["relabelings"][0]["action"],
        "labeldrop"
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let selected: Vec<String> = objects(&text)
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|svc| {
            selector
                .iter()
                .all(|(k, v)| svc["metadata"]["labels"][k] == *v)
        })
        .map(|svc| svc["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(selected, ["ops-metrics"]);
    // The admission policy, opted in, under the release's name.
    let policy = object(
        &text,
        "ValidatingAdmissionPolicy",
        Some("ops-targetapp-invariants"),
    );
    assert!(policy["spec"]["validations"].as_array().unwrap().len() > 5);
    let binding = object(
        &text,
        "ValidatingAdmissionPolicyBinding",
        Some("ops-targetapp-invariants"),
    );
    assert_eq!(binding["spec"]["policyName"], "ops-targetapp-invariants");
    assert!(
        !render(cp, "kco-system", &[]).contains("ValidatingAdmissionPolicy"),
        "opt-in"
    );

    // nameOverride names the objects and their name label.
    let text = render(cp, "kco-system", &["--set", "nameOverride=watcher"]);
    let deployment = object(&text, "Deployment", Some("kco-watcher"));
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/name"],
        "watcher"
    );
}

#[test]
fn the_operator_settings_are_a_configmap_whose_change_rolls_the_replicas() {
    let cp = ControlPlane::shared();
    let checksum = |args: &[&str]| -> String {
        let text = render(cp, "kco-system", args);
        let deployment = object(&text, "Deployment", None);
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let env = operator_env(&render(cp, "kco-system", &[]));
    let setting = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    // The original design's settings and defaults.
    for (name, value) in [
        ("LOG_LEVEL", "info"),
        ("GRAPHQL_TIMEOUT", "10"),
        ("GRAPHQL_MAX_RETRIES", "3"),
        ("DEFAULT_POLLING_INTERVAL", "30"),
        ("ACTION_EXECUTION_TIMEOUT", "300"),
        ("METRICS_PORT", "8080"),
    ] {
        assert_eq!(setting(name), Some(value), "{name}");
    }
    let default = checksum(&[]);
    assert_eq!(default, checksum(&[]), "the same settings, the same pods");
    assert_ne!(default, checksum(&["--set", "logLevel=debug"]));
    assert_ne!(default, checksum(&["--set", "polling.maxRetries=1"]));
    // Settings outside the ConfigMap do not roll the pods through it.
    assert_eq!(
        default,
        checksum(&["--set", "metrics.serviceMonitor.enabled=true"])
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
    let then = |mut rule: serde_json::Value, step: serde_json::Value| {
        rule["then"] = json!([step]);
        rule
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
            "a webhook needs an http(s) URL",
        ),
        (
            "twice",
            json!({"selector": {}, "actions": [rule("a", "webhook", json!({"url": "https://hooks.example.com/x",
                "urlSecretRef": {"name": "kco-webhook-url", "key": "url"}}))]}),
            "give url or urlSecretRef, not both",
        ),
        // A rule's later actions are held to the same invariants as its first.
        (
            "then-reboot",
            json!({"selector": {}, "actions": [then(rule("a", "restart_pod", json!({})), json!({"action": "reboot_node"}))]}),
            "not a built-in action",
        ),
        (
            "then-hook",
            json!({"selector": {}, "actions": [then(rule("a", "restart_pod", json!({})),
                json!({"action": "webhook", "parameters": {"url": "http://[::1]:9/x"}}))]}),
            "a webhook needs an http(s) URL",
        ),
        (
            "then-path",
            json!({"selector": {}, "actions": [then(rule("a", "restart_pod", json!({})),
                json!({"action": "patch_resource", "parameters": {"kind": "ConfigMap", "name": "../../secrets/x"}}))]}),
            "an object name (RFC 1123), never a path",
        ),
        (
            "then-twice",
            json!({"selector": {}, "actions": [then(rule("a", "restart_pod", json!({})),
                json!({"action": "webhook", "parameters": {"url": "https://hooks.example.com/x",
                       "urlSecretRef": {"name": "kco-webhook-url", "key": "url"}}}))]}),
            "give url or urlSecretRef, not both",
        ),
        (
            "then-alone",
            json!({"selector": {}, "actions": [{"name": "a", "trigger": {"field": "$up", "condition": "changed"},
                   "then": [{"action": "restart_pod"}]}]}),
            "then without an action",
        ),
    ] {
        let err = apps
            .create(&Default::default(), &app(name, spec))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{name}: {err}");
    }
    // URLs are parsed, not matched: the addresses resolvers read into numbers and
    // IPv4-mapped IPv6 forms are refused, in endpoints and in webhook URLs alike.
    for (i, url) in [
        "http://2852039166/graphql",
        "http://0x7f.1/",
        "http://0X7F.0.0.1/",
        "http://0/",
        "http://127.1:3085/",
        "http://0177.0.0.1/",
        "http://[::ffff:a9fe:a9fe]/latest",
        "http://[::1]:3085/",
        "http://[fe80::1%25eth0]/",
        "http://LOCALHOST./",
        "http://metadata.localhost/",
        "http://169.254.169.254./",
        "http:///graphql",
    ]
    .into_iter()
    .enumerate()
    {
        let err = apps
            .create(
                &Default::default(),
                &app(&format!("url-{i}"), json!({"graphqlEndpoint": url})),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.graphqlEndpoint: a path or an http(s) URL; loopback"),
            "{url}: {err}"
        );
        let hook = json!({"selector": {}, "actions": [rule("a", "webhook", json!({"url": url}))]});
        let err = apps
            .create(&Default::default(), &app(&format!("hook-{i}"), hook))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.actions[].parameters.url"),
            "{url}: {err}"
        );
    }
    // Names and addresses the policy has no reason to refuse.
    for (i, url) in [
        "http://mina.example.com:3085/graphql",
        "https://10.0.0.7/graphql",
        "http://[2001:db8::7]:3085/",
        "http://node-1.example/",
    ]
    .into_iter()
    .enumerate()
    {
        apps.create(
            &Default::default(),
            &app(&format!("fine-{i}"), json!({"graphqlEndpoint": url})),
        )
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    apps.create(
        &Default::default(),
        &app(
            "fine",
            json!({"selector": {"matchLabels": {"app": "mina"}},
            "actions": [rule("notify", "webhook", json!({"url": "https://hooks.example.com/kco"})),
                        // A rule that only records has no action for the policy to judge.
                        {"name": "record", "trigger": {"field": "$up", "condition": "changed"}},
                        // A URL kept in a Secret is judged when it is read.
                        rule("page", "webhook", json!({"urlSecretRef": {"name": "kco-webhook-url", "key": "url"}})),
                        // Several actions, each fine.
                        then(rule("page-then-restart", "webhook", json!({"url": "https://hooks.example.com/kco"})),
                             json!({"action": "restart_pod"}))]}),
        ),
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
    // The image from source (GitHub) and the image from this machine
    // (`./build.sh image`, tests/image.rs) are one recipe: both stage the root
    // file system with `./build.sh rootfs`, and `./build.sh image` builds the
    // Containerfile's own last stage from it.
    let containerfile = std::fs::read_to_string(repo_path("Containerfile")).unwrap();
    let build_sh = std::fs::read_to_string(repo_path("build.sh")).unwrap();
    assert!(
        containerfile.contains("\nRUN ./build.sh rootfs\n"),
        "{containerfile}"
    );
    let runtime = containerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        runtime.starts_with("scratch\nCOPY --from=rootfs /src/target/image/rootfs/ /\n"),
        "{runtime}"
    );
    assert!(build_sh.contains("sed -n '/^FROM scratch/,$p' Containerfile"));
    assert!(build_sh.contains("s#^COPY --from=rootfs /src/target/image/rootfs/ /#COPY rootfs/ /#"));
    assert!(runtime.contains("USER 1000:1000"), "the chart's user");
    assert!(
        !runtime.contains("RUN "),
        "nothing runs in the last stage: it has no shell"
    );
    for label in ["version", "revision", "created", "licenses", "source"] {
        assert!(
            runtime.contains(&format!("org.opencontainers.image.{label}=")),
            "{label}"
        );
    }
    // The image's binary knows its release (`kco version`).
    for given in [
        "KCO_VERSION=${VERSION}",
        "KCO_GIT_REVISION=${REVISION}",
        "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}",
    ] {
        assert!(containerfile.contains(given), "{given}: {containerfile}");
    }
    // The shipped binary: static, without the simulator.
    assert!(build_sh.contains(
        "cargo build --locked --release --target \"$triple\" --bin kco --no-default-features --features jemalloc"
    ));
    let workflow = std::fs::read_to_string(repo_path(".github/workflows/ci.yml")).unwrap();
    assert!(
        workflow.contains("./build.sh build"),
        "CI builds the release binary"
    );
}

/// The series names of the example TargetApp's `spec.metrics`: what the Mina
/// alerts and the dashboard's Mina row read.
fn example_series() -> Vec<String> {
    let text = std::fs::read_to_string(repo_path("docs/examples/targetapp-mina.yaml")).unwrap();
    let example: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    example["spec"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("kco_target_{}", m["name"].as_str().unwrap()))
        .collect()
}

/// Whether every metric `expr` names is one KCO exports, or one the example
/// TargetApp exports; and that it names at least one.
fn names_known(expr: &str, exported: &[String], example: &[String]) -> Result<(), String> {
    let metric = regex::Regex::new(r"(operator_kco|kco_target)_[a-z_]+").unwrap();
    let used: Vec<&str> = metric.find_iter(expr).map(|m| m.as_str()).collect();
    if used.is_empty() {
        return Err(format!("no KCO metric in {expr}"));
    }
    for name in used {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        let known = if name.starts_with("kco_target_") {
            example.iter().any(|e| e == name)
        } else {
            exported.iter().any(|e| e == base)
        };
        if !known {
            return Err(format!(
                "{name} is neither KCO's nor the example TargetApp's"
            ));
        }
    }
    Ok(())
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo_path("charts/kco/dashboards/kco.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let exported = kco::metrics::Metrics::new().unwrap().names();
    let example = example_series();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut mina = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            if let Err(why) = names_known(expr, &exported, &example) {
                panic!("{}: {why}", panel["title"]);
            }
            mina += usize::from(expr.contains("kco_target_"));
        }
    }
    assert!(
        mina >= 3,
        "a row on the Mina nodes: lag, peers, sync status"
    );
}

#[test]
fn every_alert_has_a_runbook_and_uses_only_exported_metrics() {
    let exported = kco::metrics::Metrics::new().unwrap().names();
    let example = example_series();
    let mut alerts = Vec::new();
    for file in ["kco.rules.yaml", "mina.rules.yaml"] {
        let text =
            std::fs::read_to_string(repo_path(&format!("charts/kco/alerts/{file}"))).unwrap();
        let rules: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for rule in rules["groups"][0]["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            let url = rule["annotations"]["runbook_url"].as_str().unwrap();
            let runbook = url.rsplit("/blob/main/").next().unwrap();
            assert!(
                repo_path(runbook).is_file(),
                "{name}: no runbook at {runbook}"
            );
            assert!(rule["labels"]["severity"].is_string(), "{name}");
            if let Err(why) = names_known(rule["expr"].as_str().unwrap(), &exported, &example) {
                panic!("{name}: {why}");
            }
            alerts.push(name);
        }
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
        "KCOMinaNodeLagging",
        "KCOMinaNodeFewPeers",
        "KCOMinaNodeNotSynced",
    ] {
        assert!(alerts.iter().any(|a| a == wanted), "{wanted} missing");
    }
}

#[test]
fn the_mina_alerts_are_in_the_prometheus_rule_only_when_asked_for() {
    let cp = ControlPlane::shared();
    let groups = |args: &[&str]| -> Vec<String> {
        let text = render(cp, "kco-system", args);
        let rule = object(&text, "PrometheusRule", None);
        rule["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        groups(&["--set", "metrics.prometheusRule.enabled=true"]),
        ["kco"]
    );
    assert_eq!(
        groups(&[
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.prometheusRule.minaAlerts=true"
        ]),
        ["kco", "kco-mina"]
    );
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
    assert!(ok(out, "promtool check rules").contains("10 rules found"));
    let out = Command::new(&promtool)
        .args(["check", "rules", "mina.rules.yaml"])
        .current_dir(&alerts)
        .output()
        .unwrap();
    assert!(ok(out, "promtool check rules").contains("3 rules found"));
    // Each alert fires on the series that should fire it, and stays silent otherwise.
    for tests in ["kco.tests.yaml", "mina.tests.yaml"] {
        let out = Command::new(&promtool)
            .args(["test", "rules", tests])
            .current_dir(&alerts)
            .output()
            .unwrap();
        ok(out, "promtool test rules");
    }

    // The exposition of a working operator passes promtool's lint.
    let mut bed = Bed::new("chart-metrics", 1).await;
    bed.start_operator(|s| s.graphql_max_retries = 0).await;
    // With the example's exported fields: their series are linted too.
    let text = std::fs::read_to_string(repo_path("docs/examples/targetapp-mina.yaml")).unwrap();
    let example: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    bed.apply(
        json!({"selector": {"matchLabels": {"app": "mina"}}, "pollingInterval": 1,
        "metrics": example["spec"]["metrics"]}),
    )
    .await;
    bed.wait_status(30, "1/1", |s| s.targets_ready.as_deref() == Some("1/1"))
        .await;
    let mut metrics = bed.metrics().await;
    for _ in 0..50 {
        if metrics.contains("kco_target_sync_status{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        metrics = bed.metrics().await;
    }
    assert!(metrics.contains("operator_kco_tapp_polls_total"));
    for series in example_series() {
        assert!(
            metrics.contains(&format!("{series}{{")),
            "{series} in:\n{metrics}"
        );
    }
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
        // The CRDs are installed already, by kubectl (other tests share them).
        .args([
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "crds.install=false",
        ])
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

/// Copies the directory `from` into `to` (created).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    // A control plane of its own: here the chart owns the CRDs.
    let cp = ControlPlane::start(support::Mode::Bare).await.unwrap();
    let ns = cp.namespace("crd-upgrade").await;
    let client = cp.admin().await;
    // The previous chart version: this chart as 0.0.9, whose TargetApp CRD had
    // no `kco` category.
    let previous = cp.dir.join("kco-0.0.9");
    copy_dir(&repo_path("charts/kco"), &previous);
    let chart_yaml = std::fs::read_to_string(previous.join("Chart.yaml")).unwrap();
    let version = chart_yaml
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .unwrap()
        .to_owned();
    std::fs::write(
        previous.join("Chart.yaml"),
        chart_yaml.replace(&format!("version: {version}"), "version: 0.0.9"),
    )
    .unwrap();
    let crd_file = previous.join("files/crds/targetapps.operator.kco.local.yaml");
    let crd = std::fs::read_to_string(&crd_file).unwrap();
    assert!(crd.contains("    categories:\n    - kco\n"));
    std::fs::write(&crd_file, crd.replace("    categories:\n    - kco\n", "")).unwrap();

    helm_on(&cp, &ns, &["install", "kco", previous.to_str().unwrap()]);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let categories = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        crd.spec.names.categories.unwrap_or_default()
    };
    let installed = crds.get("targetapps.operator.kco.local").await.unwrap();
    assert_eq!(
        installed.metadata.labels.as_ref().unwrap()["helm.sh/chart"],
        "kco-0.0.9"
    );
    assert!(categories(installed).is_empty());
    // A TargetApp made under the old CRD.
    let apps: Api<kco::targetapp::TargetApp> = Api::namespaced(client.clone(), &ns);
    let app: kco::targetapp::TargetApp = serde_json::from_value(json!({
        "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
        "metadata": {"name": "mina"}, "spec": {"selector": {"matchLabels": {"app": "mina"}}}}))
    .unwrap();
    apps.create(&PostParams::default(), &app).await.unwrap();

    // `helm upgrade` to this chart upgrades the CRD (Helm's crds/ never would).
    helm_on(
        &cp,
        &ns,
        &["upgrade", "kco", repo_path("charts/kco").to_str().unwrap()],
    );
    let upgraded = crds.get("targetapps.operator.kco.local").await.unwrap();
    assert_eq!(
        upgraded.metadata.labels.as_ref().unwrap()["helm.sh/chart"],
        format!("kco-{version}")
    );
    assert_eq!(categories(upgraded), ["kco"]);
    // `kubectl get kco` lists both kinds once the apiserver serves the category.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp
            .kubectl(&User::Admin)
            .unwrap()
            .args(["get", "kco", "-A", "-o", "name"])
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if listed.contains("targetapp.operator.kco.local/mina") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl get kco: {listed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Uninstalling keeps the CRDs, and so the tenants' TargetApps.
    helm_on(&cp, &ns, &["uninstall", "kco"]);
    assert!(crds.get("targetapps.operator.kco.local").await.is_ok());
    assert!(crds.get("tenantquotas.operator.kco.local").await.is_ok());
    assert!(
        apps.get("mina").await.is_ok(),
        "the TargetApp outlived the release"
    );
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

/// The chart's running pods: (name, node, the checksum of the settings it was given).
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
            let level = p
                .metadata
                .annotations
                .unwrap_or_default()
                .remove("checksum/config")
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
    for test in ["kco-test-readiness", "kco-test-webhook"] {
        let result = tested
            .split("TEST SUITE:")
            .find(|suite| suite.trim_start().starts_with(&format!("{test}\n")))
            .unwrap_or_else(|| panic!("{test} did not run: {tested}"));
        assert!(result.contains("Phase:          Succeeded"), "{tested}");
    }

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
    let settings = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .get("kco-config")
        .await
        .unwrap()
        .data
        .unwrap_or_default();
    assert_eq!(settings.get("LOG_LEVEL").map(String::as_str), Some("debug"));
    let upgraded = wait_chart_pods(&client, ns, |pods| {
        pods.len() == 3 && pods.iter().all(|(_, _, sum)| *sum != first_level)
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
