//! OpenTelemetry traces end to end: a real gateway and a real worker export spans over OTLP/gRPC to a
//! receiver built from the official OpenTelemetry protocol definitions (tests/otlp/receiver.py: PyPI
//! `opentelemetry-proto` served with `grpcio`), while the OpenAI SDK sends requests that carry a W3C
//! `traceparent`. One trace runs from the client through the gateway to the worker (or the cloud), with the
//! decision on the request's span and no prompt text in any span; and a collector that is down costs
//! requests nothing but the spans, which are counted.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, SimCloud, TEST_KEY, Worker, ensure_python_packages, http_with, metric, sdk_command};
use serde_json::Value;

/// The receiver's Python packages, pinned.
const RECEIVER_PACKAGES: &[(&str, &str, &str)] = &[
    ("grpcio==1.85.3", "grpc", "grpc.__version__"),
    (
        "opentelemetry-proto==1.45.2",
        "importlib.metadata",
        "importlib.metadata.version('opentelemetry-proto')",
    ),
];

/// A running OTLP receiver and the file it writes spans to.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Self {
        ensure_python_packages(RECEIVER_PACKAGES);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.jsonl");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/otlp/receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("receiver said {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The spans of `trace`, once `done` holds for them (or panics after 20 s).
    fn trace(&self, trace: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < until, "trace {trace} incomplete: {spans:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tracing_section(endpoint: &str) -> String {
    format!("tracing:\n  otlp_endpoint: {endpoint}\n  export_timeout_ms: 1000\n")
}

/// The one span of `spans` from `service` named `name`.
fn one<'a>(spans: &'a [Value], service: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| s["service"] == service && s["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {spans:#?}");
    found[0]
}

fn has(spans: &[Value], service: &str, name: &str) -> bool {
    spans.iter().any(|s| s["service"] == service && s["name"] == name)
}

/// Span names as exported.
const REQUEST: &str = "POST /v1/chat/completions";
const GENERATE: &str = "sluice.worker.v1.Worker/Generate";

const TRACE_LOCAL: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_CLOUD: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_UNSAMPLED: &str = "5a1b8e2f9c3d4e6f708192a3b4c5d6e7";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// A word of the prompts, to look for in the spans.
const PROMPT_WORD: &str = "Quokkaberry";

