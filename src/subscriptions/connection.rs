//! A target's subscriptions over WebSocket: opened to an address the caller has
//! checked against the tenant's endpoint policy, over TLS when the target is
//! https, speaking the protocol the target chose; then each pushed value, one
//! at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::protocol::{Protocol, ToClient, ToServer};

/// Where a target's subscriptions go, and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// The target's GraphQL URL, as polled (`http(s)://host:port/path`).
    pub url: reqwest::Url,
    /// The address to connect to (the caller checked it against the policy).
    pub address: SocketAddr,
    /// For an https target: the TLS configuration (the tenant's CA and client
    /// certificate, or the platform's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A header every upgrade request carries (`spec.auth`).
    pub header: Option<(HeaderName, HeaderValue)>,
}

/// One subscription to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Its name (`@<name>` in trigger paths).
    pub name: String,
    /// The subscription operation.
    pub query: String,
}

/// Bounds on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the TCP connect, the TLS and WebSocket handshakes and the
    /// acknowledgement of the session, each.
    pub handshake: Duration,
    /// The largest message accepted; a larger one closes the connection.
    pub max_message_bytes: usize,
    /// How long a target that answers pings or sends keep-alives may send
    /// nothing (no value, no keep-alive, no answer to the WebSocket pings sent
    /// every third of it) before the connection counts as lost.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            max_message_bytes: 1024 * 1024,
            idle: Duration::from_secs(90),
        }
    }
}

/// A value a subscription pushed: its root field's value.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub name: String,
    pub value: Value,
}

/// Why a connection could not be opened, or ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The target does not serve subscriptions here: it refused the upgrade,
    /// speaks neither protocol, or refused the session.
    #[error("the target does not serve subscriptions: {0}")]
    Unsupported(String),
    /// The target broke the protocol (garbage, a message too large, an
    /// operation it ended or failed).
    #[error("the target broke the protocol: {0}")]
    Protocol(String),
    #[error("the connection closed: {0}")]
    Closed(String),
}

impl Lost {
    /// A short label for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Timeout(_) => "timeout",
            Self::Unsupported(_) => "unsupported",
            Self::Protocol(_) => "protocol",
            Self::Closed(_) => "closed",
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A target's subscriptions, open: one connection carrying them all in
/// `graphql-transport-ws`; one connection per subscription in the legacy
/// `graphql-ws`, because Mina's daemon (its GraphQL server's WebSocket
/// transport) reads nothing more from a connection once a subscription on it
/// streams.
pub struct Session {
    protocol: Protocol,
    channels: Vec<Channel>,
}

/// One WebSocket connection and the subscriptions it carries.
struct Channel {
    socket: WebSocketStream<Box<dyn Stream>>,
    protocol: Protocol,
    /// Operation ids to subscription names.
    names: HashMap<String, String>,
    idle: Duration,
    /// When the target last sent anything, and when it was last pinged.
    heard: Instant,
    pinged: Instant,
    /// Whether silence longer than `idle` means the target is gone: in
    /// `graphql-transport-ws` (pinged, it answers), and in `graphql-ws` once the
    /// target has sent a keep-alive (`ka`: it sends them on a schedule). Mina's
    /// daemon sends none and answers no ping while a subscription streams: its
    /// connections are watched by TCP keep-alive only, and a daemon that hangs
    /// with its socket open is seen by the polls.
    watched: bool,
}

/// What a target sent, as far as a reason quotes it (in logs, Events, status).
fn brief(payload: &Value) -> String {
    crate::events::truncate(&payload.to_string(), 200)
}

/// TCP keep-alive on every connection: a target whose host vanished (no FIN,
/// no RST) is found within about a minute even when nothing else is sent.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

async fn within<T>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, Lost>>,
) -> Result<T, Lost> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| Lost::Timeout(what))?
}

