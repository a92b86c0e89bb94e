//! Warm caches for admission, so that answering a review never calls the network:
//! schema ConfigMaps (labelled `operator.kco.local/schema=true`) and the names of
//! ServiceAccounts (metadata only, for warnings). Filled by watches on every replica.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::query::QuerySchema;
use crate::targetapp::{ConfigMapKeyRef, TargetApp};

/// The label a ConfigMap needs for a TargetApp to use it as its schema.
pub const SCHEMA_LABEL: &str = "operator.kco.local/schema";

/// Largest schema text accepted from a ConfigMap.
const MAX_SCHEMA_BYTES: usize = 4 * 1024 * 1024;

type Key = (String, String);
/// (namespace, name, key) of a schema, and the text it was parsed from with the result.
type Parsed = HashMap<(String, String, String), (String, Arc<QuerySchema>)>;

#[derive(Default)]
struct Inner {
    /// (namespace, name) → the ConfigMap's data.
    configmaps: RwLock<HashMap<Key, BTreeMap<String, String>>>,
    /// Parsed schemas by (namespace, name, key) and the text they came from.
    parsed: RwLock<Parsed>,
    accounts: RwLock<HashSet<Key>>,
    accounts_synced: AtomicBool,
    schemas_synced: AtomicBool,
}

/// The caches; cheap to clone.
#[derive(Clone, Default)]
pub struct Caches {
    inner: Arc<Inner>,
}

impl Caches {
    /// The schema a `configMapRef` names, parsed (and kept until the ConfigMap changes).
    pub fn schema(
        &self,
        namespace: &str,
        reference: &ConfigMapKeyRef,
    ) -> Result<Arc<QuerySchema>, String> {
        let text = {
            let maps = self
                .inner
                .configmaps
                .read()
                .map_err(|_| "the schema cache is unavailable".to_owned())?;
            let Some(data) = maps.get(&(namespace.to_owned(), reference.name.clone())) else {
                return Err(if self.inner.schemas_synced.load(Ordering::Acquire) {
                    format!(
                        "ConfigMap {namespace}/{} does not exist or lacks the label {SCHEMA_LABEL}=true",
                        reference.name
                    )
                } else {
                    "schema ConfigMaps are still loading; try again in a moment".to_owned()
                });
            };
            data.get(&reference.key).cloned().ok_or_else(|| {
                format!(
                    "ConfigMap {namespace}/{} has no key {:?}",
                    reference.name, reference.key
                )
            })?
        };
        let id = (
            namespace.to_owned(),
            reference.name.clone(),
            reference.key.clone(),
        );
        if let Ok(parsed) = self.inner.parsed.read()
            && let Some((source, schema)) = parsed.get(&id)
            && *source == text
        {
            return Ok(schema.clone());
        }
        let schema = Arc::new(parse_schema(&text)?);
        if let Ok(mut parsed) = self.inner.parsed.write() {
            parsed.insert(id, (text, schema.clone()));
        }
        Ok(schema)
    }

    /// The schema `app`'s `configMapRef` names, if it names one.
    pub fn schema_of(&self, app: &TargetApp) -> Result<Option<Arc<QuerySchema>>, String> {
        match &app.spec.schema.config_map_ref {
            Some(reference) => {
                let namespace = app.metadata.namespace.as_deref().unwrap_or("default");
                self.schema(namespace, reference).map(Some)
            }
            None => Ok(None),
        }
    }

    pub fn account_exists(&self, namespace: &str, name: &str) -> bool {
        self.inner
            .accounts
            .read()
            .map(|a| a.contains(&(namespace.to_owned(), name.to_owned())))
            .unwrap_or(true)
    }

    /// Whether the ServiceAccount list has been read (before that, no warnings).
    pub fn accounts_synced(&self) -> bool {
        self.inner.accounts_synced.load(Ordering::Acquire)
    }

    /// Whether both caches have been filled once.
    pub fn synced(&self) -> bool {
        self.accounts_synced() && self.inner.schemas_synced.load(Ordering::Acquire)
    }

    pub fn put_configmap(&self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        if let Ok(mut maps) = self.inner.configmaps.write() {
            maps.insert((namespace.to_owned(), name.to_owned()), data);
        }
    }

    pub fn remove_configmap(&self, namespace: &str, name: &str) {
        if let Ok(mut maps) = self.inner.configmaps.write() {
            maps.remove(&(namespace.to_owned(), name.to_owned()));
        }
        if let Ok(mut parsed) = self.inner.parsed.write() {
            parsed.retain(|(ns, n, _), _| !(ns == namespace && n == name));
        }
    }

