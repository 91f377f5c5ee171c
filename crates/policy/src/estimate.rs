//! What one target is expected to cost and how soon it is expected to answer, and how each strategy
//! compares two targets. Estimates read only the fleet snapshot and the request's facts.

use std::cmp::Ordering;

use crate::decision::Target;
use crate::facts::RequestFacts;
use crate::fleet::{FleetView, Route};
use crate::rules::{DEFAULT_OUTPUT_TOKENS, Strategy};

/// What one target is expected to cost and how fast it is expected to answer.
#[derive(Debug, Clone)]
pub(crate) struct Estimate {
    pub(crate) route: Route,
    pub(crate) ready: bool,
    pub(crate) cost_usd: f64,
    pub(crate) ttft_seconds: f64,
    pub(crate) total_seconds: f64,
    /// Requests per slot (or in flight, when slots are unknown): the tie-breaker that spreads load.
    pub(crate) occupancy: f64,
}

impl Estimate {
    pub(crate) fn of(target: &Target, fleet: &FleetView, facts: &RequestFacts<'_>) -> Self {
        let b = &fleet.backends[target.backend];
        let input = facts.prompt_tokens as f64;
        let output = f64::from(facts.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS));
        let cost_usd = b.prices(&target.model).map_or(0.0, |p| {
            (input * p.input_usd_per_mtok + output * p.output_usd_per_mtok) / 1e6
        });
        // Unmeasured backends are assumed quick, so that they get measured.
        let base = b.ttft_seconds.unwrap_or(0.0);
        let generation = b
            .tokens_per_second
            .filter(|r| *r > 0.0)
            .map_or(0.0, |r| output / r);
        let busy = u64::from(b.load.running + b.load.waiting).max(b.load.in_flight);
        let (occupancy, queued_rounds) = if b.load.slots > 0 {
            let slots = u64::from(b.load.slots);
            (busy as f64 / slots as f64, busy / slots)
        } else {
            (b.load.in_flight as f64, 0)
        };
        let ttft_seconds = base + queued_rounds as f64 * (base + generation);
        Self {
            route: b.route,
            ready: b.ready,
            cost_usd,
            ttft_seconds,
            total_seconds: ttft_seconds + generation,
            occupancy,
        }
    }
}

pub(crate) fn compare(strategy: Strategy, max_ttft: f64, a: &Estimate, b: &Estimate) -> Ordering {
    let by_cost = a.cost_usd.total_cmp(&b.cost_usd);
    let by_speed = a.total_seconds.total_cmp(&b.total_seconds);
    let by_load = a.occupancy.total_cmp(&b.occupancy);
    match strategy {
        Strategy::Cheapest => by_cost.then(by_speed).then(by_load),
        Strategy::Fastest => by_speed.then(by_load).then(by_cost),
        Strategy::CheapestWithinSlo => {
            let (ma, mb) = (a.ttft_seconds <= max_ttft, b.ttft_seconds <= max_ttft);
            mb.cmp(&ma).then(if ma && mb {
                by_cost.then(by_speed).then(by_load)
            } else {
                a.ttft_seconds
                    .total_cmp(&b.ttft_seconds)
                    .then(by_load)
                    .then(by_cost)
            })
        }
    }
}
