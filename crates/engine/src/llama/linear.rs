//! The model's linear maps: which kernel multiplies each weight matrix (Sluice's Q8_0 or Q4_1 kernels, or
//! candle's, padded where that lets candle use a faster one), and projections fused into one matrix.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Module, Result, Tensor};

use super::WeightFormat;
use crate::kernels::{Q4Matrix, Q8Matrix};

/// A linear map, with its input width padded where that lets candle use a faster kernel.
///
/// candle's VNNI kernel for Q8_0 (a real matrix-matrix product that reuses each weight tile across the
/// rows of a batch) needs the input width to be a multiple of 256; SmolLM2's is 576. With
/// [`WeightFormat::Throughput`], on CPUs where candle picks that kernel, the weights are padded with zero
/// blocks to 768: a third more arithmetic, for products that run several times faster on batches. The
/// extra columns are zero in the weights and in the input, so padding itself changes nothing; the kernel
/// rounds activations in blocks of 256 values instead of 32, which is where the accuracy goes.
#[derive(Debug)]
pub(super) struct Linear {
    kernel: Kernel,
    /// Input width as stored, and as the kernel sees it.
    k: usize,
    pub(super) padded_k: usize,
}

/// Who multiplies.
#[derive(Debug)]
pub(super) enum Kernel {
    Candle(QMatMul),
    /// Our Q8_0 kernel, which reuses weights across the rows of a batch (see [`crate::kernels`]).
    Q8(Q8Matrix),
    /// Our Q4_1 kernel on AVX-512 VNNI: the weights as stored (see [`crate::kernels::Q4Matrix`]).
    Q4(Q4Matrix),
}

/// The block size candle's repacked x86 kernels need the input width to be a multiple of.
const REPACK_K: usize = 256;

/// Whether candle's repacked Q8_0 kernel runs on this CPU (its own test: AVX-512 VNNI, or AVX-VNNI).
pub(super) fn q8_0_repack_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vnni"))
            || (std::arch::is_x86_feature_detected!("avxvnni") && std::arch::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Linear {
    /// `format` [`WeightFormat::Native`] keeps the weights exactly as stored (no padding).
    pub(super) fn new(weight: QTensor, format: WeightFormat) -> Result<Self> {
        let (rows, k) = weight.shape().dims2()?;
        let pad = format == WeightFormat::Throughput
            && weight.dtype() == GgmlDType::Q8_0
            && weight.device().is_cpu()
            && !k.is_multiple_of(REPACK_K)
            && rows.is_multiple_of(16)
            && q8_0_repack_kernel();
        let own = format == WeightFormat::Auto && weight.device().is_cpu();
        if own
            && weight.dtype() == GgmlDType::Q4_1
            && Q4Matrix::available()
            && let Some(matrix) = Q4Matrix::from_ggml(&weight.data()?, rows, k)
        {
            return Ok(Self {
                kernel: Kernel::Q4(matrix),
                k,
                padded_k: k,
            });
        }
        let own = own && weight.dtype() == GgmlDType::Q8_0;
        if own && let Some(matrix) = Q8Matrix::from_ggml(&weight.data()?, rows, k) {
            return Ok(Self {
                kernel: Kernel::Q8(matrix),
                k,
                padded_k: k,
            });
        }
        if !pad {
            return Ok(Self {
                kernel: Kernel::Candle(QMatMul::from_qtensor(weight)?),
                k,
                padded_k: k,
            });
        }
        let padded_k = k.next_multiple_of(REPACK_K);
        let block_bytes = GgmlDType::Q8_0.type_size();
        let (row_bytes, extra) = (k / 32 * block_bytes, (padded_k - k) / 32 * block_bytes);
        let data = weight.data()?;
        let mut bytes = Vec::with_capacity(rows * (row_bytes + extra));
        for row in data.chunks_exact(row_bytes) {
            bytes.extend_from_slice(row);
            // A zero block: scale 0.0 (f16) and 32 zero quants.
            bytes.resize(bytes.len() + extra, 0);
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &weight.device(), GgmlDType::Q8_0)?;
        let matmul = QMatMul::from_qtensor(QTensor::new(storage, (rows, padded_k))?)?;
        Ok(Self {
            kernel: Kernel::Candle(matmul),
            k,
            padded_k,
        })
    }

    /// `x` is `(tokens, k)`; the result is row-major `(tokens, out)`.
    pub(super) fn forward_vec(&self, x: &Tensor) -> Result<Vec<f32>> {
        match &self.kernel {
            Kernel::Q8(matrix) => {
                let (m, k) = x.dims2()?;
                if k != matrix.k() {
                    candle_core::bail!("a {k}-wide input for a matrix {} wide", matrix.k());
                }
                Ok(matrix.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m))
            }
            Kernel::Q4(matrix) => {
                let (m, k) = x.dims2()?;
                if k != matrix.k() {
                    candle_core::bail!("a {k}-wide input for a matrix {} wide", matrix.k());
                }
                Ok(matrix.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m))
            }
            Kernel::Candle(matmul) => {
                let y = if self.padded_k == self.k {
                    matmul.forward(x)?
                } else {
                    matmul.forward(&x.pad_with_zeros(candle_core::D::Minus1, 0, self.padded_k - self.k)?)?
                };
                y.flatten_all()?.to_vec1::<f32>()
            }
        }
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kernel {
            Kernel::Q8(matrix) => {
                let (m, _) = x.dims2()?;
                Tensor::from_vec(self.forward_vec(x)?, (m, matrix.rows()), x.device())
            }
            Kernel::Q4(matrix) => {
                let (m, _) = x.dims2()?;
                Tensor::from_vec(self.forward_vec(x)?, (m, matrix.rows()), x.device())
            }
            Kernel::Candle(matmul) if self.padded_k == self.k => matmul.forward(x),
            Kernel::Candle(matmul) => {
                matmul.forward(&x.pad_with_zeros(candle_core::D::Minus1, 0, self.padded_k - self.k)?)
            }
        }
    }
}

