use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use candle_core::Module;
use candle_core::quantized::QMatMul;
use candle_transformers::models::quantized_llama::ModelWeights;

use super::*;
use crate::gguf;
use crate::sampler::Draw;
use crate::testing::{TinyModel, write_tiny_gguf};

fn tiny_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-llama-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tiny.gguf");
        write_tiny_gguf(&path, TinyModel::default()).expect("write tiny gguf");
        path
    })
}

/// The model with an f32 cache, as the reference keeps it, so that logits can be held to it closely.
fn ours(path: &Path) -> LlamaWeights {
    let mut model = ours_f16(path);
    model.set_kv_format(KvFormat::F32);
    model
}

/// The model as it loads, with its default f16 cache.
fn ours_f16(path: &Path) -> LlamaWeights {
    let (content, mut reader) = gguf::open(path).expect("open");
    LlamaWeights::load(&content, &mut reader, &Device::Cpu, 1024, WeightFormat::Native).expect("load")
}

#[test]
fn an_f16_cache_is_the_default_and_takes_half_the_memory() {
    let path = tiny_path();
    let (wide, half) = (ours(path), ours_f16(path));
    assert_eq!(half.kv_format(), KvFormat::F16);
    assert_eq!(half.kv_bytes_per_token() * 2, wide.kv_bytes_per_token());
    // (Random weights make a chaotic model, whose greedy tokens any rounding can change: the demo model's
    // tests hold the f16 cache to the f32 one.)
    let mut cache = KvCache::default();
    one(&half, &mut cache, &[3, 4, 5]);
    assert!(
        matches!(cache.layers[0].k, KvStore::F16(ref v) if v.len() == 3 * half.n_kv_head * half.head_dim)
    );
}

fn reference(path: &Path) -> ModelWeights {
    let (content, mut reader) = gguf::open(path).expect("open");
    ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).expect("reference loads")
}

fn reference_logits(model: &mut ModelWeights, tokens: &[u32], start: usize) -> Vec<f32> {
    let input = Tensor::new(tokens, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("input");
    model
        .forward(&input, start)
        .and_then(|l| l.squeeze(0))
        .and_then(|l| l.to_vec1())
        .expect("reference forward")
}

fn one(model: &LlamaWeights, cache: &mut KvCache, tokens: &[u32]) -> Vec<f32> {
    let mut items = [BatchItem {
        tokens,
        cache,
        logits: true,
    }];
    model
        .forward(&mut items)
        .expect("forward")
        .pop()
        .flatten()
        .expect("logits")
}

#[test]
fn matches_candles_reference_on_prefill_chunks_and_decode() {
    let path = tiny_path();
    let model = ours(path);
    let mut reference = reference(path);
    let prompt: Vec<u32> = (3..40).collect();
    let mut cache = KvCache::default();
    // Prefill in two chunks, against the reference in one pass.
    let mut items = [BatchItem {
        tokens: &prompt[..20],
        cache: &mut cache,
        logits: false,
    }];
    assert_eq!(model.forward(&mut items).expect("first chunk"), vec![None]);
    let ours_logits = one(&model, &mut cache, &prompt[20..]);
    let want = reference_logits(&mut reference, &prompt, 0);
    assert!(
        max_abs_diff(&ours_logits, &want) < 1e-3,
        "prefill differs by {}",
        max_abs_diff(&ours_logits, &want)
    );
    assert_eq!(cache.len(), prompt.len());
    // Then decode steps.
    decode_like_the_reference(
        &model,
        &mut cache,
        &mut reference,
        argmax(&want) as u32,
        prompt.len(),
        60,
    );
}

/// Greedy decode steps from `start`, each held to the reference's logits within 1e-3.
fn decode_like_the_reference(
    model: &LlamaWeights,
    cache: &mut KvCache,
    reference: &mut ModelWeights,
    mut token: u32,
    start: usize,
    steps: usize,
) {
    for step in 0..steps {
        let got = one(model, cache, &[token]);
        let want = reference_logits(reference, &[token], start + step);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-3, "decode step {step} differs by {diff}");
        token = argmax(&want) as u32;
    }
}

