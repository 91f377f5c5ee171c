//! `POST /v1/responses`: the Responses API, stateless. The body is translated into a chat completions
//! request (`api::responses`; what cannot be served statelessly is refused with the field named), which
//! then takes every step chat takes; the answer comes back in the Responses API's shapes.

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

pub(super) async fn create(
    State(app): State<Arc<App>>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    permit: Option<axum::Extension<PermitSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A body that could not be read is intake's to answer, as for chat.
    let (body, options) = match body {
        Ok(bytes) => match crate::api::responses::to_chat_body(&bytes) {
            Ok((chat, options)) => (Ok(Bytes::from(chat)), options),
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
        Surface::Responses(options),
    )
    .await
}
