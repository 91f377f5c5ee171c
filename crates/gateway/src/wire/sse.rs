//! An answer as OpenAI server-sent events, ending with `data: [DONE]`, or with an error event
//! (`data: {"error": {...}}`, which the SDKs raise) when the answer breaks off.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Meter, Shape, next_event};
use crate::backend::{BackendError, ChatEvent, EventStream};
use crate::error::ApiError;
use crate::shed::PermitSlot;

/// Frames written ahead of a slow reader before the producer waits for it.
const SSE_BUFFER: usize = 32;

/// One server-sent event.
fn frame(data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 8);
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

/// Writes an answer's events as server-sent event frames.
struct SseWriter {
    events: EventStream,
    shape: Shape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    /// The role chunk went out (answers built here).
    started: bool,
    /// The backend sends whole chunks that carry their own ending (an OpenAI-compatible API).
    passing_chunks: bool,
    done: bool,
    queue: VecDeque<Bytes>,
}

impl SseWriter {
    /// The next frame, or `None` after the last.
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

    fn role_chunk(&mut self) {
        if !self.started {
            self.started = true;
            let first = self
                .shape
                .chunk(json!({"role": "assistant", "content": ""}), None);
            self.queue.push_back(frame(&first.to_string()));
        }
    }

    fn push(&mut self, event: Result<ChatEvent, BackendError>) {
        match event {
            Ok(ChatEvent::Text(t)) => {
                self.ledger.token();
                self.role_chunk();
                let chunk = self.shape.chunk(json!({"content": t}), None);
                self.queue.push_back(frame(&chunk.to_string()));
            }
            Ok(ChatEvent::Chunk(mut c)) => {
                if !self.passing_chunks {
                    // The usage chunk that ends the answer speaks for the upstream's chunks, which
                    // share one id, creation time and model.
                    self.passing_chunks = true;
                    for (key, field) in [("id", &mut self.shape.id), ("model", &mut self.shape.model)] {
                        if let Some(v) = c.get(key).and_then(Value::as_str) {
                            v.clone_into(field);
                        }
                    }
                    if let Some(created) = c.get("created").and_then(Value::as_u64) {
                        self.shape.created = created;
                    }
                }
                if c.pointer("/choices/0/delta/content")
                    .is_some_and(Value::is_string)
                {
                    self.ledger.token();
                }
                if self.shape.include_usage
                    && let Value::Object(o) = &mut c
                {
                    o.insert("usage".into(), Value::Null);
                }
                self.queue.push_back(frame(&c.to_string()));
            }
            Ok(ChatEvent::Completion(_) | ChatEvent::Native { .. }) => {}
            Ok(ChatEvent::Finished { finish_reason, usage }) => {
                self.done = true;
                self.ledger.finished(usage);
                // Chunks from an OpenAI-compatible backend carry their own ending; a worker's text does not.
                if !self.passing_chunks {
                    self.role_chunk();
                    let last = self.shape.chunk(json!({}), Some(&finish_reason));
                    self.queue.push_back(frame(&last.to_string()));
                }
                if self.shape.include_usage {
                    self.queue
                        .push_back(frame(&self.shape.usage_chunk(usage).to_string()));
                }
                self.queue.push_back(frame("[DONE]"));
            }
            Err(e) => {
                self.done = true;
                let error = ApiError::from(&e);
                self.ledger
                    .failed(error.status.as_u16(), error.code, e.member_fault());
                tracing::info!(backend = %self.ledger.member(), error = %e, "answer broke off mid-stream");
                self.queue.push_back(frame(&error.body().to_string()));
            }
        }
    }
}

/// A source of server-sent event frames for [`serve`]: an answer's writer, in one of the APIs' shapes.
pub(super) trait Frames: Send + 'static {
    /// The next frame, or `None` after the last.
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send;
    /// The answer's ledger.
    fn meter(&mut self) -> &mut dyn Meter;
}

impl Frames for SseWriter {
    fn next_frame(&mut self) -> impl std::future::Future<Output = Option<Bytes>> + Send {
        SseWriter::next_frame(self)
    }
    fn meter(&mut self) -> &mut dyn Meter {
        &mut *self.ledger
    }
}

/// Streams an answer as server-sent events.
///
/// A task of its own reads the backend and writes frames into a small buffer that the response body
/// drains. It ends when the answer does, when the client goes away, or at the request's deadline if the
/// client stops reading; then it drops the backend stream (the worker frees the slot) and gives back the
/// in-flight permit, even while a stalled connection stays open.
pub fn stream(
    events: EventStream,
    shape: Shape,
    ledger: Box<dyn Meter>,
    deadline: Instant,
    permit: Option<PermitSlot>,
) -> Response {
    let writer = SseWriter {
        events,
        shape,
        ledger,
        deadline,
        started: false,
        passing_chunks: false,
        done: false,
        queue: VecDeque::new(),
    };
    serve(writer, deadline, permit)
}

/// Serves a writer's frames as `text/event-stream`, as [`stream`] describes.
pub(super) fn serve(mut writer: impl Frames, deadline: Instant, permit: Option<PermitSlot>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(SSE_BUFFER);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                f = writer.next_frame() => f,
                () = tx.closed() => break,
            };
            let Some(f) = next else { break };
            match tokio::time::timeout_at(deadline, tx.send(f)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    let meter = writer.meter();
                    meter.client_stalled();
                    tracing::info!(backend = %meter.member(), "client stopped reading; answer ended at the deadline");
                    break;
                }
            }
        }
        if let Some(p) = permit {
            p.release();
        }
    });
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