/// Opens `wanted` on `endpoint`, offering both protocols (`prefer` first; a
/// target that names none speaks `graphql-ws`): one connection for them all,
/// or one each if the target speaks the legacy protocol.
pub async fn open(
    endpoint: &Endpoint,
    wanted: &[Wanted],
    limits: Limits,
    prefer: Protocol,
) -> Result<Session, Lost> {
    let (first, rest) = match wanted.split_first() {
        Some((first, rest)) => (std::slice::from_ref(first), rest),
        None => (wanted, &[][..]),
    };
    let (channel, offer) = Channel::open(endpoint, limits, prefer, None).await?;
    let protocol = channel.protocol;
    let mut session = Session {
        protocol,
        channels: vec![channel],
    };
    if protocol == Protocol::TransportWs {
        session.channels[0].start(wanted).await?;
        return Ok(session);
    }
    session.channels[0].start(first).await?;
    for want in rest {
        let (mut channel, _) = Channel::open(endpoint, limits, protocol, Some(offer)).await?;
        channel.start(std::slice::from_ref(want)).await?;
        session.channels.push(channel);
    }
    Ok(session)
}

impl Channel {
    /// Connects, upgrades and opens the session; with `offer` decided (after a
    /// first connection), offers the protocols or not as that one did. Returns
    /// the channel and whether subprotocols were offered.
    async fn open(
        endpoint: &Endpoint,
        limits: Limits,
        prefer: Protocol,
        offer: Option<bool>,
    ) -> Result<(Self, bool), Lost> {
        let attempt = |offer: bool| async move {
            let stream = within(limits.handshake, "connecting", connect(endpoint)).await?;
            within(
                limits.handshake,
                "upgrading to a WebSocket",
                upgrade(endpoint, stream, limits, prefer, offer),
            )
            .await
        };
        // A server that names no subprotocol when asked for one, or answers with
        // the whole list offered (Mina's daemon echoes the request's header), is
        // asked again without: it then speaks `graphql-ws`.
        let (socket, protocol, offered) = match offer {
            Some(offer) => {
                let (socket, protocol) = attempt(offer).await?;
                (socket, protocol, offer)
            }
            None => match attempt(true).await {
                Err(Lost::Unsupported(why)) if why == NO_SUBPROTOCOL => {
                    let (socket, protocol) = attempt(false).await?;
                    (socket, protocol, false)
                }
                other => {
                    let (socket, protocol) = other?;
                    (socket, protocol, true)
                }
            },
        };
        let now = Instant::now();
        let mut channel = Self {
            socket,
            protocol,
            names: HashMap::new(),
            idle: limits.idle,
            heard: now,
            pinged: now,
            watched: protocol == Protocol::TransportWs,
        };
        within(
            limits.handshake,
            "for the session's acknowledgement",
            channel.init(),
        )
        .await?;
        Ok((channel, offered))
    }

    /// Starts `wanted` on this connection.
    async fn start(&mut self, wanted: &[Wanted]) -> Result<(), Lost> {
        for want in wanted {
            let id = (self.names.len() + 1).to_string();
            self.send(ToServer::Subscribe {
                id: id.clone(),
                query: want.query.clone(),
                variables: None,
            })
            .await?;
            self.names.insert(id, want.name.clone());
        }
        Ok(())
    }
}