    pub fn put_account(&self, namespace: &str, name: &str) {
        if let Ok(mut accounts) = self.inner.accounts.write() {
            accounts.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    pub fn remove_account(&self, namespace: &str, name: &str) {
        if let Ok(mut accounts) = self.inner.accounts.write() {
            accounts.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    /// Marks both caches filled (tests that fill them by hand).
    pub fn mark_synced(&self) {
        self.inner.accounts_synced.store(true, Ordering::Release);
        self.inner.schemas_synced.store(true, Ordering::Release);
    }

    /// Keeps the caches filled from watches until `cancel`.
    pub async fn run(self, client: kube::Client, cancel: CancellationToken) {
        let configmaps: Api<ConfigMap> = Api::all(client.clone());
        let mut maps = watcher(
            configmaps,
            watcher::Config::default().labels(&format!("{SCHEMA_LABEL}=true")),
        )
        .default_backoff()
        .boxed();
        let accounts: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client);
        let mut accounts = watcher(accounts, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut listing_maps: Option<HashMap<Key, BTreeMap<String, String>>> = None;
        let mut listing_accounts: Option<HashSet<Key>> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                event = maps.next() => match event {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "schema ConfigMap watch failed; retrying"),
                    Some(Ok(watcher::Event::Init)) => listing_maps = Some(HashMap::new()),
                    Some(Ok(watcher::Event::InitApply(cm))) => {
                        if let Some(list) = listing_maps.as_mut() {
                            list.insert(key(&cm), cm.data.clone().unwrap_or_default());
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        let list = listing_maps.take().unwrap_or_default();
                        if let Ok(mut current) = self.inner.configmaps.write() {
                            *current = list;
                        }
                        if let Ok(mut parsed) = self.inner.parsed.write() {
                            parsed.clear();
                        }
                        self.inner.schemas_synced.store(true, Ordering::Release);
                    }
                    Some(Ok(watcher::Event::Apply(cm))) => {
                        let (ns, name) = key(&cm);
                        self.put_configmap(&ns, &name, cm.data.unwrap_or_default());
                    }
                    Some(Ok(watcher::Event::Delete(cm))) => {
                        let (ns, name) = key(&cm);
                        self.remove_configmap(&ns, &name);
                    }
                },
                event = accounts.next() => match event {
                    None => return,
                    Some(Err(e)) => tracing::warn!(error = %e, "ServiceAccount watch failed; retrying"),
                    Some(Ok(watcher::Event::Init)) => listing_accounts = Some(HashSet::new()),
                    Some(Ok(watcher::Event::InitApply(sa))) => {
                        if let Some(list) = listing_accounts.as_mut() {
                            list.insert(key(&sa));
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        let list = listing_accounts.take().unwrap_or_default();
                        if let Ok(mut current) = self.inner.accounts.write() {
                            *current = list;
                        }
                        self.inner.accounts_synced.store(true, Ordering::Release);
                    }
                    Some(Ok(watcher::Event::Apply(sa))) => {
                        let (ns, name) = key(&sa);
                        self.put_account(&ns, &name);
                    }
                    Some(Ok(watcher::Event::Delete(sa))) => {
                        let (ns, name) = key(&sa);
                        self.remove_account(&ns, &name);
                    }
                },
            }
        }
    }
}

fn key<K: ResourceExt>(object: &K) -> Key {
    (object.namespace().unwrap_or_default(), object.name_any())
}

/// A schema from a ConfigMap: SDL, or an introspection result (JSON).
pub fn parse_schema(text: &str) -> Result<QuerySchema, String> {
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "the schema is {} bytes; at most {MAX_SCHEMA_BYTES} are read",
            text.len()
        ));
    }
    if text.trim_start().starts_with('{') {
        let imported = crate::schema::import_introspection(text)
            .map_err(|e| format!("the schema is JSON but not an introspection result: {e}"))?;
        Ok(QuerySchema::from_sdl(&imported.sdl))
    } else {
        Ok(QuerySchema::from_sdl(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str, key: &str) -> ConfigMapKeyRef {
        ConfigMapKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn schemas_come_from_labelled_configmaps_only() {
        let caches = Caches::default();
        let err = caches
            .schema("chain", &reference("s", "sdl"))
            .err()
            .unwrap();
        assert!(err.contains("still loading"), "{err}");
        caches.mark_synced();
        let err = caches
            .schema("chain", &reference("s", "sdl"))
            .err()
            .unwrap();
        assert!(err.contains("does not exist or lacks the label"), "{err}");
        caches.put_configmap(
            "chain",
            "s",
            [(
                "sdl".to_owned(),
                "type Query { version: String }".to_owned(),
            )]
            .into(),
        );
        let err = caches
            .schema("chain", &reference("s", "other"))
            .err()
            .unwrap();
        assert!(err.contains("has no key \"other\""), "{err}");
        let first = caches.schema("chain", &reference("s", "sdl")).ok().unwrap();
        let again = caches.schema("chain", &reference("s", "sdl")).ok().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "parsed once");
        caches.remove_configmap("chain", "s");
        assert!(caches.schema("chain", &reference("s", "sdl")).is_err());
    }

    #[test]
    fn json_schemas_must_be_introspection_results() {
        let err = parse_schema("{\"not\": \"a schema\"}").err().unwrap();
        assert!(err.contains("not an introspection result"), "{err}");
        assert!(parse_schema("type Query { a: Int }").is_ok());
    }
}
