//! One simulated node's HTTP server: its own listener and accept loop, so that
//! faults can act on the connection itself (a TCP reset) as well as on answers.

use std::net::SocketAddr;
use std::sync::Arc;
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
        .route("/graphql", post(graphql))
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
        tokio::spawn(connection(
            stream,
            router.clone(),
            node.cancel.clone(),
            node.addr,
        ));
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    cancel: CancellationToken,
    addr: SocketAddr,
) {
    // A second handle on the socket, to set SO_LINGER=0 (an RST on close) when a
    // reset fault fires while hyper owns the stream.
    let Some((stream, handle)) = split_handle(stream) else {
        return;
    };
    let switch = ResetSwitch(Arc::new(Notify::new()));
    let service = router.layer(axum::Extension(switch.clone()));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::select! {
        result = conn => {
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

fn split_handle(stream: TcpStream) -> Option<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std().ok()?;
    let handle = std.try_clone().ok()?;
    let stream = TcpStream::from_std(std).ok()?;
    Some((stream, handle))
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
    match faults.answer() {
        Answer::Reset => {
            switch.0.notify_one();
            std::future::pending().await
        }
        Answer::HttpStatus(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, format!("simulated HTTP {code}\n")).into_response()
        }
        Answer::MalformedJson => json_response(Body::from(
            r#"{"data": {"daemonStatus": {"syncStatus": "SYN"#,
        )),
        Answer::Sized(bytes) => json_response(sized_body(bytes)),
        Answer::Normal => execute(&ctx, &body, None).await,
        Answer::GraphqlError { message, partial } => {
            execute(&ctx, &body, Some((message, partial))).await
        }
    }
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
    const CHUNK: usize = 64 * 1024;
    let overhead = (HEAD.len() + TAIL.len()) as u64;
    let mut padding = bytes.saturating_sub(overhead);
    let chunks = futures::stream::iter(std::iter::once(bytes::Bytes::from_static(HEAD)))
        .chain(futures::stream::iter(std::iter::from_fn(move || {
            if padding == 0 {
                return None;
            }
            let n = usize::try_from(padding.min(CHUNK as u64)).unwrap_or(CHUNK);
            padding -= n as u64;
            Some(bytes::Bytes::from(vec![b'x'; n]))
        })))
        .chain(futures::stream::iter(std::iter::once(
            bytes::Bytes::from_static(TAIL),
        )))
        .map(Ok::<_, std::convert::Infallible>);
    Body::from_stream(chunks)
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
