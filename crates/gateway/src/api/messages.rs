//! The Anthropic Messages API request (`POST /v1/messages`), translated into the chat completions request
//! the rest of the gateway serves, so that scanning, policy, routing and accounting are exactly chat's:
//! `system` becomes a system message first, content blocks become content parts (text, images),
//! `tool_use` blocks become an assistant's tool calls, `tool_result` blocks become tool messages,
//! `tools` and `tool_choice` become functions, `stop_sequences` become `stop`, `metadata.user_id` becomes
//! `user`; `cache_control` (a prompt-caching hint, which changes nothing of the answer) is accepted
//! wherever Anthropic's API takes it. What has no equivalent (`top_k`, extended thinking, documents, server tools, more than four
//! stop sequences) is refused with the field named, never dropped.

use serde_json::{Map, Value, json};

use super::{
    InvalidRequest, MAX_STOP_SEQUENCES, MAX_TOKENS_LIMIT, bad_value, json_object, model_of, wrong_type,
};

/// Fields read here; anything else is refused rather than silently dropped.
const KNOWN: [&str; 14] = [
    "cache_control",
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
];

fn unsupported(param: &str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest::new("unsupported_parameter", message).with_param(param)
}

fn missing(param: &str) -> InvalidRequest {
    InvalidRequest::new("missing_required_parameter", format!("`{param}` is required.")).with_param(param)
}

/// The keys of a block other than `allowed`, refused by name (`cache_control`, a prompt-caching hint that
/// changes nothing of the answer, is allowed where Anthropic's API allows it: on blocks and tools).
///
/// Every string the client's body holds must reach the chat translation (which is what is scanned), since
/// that body may be passed on as it came (`api::native`): so `cache_control` must be exactly a caching hint,
/// and `citations` (which quote text) are refused.
fn only(param: &str, block: &Map<String, Value>, allowed: &[&str]) -> Result<(), InvalidRequest> {
    if let Some(k) = block.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(unsupported(
            &format!("{param}.{k}"),
            format!("`{param}.{k}` is not served here; leave it out"),
        ));
    }
    if block.get("citations").is_some_and(|c| !c.is_null()) {
        return Err(unsupported(
            &format!("{param}.citations"),
            format!("`{param}.citations` is not served here; leave it out"),
        ));
    }
    match block.get("cache_control") {
        None | Some(Value::Null) => Ok(()),
        Some(c) => cache_control(&format!("{param}.cache_control"), c),
    }
}

/// A prompt-caching hint: `{"type": "ephemeral"}`, with `ttl` `5m` or `1h`.
fn cache_control(param: &str, c: &Value) -> Result<(), InvalidRequest> {
    let valid = c.as_object().is_some_and(|c| {
        c.get("type").and_then(Value::as_str) == Some("ephemeral")
            && c.keys().all(|k| k == "type" || k == "ttl")
            && c.get("ttl")
                .is_none_or(|t| matches!(t.as_str(), Some("5m" | "1h")))
    });
    if valid {
        Ok(())
    } else {
        Err(bad_value(
            param,
            format!("`{param}` must be {{\"type\": \"ephemeral\"}}, with `ttl` 5m or 1h."),
        ))
    }
}

fn string<'a>(block: &'a Map<String, Value>, param: &str, key: &str) -> Result<&'a str, InvalidRequest> {
    match block.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(missing(&format!("{param}.{key}"))),
        Some(other) => Err(wrong_type(&format!("{param}.{key}"), "a string", other)),
    }
}

/// An `image` block as a chat image part (base64 sources become data URLs).
fn image(param: &str, block: &Map<String, Value>) -> Result<Value, InvalidRequest> {
    only(param, block, &["type", "source", "cache_control"])?;
    let source_param = format!("{param}.source");
    let Some(Value::Object(source)) = block.get("source") else {
        return Err(missing(&source_param));
    };
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => {
            only(&source_param, source, &["type", "media_type", "data"])?;
            let media = string(source, &source_param, "media_type")?;
            let data = string(source, &source_param, "data")?;
            format!("data:{media};base64,{data}")
        }
        Some("url") => {
            only(&source_param, source, &["type", "url"])?;
            string(source, &source_param, "url")?.to_owned()
        }
        _ => {
            return Err(unsupported(
                &format!("{source_param}.type"),
                format!("`{source_param}.type` must be base64 or url"),
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The text of a `tool_result`'s content: a string, or text blocks joined with newlines.
fn tool_result_text(param: &str, content: Option<&Value>) -> Result<String, InvalidRequest> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                let at = format!("{param}.content[{k}]");
                let Value::Object(b) = b else {
                    return Err(wrong_type(&at, "a content block", b));
                };
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(unsupported(
                        &format!("{at}.type"),
                        format!("`{at}`: tool results are served as text blocks only"),
                    ));
                }
                only(&at, b, &["type", "text", "citations", "cache_control"])?;
                texts.push(string(b, &at, "text")?.to_owned());
            }
            Ok(texts.join("\n"))
        }
        Some(other) => Err(wrong_type(
            &format!("{param}.content"),
            "a string or a list of text blocks",
            other,
        )),
    }
}

