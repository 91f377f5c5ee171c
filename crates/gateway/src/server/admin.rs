//! The operators' endpoints on the admin listener: `/metrics`, `/admin/backends`, `/admin/decisions`
//! and `/admin/decisions/{id}`, `/admin/summary` and `/dashboard`. They read; accounting writes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::app::App;
use crate::accounting::RECENT_DECISIONS;
use crate::error::ApiError;

pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_backend_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.accounts.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn backends(State(app): State<Arc<App>>) -> Response {
    let observed = app.accounts.stats.snapshot();
    let backends: Vec<Value> = app
        .fleet
        .backends
        .iter()
        .map(|b| {
            let members: Vec<Value> = b
                .members()
                .into_iter()
                .map(|m| {
                    let seen = observed.get(&m.name).cloned().unwrap_or_default();
                    json!({"member": m, "observed": seen})
                })
                .collect();
            json!({
                "name": b.name(),
                "route": b.route().as_str(),
                "clearance": b.clearance().as_str(),
                "ready": b.ready(),
                "models": b.models().into_iter().map(|m| m.id).collect::<Vec<_>>(),
                "members": members,
                "discovery": b.discovery(),
            })
        })
        .collect();
    axum::Json(json!({ "backends": backends })).into_response()
}

/// The cost figures `/dashboard` shows, as JSON.
pub(super) async fn summary(State(app): State<Arc<App>>) -> Response {
    app.refresh_backend_gauges();
    axum::Json(crate::dashboard::summary(
        &app.accounts.metrics,
        app.accounts.since_start().as_secs_f64(),
    ))
    .into_response()
}

/// Sluice's HTTP surface as an OpenAPI document, checked in at `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub(super) async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                crate::dashboard::CONTENT_SECURITY_POLICY,
            ),
        ],
        crate::dashboard::PAGE,
    )
        .into_response()
}

pub(super) async fn decision(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match app.accounts.decisions.get(&id) {
        Some(e) => axum::Json(&*e).into_response(),
        None => ApiError::not_found(format!(
            "No recent decision has the id {id:?}: the gateway keeps the latest {RECENT_DECISIONS}."
        ))
        .into_response(),
    }
}

/// The latest 100 decisions, newest first, in brief.
pub(super) async fn decisions(State(app): State<Arc<App>>) -> Response {
    let latest: Vec<Value> = app
        .accounts
        .decisions
        .latest(100)
        .iter()
        .map(|e| {
            let ended = e.ended.as_ref();
            json!({
                "decision_id": e.decision_id,
                "tenant": e.tenant,
                "model": e.model,
                "level": e.level,
                "outcome": e.outcome,
                "rule": e.rule,
                "backend": e.targets.first().map(|t| &t.backend),
                // How it ended, once it has: the member that served (or was tried last), and the code.
                "served_by": ended.and_then(|x| x.backend.as_ref()),
                "code": ended.map(|x| x.code).or(e.code),
                "status": ended.map(|x| x.status).or(e.status),
            })
        })
        .collect();
    axum::Json(json!({ "decisions": latest })).into_response()
}

/// Every tenant's usage against its limits: requests and tokens this minute, spend this period, and when
/// each resets.
pub(super) async fn tenants(State(app): State<Arc<App>>) -> Response {
    let Some(limiter) = &app.limiter else {
        return axum::Json(json!({"limits": "off", "tenants": []})).into_response();
    };
    let mut names: Vec<String> = app.keys.tenants().map(ToOwned::to_owned).collect();
    if app.config.allow_unauthenticated {
        names.push(crate::auth::ANONYMOUS.to_owned());
    }
    names.sort_unstable();
    names.dedup();
    let tenants = limiter.usage(&names).await;
    axum::Json(json!({
        "limits": "on",
        "store": if limiter.shared() { "redis" } else { "memory" },
        "reachable": limiter.reachable(),
        "tenants": tenants,
    }))
    .into_response()
}
