//! The dispatcher: sends a decided request to its targets in order, and is the one place every request
//! passes on its way to a backend. It enforces the clearance invariant on whatever the policy returned
//! (never to a backend cleared below the request's level), asks each backend whether it can take the
//! request ([`crate::backend::Backend::supports`]), and falls back to the next target only when one is
//! down or full, and only along the decision's targets. Every wait is bounded by the request's deadline.
//! It never builds HTTP errors (the `error` module maps [`Unserved`]) and never writes metrics or logs
//! of record (accounting does, from what it returns).

use std::sync::Arc;
use tracing::Instrument as _;

use sluice_policy::{Decision, Excluded, FallbackReason, Level, Route, Target};

use futures_util::future::BoxFuture;

use crate::api::ChatRequest;
use crate::api::embeddings::EmbeddingRequest;
use crate::backend::{
    Backend, BackendError, DispatchContext, Dispatched, Embeddings, ModelKind, Unsupported,
};
use crate::fleet::Fleet;

/// What the dispatcher sends: a chat completion, or an embeddings request. The targets, the clearance
/// check and the fallbacks are the same for both.
pub trait Job: Sync + Sized {
    /// What a backend answers once it has accepted the request.
    type Answer: Send;
    fn model(&self) -> &str;
    /// The same request for another model (a substitute, or a virtual model's member).
    fn for_model(&self, model: &str) -> Self;
    /// Whether the backend can take it at all.
    fn supported_by(&self, backend: &dyn Backend, model: &str) -> Result<(), Unsupported>;
    fn send<'a>(
        &'a self,
        backend: &'a dyn Backend,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Self::Answer, BackendError>>;
}

/// A model of the wrong kind for the request, in words.
fn wrong_kind(model: &str, kind: ModelKind) -> Unsupported {
    let what = match kind {
        ModelKind::Embedding => {
            format!("`{model}` is an embedding model: it answers /v1/embeddings, not chat completions")
        }
        ModelKind::Chat => format!("`{model}` is a chat model: it does not make embeddings"),
    };
    Unsupported {
        param: "model",
        what,
        model: model.to_owned(),
    }
}

impl Job for ChatRequest {
    type Answer = Dispatched;
    fn model(&self) -> &str {
        &self.model
    }
    fn for_model(&self, model: &str) -> Self {
        self.with_model(model)
    }
    fn supported_by(&self, backend: &dyn Backend, model: &str) -> Result<(), Unsupported> {
        match backend.kind_of(model) {
            ModelKind::Chat => backend.supports(self, model),
            kind => Err(wrong_kind(model, kind)),
        }
    }
    fn send<'a>(
        &'a self,
        backend: &'a dyn Backend,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Dispatched, BackendError>> {
        backend.dispatch(self, context)
    }
}

impl Job for EmbeddingRequest {
    type Answer = Embeddings;
    fn model(&self) -> &str {
        &self.model
    }
    fn for_model(&self, model: &str) -> Self {
        self.with_model(model)
    }
    fn supported_by(&self, backend: &dyn Backend, model: &str) -> Result<(), Unsupported> {
        match backend.kind_of(model) {
            ModelKind::Embedding => Ok(()),
            kind => Err(wrong_kind(model, kind)),
        }
    }
    fn send<'a>(
        &'a self,
        backend: &'a dyn Backend,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Embeddings, BackendError>> {
        backend.embed(self, context)
    }
}

/// A target that was tried and did not serve.
#[derive(Debug)]
pub struct FailedTarget {
    pub backend: String,
    pub route: Route,
    pub model: String,
    pub error: BackendError,
}

/// An answer that has started (for embeddings: that has come).
pub struct Started<A = Dispatched> {
    pub dispatched: A,
    pub backend: Arc<dyn Backend>,
    pub target: Target,
    /// Targets tried before, down or full.
    pub fallbacks: Vec<FailedTarget>,
    /// The decision's fallback served it (its cloud targets could not), and why.
    pub fell_back: Option<FallbackReason>,
}

impl<A> std::fmt::Debug for Started<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("backend", &self.backend.name())
            .field("target", &self.target)
            .field("fallbacks", &self.fallbacks)
            .finish_non_exhaustive()
    }
}

/// Why no target served the request.
#[derive(Debug)]
pub struct Unserved {
    pub level: Level,
    pub rule: String,
    /// What the decision ruled out (a request with nowhere compliant to go, not merely nowhere up).
    pub excluded: Vec<Excluded>,
    /// Targets tried that were down or full, in order.
    pub failures: Vec<FailedTarget>,
    /// The first target that could not take the request at all.
    pub unsupported: Option<Unsupported>,
    /// A backend that refused or failed the request itself: the dispatcher stops there.
    pub fatal: Option<FailedTarget>,
}

impl Unserved {
    /// The last target tried (the one the request is counted on) and those tried before it.
    pub fn last_and_earlier(&self) -> (Option<&FailedTarget>, &[FailedTarget]) {
        match &self.fatal {
            Some(f) => (Some(f), &self.failures),
            None => match self.failures.split_last() {
                Some((last, earlier)) => (Some(last), earlier),
                None => (None, &[]),
            },
        }
    }
}

/// What the dispatcher did with one request.
#[derive(Debug)]
pub struct Dispatch<A = Dispatched> {
    pub result: Result<Started<A>, Unserved>,
    /// Targets the policy proposed below the request's clearance, refused here.
    pub blocked: u32,
    /// The last target considered: its route, backend and model (for the routing headers).
    pub considered: Option<(Route, String, String)>,
}

