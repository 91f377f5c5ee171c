//! The mapping to and from `sluice.worker.v1`: a [`ChatRequest`] as a `GenerateRequest`, the `Generate`
//! call up to its first event, the worker's events as [`ChatEvent`]s, and refusals and statuses as
//! [`BackendError`]s and words.
//!
//! It never chooses a worker or retries on another (the pool does), and never touches HTTP types.

use std::sync::Arc;
use tracing::Instrument as _;

use futures_util::StreamExt;
use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tokio::time::Instant;
use tonic::{Code, Status};

use super::config::PoolConfig;
use super::worker::Worker;
use crate::api::ChatRequest;
use crate::backend::{BackendError, ChatEvent, DispatchContext, EventStream, InFlight, Usage, with_causes};

pub(super) fn rejected(message: &str) -> BackendError {
    let code = if message.contains("context window") {
        "context_length_exceeded"
    } else {
        "invalid_value"
    };
    BackendError::Rejected {
        message: message.to_owned(),
        code,
    }
}

/// A status in words, with the transport's reason when the call never reached the worker.
pub(super) fn describe(status: &Status) -> String {
    with_causes(format!("{:?}: {}", status.code(), status.message()), status)
}

pub(super) fn generate_request(request: &ChatRequest, context: &DispatchContext) -> v1::GenerateRequest {
    v1::GenerateRequest {
        request_id: context.request_id.clone(),
        model: request.model.clone(),
        messages: request
            .messages
            .iter()
            .map(|m| v1::ChatMessage {
                role: m.role.template_name().to_owned(),
                content: m.text.clone(),
            })
            .collect(),
        sampling: Some(v1::SamplingParams {
            // OpenAI's defaults: temperature 1, top_p 1.
            temperature: request.temperature.unwrap_or(1.0),
            top_p: request.top_p.unwrap_or(1.0),
            top_k: 0,
            seed: request.seed.map(|s| s as u64),
        }),
        stopping: Some(v1::StoppingParams {
            max_tokens: request.max_tokens.unwrap_or(0),
            stop: request.stop.clone(),
            ignore_eos: false,
        }),
    }
}

/// Calls `Generate` and waits for its first event (`Started`), so that refusals are known before the
/// client gets an answer.
pub(super) async fn start(
    worker: &Worker,
    message: v1::GenerateRequest,
    deadline: Instant,
    span: &tracing::Span,
) -> Result<(v1::GenerateEvent, tonic::Streaming<v1::GenerateEvent>), Status> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded("the request's deadline passed"));
    }
    let mut call = tonic::Request::new(message);
    call.set_timeout(remaining);
    sluice_telemetry::propagation::inject_metadata(span, call.metadata_mut());
    let mut client = WorkerClient::new(worker.channel.clone());
    let first = async {
        let mut stream = client.generate(call).await?.into_inner();
        match stream.message().await? {
            Some(event) => Ok((event, stream)),
            None => Err(Status::unavailable(
                "the worker closed the stream before it started",
            )),
        }
    };
    match tokio::time::timeout_at(deadline, first.instrument(span.clone())).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("the request's deadline passed")),
    }
}

/// Turns the worker's events into [`ChatEvent`]s. The stream ends after `Finished` or the first error;
/// a stream that ends without `Finished` is an interruption.
pub(super) fn events_of(
    worker: Arc<Worker>,
    in_flight: InFlight,
    (first, stream): (v1::GenerateEvent, tonic::Streaming<v1::GenerateEvent>),
    config: PoolConfig,
    span: tracing::Span,
) -> EventStream {
    struct State {
        /// The call's span, entered while the stream is polled (a span ends at its last exit).
        span: tracing::Span,
        stream: tonic::Streaming<v1::GenerateEvent>,
        pending: Option<v1::GenerateEvent>,
        done: bool,
        worker: Arc<Worker>,
        _in_flight: InFlight,
        config: PoolConfig,
    }
    let state = State {
        span,
        stream,
        pending: Some(first),
        done: false,
        worker,
        _in_flight: in_flight,
        config,
    };
    futures_util::stream::unfold(state, |mut s| {
        let span = s.span.clone();
        async move {
            loop {
                if s.done {
                    return None;
                }
                let event = match s.pending.take() {
                    Some(e) => Ok(Some(e)),
                    None => s.stream.message().await,
                };
                let worker = &s.worker;
                let item = match event {
                    Ok(Some(v1::GenerateEvent { event: Some(e) })) => match e {
                        v1::generate_event::Event::Started(_) => continue,
                        v1::generate_event::Event::Delta(d) if d.text.is_empty() => continue,
                        v1::generate_event::Event::Delta(d) => Ok(ChatEvent::Text(d.text)),
                        v1::generate_event::Event::Finished(f) => {
                            s.done = true;
                            let finish_reason = match f.finish_reason() {
                                v1::FinishReason::Length => "length",
                                _ => "stop",
                            };
                            Ok(ChatEvent::Finished {
                                finish_reason: finish_reason.to_owned(),
                                // A worker always reports usage; one that did not is taken at its word.
                                usage: f
                                    .usage
                                    .map(|u| Usage {
                                        prompt_tokens: u64::from(u.prompt_tokens),
                                        completion_tokens: u64::from(u.completion_tokens),
                                    })
                                    .unwrap_or_default(),
                            })
                        }
                    },
                    Ok(Some(v1::GenerateEvent { event: None })) => continue,
                    Ok(None) => {
                        s.done = true;
                        Err(BackendError::Interrupted(format!(
                            "worker {} ended the answer without finishing it",
                            worker.name
                        )))
                    }
                    Err(status) => {
                        s.done = true;
                        match status.code() {
                            Code::DeadlineExceeded => Err(BackendError::Timeout(format!(
                                "worker {}: {}",
                                worker.name,
                                status.message()
                            ))),
                            _ => {
                                let why = describe(&status);
                                worker.record_failure(&why, &s.config);
                                Err(BackendError::Interrupted(format!(
                                    "worker {} failed mid-answer: {why}",
                                    worker.name
                                )))
                            }
                        }
                    }
                };
                return Some((item, s));
            }
        }
        .instrument(span)
    })
    .boxed()
}
