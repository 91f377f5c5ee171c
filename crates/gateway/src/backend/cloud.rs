//! A cloud backend: any OpenAI-compatible chat completions API or Azure OpenAI, called through
//! async-openai with the client's body passed on as it came (so tools, response formats and new fields
//! reach the provider), or Anthropic's Messages API (`anthropic`: the request translated into its wire
//! format and the answer back into OpenAI's, so that the rest of the gateway sees one shape).
//!
//! Answers that fail with 429, 5xx or a connection error before anything reached the client are retried
//! with exponential backoff and jitter, as long as the request's deadline allows. Each attempt has
//! `timeout` to produce its answer (streamed: its first chunk, then each next chunk).

use std::time::Duration;
use tracing::Instrument as _;

use std::collections::HashMap;
use std::sync::Arc;

use async_openai::Client;
use async_openai::config::{AzureConfig, Config, OpenAIConfig};
use async_openai::error::OpenAIError;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::time::Instant;

use super::{
    Backend, BackendError, ChatEvent, DispatchContext, Dispatched, Embeddings, InFlight, MemberStatus,
    ModelCard, ModelKind, Prices, Route, Usage, with_causes,
};
use crate::api::ChatRequest;
use crate::api::embeddings::EmbeddingRequest;
use crate::level::Level;

/// One model of a cloud catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudModel {
    pub id: String,
    /// Azure OpenAI: the deployment that serves it (the URL names the deployment, not the model).
    pub deployment: Option<String>,
    pub prices: Prices,
    /// Chat, or embeddings (`POST /embeddings`, priced by input tokens).
    pub kind: ModelKind,
}

/// The wire format a cloud speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudApi {
    /// Any OpenAI-compatible API: `POST {base_url}/chat/completions`, `Authorization: Bearer`.
    OpenAi,
    /// Azure OpenAI: `POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=...`,
    /// the key in `api-key`.
    Azure { api_version: String },
    /// Anthropic's Messages API: `POST {base_url}/messages`, the key in `x-api-key`, the version in
    /// `anthropic-version`; `max_tokens` is required there, so requests without one get `default_max_tokens`.
    Anthropic {
        version: String,
        default_max_tokens: u32,
    },
}

/// A cloud backend's settings.
#[derive(Clone)]
pub struct CloudConfig {
    pub name: String,
    pub api: CloudApi,
    /// Base URL of the API, up to and including `/v1`.
    pub base_url: String,
    /// The key, read from the configured environment variable (none for keyless local stand-ins).
    pub api_key: Option<String>,
    pub models: Vec<CloudModel>,
    pub clearance: Level,
    pub connect_timeout: Duration,
    /// Per attempt: until the answer (streamed: each chunk) arrives.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubled each retry, with jitter, up to 8 s.
    pub retry_backoff: Duration,
    pub breaker: BreakerConfig,
    /// The outage drill: treated as unreachable, nothing sent.
    pub offline: bool,
}

impl std::fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudConfig")
            .field("name", &self.name)
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("clearance", &self.clearance)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("breaker", &self.breaker)
            .field("offline", &self.offline)
            .finish()
    }
}

/// An async-openai client, whichever configuration (OpenAI-compatible, or one Azure deployment).
type OpenAiClient = Client<Arc<dyn Config>>;

/// A cloud API.
pub struct CloudBackend {
    config: CloudConfig,
    /// OpenAI-compatible and Azure: the client of each model (Azure: its deployment's).
    clients: HashMap<String, OpenAiClient>,
    /// Anthropic: the HTTP client (with trace propagation).
    http: reqwest::Client,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicU64>,
    health: Arc<Health>,
}

/// A failure to build the HTTP client.
#[derive(Debug, thiserror::Error)]
#[error("cloud backend {name}: cannot build its HTTP client: {source}")]
pub struct CloudError {
    name: String,
    #[source]
    source: reqwest::Error,
}

/// How one attempt failed, and whether another may help.
enum Attempt {
    Retry(BackendError),
    Fatal(BackendError),
}

