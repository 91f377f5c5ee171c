//! A rule's action as written (`then`, or a redaction's `fallback`), checked against the backends and
//! the virtual models: route, substitute, reject or redact.

use sluice_config::{ConfigError, Locator};
use sluice_sensitivity::Kind;

use super::{BackendInfo, Context, OneOrMany, RawOverBudget, RawSubstitute, RawThen, unknown_backend};
use crate::fleet::Route;
use crate::rules::{Action, Place, Redact, VirtualModel, ever_redactable};

/// What an action may name, to check it against.
pub(super) struct Names<'a> {
    pub(super) cx: Context<'a>,
    pub(super) models: &'a [VirtualModel],
    pub(super) cloud_models: &'a [&'a str],
    pub(super) has_local: bool,
    pub(super) never_redact: &'a [Kind],
}

impl Names<'_> {
    fn backend(&self, name: &str) -> Option<&BackendInfo> {
        self.cx.backends.iter().find(|b| b.name == name)
    }

    /// A place's name read, and why it is wrong if it is.
    fn place(&self, p: &str) -> (Place, Option<String>) {
        let place = match p {
            "any" => Place::Any,
            "local" => Place::Local,
            "cloud" => Place::Cloud,
            b => Place::Backend(b.to_owned()),
        };
        let missing = match &place {
            Place::Any => None,
            Place::Local => (!self.has_local).then(|| "no local workers are configured".to_owned()),
            Place::Cloud => (!self.cx.backends.iter().any(|b| b.route == Route::Cloud))
                .then(|| "no cloud backend is configured".to_owned()),
            Place::Backend(b) => self
                .backend(b)
                .is_none()
                .then(|| unknown_backend(b, self.cx.backends)),
        };
        (place, missing)
    }
}

