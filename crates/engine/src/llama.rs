//! A llama forward pass that serves many sequences at once (continuous batching).
//!
//! Every scheduler round runs one forward pass over the work of every running slot: prompt chunks and
//! single decode tokens side by side. The linear layers see all the round's tokens as one matrix (with the
//! query, key and value projections fused into one, and the gate and up projections into another), so the
//! weights are read once per round instead of once per sequence. Attention runs per sequence against that
//! sequence's own KV cache: in plain Rust for a decode step (one query; a handful of candle operations per
//! sequence and layer would cost more than the arithmetic), with candle's matrix products for a prompt
//! chunk. candle's `quantized_llama` (the reference this is tested against) runs one
//! sequence per pass, stops its RoPE table at 4,096 positions and holds the token embedding as f32 (about
//! 113 MB for SmolLM2); here the table covers the model's declared context and the embedding stays
//! quantized, with rows dequantized on lookup.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

use crate::kernels::Q4Matrix;
pub use crate::sampler::Pick;
use half::f16;

/// How layer weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored, with Sluice's own kernels ([`crate::kernels`], which reuse each weight block across the
    /// streams of a round) on CPU: on CPUs with AVX-512 VNNI, Q4_1 layer weights stay Q4_1 (4 bits a weight,
    /// read at 20 bytes a block) on the Q4_1 kernel; elsewhere they are re-quantized to Q8_0 at load, since
    /// candle 0.11 has no SIMD kernel for Q4_1 on x86 (its dot product is scalar code). Q8_0's grid (255
    /// levels per block of 32) is about 8 times finer than Q4_1's (16 levels); measured on the demo model,
    /// perplexity stays within 1.5% of llama.cpp's either way.
    #[default]
    Auto,
    /// Q4_1 re-quantized as in `Auto`, and Q8_0 weights padded to an input width candle's VNNI kernel
    /// accepts (see [`Linear`]) instead of running on Sluice's kernel:
    /// on CPUs with AVX-512 VNNI or AVX-VNNI, prompts and batches of streams run about twice as fast again,
    /// while a single stream decodes about 15% slower, the kernel's coarser activation rounding costs
    /// another 1.6% of perplexity, and candle keeps a repacked copy of the weights (+190 MB on the demo
    /// model). For nodes that serve many streams at once. Elsewhere the same as `Auto`.
    Throughput,
    /// Exactly as stored in the file, with candle's generic kernels.
    Native,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "throughput" => Ok(Self::Throughput),
            _ => Err(format!(
                "unknown weight format {s:?}: expected \"auto\", \"throughput\" or \"native\""
            )),
        }
    }
}

/// Weights and shape of a llama model.
#[derive(Debug)]
pub struct LlamaWeights {
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    /// RoPE tables, `[position][head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f32,
    feed_forward: usize,
    max_positions: usize,
    kv_format: KvFormat,
    device: Device,
    path: ForwardPath,
    /// The RoPE tables on the device, for the tensor path (made on first use).
    rope_tensors: std::sync::OnceLock<(Tensor, Tensor)>,
}

/// What a forward pass gives back for a sequence that asked for its next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The logits after its last token.
    Logits(Vec<f32>),
    /// The token chosen after its last token, where the logits are (asked for with a [`Pick`] other than
    /// [`Pick::Logits`]: on a GPU, only this id crosses to the host).
    Token(u32),
}

#[derive(Debug)]
struct Layer {
    attention_norm: Tensor,
    /// Query, key and value projections, in that order.
    qkv: Projection,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate and up projections, in that order.
    gate_up: Projection,
    down: Linear,
}

mod draw;
mod kv;
mod linear;
mod tensor;

#[cfg(test)]
use kv::KvStore;
use kv::LayerCache;
pub use kv::{KvCache, KvFormat};
#[cfg(test)]
use linear::q8_0_repack_kernel;
use linear::{Linear, Projection};
pub use tensor::ForwardPath;

/// One sequence's share of a forward pass: `tokens` continue the sequence held in `cache`.
#[derive(Debug)]
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the logits after the last token are wanted (not for a prompt chunk that is not the last).
    pub logits: bool,
}

/// The token embedding: quantized rows decoded on lookup where the format is known, else dense f32.
#[derive(Debug)]
enum Embedding {
    Quantized {
        bytes: Vec<u8>,
        dtype: GgmlDType,
        row_bytes: usize,
        hidden: usize,
    },
    Dense(Tensor),
}

