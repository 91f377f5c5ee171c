//! Answers to `POST /v1/messages`, in the Anthropic Messages API's shapes: one `message` object with its
//! content blocks (text, and `tool_use` for each tool call), or its streamed events (`message_start`,
//! then for each block `content_block_start`, `content_block_delta` (`text_delta` or `input_json_delta`)...,
//! `content_block_stop`, then `message_delta` with the stop reason and the usage, and `message_stop`),
//! each framed as `event: TYPE` and `data: JSON`. An answer that breaks off after it started ends with an
//! `error` event, which the SDKs raise. Stop reasons: `end_turn`, `max_tokens`, `tool_use`, `refusal`.
//! An answer that came in this API's own format (a request passed on as it came to Anthropic's API) is
//! written as it came: the message, or each event.

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::sse::{Frames, serve};
use super::{Meter, next_event};
use crate::backend::{BackendError, ChatEvent, EventStream, Usage};
use crate::error::ApiError;
use crate::shed::PermitSlot;

/// What the answer is called.
#[derive(Debug, Clone)]
pub struct MessageShape {
    /// `msg_...`
    pub id: String,
    /// The model that served.
    pub model: String,
    /// The prompt's tokens as estimated at intake, for `message_start` (the exact count comes with
    /// `message_delta`, as the Messages API allows).
    pub input_estimate: u64,
}

/// One piece of an answer, whatever the backend's shape.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    /// A tool call starts: its index among the answer's calls, id and name.
    ToolStart {
        index: u64,
        id: String,
        name: String,
    },
    /// More of a tool call's arguments (JSON text).
    ToolArgs {
        index: u64,
        json: String,
    },
}

/// The pieces of an OpenAI chunk's delta or of a completion's message.
fn pieces(message: &Value) -> Vec<Piece> {
    let mut out = Vec::new();
    if let Some(t) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        out.push(Piece::Text(t.to_owned()));
    }
    for (position, call) in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            out.push(Piece::ToolStart {
                index,
                id: id.to_owned(),
                name: name.unwrap_or_default().to_owned(),
            });
        }
        if let Some(args) = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            out.push(Piece::ToolArgs {
                index,
                json: args.to_owned(),
            });
        }
    }
    out
}

fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn error_event(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": e.anthropic_kind(), "message": e.message, "code": e.code}})
}

/// A tool call's arguments as the `input` object; a provider's malformed JSON fails the answer.
fn tool_input(args: &str) -> Result<Value, BackendError> {
    if args.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(BackendError::Failed(
            "the backend's tool call arguments are not a JSON object".into(),
        )),
    }
}

/// Reads a whole answer and returns it as one `message` object.
pub async fn collect(
    mut events: EventStream,
    shape: MessageShape,
    ledger: &mut dyn Meter,
    deadline: Instant,
) -> Response {
    // Blocks in order: text, or a tool call (index, id, name, arguments so far).
    enum Block {
        Text(String),
        Tool(u64, String, String, String),
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut native: Option<Value> = None;
    let fail = |ledger: &mut dyn Meter, e: BackendError| {
        let error = ApiError::from(&e);
        ledger.failed(error.status.as_u16(), error.code, e.member_fault());
        error.into_response()
    };
    loop {
        let found = match next_event(&mut events, deadline).await {
            Ok(ChatEvent::Text(t)) => vec![Piece::Text(t)],
            Ok(ChatEvent::Chunk(c)) => c.pointer("/choices/0/delta").map(pieces).unwrap_or_default(),
            Ok(ChatEvent::Completion(c)) => c.pointer("/choices/0/message").map(pieces).unwrap_or_default(),
            Ok(ChatEvent::Native { kind, data }) => {
                if kind == "message" {
                    ledger.token();
                    native = Some(data);
                }
                Vec::new()
            }
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                if let Some(message) = native {
                    ledger.finished(usage);
                    return axum::Json(message).into_response();
                }
                let mut content = Vec::new();
                for b in blocks {
                    content.push(match b {
                        Block::Text(t) => json!({"type": "text", "text": t}),
                        Block::Tool(_, id, name, args) => match tool_input(&args) {
                            Ok(input) => json!({"type": "tool_use", "id": id, "name": name, "input": input}),
                            Err(e) => return fail(ledger, e),
                        },
                    });
                }
                ledger.finished(usage);
                return axum::Json(json!({
                    "id": shape.id,
                    "type": "message",
                    "role": "assistant",
                    "model": shape.model,
                    "content": content,
                    "stop_reason": stop_reason(&finish_reason),
                    "stop_sequence": null,
                    "usage": usage_json(usage),
                }))
                .into_response();
            }
            Err(e) => return fail(ledger, e),
        };
        for piece in found {
            ledger.token();
            match piece {
                Piece::Text(t) => match blocks.last_mut() {
                    Some(Block::Text(s)) => s.push_str(&t),
                    _ => blocks.push(Block::Text(t)),
                },
                Piece::ToolStart { index, id, name } => {
                    blocks.push(Block::Tool(index, id, name, String::new()))
                }
                Piece::ToolArgs { index, json } => {
                    if let Some(Block::Tool(_, _, _, args)) = blocks
                        .iter_mut()
                        .rev()
                        .find(|b| matches!(b, Block::Tool(i, ..) if *i == index))
                    {
                        args.push_str(&json);
                    }
                }
            }
        }
    }
}