/// Reads one rule's action (`key` is its `then`, or a redaction's `fallback`).
pub(super) fn action(
    at: &Locator<'_>,
    key: &str,
    then: RawThen,
    names: &Names<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Action> {
    let sub = |f: &str| format!("{key}.{f}");
    let given = [
        then.route.is_some(),
        then.substitute.is_some(),
        then.reject.is_some(),
        then.redact.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        1 => {}
        0 => {
            errors.push(at.error(key, "give one action: route, substitute, reject or redact"));
            return None;
        }
        _ => {
            errors.push(at.error(key, "give only one action: route, substitute, reject or redact"));
            return None;
        }
    }
    Some(if let Some(to) = then.route {
        let mut places = Vec::new();
        for p in to.into_vec() {
            let (place, missing) = names.place(&p);
            if let Some(m) = missing {
                errors.push(at.error(&sub("route"), m));
            }
            places.push(place);
        }
        if places.is_empty() {
            errors.push(at.error(&sub("route"), "name at least one place"));
        }
        Action::Route(places)
    } else if let Some(s) = then.substitute {
        let (model, on) = match s {
            RawSubstitute::Model(m) => (m, None),
            RawSubstitute::On { model, backend } => (model, backend),
        };
        let is_virtual = names.models.iter().any(|v| v.name == model);
        match &on {
            Some(b) => match names.backend(b) {
                None => {
                    errors.push(at.error(&sub("substitute.backend"), unknown_backend(b, names.cx.backends)))
                }
                Some(info) if info.serves(&model) == Some(false) => errors.push(at.error(
                    &sub("substitute.model"),
                    format!("backend {b} does not list the model {model:?}"),
                )),
                Some(_) => {}
            },
            None if !(is_virtual || names.cloud_models.contains(&model.as_str()) || names.has_local) => {
                errors.push(at.error(
                    &sub("substitute"),
                    format!("no backend serves {model:?}: it is no virtual or cloud model, and no local workers are configured"),
                ));
            }
            None => {}
        }
        Action::Substitute { model, backend: on }
    } else if let Some(reason) = then.reject {
        if reason.trim().is_empty() {
            errors.push(at.error(&sub("reject"), "give the reason clients will read"));
        }
        Action::Reject(reason)
    } else {
        let r = then.redact.unwrap_or_default();
        let mut to = Vec::new();
        for p in r.to.map(OneOrMany::into_vec).unwrap_or_default() {
            let (place, missing) = names.place(&p);
            if let Some(m) = missing {
                errors.push(at.error(&sub("redact.to"), m));
            } else if place == Place::Local
                || place == Place::Any
                || matches!(&place, Place::Backend(b) if names.backend(b).is_some_and(|b| b.route == Route::Local))
            {
                errors.push(at.error(
                    &sub("redact.to"),
                    format!("{p}: a redacted request goes to cloud backends (`cloud` or their names); the local workers take sensitive data as it is: route there instead"),
                ));
            }
            to.push(place);
        }
        if to.is_empty() {
            errors.push(at.error(
                &sub("redact.to"),
                "name where the redacted request goes: cloud, or backend names",
            ));
        }
        let kinds = r.kinds.map(OneOrMany::into_vec).unwrap_or_default();
        if kinds.is_empty() {
            errors.push(at.error(&sub("redact.kinds"), "name the finding kinds to replace"));
        }
        for k in &kinds {
            if !ever_redactable(*k) {
                errors.push(at.error(
                    &sub("redact.kinds"),
                    format!("{k} is a credential, which is never redacted: a request carrying one takes the fallback"),
                ));
            } else if names.never_redact.contains(k) {
                errors.push(at.error(
                    &sub("redact.kinds"),
                    format!("{k} is marked never_redact in this policy"),
                ));
            }
        }
        let fallback_key = sub("redact.fallback");
        let fallback = match r.fallback {
            None => Action::Reject(
                "This request carries data that cannot be sent to the cloud, even with its personal data replaced.".to_owned(),
            ),
            Some(f) if f.redact.is_some() => {
                errors.push(at.error(&fallback_key, "a fallback routes, substitutes or rejects; it does not redact again"));
                return None;
            }
            Some(f) => action(at, &fallback_key, *f, names, errors)?,
        };
        Action::Redact(Redact {
            to,
            kinds,
            fallback: Box::new(fallback),
        })
    })
}

/// Reads an `over_budget` action: `reject`, `local`, or a route, substitute or reject action that can
/// reach the local workers (a request over its cloud budget never goes to a cloud).
pub(super) fn over_budget(
    at: &Locator<'_>,
    key: &str,
    raw: RawOverBudget,
    names: &Names<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<Action> {
    let then = match raw {
        RawOverBudget::Word(w) if w == "reject" => {
            return Some(Action::Reject(crate::rules::OVER_BUDGET_REASON.to_owned()));
        }
        RawOverBudget::Word(w) if w == "local" => RawThen {
            route: Some(OneOrMany::One("local".to_owned())),
            ..RawThen::default()
        },
        RawOverBudget::Word(w) => {
            errors.push(at.error(
                key,
                format!("{w:?}: write reject, local, or an action such as {{substitute: MODEL}}"),
            ));
            return None;
        }
        RawOverBudget::Then(t) => t,
    };
    if then.redact.is_some() {
        errors.push(at.error(
            key,
            "over budget, a request goes to the local workers or is rejected: it is not redacted for a cloud",
        ));
        return None;
    }
    let action = action(at, key, then, names, errors)?;
    let cloud = |b: &str| names.backend(b).is_some_and(|b| b.route == Route::Cloud);
    let to_cloud = match &action {
        Action::Route(places) => places
            .iter()
            .all(|p| matches!(p, Place::Cloud) || matches!(p, Place::Backend(b) if cloud(b))),
        Action::Substitute { backend: Some(b), .. } => cloud(b),
        _ => false,
    };
    if to_cloud {
        errors.push(at.error(
            key,
            "over budget, a request never goes to a cloud: route it to local (or local backends), substitute a local model, or reject",
        ));
    }
    if !names.has_local && !matches!(action, Action::Reject(_)) {
        errors.push(at.error(
            key,
            "no local workers are configured: over budget, only reject is possible",
        ));
    }
    Some(action)
}
