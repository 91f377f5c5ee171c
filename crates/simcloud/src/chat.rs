//! `POST /v1/chat/completions`: validation, the simulated answer, and the non-streamed response. The answer
//! and the script's steps serve the other chat dialects too (Azure OpenAI, Anthropic Messages).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::SimError;
use crate::{Ctx, InFlight, Inner, json_response, stream, unix_now};

/// Largest answer the simulator writes, in tokens; a larger limit is refused as OpenAI refuses limits above
/// a model's maximum. It bounds the memory one request can take.
pub(crate) const MAX_ANSWER_TOKENS: u32 = 65_536;

const INTRO: [&str; 6] = ["This", " is", " a", " simulated", " answer", " from"];
const FILLER: [&str; 11] = [
    " It", " repeats", " these", " filler", " words", " until", " the", " answer", " reaches", " its",
    " length.",
];

/// Whose rules a request follows where the APIs differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// OpenAI (and Azure OpenAI): a token limit sets the answer's length; tool calls are `call_sim_N`.
    OpenAi,
    /// Anthropic: a token limit only cuts the answer of default length; tool calls are `toolu_sim_N`.
    Anthropic,
}

/// A validated chat request: only what the answer depends on.
pub(crate) struct ChatRequest {
    pub dialect: Dialect,
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Non-empty stop sequences.
    pub stop: Vec<String>,
    pub prompt_tokens: u32,
    /// The tool to call instead of answering text.
    pub tool: Option<ToolPlan>,
    /// The text of the last message (its string content, or its text parts joined), for echo answers.
    pub last_text: String,
}

/// Bytes per token of an echo answer.
const ECHO_TOKEN_BYTES: usize = 3;

pub(crate) struct ToolPlan {
    pub name: String,
    /// The tool's required parameter names.
    pub required: Vec<String>,
}

/// Why a text answer ends where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TextEnd {
    /// It is whole: its default length, or an echo.
    Complete,
    /// The request's token limit cut it.
    Limit,
    /// Cut before this stop sequence.
    Stop(String),
}

/// The answer, before it is rendered as a body or a stream.
pub(crate) enum Answer {
    Text {
        text: String,
        /// Byte offset where each token ends, in order; the last is `text.len()`.
        ends: Vec<usize>,
        end: TextEnd,
    },
    Tool {
        id: String,
        name: String,
        arguments: String,
    },
}

impl Answer {
    pub fn build(sim: &Inner, request: &ChatRequest, echo: bool) -> Self {
        if echo {
            return Self::echo(sim, request);
        }
        if let Some(tool) = &request.tool {
            return Self::tool_call(sim, request, tool, "sim");
        }
        let default = sim.config.answer_tokens;
        let (limit, limited) = match (request.max_tokens, request.dialect) {
            (None, _) => (default, false),
            (Some(max), Dialect::OpenAi) => (max, true),
            (Some(max), Dialect::Anthropic) => (max.min(default), max < default),
        };
        let (mut text, mut ends) = answer_text(&request.model, limit.min(MAX_ANSWER_TOKENS));
        // The first match wins; of two starting at once, the shorter (it is complete first).
        let cut = request
            .stop
            .iter()
            .filter_map(|stop| text.find(stop.as_str()).map(|at| (at, stop.len(), stop)))
            .min();
        let end = match cut {
            Some((cut, _, stop)) => {
                text.truncate(cut);
                let kept = ends.partition_point(|&end| end < cut);
                ends.truncate(kept);
                if cut > ends.last().copied().unwrap_or(0) {
                    ends.push(cut);
                }
                TextEnd::Stop(stop.clone())
            }
            None if limited => TextEnd::Limit,
            None => TextEnd::Complete,
        };
        Self::Text { text, ends, end }
    }

    /// A call of `tool` with `value` for each of its required parameters.
    fn tool_call(sim: &Inner, request: &ChatRequest, tool: &ToolPlan, value: &str) -> Self {
        let n = sim.tool_calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut arguments = String::from("{");
        for (i, name) in tool.required.iter().enumerate() {
            if i > 0 {
                arguments.push(',');
            }
            push_json_str(&mut arguments, name);
            arguments.push(':');
            push_json_str(&mut arguments, value);
        }
        arguments.push('}');
        let prefix = match request.dialect {
            Dialect::OpenAi => "call_sim_",
            Dialect::Anthropic => "toolu_sim_",
        };
        Self::Tool {
            id: format!("{prefix}{n}"),
            name: tool.name.clone(),
            arguments,
        }
    }

