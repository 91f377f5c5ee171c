//! The worker engine against llama.cpp on the demo model, in the same run, on the same prompt token ids.
//!
//! Run: `cargo bench -p sluice-engine --bench engine` (or `scripts/bench-worker`). llama.cpp runs through
//! `scripts/bench_llama_cpp.py` with the Python in `$LLAMA_CPP_PYTHON` (default `python3`); without
//! `llama-cpp-python` installed there, only Sluice's figures are printed.
//!
//! Figures: prompt tokens/s (one prompt of about 400 tokens, one forward pass); time to first token for that
//! prompt; decode tokens/s for one stream (128 tokens, greedy, end of turn banned); aggregate decode tokens/s
//! with 4 and 8 concurrent streams (all tokens / wall time); peak RSS of this process with 8 slots; and,
//! so that speed is never read without quality, perplexity on the same tokens of a fixed English text.
//! `SLUICE_WEIGHT_FORMAT` (auto, throughput, native) picks the engine's weight format, `SLUICE_KV_FORMAT=f32` an f32
//! KV cache instead of f16, and `SLUICE_INT8_KERNEL=avx2` the AVX2 int8 kernel on a CPU with AVX-512 VNNI.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sluice_engine::{DeviceSpec, Engine, EngineConfig, Event, Message, Model, Request};

const DECODE_TOKENS: u32 = 128;

/// Plain prose for the perplexity check: both engines score exactly these tokens.
const PERPLEXITY_TEXT: &str = "The river town woke slowly in winter. Before dawn the baker lit his ovens, and the smell \
of bread drifted down the empty street towards the water. Fishermen checked their nets by lantern light, talking \
quietly about the ice that had formed overnight along the banks. By eight o'clock the school bell rang, and \
children in heavy coats ran across the square, leaving long tracks in the fresh snow. The library opened at \
nine. Its keeper, an old woman who had read most of the books on its shelves, wrote the date on a small \
blackboard by the door and put the kettle on the stove. Farmers came in from the hills to sell eggs, cheese and \
firewood at the market, and the town hall clock, which had been five minutes slow for as long as anyone could \
remember, struck the hour a little late. In the afternoon the light faded early. Shops closed one by one, the \
ferry made its last crossing, and the windows of the houses glowed yellow against the dark blue sky. At night \
the only sounds were the wind in the pines and, now and then, the creak of the ice moving on the river.";
const REPEAT: usize = 3;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let path = sluice_models::ensure(&sluice_models::cache_dir(), &sluice_models::DEMO_MODEL)?;
    let load_start = Instant::now();
    let mut model = Model::load(&path, "bench", DeviceSpec::Cpu, weight_format())?;
    // `SLUICE_KV_FORMAT=f32` measures the cache as it was before f16 became the default.
    if std::env::var("SLUICE_KV_FORMAT").is_ok_and(|f| f == "f32") {
        model.set_kv_format(sluice_engine::KvFormat::F32);
    }
    let model = Arc::new(model);
    let load_seconds = load_start.elapsed().as_secs_f64();

    let paragraph = "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lamp, a \
        notebook and a flask of tea. From the gallery he watched the ships pass the reef, wrote down their names \
        and the weather, and counted the seconds between the flashes of the neighbouring lights. ";
    let long = vec![Message::new(
        "user",
        format!("{}Summarise the story.", paragraph.repeat(6)),
    )];
    let short = vec![Message::new("user", "Write a story about a lighthouse.")];
    let long_ids = model.prompt_tokens(&long)?;
    let short_ids = model.prompt_tokens(&short)?;

    let text_ids = model.tokenizer.encode(PERPLEXITY_TEXT);
    let peer = run_llama_cpp(&path, &long_ids, &short_ids, &text_ids, model.end_of_generation());
    let perplexity = perplexity(&model, &text_ids)?;

    let request = |messages: &[Message], max_tokens: u32| Request {
        model: "bench".into(),
        messages: messages.to_vec(),
        max_tokens,
        ignore_eos: true,
        ..Request::default()
    };

    // Prompt processing: the whole prompt in one forward pass, as llama.cpp does with n_batch 512.
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            slots: 1,
            max_waiting: 0,
            prefill_chunk: 512,
            max_kv_tokens: None,
        },
    )?;
    let mut prefill = Vec::new();
    let mut ttft = Vec::new();
    for _ in 0..REPEAT {
        let f = run_one(&engine, request(&long, 1))?;
        prefill.push(f.timings.prefill);
        ttft.push(f.timings.time_to_first_token);
    }
    let mut decode = Vec::new();
    for _ in 0..REPEAT {
        let f = run_one(&engine, request(&short, DECODE_TOKENS))?;
        decode.push(f64::from(f.usage.completion_tokens - 1) / f.timings.decode);
    }
    drop(engine);

    let mut aggregate = Vec::new();
    for streams in [4usize, 8] {
        let engine = Engine::start(
            model.clone(),
            EngineConfig {
                slots: streams,
                max_waiting: 0,
                prefill_chunk: 64,
                max_kv_tokens: None,
            },
        )?;
        let start = Instant::now();
        let receivers: Vec<_> = (0..streams)
            .map(|_| engine.submit(request(&short, DECODE_TOKENS)))
            .collect::<Result<_, _>>()?;
        let mut tokens = 0u32;
        for rx in receivers {
            tokens += drain(rx)?.usage.completion_tokens;
        }
        aggregate.push((streams, f64::from(tokens) / start.elapsed().as_secs_f64()));
    }
    let rss = peak_rss_bytes();

    let prompt_tps = long_ids.len() as f64 / median(&mut prefill);
    let ttft = median(&mut ttft);
    let decode_tps = median(&mut decode);
    println!(
        "\nSluice engine ({:?} weights, {:?} KV cache, {} int8 kernel) vs llama.cpp, SmolLM2-135M-Instruct Q4_1, {} threads",
        weight_format(),
        model.kv_format(),
        sluice_engine::kernels::kernel_name(),
        threads()
    );
    println!(
        "prompt: {} tokens (prefill), {} (decode prompt); decode: {DECODE_TOKENS} tokens, greedy\n",
        long_ids.len(),
        short_ids.len()
    );
    println!("{:<34} {:>14} {:>14}", "", "sluice", "llama.cpp");
    let peer_value = |key: &str| {
        peer.as_ref()
            .and_then(|p| p.get(key))
            .and_then(serde_json::Value::as_f64)
    };
    let row = |name: &str, ours: f64, theirs: Option<f64>| {
        let theirs = theirs.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
        println!("{name:<34} {:>14} {theirs:>14}", format!("{ours:.1}"));
    };
    row(
        "prompt tokens/s",
        prompt_tps,
        peer_value("prompt_tokens_per_second"),
    );
    row(
        "time to first token (ms)",
        ttft * 1e3,
        peer_value("time_to_first_token_seconds").map(|s| s * 1e3),
    );
    row(
        "decode tokens/s, 1 stream",
        decode_tps,
        peer_value("decode_tokens_per_second"),
    );
    for (streams, tps) in &aggregate {
        row(&format!("decode tokens/s, {streams} streams (sum)"), *tps, None);
    }
    row(
        "peak RSS (MiB)",
        rss as f64 / 1048576.0,
        peer_value("peak_rss_bytes").map(|b| b / 1048576.0),
    );
    row("model load (s)", load_seconds, peer_value("load_seconds"));
    println!(
        "{:<34} {:>14} {:>14}",
        format!("perplexity ({} tokens of prose)", text_ids.len()),
        format!("{perplexity:.3}"),
        peer_value("perplexity").map_or_else(|| "n/a".to_owned(), |p| format!("{p:.3}"))
    );
    if peer.is_none() {
        println!("\nllama.cpp: not run (set LLAMA_CPP_PYTHON to a Python with llama-cpp-python installed)");
    } else {
        println!(
            "\nllama.cpp runs one sequence at a time through its Python binding: no multi-stream figure."
        );
        println!("llama.cpp's peak RSS includes its Python interpreter.");
    }
    Ok(())
}