fn usage_json(u: Usage) -> Value {
    json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens})
}

/// The block being written: text, or the tool call with this index.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Text,
    Tool(u64),
}

/// Writes an answer as the Messages API's events.
struct EventWriter {
    events: EventStream,
    shape: MessageShape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    started: bool,
    /// The answer comes in this API's own events, passed on as they are.
    native: bool,
    /// The block being written and its index.
    open: Option<(usize, Open)>,
    blocks: usize,
    done: bool,
    queue: VecDeque<Bytes>,
}

impl EventWriter {
    fn emit(&mut self, kind: &str, mut data: Value) {
        data["type"] = Value::from(kind);
        self.queue
            .push_back(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.shape.id,
            "type": "message",
            "role": "assistant",
            "model": self.shape.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": self.shape.input_estimate, "output_tokens": 0},
        });
        self.emit("message_start", json!({"message": message}));
    }

    fn close(&mut self) {
        if let Some((index, _)) = self.open.take() {
            self.emit("content_block_stop", json!({"index": index}));
        }
    }

    fn open(&mut self, kind: Open, block: Value) -> usize {
        self.close();
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, kind));
        self.emit(
            "content_block_start",
            json!({"index": index, "content_block": block}),
        );
        index
    }

    fn piece(&mut self, piece: Piece) {
        self.ledger.token();
        self.start();
        match piece {
            Piece::Text(text) => {
                let index = match self.open {
                    Some((i, Open::Text)) => i,
                    _ => self.open(Open::Text, json!({"type": "text", "text": ""})),
                };
                self.emit(
                    "content_block_delta",
                    json!({"index": index, "delta": {"type": "text_delta", "text": text}}),
                );
            }
            Piece::ToolStart { index, id, name } => {
                self.open(
                    Open::Tool(index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                );
            }
            Piece::ToolArgs { index, json } => {
                // Arguments belong to the call being written; a provider interleaving calls would have
                // them dropped, so they go to the open call's block only when it is theirs.
                if let Some((block, Open::Tool(i))) = self.open
                    && i == index
                {
                    self.emit(
                        "content_block_delta",
                        json!({"index": block, "delta": {"type": "input_json_delta", "partial_json": json}}),
                    );
                }
            }
        }
    }

    fn push(&mut self, event: Result<ChatEvent, BackendError>) {
        let found = match event {
            Ok(ChatEvent::Text(t)) => vec![Piece::Text(t)],
            Ok(ChatEvent::Chunk(c)) => c.pointer("/choices/0/delta").map(pieces).unwrap_or_default(),
            Ok(ChatEvent::Completion(c)) => c.pointer("/choices/0/message").map(pieces).unwrap_or_default(),
            Ok(ChatEvent::Native { kind, data }) => {
                if kind == "content_block_delta" {
                    self.ledger.token();
                }
                self.started = true;
                self.native = true;
                self.queue
                    .push_back(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
                return;
            }
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                self.done = true;
                self.ledger.finished(usage);
                if self.native {
                    // The native events carried their own ending.
                    return;
                }
                self.start();
                self.close();
                self.emit(
                    "message_delta",
                    json!({
                        "delta": {"stop_reason": stop_reason(&finish_reason), "stop_sequence": null},
                        "usage": usage_json(usage),
                    }),
                );
                self.emit("message_stop", json!({}));
                return;
            }
            Err(e) => {
                self.done = true;
                let error = ApiError::from(&e);
                self.ledger
                    .failed(error.status.as_u16(), error.code, e.member_fault());
                tracing::info!(backend = %self.ledger.member(), error = %e, "answer broke off mid-stream");
                self.emit("error", error_event(&error));
                return;
            }
        };
        for piece in found {
            self.piece(piece);
        }
    }
}

impl Frames for EventWriter {
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.queue.pop_front() {
                return Some(f);
            }
            if self.done {
                return None;
            }
            let event = next_event(&mut self.events, self.deadline).await;
            self.push(event);
        }
    }

    fn meter(&mut self) -> &mut dyn Meter {
        &mut *self.ledger
    }
}

/// Streams an answer as the Messages API's server-sent events.
pub fn stream(
    events: EventStream,
    shape: MessageShape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    permit: Option<PermitSlot>,
) -> Response {
    let writer = EventWriter {
        events,
        shape,
        ledger,
        deadline,
        started: false,
        native: false,
        open: None,
        blocks: 0,
        done: false,
        queue: VecDeque::new(),
    };
    serve(writer, deadline, permit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn chunks_and_completions_become_pieces() {
        let delta = json!({"tool_calls": [{"index": 1, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]});
        assert_eq!(
            pieces(&delta),
            vec![
                Piece::ToolStart {
                    index: 1,
                    id: "call_9".into(),
                    name: "f".into()
                },
                Piece::ToolArgs {
                    index: 1,
                    json: "{\"a\"".into()
                },
            ]
        );
        assert_eq!(pieces(&json!({"content": "Hi"})), vec![Piece::Text("Hi".into())]);
        assert_eq!(pieces(&json!({"content": ""})), vec![]);
        assert_eq!(stop_reason("length"), "max_tokens");
        assert_eq!(stop_reason("tool_calls"), "tool_use");
        assert_eq!(stop_reason("stop"), "end_turn");
        assert!(tool_input("[1]").is_err());
        assert_eq!(tool_input("").expect("empty"), json!({}));
    }
}
