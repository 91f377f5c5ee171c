//! The backend seam: the gateway talks to every backend through [`Backend`], never to gRPC or HTTP
//! client types. A backend says which requests it can take ([`Backend::supports`]), takes a checked
//! request and answers with a stream of [`ChatEvent`]s in one normalised model: content, then
//! [`ChatEvent::Finished`] with the usage always present. What the client sees of it (chunk shapes,
//! whether usage is shown) is the wire layer's business, never a backend's.
//! Backends never decide routing and never build HTTP responses.

pub mod cloud;
pub mod local;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde_json::Value;
pub use sluice_policy::{ModelCard, ModelKind, Prices, Route};
use tokio::time::Instant;

use crate::api::ChatRequest;
use crate::api::embeddings::EmbeddingRequest;
pub use crate::cost::Usage;
use crate::level::Level;

/// One step of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Generated text (a worker's delta; valid UTF-8, stop sequences already applied).
    Text(String),
    /// An OpenAI `chat.completion.chunk` from an OpenAI-compatible backend, as it came less its `usage`
    /// (reported in [`ChatEvent::Finished`]); usage-only chunks are not passed on. Such chunks carry their
    /// own finish reason.
    Chunk(Value),
    /// A whole OpenAI `chat.completion` from an OpenAI-compatible backend (not streamed), as it came.
    Completion(Value),
    /// The answer in the API the client called, as the backend sent it (a request passed on in its own
    /// format, see [`crate::api::native::Native`]): Anthropic's `message` (`kind` "message") or one of its stream
    /// events (`kind` the event's name). Only the wire layer of that API reads them.
    Native { kind: String, data: Value },
    /// The end: why generation stopped and what it used. Always the last event of a good answer.
    Finished { finish_reason: String, usage: Usage },
}

/// What a backend cannot do with a request: the request field at fault and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub param: &'static str,
    pub what: String,
    pub model: String,
}

/// Why a backend could not serve a request. Mapped to HTTP in `error`, and nowhere else.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// Nothing that serves the model is reachable or ready.
    #[error("{0}")]
    Unavailable(String),
    /// Everything that serves the model is full.
    #[error("{0}")]
    Full(String),
    /// No answer within the deadline.
    #[error("{0}")]
    Timeout(String),
    /// The backend refused the request itself (bad parameters, over its context window).
    #[error("{message}")]
    Rejected { message: String, code: &'static str },
    /// An OpenAI-compatible backend refused the request with a 4xx of its own: its status, message, `code`
    /// and `param` go to the client as they came.
    #[error("{message}")]
    Upstream {
        status: u16,
        message: String,
        code: Option<String>,
        param: Option<String>,
    },
    /// The backend failed or answered with something that is not an answer.
    #[error("{0}")]
    Failed(String),
    /// The answer broke off after it had started.
    #[error("{0}")]
    Interrupted(String),
}

impl BackendError {
    /// Whether the error counts against the member in its observed stats (a refused request does not).
    pub fn member_fault(&self) -> Option<String> {
        match self {
            Self::Rejected { .. } | Self::Upstream { .. } => None,
            other => Some(other.to_string()),
        }
    }

    /// Whether the dispatcher may try the next allowed target: the backend is down or full, and took
    /// nothing of the request.
    pub fn may_fall_back(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Full(_))
    }
}

/// The events of one answer, ending with [`ChatEvent::Finished`] or an error. Dropping it cancels the
/// request at the backend.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, BackendError>> + Send>>;

/// Vectors a backend made, one per input in order, with what it read.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The member that served (a worker's name, or the cloud backend's name).
    pub served_by: Arc<str>,
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read (`completion_tokens` is 0).
    pub usage: Usage,
}

/// A request that a backend has accepted.
pub struct Dispatched {
    /// The member that serves it (a worker's name, or the cloud backend's name).
    pub served_by: Arc<str>,
    pub events: EventStream,
}

impl std::fmt::Debug for Dispatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatched")
            .field("served_by", &self.served_by)
            .finish_non_exhaustive()
    }
}

