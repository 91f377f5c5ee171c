//! The routing seam: a [`Policy`] turns the facts of a request and a snapshot of the fleet
//! ([`FleetView`]) into a [`Decision`]: the backends the request may go to, in order of preference, under
//! which rule, at which sensitivity level. Policies are pure: no IO, no waiting, no clock. The dispatcher in
//! `server` enforces the clearance invariant on whatever a policy returns.

use std::sync::Arc;

use axum::http::HeaderMap;
use sluice_sensitivity::{Scan, Scanner};

use crate::api::ChatRequest;
use crate::backend::{Backend, ModelCard, Prices, Route};
use crate::error::ApiError;
use crate::level::Level;
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

impl Fleet {
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
        FleetView { backends }
    }
}

/// A backend's load, summed over its ready members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests this gateway has sent and not yet seen end.
    pub in_flight: u64,
    /// From the workers' own load reports (0 for clouds).
    pub running: u32,
    pub waiting: u32,
    /// Requests the members run at once; 0 when unknown (clouds).
    pub slots: u32,
}

/// One backend as a policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    pub name: String,
    pub route: Route,
    pub clearance: Level,
    pub models: Vec<ModelCard>,
    /// At least one member can take a request now.
    pub ready: bool,
    pub load: Load,
    /// Observed time to first token (mean of the members' moving averages), when measured.
    pub ttft_seconds: Option<f64>,
    /// Observed generation speed after the first token, when measured.
    pub tokens_per_second: Option<f64>,
}

impl BackendView {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    pub fn prices(&self, model: &str) -> Option<Prices> {
        self.models.iter().find(|m| m.id == model)?.prices
    }
}

/// A snapshot of the fleet, indexed like [`Fleet::backends`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    pub backends: Vec<BackendView>,
}

impl FleetView {
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.name == name)
    }
}

/// What the policy knows of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub tenant: &'a str,
    pub request: &'a ChatRequest,
    /// The request's headers (rules may test them).
    pub headers: &'a HeaderMap,
    /// The level the client declared in `x-sluice-sensitivity`.
    pub declared: Option<Level>,
    /// What the scanner found in every string of the request (an incomplete scan is `restricted`).
    pub scan: &'a Scan,
    /// The client's `x-sluice-prefer` hint.
    pub prefer: Option<Route>,
    /// The estimated prompt size in tokens.
    pub prompt_tokens: u64,
}

impl RequestFacts<'_> {
    /// The level the request has before any tenant floor: the highest of what was found and what the
    /// client declared (a declaration can raise the level, never lower it). A policy may raise it further;
    /// the dispatcher never lets it go lower.
    pub fn level(&self) -> Level {
        self.scan.level.max(self.declared.unwrap_or(Level::Public))
    }
}

/// What a client may say about routing in its headers: the level it declares (`x-sluice-sensitivity`) and
/// the route it prefers (`x-sluice-prefer`); a value that is neither is its error.
pub fn client_hints(headers: &HeaderMap) -> Result<(Option<Level>, Option<Route>), ApiError> {
    let declared = match headers.get(&crate::server::X_SENSITIVITY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<Level>().ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_sensitivity",
                        "x-sluice-sensitivity must be public, internal, confidential or restricted.",
                    )
                })?,
        ),
    };
    let prefer = match headers
        .get(&crate::server::X_PREFER)
        .map(|v| v.to_str().map(str::trim))
    {
        None => None,
        Some(Ok("local")) => Some(Route::Local),
        Some(Ok("cloud")) => Some(Route::Cloud),
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_prefer",
                "x-sluice-prefer must be local or cloud.",
            ));
        }
    };
    Ok((declared, prefer))
}

/// Scans every string of a request, object keys included: whatever reaches a backend has been seen.
/// Returns the estimated prompt tokens (from the same strings) and what was found.
pub fn scan_request(scanner: &Scanner, request: &ChatRequest) -> (u64, Scan) {
    let texts = crate::policy::strings(&request.body);
    let bytes = texts.iter().map(|t| t.len()).sum();
    (estimate_tokens(bytes), scanner.scan_all(texts))
}

/// The estimated number of tokens in some text: about four bytes of English per token, rounded up. Good
/// enough to tell a short prompt from a huge one before anything is tokenised.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// A place a request may be sent: a backend, and the model it is asked for there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into [`Fleet::backends`].
    pub backend: usize,
    pub model: String,
}

/// A backend a decision ruled out, and why (for explanations).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Excluded {
    pub backend: String,
    pub model: String,
    pub why: String,
}

/// Where a request goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where it may go, best first; the dispatcher falls back along this list and nowhere else.
    pub targets: Vec<Target>,
    /// The rule that decided (`x-sluice-rule`).
    pub rule: String,
    /// The request's sensitivity (`x-sluice-sensitivity`), tenant floor included.
    pub level: Level,
    /// The model the client asked for, when a rule substituted another.
    pub substituted_for: Option<String>,
    /// Backends that serve the model but were ruled out: when the targets all fail, the request had
    /// nowhere compliant to go, not merely nowhere up.
    pub excluded: Vec<Excluded>,
    /// Why, in a sentence (for explanations).
    pub reason: String,
}

/// A request the policy will not send anywhere: the client's error, and what the policy had decided
/// by then (reported in the routing headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: Box<ApiError>,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub excluded: Vec<Excluded>,
}

/// Decides where requests go.
pub trait Policy: Send + Sync {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &FleetView) -> Result<Decision, Refusal>;
}
