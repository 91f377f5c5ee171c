//! Tiny llama GGUF files with random weights and a small byte-level vocabulary, for fast tests of the
//! engine and of everything built on it. Not for production use.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::template::CHATML_TEMPLATE;
use crate::tokenizer::encode_bytes_as_token_text;

/// Shape of a tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinyModel {
    pub layers: u32,
    pub hidden: usize,
    pub heads: u32,
    pub kv_heads: u32,
    pub feed_forward: usize,
    pub context_length: u32,
    pub seed: u64,
    /// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, no chat template) instead of the
    /// byte-level BPE one.
    pub sentencepiece: bool,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            feed_forward: 128,
            context_length: 1024,
            seed: 7,
            sentencepiece: false,
        }
    }
}

/// Special tokens of the tiny vocabulary, ChatML style, at ids 0, 1 and 2 as in SmolLM2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the tiny vocabulary, in the byte-level encoding, highest priority first.
pub const MERGES: [&str; 8] = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "1 2", "Ġ Ġ"];

/// The tiny vocabulary: 3 special tokens, the 256 byte tokens, then one token per merge.
pub fn vocabulary() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIAL_TOKENS.len()];
    for b in 0..=255u8 {
        tokens.push(encode_bytes_as_token_text(&[b]));
        types.push(1);
    }
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (tokens, types)
}

/// A tiny SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then pieces with scores.
pub fn sentencepiece_vocabulary() -> (Vec<String>, Vec<i32>, Vec<f32>) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].iter().map(|s| s.to_string()).collect();
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for piece in [
        "\u{2581}the",
        "\u{2581}",
        "t",
        "h",
        "e",
        "a",
        "n",
        "d",
        "he",
        "\u{2581}a",
    ] {
        tokens.push(piece.to_owned());
        types.push(1);
    }
    let scores = (0..tokens.len()).map(|i| -(i as f32) / 100.0).collect();
    (tokens, types, scores)
}

/// Writes a tiny llama GGUF (Q8_0 weights) to `path`.
pub fn write_tiny_gguf(path: &Path, shape: TinyModel) -> candle_core::Result<()> {
    let (tokens, types, scores) = if shape.sentencepiece {
        sentencepiece_vocabulary()
    } else {
        let (tokens, types) = vocabulary();
        (tokens, types, Vec::new())
    };
    let vocab = tokens.len();
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut tensor = |dims: &[usize], scale: f32| -> candle_core::Result<QTensor> {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
            .collect();
        let t = Tensor::from_vec(data, dims, &Device::Cpu)?;
        if dims.len() == 2 {
            QTensor::quantize(&t, GgmlDType::Q8_0)
        } else {
            QTensor::quantize(&t, GgmlDType::F32)
        }
    };
    let ones = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu)?,
            GgmlDType::F32,
        )
    };

    let h = shape.hidden;
    let head_dim = h / shape.heads as usize;
    let kv = head_dim * shape.kv_heads as usize;
    let mut named: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&[vocab, h], 1.0)?),
        ("output_norm.weight".into(), ones(h)?),
        ("output.weight".into(), tensor(&[vocab, h], 0.5)?),
    ];
    for l in 0..shape.layers {
        let p = format!("blk.{l}");
        named.push((format!("{p}.attn_q.weight"), tensor(&[h, h], 0.3)?));
        named.push((format!("{p}.attn_k.weight"), tensor(&[kv, h], 0.3)?));
        named.push((format!("{p}.attn_v.weight"), tensor(&[kv, h], 0.3)?));
        named.push((format!("{p}.attn_output.weight"), tensor(&[h, h], 0.3)?));
        named.push((
            format!("{p}.ffn_gate.weight"),
            tensor(&[shape.feed_forward, h], 0.3)?,
        ));
        named.push((
            format!("{p}.ffn_up.weight"),
            tensor(&[shape.feed_forward, h], 0.3)?,
        ));
        named.push((
            format!("{p}.ffn_down.weight"),
            tensor(&[h, shape.feed_forward], 0.3)?,
        ));
        named.push((format!("{p}.attn_norm.weight"), ones(h)?));
        named.push((format!("{p}.ffn_norm.weight"), ones(h)?));
    }

    let string = |s: &str| Value::String(s.to_owned());
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", string("llama")),
        ("general.name", string("tiny-test")),
        ("llama.context_length", Value::U32(shape.context_length)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.block_count", Value::U32(shape.layers)),
        ("llama.feed_forward_length", Value::U32(shape.feed_forward as u32)),
        ("llama.attention.head_count", Value::U32(shape.heads)),
        ("llama.attention.head_count_kv", Value::U32(shape.kv_heads)),
        ("llama.rope.dimension_count", Value::U32(head_dim as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ];
    if shape.sentencepiece {
        metadata.extend([
            ("tokenizer.ggml.model", string("llama")),
            (
                "tokenizer.ggml.tokens",
                Value::Array(tokens.iter().map(|t| string(t)).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.scores",
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ]);
    } else {
        metadata.extend([
            ("tokenizer.ggml.model", string("gpt2")),
            ("tokenizer.ggml.pre", string("smollm")),
            (
                "tokenizer.ggml.tokens",
                Value::Array(tokens.iter().map(|t| string(t)).collect()),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges",
                Value::Array(MERGES.iter().map(|m| string(m)).collect()),
            ),
            ("tokenizer.ggml.bos_token_id", Value::U32(1)),
            ("tokenizer.ggml.eos_token_id", Value::U32(2)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
            ("tokenizer.chat_template", string(CHATML_TEMPLATE)),
        ]);
    }
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    std::io::Write::flush(&mut file)?;
    Ok(())
}
