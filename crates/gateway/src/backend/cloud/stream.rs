//! A streamed answer's chunks as the backend's events, whatever wire format they came in (the Anthropic
//! client converts its events into OpenAI chunks first).

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::time::Instant;

use crate::backend::{BackendError, ChatEvent, EventStream, Usage};

/// OpenAI `chat.completion.chunk`s as they arrive, or why the stream failed.
pub(super) type UpstreamStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Value, String>> + Send>>;

/// The upstream chunks as [`ChatEvent::Chunk`]s, then [`ChatEvent::Finished`] with the finish reason and
/// the usage the provider reported (zero when it reported none). The usage asked for on the gateway's
/// behalf is taken out of the chunks: the usage-only chunk is not passed on, and the others lose their
/// `usage` field, so that the wire layer alone decides what the client sees of it.
pub(super) fn chunk_events(
    name: String,
    first: Value,
    upstream: UpstreamStream,
    idle: Duration,
    deadline: Instant,
) -> EventStream {
    struct State {
        name: String,
        pending: Option<Value>,
        upstream: UpstreamStream,
        finish_reason: Option<String>,
        usage: Option<Usage>,
        done: bool,
        idle: Duration,
        deadline: Instant,
    }
    let state = State {
        name,
        pending: Some(first),
        upstream,
        finish_reason: None,
        usage: None,
        done: false,
        idle,
        deadline,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let next = match s.pending.take() {
                Some(v) => Ok(Some(Ok(v))),
                None => {
                    tokio::time::timeout_at(s.deadline.min(Instant::now() + s.idle), s.upstream.next()).await
                }
            };
            let item = match next {
                Err(_) => {
                    s.done = true;
                    Err(BackendError::Timeout(format!(
                        "cloud backend {} stopped sending mid-answer",
                        s.name
                    )))
                }
                Ok(None) => {
                    s.done = true;
                    match s.finish_reason.take() {
                        Some(finish_reason) => Ok(ChatEvent::Finished {
                            finish_reason,
                            usage: s.usage.unwrap_or_default(),
                        }),
                        None => Err(BackendError::Interrupted(format!(
                            "cloud backend {} ended the stream without a finish reason",
                            s.name
                        ))),
                    }
                }
                Ok(Some(Err(e))) => {
                    s.done = true;
                    Err(BackendError::Interrupted(format!(
                        "cloud backend {} failed mid-answer: {e}",
                        s.name
                    )))
                }
                Ok(Some(Ok(mut chunk))) => {
                    if let Some(error) = chunk.get("error") {
                        s.done = true;
                        let message = error
                            .get("message")
                            .and_then(Value::as_str)
                            .unwrap_or("unknown error");
                        Err(BackendError::Interrupted(format!(
                            "cloud backend {} failed mid-answer: {message}",
                            s.name
                        )))
                    } else {
                        if let Some(reason) =
                            chunk.pointer("/choices/0/finish_reason").and_then(Value::as_str)
                        {
                            s.finish_reason = Some(reason.to_owned());
                        }
                        if let Some(usage) = chunk.get("usage").and_then(Usage::from_openai) {
                            s.usage = Some(usage);
                        }
                        let usage_only = chunk
                            .get("choices")
                            .and_then(Value::as_array)
                            .is_some_and(Vec::is_empty);
                        if usage_only {
                            continue;
                        }
                        if let Value::Object(o) = &mut chunk {
                            o.remove("usage");
                        }
                        Ok(ChatEvent::Chunk(chunk))
                    }
                }
            };
            return Some((item, s));
        }
    })
    .boxed()
}
