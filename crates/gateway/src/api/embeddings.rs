//! The OpenAI embeddings request (`POST /v1/embeddings`) as this gateway reads it: `input` as a string,
//! a list of strings, a list of token ids or a list of such lists; `encoding_format` float or base64;
//! `dimensions`. Kept whole, so that a cloud receives what the client sent.

use serde_json::{Map, Value};

use super::{InvalidRequest, bad_value, json_object, model_of, wrong_type};

/// OpenAI's limit on inputs in one request.
pub const MAX_INPUTS: usize = 2048;

/// How vectors are written in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// The little-endian bytes of the float32 values, base64-encoded.
    Base64,
}

/// One input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    Text(String),
    /// Token ids of the model's tokenizer.
    Tokens(Vec<u32>),
}

/// A checked embeddings request.
#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    /// The body as the client sent it.
    pub body: Map<String, Value>,
    pub model: String,
    pub inputs: Vec<EmbeddingInput>,
    pub encoding_format: EncodingFormat,
    /// The length of vectors asked for (models that can shorten theirs).
    pub dimensions: Option<u32>,
}

impl EmbeddingRequest {
    /// The same request for another model: the body sent upstream names it too.
    pub fn with_model(&self, model: &str) -> Self {
        let mut r = self.clone();
        r.model = model.to_owned();
        r.body.insert("model".to_owned(), Value::String(model.to_owned()));
        r
    }

    /// Inputs given as token ids, which no scanner can read.
    pub fn token_inputs(&self) -> usize {
        self.inputs
            .iter()
            .filter(|i| matches!(i, EmbeddingInput::Tokens(_)))
            .count()
    }
}

fn tokens(param: &str, items: &[Value]) -> Result<Vec<u32>, InvalidRequest> {
    if items.is_empty() {
        return Err(bad_value(
            param,
            format!("`{param}` must not be an empty list of tokens."),
        ));
    }
    items
        .iter()
        .map(|v| {
            v.as_u64().and_then(|t| u32::try_from(t).ok()).ok_or_else(|| {
                bad_value(
                    param,
                    format!("`{param}` must hold token ids (integers from 0 to {}).", u32::MAX),
                )
            })
        })
        .collect()
}

fn text(param: &str, s: &str) -> Result<EmbeddingInput, InvalidRequest> {
    if s.is_empty() {
        return Err(bad_value(
            param,
            format!("`{param}` must not be an empty string."),
        ));
    }
    Ok(EmbeddingInput::Text(s.to_owned()))
}

fn inputs(value: Option<&Value>) -> Result<Vec<EmbeddingInput>, InvalidRequest> {
    let items = match value {
        None | Some(Value::Null) => {
            return Err(
                InvalidRequest::new("missing_required_parameter", "`input` is required.").with_param("input"),
            );
        }
        Some(Value::String(s)) => return Ok(vec![text("input", s)?]),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(wrong_type(
                "input",
                "a string, a list of strings, a list of token ids or a list of such lists",
                other,
            ));
        }
    };
    if items.is_empty() {
        return Err(bad_value("input", "`input` must hold at least one input."));
    }
    if items.len() > MAX_INPUTS {
        return Err(bad_value(
            "input",
            format!(
                "`input` may hold at most {MAX_INPUTS} inputs, got {}.",
                items.len()
            ),
        ));
    }
    // A list of numbers is one input of tokens; otherwise every item is an input.
    if items.iter().all(Value::is_number) {
        return Ok(vec![EmbeddingInput::Tokens(tokens("input", items)?)]);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let param = format!("input[{i}]");
            match item {
                Value::String(s) => text(&param, s),
                Value::Array(t) => Ok(EmbeddingInput::Tokens(tokens(&param, t)?)),
                other => Err(wrong_type(&param, "a string or a list of token ids", other)),
            }
        })
        .collect()
}

/// Parses and checks an embeddings request body.
pub fn parse_embedding_request(bytes: &[u8]) -> Result<EmbeddingRequest, InvalidRequest> {
    let body = json_object(bytes)?;
    let model = model_of(&body)?;
    let inputs = inputs(body.get("input"))?;
    let encoding_format = match body.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(s)) if s == "float" => EncodingFormat::Float,
        Some(Value::String(s)) if s == "base64" => EncodingFormat::Base64,
        Some(Value::String(s)) => {
            return Err(bad_value(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got {s:?}."),
            ));
        }
        Some(other) => return Err(wrong_type("encoding_format", "a string", other)),
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=65_536) => Some(n as u32),
            _ if v.is_number() => {
                return Err(bad_value(
                    "dimensions",
                    "`dimensions` must be an integer from 1 to 65536.",
                ));
            }
            _ => return Err(wrong_type("dimensions", "an integer", v)),
        },
    };
    if let Some(user) = body.get("user")
        && !(user.is_string() || user.is_null())
    {
        return Err(wrong_type("user", "a string", user));
    }
    Ok(EmbeddingRequest {
        body,
        model,
        inputs,
        encoding_format,
        dimensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<EmbeddingRequest, InvalidRequest> {
        parse_embedding_request(v.to_string().as_bytes())
    }

    #[test]
    fn every_input_shape_reads() {
        let r = parse(serde_json::json!({"model": "m", "input": "hello"})).expect("string");
        assert_eq!(r.inputs, vec![EmbeddingInput::Text("hello".into())]);
        assert_eq!(r.encoding_format, EncodingFormat::Float);
        let r = parse(serde_json::json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64"}))
            .expect("strings");
        assert_eq!(r.inputs.len(), 2);
        assert_eq!(r.encoding_format, EncodingFormat::Base64);
        let r = parse(serde_json::json!({"model": "m", "input": [1, 2, 3], "dimensions": 64})).expect("ids");
        assert_eq!(r.inputs, vec![EmbeddingInput::Tokens(vec![1, 2, 3])]);
        assert_eq!(r.dimensions, Some(64));
        assert_eq!(r.token_inputs(), 1);
        let r = parse(serde_json::json!({"model": "m", "input": [[1, 2], "c"]})).expect("mixed");
        assert_eq!(
            r.inputs,
            vec![
                EmbeddingInput::Tokens(vec![1, 2]),
                EmbeddingInput::Text("c".into())
            ]
        );
    }

    #[test]
    fn bad_inputs_name_the_field() {
        for (body, param) in [
            (serde_json::json!({"model": "m"}), "input"),
            (serde_json::json!({"input": "x"}), "model"),
            (serde_json::json!({"model": "m", "input": ""}), "input"),
            (serde_json::json!({"model": "m", "input": []}), "input"),
            (serde_json::json!({"model": "m", "input": ["a", ""]}), "input[1]"),
            (serde_json::json!({"model": "m", "input": [[]]}), "input[0]"),
            (serde_json::json!({"model": "m", "input": [-1]}), "input"),
            (serde_json::json!({"model": "m", "input": ["a", 3]}), "input[1]"),
            (serde_json::json!({"model": "m", "input": {"a": 1}}), "input"),
            (
                serde_json::json!({"model": "m", "input": "a", "encoding_format": "hex"}),
                "encoding_format",
            ),
            (
                serde_json::json!({"model": "m", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
            (
                serde_json::json!({"model": "m", "input": "a", "dimensions": "8"}),
                "dimensions",
            ),
        ] {
            let e = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
        let many: Vec<String> = (0..=MAX_INPUTS).map(|i| i.to_string()).collect();
        let e = parse(serde_json::json!({"model": "m", "input": many})).expect_err("too many");
        assert!(e.message.contains("at most 2048"), "{e:?}");
    }
}
