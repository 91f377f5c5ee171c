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

/// Makes sure the embedding model is in the cache once, before workers race to fetch it.
pub fn ensure_embedding_model() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let out = Command::new(sluice_bin())
            .args(["models", "pull", "--embedding"])
            .output()
            .expect("run sluice models pull --embedding");
        assert!(
            out.status.success(),
            "sluice models pull --embedding failed: {}",
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
        let mut args = vec![
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (child, log, line) = spawn_logged(
            &args,
            &[("SLUICE_LOG", "info,sluice_engine=debug")],
            "worker listening",
        );
        Self {
            grpc: log_field(&line, "grpc").expect("grpc address in log"),
            metrics: log_field(&line, "metrics"),
            child,
            log,
        }
    }

    /// Writes a test PKI into `dir` (see [`write_test_pki`]) and starts a worker that serves TLS with the
    /// `localhost` certificate and requires client certificates signed by the CA.
    pub fn start_mutual_tls(dir: &std::path::Path) -> Self {
        write_test_pki(dir);
        let p = |name: &str| dir.join(name).to_str().expect("utf8").to_owned();
        Self::start(&[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
        ])
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

/// Spawns `sluice ARGS` with stderr captured, and waits for the log line that contains `marker`.
pub fn spawn_logged(
    args: &[&str],
    env: &[(&str, &str)],
    marker: &str,
) -> (Child, Arc<Mutex<Vec<String>>>, String) {
    let mut command = Command::new(sluice_bin());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn sluice");
    let stderr = child.stderr.take().expect("stderr piped");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(&marker) {
                    let _ = tx.send(line.clone());
                }
                log.lock().expect("log lock").push(line);
            }
        });
    }
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "sluice {args:?} never logged {marker:?}; log:\n{}",
            log.lock().expect("log").join("\n")
        )
    });
    (child, log, line)
}

/// The address after `name=` in a log line.
pub fn log_field(line: &str, name: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

/// One plain HTTP/1.1 exchange (`Connection: close`): the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(addr, method, path, body, "")
}

/// [`http`] with extra header lines (`"Authorization: Bearer T\r\n"`).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, rest) = response.split_once("\r\n\r\n").expect("end of headers");
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `sluice sim-cloud`.
pub struct SimCloud {
    child: Child,
    pub addr: SocketAddr,
}

impl SimCloud {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", extra)
    }

    /// Starts one listening on `addr` (a port a test reuses across restarts).
    pub fn start_at(addr: &str, extra: &[&str]) -> Self {
        let mut args = vec!["sim-cloud", "--listen", addr];
        args.extend_from_slice(extra);
        let (child, _log, line) = spawn_logged(&args, &[], "sim-cloud listening");
        Self {
            addr: log_field(&line, "addr").expect("sim-cloud address"),
            child,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues script steps (`[{"status": 429}, {}]`).
    pub fn script(&self, steps: &str) {
        let (status, body) = http(
            self.addr,
            "POST",
            "/sim/script",
            Some(&format!("{{\"steps\": {steps}}}")),
        );
        assert!((200..300).contains(&status), "script refused: {status} {body}");
    }

    /// Chat answers it is still sending.
    pub fn in_flight(&self) -> u64 {
        let (status, body) = http(self.addr, "GET", "/sim/in-flight", None);
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["in_flight"].as_u64().expect("in_flight count")
    }

    /// Every chat request it received, oldest first.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(self.addr, "GET", "/sim/requests", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("recorded requests are JSON")
    }
}

