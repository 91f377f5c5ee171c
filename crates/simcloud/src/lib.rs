//! A cloud simulator that speaks three wire formats over the same models, script, recordings and token
//! rules:
//!
//! - **OpenAI**: `GET /v1/models`, `POST /v1/chat/completions` (streamed and not, with tool calls) and
//!   `POST /v1/embeddings` (float or base64 vectors, see [`embeddings`]);
//! - **Anthropic**: `POST /v1/messages` (streamed and not, with tool use, see [`anthropic`]);
//! - **Azure OpenAI**: `POST /openai/deployments/{deployment}/chat/completions?api-version=V` and
//!   `POST /openai/deployments/{deployment}/embeddings?api-version=V` (see [`azure`]);
//!
//! plus unauthenticated test controls under `/sim/` that record the requests that arrived and script what
//! the next answers do. It stands in for a cloud API in demos, integration tests and load tests (`sluice
//! sim-cloud`). It owns only its in-memory state; it must never reach the network beyond its own listener,
//! read files, link another Sluice crate, or hold a lock across an await. It must never face real users
//! either: `/sim/requests` hands out the keys it received (`Authorization`, `x-api-key`, `api-key`).
//!
//! # Answers and tokens
//!
//! The simulator has no tokenizer. It counts like this, and every number it reports follows from it:
//!
//! - **Prompt tokens** are the characters (Unicode scalar values) of all message text, divided by 4 and
//!   rounded up, and at least 1. Message text is a string `content`, or the `text` of each part of an array
//!   `content`; roles, names and tool-call arguments do not count. On `/v1/messages` it is the `system` text
//!   (a string or its text blocks), string contents, text blocks, and the text of `tool_result` blocks
//!   (their string content or text blocks); images, `tool_use` inputs and tool definitions do not count.
//! - **Answer tokens** are words. The answer reads `This is a simulated answer from <model>.` and then cycles
//!   through `It repeats these filler words until the answer reaches its length.`; the first token is
//!   `This`, and every later token is one word with its leading space (` is`, ` a`, ...). It is cut to N
//!   tokens, N being `max_completion_tokens`, else `max_tokens`, else [`SimConfig::answer_tokens`]. The
//!   finish reason is `length` when the request set the limit and `stop` otherwise.
//!   On `/v1/messages`, where `max_tokens` is required, the answer has its default length
//!   ([`SimConfig::answer_tokens`]) and `max_tokens` only cuts it: it has min(answer_tokens, max_tokens)
//!   tokens, and `stop_reason` is `max_tokens` exactly when `max_tokens` is below `answer_tokens`, else
//!   `end_turn`.
//! - **Stop sequences** (`stop`, a string or an array) cut the answer before the first match; the finish
//!   reason is then `stop`, and a word cut in the middle still counts as one token. On `/v1/messages`,
//!   `stop_sequences` cut the same way; `stop_reason` is then `stop_sequence` and `stop_sequence` the
//!   matched string (of two matching at once, the shorter).
//! - **Tool calls**: when `tools` is a non-empty array, `tool_choice` is not `"none"` and the last message
//!   comes from the user, the answer is one call to the first tool with every `required` parameter set to
//!   `"sim"`. Its completion tokens are the characters of the function name and arguments divided by 4,
//!   rounded up, and at least 1. On `/v1/messages` the same holds with Anthropic's names: tool_choice
//!   `{"type": "none"}` answers text, `{"type": "tool", "name": N}` calls tool N, a last user message made of
//!   `tool_result` blocks only answers text, and the answer is one `tool_use` block (`id` `toolu_sim_N`,
//!   `input` every `required` property of `input_schema` set to `"sim"`) with `stop_reason` `tool_use`.
//! - **Echo** (the script step `{"echo": true}`, or [`SimConfig::echo`]): the answer is the last message's
//!   text as received (on `/v1/messages`, its text blocks and tool results' text), in tokens of three bytes,
//!   whatever the limit.
//!
//! Streamed answers send one chunk (on `/v1/messages`, one `content_block_delta` event) per token, paced at
//! [`SimConfig::tokens_per_second`] after [`SimConfig::ttft`].
//!
//! # Order of checks on a chat request
//!
//! The body is read and, if it is JSON, recorded (with its path and query); then the API key is checked
//! (401), the request validated (400, or 404 for an unknown model), and one script step popped. A step
//! decides the outcome on its own; only a request that found no step rolls the dice of
//! [`SimConfig::error_rate`]. `/v1/messages` checks `anthropic-version` (400) after the key, and Azure's
//! routes check `api-version` (404) before the key and the deployment (404) after it.

