//! The OpenAI chat completions request as this gateway reads it: parsed from the raw body, checked field
//! by field with messages that name the field, and kept whole so that OpenAI-compatible backends receive
//! exactly what the client sent. Knows nothing of HTTP: its errors are [`InvalidRequest`]s.

use serde_json::{Map, Value};

pub mod embeddings;
pub mod messages;
pub mod native;
pub mod responses;

/// Why a body is not a chat request this gateway accepts: a stable snake_case `code`, a message that
/// names the field, and the field (`param`). A 400 for the client (mapped in `error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl InvalidRequest {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

/// Largest `max_tokens` / `max_completion_tokens` accepted; anything above is a mistake, not a request.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000;
/// OpenAI's limit on stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;
const MAX_MODEL_ID_LEN: usize = 256;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "system" => Self::System,
            "developer" => Self::Developer,
            "user" => Self::User,
            "assistant" => Self::Assistant,
            "tool" => Self::Tool,
            "function" => Self::Function,
            _ => return None,
        })
    }

    /// The role as the model's chat template knows it (`developer` is the newer name of `system`).
    pub fn template_name(self) -> &'static str {
        match self {
            Self::System | Self::Developer => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
            Self::Function => "function",
        }
    }
}

/// One message, reduced to what a model that only reads text needs, plus what it cannot read.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    /// The text content: the string, or the text parts joined with newlines.
    pub text: String,
    /// Parts other than text (images, audio, files).
    pub non_text_parts: usize,
    /// The assistant message carries tool calls.
    pub has_tool_calls: bool,
}

/// A checked chat completions request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The body as the client sent it.
    pub body: Map<String, Value>,
    pub model: String,
    pub messages: Vec<Message>,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    /// The request declares tools.
    pub has_tools: bool,
    pub user: Option<String>,
    /// The client's own request when it came in another API's format (see [`native::Native`]).
    pub native: Option<std::sync::Arc<native::Native>>,
}

impl ChatRequest {
    /// The same request for another model (a substitute, or a virtual model's member): the body sent
    /// upstream names it too.
    pub fn with_model(&self, model: &str) -> Self {
        let mut r = self.clone();
        r.model = model.to_owned();
        r.body.insert("model".to_owned(), Value::String(model.to_owned()));
        r
    }
}

/// What the JSON value is, for messages ("got a number").
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> InvalidRequest {
    InvalidRequest::new(
        "invalid_type",
        format!("`{param}` must be {expected}, got {}.", kind(got)),
    )
    .with_param(param)
}

fn bad_value(param: &str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest::new("invalid_value", message).with_param(param)
}

/// Parses and checks a request body.
pub fn parse_chat_request(bytes: &[u8]) -> Result<ChatRequest, InvalidRequest> {
    check(json_object(bytes)?)
}

/// The body as a JSON object, or why it is not one.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, InvalidRequest> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(InvalidRequest::new(
            "invalid_utf8",
            format!(
                "The body is not valid UTF-8 (invalid byte at offset {}).",
                e.valid_up_to()
            ),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        InvalidRequest::new(
            "invalid_json",
            format!(
                "The body is not valid JSON: {e} (line {}, column {}).",
                e.line(),
                e.column()
            ),
        )
    })?;
    match value {
        Value::Object(body) => Ok(body),
        other => Err(InvalidRequest::new(
            "invalid_json",
            format!("The body must be a JSON object, got {}.", kind(&other)),
        )),
    }
}