/// The TCP connection, and TLS over it for an https target.
async fn connect(endpoint: &Endpoint) -> Result<Box<dyn Stream>, Lost> {
    let tcp = TcpStream::connect(endpoint.address)
        .await
        .map_err(|e| Lost::Connect(format!("{}: {e}", endpoint.address)))?;
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keep-alive not set on a subscription connection");
    }
    let Some(tls) = &endpoint.tls else {
        return Ok(Box::new(tcp));
    };
    let host = endpoint.url.host_str().unwrap_or_default();
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| Lost::Tls(format!("{host:?} is not a server name")))?;
    // A WebSocket upgrade is an HTTP/1.1 request.
    let mut config = (**tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Lost::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

/// A connection's read buffer (a larger message is read in several turns).
const READ_BUFFER: usize = 4 * 1024;
/// The most a connection holds of what it writes while the target reads
/// nothing (Mina's daemon does not, once a subscription streams): a few pings.
const MAX_WRITE_BUFFER: usize = 64 * 1024;

/// Why an upgrade that offered subprotocols is made again without.
const NO_SUBPROTOCOL: &str = "the target named no subprotocol";

/// The WebSocket handshake on `stream`, offering both protocols (`prefer`
/// first) or, without `offer`, none; and the protocol the target chose.
async fn upgrade(
    endpoint: &Endpoint,
    stream: Box<dyn Stream>,
    limits: Limits,
    prefer: Protocol,
    offer: bool,
) -> Result<(WebSocketStream<Box<dyn Stream>>, Protocol), Lost> {
    let mut url = endpoint.url.clone();
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| Lost::Connect(format!("{} cannot be a WebSocket URL", endpoint.url)))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Lost::Connect(e.to_string()))?;
    let other = match prefer {
        Protocol::TransportWs => Protocol::LegacyWs,
        Protocol::LegacyWs => Protocol::TransportWs,
    };
    let offered = format!("{}, {}", prefer.subprotocol(), other.subprotocol());
    let headers = request.headers_mut();
    if offer && let Ok(offered) = HeaderValue::from_str(&offered) {
        headers.insert("sec-websocket-protocol", offered);
    }
    if let Some((name, value)) = &endpoint.header {
        headers.insert(name.clone(), value.clone());
    }
    // Many quiet connections: small buffers (tungstenite's default of 128 KiB
    // each way would be most of a subscribed target's memory). What KCO writes
    // is a few short messages, each sent at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(response) => Lost::Unsupported(format!(
                    "the upgrade was answered HTTP {}",
                    response.status().as_u16()
                )),
                tungstenite::Error::Io(e) => Lost::Closed(e.to_string()),
                tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
                    SubProtocolError::NoSubProtocol | SubProtocolError::InvalidSubProtocol,
                )) => Lost::Unsupported(NO_SUBPROTOCOL.to_owned()),
                tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(e)) => {
                    Lost::Unsupported(e.to_string())
                }
                other => Lost::Protocol(other.to_string()),
            })?;
    let chosen = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    // graphql-transport-ws requires the subprotocol to be named: a server that
    // names none speaks the legacy protocol.
    let protocol = match chosen {
        None => Protocol::LegacyWs,
        Some(name) => Protocol::from_subprotocol(name)
            .ok_or_else(|| Lost::Unsupported(format!("the target chose subprotocol {name:?}")))?,
    };
    Ok((socket, protocol))
}

impl Session {
    /// The protocol the target speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// How many connections the session holds.
    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    /// The next value any subscription pushed. Cancel-safe: a value not yet
    /// read stays in its connection.
    pub async fn next(&mut self) -> Result<Pushed, Lost> {
        if let [channel] = self.channels.as_mut_slice() {
            return channel.next().await;
        }
        let nexts = self.channels.iter_mut().map(|c| Box::pin(c.next()));
        let (pushed, _, _) = futures::future::select_all(nexts).await;
        pushed
    }

    /// Stops every subscription and closes the connections (best effort).
    pub async fn close(self) {
        futures::future::join_all(self.channels.into_iter().map(Channel::close)).await;
    }
}

impl Channel {
    async fn send(&mut self, message: ToServer) -> Result<(), Lost> {
        let Some(text) = message.encode(self.protocol) else {
            return Ok(());
        };
        self.socket
            .send(Message::text(text))
            .await
            .map_err(|e| Lost::Closed(e.to_string()))
    }

    /// Opens the session and waits for its acknowledgement.
    async fn init(&mut self) -> Result<(), Lost> {
        self.send(ToServer::Init { payload: None }).await?;
        loop {
            match self.receive().await? {
                ToClient::Ack => return Ok(()),
                ToClient::KeepAlive | ToClient::Pong => continue,
                ToClient::ConnectionError { payload } => {
                    return Err(Lost::Unsupported(format!(
                        "the session was refused: {}",
                        brief(&payload)
                    )));
                }
                other => {
                    return Err(Lost::Protocol(format!(
                        "{other:?} before the session was acknowledged"
                    )));
                }
            }
        }
    }