impl CloudBackend {
    pub fn new(config: CloudConfig) -> Result<Self, CloudError> {
        // reqwest needs a process-wide rustls provider; the binary installs ring first thing, and this
        // covers libraries and tests. A provider already installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| CloudError {
                name: config.name.clone(),
                source,
            })?;
        let key = config.api_key.clone().unwrap_or_default();
        let base = config.base_url.trim_end_matches('/');
        // async-openai's default executor retries 429, 5xx and connection errors on its own (three times,
        // ignoring our deadline); the plain service leaves every retry to `dispatch_inner`.
        let client = |c: Arc<dyn Config>| {
            Client::with_config(c)
                .with_http_client(http.clone())
                .with_http_service(Traced { http: http.clone() })
        };
        let clients = match &config.api {
            CloudApi::OpenAi => {
                let shared = client(Arc::new(
                    OpenAIConfig::new().with_api_base(base).with_api_key(key),
                ));
                config
                    .models
                    .iter()
                    .map(|m| (m.id.clone(), shared.clone()))
                    .collect()
            }
            CloudApi::Azure { api_version } => config
                .models
                .iter()
                .map(|m| {
                    let azure = AzureConfig::new()
                        .with_api_base(base)
                        .with_api_key(key.clone())
                        .with_api_version(api_version.clone())
                        .with_deployment_id(m.deployment.clone().unwrap_or_else(|| m.id.clone()));
                    (m.id.clone(), client(Arc::new(azure)))
                })
                .collect(),
            CloudApi::Anthropic { .. } => HashMap::new(),
        };
        let health = Arc::new(Health::new(config.breaker.clone(), config.offline));
        probe::spawn(&config, &health, &http);
        Ok(Self {
            config,
            clients,
            http,
            in_flight: Default::default(),
            health,
        })
    }

    /// The client for a model (every configured model has one, but Anthropic's, which need none).
    fn client(&self, model: &str) -> Result<&OpenAiClient, Attempt> {
        self.clients.get(model).ok_or_else(|| {
            Attempt::Fatal(BackendError::Failed(format!(
                "cloud backend {} has no client for the model {model}",
                self.config.name
            )))
        })
    }

    /// The body sent upstream: the client's, with usage always requested on streams (for metering).
    fn upstream_body(request: &ChatRequest) -> Value {
        let mut body = request.body.clone();
        if request.stream {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Default::default()));
            // `"stream_options": null` is allowed, and means none.
            if !options.is_object() {
                *options = Value::Object(Default::default());
            }
            if let Value::Object(o) = options {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        Value::Object(body)
    }

    /// An error status from the provider: retried when waiting may help, else the client's to see.
    fn status_error(
        &self,
        status: u16,
        message: &str,
        code: Option<String>,
        param: Option<String>,
    ) -> Attempt {
        let name = &self.config.name;
        let said = format!("cloud backend {name} answered {status}: {message}");
        match status {
            429 => Attempt::Retry(BackendError::Full(said)),
            500..=599 => Attempt::Retry(BackendError::Failed(said)),
            // The provider's message may quote the key ("Incorrect API key provided: sk-...");
            // it goes to neither the client nor the log.
            401 | 403 => Attempt::Fatal(BackendError::Failed(format!(
                "cloud backend {name} refused the gateway's credentials ({status}); check its api_key_env"
            ))),
            408 => Attempt::Retry(BackendError::Timeout(said)),
            _ => Attempt::Fatal(BackendError::Upstream {
                status,
                message: format!("cloud backend {name}: {message}"),
                code,
                param,
            }),
        }
    }

    fn error_of(&self, error: OpenAIError) -> Attempt {
        let name = &self.config.name;
        match error {
            OpenAIError::ApiError(e) => self.status_error(
                e.status_code.as_u16(),
                &e.api_error.message,
                e.api_error.code.clone(),
                e.api_error.param.clone(),
            ),
            OpenAIError::Reqwest(e) => transport_failure(name, &e),
            OpenAIError::JSONDeserialize(e, _) => Attempt::Fatal(BackendError::Failed(format!(
                "cloud backend {name} answered with something that is not a chat completion: {e}"
            ))),
            other => Attempt::Fatal(BackendError::Failed(format!("cloud backend {name}: {other}"))),
        }
    }

    async fn attempt(&self, request: &ChatRequest, deadline: Instant) -> Result<Dispatched, Attempt> {
        // The call's span lasts as long as its answer; the provider gets its context in `traceparent`.
        let span = tracing::trace_span!(
            target: sluice_telemetry::TARGET,
            "chat",
            otel.name = if matches!(self.config.api, CloudApi::Anthropic { .. }) {
                "POST /messages"
            } else {
                "POST /chat/completions"
            },
            otel.kind = "client",
            http.request.method = "POST",
            sluice.backend = %self.config.name,
        );
        self.attempt_in(request, deadline, &span)
            .instrument(span.clone())
            .await
    }

    async fn attempt_in(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        span: &tracing::Span,
    ) -> Result<Dispatched, Attempt> {
        let until = deadline.min(Instant::now() + self.config.timeout);
        if let CloudApi::Anthropic { .. } = self.config.api {
            return self.anthropic_attempt(request, (until, deadline), span).await;
        }
        let body = Self::upstream_body(request);
        let limit = until.saturating_duration_since(Instant::now());
        let timed_out = || {
            Attempt::Retry(BackendError::Timeout(format!(
                "cloud backend {} did not answer within {:.1} s",
                self.config.name,
                limit.as_secs_f64()
            )))
        };
        let chat = self.client(&request.model)?.chat();
        if !request.stream {
            let completion: Value = match tokio::time::timeout_at(until, chat.create_byot(body)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => return Err(self.error_of(e)),
                Ok(Ok(v)) => v,
            };
            let Some(reason) = completion
                .pointer("/choices/0/finish_reason")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                return Err(Attempt::Fatal(BackendError::Failed(format!(
                    "cloud backend {} answered without choices[0].finish_reason",
                    self.config.name
                ))));
            };
            // A provider that reports no usage is taken at its word: nothing to meter.
            let usage = completion
                .get("usage")
                .and_then(Usage::from_openai)
                .unwrap_or_default();
            let events = futures_util::stream::iter([
                Ok(ChatEvent::Completion(completion)),
                Ok(ChatEvent::Finished {
                    finish_reason: reason,
                    usage,
                }),
            ]);
            return Ok(Dispatched {
                served_by: self.config.name.as_str().into(),
                events: with_in_flight(events.boxed(), &self.in_flight, span.clone()),
            });
        }
        let mut upstream =
            match tokio::time::timeout_at(until, chat.create_stream_byot::<Value, Value>(body)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => return Err(self.error_of(e)),
                Ok(Ok(s)) => s,
            };
        // The first chunk proves the answer has started; until then a failure may be retried.
        let first = match tokio::time::timeout_at(until, upstream.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => {
                return Err(Attempt::Retry(BackendError::Failed(format!(
                    "cloud backend {} ended the stream before any chunk",
                    self.config.name
                ))));
            }
            Ok(Some(Err(e))) => return Err(self.error_of(e)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let upstream: stream::UpstreamStream = upstream.map(|c| c.map_err(|e| e.to_string())).boxed();
        let events = stream::chunk_events(
            self.config.name.clone(),
            first,
            upstream,
            self.config.timeout,
            deadline,
        );
        Ok(Dispatched {
            served_by: self.config.name.as_str().into(),
            events: with_in_flight(events, &self.in_flight, span.clone()),
        })
    }

    async fn dispatch_inner(
        &self,
        request: &ChatRequest,
        context: &DispatchContext,
    ) -> Result<Dispatched, BackendError> {
        self.admit()?;
        self.with_retries(context, || self.attempt(request, context.deadline))
            .await
    }
}

