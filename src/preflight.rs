//! `kco validate`: manifests judged before they are applied. Offline, a
//! TargetApp is judged as the admission webhook of a cluster holding the given
//! TenantQuotas and namespace labels would judge it (the files' TargetApps
//! created in order, counting towards their tenant's `maxTargetApps`), and a
//! TenantQuota as its webhook would; with `--cluster`, the cluster's own
//! apiserver and webhooks judge each manifest through a server-side dry run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::admission::query::QuerySchema;
use crate::admission::{Validator, defaults, fields, validate::parse_targetapp};
use crate::tenancy::{Quota, TenantQuota, Tenants};

type Labels = BTreeMap<String, String>;

/// The label the apiserver gives every namespace: its name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One document of a manifest file.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it came from, as given.
    pub file: String,
    /// `namespace/name` (`default` and `(no name)` when the document has none),
    /// or the name of a cluster-scoped object.
    pub object: String,
    pub kind: String,
    pub document: Value,
}

/// What became of one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Accepted {
        warnings: Vec<String>,
    },
    /// Each problem as `path: reason`.
    Refused(Vec<String>),
    /// Not a kind `kco validate` judges.
    Skipped,
}

/// A file, or one of its documents, that cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// The file cannot be read (a usage error: exit 2).
    File(String),
    /// The file is not YAML (a rejection: exit 1).
    Yaml(String),
}

/// The documents of `file`, in order (empty documents left out).
pub fn read(file: &Path) -> Result<Vec<Manifest>, Unreadable> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| Unreadable::File(format!("cannot read {name}: {e}")))?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .map_err(|e| Unreadable::Yaml(format!("{name}: not valid YAML: {e}")))?;
    Ok(documents
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|document| {
            let text = |pointer: &str, absent: &str| {
                document
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .unwrap_or(absent)
                    .to_owned()
            };
            let kind = text("/kind", "(no kind)");
            let object = match kind.as_str() {
                // Cluster-scoped.
                "TenantQuota" => text("/metadata/name", "(no name)"),
                _ => format!(
                    "{}/{}",
                    text("/metadata/namespace", "default"),
                    text("/metadata/name", "(no name)")
                ),
            };
            Manifest {
                file: name.clone(),
                object,
                kind,
                document,
            }
        })
        .collect())
}

/// The TenantQuotas of `manifests` (documents of other kinds are left out),
/// each as its webhook would accept it, or every problem found.
pub fn quotas(manifests: &[Manifest]) -> Result<Vec<TenantQuota>, Vec<String>> {
    let mut quotas = Vec::new();
    let mut problems = Vec::new();
    for manifest in manifests.iter().filter(|m| m.kind == "TenantQuota") {
        match judge_quota(&manifest.document) {
            Ok(quota) => quotas.push(quota),
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|p| format!("{}: {}: {p}", manifest.file, manifest.object)),
            ),
        }
    }
    if problems.is_empty() {
        Ok(quotas)
    } else {
        Err(problems)
    }
}

/// A TenantQuota, or its problems: unknown fields, then the webhook's checks.
fn judge_quota(document: &Value) -> Result<TenantQuota, Vec<String>> {
    let unknown = fields::unknown_in_tenantquota(document);
    if !unknown.is_empty() {
        return Err(unknown.iter().map(ToString::to_string).collect());
    }
    let quota: TenantQuota = serde_json::from_value(document.clone())
        .map_err(|e| vec![format!("not a valid TenantQuota: {e}")])?;
    let problems =
        crate::tenancy::quota::check(&quota.spec, &crate::actions::Registry::builtin().names());
    if problems.is_empty() {
        Ok(quota)
    } else {
        Err(problems)
    }
}

