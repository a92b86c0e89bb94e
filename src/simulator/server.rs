//! One simulated node's HTTP server: its own listener and accept loop, so that
//! faults can act on the connection itself (a TCP reset) as well as on answers.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Node;
use super::graphql::{MinaSchema, NodeView};
use super::node::Answer;
use super::subscriptions;
use crate::subscriptions::protocol::Protocol;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Ends one connection with a reset when notified.
#[derive(Clone)]
struct ResetSwitch(Arc<Notify>);

#[derive(Clone)]
struct NodeCtx {
    node: Arc<Node>,
    schema: MinaSchema,
}

/// Serves GraphQL for `node` on `listener` until the node is cancelled.
pub(super) async fn serve(listener: TcpListener, node: Arc<Node>, schema: MinaSchema) {
    let ctx = NodeCtx {
        node: node.clone(),
        schema,
    };
    let router = Router::new()
        .route("/graphql", post(graphql).get(websocket))
        .with_state(ctx);
    loop {
        let accepted = tokio::select! {
            _ = node.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection aborted before accept: keep serving.
                tracing::warn!(node = %node.addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tls = {
            let faults = node.faults.borrow();
            match (&faults.tls, faults.untrusted_tls) {
                (Some(serve), _) => Tls::Serve(serve.clone()),
                (None, true) => Tls::Untrusted,
                (None, false) => Tls::Off,
            }
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            node.cancel.clone(),
            node.addr,
            tls,
        ));
    }
}

/// What a connection is served over.
enum Tls {
    Off,
    Untrusted,
    Serve(super::node::ServeTls),
}

async fn connection(
    stream: TcpStream,
    router: Router,
    cancel: CancellationToken,
    addr: SocketAddr,
    tls: Tls,
) {
    // A second handle on the socket, to set SO_LINGER=0 (an RST on close) when a
    // reset fault fires while hyper owns the stream.
    let Some((stream, handle)) = split_handle(stream) else {
        return;
    };
    let switch = ResetSwitch(Arc::new(Notify::new()));
    let service = router.layer(axum::Extension(switch.clone()));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = async {
        let acceptor = match &tls {
            Tls::Off => {
                return builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    )
                    .await;
            }
            Tls::Untrusted => untrusted_tls(),
            Tls::Serve(serve) => match serving(serve) {
                Ok(acceptor) => Some(acceptor),
                Err(e) => {
                    tracing::warn!(node = %addr, error = %e, "cannot serve the node's certificate");
                    None
                }
            },
        };
        let Some(acceptor) = acceptor else {
            return Ok(());
        };
        let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
        match handshake.await {
            Ok(Ok(stream)) => {
                builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service),
                    )
                    .await
            }
            // The client refused the certificate, as it should.
            Ok(Err(e)) => {
                tracing::debug!(node = %addr, error = %e, "TLS handshake failed");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    };
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(node = %addr, error = %e, "connection ended with an error");
            }
        }
        _ = switch.0.notified() => {
            if let Err(e) = socket2::SockRef::from(&handle).set_linger(Some(Duration::ZERO)) {
                tracing::warn!(node = %addr, error = %e, "cannot arm the connection reset");
            }
        }
        _ = cancel.cancelled() => {}
    }
}

/// A TLS acceptor with a self-signed certificate for `untrusted.invalid`: what the
/// `untrustedTls` fault serves. Made once per process.
fn untrusted_tls() -> Option<tokio_rustls::TlsAcceptor> {
    static ACCEPTOR: OnceLock<Option<tokio_rustls::TlsAcceptor>> = OnceLock::new();
    ACCEPTOR
        .get_or_init(|| {
            let made = (|| -> Result<rustls::ServerConfig, String> {
                let key = rcgen::generate_simple_self_signed(vec!["untrusted.invalid".to_owned()])
                    .map_err(|e| e.to_string())?;
                let der =
                    rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
                        .map_err(|e| e.to_owned())?;
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_single_cert(vec![key.cert.der().clone()], der)
                .map_err(|e| e.to_string())
            })();
            match made {
                Ok(config) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
                Err(e) => {
                    tracing::error!(error = %e, "cannot make the untrusted TLS certificate");
                    None
                }
            }
        })
        .clone()
}