/// Several linear maps of the same input, fused into one matrix when their weights share a format.
#[derive(Debug)]
pub(super) enum Projection {
    Fused(Linear),
    Separate(Vec<Linear>),
}

impl Projection {
    pub(super) fn new(parts: Vec<QTensor>, format: WeightFormat) -> Result<Self> {
        let same_format = parts.windows(2).all(|w| {
            w[0].dtype() == w[1].dtype() && w[0].shape().dims().get(1) == w[1].shape().dims().get(1)
        });
        let device = parts.first().map(|p| p.device());
        match (same_format, device) {
            (true, Some(device)) => {
                let cols = parts[0].shape().dims()[1];
                let rows: usize = parts.iter().map(|p| p.shape().dims()[0]).sum();
                let dtype = parts[0].dtype();
                let mut bytes = Vec::new();
                for p in &parts {
                    bytes.extend_from_slice(&p.data()?);
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
                Ok(Self::Fused(Linear::new(
                    QTensor::new(storage, (rows, cols))?,
                    format,
                )?))
            }
            _ => Ok(Self::Separate(
                parts
                    .into_iter()
                    .map(|p| Linear::new(p, format))
                    .collect::<Result<_>>()?,
            )),
        }
    }

    /// `x` is `(tokens, in)`; the result is `(tokens, out)`, the parts side by side in each row, as a
    /// tensor on `x`'s device.
    pub(super) fn forward_tensor(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Fused(m) => m.forward(x),
            Self::Separate(parts) => {
                let outputs = parts.iter().map(|m| m.forward(x)).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&outputs, 1)
            }
        }
    }

    /// `x` is `(tokens, in)`; the result is row-major `(tokens, out)`, the parts side by side in each row.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Vec<f32>> {
        match self {
            Self::Fused(m) => m.forward_vec(x),
            Self::Separate(parts) => {
                let outputs = parts
                    .iter()
                    .map(|m| m.forward(x)?.to_vec2::<f32>())
                    .collect::<Result<Vec<_>>>()?;
                let rows = outputs.first().map_or(0, Vec::len);
                let mut out = Vec::new();
                for r in 0..rows {
                    for o in &outputs {
                        out.extend_from_slice(&o[r]);
                    }
                }
                Ok(out)
            }
        }
    }
}
