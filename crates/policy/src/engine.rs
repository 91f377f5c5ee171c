//! The policy engine: [`PolicyEngine::decide`] finds the first rule that matches, turns its action into
//! candidate targets (a virtual model's members, a substitute, the backends of the requested model),
//! removes every target cleared below the request's level or outside the rule's places, and orders the
//! rest: ready backends first, then the client's `x-sluice-prefer` hint, then the strategy.
//! Pure: no IO, no waiting, no clock; refusals are domain values, never HTTP errors.

use std::fmt::Write as _;

use sluice_sensitivity::{Kind, Level};

use crate::decision::{Decision, Excluded, Policy, Redaction, Refusal, RefusalReason, Target};
use crate::estimate::{Estimate, compare};
use crate::facts::RequestFacts;
use crate::fleet::{FleetView, Route};
use crate::rules::{Action, DEFAULT_RULE, Place, PolicyConfig, Redact, Strategy};

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
        let rule = self.config.rules.iter().find(|r| r.when.matches(facts, level));
        let on = On {
            facts,
            fleet,
            level,
            clear_for: level,
            rule: rule.map(|r| r.name.as_str()),
            strategy: rule.and_then(|r| r.strategy),
        };
        let decided = match rule.map(|r| &r.then) {
            Some(Action::Redact(r)) => self.redact(&on, r),
            action => self.act(&on, action),
        };
        self.settle(&on, decided, rule.and_then(|r| r.over_budget.as_ref()))
    }
}

mod fallback;

/// One request, as an action is carried out for it.
struct On<'a, 'f> {
    facts: &'a RequestFacts<'f>,
    fleet: &'a FleetView,
    /// The request's level.
    level: Level,
    /// The level targets must be cleared for: the request's, or its redacted form's.
    clear_for: Level,
    /// The rule that matched.
    rule: Option<&'a str>,
    strategy: Option<Strategy>,
}

impl On<'_, '_> {
    fn rule_name(&self) -> &str {
        self.rule.unwrap_or(DEFAULT_RULE)
    }

    fn refuse(&self, reason: RefusalReason, excluded: Vec<Excluded>) -> Refusal {
        Refusal {
            reason,
            rule: Some(self.rule_name().to_owned()),
            level: Some(self.level),
            excluded,
            unredactable: None,
        }
    }
}

impl PolicyEngine {
    /// A `redact` rule: the redacted route when replacing the rule's kinds leaves the request at or below
    /// the clearance of somewhere it may go, the rule's fallback otherwise.
    fn redact(&self, on: &On<'_, '_>, r: &Redact) -> Result<Decision, Refusal> {
        let facts = on.facts;
        let fallback = self.act(on, Some(&r.fallback));
        let floor = self.config.floor(facts.tenant);
        // What stays once the rule's kinds are replaced: the declared level and the tenant's floor (no
        // replacement lowers those), what the scan could not read, and every finding of another kind.
        let mut residual = facts.declared.unwrap_or(Level::Public).max(floor);
        let mut kept: Vec<(Level, String)> = Vec::new();
        if let Some(d) = facts.declared {
            kept.push((d, format!("it is declared {d}")));
        }
        if floor > Level::Public {
            kept.push((floor, format!("its tenant's floor is {floor}")));
        }
        if !facts.scan.complete {
            residual = Level::Restricted;
            kept.push((Level::Restricted, "the scan could not read all of it".to_owned()));
        }
        let replaces = |k: Kind| r.kinds.contains(&k) && !self.config.never_redact.contains(&k);
        let mut replaced = false;
        let mut kept_kinds: Vec<Kind> = Vec::new();
        for f in &facts.scan.findings {
            if replaces(f.kind) {
                replaced = true;
            } else {
                residual = residual.max(f.level);
                if !kept_kinds.contains(&f.kind) {
                    kept_kinds.push(f.kind);
                    kept.push((
                        f.level,
                        format!("{} ({}), which the rule does not replace", f.kind, f.level),
                    ));
                }
            }
        }
        // A combination of kinds (a name with a diagnosis) stays met while any of its findings stays: its
        // level is kept unless every finding is replaced. The gateway's scan of the redacted form is exact.
        if !kept_kinds.is_empty() {
            for c in &facts.scan.combined {
                residual = residual.max(c.level);
                kept.push((c.level, format!("the combination {} ({})", c.name, c.level)));
            }
        }
        // With nothing to replace, the request goes as it is, at its own level.
        let clear_for = if replaced { residual } else { on.level };
        let routed = self.act(&On { clear_for, ..*on }, Some(&Action::Route(r.to.clone())));
        match routed {
            Ok(mut d) if replaced => {
                d.reason = format!(
                    "{}; sent with its {} replaced by placeholders, which should leave it {residual} (the gateway scans the redacted form to prove it)",
                    d.reason,
                    join(
                        r.kinds
                            .iter()
                            .filter(|k| facts.scan.findings.iter().any(|f| f.kind == **k))
                            .map(ToString::to_string)
                    )
                );
                d.redaction = Some(Redaction {
                    kinds: r.kinds.clone(),
                    level: residual,
                    fallback: Box::new(fallback),
                });
                Ok(d)
            }
            Ok(d) => Ok(d),
            Err(refused) => {
                let cleared = refused.excluded.iter().filter_map(|e| {
                    on.fleet
                        .backends
                        .iter()
                        .find(|b| b.name == e.backend)
                        .map(|b| b.clearance)
                });
                let best = cleared.max().unwrap_or(Level::Public);
                let why = match kept
                    .iter()
                    .filter(|(l, _)| *l > best)
                    .map(|(_, w)| w.clone())
                    .collect::<Vec<_>>()
                {
                    w if w.is_empty() => match &refused.reason {
                        RefusalReason::NoCompliantBackend(m) => m.clone(),
                        RefusalReason::ModelNotFound { model, .. } => {
                            format!("no backend it may go to serves `{model}`")
                        }
                        RefusalReason::Rejected { reason, .. } | RefusalReason::OverBudget { reason, .. } => {
                            reason.clone()
                        }
                    },
                    w => format!("once replaced it is still {residual}: {}", w.join("; ")),
                };
                let why = format!("rule `{}` cannot redact this request: {why}", on.rule_name());
                match fallback {
                    Ok(mut d) => {
                        d.reason = format!("{why}; its fallback: {}", d.reason);
                        d.unredactable = Some(Box::new(why));
                        Ok(d)
                    }
                    Err(mut refusal) => {
                        if let RefusalReason::Rejected { reason, .. } = &mut refusal.reason {
                            reason.push_str(&format!(" ({why})"));
                        }
                        refusal.unredactable = Some(Box::new(why));
                        Err(refusal)
                    }
                }
            }
        }
    }

