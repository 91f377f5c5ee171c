//! An int8 matrix product for Q8_0 weights that reuses each weight block across every row of a batch.
//!
//! candle's AVX2 path for Q8_0 computes each output as an independent dot product, so the 8 rows of an
//! 8-stream round cost 8 times the arithmetic and read the weights 8 times; its VNNI kernel reuses weights
//! but needs input widths that are multiples of 256 and rounds activations per 256 values. Here activations
//! are rounded to Q8_0 (one scale per 32 values, as llama.cpp does for Q8_0 weights), every weight block is
//! loaded once per group of activation rows, and the work is split by weight rows over candle's thread pool.
//!
//! On x86 with AVX2 and FMA (every build for `x86-64-v3`, the workspace's target) the inner loop is AVX2
//! intrinsics, the one place in Sluice with `unsafe`; on CPUs that also have AVX-512 with VNNI (checked at
//! run time: the same binary runs on CPUs without it) it is AVX-512 VNNI instead, which multiplies and adds
//! two blocks' 64 byte pairs in one instruction (`vpdpbusd`) where AVX2 needs two for one block. The
//! integer dot products are exact either way, so both give the same sums but for the order of the float
//! additions. Elsewhere it is portable Rust. [`matmul_reference`] is the plain definition the tests hold
//! every form to, on random inputs.

use std::sync::Mutex;

/// Values per Q8_0 block.
pub const BLOCK: usize = 32;
/// Bytes of one Q8_0 block in a GGUF file: an f16 scale and 32 signed bytes.
const BLOCK_BYTES: usize = 34;
/// Activation rows processed against one loaded weight block.
/// (8 accumulators of 8 lanes, plus the operands, fit the 16 AVX2 registers.)
const ROW_TILE: usize = 8;
/// Weight rows per unit of parallel work.
const ROW_GROUP: usize = 16;

/// A Q8_0 matrix (`rows` outputs by `k` inputs), with the scales widened to f32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    k: usize,
    quants: Vec<[i8; BLOCK]>,
    scales: Vec<f32>,
}

/// Activations rounded to Q8_0, `m` rows of `k`.
#[derive(Debug, Clone)]
pub struct Q8Rows {
    m: usize,
    quants: Vec<[i8; BLOCK]>,
    scales: Vec<f32>,
    /// Each block's sum as rounded (`scale * sum of quants`), for weights with an offset (Q4_1's `min`).
    sums: Vec<f32>,
}

impl Q8Matrix {
    /// Reads GGML Q8_0 blocks (row-major, `k / 32` blocks per row).
    pub fn from_ggml(bytes: &[u8], rows: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(BLOCK) || bytes.len() != rows * k / BLOCK * BLOCK_BYTES {
            return None;
        }
        let mut quants = Vec::with_capacity(rows * k / BLOCK);
        let mut scales = Vec::with_capacity(rows * k / BLOCK);
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            let mut q = [0i8; BLOCK];
            for (d, s) in q.iter_mut().zip(&block[2..]) {
                *d = *s as i8;
            }
            quants.push(q);
        }
        Some(Self {
            rows,
            k,
            quants,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// `x` is `m` rows of `k` values; returns `m` rows of `self.rows()` values.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        assert!(
            x.len() >= m * self.k,
            "{} inputs for {m} rows of {}",
            x.len(),
            self.k
        );
        if m == 0 {
            return Vec::new();
        }
        let a = Q8Rows::quantize(x, m, self.k);
        by_row_groups(self.rows, m, |first, out| self.rows_into(&a, first, out))
    }

    /// Weight rows `first..` (as many as `out` holds) against every activation row; `out` is `[row][m]`.
    fn rows_into(&self, a: &Q8Rows, first: usize, out: &mut [f32]) {
        let kb = self.k / BLOCK;
        for (r, out_row) in out.chunks_exact_mut(a.m).enumerate() {
            let j = first + r;
            let w_quants = &self.quants[j * kb..(j + 1) * kb];
            let w_scales = &self.scales[j * kb..(j + 1) * kb];
            for tile_start in (0..a.m).step_by(ROW_TILE) {
                let tile = (a.m - tile_start).min(ROW_TILE);
                let dst = &mut out_row[tile_start..tile_start + tile];
                tile_dot(w_quants, w_scales, a, tile_start, dst);
            }
        }
    }
}

/// Runs `rows_into(first, out)` for groups of `ROW_GROUP` weight rows over candle's thread pool, each
/// writing its own slice of a (rows x m) buffer, and returns the product row-major (m x rows).
fn by_row_groups(rows: usize, m: usize, rows_into: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut transposed = vec![0f32; rows * m];
    let groups: Vec<Mutex<&mut [f32]>> = transposed.chunks_mut(ROW_GROUP * m).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(groups.len(), |range| {
        for g in range {
            let mut out = groups[g]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            rows_into(g * ROW_GROUP, &mut out);
        }
    });
    drop(groups);
    if m == 1 {
        // One row (a single stream's decode step): the (rows x 1) buffer is already the answer.
        return transposed;
    }
    let mut out = vec![0f32; m * rows];
    for (j, column) in transposed.chunks_exact(m).enumerate() {
        for (i, v) in column.iter().enumerate() {
            out[i * rows + j] = *v;
        }
    }
    out
}