/// Counts one request in a backend member's in-flight gauge for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    pub fn new(counter: &Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An error's message followed by its chain of causes (client libraries keep the transport's reason,
/// such as "connection refused", out of their own message).
pub fn with_causes(head: String, error: &dyn std::error::Error) -> String {
    let mut text = head;
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What the dispatcher passes along with a request.
#[derive(Debug, Clone)]
pub struct DispatchContext {
    pub request_id: String,
    /// The answer must be complete by then.
    pub deadline: Instant,
}

/// One member of a backend (a worker of the pool, or the cloud API itself) as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub address: String,
    pub ready: bool,
    /// Why it is not ready (down, draining, ejected until ...).
    pub detail: String,
    pub models: Vec<String>,
    pub in_flight: u64,
    /// The worker's own load report, when it has one.
    pub running: Option<u32>,
    pub waiting: Option<u32>,
    pub slots: Option<u32>,
    /// The worker's recent prefill and decode rates (what its requests are charged by).
    #[serde(skip)]
    pub throughput: Option<crate::cost::Throughput>,
    /// Where the gateway learned of it: `config`, `kubernetes`, or `cloud`.
    pub source: &'static str,
    /// For a worker: what its node costs, and since when it is in the pool.
    #[serde(skip)]
    pub node: Option<(crate::cost::NodeCost, std::time::Instant)>,
}

/// A worker that left the pool: its node cost is owed from `joined` to `left`.
#[derive(Debug, Clone)]
pub struct Departure {
    pub name: String,
    pub cost: crate::cost::NodeCost,
    pub joined: std::time::Instant,
    pub left: std::time::Instant,
}

/// How a backend's watch for its members is doing (the pool's EndpointSlice watch), for `/admin/backends`
/// and the discovery series.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DiscoveryStatus {
    /// What is followed, and where.
    pub following: String,
    /// A complete list has arrived.
    pub synced: bool,
    /// Endpoint sets received.
    pub updates: u64,
    /// Watch failures so far (each retried with backoff; the last set stands meanwhile).
    pub failures: u64,
    pub last_error: Option<String>,
}

/// A place requests can be sent: the local worker pool, or one cloud API.
pub trait Backend: Send + Sync {
    /// The configured name (`x-sluice-backend` names the member that served).
    fn name(&self) -> &str;
    fn route(&self) -> Route;
    /// The most sensitive data this backend may receive.
    fn clearance(&self) -> Level;
    /// The models it serves now (for a pool: that any known worker serves).
    fn models(&self) -> Vec<ModelCard>;
    fn serves(&self, model: &str) -> bool {
        self.models().iter().any(|m| m.id == model)
    }
    /// Whether it can take this request at all (a local model reads text only); the dispatcher tries
    /// the next allowed target when it cannot.
    fn supports(&self, _request: &ChatRequest, _model: &str) -> Result<(), Unsupported> {
        Ok(())
    }
    /// Members that left since the last call, with what their node costs and when their stint began
    /// and ended, so that node cost is charged to the departure.
    fn departures(&self) -> Vec<Departure> {
        Vec::new()
    }
    /// At least one member could take a request now.
    fn ready(&self) -> bool;
    fn members(&self) -> Vec<MemberStatus>;
    /// How the backend finds its members, when it finds them at run time (the pool's EndpointSlice watch).
    fn discovery(&self) -> Option<DiscoveryStatus> {
        None
    }
    /// Sends the request; resolves once a member has accepted it (or every member that could has failed).
    fn dispatch<'a>(
        &'a self,
        request: &'a ChatRequest,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Dispatched, BackendError>>;
    /// Makes the vectors of an embeddings request; resolves with all of them (or every member that could
    /// has failed).
    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        let _ = context;
        let error = BackendError::Rejected {
            message: format!(
                "backend {} does not serve embeddings ({})",
                self.name(),
                request.model
            ),
            code: "model_not_supported",
        };
        Box::pin(std::future::ready(Err(error)))
    }
    /// The kind of one of its models (chat when it does not list it).
    fn kind_of(&self, model: &str) -> ModelKind {
        self.models()
            .into_iter()
            .find(|m| m.id == model)
            .map_or(ModelKind::Chat, |m| m.kind)
    }
}
