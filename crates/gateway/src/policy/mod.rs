//! The policy engine: named rules, evaluated in order, first match wins; virtual models served by a pool
//! of equivalent backends; tenant floors; and the strategies that order the backends a request may go to.
//!
//! [`Engine::decide`] is pure. It computes the request's level (findings, declared level, tenant floor),
//! finds the first rule that matches, turns its action into candidate targets, removes every target whose
//! clearance is below the level, and orders the rest: ready backends first, then the client's
//! `x-sluice-prefer` hint, then the strategy. The configuration is read and checked in [`config`].

pub mod config;
mod explain;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::http::HeaderName;
use sluice_sensitivity::Kind;

pub use explain::{Explanation, FindingAt, TargetAt, explain, string_paths, strings};

use crate::backend::Route;
use crate::error::ApiError;
use crate::level::Level;
use crate::route::{Decision, Excluded, FleetView, Policy, Refusal, RequestFacts, Target};

/// The rule name reported when no rule matched.
pub const DEFAULT_RULE: &str = "default";
/// The latency objective of `cheapest_within_slo` unless configured: time to first token.
pub const DEFAULT_MAX_TTFT_SECONDS: f64 = 2.0;
/// Output tokens assumed for pricing when the request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: u32 = 256;

/// How the backends a request may go to are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Lowest estimated price for this request (list prices times estimated tokens).
    Cheapest,
    /// Lowest expected latency (time to first token with queueing, plus generation).
    Fastest,
    /// The cheapest of those expected to meet the time-to-first-token objective; when none is, the
    /// fastest.
    #[default]
    CheapestWithinSlo,
}

impl Strategy {
    pub const NAMES: &'static str = "cheapest, fastest, cheapest_within_slo";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cheapest => "cheapest",
            Self::Fastest => "fastest",
            Self::CheapestWithinSlo => "cheapest_within_slo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cheapest" => Some(Self::Cheapest),
            "fastest" => Some(Self::Fastest),
            "cheapest_within_slo" => Some(Self::CheapestWithinSlo),
            _ => None,
        }
    }
}

/// A set of levels, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelSet(u8);

impl LevelSet {
    pub const ALL: Self = Self(0b1111);
    pub const NONE: Self = Self(0);

    fn bit(l: Level) -> u8 {
        1 << (l as u8)
    }

    pub fn of(levels: impl IntoIterator<Item = Level>) -> Self {
        Self(levels.into_iter().fold(0, |m, l| m | Self::bit(l)))
    }

    /// Every level from `min` to `max`, both included.
    pub fn between(min: Level, max: Level) -> Self {
        Self::of(Level::ALL.into_iter().filter(|l| (min..=max).contains(l)))
    }

    pub fn contains(self, l: Level) -> bool {
        self.0 & Self::bit(l) != 0
    }

    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_superset_of(self, other: Self) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn min(self) -> Option<Level> {
        Level::ALL.into_iter().find(|l| self.contains(*l))
    }

    pub fn max(self) -> Option<Level> {
        Level::ALL.into_iter().rev().find(|l| self.contains(*l))
    }

    pub fn iter(self) -> impl Iterator<Item = Level> {
        Level::ALL.into_iter().filter(move |l| self.contains(*l))
    }
}

/// A header a rule tests: present with one of the values (compared without surrounding spaces, case
/// insensitive), or present at all when `values` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTest {
    pub name: HeaderName,
    pub values: Option<Vec<String>>,
}

/// What a rule requires of a request; every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    pub levels: LevelSet,
    /// At least one finding of one of these kinds.
    pub findings: Option<Vec<Kind>>,
    pub tenants: Option<Vec<String>>,
    /// The model the client asked for (a virtual model's name included).
    pub models: Option<Vec<String>>,
    pub headers: Vec<HeaderTest>,
    /// Estimated prompt tokens, both bounds included.
    pub prompt_tokens: (u64, u64),
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            levels: LevelSet::ALL,
            findings: None,
            tenants: None,
            models: None,
            headers: Vec::new(),
            prompt_tokens: (0, u64::MAX),
        }
    }
}