    /// The last message given back: as text in tokens of `ECHO_TOKEN_BYTES`, or as the value of every
    /// required parameter of the tool the request calls.
    fn echo(sim: &Inner, request: &ChatRequest) -> Self {
        let text = &request.last_text;
        if let Some(tool) = &request.tool {
            return Self::tool_call(sim, request, tool, text);
        }
        let mut ends = Vec::with_capacity(text.len() / ECHO_TOKEN_BYTES + 1);
        let mut at = 0;
        while at < text.len() {
            at = (at + ECHO_TOKEN_BYTES).min(text.len());
            while !text.is_char_boundary(at) {
                at += 1;
            }
            ends.push(at);
        }
        Self::Text {
            text: text.clone(),
            ends,
            end: TextEnd::Complete,
        }
    }

    pub fn completion_tokens(&self) -> u32 {
        let tokens = match self {
            Self::Text { ends, .. } => ends.len(),
            Self::Tool { name, arguments, .. } => (name.chars().count() + arguments.chars().count())
                .div_ceil(4)
                .max(1),
        };
        u32::try_from(tokens).unwrap_or(u32::MAX)
    }

    /// OpenAI's `finish_reason`.
    pub fn finish_reason(&self) -> &'static str {
        match self {
            Self::Text {
                end: TextEnd::Limit, ..
            } => "length",
            Self::Text { .. } => "stop",
            Self::Tool { .. } => "tool_calls",
        }
    }
}

/// The first `tokens` tokens of the simulated answer for `model`, and where each ends.
pub(crate) fn answer_text(model: &str, tokens: u32) -> (String, Vec<usize>) {
    let tokens = tokens as usize;
    let mut text = String::with_capacity(tokens * 8 + model.len());
    let mut ends = Vec::with_capacity(tokens);
    for i in 0..tokens {
        match i {
            i if i < INTRO.len() => text.push_str(INTRO[i]),
            i if i == INTRO.len() => {
                text.push(' ');
                text.push_str(model);
                text.push('.');
            }
            i => text.push_str(FILLER[(i - INTRO.len() - 1) % FILLER.len()]),
        }
        ends.push(text.len());
    }
    (text, ends)
}

pub(crate) async fn handle(
    State(ctx): State<Ctx>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let guard = InFlight::new(&ctx.sim.inner);
    let response = match answer(&ctx, &uri, &headers, body, guard).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    tracing::debug!(status = response.status().as_u16(), "chat completion");
    response
}

async fn answer(
    ctx: &Ctx,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    guard: InFlight,
) -> Result<Response, SimError> {
    let sim = &ctx.sim.inner;
    let value = sim.read_body(uri, headers, body)?;
    sim.authorize(headers)?;
    let request = parse(&value?, sim)?;
    respond(ctx, request, guard).await
}

/// What the script (or the error rate) leaves for an answer that goes ahead.
pub(crate) struct Go {
    /// Events to send before a stream stalls (a body that is not streamed hangs instead).
    pub stall: Option<usize>,
    pub echo: bool,
}

/// Takes the next script step and plays its delay, hang or error; without a step, rolls the error rate.
pub(crate) async fn take_step(ctx: &Ctx) -> Result<Go, SimError> {
    let sim = &ctx.sim.inner;
    match sim.pop_step() {
        Some(step) => {
            if let Some(ms) = step.delay_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if step.hang {
                return Err(hang(ctx).await);
            }
            if let Some(status) = step.status {
                return Err(SimError::Scripted {
                    status,
                    retry_after: step.retry_after_seconds,
                    message: step.message.unwrap_or_else(|| "scripted error".to_owned()),
                });
            }
            Ok(Go {
                stall: step.stall_after_chunks.map(|n| n as usize),
                echo: step.echo,
            })
        }
        None if sim.roll_error() => Err(SimError::Injected),
        None => Ok(Go {
            stall: None,
            echo: sim.config.echo,
        }),
    }
}

