//! `exec_command`: runs a command in the pod that fired, through the `pods/exec`
//! subresource as the tenant's service account, and records the exit code and the
//! (truncated) output. Only tenants whose quota lists it may use it.

use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams, PostParams};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::params::{Params, done, require};
use super::{Action, ActionContext, ActionError, Outcome, ParamProblem};

pub struct ExecCommand;

const PARAMS: &[&str] = &["command", "container", "timeoutSeconds", "reportOutput"];

/// Output kept per stream, in bytes (the rest is counted, not kept): both
/// streams and the action's own words fit in one Event note (1,000 bytes), so
/// that the count of what was left out is never cut off itself.
pub const MAX_OUTPUT: usize = 256;
/// Output read per stream before the rest is discarded.
const READ_LIMIT: u64 = 64 * 1024;

impl Action for ExecCommand {
    fn name(&self) -> &'static str {
        "exec_command"
    }

    fn validate(&self, params: &Params) -> Result<(), Vec<ParamProblem>> {
        let mut problems = params.unknown(PARAMS);
        require(params, "command", &mut problems);
        match params.get("command") {
            None => {}
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= 64 => {
                for (i, item) in items.iter().enumerate() {
                    if item.as_str().is_none_or(|s| s.contains('\0')) {
                        problems.push(ParamProblem::at(
                            &format!("command[{i}]"),
                            "must be a string",
                        ));
                    }
                }
                if items.first().and_then(Value::as_str) == Some("") {
                    problems.push(ParamProblem::at("command[0]", "must name a program"));
                }
            }
            Some(_) => problems.push(ParamProblem::at(
                "command",
                "must be a list of 1 to 64 strings (the program and its arguments)",
            )),
        }
        params.object_name("container", crate::names::label, &mut problems);
        params.int("timeoutSeconds", 1, 3600, &mut problems);
        if params.get("reportOutput").is_some_and(|v| !v.is_boolean()) {
            problems.push(ParamProblem::at("reportOutput", "must be true or false"));
        }
        done(problems)
    }

    fn run<'a>(
        &'a self,
        ctx: &'a ActionContext,
        params: &'a Params,
    ) -> BoxFuture<'a, Result<Outcome, ActionError>> {
        Box::pin(async move {
            let pod = ctx.target_pod(self.name())?;
            let command: Vec<String> = params
                .get("command")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut ignored = Vec::new();
            let container = params.string("container", &mut ignored);
            let what = format!(
                "exec {:?} in pod {}/{pod}{}",
                command.join(" "),
                ctx.namespace,
                container
                    .as_deref()
                    .map(|c| format!(" container {c}"))
                    .unwrap_or_default()
            );
            if ctx.dry_run {
                // An exec cannot be dry-run: ask the apiserver whether it would be allowed.
                return may_exec(ctx, pod, &what).await.map(|()| Outcome {
                    message: format!(
                        "would {what} [dry run: the apiserver allows it, nothing ran]"
                    ),
                });
            }
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            let mut attach = AttachParams::default().stdout(true).stderr(true);
            if let Some(c) = &container {
                attach = attach.container(c);
            }
            let mut process = match pods.exec(pod, command.clone(), &attach).await {
                Ok(process) => process,
                Err(e) => {
                    let bad_request = is_bad_request(&e);
                    let error = exec_error(&what, e);
                    return Err(if bad_request {
                        explain_bad_request(&pods, pod, container.as_deref(), &what)
                            .await
                            .unwrap_or(error)
                    } else {
                        error
                    });
                }
            };
            let status = process.take_status();
            let stdout = read_capped(process.stdout());
            let stderr = read_capped(process.stderr());
            let (stdout, stderr) = tokio::join!(stdout, stderr);
            let status = match status {
                Some(status) => status.await,
                None => None,
            };
            let _ = process.join().await;
            let output = Output {
                stdout: &stdout,
                stderr: &stderr,
                reported: params.get("reportOutput").and_then(Value::as_bool) == Some(true),
            };
            summarize(&what, status.as_ref(), &output)
        })
    }
}

/// Asks the apiserver, as the tenant's service account, whether it may exec here.
async fn may_exec(ctx: &ActionContext, pod: &str, what: &str) -> Result<(), ActionError> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(ctx.client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ctx.namespace.clone()),
                verb: Some("create".into()),
                resource: Some("pods".into()),
                subresource: Some("exec".into()),
                name: Some(pod.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| ActionError::from_kube(&format!("check the rights to {what}"), e))?;
    if answer.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        Err(ActionError::Forbidden(format!(
            "{what}: the service account may not create pods/exec in namespace {}",
            ctx.namespace
        )))
    }
}