#[test]
fn a_batch_gives_each_sequence_what_it_would_get_alone() {
    let model = ours(tiny_path());
    let prompts: [Vec<u32>; 3] = [(3..30).collect(), (50..55).collect(), (100..140).collect()];
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let mut cache = KvCache::default();
            one(&model, &mut cache, p)
        })
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::default()).collect();
    let mut items: Vec<BatchItem<'_>> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, cache)| BatchItem {
            tokens: p,
            cache,
            logits: true,
        })
        .collect();
    let together = model.forward(&mut items).expect("batch");
    for (i, (got, want)) in together.iter().zip(&alone).enumerate() {
        let got = got.as_ref().expect("logits");
        assert!(
            max_abs_diff(got, want) < 1e-4,
            "sequence {i} differs by {}",
            max_abs_diff(got, want)
        );
    }
    // Mixed round: one sequence decodes while another starts its prompt.
    let mut fresh = KvCache::default();
    let next = [7u32];
    let mut items = [
        BatchItem {
            tokens: &next,
            cache: &mut caches[0],
            logits: true,
        },
        BatchItem {
            tokens: &prompts[1],
            cache: &mut fresh,
            logits: true,
        },
    ];
    let mixed = model.forward(&mut items).expect("mixed");
    let mut solo = KvCache::default();
    one(&model, &mut solo, &prompts[0]);
    let want = one(&model, &mut solo, &next);
    assert!(max_abs_diff(mixed[0].as_ref().expect("logits"), &want) < 1e-4);
    assert!(max_abs_diff(mixed[1].as_ref().expect("logits"), &alone[1]) < 1e-4);
}

#[test]
fn positions_past_the_table_are_refused() {
    let (content, mut reader) = gguf::open(tiny_path()).expect("open");
    let model =
        LlamaWeights::load(&content, &mut reader, &Device::Cpu, 16, WeightFormat::Native).expect("load");
    let mut cache = KvCache::default();
    let tokens: Vec<u32> = (3..20).collect();
    let mut items = [BatchItem {
        tokens: &tokens,
        cache: &mut cache,
        logits: true,
    }];
    assert!(model.forward(&mut items).is_err());
    assert_eq!(cache.len(), 0, "nothing was appended");
}

#[test]
fn quantized_rows_decode_like_candle_dequantizes() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let data: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
        .collect();
    let t = Tensor::from_vec(data, (4, 64), &Device::Cpu).expect("tensor");
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::F16,
        GgmlDType::F32,
    ] {
        let q = QTensor::quantize(&t, dtype).expect("quantize");
        let want = q
            .dequantize(&Device::Cpu)
            .and_then(|d| d.to_vec2::<f32>())
            .expect("dequantize");
        let embedding = Embedding::new(&q, 64, &Device::Cpu).expect("embedding");
        assert!(
            matches!(embedding, Embedding::Quantized { .. }),
            "{dtype:?} stays quantized"
        );
        let got = embedding
            .lookup(&[2, 0], &Device::Cpu)
            .and_then(|r| r.to_vec2::<f32>())
            .expect("lookup");
        assert_eq!(got[0], want[2], "{dtype:?}");
        assert_eq!(got[1], want[0], "{dtype:?}");
    }
}

