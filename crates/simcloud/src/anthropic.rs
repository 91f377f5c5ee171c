//! `POST /v1/messages`: Anthropic's Messages API, over the same models, script, recordings and token rules
//! as chat completions (the crate's doc says how the answer and its tokens follow from the request).
//!
//! Checks, in order: the body is read and, if JSON, recorded; the key in `x-api-key` (401
//! `authentication_error`; a `Bearer` token is not accepted); an `anthropic-version` header (400); the body
//! (400 `invalid_request_error` naming the field, or 404 `not_found_error` `model: X` for a model that is not
//! a served chat model); then one script step, or the error rate. Every error has Anthropic's shape
//! `{"type": "error", "error": {"type", "message"}}`.

mod stream;

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::chat::{self, Answer, ChatRequest, Dialect, Go, TextEnd, ToolPlan, field};
use crate::error::SimError;
use crate::{Ctx, InFlight, Inner, json_response};

pub(crate) async fn handle(
    State(ctx): State<Ctx>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let guard = InFlight::new(&ctx.sim.inner);
    let response = answer(&ctx, &uri, &headers, body, guard)
        .await
        .unwrap_or_else(SimError::into_anthropic);
    tracing::debug!(status = response.status().as_u16(), "anthropic message");
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
    sim.check_key_header(headers, "x-api-key")
        .map_err(|provided| SimError::AnthropicKey { provided })?;
    if headers
        .get("anthropic-version")
        .is_none_or(|version| version.is_empty())
    {
        return Err(SimError::MissingVersion);
    }
    let request = parse(&value?, sim)?;

    let Go { stall, echo } = chat::take_step(ctx).await?;
    let start = Instant::now();
    let answer = Answer::build(sim, &request, echo);
    let id = format!("msg_sim_{}", sim.completions.fetch_add(1, Ordering::Relaxed) + 1);
    if request.stream {
        let plan = stream::Plan {
            id,
            model: request.model,
            input_tokens: request.prompt_tokens,
            answer,
            stall,
            first_at: (!sim.config.ttft.is_zero()).then(|| chat::later(start, sim.config.ttft)),
            interval: sim.interval,
        };
        return Ok(stream::response(plan, ctx.closing.clone(), guard));
    }
    if stall.is_some() {
        return Err(chat::hang(ctx).await);
    }
    if !sim.config.ttft.is_zero() {
        tokio::time::sleep_until(chat::later(start, sim.config.ttft)).await;
    }
    Ok(json_response(
        StatusCode::OK,
        message_body(&id, &request, &answer).to_string(),
    ))
}

/// `stop_reason` and `stop_sequence`.
fn stop_reason(answer: &Answer) -> (&'static str, Option<&str>) {
    match answer {
        Answer::Tool { .. } => ("tool_use", None),
        Answer::Text { end, .. } => match end {
            TextEnd::Complete => ("end_turn", None),
            TextEnd::Limit => ("max_tokens", None),
            TextEnd::Stop(stop) => ("stop_sequence", Some(stop)),
        },
    }
}

/// A tool call's `input`: its arguments, which the simulator wrote as a JSON object.
fn tool_input(arguments: &str) -> Value {
    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
}

fn message_body(id: &str, request: &ChatRequest, answer: &Answer) -> Value {
    let block = match answer {
        Answer::Text { text, .. } => json!({ "type": "text", "text": text }),
        Answer::Tool { id, name, arguments } => json!({
            "type": "tool_use",
            "id": id,
            "name": name,
            "input": tool_input(arguments),
        }),
    };
    let (stop_reason, stop_sequence) = stop_reason(answer);
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": request.prompt_tokens,
            "output_tokens": answer.completion_tokens(),
        },
    })
}

/// A 400 naming the field by its dotted path, as Anthropic does (`messages.0.content.1.text: ...`).
fn invalid(path: &str, problem: &str) -> SimError {
    SimError::InvalidRequest {
        param: Some(path.to_owned()),
        code: "invalid_request_error",
        message: format!("{path}: {problem}"),
    }
}

const REQUIRED: &str = "Field required";
const A_STRING: &str = "Input should be a valid string";
const AN_OBJECT: &str = "Input should be a valid dictionary";
const A_LIST: &str = "Input should be a valid list";

fn required_str<'a>(object: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, SimError> {
    match field(object, key) {
        None => Err(invalid(&format!("{at}{key}"), REQUIRED)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(&format!("{at}{key}"), A_STRING)),
    }
}