mod anthropic;
mod azure;
mod chat;
mod embeddings;
mod error;
mod script;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use script::{RecordedRequest, ScriptStep};

use error::SimError;
use script::Record;

/// Largest request body accepted, in bytes: room for long prompts in load tests.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// A model the simulator serves, with the prices `GET /v1/models` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct SimModel {
    pub id: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// For an embedding model (`POST /v1/embeddings`): the length of its vectors. None for a chat model.
    pub dimensions: Option<u32>,
}

impl SimModel {
    /// An embedding model, priced by input tokens, making vectors of `dimensions` values.
    pub fn embedding(id: impl Into<String>, input_usd_per_mtok: f64, dimensions: u32) -> Self {
        Self {
            dimensions: Some(dimensions),
            ..Self::new(id, input_usd_per_mtok, 0.0)
        }
    }

    pub fn new(id: impl Into<String>, input_usd_per_mtok: f64, output_usd_per_mtok: f64) -> Self {
        Self {
            dimensions: None,
            id: id.into(),
            input_usd_per_mtok,
            output_usd_per_mtok,
        }
    }
}

/// How the simulator behaves. Out-of-range numbers are not errors here (callers validate their input):
/// a non-finite or non-positive `tokens_per_second` means no pacing, and `error_rate` is clamped to 0..=1.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Models served, in the order `GET /v1/models` lists them.
    pub models: Vec<SimModel>,
    /// Delay before the first byte of an answer: the first chunk of a stream, or the whole response.
    pub ttft: Duration,
    /// Pacing of streamed tokens after the first; 0 sends them as fast as the client reads.
    pub tokens_per_second: f64,
    /// Probability (0..=1) that an unscripted chat request (`/v1/chat/completions`, `/v1/messages`, Azure's
    /// chat completions) is answered with a 500, code `sim_error` (`api_error` on `/v1/messages`).
    pub error_rate: f64,
    /// Answer length in tokens when the request sets no `max_completion_tokens` or `max_tokens`; on
    /// `/v1/messages`, the length that `max_tokens` may only cut.
    pub answer_tokens: u32,
    /// When set, OpenAI's `/v1` routes need `Authorization: Bearer <key>` (401 `invalid_api_key` otherwise),
    /// `/v1/messages` needs `x-api-key: <key>` and Azure's routes need `api-key: <key>` (a `Bearer` token is
    /// refused on those two).
    pub api_key: Option<String>,
    /// Seed of the error-rate draws, so a run's failures repeat for the same order of requests.
    pub seed: u64,
    /// Most requests kept for `GET /sim/requests`; the oldest go first. 0 records nothing.
    pub record_limit: usize,
    /// Every unscripted answer echoes the request (as the script step `{"echo": true}` does).
    pub echo: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            models: vec![SimModel::new("gpt-4o-mini", 0.15, 0.60)],
            ttft: Duration::ZERO,
            tokens_per_second: 0.0,
            error_rate: 0.0,
            answer_tokens: 16,
            api_key: None,
            seed: 0,
            record_limit: 1000,
            echo: false,
        }
    }
}

