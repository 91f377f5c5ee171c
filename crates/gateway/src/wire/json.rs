//! A whole answer as one `chat.completion` JSON body.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Meter, Shape, next_event, usage_json};
use crate::backend::{ChatEvent, EventStream};
use crate::error::ApiError;

/// Reads a whole answer and returns it as one `chat.completion`: an OpenAI-compatible backend's own, or
/// one built from a worker's text.
pub async fn collect(
    mut events: EventStream,
    shape: Shape,
    ledger: &mut dyn Meter,
    deadline: Instant,
) -> Response {
    let mut text = String::new();
    let mut completion: Option<Value> = None;
    loop {
        match next_event(&mut events, deadline).await {
            Ok(ChatEvent::Text(t)) => {
                ledger.token();
                text.push_str(&t);
            }
            Ok(ChatEvent::Chunk(_)) => ledger.token(),
            // Only a request in another API's format gets answers in it, and not through this shape.
            Ok(ChatEvent::Native { .. }) => {}
            Ok(ChatEvent::Completion(v)) => {
                ledger.token();
                completion = Some(v);
            }
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                ledger.finished(usage);
                let body = completion.unwrap_or_else(|| {
                    json!({
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
                        "usage": usage_json(usage),
                    })
                });
                return axum::Json(body).into_response();
            }
            Err(e) => {
                let error = ApiError::from(&e);
                ledger.failed(error.status.as_u16(), error.code, e.member_fault());
                return error.into_response();
            }
        }
    }
}
