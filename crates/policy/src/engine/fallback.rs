//! Fallbacks to owned models (`policy.fallbacks`): a decision that reaches a cloud carries, when an entry
//! names its model (and tenant), the local substitute's targets for the dispatcher to take when the cloud
//! is unavailable or rate-limited; over budget, the substitute serves at once. A client's
//! `x-sluice-fallback: none` forbids it. The substitute's targets are chosen as a `substitute` action's
//! are (clearance checked the same way), and only local backends are kept.

use sluice_sensitivity::Level;

use super::{On, PolicyEngine};
use crate::decision::{Decision, Fallback, Refusal, RefusalReason, Target};
use crate::fleet::Route;
use crate::rules::{Action, FALLBACK_HEADER, FallbackReason, FallbackRule};

impl PolicyEngine {
    /// Completes a decision: the over-budget action, or the fallback it carries.
    pub(super) fn settle(
        &self,
        on: &On<'_, '_>,
        decided: Result<Decision, Refusal>,
        rule_over_budget: Option<&Action>,
    ) -> Result<Decision, Refusal> {
        let (facts, fleet) = (on.facts, on.fleet);
        let entry = self
            .config
            .fallback_for(facts.model, facts.tenant)
            .filter(|_| !forbidden(on));
        // Over budget, a redaction's own fallback may not reach a cloud either.
        let decided = match decided {
            Ok(mut d) if fleet.over_budget => {
                if let Some(r) = d.redaction.as_mut()
                    && matches!(&*r.fallback, Ok(f) if f.reaches_cloud(fleet))
                {
                    *r.fallback = self.over_budget(on, rule_over_budget.unwrap_or(&self.config.over_budget));
                }
                Ok(d)
            }
            other => other,
        };
        match decided {
            Ok(d) if fleet.over_budget && d.reaches_cloud(fleet) => {
                // The rule's own over-budget action first; then a fallback that covers budgets; then the
                // policy's over-budget action.
                if rule_over_budget.is_none()
                    && let Some(e) = entry.filter(|e| e.on.contains(&FallbackReason::OverBudget))
                    && let Ok(mut served) = self.fallback_decision(on, e)
                {
                    served.reason = format!(
                        "the tenant's cloud budget for the period is spent, so its fallback: {}",
                        served.reason
                    );
                    served.fell_back = Some(FallbackReason::OverBudget);
                    return Ok(served);
                }
                self.over_budget(on, rule_over_budget.unwrap_or(&self.config.over_budget))
            }
            // A redacted request's fallback is its rule's own (the redaction's); a cloud that fails it
            // is not a reason to send its unredacted form elsewhere.
            Ok(mut d) if d.redaction.is_none() && d.reaches_cloud(fleet) => {
                let on_failures: Vec<FallbackReason> = entry
                    .map(|e| {
                        e.on.iter()
                            .copied()
                            .filter(|r| *r != FallbackReason::OverBudget)
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(e) = entry.filter(|_| !on_failures.is_empty()) {
                    match self.fallback_decision(on, e) {
                        Ok(f) => {
                            d.reason = format!(
                                "{}; should the cloud be {}, `{}` serves it locally",
                                d.reason,
                                on_failures
                                    .iter()
                                    .map(|r| match r {
                                        FallbackReason::CloudRateLimited => "rate-limited",
                                        _ => "unavailable",
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" or "),
                                e.to
                            );
                            d.fallback = Some(Box::new(Fallback {
                                targets: f.targets,
                                model: e.to.clone(),
                                requested: facts.model.to_owned(),
                                on: on_failures,
                                reason: f.reason,
                            }));
                        }
                        Err(r) => {
                            let why = match &r.reason {
                                RefusalReason::NoCompliantBackend(m) => m.clone(),
                                other => format!("{other:?}"),
                            };
                            d.reason =
                                format!("{}; its fallback `{}` cannot serve it: {why}", d.reason, e.to);
                        }
                    }
                }
                Ok(d)
            }
            decided => decided,
        }
    }

    /// The fallback's own decision: the substitute on local backends cleared for the request.
    fn fallback_decision(&self, on: &On<'_, '_>, e: &FallbackRule) -> Result<Decision, Refusal> {
        let name = format!("{}:fallback", on.rule_name());
        let on = On {
            rule: Some(&name),
            strategy: None,
            clear_for: on.level.max(on.clear_for),
            ..*on
        };
        let action = Action::Substitute {
            model: e.to.clone(),
            backend: e.backend.clone(),
        };
        let mut d = self.act(&on, Some(&action))?;
        let fleet = on.fleet;
        let local = |t: &Target| {
            fleet
                .backends
                .get(t.backend)
                .is_some_and(|b| b.route == Route::Local && b.clearance >= on.clear_for)
        };
        d.targets.retain(local);
        if d.targets.is_empty() {
            return Err(on.refuse(
                RefusalReason::NoCompliantBackend(format!(
                    "no local backend cleared for {} serves `{}`",
                    on.clear_for.max(Level::Public),
                    e.to
                )),
                d.excluded,
            ));
        }
        d.substituted_for = Some(on.facts.model.to_owned());
        Ok(d)
    }
}

/// The client forbade any fallback (`x-sluice-fallback: none`).
fn forbidden(on: &On<'_, '_>) -> bool {
    on.facts
        .headers
        .values(FALLBACK_HEADER)
        .iter()
        .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"none"))
}
