//! What a simulated node pushes: Mina's subscriptions (`newSyncUpdate`,
//! `newBlock`, `chainReorganization`) over a WebSocket on `/graphql`, fed by
//! the node's announcements: a state change, or one the control API asks for.
//!
//! As Mina's daemon serves them (its GraphQL server's WebSocket transport):
//! `graphql-ws` only, no keep-alives, and once a subscription streams the
//! connection's further messages are not read (no other operation starts, a
//! `stop` or a ping goes unanswered) until it ends. With the
//! `graphqlTransportWs` fault the node serves them as the graphql-ws library
//! does instead: `graphql-transport-ws`, operations side by side, pings
//! answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::{Enum, Subscription as GraphqlSubscription};
use futures::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::graphql::{Block, NodeView, PublicKey, block};
use super::node::SyncStatus;
use crate::subscriptions::protocol::{Protocol, ToClient, ToServer};

/// Something a node announces to its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Announcement {
    /// Its sync status changed (to this).
    Sync(SyncStatus),
    /// A new best block, at this height.
    Block(u32),
    /// Its best chain was reorganized.
    Reorganization,
    /// Close every subscriber's connection at once, without a close frame.
    Drop,
    /// Send every subscriber a message that belongs to no protocol.
    Garbage,
}

/// How many announcements a slow subscriber may fall behind by.
const BACKLOG: usize = 64;

/// A node's announcements, for its subscribers.
pub type Announcer = broadcast::Sender<Announcement>;

/// A new announcer.
pub fn announcer() -> Announcer {
    broadcast::Sender::new(BACKLOG)
}

/// Mina's `ChainReorganizationStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "ChainReorganizationStatus")]
pub enum ChainReorganizationStatus {
    Changed,
}

/// Mina's root subscription type (named `subscription` in its schema).
pub struct Subscription;

/// The announcements of the node a request came to, as a stream.
fn announcements(
    ctx: &async_graphql::Context<'_>,
) -> async_graphql::Result<impl Stream<Item = Announcement> + use<>> {
    let receiver = ctx.data::<Announcer>()?.subscribe();
    Ok(futures::stream::unfold(
        receiver,
        |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(announced) => return Some((announced, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    ))
}

#[GraphqlSubscription(name = "subscription")]
impl Subscription {
    /// The node's sync status, each time it changes.
    async fn new_sync_update(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = SyncStatus> + use<>> {
        Ok(announcements(ctx)?.filter_map(|a| async move {
            match a {
                Announcement::Sync(status) => Some(status),
                _ => None,
            }
        }))
    }

    /// Each new best block (of any producer: `publicKey` is accepted and the
    /// simulated producers are not filtered).
    async fn new_block(
        &self,
        ctx: &async_graphql::Context<'_>,
        #[graphql(name = "publicKey")] _public_key: Option<PublicKey>,
    ) -> async_graphql::Result<impl Stream<Item = Block> + use<>> {
        Ok(announcements(ctx)?.filter_map(|a| async move {
            match a {
                Announcement::Block(height) => Some(block(height)),
                _ => None,
            }
        }))
    }

    /// Each reorganization of the best chain.
    async fn chain_reorganization(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = ChainReorganizationStatus> + use<>> {
        Ok(announcements(ctx)?.filter_map(|a| async move {
            (a == Announcement::Reorganization).then_some(ChainReorganizationStatus::Changed)
        }))
    }
}

/// What one subscriber's session needs.
pub(super) struct Session {
    pub schema: super::MinaSchema,
    pub view: NodeView,
    pub announcer: Announcer,
    pub protocol: Protocol,
    /// Serve as Mina's daemon does (read nothing while a subscription streams).
    pub mina: bool,
}

/// Serves one subscriber until it leaves, the node stops, or an announcement
/// drops it.
pub(super) async fn serve<S>(
    session: Session,
    socket: WebSocketStream<S>,
    cancel: tokio_util::sync::CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<String>(BACKLOG);
    let mut control = session.announcer.subscribe();
    let mut operations: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let streaming = Arc::new(AtomicUsize::new(0));
    loop {
        let reading = !session.mina || streaming.load(Ordering::SeqCst) == 0;
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(text) = outgoing.recv() => {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            announced = control.recv() => match announced {
                Ok(Announcement::Drop) | Err(broadcast::error::RecvError::Closed) => break,
                Ok(Announcement::Garbage) => {
                    let _ = sink.send(Message::text("\u{1}this is no protocol's message")).await;
                }
                _ => {}
            },
            frame = incoming.next(), if reading => {
                let Some(Ok(Message::Text(text))) = frame else {
                    match frame {
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break,
                    }
                };
                let Ok(message) = ToServer::decode(session.protocol, text.as_str()) else {
                    break;
                };
                if !answer(&session, message, (&out, &streaming), &mut operations) {
                    break;
                }
            }
        }
    }
    for (_, running) in operations {
        running.abort();
    }
}

/// Acts on one client message; whether the session goes on.
fn answer(
    session: &Session,
    message: ToServer,
    (out, streaming): (&mpsc::Sender<String>, &Arc<AtomicUsize>),
    operations: &mut HashMap<String, tokio::task::JoinHandle<()>>,
) -> bool {
    let protocol = session.protocol;
    let send = |message: ToClient| {
        let _ = out.try_send(message.encode(protocol));
    };
    match message {
        ToServer::Init { .. } => send(ToClient::Ack),
        ToServer::Ping => send(ToClient::Pong),
        ToServer::Pong => {}
        ToServer::Terminate => return false,
        ToServer::Stop { id } => {
            if let Some(running) = operations.remove(&id) {
                running.abort();
            }
        }
        ToServer::Subscribe {
            id,
            query,
            variables,
        } => {
            let mut request = async_graphql::Request::new(query)
                .data(session.view.clone())
                .data(session.announcer.clone());
            if let Some(variables) = variables {
                request = request.variables(async_graphql::Variables::from_json(variables));
            }
            let stream = session.schema.execute_stream(request);
            let out = out.clone();
            let active = Streaming::new(streaming.clone());
            let running = tokio::spawn(forward(id.clone(), stream, (out, active), protocol));
            if let Some(earlier) = operations.insert(id, running) {
                earlier.abort();
            }
        }
    }
    true
}

/// Sends each result of operation `id` to the subscriber, then `complete`.
async fn forward(
    id: String,
    mut stream: impl Stream<Item = async_graphql::Response> + Unpin,
    (out, active): (mpsc::Sender<String>, Streaming),
    protocol: Protocol,
) {
    while let Some(response) = stream.next().await {
        let payload = serde_json::to_value(&response).unwrap_or_default();
        // A request that fails validation answers once, with errors only.
        let failed = response.data == async_graphql::Value::Null && !response.errors.is_empty();
        let message = if failed {
            ToClient::Error {
                id: id.clone(),
                payload: payload["errors"].clone(),
            }
        } else {
            ToClient::Next {
                id: id.clone(),
                payload,
            }
        };
        if failed {
            // Ended before its answer goes: the session reads again once it has.
            drop(active);
            let _ = out.send(message.encode(protocol)).await;
            return;
        }
        if out.send(message.encode(protocol)).await.is_err() {
            return;
        }
    }
    drop(active);
    let _ = out.send(ToClient::Complete { id }.encode(protocol)).await;
}

/// One operation streaming, counted until dropped (ended or aborted).
struct Streaming(Arc<AtomicUsize>);

impl Streaming {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
