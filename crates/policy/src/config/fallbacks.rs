//! `policy.fallbacks`: local substitutes for cloud models, checked against the configured backends.

use sluice_config::{ConfigError, Locator};

use super::actions::Names;
use super::{OneOrMany, RawFallback, RawSubstitute, unknown_backend};
use crate::fleet::Route;
use crate::rules::{FallbackReason, FallbackRule};

pub(super) fn validate(
    at: &Locator<'_>,
    raw: Vec<RawFallback>,
    names: &Names<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<FallbackRule> {
    let mut out: Vec<FallbackRule> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("policy.fallbacks[{i}].{k}");
        let models = f.model.map(OneOrMany::into_vec).unwrap_or_default();
        if models.is_empty() {
            errors.push(at.error(&key("model"), "name the cloud model(s) this fallback serves"));
        }
        for m in &models {
            if !names.cloud_models.contains(&m.as_str()) {
                errors.push(at.error(
                    &key("model"),
                    format!("{m:?} is no cloud backend's model: a fallback stands in for a cloud model"),
                ));
            }
            if let Some(earlier) = out
                .iter()
                .position(|o| o.models.contains(m) && o.tenants.is_none())
            {
                errors.push(at.error(
                    &key("model"),
                    format!(
                        "fallbacks[{earlier}] already covers {m:?} for every tenant: this entry is never used"
                    ),
                ));
            }
        }
        let Some(to) = f.to else {
            errors.push(at.error(&key("to"), "name the local model that stands in (`to: MODEL`)"));
            continue;
        };
        let (to, backend) = match to {
            RawSubstitute::Model(m) => (m, None),
            RawSubstitute::On { model, backend } => (model, backend),
        };
        match &backend {
            Some(b) => match names.cx.backends.iter().find(|x| &x.name == b) {
                None => errors.push(at.error(&key("to.backend"), unknown_backend(b, names.cx.backends))),
                Some(info) if info.route != Route::Local => errors.push(at.error(
                    &key("to.backend"),
                    format!("{b} is a cloud backend: a fallback serves from the organisation's own workers"),
                )),
                Some(info) if info.serves(&to) == Some(false) => errors.push(at.error(
                    &key("to.model"),
                    format!("backend {b} does not list the model {to:?}"),
                )),
                Some(_) => {}
            },
            None if !names.has_local => errors.push(at.error(
                &key("to"),
                "no local workers are configured: a fallback serves from the organisation's own workers",
            )),
            None => {}
        }
        let mut on =
            f.on.map(OneOrMany::into_vec)
                .unwrap_or_else(|| FallbackReason::ALL.to_vec());
        on.sort();
        on.dedup();
        if on.is_empty() {
            errors.push(at.error(
                &key("on"),
                "name when: cloud_unavailable, cloud_rate_limited, over_budget (all three when absent)",
            ));
        }
        out.push(FallbackRule {
            models,
            tenants: f.tenant.map(OneOrMany::into_vec),
            to,
            backend,
            on,
        });
    }
    out
}
