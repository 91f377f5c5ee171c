//! Answers to `POST /v1/responses`, in the Responses API's shapes: one `response` object with one
//! assistant message of `output_text`, or its streamed events (`response.created`, `response.in_progress`,
//! `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`...,
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`, then
//! `response.completed`, or `response.incomplete` when the answer hit `max_output_tokens`), each framed as
//! `event: TYPE` and `data: JSON` with a `sequence_number`. An answer that breaks off after it started ends
//! with an `error` event, which the SDKs raise. Nothing is stored: `store` is always false.

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::sse::{Frames, serve};
use super::{Meter, next_event};
use crate::api::responses::ResponseOptions;
use crate::backend::{BackendError, ChatEvent, EventStream, Usage};
use crate::error::ApiError;
use crate::shed::PermitSlot;

/// What the answer is called and echoes.
#[derive(Debug, Clone)]
pub struct ResponseShape {
    /// `resp_...`
    pub id: String,
    /// `msg_...`, the assistant message's id.
    pub message_id: String,
    pub created_at: u64,
    pub model: String,
    pub options: ResponseOptions,
}

/// The answer's events as text: an OpenAI-compatible backend's chunks and completions are read for the
/// text they carry; the rest passes as it is.
pub fn text_events(events: EventStream) -> EventStream {
    events
        .filter_map(|e| async move {
            match e {
                Ok(ChatEvent::Chunk(c)) => c
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(|t| Ok(ChatEvent::Text(t.to_owned()))),
                Ok(ChatEvent::Completion(v)) => Some(Ok(ChatEvent::Text(
                    v.pointer("/choices/0/message/content")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ))),
                other => Some(other),
            }
        })
        .boxed()
}

fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

impl ResponseShape {
    fn message(&self, status: &str, text: Option<&str>) -> Value {
        json!({
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": text.map_or_else(|| json!([]), |t| json!([text_part(t)])),
        })
    }

    /// The `response` object: `in_progress` with no output yet, or ended with the message and the usage.
    fn response(&self, end: Option<(&str, Usage, bool)>) -> Value {
        let o = &self.options;
        let (status, output, usage, incomplete) = match end {
            None => ("in_progress", json!([]), Value::Null, Value::Null),
            Some((text, usage, cut)) => (
                if cut { "incomplete" } else { "completed" },
                json!([self.message("completed", Some(text))]),
                usage_json(usage),
                if cut {
                    json!({"reason": "max_output_tokens"})
                } else {
                    Value::Null
                },
            ),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": o.instructions,
            "max_output_tokens": o.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": false,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "truncation": "disabled",
            "user": o.user,
            "metadata": o.metadata,
            "usage": usage,
        })
    }
}

/// Reads a whole answer (from [`text_events`]) and returns it as one `response` object.
pub async fn collect(
    mut events: EventStream,
    shape: ResponseShape,
    ledger: &mut dyn Meter,
    deadline: Instant,
) -> Response {
    let mut text = String::new();
    loop {
        match next_event(&mut events, deadline).await {
            Ok(ChatEvent::Text(t)) => {
                ledger.token();
                text.push_str(&t);
            }
            Ok(ChatEvent::Chunk(_) | ChatEvent::Completion(_) | ChatEvent::Native { .. }) => {}
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                ledger.finished(usage);
                let body = shape.response(Some((&text, usage, finish_reason == "length")));
                return axum::Json(body).into_response();
            }
            Err(e) => {
                let error = ApiError::from(&e);
                ledger.failed(error.status.as_u16(), error.code, e.member_fault());
                return error.into_response();
            }
        }
    }
}

/// Writes an answer (from [`text_events`]) as the Responses API's events.
struct EventWriter {
    events: EventStream,
    shape: ResponseShape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    sequence: u64,
    text: String,
    started: bool,
    done: bool,
    queue: VecDeque<Bytes>,
}

impl EventWriter {
    fn emit(&mut self, kind: &str, mut data: Value) {
        data["type"] = Value::from(kind);
        data["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        self.queue
            .push_back(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    fn start(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.shape.response(None);
        self.emit("response.created", json!({"response": response}));
        self.emit("response.in_progress", json!({"response": response}));
        let item = self.shape.message("in_progress", None);
        self.emit(
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        );
        let id = self.shape.message_id.clone();
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": 0, "content_index": 0, "part": text_part("")}),
        );
    }

    fn push(&mut self, event: Result<ChatEvent, BackendError>) {
        let id = self.shape.message_id.clone();
        match event {
            Ok(ChatEvent::Text(t)) => {
                self.ledger.token();
                self.start();
                self.text.push_str(&t);
                self.emit(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
                );
            }
            Ok(ChatEvent::Chunk(_) | ChatEvent::Completion(_) | ChatEvent::Native { .. }) => {}
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                self.done = true;
                self.ledger.finished(usage);
                self.start();
                let text = std::mem::take(&mut self.text);
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": 0, "content_index": 0, "part": text_part(&text)}),
                );
                let item = self.shape.message("completed", Some(&text));
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item}),
                );
                let cut = finish_reason == "length";
                let response = self.shape.response(Some((&text, usage, cut)));
                let kind = if cut {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.emit(kind, json!({"response": response}));
            }
            Err(e) => {
                self.done = true;
                let error = ApiError::from(&e);
                self.ledger
                    .failed(error.status.as_u16(), error.code, e.member_fault());
                tracing::info!(backend = %self.ledger.member(), error = %e, "answer broke off mid-stream");
                let body = error.body();
                let inner = body.get("error").cloned().unwrap_or(Value::Null);
                self.emit(
                    "error",
                    json!({
                        "code": inner.get("code"),
                        "message": inner.get("message"),
                        "param": inner.get("param"),
                        "error": inner,
                    }),
                );
            }
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

/// Streams an answer (from [`text_events`]) as the Responses API's server-sent events.
pub fn stream(
    events: EventStream,
    shape: ResponseShape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    permit: Option<PermitSlot>,
) -> Response {
    let writer = EventWriter {
        events,
        shape,
        ledger,
        deadline,
        sequence: 0,
        text: String::new(),
        started: false,
        done: false,
        queue: VecDeque::new(),
    };
    serve(writer, deadline, permit)
}
