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
mod vnni {
    use std::arch::x86_64::*;
    use std::sync::LazyLock;

    use super::{BLOCK, Q8Rows, ROW_TILE};

    /// AVX-512 (F, BW, VNNI) is there, and `SLUICE_INT8_KERNEL` does not ask for AVX2.
    static AVAILABLE: LazyLock<bool> = LazyLock::new(|| {
        std::env::var("SLUICE_INT8_KERNEL").map_or(true, |k| k != "avx2")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    });

    pub(super) fn available() -> bool {
        *AVAILABLE
    }

    /// See [`super::tile_dot`]. Only called where [`available`] said yes.
    pub(super) fn tile_dot(
        w_quants: &[[i8; BLOCK]],
        w_scales: &[f32],
        a: &Q8Rows,
        first: usize,
        dst: &mut [f32],
    ) {
        let kb = w_quants.len();
        let tile = dst.len();
        assert!(available(), "the VNNI kernel on a CPU without AVX-512 VNNI");
        assert!(
            (1..=ROW_TILE).contains(&tile),
            "a tile is 1 to {ROW_TILE} rows, got {tile}"
        );
        assert!(a.quants.len() >= (first + tile) * kb && a.scales.len() >= (first + tile) * kb);
        assert!(w_scales.len() == kb);
        // SAFETY: `available` checked at run time that this CPU has AVX-512 F, BW and VNNI; the asserts
        // keep every block index within the slices (see `rows`).
        unsafe {
            match tile {
                1 => rows::<1>(w_quants, w_scales, a, first, dst),
                2 => rows::<2>(w_quants, w_scales, a, first, dst),
                3 => rows::<3>(w_quants, w_scales, a, first, dst),
                4 => rows::<4>(w_quants, w_scales, a, first, dst),
                5 => rows::<5>(w_quants, w_scales, a, first, dst),
                6 => rows::<6>(w_quants, w_scales, a, first, dst),
                7 => rows::<7>(w_quants, w_scales, a, first, dst),
                _ => rows::<ROW_TILE>(w_quants, w_scales, a, first, dst),
            }
        }
    }

