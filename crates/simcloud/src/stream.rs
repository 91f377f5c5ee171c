//! Streamed answers: server-sent events in OpenAI's chunk format, rendered one at a time as the client reads.
//!
//! The stream is a plain state machine polled by the connection, with no task of its own: when the client
//! disconnects, the connection drops the body and with it every timer and the request's in-flight guard.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::InFlight;
use crate::chat::{Answer, push_json_str};

/// Everything a stream needs to render its events.
pub(crate) struct Plan {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub prompt_tokens: u32,
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
    /// Every chunk up to `"choices":`, rendered once.
    head: String,
    /// Events of the answer itself: one per token, or two for a tool call.
    body_events: usize,
    /// Index of the next event.
    next: usize,
    /// When the first token went, for pacing the rest.
    paced_from: Option<Instant>,
    closing: watch::Receiver<bool>,
    done: bool,
    _guard: InFlight,
}

pub(crate) fn response(plan: Plan, closing: watch::Receiver<bool>, guard: InFlight) -> Response {
    let mut head = String::with_capacity(160 + plan.model.len());
    head.push_str("data: {\"id\":");
    push_json_str(&mut head, &plan.id);
    head.push_str(",\"object\":\"chat.completion.chunk\",\"created\":");
    head.push_str(&plan.created.to_string());
    head.push_str(",\"model\":");
    push_json_str(&mut head, &plan.model);
    head.push_str(",\"system_fingerprint\":\"sluice-sim\",\"choices\":");
    let body_events = match &plan.answer {
        Answer::Text { ends, .. } => ends.len(),
        Answer::Tool { .. } => 2,
    };
    let state = State {
        plan,
        head,
        body_events,
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

/// Waits for token `index`'s turn: `index` gaps of `interval` after `from`, when the first token went.
pub(crate) async fn pace(interval: Option<Duration>, from: Option<Instant>, index: usize) {
    let (Some(interval), Some(from)) = (interval, from) else {
        return;
    };
    let Some(offset) = u32::try_from(index).ok().and_then(|i| interval.checked_mul(i)) else {
        return;
    };
    tokio::time::sleep_until(crate::chat::later(from, offset)).await;
}

/// Events in order: the role chunk, the answer's chunks, the finish chunk, the usage chunk when asked for,
/// then `[DONE]`.
async fn next_event(mut state: State) -> Option<(Result<Bytes, std::io::Error>, State)> {
    if state.done {
        return None;
    }
    let usage_events = usize::from(state.plan.include_usage);
    let total = 1 + state.body_events + 1 + usage_events + 1;
    let finished = state.next >= total;
    if finished && state.plan.stall.is_none() {
        return None;
    }
    if finished || state.plan.stall.is_some_and(|n| state.next >= n) {
        // Stalled (a stall set beyond the last event still leaves the body open). It never ends by itself:
        // wait for shutdown, then break the connection rather than end the body cleanly, as a cloud that
        // went away would.
        crate::closing(state.closing.clone()).await;
        state.done = true;
        return Some((Err(std::io::Error::other("simulator shutting down")), state));
    }

    let event = state.next;
    state.next += 1;
    if event == 0 {
        if let Some(first_at) = state.plan.first_at {
            tokio::time::sleep_until(first_at).await;
        }
        state.paced_from = Some(Instant::now());
        let chunk = state.choice_chunk(|s| s.push_str("{\"role\":\"assistant\",\"content\":\"\"}"), None);
        return Some((Ok(chunk), state));
    }
    let chunk = if event <= state.body_events {
        let index = event - 1;
        state.pace(index).await;
        state.body_chunk(index)
    } else if event == state.body_events + 1 {
        let finish_reason = state.plan.answer.finish_reason();
        state.choice_chunk(|s| s.push_str("{}"), Some(finish_reason))
    } else if usage_events == 1 && event == state.body_events + 2 {
        state.usage_chunk()
    } else {
        Bytes::from_static(b"data: [DONE]\n\n")
    };
    Some((Ok(chunk), state))
}

impl State {
    /// Waits for token `index`'s turn at the configured rate.
    async fn pace(&self, index: usize) {
        pace(self.plan.interval, self.paced_from, index).await;
    }

    fn body_chunk(&self, index: usize) -> Bytes {
        match &self.plan.answer {
            Answer::Text { text, ends, .. } => {
                let start = index
                    .checked_sub(1)
                    .and_then(|i| ends.get(i))
                    .copied()
                    .unwrap_or(0);
                let end = ends.get(index).copied().unwrap_or(text.len());
                let token = text.get(start..end).unwrap_or_default();
                self.choice_chunk(
                    |s| {
                        s.push_str("{\"content\":");
                        push_json_str(s, token);
                        s.push('}');
                    },
                    None,
                )
            }
            Answer::Tool { id, name, .. } if index == 0 => self.choice_chunk(
                |s| {
                    s.push_str("{\"tool_calls\":[{\"index\":0,\"id\":");
                    push_json_str(s, id);
                    s.push_str(",\"type\":\"function\",\"function\":{\"name\":");
                    push_json_str(s, name);
                    s.push_str(",\"arguments\":\"\"}}]}");
                },
                None,
            ),
            Answer::Tool { arguments, .. } => self.choice_chunk(
                |s| {
                    s.push_str("{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":");
                    push_json_str(s, arguments);
                    s.push_str("}}]}");
                },
                None,
            ),
        }
    }

    /// A chunk with one choice whose delta `write_delta` writes.
    fn choice_chunk(&self, write_delta: impl FnOnce(&mut String), finish_reason: Option<&str>) -> Bytes {
        let mut s = String::with_capacity(self.head.len() + 128);
        s.push_str(&self.head);
        s.push_str("[{\"index\":0,\"delta\":");
        write_delta(&mut s);
        s.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(reason) => push_json_str(&mut s, reason),
            None => s.push_str("null"),
        }
        s.push_str("}]");
        if self.plan.include_usage {
            s.push_str(",\"usage\":null");
        }
        s.push_str("}\n\n");
        Bytes::from(s)
    }

    fn usage_chunk(&self) -> Bytes {
        let prompt = self.plan.prompt_tokens;
        let completion = self.plan.answer.completion_tokens();
        let total = u64::from(prompt) + u64::from(completion);
        let mut s = String::with_capacity(self.head.len() + 96);
        s.push_str(&self.head);
        s.push_str(&format!(
            "[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\
             \"total_tokens\":{total}}}}}\n\n"
        ));
        Bytes::from(s)
    }
}
