//! `kco validate`: the admission checks offline, with the exit codes scripts rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::process::Command;

fn kco(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kco"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_documented_example_is_accepted() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/targetapp-mina.yaml"
    );
    let (code, stdout, _) = kco(&["validate", example]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.ends_with("default/mina: accepted\n"), "{stdout}");
}

/// The subscriptions example: its `@` paths checked against what each
/// subscription selects.
#[test]
fn the_subscriptions_example_is_accepted_and_a_path_it_does_not_select_is_not() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/targetapp-mina-blocks.yaml"
    );
    let (code, stdout, _) = kco(&["validate", example]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with("default/mina-blocks: accepted\n"),
        "{stdout}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blocks.yaml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("consensusState.blockHeight", "consensusState.epoch");
    std::fs::write(&file, text).unwrap();
    let (code, stdout, _) = kco(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("spec.reportChanges[0]: @blocks.protocolState.consensusState selects no field \"epoch\"")
            && stdout.contains("spec.actions[0].trigger.field: @blocks.protocolState.consensusState selects no field \"epoch\""),
        "{stdout}"
    );
}

#[test]
fn rejections_name_the_field_and_the_reason_one_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apps.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: good, namespace: chain}
spec:
  selector: {matchLabels: {app: mina}}
---
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: bad, namespace: chain}
spec:
  graphqlEndpoint: http://169.254.169.254/graphql
  stateQuery: "mutation { startFilteredLog(filter: [\"x\"]) }"
  actions:
  - trigger: {field: daemonStatus.syncStatus, condition: lessThan, value: 3}
    action: scale_deployment
    parameters: {replicas: 2, delta: 1}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
"#,
    )
    .unwrap();
    let (code, stdout, _) = kco(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.ends_with("chain/good: accepted")),
        "{stdout}"
    );
    for expected in [
        "chain/bad: spec.graphqlEndpoint: 169.254.169.254 is a link-local",
        "chain/bad: spec.stateQuery: the operation is a mutation",
        "chain/bad: spec.actions[0].parameters.name: is required",
        "chain/bad: spec.actions[0].parameters.delta: give either replicas or delta",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ConfigMap default/unrelated: skipped")),
        "{stdout}"
    );
}

#[test]
fn unreadable_files_and_broken_yaml_are_told_apart() {
    let (code, _, stderr) = kco(&["validate", "/nonexistent/apps.yaml"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("cannot read /nonexistent/apps.yaml"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "kind: TargetApp\nspec: [unclosed\n").unwrap();
    let (code, stdout, _) = kco(&["validate", broken.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("not valid YAML"), "{stdout}");
    let (code, _, _) = kco(&["validate"]);
    assert_eq!(code, Some(2), "no file is a usage error");
}

#[test]
fn the_documented_invalid_example_is_refused_with_every_problem() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/targetapp-invalid.yaml"
    );
    let (code, stdout, _) = kco(&["validate", example]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    for needle in [
        "mina/broken: spec.actions[0].trigger.value:",
        "mina/broken: spec.actions[2].trigger.field:",
        "mina/broken: spec.actions[1].parameters.url: 169.254.169.254 is a link-local",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle:?} not in:\n{stdout}"
        );
    }
}

/// `kco validate` judges with the default quota, which does not allow
/// exec_command: the operations example fails on that one action only, and says
/// which quota refused it.
#[test]
fn the_operations_example_needs_only_its_tenant_quota() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/targetapp-mina-ops.yaml"
    );
    let (code, stdout, stderr) = kco(&["validate", example]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let problems: Vec<&str> = stdout.lines().collect();
    assert_eq!(problems.len(), 1, "{stdout}");
    assert!(
        problems[0].ends_with(
            "default/mina-ops: spec.actions[0].action: action exec_command is not allowed in namespace default by its tenant quota (allowed: restart_pod, scale_deployment, patch_resource, webhook)"
        ),
        "{stdout}"
    );
}

const SANDBOX_QUOTA: &str = r#"
apiVersion: operator.kco.local/v1alpha1
kind: TenantQuota
metadata: {name: sandbox}
spec:
  namespaceSelector:
    matchLabels: {kco.example.com/tenant: sandbox}
  maxTargetApps: 1
  minPollingInterval: 60
  allowedActions: [restart_pod]
"#;