fn optional_kind(
    object: &Map<String, Value>,
    key: &str,
    ok: fn(&Value) -> bool,
    problem: &str,
) -> Result<(), SimError> {
    match field(object, key) {
        Some(value) if !ok(value) => Err(invalid(key, problem)),
        _ => Ok(()),
    }
}

/// A number from `min` to `max`.
fn optional_number(object: &Map<String, Value>, key: &str, min: f64, max: f64) -> Result<(), SimError> {
    match field(object, key).map(Value::as_f64) {
        None => Ok(()),
        Some(None) => Err(invalid(key, "Input should be a valid number")),
        Some(Some(n)) if n < min => Err(invalid(
            key,
            &format!("Input should be greater than or equal to {min}"),
        )),
        Some(Some(n)) if n > max => Err(invalid(
            key,
            &format!("Input should be less than or equal to {max}"),
        )),
        Some(Some(_)) => Ok(()),
    }
}

/// Checks a message's `content` (or a `tool_result`'s, when `nested`), appends its text to `text`, and
/// says whether it is made of `tool_result` blocks only.
fn content(value: &Value, at: &str, text: &mut String, nested: bool) -> Result<bool, SimError> {
    let blocks = match value {
        Value::String(s) => {
            text.push_str(s);
            return Ok(false);
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(invalid(
                at,
                "Input should be a valid string or a list of content blocks",
            ));
        }
    };
    let mut only_results = !blocks.is_empty();
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("{at}.{i}.");
        let Value::Object(block) = block else {
            return Err(invalid(at.trim_end_matches('.'), AN_OBJECT));
        };
        let kind = required_str(block, "type", &at)?;
        only_results &= kind == "tool_result";
        match kind {
            "text" => text.push_str(required_str(block, "text", &at)?),
            "image" => match field(block, "source") {
                None => return Err(invalid(&format!("{at}source"), REQUIRED)),
                Some(Value::Object(_)) => {}
                Some(_) => return Err(invalid(&format!("{at}source"), AN_OBJECT)),
            },
            "tool_use" if !nested => {
                required_str(block, "id", &at)?;
                required_str(block, "name", &at)?;
                match field(block, "input") {
                    None => return Err(invalid(&format!("{at}input"), REQUIRED)),
                    Some(Value::Object(_)) => {}
                    Some(_) => return Err(invalid(&format!("{at}input"), AN_OBJECT)),
                }
            }
            "tool_result" if !nested => {
                required_str(block, "tool_use_id", &at)?;
                if let Some(inner) = field(block, "content") {
                    content(inner, &format!("{at}content"), text, true)?;
                }
            }
            other => {
                let expected = if nested {
                    "'text', 'image'"
                } else {
                    "'text', 'image', 'tool_use', 'tool_result'"
                };
                return Err(invalid(
                    &format!("{at}type"),
                    &format!(
                        "Input tag '{other}' found using 'type' does not match any of the expected tags: {expected}"
                    ),
                ));
            }
        }
    }
    Ok(only_results)
}

