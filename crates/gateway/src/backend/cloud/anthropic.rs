//! Anthropic's Messages API as a cloud backend: the checked chat request (what was scanned, and redacted
//! where the policy said so) in the Messages API's wire format (`system`, content blocks, `tool_use` and
//! `tool_result`, tools with `input_schema`, `stop_sequences`, `metadata.user_id`), and its answers back
//! as OpenAI completions and chunks, so that the wire layer writes them in whatever shape the client
//! called for. A chat field with no Anthropic equivalent is refused, naming it, rather than dropped.

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{Attempt, CloudApi, CloudBackend, stream, with_in_flight};
use crate::api::ChatRequest;
use crate::backend::{BackendError, ChatEvent, Dispatched, Usage};

/// Chat fields that have no equivalent there unless at their neutral value.
fn unsupported(body: &Map<String, Value>) -> Option<&'static str> {
    let set = |k: &str| body.get(k).is_some_and(|v| !v.is_null());
    let non_zero = |k: &str| body.get(k).and_then(Value::as_f64).is_some_and(|v| v != 0.0);
    if body
        .get("response_format")
        .is_some_and(|f| !f.is_null() && f.get("type").and_then(Value::as_str) != Some("text"))
    {
        return Some("response_format");
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Some("n");
    }
    if body.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Some("logprobs");
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if non_zero(key) {
            return Some(if key == "frequency_penalty" {
                "frequency_penalty"
            } else {
                "presence_penalty"
            });
        }
    }
    [
        "logit_bias",
        "audio",
        "prediction",
        "web_search_options",
        "seed",
        "top_logprobs",
        "modalities",
        "reasoning_effort",
        "functions",
        "function_call",
    ]
    .into_iter()
    .find(|k| set(k))
}

/// Text and image parts as content blocks.
fn blocks(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()})),
                Some("image_url") => {
                    let url = p
                        .pointer("/image_url/url")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    Ok(match url.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
                        Some((media, data)) => {
                            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
                        }
                        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
                    })
                }
                other => Err(format!(
                    "{} content parts",
                    other.unwrap_or("untyped")
                )),
            })
            .collect(),
        _ => Err("this content".into()),
    }
}

/// Appends blocks to the conversation, joining them to the last message when it has the same role.
fn push(messages: &mut Vec<Value>, role: &str, new: Vec<Value>) {
    if new.is_empty() {
        return;
    }
    if let Some(last) = messages.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.extend(new);
        return;
    }
    messages.push(json!({"role": role, "content": new}));
}