/// Answers a validated request in OpenAI's format, as the script says.
pub(crate) async fn respond(ctx: &Ctx, request: ChatRequest, guard: InFlight) -> Result<Response, SimError> {
    let sim = &ctx.sim.inner;
    let Go { stall, echo } = take_step(ctx).await?;
    let start = Instant::now();
    let answer = Answer::build(sim, &request, echo);
    let id = format!(
        "chatcmpl-sim-{}",
        sim.completions.fetch_add(1, Ordering::Relaxed) + 1
    );
    let created = unix_now();
    if request.stream {
        let plan = stream::Plan {
            id,
            created,
            model: request.model,
            include_usage: request.include_usage,
            prompt_tokens: request.prompt_tokens,
            answer,
            stall,
            first_at: (!sim.config.ttft.is_zero()).then(|| later(start, sim.config.ttft)),
            interval: sim.interval,
        };
        return Ok(stream::response(plan, ctx.closing.clone(), guard));
    }
    if stall.is_some() {
        return Err(hang(ctx).await);
    }
    if !sim.config.ttft.is_zero() {
        tokio::time::sleep_until(later(start, sim.config.ttft)).await;
    }
    Ok(json_response(
        StatusCode::OK,
        completion_body(&id, created, &request, &answer).to_string(),
    ))
}

/// `start + delay`, saturating a year ahead where adding would overflow.
pub(crate) fn later(start: Instant, delay: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    start
        .checked_add(delay)
        .or_else(|| start.checked_add(YEAR))
        .unwrap_or(start)
}

/// Waits until the server shuts down (the client leaving drops this future instead).
pub(crate) async fn hang(ctx: &Ctx) -> SimError {
    crate::closing(ctx.closing.clone()).await;
    SimError::ShuttingDown
}

fn completion_body(id: &str, created: u64, request: &ChatRequest, answer: &Answer) -> Value {
    let message = match answer {
        Answer::Text { text, .. } => json!({ "role": "assistant", "content": text, "refusal": null }),
        Answer::Tool { id, name, arguments } => json!({
            "role": "assistant",
            "content": null,
            "refusal": null,
            "tool_calls": [{
                "id": id,
                "type": "function",
                "function": { "name": name, "arguments": arguments },
            }],
        }),
    };
    let completion_tokens = answer.completion_tokens();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "system_fingerprint": "sluice-sim",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": answer.finish_reason(),
        }],
        "usage": {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": u64::from(request.prompt_tokens) + u64::from(completion_tokens),
        },
    })
}

