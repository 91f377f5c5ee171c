//! Every error a client can see, and its one mapping to HTTP: status, OpenAI-shaped body
//! (`{"error": {"message", "type", "param", "code"}}`), a stable snake_case `code` (also the metric label),
//! and `Retry-After` where waiting helps. The domain errors of the other steps (the policy's
//! [`Refusal`], a backend's [`BackendError`] and [`Unsupported`], the dispatcher's [`Unserved`]) become
//! [`ApiError`]s here and nowhere else; `sluice policy explain` uses the same mapping.
//! Must never decide anything: it only translates.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_policy::{Explanation, Refusal, RefusalReason};

use crate::api::InvalidRequest;
use crate::backend::{BackendError, Unsupported};
use crate::dispatch::Unserved;

/// A client-visible failure. Build it with the constructors below; [`IntoResponse`] is the only place
/// where errors become HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable snake_case code, also the `code` label of the request metrics.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
    /// The code an upstream provider gave, shown to the client instead of `code` (which stays the metric
    /// label, so that labels keep to this file's codes).
    pub upstream_code: Option<String>,
    /// Retrying the same request cannot help: `x-should-retry: false`, which the official SDKs read.
    pub final_answer: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            upstream_code: None,
            final_answer: false,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// 400: the body is not what the API accepts (`code` names the kind of problem).
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 4xx from an OpenAI-compatible backend, passed on with its status, code and field.
    pub fn upstream(status: u16, message: String, code: Option<String>, param: Option<String>) -> Self {
        let status = StatusCode::from_u16(status)
            .ok()
            .filter(StatusCode::is_client_error)
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut e = Self::new(status, "upstream_rejected", message);
        e.upstream_code = code;
        e.param = param;
        e
    }

    /// 401: no key, or a key that is not configured.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    /// 401: the admin listener requires its token.
    pub fn admin_unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "This admin endpoint requires the admin token: send `Authorization: Bearer <token>` (/metrics and /healthz do not).",
        )
    }

    /// 404: the model is served by no backend.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("The model `{model}` does not exist or is not served here; GET /v1/models lists them."),
        )
        .with_param("model")
    }

    /// 404: an admin resource that is not (or no longer) there.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 for paths the API does not have.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_url",
            format!("No such endpoint: {path}"),
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed on this endpoint",
        )
    }

    /// 413: the body is over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("The request body is over this gateway's limit of {limit} bytes."),
        )
    }

    /// 429: the gateway sheds load; the client should come back later.
    pub fn overloaded(retry_after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "gateway_overloaded",
            "The gateway is at its limit of requests in flight; retry after the time in Retry-After.",
        )
        .with_retry_after(retry_after)
    }

    /// 502: the backend answered, but with an error or something that is not a valid answer.
    pub fn backend_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "backend_error", message)
    }

    /// 502: the stream from the backend broke after it had started.
    pub fn backend_stream_broken(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "backend_stream_interrupted", message)
    }

    /// 503: every backend that may serve the request is down or ejected.
    pub fn no_backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable", message)
            .with_retry_after(Duration::from_secs(1))
    }

    /// 503: every backend that may serve the request is full.
    pub fn backends_full(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "backend_overloaded", message)
            .with_retry_after(Duration::from_secs(1))
    }

    /// 503: the request's sensitivity is above the clearance of every backend that serves its model.
    pub fn no_compliant_backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend", message)
    }

    /// 403: a policy rule refuses requests like this one; the message is the rule's reason.
    pub fn policy_rejected(rule: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "policy_rejected",
            format!("Refused by policy rule `{rule}`: {reason}"),
        )
    }

    /// 429: the tenant's cloud budget for the period is spent, and its rule rejects rather than serve the
    /// request locally. Waiting helps only when the period resets (`Retry-After`, when known).
    pub fn budget_exceeded(rule: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "budget_exceeded",
            format!("Refused by policy rule `{rule}`: {reason}"),
        )
    }

    /// 429: a tenant's requests or tokens per minute are used up until the window resets.
    pub fn rate_limited(limit: &str, used: &str, retry_after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {limit} per minute: {used}. Retry after the time in Retry-After."
            ),
        )
        .with_retry_after(retry_after)
    }

    /// 503: the shared limits store cannot be reached, and the configuration refuses cloud-bound requests
    /// that need a budget until it can (`limits.fail: closed`).
    pub fn limits_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "limits_unavailable",
            "The tenant's budget cannot be checked now (the limits store is unreachable), so the request is not sent to a cloud; retry shortly.",
        )
        .with_retry_after(Duration::from_secs(1))
    }

    /// 504: the backend did not answer within the deadline.
    pub fn backend_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "backend_timeout", message)
    }

    /// 500: a fault of the gateway itself (never bad input).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The OpenAI error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "invalid_request_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The Anthropic error `type` for this status (the Messages API's errors).
    pub fn anthropic_kind(&self) -> &'static str {
        anthropic_kind(self.status.as_u16())
    }

    /// The JSON body, `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.upstream_code.as_deref().unwrap_or(self.code),
            }
        })
    }
}

