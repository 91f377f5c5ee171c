//! The dispatch seam: the gateway talks to every backend through [`Backend`], never to gRPC or HTTP
//! client types. A backend takes a checked request and answers with a stream of [`ChatEvent`]s.

pub mod cloud;
pub mod local;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::time::Instant;

use crate::api::ChatRequest;
use crate::level::Level;

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// On the organisation's own workers.
    Local,
    /// On a cloud API.
    Cloud,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Cloud => "cloud",
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object.
    pub fn from_openai(v: &Value) -> Option<Self> {
        Some(Self {
            prompt_tokens: v.get("prompt_tokens")?.as_u64()?,
            completion_tokens: v.get("completion_tokens")?.as_u64()?,
        })
    }
}

/// One step of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// Generated text (a worker's delta; valid UTF-8, stop sequences already applied).
    Text(String),
    /// An OpenAI `chat.completion.chunk` from an OpenAI-compatible backend, passed on as it came.
    Chunk(Value),
    /// A whole OpenAI `chat.completion` from an OpenAI-compatible backend (not streamed).
    Completion(Value),
    /// The end: why generation stopped and what it used. Always the last event of a good answer.
    Finished {
        finish_reason: String,
        usage: Option<Usage>,
    },
}

/// Why a backend could not serve a request. Mapped to HTTP in `server`, through [`crate::error::ApiError`].
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
    /// A low-cardinality name, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Full(_) => "full",
            Self::Timeout(_) => "timeout",
            Self::Rejected { .. } | Self::Upstream { .. } => "rejected",
            Self::Failed(_) => "failed",
            Self::Interrupted(_) => "interrupted",
        }
    }
}

/// The events of one answer, ending with [`ChatEvent::Finished`] or an error. Dropping it cancels the
/// request at the backend.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, BackendError>> + Send>>;

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

/// A model a backend serves, as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub id: String,
    /// List prices in USD per million tokens (cloud models).
    pub prices: Option<Prices>,
}

/// List prices in USD per million input and output tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
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
}