    /// The next frame; on a watched connection, a WebSocket ping every third of
    /// the idle limit of silence, and lost once the limit passes with no frame
    /// at all. The times live in the channel, so a cancelled wait loses none.
    async fn frame(&mut self) -> Result<Option<Result<Message, tungstenite::Error>>, Lost> {
        if !self.watched {
            return Ok(self.socket.next().await);
        }
        loop {
            let ping_at = self.heard.max(self.pinged) + self.idle / 3;
            if let Ok(frame) = tokio::time::timeout_at(ping_at.into(), self.socket.next()).await {
                return Ok(frame);
            }
            if self.heard.elapsed() >= self.idle {
                return Err(Lost::Timeout(
                    "waiting for the target (no message, no answer to pings)",
                ));
            }
            self.pinged = Instant::now();
            self.socket
                .send(Message::Ping(Default::default()))
                .await
                .map_err(|e| Lost::Closed(e.to_string()))?;
        }
    }

    /// The next protocol message, answering pings and skipping what carries
    /// none.
    async fn receive(&mut self) -> Result<ToClient, Lost> {
        loop {
            let frame = self.frame().await?;
            self.heard = Instant::now();
            let text = match frame {
                None => return Err(Lost::Closed("the target closed it".to_owned())),
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    return Err(Lost::Protocol(format!("a message too large: {e}")));
                }
                Some(Err(e)) => return Err(Lost::Closed(e.to_string())),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    let why =
                        frame.map_or_else(String::new, |f| format!("{} {}", f.code, f.reason));
                    return Err(Lost::Closed(format!("the target closed it ({why})")));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(Lost::Protocol("a binary message".to_owned()));
                }
                Some(Ok(_)) => continue, // WebSocket ping / pong frames
            };
            let message = ToClient::decode(self.protocol, text.as_str())
                .map_err(|e| Lost::Protocol(e.to_string()))?;
            if message == ToClient::KeepAlive {
                match self.protocol {
                    Protocol::TransportWs => self.send(ToServer::Pong).await?,
                    // Keep-alives come on a schedule: silence is now a loss.
                    Protocol::LegacyWs => self.watched = true,
                }
            }
            return Ok(message);
        }
    }

    /// The next value a subscription on this connection pushed. A value with
    /// GraphQL errors and no data is skipped (the target could not answer it
    /// this time); an operation the target ended or failed ends the session.
    async fn next(&mut self) -> Result<Pushed, Lost> {
        loop {
            let (id, payload) = match self.receive().await? {
                ToClient::Next { id, payload } => (id, payload),
                ToClient::KeepAlive | ToClient::Pong | ToClient::Ack => continue,
                ToClient::Error { id, payload } => {
                    let name = self.names.get(&id).cloned().unwrap_or(id);
                    return Err(Lost::Protocol(format!(
                        "subscription {name} failed: {}",
                        brief(&payload)
                    )));
                }
                ToClient::Complete { id } => {
                    let name = self.names.get(&id).cloned().unwrap_or(id);
                    return Err(Lost::Protocol(format!(
                        "the target ended subscription {name}"
                    )));
                }
                ToClient::ConnectionError { payload } => {
                    return Err(Lost::Unsupported(format!(
                        "the session was refused: {}",
                        brief(&payload)
                    )));
                }
            };
            let Some(name) = self.names.get(&id) else {
                return Err(Lost::Protocol(format!(
                    "a value for operation {id:?}, which was never started"
                )));
            };
            // A subscription selects one root field: its value is what was pushed.
            let value = match payload.get("data").and_then(Value::as_object) {
                Some(data) if data.len() == 1 => data.values().next().cloned(),
                _ => None,
            };
            let Some(value) = value else {
                continue;
            };
            return Ok(Pushed {
                name: name.clone(),
                value,
            });
        }
    }

    /// Stops its subscriptions and closes the connection (best effort).
    async fn close(mut self) {
        let ids: Vec<String> = self.names.keys().cloned().collect();
        for id in ids {
            let _ = self.send(ToServer::Stop { id }).await;
        }
        let _ = self.send(ToServer::Terminate).await;
        let _ = self.socket.close(None).await;
    }
}
