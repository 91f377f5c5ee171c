//! Test harness: starts the real `sluice` binary on port 0 and talks to it over real gRPC.

#![allow(dead_code, reason = "each test file uses a different part of the harness")]
#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failed setup step fails the test"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const DEMO_MODEL_ID: &str = "smollm2-135m-instruct";

pub fn sluice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// Makes sure the demo model is in the cache once, before workers race to fetch it.
pub fn ensure_demo_model() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let out = Command::new(sluice_bin())
            .args(["models", "pull"])
            .output()
            .expect("run sluice models pull");
        assert!(
            out.status.success(),
            "sluice models pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A running `sluice worker` process.
pub struct Worker {
    child: Child,
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    /// Starts `sluice worker --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 EXTRA...` with the demo model.
    pub fn start(extra: &[&str]) -> Self {
        ensure_demo_model();
        let mut child = Command::new(sluice_bin())
            .args([
                "worker",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("SLUICE_LOG", "info,sluice_engine=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice worker");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("worker listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "worker did not report its addresses; log:\n{}",
                log.lock().expect("log").join("\n")
            )
        });
        let field = |name: &str| -> Option<SocketAddr> {
            let start = line.find(&format!("{name}="))? + name.len() + 1;
            line[start..].split_whitespace().next()?.parse().ok()
        };
        Self {
            grpc: field("grpc").expect("grpc address in log"),
            metrics: field("metrics"),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    pub async fn client(&self) -> WorkerClient<Channel> {
        WorkerClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to worker")
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("url")
            .connect()
            .await;
        let mut health = HealthClient::new(channel.expect("connect health"));
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check");
        ServingStatus::try_from(response.into_inner().status).expect("known status")
    }

    /// Waits until the worker reports SERVING (the model is loaded).
    pub async fn wait_serving(&self) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.health("").await != ServingStatus::Serving {
            assert!(
                Instant::now() < until,
                "worker never became SERVING; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
        assert!(status.expect("run kill").success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < until,
                "worker did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics over plain HTTP/1.0.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("metrics enabled");
        let mut stream = TcpStream::connect(addr).expect("connect metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(
            response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
            "{response}"
        );
        response
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one metric's value from a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

pub fn chat(prompt: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        request_id: String::new(),
        model: DEMO_MODEL_ID.into(),
        messages: vec![v1::ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }],
        sampling: Some(v1::SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }),
        stopping: Some(v1::StoppingParams {
            max_tokens,
            stop: vec![],
            ignore_eos: false,
        }),
    }
}

/// A request that generates exactly `tokens` tokens.
pub fn fixed_length(prompt: &str, tokens: u32) -> v1::GenerateRequest {
    let mut r = chat(prompt, tokens);
    r.stopping = Some(v1::StoppingParams {
        max_tokens: tokens,
        stop: vec![],
        ignore_eos: true,
    });
    r
}

/// A whole answer.
#[derive(Debug, Default)]
pub struct Answer {
    pub started: Option<v1::Started>,
    pub text: String,
    pub delta_tokens: u32,
    pub finished: Option<v1::Finished>,
}

/// Sends a request and reads its stream to the end.
pub async fn generate(
    client: &mut WorkerClient<Channel>,
    request: v1::GenerateRequest,
) -> Result<Answer, tonic::Status> {
    let mut stream = client.generate(request).await?.into_inner();
    let mut answer = Answer::default();
    while let Some(event) = stream.message().await? {
        match event.event.expect("event set") {
            v1::generate_event::Event::Started(s) => {
                assert!(
                    answer.started.is_none() && answer.text.is_empty(),
                    "Started comes first, once"
                );
                answer.started = Some(s);
            }
            v1::generate_event::Event::Delta(d) => {
                assert!(answer.started.is_some(), "Delta after Started");
                answer.text.push_str(&d.text);
                answer.delta_tokens += d.tokens;
            }
            v1::generate_event::Event::Finished(f) => {
                assert!(answer.finished.is_none(), "one Finished");
                answer.finished = Some(f);
            }
        }
    }
    assert!(answer.finished.is_some(), "the stream ended without Finished");
    Ok(answer)
}
