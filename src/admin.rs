//! The admin server (plain HTTP, on METRICS_PORT): `/healthz` (the runtime's
//! watchdog, [`crate::health`]), `/readyz` (caches synced, webhook certificate
//! loaded, the apiserver answering), `/metrics` (Prometheus) and `/stats` (JSON).
//!
//! `/metrics` carries namespaces, TargetApp and rule names and counts, never a
//! URL, an error text or a state. `/stats` shows every tenant's targets, their
//! URLs and last errors: it answers only a client on the replica's loopback
//! (`kubectl port-forward` arrives there) or one that presents the stats token.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::monitor::Context;

/// What the admin routes read.
#[derive(Clone)]
pub struct Admin {
    pub ctx: Arc<Context>,
    /// The bearer token that opens `/stats` to clients off the loopback (none:
    /// loopback only).
    pub stats_token: Option<Arc<str>>,
}

/// The admin routes. Serve them with
/// `into_make_service_with_connect_info::<SocketAddr>()`: `/stats` needs the peer.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .with_state(admin)
}

/// Whether a client at `peer` that sent `authorization` may read `/stats`.
pub fn may_read_stats(peer: IpAddr, authorization: Option<&str>, token: Option<&str>) -> bool {
    if peer.to_canonical().is_loopback() {
        return true;
    }
    let (Some(token), Some(given)) = (token, authorization.and_then(|v| v.strip_prefix("Bearer ")))
    else {
        return false;
    };
    same_secret(given.trim().as_bytes(), token.as_bytes())
}

/// Compares two secrets in time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why this replica should not get admission reviews and should not be counted
/// on, if so.
pub fn readiness_problem(ctx: &Context) -> Option<String> {
    if !ctx.ready.load(Ordering::Acquire) {
        Some("caches not synced yet".to_owned())
    } else if !ctx.webhook_ready.load(Ordering::Acquire) {
        Some("admission webhooks not ready (no certificate or caches not synced yet)".to_owned())
    } else {
        ctx.health
            .apiserver_problem()
            .or_else(|| ctx.health.descriptor_problem())
    }
}

async fn readyz(State(Admin { ctx, .. }): State<Admin>) -> Response {
    match readiness_problem(&ctx) {
        None => "ok\n".into_response(),
        Some(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response(),
    }
}

async fn healthz(State(Admin { ctx, .. }): State<Admin>) -> Response {
    match ctx.health.liveness_problem() {
        None => "ok\n".into_response(),
        Some(problem) => {
            tracing::error!(%problem, "not alive");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response()
        }
    }
}

async fn metrics(State(Admin { ctx, .. }): State<Admin>) -> Response {
    match ctx.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

async fn stats(
    State(Admin { ctx, stats_token }): State<Admin>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !may_read_stats(peer.ip(), authorization, stats_token.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            "/stats shows every tenant's targets: it answers on the loopback (kubectl port-forward) or with the stats token (STATS_TOKEN_FILE)\n",
        )
            .into_response();
    }
    let apps: Vec<_> = match ctx.stats.read() {
        Ok(all) => all.values().cloned().collect(),
        Err(_) => Vec::new(),
    };
    let targets: usize = apps.iter().map(|a| a.targets.len()).sum();
    let shard = ctx.shard.read().map(|s| s.clone()).unwrap_or_default();
    axum::Json(serde_json::json!({
        "instance": ctx.settings.instance,
        "ready": readiness_problem(&ctx).is_none(),
        "leader": ctx.leadership.is_leader(),
        "sharding": ctx.settings.sharding.is_some(),
        "members": shard.members,
        "leaving": shard.leaving,
        "ownedNamespaces": shard.owned,
        "targets": targets,
        "targetApps": apps,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_answer_the_loopback_or_the_token_only() {
        let pod: IpAddr = "10.0.3.7".parse().unwrap();
        let token = Some("s3cret-token");
        for loopback in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(
                may_read_stats(loopback.parse().unwrap(), None, None),
                "{loopback}"
            );
        }
        assert!(
            !may_read_stats(pod, None, None),
            "no token set: loopback only"
        );
        assert!(!may_read_stats(pod, Some("Bearer s3cret-token"), None));
        assert!(!may_read_stats(pod, None, token));
        assert!(may_read_stats(pod, Some("Bearer s3cret-token"), token));
        for wrong in [
            "Bearer s3cret-toke",
            "Bearer s3cret-tokenX",
            "Basic s3cret-token",
            "s3cret-token",
            "Bearer ",
        ] {
            assert!(!may_read_stats(pod, Some(wrong), token), "{wrong}");
        }
        // A mapped IPv4 address off the loopback is not the loopback.
        assert!(!may_read_stats(
            "::ffff:10.0.3.7".parse().unwrap(),
            None,
            token
        ));
    }
}
