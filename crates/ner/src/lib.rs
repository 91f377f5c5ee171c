//! The personal-data model: a BERT token classifier that tags names, addresses and identifiers written
//! as prose, shipped as a 4-bit ONNX file (see `docs/ner-model.md`).
//!
//! Today this crate owns the conversion of that file into plain f32 weights under Hugging Face's names
//! ([`convert`]), written as safetensors ([`to_safetensors`]), and the model that runs them on candle
//! ([`Tagger`]: label scores per token), with the model's tokenizer ([`WordPieces`]: pieces with their
//! byte offsets), the overlapping windows long text is tagged in ([`windows`]), and the entities read
//! from the labels ([`Recognizer::entities`]: kind and byte range). It reads the ONNX file with its own minimal protobuf messages
//! ([`onnx`]), so no ONNX runtime and no code generation is needed.
//!
//! It must never link the LLM engine or the worker, and never do network IO: it converts bytes it is
//! given and runs ids it is given.

pub mod convert;
pub mod cues;
pub mod model;
pub mod onnx;
pub mod personal;
pub mod tag;
pub mod tokenize;

pub use convert::{ConvertError, Tensor, convert, to_safetensors};
pub use model::{LABELS, ModelError, Tagger};
pub use personal::{Personal, PersonalKind, personal};
pub use tag::{Entity, EntityKind, Reading, Recognizer, TagError};
pub use tokenize::{Piece, TokenizeError, WordPieces, windows};
