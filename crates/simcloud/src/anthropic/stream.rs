//! Streamed messages: server-sent events in Anthropic's format (`event: NAME\ndata: JSON\n\n`), rendered one
//! at a time as the client reads, with no task of their own (as chat streams are: a departed client drops
//! the body, its timers and its in-flight guard).
//!
//! Events in order: `message_start`, `content_block_start`, `ping`, one `content_block_delta` per token (a
//! `text_delta`; for a tool call, an `input_json_delta` per piece of the input's JSON), `content_block_stop`,
//! `message_delta` (stop reason and output tokens), `message_stop`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::InFlight;
use crate::chat::{Answer, push_json_str};

/// Bytes of a tool call's input JSON per `input_json_delta` event.
const JSON_PIECE_BYTES: usize = 10;

/// Events before the deltas: `message_start`, `content_block_start`, `ping`.
const HEAD_EVENTS: usize = 3;

/// Everything a stream needs to render its events.
pub(crate) struct Plan {
    pub id: String,
    pub model: String,
    pub input_tokens: u32,
    pub answer: Answer,
    /// Events to send before stalling for good.
    pub stall: Option<usize>,
    /// When the first event may go; `None` for at once.
    pub first_at: Option<Instant>,
    /// Gap between token events.
    pub interval: Option<Duration>,
}

struct State {
    plan: Plan,
    /// Byte offset where each delta ends, in the answer's text or the tool call's arguments.
    ends: Vec<usize>,
    /// Index of the next event.
    next: usize,
    /// When the first event went, for pacing the tokens.
    paced_from: Option<Instant>,
    closing: watch::Receiver<bool>,
    done: bool,
    _guard: InFlight,
}

pub(crate) fn response(plan: Plan, closing: watch::Receiver<bool>, guard: InFlight) -> Response {
    let ends = match &plan.answer {
        Answer::Text { ends, .. } => ends.clone(),
        Answer::Tool { arguments, .. } => pieces(arguments, JSON_PIECE_BYTES),
    };
    let state = State {
        plan,
        ends,
        next: 0,
        paced_from: None,
        closing,
        done: false,
        _guard: guard,
    };
    let body = Body::from_stream(futures_util::stream::unfold(state, next_event));
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Where each piece of about `size` bytes of `text` ends, on character boundaries.
fn pieces(text: &str, size: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(text.len() / size + 1);
    let mut at = 0;
    while at < text.len() {
        at = (at + size).min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        ends.push(at);
    }
    ends
}

async fn next_event(mut state: State) -> Option<(Result<Bytes, std::io::Error>, State)> {
    if state.done {
        return None;
    }
    let deltas = state.ends.len();
    let total = HEAD_EVENTS + deltas + 3;
    let finished = state.next >= total;
    if finished && state.plan.stall.is_none() {
        return None;
    }
    if finished || state.plan.stall.is_some_and(|n| state.next >= n) {
        // Stalled: as a chat stream does, wait for shutdown, then break the connection.
        crate::closing(state.closing.clone()).await;
        state.done = true;
        return Some((Err(std::io::Error::other("simulator shutting down")), state));
    }

    let event = state.next;
    state.next += 1;
    let bytes = match event {
        0 => {
            if let Some(first_at) = state.plan.first_at {
                tokio::time::sleep_until(first_at).await;
            }
            state.paced_from = Some(Instant::now());
            state.message_start()
        }
        1 => state.block_start(),
        2 => frame("ping", &json!({ "type": "ping" })),
        e if e < HEAD_EVENTS + deltas => {
            let index = e - HEAD_EVENTS;
            crate::stream::pace(state.plan.interval, state.paced_from, index).await;
            state.delta(index)
        }
        e if e == HEAD_EVENTS + deltas => frame(
            "content_block_stop",
            &json!({ "type": "content_block_stop", "index": 0 }),
        ),
        e if e == HEAD_EVENTS + deltas + 1 => {
            let (stop_reason, stop_sequence) = super::stop_reason(&state.plan.answer);
            frame(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                    "usage": { "output_tokens": state.plan.answer.completion_tokens() },
                }),
            )
        }
        _ => frame("message_stop", &json!({ "type": "message_stop" })),
    };
    Some((Ok(bytes), state))
}

/// One event: `event: NAME\ndata: JSON\n\n`.
fn frame(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl State {
    fn message_start(&self) -> Bytes {
        frame(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": self.plan.id,
                    "type": "message",
                    "role": "assistant",
                    "model": self.plan.model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": { "input_tokens": self.plan.input_tokens, "output_tokens": 1 },
                },
            }),
        )
    }

    fn block_start(&self) -> Bytes {
        let block = match &self.plan.answer {
            Answer::Text { .. } => json!({ "type": "text", "text": "" }),
            Answer::Tool { id, name, .. } => {
                json!({ "type": "tool_use", "id": id, "name": name, "input": {} })
            }
        };
        frame(
            "content_block_start",
            &json!({ "type": "content_block_start", "index": 0, "content_block": block }),
        )
    }

    /// Delta `index`, written by hand: it is the one event sent per token.
    fn delta(&self, index: usize) -> Bytes {
        let (text, kind, key) = match &self.plan.answer {
            Answer::Text { text, .. } => (text, "text_delta", "text"),
            Answer::Tool { arguments, .. } => (arguments, "input_json_delta", "partial_json"),
        };
        let start = index
            .checked_sub(1)
            .and_then(|i| self.ends.get(i))
            .copied()
            .unwrap_or(0);
        let end = self.ends.get(index).copied().unwrap_or(text.len());
        let piece = text.get(start..end).unwrap_or_default();
        let mut s = String::with_capacity(128 + piece.len());
        s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"");
        s.push_str(kind);
        s.push_str("\",\"");
        s.push_str(key);
        s.push_str("\":");
        push_json_str(&mut s, piece);
        s.push_str("}}\n\n");
        Bytes::from(s)
    }
}
