//! The request's trace on the public listener: one span per request that continues the client's W3C
//! `traceparent` and ends with its response body (a stream's last byte). The handler and the steps record
//! on it what was decided (tenant, model, level, finding kinds, rule, route, backend, decision id, error
//! code) and open child spans for their work; nothing recorded is content.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use sluice_sensitivity::Scan;
use sluice_telemetry::{TARGET, propagation};
use tracing::Instrument as _;
use tracing::field::Empty;

use super::ids::RequestId;
use crate::headers::RoutingHeaders;

/// The public listener's paths (crates/gateway/tests/openapi.rs holds them to the router's).
const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/responses",
    "/v1/messages",
    "/healthz",
    "/readyz",
];

/// Middleware: the request's span, around everything below it and its response body.
pub(super) async fn trace_request(request: Request, next: Next) -> Response {
    if !tracing::span_enabled!(target: TARGET, tracing::Level::TRACE) {
        return next.run(request).await;
    }
    // Paths the API does not have stay out of span names (they are the client's to choose).
    let path = request.uri().path();
    let known = ROUTES.contains(&path);
    let name = if known {
        format!("{} {path}", request.method())
    } else {
        request.method().to_string()
    };
    let span = tracing::trace_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %request.method(),
        url.path = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        sluice.request_id = Empty,
        sluice.tenant = Empty,
        sluice.model = Empty,
        sluice.level = Empty,
        sluice.findings = Empty,
        sluice.rule = Empty,
        sluice.route = Empty,
        sluice.backend = Empty,
        sluice.decision_id = Empty,
    );
    if span.is_disabled() {
        return next.run(request).await;
    }
    propagation::continue_from(&span, request.headers());
    if known {
        span.record("url.path", path);
    }
    if let Some(id) = request.extensions().get::<RequestId>() {
        span.record("sluice.request_id", &*id.0);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response.map(|inner| Body::new(SpanBody { inner, span }))
}

/// What intake found: the tenant, the model asked for, and the kinds of the findings (each once).
pub(super) fn record_intake(tenant: &str, model: &str, scan: &Scan) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("sluice.tenant", tenant);
    span.record("sluice.model", model);
    let mut kinds: Vec<&str> = scan.findings.iter().map(|f| f.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    span.record("sluice.findings", kinds.join(","));
}

/// What the answer's routing headers say.
pub(super) fn record_routing(routing: &RoutingHeaders) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(level) = routing.level {
        span.record("sluice.level", level.as_str());
    }
    if let Some(rule) = &routing.rule {
        span.record("sluice.rule", rule.as_str());
    }
    if let Some(route) = routing.route_name() {
        span.record("sluice.route", route);
    }
    if let Some(backend) = &routing.backend {
        span.record("sluice.backend", backend.as_str());
    }
    if let Some(id) = &routing.decision_id {
        span.record("sluice.decision_id", id.as_str());
    }
}

/// A response body that keeps the request's span open until it ends. A span ends at its last exit, so
/// it is entered while the body is polled: a stream's span ends with its last chunk.
struct SpanBody {
    inner: Body,
    span: tracing::Span,
}

impl http_body::Body for SpanBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