impl Embedding {
    fn new(tensor: &QTensor, hidden: usize, device: &Device) -> Result<Self> {
        let dtype = tensor.dtype();
        let block = match dtype {
            GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::F16 | GgmlDType::F32 => {
                dtype.block_size()
            }
            _ => return Ok(Self::Dense(tensor.dequantize(device)?)),
        };
        // On a GPU the table lives there whole, so a lookup never leaves the device.
        if !device.is_cpu() {
            return Ok(Self::Dense(tensor.dequantize(device)?));
        }
        if !hidden.is_multiple_of(block) {
            return Ok(Self::Dense(tensor.dequantize(device)?));
        }
        let row_bytes = hidden / block * dtype.type_size();
        let bytes = tensor.data()?.into_owned();
        Ok(Self::Quantized {
            bytes,
            dtype,
            row_bytes,
            hidden,
        })
    }

    fn lookup(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => {
                let ids = Tensor::new(tokens, device)?;
                table.index_select(&ids, 0)
            }
            Self::Quantized {
                bytes,
                dtype,
                row_bytes,
                hidden,
            } => {
                let mut out = vec![0f32; tokens.len() * hidden];
                for (token, dst) in tokens.iter().zip(out.chunks_exact_mut(*hidden)) {
                    let start = *token as usize * row_bytes;
                    let Some(row) = bytes.get(start..start + row_bytes) else {
                        candle_core::bail!("token id {token} is outside the embedding table");
                    };
                    dequantize_row(*dtype, row, dst);
                }
                Tensor::from_vec(out, (tokens.len(), *hidden), device)
            }
        }
    }
}

