//! The local backend: a pool of workers reached over gRPC (`sluice.worker.v1`).
//!
//! Each worker is followed by a monitor task: `GetInfo` for its models, then the health service's `Watch`
//! and `WatchLoad` side by side; when either ends, the worker is not ready until the monitor reconnects.
//! A request goes to the ready worker with the least load that serves its model; on `RESOURCE_EXHAUSTED`
//! or a failure to reach it, to the next. A worker that fails `breaker_failures` times in a row is
//! ejected for `breaker_cooldown` (the circuit breaker), then tried again.
//!
//! Members come from the configuration and, with `kubernetes`, from a Service's EndpointSlices
//! ([`WorkerPool::follow`]): a new endpoint joins, one Kubernetes calls terminating or not serving takes
//! no new requests while those in flight finish, and a deleted one leaves (its streams keep their
//! connection until they end).
//!
//! This module owns the pool: its members (configured and discovered), the order in which a request
//! tries them, and the [`Backend`] it presents. One worker's state lives in `worker`, its monitor task in
//! `monitor`, the mapping to the wire in `grpc` and the settings in `config`. It never decides which
//! backend a request goes to (the policy does) and never touches HTTP types.

mod config;
mod embed;
mod grpc;
mod monitor;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Endpoint;

use self::config::endpoint;
pub use self::config::{ClientTls, PoolConfig, WorkerAddress, worker_uri};
use self::grpc::{describe, events_of, generate_request, rejected, start};
use self::monitor::monitor;
use self::worker::{Worker, admission_of};
use super::{
    Backend, BackendError, Departure, DiscoveryStatus, DispatchContext, Dispatched, Embeddings, InFlight,
    MemberStatus, ModelCard, ModelKind, Route, Unsupported,
};
use crate::api::ChatRequest;
use crate::api::embeddings::EmbeddingRequest;
use crate::level::Level;

/// A worker and the task that follows it.
struct PoolMember {
    worker: Arc<Worker>,
    monitor: JoinHandle<()>,
}

/// The local worker pool.
pub struct WorkerPool {
    config: PoolConfig,
    members: RwLock<Vec<PoolMember>>,
    discovery: Mutex<Option<DiscoveryStatus>>,
    discovery_task: Mutex<Option<JoinHandle<()>>>,
    /// Models of workers that left: still this pool's to serve, so that a request for one while no
    /// worker has it is a 503 (no worker ready), not a 404 (unknown model).
    departed_models: Mutex<Vec<String>>,
    /// Workers that left since accounting last asked, with their node's stint.
    departures: Mutex<Vec<Departure>>,
}

