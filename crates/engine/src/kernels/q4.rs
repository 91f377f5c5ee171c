//! Q4_1 weights as stored (4 bits a weight: a scale `d`, an offset `m` and 32 nibbles a block), multiplied
//! by Q8_0-rounded activations on AVX-512 VNNI, the way llama.cpp multiplies Q4_1 by Q8_1.
//!
//! A weight is `d * q + m` with `q` in 0..=15, so a block's dot product with activations `s * x` (x signed
//! bytes) is `d * s * sum(q * x) + m * (s * sum(x))`: the first sum is one `vpdpbusd` (the nibbles are the
//! unsigned side, so no sign trick), the second is the activation block's own sum, rounded once per
//! activation row (`Q8Rows::sums`). Reading 20 bytes a block instead of Q8_0's 34 is the point: a
//! single stream's decode step reads every weight once, and is bound by that.
//!
//! Only on CPUs with AVX-512 (F, BW, VL) and VNNI: elsewhere the layer weights are re-quantized to Q8_0 at
//! load, as before (see `crate::llama::WeightFormat::Auto`).

use super::{BLOCK, Q8Rows, ROW_TILE, by_row_groups};

/// Bytes of one Q4_1 block in a GGUF file: f16 `d`, f16 `m`, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;

/// A Q4_1 matrix (`rows` outputs by `k` inputs), with `d` and `m` widened to f32.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    rows: usize,
    k: usize,
    /// Per block: element `j` is `nibbles[j] & 15`, element `j + 16` is `nibbles[j] >> 4`.
    nibbles: Vec<[u8; BLOCK / 2]>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

impl Q4Matrix {
    /// Reads GGML Q4_1 blocks (row-major, `k / 32` blocks per row).
    pub fn from_ggml(bytes: &[u8], rows: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(BLOCK) || bytes.len() != rows * k / BLOCK * BLOCK_BYTES {
            return None;
        }
        let blocks = rows * k / BLOCK;
        let (mut nibbles, mut scales, mut mins) = (
            Vec::with_capacity(blocks),
            Vec::with_capacity(blocks),
            Vec::with_capacity(blocks),
        );
        for block in bytes.chunks_exact(BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
            mins.push(half::f16::from_le_bytes([block[2], block[3]]).to_f32());
            let mut q = [0u8; BLOCK / 2];
            q.copy_from_slice(&block[4..]);
            nibbles.push(q);
        }
        Some(Self {
            rows,
            k,
            nibbles,
            scales,
            mins,
        })
    }

