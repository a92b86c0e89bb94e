//! The simulator's control API: JSON over HTTP to add and remove nodes, change
//! their state and faults, and read how many requests each one received.
//!
//! ```text
//! GET    /healthz
//! GET    /nodes                       every node
//! POST   /nodes                       {"address": "127.0.0.2:3085", "state": {...}?}
//! GET    /nodes/{address}             one node, with its request count
//! DELETE /nodes/{address}             stop it
//! PATCH  /nodes/{address}/state       {"syncStatus": "CATCHUP", "blockchainLength": 42, ...}
//! PUT    /nodes/{address}/faults      {"latencyMs": 200, "httpStatus": 500, ...}
//! DELETE /nodes/{address}/faults      clear all faults
//! DELETE /nodes/{address}/requests    reset the request count (returns the old one)
//! ```
//!
//! Faults (all off by default; at most one of those that replace the answer):
//!
//! ```text
//! latencyMs        delay before answering
//! hang             accept the request and never answer (until cleared)
//! reset            close the connection with a TCP RST            (replaces the answer)
//! httpStatus       answer this status, 400-599                     (replaces the answer)
//! retryAfterSecs   with httpStatus: send Retry-After: <seconds>
//! graphqlError     a GraphQL error; partialData keeps the data
//! malformedJson    200 with a body that is not JSON                (replaces the answer)
//! bodyBytes        200 with a valid JSON body of this many bytes,
//!                  streamed (100 MB costs no memory)               (replaces the answer)
//! nestedDepth      200 with valid JSON nested this deep, streamed  (replaces the answer)
//! invalidUtf8      200 with JSON holding bytes that are not UTF-8  (replaces the answer)
//! redirectTo       307 to this absolute URL                        (replaces the answer)
//! trickleMs        send whatever body one byte at a time, this many ms apart
//! trickleBytes     with trickleMs: this many bytes at a time (up to 1 MiB)
//! untrustedTls     serve HTTPS with a self-signed certificate (for connections
//!                  accepted from then on)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Announce, Faults, Inner, NodeState, SimulatorError, StatePatch};

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/nodes", get(list).post(create))
        .route("/nodes/{address}", get(show).delete(remove))
        .route("/nodes/{address}/state", patch(patch_state))
        .route("/nodes/{address}/announce", axum::routing::post(announce))
        .route(
            "/nodes/{address}/faults",
            put(set_faults).delete(clear_faults),
        )
        .route(
            "/nodes/{address}/requests",
            axum::routing::delete(reset_requests),
        )
        .with_state(inner)
}

/// A control API failure: a status and a message for the caller.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<SimulatorError> for Failure {
    fn from(e: SimulatorError) -> Self {
        let status = match e {
            SimulatorError::NotFound(_) => StatusCode::NOT_FOUND,
            SimulatorError::Exists(_) => StatusCode::CONFLICT,
            SimulatorError::Bind { .. } | SimulatorError::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        Failure(status, e.to_string())
    }
}

fn address(raw: &str) -> Result<SocketAddr, Failure> {
    raw.parse().map_err(|_| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not an address like 127.0.0.2:3085"),
        )
    })
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    address: SocketAddr,
    #[serde(default)]
    state: StatePatch,
}

async fn list(State(inner): State<Arc<Inner>>) -> Response {
    let nodes: Vec<_> = inner
        .nodes
        .lock()
        .await
        .values()
        .map(|n| n.info())
        .collect();
    Json(nodes).into_response()
}

async fn create(State(inner): State<Arc<Inner>>, bytes: Bytes) -> Result<Response, Failure> {
    let create: Create = body(&bytes)?;
    let state = NodeState::default()
        .patched(create.state)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    let info = inner.add_node(create.address, state).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn show(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(inner.node(address(&raw)?).await?.info()).into_response())
}

async fn remove(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
) -> Result<Response, Failure> {
    inner.remove_node(address(&raw)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn patch_state(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<Response, Failure> {
    let addr = address(&raw)?;
    let patch: StatePatch = body(&bytes)?;
    Ok(Json(inner.patch_state(addr, patch).await?).into_response())
}

async fn announce(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<Response, Failure> {
    let addr = address(&raw)?;
    let what: Announce = body(&bytes)?;
    Ok(Json(inner.announce(addr, what).await?).into_response())
}

async fn set_faults(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
    bytes: Bytes,
) -> Result<Response, Failure> {
    let addr = address(&raw)?;
    let faults: Faults = body(&bytes)?;
    Ok(Json(inner.set_faults(addr, faults).await?).into_response())
}

async fn clear_faults(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
) -> Result<Response, Failure> {
    Ok(Json(inner.set_faults(address(&raw)?, Faults::default()).await?).into_response())
}

async fn reset_requests(
    State(inner): State<Arc<Inner>>,
    Path(raw): Path<String>,
) -> Result<Response, Failure> {
    let previous = inner.reset_requests(address(&raw)?).await?;
    Ok(Json(serde_json::json!({ "requests": previous })).into_response())
}
