//! The gateway's HTTP servers: the public OpenAI API and the operators' admin listener, their tower
//! stacks, the handlers, and [`run`], which binds both and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::api::{ChatRequest, parse_chat_request, text_only_conflicts};
use crate::auth::{KeyStore, Tenant};
use crate::backend::cloud::CloudBackend;
use crate::backend::local::WorkerPool;
use crate::backend::{Backend, BackendError, ChatEvent, DispatchContext, EventStream, Route, Usage};
use crate::config::GatewayConfig;
use crate::error::{ApiError, ErrorCode};
use crate::level::Level;
use crate::metrics::GatewayMetrics;
use crate::policy::{Engine, Explanation};
use crate::route::{Fleet, Policy, RequestFacts, scan_request};
use crate::stats::{Outcome, Stats};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_ROUTE: HeaderName = HeaderName::from_static("x-sluice-route");
pub const X_BACKEND: HeaderName = HeaderName::from_static("x-sluice-backend");
pub const X_RULE: HeaderName = HeaderName::from_static("x-sluice-rule");
pub const X_SENSITIVITY: HeaderName = HeaderName::from_static("x-sluice-sensitivity");
pub const X_DECISION_ID: HeaderName = HeaderName::from_static("x-sluice-decision-id");
pub const X_MODEL: HeaderName = HeaderName::from_static("x-sluice-model");
pub const X_SUBSTITUTED_FOR: HeaderName = HeaderName::from_static("x-sluice-substituted-for");
pub const X_PREFER: HeaderName = HeaderName::from_static("x-sluice-prefer");

/// Bodies up to this size are scanned on the runtime thread; larger ones on the blocking pool.
const SCAN_INLINE_BYTES: usize = 64 << 10;

