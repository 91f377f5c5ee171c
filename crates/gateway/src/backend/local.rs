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

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{
    Backend, BackendError, ChatEvent, DiscoveryStatus, DispatchContext, Dispatched, InFlight, MemberStatus,
    ModelCard, Prices, Route, Usage, with_causes,
};
use crate::api::ChatRequest;
use crate::level::Level;

/// The gRPC service name workers report health for.
const WORKER_SERVICE: &str = "sluice.worker.v1.Worker";

/// PEM material for TLS to the workers.
#[derive(Clone)]
pub struct ClientTls {
    /// CA bundle that signs the workers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to expect in the workers' certificates, when it is not the host in their address.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_pem.is_some())
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// One worker's address and name.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerAddress {
    pub name: String,
    /// `http://host:port` or `https://host:port`.
    pub uri: String,
    /// What the node costs by the hour.
    pub cost: crate::cost::NodeCost,
}

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub workers: Vec<WorkerAddress>,
    pub tls: Option<ClientTls>,
    pub clearance: Level,
    pub connect_timeout: Duration,
    /// Failures in a row that eject a worker.
    pub breaker_failures: u32,
    /// How long an ejected worker rests.
    pub breaker_cooldown: Duration,
    /// Where to find more workers: the EndpointSlices of a Kubernetes Service.
    pub kubernetes: Option<sluice_discovery::Target>,
    /// What the node of a worker found there costs by the hour.
    pub node_cost: crate::cost::NodeCost,
}

impl PoolConfig {
    /// The pool has workers, or a place to find them.
    pub fn has_members(&self) -> bool {
        !self.workers.is_empty() || self.kubernetes.is_some()
    }

    /// What worker `name`'s node costs: its own figure when it is configured, else the pool's.
    pub fn node_cost_of(&self, name: &str) -> crate::cost::NodeCost {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .map_or(self.node_cost, |w| w.cost)
    }
}

#[derive(Debug, Default)]
struct WorkerState {
    /// The monitor is connected and both watches are open.
    connected: bool,
    health: Option<ServingStatus>,
    load: Option<v1::LoadReport>,
    /// Models from the last `GetInfo`; kept while the worker is away, so its models stay known.
    models: Vec<String>,
    failures: u32,
    ejected_until: Option<Instant>,
    last_error: Option<String>,
}

struct Worker {
    name: Arc<str>,
    uri: String,
    channel: Channel,
    state: Mutex<WorkerState>,
    in_flight: Arc<AtomicU64>,
    cost: crate::cost::NodeCost,
    /// Found through Kubernetes (else configured).
    discovered: bool,
    /// What Kubernetes says of it ([`ADMITTED`], [`NOT_SERVING`], [`TERMINATING`]); configured workers
    /// stay admitted.
    admission: AtomicU8,
    /// When it joined the pool (its node cost accrues from then).
    joined: std::time::Instant,
}

const ADMITTED: u8 = 0;
const NOT_SERVING: u8 = 1;
const TERMINATING: u8 = 2;

fn admission_of(state: sluice_discovery::EndpointState) -> u8 {
    match state {
        sluice_discovery::EndpointState::Ready => ADMITTED,
        sluice_discovery::EndpointState::NotServing => NOT_SERVING,
        sluice_discovery::EndpointState::Terminating => TERMINATING,
    }
}

