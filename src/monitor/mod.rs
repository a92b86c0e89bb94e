//! Watching targets: discovering them, polling them, and turning what they
//! answer into state changes, trigger firings, Events, status and metrics.
//!
//! [`run`] follows TargetApps and keeps one task per TargetApp ([`app`]), which
//! keeps one poll loop per target ([`target`]). The decisions are pure
//! ([`discovery`], [`state`], [`status`], [`crate::triggers`]); the tasks do the I/O.

pub mod app;
pub mod discovery;
pub mod poll;
pub mod state;
pub mod status;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::events::{Notice, Recorder};
use crate::metrics::Metrics;
use crate::targetapp::{Phase, TargetApp};

/// What every monitoring task shares; built once at start-up.
pub struct Context {
    pub client: kube::Client,
    /// Fences firings and runs actions as the tenant's service account.
    pub dispatcher: crate::actions::Dispatcher,
    /// The same checks as admission, for TargetApps stored before (or without) it.
    pub validator: Arc<crate::admission::Validator>,
    /// Outbound clients for user-supplied URLs, under the tenant's endpoint policy.
    pub egress: crate::tenancy::Egress,
    pub poller: poll::Poller,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Events to publish; a full queue drops (and counts) rather than slows polling.
    pub events: mpsc::Sender<Notice>,
    pub stats: Arc<RwLock<BTreeMap<String, AppStats>>>,
    /// True once the TargetApp list has been read.
    pub ready: Arc<AtomicBool>,
}

/// One TargetApp as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStats {
    pub namespace: String,
    pub name: String,
    pub phase: Option<Phase>,
    pub targets: Vec<TargetStats>,
}

/// One target as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStats {
    pub name: String,
    pub url: String,
    pub up: Option<bool>,
    pub last_error: Option<String>,
    /// For the built-in Mina health query: the node's sync status and height.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockchain_length: Option<i32>,
}

impl Context {
    /// Builds the context and starts the Event publisher it feeds.
    pub fn new(
        client: kube::Client,
        config: kube::Config,
        settings: Settings,
        metrics: Metrics,
        apiserver: Vec<std::net::IpAddr>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let poller = poll::Poller::new(settings.max_response_bytes, settings.graphql_max_retries)?;
        let recorder = Recorder::new(client.clone(), &settings.instance, metrics.clone());
        let (events, mut queue) = mpsc::channel::<Notice>(4096);
        let publish_metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(notice) = queue.recv().await {
                if let Err(e) = recorder.publish(notice).await {
                    publish_metrics
                        .errors
                        .with_label_values(&["event_publish"])
                        .inc();
                    tracing::warn!(error = %e, "cannot publish an Event");
                }
            }
        });
        let quota = Arc::new(settings.default_quota.clone());
        let mut overrides: std::collections::HashMap<String, Vec<std::net::IpAddr>> =
            std::collections::HashMap::new();
        for (host, ip) in &settings.dns_overrides {
            overrides.entry(host.clone()).or_default().push(*ip);
        }
        let egress = crate::tenancy::Egress::new(
            quota.endpoint_policy.clone(),
            apiserver,
            Arc::new(overrides),
        );
        let dispatcher = crate::actions::Dispatcher::new(
            client.clone(),
            config,
            settings.action_execution_timeout,
            quota.clone(),
            egress.clone(),
        );
        Ok(Arc::new(Self {
            validator: Arc::new(crate::admission::Validator::with_quota(
                (*quota).clone(),
                egress.clone(),
            )),
            dispatcher,
            egress,
            client,
            poller,
            metrics,
            settings,
            events,
            stats: Arc::default(),
            ready: Arc::default(),
        }))
    }
}

struct Running {
    /// The uid and generation the task was started for: a change restarts it.
    fingerprint: (Option<String>, Option<i64>),
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Follows TargetApps (in `namespace`, or everywhere) and keeps one monitoring task
/// per TargetApp until `cancel` fires.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, cancel: CancellationToken) {
    let api: Api<TargetApp> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut listed: Option<Vec<String>> = None;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            None => break,
            Some(Err(e)) => {
                ctx.metrics
                    .errors
                    .with_label_values(&["targetapp_watch"])
                    .inc();
                tracing::warn!(error = %e, "TargetApp watch failed; retrying");
            }
            Some(Ok(watcher::Event::Init)) => listed = Some(Vec::new()),
            Some(Ok(watcher::Event::InitApply(app))) => {
                if let Some(keys) = listed.as_mut() {
                    keys.push(key(&app));
                }
                ensure(&ctx, &mut running, app).await;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let keys = listed.take().unwrap_or_default();
                let gone: Vec<String> = running
                    .keys()
                    .filter(|k| !keys.contains(k))
                    .cloned()
                    .collect();
                for k in gone {
                    stop(&ctx, &mut running, &k).await;
                }
                ctx.ready.store(true, Ordering::Release);
            }
            Some(Ok(watcher::Event::Apply(app))) => ensure(&ctx, &mut running, app).await,
            Some(Ok(watcher::Event::Delete(app))) => stop(&ctx, &mut running, &key(&app)).await,
        }
    }
    let keys: Vec<String> = running.keys().cloned().collect();
    for k in keys {
        stop(&ctx, &mut running, &k).await;
    }
}

fn key(app: &TargetApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// Starts a task for `app`, or restarts it when its spec changed.
async fn ensure(ctx: &Arc<Context>, running: &mut HashMap<String, Running>, app: TargetApp) {
    let k = key(&app);
    let fingerprint = (app.metadata.uid.clone(), app.metadata.generation);
    if running
        .get(&k)
        .is_some_and(|r| r.fingerprint == fingerprint)
    {
        return;
    }
    if let Some(old) = running.remove(&k) {
        old.cancel.cancel();
        let _ = old.handle.await;
    }
    tracing::info!(targetapp = %k, generation = ?app.metadata.generation, "monitoring");
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(app::run(ctx.clone(), Arc::new(app), cancel.clone()));
    running.insert(
        k,
        Running {
            fingerprint,
            cancel,
            handle,
        },
    );
}

async fn stop(ctx: &Arc<Context>, running: &mut HashMap<String, Running>, k: &str) {
    if let Some(old) = running.remove(k) {
        old.cancel.cancel();
        let _ = old.handle.await;
        tracing::info!(targetapp = %k, "stopped monitoring");
    }
    if let Some((namespace, name)) = k.split_once('/') {
        ctx.metrics.forget_targetapp(namespace, name);
    }
    if let Ok(mut stats) = ctx.stats.write() {
        stats.remove(k);
    }
}