/// An exec that could not start, in words: RBAC refusals name what was missing.
///
/// The apiserver answers a refused upgrade with a `metav1.Status` body, which
/// the client surfaces as [`kube::Error::Api`] (docs/adr/0010-kube-5.md); only a
/// handshake that went wrong after the apiserver agreed is an upgrade error.
fn exec_error(what: &str, e: kube::Error) -> ActionError {
    match e {
        kube::Error::Api(status) if status.code == 403 => ActionError::Forbidden(format!(
            "{what}: create pods/exec refused: {}",
            status.message
        )),
        kube::Error::Api(_) => ActionError::from_kube(what, e),
        kube::Error::UpgradeConnection(upgrade) => {
            ActionError::Failed(format!("{what}: cannot open the exec stream: {upgrade}"))
        }
        // The request may have reached the kubelet: never retried (not resumable).
        other => ActionError::Failed(format!("{what}: {other}")),
    }
}

/// The apiserver refused the exec request itself with 400 Bad Request (a
/// container that is not in the pod, or none named in a pod of several).
fn is_bad_request(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 400)
}

/// Why the apiserver refused an exec with 400, when the pod tells: the named
/// container is not in it, or it has several and none was named. `None` when
/// the pod cannot be read or explains nothing.
async fn explain_bad_request(
    pods: &Api<Pod>,
    pod: &str,
    container: Option<&str>,
    what: &str,
) -> Option<ActionError> {
    let found = pods.get(pod).await.ok()?;
    let names: Vec<&str> = found
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    container_problem(&names, container).map(|why| ActionError::Failed(format!("{what}: {why}")))
}

/// What is wrong with running in `container` (or the default one) of a pod with
/// the containers `names`, if anything.
pub fn container_problem(names: &[&str], container: Option<&str>) -> Option<String> {
    let list = names.join(", ");
    match container {
        Some(wanted) if !names.contains(&wanted) => Some(format!(
            "the pod has no container {wanted:?} (its containers: {list}); fix parameters.container"
        )),
        None if names.len() > 1 => Some(format!(
            "the pod has several containers ({list}): name one in parameters.container"
        )),
        _ => None,
    }
}

/// Reads a stream up to [`READ_LIMIT`] bytes.
async fn read_capped(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(stream) = stream {
        let _ = tokio::time::timeout(
            Duration::from_secs(3600),
            stream.take(READ_LIMIT).read_to_end(&mut out),
        )
        .await;
    }
    out
}

/// The exit code an exec status reports: 0 on success, the `ExitCode` cause on a
/// non-zero exit, an error when the command did not run at all.
pub fn exit_code(status: Option<&Status>) -> Result<i32, String> {
    let Some(status) = status else {
        return Err("the exec stream ended without a status".to_owned());
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|c| c.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|c| c.message.as_deref()?.parse::<i32>().ok());
    let reason = status.reason.as_deref().unwrap_or("unknown");
    match (code, status.message.as_deref()) {
        (Some(code), _) if reason == "NonZeroExitCode" => Ok(code),
        (_, Some(message)) if !message.is_empty() => Err(message.to_owned()),
        _ => Err(format!("the command did not run ({reason})")),
    }
}

/// Output as text: invalid UTF-8 replaced, cut at [`MAX_OUTPUT`] bytes on a
/// character boundary with a note of how much was left out.
pub fn truncate_output(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if text.len() <= MAX_OUTPUT {
        return text.to_owned();
    }
    let mut cut = MAX_OUTPUT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} more bytes)", &text[..cut], text.len() - cut)
}

/// What a finished command wrote, and whether the TargetApp asks to see it in
/// Events (`reportOutput`: output can hold what the pod knows, and Events are
/// readable by everyone who may read the namespace's Events).
pub struct Output<'a> {
    pub stdout: &'a [u8],
    pub stderr: &'a [u8],
    pub reported: bool,
}