/// Two TargetApps of one namespace: the first applied twice (a create, then an
/// update), the second polling fast and calling a webhook.
const TWO_APPS: &str = r#"
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: a, namespace: play}
spec: {selector: {matchLabels: {app: mina}}, pollingInterval: 60}
---
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: a, namespace: play}
spec: {selector: {matchLabels: {app: mina}}, pollingInterval: 90}
---
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: b, namespace: play}
spec:
  selector: {matchLabels: {app: mina}}
  pollingInterval: 10
  actions:
  - trigger: {field: $up, condition: equals, value: false}
    action: webhook
    parameters: {url: https://hooks.example.com/x}
"#;

/// Writes `text` to `name` in `dir`, returning its path.
fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn quotas_and_namespace_labels_judge_as_that_cluster_would() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write(&dir, name, text);
    let quota = write("quota.yaml", SANDBOX_QUOTA);
    let apps = write("apps.yaml", TWO_APPS);
    let labels = "play:kco.example.com/tenant=sandbox,team=a";
    let (code, stdout, stderr) = kco(&[
        "validate",
        &apps,
        "--quota",
        &quota,
        "--namespace-labels",
        labels,
    ]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    // The same object twice is a create and an update: one TargetApp.
    assert!(lines[0].ends_with("play/a: accepted"), "{stdout}");
    assert!(lines[1].ends_with("play/a: accepted"), "{stdout}");
    for (line, expected) in lines[2..].iter().zip([
        "play/b: metadata.namespace: the tenant of namespace play has 1 TargetApps and TenantQuota sandbox allows at most 1",
        "play/b: spec.pollingInterval: 10s is below the minimum of 60s set by TenantQuota sandbox",
        "play/b: spec.actions[0].action: action webhook is not allowed in namespace play by its tenant quota (allowed: restart_pod)",
    ]) {
        assert!(line.ends_with(expected), "{expected:?} in
{stdout}");
    }
    // A namespace the quota does not select has the operator's default quota.
    let (code, stdout, _) = kco(&["validate", &apps, "--quota", &quota]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with(
            "play/b: accepted
"
        ),
        "{stdout}"
    );
    // The label every namespace has selects without being given.
    let by_name = write(
        "by-name.yaml",
        &SANDBOX_QUOTA.replace(
            "{kco.example.com/tenant: sandbox}",
            "{kubernetes.io/metadata.name: play}",
        ),
    );
    let (code, stdout, _) = kco(&["validate", &apps, "--quota", &by_name]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("set by TenantQuota sandbox"), "{stdout}");
}

#[test]
fn tenant_quotas_are_judged_as_their_webhook_would_and_a_bad_one_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write(&dir, name, text);
    let good = write("good.yaml", SANDBOX_QUOTA);
    let typo = write(
        "typo.yaml",
        &SANDBOX_QUOTA.replace("maxTargetApps", "maxTargetApp"),
    );
    let everyone = write(
        "everyone.yaml",
        &SANDBOX_QUOTA.replace("{kco.example.com/tenant: sandbox}", "{}"),
    );
    let (code, stdout, _) = kco(&["validate", &good, &typo, &everyone]);
    assert_eq!(code, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].ends_with("good.yaml: sandbox: accepted"),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(
            "typo.yaml: sandbox: spec.maxTargetApp: unknown field; did you mean \"maxTargetApps\"?"
        ),
        "{stdout}"
    );
    assert!(
        lines[2].contains("everyone.yaml: sandbox: spec.namespaceSelector: an empty selector selects every namespace"),
        "{stdout}"
    );
    let apps = write("apps.yaml", TWO_APPS);
    for (args, needle) in [
        (vec!["--quota", &everyone], "a --quota is not valid"),
        (vec!["--quota", &apps], "no TenantQuota in it"),
        (
            vec!["--quota", &good, "--namespace-labels", "Play:x=y"],
            "namespace \"Play\" is not a valid name",
        ),
        (
            vec!["--quota", &good, "--namespace-labels", "play:x=-y"],
            "is not a label value",
        ),
        (vec!["--cluster", "--quota", &good], "cannot be used with"),
    ] {
        let mut all = vec!["validate", apps.as_str()];
        all.extend(args.iter().copied());
        let (code, stdout, stderr) = kco(&all);
        assert_eq!(code, Some(2), "{all:?}: {stdout}{stderr}");
        assert!(stderr.contains(needle), "{all:?}: {stderr}");
    }
}

/// README, docs, comments and tests speak of KCO and its users, never of how it
/// was built: no work sessions, no tracker issue numbers, no design notes kept
/// outside the repository.
#[test]
fn the_repository_speaks_of_the_product_not_of_how_it_was_built() {
    let root = env!("CARGO_MANIFEST_DIR");
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(listed.status.success(), "git ls-files: {listed:?}");
    let words =
        regex::Regex::new(r"(?i)\bsession\s+#?\d|\bissue\s+#?\d|\bDESIGN(\.md)?\s*§|\.\./shared/")
            .unwrap();
    let mut found = Vec::new();
    for path in String::from_utf8_lossy(&listed.stdout).split('\0') {
        if path.is_empty() || path.starts_with("fuzz/corpus/") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(std::path::Path::new(root).join(path)) else {
            continue; // binary, or removed from the work tree
        };
        for (n, line) in text.lines().enumerate() {
            if words.is_match(line) {
                found.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "process words:\n{}", found.join("\n"));
}

/// Every action the workflows use is pinned by commit (a tag can be moved to
/// other code; Dependabot proposes new commits), with its version beside it.
#[test]
fn every_workflow_action_is_pinned_by_commit() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows");
    let mut uses = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| l.contains("uses: ")) {
            uses += 1;
            let reference = line.split("uses: ").nth(1).unwrap_or_default();
            if reference.starts_with("./") {
                continue; // this repository's own workflow, at the same commit
            }
            let (action, rest) = reference.split_once('@').unwrap_or((reference, ""));
            let (sha, comment) = rest.split_once(" # ").unwrap_or((rest, ""));
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{}: {action} is not pinned by commit: {line}",
                path.display()
            );
            assert!(
                !comment.trim().is_empty(),
                "{}: say which version {sha} is",
                path.display()
            );
        }
    }
    assert!(uses > 10, "{uses} uses: lines read");
}

#[test]
fn an_unknown_field_is_an_error_with_its_path_not_a_lost_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: operator.kco.local/v1alpha1
kind: TargetApp
metadata: {name: typo, namespace: chain}
spec:
  selector: {matchLabels: {app: mina}}
  pollingIntervall: 5
  actions:
  - trigger: {field: $up, condition: equals, value: false}
    action: restart_pod
    paramters: {gracePeriod: 30}
"#,
    )
    .unwrap();
    let (code, stdout, _) = kco(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "chain/typo: spec.pollingIntervall: unknown field; did you mean \"pollingInterval\"?",
        "chain/typo: spec.actions[0].paramters: unknown field; did you mean \"parameters\"?",
    ] {
        assert!(
            stdout.lines().any(|l| l.ends_with(expected)),
            "missing {expected:?} in\n{stdout}"
        );
    }
    assert!(!stdout.contains("accepted"), "{stdout}");
}