/// A namespace and its labels from `NAMESPACE:KEY=VALUE[,KEY=VALUE...]`
/// (`NAMESPACE:` alone: no labels but its name).
pub fn namespace_labels(text: &str) -> Result<(String, Labels), String> {
    let (namespace, pairs) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected NAMESPACE:KEY=VALUE[,KEY=VALUE...]"))?;
    crate::names::label(namespace).map_err(|why| format!("{text:?}: namespace {why}"))?;
    let mut labels = Labels::new();
    for pair in pairs.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: {pair:?} is not KEY=VALUE"))?;
        crate::names::label_key(key).map_err(|why| format!("{text:?}: label {key:?}: {why}"))?;
        crate::names::label_value(value)
            .map_err(|why| format!("{text:?}: value of {key:?}: {why}"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    labels.insert(NAME_LABEL.to_owned(), namespace.to_owned());
    Ok((namespace.to_owned(), labels))
}

/// The admission checks of a cluster with the given TenantQuotas and
/// namespaces, and no TargetApps until these are created.
pub struct Offline {
    validator: Validator,
    tenants: Arc<Tenants>,
    custom: Option<QuerySchema>,
    /// The TargetApps created so far, by namespace.
    created: BTreeMap<String, BTreeSet<String>>,
}

impl Offline {
    /// `custom`: the schema of TargetApps whose schema is a ConfigMap.
    pub fn new(
        custom: Option<QuerySchema>,
        quotas: Vec<TenantQuota>,
        namespaces: Vec<(String, Labels)>,
    ) -> Self {
        let tenants = Tenants::new(Quota::default());
        for quota in quotas {
            tenants.put_quota(&kube::ResourceExt::name_any(&quota), quota.spec);
        }
        for (namespace, labels) in namespaces {
            tenants.put_namespace(&namespace, labels);
        }
        Self {
            validator: Validator::offline(tenants.clone()),
            tenants,
            custom,
            created: BTreeMap::new(),
        }
    }

    /// Judges one manifest as the webhooks would on its create (or its update,
    /// when an earlier document created it); an accepted TargetApp is created.
    pub fn judge(&mut self, manifest: &Manifest) -> Judgement {
        match manifest.kind.as_str() {
            "TargetApp" => self.judge_targetapp(manifest),
            "TenantQuota" => match judge_quota(&manifest.document) {
                Ok(_) => Judgement::Accepted {
                    warnings: Vec::new(),
                },
                Err(problems) => Judgement::Refused(problems),
            },
            _ => Judgement::Skipped,
        }
    }

    fn judge_targetapp(&mut self, manifest: &Manifest) -> Judgement {
        // What the apiserver refuses under kubectl's strict field validation,
        // and decoding would drop: a field the schema does not have.
        let unknown = fields::unknown_in_targetapp(&manifest.document);
        if !unknown.is_empty() {
            return Judgement::Refused(unknown.iter().map(ToString::to_string).collect());
        }
        // What the apiserver would store: the mutating webhook's defaults first.
        let mut document = manifest.document.clone();
        if let Some(spec) = document.get_mut("spec") {
            defaults::apply(spec, defaults::Defaults::default());
        }
        let app = match parse_targetapp(document) {
            Ok(app) => app,
            Err(e) => return Judgement::Refused(vec![e]),
        };
        let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
        let name = app.metadata.name.clone().unwrap_or_default();
        self.know(namespace);
        let mut problems = Vec::new();
        let creating = !self
            .created
            .get(namespace)
            .is_some_and(|names| names.contains(&name));
        if creating && let Some(why) = self.tenants.refuses_another_app(namespace) {
            problems.push(why);
        }
        let verdict = self.validator.validate(&app, self.custom.as_ref());
        problems.extend(verdict.problems.iter().map(ToString::to_string));
        if !problems.is_empty() {
            return Judgement::Refused(problems);
        }
        self.created
            .entry(namespace.to_owned())
            .or_default()
            .insert(name);
        self.tenants.set_app_counts(
            self.created
                .iter()
                .map(|(ns, names)| (ns.clone(), names.len()))
                .collect(),
        );
        Judgement::Accepted {
            warnings: verdict.warnings,
        }
    }

    /// A namespace no `--namespace-labels` named has the one label every
    /// namespace has.
    fn know(&self, namespace: &str) {
        if !self.tenants.has_namespace(namespace) {
            self.tenants.put_namespace(
                namespace,
                Labels::from([(NAME_LABEL.to_owned(), namespace.to_owned())]),
            );
        }
    }
}

/// Asks the cluster of `client` to judge `manifest` by a server-side dry run of
/// its apply (a create when the object does not exist), with strict field
/// validation: the apiserver's schema checks and every admission webhook and
/// policy run, and nothing is stored. `namespace` is used when the manifest
/// names none. An error when the cluster cannot be asked.
pub async fn on_cluster(
    client: &kube::Client,
    manifest: &Manifest,
    namespace: &str,
) -> Result<Judgement, String> {
    use kube::api::{Api, DynamicObject, Patch, PatchParams, ValidationDirective};
    use kube::core::ApiResource;
    let api_resource = match manifest.kind.as_str() {
        "TargetApp" => ApiResource::erase::<crate::targetapp::TargetApp>(&()),
        "TenantQuota" => ApiResource::erase::<TenantQuota>(&()),
        _ => return Ok(Judgement::Skipped),
    };
    let Some(name) = manifest
        .document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
    else {
        return Ok(Judgement::Refused(vec![
            "metadata.name: required".to_owned(),
        ]));
    };
    // Names go into the request's path: a name that is not one (`x#`, `a/b`)
    // would address something else.
    if let Err(why) = crate::names::subdomain(name) {
        return Ok(Judgement::Refused(vec![format!("metadata.name: {why}")]));
    }
    let api: Api<DynamicObject> = if manifest.kind == "TenantQuota" {
        Api::all_with(client.clone(), &api_resource)
    } else {
        let namespace = manifest
            .document
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        if let Err(why) = crate::names::label(namespace) {
            return Ok(Judgement::Refused(vec![format!(
                "metadata.namespace: {why}"
            )]));
        }
        Api::namespaced_with(client.clone(), namespace, &api_resource)
    };
    let mut params = PatchParams::apply("kco-validate").dry_run().force();
    params.field_validation = Some(ValidationDirective::Strict);
    match api
        .patch(name, &params, &Patch::Apply(&manifest.document))
        .await
    {
        Ok(_) => Ok(Judgement::Accepted {
            warnings: Vec::new(),
        }),
        Err(kube::Error::Api(status)) => Ok(Judgement::Refused(vec![status.message])),
        Err(e) => Err(format!("cannot ask the cluster: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_labels_are_labels_and_carry_the_namespace_name() {
        let (namespace, labels) =
            namespace_labels("chain:kco.example.com/tenant=a,empty=").unwrap();
        assert_eq!(namespace, "chain");
        assert_eq!(
            labels,
            Labels::from([
                ("empty".to_owned(), String::new()),
                ("kco.example.com/tenant".to_owned(), "a".to_owned()),
                (NAME_LABEL.to_owned(), "chain".to_owned()),
            ])
        );
        // The name label is the apiserver's: it cannot be given another value.
        let (_, labels) = namespace_labels("chain:kubernetes.io/metadata.name=other").unwrap();
        assert_eq!(labels[NAME_LABEL], "chain");
        assert_eq!(namespace_labels("bare:").unwrap().1.len(), 1);
        for bad in [
            "chain",
            "Chain:a=b",
            "chain:a",
            "chain:-a=b",
            "chain:a=b c",
            ":a=b",
        ] {
            assert!(namespace_labels(bad).is_err(), "{bad}");
        }
    }

    fn manifest(kind: &str, document: Value) -> Manifest {
        Manifest {
            file: "f.yaml".to_owned(),
            object: "o".to_owned(),
            kind: kind.to_owned(),
            document,
        }
    }

    #[test]
    fn a_targetapp_applied_twice_counts_once_towards_the_tenant() {
        let quota: TenantQuota = serde_json::from_value(serde_json::json!({
            "apiVersion": "operator.kco.local/v1alpha1", "kind": "TenantQuota",
            "metadata": {"name": "one"}, "spec": {"namespaces": ["chain"], "maxTargetApps": 1}
        }))
        .unwrap();
        let mut offline = Offline::new(None, vec![quota], Vec::new());
        let app = |name: &str| {
            manifest(
                "TargetApp",
                serde_json::json!({
                    "apiVersion": "operator.kco.local/v1alpha1", "kind": "TargetApp",
                    "metadata": {"name": name, "namespace": "chain"},
                    "spec": {"selector": {}}
                }),
            )
        };
        let accepted = Judgement::Accepted {
            warnings: Vec::new(),
        };
        assert_eq!(offline.judge(&app("a")), accepted);
        assert_eq!(offline.judge(&app("a")), accepted);
        let Judgement::Refused(problems) = offline.judge(&app("b")) else {
            panic!("a second TargetApp is over the quota");
        };
        assert!(problems[0].contains("allows at most 1"), "{problems:?}");
        // A refused one is not created: the count stays.
        assert!(matches!(offline.judge(&app("c")), Judgement::Refused(_)));
        assert_eq!(
            offline.judge(&manifest("ConfigMap", serde_json::json!({}))),
            Judgement::Skipped
        );
    }
}