/// Counts the answer in `in_flight`, and keeps the call's span open, while its stream lives.
fn with_in_flight(
    events: super::EventStream,
    in_flight: &std::sync::Arc<std::sync::atomic::AtomicU64>,
    span: tracing::Span,
) -> super::EventStream {
    let guard = InFlight::new(in_flight);
    events
        .map(move |e| {
            // A span ends at its last exit: each item enters it, so it ends with the last.
            let _entered = span.enter();
            let _ = &guard;
            e
        })
        .boxed()
}

/// The HTTP client of async-openai's calls: reqwest, with the current span's W3C trace context in
/// `traceparent` when the request is traced.
#[derive(Clone)]
struct Traced {
    http: reqwest::Client,
}

impl tower::Service<async_openai::middleware::HttpRequestFactory> for Traced {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: async_openai::middleware::HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        let span = tracing::Span::current();
        Box::pin(async move {
            let mut request = request.build().await?;
            if !span.is_disabled() {
                sluice_telemetry::propagation::inject(&span, request.headers_mut());
            }
            http.execute(request).await.map_err(OpenAIError::Reqwest)
        })
    }
}

impl Backend for CloudBackend {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn route(&self) -> Route {
        Route::Cloud
    }

    fn clearance(&self) -> Level {
        self.config.clearance
    }

    fn models(&self) -> Vec<ModelCard> {
        self.config
            .models
            .iter()
            .map(|m| ModelCard {
                kind: m.kind,
                id: m.id.clone(),
                prices: Some(m.prices),
            })
            .collect()
    }

    fn serves(&self, model: &str) -> bool {
        self.config.models.iter().any(|m| m.id == model)
    }

    fn kind_of(&self, model: &str) -> ModelKind {
        self.config
            .models
            .iter()
            .find(|m| m.id == model)
            .map_or(ModelKind::Chat, |m| m.kind)
    }

    fn ready(&self) -> bool {
        self.health.up(Instant::now())
    }

    fn members(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        vec![MemberStatus {
            name: self.config.name.clone(),
            address: self.config.base_url.clone(),
            ready: self.health.up(now),
            detail: format!("cloud API: {}", self.health.describe(now)),
            models: self.config.models.iter().map(|m| m.id.clone()).collect(),
            in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            running: None,
            waiting: None,
            slots: None,
            throughput: None,
            source: "cloud",
            node: None,
        }]
    }

    fn dispatch<'a>(
        &'a self,
        request: &'a ChatRequest,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Dispatched, BackendError>> {
        self.dispatch_inner(request, context).boxed()
    }

    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        async move {
            self.admit()?;
            self.with_retries(context, || self.embed_attempt(request, context.deadline))
                .await
        }
        .boxed()
    }
}

mod anthropic;
mod embed;
mod health;
mod probe;
mod retry;
mod stream;

pub use health::{BreakerConfig, Health, Outcome, ProbeConfig};
use retry::transport_failure;
#[cfg(test)]
mod tests;
