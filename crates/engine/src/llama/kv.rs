//! A sequence's KV cache: per layer, keys and values appended position by position, f16 or f32.

use std::borrow::Cow;

use half::f16;

/// The keys and values of one sequence: per layer, `[position][kv_head][head_dim]`, appended in place.
#[derive(Debug, Default)]
pub struct KvCache {
    /// The host path's cache.
    pub(super) layers: Vec<LayerCache>,
    /// The tensor path's cache, on the model's device.
    pub(super) tensors: Vec<super::tensor::TensorLayerCache>,
    pub(super) len: usize,
}

/// How the KV cache holds its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvFormat {
    /// Half precision, as llama.cpp keeps its cache by default: half the memory per token. Keys and values
    /// are rounded once, when they are stored; attention itself runs in f32.
    #[default]
    F16,
    /// Single precision: exactly the values the projections made (what candle's reference keeps).
    F32,
}

impl KvFormat {
    pub fn bytes(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct LayerCache {
    pub(super) k: KvStore,
    pub(super) v: KvStore,
}

impl LayerCache {
    pub(super) fn new(format: KvFormat) -> Self {
        let store = match format {
            KvFormat::F16 => KvStore::F16(Vec::new()),
            KvFormat::F32 => KvStore::F32(Vec::new()),
        };
        Self {
            k: store.clone(),
            v: store,
        }
    }
}

/// Keys or values of one layer.
#[derive(Debug, Clone)]
pub(super) enum KvStore {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvStore {
    pub(super) fn push(&mut self, xs: &[f32]) {
        match self {
            Self::F32(v) => v.extend_from_slice(xs),
            Self::F16(v) => {
                use half::slice::HalfFloatSliceExt as _;
                let start = v.len();
                v.resize(start + xs.len(), f16::ZERO);
                v[start..].convert_from_f32_slice(xs);
            }
        }
    }

    /// Values `range` as f32: borrowed when stored so, else widened into `buf` (at least as long).
    pub(super) fn read<'a>(&'a self, range: std::ops::Range<usize>, buf: &'a mut [f32]) -> &'a [f32] {
        match self {
            Self::F32(v) => &v[range],
            Self::F16(v) => {
                use half::slice::HalfFloatSliceExt as _;
                let out = &mut buf[..range.len()];
                v[range].convert_to_f32_slice(out);
                out
            }
        }
    }

    /// The first `n` values as f32.
    pub(super) fn prefix(&self, n: usize) -> Cow<'_, [f32]> {
        match self {
            Self::F32(v) => Cow::Borrowed(&v[..n]),
            Self::F16(v) => {
                use half::slice::HalfFloatSliceExt as _;
                Cow::Owned(v[..n].to_f32_vec())
            }
        }
    }
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
        self.tensors.clear();
        self.len = 0;
    }
}
