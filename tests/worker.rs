//! The worker daemon end to end: the real `sluice worker` binary with the real demo model, over gRPC.

mod common;

use std::time::{Duration, Instant};

use common::{DEMO_MODEL_ID, Worker, chat, fixed_length, generate, metric};
use sluice_proto::v1;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_demo_model_and_describes_itself() {
    let worker = Worker::start(&["--slots", "3", "--max-waiting", "5"]);
    worker.wait_serving().await;
    assert_eq!(
        worker.health("sluice.worker.v1.Worker").await,
        ServingStatus::Serving
    );
    let info = worker
        .client()
        .await
        .get_info(v1::GetInfoRequest {})
        .await
        .expect("GetInfo")
        .into_inner();
    assert_eq!(info.state, v1::WorkerState::Ready as i32);
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.device.expect("device").kind, "cpu");
    let model = &info.models[0];
    assert_eq!(model.id, DEMO_MODEL_ID);
    assert_eq!(
        (model.architecture.as_str(), model.quantization.as_str()),
        ("llama", "Q4_1")
    );
    assert_eq!(
        (model.context_length, model.slots, model.max_waiting),
        (8192, 3, 5)
    );
    // SmolLM2: 30 layers x 2 (keys, values) x 3 KV heads x 64 x 2 bytes (f16).
    assert_eq!(
        (model.kv_bytes_per_token, model.kv_cache_format.as_str()),
        (23040, "f16")
    );
    assert!(
        model.max_kv_tokens >= 1 && model.max_kv_tokens <= 3 * 8192,
        "{}",
        model.max_kv_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answer_names_tokyo_and_metrics_count_it() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let answer = generate(&mut client, chat("What is the capital of Japan?", 48))
        .await
        .expect("answer");
    assert!(answer.text.contains("Tokyo"), "{:?}", answer.text);
    let finished = answer.finished.expect("finished");
    assert_eq!(
        finished.finish_reason,
        v1::FinishReason::Stop as i32,
        "{:?}",
        answer.text
    );
    let usage = finished.usage.expect("usage");
    assert_eq!(Some(usage.prompt_tokens), answer.started.map(|s| s.prompt_tokens));
    assert!(answer.delta_tokens >= 1 && answer.delta_tokens <= usage.completion_tokens);

    let text = worker.scrape();
    assert_eq!(
        metric(&text, "sluice_worker_generation_tokens_total"),
        Some(f64::from(usage.completion_tokens))
    );
    assert_eq!(
        metric(&text, "sluice_worker_prompt_tokens_total"),
        Some(f64::from(usage.prompt_tokens))
    );
    assert!(metric(&text, "sluice_worker_busy_seconds_total").expect("busy") > 0.0);
    assert_eq!(
        metric(&text, "sluice_worker_requests_total{code=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "sluice_worker_time_to_first_token_seconds_count"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_streams_all_finish() {
    let worker = Worker::start(&["--slots", "4"]);
    worker.wait_serving().await;
    let client = worker.client().await;
    let prompts = [
        "Count to five.",
        "Name a color.",
        "What is 2 plus 2?",
        "Say hello.",
    ];
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut client = client.clone();
            let request = fixed_length(p, 12);
            tokio::spawn(async move { generate(&mut client, request).await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.expect("task").expect("answer");
        let finished = answer.finished.expect("finished");
        assert_eq!(finished.finish_reason, v1::FinishReason::Length as i32);
        assert_eq!(finished.usage.expect("usage").completion_tokens, 12);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_slots_and_queue_get_resource_exhausted() {
    let worker = Worker::start(&["--slots", "2", "--max-waiting", "1"]);
    worker.wait_serving().await;
    let client = worker.client().await;
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                generate(&mut client, fixed_length(&format!("Story number {i}"), 24)).await
            })
        })
        .collect();
    let (mut finished, mut exhausted) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(answer) => {
                assert_eq!(
                    answer
                        .finished
                        .expect("finished")
                        .usage
                        .expect("usage")
                        .completion_tokens,
                    24
                );
                finished += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("full"), "{status:?}");
                exhausted += 1;
            }
        }
    }
    assert_eq!((finished, exhausted), (3, 3), "2 slots + 1 waiting admit 3 of 6");
    let text = worker.scrape();
    assert_eq!(
        metric(&text, "sluice_worker_requests_total{code=\"resource_exhausted\"}"),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_meaningful_codes_before_any_work() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let mut client = worker.client().await;

    let long_prompt = "word ".repeat(20_000);
    let started = Instant::now();
    let status = generate(&mut client, chat(&long_prompt, 16))
        .await
        .expect_err("over the context window");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("context window"), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused before any model work"
    );

    let mut unknown = chat("hi", 4);
    unknown.model = "gpt-4o".into();
    assert_eq!(
        generate(&mut client, unknown)
            .await
            .expect_err("unknown model")
            .code(),
        Code::NotFound
    );

    let mut hot = chat("hi", 4);
    hot.sampling = Some(v1::SamplingParams {
        temperature: 9.0,
        ..Default::default()
    });
    let status = generate(&mut client, hot).await.expect_err("temperature");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("temperature"), "{status:?}");

    let load = worker
        .client()
        .await
        .watch_load(v1::WatchLoadRequest {})
        .await
        .expect("watch")
        .into_inner()
        .message()
        .await;
    let report = load.expect("stream").expect("report");
    assert_eq!((report.requests_running, report.requests_waiting), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_frees_its_slot() {
    let worker = Worker::start(&["--slots", "1", "--max-waiting", "0"]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let mut stream = client
        .generate(fixed_length("Tell me a very long story.", 2000))
        .await
        .expect("admitted")
        .into_inner();
    // Wait for real output, then hang up.
    loop {
        let event = stream.message().await.expect("stream").expect("event");
        if matches!(event.event, Some(v1::generate_event::Event::Delta(_))) {
            break;
        }
    }
    // While it runs, the only slot is taken.
    let busy = generate(&mut client, chat("hi", 2)).await.expect_err("full");
    assert_eq!(busy.code(), Code::ResourceExhausted);
    drop(stream);
    let until = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match generate(&mut client, chat("What is the capital of Japan?", 16)).await {
            Ok(answer) => break answer,
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("slot never freed: {status:?}\n{}", worker.log()),
        }
    };
    assert!(answer.text.contains("Tokyo"), "{:?}", answer.text);
    assert!(
        worker.log().contains("cancelled by the client"),
        "{}",
        worker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_load_reports_at_once_on_change_and_every_second() {
    let worker = Worker::start(&["--slots", "2"]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let mut reports = client
        .watch_load(v1::WatchLoadRequest {})
        .await
        .expect("watch")
        .into_inner();
    let started = Instant::now();
    let first = reports.message().await.expect("stream").expect("first report");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the first report comes at once"
    );
    assert_eq!(
        (first.state, first.slots, first.requests_running),
        (v1::WorkerState::Ready as i32, 2, 0)
    );
    // Idle: still at least one a second.
    let idle_start = Instant::now();
    reports.message().await.expect("stream").expect("second");
    reports.message().await.expect("stream").expect("third");
    assert!(
        idle_start.elapsed() < Duration::from_millis(2_600),
        "{:?}",
        idle_start.elapsed()
    );

    let mut gen_client = worker.client().await;
    let job = tokio::spawn(async move { generate(&mut gen_client, fixed_length("Hello there", 40)).await });
    let mut saw_running = false;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let r = reports.message().await.expect("stream").expect("report");
        if r.requests_running == 1 {
            saw_running = true;
        }
        if saw_running && r.requests_running == 0 {
            assert!(
                r.busy_seconds_total > 0.0 && r.generation_tokens_total >= 40,
                "{r:?}"
            );
            assert!(r.decode_tokens_per_second > 0.0, "{r:?}");
            break;
        }
    }
    assert!(saw_running, "a running request shows in the reports");
    job.await.expect("task").expect("answer");
    // The device is sampled every 5 s; from the second sample on, reports carry the machine's CPU
    // utilisation (from /proc/stat), and /metrics the same under the device's name. Power only where the
    // RAPL counters are readable (never a made-up figure): whichever it is here, reports and metrics agree.
    let until = Instant::now() + Duration::from_secs(15);
    let report = loop {
        let r = reports.message().await.expect("stream").expect("report");
        if r.device_utilization.is_some() || Instant::now() > until {
            break r;
        }
    };
    let utilization = report.device_utilization.expect("utilisation within 15 s");
    assert!((0.0..=1.0).contains(&utilization), "{utilization}");
    let metrics = worker.scrape();
    assert!(
        metrics.contains("sluice_worker_device_utilization_ratio{device=\"cpu\"}"),
        "{metrics}"
    );
    let rapl = std::fs::read_dir("/sys/class/powercap").is_ok_and(|d| {
        d.flatten()
            .any(|e| std::fs::read_to_string(e.path().join("energy_uj")).is_ok())
    });
    assert_eq!(report.power_watts.is_some(), rapl, "{report:?}");
    assert_eq!(
        metrics.contains("sluice_worker_device_power_watts{device=\"cpu\"}"),
        rapl
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits_zero() {
    let mut worker = Worker::start(&["--slots", "2", "--drain-grace-seconds", "60"]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let mut stream = client
        .generate(fixed_length("Write a poem.", 60))
        .await
        .expect("admitted")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("event");
    assert!(matches!(first.event, Some(v1::generate_event::Event::Started(_))));

    worker.signal("TERM");
    let until = Instant::now() + Duration::from_secs(5);
    while worker.health("").await != ServingStatus::NotServing {
        assert!(Instant::now() < until, "health never turned NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = generate(&mut client, chat("hi", 2)).await.expect_err("draining");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // The admitted stream still runs to its end.
    let mut finished = None;
    while let Some(event) = stream.message().await.expect("stream keeps going") {
        if let Some(v1::generate_event::Event::Finished(f)) = event.event {
            finished = Some(f);
        }
    }
    assert_eq!(
        finished
            .expect("finished")
            .usage
            .expect("usage")
            .completion_tokens,
        60
    );
    let status = worker.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", worker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rpc_stops_admission() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let response = client
        .drain(v1::DrainRequest { wait: true })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(response.requests_in_flight, 0);
    assert_eq!(worker.health("").await, ServingStatus::NotServing);
    let info = client
        .get_info(v1::GetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.state, v1::WorkerState::Draining as i32);
    assert_eq!(
        generate(&mut client, chat("hi", 2))
            .await
            .expect_err("draining")
            .code(),
        Code::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_queued_frees_its_place_in_the_queue() {
    let worker = Worker::start(&["--slots", "1", "--max-waiting", "1"]);
    worker.wait_serving().await;
    let mut client = worker.client().await;
    let mut running = client
        .generate(fixed_length("Tell me a long story.", 400))
        .await
        .expect("runs")
        .into_inner();
    assert!(matches!(
        running.message().await.expect("stream").expect("event").event,
        Some(v1::generate_event::Event::Started(_))
    ));
    // The only queue place is taken, then given up before the request ever starts.
    let queued = client.generate(chat("hi", 2)).await.expect("queued").into_inner();
    let full = generate(&mut client, chat("hi", 2))
        .await
        .expect_err("slot and queue are full");
    assert_eq!(full.code(), Code::ResourceExhausted);
    drop(queued);
    // The place comes back while the first request still runs.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match client.generate(chat("hi", 2)).await {
            Ok(stream) => {
                drop(stream);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the queue place never came back: {status:?}"),
        }
    }
    // Without noticing the departure, the place would only come back when the 3,000-token request ends.
    let still_running = running.message().await.expect("stream").expect("event");
    assert!(
        matches!(still_running.event, Some(v1::generate_event::Event::Delta(_))),
        "{still_running:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_at_most_its_streams_and_messages_are_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("worker.yaml");
    std::fs::write(
        &path,
        "connections:\n  max_concurrent_streams: 3\n  max_message_bytes: 65536\n",
    )
    .expect("write config");
    let worker = Worker::start(&["--config", path.to_str().expect("path")]);
    worker.wait_serving().await;
    let client = worker.client().await;

    // A request larger than max_message_bytes is refused by the transport, before the model sees it.
    let status = generate(&mut client.clone(), chat(&"word ".repeat(20_000), 4))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // Three load watches fill the connection; a fourth stream waits until one of them ends.
    let mut watches = Vec::new();
    for _ in 0..3 {
        let mut stream = client
            .clone()
            .watch_load(v1::WatchLoadRequest {})
            .await
            .expect("watch")
            .into_inner();
        stream.message().await.expect("report").expect("first report");
        watches.push(stream);
    }
    let mut fourth = client.clone();
    let waiting = tokio::spawn(async move {
        let mut stream = fourth.watch_load(v1::WatchLoadRequest {}).await?.into_inner();
        stream.message().await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth stream was opened beyond max_concurrent_streams"
    );
    watches.pop();
    let report = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the fourth stream opens once one ends")
        .expect("task")
        .expect("report");
    assert!(report.is_some());
}