impl Drop for SimCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sluice gateway` with a configuration written to a temporary file.
pub struct Gateway {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// The API key every test gateway accepts (tenant `acme`).
pub const TEST_KEY: &str = "sk-test-acme";

impl Gateway {
    /// Starts a gateway; `backends` is YAML for the `local:` and `clouds:` keys.
    pub fn start(backends: &str) -> Self {
        Self::start_with(
            &format!("api_keys:\n  - tenant: acme\n    key_env: SLUICE_TEST_KEY\n{backends}"),
            &[("SLUICE_TEST_KEY", TEST_KEY)],
        )
    }

    /// Starts a gateway on loopback ports with `config` (every key but the listeners) and `env`.
    pub fn start_with(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(
            &path,
            format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{config}"),
        )
        .expect("write config");
        let path = path.to_string_lossy().into_owned();
        let mut env = env.to_vec();
        env.push(("SLUICE_LOG", "info,sluice_gateway=debug"));
        let (child, log, line) = spawn_logged(&["gateway", "--config", &path], &env, "gateway listening");
        Self {
            public: log_field(&line, "public").expect("public address"),
            admin: log_field(&line, "admin").expect("admin address"),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.public)
    }

    /// The gateway process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    pub fn scrape(&self) -> String {
        let (status, body) = http(self.admin, "GET", "/metrics", None);
        assert_eq!(status, 200);
        body
    }

    /// Waits until `/v1/models` lists `model` and its backend is ready.
    pub fn wait_ready(&self, backend: &str) {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = http(self.public, "GET", "/readyz", None);
            let v: serde_json::Value = serde_json::from_str(&body).expect("backends JSON");
            let ready = v["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| b["name"] == backend && b["ready"] == true);
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "backend {backend} never ready: {body}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Gateway {
    /// Sends SIGTERM and waits (at most 30 s) for the gateway to drain and exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM".to_owned(), self.child.id().to_string()])
            .status();
        assert!(status.expect("run kill").success());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < until,
                "the gateway did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a scenario of tests/sdk/client.py against `gateway` and returns the JSON it printed last.
pub fn sdk(gateway: &Gateway, scenario: &str) -> serde_json::Value {
    run_sdk(sdk_command(gateway, scenario), scenario, &gateway.log())
}

/// Runs a scenario against the gateway at `base_url`.
pub fn sdk_at(base_url: &str, scenario: &str) -> serde_json::Value {
    run_sdk(sdk_command_at(base_url, scenario), scenario, "")
}

/// The official OpenAI Python SDK version the tests drive the gateway with.
pub const OPENAI_SDK: &str = "openai==3.54.0";

/// Installs the OpenAI Python SDK with pip when `python3` cannot import it (CI installs it first).
pub fn ensure_openai_sdk() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let present = Command::new("python3")
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", OPENAI_SDK])
                .output()
                .expect("run pip");
            assert!(
                out.status.success(),
                "pip install {OPENAI_SDK} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

fn run_sdk(mut command: Command, scenario: &str, log: &str) -> serde_json::Value {
    let out = command.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{stdout}\n{}\ngateway log:\n{log}",
        String::from_utf8_lossy(&out.stderr),
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("scenario {scenario} printed no JSON ({e}): {stdout}"))
}

/// The official Anthropic Python SDK version the tests drive `/v1/messages` with.
pub const ANTHROPIC_SDK: &str = "anthropic==2.17.0";

/// Runs a scenario of tests/sdk/anthropic_client.py (the Anthropic SDK, and the OpenAI SDK beside it)
/// against `gateway` and returns the JSON it printed last. Installs the SDK when it is missing.
pub fn anthropic_sdk(gateway: &Gateway, scenario: &str) -> serde_json::Value {
    ensure_openai_sdk();
    ensure_python_packages(&[(ANTHROPIC_SDK, "anthropic", "anthropic.__version__")]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/anthropic_client.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(scenario)
        .env("SLUICE_BASE_URL", gateway.base_url())
        .env("SLUICE_API_KEY", TEST_KEY)
        .env("LOCAL_MODEL", DEMO_MODEL_ID);
    run_sdk(command, scenario, &gateway.log())
}

/// The command that runs a scenario, for tests that read its output as it comes.
pub fn sdk_command(gateway: &Gateway, scenario: &str) -> Command {
    sdk_command_at(&gateway.base_url(), scenario)
}

fn sdk_command_at(base_url: &str, scenario: &str) -> Command {
    ensure_openai_sdk();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/sdk/client.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(scenario)
        .env("SLUICE_BASE_URL", base_url)
        .env("SLUICE_API_KEY", TEST_KEY)
        .env("LOCAL_MODEL", DEMO_MODEL_ID)
        .env("CLOUD_MODEL", "gpt-4o-mini");
    command
}

/// Writes a test CA (`ca.pem`), a server certificate for `localhost` (`server.pem`, `server.key`) and a
/// client certificate (`client.pem`, `client.key`) signed by it into `dir`.
pub fn write_test_pki(dir: &std::path::Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, file: &str| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).expect("write key");
    };
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca");
    leaf(vec!["localhost".into()], "server");
    leaf(vec!["client".into()], "client");
}

/// The repository's `config/NAME*.yaml` files.
pub fn repository_configs(prefix: &str) -> Vec<std::path::PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("config folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with(prefix) && name.ends_with(".yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no config/{prefix}*.yaml");
    files
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

/// Makes sure the program `binary` exists, installing Debian's `package` with apt-get when it is missing
/// and this runs as root (as on CI machines and the project's development machines), the way the tests
/// fetch the demo model and the OpenAI SDK themselves. Returns whether the program is there.
pub fn ensure_debian_package(binary: &str, package: &str) -> bool {
    let present = |b: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {b} >/dev/null 2>&1")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if present(binary) {
        return true;
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if present(binary) {
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        eprintln!("installing Debian's {package} for `{binary}`");
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "(apt-get install -y -qq {package} || (apt-get update -qq && apt-get install -y -qq {package})) >/dev/null 2>&1"
                ),
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    present(binary)
}

/// The Python packages `tests/chart.rs` drives: Helm's own engine and Kubernetes' schemas.
pub const CHART_PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    // (pip requirement, module, expression giving the installed version)
    ("helm-python-sdk==0.2.2", "helm_python", "helm_python.__version__"),
    (
        "kubernetes-validate==1.37.0",
        "kubernetes_validate",
        "kubernetes_validate.version.__version__",
    ),
];

/// Installs the pinned `packages` (`(requirement, module, version expression)`) with pip when `python3` lacks
/// them or has other versions, as `.ci/run` does for the OpenAI SDK: a plain `pip install`, then with
/// `--break-system-packages` where Debian's Python refuses the first.
pub fn ensure_python_packages(packages: &[(&str, &str, &str)]) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(requirement, module, version)| {
            let want = requirement.rsplit("==").next().unwrap_or_default();
            let check = format!("import sys, {module}\nsys.exit({version} != {want:?})");
            !Command::new("python3")
                .args(["-c", &check])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(requirement, _, _)| *requirement)
        .collect();
    if missing.is_empty() {
        return;
    }
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(extra)
            .args(&missing)
            .output()
            .expect("run pip")
    };
    let first = pip(&[]);
    if first.status.success() {
        return;
    }
    let second = pip(&["--break-system-packages"]);
    assert!(
        second.status.success(),
        "pip install {missing:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&first.stderr),
        String::from_utf8_lossy(&second.stderr)
    );
}

/// A real `redis-server` (Debian's) on a loopback port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self { child: None, port };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        assert!(
            ensure_debian_package("redis-server", "redis-server"),
            "redis-server is missing and could not be installed"
        );
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
