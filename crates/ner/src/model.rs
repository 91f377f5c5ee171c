//! The token classifier run by candle: candle-transformers' `BertModel` over the converted weights, and
//! the `Linear(384, 35)` classifier on every token. [`Tagger::logits`] gives each token's 35 label
//! scores ([`LABELS`]); choosing spans from them is the caller's.
//! CPU only, f32; it never tokenises (ids come in) and never does IO.

use std::collections::HashMap;

use candle_core::{DType, Device, Module as _};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};

use crate::convert::Tensor;

/// The labels, by id: `O`, then `B-`/`I-` for each kind.
pub const LABELS: [&str; 35] = [
    "O",
    "B-GIVEN_NAME",
    "I-GIVEN_NAME",
    "B-SURNAME",
    "I-SURNAME",
    "B-EMAIL",
    "I-EMAIL",
    "B-PHONE",
    "I-PHONE",
    "B-URL",
    "I-URL",
    "B-TAX_ID",
    "I-TAX_ID",
    "B-BANK_ACCOUNT",
    "I-BANK_ACCOUNT",
    "B-ROUTING_NUMBER",
    "I-ROUTING_NUMBER",
    "B-GOVERNMENT_ID",
    "I-GOVERNMENT_ID",
    "B-PASSPORT",
    "I-PASSPORT",
    "B-DRIVERS_LICENSE",
    "I-DRIVERS_LICENSE",
    "B-BUILDING_NUMBER",
    "I-BUILDING_NUMBER",
    "B-STREET_NAME",
    "I-STREET_NAME",
    "B-SECONDARY_ADDRESS",
    "I-SECONDARY_ADDRESS",
    "B-CITY",
    "I-CITY",
    "B-STATE",
    "I-STATE",
    "B-ZIP_CODE",
    "I-ZIP_CODE",
];

/// The most tokens one pass takes (the model's positions).
pub const MAX_TOKENS: usize = 512;

/// The model's shape (its `config.json`).
pub fn config() -> Config {
    Config {
        vocab_size: 19_730,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1_536,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.1,
        max_position_embeddings: MAX_TOKENS,
        type_vocab_size: 2,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: true,
        classifier_dropout: None,
        model_type: Some("bert".into()),
    }
}

/// Why the model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0} tokens: one pass takes 1 to {MAX_TOKENS}")]
    Length(usize),
}

/// The token classifier.
pub struct Tagger {
    bert: BertModel,
    classifier: Linear,
    device: Device,
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tagger").finish_non_exhaustive()
    }
}

impl Tagger {
    /// Builds the model from converted tensors ([`crate::convert`]).
    pub fn from_tensors(tensors: Vec<Tensor>) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let mut map = HashMap::with_capacity(tensors.len());
        for t in tensors {
            let value = candle_core::Tensor::from_vec(t.data, t.shape, &device)?;
            map.insert(t.name, value);
        }
        Self::from_map(map, device)
    }

    /// Builds the model from the safetensors file `sluice models pull --ner` writes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, ModelError> {
        let device = Device::Cpu;
        let map = candle_core::safetensors::load_buffer(bytes, &device)?;
        Self::from_map(map, device)
    }

    fn from_map(map: HashMap<String, candle_core::Tensor>, device: Device) -> Result<Self, ModelError> {
        let vb = VarBuilder::from_tensors(map, DType::F32, &device);
        let config = config();
        let bert = BertModel::load(vb.clone(), &config)?;
        let classifier = candle_nn::linear(config.hidden_size, LABELS.len(), vb.pp("classifier"))?;
        Ok(Self {
            bert,
            classifier,
            device,
        })
    }

    /// Each token's label scores for one sequence of ids (`[CLS] ... [SEP]` included by the caller).
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, ModelError> {
        if ids.is_empty() || ids.len() > MAX_TOKENS {
            return Err(ModelError::Length(ids.len()));
        }
        let input = candle_core::Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let types = input.zeros_like()?;
        let mask = input.ones_like()?;
        let hidden = self.bert.forward(&input, &types, Some(&mask))?;
        let logits = self.classifier.forward(&hidden)?.squeeze(0)?;
        Ok(logits.to_vec2()?)
    }
}
