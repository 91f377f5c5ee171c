//! Embeddings from an OpenAI-compatible API: `POST /embeddings` with the client's body (vectors asked for
//! as floats, whatever the client asked: the wire layer writes them as the client wants), each vector
//! checked and put back in input order.

use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{Attempt, CloudBackend};
use crate::api::embeddings::EmbeddingRequest;
use crate::backend::{BackendError, Embeddings, InFlight, Usage};

impl CloudBackend {
    pub(super) async fn embed_attempt(
        &self,
        request: &EmbeddingRequest,
        deadline: Instant,
    ) -> Result<Embeddings, Attempt> {
        let name = &self.config.name;
        let span = tracing::trace_span!(
            target: sluice_telemetry::TARGET,
            "embeddings",
            otel.name = "POST /embeddings",
            otel.kind = "client",
            http.request.method = "POST",
            sluice.backend = %name,
        );
        let _in_flight = InFlight::new(&self.in_flight);
        let until = deadline.min(Instant::now() + self.config.timeout);
        let mut body = request.body.clone();
        body.insert("encoding_format".into(), Value::String("float".into()));
        let client = self.client(&request.model)?;
        let answer: Value =
            match tokio::time::timeout_at(until, client.embeddings().create_byot(Value::Object(body)))
                .instrument(span)
                .await
            {
                Err(_) => {
                    return Err(Attempt::Retry(BackendError::Timeout(format!(
                        "cloud backend {name} did not answer within {:.1} s",
                        self.config.timeout.as_secs_f64()
                    ))));
                }
                Ok(Err(e)) => return Err(self.error_of(e)),
                Ok(Ok(v)) => v,
            };
        let bad = |why: &str| Attempt::Fatal(BackendError::Failed(format!("cloud backend {name}: {why}")));
        let Some(data) = answer.get("data").and_then(Value::as_array) else {
            return Err(bad("the answer has no `data` list"));
        };
        if data.len() != request.inputs.len() {
            return Err(bad(&format!(
                "{} vectors came for {} inputs",
                data.len(),
                request.inputs.len()
            )));
        }
        let mut vectors = vec![None; data.len()];
        for (position, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(position, |i| i as usize);
            let values = item
                .get("embedding")
                .and_then(Value::as_array)
                .and_then(|v| {
                    v.iter()
                        .map(|x| x.as_f64().map(|f| f as f32))
                        .collect::<Option<Vec<f32>>>()
                })
                .ok_or_else(|| bad(&format!("data[{position}].embedding is not a list of numbers")))?;
            match vectors.get_mut(index) {
                Some(slot @ None) => *slot = Some(values),
                _ => return Err(bad(&format!("data[{position}].index {index} is out of place"))),
            }
        }
        // A provider that reports no usage is taken at its word: nothing to meter.
        let usage = answer
            .get("usage")
            .and_then(|u| u.get("prompt_tokens"))
            .and_then(Value::as_u64)
            .map(|prompt_tokens| Usage {
                prompt_tokens,
                completion_tokens: 0,
            })
            .unwrap_or_default();
        Ok(Embeddings {
            served_by: name.as_str().into(),
            vectors: vectors.into_iter().map(Option::unwrap_or_default).collect(),
            usage,
        })
    }
}
