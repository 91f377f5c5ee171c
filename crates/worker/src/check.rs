//! `sluice device-check`: loads a model on a device, holds its greedy tokens to the CPU engine's, and
//! measures prompt and decode speed there, so an operator can tell whether a node's device serves the model
//! correctly and how fast before it takes traffic (`scripts/gpu-check` runs it on a GPU).
//!
//! Correctness: for a few prompts, both engines read the prompt and then decode with the CPU engine's
//! greedy token fed to both (teacher forcing, so one disagreement does not make every later position
//! differ); the device's token is the argmax it computes itself. Quantized kernels differ between devices
//! (a GPU rounds activations in its own blocks), so near ties may go either way: on the demo model the
//! CPU's two forward passes, with the same kernels, already agree on 92 to 98% of positions (its
//! activation outliers move logits by up to about 1 under int8 rounding). The check asks for
//! [`MIN_AGREEMENT`] of the positions; a broken device path (wrong RoPE, a stale cache) agrees on almost
//! none.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sluice_engine::llama::{BatchItem, Next, Pick, argmax};
pub use sluice_engine::{DeviceSpec, ForwardPath, WeightFormat};
use sluice_engine::{Engine, EngineConfig, Event, Finished, Message, Model, Request};

/// The share of teacher-forced greedy positions that must agree with the CPU engine.
pub const MIN_AGREEMENT: f64 = 0.8;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub model: PathBuf,
    pub device: DeviceSpec,
    pub weight_format: WeightFormat,
    /// The forward pass on the device (default: the device's own).
    pub forward: Option<ForwardPath>,
    /// Concurrent streams to measure decode speed with.
    pub streams: Vec<usize>,
    /// Tokens each measured stream generates.
    pub tokens: u32,
    /// Greedy positions compared per prompt.
    pub steps: usize,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub agreed: usize,
    pub compared: usize,
    pub answer: String,
    pub prompt_tokens_per_second: f64,
    /// Decode tokens/s per stream count: one stream's decode rate, or all streams' tokens over wall time.
    pub decode_tokens_per_second: Vec<(usize, f64)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.compared > 0 && self.agreed as f64 >= MIN_AGREEMENT * self.compared as f64
    }
}

const PROMPTS: [&str; 3] = [
    "What is the capital of Japan?",
    "Write a short note about rivers and the sea.",
    "List three uses of a lighthouse.",
];