/// `dst[t] = sum over blocks b of w_scale[b] * x_scale[row t, b] * dot(w[b], x[row t, b])`, for the
/// activation rows `first..first + dst.len()`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn tile_dot(w_quants: &[[i8; BLOCK]], w_scales: &[f32], a: &Q8Rows, first: usize, dst: &mut [f32]) {
    if vnni::available() {
        vnni::tile_dot(w_quants, w_scales, a, first, dst);
    } else {
        avx2::tile_dot(w_quants, w_scales, a, first, dst);
    }
}

/// Which int8 kernel this CPU runs: `avx512-vnni`, `avx2` or `portable`. `SLUICE_INT8_KERNEL=avx2` makes
/// a CPU with VNNI run the AVX2 kernel (to compare them).
pub fn kernel_name() -> &'static str {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        match (vnni::available(), q4::Q4Matrix::available()) {
            (true, true) => "avx512-vnni (q4_1 and q8_0)",
            (true, false) => "avx512-vnni (q8_0)",
            _ => "avx2",
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        "portable"
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[expect(
    unsafe_code,
    reason = "AVX-512 VNNI intrinsics: the numeric kernel is the one place unsafe is allowed"
)]
mod vnni;

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn tile_dot(w_quants: &[[i8; BLOCK]], w_scales: &[f32], a: &Q8Rows, first: usize, dst: &mut [f32]) {
    tile_dot_portable(w_quants, w_scales, a, first, dst);
}

/// The portable form of [`tile_dot`].
#[cfg_attr(
    all(
        not(test),
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ),
    expect(
        dead_code,
        reason = "the portable kernel runs on CPUs without AVX2 and is the tests' reference"
    )
)]
fn tile_dot_portable(w_quants: &[[i8; BLOCK]], w_scales: &[f32], a: &Q8Rows, first: usize, dst: &mut [f32]) {
    let kb = w_quants.len();
    for (t, slot) in dst.iter_mut().enumerate() {
        let i = first + t;
        let mut acc = 0f32;
        for (b, (wq, ws)) in w_quants.iter().zip(w_scales).enumerate() {
            acc += ws * a.scales[i * kb + b] * dot(wq, &a.quants[i * kb + b]) as f32;
        }
        *slot = acc;
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[expect(
    unsafe_code,
    reason = "AVX2 intrinsics: the numeric kernel is the one place unsafe is allowed"
)]
mod avx2;

/// The 32-wide integer dot product; written so that it vectorizes.
#[inline(always)]
fn dot(a: &[i8; BLOCK], b: &[i8; BLOCK]) -> i32 {
    let mut sum = 0i32;
    for i in 0..BLOCK {
        sum += i32::from(a[i]) * i32::from(b[i]);
    }
    sum
}

impl Q8Rows {
    /// Rounds each block of 32 values to signed bytes with one scale (max |x| / 127), as GGML's Q8_0 does.
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let mut quants = Vec::with_capacity(m * kb);
        let mut scales = Vec::with_capacity(m * kb);
        let mut sums = Vec::with_capacity(m * kb);
        for block in x[..m * k].chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut q = [0i8; BLOCK];
            for (d, v) in q.iter_mut().zip(block) {
                *d = (v * inv).round() as i8;
            }
            // GGML stores the scale as f16; use the same rounding so results match its kernels.
            let scale = half::f16::from_f32(scale).to_f32();
            scales.push(scale);
            sums.push(scale * q.iter().map(|v| i32::from(*v)).sum::<i32>() as f32);
            quants.push(q);
        }
        Self {
            m,
            quants,
            scales,
            sums,
        }
    }
}

mod q4;
pub use q4::{Q4Matrix, matmul_reference_q4};

/// The definition: dequantize both sides and multiply in f64.
#[doc(hidden)]
pub fn matmul_reference(w: &Q8Matrix, x: &[f32], m: usize) -> Vec<f32> {
    let a = Q8Rows::quantize(x, m, w.k);
    let kb = w.k / BLOCK;
    let mut out = vec![0f32; m * w.rows];
    for i in 0..m {
        for j in 0..w.rows {
            let mut sum = 0f64;
            for b in 0..kb {
                for e in 0..BLOCK {
                    let wv = f64::from(w.scales[j * kb + b]) * f64::from(w.quants[j * kb + b][e]);
                    let xv = f64::from(a.scales[i * kb + b]) * f64::from(a.quants[i * kb + b][e]);
                    sum += wv * xv;
                }
            }
            out[i * w.rows + j] = sum as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests;