    /// `N` activation rows against one weight row, two blocks (64 bytes) at a time: `|w|` (unsigned) times
    /// `x` with `w`'s sign (signed) in one `vpdpbusd`, whose 16 lanes hold 8 partial sums of each block;
    /// each half is scaled by its block's two scales. Two accumulators per row keep the chain of fused
    /// multiply-adds from bounding the loop. An odd last block goes alone, its upper half masked off.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn rows<const N: usize>(
        w_quants: &[[i8; BLOCK]],
        w_scales: &[f32],
        a: &Q8Rows,
        first: usize,
        dst: &mut [f32],
    ) {
        let kb = w_quants.len();
        // Lanes 0-7 take the first scale of a pair, lanes 8-15 the second.
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        let mut b = 0;
        while b < kb {
            let pair = b + 1 < kb;
            // One block: only the low 32 bytes are read (masked loads touch nothing beyond them).
            let bytes: __mmask64 = if pair { u64::MAX } else { u64::from(u32::MAX) };
            let scales: __mmask16 = if pair { 0b11 } else { 0b1 };
            // SAFETY: blocks `b` (and `b + 1` when `pair`) are within `w_quants`, contiguous in memory
            // (a slice of 32-byte arrays), and the masks read no byte past them; likewise for the scales.
            let (w, ws) = unsafe {
                (
                    _mm512_maskz_loadu_epi8(bytes, w_quants.as_ptr().add(b).cast::<i8>()),
                    _mm512_maskz_loadu_ps(scales, w_scales.as_ptr().add(b)),
                )
            };
            let w_abs = _mm512_abs_epi8(w);
            let negative = _mm512_movepi8_mask(w);
            for (t, slot) in acc.iter_mut().enumerate() {
                let row = (first + t) * kb + b;
                // SAFETY: as above, for the activation row's blocks (the caller's asserts cover
                // `(first + N) * kb` blocks and scales).
                let (x, xs) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(bytes, a.quants.as_ptr().add(row).cast::<i8>()),
                        _mm512_maskz_loadu_ps(scales, a.scales.as_ptr().add(row)),
                    )
                };
                let signed = _mm512_mask_sub_epi8(x, negative, zero, x);
                let sums = _mm512_dpbusd_epi32(zero, w_abs, signed);
                let scale = _mm512_permutexvar_ps(spread, _mm512_mul_ps(ws, xs));
                let k = (b / 2) & 1;
                slot[k] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sums), slot[k]);
            }
            b += 2;
        }
        for (slot, out) in acc.iter().zip(dst.iter_mut()) {
            *out = _mm512_reduce_add_ps(_mm512_add_ps(slot[0], slot[1]));
        }
    }
}

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
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, Q8Rows, ROW_TILE};

    /// See [`super::tile_dot`]. Each weight block is loaded once for all the tile's rows; products go
    /// through `maddubs` (unsigned by signed bytes, so the weight's sign moves onto the activation first,
    /// as in GGML) and stay in 8-lane f32 accumulators until one horizontal sum per output.
    pub(super) fn tile_dot(
        w_quants: &[[i8; BLOCK]],
        w_scales: &[f32],
        a: &Q8Rows,
        first: usize,
        dst: &mut [f32],
    ) {
        let kb = w_quants.len();
        let tile = dst.len();
        assert!(
            (1..=ROW_TILE).contains(&tile),
            "a tile is 1 to {ROW_TILE} rows, got {tile}"
        );
        assert!(a.quants.len() >= (first + tile) * kb && a.scales.len() >= (first + tile) * kb);
        assert!(w_scales.len() == kb);
        // SAFETY: the crate is compiled with AVX2 and FMA enabled (this module only exists under
        // `target_feature = "avx2"` and `"fma"`), so the intrinsics are available. Every pointer read comes
        // from a `[i8; 32]` array, exactly the 32 bytes `_mm256_loadu_si256` reads, with no alignment
        // requirement; the asserts above keep every index within the slices.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            // One block's contribution: scale * dot(w, x) in 8 f32 lanes.
            let block = |w: __m256i, w_abs: __m256i, x: &[i8; BLOCK], scale: f32| {
                // x * sign(w): with |w| as the unsigned side, the products keep their signs. Pairs of
                // products stay within i16 (2 x 127 x 127 = 32,258).
                let x = _mm256_loadu_si256(x.as_ptr().cast::<__m256i>());
                let pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w));
                let sums = _mm256_madd_epi16(pairs, ones);
                (_mm256_set1_ps(scale), _mm256_cvtepi32_ps(sums))
            };
            if tile == 1 {
                // One row (a single stream's decode step): four independent accumulators, so the loop is
                // not bound by the latency of one chain of fused multiply-adds.
                let mut acc = [_mm256_setzero_ps(); 4];
                for (b, (wq, ws)) in w_quants.iter().zip(w_scales).enumerate() {
                    let row = first * kb + b;
                    let w = _mm256_loadu_si256(wq.as_ptr().cast::<__m256i>());
                    let (scale, products) =
                        block(w, _mm256_sign_epi8(w, w), &a.quants[row], ws * a.scales[row]);
                    acc[b % 4] = _mm256_fmadd_ps(scale, products, acc[b % 4]);
                }
                let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                dst[0] = horizontal_sum(sum);
                return;
            }
            match tile {
                2 => rows_tile::<2>(w_quants, w_scales, a, first, dst),
                3 => rows_tile::<3>(w_quants, w_scales, a, first, dst),
                4 => rows_tile::<4>(w_quants, w_scales, a, first, dst),
                5 => rows_tile::<5>(w_quants, w_scales, a, first, dst),
                6 => rows_tile::<6>(w_quants, w_scales, a, first, dst),
                7 => rows_tile::<7>(w_quants, w_scales, a, first, dst),
                _ => rows_tile::<ROW_TILE>(w_quants, w_scales, a, first, dst),
            }
        }
    }

    /// [`tile_dot`] for exactly `N` activation rows: with `N` known, the accumulators stay in registers.
    #[inline(always)]
    unsafe fn rows_tile<const N: usize>(
        w_quants: &[[i8; BLOCK]],
        w_scales: &[f32],
        a: &Q8Rows,
        first: usize,
        dst: &mut [f32],
    ) {
        let kb = w_quants.len();
        // SAFETY: as in `tile_dot`, whose asserts cover rows `first..first + N` (N <= dst.len()).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, (wq, ws)) in w_quants.iter().zip(w_scales).enumerate() {
                let w = _mm256_loadu_si256(wq.as_ptr().cast::<__m256i>());
                let w_abs = _mm256_sign_epi8(w, w);
                for (t, slot) in acc.iter_mut().enumerate() {
                    let row = (first + t) * kb + b;
                    let x = _mm256_loadu_si256(a.quants[row].as_ptr().cast::<__m256i>());
                    let pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x, w));
                    let sums = _mm256_madd_epi16(pairs, ones);
                    *slot = _mm256_fmadd_ps(
                        _mm256_set1_ps(ws * a.scales[row]),
                        _mm256_cvtepi32_ps(sums),
                        *slot,
                    );
                }
            }
            for (slot, out) in acc.iter().zip(dst.iter_mut()) {
                *out = horizontal_sum(*slot);
            }
        }
    }

    /// The sum of the 8 lanes.
    #[inline(always)]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        // SAFETY: AVX is enabled for this module (see `tile_dot`); only register operations.
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
        }
    }
}

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
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn matrix(rows: usize, k: usize, seed: u64) -> (Q8Matrix, QTensor) {
        let w = Tensor::from_vec(values(rows * k, seed), (rows, k), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).expect("quantize");
        let m = Q8Matrix::from_ggml(&q.data().expect("bytes"), rows, k).expect("q8 matrix");
        (m, q)
    }

    #[test]
    fn matches_the_definition_for_any_batch_size() {
        for (rows, k, m) in [
            (48, 64, 1),
            (37, 96, 3),
            (64, 576, 8),
            (33, 160, 17),
            (16, 32, 40),
        ] {
            let (w, _) = matrix(rows, k, rows as u64);
            let x = values(m * k, 99 + m as u64);
            let got = w.matmul(&x, m);
            let want = matmul_reference(&w, &x, m);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-4 * r.abs().max(1.0),
                    "{rows}x{k}, m {m}: {g} vs {r}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_candles_q8_0_matmul() {
        let (w, q) = matrix(64, 576, 5);
        let x = values(4 * 576, 6);
        let candle = QMatMul::from_qtensor(q).expect("qmatmul");
        let input = Tensor::from_vec(x.clone(), (4, 576), &Device::Cpu).expect("x");
        let want = candle
            .forward(&input)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("candle");
        let got = w.matmul(&x, 4);
        for (g, c) in got.iter().zip(&want) {
            assert!((g - c).abs() <= 1e-3 * c.abs().max(1.0), "{g} vs {c}");
        }
    }

    #[test]
    fn the_simd_and_portable_forms_agree() {
        for (rows, k, m) in [
            (3, 64, 1),
            (5, 576, 16),
            (2, 1536, 7),
            (2, 96, 2),
            (2, 96, 3),
            (2, 96, 4),
            (2, 96, 5),
            (2, 96, 6),
            (2, 96, 8),
        ] {
            let (w, _) = matrix(rows, k, 40 + k as u64);
            let x = values(m * k, 41);
            let a = Q8Rows::quantize(&x, m, k);
            let kb = k / BLOCK;
            for j in 0..rows {
                let (wq, ws) = (&w.quants[j * kb..(j + 1) * kb], &w.scales[j * kb..(j + 1) * kb]);
                let mut fast = vec![0f32; m];
                let mut portable = vec![0f32; m];
                for start in (0..m).step_by(ROW_TILE) {
                    let end = (start + ROW_TILE).min(m);
                    tile_dot(wq, ws, &a, start, &mut fast[start..end]);
                    tile_dot_portable(wq, ws, &a, start, &mut portable[start..end]);
                }
                for (f, p) in fast.iter().zip(&portable) {
                    assert!((f - p).abs() <= 1e-4 * p.abs().max(1.0), "{f} vs {p}");
                }
            }
        }
    }

    /// The VNNI kernel against the portable one, where this CPU has it (odd block counts included).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn the_vnni_and_portable_forms_agree() {
        if !vnni::available() {
            eprintln!("this CPU has no AVX-512 VNNI: nothing to compare");
            return;
        }
        for (rows, k, m) in [
            (3, 32, 1),
            (3, 64, 1),
            (5, 576, 8),
            (2, 96, 3),
            (2, 1536, 7),
            (4, 160, 5),
        ] {
            let (w, _) = matrix(rows, k, 70 + k as u64);
            let x = values(m * k, 71);
            let a = Q8Rows::quantize(&x, m, k);
            let kb = k / BLOCK;
            for j in 0..rows {
                let (wq, ws) = (&w.quants[j * kb..(j + 1) * kb], &w.scales[j * kb..(j + 1) * kb]);
                let mut fast = vec![0f32; m];
                let mut portable = vec![0f32; m];
                for start in (0..m).step_by(ROW_TILE) {
                    let end = (start + ROW_TILE).min(m);
                    vnni::tile_dot(wq, ws, &a, start, &mut fast[start..end]);
                    tile_dot_portable(wq, ws, &a, start, &mut portable[start..end]);
                }
                for (f, p) in fast.iter().zip(&portable) {
                    assert!(
                        (f - p).abs() <= 1e-4 * p.abs().max(1.0),
                        "{rows}x{k}, m {m}: {f} vs {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_bytes_of_the_wrong_size() {
        assert!(Q8Matrix::from_ggml(&[0u8; 34], 2, 32).is_none());
        assert!(Q8Matrix::from_ggml(&[0u8; 34], 1, 30).is_none());
    }
}