#[test]
fn matches_the_reference_with_smollm2s_attention_shape() {
    let dir = std::env::temp_dir().join(format!("sluice-llama-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("shape.gguf");
    let shape = TinyModel {
        hidden: 576,
        heads: 9,
        kv_heads: 3,
        feed_forward: 256,
        layers: 2,
        ..TinyModel::default()
    };
    write_tiny_gguf(&path, shape).expect("write");
    let model = ours(&path);
    let mut reference = reference(&path);
    let prompt: Vec<u32> = (3..60).collect();
    let mut cache = KvCache::default();
    let got = one(&model, &mut cache, &prompt);
    let want = reference_logits(&mut reference, &prompt, 0);
    assert!(
        max_abs_diff(&got, &want) < 1e-3,
        "prefill differs by {}",
        max_abs_diff(&got, &want)
    );
    decode_like_the_reference(
        &model,
        &mut cache,
        &mut reference,
        argmax(&want) as u32,
        prompt.len(),
        20,
    );
}

#[test]
fn padded_q8_0_weights_give_what_zero_padded_weights_give() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let (rows, k) = (32, 96);
    let w: Vec<f32> = (0..rows * k)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 17.0)
        .collect();
    let x: Vec<f32> = (0..3 * k).map(|i| ((i * 29 % 89) as f32 - 44.0) / 11.0).collect();
    let weight = Tensor::from_vec(w.clone(), (rows, k), &Device::Cpu).expect("w");
    let input = Tensor::from_vec(x, (3, k), &Device::Cpu).expect("x");
    let linear = Linear::new(
        QTensor::quantize(&weight, GgmlDType::Q8_0).expect("q"),
        WeightFormat::Throughput,
    )
    .expect("linear");
    if !q8_0_repack_kernel() {
        assert_eq!(linear.padded_k, k, "no padding where candle has no kernel for it");
        return;
    }
    assert_eq!(linear.padded_k, 256);
    let padded: Vec<f32> = w
        .chunks(k)
        .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, 256 - k)))
        .collect();
    let padded = Tensor::from_vec(padded, (rows, 256), &Device::Cpu).expect("padded");
    let reference =
        QMatMul::from_qtensor(QTensor::quantize(&padded, GgmlDType::Q8_0).expect("q")).expect("reference");
    let want = reference
        .forward(&input.pad_with_zeros(1, 0, 256 - k).expect("pad"))
        .expect("reference forward");
    let got = linear.forward(&input).expect("forward");
    assert_eq!(
        got.to_vec2::<f32>().expect("got"),
        want.to_vec2::<f32>().expect("want")
    );
    // The other formats never pad.
    for format in [WeightFormat::Auto, WeightFormat::Native] {
        let plain =
            Linear::new(QTensor::quantize(&weight, GgmlDType::Q8_0).expect("q"), format).expect("plain");
        assert_eq!(plain.padded_k, k);
    }
}

#[test]
fn weight_formats_parse_by_name() {
    assert_eq!("auto".parse::<WeightFormat>(), Ok(WeightFormat::Auto));
    assert_eq!("throughput".parse::<WeightFormat>(), Ok(WeightFormat::Throughput));
    assert_eq!("native".parse::<WeightFormat>(), Ok(WeightFormat::Native));
    assert!(
        "fast"
            .parse::<WeightFormat>()
            .expect_err("unknown")
            .contains("throughput")
    );
}

/// The tiny model on the tensor path (the GPU's forward pass, here on the CPU device).
fn ours_on_tensors(path: &Path, kv: KvFormat) -> LlamaWeights {
    let mut model = ours_f16(path);
    model.set_kv_format(kv);
    model.set_forward_path(ForwardPath::Tensors).expect("tensor path");
    model
}

#[test]
fn the_tensor_path_matches_the_reference_on_prefill_chunks_and_decode() {
    let path = tiny_path();
    let model = ours_on_tensors(path, KvFormat::F32);
    let mut reference = reference(path);
    let prompt: Vec<u32> = (3..40).collect();
    let mut cache = KvCache::default();
    let mut items = [BatchItem {
        tokens: &prompt[..20],
        cache: &mut cache,
        logits: false,
    }];
    assert_eq!(model.forward(&mut items).expect("first chunk"), vec![None]);
    let got = one(&model, &mut cache, &prompt[20..]);
    let want = reference_logits(&mut reference, &prompt, 0);
    assert!(
        max_abs_diff(&got, &want) < 1e-3,
        "prefill differs by {}",
        max_abs_diff(&got, &want)
    );
    assert!(cache.layers.is_empty(), "nothing in the host path's cache");
    assert_eq!(cache.tensors.len(), model.layers.len());
    // 300 positions: the device cache grows past its first allocation on the way.
    decode_like_the_reference(
        &model,
        &mut cache,
        &mut reference,
        argmax(&want) as u32,
        prompt.len(),
        300 - prompt.len(),
    );
    assert_eq!(cache.len(), 300);
    assert_eq!(cache.tensors[0].k.dims(), &[model.n_kv_head, 512, model.head_dim]);
}

