//! The fleet: every backend requests can go to, in the one order the configuration gives them
//! ([`crate::config::BackendSpec`]: the local pool first, then the clouds), started from the
//! configuration, and the snapshot of it ([`FleetView`]) the policy decides on, live ([`Fleet::view`])
//! or as the configuration describes it ([`offline_view`], for `sluice policy explain`).
//! It never sends requests (the dispatcher does) and never decides (the policy does).

use std::sync::Arc;

use sluice_policy::{Action, BackendView, FleetView, Load, ModelCard, Route};

use crate::backend::Backend;
use crate::backend::cloud::{CloudBackend, CloudError};
use crate::backend::local::{PoolError, WorkerPool};
use crate::config::{BackendSpec, GatewayConfig};
use crate::stats::Stats;

/// Every backend requests can go to, in configuration order (the local pool first).
#[derive(Clone, Default)]
pub struct Fleet {
    pub backends: Vec<Arc<dyn Backend>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.backends.iter().map(|b| b.name()))
            .finish()
    }
}

/// Why a backend could not be started.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Pool(#[from] PoolError),
    #[error("{0}")]
    Cloud(#[from] CloudError),
}

impl Fleet {
    /// Starts the configured backends in order, the local pool following `discovery` for more workers
    /// when given.
    pub fn start(
        config: &GatewayConfig,
        mut discovery: Option<sluice_discovery::Discovery>,
    ) -> Result<Self, FleetError> {
        let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
        for spec in config.backends() {
            match spec {
                BackendSpec::Local(pool) => {
                    let pool = Arc::new(WorkerPool::start(pool.clone())?);
                    if let Some(d) = discovery.take() {
                        pool.follow(d);
                    }
                    backends.push(pool);
                }
                BackendSpec::Cloud(cloud) => backends.push(Arc::new(CloudBackend::new(cloud.clone())?)),
            }
        }
        Ok(Self { backends })
    }

    /// What a policy may know of the fleet right now: each backend's models, prices, readiness, load and
    /// observed latency.
    pub fn view(&self, stats: &Stats) -> FleetView {
        let backends = self
            .backends
            .iter()
            .map(|b| {
                let members = b.members();
                let mut load = Load::default();
                let (mut ttft, mut ttft_n, mut rate, mut rate_n) = (0.0, 0u32, 0.0, 0u32);
                for m in members.iter().filter(|m| m.ready) {
                    load.in_flight += m.in_flight;
                    load.running += m.running.unwrap_or(0);
                    load.waiting += m.waiting.unwrap_or(0);
                    load.slots += m.slots.unwrap_or(0);
                    let (t, r) = stats.latency(&m.name);
                    if let Some(t) = t {
                        ttft += t;
                        ttft_n += 1;
                    }
                    if let Some(r) = r {
                        rate += r;
                        rate_n += 1;
                    }
                }
                BackendView {
                    name: b.name().to_owned(),
                    route: b.route(),
                    clearance: b.clearance(),
                    models: b.models(),
                    ready: b.ready(),
                    load,
                    ttft_seconds: (ttft_n > 0).then(|| ttft / f64::from(ttft_n)),
                    tokens_per_second: (rate_n > 0).then(|| rate / f64::from(rate_n)),
                }
            })
            .collect();
        FleetView {
            backends,
            over_budget: false,
        }
    }
}

/// The fleet as a configuration describes it, for explaining decisions without contacting anything:
/// every backend up and idle unless named in `down`, the local pool serving `local_models` (its workers
/// say what they serve only when they run).
pub fn offline_view(config: &GatewayConfig, local_models: &[String], down: &[String]) -> FleetView {
    let view = |name: &str, route, clearance, models| BackendView {
        name: name.to_owned(),
        route,
        clearance,
        models,
        ready: !down.iter().any(|d| d == name),
        load: Load::default(),
        ttft_seconds: None,
        tokens_per_second: None,
    };
    let backends = config
        .backends()
        .map(|spec| match spec {
            BackendSpec::Local(l) => {
                let models = local_models
                    .iter()
                    .map(|m| ModelCard {
                        kind: Default::default(),
                        id: m.clone(),
                        prices: None,
                    })
                    .collect();
                view(&l.name, Route::Local, l.clearance, models)
            }
            BackendSpec::Cloud(c) => {
                let models = c
                    .models
                    .iter()
                    .map(|m| ModelCard {
                        kind: Default::default(),
                        id: m.id.clone(),
                        prices: Some(m.prices),
                    })
                    .collect();
                view(&c.name, Route::Cloud, c.clearance, models)
            }
        })
        .collect();
    FleetView {
        backends,
        over_budget: false,
    }
}

/// What the local pool is assumed to serve when no `--local-model` is given: every model the policy
/// sends there, and the requested model when no cloud and no virtual model has that name.
pub fn assumed_local_models(config: &GatewayConfig, requested: &str) -> Vec<String> {
    let Some(local) = config.local.as_ref().filter(|l| l.has_members()) else {
        return Vec::new();
    };
    let cloud = |m: &str| config.clouds.iter().any(|c| c.models.iter().any(|x| x.id == m));
    let mut models: Vec<String> = Vec::new();
    for r in &config.policy.rules {
        let action = match &r.then {
            Action::Redact(redact) => &*redact.fallback,
            other => other,
        };
        if let Action::Substitute { model, backend } = action
            && backend.as_ref().is_none_or(|b| *b == local.name)
            && config.policy.virtual_model(model).is_none()
            && !cloud(model)
        {
            models.push(model.clone());
        }
    }
    for v in &config.policy.models {
        models.extend(
            v.members
                .iter()
                .filter(|m| m.backend == local.name)
                .map(|m| m.model.clone()),
        );
    }
    if !cloud(requested) && config.policy.virtual_model(requested).is_none() {
        models.push(requested.to_owned());
    }
    models.sort();
    models.dedup();
    models
}
