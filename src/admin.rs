//! The admin server (plain HTTP, on METRICS_PORT): `/healthz`, `/readyz` (true
//! once the caches have synced), `/metrics` (Prometheus) and `/stats` (JSON).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::monitor::Context;

/// The admin routes over the monitoring context.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    if !ctx.ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n").into_response()
    } else if !ctx.webhook_ready.load(Ordering::Acquire) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "admission webhooks not ready (no certificate or caches not synced yet)\n",
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n").into_response()
        }
    }
}

async fn stats(State(ctx): State<Arc<Context>>) -> Response {
    let apps: Vec<_> = match ctx.stats.read() {
        Ok(all) => all.values().cloned().collect(),
        Err(_) => Vec::new(),
    };
    let targets: usize = apps.iter().map(|a| a.targets.len()).sum();
    let shard = ctx.shard.read().map(|s| s.clone()).unwrap_or_default();
    axum::Json(serde_json::json!({
        "instance": ctx.settings.instance,
        "ready": ctx.ready.load(Ordering::Acquire) && ctx.webhook_ready.load(Ordering::Acquire),
        "leader": ctx.leadership.is_leader(),
        "sharding": ctx.settings.sharding.is_some(),
        "members": shard.members,
        "ownedNamespaces": shard.owned,
        "targets": targets,
        "targetApps": apps,
    }))
    .into_response()
}