impl Conditions {
    fn matches(&self, facts: &RequestFacts<'_>, level: Level) -> bool {
        self.levels.contains(level)
            && self
                .findings
                .as_ref()
                .is_none_or(|kinds| facts.scan.findings.iter().any(|f| kinds.contains(&f.kind)))
            && self
                .tenants
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == facts.tenant))
            && self
                .models
                .as_ref()
                .is_none_or(|m| m.contains(&facts.request.model))
            && self.headers.iter().all(|h| {
                facts.headers.get_all(&h.name).iter().any(|v| match &h.values {
                    None => true,
                    Some(values) => v
                        .to_str()
                        .is_ok_and(|v| values.iter().any(|want| want.eq_ignore_ascii_case(v.trim()))),
                })
            })
            && (self.prompt_tokens.0..=self.prompt_tokens.1).contains(&facts.prompt_tokens)
    }
}

/// Where a `route` action may send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Anywhere the model is served (the clearance check still applies).
    Any,
    /// The local worker pool.
    Local,
    /// Any cloud backend.
    Cloud,
    /// One backend, by name.
    Backend(String),
}

impl Place {
    fn admits(&self, name: &str, route: Route) -> bool {
        match self {
            Self::Any => true,
            Self::Local => route == Route::Local,
            Self::Cloud => route == Route::Cloud,
            Self::Backend(b) => b == name,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Local => f.write_str("local"),
            Self::Cloud => f.write_str("cloud"),
            Self::Backend(b) => f.write_str(b),
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Serve the requested model, only at these places.
    Route(Vec<Place>),
    /// Serve another model instead (a concrete or a virtual one), on `backend` when given; the response
    /// says so in `x-sluice-substituted-for`.
    Substitute { model: String, backend: Option<String> },
    /// Refuse, with this reason (403 `policy_rejected`).
    Reject(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub when: Conditions,
    pub then: Action,
    /// Orders the targets when several remain; the virtual model's or the policy's strategy otherwise.
    pub strategy: Option<Strategy>,
}

/// One backend and model serving a virtual model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub backend: String,
    pub model: String,
}

/// A model name clients may ask for that is served by any of several equivalent backends.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualModel {
    pub name: String,
    pub strategy: Strategy,
    pub max_ttft_seconds: f64,
    pub members: Vec<Member>,
}

/// The checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub rules: Vec<Rule>,
    pub models: Vec<VirtualModel>,
    /// Each tenant's lowest level.
    pub floors: BTreeMap<String, Level>,
    /// Orders the backends of a concrete model served by several.
    pub strategy: Strategy,
    pub max_ttft_seconds: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            models: Vec::new(),
            floors: BTreeMap::new(),
            strategy: Strategy::default(),
            max_ttft_seconds: DEFAULT_MAX_TTFT_SECONDS,
        }
    }
}

impl PolicyConfig {
    pub fn virtual_model(&self, name: &str) -> Option<&VirtualModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The level of a request from `tenant` before its findings: the tenant's floor.
    pub fn floor(&self, tenant: &str) -> Level {
        self.floors.get(tenant).copied().unwrap_or(Level::Public)
    }
}

/// The policy engine.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: PolicyConfig,
}

impl Engine {
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }
}

/// The candidates for one model before the clearance check, and how to order them.
struct Candidates {
    targets: Vec<Target>,
    strategy: Strategy,
    max_ttft_seconds: f64,
}

impl Engine {
    /// Every place `model` could be served: a virtual model's members, or the backends that list it.
    /// `fallback_backend` is added for a concrete model when given (a substitute's local pool may not
    /// have reported its models yet).
    fn candidates(
        &self,
        model: &str,
        fleet: &FleetView,
        fallback_backend: Option<&str>,
        rule_strategy: Option<Strategy>,
    ) -> Candidates {
        if let Some(v) = self.config.virtual_model(model) {
            let mut targets: Vec<Target> = Vec::with_capacity(v.members.len());
            for m in &v.members {
                if let Some(backend) = fleet.index_of(&m.backend) {
                    let t = Target {
                        backend,
                        model: m.model.clone(),
                    };
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
            }
            return Candidates {
                targets,
                strategy: rule_strategy.unwrap_or(v.strategy),
                max_ttft_seconds: v.max_ttft_seconds,
            };
        }
        let mut targets: Vec<Target> = fleet
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.serves(model))
            .map(|(i, _)| Target {
                backend: i,
                model: model.to_owned(),
            })
            .collect();
        if let Some(i) = fallback_backend.and_then(|b| fleet.index_of(b))
            && !targets.iter().any(|t| t.backend == i)
        {
            targets.push(Target {
                backend: i,
                model: model.to_owned(),
            });
        }
        Candidates {
            targets,
            strategy: rule_strategy.unwrap_or(self.config.strategy),
            max_ttft_seconds: self.config.max_ttft_seconds,
        }
    }
}

