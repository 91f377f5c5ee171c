//! The two routers and their tower stacks: the public OpenAI API and the operators' admin listener, the
//! middleware of the public one (request ids, load shedding, authentication) and the small open
//! endpoints (`/healthz`, `/readyz`, fallbacks).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use super::app::App;
use super::ids::{RequestId, new_id};
use super::{admin, chat, embeddings, messages, models, responses, traced};
use crate::error::ApiError;
use crate::headers::X_REQUEST_ID;
use crate::shed::{PermitSlot, hold_until_body_ends};

/// How long after a request's own deadline the outer timeout layer gives up on it.
const TIMEOUT_BACKSTOP: Duration = Duration::from_secs(5);

/// Builds the public router. Layers, outermost first; each request passes them in this order:
/// 1. `SetSensitiveRequestHeaders`: marks `Authorization` and `x-api-key` so that no layer below logs them.
/// 2. `Trace`: a span per request (method, path), with the status and latency at the end.
/// 3. `request_id`: reads or makes the id, adds [`RequestId`] to the extensions (read by the handlers)
///    and `x-request-id` to every response, errors included.
/// 4. `anthropic_errors`: on `/v1/messages`, every error (the layers' below included) in Anthropic's
///    error shape, and the id also as `request-id`, where the Anthropic SDKs look for it.
/// 5. `trace_request`: with tracing on, the request's span (continuing the client's `traceparent`), open
///    until the response body ends; the steps below record on it and open their spans under it.
/// 6. `shed_load`: takes one of `max_in_flight` permits or answers 429 with `Retry-After`; the permit
///    lives in the response body, so a stream counts until its last byte.
/// 7. `Timeout` (with `HandleError`): a response must start within the request timeout plus a backstop
///    margin (504); the handler's own deadline normally answers first.
/// 8. Routes. `/v1/*` sit behind `authenticate`, which adds [`crate::auth::Tenant`] (read by the handlers);
///    `/healthz` and `/readyz` do not. `DefaultBodyLimit` caps bodies; the handler maps the 413.
pub fn public_router(app: Arc<App>) -> Router {
    let limits = app.config.limits;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/responses", post(responses::create))
        .route("/v1/messages", post(messages::create))
        .route("/v1/models", get(models::list))
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    api.merge(open)
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(app.clone())
        .layer(
            ServiceBuilder::new()
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::HeaderName::from_static(X_API_KEY),
                ]))
                .layer(TraceLayer::new_for_http())
                .layer(middleware::from_fn(request_id))
                .layer(middleware::from_fn(anthropic_errors))
                .layer(middleware::from_fn(traced::trace_request))
                .layer(middleware::from_fn_with_state(app, shed_load))
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    ApiError::backend_timeout("The answer did not start within the request timeout.")
                        .into_response()
                }))
                // A backstop: the handler's own deadline (arrival + request_timeout) ends requests first,
                // with their routing headers and metrics; this only catches what would run past it.
                .timeout(limits.request_timeout + TIMEOUT_BACKSTOP),
        )
}

/// The admin router: `/metrics` (Prometheus text), `/admin/backends` (every member's state and observed
/// latency, JSON), `/admin/decisions` (the latest decisions) and `/admin/decisions/{id}` (one explained),
/// `/admin/summary` and `/dashboard` (cost, local against cloud), `/admin/tenants` (usage against each
/// tenant's limits), `/openapi.json` (the HTTP surface, `docs/openapi.json`), `/healthz`. With `admin_token_*` configured, every route but `/metrics`, `/healthz`
/// and the dashboard's page requires the token. Meant for a loopback or cluster-internal address.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/admin/backends", get(admin::backends))
        .route("/admin/decisions", get(admin::decisions))
        .route("/admin/summary", get(admin::summary))
        .route("/admin/tenants", get(admin::tenants))
        .route("/admin/decisions/{id}", get(admin::decision))
        .route("/openapi.json", get(admin::openapi))
        // With an admin token, everything above requires it; scrapers, probes and the dashboard's page
        // (which holds no figures and sends the token from its URL's fragment) below do not.
        .layer(middleware::from_fn_with_state(app.clone(), admin_token))
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(healthz))
        .route("/dashboard", get(admin::dashboard))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// The admin token, when one is configured: `Authorization: Bearer TOKEN`, or 401 `invalid_admin_token`.
async fn admin_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let Some(token) = &app.config.admin_token else {
        return next.run(request).await;
    };
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match token.check(header) {
        Ok(()) => next.run(request).await,
        Err(_) => {
            let mut response = ApiError::admin_unauthorized().into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id: Arc<str> = match request.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
        {
            v.into()
        }
        _ => new_id("req_").into(),
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    response
}

async fn shed_load(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    // Health checks must answer even when the gateway is saturated.
    let path = request.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(request).await;
    }
    let Ok(permit) = app.in_flight.clone().try_acquire_owned() else {
        app.accounts.rejected("overloaded");
        return ApiError::overloaded(Duration::from_secs(1)).into_response();
    };
    let slot = PermitSlot::new(permit);
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    hold_until_body_ends(response, slot)
}

/// The header the Anthropic SDKs send their key in; taken as `Authorization: Bearer` is.
const X_API_KEY: &str = "x-api-key";

async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let authenticated = match (headers.get(header::AUTHORIZATION), headers.get(X_API_KEY)) {
        (Some(bearer), _) => app.keys.authenticate(Some(bearer.as_bytes())),
        (None, Some(key)) => app.keys.authenticate_key(key.as_bytes()),
        (None, None) => app.keys.authenticate(None),
    };
    match authenticated {
        Ok(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(failure) => {
            app.accounts.rejected("unauthenticated");
            ApiError::unauthorized(failure.message()).into_response()
        }
    }
}

/// Most bytes of an error body rewritten into Anthropic's shape; a larger one is not an error of ours.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// On `/v1/messages`: OpenAI-shaped error bodies (every error of this gateway) rewritten into
/// Anthropic's shape, whichever layer answered; the request id also as `request-id`.
async fn anthropic_errors(request: Request, next: Next) -> Response {
    if request.uri().path() != "/v1/messages" {
        return next.run(request).await;
    }
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| HeaderValue::from_str(&id.0).ok());
    let mut response = next.run(request).await;
    if let Some(id) = id {
        response.headers_mut().insert("request-id", id);
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let status = response.status();
    if !(json && (status.is_client_error() || status.is_server_error())) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_LIMIT).await else {
        return ApiError::internal("An error answer could not be read back.").into_response();
    };
    let rewritten = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.get("error").is_some() => crate::error::anthropic_body(status.as_u16(), &v).to_string(),
        _ => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(rewritten))
}

async fn fallback(request: Request) -> Response {
    ApiError::no_route(request.uri().path()).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

pub(super) async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    let backends: Vec<Value> = app
        .fleet
        .backends
        .iter()
        .map(|b| json!({"name": b.name(), "route": b.route().as_str(), "ready": b.ready()}))
        .collect();
    let ready = app.fleet.backends.iter().any(|b| b.ready());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"status": if ready { "ready" } else { "not_ready" }, "backends": backends});
    // An unreachable limits store does not make the gateway unready (requests follow `limits.fail`), but
    // it is said here.
    if let Some(l) = &app.limiter {
        body["limits"] = json!({
            "store": if l.shared() { "redis" } else { "memory" },
            "reachable": l.reachable(),
            "fail": l.fail().as_str(),
        });
    }
    (status, axum::Json(body)).into_response()
}
