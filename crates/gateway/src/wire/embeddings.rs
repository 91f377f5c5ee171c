//! The answer to `POST /v1/embeddings`, as OpenAI writes it: a `list` of `embedding` objects in input
//! order, each vector as JSON numbers or (with `encoding_format: base64`) as the base64 of its
//! little-endian float32 bytes, the model that served, and the usage.

use serde_json::{Value, json};

use crate::api::embeddings::EncodingFormat;
use crate::backend::Usage;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One vector as the client asked for it.
fn encode(vector: &[f32], format: EncodingFormat) -> Value {
    match format {
        EncodingFormat::Float => json!(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
            Value::String(base64(&bytes))
        }
    }
}

/// The whole answer body.
pub fn body(model: &str, vectors: &[Vec<f32>], usage: Usage, format: EncodingFormat) -> Value {
    json!({
        "object": "list",
        "data": vectors
            .iter()
            .enumerate()
            .map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": encode(v, format)}))
            .collect::<Vec<_>>(),
        "model": model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_the_standard_writes_it() {
        // RFC 4648, section 10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn vectors_in_both_formats() {
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 0,
        };
        let b = body("m", &[vec![1.0, -2.5]], usage, EncodingFormat::Float);
        assert_eq!(b["data"][0]["embedding"], json!([1.0, -2.5]));
        assert_eq!(b["usage"]["total_tokens"], 7);
        let b = body("m", &[vec![1.0, -2.5]], usage, EncodingFormat::Base64);
        // 1.0 = 00 00 80 3f, -2.5 = 00 00 20 c0 (little-endian float32).
        assert_eq!(b["data"][0]["embedding"], "AACAPwAAIMA=");
        assert_eq!(b["model"], "m");
    }
}
