//! Anthropic's answers read back: a whole message or its events as OpenAI's completion and chunks (for
//! clients of the other APIs), or, for a request passed on as it came (`api::native`), as they are, with
//! the stop reason and the usage read on the way.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backend::{BackendError, ChatEvent, EventStream, Usage};

/// The Messages API's events as they arrive (name and data), or why the stream failed.
pub(in crate::backend::cloud) type SseStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<(String, Value), String>> + Send>>;

/// The OpenAI finish reason of an Anthropic stop reason.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn usage(u: Option<&Value>) -> Usage {
    let n = |k: &str| u.and_then(|u| u.get(k)).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        prompt_tokens: n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
        completion_tokens: n("output_tokens"),
    }
}

/// A whole Anthropic message as an OpenAI chat completion, with its finish reason and usage.
pub(in crate::backend::cloud) fn completion(
    message: &Value,
    created: u64,
) -> Result<(Value, String, Usage), String> {
    let Some(stop) = message.get("stop_reason").and_then(Value::as_str) else {
        return Err("an answer without stop_reason".into());
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or_default(),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or_default(),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let finish = finish_reason(stop).to_owned();
    let u = usage(message.get("usage"));
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }});
    if !calls.is_empty() {
        msg["tool_calls"] = Value::Array(calls);
    }
    let body = json!({
        "id": message.get("id").cloned().unwrap_or_default(),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model").cloned().unwrap_or_default(),
        "choices": [{"index": 0, "message": msg, "logprobs": null, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        },
    });
    Ok((body, finish, u))
}

/// Reads the Messages API's events and writes them as OpenAI chunks: a role chunk at `message_start`,
/// text deltas, tool calls (their start, then their JSON arguments piece by piece), the finish reason at
/// `message_delta`, then a usage-only chunk.
#[derive(Default)]
pub(in crate::backend::cloud) struct ChunkWriter {
    id: Value,
    model: Value,
    created: u64,
    input: Option<Value>,
    /// Tool calls started, and the block index of each (the OpenAI index is the position).
    tools: Vec<u64>,
}

impl ChunkWriter {
    pub(in crate::backend::cloud) fn new(created: u64) -> Self {
        Self {
            created,
            ..Self::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// The chunks of one event (none for most), or the error an `error` event carries.
    pub(in crate::backend::cloud) fn event(
        &mut self,
        kind: &str,
        data: &Value,
    ) -> Result<Vec<Value>, String> {
        Ok(match kind {
            "message_start" => {
                let m = data.get("message").unwrap_or(&Value::Null);
                self.id = m.get("id").cloned().unwrap_or_default();
                self.model = m.get("model").cloned().unwrap_or_default();
                self.input = m.get("usage").cloned();
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    return Ok(Vec::new());
                }
                let index = self.tools.len();
                self.tools
                    .push(data.get("index").and_then(Value::as_u64).unwrap_or(0));
                vec![self.chunk(
                    json!({"tool_calls": [{
                        "index": index, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""},
                    }]}),
                    None,
                )]
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => vec![self.chunk(json!({"content": delta.get("text")}), None)],
                    Some("input_json_delta") => {
                        let block = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(index) = self.tools.iter().position(|b| *b == block) else {
                            return Ok(Vec::new());
                        };
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": index, "function": {"arguments": delta.get("partial_json")}}]}),
                            None,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                let stop = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                // Counts on message_delta are totals; input counts there, when given, replace message_start's.
                let mut counts = self.input.clone().unwrap_or_else(|| json!({}));
                if let (Some(Value::Object(late)), Value::Object(c)) = (data.get("usage"), &mut counts) {
                    for (k, v) in late {
                        if !v.is_null() {
                            c.insert(k.clone(), v.clone());
                        }
                    }
                }
                let u = usage(Some(&counts));
                let mut usage_chunk = self.chunk(json!({}), None);
                usage_chunk["choices"] = json!([]);
                usage_chunk["usage"] = json!({
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "total_tokens": u.prompt_tokens + u.completion_tokens,
                });
                vec![self.chunk(json!({}), Some(finish_reason(stop))), usage_chunk]
            }
            "error" => {
                let message = data
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(message.to_owned());
            }
            _ => Vec::new(),
        })
    }
}

/// The Messages API's events passed on as [`ChatEvent::Native`], then [`ChatEvent::Finished`] with the
/// stop reason (as OpenAI's finish reason, for the metrics) and the usage they carried. An `error` event,
/// a stream that fails, stalls past `idle` or the deadline, or ends without a stop reason is an error.
pub(in crate::backend::cloud) fn native_events(
    name: String,
    first: (String, Value),
    upstream: SseStream,
    idle: Duration,
    deadline: Instant,
) -> EventStream {
    struct State {
        name: String,
        pending: Option<(String, Value)>,
        upstream: SseStream,
        finish_reason: Option<String>,
        counts: Value,
        done: bool,
        idle: Duration,
        deadline: Instant,
    }
    let state = State {
        name,
        pending: Some(first),
        upstream,
        finish_reason: None,
        counts: json!({}),
        done: false,
        idle,
        deadline,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let next = match s.pending.take() {
            Some(e) => Ok(Some(Ok(e))),
            None => tokio::time::timeout_at(s.deadline.min(Instant::now() + s.idle), s.upstream.next()).await,
        };
        let name = &s.name;
        let item = match next {
            Err(_) => Err(BackendError::Timeout(format!(
                "cloud backend {name} stopped sending mid-answer"
            ))),
            Ok(None) => match s.finish_reason.take() {
                Some(finish_reason) => Ok(ChatEvent::Finished {
                    finish_reason,
                    usage: usage(Some(&s.counts)),
                }),
                None => Err(BackendError::Interrupted(format!(
                    "cloud backend {name} ended the stream without a stop reason"
                ))),
            },
            Ok(Some(Err(e))) => Err(BackendError::Interrupted(format!(
                "cloud backend {name} failed mid-answer: {e}"
            ))),
            Ok(Some(Ok((kind, data)))) => {
                let counts = match kind.as_str() {
                    "message_start" => data.pointer("/message/usage"),
                    "message_delta" => data.get("usage"),
                    _ => None,
                };
                // Counts are totals: later ones replace earlier ones.
                if let (Some(Value::Object(late)), Value::Object(c)) = (counts, &mut s.counts) {
                    for (k, v) in late {
                        if !v.is_null() {
                            c.insert(k.clone(), v.clone());
                        }
                    }
                }
                if let Some(stop) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    s.finish_reason = Some(finish_reason(stop).to_owned());
                }
                if kind == "error" {
                    let message = data
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    Err(BackendError::Interrupted(format!(
                        "cloud backend {name} failed mid-answer: {message}"
                    )))
                } else {
                    Ok(ChatEvent::Native { kind, data })
                }
            }
        };
        s.done = !matches!(item, Ok(ChatEvent::Native { .. }));
        Some((item, s))
    })
    .boxed()
}