/// One Anthropic message as one or more chat messages (tool results become tool messages, first).
fn message(i: usize, m: &Value, out: &mut Vec<Value>) -> Result<(), InvalidRequest> {
    let param = format!("messages[{i}]");
    let Value::Object(m) = m else {
        return Err(wrong_type(&param, "an object", m));
    };
    if let Some(k) = m.keys().find(|k| !["role", "content"].contains(&k.as_str())) {
        return Err(unsupported(
            &format!("{param}.{k}"),
            format!("`{param}.{k}` is not part of a message; leave it out"),
        ));
    }
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(bad_value(
                &format!("{param}.role"),
                format!("`{param}.role` must be user or assistant (the system prompt goes in `system`)."),
            ));
        }
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        None | Some(Value::Null) => return Err(missing(&format!("{param}.content"))),
        Some(other) => {
            return Err(wrong_type(
                &format!("{param}.content"),
                "a string or a list of content blocks",
                other,
            ));
        }
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("{param}.content[{j}]");
        let Value::Object(b) = b else {
            return Err(wrong_type(&at, "a content block", b));
        };
        match (b.get("type").and_then(Value::as_str), role) {
            (Some("text"), _) => {
                only(&at, b, &["type", "text", "citations", "cache_control"])?;
                parts.push(json!({"type": "text", "text": string(b, &at, "text")?}));
            }
            (Some("image"), "user") => parts.push(image(&at, b)?),
            (Some("tool_use"), "assistant") => {
                only(&at, b, &["type", "id", "name", "input", "cache_control"])?;
                let input = match b.get("input") {
                    Some(v @ Value::Object(_)) => v.to_string(),
                    None => return Err(missing(&format!("{at}.input"))),
                    Some(other) => return Err(wrong_type(&format!("{at}.input"), "an object", other)),
                };
                calls.push(json!({
                    "id": string(b, &at, "id")?,
                    "type": "function",
                    "function": {"name": string(b, &at, "name")?, "arguments": input},
                }));
            }
            (Some("tool_result"), "user") => {
                only(
                    &at,
                    b,
                    &["type", "tool_use_id", "content", "is_error", "cache_control"],
                )?;
                let id = string(b, &at, "tool_use_id")?;
                let mut text = tool_result_text(&at, b.get("content"))?;
                match b.get("is_error") {
                    None | Some(Value::Null | Value::Bool(false)) => {}
                    Some(Value::Bool(true)) => text = format!("Error: {text}"),
                    Some(other) => return Err(wrong_type(&format!("{at}.is_error"), "a boolean", other)),
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            (Some(t @ ("image" | "tool_use" | "tool_result")), _) => {
                return Err(bad_value(
                    &format!("{at}.type"),
                    format!("`{at}` is a {t} block, which a {role} message cannot hold."),
                ));
            }
            (Some(other), _) => {
                return Err(unsupported(
                    &format!("{at}.type"),
                    format!(
                        "`{at}` is a {other} block; text, image, tool_use and tool_result blocks are served"
                    ),
                ));
            }
            (None, _) => return Err(missing(&format!("{at}.type"))),
        }
    }
    if role == "assistant" {
        let mut m = json!({"role": "assistant", "content": if parts.is_empty() { Value::Null } else { Value::Array(parts) }});
        if !calls.is_empty() {
            m["tool_calls"] = Value::Array(calls);
        }
        out.push(m);
    } else if !parts.is_empty() || !out.last().is_some_and(|m| m["role"] == "tool") {
        if parts.is_empty() {
            return Err(bad_value(
                &format!("{param}.content"),
                format!("`{param}.content` must hold at least one block."),
            ));
        }
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// The `system` prompt: a string, or text blocks joined with newlines.
fn system(value: &Value) -> Result<String, InvalidRequest> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (k, b) in blocks.iter().enumerate() {
                let at = format!("system[{k}]");
                let Value::Object(b) = b else {
                    return Err(wrong_type(&at, "a text block", b));
                };
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad_value(
                        &format!("{at}.type"),
                        format!("`{at}` must be a text block."),
                    ));
                }
                only(&at, b, &["type", "text", "citations", "cache_control"])?;
                texts.push(string(b, &at, "text")?.to_owned());
            }
            Ok(texts.join("\n"))
        }
        other => Err(wrong_type("system", "a string or a list of text blocks", other)),
    }
}