/// The request in the Messages API's wire format; `Err` names what it cannot carry.
pub(super) fn request_body(request: &ChatRequest, default_max_tokens: u32) -> Result<Value, String> {
    let b = &request.body;
    if let Some(key) = unsupported(b) {
        return Err(format!("`{key}` has no equivalent in Anthropic's API"));
    }
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for m in b.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                for block in blocks(content)? {
                    if let Some(t) = block.get("text").and_then(Value::as_str) {
                        system.push(t.to_owned());
                    }
                }
            }
            Some("user") => push(&mut messages, "user", blocks(content)?),
            Some("assistant") => {
                let mut new = blocks(content)?;
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input: Value = serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
                        .map_err(|_| "tool call arguments that are not JSON".to_owned())?;
                    new.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or_default(),
                        "name": call.pointer("/function/name").cloned().unwrap_or_default(),
                        "input": input,
                    }));
                }
                push(&mut messages, "assistant", new);
            }
            Some("tool") => {
                let text = blocks(content)?
                    .iter()
                    .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join("\n");
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": m.get("tool_call_id").cloned().unwrap_or_default(),
                    "content": text,
                });
                push(&mut messages, "user", vec![result]);
            }
            other => return Err(format!("{} messages", other.unwrap_or("untyped"))),
        }
    }
    let max_tokens = request.max_tokens.unwrap_or(default_max_tokens);
    let mut out = json!({"model": request.model, "max_tokens": max_tokens, "messages": messages});
    if !system.is_empty() {
        out["system"] = Value::String(system.join("\n"));
    }
    if request.stream {
        out["stream"] = Value::Bool(true);
    }
    if !request.stop.is_empty() {
        out["stop_sequences"] = json!(request.stop);
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = b.get(key).filter(|v| !v.is_null()) {
            out[key] = v.clone();
        }
    }
    if let Some(user) = &request.user {
        out["metadata"] = json!({"user_id": user});
    }
    if let Some(tools) = b.get("tools").and_then(Value::as_array) {
        let mut converted = Vec::new();
        for t in tools {
            let Some(f) = t.get("function").filter(|_| t["type"] == "function") else {
                return Err("tools other than functions".into());
            };
            let mut tool = json!({
                "name": f.get("name").cloned().unwrap_or_default(),
                "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                tool["description"] = d.clone();
            }
            converted.push(tool);
        }
        if !converted.is_empty() {
            out["tools"] = Value::Array(converted);
        }
    }
    let mut choice = match b.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({"type": "auto"})),
        Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
        Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
        Some(c) => match c.pointer("/function/name") {
            Some(name) => Some(json!({"type": "tool", "name": name})),
            None => return Err("this tool_choice".into()),
        },
    };
    if b.get("parallel_tool_calls") == Some(&Value::Bool(false)) && out.get("tools").is_some() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(c) = choice {
        out["tool_choice"] = c;
    }
    Ok(out)
}

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
pub(super) fn completion(message: &Value, created: u64) -> Result<(Value, String, Usage), String> {
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
pub(super) struct ChunkWriter {
    id: Value,
    model: Value,
    created: u64,
    input: Option<Value>,
    /// Tool calls started, and the block index of each (the OpenAI index is the position).
    tools: Vec<u64>,
}

impl ChunkWriter {
    pub(super) fn new(created: u64) -> Self {
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
    pub(super) fn event(&mut self, kind: &str, data: &Value) -> Result<Vec<Value>, String> {
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CloudBackend {
    /// One call of the Messages API, until the answer (streamed: its first event) arrives by `until`.
    pub(super) async fn anthropic_attempt(
        &self,
        request: &ChatRequest,
        (until, deadline): (Instant, Instant),
        span: &tracing::Span,
    ) -> Result<Dispatched, Attempt> {
        let name = &self.config.name;
        let CloudApi::Anthropic {
            version,
            default_max_tokens,
        } = &self.config.api
        else {
            return Err(Attempt::Fatal(BackendError::Failed(format!(
                "cloud backend {name} does not speak Anthropic's API"
            ))));
        };
        let body = request_body(request, *default_max_tokens).map_err(|what| {
            Attempt::Fatal(BackendError::Rejected {
                message: format!(
                    "The cloud backend {name} (Anthropic's API) cannot take {what}; leave it out or ask for another model."
                ),
                code: "unsupported_parameter",
            })
        })?;
        let url = format!("{}/messages", self.config.base_url.trim_end_matches('/'));
        let mut call = self
            .http
            .post(url)
            .header("anthropic-version", version.as_str())
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(key) = &self.config.api_key {
            call = call.header("x-api-key", key.as_str());
        }
        let mut call = call
            .build()
            .map_err(|e| Attempt::Fatal(BackendError::Failed(e.to_string())))?;
        if !span.is_disabled() {
            sluice_telemetry::propagation::inject(span, call.headers_mut());
        }
        let limit = until.saturating_duration_since(Instant::now());
        let timed_out = || {
            Attempt::Retry(BackendError::Timeout(format!(
                "cloud backend {name} did not answer within {:.1} s",
                limit.as_secs_f64()
            )))
        };
        let response = match tokio::time::timeout_at(until, self.http.execute(call)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Attempt::Retry(BackendError::Timeout(format!(
                    "cloud backend {name}: {e}"
                ))));
            }
            Ok(Err(e)) => {
                return Err(Attempt::Retry(BackendError::Unavailable(format!(
                    "cloud backend {name} is unreachable: {}",
                    super::with_causes(e.to_string(), &e)
                ))));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if status >= 400 {
            let text = match tokio::time::timeout_at(until, response.text()).await {
                Ok(Ok(t)) => t,
                _ => String::new(),
            };
            let error: Value = serde_json::from_str(&text).unwrap_or_default();
            let message = error
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let code = error
                .pointer("/error/type")
                .and_then(Value::as_str)
                .map(str::to_owned);
            // Anthropic's "overloaded" is 529: waiting helps, as for a 5xx.
            return Err(self.status_error(status, message, code, None));
        }
        let bad = |why: String| Attempt::Fatal(BackendError::Failed(format!("cloud backend {name}: {why}")));
        if !request.stream {
            let message: Value = match tokio::time::timeout_at(until, response.json()).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => return Err(bad(format!("its answer is not a message: {e}"))),
                Ok(Ok(v)) => v,
            };
            let (completion, finish_reason, usage) = completion(&message, unix_now()).map_err(bad)?;
            let events = futures_util::stream::iter([
                Ok(ChatEvent::Completion(completion)),
                Ok(ChatEvent::Finished { finish_reason, usage }),
            ]);
            return Ok(Dispatched {
                served_by: name.as_str().into(),
                events: with_in_flight(events.boxed(), &self.in_flight, span.clone()),
            });
        }
        let mut writer = ChunkWriter::new(unix_now());
        let mut upstream: stream::UpstreamStream = response
            .bytes_stream()
            .eventsource()
            .flat_map(move |e| {
                let chunks = match e {
                    Err(e) => vec![Err(e.to_string())],
                    Ok(e) => match serde_json::from_str::<Value>(&e.data) {
                        Err(_) if e.event == "ping" => Vec::new(),
                        Err(_) => vec![Err(format!("an event that is not JSON ({})", e.event))],
                        Ok(data) => match writer.event(&e.event, &data) {
                            Ok(chunks) => chunks.into_iter().map(Ok).collect(),
                            Err(m) => vec![Err(m)],
                        },
                    },
                };
                futures_util::stream::iter(chunks)
            })
            .boxed();
        // The first chunk (message_start's) proves the answer has started; until then a failure may be
        // retried.
        let first = match tokio::time::timeout_at(until, upstream.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => {
                return Err(Attempt::Retry(BackendError::Failed(format!(
                    "cloud backend {name} ended the stream before any event"
                ))));
            }
            Ok(Some(Err(e))) => {
                return Err(Attempt::Retry(BackendError::Failed(format!(
                    "cloud backend {name}: {e}"
                ))));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let events = stream::chunk_events(name.clone(), first, upstream, self.config.timeout, deadline);
        Ok(Dispatched {
            served_by: name.as_str().into(),
            events: with_in_flight(events, &self.in_flight, span.clone()),
        })
    }
}

#[cfg(test)]
mod tests;
