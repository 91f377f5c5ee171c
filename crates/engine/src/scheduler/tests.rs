use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::model::DeviceSpec;
use crate::testing::{TinyModel, write_tiny_gguf};

/// One tiny model file for every test in this module.
fn tiny_model() -> Arc<Model> {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-engine-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tiny.gguf");
        write_tiny_gguf(&path, TinyModel::default()).expect("write tiny gguf");
        path
    });
    Arc::new(Model::load(path, "tiny", DeviceSpec::Cpu, crate::WeightFormat::Auto).expect("load tiny model"))
}

fn engine(slots: usize, max_waiting: usize) -> Engine {
    Engine::start(
        tiny_model(),
        EngineConfig {
            slots,
            max_waiting,
            prefill_chunk: 16,
            max_kv_tokens: None,
        },
    )
    .expect("engine starts")
}

fn request(prompt: &str, max_tokens: u32) -> Request {
    Request {
        request_id: prompt.into(),
        model: "tiny".into(),
        messages: vec![Message::new("user", prompt)],
        max_tokens,
        ignore_eos: true,
        ..Request::default()
    }
}

/// Collects a stream to its end: (text, finish or error, number of deltas).
async fn collect(mut rx: UnboundedReceiver<Event>) -> (String, Result<Finished, RunError>, Option<u32>) {
    let mut text = String::new();
    let mut prompt_tokens = None;
    while let Some(event) = rx.recv().await {
        match event {
            Event::Started { prompt_tokens: p, .. } => prompt_tokens = Some(p),
            Event::Delta { text: t, .. } => text.push_str(&t),
            Event::Finished(f) => return (text, Ok(f), prompt_tokens),
            Event::Failed(e) => return (text, Err(e), prompt_tokens),
        }
    }
    // Distinct from every real outcome, so a test never mistakes a silently closed stream for a failure.
    (
        text,
        Err(RunError::Model("the stream closed without a last event".into())),
        prompt_tokens,
    )
}

#[test]
fn the_tiny_model_describes_itself() {
    let model = tiny_model();
    assert_eq!(model.description.architecture, "llama");
    assert_eq!(model.description.quantization, "Q8_0");
    assert_eq!(model.description.context_length, 1024);
    assert!(model.is_end_of_generation(2));
    let prompt = model
        .prompt_tokens(&[Message::new("user", "hi")])
        .expect("prompt");
    assert_eq!(prompt[0], 1, "starts with <|im_start|>");
}

#[tokio::test]
async fn greedy_generation_is_deterministic_and_counts_tokens() {
    let engine = engine(2, 2);
    let a = collect(engine.submit(request("the answer", 12)).expect("admitted")).await;
    let b = collect(engine.submit(request("the answer", 12)).expect("admitted")).await;
    let finished = a.1.clone().expect("finished");
    assert_eq!(finished.reason, FinishReason::Length);
    assert_eq!(finished.usage.completion_tokens, 12);
    assert_eq!(Some(finished.usage.prompt_tokens), a.2);
    assert!(finished.timings.time_to_first_token <= finished.timings.total);
    assert_eq!(a.0, b.0, "greedy decoding gives the same text twice");
    // The load is published after the scheduler round that sent the last event.
    let mut load = engine.load();
    for _ in 0..100 {
        if load.generation_tokens_total == 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        load = engine.load();
    }
    assert_eq!(load.generation_tokens_total, 24);
    assert!(load.busy_seconds_total > 0.0);
    assert_eq!((load.running, load.waiting), (0, 0));
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text() {
    let engine = engine(1, 4);
    let sampled = |seed| {
        let mut r = request("sample me", 24);
        r.sampling = SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 40,
            seed: Some(seed),
        };
        r
    };
    let a = collect(engine.submit(sampled(1)).expect("admitted")).await.0;
    let b = collect(engine.submit(sampled(1)).expect("admitted")).await.0;
    let c = collect(engine.submit(sampled(2)).expect("admitted")).await.0;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn stop_sequences_cut_the_text() {
    let engine = engine(1, 1);
    let (full, _, _) = collect(engine.submit(request("stop test", 60)).expect("admitted")).await;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "need some text to cut: {full:?}");
    let stop: String = chars[8..11].iter().collect();
    let expected_prefix = &full[..full.find(&stop).expect("stop occurs")];
    let mut r = request("stop test", 60);
    r.stop = vec![stop.clone()];
    let (cut, finished, _) = collect(engine.submit(r).expect("admitted")).await;
    let finished = finished.expect("finished");
    assert_eq!(cut, expected_prefix);
    assert_eq!(finished.reason, FinishReason::Stop);
    assert_eq!(finished.stop_sequence.as_deref(), Some(stop.as_str()));
}

