//! The policy engine: [`PolicyEngine::decide`] finds the first rule that matches, turns its action into
//! candidate targets (a virtual model's members, a substitute, the backends of the requested model),
//! removes every target cleared below the request's level or outside the rule's places, and orders the
//! rest: ready backends first, then the client's `x-sluice-prefer` hint, then the strategy.
//! Pure: no IO, no waiting, no clock; refusals are domain values, never HTTP errors.

use std::fmt::Write as _;

use crate::decision::{Decision, Excluded, Policy, Refusal, RefusalReason, Target};
use crate::estimate::{Estimate, compare};
use crate::facts::RequestFacts;
use crate::fleet::{FleetView, Route};
use crate::rules::{Action, DEFAULT_RULE, Place, PolicyConfig, Strategy};

/// The policy engine.
#[derive(Debug, Clone, Default)]
pub struct PolicyEngine {
    pub config: PolicyConfig,
}

impl PolicyEngine {
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

impl PolicyEngine {
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

impl Policy for PolicyEngine {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &FleetView) -> Result<Decision, Refusal> {
        let level = facts.level().max(self.config.floor(facts.tenant));
        let requested = facts.model;
        let rule = self.config.rules.iter().find(|r| r.when.matches(facts, level));
        let rule_name = rule.map_or(DEFAULT_RULE, |r| r.name.as_str());
        let refuse = |reason: RefusalReason, excluded: Vec<Excluded>| Refusal {
            reason,
            rule: Some(rule_name.to_owned()),
            level: Some(level),
            excluded,
        };

        let mut places: &[Place] = &[];
        let mut substituted_for = None;
        let candidates = match rule.map(|r| (&r.then, r.strategy)) {
            Some((Action::Reject(reason), _)) => {
                return Err(refuse(
                    RefusalReason::Rejected {
                        rule: rule_name.to_owned(),
                        reason: reason.clone(),
                    },
                    Vec::new(),
                ));
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
                    RefusalReason::NoCompliantBackend(format!(
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
            return Err(refuse(RefusalReason::NoCompliantBackend(message), excluded));
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

fn model_not_found(model: &str, fleet: &FleetView, policy: &PolicyConfig) -> RefusalReason {
    let mut served: Vec<String> = fleet
        .backends
        .iter()
        .flat_map(|b| b.models.iter().map(|m| m.id.clone()))
        .chain(policy.models.iter().map(|m| m.name.clone()))
        .collect();
    served.sort_unstable();
    served.dedup();
    RefusalReason::ModelNotFound {
        model: model.to_owned(),
        served,
    }
}