/// Checks the body and keeps what the answer needs. Optional fields that are `null` count as absent.
pub(crate) fn parse(body: &Value, sim: &Inner) -> Result<ChatRequest, SimError> {
    let Value::Object(body) = body else {
        return Err(SimError::InvalidRequest {
            param: None,
            code: "invalid_type",
            message: "The request body must be a JSON object.".to_owned(),
        });
    };
    let model = match field(body, "model") {
        None => return Err(SimError::missing("model")),
        Some(Value::String(model)) => model,
        Some(_) => return Err(SimError::invalid_type("model", "a string")),
    };
    let messages = match field(body, "messages") {
        None => return Err(SimError::missing("messages")),
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(SimError::invalid_type("messages", "an array")),
    };
    if messages.is_empty() {
        return Err(SimError::InvalidRequest {
            param: Some("messages".to_owned()),
            code: "empty_array",
            message: "Invalid 'messages': empty array. Expected an array with minimum length 1.".to_owned(),
        });
    }
    let mut chars = 0usize;
    let mut last_role = "";
    let mut last_text = String::new();
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(SimError::invalid_type(&format!("messages[{i}]"), "an object"));
        };
        last_role = match field(message, "role") {
            None => return Err(SimError::missing(&format!("messages[{i}].role"))),
            Some(Value::String(role)) => role,
            Some(_) => return Err(SimError::invalid_type(&format!("messages[{i}].role"), "a string")),
        };
        last_text.clear();
        match field(message, "content") {
            Some(Value::String(text)) => {
                chars += text.chars().count();
                last_text.push_str(text);
            }
            Some(Value::Array(parts)) => {
                for part in parts {
                    if let Some(Value::String(text)) = part.get("text") {
                        chars += text.chars().count();
                        last_text.push_str(text);
                    }
                }
            }
            _ => {}
        }
    }
    let prompt_tokens = u32::try_from(chars.div_ceil(4).max(1)).unwrap_or(u32::MAX);

    let stream = optional_bool(body, "stream", "stream")?.unwrap_or(false);
    let include_usage = match field(body, "stream_options") {
        None => false,
        Some(Value::Object(options)) => {
            optional_bool(options, "include_usage", "stream_options.include_usage")?.unwrap_or(false)
        }
        Some(_) => return Err(SimError::invalid_type("stream_options", "an object")),
    };
    let max_completion_tokens = optional_limit(body, "max_completion_tokens")?;
    let max_tokens = optional_limit(body, "max_tokens")?;
    let stop = match field(body, "stop") {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| SimError::invalid_type("stop", "a string or an array of strings"))?,
        Some(_) => return Err(SimError::invalid_type("stop", "a string or an array of strings")),
    };
    let tool = tool_plan(body, last_role)?;
    match sim.model(model) {
        None => return Err(SimError::ModelNotFound(model.clone())),
        Some(m) if m.dimensions.is_some() => {
            return Err(SimError::InvalidRequest {
                param: Some("model".to_owned()),
                code: "model_not_supported",
                message: format!(
                    "The model `{model}` is an embedding model and does not support chat completions."
                ),
            });
        }
        Some(_) => {}
    }
    Ok(ChatRequest {
        dialect: Dialect::OpenAi,
        model: model.clone(),
        stream,
        include_usage,
        max_tokens: max_completion_tokens.or(max_tokens),
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        prompt_tokens,
        tool,
        last_text,
    })
}

/// The tool to call, if the request offers tools, allows calling them and the user spoke last.
fn tool_plan(body: &Map<String, Value>, last_role: &str) -> Result<Option<ToolPlan>, SimError> {
    let tools = match field(body, "tools") {
        None => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(SimError::invalid_type("tools", "an array")),
    };
    let Some(first) = tools.first() else {
        return Ok(None);
    };
    let name = match first.pointer("/function/name") {
        None | Some(Value::Null) => return Err(SimError::missing("tools[0].function.name")),
        Some(Value::String(name)) => name,
        Some(_) => return Err(SimError::invalid_type("tools[0].function.name", "a string")),
    };
    let refused = field(body, "tool_choice").and_then(Value::as_str) == Some("none");
    if last_role != "user" || refused {
        return Ok(None);
    }
    let required = first
        .pointer("/function/parameters/required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(ToolPlan {
        name: name.clone(),
        required,
    }))
}

/// A field, with `null` read as absent.
pub(crate) fn field<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn optional_bool(object: &Map<String, Value>, key: &str, param: &str) -> Result<Option<bool>, SimError> {
    match field(object, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(SimError::invalid_type(param, "a boolean")),
    }
}

fn optional_limit(object: &Map<String, Value>, key: &str) -> Result<Option<u32>, SimError> {
    let Some(value) = field(object, key) else {
        return Ok(None);
    };
    let Some(n) = value.as_u64() else {
        return match value.as_i64() {
            Some(n) => Err(SimError::invalid_value(
                key,
                format!("Invalid '{key}': integer below minimum value. Expected a value >= 1, but got {n}."),
            )),
            None => Err(SimError::invalid_type(key, "an integer")),
        };
    };
    if n == 0 {
        return Err(SimError::invalid_value(
            key,
            format!("Invalid '{key}': integer below minimum value. Expected a value >= 1, but got 0."),
        ));
    }
    if n > u64::from(MAX_ANSWER_TOKENS) {
        return Err(SimError::invalid_value(
            key,
            format!(
                "{key} is too large: {n}. The simulator answers at most {MAX_ANSWER_TOKENS} completion \
                 tokens."
            ),
        ));
    }
    Ok(u32::try_from(n).ok())
}

/// Appends `s` as a JSON string literal, quotes included.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