#[tokio::test]
async fn streams_are_interleaved_fairly() {
    let engine = engine(2, 0);
    let a = engine.submit(request("first stream", 600)).expect("admitted");
    let b = engine.submit(request("second stream", 600)).expect("admitted");
    let (a, b) = tokio::join!(collect(a), collect(b));
    let (a, b) = (a.1.expect("a finished"), b.1.expect("b finished"));
    // Both advance in every round: the second starts generating before the first is a quarter into its
    // decoding (admission waits at most one round), and both end close together.
    let a_decode_start = a.timings.time_to_first_token;
    assert!(
        b.timings.time_to_first_token < a_decode_start + a.timings.decode / 4.0,
        "{a:?} {b:?}"
    );
    assert!(
        (a.timings.total - b.timings.total).abs() < a.timings.total / 4.0,
        "{a:?} {b:?}"
    );
}

#[tokio::test]
async fn a_full_worker_refuses_with_the_counts() {
    let engine = engine(1, 1);
    let first = engine.submit(request("long one", 200)).expect("runs");
    let second = engine.submit(request("queued", 4)).expect("waits");
    let third = engine.submit(request("refused", 4));
    match third {
        Err(SubmitError::Full {
            running,
            waiting,
            limit,
        }) => assert_eq!((running + waiting, limit), (2, 2)),
        other => panic!("expected Full, got {other:?}"),
    }
    let (a, b) = tokio::join!(collect(first), collect(second));
    assert!(a.1.is_ok() && b.1.is_ok());
    // Room again once they are done.
    assert!(
        collect(engine.submit(request("later", 2)).expect("admitted"))
            .await
            .1
            .is_ok()
    );
}

