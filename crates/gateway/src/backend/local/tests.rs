//! The pool against workers that speak real gRPC on loopback but answer as scripted: which worker gets a
//! request, what happens when one is full or failing, and the circuit breaker.

use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_proto::v1;
use sluice_proto::v1::worker_server::{Worker as WorkerRpc, WorkerServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::monitor::WORKER_SERVICE;
use super::*;
use crate::api::parse_chat_request;
use crate::backend::ChatEvent;

/// How a scripted worker answers `Generate`.
#[derive(Clone, Copy)]
enum Answer {
    Text,
    Full,
    Fail,
    OverContext,
}

struct Scripted {
    answer: Answer,
    running: u32,
    calls: Arc<AtomicUsize>,
    /// Power draw its load reports carry (one report every 100 ms when set).
    power: Option<f64>,
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Result<v1::GenerateEvent, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerRpc for Scripted {
    async fn get_info(
        &self,
        _: tonic::Request<v1::GetInfoRequest>,
    ) -> Result<tonic::Response<v1::WorkerInfo>, Status> {
        Ok(tonic::Response::new(v1::WorkerInfo {
            worker_id: "scripted".into(),
            models: vec![v1::ModelInfo {
                id: "m".into(),
                slots: 4,
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn embed(
        &self,
        _: tonic::Request<v1::EmbedRequest>,
    ) -> Result<tonic::Response<v1::EmbedResponse>, Status> {
        Err(Status::unimplemented(
            "this scripted worker serves a chat model only",
        ))
    }

    type GenerateStream = Events;

    async fn generate(
        &self,
        _: tonic::Request<v1::GenerateRequest>,
    ) -> Result<tonic::Response<Self::GenerateStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        use v1::generate_event::Event;
        let event = |e: Event| Ok(v1::GenerateEvent { event: Some(e) });
        match self.answer {
            Answer::Full => Err(Status::resource_exhausted("slots and queue full")),
            Answer::Fail => Err(Status::unavailable("the worker's engine stopped")),
            Answer::OverContext => Err(Status::invalid_argument(
                "the prompt (9000 tokens) does not fit the context window (8192)",
            )),
            Answer::Text => {
                let events = vec![
                    event(Event::Started(v1::Started::default())),
                    event(Event::Delta(v1::Delta {
                        text: "hi".into(),
                        tokens: 1,
                    })),
                    event(Event::Finished(v1::Finished {
                        usage: Some(v1::Usage {
                            prompt_tokens: 3,
                            completion_tokens: 1,
                        }),
                        ..Default::default()
                    })),
                ];
                Ok(tonic::Response::new(Box::pin(futures_util::stream::iter(events))))
            }
        }
    }

    type WatchLoadStream = ReceiverStream<Result<v1::LoadReport, Status>>;

    async fn watch_load(
        &self,
        _: tonic::Request<v1::WatchLoadRequest>,
    ) -> Result<tonic::Response<Self::WatchLoadStream>, Status> {
        let (tx, rx) = mpsc::channel(1);
        let power = self.power;
        let report = v1::LoadReport {
            state: v1::WorkerState::Ready as i32,
            requests_running: self.running,
            slots: 4,
            // Busy rates: 1,000 prompt tokens and 100 generated tokens a second.
            prompt_tokens_per_second: 1000.0,
            decode_tokens_per_second: 100.0,
            power_watts: power,
            ..Default::default()
        };
        tokio::spawn(async move {
            let _ = tx.send(Ok(report)).await;
            while power.is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if tx.send(Ok(report)).await.is_err() {
                    return;
                }
            }
            // Keep the watch open for as long as the gateway follows it.
            tx.closed().await;
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn drain(
        &self,
        _: tonic::Request<v1::DrainRequest>,
    ) -> Result<tonic::Response<v1::DrainResponse>, Status> {
        Ok(tonic::Response::new(v1::DrainResponse::default()))
    }
}

/// Starts a scripted worker on a free port; returns its address and its `Generate` call count.
async fn scripted(answer: Answer, running: u32) -> (String, Arc<AtomicUsize>) {
    scripted_with_power(answer, running, None).await
}

async fn scripted_with_power(answer: Answer, running: u32, power: Option<f64>) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(WORKER_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let service = WorkerServer::new(Scripted {
        answer,
        running,
        calls: calls.clone(),
        power,
    });
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (format!("http://{addr}"), calls)
}

fn pool(workers: &[(&str, &str)]) -> WorkerPool {
    pool_costing(workers, crate::cost::NodeCost::default())
}

fn pool_costing(workers: &[(&str, &str)], cost: crate::cost::NodeCost) -> WorkerPool {
    WorkerPool::start(PoolConfig {
        name: "local".into(),
        workers: workers
            .iter()
            .map(|(name, uri)| WorkerAddress {
                name: (*name).into(),
                uri: (*uri).into(),
                cost,
            })
            .collect(),
        tls: None,
        clearance: Level::Restricted,
        connect_timeout: Duration::from_secs(1),
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(60),
        kubernetes: None,
        node_cost: crate::cost::NodeCost::default(),
    })
    .unwrap()
}

async fn wait_ready(pool: &WorkerPool, n: usize) {
    for _ in 0..200 {
        if pool.members().iter().filter(|m| m.ready).count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("workers not ready: {:?}", pool.members());
}

fn request() -> ChatRequest {
    parse_chat_request(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap()
}

fn context() -> DispatchContext {
    DispatchContext {
        request_id: "r".into(),
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

async fn served_by(pool: &WorkerPool) -> Result<String, BackendError> {
    let d = pool.dispatch(&request(), &context()).await?;
    let events: Vec<_> = d.events.collect().await;
    assert!(
        matches!(events.last(), Some(Ok(ChatEvent::Finished { .. }))),
        "{events:?}"
    );
    Ok(d.served_by.to_string())
}

#[tokio::test]
async fn the_least_loaded_ready_worker_gets_the_request() {
    let (busy, busy_calls) = scripted(Answer::Text, 3).await;
    let (idle, _) = scripted(Answer::Text, 0).await;
    let pool = pool(&[("busy", &busy), ("idle", &idle)]);
    wait_ready(&pool, 2).await;
    assert_eq!(
        pool.models().iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m"]
    );
    assert_eq!(served_by(&pool).await.unwrap(), "idle");
    assert_eq!(busy_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_full_worker_passes_the_request_to_the_next() {
    let (full, full_calls) = scripted(Answer::Full, 0).await;
    let (other, _) = scripted(Answer::Text, 2).await;
    let pool = pool(&[("full", &full), ("other", &other)]);
    wait_ready(&pool, 2).await;
    assert_eq!(served_by(&pool).await.unwrap(), "other");
    assert_eq!(full_calls.load(Ordering::SeqCst), 1);
    // A full worker is not failing: it is never ejected for it.
    for _ in 0..3 {
        served_by(&pool).await.unwrap();
    }
    assert!(pool.members().iter().all(|m| m.ready), "{:?}", pool.members());
}

#[tokio::test]
async fn when_every_worker_is_full_the_error_says_so() {
    let (a, _) = scripted(Answer::Full, 0).await;
    let (b, _) = scripted(Answer::Full, 0).await;
    let pool = pool(&[("a", &a), ("b", &b)]);
    wait_ready(&pool, 2).await;
    assert!(matches!(served_by(&pool).await, Err(BackendError::Full(_))));
}

#[tokio::test]
async fn a_failing_worker_is_ejected_and_its_requests_go_elsewhere() {
    let (bad, bad_calls) = scripted(Answer::Fail, 0).await;
    let (good, _) = scripted(Answer::Text, 3).await;
    let pool = pool(&[("bad", &bad), ("good", &good)]);
    wait_ready(&pool, 2).await;
    // The idle but failing worker is tried first, fails, and the request is served by the other.
    assert_eq!(served_by(&pool).await.unwrap(), "good");
    assert_eq!(served_by(&pool).await.unwrap(), "good");
    assert_eq!(bad_calls.load(Ordering::SeqCst), 2);
    let bad_status = pool.members().into_iter().find(|m| m.name == "bad").unwrap();
    assert!(
        !bad_status.ready && bad_status.detail.starts_with("ejected"),
        "{bad_status:?}"
    );
    // Ejected: no more calls reach it.
    for _ in 0..3 {
        assert_eq!(served_by(&pool).await.unwrap(), "good");
    }
    assert_eq!(bad_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_over_the_context_is_refused_not_retried() {
    let (a, a_calls) = scripted(Answer::OverContext, 0).await;
    let (b, b_calls) = scripted(Answer::OverContext, 1).await;
    let pool = pool(&[("a", &a), ("b", &b)]);
    wait_ready(&pool, 2).await;
    match served_by(&pool).await {
        Err(BackendError::Rejected { code, .. }) => assert_eq!(code, "context_length_exceeded"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(a_calls.load(Ordering::SeqCst) + b_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_worker_is_not_ready_and_says_why() {
    let pool = pool(&[("gone", "http://127.0.0.1:9")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = &pool.members()[0];
    assert!(!status.ready);
    assert!(status.detail.starts_with("unreachable"), "{status:?}");
    assert!(!pool.ready());
}

#[tokio::test]
async fn a_workers_model_is_priced_at_its_node_cost_over_its_token_rates() {
    let (a, _) = scripted(Answer::Text, 0).await;
    let pool = pool(&[("a", &a)]);
    wait_ready(&pool, 1).await;
    let card = pool.models().into_iter().next().expect("a model");
    let prices = card.prices.expect("priced once the worker reports its rates");
    // 1.33 USD an hour (the default node) over 1,000 and 100 tokens a second, per million tokens.
    let per_second = crate::cost::NodeCost::default().usd_per_hour() / 3600.0;
    assert!(
        (prices.input_usd_per_mtok - per_second / 1000.0 * 1e6).abs() < 1e-9,
        "{prices:?}"
    );
    assert!(
        (prices.output_usd_per_mtok - per_second / 100.0 * 1e6).abs() < 1e-9,
        "{prices:?}"
    );
    let member = pool.members().remove(0);
    assert_eq!(
        member.throughput,
        Some(crate::cost::Throughput {
            prefill_tokens_per_second: 1000.0,
            decode_tokens_per_second: 100.0,
        })
    );
}

#[tokio::test]
async fn a_node_charged_at_its_measured_power_uses_what_its_worker_reports() {
    let (a, _) = scripted_with_power(Answer::Text, 0, Some(350.0)).await;
    let configured = crate::cost::NodeCost::default();
    let measured = crate::cost::NodeCost {
        measured_power: true,
        ..configured
    };
    for (cost, watts) in [(configured, 700.0), (measured, 350.0)] {
        let pool = pool_costing(&[("a", &a)], cost);
        wait_ready(&pool, 1).await;
        // Several reports at 350 W: the stint's average and the current draw are both 350 W.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let member = pool.members().remove(0);
        let (node, _) = member.node.expect("a worker's node");
        assert!((node.power_watts - watts).abs() < 1e-9, "{node:?}");
        let per_second = crate::cost::NodeCost {
            power_watts: watts,
            ..configured
        }
        .usd_per_hour()
            / 3600.0;
        let prices = pool.models().remove(0).prices.expect("priced");
        assert!(
            (prices.output_usd_per_mtok - per_second / 100.0 * 1e6).abs() < 1e-9,
            "{prices:?} at {watts} W"
        );
    }
    // A worker that reports no power keeps the configured figure even when measured power is asked for.
    let (b, _) = scripted(Answer::Text, 0).await;
    let pool = pool_costing(&[("b", &b)], measured);
    wait_ready(&pool, 1).await;
    let (node, _) = pool.members().remove(0).node.expect("node");
    assert_eq!(node.power_watts, 700.0);
}

#[test]
fn the_power_meter_averages_readings_over_the_time_each_held() {
    use super::worker::PowerMeter;
    let t0 = tokio::time::Instant::now();
    let mut meter = PowerMeter::default();
    assert_eq!(meter.average(), None);
    meter.record(Some(300.0), t0);
    assert_eq!((meter.current(), meter.average()), (Some(300.0), Some(300.0)));
    meter.record(Some(500.0), t0 + Duration::from_secs(3));
    meter.record(None, t0 + Duration::from_secs(4));
    // 300 W for 3 s and 500 W for 1 s: 350 W on average; nothing reported now.
    assert_eq!(meter.average(), Some(350.0));
    assert_eq!(meter.current(), None);
    meter.record(Some(100.0), t0 + Duration::from_secs(10));
    assert_eq!(meter.average(), Some(350.0), "unreported time counts for nothing");
}

fn found(name: &str, uri: &str, state: sluice_discovery::EndpointState) -> sluice_discovery::Endpoint {
    let authority = uri.trim_start_matches("http://");
    let (host, port) = authority.rsplit_once(':').unwrap();
    sluice_discovery::Endpoint {
        name: name.into(),
        host: host.into(),
        port: port.parse().unwrap(),
        state,
    }
}

#[tokio::test]
async fn kubernetes_endpoints_join_stop_taking_requests_and_leave() {
    use sluice_discovery::EndpointState::{NotServing, Ready, Terminating};
    let (a, a_calls) = scripted(Answer::Text, 0).await;
    let (b, b_calls) = scripted(Answer::Text, 0).await;
    let (fixed, _) = scripted(Answer::Text, 3).await;
    let pool = pool(&[("gpu-0", &fixed)]);

    // Two pods appear; one of them at the configured worker's address is that worker, and a pod
    // named like the configured worker gets its address added to its name.
    pool.reconcile(&[
        found("w-1", &a, Ready),
        found("gpu-0", &b, Ready),
        found("w-9", &fixed, Ready),
    ]);
    wait_ready(&pool, 3).await;
    let members = pool.members();
    let names: Vec<(&str, &str)> = members.iter().map(|m| (m.name.as_str(), m.source)).collect();
    let b_name = format!("gpu-0@{}", b.trim_start_matches("http://"));
    assert_eq!(
        names,
        vec![
            ("gpu-0", "config"),
            ("w-1", "kubernetes"),
            (b_name.as_str(), "kubernetes")
        ]
    );

    // w-1 starts terminating and the other pod fails its readiness probe: only the configured
    // worker takes requests, and the members say why the others do not.
    pool.reconcile(&[found("w-1", &a, Terminating), found("gpu-0", &b, NotServing)]);
    for _ in 0..5 {
        assert_eq!(served_by(&pool).await.unwrap(), "gpu-0");
    }
    assert_eq!(a_calls.load(Ordering::SeqCst), 0);
    assert_eq!(b_calls.load(Ordering::SeqCst), 0);
    let detail = |name: &str| {
        pool.members()
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| (m.ready, m.detail))
            .unwrap()
    };
    assert!(
        detail("w-1").1.starts_with("terminating (Kubernetes)"),
        "{:?}",
        detail("w-1")
    );
    assert!(
        detail(&b_name).1.starts_with("not serving (Kubernetes"),
        "{:?}",
        detail(&b_name)
    );

    // Back to ready: it takes requests again (the least loaded: the configured one reports 3 running).
    pool.reconcile(&[found("w-1", &a, Ready)]);
    assert_eq!(served_by(&pool).await.unwrap(), "w-1");
    assert_eq!(pool.members().len(), 2, "the pod no longer listed left");

    // A new pod given the old pod's address is a new worker, not the old one renamed.
    pool.reconcile(&[found("w-7", &a, Ready)]);
    let names: Vec<String> = pool.members().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["gpu-0", "w-7"]);
    wait_ready(&pool, 2).await;
    assert_eq!(served_by(&pool).await.unwrap(), "w-7");

    // Everything Kubernetes listed leaves; the configured worker stays.
    pool.reconcile(&[]);
    let members = pool.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "gpu-0");
}

#[tokio::test]
async fn a_pool_whose_workers_all_left_still_serves_their_model_and_says_none_is_ready() {
    let (a, _) = scripted(Answer::Text, 0).await;
    let pool = pool(&[]);
    assert!(!pool.serves("m"));
    pool.reconcile(&[found("w-1", &a, sluice_discovery::EndpointState::Ready)]);
    wait_ready(&pool, 1).await;
    pool.reconcile(&[]);
    assert!(pool.members().is_empty());
    // A 503 (no worker ready) rather than a 404 (no such model) while the pool is empty.
    assert!(pool.serves("m"));
    assert!(!pool.serves("other"));
    assert_eq!(
        pool.models(),
        vec![ModelCard {
            kind: Default::default(),
            id: "m".into(),
            prices: None
        }]
    );
    match pool.dispatch(&request(), &context()).await {
        Err(BackendError::Unavailable(why)) => {
            assert_eq!(why, "no worker serving `m` is ready (none known)");
        }
        other => panic!("{:?}", other.map(|d| d.served_by)),
    }
}