/// The Anthropic error `type` of an HTTP status: what the Messages API calls its errors.
pub fn anthropic_kind(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An OpenAI-shaped error body (`{"error": {"message", "type", "param", "code"}}`) in the Messages API's
/// shape: `{"type": "error", "error": {"type", "message"}}`, keeping this gateway's `code` and `param`.
pub fn anthropic_body(status: u16, openai: &serde_json::Value) -> serde_json::Value {
    let inner = openai.get("error");
    let field = |k: &str| inner.and_then(|e| e.get(k)).cloned().unwrap_or_default();
    serde_json::json!({
        "type": "error",
        "error": {
            "type": anthropic_kind(status),
            "message": field("message"),
            "code": field("code"),
            "param": field("param"),
        }
    })
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The request's span, when it is traced, says which error it got.
        tracing::Span::current().record("error.type", self.code);
        let body = self.body().to_string();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        // A spent budget does not come back in seconds: the official SDKs read this and do not retry.
        if self.code == "budget_exceeded" || self.final_answer {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        let mut error = Self::invalid(e.code, e.message);
        error.param = e.param;
        error
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> Self {
        match &r.reason {
            RefusalReason::Rejected { rule, reason } => Self::policy_rejected(rule, reason),
            RefusalReason::ModelNotFound { model, served } => {
                let mut e = Self::model_not_found(model);
                if !served.is_empty() {
                    e.message
                        .push_str(&format!(" Models served now: {}.", served.join(", ")));
                }
                e
            }
            RefusalReason::NoCompliantBackend(message) => Self::no_compliant_backend(message.clone()),
            RefusalReason::OverBudget { rule, reason } => Self::budget_exceeded(rule, reason),
        }
    }
}

impl From<&BackendError> for ApiError {
    fn from(e: &BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => Self::no_backend(m.clone()),
            BackendError::Full(m) => Self::backends_full(m.clone()),
            BackendError::Timeout(m) => Self::backend_timeout(m.clone()),
            BackendError::Rejected { message, code } => Self::invalid(code, message.clone()),
            BackendError::Upstream {
                status,
                message,
                code,
                param,
            } => Self::upstream(*status, message.clone(), code.clone(), param.clone()),
            BackendError::Failed(m) => Self::backend_failed(m.clone()),
            BackendError::Interrupted(m) => Self::backend_stream_broken(m.clone()),
        }
    }
}

impl From<&Unsupported> for ApiError {
    fn from(u: &Unsupported) -> Self {
        // A model of the other kind (chat asked of an embedding model, or the reverse).
        if u.param == "model" {
            return Self::invalid("model_not_supported", format!("{}.", u.what)).with_param("model");
        }
        Self::invalid(
            "unsupported_parameter",
            format!(
                "{} not supported by the local model `{}`; ask for a cloud model, or leave it out.",
                u.what, u.model
            ),
        )
        .with_param(u.param)
    }
}

/// What the client gets when no allowed target served the request, and the `sluice_rejected_total`
/// reason when it counts there (a refusal of the gateway's own, as opposed to a backend's failure).
pub fn unserved(u: &Unserved) -> (ApiError, Option<&'static str>) {
    if let Some(last) = u.fatal.as_ref() {
        return (ApiError::from(&last.error), None);
    }
    if let Some(e) = u.unsupported.as_ref().filter(|_| u.failures.is_empty()) {
        return (ApiError::from(e), Some("unsupported"));
    }
    let summary = u
        .failures
        .iter()
        .map(|f| format!("{}: {}", f.backend, f.error))
        .collect::<Vec<_>>()
        .join("; ");
    match u.failures.last() {
        // Somewhere would have served it, but not at this level: say so, not merely "down".
        Some(_) if !u.excluded.is_empty() => (
            ApiError::no_compliant_backend(format!(
                "The request is {} (rule `{}`); every backend allowed to take it is down or full ({summary}), and the others may not take it ({}).",
                u.level,
                u.rule,
                u.excluded
                    .iter()
                    .map(|x| format!("{}: {}", x.backend, x.why))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            Some("no_compliant_backend"),
        ),
        Some(last) if u.failures.len() > 1 => {
            let mut error = ApiError::from(&last.error);
            error.message = format!("Every backend that may serve the request is down or full: {summary}.");
            (error, None)
        }
        Some(last) => (ApiError::from(&last.error), None),
        None => (
            ApiError::no_compliant_backend(format!(
                "The request is {}; the policy found no backend cleared for it.",
                u.level
            )),
            Some("no_compliant_backend"),
        ),
    }
}

/// Completes an explanation of a refusal with what the client gets: status, code and message.
pub fn explain_refusal(e: &mut Explanation, refusal: &Refusal) {
    let error = ApiError::from(refusal);
    e.status = Some(error.status.as_u16());
    e.code = Some(error.code);
    e.reason = error.message;
}
