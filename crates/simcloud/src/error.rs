//! Every error the simulator answers with, mapped to HTTP in one place: an OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}`, Azure OpenAI's own `{"error": {"code", "message"}}` for
//! the errors only Azure answers, or, on `POST /v1/messages`, Anthropic's
//! `{"type": "error", "error": {"type", "message"}}` ([`SimError::into_anthropic`]).

use axum::extract::rejection::BytesRejection;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::json_response;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SimError {
    /// The body could not be read (too large, or the client broke off).
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("We could not parse the JSON body of your request ({0}). The OpenAI API expects a JSON payload.")]
    InvalidJson(String),
    /// A request that breaks the API's rules; `code` is a stable snake_case name.
    #[error("{message}")]
    InvalidRequest {
        param: Option<String>,
        code: &'static str,
        message: String,
    },
    #[error("{}", if *provided { "Incorrect API key provided." } else {
        "You didn't provide an API key. Send it in the Authorization header as Bearer <key>."
    })]
    InvalidApiKey { provided: bool },
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    #[error("{message}")]
    Scripted {
        status: u16,
        retry_after: Option<u64>,
        message: String,
    },
    /// Drawn by the configured error rate.
    #[error("The simulator failed this request on purpose (error rate).")]
    Injected,
    #[error("The simulator is shutting down.")]
    ShuttingDown,
    #[error("Unknown request URL: {method} {path}.")]
    UnknownUrl { method: String, path: String },
    #[error("Internal simulator error: {0}")]
    Internal(String),
    /// Anthropic: `x-api-key` missing or wrong.
    #[error("{}", if *provided { "invalid x-api-key" } else { "x-api-key header is required" })]
    AnthropicKey { provided: bool },
    /// Anthropic: no `anthropic-version` header.
    #[error("anthropic-version: header is required")]
    MissingVersion,
    /// Azure: `api-key` missing or wrong.
    #[error(
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key \
         for an active subscription and use a correct regional API endpoint for your resource."
    )]
    AzureKey,
    /// Azure: a request without `api-version`.
    #[error("Resource not found")]
    AzureNotFound,
    #[error(
        "The API deployment for this resource does not exist. If you created the deployment within the last \
         5 minutes, please wait a moment and try again."
    )]
    DeploymentNotFound,
    /// Azure: a deployment of the wrong kind for the route (an embedding model asked for a chat completion).
    #[error(
        "The {operation} operation does not work with the specified model, {model}. Please choose different \
         model and try again. You can learn more about which models can be used with each operation here: \
         https://go.microsoft.com/fwlink/?linkid=2197993."
    )]
    OperationNotSupported { operation: &'static str, model: String },
}

impl SimError {
    pub fn missing(param: &str) -> Self {
        Self::InvalidRequest {
            param: Some(param.to_owned()),
            code: "missing_required_parameter",
            message: format!("Missing required parameter: '{param}'."),
        }
    }

    pub fn invalid_type(param: &str, expected: &str) -> Self {
        Self::InvalidRequest {
            param: Some(param.to_owned()),
            code: "invalid_type",
            message: format!("Invalid type for '{param}': expected {expected}."),
        }
    }

    pub fn invalid_value(param: &str, message: String) -> Self {
        Self::InvalidRequest {
            param: Some(param.to_owned()),
            code: "invalid_value",
            message,
        }
    }

    /// Azure's `code` for the errors only Azure answers, which have its own body shape.
    fn azure_code(&self) -> Option<&'static str> {
        match self {
            Self::AzureKey => Some("401"),
            Self::AzureNotFound => Some("404"),
            Self::DeploymentNotFound => Some("DeploymentNotFound"),
            Self::OperationNotSupported { .. } => Some("OperationNotSupported"),
            _ => None,
        }
    }

    /// HTTP status, error type, offending parameter and code.
    fn parts(&self) -> (StatusCode, &'static str, Option<&str>, Option<&str>) {
        const INVALID: &str = "invalid_request_error";
        match self {
            Self::Body { status, .. } => {
                let code = if *status == StatusCode::PAYLOAD_TOO_LARGE {
                    "request_too_large"
                } else {
                    "invalid_body"
                };
                (*status, INVALID, None, Some(code))
            }
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, INVALID, None, Some("invalid_json")),
            Self::InvalidRequest { param, code, .. } => {
                (StatusCode::BAD_REQUEST, INVALID, param.as_deref(), Some(code))
            }
            Self::InvalidApiKey { .. } => (StatusCode::UNAUTHORIZED, INVALID, None, Some("invalid_api_key")),
            Self::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID,
                Some("model"),
                Some("model_not_found"),
            ),
            Self::Scripted { status, .. } => {
                // Steps are checked when posted; one pushed through the Rust API may still be out of range.
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if status == StatusCode::TOO_MANY_REQUESTS {
                    "rate_limit_error"
                } else if status.is_server_error() {
                    "server_error"
                } else {
                    INVALID
                };
                (status, kind, None, Some("sim_scripted"))
            }
            Self::Injected => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("sim_error"),
            ),
            Self::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                None,
                Some("sim_shutting_down"),
            ),
            Self::UnknownUrl { .. } => (StatusCode::NOT_FOUND, INVALID, None, Some("unknown_url")),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                Some("sim_internal"),
            ),
            Self::AnthropicKey { .. } => (StatusCode::UNAUTHORIZED, INVALID, None, Some("invalid_api_key")),
            Self::MissingVersion => (StatusCode::BAD_REQUEST, INVALID, None, Some("missing_version")),
            Self::AzureKey => (StatusCode::UNAUTHORIZED, INVALID, None, Some("401")),
            Self::AzureNotFound | Self::DeploymentNotFound => (StatusCode::NOT_FOUND, INVALID, None, None),
            Self::OperationNotSupported { .. } => (StatusCode::BAD_REQUEST, INVALID, None, None),
        }
    }

    /// The error as Anthropic's Messages API answers it: `{"type": "error", "error": {"type", "message"}}`,
    /// the type following the status (400 `invalid_request_error`, 401 `authentication_error`, 403
    /// `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429 `rate_limit_error`, 529
    /// `overloaded_error`, any other 5xx `api_error`).
    pub fn into_anthropic(self) -> Response {
        let (status, ..) = self.parts();
        let kind = match status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let message = match &self {
            Self::ModelNotFound(model) => format!("model: {model}"),
            Self::InvalidJson(e) => format!("The request body is not valid JSON: {e}"),
            other => other.to_string(),
        };
        let body = serde_json::json!({
            "type": "error",
            "error": { "type": kind, "message": message },
        });
        self.with_retry_after(json_response(status, body.to_string()))
    }

    /// Adds `Retry-After` to the response of a scripted error that asked for it.
    fn with_retry_after(self, mut response: Response) -> Response {
        if let Self::Scripted {
            retry_after: Some(seconds),
            ..
        } = self
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<BytesRejection> for SimError {
    fn from(rejection: BytesRejection) -> Self {
        Self::Body {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        let (status, kind, param, code) = self.parts();
        let body = match self.azure_code() {
            Some(code) => serde_json::json!({
                "error": { "code": code, "message": self.to_string() }
            }),
            None => serde_json::json!({
                "error": {
                    "message": self.to_string(),
                    "type": kind,
                    "param": param,
                    "code": code,
                }
            }),
        };
        self.with_retry_after(json_response(status, body.to_string()))
    }
}