/// How many recent decisions `/admin/decisions/{id}` can explain.
pub const RECENT_DECISIONS: usize = 1024;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Pool(#[from] crate::backend::local::PoolError),
    #[error("{0}")]
    Cloud(#[from] crate::backend::cloud::CloudError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("audit log: {0}")]
    Audit(#[from] sluice_audit::AuditError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("local.kubernetes: {0}")]
    Discovery(#[from] sluice_discovery::Error),
}

/// Everything the handlers share.
pub struct App {
    pub config: GatewayConfig,
    pub keys: KeyStore,
    pub fleet: Fleet,
    pub policy: Arc<dyn Policy>,
    pub metrics: GatewayMetrics,
    pub stats: Stats,
    /// The latest decisions, explained.
    pub decisions: DecisionLog,
    /// Nodes cost money from here on.
    started: std::time::Instant,
    /// The audit log's writer, when one is configured (set once by `run`).
    pub audit: std::sync::OnceLock<sluice_audit::AuditHandle>,
    in_flight: Arc<Semaphore>,
    /// The members the gauges were last set for (the series of one that left are removed), each with
    /// when its current stint in the pool began and the node cost counted for that stint.
    gauged:
        std::sync::Mutex<std::collections::BTreeMap<String, Option<(std::time::Instant, crate::cost::Pico)>>>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the application state around a fleet (the backends are started by the caller).
    pub fn new(
        config: GatewayConfig,
        fleet: Fleet,
        policy: Arc<dyn Policy>,
        registry: prometheus::Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = GatewayMetrics::new(registry)?;
        // Every configured backend's cost series exist from the start, at 0: a rate over them is 0, not
        // absent, before the first answer.
        for b in &fleet.backends {
            if b.route() == Route::Cloud {
                metrics.cost.add(&["cloud", b.name()], 0);
            }
        }
        for w in config.local.iter().flat_map(|l| &l.workers) {
            metrics.cost.add(&["local", &w.name], 0);
            metrics.node_cost.add(&[&w.name], 0);
            if config.reference_model.is_some() {
                metrics.cloud_equivalent.add(&[&w.name], 0);
            }
        }
        Ok(Arc::new(Self {
            keys: KeyStore::new(config.keys.clone(), config.allow_unauthenticated),
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            metrics,
            stats: Stats::default(),
            decisions: DecisionLog::new(RECENT_DECISIONS),
            started: std::time::Instant::now(),
            audit: std::sync::OnceLock::new(),
            gauged: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            fleet,
            policy,
            config,
        }))
    }

    /// Starts the configured backends: the local pool first (following `discovery` for more workers,
    /// when given), then the clouds in order.
    pub fn start_fleet(
        config: &GatewayConfig,
        discovery: Option<sluice_discovery::Discovery>,
    ) -> Result<Fleet, GatewayError> {
        let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
        if let Some(pool) = &config.local
            && pool.has_members()
        {
            let pool = Arc::new(WorkerPool::start(pool.clone())?);
            if let Some(d) = discovery {
                pool.follow(d);
            }
            backends.push(pool);
        }
        for cloud in &config.clouds {
            backends.push(Arc::new(CloudBackend::new(cloud.clone())?));
        }
        Ok(Fleet { backends })
    }

    /// What a worker node costs (the pool's figure for a worker the configuration does not list).
    pub fn node_cost(&self, worker: &str) -> crate::cost::NodeCost {
        self.config
            .local
            .as_ref()
            .map(|l| l.node_cost_of(worker))
            .unwrap_or_default()
    }

    /// Sets `sluice_backend_up` and `sluice_backend_in_flight` from the members' state, and adds each
    /// node's cost since the last refresh.
    fn refresh_backend_gauges(&self) {
        // Held throughout: two scrapes at once must not count the same node time twice.
        let mut gauged = self
            .gauged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = self.started.elapsed();
        let mut now = std::collections::BTreeMap::new();
        for backend in &self.fleet.backends {
            if let Some(d) = backend.discovery() {
                let name = [backend.name()];
                self.metrics
                    .discovery_synced
                    .with_label_values(&name)
                    .set(i64::from(d.synced));
                let failures = self.metrics.discovery_failures.with_label_values(&name);
                failures.inc_by(d.failures.saturating_sub(failures.get()));
            }
            for m in backend.members() {
                // A node costs from when the gateway knows of it: its start, or the worker's arrival. A
                // worker that comes back under the same name starts a new stint, added to the old.
                let stint = m.node.map(|(cost, joined)| {
                    let counted = match gauged.get(&m.name) {
                        Some(Some((since, counted))) if *since == joined => *counted,
                        _ => 0,
                    };
                    let total = cost.over(elapsed.min(joined.elapsed()));
                    self.metrics
                        .node_cost
                        .add(&[&m.name], total.saturating_sub(counted));
                    (joined, total.max(counted))
                });
                now.insert(m.name.clone(), stint);
                self.metrics
                    .backend_up
                    .with_label_values(&[&m.name])
                    .set(i64::from(m.ready));
                self.metrics
                    .backend_in_flight
                    .with_label_values(&[&m.name])
                    .set(i64::try_from(m.in_flight).unwrap_or(i64::MAX));
            }
        }
        // A worker that left the pool is no longer up or busy: its series go (its node cost stays).
        for gone in gauged.keys().filter(|g| !now.contains_key(*g)) {
            let _ = self.metrics.backend_up.remove_label_values(&[gone]);
            let _ = self.metrics.backend_in_flight.remove_label_values(&[gone]);
        }
        *gauged = now;
    }
}

/// How long after a request's own deadline the outer timeout layer gives up on it.
const TIMEOUT_BACKSTOP: Duration = Duration::from_secs(5);

/// The request id: the client's `x-request-id` when it is sane, otherwise a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// A new random id: `prefix` and 24 hex digits.
fn new_id(prefix: &str) -> String {
    let n: u128 = rand::random();
    format!("{prefix}{:024x}", n >> 32)
}

/// Builds the public router. Layers, outermost first; each request passes them in this order:
/// 1. `SetSensitiveRequestHeaders`: marks `Authorization` so that no layer below logs it.
/// 2. `Trace`: a span per request (method, path), with the status and latency at the end.
/// 3. `request_id`: reads or makes the id, adds [`RequestId`] to the extensions (read by the handlers)
///    and `x-request-id` to every response, errors included.
/// 4. `shed_load`: takes one of `max_in_flight` permits or answers 429 with `Retry-After`; the permit
///    lives in the response body, so a stream counts until its last byte.
/// 5. `Timeout` (with `HandleError`): a response must start within the request timeout plus a backstop
///    margin (504); the handler's own deadline normally answers first.
/// 6. Routes. `/v1/*` sit behind `authenticate`, which adds [`Tenant`] (read by the handlers);
///    `/healthz` and `/readyz` do not. `DefaultBodyLimit` caps bodies; the handler maps the 413.
pub fn public_router(app: Arc<App>) -> Router {
    let limits = app.config.limits;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
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
                .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
                .layer(TraceLayer::new_for_http())
                .layer(middleware::from_fn(request_id))
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
/// `/admin/summary` and `/dashboard` (cost, local against cloud), `/healthz`. Meant for a loopback or cluster-internal address.
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/backends", get(admin_backends))
        .route("/admin/decisions", get(admin_decisions))
        .route("/admin/summary", get(admin_summary))
        .route("/dashboard", get(dashboard))
        .route("/admin/decisions/{id}", get(admin_decision))
        .route("/healthz", get(healthz))
        .with_state(app)
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
        app.metrics.rejected.with_label_values(&["overloaded"]).inc();
        return ApiError::overloaded(Duration::from_secs(1)).into_response();
    };
    let slot = PermitSlot(Arc::new(std::sync::Mutex::new(Some(permit))));
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    hold_until_body_ends(response, slot)
}

/// An in-flight permit that whichever ends first gives back: the response body, or the task streaming
/// an answer (which may end while a stalled client keeps the body alive).
#[derive(Clone)]
pub struct PermitSlot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl PermitSlot {
    fn release(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// Keeps the permit until the response body has been sent or dropped.
fn hold_until_body_ends(response: Response, slot: PermitSlot) -> Response {
    response.map(|inner| Body::new(PermitBody { inner, slot }))
}

/// A body that holds an in-flight permit. It passes on the inner body's size, so a JSON answer keeps its
/// `Content-Length` and goes out in one write with its headers.
struct PermitBody {
    inner: Body,
    slot: PermitSlot,
}

impl Drop for PermitBody {
    fn drop(&mut self) {
        self.slot.release();
    }
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match app.keys.authenticate(header) {
        Ok(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(failure) => {
            app.metrics.rejected.with_label_values(&["unauthenticated"]).inc();
            ApiError::unauthorized(failure.message()).into_response()
        }
    }
}

async fn fallback(request: Request) -> Response {
    ApiError::no_route(request.uri().path()).into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::method_not_allowed().into_response()
}

async fn healthz() -> Response {
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
    (
        status,
        axum::Json(json!({"status": if ready { "ready" } else { "not_ready" }, "backends": backends})),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.refresh_backend_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.encode(),
    )
        .into_response()
}

async fn admin_backends(State(app): State<Arc<App>>) -> Response {
    let observed = app.stats.snapshot();
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
async fn admin_summary(State(app): State<Arc<App>>) -> Response {
    app.refresh_backend_gauges();
    axum::Json(crate::dashboard::summary(
        &app.metrics,
        app.started.elapsed().as_secs_f64(),
    ))
    .into_response()
}

async fn dashboard() -> Response {
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

/// The latest decisions, explained, newest last; at most [`RECENT_DECISIONS`].
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<Explanation>>>,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Arc<Explanation>>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record(&self, e: Explanation) {
        let e = Arc::new(e);
        let mut recent = self.lock();
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(e);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Explanation>> {
        self.lock().iter().rev().find(|e| e.decision_id == id).cloned()
    }

    pub fn latest(&self, n: usize) -> Vec<Arc<Explanation>> {
        let recent = self.lock();
        recent.iter().rev().take(n).cloned().collect()
    }
}

async fn admin_decision(
    State(app): State<Arc<App>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match app.decisions.get(&id) {
        Some(e) => axum::Json(&*e).into_response(),
        None => ApiError::not_found(format!(
            "No recent decision has the id {id:?}: the gateway keeps the latest {RECENT_DECISIONS}."
        ))
        .into_response(),
    }
}

/// The latest 100 decisions, newest first, in brief.
async fn admin_decisions(State(app): State<Arc<App>>) -> Response {
    let latest: Vec<Value> = app
        .decisions
        .latest(100)
        .iter()
        .map(|e| {
            json!({
                "decision_id": e.decision_id,
                "tenant": e.tenant,
                "model": e.model,
                "level": e.level,
                "outcome": e.outcome,
                "rule": e.rule,
                "backend": e.targets.first().map(|t| &t.backend),
                "code": e.code,
            })
        })
        .collect();
    axum::Json(json!({ "decisions": latest })).into_response()
}

async fn list_models(State(app): State<Arc<App>>) -> Response {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for backend in &app.fleet.backends {
        for card in backend.models() {
            if !seen.insert(card.id.clone()) {
                continue;
            }
            let mut entry = json!({
                "id": card.id,
                "object": "model",
                "created": 0,
                "owned_by": backend.name(),
                "sluice": {"route": backend.route().as_str(), "backend": backend.name()},
            });
            if let Some(p) = card.prices {
                entry["sluice"]["pricing"] = json!({
                    "input_usd_per_mtok": p.input_usd_per_mtok,
                    "output_usd_per_mtok": p.output_usd_per_mtok,
                });
            }
            data.push(entry);
        }
    }
    for v in &app.config.policy.models {
        if !seen.insert(v.name.clone()) {
            continue;
        }
        data.push(json!({
            "id": v.name,
            "object": "model",
            "created": 0,
            "owned_by": "sluice",
            "sluice": {
                "virtual": true,
                "strategy": v.strategy.as_str(),
                "members": v.members.iter().map(|m| json!({"backend": m.backend, "model": m.model})).collect::<Vec<_>>(),
            },
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The routing headers of one request, added to its response whatever it is.
#[derive(Debug, Clone, Default)]
struct Routing {
    route: Option<Route>,
    backend: Option<String>,
    rule: Option<String>,
    level: Option<Level>,
    decision_id: Option<String>,
    /// The model that served (a substitute's, or a virtual model's member).
    model: Option<String>,
    substituted_for: Option<String>,
}

impl Routing {
    fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: HeaderName, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        };
        set(X_ROUTE, self.route.map(Route::as_str));
        set(X_BACKEND, self.backend.as_deref());
        set(X_RULE, self.rule.as_deref());
        set(X_SENSITIVITY, self.level.map(Level::as_str));
        set(X_DECISION_ID, self.decision_id.as_deref());
        set(X_MODEL, self.model.as_deref());
        set(X_SUBSTITUTED_FOR, self.substituted_for.as_deref());
    }

    fn respond(&self, mut response: Response) -> Response {
        self.apply(response.headers_mut());
        response
    }
}

/// Records one request in the metrics and stats when it ends, however it ends (a client that leaves
/// mid-stream drops it, and is counted as `client_closed`).
struct Ledger {
    app: Arc<App>,
    started: Instant,
    route: &'static str,
    backend: String,
    model: String,
    tenant: String,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    generated: u64,
    usage: Option<Usage>,
    code: Option<&'static str>,
    error: Option<String>,
    route_kind: Route,
    /// The backend's members' throughput is read when a local answer is charged.
    backend_ref: Arc<dyn Backend>,
    /// List prices of the model that served, for a cloud answer.
    prices: Option<crate::backend::Prices>,
    /// The model that served.
    served_model: String,
    /// The HTTP status the client got (499 when it left first, as nginx writes it).
    status: u16,
    /// The decision's audit record, completed and sent when the request ends.
    audit: Option<Box<sluice_audit::Record>>,
    /// Whether this attempt is the request as the metrics count it (a backend tried before the one that
    /// answered only feeds the member's stats).
    counted: bool,
}

impl Ledger {
    /// Adds what the answer cost to the cost series: a cloud answer at its model's list prices (when the
    /// backend reported usage), a local one at its share of the node's busy time, and its price at the
    /// reference cloud model.
    fn charge(&self) -> (crate::cost::Pico, Option<crate::cost::Pico>) {
        let m = &self.app.metrics;
        match self.route_kind {
            Route::Cloud => {
                let (Some(u), Some(p)) = (self.usage, self.prices) else {
                    return (0, None);
                };
                let cost = crate::cost::priced(u, p);
                m.cost.add(&["cloud", &self.backend], cost);
                (cost, None)
            }
            Route::Local => {
                let usage = self.usage_or_generated();
                if usage.prompt_tokens + usage.completion_tokens == 0 {
                    return (0, None);
                }
                let node = self.app.node_cost(&self.backend);
                let throughput = self
                    .backend_ref
                    .members()
                    .into_iter()
                    .find(|s| s.name == self.backend)
                    .and_then(|s| s.throughput)
                    .unwrap_or_default();
                let on_node = self.last_token.unwrap_or_else(Instant::now) - self.started;
                let cost = crate::cost::local_charge(&node, throughput, usage, on_node);
                m.cost.add(&["local", &self.backend], cost);
                let equivalent = self.app.config.reference_model.as_ref().map(|(_, p)| {
                    let e = crate::cost::priced(usage, *p);
                    m.cloud_equivalent.add(&[&self.backend], e);
                    e
                });
                (cost, equivalent)
            }
        }
    }

    /// The backend's usage; for an answer without one (a stream the client left), what was generated,
    /// which still ran.
    fn usage_or_generated(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.generated,
        })
    }

    fn token(&mut self) {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated += 1;
    }

    fn finish(&mut self, code: &'static str, error: Option<String>) {
        self.status = match code {
            "ok" => 200,
            "client_stalled" => 408,
            _ => self.status,
        };
        self.code = Some(code);
        self.error = error;
    }

    /// Ends with the error the client gets.
    fn fail(&mut self, e: &ApiError, fault: Option<String>) {
        self.status = e.status.as_u16();
        self.finish(e.code, fault);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("client_closed");
        let m = &self.app.metrics;
        if !self.counted {
            self.app.stats.record(
                &self.backend,
                &Outcome {
                    error: self.error.take(),
                    ..Outcome::default()
                },
            );
            return;
        }
        m.requests
            .with_label_values(&[self.route, &self.backend, &self.model, &self.tenant, code])
            .inc();
        m.request_duration
            .with_label_values(&[self.route])
            .observe(self.started.elapsed().as_secs_f64());
        let ttft = self.first_token.map(|t| t - self.started);
        if let Some(t) = ttft {
            m.time_to_first_token
                .with_label_values(&[self.route, &self.backend])
                .observe(t.as_secs_f64());
        }
        if let Some(u) = self.usage {
            m.tokens
                .with_label_values(&[self.route, &self.backend, "input"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[self.route, &self.backend, "output"])
                .inc_by(u.completion_tokens);
        }
        let (cost, equivalent) = self.charge();
        if let (Some(mut record), Some(audit)) = (self.audit.take(), self.app.audit.get()) {
            record.route = Some(self.route.to_owned());
            record.backend = Some(self.backend.clone());
            record.served_model = Some(self.served_model.clone());
            record.status = self.status;
            record.code = code.to_owned();
            let usage = self.usage_or_generated();
            record.prompt_tokens = usage.prompt_tokens;
            record.completion_tokens = usage.completion_tokens;
            record.cost_usd = crate::cost::usd(cost);
            record.cloud_equivalent_usd = equivalent.map(crate::cost::usd);
            audit.send(*record);
        }
        let tokens = self.usage.map_or(self.generated, |u| u.completion_tokens);
        let generation = match (self.first_token, self.last_token) {
            (Some(a), Some(b)) => Some((tokens, b - a)),
            _ => None,
        };
        self.app.stats.record(
            &self.backend,
            &Outcome {
                time_to_first_token: ttft,
                generation,
                error: self.error.take(),
            },
        );
    }
}

/// Completes a decision's audit record with the refusal the client got and sends it.
fn audit_refusal(app: &App, mut record: sluice_audit::Record, error: &ApiError) {
    if let Some(log) = app.audit.get() {
        record.status = error.status.as_u16();
        record.code = error.code.to_owned();
        log.send(record);
    }
}

/// The client-visible error for a backend failure.
fn api_error(e: &BackendError) -> ApiError {
    match e {
        BackendError::Unavailable(m) => ApiError::no_backend(m.clone()),
        BackendError::Full(m) => ApiError::backends_full(m.clone()),
        BackendError::Timeout(m) => ApiError::backend_timeout(m.clone()),
        BackendError::Rejected { message, code } => ApiError::invalid(code, message.clone()),
        BackendError::Upstream {
            status,
            message,
            code,
            param,
        } => ApiError::upstream(*status, message.clone(), code.clone(), param.clone()),
        BackendError::Failed(m) => ApiError::backend_failed(m.clone()),
        BackendError::Interrupted(m) => ApiError::backend_stream_broken(m.clone()),
    }
}

/// Whether an error counts against the member in its observed stats (a refused request does not).
fn member_fault(e: &BackendError) -> Option<String> {
    match e {
        BackendError::Rejected { .. } | BackendError::Upstream { .. } => None,
        other => Some(other.to_string()),
    }
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    permit: Option<axum::Extension<PermitSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let mut routing = Routing::default();
    let reject = |app: &App, routing: &Routing, reason: &str, e: ApiError| {
        app.metrics.rejected.with_label_values(&[reason]).inc();
        routing.respond(e.into_response())
    };
    let bytes = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reject(
                &app,
                &routing,
                "too_large",
                ApiError::too_large(app.config.limits.max_body_bytes),
            );
        }
        Err(r) => {
            return reject(
                &app,
                &routing,
                "invalid_request",
                ApiError::invalid("invalid_body", format!("Cannot read the body: {}", r.body_text())),
            );
        }
    };
    let request = match parse_chat_request(&bytes) {
        Ok(r) => r,
        Err(e) => return reject(&app, &routing, "invalid_request", e),
    };
    let (declared, prefer) = match crate::route::client_hints(&headers) {
        Ok(hints) => hints,
        Err(e) => return reject(&app, &routing, "invalid_request", e),
    };
    // A large body is scanned on the blocking pool (a few MiB take tens of milliseconds), so that it holds
    // up no other request on this runtime thread.
    let (request, (prompt_tokens, scan)) = if bytes.len() <= SCAN_INLINE_BYTES {
        let scanned = scan_request(&app.config.scanner, &request);
        (request, scanned)
    } else {
        let scanner = app.config.scanner.clone();
        match tokio::task::spawn_blocking(move || {
            let scanned = scan_request(&scanner, &request);
            (request, scanned)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                return reject(
                    &app,
                    &routing,
                    "internal",
                    ApiError::internal(format!("The content scan failed: {e}")),
                );
            }
        }
    };
    for kind in scan.kinds() {
        app.metrics.findings.with_label_values(&[kind.as_str()]).inc();
    }
    if !scan.complete {
        app.metrics.scans_incomplete.inc();
    }
    let facts = RequestFacts {
        tenant: &tenant.0,
        request: &request,
        headers: &headers,
        declared,
        scan: &scan,
        prefer,
        prompt_tokens,
    };
    let decision_id = new_id("dec_");
    let view = app.fleet.view(&app.stats);
    let decided = app.policy.decide(&facts, &view);
    app.decisions.record(crate::policy::explain(
        &decision_id,
        &facts,
        app.config.policy.floor(&tenant.0),
        &view,
        &decided,
    ));
    routing.decision_id = Some(decision_id.clone());
    // The audit record of this decision, when there is a log: what was decided now, how it ended later.
    let audit = app.audit.get().map(|_| {
        let level = match &decided {
            Ok(d) => d.level,
            Err(r) => r.level.unwrap_or_else(|| facts.level()),
        };
        Box::new(sluice_audit::Record {
            time: sluice_audit::format_time(SystemTime::now()),
            decision_id: decision_id.clone(),
            request_id: request_id.0.to_string(),
            tenant: tenant.0.to_string(),
            model: request.model.clone(),
            level: level.as_str().to_owned(),
            findings: scan.kinds().iter().map(|k| k.as_str().to_owned()).collect(),
            rule: match &decided {
                Ok(d) => Some(d.rule.clone()),
                Err(r) => r.rule.clone(),
            },
            prompt_sha256: app
                .config
                .audit
                .as_ref()
                .is_some_and(|a| a.hash_prompts)
                .then(|| {
                    sha2::Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                }),
            ..Default::default()
        })
    });
    let decision = match decided {
        Ok(d) => d,
        Err(refusal) => {
            routing.rule = refusal.rule;
            routing.level = refusal.level;
            if let Some(record) = audit {
                audit_refusal(&app, *record, &refusal.error);
            }
            return reject(&app, &routing, refusal.error.code, *refusal.error);
        }
    };
    // The policy may raise the level (a tenant floor), never lower it.
    let level = decision.level.max(facts.level());
    routing.rule = Some(decision.rule.clone());
    routing.level = Some(level);
    routing.substituted_for = decision.substituted_for.clone();
    let tenant_label = if app.keys.tenants().any(|t| t == &*tenant.0) || &*tenant.0 == crate::auth::ANONYMOUS
    {
        tenant.0.to_string()
    } else {
        "other".to_owned()
    };
    let deadline = arrived + app.config.limits.request_timeout;
    let context = DispatchContext {
        request_id: request_id.0.to_string(),
        deadline,
    };

    // The targets in order, each checked against the invariant; the next is tried only when one is down
    // or full, and only among those the decision allowed.
    let mut failures: Vec<(String, BackendError, Ledger)> = Vec::new();
    let mut unsupported: Option<ApiError> = None;
    let mut started = None;
    for target in &decision.targets {
        let Some(backend) = app.fleet.backends.get(target.backend).cloned() else {
            tracing::error!(decision_id = %decision_id, "the routing policy chose a backend that does not exist");
            continue;
        };
        // The invariant, in the one place every request passes on its way to a backend: never to a
        // backend cleared below the request's level, whatever the policy said.
        if backend.clearance() < level {
            tracing::error!(decision_id = %decision_id, backend = backend.name(), %level, clearance = %backend.clearance(), "the routing policy chose a backend cleared below the request; not sending");
            app.metrics.clearance_blocked.inc();
            continue;
        }
        routing.route = Some(backend.route());
        routing.backend = Some(backend.name().to_owned());
        routing.model = Some(target.model.clone());
        // A local model cannot take tools, images or structured output: the next target may.
        if backend.route() == Route::Local
            && let Some((param, what)) = text_only_conflicts(&request)
        {
            unsupported.get_or_insert_with(|| {
                ApiError::invalid(
                    "unsupported_parameter",
                    format!(
                        "{what} not supported by the local model `{}`; ask for a cloud model, or leave it out.",
                        target.model
                    ),
                )
                .with_param(param)
            });
            continue;
        }
        let sent = (target.model != request.model).then(|| request.with_model(&target.model));
        let sent_request = sent.as_ref().unwrap_or(&request);
        // Metric labels stay low-cardinality whatever a policy does: a model the backend does not list is
        // `other`.
        let model_label = if backend.serves(&target.model) {
            target.model.clone()
        } else {
            "other".to_owned()
        };
        let mut ledger = Ledger {
            app: app.clone(),
            started: arrived,
            route: backend.route().as_str(),
            backend: backend.name().to_owned(),
            model: model_label,
            tenant: tenant_label.clone(),
            first_token: None,
            last_token: None,
            generated: 0,
            usage: None,
            code: None,
            error: None,
            counted: true,
            route_kind: backend.route(),
            backend_ref: backend.clone(),
            prices: view
                .backends
                .get(target.backend)
                .and_then(|b| b.prices(&target.model)),
            served_model: target.model.clone(),
            status: 499,
            audit: audit.clone(),
        };
        tracing::debug!(request_id = %request_id.0, decision_id = %decision_id, backend = backend.name(), model = %target.model, "dispatching");
        // Backends bound their own waits by the deadline; this holds whatever a backend does.
        let result = tokio::time::timeout_at(deadline, backend.dispatch(sent_request, &context))
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Timeout(format!(
                    "backend {} did not start the answer within the request timeout",
                    backend.name()
                )))
            });
        match result {
            Ok(d) => {
                app.metrics
                    .decisions
                    .with_label_values(&[&decision.rule, backend.route().as_str()])
                    .inc();
                started = Some((d, ledger, target.model.clone()));
                break;
            }
            Err(e @ (BackendError::Unavailable(_) | BackendError::Full(_))) => {
                tracing::info!(request_id = %request_id.0, decision_id = %decision_id, backend = backend.name(), error = %e, "backend down or full; trying the next allowed one");
                ledger.fail(&api_error(&e), member_fault(&e));
                // Counted in the member's stats; in the request metrics only if nothing else serves it.
                ledger.counted = false;
                failures.push((backend.name().to_owned(), e, ledger));
            }
            Err(e) => {
                let error = api_error(&e);
                ledger.fail(&error, member_fault(&e));
                tracing::info!(request_id = %request_id.0, decision_id = %decision_id, backend = backend.name(), error = %e, "backend refused or failed");
                return routing.respond(error.into_response());
            }
        }
    }
    let Some((dispatched, mut ledger, served_model)) = started else {
        // Nothing was tried: the record ends here (otherwise the last ledger carries it).
        let nothing_tried = failures.is_empty();
        let audit_refusal = |e: &ApiError| {
            if let Some(record) = audit.as_deref().filter(|_| nothing_tried) {
                audit_refusal(&app, record.clone(), e);
            }
        };
        if let Some(e) = unsupported.filter(|_| failures.is_empty()) {
            audit_refusal(&e);
            return reject(&app, &routing, "unsupported", e);
        }
        let summary = failures
            .iter()
            .map(|(n, e, _)| format!("{n}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        let (error, reason) = match failures.last() {
            // Somewhere would have served it, but not at this level: say so, not merely "down".
            Some(_) if !decision.excluded.is_empty() => (
                ApiError::no_compliant_backend(format!(
                    "The request is {level} (rule `{}`); every backend allowed to take it is down or full ({summary}), and the others may not take it ({}).",
                    decision.rule,
                    decision
                        .excluded
                        .iter()
                        .map(|x| format!("{}: {}", x.backend, x.why))
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
                true,
            ),
            Some((_, e, _)) if failures.len() > 1 => {
                let mut error = api_error(e);
                error.message =
                    format!("Every backend that may serve the request is down or full: {summary}.");
                (error, false)
            }
            Some((_, e, _)) => (api_error(e), false),
            None => (
                ApiError::no_compliant_backend(format!(
                    "The request is {level}; the policy found no backend cleared for it."
                )),
                true,
            ),
        };
        // The request is counted once, on the last backend tried, with the code the client gets.
        if let Some((_, _, last)) = failures.last_mut() {
            last.fail(&error, last.error.clone());
            last.counted = true;
        }
        if reason {
            app.metrics.rejected.with_label_values(&[error.code]).inc();
        }
        audit_refusal(&error);
        drop(failures);
        return routing.respond(error.into_response());
    };
    drop(failures);
    ledger.backend = dispatched.served_by.to_string();
    routing.backend = Some(ledger.backend.clone());
    let shape = Shape {
        id: format!("chatcmpl-{}", decision_id.trim_start_matches("dec_")),
        created: unix_now(),
        model: served_model,
        include_usage: request.include_usage,
    };
    if request.stream {
        let permit = permit.map(|axum::Extension(p)| p);
        let mut response = sse_response(dispatched.events, shape, ledger, context.deadline, permit);
        routing.apply(response.headers_mut());
        response
    } else {
        routing.respond(collect(dispatched.events, &request, shape, &mut ledger, context.deadline).await)
    }
}

/// What local answers look like: the completion id, creation time and model.
struct Shape {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Shape {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage_json(usage),
        })
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// The next event of an answer; running out of time or events before `Finished` is an error.
async fn next_event(events: &mut EventStream, deadline: Instant) -> Result<ChatEvent, BackendError> {
    match tokio::time::timeout_at(deadline, events.next()).await {
        Err(_) => Err(BackendError::Timeout(
            "the answer did not finish within the request timeout".into(),
        )),
        Ok(None) => Err(BackendError::Interrupted(
            "the backend ended the answer without finishing it".into(),
        )),
        Ok(Some(e)) => e,
    }
}

/// Reads a whole answer and returns it as one `chat.completion`.
async fn collect(
    mut events: EventStream,
    _request: &ChatRequest,
    shape: Shape,
    ledger: &mut Ledger,
    deadline: Instant,
) -> Response {
    let mut text = String::new();
    let mut completion: Option<Value> = None;
    loop {
        let event = next_event(&mut events, deadline).await;
        match event {
            Ok(ChatEvent::Text(t)) => {
                ledger.token();
                text.push_str(&t);
            }
            Ok(ChatEvent::Chunk(_)) => ledger.token(),
            Ok(ChatEvent::Completion(v)) => {
                ledger.token();
                completion = Some(v);
            }
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                ledger.usage = usage;
                ledger.finish("ok", None);
                let body = match completion {
                    Some(v) => v,
                    None => {
                        let mut body = json!({
                            "id": shape.id,
                            "object": "chat.completion",
                            "created": shape.created,
                            "model": shape.model,
                            "system_fingerprint": null,
                            "choices": [{
                                "index": 0,
                                "message": {"role": "assistant", "content": text, "refusal": null},
                                "logprobs": null,
                                "finish_reason": finish_reason,
                            }],
                        });
                        if let Some(u) = usage {
                            body["usage"] = usage_json(u);
                        }
                        body
                    }
                };
                return axum::Json(body).into_response();
            }
            Err(e) => {
                let error = api_error(&e);
                ledger.fail(&error, member_fault(&e));
                return error.into_response();
            }
        }
    }
}

/// One server-sent event.
fn frame(data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 8);
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// Frames written ahead of a slow reader before the producer waits for it.
const SSE_BUFFER: usize = 32;

/// Writes an answer's events as server-sent event frames.
struct SseWriter {
    events: EventStream,
    shape: Shape,
    ledger: Ledger,
    deadline: Instant,
    started: bool,
    done: bool,
    queue: std::collections::VecDeque<Bytes>,
}

impl SseWriter {
    /// The next frame, or `None` after the last.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Some(f);
            }
            if self.done {
                return None;
            }
            let event = next_event(&mut self.events, self.deadline).await;
            self.push(event);
        }
    }

    fn role_chunk(&mut self) {
        if !self.started {
            self.started = true;
            let first = self
                .shape
                .chunk(json!({"role": "assistant", "content": ""}), None);
            self.queue.push_back(frame(&first.to_string()));
        }
    }

    fn push(&mut self, event: Result<ChatEvent, BackendError>) {
        match event {
            Ok(ChatEvent::Text(t)) => {
                self.ledger.token();
                self.role_chunk();
                let chunk = self.shape.chunk(json!({"content": t}), None);
                self.queue.push_back(frame(&chunk.to_string()));
            }
            Ok(ChatEvent::Chunk(mut c)) => {
                let usage_only = c
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
                if !usage_only
                    && c.pointer("/choices/0/delta/content")
                        .is_some_and(Value::is_string)
                {
                    self.ledger.token();
                }
                if !self.shape.include_usage {
                    // The gateway asked for usage for its own metering; this client did not.
                    if usage_only {
                        return;
                    }
                    if let Value::Object(o) = &mut c {
                        o.remove("usage");
                    }
                }
                self.queue.push_back(frame(&c.to_string()));
            }
            Ok(ChatEvent::Completion(_)) => {}
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                self.done = true;
                self.ledger.usage = usage;
                self.ledger.finish("ok", None);
                // Chunks from an OpenAI-compatible backend carry their own ending; a worker's do not.
                if self.ledger.route == Route::Local.as_str() {
                    self.role_chunk();
                    let last = self.shape.chunk(json!({}), Some(&finish_reason));
                    self.queue.push_back(frame(&last.to_string()));
                    if self.shape.include_usage {
                        let u = usage.unwrap_or_default();
                        self.queue
                            .push_back(frame(&self.shape.usage_chunk(u).to_string()));
                    }
                }
                self.queue.push_back(frame("[DONE]"));
            }
            Err(e) => {
                self.done = true;
                let error = api_error(&e);
                self.ledger.fail(&error, member_fault(&e));
                tracing::info!(backend = %self.ledger.backend, error = %e, "answer broke off mid-stream");
                self.queue.push_back(frame(&error.body().to_string()));
            }
        }
    }
}

/// Streams an answer as OpenAI server-sent events, ending with `data: [DONE]`, or with an error event
/// (`data: {"error": {...}}`, which the SDKs raise) when the answer breaks off.
///
/// A task of its own reads the backend and writes frames into a small buffer that the response body
/// drains. It ends when the answer does, when the client goes away, or at the request's deadline if the
/// client stops reading; then it drops the backend stream (the worker frees the slot) and gives back the
/// in-flight permit, even while a stalled connection stays open.
fn sse_response(
    events: EventStream,
    shape: Shape,
    ledger: Ledger,
    deadline: Instant,
    permit: Option<PermitSlot>,
) -> Response {
    let mut writer = SseWriter {
        events,
        shape,
        ledger,
        deadline,
        started: false,
        done: false,
        queue: Default::default(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(SSE_BUFFER);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                f = writer.next_frame() => f,
                () = tx.closed() => break,
            };
            let Some(f) = next else { break };
            match tokio::time::timeout_at(deadline, tx.send(f)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    writer.ledger.finish("client_stalled", None);
                    tracing::info!(backend = %writer.ledger.backend, "client stopped reading; answer ended at the deadline");
                    break;
                }
            }
        }
        if let Some(p) = permit {
            p.release();
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response.extensions_mut().insert(ErrorCode("ok"));
    response
}

/// Addresses the gateway bound (with port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Runs the gateway until `shutdown` resolves, then stops accepting connections and gives requests in
/// flight `config.drain_grace` to finish.
pub async fn run(
    config: GatewayConfig,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), GatewayError> {
    let public = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let discovery = match config.local.as_ref().and_then(|l| l.kubernetes.as_ref()) {
        Some(target) => Some(sluice_discovery::Discovery::connect(target).await?),
        None => None,
    };
    let fleet = App::start_fleet(&config, discovery)?;
    let grace = config.drain_grace;
    let policy = Arc::new(Engine::new(config.policy.clone()));
    let app = App::new(config, fleet, policy, registry)?;
    if let Some(a) = &app.config.audit {
        let log = sluice_audit::AuditLog::open(&a.path, a.options)?;
        let _ = app.audit.set(sluice_audit::spawn_writer(log)?);
        tracing::info!(path = %a.path.display(), "auditing decisions");
    }
    let bound = BoundAddrs {
        public: public.local_addr().map_err(GatewayError::Serve)?,
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()),
    };
    on_bound(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(admin) = admin {
        let router = admin_router(app.clone());
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, router)
                .with_graceful_shutdown(stopped(rx))
                .await
            {
                tracing::warn!(error = %e, "admin listener failed");
            }
        });
    }
    let server = axum::serve(public.tap_io(no_delay), public_router(app.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let mut serving = tokio::spawn(async move { server.await });
    tokio::select! {
        r = &mut serving => return r.map_err(|e| GatewayError::Serve(std::io::Error::other(e)))?.map_err(GatewayError::Serve),
        _ = stopped(stop_rx) => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "draining: no new connections; waiting for requests in flight"
    );
    let result = match tokio::time::timeout(grace, &mut serving).await {
        Ok(r) => r
            .map_err(|e| GatewayError::Serve(std::io::Error::other(e)))
            .and_then(|r| r.map_err(GatewayError::Serve)),
        Err(_) => {
            // Connections still open end when the process exits.
            tracing::warn!("drain grace over; stopping with requests still in flight");
            serving.abort();
            Ok(())
        }
    };
    // Every decision recorded so far is on disk before the process ends.
    if let Some(audit) = app.audit.get().cloned() {
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
    }
    result
}

/// Streamed answers are many small writes: without this, Nagle's algorithm and delayed ACKs can hold a
/// token back for tens of milliseconds.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

#[cfg(test)]
mod tests;