impl Policy for Engine {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &FleetView) -> Result<Decision, Refusal> {
        let level = facts.level().max(self.config.floor(facts.tenant));
        let requested = facts.request.model.as_str();
        let rule = self.config.rules.iter().find(|r| r.when.matches(facts, level));
        let rule_name = rule.map_or(DEFAULT_RULE, |r| r.name.as_str());
        let refuse = |error: ApiError, excluded: Vec<Excluded>| Refusal {
            error: Box::new(error),
            rule: Some(rule_name.to_owned()),
            level: Some(level),
            excluded,
        };

        let mut places: &[Place] = &[];
        let mut substituted_for = None;
        let candidates = match rule.map(|r| (&r.then, r.strategy)) {
            Some((Action::Reject(reason), _)) => {
                return Err(refuse(ApiError::policy_rejected(rule_name, reason), Vec::new()));
            }
            Some((Action::Substitute { model, backend }, strategy)) => {
                if model != requested {
                    substituted_for = Some(requested.to_owned());
                }
                let local = fleet
                    .backends
                    .iter()
                    .find(|b| b.route == Route::Local)
                    .map(|b| b.name.as_str());
                match backend {
                    Some(b) if self.config.virtual_model(model).is_none() => Candidates {
                        targets: fleet
                            .index_of(b)
                            .map(|i| Target {
                                backend: i,
                                model: model.clone(),
                            })
                            .into_iter()
                            .collect(),
                        strategy: strategy.unwrap_or(self.config.strategy),
                        max_ttft_seconds: self.config.max_ttft_seconds,
                    },
                    _ => self.candidates(model, fleet, local, strategy),
                }
            }
            Some((Action::Route(to), strategy)) => {
                places = to;
                self.candidates(requested, fleet, None, strategy)
            }
            None => self.candidates(requested, fleet, None, None),
        };
        let served = candidates
            .targets
            .first()
            .map_or_else(|| requested.to_owned(), |t| t.model.clone());
        if candidates.targets.is_empty() {
            return Err(refuse(
                if substituted_for.is_some() {
                    ApiError::no_compliant_backend(format!(
                        "Rule `{rule_name}` serves this request with `{served}`, which no backend serves."
                    ))
                } else {
                    model_not_found(requested, fleet, &self.config)
                },
                Vec::new(),
            ));
        }

        // The rule's places, then the clearances: what is left is where the request may go. Where the
        // requested model lives is ruled out by a substitution, and said so.
        let mut excluded = Vec::new();
        if substituted_for.is_some() {
            for t in self.candidates(requested, fleet, None, None).targets {
                excluded.push(Excluded {
                    backend: fleet.backends[t.backend].name.clone(),
                    model: t.model,
                    why: format!("rule `{rule_name}` serves the request with `{served}` instead"),
                });
            }
        }
        let mut allowed = Vec::new();
        for t in candidates.targets {
            let b = &fleet.backends[t.backend];
            let why = if !places.is_empty() && !places.iter().any(|p| p.admits(&b.name, b.route)) {
                Some(format!(
                    "rule `{rule_name}` sends it only to {}",
                    join(places.iter().map(ToString::to_string))
                ))
            } else if b.clearance < level {
                Some(format!(
                    "cleared for {} data, the request is {level}",
                    b.clearance
                ))
            } else {
                None
            };
            match why {
                Some(why) => excluded.push(Excluded {
                    backend: b.name.clone(),
                    model: t.model,
                    why,
                }),
                None => allowed.push(t),
            }
        }
        if allowed.is_empty() {
            let message = format!(
                "The request is {level} (rule `{rule_name}`); nowhere that serves `{served}` may take it: {}.",
                join(excluded.iter().map(|e| format!("{}: {}", e.backend, e.why)))
            );
            return Err(refuse(ApiError::no_compliant_backend(message), excluded));
        }

