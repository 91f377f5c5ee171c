//! Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions` and
//! `POST /openai/deployments/{deployment}/embeddings`, as Azure answers them.
//!
//! - The `api-version` query parameter is required: without it (or empty), 404 `{"error": {"code": "404",
//!   "message": "Resource not found"}}`, whatever the rest of the request.
//! - With [`SimConfig::api_key`](crate::SimConfig::api_key) set, the key goes in an `api-key` header (a
//!   `Bearer` token is not accepted); else 401 `{"error": {"code": "401", "message": "Access denied ..."}}`.
//! - The deployment name is a served model's id; any other name is 404 `DeploymentNotFound`, and an embedding
//!   model asked for chat completions (or a chat model for embeddings) is 400 `OperationNotSupported`.
//! - The body's `model` is optional and ignored: the deployment's model replaces it. From there the request
//!   is served exactly as `/v1/chat/completions` or `/v1/embeddings` serve it (validation, script, echo,
//!   streaming, usage), and the answer's `model` is the deployment's.
//!
//! Requests are recorded (with their path and query) before any of these checks, like every other request.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::SimError;
use crate::{Ctx, InFlight, Inner, chat};

/// Which of Azure's operations a route is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    ChatCompletion,
    Embeddings,
}

pub(crate) async fn chat(
    State(ctx): State<Ctx>,
    Path(deployment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let guard = InFlight::new(&ctx.sim.inner);
    let sim = &ctx.sim.inner;
    let answer = async {
        let value = admit(sim, &deployment, Operation::ChatCompletion, &uri, &headers, body)?;
        let request = chat::parse(&value, sim)?;
        drop(value);
        chat::respond(&ctx, request, guard).await
    };
    let response = answer.await.unwrap_or_else(IntoResponse::into_response);
    tracing::debug!(status = response.status().as_u16(), "azure chat completion");
    response
}

pub(crate) async fn embeddings(
    State(ctx): State<Ctx>,
    Path(deployment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _guard = InFlight::new(&ctx.sim.inner);
    let sim = &ctx.sim.inner;
    let answer = async {
        let value = admit(sim, &deployment, Operation::Embeddings, &uri, &headers, body)?;
        crate::embeddings::respond(&ctx, value).await
    };
    let response = answer.await.unwrap_or_else(IntoResponse::into_response);
    tracing::debug!(status = response.status().as_u16(), "azure embeddings");
    response
}

/// Records the request, runs Azure's own checks in Azure's order (`api-version`, key, deployment), and
/// returns the body with the deployment's model in `model`.
fn admit(
    sim: &Inner,
    deployment: &str,
    operation: Operation,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, SimError> {
    let value = sim.read_body(uri, headers, body)?;
    if !has_api_version(uri) {
        return Err(SimError::AzureNotFound);
    }
    sim.check_key_header(headers, "api-key")
        .map_err(|_| SimError::AzureKey)?;
    let model = sim.model(deployment).ok_or(SimError::DeploymentNotFound)?;
    let embedding = model.dimensions.is_some();
    if embedding != (operation == Operation::Embeddings) {
        return Err(SimError::OperationNotSupported {
            operation: match operation {
                Operation::ChatCompletion => "chatCompletion",
                Operation::Embeddings => "embeddings",
            },
            model: model.id.clone(),
        });
    }
    let mut value = value?;
    // A body that is not an object keeps its shape, for the OpenAI validation to refuse.
    if let Value::Object(body) = &mut value {
        body.insert("model".to_owned(), Value::String(model.id.clone()));
    }
    Ok(value)
}

/// Whether the query holds a non-empty `api-version`.
fn has_api_version(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .any(|(key, value)| key == "api-version" && !value.is_empty())
    })
}