/// `SLUICE_WEIGHT_FORMAT=native` measures the weights exactly as stored.
fn weight_format() -> sluice_engine::WeightFormat {
    std::env::var("SLUICE_WEIGHT_FORMAT")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_default()
}

/// Perplexity of the model on `ids`, one position at a time (as decoding runs).
fn perplexity(model: &Model, ids: &[u32]) -> BenchResult<f64> {
    let mut cache = model.new_cache();
    let mut nll = 0f64;
    for (t, next) in ids.iter().zip(&ids[1..]) {
        let mut items = [sluice_engine::llama::BatchItem {
            tokens: std::slice::from_ref(t),
            cache: &mut cache,
            logits: true,
        }];
        let logits = model.forward(&mut items)?.pop().flatten().ok_or("no logits")?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = f64::from(max) + logits.iter().map(|l| f64::from(l - max).exp()).sum::<f64>().ln();
        nll += log_sum - f64::from(logits[*next as usize]);
    }
    Ok((nll / (ids.len() - 1) as f64).exp())
}

fn run_one(engine: &Engine, request: Request) -> BenchResult<sluice_engine::Finished> {
    drain(engine.submit(request)?)
}

fn drain(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> BenchResult<sluice_engine::Finished> {
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Finished(f) => return Ok(f),
            Event::Failed(e) => return Err(e.into()),
            Event::Started { .. } | Event::Delta { .. } => {}
        }
    }
    Err("the engine closed the stream".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn run_llama_cpp(
    model: &Path,
    long: &[u32],
    short: &[u32],
    text: &[u32],
    banned: &[u32],
) -> Option<serde_json::Value> {
    let python = std::env::var("LLAMA_CPP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench_llama_cpp.py");
    let ids = std::env::temp_dir().join(format!("sluice-bench-ids-{}.json", std::process::id()));
    let payload = serde_json::json!({ "long": long, "short": short, "text": text, "banned": banned });
    std::fs::write(&ids, payload.to_string()).ok()?;
    let output = Command::new(&python)
        .arg(script)
        .arg("--model")
        .arg(model)
        .arg("--prompt-ids")
        .arg(&ids)
        .args([
            "--decode",
            &DECODE_TOKENS.to_string(),
            "--threads",
            &threads().to_string(),
        ])
        .args(["--repeat", &REPEAT.to_string()])
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            eprintln!("llama.cpp benchmark: cannot run {python}: {e}");
            return None;
        }
    };
    let _ = std::fs::remove_file(&ids);
    if !output.status.success() {
        eprintln!(
            "llama.cpp benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    serde_json::from_slice(String::from_utf8_lossy(&output.stdout).lines().last()?.as_bytes()).ok()
}