impl Worker {
    /// What a token costs on this node while it is busy: its hourly cost over its reported prefill and
    /// decode rates, per million tokens. `None` until it has reported both.
    fn busy_prices(&self, s: &WorkerState) -> Option<Prices> {
        let l = s.load.as_ref()?;
        let (p, d) = (l.prompt_tokens_per_second, l.decode_tokens_per_second);
        let per_second = self.cost.usd_per_hour() / 3600.0;
        (p > 0.0 && d > 0.0 && p.is_finite() && d.is_finite()).then(|| Prices {
            input_usd_per_mtok: per_second / p * 1e6,
            output_usd_per_mtok: per_second / d * 1e6,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        // A panic while the lock was held cannot leave this plain data inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ready for a request now: admitted by Kubernetes (when found there), connected, serving,
    /// reporting ready, not ejected.
    fn ready(&self, now: Instant) -> bool {
        if self.admission.load(Ordering::Relaxed) != ADMITTED {
            return false;
        }
        let s = self.state();
        s.connected
            && s.health == Some(ServingStatus::Serving)
            && s.load
                .as_ref()
                .is_some_and(|l| l.state() == v1::WorkerState::Ready)
            && s.ejected_until.is_none_or(|t| t <= now)
    }

    /// Queue length per slot, counting requests this gateway sent that the last report may not show yet.
    fn load_score(&self) -> f64 {
        let s = self.state();
        let in_flight = self.in_flight.load(Ordering::Relaxed) as f64;
        match &s.load {
            Some(l) => {
                let reported = f64::from(l.requests_running + l.requests_waiting);
                reported.max(in_flight) / f64::from(l.slots.max(1))
            }
            None => in_flight,
        }
    }

    fn record_success(&self) {
        let mut s = self.state();
        s.failures = 0;
    }

    /// Counts a failure; returns true when it ejects the worker.
    fn record_failure(&self, error: &str, config: &PoolConfig) -> bool {
        let mut s = self.state();
        s.failures += 1;
        s.last_error = Some(error.to_owned());
        if s.failures >= config.breaker_failures {
            // Half-open after the cooldown: one more failure ejects it again; a success resets the count.
            s.failures = config.breaker_failures.saturating_sub(1);
            s.ejected_until = Some(Instant::now() + config.breaker_cooldown);
            return true;
        }
        false
    }

    fn status(&self, now: Instant) -> MemberStatus {
        let ready = self.ready(now);
        let s = self.state();
        let admission = self.admission.load(Ordering::Relaxed);
        let detail = if ready {
            "ready".to_owned()
        } else if admission == TERMINATING {
            "terminating (Kubernetes): finishing its requests, taking no new ones".to_owned()
        } else if admission == NOT_SERVING {
            "not serving (Kubernetes: its readiness probe fails)".to_owned()
        } else if let Some(t) = s.ejected_until.filter(|t| *t > now) {
            format!(
                "ejected for {:.1} s after repeated failures",
                (t - now).as_secs_f64()
            )
        } else if !s.connected {
            match &s.last_error {
                Some(e) => format!("unreachable: {e}"),
                None => "connecting".to_owned(),
            }
        } else {
            match s.load.as_ref().map(v1::LoadReport::state) {
                Some(v1::WorkerState::Starting) => "loading its model".to_owned(),
                Some(v1::WorkerState::Draining) => "draining".to_owned(),
                _ => "not serving".to_owned(),
            }
        };
        MemberStatus {
            name: self.name.to_string(),
            address: self.uri.clone(),
            ready,
            detail,
            models: s.models.clone(),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            running: s.load.as_ref().map(|l| l.requests_running),
            waiting: s.load.as_ref().map(|l| l.requests_waiting),
            slots: s.load.as_ref().map(|l| l.slots),
            throughput: s.load.as_ref().map(|l| crate::cost::Throughput {
                prefill_tokens_per_second: l.prompt_tokens_per_second,
                decode_tokens_per_second: l.decode_tokens_per_second,
            }),
            source: if self.discovered { "kubernetes" } else { "config" },
            node: Some((self.cost, self.joined)),
        }
    }
}

/// A worker and the task that follows it.
struct Member {
    worker: Arc<Worker>,
    monitor: JoinHandle<()>,
}

/// The local worker pool.
pub struct WorkerPool {
    config: PoolConfig,
    members: RwLock<Vec<Member>>,
    discovery: Mutex<Option<DiscoveryStatus>>,
    discovery_task: Mutex<Option<JoinHandle<()>>>,
    /// Models of workers that left: still this pool's to serve, so that a request for one while no
    /// worker has it is a 503 (no worker ready), not a 404 (unknown model).
    departed_models: Mutex<Vec<String>>,
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

    fn members_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Member>> {
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
        members.retain(|m| {
            let keep = !m.worker.discovered || wanted.iter().any(|(uri, e)| same(&m.worker, uri, e));
            if !keep {
                m.monitor.abort();
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
            match start(&worker, message.clone(), context.deadline).await {
                Ok(events) => {
                    worker.record_success();
                    return Ok(Dispatched {
                        served_by: worker.name.clone(),
                        events: events_of(worker.clone(), guard, events, self.config.clone()),
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
fn member(w: &WorkerAddress, endpoint: Endpoint, discovered: bool) -> Member {
    let worker = Arc::new(Worker {
        name: w.name.as_str().into(),
        uri: w.uri.clone(),
        channel: endpoint.connect_lazy(),
        state: Mutex::new(WorkerState::default()),
        in_flight: Arc::new(AtomicU64::new(0)),
        cost: w.cost,
        discovered,
        admission: AtomicU8::new(ADMITTED),
        joined: std::time::Instant::now(),
    });
    let monitor = tokio::spawn(monitor(worker.clone()));
    Member { worker, monitor }
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
                match cards.iter_mut().find(|c| &c.id == id) {
                    Some(c) => {
                        c.prices = match (c.prices, prices) {
                            (Some(a), Some(b)) if b.output_usd_per_mtok < a.output_usd_per_mtok => Some(b),
                            (None, b) => b,
                            (a, _) => a,
                        };
                    }
                    None => cards.push(ModelCard {
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

    fn dispatch<'a>(
        &'a self,
        request: &'a ChatRequest,
        context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Dispatched, BackendError>> {
        self.dispatch_inner(request, context).boxed()
    }
}

fn endpoint(w: &WorkerAddress, config: &PoolConfig) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(w.uri.clone())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        let mut t = ClientTlsConfig::new();
        if let Some(ca) = &tls.ca_pem {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            t = t.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(t)?;
    }
    Ok(endpoint)
}

fn rejected(message: &str) -> BackendError {
    let code = if message.contains("context window") {
        "context_length_exceeded"
    } else {
        "invalid_value"
    };
    BackendError::Rejected {
        message: message.to_owned(),
        code,
    }
}

/// A status in words, with the transport's reason when the call never reached the worker.
fn describe(status: &Status) -> String {
    with_causes(format!("{:?}: {}", status.code(), status.message()), status)
}

fn generate_request(request: &ChatRequest, context: &DispatchContext) -> v1::GenerateRequest {
    v1::GenerateRequest {
        request_id: context.request_id.clone(),
        model: request.model.clone(),
        messages: request
            .messages
            .iter()
            .map(|m| v1::ChatMessage {
                role: m.role.template_name().to_owned(),
                content: m.text.clone(),
            })
            .collect(),
        sampling: Some(v1::SamplingParams {
            // OpenAI's defaults: temperature 1, top_p 1.
            temperature: request.temperature.unwrap_or(1.0),
            top_p: request.top_p.unwrap_or(1.0),
            top_k: 0,
            seed: request.seed.map(|s| s as u64),
        }),
        stopping: Some(v1::StoppingParams {
            max_tokens: request.max_tokens.unwrap_or(0),
            stop: request.stop.clone(),
            ignore_eos: false,
        }),
    }
}

/// Calls `Generate` and waits for its first event (`Started`), so that refusals are known before the
/// client gets an answer.
async fn start(
    worker: &Worker,
    message: v1::GenerateRequest,
    deadline: Instant,
) -> Result<(v1::GenerateEvent, tonic::Streaming<v1::GenerateEvent>), Status> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded("the request's deadline passed"));
    }
    let mut call = tonic::Request::new(message);
    call.set_timeout(remaining);
    let mut client = WorkerClient::new(worker.channel.clone());
    let first = async {
        let mut stream = client.generate(call).await?.into_inner();
        match stream.message().await? {
            Some(event) => Ok((event, stream)),
            None => Err(Status::unavailable(
                "the worker closed the stream before it started",
            )),
        }
    };
    match tokio::time::timeout_at(deadline, first).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded("the request's deadline passed")),
    }
}

/// Turns the worker's events into [`ChatEvent`]s. The stream ends after `Finished` or the first error;
/// a stream that ends without `Finished` is an interruption.
fn events_of(
    worker: Arc<Worker>,
    in_flight: InFlight,
    (first, stream): (v1::GenerateEvent, tonic::Streaming<v1::GenerateEvent>),
    config: PoolConfig,
) -> super::EventStream {
    struct State {
        stream: tonic::Streaming<v1::GenerateEvent>,
        pending: Option<v1::GenerateEvent>,
        done: bool,
        worker: Arc<Worker>,
        _in_flight: InFlight,
        config: PoolConfig,
    }
    let state = State {
        stream,
        pending: Some(first),
        done: false,
        worker,
        _in_flight: in_flight,
        config,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let event = match s.pending.take() {
                Some(e) => Ok(Some(e)),
                None => s.stream.message().await,
            };
            let worker = &s.worker;
            let item = match event {
                Ok(Some(v1::GenerateEvent { event: Some(e) })) => match e {
                    v1::generate_event::Event::Started(_) => continue,
                    v1::generate_event::Event::Delta(d) if d.text.is_empty() => continue,
                    v1::generate_event::Event::Delta(d) => Ok(ChatEvent::Text(d.text)),
                    v1::generate_event::Event::Finished(f) => {
                        s.done = true;
                        let finish_reason = match f.finish_reason() {
                            v1::FinishReason::Length => "length",
                            _ => "stop",
                        };
                        Ok(ChatEvent::Finished {
                            finish_reason: finish_reason.to_owned(),
                            usage: f.usage.map(|u| Usage {
                                prompt_tokens: u64::from(u.prompt_tokens),
                                completion_tokens: u64::from(u.completion_tokens),
                            }),
                        })
                    }
                },
                Ok(Some(v1::GenerateEvent { event: None })) => continue,
                Ok(None) => {
                    s.done = true;
                    Err(BackendError::Interrupted(format!(
                        "worker {} ended the answer without finishing it",
                        worker.name
                    )))
                }
                Err(status) => {
                    s.done = true;
                    match status.code() {
                        Code::DeadlineExceeded => Err(BackendError::Timeout(format!(
                            "worker {}: {}",
                            worker.name,
                            status.message()
                        ))),
                        _ => {
                            let why = describe(&status);
                            worker.record_failure(&why, &s.config);
                            Err(BackendError::Interrupted(format!(
                                "worker {} failed mid-answer: {why}",
                                worker.name
                            )))
                        }
                    }
                }
            };
            return Some((item, s));
        }
    })
    .boxed()
}

/// Follows one worker for as long as the pool lives: info, health and load, reconnecting with backoff.
async fn monitor(worker: Arc<Worker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = follow(&worker).await;
        {
            let mut s = worker.state();
            s.connected = false;
            s.health = None;
            if let Err(e) = &outcome {
                s.last_error = Some(e.clone());
            }
        }
        if let Err(e) = outcome {
            tracing::debug!(worker = %worker.name, error = %e, "worker watch ended");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's worth of following; returns when either watch ends.
async fn follow(worker: &Worker) -> Result<(), String> {
    let mut client = WorkerClient::new(worker.channel.clone());
    let mut info_call = tonic::Request::new(v1::GetInfoRequest {});
    info_call.set_timeout(Duration::from_secs(10));
    let info = client
        .get_info(info_call)
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let mut health = HealthClient::new(worker.channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: WORKER_SERVICE.to_owned(),
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let mut load = client
        .watch_load(v1::WatchLoadRequest {})
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    {
        let mut s = worker.state();
        s.models = info.models.iter().map(|m| m.id.clone()).collect();
        s.connected = true;
        s.last_error = None;
    }
    tracing::info!(worker = %worker.name, id = %info.worker_id, models = ?info.models.iter().map(|m| &m.id).collect::<Vec<_>>(), "worker connected");
    loop {
        tokio::select! {
            h = health.next() => match h {
                Some(Ok(h)) => worker.state().health = Some(h.status()),
                Some(Err(s)) => return Err(describe(&s)),
                None => return Err("health watch ended".to_owned()),
            },
            l = load.next() => match l {
                Some(Ok(report)) => worker.state().load = Some(report),
                Some(Err(s)) => return Err(describe(&s)),
                None => return Err("load watch ended".to_owned()),
            },
        }
    }
}

#[cfg(test)]
mod tests;
