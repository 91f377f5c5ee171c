//! The worker's state, shared by the gRPC service, the health reporter and the shutdown path: where it is
//! in its life (`Phase`), the model it serves once loaded (a chat model's `Engine` or an embedding model's
//! `Embedder`), draining, and the load report built from them. It never touches gRPC requests.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice_engine::{Embedder, Engine, EngineState, LoadSnapshot};
use sluice_proto::v1;
use tokio::sync::watch;

use crate::device::DeviceProbe;
use crate::metrics::WorkerMetrics;

/// Where the worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the model.
    Starting,
    Ready,
    Draining,
    /// Shutting down: load streams end so the server can close.
    Stopped,
}

/// Static facts about the worker, for `GetInfo`.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub worker_id: String,
    pub device: v1::Device,
    pub model_id: String,
    pub slots: u32,
    pub max_waiting: u32,
    /// What the model does, known from the configuration before it is loaded.
    pub kind: v1::ModelKind,
}

/// State shared by the service, the health reporter and the shutdown path.
#[derive(Debug)]
pub struct WorkerState {
    pub identity: WorkerIdentity,
    engine: OnceLock<Arc<Engine>>,
    /// For an embedding model, in the engine's place.
    embedder: OnceLock<Arc<Embedder>>,
    phase: watch::Sender<Phase>,
    pub metrics: WorkerMetrics,
    /// The device's latest utilisation and power, for the load reports.
    pub device: Arc<DeviceProbe>,
    started: Instant,
}

impl WorkerState {
    pub fn new(identity: WorkerIdentity, metrics: WorkerMetrics, device: Arc<DeviceProbe>) -> Arc<Self> {
        let (phase, _) = watch::channel(Phase::Starting);
        Arc::new(Self {
            identity,
            engine: OnceLock::new(),
            embedder: OnceLock::new(),
            phase,
            metrics,
            device,
            started: Instant::now(),
        })
    }

    /// Installs the engine once the model is loaded, and turns ready unless a drain came first.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        if !matches!(*self.phase.borrow(), Phase::Starting) {
            engine.drain();
        }
        if self.engine.set(engine).is_err() {
            tracing::error!("engine installed twice; keeping the first");
        }
        self.ready();
    }

    /// Installs the batcher of an embedding model once it is loaded, as [`Self::set_engine`] does.
    pub fn set_embedder(&self, embedder: Arc<Embedder>) {
        if !matches!(*self.phase.borrow(), Phase::Starting) {
            embedder.drain();
        }
        if self.embedder.set(embedder).is_err() {
            tracing::error!("embedding model installed twice; keeping the first");
        }
        self.ready();
    }

    fn ready(&self) {
        self.phase.send_if_modified(|p| {
            if *p == Phase::Starting {
                *p = Phase::Ready;
                true
            } else {
                false
            }
        });
    }

    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    pub fn embedder(&self) -> Option<&Arc<Embedder>> {
        self.embedder.get()
    }

    /// The model's latest load, once it is loaded.
    pub fn load(&self) -> Option<LoadSnapshot> {
        match (self.engine(), self.embedder()) {
            (Some(e), _) => Some(e.load()),
            (None, Some(e)) => Some(e.load()),
            (None, None) => None,
        }
    }

    pub(crate) fn watch_load(&self) -> Option<watch::Receiver<LoadSnapshot>> {
        match (self.engine(), self.embedder()) {
            (Some(e), _) => Some(e.watch_load()),
            (None, Some(e)) => Some(e.watch_load()),
            (None, None) => None,
        }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Stops admitting work. Returns requests still in flight.
    pub fn drain(&self) -> usize {
        self.phase.send_if_modified(|p| {
            if matches!(p, Phase::Starting | Phase::Ready) {
                *p = Phase::Draining;
                true
            } else {
                false
            }
        });
        if let Some(embedder) = self.embedder() {
            embedder.drain();
        }
        match self.engine() {
            Some(engine) => {
                engine.drain();
                engine.in_flight()
            }
            None => self.embedder().map_or(0, |e| e.in_flight()),
        }
    }

    /// Ends the load streams (after a drain).
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }

    pub fn in_flight(&self) -> usize {
        self.engine().map_or(0, |e| e.in_flight()) + self.embedder().map_or(0, |e| e.in_flight())
    }

    /// Waits until nothing is in flight or `grace` passed; returns what is left.
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let until = Instant::now() + grace;
        loop {
            let left = self.in_flight();
            if left == 0 || Instant::now() >= until {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn report(&self, load: Option<&LoadSnapshot>) -> v1::LoadReport {
        let state = match self.phase() {
            Phase::Starting => v1::WorkerState::Starting,
            Phase::Ready if load.is_some_and(|l| l.state == EngineState::Draining) => {
                v1::WorkerState::Draining
            }
            Phase::Ready => v1::WorkerState::Ready,
            Phase::Draining | Phase::Stopped => v1::WorkerState::Draining,
        };
        let l = load.copied().unwrap_or(LoadSnapshot {
            slots: self.identity.slots as usize,
            max_waiting: self.identity.max_waiting as usize,
            ..LoadSnapshot::default()
        });
        v1::LoadReport {
            state: state as i32,
            requests_running: l.running as u32,
            requests_waiting: l.waiting as u32,
            slots: l.slots as u32,
            max_waiting: l.max_waiting as u32,
            kv_cache_usage_ratio: l.kv_cache_usage_ratio,
            prompt_tokens_per_second: l.prompt_tokens_per_second,
            decode_tokens_per_second: l.decode_tokens_per_second,
            estimated_queue_wait_seconds: l.estimated_queue_wait_seconds,
            busy_seconds_total: l.busy_seconds_total,
            prompt_tokens_total: l.prompt_tokens_total,
            generation_tokens_total: l.generation_tokens_total,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            kv_cache_tokens: l.kv_cache_tokens as u64,
            kv_cache_budget_tokens: l.kv_cache_budget_tokens as u64,
            device_utilization: self.device.latest().utilization,
            power_watts: self.device.latest().power_watts,
        }
    }
}
