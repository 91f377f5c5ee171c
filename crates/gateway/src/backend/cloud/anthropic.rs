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

mod events;
use crate::api::ChatRequest;
use crate::backend::{BackendError, ChatEvent, Dispatched};
pub(super) use events::{ChunkWriter, completion, native_events};

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
        // A request that came in this API's format goes as it came, and its answer comes back as it is.
        let native = request.native_body();
        let body = match &native {
            Some(b) => Value::Object(b.clone()),
            None => request_body(request, *default_max_tokens).map_err(|what| {
                Attempt::Fatal(BackendError::Rejected {
                    message: format!(
                        "The cloud backend {name} (Anthropic's API) cannot take {what}; leave it out or ask for another model."
                    ),
                    code: "unsupported_parameter",
                })
            })?,
        };
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
            Ok(Err(e)) => return Err(super::transport_failure(name, &e)),
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
            let answer = match native {
                Some(_) => ChatEvent::Native {
                    kind: "message".into(),
                    data: message,
                },
                None => ChatEvent::Completion(completion),
            };
            let events =
                futures_util::stream::iter([Ok(answer), Ok(ChatEvent::Finished { finish_reason, usage })]);
            return Ok(Dispatched {
                served_by: name.as_str().into(),
                events: with_in_flight(events.boxed(), &self.in_flight, span.clone()),
            });
        }
        let mut sse: events::SseStream = response
            .bytes_stream()
            .eventsource()
            .filter_map(|e| {
                futures_util::future::ready(match e {
                    Err(e) => Some(Err(e.to_string())),
                    Ok(e) if e.event == "ping" => None,
                    Ok(e) => Some(
                        serde_json::from_str::<Value>(&e.data)
                            .map(|data| (e.event.clone(), data))
                            .map_err(|_| format!("an event that is not JSON ({})", e.event)),
                    ),
                })
            })
            .boxed();
        // The first event (message_start) proves the answer has started; until then a failure may be
        // retried.
        let first = match tokio::time::timeout_at(until, sse.next()).await {
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
            Ok(Some(Ok(event))) => event,
        };
        if first.0 == "error" {
            let message = first
                .1
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(Attempt::Retry(BackendError::Failed(format!(
                "cloud backend {name} failed: {message}"
            ))));
        }
        let events = if native.is_some() {
            native_events(name.clone(), first, sse, self.config.timeout, deadline)
        } else {
            let mut writer = ChunkWriter::new(unix_now());
            let chunks = |writer: &mut ChunkWriter, e: Result<(String, Value), String>| match e {
                Err(e) => vec![Err(e)],
                Ok((kind, data)) => match writer.event(&kind, &data) {
                    Ok(chunks) => chunks.into_iter().map(Ok).collect(),
                    Err(m) => vec![Err(m)],
                },
            };
            let mut opening = chunks(&mut writer, Ok(first)).into_iter();
            let Some(Ok(first)) = opening.next() else {
                return Err(Attempt::Fatal(BackendError::Failed(format!(
                    "cloud backend {name} began its answer with something other than message_start"
                ))));
            };
            let rest: Vec<_> = opening.collect();
            let upstream: stream::UpstreamStream = futures_util::stream::iter(rest)
                .chain(sse.flat_map(move |e| futures_util::stream::iter(chunks(&mut writer, e))))
                .boxed();
            stream::chunk_events(name.clone(), first, upstream, self.config.timeout, deadline)
        };
        Ok(Dispatched {
            served_by: name.as_str().into(),
            events: with_in_flight(events, &self.in_flight, span.clone()),
        })
    }
}

#[cfg(test)]
mod tests;
