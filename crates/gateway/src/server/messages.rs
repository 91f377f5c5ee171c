//! `POST /v1/messages`: the Anthropic Messages API. The body is translated into a chat completions
//! request (`api::messages`; what has no equivalent is refused with the field named), which then takes
//! every step chat takes; the answer comes back in the Messages API's shapes, and its errors in
//! Anthropic's error shape (`router::anthropic_errors`). The `anthropic-version` header is required, as
//! Anthropic's API requires it; every version's request shape is read the same way.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;

use super::app::App;
use super::chat::{Surface, respond, serve};
use super::ids::RequestId;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::headers::RoutingHeaders;
use crate::shed::PermitSlot;

pub(super) const ANTHROPIC_VERSION: &str = "anthropic-version";

pub(super) async fn create(
    State(app): State<Arc<App>>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    permit: Option<axum::Extension<PermitSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if headers.get(ANTHROPIC_VERSION).is_none_or(|v| v.is_empty()) {
        app.accounts.rejected("invalid_request");
        let error = ApiError::invalid(
            "missing_required_parameter",
            "The anthropic-version header is required (e.g. `anthropic-version: 2023-06-01`; the Anthropic SDKs send it).",
        )
        .with_param(ANTHROPIC_VERSION);
        return respond(&RoutingHeaders::default(), error);
    }
    // A body that could not be read is intake's to answer, as for chat.
    let (body, native) = match body {
        Ok(bytes) => match crate::api::messages::to_chat_body(&bytes) {
            Ok((chat, native)) => (Ok(Bytes::from(chat)), native),
            Err(invalid) => {
                app.accounts.rejected("invalid_request");
                return respond(&RoutingHeaders::default(), ApiError::from(invalid));
            }
        },
        Err(rejection) => (Err(rejection), Default::default()),
    };
    serve(
        app,
        (tenant, request_id),
        permit,
        headers,
        body,
        Surface::Messages(native),
    )
    .await
}