/// `tools` as chat functions; server tools (web search, code execution...) are refused.
fn tools(value: &Value) -> Result<Vec<Value>, InvalidRequest> {
    let Value::Array(tools) = value else {
        return Err(wrong_type("tools", "a list", value));
    };
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(wrong_type(&at, "an object", t));
        };
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(other) => {
                return Err(unsupported(
                    &format!("{at}.type"),
                    format!(
                        "`{at}` is a {other} server tool; only client tools (name, input_schema) are served"
                    ),
                ));
            }
        }
        only(
            &at,
            t,
            &["type", "name", "description", "input_schema", "cache_control"],
        )?;
        let name = string(t, &at, "name")?;
        if name.is_empty() {
            return Err(bad_value(
                &format!("{at}.name"),
                format!("`{at}.name` must not be empty."),
            ));
        }
        let schema = match t.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            None => return Err(missing(&format!("{at}.input_schema"))),
            Some(other) => return Err(wrong_type(&format!("{at}.input_schema"), "an object", other)),
        };
        let mut function = json!({"name": name, "parameters": schema});
        match t.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) => function["description"] = Value::String(d.clone()),
            Some(other) => return Err(wrong_type(&format!("{at}.description"), "a string", other)),
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// `tool_choice` as chat's: auto, any (required), a named tool, or none; `disable_parallel_tool_use`
/// becomes `parallel_tool_calls: false`.
fn tool_choice(value: &Value, chat: &mut Value) -> Result<(), InvalidRequest> {
    let Value::Object(c) = value else {
        return Err(wrong_type("tool_choice", "an object", value));
    };
    only("tool_choice", c, &["type", "name", "disable_parallel_tool_use"])?;
    chat["tool_choice"] = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => json!({"type": "function", "function": {"name": string(c, "tool_choice", "name")?}}),
        _ => {
            return Err(bad_value(
                "tool_choice.type",
                "`tool_choice.type` must be auto, any, tool or none.",
            ));
        }
    };
    match c.get("disable_parallel_tool_use") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => chat["parallel_tool_calls"] = Value::Bool(false),
        Some(other) => {
            return Err(wrong_type(
                "tool_choice.disable_parallel_tool_use",
                "a boolean",
                other,
            ));
        }
    }
    Ok(())
}

fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong_type(key, "a number", other)),
    }
}

/// Translates a Messages request into a chat completions body; returns it with the client's body.
pub fn to_chat_body(bytes: &[u8]) -> Result<(Vec<u8>, Map<String, Value>), InvalidRequest> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    if let Some(key) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(unsupported(
            key,
            format!("`{key}` is not served through /v1/messages here; leave it out"),
        ));
    }
    if body.get("top_k").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "top_k",
            "`top_k` cannot be honoured by every model this gateway routes to; leave it out (temperature and top_p are served).",
        ));
    }
    match body.get("thinking") {
        None | Some(Value::Null) => {}
        Some(t) if t.get("type").and_then(Value::as_str) == Some("disabled") => {}
        Some(_) => {
            return Err(unsupported(
                "thinking",
                "Extended thinking is not served here; leave `thinking` out.",
            ));
        }
    }
    let max_tokens = match body.get("max_tokens") {
        None | Some(Value::Null) => return Err(missing("max_tokens")),
        Some(v) => match v.as_u64() {
            Some(n @ 1..=MAX_TOKENS_LIMIT) => n,
            _ => {
                return Err(bad_value(
                    "max_tokens",
                    format!("`max_tokens` must be an integer from 1 to {MAX_TOKENS_LIMIT}."),
                ));
            }
        },
    };
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(s) => {
            let text = system(s)?;
            if !text.is_empty() {
                messages.push(json!({"role": "system", "content": text}));
            }
        }
    }
    match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                message(i, m, &mut messages)?;
            }
        }
        Some(Value::Array(_)) => {
            return Err(bad_value(
                "messages",
                "`messages` must hold at least one message.",
            ));
        }
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(other) => return Err(wrong_type("messages", "a list of messages", other)),
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type("stream", "a boolean", other)),
    };
    let mut chat = json!({"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream});
    if stream {
        // The closing events carry the usage: always asked of the backend.
        chat["stream_options"] = json!({"include_usage": true});
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = number(&body, key)? {
            chat[key] = Value::from(v);
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > MAX_STOP_SEQUENCES {
                return Err(unsupported(
                    "stop_sequences",
                    format!("At most {MAX_STOP_SEQUENCES} stop sequences are served here."),
                ));
            }
            if let Some((i, v)) = list.iter().enumerate().find(|(_, v)| !v.is_string()) {
                return Err(wrong_type(&format!("stop_sequences[{i}]"), "a string", v));
            }
            if !list.is_empty() {
                chat["stop"] = Value::Array(list.clone());
            }
        }
        Some(other) => return Err(wrong_type("stop_sequences", "a list of strings", other)),
    }
    match body.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            only("metadata", m, &["user_id"])?;
            match m.get("user_id") {
                None | Some(Value::Null) => {}
                Some(Value::String(u)) => chat["user"] = Value::String(u.clone()),
                Some(other) => return Err(wrong_type("metadata.user_id", "a string", other)),
            }
        }
        Some(other) => return Err(wrong_type("metadata", "an object", other)),
    }
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(t) => {
            let functions = tools(t)?;
            if !functions.is_empty() {
                chat["tools"] = Value::Array(functions);
            }
        }
    }
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(c) => tool_choice(c, &mut chat)?,
    }
    match body.get("cache_control") {
        None | Some(Value::Null) => {}
        Some(c) => cache_control("cache_control", c)?,
    }
    Ok((chat.to_string().into_bytes(), body))
}

#[cfg(test)]
mod tests;