        let estimates: Vec<Estimate> = allowed.iter().map(|t| Estimate::of(t, fleet, facts)).collect();
        let mut order: Vec<usize> = (0..allowed.len()).collect();
        order.sort_by(|&a, &b| {
            let (ea, eb) = (&estimates[a], &estimates[b]);
            let preferred = |e: &Estimate| facts.prefer.is_none_or(|p| p == e.route);
            eb.ready
                .cmp(&ea.ready)
                .then(preferred(eb).cmp(&preferred(ea)))
                .then(compare(candidates.strategy, candidates.max_ttft_seconds, ea, eb))
                .then(a.cmp(&b))
        });

        let first = &estimates[order[0]];
        let mut reason = match rule {
            Some(_) => format!("Rule `{rule_name}` matched at level {level}"),
            None => format!("No rule matched; the request is {level} and goes where its model is served"),
        };
        if let Some(from) = &substituted_for {
            let _ = write!(reason, "; `{served}` substitutes for `{from}`");
        }
        let _ = write!(
            reason,
            "; {} of {} allowed target(s), ordered by {}",
            fleet.backends[allowed[order[0]].backend].name,
            allowed.len(),
            candidates.strategy.as_str()
        );
        if candidates.strategy == Strategy::CheapestWithinSlo {
            let _ = write!(
                reason,
                " (time to first token at most {} s)",
                candidates.max_ttft_seconds
            );
        }
        let _ = write!(
            reason,
            ": estimated {:.6} USD, first token in {:.3} s",
            first.cost_usd, first.ttft_seconds
        );
        if !first.ready {
            reason.push_str(", although no allowed backend is ready");
        }
        if let Some(p) = facts.prefer {
            let _ = write!(
                reason,
                "; the hint to prefer {} was {}",
                p.as_str(),
                if first.route == p {
                    "followed"
                } else {
                    "not followed"
                }
            );
        }
        if !excluded.is_empty() {
            let _ = write!(
                reason,
                "; ruled out: {}",
                join(excluded.iter().map(|e| format!("{} ({})", e.backend, e.why)))
            );
        }

        let mut slots: Vec<Option<Target>> = allowed.into_iter().map(Some).collect();
        Ok(Decision {
            targets: order.iter().filter_map(|&i| slots[i].take()).collect(),
            rule: rule_name.to_owned(),
            level,
            substituted_for,
            excluded,
            reason,
        })
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn model_not_found(model: &str, fleet: &FleetView, policy: &PolicyConfig) -> ApiError {
    let mut known: Vec<&str> = fleet
        .backends
        .iter()
        .flat_map(|b| b.models.iter().map(|m| m.id.as_str()))
        .chain(policy.models.iter().map(|m| m.name.as_str()))
        .collect();
    known.sort_unstable();
    known.dedup();
    let mut e = ApiError::model_not_found(model);
    if !known.is_empty() {
        let _ = write!(e.message, " Models served now: {}.", known.join(", "));
    }
    e
}

/// What one target is expected to cost and how fast it is expected to answer.
#[derive(Debug, Clone)]
struct Estimate {
    route: Route,
    ready: bool,
    cost_usd: f64,
    ttft_seconds: f64,
    total_seconds: f64,
    /// Requests per slot (or in flight, when slots are unknown): the tie-breaker that spreads load.
    occupancy: f64,
}

impl Estimate {
    fn of(target: &Target, fleet: &FleetView, facts: &RequestFacts<'_>) -> Self {
        let b = &fleet.backends[target.backend];
        let input = facts.prompt_tokens as f64;
        let output = f64::from(facts.request.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS));
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

fn compare(strategy: Strategy, max_ttft: f64, a: &Estimate, b: &Estimate) -> Ordering {
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

#[cfg(test)]
mod tests;