/// Runs the check, writing progress and figures to `out`.
pub fn run(options: &CheckOptions, out: &mut dyn Write) -> Result<CheckReport, String> {
    let started = Instant::now();
    let mut model = Model::load(&options.model, "check", options.device, options.weight_format)
        .map_err(|e| format!("loading on {}: {e}", options.device))?;
    if let Some(path) = options.forward {
        model.set_forward_path(path)?;
    }
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(
        out,
        format!(
            "loaded {} on {} in {:.1} s ({:?} forward pass, {:?} KV cache)",
            options.model.display(),
            options.device,
            started.elapsed().as_secs_f64(),
            model.forward_path(),
            model.kv_format()
        ),
    );
    let reference = Model::load(&options.model, "reference", DeviceSpec::Cpu, WeightFormat::Auto)
        .map_err(|e| format!("loading the CPU reference: {e}"))?;

    let (mut agreed, mut compared) = (0, 0);
    for prompt in PROMPTS {
        let ids = reference.prompt_tokens(&[Message::new("user", prompt)])?;
        let (a, b) = compare(&reference, &model, &ids, options.steps)?;
        agreed += a;
        compared += b;
    }
    say(
        out,
        format!(
            "greedy tokens: {agreed} of {compared} agree with the CPU engine ({:.1}%, at least {:.0}% wanted)",
            100.0 * agreed as f64 / compared.max(1) as f64,
            100.0 * MIN_AGREEMENT
        ),
    );

    let model = Arc::new(model);
    let request = |text: &str, max_tokens: u32, ignore_eos: bool| Request {
        model: "check".into(),
        messages: vec![Message::new("user", text)],
        max_tokens,
        ignore_eos,
        ..Request::default()
    };
    let engine = |slots: usize| {
        Engine::start(
            model.clone(),
            EngineConfig {
                slots,
                max_waiting: 0,
                prefill_chunk: 512,
                max_kv_tokens: None,
            },
        )
        .map_err(|e| e.to_string())
    };
    let one = engine(1)?;
    let (answer, _) = collect(
        one.submit(request(PROMPTS[0], 24, false))
            .map_err(|e| e.to_string())?,
    )?;
    say(out, format!("answer on {}: {answer:?}", options.device));

    let paragraph = "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lamp, a \
        notebook and a flask of tea. From the gallery he watched the ships pass the reef, wrote down their names \
        and the weather, and counted the seconds between the flashes of the neighbouring lights. ";
    let long = format!("{}Summarise the story.", paragraph.repeat(6));
    let long_len = model.prompt_tokens(&[Message::new("user", long.as_str())])?.len();
    let mut rates = Vec::new();
    for _ in 0..3 {
        let (_, f) = collect(one.submit(request(&long, 1, true)).map_err(|e| e.to_string())?)?;
        rates.push(long_len as f64 / f.timings.prefill.max(1e-9));
    }
    let prompt_tokens_per_second = median(&mut rates);
    say(
        out,
        format!(
            "prompt: {prompt_tokens_per_second:.1} tokens/s ({long_len} tokens in one pass, median of 3)"
        ),
    );
    drop(one);

    let short = "Write a story about a lighthouse.";
    let mut decode_tokens_per_second = Vec::new();
    for &streams in &options.streams {
        let engine = engine(streams)?;
        let rate = if streams == 1 {
            let mut rates = Vec::new();
            for _ in 0..3 {
                let (_, f) = collect(
                    engine
                        .submit(request(short, options.tokens, true))
                        .map_err(|e| e.to_string())?,
                )?;
                rates.push(
                    f64::from(f.usage.completion_tokens.saturating_sub(1)) / f.timings.decode.max(1e-9),
                );
            }
            median(&mut rates)
        } else {
            let start = Instant::now();
            let receivers = (0..streams)
                .map(|_| engine.submit(request(short, options.tokens, true)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let mut tokens = 0u32;
            for rx in receivers {
                tokens += collect(rx)?.1.usage.completion_tokens;
            }
            f64::from(tokens) / start.elapsed().as_secs_f64()
        };
        let what = match streams {
            1 => "decode, 1 stream".to_owned(),
            n => format!("decode, {n} streams (all tokens over wall time)"),
        };
        say(
            out,
            format!("{what}: {rate:.1} tokens/s ({} tokens each)", options.tokens),
        );
        decode_tokens_per_second.push((streams, rate));
    }
    let report = CheckReport {
        agreed,
        compared,
        answer,
        prompt_tokens_per_second,
        decode_tokens_per_second,
    };
    say(
        out,
        match report.passed() {
            true => format!("PASS: {} serves the model as the CPU engine does", options.device),
            false => format!("FAIL: {} disagrees with the CPU engine", options.device),
        },
    );
    Ok(report)
}

/// Teacher-forced greedy comparison over `steps` positions: (agreeing, compared).
fn compare(
    reference: &Model,
    device: &Model,
    prompt: &[u32],
    steps: usize,
) -> Result<(usize, usize), String> {
    let (mut ours, mut theirs) = (reference.new_cache(), device.new_cache());
    let (mut agreed, mut compared) = (0, 0);
    let mut input = prompt.to_vec();
    for _ in 0..steps {
        let want = step(reference, &mut ours, &input, false)?;
        let got = step(device, &mut theirs, &input, true)?;
        compared += 1;
        agreed += usize::from(got == want);
        if reference.is_end_of_generation(want) {
            break;
        }
        input = vec![want];
    }
    Ok((agreed, compared))
}

/// One forward pass of `tokens`; the greedy token after them.
fn step(
    model: &Model,
    cache: &mut sluice_engine::llama::KvCache,
    tokens: &[u32],
    greedy: bool,
) -> Result<u32, String> {
    let mut items = [BatchItem {
        tokens,
        cache,
        logits: true,
    }];
    let pick = match greedy {
        true => Pick::Greedy { banned: false },
        false => Pick::Logits,
    };
    match model.forward_next(&mut items, &[pick])?.pop().flatten() {
        Some(Next::Token(token)) => Ok(token),
        Some(Next::Logits(logits)) => Ok(argmax(&logits) as u32),
        None => Err("the model returned nothing".into()),
    }
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Result<(String, Finished), String> {
    let mut text = String::new();
    while let Some(event) = rx.blocking_recv() {
        match event {
            Event::Delta { text: t, .. } => text.push_str(&t),
            Event::Finished(f) => return Ok((text, f)),
            Event::Failed(e) => return Err(e.to_string()),
            Event::Started { .. } => {}
        }
    }
    Err("the engine closed the stream".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
