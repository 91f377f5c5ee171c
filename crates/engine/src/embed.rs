//! Sentence embeddings: a BERT-family encoder laid out as sentence-transformers saves one (a folder with
//! `config.json`, `model.safetensors`, `tokenizer.json`, `modules.json`, the pooling module's
//! `config.json` and `sentence_bert_config.json`), run by candle-transformers' `BertModel`, then pooled
//! and normalised as the folder's modules say. The batcher ([`batch::Embedder`]) runs every request
//! waiting together, in passes of sequences of similar length.

pub mod batch;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;

use crate::error::LoadError;
use crate::model::{DeviceSpec, ModelDescription};

/// How token vectors become one sentence vector (the pooling module's `config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over the sequence's tokens (padding excluded).
    Mean,
    /// The first token's (`[CLS]`).
    Cls,
    /// The largest value of each dimension over the tokens.
    Max,
    /// The sum over the tokens divided by the square root of their number.
    MeanSqrtLen,
}

#[derive(Debug, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

/// One input: text, or token ids of the model's own vocabulary (without its special tokens, which are
/// added as they are to text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u32>),
}

/// A loaded sentence-embedding model.
pub struct EmbeddingModel {
    pub description: ModelDescription,
    /// Length of the vectors.
    pub dimensions: usize,
    pub pooling: Pooling,
    /// Vectors are scaled to length 1.
    pub normalize: bool,
    bert: BertModel,
    tokenizer: tokenizers::Tokenizer,
    /// What the tokenizer puts before and after a text's own tokens (`[CLS]`, `[SEP]`).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    vocab_size: usize,
    pad_id: u32,
    device: Device,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("description", &self.description)
            .field("dimensions", &self.dimensions)
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    serde_json::from_str(&read(path)?).map_err(|e| LoadError::Format {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Whether `path` is a sentence-embedding folder (as opposed to a GGUF file).
pub fn is_embedding_folder(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file() && path.join("model.safetensors").is_file()
}

impl EmbeddingModel {
    /// Loads a sentence-transformers folder.
    pub fn load(dir: &Path, id: &str, device: DeviceSpec) -> Result<Self, LoadError> {
        let config_path = dir.join("config.json");
        let raw: serde_json::Value = json(&config_path)?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if model_type != "bert" {
            return Err(LoadError::Unsupported(format!(
                "{}: model_type {model_type:?}; sentence embeddings are served for BERT-family encoders (\"bert\")",
                config_path.display()
            )));
        }
        let config: Config = serde_json::from_value(raw).map_err(|e| LoadError::Format {
            path: config_path.display().to_string(),
            message: e.to_string(),
        })?;
        // Without modules.json, sentence-transformers reads a plain encoder with mean pooling.
        let modules: Vec<Module> = match dir.join("modules.json") {
            p if p.is_file() => json(&p)?,
            _ => Vec::new(),
        };
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let pooling = match modules.iter().find(|m| m.kind.ends_with(".Pooling")) {
            Some(m) => pooling_of(&dir.join(&m.path).join("config.json"))?,
            None => Pooling::Mean,
        };
        let sentence: SentenceConfig = match dir.join("sentence_bert_config.json") {
            p if p.is_file() => json(&p)?,
            _ => SentenceConfig { max_seq_length: None },
        };
        let max_tokens = sentence
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| LoadError::Tokenizer(format!("{}: {e}", tokenizer_path.display())))?;
        // Inputs are never padded or cut by the tokenizer: an input over the limit is refused.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let frame = tokenizer
            .encode("", true)
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
        let specials = frame.get_ids();
        let (prefix, suffix) = match specials {
            [] => (Vec::new(), Vec::new()),
            [first, rest @ ..] => (vec![*first], rest.to_vec()),
        };
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(config.pad_token_id as u32);

        let device = device.open()?;
        let weights_path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights_path, &device)
            .map_err(|e| LoadError::Weights(format!("{}: {e}", weights_path.display())))?;
        let parameters = tensors.values().map(|t| t.elem_count() as u64).sum();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = BertModel::load(vb, &config).map_err(|e| LoadError::Weights(e.to_string()))?;
        Ok(Self {
            description: ModelDescription {
                id: id.to_owned(),
                architecture: "bert".into(),
                quantization: "f32".into(),
                context_length: max_tokens,
                parameters,
                kv_bytes_per_token: 0,
            },
            dimensions: config.hidden_size,
            pooling,
            normalize,
            bert,
            tokenizer,
            prefix,
            suffix,
            vocab_size: config.vocab_size,
            pad_id,
            device,
        })
    }

    /// The most tokens one input may have, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.description.context_length
    }

