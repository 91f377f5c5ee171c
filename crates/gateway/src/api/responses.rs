//! The OpenAI Responses API request (`POST /v1/responses`), stateless: translated into the chat
//! completions request the rest of the gateway serves (`instructions` a system message first, `input` the
//! messages, `max_output_tokens` the answer's limit), so that scanning, policy, routing and accounting are
//! exactly chat's. What this gateway cannot do statelessly (`previous_response_id`, `store: true`,
//! `conversation`, `background`) or does not serve here (tools, structured output, items other than
//! messages) is refused with the field named, never dropped.

use serde_json::{Map, Value, json};

use super::{InvalidRequest, bad_value, json_object, model_of, wrong_type};

/// What the answer echoes of the request.
#[derive(Debug, Clone, Default)]
pub struct ResponseOptions {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub metadata: Value,
    pub user: Option<String>,
}

/// Fields read here; anything else is refused rather than silently dropped.
const KNOWN: [&str; 17] = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "store",
    "user",
    "metadata",
    "text",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "truncation",
    "previous_response_id",
    "background",
];

fn unsupported(param: &str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest::new("unsupported_parameter", message).with_param(param)
}

/// A key of `object` outside `allowed`, refused rather than dropped; the optional keys whose values are
/// only carried (`Some(expected)`) must have the type the API gives them.
fn only(param: &str, object: &Value, allowed: &[(&str, Option<&str>)]) -> Result<(), InvalidRequest> {
    let Some(o) = object.as_object() else {
        return Ok(());
    };
    for (key, value) in o {
        let field = format!("{param}.{key}");
        match allowed.iter().find(|(k, _)| k == key) {
            None => {
                return Err(unsupported(
                    &field,
                    format!("`{field}` is not served here; leave it out"),
                ));
            }
            Some((_, Some("a string"))) if !value.is_string() => {
                return Err(wrong_type(&field, "a string", value));
            }
            Some((_, Some("a list"))) if !value.is_array() => {
                return Err(wrong_type(&field, "a list", value));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// One content part as a chat content part.
fn part(param: &str, p: &Value) -> Result<Value, InvalidRequest> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => {
            let carried = [("annotations", Some("a list")), ("logprobs", Some("a list"))];
            only(
                param,
                p,
                &[("type", None), ("text", None), carried[0], carried[1]],
            )?
        }
        Some("input_image") => only(
            param,
            p,
            &[("type", None), ("image_url", None), ("detail", Some("a string"))],
        )?,
        _ => {}
    }
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => match p.get("text") {
            Some(Value::String(t)) => Ok(json!({"type": "text", "text": t})),
            other => Err(wrong_type(
                &format!("{param}.text"),
                "a string",
                other.unwrap_or(&Value::Null),
            )),
        },
        Some("input_image") => match p.get("image_url") {
            Some(Value::String(url)) => Ok(json!({"type": "image_url", "image_url": {"url": url}})),
            _ => Err(unsupported(
                param,
                format!("`{param}`: only images given by `image_url` are served"),
            )),
        },
        Some(other) => Err(unsupported(
            param,
            format!("`{param}` is an `{other}` part; text and images by URL are served"),
        )),
        None => Err(bad_value(param, format!("`{param}` needs a `type`."))),
    }
}

/// One input item as a chat message.
fn message(i: usize, item: &Value) -> Result<Value, InvalidRequest> {
    let param = format!("input[{i}]");
    let Value::Object(item) = item else {
        return Err(wrong_type(&param, "an object", item));
    };
    match item.get("type") {
        None => {}
        Some(Value::String(t)) if t == "message" => {}
        Some(Value::String(other)) => {
            return Err(unsupported(
                &format!("{param}.type"),
                format!(
                    "`{param}` is a `{other}` item: this gateway serves message items only (no tool calls or reasoning items)"
                ),
            ));
        }
        Some(other) => return Err(wrong_type(&format!("{param}.type"), "a string", other)),
    }
    only(
        &param,
        &Value::Object(item.clone()),
        &[
            ("type", None),
            ("role", None),
            ("content", None),
            ("id", Some("a string")),
            ("status", Some("a string")),
        ],
    )?;
    let role = match item.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
        _ => {
            return Err(bad_value(
                &format!("{param}.role"),
                format!("`{param}.role` must be user, assistant, system or developer."),
            ));
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => Value::Array(
            parts
                .iter()
                .enumerate()
                .map(|(j, p)| part(&format!("{param}.content[{j}]"), p))
                .collect::<Result<_, _>>()?,
        ),
        Some(other) => {
            return Err(wrong_type(
                &format!("{param}.content"),
                "a string or a list of parts",
                other,
            ));
        }
        None => {
            return Err(InvalidRequest::new(
                "missing_required_parameter",
                format!("`{param}.content` is required."),
            )
            .with_param(format!("{param}.content")));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong_type(key, "a number", other)),
    }
}

/// Translates a Responses request into a chat completions body; returns it with what the answer echoes.
pub fn to_chat_body(bytes: &[u8]) -> Result<(Vec<u8>, ResponseOptions), InvalidRequest> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    if let Some(key) = body.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(unsupported(
            key,
            format!("`{key}` is not served through /v1/responses here; leave it out"),
        ));
    }
    for (key, expected) in [
        ("store", "a boolean"),
        ("background", "a boolean"),
        ("metadata", "an object"),
        ("tools", "a list"),
    ] {
        let fits = match body.get(key) {
            None | Some(Value::Null) => true,
            Some(Value::Bool(_)) => expected == "a boolean",
            Some(Value::Object(_)) => expected == "an object",
            Some(Value::Array(_)) => expected == "a list",
            Some(_) => false,
        };
        if !fits {
            return Err(wrong_type(key, expected, &body[key]));
        }
    }
    if body.get("previous_response_id").is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "previous_response_id",
            "This gateway keeps no responses: send the whole conversation in `input` instead of `previous_response_id`.",
        ));
    }
    if body.get("store") == Some(&Value::Bool(true)) {
        return Err(unsupported(
            "store",
            "This gateway keeps no responses: set `store` to false (or leave it out).",
        ));
    }
    if body.get("background") == Some(&Value::Bool(true)) {
        return Err(unsupported(
            "background",
            "Background responses are not served here.",
        ));
    }
    if body
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
    {
        return Err(unsupported(
            "tools",
            "Tools are not served through /v1/responses here; use /v1/chat/completions for tool calls.",
        ));
    }
    if let Some(format) = body.get("text").and_then(|t| t.get("format"))
        && format.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(unsupported(
            "text.format",
            "Only plain text answers (`text.format.type: text`) are served through /v1/responses here.",
        ));
    }
    let mut messages = Vec::new();
    let instructions = match body.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            messages.push(json!({"role": "system", "content": s}));
            Some(s.clone())
        }
        Some(other) => return Err(wrong_type("instructions", "a string", other)),
    };
    match body.get("input") {
        None | Some(Value::Null) => {
            return Err(
                InvalidRequest::new("missing_required_parameter", "`input` is required.").with_param("input"),
            );
        }
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad_value("input", "`input` must hold at least one item."));
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                messages.push(message(i, item)?);
            }
        }
        Some(other) => return Err(wrong_type("input", "a string or a list of items", other)),
    }
    let max_output_tokens = match body.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..) => Some(n),
            _ => {
                return Err(bad_value(
                    "max_output_tokens",
                    "`max_output_tokens` must be a positive integer.",
                ));
            }
        },
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(wrong_type("stream", "a boolean", other)),
    };
    let user = match body.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong_type("user", "a string", other)),
    };
    let options = ResponseOptions {
        instructions,
        max_output_tokens,
        temperature: number(&body, "temperature")?,
        top_p: number(&body, "top_p")?,
        metadata: body.get("metadata").cloned().unwrap_or_else(|| json!({})),
        user: user.clone(),
    };
    let mut chat = json!({"model": model, "messages": messages, "stream": stream});
    if stream {
        // The last event carries the usage: always asked of the backend.
        chat["stream_options"] = json!({"include_usage": true});
    }
    for (key, value) in [
        ("max_tokens", options.max_output_tokens.map(Value::from)),
        ("temperature", options.temperature.map(Value::from)),
        ("top_p", options.top_p.map(Value::from)),
        ("user", user.map(Value::from)),
    ] {
        if let Some(v) = value {
            chat[key] = v;
        }
    }
    Ok((chat.to_string().into_bytes(), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(v: Value) -> Result<Value, InvalidRequest> {
        to_chat_body(v.to_string().as_bytes())
            .map(|(b, _)| serde_json::from_slice(&b).expect("chat body is JSON"))
    }

    #[test]
    fn instructions_and_input_become_messages() {
        let chat = translate(json!({
            "model": "m", "instructions": "Be brief.", "max_output_tokens": 20, "temperature": 0,
            "input": [
                {"role": "user", "content": "Hi"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
                {"role": "user", "content": [{"type": "input_text", "text": "And?"}]},
            ],
            "stream": true, "store": false, "metadata": {"k": "v"},
        }))
        .expect("valid");
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "user", "content": [{"type": "text", "text": "And?"}]},
            ])
        );
        assert_eq!(chat["max_tokens"], 20);
        assert_eq!(chat["stream_options"]["include_usage"], true);
        let chat = translate(json!({"model": "m", "input": "Hello"})).expect("string input");
        assert_eq!(chat["messages"], json!([{"role": "user", "content": "Hello"}]));
        assert_eq!(chat["stream"], false);
    }

    #[test]
    fn what_a_stateless_gateway_cannot_do_is_refused_by_name() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"model": "m", "input": "x", "store": true}), "store"),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "input": "x", "reasoning": {"effort": "low"}}),
                "reasoning",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "o"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}),
                "text.format",
            ),
            (json!({"model": "m"}), "input"),
            (json!({"input": "x"}), "model"),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
        ] {
            let e = translate(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
    }
}
