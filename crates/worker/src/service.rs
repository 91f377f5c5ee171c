//! The `sluice.worker.v1.Worker` gRPC service over the worker's state (`state`): `GetInfo`, `Generate`,
//! `WatchLoad` and `Drain` here, `Embed` in `embed`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use sluice_engine::{Event, LoadSnapshot, Message, RunError, SamplingParams, SubmitError};
use sluice_proto::v1;
use sluice_telemetry::TARGET;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::metrics::WorkerMetrics;
pub use crate::state::{Phase, WorkerIdentity, WorkerState};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct WorkerService {
    state: Arc<WorkerState>,
}

impl WorkerService {
    pub fn new(state: Arc<WorkerState>) -> Self {
        Self { state }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateEvent, Status>> + Send>>;
type LoadStream = Pin<Box<dyn Stream<Item = Result<v1::LoadReport, Status>> + Send>>;

/// The status for a refused request, and its metrics label.
pub(crate) fn submit_status(error: &SubmitError) -> (Status, &'static str) {
    let message = error.to_string();
    match error {
        SubmitError::Full { .. } => (Status::resource_exhausted(message), "resource_exhausted"),
        SubmitError::Draining => (Status::unavailable(message), "unavailable"),
        SubmitError::UnknownModel { .. } => (Status::not_found(message), "not_found"),
        SubmitError::InvalidArgument(_) => (Status::invalid_argument(message), "invalid_argument"),
    }
}

pub(crate) fn run_status(error: &RunError) -> (Status, &'static str) {
    let message = error.to_string();
    match error {
        RunError::DeadlineExceeded { .. } => (Status::deadline_exceeded(message), "deadline_exceeded"),
        RunError::Model(_) => (Status::internal(message), "internal"),
        RunError::Stopped => (Status::unavailable(message), "unavailable"),
    }
}

/// The gRPC deadline of a call, from its `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap, now: Instant) -> Result<Option<Instant>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || Status::invalid_argument("malformed grpc-timeout header");
    let text = value.to_str().map_err(|_| bad())?;
    if text.len() < 2 || text.len() > 9 {
        return Err(bad());
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    };
    Ok(Some(now + timeout))
}

fn to_engine_request(request: v1::GenerateRequest, deadline: Option<Instant>) -> sluice_engine::Request {
    let sampling = request.sampling.unwrap_or_default();
    let stopping = request.stopping.unwrap_or_default();
    sluice_engine::Request {
        request_id: request.request_id,
        model: request.model,
        messages: request
            .messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect(),
        sampling: SamplingParams {
            temperature: sampling.temperature,
            top_p: if sampling.top_p == 0.0 {
                1.0
            } else {
                sampling.top_p
            },
            top_k: sampling.top_k,
            seed: sampling.seed,
        },
        max_tokens: stopping.max_tokens,
        stop: stopping.stop,
        ignore_eos: stopping.ignore_eos,
        deadline,
    }
}

fn finished_event(f: sluice_engine::Finished) -> v1::GenerateEvent {
    let reason = match f.reason {
        sluice_engine::FinishReason::Stop => v1::FinishReason::Stop,
        sluice_engine::FinishReason::Length => v1::FinishReason::Length,
    };
    v1::GenerateEvent {
        event: Some(v1::generate_event::Event::Finished(v1::Finished {
            finish_reason: reason as i32,
            usage: Some(v1::Usage {
                prompt_tokens: f.usage.prompt_tokens,
                completion_tokens: f.usage.completion_tokens,
            }),
            timings: Some(v1::Timings {
                queue_seconds: f.timings.queue,
                prefill_seconds: f.timings.prefill,
                decode_seconds: f.timings.decode,
                time_to_first_token_seconds: f.timings.time_to_first_token,
                total_seconds: f.timings.total,
            }),
            stop_sequence: f.stop_sequence.unwrap_or_default(),
        })),
    }
}

/// Moves engine events to the gRPC stream, observing latency metrics on the way. Ends (and so cancels the
/// engine request, by dropping its receiver) when the client goes away.
async fn forward(
    mut events: mpsc::UnboundedReceiver<Event>,
    out: mpsc::Sender<Result<v1::GenerateEvent, Status>>,
    metrics: WorkerMetrics,
    trace: tracing::Span,
) {
    use v1::generate_event::Event as E;
    let mut last_token: Option<Instant> = None;
    let mut code = "cancelled";
    // The request's phases as spans of its trace: waiting for a slot, its prompt up to the first token,
    // and the tokens after it.
    let mut phase = Some(tracing::trace_span!(target: TARGET, parent: &trace, "queue"));
    loop {
        // A client that leaves while its request waits for a slot is noticed here, not only at the first
        // event: dropping `events` takes the request out of the queue.
        let event = tokio::select! {
            event = events.recv() => event,
            _ = out.closed() => break,
        };
        let Some(event) = event else {
            // The engine ended the stream without a last event (it stopped abnormally): say so.
            code = "unavailable";
            let _ = out
                .send(Err(Status::unavailable("the worker's engine stopped")))
                .await;
            break;
        };
        let message = match event {
            Event::Started {
                prompt_tokens,
                queue_seconds,
            } => {
                phase = Some(
                    tracing::trace_span!(target: TARGET, parent: &trace, "prefill", sluice.prompt_tokens = i64::from(prompt_tokens)),
                );
                trace.record("sluice.prompt_tokens", i64::from(prompt_tokens));
                Ok(v1::GenerateEvent {
                    event: Some(E::Started(v1::Started {
                        prompt_tokens,
                        queue_seconds,
                    })),
                })
            }
            Event::Delta { text, tokens } => {
                let now = Instant::now();
                if last_token.is_none() {
                    phase = Some(tracing::trace_span!(target: TARGET, parent: &trace, "decode"));
                }
                if let Some(previous) = last_token
                    && tokens > 0
                {
                    let gap = now.duration_since(previous).as_secs_f64() / f64::from(tokens);
                    for _ in 0..tokens {
                        metrics.inter_token_latency_seconds.observe(gap);
                    }
                }
                last_token = Some(now);
                Ok(v1::GenerateEvent {
                    event: Some(E::Delta(v1::Delta { text, tokens })),
                })
            }
            Event::Finished(f) => {
                metrics
                    .time_to_first_token_seconds
                    .observe(f.timings.time_to_first_token);
                code = "ok";
                phase = None;
                trace.record("sluice.completion_tokens", i64::from(f.usage.completion_tokens));
                trace.record("sluice.finish_reason", format!("{:?}", f.reason).to_lowercase());
                Ok(finished_event(f))
            }
            Event::Failed(e) => {
                let (status, label) = run_status(&e);
                code = label;
                trace.record("rpc.grpc.status_code", status.code() as i32);
                Err(status)
            }
        };
        let last = !matches!(
            &message,
            Ok(v1::GenerateEvent {
                event: Some(E::Started(_) | E::Delta(_))
            })
        );
        if out.send(message).await.is_err() {
            code = "cancelled";
            break;
        }
        if last {
            break;
        }
    }
    drop(phase);
    trace.record("sluice.outcome", code);
    metrics.requests_total.with_label_values(&[code]).inc();
}

#[tonic::async_trait]
impl v1::worker_server::Worker for WorkerService {
    async fn get_info(&self, _: Request<v1::GetInfoRequest>) -> Result<Response<v1::WorkerInfo>, Status> {
        let id = &self.state.identity;
        let model = match (self.state.engine(), self.state.embedder()) {
            (Some(engine), _) => {
                let d = &engine.model().description;
                let config = engine.config();
                v1::ModelInfo {
                    id: d.id.clone(),
                    architecture: d.architecture.clone(),
                    quantization: d.quantization.clone(),
                    context_length: d.context_length as u32,
                    slots: config.slots as u32,
                    max_waiting: config.max_waiting as u32,
                    parameters: d.parameters,
                    kind: v1::ModelKind::Chat as i32,
                    dimensions: 0,
                    kv_bytes_per_token: d.kv_bytes_per_token as u32,
                    kv_cache_format: match engine.model().kv_format() {
                        sluice_engine::KvFormat::F16 => "f16".into(),
                        sluice_engine::KvFormat::F32 => "f32".into(),
                    },
                    max_kv_tokens: config.max_kv_tokens.unwrap_or(config.slots * d.context_length) as u64,
                }
            }
            (None, Some(embedder)) => crate::embed::model_info(embedder),
            (None, None) => v1::ModelInfo {
                id: id.model_id.clone(),
                slots: id.slots,
                max_waiting: id.max_waiting,
                kind: id.kind as i32,
                ..v1::ModelInfo::default()
            },
        };
        let load = self.state.load();
        Ok(Response::new(v1::WorkerInfo {
            worker_id: id.worker_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            device: Some(id.device.clone()),
            models: vec![model],
            state: self.state.report(load.as_ref()).state,
        }))
    }