    /// The token ids the model reads for an input, special tokens included; an input over the model's
    /// limit, empty, or naming a token outside its vocabulary is refused (never cut).
    pub fn tokens(&self, input: &Input) -> Result<Vec<u32>, String> {
        let ids = match input {
            Input::Text(text) => self
                .tokenizer
                .encode(text.as_str(), true)
                .map_err(|e| format!("cannot tokenize the input: {e}"))?
                .get_ids()
                .to_vec(),
            Input::Tokens(tokens) => {
                if tokens.is_empty() {
                    return Err("an input of tokens must hold at least one token".into());
                }
                if let Some(bad) = tokens.iter().find(|t| **t as usize >= self.vocab_size) {
                    return Err(format!(
                        "token {bad} is outside the vocabulary of {} ({} tokens)",
                        self.description.id, self.vocab_size
                    ));
                }
                let mut ids = Vec::with_capacity(tokens.len() + self.prefix.len() + self.suffix.len());
                ids.extend_from_slice(&self.prefix);
                ids.extend_from_slice(tokens);
                ids.extend_from_slice(&self.suffix);
                ids
            }
        };
        if ids.len() > self.max_tokens() {
            return Err(format!(
                "this model's maximum input length is {} tokens, however an input has {} tokens; shorten or split it",
                self.max_tokens(),
                ids.len()
            ));
        }
        Ok(ids)
    }

    /// Vectors for sequences of token ids (from [`Self::tokens`]), in one forward pass: padded to the
    /// longest, with the padding masked out of attention and pooling.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, candle_core::Error> {
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        if sequences.is_empty() || longest == 0 {
            return Ok(vec![Vec::new(); sequences.len()]);
        }
        let rows = sequences.len();
        let mut ids = Vec::with_capacity(rows * longest);
        let mut mask = Vec::with_capacity(rows * longest);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - s.len()));
        }
        let ids = Tensor::from_vec(ids, (rows, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, longest), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
        let weights = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean | Pooling::MeanSqrtLen => {
                let sum = hidden.broadcast_mul(&weights)?.sum(1)?;
                let count = weights.sum(1)?;
                let count = match self.pooling {
                    Pooling::Mean => count,
                    _ => count.sqrt()?,
                };
                sum.broadcast_div(&count)?
            }
            Pooling::Max => {
                // Padding positions get a very low value, so they never win.
                let floor = ((weights.ones_like()? - &weights)? * -1e9)?;
                hidden.broadcast_add(&floor)?.max(1)?
            }
        };
        let pooled = if self.normalize {
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        pooled.to_vec2()
    }
}

fn pooling_of(path: &Path) -> Result<Pooling, LoadError> {
    let c: PoolingConfig = json(path)?;
    match (
        c.pooling_mode_mean_tokens,
        c.pooling_mode_cls_token,
        c.pooling_mode_max_tokens,
        c.pooling_mode_mean_sqrt_len_tokens,
    ) {
        (true, false, false, false) => Ok(Pooling::Mean),
        (false, true, false, false) => Ok(Pooling::Cls),
        (false, false, true, false) => Ok(Pooling::Max),
        (false, false, false, true) => Ok(Pooling::MeanSqrtLen),
        _ => Err(LoadError::Unsupported(format!(
            "{}: exactly one pooling mode (mean, cls, max or mean_sqrt_len) must be on",
            path.display()
        ))),
    }
}