    /// A request that would reach a cloud while its tenant's cloud budget is spent: the rule's (or the
    /// policy's) `over_budget` action, under the rule's name with `:over_budget`, and only ever to local
    /// backends; a rejection is `budget_exceeded`.
    fn over_budget(&self, on: &On<'_, '_>, action: &Action) -> Result<Decision, Refusal> {
        let name = format!("{}:over_budget", on.rule_name());
        let on = On {
            rule: Some(&name),
            ..*on
        };
        let spent = "the tenant's cloud budget for the period is spent";
        if let Action::Reject(reason) = action {
            return Err(on.refuse(
                RefusalReason::OverBudget {
                    rule: name.clone(),
                    reason: reason.clone(),
                },
                Vec::new(),
            ));
        }
        let mut d = self.act(&on, Some(action))?;
        let fleet = on.fleet;
        let (local, cloud): (Vec<Target>, Vec<Target>) = d.targets.drain(..).partition(|t| {
            fleet
                .backends
                .get(t.backend)
                .is_some_and(|b| b.route == Route::Local)
        });
        d.excluded.extend(cloud.into_iter().filter_map(|t| {
            Some(Excluded {
                backend: fleet.backends.get(t.backend)?.name.clone(),
                model: t.model,
                why: spent.to_owned(),
            })
        }));
        if local.is_empty() {
            return Err(on.refuse(
                RefusalReason::NoCompliantBackend(format!(
                    "The tenant's cloud budget for the period is spent, and rule `{name}` has no local backend for this request."
                )),
                d.excluded,
            ));
        }
        d.targets = local;
        d.reason = format!("{spent}, so {}", d.reason);
        Ok(d)
    }

    /// Carries out a route, substitute or reject action (or the default when no rule matched).
    fn act(&self, on: &On<'_, '_>, action: Option<&Action>) -> Result<Decision, Refusal> {
        let (facts, fleet, level) = (on.facts, on.fleet, on.level);
        let requested = facts.model;
        let rule_name = on.rule_name();
        let mut places: &[Place] = &[];
        let mut substituted_for = None;
        let candidates = match action {
            Some(Action::Reject(reason)) => {
                return Err(on.refuse(
                    RefusalReason::Rejected {
                        rule: rule_name.to_owned(),
                        reason: reason.clone(),
                    },
                    Vec::new(),
                ));
            }
            // A fallback never redacts (the configuration says so); were it to, nothing is sent.
            Some(Action::Redact(_)) => {
                return Err(on.refuse(
                    RefusalReason::NoCompliantBackend(format!(
                        "Rule `{rule_name}` has no action it can carry out."
                    )),
                    Vec::new(),
                ));
            }
            Some(Action::Substitute { model, backend }) => {
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
                        strategy: on.strategy.unwrap_or(self.config.strategy),
                        max_ttft_seconds: self.config.max_ttft_seconds,
                    },
                    _ => self.candidates(model, fleet, local, on.strategy),
                }
            }
            Some(Action::Route(to)) => {
                places = to;
                self.candidates(requested, fleet, None, on.strategy)
            }
            None => self.candidates(requested, fleet, None, None),
        };
        let served = candidates
            .targets
            .first()
            .map_or_else(|| requested.to_owned(), |t| t.model.clone());
        if candidates.targets.is_empty() {
            return Err(on.refuse(
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
            } else if b.clearance < on.clear_for {
                Some(format!(
                    "cleared for {} data, the request is {}",
                    b.clearance, on.clear_for
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
                "The request is {} (rule `{rule_name}`); nowhere that serves `{served}` may take it: {}.",
                on.clear_for,
                join(excluded.iter().map(|e| format!("{}: {}", e.backend, e.why)))
            );
            return Err(on.refuse(RefusalReason::NoCompliantBackend(message), excluded));
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
        let mut reason = match on.rule {
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
            redaction: None,
            unredactable: None,
            fallback: None,
            fell_back: None,
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
