//! Sluice's model engine: loads llama-family GGUF models with candle, tokenizes with the model's own
//! byte-level BPE and pre-tokenizer, renders its chat template, samples, and schedules many requests over a
//! fixed number of slots that share the weights; and serves sentence-embedding models (BERT-family
//! encoders in sentence-transformers folders) through a batcher of its own.
//!
//! This crate owns everything that touches candle; it is linked by the worker daemon only, so no other
//! crate ever compiles candle. It does no network IO and knows nothing of gRPC: requests come in as
//! [`Request`] values and results leave as [`Event`]s on a channel.

pub mod embed;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod model;
pub mod sampler;
pub mod scheduler;
pub mod template;
#[doc(hidden)]
pub mod testing;
pub mod text;
pub mod tokenizer;

pub use embed::batch::{EmbedConfig, EmbedRequest, Embedded, Embedder};
pub use embed::{EmbeddingModel, Input as EmbedInput, is_embedding_folder};
pub use error::{LoadError, RunError, SubmitError};
pub use llama::{ForwardPath, KvFormat, WeightFormat};
pub use model::{DeviceSpec, Model, ModelDescription};
pub use sampler::SamplingParams;
pub use scheduler::{
    Engine, EngineConfig, EngineState, Event, FinishReason, Finished, LoadSnapshot, Request, Timings, Usage,
};
pub use template::Message;
