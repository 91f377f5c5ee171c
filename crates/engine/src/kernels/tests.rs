use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::*;

/// Values in -1..1 from a seeded generator (shared with the Q4_1 kernel's tests).
pub(super) fn values(n: usize, seed: u64) -> Vec<f32> {
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

/// A random `rows x k` matrix quantized by candle to `dtype` (shared with the Q4_1 kernel's tests).
pub(super) fn quantized(rows: usize, k: usize, seed: u64, dtype: GgmlDType) -> QTensor {
    let w = Tensor::from_vec(values(rows * k, seed), (rows, k), &Device::Cpu).expect("w");
    QTensor::quantize(&w, dtype).expect("quantize")
}

fn matrix(rows: usize, k: usize, seed: u64) -> (Q8Matrix, QTensor) {
    let q = quantized(rows, k, seed, GgmlDType::Q8_0);
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

/// A Q8_0 tile kernel's signature.
type TileDot = fn(&[[i8; BLOCK]], &[f32], &Q8Rows, usize, &mut [f32]);

/// `kernel` against the portable form, tile by tile, on shapes with odd block counts and every tile size.
fn agrees_with_the_portable_form(kernel: TileDot) {
    for (rows, k, m) in [
        (3, 32, 1),
        (3, 64, 1),
        (5, 576, 16),
        (5, 576, 8),
        (2, 1536, 7),
        (4, 160, 5),
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
                kernel(wq, ws, &a, start, &mut fast[start..end]);
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

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[test]
fn the_avx2_and_portable_forms_agree() {
    agrees_with_the_portable_form(avx2::tile_dot);
}

/// The VNNI kernel against the portable one, where this CPU has it.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[test]
fn the_vnni_and_portable_forms_agree() {
    if !vnni::available() {
        eprintln!("this CPU has no AVX-512 VNNI: nothing to compare");
        return;
    }
    agrees_with_the_portable_form(vnni::tile_dot);
}

#[test]
fn refuses_bytes_of_the_wrong_size() {
    assert!(Q8Matrix::from_ggml(&[0u8; 34], 2, 32).is_none());
    assert!(Q8Matrix::from_ggml(&[0u8; 34], 1, 30).is_none());
}