/// The simulator: a cheap-to-clone handle on its shared state. Every clone, router and server built from
/// one `Sim` shares its recordings and script.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let models: Vec<&str> = self.inner.config.models.iter().map(|m| m.id.as_str()).collect();
        f.debug_struct("Sim")
            .field("models", &models)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    config: SimConfig,
    /// Gap between streamed tokens, from `tokens_per_second`.
    interval: Option<Duration>,
    error_rate: f64,
    /// The `GET /v1/models` body, rendered once.
    models_body: String,
    /// Split-mix state of the error-rate draws: lock-free, so load tests never queue on it.
    rng: AtomicU64,
    completions: AtomicU64,
    tool_calls: AtomicU64,
    record_seq: AtomicU64,
    records: Mutex<VecDeque<Record>>,
    script: Mutex<VecDeque<ScriptStep>>,
    /// Steps queued in `script`, kept under its lock, read without it so unscripted runs never lock.
    script_len: AtomicUsize,
    in_flight: AtomicUsize,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let interval = (config.tokens_per_second.is_finite() && config.tokens_per_second > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / config.tokens_per_second).ok())
            .flatten();
        let error_rate = if config.error_rate.is_nan() {
            0.0
        } else {
            config.error_rate.clamp(0.0, 1.0)
        };
        let models_body = models_body(&config.models, unix_now()).to_string();
        Self {
            inner: Arc::new(Inner {
                interval,
                error_rate,
                models_body,
                rng: AtomicU64::new(config.seed),
                completions: AtomicU64::new(0),
                tool_calls: AtomicU64::new(0),
                record_seq: AtomicU64::new(0),
                records: Mutex::new(VecDeque::new()),
                script: Mutex::new(VecDeque::new()),
                script_len: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                config,
            }),
        }
    }

    /// The HTTP routes, for driving in-process (tests) or serving. Hung answers (script `hang` and
    /// `stall_after_chunks`) served by this router end only when their client goes away; [`serve`] also ends
    /// them at shutdown.
    pub fn router(&self) -> Router {
        // The sender goes at once: a closed channel reads as "never shutting down".
        let (_, closing) = watch::channel(false);
        self.router_with(closing)
    }

    /// Builds the stack. From the outside in:
    ///
    /// 1. `DefaultBodyLimit` raises axum's body cap to `MAX_BODY_BYTES` for the `Bytes` extractors below.
    /// 2. The routes. The API handlers (OpenAI's `/v1`, Anthropic's `/v1/messages`, Azure's
    ///    `/openai/deployments`) check the API key themselves (`authorize`, `check_key_header`), after
    ///    recording, so a test can see what a refused request carried; `/sim` is unauthenticated by design.
    fn router_with(&self, closing: watch::Receiver<bool>) -> Router {
        let ctx = Ctx {
            sim: self.clone(),
            closing,
        };
        Router::new()
            .route("/v1/models", get(list_models))
            .route("/v1/chat/completions", post(chat::handle))
            .route("/v1/embeddings", post(embeddings::handle))
            .route("/v1/messages", post(anthropic::handle))
            .route(
                "/openai/deployments/{deployment}/chat/completions",
                post(azure::chat),
            )
            .route(
                "/openai/deployments/{deployment}/embeddings",
                post(azure::embeddings),
            )
            .route("/sim/requests", get(list_requests).delete(clear_requests))
            .route("/sim/script", post(add_script).delete(clear_script))
            .route("/sim/in-flight", get(in_flight))
            .fallback(unknown_url)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(ctx)
    }

    /// The requests recorded so far (chat, embeddings and messages, on every API), oldest first (what
    /// `GET /sim/requests` returns).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        // Copy out under the lock (cheap: bodies are shared bytes), parse after releasing it.
        let records: Vec<Record> = lock(&self.inner.records).iter().cloned().collect();
        records.into_iter().map(Record::into_public).collect()
    }

    /// Forgets the recorded requests (`DELETE /sim/requests`). Sequence numbers keep counting.
    pub fn clear_recorded(&self) {
        lock(&self.inner.records).clear();
    }

    /// Appends steps to the script; each chat, messages or embeddings request takes the first step left
    /// (`POST /sim/script`).
    pub fn push_script(&self, steps: Vec<ScriptStep>) {
        let mut script = lock(&self.inner.script);
        script.extend(steps);
        self.inner.script_len.store(script.len(), Ordering::Release);
    }

    /// Drops the steps not yet taken (`DELETE /sim/script`).
    pub fn clear_script(&self) {
        let mut script = lock(&self.inner.script);
        script.clear();
        self.inner.script_len.store(0, Ordering::Release);
    }

    /// Chat requests that arrived and are not yet fully answered nor abandoned by their client. A stream
    /// counts until its last byte is handed over or its client disconnects, so tests can check that a
    /// departed client stopped its answer.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }
}

impl Inner {
    fn pop_step(&self) -> Option<ScriptStep> {
        if self.script_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut script = lock(&self.script);
        let step = script.pop_front();
        self.script_len.store(script.len(), Ordering::Release);
        step
    }

    /// Whether this request fails by the error rate: one split-mix draw, uniform in [0, 1).
    fn roll_error(&self) -> bool {
        if self.error_rate <= 0.0 {
            return false;
        }
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.rng.fetch_add(GOLDEN, Ordering::Relaxed).wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let draw = (z >> 11) as f64 / (1u64 << 53) as f64;
        draw < self.error_rate
    }

