//! The Mina node simulator: many GraphQL servers in one process, each answering
//! like a Mina daemon at its own address (e.g. 127.0.0.N:3085), with a control
//! API to change their state and inject faults at run time. KCO's tests, benches
//! and demo poll it instead of real daemons.

mod base58;
mod chain;
mod control;
mod graphql;
mod node;
mod server;
mod subscriptions;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use chain::{DEFAULT_TOKEN, public_key, state_hash};
pub use graphql::{MinaSchema, schema};
pub use node::{Answer, Faults, NodeState, RequiredHeader, ServeTls, StatePatch, SyncStatus};
use subscriptions::Announcement;

/// Why a simulator operation failed. The control API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a node already runs at {0}")]
    Exists(SocketAddr),
    #[error("no node runs at {0}")]
    NotFound(SocketAddr),
    #[error("{0}")]
    Invalid(String),
}

/// What the control API can make a node announce to its subscribers (a new
/// sync status is announced when the state changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Announce {
    /// A new best block: the node's blockchain length grows by one.
    Block,
    /// A reorganization of its best chain.
    Reorganization,
    /// Every subscriber's connection drops.
    Drop,
    /// Every subscriber gets a message of no protocol.
    Garbage,
}

/// One simulated daemon.
pub(crate) struct Node {
    addr: SocketAddr,
    /// The state and when it was set (uptime grows from then).
    state: Mutex<(NodeState, Instant)>,
    faults: watch::Sender<Faults>,
    requests: AtomicU64,
    /// Subscribers' WebSocket sessions open now.
    subscribers: Arc<AtomicU64>,
    /// Requests by User-Agent (KCO names its replica there), at most
    /// [`MAX_AGENTS`] agents; the rest are counted under "other".
    agents: Mutex<BTreeMap<String, u64>>,
    /// What its subscribers hear of.
    announcer: subscriptions::Announcer,
    cancel: CancellationToken,
}

/// Distinct User-Agents a node counts requests for.
pub const MAX_AGENTS: usize = 32;

impl Node {
    pub(crate) fn count_request(&self, agent: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut agents) = self.agents.lock() {
            let agent = agent.unwrap_or("(none)");
            let key = if agents.contains_key(agent) || agents.len() < MAX_AGENTS {
                agent.to_owned()
            } else {
                "other".to_owned()
            };
            *agents.entry(key).or_default() += 1;
        }
    }
}

/// A node as the control API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub address: SocketAddr,
    pub state: NodeState,
    /// Uptime a query would report now.
    pub uptime_secs: i32,
    pub faults: Faults,
    /// GraphQL requests received since start (or the last reset).
    pub requests: u64,
    /// The same requests by User-Agent.
    #[serde(default)]
    pub requests_by_agent: BTreeMap<String, u64>,
    /// Subscribers' WebSocket sessions open now. A session Mina's way reads
    /// nothing while it streams: one its client left ends when the node next
    /// writes to it.
    #[serde(default)]
    pub subscribers: u64,
}

impl Node {
    fn info(&self) -> NodeInfo {
        let view = self.view();
        NodeInfo {
            address: self.addr,
            uptime_secs: view.uptime_secs,
            state: view.state,
            faults: self.faults.borrow().clone(),
            requests: self.requests.load(Ordering::Relaxed),
            requests_by_agent: self.agents.lock().map(|a| a.clone()).unwrap_or_default(),
            subscribers: self.subscribers.load(Ordering::SeqCst),
        }
    }

    /// Counts a subscriber's session until the guard drops.
    pub(crate) fn subscriber(&self) -> Subscriber {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        Subscriber(self.subscribers.clone())
    }
}

/// A subscriber's session, counted while it lives.
pub(crate) struct Subscriber(Arc<AtomicU64>);

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Inner {
    nodes: tokio::sync::Mutex<BTreeMap<SocketAddr, Arc<Node>>>,
    schema: MinaSchema,
    cancel: CancellationToken,
}

/// A running simulator: the control API and the nodes. Dropping it stops everything.
pub struct Simulator {
    inner: Arc<Inner>,
    control_addr: SocketAddr,
}

