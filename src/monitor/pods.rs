//! One pod watch per namespace, shared by the TargetApps monitored there.
//!
//! A watch per TargetApp held one apiserver connection each (the client speaks
//! HTTP/1.1): 10,000 TargetApps meant 10,000 connections and descriptors. Here
//! the first TargetApp of a namespace starts its watch, every TargetApp there
//! follows the same snapshot and picks its pods by its selector, and the watch
//! stops with the last of them. The watches go through
//! [`WatchClients`](crate::cluster::WatchClients): over HTTP/2, a hundred
//! namespaces' watches share one apiserver connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::discovery::{PodSummary, Pods};
use crate::cluster::{WatchClients, WatchSlot};
use crate::metrics::Metrics;

/// A namespace's pods at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Whether the watch has listed them once (until then nothing is known).
    pub listed: bool,
    pub pods: BTreeMap<String, Arc<PodSummary>>,
}

/// A subscription to one namespace's pod watch; the watch stops when the last
/// subscription is dropped.
pub struct Subscription {
    pods: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Subscription {
    /// A receiver of the namespace's snapshots (the current one is marked seen only
    /// once read).
    pub fn receiver(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.pods.clone()
    }
}

/// The pod watches this replica runs, by namespace.
pub struct PodWatches {
    clients: WatchClients,
    /// For a watch when no watch client can be built (HTTP/1.1: a connection
    /// of its own).
    client: kube::Client,
    metrics: Metrics,
    running: Mutex<HashMap<String, Weak<Subscription>>>,
}

impl PodWatches {
    pub fn new(clients: WatchClients, client: kube::Client, metrics: Metrics) -> Self {
        Self {
            clients,
            client,
            metrics,
            running: Mutex::default(),
        }
    }

    /// The watch of `namespace`'s pods, started if none runs.
    pub fn subscribe(&self, namespace: &str) -> Arc<Subscription> {
        let mut running = match self.running.lock() {
            Ok(running) => running,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(shared) = running.get(namespace).and_then(Weak::upgrade) {
            return shared;
        }
        running.retain(|_, w| w.strong_count() > 0);
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        let stop = CancellationToken::new();
        let slot = match self.clients.slot() {
            Ok(slot) => Some(slot),
            Err(e) => {
                self.metrics.errors.with_label_values(&["pod_watch"]).inc();
                tracing::warn!(namespace, error = %e, "cannot build a watch client; the pod watch uses a connection of its own");
                None
            }
        };
        let client = slot.as_ref().map_or(&self.client, |s| &s.client).clone();
        tokio::spawn(follow(
            Api::namespaced(client, namespace),
            namespace.to_owned(),
            tx,
            stop.clone(),
            self.metrics.clone(),
            slot,
        ));
        let shared = Arc::new(Subscription { pods: rx, stop });
        running.insert(namespace.to_owned(), Arc::downgrade(&shared));
        shared
    }

    /// How many namespaces' pods are watched (for tests and `/stats`).
    pub fn watched(&self) -> usize {
        self.running
            .lock()
            .map(|r| r.values().filter(|w| w.strong_count() > 0).count())
            .unwrap_or_default()
    }
}

/// Follows one namespace's pods until `stop`, publishing each change.
async fn follow(
    api: Api<Pod>,
    namespace: String,
    tx: watch::Sender<Arc<Snapshot>>,
    stop: CancellationToken,
    metrics: Metrics,
    // Counts this watch on its client until the watch ends.
    _slot: Option<WatchSlot>,
) {
    let mut pods = Pods::default();
    // Each pod is kept as what discovery reads of it (a few hundred bytes).
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            None => return,
            Some(Ok(event)) => {
                if pods.apply(event) {
                    tx.send_replace(Arc::new(Snapshot {
                        listed: pods.listed(),
                        pods: pods.current().clone(),
                    }));
                }
            }
            Some(Err(e)) => {
                metrics.errors.with_label_values(&["pod_watch"]).inc();
                tracing::warn!(namespace = %namespace, error = %e, "pod watch failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_watch_per_namespace_while_anyone_follows_it() {
        // A client of an address nobody serves: the watches retry in the background.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config.clone()).unwrap();
        let clients = WatchClients::new(config);
        let watches = PodWatches::new(clients, client, Metrics::new().unwrap());
        let a1 = watches.subscribe("a");
        let a2 = watches.subscribe("a");
        assert!(
            Arc::ptr_eq(&a1, &a2),
            "the TargetApps of a namespace share one watch"
        );
        let b = watches.subscribe("b");
        assert_eq!(watches.watched(), 2);
        assert_eq!(
            watches.clients.clients(),
            1,
            "the namespaces' watches share a client"
        );
        assert!(
            !a1.receiver().borrow().listed,
            "nothing is known before a list"
        );
        drop(a1);
        assert_eq!(watches.watched(), 2, "a still has a follower");
        let stop = a2.stop.clone();
        drop(a2);
        assert!(stop.is_cancelled(), "the last follower stops the watch");
        assert_eq!(watches.watched(), 1);
        drop(b);
        assert_eq!(watches.watched(), 0);
        let again = watches.subscribe("a");
        assert!(
            !again.stop.is_cancelled(),
            "a new follower starts a new watch"
        );
    }
}