    /// Whether this CPU runs the kernel (AVX-512 VNNI; `SLUICE_INT8_KERNEL=avx2` or `vnni-q8` says no).
    pub fn available() -> bool {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        {
            vnni::available()
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
        {
            false
        }
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

    fn rows_into(&self, a: &Q8Rows, first: usize, out: &mut [f32]) {
        let kb = self.k / BLOCK;
        for (r, out_row) in out.chunks_exact_mut(a.m).enumerate() {
            let j = first + r;
            let w = Weights {
                nibbles: &self.nibbles[j * kb..(j + 1) * kb],
                scales: &self.scales[j * kb..(j + 1) * kb],
                mins: &self.mins[j * kb..(j + 1) * kb],
            };
            for tile_start in (0..a.m).step_by(ROW_TILE) {
                let tile = (a.m - tile_start).min(ROW_TILE);
                tile_dot(&w, a, tile_start, &mut out_row[tile_start..tile_start + tile]);
            }
        }
    }
}

/// One weight row's blocks.
struct Weights<'a> {
    nibbles: &'a [[u8; BLOCK / 2]],
    scales: &'a [f32],
    mins: &'a [f32],
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn tile_dot(w: &Weights<'_>, a: &Q8Rows, first: usize, dst: &mut [f32]) {
    if vnni::available() {
        vnni::tile_dot(w, a, first, dst);
    } else {
        tile_dot_portable(w, a, first, dst);
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn tile_dot(w: &Weights<'_>, a: &Q8Rows, first: usize, dst: &mut [f32]) {
    tile_dot_portable(w, a, first, dst);
}

/// The portable form of `tile_dot`: the same sums in plain Rust.
fn tile_dot_portable(w: &Weights<'_>, a: &Q8Rows, first: usize, dst: &mut [f32]) {
    let kb = w.nibbles.len();
    for (t, slot) in dst.iter_mut().enumerate() {
        let i = first + t;
        let mut acc = 0f32;
        for b in 0..kb {
            let x = &a.quants[i * kb + b];
            let mut dot = 0i32;
            for (j, byte) in w.nibbles[b].iter().enumerate() {
                dot += i32::from(byte & 15) * i32::from(x[j]) + i32::from(byte >> 4) * i32::from(x[j + 16]);
            }
            acc += w.scales[b] * a.scales[i * kb + b] * dot as f32 + w.mins[b] * a.sums[i * kb + b];
        }
        *slot = acc;
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

    use super::{Q8Rows, ROW_TILE, Weights};

    /// The Q8_0 kernel's conditions, AVX-512 VL, and `SLUICE_INT8_KERNEL` not `vnni-q8` (which keeps the
    /// VNNI Q8_0 kernel, re-quantizing Q4_1 weights as elsewhere, to compare them).
    static AVAILABLE: LazyLock<bool> = LazyLock::new(|| {
        super::super::vnni::available()
            && is_x86_feature_detected!("avx512vl")
            && std::env::var("SLUICE_INT8_KERNEL").map_or(true, |k| k != "vnni-q8")
    });

    pub(super) fn available() -> bool {
        *AVAILABLE
    }

    pub(super) fn tile_dot(w: &Weights<'_>, a: &Q8Rows, first: usize, dst: &mut [f32]) {
        let kb = w.nibbles.len();
        let tile = dst.len();
        assert!(available(), "the VNNI kernel on a CPU without AVX-512 VNNI");
        assert!(
            (1..=ROW_TILE).contains(&tile),
            "a tile is 1 to {ROW_TILE} rows, got {tile}"
        );
        assert!(a.quants.len() >= (first + tile) * kb && a.scales.len() >= (first + tile) * kb);
        assert!(a.sums.len() >= (first + tile) * kb);
        assert!(w.scales.len() == kb && w.mins.len() == kb);
        // SAFETY: `available` checked at run time that this CPU has AVX-512 F, BW, VL and VNNI; the asserts
        // keep every block index within the slices (see `rows`).
        unsafe {
            match tile {
                1 => rows::<1>(w, a, first, dst),
                2 => rows::<2>(w, a, first, dst),
                3 => rows::<3>(w, a, first, dst),
                4 => rows::<4>(w, a, first, dst),
                5 => rows::<5>(w, a, first, dst),
                6 => rows::<6>(w, a, first, dst),
                7 => rows::<7>(w, a, first, dst),
                _ => rows::<ROW_TILE>(w, a, first, dst),
            }
        }
    }

    /// `N` activation rows against one weight row, two blocks at a time. The 32 nibble bytes of two blocks
    /// become 64 unsigned bytes in element order (low nibbles then high nibbles of each block), which one
    /// `vpdpbusd` multiplies by the two activation blocks; each half of the 16 lanes is scaled by its
    /// blocks' scales, and the offsets' part (`m * sum of x`) goes to a second accumulator. An odd last
    /// block goes alone, the other half masked off.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const N: usize>(w: &Weights<'_>, a: &Q8Rows, first: usize, dst: &mut [f32]) {
        let kb = w.nibbles.len();
        let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let low = _mm256_set1_epi8(15);
        let zero = _mm512_setzero_si512();
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        let mut offsets = [_mm512_setzero_ps(); N];
        let mut b = 0;
        while b < kb {
            let pair = b + 1 < kb;
            let nibble_bytes: __mmask32 = if pair { u32::MAX } else { 0xFFFF };
            let x_bytes: __mmask64 = if pair { u64::MAX } else { u64::from(u32::MAX) };
            let two: __mmask16 = if pair { 0b11 } else { 0b1 };
            // SAFETY: blocks `b` (and `b + 1` when `pair`) are within the slices, contiguous in memory, and
            // the masks read no byte past them.
            let (packed, ws, wm) = unsafe {
                (
                    _mm256_maskz_loadu_epi8(nibble_bytes, w.nibbles.as_ptr().add(b).cast::<i8>()),
                    _mm512_maskz_loadu_ps(two, w.scales.as_ptr().add(b)),
                    _mm512_maskz_loadu_ps(two, w.mins.as_ptr().add(b)),
                )
            };
            // [lo(b), lo(b+1)] and [hi(b), hi(b+1)], 16 bytes each, then in element order:
            // lo(b), hi(b), lo(b+1), hi(b+1).
            let lo = _mm256_and_si256(packed, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
            let both = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let weights = _mm512_shuffle_i64x2(both, both, 0b11_01_10_00);
            for t in 0..N {
                let row = (first + t) * kb + b;
                // SAFETY: as above, for the activation row's blocks (the caller's asserts cover
                // `(first + N) * kb` blocks, scales and sums).
                let (x, xs, sums) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(x_bytes, a.quants.as_ptr().add(row).cast::<i8>()),
                        _mm512_maskz_loadu_ps(two, a.scales.as_ptr().add(row)),
                        _mm512_maskz_loadu_ps(two, a.sums.as_ptr().add(row)),
                    )
                };
                let products = _mm512_dpbusd_epi32(zero, weights, x);
                let scale = _mm512_permutexvar_ps(spread, _mm512_mul_ps(ws, xs));
                let k = (b / 2) & 1;
                acc[t][k] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(products), acc[t][k]);
                offsets[t] = _mm512_fmadd_ps(wm, sums, offsets[t]);
            }
            b += 2;
        }
        for ((slot, offset), out) in acc.iter().zip(&offsets).zip(dst.iter_mut()) {
            *out = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(slot[0], slot[1]), *offset));
        }
    }
}