/// A TLS acceptor serving `tls`'s certificate, asking for a client certificate
/// when `tls` names a client CA.
pub(super) fn serving(tls: &super::node::ServeTls) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn split_handle(stream: TcpStream) -> Option<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std().ok()?;
    let handle = std.try_clone().ok()?;
    let stream = TcpStream::from_std(std).ok()?;
    Some((stream, handle))
}

/// A subscriber's WebSocket upgrade on `/graphql`: the session runs on its
/// own task, in the protocol the client offers first of the two (`graphql-ws`,
/// what Mina's daemon speaks, when it offers none).
async fn websocket(State(ctx): State<NodeCtx>, mut request: axum::extract::Request) -> Response {
    let node = &ctx.node;
    let faults = node.faults.borrow().clone();
    let headers = request.headers();
    if faults.no_subscriptions {
        return status_response(400);
    }
    if let Some(required) = &faults.require_header
        && headers
            .get(required.name.as_str())
            .is_none_or(|v| v.as_bytes() != required.value.as_bytes())
    {
        return status_response(401);
    }
    let upgrading = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (true, Some(key)) = (upgrading, headers.get(header::SEC_WEBSOCKET_KEY)) else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    // Mina's daemon speaks graphql-ws whatever is offered, and answers with
    // the request's header as it came (the whole list); a graphql-ws library
    // server names the protocol it chose, and refuses a client without it.
    let (protocol, named) = if faults.graphql_transport_ws {
        let transport = Protocol::TransportWs;
        let wants = offered
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|n| n.trim() == transport.subprotocol()));
        if !wants {
            return status_response(400);
        }
        let named = HeaderValue::from_static(transport.subprotocol());
        (transport, Some(named))
    } else {
        (Protocol::LegacyWs, offered)
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut request);
    let session = subscriptions::Session {
        schema: ctx.schema.clone(),
        view: node.view(),
        announcer: node.announcer.clone(),
        protocol,
        mina: !faults.graphql_transport_ws,
    };
    let cancel = node.cancel.clone();
    let node = node.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let _subscriber = node.subscriber();
            subscriptions::serve(session, socket, cancel).await;
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(named) = named {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, named);
    }
    response
}

async fn graphql(
    State(ctx): State<NodeCtx>,
    axum::Extension(switch): axum::Extension<ResetSwitch>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let node = &ctx.node;
    node.count_request(
        headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
    );
    let mut faults_rx = node.faults.subscribe();
    let faults = faults_rx.borrow_and_update().clone();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let faults = if faults.hang {
        // Hold the request until the hang is lifted (or the node goes away).
        let lifted = faults_rx.wait_for(|f| !f.hang);
        tokio::select! {
            f = lifted => match f {
                Ok(f) => f.clone(),
                Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
            },
            _ = node.cancel.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    } else {
        faults
    };
    if let Some(required) = &faults.require_header
        && headers
            .get(required.name.as_str())
            .is_none_or(|v| v.as_bytes() != required.value.as_bytes())
    {
        let mut response = status_response(401);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mina\""),
        );
        return response;
    }
    let response = match faults.answer() {
        Answer::Reset => {
            switch.0.notify_one();
            std::future::pending().await
        }
        Answer::HttpStatus(code) => status_response(code),
        Answer::RetryAfter(code, secs) => {
            let mut response = status_response(code);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
        Answer::MalformedJson => json_response(Body::from(
            r#"{"data": {"daemonStatus": {"syncStatus": "SYN"#,
        )),
        Answer::Sized(bytes) => json_response(sized_body(bytes)),
        Answer::Nested(depth) => json_response(nested_body(depth)),
        Answer::InvalidUtf8 => json_response(Body::from(
            &b"{\"data\": {\"version\": \"3.0.0-\xff\xfe\"}}"[..],
        )),
        Answer::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(location) => {
                let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => status_response(500),
        },
        Answer::Normal => execute(&ctx, &body, None).await,
        Answer::GraphqlError { message, partial } => {
            execute(&ctx, &body, Some((message, partial))).await
        }
    };
    if faults.trickle_ms > 0 {
        let piece = faults.trickle_bytes.map_or(1, |n| n.max(1) as usize);
        trickled(response, Duration::from_millis(faults.trickle_ms), piece)
    } else {
        response
    }
}

