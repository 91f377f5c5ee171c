//! Embedding throughput of the worker against sentence-transformers on the same CPU, in one run.
//!
//! The worker serves all-MiniLM-L6-v2 in this process over real gRPC; the client sends the same 256
//! sentences three ways: one sentence per request, one after the other (batch 1); 32 sentences per request
//! (batch 32); and 32 clients sending one sentence each at once (the worker's batcher groups them). The
//! reference is sentence-transformers 5.1.2 on PyTorch 2.9.1 (`scripts/reference-embeddings`, its own
//! environment) encoding the same sentences with batch_size 1 and 32, with as many threads as the worker's
//! engine uses. Each figure is the median of `RUNS` timed passes after a warm-up.
//!
//! Run with `scripts/bench-embed` (or `cargo bench -p sluice-worker --bench embed`).

#![expect(clippy::panic, reason = "benchmark tool: a failure should stop it")]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tonic::transport::Channel;

const RUNS: usize = 5;

/// 256 sentences of 8 to 30 words, from a few templates (deterministic).
fn sentences() -> Vec<String> {
    let subjects = [
        "The committee",
        "Our support team",
        "A patient",
        "The new build pipeline",
        "The auditor",
        "Every branch office",
        "The quarterly report",
        "A customer in Lyon",
    ];
    let verbs = [
        "reviewed",
        "postponed",
        "approved",
        "questioned",
        "summarised",
        "escalated",
        "rejected",
        "documented",
    ];
    let objects = [
        "the contract renewal",
        "the proposal to migrate the billing service to the new data centre before the end of the year",
        "three overdue invoices",
        "the incident in which the search service slowed down during peak hours last Tuesday",
        "a request for a refund",
        "the results of the blood test taken on Monday morning",
        "the plan",
        "the long list of open tickets about exports to spreadsheets and the missing audit trail",
    ];
    let mut out = Vec::with_capacity(256);
    for (i, s) in subjects.iter().enumerate() {
        for (j, v) in verbs.iter().enumerate() {
            for k in 0..4 {
                let o = objects[(i + j + k) % objects.len()];
                out.push(format!("{s} {v} {o}."));
            }
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn request(inputs: &[String]) -> v1::EmbedRequest {
    v1::EmbedRequest {
        request_id: "bench".into(),
        model: "all-minilm-l6-v2".into(),
        inputs: inputs
            .iter()
            .map(|t| v1::EmbedInput {
                input: Some(v1::embed_input::Input::Text(t.clone())),
            })
            .collect(),
    }
}

/// Sentences per second of one pass, sending `per_request` sentences per request from `clients` clients
/// at once.
async fn pass(channel: &Channel, texts: &[String], per_request: usize, clients: usize) -> f64 {
    let start = Instant::now();
    let chunks: Vec<Vec<String>> = texts.chunks(per_request).map(<[String]>::to_vec).collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(chunks));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        let mut client = WorkerClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or_default();
                let Some(chunk) = next else { break };
                let answer = client
                    .embed(request(&chunk))
                    .await
                    .map(tonic::Response::into_inner);
                match answer {
                    Ok(a) => assert_eq!(a.embeddings.len(), chunk.len()),
                    Err(e) => panic!("Embed failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("client task: {e}"));
    }
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

fn reference(folder: &Path, texts: &[String], batch: usize, threads: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference-embeddings");
    let mut figures = Vec::new();
    for _ in 0..RUNS {
        let mut child = Command::new(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let job = serde_json::json!({"folder": folder, "sentences": texts, "batch_size": batch, "bench": 3, "threads": threads});
        child.stdin.take()?.write_all(job.to_string().as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        if !out.status.success() {
            eprintln!("reference failed: {}", out.status);
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        figures.push(v["sentences_per_second"].as_f64()?);
    }
    Some(median(figures))
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let folder = sluice_models::ensure_folder(&sluice_models::cache_dir(), &sluice_models::EMBEDDING_MODEL)
        .unwrap_or_else(|e| panic!("fetch the embedding model: {e}"));
    let texts = sentences();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let (worker, rows) = runtime.block_on(async {
        let config = sluice_worker::RawWorkerConfig {
            model: Some(folder.clone()),
            model_id: Some("all-minilm-l6-v2".into()),
            listen: Some("127.0.0.1:0".into()),
            metrics_listen: Some("off".into()),
            ..Default::default()
        }
        .validate(None, None)
        .unwrap_or_else(|e| panic!("config: {e}"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(sluice_worker::run(
            config,
            prometheus::Registry::new(),
            async {
                let _ = stop_rx.await;
            },
            move |b| {
                let _ = tx.send(b.grpc);
            },
        ));
        let addr = rx.await.unwrap_or_else(|e| panic!("worker did not listen: {e}"));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        // Wait for the model, then warm up.
        let until = Instant::now() + Duration::from_secs(120);
        while WorkerClient::new(channel.clone())
            .embed(request(&texts[..1]))
            .await
            .is_err()
        {
            assert!(Instant::now() < until, "the worker never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pass(&channel, &texts, 32, 1).await;
        let mut rows = Vec::new();
        for (label, per_request, clients) in [
            ("batch 1 (one sentence per request, one at a time)", 1, 1),
            ("batch 32 (32 sentences per request)", 32, 1),
            ("32 clients at once, one sentence each", 1, 32),
        ] {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push(pass(&channel, &texts, per_request, clients).await);
            }
            let spread =
                runs.iter().copied().fold(f64::MIN, f64::max) / runs.iter().copied().fold(f64::MAX, f64::min);
            rows.push((label, median(runs), spread));
        }
        let _ = stop_tx.send(());
        (worker, rows)
    });
    drop(worker);
    println!(
        "all-MiniLM-L6-v2, {} sentences, {threads} threads, median of {RUNS} passes (max/min in brackets)",
        texts.len()
    );
    println!("{:<52} {:>14}", "Sluice worker (gRPC Embed)", "sentences/s");
    for (label, value, spread) in &rows {
        println!("  {label:<50} {value:>10.1}  ({spread:.2}x)");
    }
    println!(
        "{:<52} {:>14}",
        "sentence-transformers 5.1.2, PyTorch 2.9.1 (CPU)", "sentences/s"
    );
    for batch in [1, 32] {
        match reference(&folder, &texts, batch, threads) {
            Some(v) => println!("  {:<50} {v:>10.1}", format!("encode, batch_size {batch}")),
            None => println!("  encode, batch_size {batch}: the reference did not run"),
        }
    }
}