/// A problem with the pool's settings found when it is built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("worker {name}: invalid address {uri:?}: {source}")]
    Address {
        name: String,
        uri: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl WorkerPool {
    /// Builds the pool and starts following every configured worker. Must run inside a Tokio runtime.
    pub fn start(config: PoolConfig) -> Result<Self, PoolError> {
        // Every address is checked before any monitor starts, so a bad one leaves nothing running.
        let mut endpoints = Vec::with_capacity(config.workers.len());
        for w in &config.workers {
            endpoints.push(endpoint(w, &config).map_err(|source| PoolError::Address {
                name: w.name.clone(),
                uri: w.uri.clone(),
                source,
            })?);
        }
        let members = config
            .workers
            .iter()
            .zip(endpoints)
            .map(|(w, e)| member(w, e, false))
            .collect();
        Ok(Self {
            config,
            members: RwLock::new(members),
            discovery: Mutex::new(None),
            discovery_task: Mutex::new(None),
            departed_models: Mutex::new(Vec::new()),
            departures: Mutex::new(Vec::new()),
        })
    }

    /// Adds and removes workers as the Service's EndpointSlices change, for as long as the pool lives.
    pub fn follow(self: &Arc<Self>, discovery: sluice_discovery::Discovery) {
        let status = DiscoveryStatus {
            following: discovery.describe(),
            ..DiscoveryStatus::default()
        };
        tracing::info!(following = %status.following, "finding workers through Kubernetes");
        // The status is in place before the first set can arrive.
        *self.discovery_slot() = Some(status);
        let sink: Arc<dyn sluice_discovery::Members> = Arc::new(Sink(Arc::downgrade(self)));
        let task = tokio::spawn(discovery.run(sink));
        if let Some(old) = self.task_slot().replace(task) {
            old.abort();
        }
    }

    fn discovery_slot(&self) -> std::sync::MutexGuard<'_, Option<DiscoveryStatus>> {
        self.discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn task_slot(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.discovery_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn members_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<PoolMember>> {
        // Plain data: a panic while the lock was held cannot leave it inconsistent.
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The workers now.
    fn workers(&self) -> Vec<Arc<Worker>> {
        self.members_read().iter().map(|m| m.worker.clone()).collect()
    }

    /// Makes the discovered members what Kubernetes lists: new endpoints join, known ones take its
    /// state, missing ones leave. A member is the same endpoint when both its address and its pod are:
    /// a new pod given an old pod's address is a new worker (fresh breaker, models and cost). Configured
    /// workers are left alone (an endpoint at a configured worker's address is that worker).
    pub fn reconcile(&self, endpoints: &[sluice_discovery::Endpoint]) {
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let wanted: Vec<(String, &sluice_discovery::Endpoint)> = endpoints
            .iter()
            .map(|e| (format!("{scheme}://{}", e.authority()), e))
            .collect();
        // A discovered member's name is its endpoint's, or that with the address when it clashed.
        let same = |w: &Worker, uri: &str, e: &sluice_discovery::Endpoint| {
            w.uri == uri
                && (!w.discovered
                    || *w.name == *e.name
                    || *w.name == *format!("{}@{}", e.name, e.authority()))
        };
        let mut members = self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut departed = self
            .departed_models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut departures = self
            .departures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = std::time::Instant::now();
        members.retain(|m| {
            let keep = !m.worker.discovered || wanted.iter().any(|(uri, e)| same(&m.worker, uri, e));
            if !keep {
                m.monitor.abort();
                let (cost, joined) = m.worker.stint();
                departures.push(Departure {
                    name: m.worker.name.to_string(),
                    cost,
                    joined,
                    left,
                });
                for model in &m.worker.state().models {
                    if !departed.contains(model) {
                        departed.push(model.clone());
                    }
                }
                tracing::info!(worker = %m.worker.name, address = %m.worker.uri, in_flight = m.worker.in_flight.load(Ordering::Relaxed), "worker left (no longer in the EndpointSlices)");
            }
            keep
        });
        for (uri, e) in wanted {
            let admission = admission_of(e.state);
            if let Some(m) = members.iter().find(|m| same(&m.worker, &uri, e)) {
                if m.worker.discovered {
                    let before = m.worker.admission.swap(admission, Ordering::Relaxed);
                    if before != admission {
                        tracing::info!(worker = %m.worker.name, state = e.state.as_str(), "Kubernetes changed the worker's state");
                    }
                }
                continue;
            }
            let mut name = e.name.clone();
            if members.iter().any(|m| *m.worker.name == *name) {
                name = format!("{name}@{}", e.authority());
            }
            let address = WorkerAddress {
                name,
                uri,
                cost: self.config.node_cost,
            };
            match endpoint(&address, &self.config) {
                Ok(endpoint) => {
                    tracing::info!(worker = %address.name, address = %address.uri, state = e.state.as_str(), "worker joined (EndpointSlices)");
                    let m = member(&address, endpoint, true);
                    m.worker.admission.store(admission, Ordering::Relaxed);
                    members.push(m);
                }
                Err(error) => {
                    tracing::warn!(worker = %address.name, address = %address.uri, %error, "cannot use this endpoint's address");
                }
            }
        }
    }

    /// Workers that serve `model`, ready ones first by load, then the others.
    fn candidates(&self, model: &str, now: Instant) -> (Vec<Arc<Worker>>, Vec<Arc<Worker>>) {
        let (ready, not_ready): (Vec<_>, Vec<_>) = self
            .workers()
            .into_iter()
            .filter(|w| w.state().models.iter().any(|m| m == model))
            .partition(|w| w.ready(now));
        // Scores change under our feet (reports arrive, requests start): take each once, so the sort sees
        // a consistent order.
        let mut scored: Vec<(f64, Arc<Worker>)> = ready.into_iter().map(|w| (w.load_score(), w)).collect();
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        (scored.into_iter().map(|(_, w)| w).collect(), not_ready)
    }

    async fn dispatch_inner(
        &self,
        request: &ChatRequest,
        context: &DispatchContext,
    ) -> Result<Dispatched, BackendError> {
        let now = Instant::now();
        let (ready, not_ready) = self.candidates(&request.model, now);
        if ready.is_empty() {
            let why: Vec<String> = not_ready
                .iter()
                .map(|w| {
                    let s = w.status(now);
                    format!("{} {}", s.name, s.detail)
                })
                .collect();
            return Err(BackendError::Unavailable(format!(
                "no worker serving `{}` is ready ({})",
                request.model,
                if why.is_empty() {
                    "none known".to_owned()
                } else {
                    why.join("; ")
                }
            )));
        }
        let message = generate_request(request, context);
        let mut full = Vec::new();
        let mut failed = Vec::new();
        for worker in ready {
            // Counted from the call on: a request queued at the worker is load the next choice must see.
            let guard = InFlight::new(&worker.in_flight);
            // The call's span lasts as long as its stream; the worker continues the trace from it.
            let call = tracing::trace_span!(
                target: sluice_telemetry::TARGET,
                "generate",
                otel.name = "sluice.worker.v1.Worker/Generate",
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = "sluice.worker.v1.Worker",
                rpc.method = "Generate",
                sluice.worker = %worker.name,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            let started = start(&worker, message.clone(), context.deadline, &call).await;
            if let Err(status) = &started {
                call.record("rpc.grpc.status_code", status.code() as i32);
            }
            match started {
                Ok(events) => {
                    worker.record_success();
                    return Ok(Dispatched {
                        served_by: worker.name.clone(),
                        events: events_of(worker.clone(), guard, events, self.config.clone(), call),
                    });
                }
                Err(status) => match status.code() {
                    Code::ResourceExhausted => full.push(worker.name.to_string()),
                    Code::InvalidArgument | Code::OutOfRange => {
                        return Err(rejected(status.message()));
                    }
                    Code::DeadlineExceeded => {
                        return Err(BackendError::Timeout(format!(
                            "worker {} did not start the request before the deadline",
                            worker.name
                        )));
                    }
                    // The model left this worker; another may still have it.
                    Code::NotFound => failed.push(format!("{}: {}", worker.name, status.message())),
                    // A model of the other kind: the request's fault, not the worker's.
                    Code::FailedPrecondition => {
                        return Err(BackendError::Rejected {
                            message: status.message().to_owned(),
                            code: "model_not_supported",
                        });
                    }
                    _ => {
                        let why = describe(&status);
                        if worker.record_failure(&why, &self.config) {
                            tracing::warn!(worker = %worker.name, error = %why, cooldown = ?self.config.breaker_cooldown, "worker ejected after repeated failures");
                        }
                        failed.push(format!("{}: {why}", worker.name));
                    }
                },
            }
        }
        if failed.is_empty() {
            Err(BackendError::Full(format!(
                "every worker serving `{}` is full ({})",
                request.model,
                full.join(", ")
            )))
        } else {
            let mut why = failed;
            why.extend(full.into_iter().map(|n| format!("{n}: full")));
            Err(BackendError::Unavailable(format!(
                "no worker serving `{}` could take the request ({})",
                request.model,
                why.join("; ")
            )))
        }
    }
}

/// Builds a member and starts its monitor.
fn member(w: &WorkerAddress, endpoint: Endpoint, discovered: bool) -> PoolMember {
    let worker = Arc::new(Worker::new(w, endpoint.connect_lazy(), discovered));
    let monitor = tokio::spawn(monitor(worker.clone()));
    PoolMember { worker, monitor }
}

/// Where the discovery hands its endpoint sets: the pool, while it lives.
struct Sink(Weak<WorkerPool>);

impl sluice_discovery::Members for Sink {
    fn set(&self, endpoints: Vec<sluice_discovery::Endpoint>) {
        if let Some(pool) = self.0.upgrade() {
            pool.reconcile(&endpoints);
            if let Some(s) = pool.discovery_slot().as_mut() {
                s.synced = true;
                s.updates += 1;
            }
        }
    }

    fn watch_failed(&self, error: &str) {
        if let Some(pool) = self.0.upgrade()
            && let Some(s) = pool.discovery_slot().as_mut()
        {
            s.failures += 1;
            s.last_error = Some(error.to_owned());
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        for m in self.members_read().iter() {
            m.monitor.abort();
        }
        if let Some(task) = self.task_slot().take() {
            task.abort();
        }
    }
}

impl Backend for WorkerPool {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn route(&self) -> Route {
        Route::Local
    }

    fn clearance(&self) -> Level {
        self.config.clearance
    }

    /// Each model with the lowest busy-time price among the workers that serve it (what a request
    /// there is charged; owned hardware is not free), and the models of workers that left.
    fn models(&self) -> Vec<ModelCard> {
        let mut cards: Vec<ModelCard> = Vec::new();
        for m in self.members_read().iter() {
            let w = &m.worker;
            let s = w.state();
            let prices = w.busy_prices(&s);
            for id in &s.models {
                let kind = match s.embedding_models.contains(id) {
                    true => ModelKind::Embedding,
                    false => ModelKind::Chat,
                };
                match cards.iter_mut().find(|c| &c.id == id) {
                    Some(c) => {
                        c.prices = match (c.prices, prices) {
                            (Some(a), Some(b)) if b.output_usd_per_mtok < a.output_usd_per_mtok => Some(b),
                            (None, b) => b,
                            (a, _) => a,
                        };
                    }
                    None => cards.push(ModelCard {
                        kind,
                        id: id.clone(),
                        prices,
                    }),
                }
            }
        }
        // Models of workers that left stay the pool's (unpriced until a worker with them reports).
        for id in self
            .departed_models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            if !cards.iter().any(|c| &c.id == id) {
                cards.push(ModelCard {
                    kind: Default::default(),
                    id: id.clone(),
                    prices: None,
                });
            }
        }
        cards.sort_by(|a, b| a.id.cmp(&b.id));
        cards
    }

    /// Asked on every request: checks the workers' lists without building [`Self::models`]. A model
    /// of a worker that left still counts: the pool serves it when a worker with it is back.
    fn serves(&self, model: &str) -> bool {
        self.members_read()
            .iter()
            .any(|w| w.worker.state().models.iter().any(|m| m == model))
            || self
                .departed_models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .any(|m| m == model)
    }

    /// Asked on every request: from the workers' lists, without building [`Self::models`].
    fn kind_of(&self, model: &str) -> ModelKind {
        let embedding = self
            .members_read()
            .iter()
            .any(|w| w.worker.state().embedding_models.iter().any(|m| m == model));
        match embedding {
            true => ModelKind::Embedding,
            false => ModelKind::Chat,
        }
    }

    fn ready(&self) -> bool {
        let now = Instant::now();
        self.members_read().iter().any(|m| m.worker.ready(now))
    }

    fn members(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        self.members_read().iter().map(|m| m.worker.status(now)).collect()
    }

    fn discovery(&self) -> Option<DiscoveryStatus> {
        self.discovery_slot().clone()
    }

    /// A local model reads text: tools, images and structured output are for a cloud model.
    fn supports(&self, request: &ChatRequest, model: &str) -> Result<(), Unsupported> {
        match crate::api::text_only_conflicts(request) {
            None => Ok(()),
            Some((param, what)) => Err(Unsupported {
                param,
                what,
                model: model.to_owned(),
            }),
        }
    }

    fn departures(&self) -> Vec<Departure> {
        std::mem::take(
            &mut *self
                .departures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
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
        self.embed_inner(request, context).boxed()
    }
}

#[cfg(test)]
mod tests;