impl Simulator {
    /// Starts the control API on `control` (port 0 picks a free port); no nodes yet.
    pub async fn start(control: SocketAddr) -> Result<Self, SimulatorError> {
        let listener = TcpListener::bind(control)
            .await
            .map_err(|source| SimulatorError::Bind {
                addr: control,
                source,
            })?;
        let control_addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind {
                addr: control,
                source,
            })?;
        let inner = Arc::new(Inner {
            nodes: tokio::sync::Mutex::new(BTreeMap::new()),
            schema: graphql::schema(),
            cancel: CancellationToken::new(),
        });
        let router = control::router(inner.clone());
        let cancel = inner.cancel.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "simulator control API stopped");
            }
        });
        tracing::info!(control = %control_addr, "Mina simulator control API listening");
        Ok(Self {
            inner,
            control_addr,
        })
    }

    /// Where the control API listens.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Starts a node at `addr` (port 0 picks a free port) and returns it.
    pub async fn add_node(
        &self,
        addr: SocketAddr,
        state: NodeState,
    ) -> Result<NodeInfo, SimulatorError> {
        self.inner.add_node(addr, state).await
    }

    /// Stops the node at `addr`; its open connections are closed.
    pub async fn remove_node(&self, addr: SocketAddr) -> Result<(), SimulatorError> {
        self.inner.remove_node(addr).await
    }

    /// Changes part of a node's state.
    pub async fn patch_state(
        &self,
        addr: SocketAddr,
        patch: StatePatch,
    ) -> Result<NodeInfo, SimulatorError> {
        self.inner.patch_state(addr, patch).await
    }

    /// Makes a node announce something to its subscribers: a new best block
    /// (its length grows by one), a chain reorganization, or, to test
    /// subscribers, a dropped connection or a message of no protocol.
    pub async fn announce(
        &self,
        addr: SocketAddr,
        what: Announce,
    ) -> Result<NodeInfo, SimulatorError> {
        self.inner.announce(addr, what).await
    }

    /// Replaces a node's faults.
    pub async fn set_faults(
        &self,
        addr: SocketAddr,
        faults: Faults,
    ) -> Result<NodeInfo, SimulatorError> {
        self.inner.set_faults(addr, faults).await
    }

    /// Zeroes a node's request counters; returns the count before.
    pub async fn reset_requests(&self, addr: SocketAddr) -> Result<u64, SimulatorError> {
        self.inner.reset_requests(addr).await
    }

    /// The node at `addr`.
    pub async fn node(&self, addr: SocketAddr) -> Result<NodeInfo, SimulatorError> {
        self.inner.node(addr).await.map(|n| n.info())
    }

    /// Every node, by address.
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        self.inner
            .nodes
            .lock()
            .await
            .values()
            .map(|n| n.info())
            .collect()
    }

    /// Stops the control API and every node.
    pub async fn shutdown(self) {
        self.inner.stop_all().await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

impl Inner {
    async fn node(&self, addr: SocketAddr) -> Result<Arc<Node>, SimulatorError> {
        self.nodes
            .lock()
            .await
            .get(&addr)
            .cloned()
            .ok_or(SimulatorError::NotFound(addr))
    }

    async fn add_node(
        &self,
        addr: SocketAddr,
        state: NodeState,
    ) -> Result<NodeInfo, SimulatorError> {
        state.check().map_err(SimulatorError::Invalid)?;
        let mut nodes = self.nodes.lock().await;
        if nodes.contains_key(&addr) {
            return Err(SimulatorError::Exists(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimulatorError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind { addr, source })?;
        let node = Arc::new(Node {
            addr,
            state: Mutex::new((state, Instant::now())),
            faults: watch::Sender::new(Faults::default()),
            requests: AtomicU64::new(0),
            subscribers: Arc::default(),
            agents: Mutex::default(),
            announcer: subscriptions::announcer(),
            cancel: self.cancel.child_token(),
        });
        nodes.insert(addr, node.clone());
        tokio::spawn(server::serve(listener, node.clone(), self.schema.clone()));
        Ok(node.info())
    }

    async fn remove_node(&self, addr: SocketAddr) -> Result<(), SimulatorError> {
        let node = self
            .nodes
            .lock()
            .await
            .remove(&addr)
            .ok_or(SimulatorError::NotFound(addr))?;
        node.cancel.cancel();
        Ok(())
    }

    async fn patch_state(
        &self,
        addr: SocketAddr,
        patch: StatePatch,
    ) -> Result<NodeInfo, SimulatorError> {
        let node = self.node(addr).await?;
        let (before, after) = {
            let mut guard = node.state.lock().unwrap_or_else(|p| p.into_inner());
            let (state, since) = &mut *guard;
            // Carry the uptime that has accrued so that a patch does not reset it.
            let mut current = state.clone();
            current.uptime_secs =
                u32::try_from(current.uptime_after(since.elapsed().as_secs())).unwrap_or(0);
            let before = state.clone();
            *state = current.patched(patch).map_err(SimulatorError::Invalid)?;
            *since = Instant::now();
            (before, state.clone())
        };
        // Subscribers hear of a new sync status and of each new best block.
        if after.sync_status != before.sync_status {
            let _ = node.announcer.send(Announcement::Sync(after.sync_status));
        }
        // A jump of many blocks announces the newest few (what a subscriber
        // could hold anyway).
        let first = before
            .blockchain_length
            .saturating_add(1)
            .max(after.blockchain_length.saturating_sub(63));
        for height in first..=after.blockchain_length {
            let _ = node.announcer.send(Announcement::Block(height));
        }
        Ok(node.info())
    }

    async fn announce(&self, addr: SocketAddr, what: Announce) -> Result<NodeInfo, SimulatorError> {
        let node = self.node(addr).await?;
        let announced = match what {
            Announce::Block => {
                let length = node.view().state.blockchain_length.saturating_add(1);
                return self
                    .patch_state(
                        addr,
                        StatePatch {
                            blockchain_length: Some(length),
                            ..StatePatch::default()
                        },
                    )
                    .await;
            }
            Announce::Reorganization => Announcement::Reorganization,
            Announce::Drop => Announcement::Drop,
            Announce::Garbage => Announcement::Garbage,
        };
        let _ = node.announcer.send(announced);
        Ok(node.info())
    }

    async fn set_faults(
        &self,
        addr: SocketAddr,
        faults: Faults,
    ) -> Result<NodeInfo, SimulatorError> {
        faults.check().map_err(SimulatorError::Invalid)?;
        let node = self.node(addr).await?;
        node.faults.send_replace(faults);
        Ok(node.info())
    }

    async fn reset_requests(&self, addr: SocketAddr) -> Result<u64, SimulatorError> {
        let node = self.node(addr).await?;
        if let Ok(mut agents) = node.agents.lock() {
            agents.clear();
        }
        Ok(node.requests.swap(0, Ordering::Relaxed))
    }

    async fn stop_all(&self) {
        self.cancel.cancel();
        self.nodes.lock().await.clear();
    }
}
