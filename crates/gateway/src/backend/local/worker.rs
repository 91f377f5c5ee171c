//! One worker as the pool sees it: its channel, the state its monitor keeps ([`WorkerState`]: health,
//! load, models), what Kubernetes says of it (admission), its readiness, its load score, its circuit
//! breaker, its busy-time prices and its status for `/admin`.
//!
//! It never picks between workers (the pool does) and never speaks gRPC itself (the monitor and the
//! wire mapping do).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_proto::v1;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use super::config::{PoolConfig, WorkerAddress};
use crate::backend::{MemberStatus, Prices};

#[derive(Debug, Default)]
pub(super) struct WorkerState {
    /// The monitor is connected and both watches are open.
    pub(super) connected: bool,
    pub(super) health: Option<ServingStatus>,
    pub(super) load: Option<v1::LoadReport>,
    /// Models from the last `GetInfo`; kept while the worker is away, so its models stay known.
    pub(super) models: Vec<String>,
    /// Those of `models` that are embedding models.
    pub(super) embedding_models: Vec<String>,
    failures: u32,
    ejected_until: Option<Instant>,
    pub(super) last_error: Option<String>,
    /// The energy the worker's device reported using (for nodes charged at their measured power).
    pub(super) power: PowerMeter,
}

/// Integrates the power draw the load reports carry: each reading holds until the next one.
#[derive(Debug, Default)]
pub(super) struct PowerMeter {
    joules: f64,
    seconds: f64,
    last: Option<(Instant, f64)>,
}

impl PowerMeter {
    /// Takes a report's reading (`None`: the device reported no power this time).
    pub(super) fn record(&mut self, watts: Option<f64>, now: Instant) {
        if let Some((then, w)) = self.last {
            let dt = now.saturating_duration_since(then).as_secs_f64();
            self.joules += w * dt;
            self.seconds += dt;
        }
        self.last = watts.filter(|w| w.is_finite() && *w >= 0.0).map(|w| (now, w));
    }

    /// The latest reading.
    pub(super) fn current(&self) -> Option<f64> {
        self.last.map(|(_, w)| w)
    }

    /// The average draw over the readings so far (the latest one until a second arrives).
    pub(super) fn average(&self) -> Option<f64> {
        match self.seconds > 0.0 {
            true => Some(self.joules / self.seconds),
            false => self.current(),
        }
    }
}

pub(super) struct Worker {
    pub(super) name: Arc<str>,
    pub(super) uri: String,
    pub(super) channel: Channel,
    state: Mutex<WorkerState>,
    pub(super) in_flight: Arc<AtomicU64>,
    cost: crate::cost::NodeCost,
    /// Found through Kubernetes (else configured).
    pub(super) discovered: bool,
    /// What Kubernetes says of it ([`ADMITTED`], [`NOT_SERVING`], [`TERMINATING`]); configured workers
    /// stay admitted.
    pub(super) admission: AtomicU8,
    /// When it joined the pool (its node cost accrues from then).
    joined: std::time::Instant,
}

const ADMITTED: u8 = 0;
const NOT_SERVING: u8 = 1;
const TERMINATING: u8 = 2;

pub(super) fn admission_of(state: sluice_discovery::EndpointState) -> u8 {
    match state {
        sluice_discovery::EndpointState::Ready => ADMITTED,
        sluice_discovery::EndpointState::NotServing => NOT_SERVING,
        sluice_discovery::EndpointState::Terminating => TERMINATING,
    }
}

impl Worker {
    /// A worker at `w`'s address, reached through `channel`, admitted and not yet connected.
    pub(super) fn new(w: &WorkerAddress, channel: Channel, discovered: bool) -> Self {
        Self {
            name: w.name.as_str().into(),
            uri: w.uri.clone(),
            channel,
            state: Mutex::new(WorkerState::default()),
            in_flight: Arc::new(AtomicU64::new(0)),
            cost: w.cost,
            discovered,
            admission: AtomicU8::new(ADMITTED),
            joined: std::time::Instant::now(),
        }
    }

    /// What its node costs (at its average measured draw, for nodes charged so), and since when it is in
    /// the pool.
    pub(super) fn stint(&self) -> (crate::cost::NodeCost, std::time::Instant) {
        let average = self.state().power.average();
        (self.cost.with_measured_power(average), self.joined)
    }

    /// What a token costs on this node while it is busy: its hourly cost over its reported prefill and
    /// decode rates, per million tokens. `None` until it has reported both.
    pub(super) fn busy_prices(&self, s: &WorkerState) -> Option<Prices> {
        let l = s.load.as_ref()?;
        let (p, d) = (l.prompt_tokens_per_second, l.decode_tokens_per_second);
        let cost = self.cost.with_measured_power(s.power.current());
        let per_second = cost.usd_per_hour() / 3600.0;
        (p > 0.0 && d > 0.0 && p.is_finite() && d.is_finite()).then(|| Prices {
            input_usd_per_mtok: per_second / p * 1e6,
            output_usd_per_mtok: per_second / d * 1e6,
        })
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, WorkerState> {
        // A panic while the lock was held cannot leave this plain data inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ready for a request now: admitted by Kubernetes (when found there), connected, serving,
    /// reporting ready, not ejected.
    pub(super) fn ready(&self, now: Instant) -> bool {
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
    pub(super) fn load_score(&self) -> f64 {
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

    pub(super) fn record_success(&self) {
        let mut s = self.state();
        s.failures = 0;
    }

    /// Counts a failure; returns true when it ejects the worker.
    pub(super) fn record_failure(&self, error: &str, config: &PoolConfig) -> bool {
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

    pub(super) fn status(&self, now: Instant) -> MemberStatus {
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
            node: Some((self.cost.with_measured_power(s.power.average()), self.joined)),
        }
    }
}