/// Sends `request` to the decision's targets in order, at `level`.
pub async fn dispatch<J: Job>(
    fleet: &Fleet,
    decision: &Decision,
    level: Level,
    request: &J,
    context: &DispatchContext,
    decision_id: &str,
) -> Dispatch<J::Answer> {
    let mut blocked = 0;
    let mut considered = None;
    let mut failures = Vec::new();
    let mut unsupported = None;
    let mut fatal = None;
    let mut fell_back = None;
    let mut targets: &[Target] = &decision.targets;
    loop {
        for target in targets {
            let Some(backend) = fleet.backends.get(target.backend).cloned() else {
                tracing::error!(
                    decision_id,
                    "the routing policy chose a backend that does not exist"
                );
                continue;
            };
            // The invariant, in the one place every request passes on its way to a backend: never to a
            // backend cleared below the request's level, whatever the policy said.
            if backend.clearance() < level {
                tracing::error!(decision_id, backend = backend.name(), %level, clearance = %backend.clearance(), "the routing policy chose a backend cleared below the request; not sending");
                blocked += 1;
                continue;
            }
            considered = Some((backend.route(), backend.name().to_owned(), target.model.clone()));
            if let Err(u) = request.supported_by(backend.as_ref(), &target.model) {
                unsupported.get_or_insert(u);
                continue;
            }
            let sent = (target.model != request.model()).then(|| request.for_model(&target.model));
            let sent_request = sent.as_ref().unwrap_or(request);
            tracing::debug!(request_id = %context.request_id, decision_id, backend = backend.name(), model = %target.model, "dispatching");
            let attempt = tracing::trace_span!(
                target: sluice_telemetry::TARGET,
                "dispatch",
                otel.name = %format_args!("dispatch {}", backend.name()),
                sluice.backend = backend.name(),
                sluice.route = backend.route().as_str(),
                sluice.model = %target.model,
                sluice.attempt = i64::try_from(failures.len() + 1).unwrap_or(i64::MAX),
                sluice.outcome = tracing::field::Empty,
            );
            // Backends bound their own waits by the deadline; this holds whatever a backend does.
            let result =
                tokio::time::timeout_at(context.deadline, sent_request.send(backend.as_ref(), context))
                    .instrument(attempt.clone())
                    .await
                    .unwrap_or_else(|_| {
                        Err(BackendError::Timeout(format!(
                            "backend {} did not start the answer within the request timeout",
                            backend.name()
                        )))
                    });
            let failure = |error| FailedTarget {
                backend: backend.name().to_owned(),
                route: backend.route(),
                model: target.model.clone(),
                error,
            };
            attempt.record(
                "sluice.outcome",
                match &result {
                    Ok(_) => "started",
                    Err(e) if e.may_fall_back() => "fell_back",
                    Err(_) => "failed",
                },
            );
            match result {
                Ok(dispatched) => {
                    return Dispatch {
                        result: Ok(Started {
                            dispatched,
                            backend: backend.clone(),
                            target: target.clone(),
                            fallbacks: failures,
                            fell_back,
                        }),
                        blocked,
                        considered,
                    };
                }
                Err(e) if e.may_fall_back() => {
                    tracing::info!(request_id = %context.request_id, decision_id, backend = backend.name(), error = %e, "backend down or full; trying the next allowed one");
                    failures.push(failure(e));
                }
                Err(e) => {
                    tracing::info!(request_id = %context.request_id, decision_id, backend = backend.name(), error = %e, "backend refused or failed");
                    fatal = Some(failure(e));
                    break;
                }
            }
        }
        // Once: the cloud could not serve, and the decision has a fallback for why.
        let fallback = decision.fallback.as_deref().filter(|_| fell_back.is_none());
        let Some((fallback, reason)) = fallback.and_then(|f| {
            fallback_reason(&failures, fatal.as_ref())
                .filter(|r| f.on.contains(r))
                .map(|r| (f, r))
        }) else {
            break;
        };
        if tokio::time::Instant::now() >= context.deadline {
            break;
        }
        tracing::info!(request_id = %context.request_id, decision_id, reason = reason.as_str(), substitute = %fallback.model, "the cloud cannot serve; falling back to the local substitute");
        failures.extend(fatal.take());
        fell_back = Some(reason);
        targets = &fallback.targets;
    }
    Dispatch {
        result: Err(Unserved {
            level,
            rule: decision.rule.clone(),
            excluded: decision.excluded.clone(),
            failures,
            unsupported,
            fatal,
        }),
        blocked,
        considered,
    }
}

/// Why the tried targets' failures let a fallback serve: every target tried was a cloud that was down or
/// gave no first byte in time (`cloud_unavailable`), or one at least answered 429 for as long as it was
/// retried (`cloud_rate_limited`). A refusal of the request itself, or a failure after the answer
/// started (never seen here), is no reason.
fn fallback_reason(failures: &[FailedTarget], fatal: Option<&FailedTarget>) -> Option<FallbackReason> {
    let tried: Vec<&FailedTarget> = failures.iter().chain(fatal).collect();
    if tried.is_empty() || tried.iter().any(|f| f.route != Route::Cloud) {
        return None;
    }
    let down = |e: &BackendError| matches!(e, BackendError::Unavailable(_) | BackendError::Timeout(_));
    if tried.iter().any(|f| matches!(f.error, BackendError::Full(_)))
        && tried
            .iter()
            .all(|f| down(&f.error) || matches!(f.error, BackendError::Full(_)))
    {
        return Some(FallbackReason::CloudRateLimited);
    }
    tried
        .iter()
        .all(|f| down(&f.error))
        .then_some(FallbackReason::CloudUnavailable)
}
