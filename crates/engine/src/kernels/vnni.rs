//! The Q8_0 kernel on AVX-512 VNNI (see the parent module), behind a run-time CPU check.

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
