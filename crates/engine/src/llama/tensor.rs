//! The forward pass in device tensors: every step of a layer (projections, RoPE, the KV cache, attention,
//! the feed-forward) is a candle operation on the device the model was loaded on, so on a GPU nothing
//! crosses to the host inside the pass. What comes back is, per sequence, the chosen token id (the argmax,
//! or a draw with the request's temperature, top-k and top-p, made on the device: see [`super::draw`]) or,
//! where the host must sample, one row of logits.
//!
//! This is the path for CUDA devices; on the CPU the host path in [`super`] is faster (it avoids candle's
//! per-operation overhead for single-token attention), and this one runs there only when asked for
//! ([`ForwardPath::Tensors`]), which is how the tests hold the two paths to each other without a GPU.

use candle_core::{DType, Device, IndexOp as _, Result, Tensor};

use super::{BatchItem, LlamaWeights, Next, Pick};

/// Which implementation of the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPath {
    /// Host vectors between the layers' matrix products, with Sluice's own attention and kernels: the CPU's
    /// path.
    Host,
    /// Device tensors from end to end (see this module): the path for GPUs, and available on the CPU.
    Tensors,
}

impl std::str::FromStr for ForwardPath {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "host" => Ok(Self::Host),
            "tensors" => Ok(Self::Tensors),
            _ => Err(format!(
                "unknown forward pass {s:?}: expected \"host\" or \"tensors\""
            )),
        }
    }
}

/// One layer's keys and values on the device: `[kv_head][position][head_dim]`, room for `capacity`
/// positions, filled up to the sequence's length.
#[derive(Debug, Clone)]
pub(super) struct TensorLayerCache {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
}

/// Positions a device cache grows by: small steps keep a sequence's cache close to its length (the KV
/// budget counts positions), and a step's copy is cheap next to the attention it serves.
const GROWTH: usize = 256;

impl TensorLayerCache {
    fn capacity(&self) -> usize {
        self.k.dims()[1]
    }
}

impl LlamaWeights {
    /// RoPE tables as device tensors, `(position, head_dim / 2)`, made on first use.
    fn rope_tables(&self) -> Result<&(Tensor, Tensor)> {
        if let Some(tables) = self.rope_tensors.get() {
            return Ok(tables);
        }
        let half = self.head_dim / 2;
        let cos = Tensor::from_slice(&self.cos, (self.max_positions, half), &self.device)?;
        let sin = Tensor::from_slice(&self.sin, (self.max_positions, half), &self.device)?;
        Ok(self.rope_tensors.get_or_init(|| (cos, sin)))
    }

    fn kv_dtype(&self) -> DType {
        match self.kv_format {
            super::KvFormat::F16 => DType::F16,
            super::KvFormat::F32 => DType::F32,
        }
    }

