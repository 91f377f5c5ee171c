//! Reading a GGUF file's metadata: architecture, context window, tokenizer and chat template.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::LoadError;
use crate::tokenizer::{PreTokenizer, TokenizerModel, Vocabulary};

/// What the engine needs from a GGUF file's metadata.
#[derive(Debug, Clone)]
pub struct GgufMetadata {
    pub architecture: String,
    pub name: Option<String>,
    /// The context length the model declares.
    pub context_length: usize,
    pub vocabulary: Vocabulary,
    pub pre_tokenizer: PreTokenizer,
    pub tokenizer_model: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub eot_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub chat_template: Option<String>,
    /// The most common type among 2-D weight tensors ("Q4_1").
    pub quantization: String,
    pub parameters: u64,
}

/// Opens a GGUF file and reads its header and metadata (not the weights).
pub fn open(path: &Path) -> Result<(Content, BufReader<File>), LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| LoadError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok((content, reader))
}

impl GgufMetadata {
    /// Extracts and checks the metadata; `path` is only used in messages.
    pub fn from_content(content: &Content, path: &Path) -> Result<Self, LoadError> {
        let md = &content.metadata;
        let format_err = |message: String| LoadError::Format {
            path: path.display().to_string(),
            message,
        };
        let string = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
        let uint = |key: &str| md.get(key).and_then(value_as_u64);

        let architecture =
            string("general.architecture").ok_or_else(|| format_err("no general.architecture".into()))?;
        if architecture != "llama" {
            return Err(LoadError::Unsupported(format!(
                "architecture {architecture:?}; this engine runs llama-family models (general.architecture = \"llama\")"
            )));
        }
        let context_length = uint(&format!("{architecture}.context_length"))
            .ok_or_else(|| format_err(format!("no {architecture}.context_length")))?
            as usize;

        let tokenizer_model = string("tokenizer.ggml.model").unwrap_or_default();
        let model = match tokenizer_model.as_str() {
            "gpt2" => TokenizerModel::Gpt2,
            "llama" => TokenizerModel::Spm,
            other => {
                return Err(LoadError::Unsupported(format!(
                    "tokenizer.ggml.model {other:?}; supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)"
                )));
            }
        };
        let scores = md
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.to_vec().ok())
            .map(|values| values.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect())
            .unwrap_or_default();
        let flag = |key: &str| md.get(key).and_then(|v| v.to_bool().ok());
        let tokens = string_array(md, "tokenizer.ggml.tokens")
            .ok_or_else(|| format_err("no tokenizer.ggml.tokens".into()))?;
        let merges = string_array(md, "tokenizer.ggml.merges").unwrap_or_default();
        let token_types = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|values| {
                values
                    .iter()
                    .map(|v| value_as_u64(v).map_or(1, |x| x as i32))
                    .collect()
            })
            .unwrap_or_default();
        let pre_tokenizer = PreTokenizer::from_gguf_name(string("tokenizer.ggml.pre").as_deref());
        let token_id = |key: &str| uint(key).and_then(|v| u32::try_from(v).ok());

        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut parameters = 0u64;
        for info in content.tensor_infos.values() {
            let elems = info.shape.elem_count() as u64;
            parameters += elems;
            if info.shape.rank() == 2 {
                *counts.entry(format!("{:?}", info.ggml_dtype)).or_default() += elems;
            }
        }
        let quantization = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(name, _)| name.to_uppercase())
            .unwrap_or_else(|| "unknown".into());

        Ok(Self {
            architecture,
            name: string("general.name"),
            context_length,
            vocabulary: Vocabulary {
                model,
                scores,
                add_space_prefix: flag("tokenizer.ggml.add_space_prefix").unwrap_or(true),
                tokens,
                token_types,
                merges,
            },
            pre_tokenizer,
            tokenizer_model,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_id: token_id("tokenizer.ggml.eos_token_id"),
            eot_token_id: token_id("tokenizer.ggml.eot_token_id"),
            // llama.cpp's default: SentencePiece vocabularies start with BOS unless they say otherwise.
            add_bos_token: flag("tokenizer.ggml.add_bos_token").unwrap_or(model == TokenizerModel::Spm),
            chat_template: string("tokenizer.chat_template"),
            quantization,
            parameters,
        })
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Option<Vec<String>> {
    let values = md.get(key)?.to_vec().ok()?;
    values.iter().map(|v| v.to_string().ok().cloned()).collect()
}