#[tokio::test]
async fn a_dropped_stream_frees_its_slot() {
    let engine = engine(1, 1);
    let mut first = engine.submit(request("to be cancelled", 240)).expect("runs");
    assert!(matches!(first.recv().await, Some(Event::Started { .. })));
    drop(first);
    let started = Instant::now();
    let (_, second, _) = collect(engine.submit(request("next", 4)).expect("admitted")).await;
    let second = second.expect("finished");
    assert!(
        second.timings.queue < 0.5,
        "waited {}s for a cancelled request",
        second.timings.queue
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(engine.in_flight(), 0);
}

#[tokio::test]
async fn deadlines_end_running_and_waiting_requests() {
    let engine = engine(1, 1);
    let mut running = request("deadline running", 900);
    running.deadline = Some(Instant::now() + Duration::from_millis(5));
    let mut waiting = request("deadline waiting", 4);
    waiting.deadline = Some(Instant::now() + Duration::from_millis(1));
    let a = engine.submit(running).expect("runs");
    let b = engine.submit(waiting).expect("waits");
    let (a, b) = tokio::join!(collect(a), collect(b));
    assert!(matches!(a.1, Err(RunError::DeadlineExceeded { .. })), "{:?}", a.1);
    assert!(
        matches!(b.1, Err(RunError::DeadlineExceeded { generated: 0 })),
        "{:?}",
        b.1
    );
}

#[test]
fn bad_requests_are_refused_before_any_work() {
    let engine = engine(1, 1);
    let huge = "word ".repeat(2_000);
    match engine.submit(request(&huge, 0)) {
        Err(SubmitError::InvalidArgument(m)) => assert!(m.contains("context window"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match engine.submit(request("short", 10_000)) {
        Err(SubmitError::InvalidArgument(m)) => assert!(m.contains("max_tokens (10000)"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut hot = request("x", 1);
    hot.sampling.temperature = 7.0;
    assert!(matches!(engine.submit(hot), Err(SubmitError::InvalidArgument(m)) if m.contains("temperature")));
    let mut empty = request("x", 1);
    empty.messages.clear();
    assert!(matches!(engine.submit(empty), Err(SubmitError::InvalidArgument(m)) if m.contains("messages")));
    let mut other = request("x", 1);
    other.model = "gpt-4o".into();
    assert!(matches!(
        engine.submit(other),
        Err(SubmitError::UnknownModel { .. })
    ));
    assert_eq!(engine.in_flight(), 0);
}

#[tokio::test]
async fn draining_refuses_new_work_and_finishes_admitted_work() {
    let engine = engine(1, 2);
    let admitted = engine.submit(request("admitted", 30)).expect("runs");
    engine.drain();
    assert_eq!(
        engine.submit(request("late", 3)).expect_err("draining"),
        SubmitError::Draining
    );
    assert_eq!(engine.load().state, EngineState::Draining);
    assert!(collect(admitted).await.1.is_ok());
    assert_eq!(engine.in_flight(), 0);
}

#[tokio::test]
async fn stopping_fails_what_is_left() {
    let engine = engine(1, 1);
    // 900 tokens take the tiny model far longer than the moment until `stop`.
    let a = engine.submit(request("long", 900)).expect("runs");
    let b = engine.submit(request("queued", 240)).expect("waits");
    engine.stop();
    let (a, b) = tokio::join!(collect(a), collect(b));
    assert_eq!(a.1, Err(RunError::Stopped));
    assert_eq!(b.1, Err(RunError::Stopped));
}

#[tokio::test]
async fn a_sentencepiece_model_without_a_template_loads_and_generates() {
    let dir = std::env::temp_dir().join(format!("sluice-spm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tiny-spm.gguf");
    write_tiny_gguf(
        &path,
        TinyModel {
            sentencepiece: true,
            ..TinyModel::default()
        },
    )
    .expect("write");
    let model = Model::load(&path, "spm", DeviceSpec::Cpu, crate::WeightFormat::Auto).expect("load");
    let prompt = model
        .prompt_tokens(&[Message::new("user", "the")])
        .expect("prompt");
    assert_eq!(prompt[0], 1, "SentencePiece models start with <s>");
    assert!(model.is_end_of_generation(2), "</s> ends a turn");
    let engine = Engine::start(Arc::new(model), EngineConfig::default()).expect("engine");
    let mut r = request("the", 6);
    r.model = "spm".into();
    let (_, finished, _) = collect(engine.submit(r).expect("admitted")).await;
    assert_eq!(finished.expect("finished").usage.completion_tokens, 6);
}

#[tokio::test]
async fn the_kv_budget_holds_requests_back_in_order_and_refuses_what_can_never_fit() {
    let engine = Engine::start(
        tiny_model(),
        EngineConfig {
            slots: 2,
            max_waiting: 4,
            prefill_chunk: 16,
            max_kv_tokens: Some(300),
        },
    )
    .expect("engine");
    // Each needs its ~30-token prompt plus 200: two of them do not fit 300 together, though two slots are free.
    let first = engine
        .submit(request("first under budget", 200))
        .expect("admitted");
    let second = engine
        .submit(request("second under budget", 200))
        .expect("admitted");
    let (first, second) = tokio::join!(collect(first), collect(second));
    let (first, second) = (first.1.expect("first"), second.1.expect("second"));
    assert!(
        second.timings.queue >= first.timings.total * 0.9,
        "the second waited for the first to finish: {first:?} {second:?}"
    );
    // Small requests share the budget.
    let a = engine.submit(request("a", 20)).expect("admitted");
    let b = engine.submit(request("b", 20)).expect("admitted");
    let (a, b) = tokio::join!(collect(a), collect(b));
    assert!(
        b.1.expect("b").timings.queue < a.1.expect("a").timings.total,
        "both ran at once"
    );
    // More than the whole budget, or "until the context is full" (1,024 positions), can never run.
    match engine.submit(request("too big", 400)) {
        Err(SubmitError::InvalidArgument(m)) => assert!(m.contains("budget of 300"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match engine.submit(request("unbounded", 0)) {
        Err(SubmitError::InvalidArgument(m)) => assert!(m.contains("rest of the context window"), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}
