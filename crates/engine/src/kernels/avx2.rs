//! The Q8_0 kernel on AVX2 and FMA (see the parent module): every `x86-64-v3` build.

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
                let (scale, products) = block(w, _mm256_sign_epi8(w, w), &a.quants[row], ws * a.scales[row]);
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
