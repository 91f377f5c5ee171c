//! Lints of a checked policy: rules that can never match, rules whose targets can never take what they
//! match, backends nothing reaches, floors for tenants no key belongs to. Warnings, never errors.

use sluice_config::{ConfigError, Locator};
use sluice_sensitivity::{Kind, Scanner};

use crate::config::{BackendInfo, Context};
use crate::fleet::Route;
use crate::rules::{Action, Conditions, PolicyConfig, Rule};

/// Problems that do not stop the gateway but are almost certainly mistakes: rules that can never match,
/// rules whose targets can never take what they match, backends nothing reaches, floors for tenants no
/// key belongs to.
pub fn lint(policy: &PolicyConfig, at: &Locator<'_>, cx: Context<'_>) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let key = |f: &str| format!("policy.rules[{i}].{f}");
        if let Some(why) = never_matches(&rule.when, cx.scanner) {
            warnings.push(at.error(
                &key("when"),
                format!("rule `{}` can never match: {why}", rule.name),
            ));
        } else if let Some(earlier) = policy.rules[..i].iter().find(|e| covers(&e.when, &rule.when)) {
            warnings.push(at.error(
                &key("name"),
                format!(
                    "rule `{}` can never match: every request it matches is matched first by `{}`",
                    rule.name, earlier.name
                ),
            ));
        }
        if let Action::Redact(r) = &rule.then {
            for k in r.kinds.iter().filter(|k| !cx.scanner.is_enabled(**k)) {
                warnings.push(at.error(
                    &key("then.redact.kinds"),
                    format!("rule `{}` replaces {k}, but its detector is turned off: nothing of it is found to replace", rule.name),
                ));
            }
        }
        // A redaction sends what it matches below its level on purpose.
        if let (Some(min), Some(targets), false) = (
            rule.when.levels.min(),
            targets_of(policy, rule, cx),
            matches!(rule.then, Action::Redact(_)),
        ) && !targets.is_empty()
            && targets.iter().all(|b| b.clearance < min)
        {
            warnings.push(at.error(
                &key("then"),
                format!(
                    "rule `{}` matches {min} requests or above, but sends them only to backends cleared below that ({}): every such request will be refused",
                    rule.name,
                    targets
                        .iter()
                        .map(|b| format!("{}: {}", b.name, b.clearance))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for m in rule.when.models.iter().flatten() {
            let known =
                policy.virtual_model(m).is_some() || cx.backends.iter().any(|b| b.serves(m) != Some(false));
            if !known {
                warnings.push(at.error(
                    &key("when.model"),
                    format!("no backend serves the model {m:?}, and no virtual model has that name"),
                ));
            }
        }
    }
    // Past a rule that matches everything, the built-in default is never reached: backends that no rule
    // up to it sends requests to are never used.
    if let Some(last) = policy.rules.iter().position(|r| r.when == Conditions::default()) {
        for b in cx.backends {
            let reached = policy.rules[..=last]
                .iter()
                .any(|r| targets_of(policy, r, cx).is_some_and(|t| t.iter().any(|x| x.name == b.name)));
            if !reached {
                warnings.push(at.error(
                    "policy.rules",
                    format!(
                        "no rule sends requests to backend {} (rule `{}` matches every request first)",
                        b.name, policy.rules[last].name
                    ),
                ));
            }
        }
    }
    for tenant in policy.floors.keys() {
        if !cx.tenants.contains(tenant) {
            warnings.push(at.error(
                &format!("policy.tenants.{tenant}"),
                format!("no API key belongs to the tenant {tenant:?}"),
            ));
        }
    }
    warnings
}

/// Why conditions can never hold, if they cannot.
fn never_matches(when: &Conditions, scanner: &Scanner) -> Option<String> {
    if when.levels.is_empty() {
        return Some("its level conditions leave no level".to_owned());
    }
    if let Some(kinds) = &when.findings {
        let max = when.levels.max()?;
        let possible: Vec<Kind> = kinds
            .iter()
            .copied()
            .filter(|k| scanner.is_enabled(*k) && (k.is_tenant_rule() || scanner.level(*k) <= max))
            .collect();
        if possible.is_empty() {
            return Some(format!(
                "each of its finding kinds is turned off or makes a request more sensitive than {max}"
            ));
        }
    }
    None
}

/// Whether every request `later` matches is matched by `earlier`.
fn covers(earlier: &Conditions, later: &Conditions) -> bool {
    fn list_covers<T: PartialEq>(e: &Option<Vec<T>>, l: &Option<Vec<T>>) -> bool {
        match (e, l) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(e), Some(l)) => l.iter().all(|x| e.contains(x)),
        }
    }
    earlier.levels.is_superset_of(later.levels)
        && list_covers(&earlier.findings, &later.findings)
        && list_covers(&earlier.tenants, &later.tenants)
        && list_covers(&earlier.models, &later.models)
        && earlier.headers.iter().all(|eh| {
            later.headers.iter().any(|lh| {
                lh.name == eh.name
                    && match (&eh.values, &lh.values) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(e), Some(l)) => l.iter().all(|v| e.iter().any(|x| x.eq_ignore_ascii_case(v))),
                    }
            })
        })
        && earlier.prompt_tokens.0 <= later.prompt_tokens.0
        && earlier.prompt_tokens.1 >= later.prompt_tokens.1
}

/// The backends a rule can send requests to; `None` for a rejection.
fn targets_of<'a>(policy: &PolicyConfig, rule: &Rule, cx: Context<'a>) -> Option<Vec<&'a BackendInfo>> {
    action_targets(policy, &rule.then, cx)
}

fn action_targets<'a>(
    policy: &PolicyConfig,
    action: &Action,
    cx: Context<'a>,
) -> Option<Vec<&'a BackendInfo>> {
    let by_name = |n: &str| cx.backends.iter().find(|b| b.name == n);
    match action {
        Action::Reject(_) => None,
        Action::Redact(r) => {
            let mut to: Vec<&BackendInfo> = cx
                .backends
                .iter()
                .filter(|b| r.to.iter().any(|p| p.admits(&b.name, b.route)))
                .collect();
            for b in action_targets(policy, &r.fallback, cx).unwrap_or_default() {
                if !to.iter().any(|x| x.name == b.name) {
                    to.push(b);
                }
            }
            Some(to)
        }
        Action::Route(places) => Some(
            cx.backends
                .iter()
                .filter(|b| places.iter().any(|p| p.admits(&b.name, b.route)))
                .collect(),
        ),
        Action::Substitute { model, backend } => Some(match (backend, policy.virtual_model(model)) {
            (_, Some(v)) => v.members.iter().filter_map(|m| by_name(&m.backend)).collect(),
            (Some(b), None) => by_name(b).into_iter().collect(),
            (None, None) => cx
                .backends
                .iter()
                .filter(|b| b.serves(model) == Some(true) || b.route == Route::Local)
                .collect(),
        }),
    }
}