    /// Reads a request's body and records the request if the body is JSON. The outer error (the body could
    /// not be read) comes first; the inner one (not JSON) after the key is checked, so a refused request is
    /// still recorded.
    fn read_body(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<Result<serde_json::Value, SimError>, SimError> {
        let body = body?;
        let parsed = serde_json::from_slice::<serde_json::Value>(&body);
        if parsed.is_ok() {
            self.record(uri, headers, body);
        }
        Ok(parsed.map_err(|e| SimError::InvalidJson(e.to_string())))
    }

    fn record(&self, uri: &Uri, headers: &HeaderMap, body: Bytes) {
        let limit = self.config.record_limit;
        if limit == 0 {
            return;
        }
        let record = Record {
            seq: self.record_seq.fetch_add(1, Ordering::Relaxed) + 1,
            uri: uri.clone(),
            body,
            headers: Record::capture(headers),
        };
        let mut records = lock(&self.records);
        while records.len() >= limit {
            records.pop_front();
        }
        records.push_back(record);
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), SimError> {
        let Some(key) = &self.config.api_key else {
            return Ok(());
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if given == key => Ok(()),
            Some(_) => Err(SimError::InvalidApiKey { provided: true }),
            None => Err(SimError::InvalidApiKey { provided: false }),
        }
    }

    /// The key check of the routes that take it in a header of its own (`x-api-key`, `api-key`):
    /// `Ok(())` without a configured key or with the right one, else whether one was given.
    fn check_key_header(&self, headers: &HeaderMap, name: &str) -> Result<(), bool> {
        let Some(key) = &self.config.api_key else {
            return Ok(());
        };
        match headers.get(name) {
            Some(given) if given.as_bytes() == key.as_bytes() => Ok(()),
            given => Err(given.is_some()),
        }
    }

    fn model(&self, id: &str) -> Option<&SimModel> {
        self.config.models.iter().find(|m| m.id == id)
    }
}

/// Counts a chat request in [`Sim::in_flight`] from its arrival until this guard drops with the answer.
pub(crate) struct InFlight(Arc<Inner>);

impl InFlight {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(inner))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Router state: the simulator and the shutdown signal that ends hung answers.
#[derive(Clone)]
pub(crate) struct Ctx {
    sim: Sim,
    closing: watch::Receiver<bool>,
}

/// Serves `sim` on `listener` until `shutdown` resolves, then stops accepting, ends hung and stalled answers
/// and waits for the others to finish.
pub async fn serve(
    listener: TcpListener,
    sim: Sim,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (closing_tx, closing) = watch::channel(false);
    let router = sim.router_with(closing);
    // Streamed chunks are small writes; Nagle's algorithm would hold them back.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Hung answers never end by themselves; graceful shutdown would wait for them forever.
            closing_tx.send_replace(true);
        })
        .await
}

/// Resolves once the server shuts down; never, for a router without a server.
pub(crate) async fn closing(mut rx: watch::Receiver<bool>) {
    let closed = rx.wait_for(|closing| *closing).await.is_ok();
    if !closed {
        std::future::pending::<()>().await;
    }
}

async fn list_models(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    match ctx.sim.inner.authorize(&headers) {
        Ok(()) => json_response(StatusCode::OK, ctx.sim.inner.models_body.clone()),
        Err(e) => e.into_response(),
    }
}

fn models_body(models: &[SimModel], created: u64) -> serde_json::Value {
    let data: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "object": "model",
                "created": created,
                "owned_by": "sluice-sim",
                "pricing": {
                    "input_usd_per_mtok": m.input_usd_per_mtok,
                    "output_usd_per_mtok": m.output_usd_per_mtok,
                },
            })
        })
        .collect();
    serde_json::json!({ "object": "list", "data": data })
}

async fn list_requests(State(ctx): State<Ctx>) -> Response {
    match serde_json::to_string(&ctx.sim.recorded()) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => SimError::Internal(e.to_string()).into_response(),
    }
}

async fn clear_requests(State(ctx): State<Ctx>) -> StatusCode {
    ctx.sim.clear_recorded();
    StatusCode::NO_CONTENT
}

async fn add_script(State(ctx): State<Ctx>, body: Result<Bytes, BytesRejection>) -> Response {
    let steps = match body.map_err(SimError::from).and_then(|b| script::parse_steps(&b)) {
        Ok(steps) => steps,
        Err(e) => return e.into_response(),
    };
    ctx.sim.push_script(steps);
    let pending = ctx.sim.inner.script_len.load(Ordering::Acquire);
    json_response(
        StatusCode::OK,
        serde_json::json!({ "pending": pending }).to_string(),
    )
}

async fn clear_script(State(ctx): State<Ctx>) -> StatusCode {
    ctx.sim.clear_script();
    StatusCode::NO_CONTENT
}

async fn in_flight(State(ctx): State<Ctx>) -> Response {
    let body = serde_json::json!({ "in_flight": ctx.sim.in_flight() });
    json_response(StatusCode::OK, body.to_string())
}

async fn unknown_url(method: Method, uri: Uri) -> Response {
    SimError::UnknownUrl {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
    .into_response()
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Locks a mutex, recovering the data if a holder panicked: every critical section here leaves the data
/// valid at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