    /// Makes room in every layer of a sequence's device cache for `len` positions, keeping what it holds.
    fn reserve(&self, layers: &mut Vec<TensorLayerCache>, held: usize, len: usize) -> Result<()> {
        let (kvh, d) = (self.n_kv_head, self.head_dim);
        if layers.first().is_some_and(|c| c.capacity() >= len) && layers.len() == self.layers.len() {
            return Ok(());
        }
        let capacity = len.next_multiple_of(GROWTH).min(self.max_positions).max(len);
        let dtype = layers.first().map_or(self.kv_dtype(), |c| c.k.dtype());
        let grown = |old: Option<&Tensor>| -> Result<Tensor> {
            let new = Tensor::zeros((kvh, capacity, d), dtype, &self.device)?;
            if let Some(old) = old
                && held > 0
            {
                new.slice_set(&old.narrow(1, 0, held)?.contiguous()?, 1, 0)?;
            }
            Ok(new)
        };
        let mut next = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let old = layers.get(l);
            next.push(TensorLayerCache {
                k: grown(old.map(|c| &c.k))?,
                v: grown(old.map(|c| &c.v))?,
            });
        }
        *layers = next;
        Ok(())
    }

    /// The forward pass on device tensors. `picks[i]` says what item `i` wants back: its logits or a
    /// token chosen on the device (never one of `banned` where the pick says so).
    pub(super) fn forward_tensors(
        &self,
        items: &mut [BatchItem<'_>],
        tokens: &[u32],
        picks: &[Pick],
        banned: &[u32],
    ) -> Result<Vec<Option<Next>>> {
        let dev = &self.device;
        let total = tokens.len();
        let (h, kvh, d) = (self.n_head, self.n_kv_head, self.head_dim);
        let group = h / kvh;
        let (q_dim, kv_dim) = (h * d, kvh * d);
        let scale = 1.0 / (d as f64).sqrt();

        for item in items.iter_mut() {
            let cache = &mut *item.cache;
            self.reserve(&mut cache.tensors, cache.len, cache.len + item.tokens.len())?;
        }
        let positions: Vec<u32> = items
            .iter()
            .flat_map(|i| (i.cache.len..i.cache.len + i.tokens.len()).map(|p| p as u32))
            .collect();
        let positions = Tensor::new(positions.as_slice(), dev)?;
        let (cos, sin) = self.rope_tables()?;
        let (cos, sin) = (cos.index_select(&positions, 0)?, sin.index_select(&positions, 0)?);
        // Causal masks for the items that bring several tokens, `(group * n, len)`, the same in every layer.
        let masks = items
            .iter()
            .map(|item| {
                let (n, start) = (item.tokens.len(), item.cache.len);
                if n == 1 {
                    return Ok(None);
                }
                let len = start + n;
                let mask: Vec<f32> = (0..group * n)
                    .flat_map(|row| {
                        let i = row % n;
                        (0..len).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 })
                    })
                    .collect();
                Tensor::from_vec(mask, (group * n, len), dev).map(Some)
            })
            .collect::<Result<Vec<_>>>()?;

        let mut x = self.embedding.lookup(tokens, dev)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let normed = candle_nn::ops::rms_norm(&x, &layer.attention_norm, self.eps)?;
            let qkv = layer.qkv.forward_tensor(&normed)?;
            // `(1, heads, tokens, head_dim)`, each token rotated for its own position.
            let heads = |offset: usize, n: usize| -> Result<Tensor> {
                qkv.narrow(1, offset, n * d)?
                    .reshape((total, n, d))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)
            };
            let q = candle_nn::rotary_emb::rope_i(&heads(0, h)?, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope_i(&heads(q_dim, kvh)?, &cos, &sin)?.squeeze(0)?;
            let v = heads(q_dim + kv_dim, kvh)?.squeeze(0)?;
            let kv_dtype = self.kv_dtype();
            let (k, v) = (k.to_dtype(kv_dtype)?, v.to_dtype(kv_dtype)?);

            let mut attended = Vec::with_capacity(items.len());
            let mut row = 0;
            for (item, mask) in items.iter_mut().zip(&masks) {
                let (n, start) = (item.tokens.len(), item.cache.len);
                let cache = &item.cache.tensors[l];
                cache.k.slice_set(&k.narrow(1, row, n)?.contiguous()?, 1, start)?;
                cache.v.slice_set(&v.narrow(1, row, n)?.contiguous()?, 1, start)?;
                let len = start + n;
                let keys = cache.k.narrow(1, 0, len)?.to_dtype(DType::F32)?.contiguous()?;
                let values = cache.v.narrow(1, 0, len)?.to_dtype(DType::F32)?.contiguous()?;
                // Query heads that share a key head are stacked: `(kv_head, group * n, head_dim)`.
                let q = q.narrow(1, row, n)?.contiguous()?.reshape((kvh, group * n, d))?;
                let scores = (q.matmul(&keys.t()?)? * scale)?;
                let scores = match mask {
                    Some(mask) => scores.broadcast_add(mask)?,
                    None => scores,
                };
                let weights = candle_nn::ops::softmax_last_dim(&scores)?;
                let y = weights
                    .matmul(&values)?
                    .reshape((h, n, d))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((n, q_dim))?;
                attended.push(y);
                row += n;
            }
            let attended = Tensor::cat(&attended, 0)?;
            let x1 = (layer.wo.forward(&attended)? + &x)?;
            let normed = candle_nn::ops::rms_norm(&x1, &layer.ffn_norm, self.eps)?;
            let gate_up = layer.gate_up.forward_tensor(&normed)?;
            let ff = self.feed_forward;
            let act = (candle_nn::ops::silu(&gate_up.narrow(1, 0, ff)?)? * gate_up.narrow(1, ff, ff)?)?;
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
        if rows.is_empty() {
            return Ok(items.iter().map(|_| None).collect());
        }
        let last = x.index_select(&Tensor::new(rows.as_slice(), dev)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        let logits = self.output.forward(&last)?.to_dtype(DType::F32)?;
        let wanted: Vec<Pick> = items
            .iter()
            .zip(picks)
            .filter(|(item, _)| item.logits)
            .map(|(_, pick)| *pick)
            .collect();
        let chosen = super::draw::choose(&logits, &wanted, banned)?;
        let mut outputs = Vec::with_capacity(rows.len());
        for (r, token) in chosen.into_iter().enumerate() {
            outputs.push(match token {
                Some(token) => Next::Token(token),
                None => Next::Logits(logits.i(r)?.to_vec1::<f32>()?),
            });
        }
        let mut outputs = outputs.into_iter();
        Ok(items
            .iter()
            .map(|item| if item.logits { outputs.next() } else { None })
            .collect())
    }
}

/// Whether the device is the host's (for choosing the default path).
pub(super) fn default_path(device: &Device) -> ForwardPath {
    match device.is_cpu() {
        true => ForwardPath::Host,
        false => ForwardPath::Tensors,
    }
}
