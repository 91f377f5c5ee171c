//! Embeddings on the pool: the `Embed` call to the least loaded ready worker that serves the model, and
//! to the next when one is full or unreachable, as chat requests go.

use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tokio::time::Instant;
use tonic::Code;
use tracing::Instrument as _;

use super::WorkerPool;
use super::grpc::{describe, rejected};
use crate::api::embeddings::{EmbeddingInput, EmbeddingRequest};
use crate::backend::{BackendError, DispatchContext, Embeddings, InFlight, Usage};

fn embed_request(request: &EmbeddingRequest, context: &DispatchContext) -> v1::EmbedRequest {
    v1::EmbedRequest {
        request_id: context.request_id.clone(),
        model: request.model.clone(),
        inputs: request
            .inputs
            .iter()
            .map(|i| v1::EmbedInput {
                input: Some(match i {
                    EmbeddingInput::Text(t) => v1::embed_input::Input::Text(t.clone()),
                    EmbeddingInput::Tokens(ids) => {
                        v1::embed_input::Input::Tokens(v1::TokenIds { ids: ids.clone() })
                    }
                }),
            })
            .collect(),
    }
}

impl WorkerPool {
    pub(super) async fn embed_inner(
        &self,
        request: &EmbeddingRequest,
        context: &DispatchContext,
    ) -> Result<Embeddings, BackendError> {
        let now = Instant::now();
        let (ready, not_ready) = self.candidates(&request.model, now);
        if ready.is_empty() {
            let why: Vec<String> = not_ready
                .iter()
                .map(|w| {
                    let s = w.status(now);
                    format!("{} {}", s.name, s.detail)
                })
                .collect();
            return Err(BackendError::Unavailable(format!(
                "no worker serving `{}` is ready ({})",
                request.model,
                if why.is_empty() {
                    "none known".to_owned()
                } else {
                    why.join("; ")
                }
            )));
        }
        let message = embed_request(request, context);
        let mut full = Vec::new();
        let mut failed = Vec::new();
        for worker in ready {
            let _in_flight = InFlight::new(&worker.in_flight);
            let call = tracing::trace_span!(
                target: sluice_telemetry::TARGET,
                "embed",
                otel.name = "sluice.worker.v1.Worker/Embed",
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = "sluice.worker.v1.Worker",
                rpc.method = "Embed",
                sluice.worker = %worker.name,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let remaining = context.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(BackendError::Timeout("the request's deadline passed".into()));
            }
            let mut grpc = tonic::Request::new(message.clone());
            grpc.set_timeout(remaining);
            sluice_telemetry::propagation::inject_metadata(&call, grpc.metadata_mut());
            let mut client = WorkerClient::new(worker.channel.clone());
            let answer = tokio::time::timeout_at(context.deadline, client.embed(grpc))
                .instrument(call.clone())
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the request's deadline passed")));
            let status = match answer {
                Ok(response) => {
                    worker.record_success();
                    let response = response.into_inner();
                    if response.embeddings.len() != request.inputs.len() {
                        return Err(BackendError::Failed(format!(
                            "worker {} answered {} vectors for {} inputs",
                            worker.name,
                            response.embeddings.len(),
                            request.inputs.len()
                        )));
                    }
                    // A local model's vectors have the length the model gives them: shortening them is for
                    // models trained for it.
                    let made = response.embeddings.first().map_or(0, |e| e.values.len());
                    if let Some(asked) = request.dimensions.filter(|d| *d as usize != made) {
                        return Err(BackendError::Rejected {
                            message: format!(
                                "`{}` makes {made}-dimensional vectors and cannot shorten them to {asked}; leave `dimensions` out or set it to {made}",
                                request.model
                            ),
                            code: "invalid_value",
                        });
                    }
                    let usage = response.usage.unwrap_or_default();
                    return Ok(Embeddings {
                        served_by: worker.name.clone(),
                        vectors: response.embeddings.into_iter().map(|e| e.values).collect(),
                        usage: Usage {
                            prompt_tokens: u64::from(usage.prompt_tokens),
                            completion_tokens: 0,
                        },
                    });
                }
                Err(status) => status,
            };
            call.record("rpc.grpc.status_code", status.code() as i32);
            match status.code() {
                Code::ResourceExhausted => full.push(worker.name.to_string()),
                Code::InvalidArgument | Code::OutOfRange => {
                    let mut error = rejected(status.message());
                    if let BackendError::Rejected { code, .. } = &mut error
                        && status.message().contains("maximum input length")
                    {
                        *code = "context_length_exceeded";
                    }
                    return Err(error);
                }
                Code::FailedPrecondition => {
                    return Err(BackendError::Rejected {
                        message: status.message().to_owned(),
                        code: "model_not_supported",
                    });
                }
                Code::DeadlineExceeded => {
                    return Err(BackendError::Timeout(format!(
                        "worker {} did not answer before the deadline",
                        worker.name
                    )));
                }
                Code::NotFound => failed.push(format!("{}: {}", worker.name, status.message())),
                _ => {
                    let why = describe(&status);
                    if worker.record_failure(&why, &self.config) {
                        tracing::warn!(worker = %worker.name, error = %why, cooldown = ?self.config.breaker_cooldown, "worker ejected after repeated failures");
                    }
                    failed.push(format!("{}: {why}", worker.name));
                }
            }
        }
        if failed.is_empty() {
            Err(BackendError::Full(format!(
                "every worker serving `{}` is full ({})",
                request.model,
                full.join(", ")
            )))
        } else {
            let mut why = failed;
            why.extend(full.into_iter().map(|n| format!("{n}: full")));
            Err(BackendError::Unavailable(format!(
                "no worker serving `{}` could take the request ({})",
                request.model,
                why.join("; ")
            )))
        }
    }
}