/// The `model` field: required, a string of 1 to 256 characters.
fn model_of(body: &Map<String, Value>) -> Result<String, InvalidRequest> {
    match body.get("model") {
        None | Some(Value::Null) => {
            Err(InvalidRequest::new("missing_required_parameter", "`model` is required.").with_param("model"))
        }
        Some(Value::String(s)) if s.is_empty() || s.len() > MAX_MODEL_ID_LEN => Err(bad_value(
            "model",
            format!("`model` must be 1 to {MAX_MODEL_ID_LEN} characters."),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(wrong_type("model", "a string", other)),
    }
}

fn check(body: Map<String, Value>) -> Result<ChatRequest, InvalidRequest> {
    let model = model_of(&body)?;

    let messages = match body.get("messages") {
        None | Some(Value::Null) => {
            return Err(
                InvalidRequest::new("missing_required_parameter", "`messages` is required.")
                    .with_param("messages"),
            );
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(bad_value(
                "messages",
                "`messages` must hold at least one message.",
            ));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(wrong_type("messages", "an array of messages", other)),
    };

    let stream = opt_bool(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(bad_value(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true.",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => return Err(wrong_type("stream_options.include_usage", "a boolean", other)),
            }
        }
        Some(other) => return Err(wrong_type("stream_options", "an object", other)),
    };

    if let Some(n) = opt_int(&body, "n")?
        && n != 1
    {
        return Err(bad_value(
            "n",
            format!("`n` must be 1 here (got {n}): this gateway returns one choice per request."),
        ));
    }

    let max_tokens = match opt_int(&body, "max_completion_tokens")? {
        Some(n) => Some(max_tokens_value("max_completion_tokens", n)?),
        None => opt_int(&body, "max_tokens")?
            .map(|n| max_tokens_value("max_tokens", n))
            .transpose()?,
    };

    let temperature = opt_number(&body, "temperature")?;
    if let Some(t) = temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(bad_value(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {t}."),
        ));
    }
    let top_p = opt_number(&body, "top_p")?;
    if let Some(p) = top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(bad_value(
            "top_p",
            format!("`top_p` must be between 0 and 1, got {p}."),
        ));
    }
    let seed = opt_int(&body, "seed")?;

    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP_SEQUENCES {
                return Err(bad_value(
                    "stop",
                    format!(
                        "`stop` holds at most {MAX_STOP_SEQUENCES} sequences, got {}.",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(wrong_type(&format!("stop[{i}]"), "a string", other)),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
    };
    if stop.iter().any(String::is_empty) {
        return Err(bad_value("stop", "stop sequences must not be empty."));
    }

    let has_tools = match body.get("tools") {
        None | Some(Value::Null) => false,
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                check_tool(i, tool)?;
            }
            !tools.is_empty()
        }
        Some(other) => return Err(wrong_type("tools", "an array of tools", other)),
    };

    let user = match body.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(wrong_type("user", "a string", other)),
    };

    Ok(ChatRequest {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        temperature: temperature.map(|t| t as f32),
        top_p: top_p.map(|p| p as f32),
        seed,
        stop,
        has_tools,
        user,
        body,
        native: None,
    })
}

fn max_tokens_value(param: &str, n: i64) -> Result<u32, InvalidRequest> {
    if n < 1 || n as u64 > MAX_TOKENS_LIMIT {
        return Err(bad_value(
            param,
            format!("`{param}` must be between 1 and {MAX_TOKENS_LIMIT}, got {n}."),
        ));
    }
    Ok(n as u32)
}

fn opt_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "a boolean", other)),
    }
}

fn opt_int(body: &Map<String, Value>, key: &str) -> Result<Option<i64>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => Err(bad_value(
                key,
                format!("`{key}` must be an integer within 64 bits, got {n}."),
            )),
        },
        Some(other) => Err(wrong_type(key, "an integer", other)),
    }
}

fn opt_number(body: &Map<String, Value>, key: &str) -> Result<Option<f64>, InvalidRequest> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong_type(key, "a number", other)),
    }
}

fn message(i: usize, m: &Value) -> Result<Message, InvalidRequest> {
    let at = |field: &str| format!("messages[{i}].{field}");
    let Value::Object(m) = m else {
        return Err(wrong_type(&format!("messages[{i}]"), "an object", m));
    };
    let role = match m.get("role") {
        Some(Value::String(s)) => Role::parse(s).ok_or_else(|| {
            bad_value(
                &at("role"),
                format!(
                    "`{}` must be one of system, developer, user, assistant, tool; got {s:?}.",
                    at("role")
                ),
            )
        })?,
        None | Some(Value::Null) => {
            return Err(InvalidRequest::new(
                "missing_required_parameter",
                format!("`{}` is required.", at("role")),
            )
            .with_param(at("role")));
        }
        Some(other) => return Err(wrong_type(&at("role"), "a string", other)),
    };
    let has_tool_calls = match m.get("tool_calls") {
        None | Some(Value::Null) => false,
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                check_tool_call(&at(&format!("tool_calls[{j}]")), call)?;
            }
            !calls.is_empty()
        }
        Some(other) => return Err(wrong_type(&at("tool_calls"), "an array", other)),
    };
    let (text, non_text_parts) = match m.get("content") {
        None | Some(Value::Null) => {
            // Only an assistant message that calls tools may go without content.
            if !(role == Role::Assistant && has_tool_calls) {
                return Err(InvalidRequest::new(
                    "missing_required_parameter",
                    format!(
                        "`{}` is required for a {} message.",
                        at("content"),
                        role.template_name()
                    ),
                )
                .with_param(at("content")));
            }
            (String::new(), 0)
        }
        Some(Value::String(s)) => (s.clone(), 0),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            let mut other = 0;
            for (j, part) in parts.iter().enumerate() {
                let path = at(&format!("content[{j}]"));
                let Value::Object(part) = part else {
                    return Err(wrong_type(&path, "a content part object", part));
                };
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(t)) => texts.push(t.as_str()),
                        Some(v) => return Err(wrong_type(&format!("{path}.text"), "a string", v)),
                        None => {
                            return Err(InvalidRequest::new(
                                "missing_required_parameter",
                                format!("`{path}.text` is required for a text part."),
                            )
                            .with_param(format!("{path}.text")));
                        }
                    },
                    Some("image_url" | "input_audio" | "file" | "refusal") => other += 1,
                    Some(t) => {
                        return Err(bad_value(
                            &format!("{path}.type"),
                            format!("`{path}.type` {t:?} is not a known content part type."),
                        ));
                    }
                    None => {
                        return Err(InvalidRequest::new(
                            "missing_required_parameter",
                            format!("`{path}.type` is required."),
                        )
                        .with_param(format!("{path}.type")));
                    }
                }
            }
            (texts.join("\n"), other)
        }
        Some(other) => {
            return Err(wrong_type(
                &at("content"),
                "a string or an array of content parts",
                other,
            ));
        }
    };
    if role == Role::Tool && !matches!(m.get("tool_call_id"), Some(Value::String(_))) {
        return Err(InvalidRequest::new(
            "missing_required_parameter",
            format!(
                "`{}` (a string) is required for a tool message.",
                at("tool_call_id")
            ),
        )
        .with_param(at("tool_call_id")));
    }
    if let Some(name) = m.get("name")
        && !name.is_string()
        && !name.is_null()
    {
        return Err(wrong_type(&at("name"), "a string", name));
    }
    Ok(Message {
        role,
        text,
        non_text_parts,
        has_tool_calls,
    })
}