/// The outcome of a finished exec.
pub fn summarize(
    what: &str,
    status: Option<&Status>,
    output: &Output<'_>,
) -> Result<Outcome, ActionError> {
    let code = exit_code(status).map_err(|why| ActionError::Failed(format!("{what}: {why}")))?;
    let mut message = format!("{what}: exit code {code}");
    for (name, bytes) in [("stdout", output.stdout), ("stderr", output.stderr)] {
        let text = truncate_output(bytes);
        if text.is_empty() {
            continue;
        }
        if output.reported {
            message.push_str(&format!("; {name}: {text}"));
        } else {
            message.push_str(&format!("; {name}: {} bytes, not shown", bytes.len()));
        }
    }
    if code == 0 {
        Ok(Outcome { message })
    } else {
        Err(ActionError::Failed(message))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    use super::*;

    fn exited(code: i32) -> Status {
        Status {
            status: Some("Failure".into()),
            reason: Some("NonZeroExitCode".into()),
            message: Some(format!(
                "command terminated with non-zero exit code: {code}"
            )),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some(code.to_string()),
                    field: None,
                }]),
                ..StatusDetails::default()
            }),
            ..Status::default()
        }
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let ok = Status {
            status: Some("Success".into()),
            ..Status::default()
        };
        assert_eq!(exit_code(Some(&ok)), Ok(0));
        assert_eq!(exit_code(Some(&exited(3))), Ok(3));
        let broken = Status {
            status: Some("Failure".into()),
            reason: Some("InternalError".into()),
            message: Some("container not found (\"node\")".into()),
            ..Status::default()
        };
        assert_eq!(
            exit_code(Some(&broken)),
            Err("container not found (\"node\")".to_owned())
        );
        assert!(exit_code(None).unwrap_err().contains("without a status"));
    }

    #[test]
    fn output_is_truncated_on_a_character_boundary() {
        assert_eq!(truncate_output(b"synced\n"), "synced");
        assert_eq!(truncate_output(b"bad \xff byte"), "bad \u{fffd} byte");
        let long = "é".repeat(MAX_OUTPUT); // two bytes each
        let out = truncate_output(long.as_bytes());
        assert!(
            out.ends_with(&format!("… ({} more bytes)", MAX_OUTPUT)),
            "{out}"
        );
        assert!(out.len() < MAX_OUTPUT + 40);
    }

    #[test]
    fn a_non_zero_exit_is_a_failure_with_its_output() {
        let success = Status {
            status: Some("Success".into()),
            ..Status::default()
        };
        let shown = |stdout: &'static [u8], stderr: &'static [u8]| Output {
            stdout,
            stderr,
            reported: true,
        };
        let ok = summarize("exec", Some(&success), &shown(b"restarted\n", b"")).unwrap();
        assert_eq!(ok.message, "exec: exit code 0; stdout: restarted");
        let err = summarize("exec", Some(&exited(2)), &shown(b"", b"no such file")).unwrap_err();
        assert_eq!(
            err,
            ActionError::Failed("exec: exit code 2; stderr: no such file".into())
        );
    }

    #[test]
    fn output_stays_out_of_events_unless_asked_for() {
        let hidden = Output {
            stdout: b"token=s3cr3t\n",
            stderr: b"",
            reported: false,
        };
        let err = summarize("exec", Some(&exited(1)), &hidden).unwrap_err();
        assert_eq!(
            err,
            ActionError::Failed("exec: exit code 1; stdout: 13 bytes, not shown".into())
        );
        assert!(!err.to_string().contains("s3cr3t"));
    }

    fn refused(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn an_exec_refused_by_rbac_names_the_missing_right() {
        let rbac = "pods \"mina-0\" is forbidden: User \"system:serviceaccount:a:probe\" \
                    cannot create resource \"pods/exec\" in API group \"\" in the namespace \"a\"";
        let e = refused(403, rbac);
        assert!(!is_bad_request(&e));
        assert_eq!(
            exec_error("exec \"true\" in pod mina-0", e),
            ActionError::Forbidden(format!(
                "exec \"true\" in pod mina-0: create pods/exec refused: {rbac}"
            ))
        );
    }

    #[test]
    fn a_bad_request_is_recognised_and_other_refusals_keep_the_apiservers_words() {
        let bad = refused(400, "container sidecar is not valid for pod mina-0");
        assert!(is_bad_request(&bad));
        assert_eq!(
            exec_error("exec", bad),
            ActionError::Failed("exec: container sidecar is not valid for pod mina-0 (400)".into())
        );
        assert_eq!(
            exec_error("exec", refused(404, "pods \"mina-9\" not found")),
            ActionError::NotFound("exec: pods \"mina-9\" not found".into())
        );
        assert!(!is_bad_request(&refused(500, "etcd timeout")));
        let handshake = kube::Error::UpgradeConnection(
            kube::client::UpgradeConnectionError::MissingUpgradeWebSocketHeader,
        );
        assert!(matches!(
            exec_error("exec", handshake),
            ActionError::Failed(m) if m.starts_with("exec: cannot open the exec stream: ")
        ));
    }

    #[test]
    fn a_missing_or_unnamed_container_is_explained_with_the_pods_containers() {
        assert_eq!(
            container_problem(&["mina"], Some("sidecar")).as_deref(),
            Some(
                "the pod has no container \"sidecar\" (its containers: mina); fix parameters.container"
            )
        );
        assert_eq!(
            container_problem(&["mina", "exporter"], None).as_deref(),
            Some(
                "the pod has several containers (mina, exporter): name one in parameters.container"
            )
        );
        assert_eq!(container_problem(&["mina", "exporter"], Some("mina")), None);
        assert_eq!(container_problem(&["mina"], None), None);
    }
}
