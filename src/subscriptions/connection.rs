//! One WebSocket connection to a target carrying all of a TargetApp's
//! subscriptions: opened to an address the caller has checked against the
//! tenant's endpoint policy, over TLS when the target is https, speaking the
//! protocol the target chose; then each pushed value, one at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    /// How long the target may send nothing (no value, no keep-alive, no
    /// answer to the WebSocket pings sent every third of it) before the
    /// connection counts as lost.
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

/// An open connection with its subscriptions started.
pub struct Session {
    socket: WebSocketStream<Box<dyn Stream>>,
    protocol: Protocol,
    /// Operation ids to subscription names.
    names: HashMap<String, String>,
    idle: Duration,
}

async fn within<T>(
    limit: Duration,
    what: &'static str,
    step: impl Future<Output = Result<T, Lost>>,
) -> Result<T, Lost> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| Lost::Timeout(what))?
}

/// Opens a connection to `endpoint` offering both protocols (`prefer` first,
/// and assumed when the target names none), and starts `wanted`.
pub async fn open(
    endpoint: &Endpoint,
    wanted: &[Wanted],
    limits: Limits,
    prefer: Protocol,
) -> Result<Session, Lost> {
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
    // asked again without: it then speaks `prefer`.
    let (socket, protocol) = match attempt(true).await {
        Err(Lost::Unsupported(why)) if why == NO_SUBPROTOCOL => attempt(false).await?,
        other => other?,
    };
    let mut session = Session {
        socket,
        protocol,
        names: HashMap::new(),
        idle: limits.idle,
    };
    within(
        limits.handshake,
        "for the session's acknowledgement",
        session.init(),
    )
    .await?;
    for (i, want) in wanted.iter().enumerate() {
        let id = (i + 1).to_string();
        session
            .send(ToServer::Subscribe {
                id: id.clone(),
                query: want.query.clone(),
                variables: None,
            })
            .await?;
        session.names.insert(id, want.name.clone());
    }
    Ok(session)
}

/// The TCP connection, and TLS over it for an https target.
async fn connect(endpoint: &Endpoint) -> Result<Box<dyn Stream>, Lost> {
    let tcp = TcpStream::connect(endpoint.address)
        .await
        .map_err(|e| Lost::Connect(format!("{}: {e}", endpoint.address)))?;
    let _ = tcp.set_nodelay(true);
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
    let config = WebSocketConfig::default()
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
    let protocol = match chosen {
        None => prefer,
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
                        "the session was refused: {payload}"
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

    /// The next protocol message, answering pings and skipping what carries
    /// none. A quiet target is sent a WebSocket ping every third of the idle
    /// limit (a daemon may push nothing for minutes, and send no keep-alive);
    /// one that answers nothing at all within the limit is lost.
    async fn receive(&mut self) -> Result<ToClient, Lost> {
        let every = self.idle / 3;
        let mut quiet = Duration::ZERO;
        loop {
            let Ok(frame) = tokio::time::timeout(every, self.socket.next()).await else {
                quiet += every;
                if quiet >= self.idle {
                    return Err(Lost::Timeout(
                        "waiting for the target (no message, no answer to pings)",
                    ));
                }
                self.socket
                    .send(Message::Ping(Default::default()))
                    .await
                    .map_err(|e| Lost::Closed(e.to_string()))?;
                continue;
            };
            quiet = Duration::ZERO;
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
            if message == ToClient::KeepAlive && self.protocol == Protocol::TransportWs {
                self.send(ToServer::Pong).await?;
            }
            return Ok(message);
        }
    }

    /// The next value a subscription pushed. A value with GraphQL errors and no
    /// data is skipped (the target could not answer it this time); an
    /// operation the target ended or failed ends the session.
    pub async fn next(&mut self) -> Result<Pushed, Lost> {
        loop {
            let (id, payload) = match self.receive().await? {
                ToClient::Next { id, payload } => (id, payload),
                ToClient::KeepAlive | ToClient::Pong | ToClient::Ack => continue,
                ToClient::Error { id, payload } => {
                    let name = self.names.get(&id).cloned().unwrap_or(id);
                    return Err(Lost::Protocol(format!(
                        "subscription {name} failed: {payload}"
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
                        "the session was refused: {payload}"
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

    /// Stops every subscription and closes the connection (best effort).
    pub async fn close(mut self) {
        let ids: Vec<String> = self.names.keys().cloned().collect();
        for id in ids {
            let _ = self.send(ToServer::Stop { id }).await;
        }
        let _ = self.send(ToServer::Terminate).await;
        let _ = self.socket.close(None).await;
    }
}