/// The definition: dequantize both sides and multiply in f64.
#[doc(hidden)]
pub fn matmul_reference_q4(w: &Q4Matrix, x: &[f32], m: usize) -> Vec<f32> {
    let a = Q8Rows::quantize(x, m, w.k);
    let kb = w.k / BLOCK;
    let mut out = vec![0f32; m * w.rows];
    for i in 0..m {
        for j in 0..w.rows {
            let mut sum = 0f64;
            for b in 0..kb {
                let block = j * kb + b;
                for e in 0..BLOCK {
                    let byte = w.nibbles[block][e % 16];
                    let q = if e < 16 { byte & 15 } else { byte >> 4 };
                    let wv = f64::from(w.scales[block]) * f64::from(q) + f64::from(w.mins[block]);
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

    use super::super::tests::{quantized, values};
    use super::*;

    fn matrix(rows: usize, k: usize, seed: u64) -> (Q4Matrix, QTensor) {
        let q = quantized(rows, k, seed, GgmlDType::Q4_1);
        let m = Q4Matrix::from_ggml(&q.data().expect("bytes"), rows, k).expect("q4 matrix");
        (m, q)
    }

    #[test]
    fn matches_the_definition_and_candle_for_any_batch_size() {
        for (rows, k, m) in [
            (48, 64, 1),
            (37, 96, 3),
            (64, 576, 8),
            (33, 160, 17),
            (16, 32, 40),
        ] {
            let (w, q) = matrix(rows, k, rows as u64);
            let x = values(m * k, 99 + m as u64);
            let got = w.matmul(&x, m);
            let want = matmul_reference_q4(&w, &x, m);
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= 1e-4 * r.abs().max(1.0),
                    "{rows}x{k}, m {m}: {g} vs {r}"
                );
            }
            // candle's own Q4_1 product (activations rounded to Q8_1) lands close too (it takes an even
            // number of blocks only).
            if !(k / BLOCK).is_multiple_of(2) {
                continue;
            }
            let candle = QMatMul::from_qtensor(q)
                .and_then(|mm| mm.forward(&Tensor::from_vec(x.clone(), (m, k), &Device::Cpu)?))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .expect("candle");
            for (g, c) in got.iter().zip(&candle) {
                assert!(
                    (g - c).abs() <= 2e-2 * c.abs().max(1.0),
                    "{rows}x{k}, m {m}: {g} vs candle {c}"
                );
            }
        }
    }

    #[test]
    fn the_simd_and_portable_forms_agree() {
        for (rows, k, m) in [
            (3, 32, 1),
            (3, 64, 1),
            (5, 576, 8),
            (2, 96, 3),
            (2, 1536, 7),
            (4, 160, 5),
        ] {
            let (w, _) = matrix(rows, k, 40 + k as u64);
            let x = values(m * k, 41);
            let a = Q8Rows::quantize(&x, m, k);
            let kb = k / BLOCK;
            for j in 0..rows {
                let row = Weights {
                    nibbles: &w.nibbles[j * kb..(j + 1) * kb],
                    scales: &w.scales[j * kb..(j + 1) * kb],
                    mins: &w.mins[j * kb..(j + 1) * kb],
                };
                let mut fast = vec![0f32; m];
                let mut portable = vec![0f32; m];
                for start in (0..m).step_by(ROW_TILE) {
                    let end = (start + ROW_TILE).min(m);
                    tile_dot(&row, &a, start, &mut fast[start..end]);
                    tile_dot_portable(&row, &a, start, &mut portable[start..end]);
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
        assert!(Q4Matrix::from_ggml(&[0u8; 20], 2, 32).is_none());
        assert!(Q4Matrix::from_ggml(&[0u8; 20], 1, 30).is_none());
    }
}