fn status_response(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("simulated HTTP {code}\n")).into_response()
}

/// The same response with its body sent `piece` bytes at a time, `delay` apart.
fn trickled(response: Response, delay: Duration, piece: usize) -> Response {
    let (mut parts, body) = response.into_parts();
    // The length no longer says when the body ends: it is chunked now.
    parts.headers.remove(header::CONTENT_LENGTH);
    let bytes = body
        .into_data_stream()
        .flat_map(move |chunk| match chunk {
            Ok(chunk) => futures::stream::iter(
                (0..chunk.len())
                    .step_by(piece)
                    .map(move |i| Ok(chunk.slice(i..(i + piece).min(chunk.len()))))
                    .collect::<Vec<_>>(),
            )
            .left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .then(move |byte| async move {
            tokio::time::sleep(delay).await;
            byte
        });
    Response::from_parts(parts, Body::from_stream(bytes))
}

async fn execute(ctx: &NodeCtx, body: &[u8], error: Option<(String, bool)>) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("request body is not a GraphQL request: {e}\n"),
            )
                .into_response();
        }
    };
    let view = ctx.node.view();
    let mut response = ctx.schema.execute(request.data(view)).await;
    if let Some((message, partial)) = error {
        if !partial {
            response.data = async_graphql::Value::Null;
        }
        response
            .errors
            .push(async_graphql::ServerError::new(message, None));
    }
    match serde_json::to_vec(&response) {
        Ok(bytes) => json_response(Body::from(bytes)),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}\n"),
        )
            .into_response(),
    }
}

fn json_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A valid JSON document of exactly `bytes` bytes (at least the minimum wrapper),
/// streamed in chunks so that a huge body costs no memory.
fn sized_body(bytes: u64) -> Body {
    const HEAD: &[u8] = br#"{"data":{"version":""#;
    const TAIL: &[u8] = br#""}}"#;
    let overhead = (HEAD.len() + TAIL.len()) as u64;
    streamed(&[
        Piece::Text(HEAD),
        Piece::Repeat(b'x', bytes.saturating_sub(overhead)),
        Piece::Text(TAIL),
    ])
}

/// `{"data":{"nested":[[...1...]]}}` with `depth` levels in all, streamed.
fn nested_body(depth: u32) -> Body {
    let arrays = u64::from(depth.saturating_sub(2));
    streamed(&[
        Piece::Text(br#"{"data":{"nested":"#),
        Piece::Repeat(b'[', arrays),
        Piece::Text(b"1"),
        Piece::Repeat(b']', arrays),
        Piece::Text(b"}}"),
    ])
}

/// Part of a streamed body: fixed text, or one byte repeated.
#[derive(Clone, Copy)]
enum Piece {
    Text(&'static [u8]),
    Repeat(u8, u64),
}

/// A body made of `pieces`, produced in chunks of at most 64 KiB as it is sent.
fn streamed(pieces: &[Piece]) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunks = futures::stream::iter(pieces.to_vec()).flat_map(|piece| {
        let mut left = match piece {
            Piece::Text(_) => 1,
            Piece::Repeat(_, n) => n,
        };
        futures::stream::iter(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            match piece {
                Piece::Text(text) => {
                    left = 0;
                    Some(bytes::Bytes::from_static(text))
                }
                Piece::Repeat(byte, _) => {
                    let n = left.min(CHUNK);
                    left -= n;
                    Some(bytes::Bytes::from(vec![byte; n as usize]))
                }
            }
        }))
    });
    Body::from_stream(chunks.map(Ok::<_, std::convert::Infallible>))
}

impl Node {
    /// The node's state as a query sees it now.
    pub(super) fn view(&self) -> NodeView {
        let (state, since) = match self.state.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        NodeView {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            uptime_secs: state.uptime_after(since.elapsed().as_secs()),
            state,
        }
    }
}