/// Checks the body and keeps what the answer needs. Optional fields that are `null` count as absent.
fn parse(body: &Value, sim: &Inner) -> Result<ChatRequest, SimError> {
    let Value::Object(body) = body else {
        return Err(invalid("body", AN_OBJECT));
    };
    let model = required_str(body, "model", "")?;
    let max_tokens = match field(body, "max_tokens") {
        None => return Err(invalid("max_tokens", REQUIRED)),
        Some(value) => match (value.as_u64(), value.as_i64()) {
            (Some(n @ 1..), _) => u32::try_from(n).unwrap_or(u32::MAX),
            (Some(0), _) | (None, Some(_)) => {
                return Err(invalid(
                    "max_tokens",
                    "Input should be greater than or equal to 1",
                ));
            }
            _ => return Err(invalid("max_tokens", "Input should be a valid integer")),
        },
    };
    let messages = match field(body, "messages") {
        None => return Err(invalid("messages", REQUIRED)),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(invalid("messages", "at least one message is required"));
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(invalid("messages", A_LIST)),
    };
    let mut chars = 0;
    match field(body, "system") {
        None => {}
        Some(Value::String(system)) => chars += system.chars().count(),
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let at = format!("system.{i}.");
                let Value::Object(block) = block else {
                    return Err(invalid(at.trim_end_matches('.'), AN_OBJECT));
                };
                if required_str(block, "type", &at)? != "text" {
                    return Err(invalid(&format!("{at}type"), "Input should be 'text'"));
                }
                chars += required_str(block, "text", &at)?.chars().count();
            }
        }
        Some(_) => {
            return Err(invalid(
                "system",
                "Input should be a valid string or a list of text blocks",
            ));
        }
    }
    let mut last_text = String::new();
    let mut last_user_speaks = false;
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages.{i}.");
        let Value::Object(message) = message else {
            return Err(invalid(&format!("messages.{i}"), AN_OBJECT));
        };
        let role = required_str(message, "role", &at)?;
        if role != "user" && role != "assistant" {
            return Err(invalid(
                &format!("{at}role"),
                "Input should be 'user' or 'assistant'",
            ));
        }
        let Some(value) = field(message, "content") else {
            return Err(invalid(&format!("{at}content"), REQUIRED));
        };
        last_text.clear();
        let only_results = content(value, &format!("{at}content"), &mut last_text, false)?;
        chars += last_text.chars().count();
        last_user_speaks = role == "user" && !only_results;
    }
    let prompt_tokens = u32::try_from(chars.div_ceil(4).max(1)).unwrap_or(u32::MAX);

    let stream = match field(body, "stream") {
        None => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(invalid("stream", "Input should be a valid boolean")),
    };
    let stop = match field(body, "stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid("stop_sequences", "Input should be a valid list of strings"))?,
        Some(_) => return Err(invalid("stop_sequences", A_LIST)),
    };
    optional_number(body, "temperature", 0.0, 1.0)?;
    optional_number(body, "top_p", 0.0, 1.0)?;
    optional_kind(
        body,
        "top_k",
        |v| v.as_u64().is_some(),
        "Input should be a non-negative integer",
    )?;
    optional_kind(body, "metadata", Value::is_object, AN_OBJECT)?;
    let tool = tool_plan(body, last_user_speaks)?;
    if sim.model(model).is_none_or(|m| m.dimensions.is_some()) {
        return Err(SimError::ModelNotFound(model.to_owned()));
    }
    Ok(ChatRequest {
        dialect: Dialect::Anthropic,
        model: model.to_owned(),
        stream,
        include_usage: false,
        max_tokens: Some(max_tokens),
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        prompt_tokens,
        tool,
        last_text,
    })
}

/// The tool to call: the first (or the one `tool_choice` names), if tools are offered, `tool_choice` is not
/// `none`, and the user spoke last with more than tool results.
fn tool_plan(body: &Map<String, Value>, last_user_speaks: bool) -> Result<Option<ToolPlan>, SimError> {
    let tools = match field(body, "tools") {
        None => &[][..],
        Some(Value::Array(tools)) => tools.as_slice(),
        Some(_) => return Err(invalid("tools", A_LIST)),
    };
    let mut plans = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools.{i}.");
        let Value::Object(tool) = tool else {
            return Err(invalid(&format!("tools.{i}"), AN_OBJECT));
        };
        let name = required_str(tool, "name", &at)?;
        if field(tool, "description").is_some_and(|d| !d.is_string()) {
            return Err(invalid(&format!("{at}description"), A_STRING));
        }
        let schema = match field(tool, "input_schema") {
            None => return Err(invalid(&format!("{at}input_schema"), REQUIRED)),
            Some(Value::Object(schema)) => schema,
            Some(_) => return Err(invalid(&format!("{at}input_schema"), AN_OBJECT)),
        };
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        plans.push(ToolPlan {
            name: name.to_owned(),
            required,
        });
    }
    let (kind, named) = match field(body, "tool_choice") {
        None => ("auto", None),
        Some(Value::Object(choice)) => {
            let kind = required_str(choice, "type", "tool_choice.")?;
            match kind {
                "auto" | "any" | "none" => (kind, None),
                "tool" => ("tool", Some(required_str(choice, "name", "tool_choice.")?)),
                _ => {
                    return Err(invalid(
                        "tool_choice.type",
                        "Input should be 'auto', 'any', 'tool' or 'none'",
                    ));
                }
            }
        }
        Some(_) => return Err(invalid("tool_choice", AN_OBJECT)),
    };
    if field(body, "tool_choice").is_some() && plans.is_empty() {
        return Err(invalid(
            "tool_choice",
            "may only be specified while providing tools",
        ));
    }
    let chosen = match named {
        Some(name) => match plans.iter().position(|p| p.name == name) {
            Some(i) => Some(i),
            None => {
                let problem = format!("Tool '{name}' not found in tools");
                return Err(invalid("tool_choice.name", &problem));
            }
        },
        None => (!plans.is_empty()).then_some(0),
    };
    if kind == "none" || !last_user_speaks {
        return Ok(None);
    }
    Ok(chosen.map(|i| plans.swap_remove(i)))
}
