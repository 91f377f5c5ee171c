//! Every error the simulator answers with, mapped to HTTP in one place: an OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}`.

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
        }
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
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": param,
                "code": code,
            }
        });
        let mut response = json_response(status, body.to_string());
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
