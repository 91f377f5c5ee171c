//! A loaded model: weights on a device, its tokenizer and chat template, and per-slot sequences that share
//! the weights and own a KV cache each.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use crate::error::LoadError;
use crate::gguf::{self, GgufMetadata};
use crate::llama::{BatchItem, ForwardPath, KvCache, KvFormat, LlamaWeights, Next, Pick, WeightFormat};
use crate::template::{CHATML_TEMPLATE, ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA device by ordinal; needs a build with the `cuda` feature.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("unknown device {s:?}: expected \"cpu\" or \"cuda:N\"")),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Whether this build can use the device at all.
    pub fn is_supported(&self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    pub(crate) fn open(&self) -> Result<Device, LoadError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) if cfg!(feature = "cuda") => {
                Device::new_cuda(*n).map_err(|e| LoadError::Device(format!("cuda:{n}: {e}")))
            }
            Self::Cuda(_) => Err(LoadError::Device(
                "this build has no CUDA support (build with --features cuda)".into(),
            )),
        }
    }
}

/// What a model is, as reported to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDescription {
    pub id: String,
    pub architecture: String,
    pub quantization: String,
    /// Usable context window: the smaller of what the model declares and what the engine supports.
    pub context_length: usize,
    pub parameters: u64,
    /// KV cache bytes per position of one sequence.
    pub kv_bytes_per_token: usize,
}

/// A model ready to serve.
#[derive(Debug)]
pub struct Model {
    pub description: ModelDescription,
    pub tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    /// Tokens that end a turn.
    end_of_generation: Vec<u32>,
    bos: Option<u32>,
    weights: LlamaWeights,
}

impl Model {
    pub fn kv_format(&self) -> KvFormat {
        self.weights.kv_format()
    }

    /// How KV caches made from now on hold their numbers (f16 unless set; see [`KvFormat`]).
    pub fn set_kv_format(&mut self, format: KvFormat) {
        self.weights.set_kv_format(format);
        self.description.kv_bytes_per_token = self.weights.kv_bytes_per_token();
    }

    /// Loads a llama-family GGUF file.
    pub fn load(path: &Path, id: &str, device: DeviceSpec, weights: WeightFormat) -> Result<Self, LoadError> {
        let (content, mut reader) = gguf::open(path)?;
        let meta = GgufMetadata::from_content(&content, path)?;
        let tokenizer = Tokenizer::new(&meta.vocabulary, meta.pre_tokenizer)?;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| meta.vocabulary.tokens.get(i as usize))
                .cloned()
                .unwrap_or_default()
        };
        let template_source = match &meta.chat_template {
            Some(t) => t.as_str(),
            None => {
                tracing::warn!(path = %path.display(), "the model has no tokenizer.chat_template; using ChatML");
                CHATML_TEMPLATE
            }
        };
        let template = ChatTemplate::new(
            template_source,
            &token_text(meta.bos_token_id),
            &token_text(meta.eos_token_id),
        )?;

        let mut end_of_generation: Vec<u32> = [meta.eos_token_id, meta.eot_token_id]
            .into_iter()
            .flatten()
            .collect();
        for text in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|end|>",
            "<|endoftext|>",
            "<end_of_turn>",
            "</s>",
        ] {
            if let Some(id) = tokenizer.token_id(text).filter(|id| tokenizer.is_special(*id)) {
                end_of_generation.push(id);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        if end_of_generation.is_empty() {
            return Err(LoadError::Unsupported(
                "the model declares no end-of-turn token".into(),
            ));
        }

        let device_handle = device.open()?;
        let weights = LlamaWeights::load(
            &content,
            &mut reader,
            &device_handle,
            meta.context_length,
            weights,
        )
        .map_err(|e| LoadError::Weights(e.to_string()))?;

        let description = ModelDescription {
            id: id.to_owned(),
            architecture: meta.architecture.clone(),
            quantization: meta.quantization.clone(),
            context_length: meta.context_length,
            parameters: meta.parameters,
            kv_bytes_per_token: weights.kv_bytes_per_token(),
        };
        Ok(Self {
            description,
            tokenizer: Arc::new(tokenizer),
            template,
            end_of_generation,
            bos: meta.add_bos_token.then_some(meta.bos_token_id).flatten(),
            weights,
        })
    }

    /// Renders a conversation with the chat template and tokenizes it.
    pub fn prompt_tokens(&self, messages: &[Message]) -> Result<Vec<u32>, String> {
        let text = self
            .template
            .render(messages)
            .map_err(|e| format!("chat template: {e}"))?;
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.extend(self.bos);
        ids.extend(self.tokenizer.encode(&text));
        Ok(ids)
    }

    /// Whether a token ends the assistant's turn.
    pub fn is_end_of_generation(&self, token: u32) -> bool {
        self.end_of_generation.binary_search(&token).is_ok()
    }

    /// The tokens that end a turn.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Runs one forward pass over every item (continuous batching; see [`crate::llama`]).
    pub fn forward(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>, String> {
        self.weights.forward(items).map_err(|e| e.to_string())
    }

    /// As [`Self::forward`], with the next token chosen where the logits are for the items whose
    /// [`Pick`] asks for it, where the pass can (see [`LlamaWeights::forward_next`]); a pick that bans
    /// never gets the end of generation.
    pub fn forward_next(
        &self,
        items: &mut [BatchItem<'_>],
        picks: &[Pick],
    ) -> Result<Vec<Option<Next>>, String> {
        self.weights
            .forward_next(items, picks, &self.end_of_generation)
            .map_err(|e| e.to_string())
    }

    pub fn forward_path(&self) -> ForwardPath {
        self.weights.forward_path()
    }

    /// Chooses the forward pass (see [`ForwardPath`]); before any sequence starts.
    pub fn set_forward_path(&mut self, path: ForwardPath) -> Result<(), String> {
        self.weights.set_forward_path(path).map_err(|e| e.to_string())
    }

    /// An empty KV cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::default()
    }
}
