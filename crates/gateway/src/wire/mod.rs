//! The wire format: what the client sees of an answer, in OpenAI's shapes. [`json::collect`] reads a
//! whole answer into one `chat.completion`; [`sse::stream`] writes it as server-sent events. This layer
//! alone decides what the client sees of the backends' normalised events: the chunks a worker's text
//! becomes, whether the usage is shown (only when the client asked for it), how an error mid-answer
//! looks. It reports what passes to a [`Meter`] (accounting's ledger), and never chooses or calls a
//! backend.

pub mod embeddings;
pub mod json;
pub mod messages;
pub mod responses;
pub mod sse;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backend::{BackendError, ChatEvent, EventStream, Usage};

/// What the wire layer reports of an answer as it passes: accounting's ledger implements it, so that
/// this step never imports the one after it.
pub trait Meter: Send + 'static {
    /// One more token (or chunk) reached the client.
    fn token(&mut self);
    /// The answer ended well, having used `usage`.
    fn finished(&mut self, usage: Usage);
    /// The answer ended with the error the client got; `fault` counts against the member.
    fn failed(&mut self, status: u16, code: &'static str, fault: Option<String>);
    /// The client stopped reading; the answer ended at the deadline.
    fn client_stalled(&mut self);
    /// The member serving the answer, for logs.
    fn member(&self) -> &str;
}

/// What answers built here look like: the completion id, creation time and model.
#[derive(Debug, Clone)]
pub struct Shape {
    pub id: String,
    pub created: u64,
    pub model: String,
    /// The client asked for usage (`stream_options.include_usage`).
    pub include_usage: bool,
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
    use futures_util::StreamExt as _;
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
