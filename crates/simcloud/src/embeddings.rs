//! `POST /v1/embeddings`, as OpenAI's API answers it, for the simulator's embedding models.
//!
//! - `input`: a string, a list of strings, a list of token ids, or a list of lists of token ids (at most
//!   2048 inputs, none empty).
//! - Each vector is a function of the model and the input alone (the same text always gets the same
//!   vector): values drawn from a generator seeded by the FNV-1a hash of the model id and the input, then
//!   scaled to length 1. Texts that differ get unrelated vectors; there is no meaning in them.
//! - `dimensions` shortens the vectors (then scaled to length 1 again), up to the model's own length.
//! - `encoding_format`: `float` (the default) or `base64` (the little-endian float32 bytes), as the
//!   official Python SDK asks for by default.
//! - Usage: a text counts its characters divided by 4, rounded up, at least 1 (as chat prompts do); a list
//!   of token ids counts its length.
//!
//! Requests are recorded, keys checked and script steps applied (`delay_ms`, `hang`, `status`) as for chat.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::SimError;
use crate::{Ctx, InFlight, json_response};

const MAX_INPUTS: usize = 2048;

enum Input {
    Text(String),
    Tokens(Vec<u64>),
}

pub(crate) async fn handle(
    State(ctx): State<Ctx>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _guard = InFlight::new(&ctx.sim.inner);
    let response = match answer(&ctx, &uri, &headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    tracing::debug!(status = response.status().as_u16(), "embeddings");
    response
}

fn invalid(param: &str, message: String) -> SimError {
    SimError::InvalidRequest {
        param: Some(param.to_owned()),
        code: "invalid_value",
        message,
    }
}

fn inputs(value: Option<&Value>) -> Result<Vec<Input>, SimError> {
    let tokens = |items: &[Value], param: &str| -> Result<Vec<u64>, SimError> {
        if items.is_empty() {
            return Err(invalid(param, format!("'{param}' must not be empty.")));
        }
        items
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| invalid(param, format!("'{param}' must hold token ids.")))
            })
            .collect()
    };
    let text = |s: &str, param: &str| {
        if s.is_empty() {
            return Err(invalid(param, format!("'{param}' must not be empty.")));
        }
        Ok(Input::Text(s.to_owned()))
    };
    match value {
        None | Some(Value::Null) => Err(SimError::missing("input")),
        Some(Value::String(s)) => Ok(vec![text(s, "input")?]),
        Some(Value::Array(items)) if items.is_empty() || items.len() > MAX_INPUTS => Err(invalid(
            "input",
            format!("'input' must hold 1 to {MAX_INPUTS} inputs."),
        )),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            Ok(vec![Input::Tokens(tokens(items, "input")?)])
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => text(s, &format!("input[{i}]")),
                Value::Array(t) => Ok(Input::Tokens(tokens(t, &format!("input[{i}]"))?)),
                _ => Err(invalid(
                    &format!("input[{i}]"),
                    format!("'input[{i}]' must be a string or a list of token ids."),
                )),
            })
            .collect(),
        Some(_) => Err(SimError::invalid_type("input", "a string or an array")),
    }
}

/// 64-bit FNV-1a.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The input's vector: `length` values from xorshift64* seeded by the hash, scaled to length 1.
fn vector(model: &str, input: &Input, length: usize) -> Vec<f32> {
    let bytes = match input {
        Input::Text(t) => t.as_bytes().to_vec(),
        Input::Tokens(ids) => ids.iter().flat_map(|t| t.to_le_bytes()).collect(),
    };
    let mut state = fnv1a(&[model.as_bytes(), &bytes]) | 1;
    let mut values: Vec<f32> = (0..length)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    values.iter_mut().for_each(|v| *v /= norm);
    values
}

fn tokens(input: &Input) -> u64 {
    match input {
        Input::Text(t) => (t.chars().count() as u64).div_ceil(4).max(1),
        Input::Tokens(ids) => ids.len() as u64,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(match i <= chunk.len() {
                true => ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char,
                false => '=',
            });
        }
    }
    out
}

async fn answer(
    ctx: &Ctx,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, SimError> {
    let sim = &ctx.sim.inner;
    let value = sim.read_body(uri, headers, body)?;
    sim.authorize(headers)?;
    respond(ctx, value?).await
}

/// Answers a parsed request body, recorded and authorized, as the script says.
pub(crate) async fn respond(ctx: &Ctx, value: Value) -> Result<Response, SimError> {
    let sim = &ctx.sim.inner;
    let model_id = match value.get("model") {
        None | Some(Value::Null) => return Err(SimError::missing("model")),
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(SimError::invalid_type("model", "a string")),
    };
    let model = sim
        .model(&model_id)
        .ok_or_else(|| SimError::ModelNotFound(model_id.clone()))?;
    let Some(native) = model.dimensions else {
        return Err(invalid(
            "model",
            format!("The model `{model_id}` does not support embeddings."),
        ));
    };
    let inputs = inputs(value.get("input"))?;
    let length = match value.get("dimensions") {
        None | Some(Value::Null) => native,
        Some(v) => match v.as_u64() {
            Some(d @ 1..) if d <= u64::from(native) => d as u32,
            _ => {
                return Err(invalid(
                    "dimensions",
                    format!("'dimensions' must be an integer from 1 to {native} for `{model_id}`."),
                ));
            }
        },
    };
    let base64_format = match value.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("'encoding_format' must be 'float' or 'base64', got '{other}'."),
            ));
        }
    };
    if let Some(step) = sim.pop_step() {
        if let Some(ms) = step.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if step.hang {
            return Err(crate::chat::hang(ctx).await);
        }
        if let Some(status) = step.status {
            return Err(SimError::Scripted {
                status,
                retry_after: step.retry_after_seconds,
                message: step.message.unwrap_or_else(|| "scripted error".to_owned()),
            });
        }
    }
    if !sim.config.ttft.is_zero() {
        tokio::time::sleep(sim.config.ttft).await;
    }
    let prompt_tokens: u64 = inputs.iter().map(tokens).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let v = vector(&model_id, input, length as usize);
            let embedding = match base64_format {
                true => Value::String(base64(
                    &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
                )),
                false => json!(v),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_depend_on_model_and_input_only() {
        let a = vector("m", &Input::Text("hello".into()), 8);
        assert_eq!(a, vector("m", &Input::Text("hello".into()), 8));
        assert_ne!(a, vector("m", &Input::Text("hellp".into()), 8));
        assert_ne!(a, vector("n", &Input::Text("hello".into()), 8));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fo"), "Zm8=");
    }
}
