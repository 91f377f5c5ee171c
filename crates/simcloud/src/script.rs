//! Test controls: the script of upcoming outcomes and the record of requests received.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// What one chat request (on any of the APIs) does instead of (or before) answering normally. `{}` answers
/// normally. The fields apply in this order: `delay_ms`, then `hang`, then `status`, then
/// `stall_after_chunks`. Embeddings requests take steps too, and play `delay_ms`, `hang` and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    /// Answer with this HTTP status (400 to 599) and an OpenAI-shaped error, code `sim_scripted`: type
    /// `rate_limit_error` for 429, `server_error` for 5xx, `invalid_request_error` otherwise. On
    /// `/v1/messages` the error has Anthropic's shape, its type following the status (`overloaded_error` for
    /// 529, `api_error` for other 5xx, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// With `status`: send `Retry-After` with this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// With `status`: the error message [default: "scripted error"].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Never answer; wait until the client goes away (or the server shuts down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
    /// Streamed: send this many events (the role chunk counts; on `/v1/messages`, `message_start`,
    /// `content_block_start` and `ping` count), then neither send nor end.
    /// Not streamed: hang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_chunks: Option<u32>,
    /// Wait this long before anything else, then go on as the other fields say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Answer with the text of the last message, as received, in tokens of three bytes (so a stream cuts
    /// it mid-word); when the request calls a tool, the call's arguments give that text to each required
    /// parameter. Tests see exactly what left the gateway, and what it did with the answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
}

impl ScriptStep {
    /// A normal answer (`{}`).
    pub fn normal() -> Self {
        Self::default()
    }

    /// An error answer with this HTTP status.
    pub fn error(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }

    /// An answer that echoes the last message.
    pub fn echo() -> Self {
        Self {
            echo: true,
            ..Self::default()
        }
    }

    /// No answer at all.
    pub fn hanging() -> Self {
        Self {
            hang: true,
            ..Self::default()
        }
    }

    /// A stream that stops after `chunks` events without ending.
    pub fn stalling(chunks: u32) -> Self {
        Self {
            stall_after_chunks: Some(chunks),
            ..Self::default()
        }
    }

    /// A normal answer after `ms` milliseconds.
    pub fn delayed(ms: u64) -> Self {
        Self {
            delay_ms: Some(ms),
            ..Self::default()
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptBody {
    steps: Vec<ScriptStep>,
}

/// Parses and checks a `POST /sim/script` body.
pub(crate) fn parse_steps(body: &[u8]) -> Result<Vec<ScriptStep>, SimError> {
    let parsed: ScriptBody = serde_json::from_slice(body).map_err(|e| SimError::InvalidRequest {
        param: None,
        code: "invalid_script",
        message: format!("Invalid script: {e}. Expected {{\"steps\": [...]}}."),
    })?;
    for (i, step) in parsed.steps.iter().enumerate() {
        if let Some(status) = step.status
            && !(400..=599).contains(&status)
        {
            return Err(SimError::InvalidRequest {
                param: Some(format!("steps[{i}].status")),
                code: "invalid_value",
                message: format!("Invalid status {status}: a scripted error needs 400 to 599."),
            });
        }
    }
    Ok(parsed.steps)
}

/// One request as `GET /sim/requests` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Counts from 1 in arrival order; never reused, even after a clear.
    pub seq: u64,
    /// The path and query as received, which tell the APIs apart: `/v1/chat/completions`, `/v1/messages`,
    /// `/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21`, ... Always written; read as
    /// empty when absent, so lists saved before it existed still load.
    #[serde(default)]
    pub path: String,
    /// The JSON body as received.
    pub body: serde_json::Value,
    /// The raw `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The request's `x-request-id`, `user-agent`, `content-type`, `traceparent`, `x-api-key` (Anthropic),
    /// `api-key` (Azure) and `anthropic-version` headers, those present.
    pub headers: BTreeMap<String, String>,
}

/// Headers kept besides `Authorization`.
const KEPT_HEADERS: [&str; 7] = [
    "x-request-id",
    "user-agent",
    "content-type",
    "traceparent",
    "x-api-key",
    "api-key",
    "anthropic-version",
];

/// A recorded request as stored: shared bytes and header values, so recording costs no parsing or copying.
#[derive(Clone)]
pub(crate) struct Record {
    pub seq: u64,
    /// The request's URI (shared bytes, like the body).
    pub uri: Uri,
    pub body: Bytes,
    /// `Authorization`, then `KEPT_HEADERS` in order.
    pub headers: [Option<HeaderValue>; 8],
}

impl Record {
    pub fn capture(headers: &HeaderMap) -> [Option<HeaderValue>; 8] {
        let [a, b, c, d, e, f, g] = KEPT_HEADERS.map(|name| headers.get(name).cloned());
        [headers.get(AUTHORIZATION).cloned(), a, b, c, d, e, f, g]
    }

    pub fn into_public(self) -> RecordedRequest {
        // Only bodies that parsed as JSON are recorded, so this parse succeeds.
        let body = serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null);
        let [authorization, rest @ ..] = self.headers;
        let text = |v: HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let headers = KEPT_HEADERS
            .iter()
            .zip(rest)
            .filter_map(|(name, value)| Some(((*name).to_owned(), text(value?))))
            .collect();
        let path = self
            .uri
            .path_and_query()
            .map_or_else(|| self.uri.path(), |pq| pq.as_str())
            .to_owned();
        RecordedRequest {
            seq: self.seq,
            path,
            body,
            authorization: authorization.map(text),
            headers,
        }
    }
}