#[test]
fn the_tensor_path_batches_like_the_host_path_and_hands_over_greedy_tokens() {
    let path = tiny_path();
    let prompts: [Vec<u32>; 3] = [(3..30).collect(), (50..55).collect(), (100..140).collect()];
    for kv in [KvFormat::F32, KvFormat::F16] {
        let mut host = ours_f16(path);
        host.set_kv_format(kv);
        let tensors = ours_on_tensors(path, kv);
        let mut host_caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::default()).collect();
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::default()).collect();
        fn batch<'a>(prompts: &'a [Vec<u32>], caches: &'a mut [KvCache]) -> Vec<BatchItem<'a>> {
            prompts
                .iter()
                .zip(caches.iter_mut())
                .map(|(p, cache)| BatchItem {
                    tokens: p,
                    cache,
                    logits: true,
                })
                .collect()
        }
        let want = host
            .forward(&mut batch(&prompts, &mut host_caches))
            .expect("host");
        // The middle sequence asks for its greedy token and the last for a draw of its most likely token
        // (top-k of one): they get ids, the first its logits.
        let top_one = Pick::Draw(Draw {
            inv_temperature: 1.0 / 0.7,
            top_k: 1,
            top_p: 1.0,
            uniform: 0.6,
            banned: false,
        });
        let got = tensors
            .forward_next(
                &mut batch(&prompts, &mut caches),
                &[Pick::Logits, Pick::Greedy { banned: false }, top_one],
                &[],
            )
            .expect("tensors");
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            let want = want.as_ref().expect("logits");
            match got {
                Some(Next::Logits(got)) if i == 0 => {
                    let diff = max_abs_diff(got, want);
                    assert!(diff < 1e-3, "{kv:?}: sequence {i} differs by {diff}");
                }
                Some(Next::Token(token)) if i > 0 => assert_eq!(*token as usize, argmax(want), "{kv:?}"),
                other => panic!("{kv:?}: sequence {i} got {other:?}"),
            }
        }
        // A mixed round: decode steps beside a new prompt.
        let next = [7u32, 9];
        let mut fresh = (KvCache::default(), KvCache::default());
        // Sequences 0 and 2 take one more token each, a fresh sequence takes the middle prompt.
        fn mixed<'a>(
            next: &'a [u32],
            prompt: &'a [u32],
            caches: &'a mut [KvCache],
            fresh: &'a mut KvCache,
        ) -> [BatchItem<'a>; 3] {
            let (a, b) = caches.split_at_mut(1);
            [
                BatchItem {
                    tokens: &next[..1],
                    cache: &mut a[0],
                    logits: true,
                },
                BatchItem {
                    tokens: prompt,
                    cache: fresh,
                    logits: true,
                },
                BatchItem {
                    tokens: &next[1..],
                    cache: &mut b[1],
                    logits: true,
                },
            ]
        }
        let want = host
            .forward(&mut mixed(&next, &prompts[1], &mut host_caches, &mut fresh.0))
            .expect("host mixed");
        let got = tensors
            .forward(&mut mixed(&next, &prompts[1], &mut caches, &mut fresh.1))
            .expect("tensors mixed");
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            let diff = max_abs_diff(got.as_ref().expect("logits"), want.as_ref().expect("logits"));
            assert!(diff < 1e-3, "{kv:?}: mixed item {i} differs by {diff}");
        }
    }
}

#[test]
fn a_cache_stays_with_the_path_that_started_it() {
    let path = tiny_path();
    let host = ours(path);
    let tensors = ours_on_tensors(path, KvFormat::F32);
    let mut cache = KvCache::default();
    one(&host, &mut cache, &[3, 4, 5]);
    let mut items = [BatchItem {
        tokens: &[6],
        cache: &mut cache,
        logits: true,
    }];
    let err = tensors
        .forward(&mut items)
        .expect_err("a host cache on the tensor path");
    assert!(err.to_string().contains("other forward pass"), "{err}");
    assert_eq!(cache.len(), 3);
    cache.clear();
    one(&tensors, &mut cache, &[3, 4, 5]);
    assert_eq!(cache.len(), 3);
}