fn check_tool_call(path: &str, call: &Value) -> Result<(), InvalidRequest> {
    let Value::Object(call) = call else {
        return Err(wrong_type(path, "an object", call));
    };
    match call.get("function") {
        Some(Value::Object(f)) => {
            if !matches!(f.get("name"), Some(Value::String(_))) {
                return Err(bad_value(
                    &format!("{path}.function.name"),
                    format!("`{path}.function.name` must be a string."),
                ));
            }
            match f.get("arguments") {
                Some(Value::String(_)) => Ok(()),
                _ => Err(bad_value(
                    &format!("{path}.function.arguments"),
                    format!("`{path}.function.arguments` must be a string (JSON text)."),
                )),
            }
        }
        // Custom tool calls carry `custom` instead; the backend checks them.
        _ if call.contains_key("custom") => Ok(()),
        Some(other) => Err(wrong_type(&format!("{path}.function"), "an object", other)),
        None => Err(bad_value(
            &format!("{path}.function"),
            format!("`{path}.function` is required."),
        )),
    }
}

fn check_tool(i: usize, tool: &Value) -> Result<(), InvalidRequest> {
    let path = format!("tools[{i}]");
    let Value::Object(tool) = tool else {
        return Err(wrong_type(&path, "an object", tool));
    };
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => match tool.get("function") {
            Some(Value::Object(f)) if matches!(f.get("name"), Some(Value::String(n)) if !n.is_empty()) => {
                Ok(())
            }
            _ => Err(bad_value(
                &format!("{path}.function.name"),
                format!("`{path}.function.name` (a non-empty string) is required."),
            )),
        },
        Some(_) => Ok(()),
        None => Err(bad_value(
            &format!("{path}.type"),
            format!("`{path}.type` is required."),
        )),
    }
}

/// Fields a backend that only generates text cannot honour when set; refusing them is better than
/// ignoring them silently.
pub fn text_only_conflicts(request: &ChatRequest) -> Option<(&'static str, String)> {
    if request.has_tools {
        return Some(("tools", "tools are".into()));
    }
    if request.messages.iter().any(|m| m.non_text_parts > 0) {
        return Some(("messages", "image, audio and file content parts are".into()));
    }
    let b = &request.body;
    let set = |k: &str| b.get(k).is_some_and(|v| !v.is_null());
    if let Some(Value::Object(f)) = b.get("response_format")
        && f.get("type").and_then(Value::as_str) != Some("text")
    {
        return Some((
            "response_format",
            "structured output (`response_format`) is".into(),
        ));
    }
    if b.get("logprobs").and_then(Value::as_bool) == Some(true) {
        return Some(("logprobs", "`logprobs` are".into()));
    }
    for key in ["frequency_penalty", "presence_penalty"] {
        if b.get(key).and_then(Value::as_f64).is_some_and(|v| v != 0.0) {
            return Some((key, format!("`{key}` is")));
        }
    }
    if b.get("logit_bias")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return Some(("logit_bias", "`logit_bias` is".into()));
    }
    for key in ["audio", "prediction", "web_search_options"] {
        if set(key) {
            return Some((key, format!("`{key}` is")));
        }
    }
    None
}

#[cfg(test)]
mod tests;