/// Decodes one row of GGML blocks (the formats [`Embedding::new`] accepts).
fn dequantize_row(dtype: GgmlDType, row: &[u8], dst: &mut [f32]) {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match dtype {
        GgmlDType::F32 => {
            for (d, b) in dst.iter_mut().zip(row.chunks_exact(4)) {
                *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlDType::F16 => {
            for (d, b) in dst.iter_mut().zip(row.chunks_exact(2)) {
                *d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlDType::Q8_0 => {
            for (block, out) in row.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
                let scale = f16_at(block, 0);
                for (o, q) in out.iter_mut().zip(&block[2..]) {
                    *o = f32::from(*q as i8) * scale;
                }
            }
        }
        GgmlDType::Q4_0 => {
            for (block, out) in row.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
                let scale = f16_at(block, 0);
                for (j, q) in block[2..].iter().enumerate() {
                    out[j] = (f32::from(q & 0x0F) - 8.0) * scale;
                    out[j + 16] = (f32::from(q >> 4) - 8.0) * scale;
                }
            }
        }
        GgmlDType::Q4_1 => {
            for (block, out) in row.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
                let (scale, min) = (f16_at(block, 0), f16_at(block, 2));
                for (j, q) in block[4..].iter().enumerate() {
                    out[j] = f32::from(q & 0x0F) * scale + min;
                    out[j + 16] = f32::from(q >> 4) * scale + min;
                }
            }
        }
        _ => dst.fill(0.0),
    }
}

impl LlamaWeights {
    /// Loads the weights of a llama GGUF, with RoPE tables for `max_positions` positions.
    pub fn load<R: std::io::Read + std::io::Seek>(
        content: &Content,
        reader: &mut R,
        device: &Device,
        max_positions: usize,
        format: WeightFormat,
    ) -> Result<Self> {
        let md = |key: &str| match content.metadata.get(key) {
            Some(v) => Ok(v),
            None => candle_core::bail!("no {key} in the GGUF metadata"),
        };
        if md("llama.expert_count").and_then(|v| v.to_u32()).unwrap_or(0) > 1 {
            candle_core::bail!("mixture-of-experts llama models are not supported");
        }
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let n_layer = md("llama.block_count")?.to_u32()? as usize;
        let hidden = md("llama.embedding_length")?.to_u32()? as usize;
        let eps = md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let rope_base = md("llama.rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        if n_head == 0
            || n_kv_head == 0
            || !hidden.is_multiple_of(n_head)
            || !n_head.is_multiple_of(n_kv_head)
        {
            candle_core::bail!(
                "inconsistent attention shape: {n_head} heads, {n_kv_head} kv heads, {hidden} wide"
            );
        }
        let head_dim = hidden / n_head;
        let rope_dim = md("llama.rope.dimension_count")
            .and_then(|v| v.to_u32())
            .map_or(head_dim, |v| v as usize);
        if rope_dim != head_dim {
            candle_core::bail!("partial rotary embeddings ({rope_dim} of {head_dim}) are not supported");
        }

        let token_embd = content.tensor(reader, "token_embd.weight", device)?;
        let embedding = Embedding::new(&token_embd, hidden, device)?;
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => content.tensor(reader, "output.weight", device)?,
            false => token_embd,
        };
        let norm = content
            .tensor(reader, "output_norm.weight", device)?
            .dequantize(device)?;
        let mut layers = Vec::with_capacity(n_layer);
        let mut feed_forward = 0;
        // Q4_1 layer weights stay as stored where Sluice's Q4_1 kernel runs (`auto` on AVX-512 VNNI);
        // elsewhere they become Q8_0 (see `WeightFormat::Auto`).
        let keep_q4 = format == WeightFormat::Auto && Q4Matrix::available();
        let repack = format != WeightFormat::Native && device.is_cpu() && !keep_q4;
        for i in 0..n_layer {
            let mut t = |suffix: &str| -> Result<QTensor> {
                let q = content.tensor(reader, &format!("blk.{i}.{suffix}"), device)?;
                if repack && q.dtype() == GgmlDType::Q4_1 {
                    return QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0);
                }
                Ok(q)
            };
            let gate = t("ffn_gate.weight")?;
            if i == 0 {
                feed_forward = gate.shape().dims()[0];
            }
            layers.push(Layer {
                attention_norm: t("attn_norm.weight")?.dequantize(device)?,
                qkv: Projection::new(
                    vec![t("attn_q.weight")?, t("attn_k.weight")?, t("attn_v.weight")?],
                    format,
                )?,
                wo: Linear::new(t("attn_output.weight")?, format)?,
                ffn_norm: t("ffn_norm.weight")?.dequantize(device)?,
                gate_up: Projection::new(vec![gate, t("ffn_up.weight")?], format)?,
                down: Linear::new(t("ffn_down.weight")?, format)?,
            });
        }

        // RoPE angles in f32 as candle's reference computes them, so both give the same rotations.
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / rope_base.powf(i as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            embedding,
            layers,
            norm,
            output: Linear::new(output, format)?,
            cos,
            sin,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            feed_forward,
            max_positions,
            kv_format: KvFormat::default(),
            device: device.clone(),
            path: tensor::default_path(device),
            rope_tensors: std::sync::OnceLock::new(),
        })
    }

    /// Positions the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes of KV cache one position of one sequence takes (keys and values, every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers.len() * 2 * self.n_kv_head * self.head_dim * self.kv_format.bytes()
    }

    pub fn kv_format(&self) -> KvFormat {
        self.kv_format
    }

    /// How caches made from now on hold their numbers (a cache keeps the format it was started with).
    pub fn set_kv_format(&mut self, format: KvFormat) {
        self.kv_format = format;
    }

    /// Which forward pass runs: [`ForwardPath::Host`] on the CPU, [`ForwardPath::Tensors`] elsewhere,
    /// unless set.
    pub fn forward_path(&self) -> ForwardPath {
        self.path
    }

    /// Chooses the forward pass (the tensor path runs on any device; the host path needs the CPU). A
    /// sequence's cache belongs to the path that started it.
    pub fn set_forward_path(&mut self, path: ForwardPath) -> Result<()> {
        if path == ForwardPath::Host && !self.device.is_cpu() {
            candle_core::bail!("the host forward pass runs on the CPU only");
        }
        self.path = path;
        Ok(())
    }

    /// Runs every item's tokens through the model in one pass, appending to each item's cache. Returns, per
    /// item, the logits after its last token when the item asked for them.
    pub fn forward(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
        Ok(self
            .forward_next(items, &[], &[])?
            .into_iter()
            .map(|next| match next {
                Some(Next::Logits(logits)) => Some(logits),
                _ => None,
            })
            .collect())
    }

    /// As [`Self::forward`], where `picks[i]` (missing: [`Pick::Logits`]) lets item `i` have its next
    /// token chosen where the logits are, which saves copying them off the device (the tensor path; the
    /// host path always gives logits, and so does the tensor path for a draw it cannot make exactly). A pick
    /// that bans never chooses a token of `banned`.
    pub fn forward_next(
        &self,
        items: &mut [BatchItem<'_>],
        picks: &[Pick],
        banned: &[u32],
    ) -> Result<Vec<Option<Next>>> {
        let tokens: Vec<u32> = items.iter().flat_map(|i| i.tokens.iter().copied()).collect();
        if tokens.is_empty() {
            return Ok(items.iter().map(|_| None).collect());
        }
        for item in items.iter() {
            if item.tokens.is_empty() || item.cache.len + item.tokens.len() > self.max_positions {
                candle_core::bail!(
                    "a batch item needs positions {}..{} of {}",
                    item.cache.len,
                    item.cache.len + item.tokens.len(),
                    self.max_positions
                );
            }
            let (host, tensors) = (!item.cache.layers.is_empty(), !item.cache.tensors.is_empty());
            let theirs = match self.path {
                ForwardPath::Host => tensors,
                ForwardPath::Tensors => host,
            };
            if theirs {
                candle_core::bail!("a sequence's cache was started by the other forward pass");
            }
        }
        if self.path == ForwardPath::Tensors {
            let picks: Vec<Pick> = (0..items.len())
                .map(|i| picks.get(i).copied().unwrap_or(Pick::Logits))
                .collect();
            return self.forward_tensors(items, &tokens, &picks, banned);
        }
        self.forward_host(items, &tokens)
    }

    fn forward_host(&self, items: &mut [BatchItem<'_>], tokens: &[u32]) -> Result<Vec<Option<Next>>> {
        for item in items.iter_mut() {
            item.cache
                .layers
                .resize(self.layers.len(), LayerCache::new(self.kv_format));
        }
        let total = tokens.len();
        let (q_dim, kv_dim) = (self.n_head * self.head_dim, self.n_kv_head * self.head_dim);
        let width = q_dim + 2 * kv_dim;
        let mut x = self.embedding.lookup(tokens, &self.device)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&x, &layer.attention_norm, self.eps)?;
            let mut qkv = layer.qkv.forward(&normed)?;
            if qkv.len() != total * width {
                candle_core::bail!(
                    "layer {l}: projections gave {} values for {total} tokens",
                    qkv.len()
                );
            }
            let mut attended = vec![0f32; total * q_dim];
            // Rotate and append every item's keys and values, and run prompt chunks (candle's matrix
            // products use the pool themselves). Decode steps are gathered and attended in parallel below.
            let mut decodes = Vec::new();
            let mut rest = attended.as_mut_slice();
            let mut row = 0;
            for item in items.iter_mut() {
                let n = item.tokens.len();
                let start = item.cache.len;
                let cache = &mut item.cache.layers[l];
                for t in 0..n {
                    let r = &mut qkv[(row + t) * width..(row + t + 1) * width];
                    let (q, kv) = r.split_at_mut(q_dim);
                    let (k, v) = kv.split_at_mut(kv_dim);
                    self.rope(q, start + t);
                    self.rope(k, start + t);
                    cache.k.push(k);
                    cache.v.push(v);
                }
                let (out, tail) = std::mem::take(&mut rest).split_at_mut(n * q_dim);
                rest = tail;
                if n == 1 {
                    decodes.push((row, &*cache, start + 1, std::sync::Mutex::new(out)));
                } else {
                    let q: Vec<f32> = (0..n)
                        .flat_map(|t| qkv[(row + t) * width..(row + t) * width + q_dim].iter().copied())
                        .collect();
                    self.attend_many(q, cache, start, n, out)?;
                }
                row += n;
            }
            let qkv = &qkv;
            candle_core::utils::barrier_pool().execute_chunked(decodes.len(), |range| {
                for (row, cache, len, out) in &decodes[range] {
                    let mut out = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.attend_one(&qkv[row * width..row * width + q_dim], cache, *len, &mut out);
                }
            });
            drop(decodes);
            let attended = Tensor::from_vec(attended, (total, q_dim), &self.device)?;
            let x1 = (layer.wo.forward(&attended)? + &x)?;
            let normed = candle_nn::ops::rms_norm(&x1, &layer.ffn_norm, self.eps)?;
            let gate_up = layer.gate_up.forward(&normed)?;
            let ff = self.feed_forward;
            let mut act = Vec::with_capacity(total * ff);
            for r in gate_up.chunks_exact(2 * ff) {
                let (gate, up) = r.split_at(ff);
                act.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
            }
            let act = Tensor::from_vec(act, (total, ff), &self.device)?;
            x = (layer.down.forward(&act)? + x1)?;
        }
        for item in items.iter_mut() {
            item.cache.len += item.tokens.len();
        }

        let mut rows = Vec::new();
        let mut end = 0u32;
        for item in items.iter() {
            end += item.tokens.len() as u32;
            if item.logits {
                rows.push(end - 1);
            }
        }
        let mut logits = if rows.is_empty() {
            Vec::new()
        } else {
            let last = x.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
            let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
            self.output
                .forward(&last)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?
        }
        .into_iter();
        Ok(items
            .iter()
            .map(|item| {
                if item.logits {
                    logits.next().map(Next::Logits)
                } else {
                    None
                }
            })
            .collect())
    }

    /// Rotates one row of heads (`[head][head_dim]`) for `pos`, pairing elements `2i` and `2i + 1` (GGUF
    /// llama weights are laid out for this interleaved form).
    fn rope(&self, heads: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in heads.chunks_exact_mut(self.head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * cos[i] - x1 * sin[i];
                pair[1] = x0 * sin[i] + x1 * cos[i];
            }
        }
    }

    /// Attention of one query row (`[head][head_dim]`) over the first `len` cached positions. The query
    /// heads that share a key head are done together, so each cached row is read (and widened from f16)
    /// once per key head.
    fn attend_one(&self, q: &[f32], cache: &LayerCache, len: usize, out: &mut [f32]) {
        let (d, kvh) = (self.head_dim, self.n_kv_head);
        let group = self.n_head / kvh;
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0f32; group * len];
        let mut row = vec![0f32; d];
        for g in 0..kvh {
            let heads = &q[g * group * d..(g + 1) * group * d];
            for p in 0..len {
                let k = cache.k.read((p * kvh + g) * d..(p * kvh + g + 1) * d, &mut row);
                for (h, qh) in heads.chunks_exact(d).enumerate() {
                    scores[h * len + p] = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
            }
            for head_scores in scores.chunks_exact_mut(len) {
                let max = head_scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                let mut sum = 0.0;
                for score in head_scores.iter_mut() {
                    *score = (*score - max).exp();
                    sum += *score;
                }
                for score in head_scores.iter_mut() {
                    *score /= sum;
                }
            }
            let outs = &mut out[g * group * d..(g + 1) * group * d];
            outs.fill(0.0);
            for p in 0..len {
                let v = cache.v.read((p * kvh + g) * d..(p * kvh + g + 1) * d, &mut row);
                for (h, oh) in outs.chunks_exact_mut(d).enumerate() {
                    let w = scores[h * len + p];
                    for (o, x) in oh.iter_mut().zip(v) {
                        *o += w * x;
                    }
                }
            }
        }
    }

    /// Causal attention of `n` query rows (positions `start..start + n`, `q` is `[token][head][head_dim]`)
    /// over the cache, with candle's matrix products. Query heads that share a key head are stacked so the
    /// keys and values are never copied per query head.
    fn attend_many(
        &self,
        q: Vec<f32>,
        cache: &LayerCache,
        start: usize,
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let group = h / kvh;
        let len = start + n;
        let dev = &self.device;
        let q = Tensor::from_vec(q, (n, h, d), dev)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((kvh, group * n, d))?;
        let k = Tensor::from_slice(&cache.k.prefix(len * kvh * d), (len, kvh, d), dev)?
            .transpose(0, 1)?
            .contiguous()?;
        let v = Tensor::from_slice(&cache.v.prefix(len * kvh * d), (len, kvh, d), dev)?
            .transpose(0, 1)?
            .contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let mask: Vec<f32> = (0..group * n)
            .flat_map(|row| {
                let i = row % n;
                (0..len).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let scores = scores.broadcast_add(&Tensor::from_vec(mask, (group * n, len), dev)?)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights
            .matmul(&v)?
            .reshape((h, n, d))?
            .transpose(0, 1)?
            .contiguous()?;
        out.copy_from_slice(&y.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}

/// The largest difference between two logit vectors (for tests against the reference implementation).
#[doc(hidden)]
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[doc(hidden)]
pub fn argmax(xs: &[f32]) -> usize {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests;