#[test]
fn one_trace_runs_from_the_client_through_the_gateway_to_the_worker_or_the_cloud() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let worker_config = dir.path().join("worker.yaml");
    std::fs::write(&worker_config, tracing_section(&receiver.endpoint())).unwrap();
    let worker = Worker::start(&["--config", worker_config.to_str().unwrap()]);
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!(
        "local:\n  workers:\n    - name: w0\n      address: {}\n\
         clouds:\n  - name: sim\n    base_url: {}\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n{}",
        worker.grpc,
        sim.base_url(),
        tracing_section(&receiver.endpoint())
    ));
    gateway.wait_ready("local");

    let output = sdk_command(&gateway, "traced")
        .env("TRACE_LOCAL", format!("00-{TRACE_LOCAL}-{CLIENT_SPAN}-01"))
        .env("TRACE_CLOUD", format!("00-{TRACE_CLOUD}-{CLIENT_SPAN}-01"))
        .env("PROMPT_WORD", PROMPT_WORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // A client's trace marked unsampled is not recorded.
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"Hello {PROMPT_WORD}"}}],"max_tokens":4}}"#
    );
    let (status, _) = http_with(
        gateway.public,
        "POST",
        "/v1/chat/completions",
        Some(&body),
        &format!(
            "Authorization: Bearer {TEST_KEY}\r\ntraceparent: 00-{TRACE_UNSAMPLED}-{CLIENT_SPAN}-00\r\n"
        ),
    );
    assert_eq!(status, 200);

    // The local request: the client's span -> the gateway's request -> its steps -> the dispatch ->
    // the gRPC call -> the worker's Generate -> queue, prefill, decode.
    let local = receiver.trace(TRACE_LOCAL, |s| {
        has(s, "sluice-gateway", REQUEST) && has(s, "sluice-worker", "decode")
    });
    let request = one(&local, "sluice-gateway", REQUEST);
    assert_eq!(request["parent_span_id"], CLIENT_SPAN);
    assert_eq!(request["kind"], 2, "server");
    let a = &request["attributes"];
    assert_eq!(a["sluice.tenant"], "acme");
    assert_eq!(a["sluice.route"], "local");
    assert_eq!(a["sluice.backend"], "w0");
    assert_eq!(a["sluice.findings"], "");
    assert_eq!(a["sluice.rule"], answers["local"]["headers"]["x-sluice-rule"]);
    assert_eq!(
        a["sluice.level"],
        answers["local"]["headers"]["x-sluice-sensitivity"]
    );
    assert_eq!(
        a["sluice.decision_id"],
        answers["local"]["headers"]["x-sluice-decision-id"]
    );
    assert_eq!(a["sluice.model"], common::DEMO_MODEL_ID);
    assert_eq!(a["http.response.status_code"], 200);
    for step in ["scan", "policy", "dispatch local"] {
        assert_eq!(
            one(&local, "sluice-gateway", step)["parent_span_id"],
            request["span_id"],
            "{step}"
        );
    }
    let dispatch = one(&local, "sluice-gateway", "dispatch local");
    assert_eq!(dispatch["attributes"]["sluice.outcome"], "started");
    let call = one(&local, "sluice-gateway", GENERATE);
    assert_eq!(
        (call["kind"].as_i64(), &call["parent_span_id"]),
        (Some(3), &dispatch["span_id"]),
        "client"
    );
    let served = one(&local, "sluice-worker", GENERATE);
    assert_eq!(
        (served["kind"].as_i64(), &served["parent_span_id"]),
        (Some(2), &call["span_id"]),
        "server"
    );
    assert!(served["attributes"]["sluice.prompt_tokens"].as_i64().unwrap() > 0);
    for phase in ["admit", "queue", "prefill", "decode"] {
        assert_eq!(
            one(&local, "sluice-worker", phase)["parent_span_id"],
            served["span_id"],
            "{phase}"
        );
    }
    // The request's span ends with the stream's last byte, after the worker's.
    assert!(
        request["end"].as_u64() >= served["end"].as_u64(),
        "{request}\n{served}"
    );

    // The cloud request: the provider is sent the gateway's call span as its parent.
    let cloud = receiver.trace(TRACE_CLOUD, |s| {
        has(s, "sluice-gateway", REQUEST) && has(s, "sluice-gateway", "POST /chat/completions")
    });
    let request = one(&cloud, "sluice-gateway", REQUEST);
    assert_eq!(request["parent_span_id"], CLIENT_SPAN);
    assert_eq!(request["attributes"]["sluice.route"], "cloud");
    let chat = one(&cloud, "sluice-gateway", "POST /chat/completions");
    let sent: Vec<String> = sim
        .requests()
        .iter()
        .filter_map(|r| r["headers"]["traceparent"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        sent[0],
        format!("00-{TRACE_CLOUD}-{}-01", chat["span_id"].as_str().unwrap()),
        "the cloud got the call's context"
    );
    // An unsampled trace is passed on unsampled, so that the provider does not record it either.
    assert!(
        sent[1].starts_with(&format!("00-{TRACE_UNSAMPLED}-")) && sent[1].ends_with("-00"),
        "{sent:?}"
    );

    assert!(receiver.spans().iter().all(|s| s["trace_id"] != TRACE_UNSAMPLED));
    // No span holds any of the prompts' text.
    for span in receiver.spans() {
        assert!(!span["raw"].as_str().unwrap().contains(PROMPT_WORD), "{span}");
    }
    let text = gateway.scrape();
    assert!(
        metric(&text, "sluice_trace_spans_exported_total").unwrap() >= 10.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_trace_spans_dropped_total{reason=\"queue_full\"}"),
        Some(0.0)
    );
}

#[test]
fn with_the_collector_down_requests_are_served_and_their_spans_counted_as_dropped() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!(
        "clouds:\n  - name: sim\n    base_url: {}\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n{}",
        sim.base_url(),
        tracing_section(&format!("http://127.0.0.1:{port}"))
    ));
    let ask = || {
        let started = Instant::now();
        let (status, _) = http_with(
            gateway.public,
            "POST",
            "/v1/chat/completions",
            Some(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}],"max_tokens":4}"#),
            &format!("Authorization: Bearer {TEST_KEY}\r\n"),
        );
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    };
    let dropped = |reason: &str| {
        let text = gateway.scrape();
        assert_eq!(metric(&text, "sluice_trace_spans_exported_total"), Some(0.0));
        metric(
            &text,
            &format!("sluice_trace_spans_dropped_total{{reason=\"{reason}\"}}"),
        )
        .unwrap()
    };
    for _ in 0..5 {
        ask();
    }
    // The first batch fails to export...
    let until = Instant::now() + Duration::from_secs(10);
    while dropped("export_failed") < 5.0 {
        assert!(
            Instant::now() < until,
            "no spans counted as dropped:\n{}",
            gateway.scrape()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...and, while the collector keeps failing, spans stop being recorded for a while: requests in that
    // pause are counted, not built.
    let until = Instant::now() + Duration::from_secs(15);
    while dropped("collector_down") == 0.0 {
        assert!(Instant::now() < until, "no pause:\n{}", gateway.scrape());
        ask();
        std::thread::sleep(Duration::from_millis(100));
    }
}
