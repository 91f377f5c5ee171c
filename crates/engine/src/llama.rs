//! A llama forward pass that serves many sequences at once (continuous batching).
//!
//! Every scheduler round runs one forward pass over the work of every running slot: prompt chunks and
//! single decode tokens side by side. The linear layers see all the round's tokens as one matrix, so the
//! weights are read once per round instead of once per sequence; attention runs per sequence against that
//! sequence's own KV cache. candle's `quantized_llama` (the reference this is tested against) runs one
//! sequence per pass, stops its RoPE table at 4,096 positions and holds the token embedding as f32 (about
//! 113 MB for SmolLM2); here the table covers the model's declared context and the embedding stays
//! quantized, with rows dequantized on lookup.

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use half::f16;

/// How layer weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored, except Q4_1 layer weights on CPU, which are re-quantized to Q8_0 at load. candle 0.11 has
    /// no SIMD kernel for Q4_1 on x86 (its dot product is scalar code), while Q8_0 has AVX2 kernels; Q8_0's
    /// grid (255 levels per block of 32) is about 8 times finer than Q4_1's (16 levels), so the change in
    /// the weights is small next to Q4_1's own rounding. It makes prompts about 2.5 times and decoding
    /// about 1.3 times faster for 1.7 times the layer weights' memory (see docs/benchmarks.md).
    #[default]
    Auto,
    /// Exactly as stored in the file.
    Native,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            _ => Err(format!(
                "unknown weight format {s:?}: expected \"auto\" or \"native\""
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
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    eps: f32,
    max_positions: usize,
    device: Device,
}

#[derive(Debug)]
struct Layer {
    attention_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    down: QMatMul,
    up: QMatMul,
}

/// The keys and values of one sequence, per layer, each `(1, n_kv_head, len, head_dim)`.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything, keeping nothing allocated.
    pub fn clear(&mut self) {
        self.layers.clear();
        self.len = 0;
    }
}

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
        let repack = format == WeightFormat::Auto && device.is_cpu();
        for i in 0..n_layer {
            let mut t = |suffix: &str| -> Result<QTensor> {
                let q = content.tensor(reader, &format!("blk.{i}.{suffix}"), device)?;
                if repack && q.dtype() == GgmlDType::Q4_1 {
                    return QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0);
                }
                Ok(q)
            };
            layers.push(Layer {
                attention_norm: t("attn_norm.weight")?.dequantize(device)?,
                wq: QMatMul::from_qtensor(t("attn_q.weight")?)?,
                wk: QMatMul::from_qtensor(t("attn_k.weight")?)?,
                wv: QMatMul::from_qtensor(t("attn_v.weight")?)?,
                wo: QMatMul::from_qtensor(t("attn_output.weight")?)?,
                ffn_norm: t("ffn_norm.weight")?.dequantize(device)?,
                gate: QMatMul::from_qtensor(t("ffn_gate.weight")?)?,
                down: QMatMul::from_qtensor(t("ffn_down.weight")?)?,
                up: QMatMul::from_qtensor(t("ffn_up.weight")?)?,
            });
        }

        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / rope_base.powf(i as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::new(inv_freq.as_slice(), device)?;
        let positions = Tensor::arange(0, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let angles = positions.matmul(&inv_freq.reshape((1, head_dim / 2))?)?;
        Ok(Self {
            embedding,
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            cos: angles.cos()?,
            sin: angles.sin()?,
            n_head,
            n_kv_head,
            head_dim,
            eps,
            max_positions,
            device: device.clone(),
        })
    }

    /// Positions the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Runs every item's tokens through the model in one pass, appending to each item's cache. Returns, per
    /// item, the logits after its last token when the item asked for them.
    pub fn forward(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<Option<Vec<f32>>>> {
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
        }
        for item in items.iter_mut() {
            item.cache.layers.resize(self.layers.len(), None);
        }
        let mut x = self.embedding.lookup(&tokens, &self.device)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attention_norm, self.eps)?;
            let q = layer.wq.forward(&h)?;
            let k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            let mut outputs = Vec::with_capacity(items.len());
            let mut offset = 0;
            for item in items.iter_mut() {
                let n = item.tokens.len();
                outputs.push(self.attend(l, item.cache, &q, &k, &v, offset, n)?);
                offset += n;
            }
            let attended = Tensor::cat(&outputs, 0)?;
            let x1 = (layer.wo.forward(&attended)? + &x)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.ffn_norm, self.eps)?;
            let mlp = layer
                .down
                .forward(&(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?)?;
            x = (mlp + x1)?;
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
            .map(|item| if item.logits { logits.next() } else { None })
            .collect())
    }

    /// Attention of one item's `n` tokens (rows `offset..offset + n` of `q`, `k`, `v`) over its cache.
    #[allow(clippy::too_many_arguments, reason = "one call site, all plain values")]
    fn attend(
        &self,
        layer: usize,
        cache: &mut KvCache,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        n: usize,
    ) -> Result<Tensor> {
        let (h, kvh, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let start = cache.len;
        let split = |t: &Tensor, heads: usize| -> Result<Tensor> {
            t.narrow(0, offset, n)?
                .reshape((1, n, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let q = candle_nn::rotary_emb::rope_i(&split(q, h)?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&split(k, kvh)?, &cos, &sin)?;
        let v = split(v, kvh)?;
        let (k, v) = match cache.layers[layer].take() {
            Some((k_cache, v_cache)) => (Tensor::cat(&[&k_cache, &k], 2)?, Tensor::cat(&[&v_cache, &v], 2)?),
            None => (k, v),
        };
        cache.layers[layer] = Some((k.clone(), v.clone()));
        let kv_len = start + n;
        let (k, v) = (repeat_kv(k, h / kvh)?, repeat_kv(v, h / kvh)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = if n > 1 {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..kv_len).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            scores.broadcast_add(&Tensor::from_vec(mask, (n, kv_len), &self.device)?)?
        } else {
            scores
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v.contiguous()?)?;
        out.transpose(1, 2)?.reshape((n, h * hd))
    }
}

/// `(1, kv_heads, len, d)` to `(1, kv_heads * n_rep, len, d)`, each kv head repeated for its query heads.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kvh, len, d) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, kvh * n_rep, len, d))
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
