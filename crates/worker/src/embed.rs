//! `Embed`: a request's inputs through the embedding batcher, answered as one message.

use std::sync::Arc;
use std::time::Instant;

use sluice_engine::{EmbedInput, EmbedRequest, Embedder};
use sluice_proto::v1;
use sluice_telemetry::TARGET;
use tonic::{Request, Response, Status};

use crate::service::{Phase, WorkerState, deadline_of, run_status, submit_status};

/// What `GetInfo` says of an embedding model.
pub fn model_info(embedder: &Embedder) -> v1::ModelInfo {
    let model = embedder.model();
    let d = &model.description;
    let config = embedder.config();
    v1::ModelInfo {
        id: d.id.clone(),
        architecture: d.architecture.clone(),
        quantization: d.quantization.clone(),
        context_length: d.context_length as u32,
        slots: config.max_requests as u32,
        max_waiting: config.max_waiting as u32,
        parameters: d.parameters,
        kind: v1::ModelKind::Embedding as i32,
        dimensions: model.dimensions as u32,
        ..v1::ModelInfo::default()
    }
}

fn inputs(request: &mut v1::EmbedRequest) -> Result<Vec<EmbedInput>, Status> {
    std::mem::take(&mut request.inputs)
        .into_iter()
        .enumerate()
        .map(|(i, input)| match input.input {
            Some(v1::embed_input::Input::Text(text)) => Ok(EmbedInput::Text(text)),
            Some(v1::embed_input::Input::Tokens(t)) => Ok(EmbedInput::Tokens(t.ids)),
            None => Err(Status::invalid_argument(format!("input {i} is empty"))),
        })
        .collect()
}

pub(crate) async fn embed(
    state: &Arc<WorkerState>,
    request: Request<v1::EmbedRequest>,
) -> Result<Response<v1::EmbedResponse>, Status> {
    let arrived = Instant::now();
    let metrics = &state.metrics;
    let trace = tracing::trace_span!(
        target: TARGET,
        "embed",
        otel.name = "sluice.worker.v1.Worker/Embed",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "sluice.worker.v1.Worker",
        rpc.method = "Embed",
        rpc.grpc.status_code = tracing::field::Empty,
        sluice.inputs = tracing::field::Empty,
        sluice.prompt_tokens = tracing::field::Empty,
        sluice.outcome = tracing::field::Empty,
    );
    sluice_telemetry::propagation::continue_from_metadata(&trace, request.metadata());
    let outcome = |result: Result<v1::EmbedResponse, (Status, &'static str)>| {
        let label = match &result {
            Ok(_) => "ok",
            Err((status, label)) => {
                trace.record("rpc.grpc.status_code", status.code() as i32);
                label
            }
        };
        metrics.requests_total.with_label_values(&[label]).inc();
        trace.record("sluice.outcome", label);
        result.map(Response::new).map_err(|(status, _)| status)
    };
    let deadline = deadline_of(request.metadata(), arrived)?;
    let embedder = match (state.phase(), state.embedder()) {
        (Phase::Ready, Some(e)) => e.clone(),
        (Phase::Ready, None) if state.engine().is_some() => {
            return outcome(Err((
                Status::failed_precondition(format!(
                    "this worker serves the chat model {}: it answers Generate, not Embed",
                    state.identity.model_id
                )),
                "failed_precondition",
            )));
        }
        (Phase::Starting, _) | (Phase::Ready, None) => {
            return outcome(Err((
                Status::unavailable("the worker is loading its model"),
                "unavailable",
            )));
        }
        (Phase::Draining | Phase::Stopped, _) => {
            return outcome(Err((
                Status::unavailable("the worker is draining"),
                "unavailable",
            )));
        }
    };
    let mut message = request.into_inner();
    let inputs = match inputs(&mut message) {
        Ok(i) => i,
        Err(status) => return outcome(Err((status, "invalid_argument"))),
    };
    trace.record("sluice.inputs", inputs.len() as i64);
    let engine_request = EmbedRequest {
        request_id: message.request_id,
        model: message.model,
        inputs,
        deadline,
    };
    // Tokenizing many inputs is CPU work: keep it off the async threads.
    let submitted = tokio::task::spawn_blocking(move || embedder.submit(engine_request))
        .await
        .map_err(|e| Status::internal(format!("admission task failed: {e}")))?;
    let reply = match submitted {
        Ok(r) => r,
        Err(e) => return outcome(Err(submit_status(&e))),
    };
    let embedded = match reply.await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return outcome(Err(run_status(&e))),
        Err(_) => {
            return outcome(Err((
                Status::unavailable("the worker's embedding batcher stopped"),
                "unavailable",
            )));
        }
    };
    trace.record("sluice.prompt_tokens", i64::from(embedded.prompt_tokens));
    let total = arrived.elapsed().as_secs_f64();
    outcome(Ok(v1::EmbedResponse {
        embeddings: embedded
            .vectors
            .into_iter()
            .map(|values| v1::Embedding { values })
            .collect(),
        usage: Some(v1::Usage {
            prompt_tokens: embedded.prompt_tokens,
            completion_tokens: 0,
        }),
        timings: Some(v1::Timings {
            queue_seconds: embedded.queue_seconds,
            prefill_seconds: embedded.compute_seconds,
            decode_seconds: 0.0,
            time_to_first_token_seconds: total,
            total_seconds: total,
        }),
    }))
}