    type GenerateStream = EventStream;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<EventStream>, Status> {
        let metrics = self.state.metrics.clone();
        // The request's span continues the gateway's trace (its `traceparent` metadata).
        let trace = tracing::trace_span!(
            target: TARGET,
            "generate",
            otel.name = "sluice.worker.v1.Worker/Generate",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "sluice.worker.v1.Worker",
            rpc.method = "Generate",
            rpc.grpc.status_code = tracing::field::Empty,
            sluice.prompt_tokens = tracing::field::Empty,
            sluice.completion_tokens = tracing::field::Empty,
            sluice.finish_reason = tracing::field::Empty,
            sluice.outcome = tracing::field::Empty,
        );
        sluice_telemetry::propagation::continue_from_metadata(&trace, request.metadata());
        let refuse = |status: Status, label: &str| {
            metrics.requests_total.with_label_values(&[label]).inc();
            trace.record("rpc.grpc.status_code", status.code() as i32);
            trace.record("sluice.outcome", label);
            Err(status)
        };
        let deadline = deadline_of(request.metadata(), Instant::now())?;
        let engine = match (self.state.phase(), self.state.engine()) {
            (Phase::Ready, Some(engine)) => engine.clone(),
            (Phase::Ready, None) if self.state.embedder().is_some() => {
                return refuse(
                    Status::failed_precondition(format!(
                        "this worker serves the embedding model {}: it answers Embed, not Generate",
                        self.state.identity.model_id
                    )),
                    "failed_precondition",
                );
            }
            (Phase::Starting, _) | (Phase::Ready, None) => {
                return refuse(
                    Status::unavailable("the worker is loading its model"),
                    "unavailable",
                );
            }
            (Phase::Draining | Phase::Stopped, _) => {
                return refuse(Status::unavailable("the worker is draining"), "unavailable");
            }
        };
        let request = to_engine_request(request.into_inner(), deadline);
        // Templating and tokenizing a long prompt is CPU work: keep it off the async threads.
        let admit = tracing::trace_span!(target: TARGET, parent: &trace, "admit");
        let submitted = tokio::task::spawn_blocking(move || admit.in_scope(|| engine.submit(request)))
            .await
            .map_err(|e| Status::internal(format!("admission task failed: {e}")))?;
        let events = match submitted {
            Ok(events) => events,
            Err(e) => {
                let (status, label) = submit_status(&e);
                return refuse(status, label);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(forward(events, tx, metrics, trace));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchLoadStream = LoadStream;

    async fn watch_load(&self, _: Request<v1::WatchLoadRequest>) -> Result<Response<LoadStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut phase = state.watch_phase();
            let mut load: Option<watch::Receiver<LoadSnapshot>> = None;
            let mut last_sent: Option<(i32, u32, u32)> = None;
            let mut last_time = Instant::now();
            loop {
                if load.is_none() {
                    load = state.watch_load();
                }
                let snapshot = load.as_ref().map(|l| *l.borrow());
                let report = state.report(snapshot.as_ref());
                let key = (report.state, report.requests_running, report.requests_waiting);
                let due = last_time.elapsed() >= Duration::from_secs(1);
                if last_sent != Some(key) || due {
                    // A client that stops reading must not keep this stream (and so shutdown) waiting.
                    tokio::select! {
                        sent = tx.send(Ok(report)) => if sent.is_err() { return },
                        _ = phase.wait_for(|p| *p == Phase::Stopped) => return,
                    }
                    last_sent = Some(key);
                    last_time = Instant::now();
                }
                if *phase.borrow() == Phase::Stopped {
                    return;
                }
                let next_tick = tokio::time::sleep_until((last_time + Duration::from_secs(1)).into());
                let load_changed = async {
                    match load.as_mut() {
                        Some(l) => {
                            if l.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = next_tick => {}
                    _ = load_changed => {}
                    changed = phase.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn embed(&self, request: Request<v1::EmbedRequest>) -> Result<Response<v1::EmbedResponse>, Status> {
        crate::embed::embed(&self.state, request).await
    }

    async fn drain(&self, request: Request<v1::DrainRequest>) -> Result<Response<v1::DrainResponse>, Status> {
        let mut left = self.state.drain();
        tracing::info!(in_flight = left, "drain requested");
        if request.into_inner().wait {
            left = self.state.wait_idle(Duration::from_secs(24 * 3600)).await;
        }
        Ok(Response::new(v1::DrainResponse {
            requests_in_flight: left as u32,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let now = Instant::now();
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline_of(&md, now).expect("ok"), None);
        for (text, want) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("1000u", Duration::from_millis(1)),
            ("1000000n", Duration::from_millis(1)),
        ] {
            md.insert("grpc-timeout", text.parse().expect("ascii"));
            assert_eq!(deadline_of(&md, now).expect("valid"), Some(now + want), "{text}");
        }
        for bad in ["5", "S", "5s", "12345678901S", "-1S"] {
            md.insert("grpc-timeout", bad.parse().expect("ascii"));
            assert_eq!(
                deadline_of(&md, now).expect_err(bad).code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_map_to_meaningful_codes() {
        use tonic::Code;
        let full = SubmitError::Full {
            running: 1,
            waiting: 1,
            limit: 2,
        };
        assert_eq!(submit_status(&full).0.code(), Code::ResourceExhausted);
        assert_eq!(submit_status(&SubmitError::Draining).0.code(), Code::Unavailable);
        let unknown = SubmitError::UnknownModel {
            requested: "a".into(),
            served: "b".into(),
        };
        assert_eq!(submit_status(&unknown).0.code(), Code::NotFound);
        assert_eq!(
            submit_status(&SubmitError::InvalidArgument("x".into())).0.code(),
            Code::InvalidArgument
        );
        assert_eq!(
            run_status(&RunError::DeadlineExceeded { generated: 3 }).0.code(),
            Code::DeadlineExceeded
        );
        assert_eq!(run_status(&RunError::Stopped).0.code(), Code::Unavailable);
    }
}
