//! Validation of the `clouds:` section (each OpenAI-compatible backend: address, key, clearance,
//! timeouts, retries and priced models) and of `cost.reference_model`, the cloud model locally served
//! requests are also priced at.
//!
//! It reads the environment only for the API keys it names: it never contacts a cloud.

use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use super::fields::{check_name, level, seconds};
use super::raw::{RawCloud, RawCost, RawProbe};
use crate::backend::cloud::{BreakerConfig, CloudApi, CloudConfig, CloudModel, ProbeConfig};
use crate::backend::{ModelKind, Prices};
use crate::level::Level;

/// The reference model: as configured (prices given, or those of the cloud model with that id), or else
/// the first cloud model listed.
pub(super) fn reference_model(
    at: &Locator<'_>,
    raw: RawCost,
    clouds: &[CloudConfig],
) -> Result<Option<(String, Prices)>, ConfigError> {
    let listed = |id: &str| {
        clouds
            .iter()
            .flat_map(|c| &c.models)
            .find(|m| m.id == id)
            .map(|m| m.prices)
    };
    let Some(r) = raw.reference_model else {
        return Ok(clouds
            .iter()
            .flat_map(|c| &c.models)
            .next()
            .map(|m| (m.id.clone(), m.prices)));
    };
    let key = "cost.reference_model";
    let id = r.id.ok_or_else(|| at.error(key, "`id` is required"))?;
    let prices = match (r.input_usd_per_mtok, r.output_usd_per_mtok) {
        (Some(i), Some(o)) if i.is_finite() && o.is_finite() && i >= 0.0 && o >= 0.0 => Prices {
            input_usd_per_mtok: i,
            output_usd_per_mtok: o,
        },
        (None, None) => listed(&id).ok_or_else(|| {
            at.error(
                &format!("{key}.id"),
                format!(
                    "{id:?} is no configured cloud model: give its input_usd_per_mtok and output_usd_per_mtok"
                ),
            )
        })?,
        _ => {
            return Err(at.error(
                key,
                "give both input_usd_per_mtok and output_usd_per_mtok (0 or more), or neither",
            ));
        }
    };
    Ok(Some((id, prices)))
}

pub(super) fn cloud(
    at: &Locator<'_>,
    i: usize,
    raw: RawCloud,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CloudConfig, ConfigError> {
    let key = |f: &str| format!("clouds[{i}].{f}");
    let name = raw
        .name
        .ok_or_else(|| at.error(&format!("clouds[{i}]"), "`name` is required"))?;
    check_name(at, &key("name"), &name)?;
    let api = match raw.api.as_deref() {
        None | Some("openai") => {
            if raw.api_version.is_some() {
                return Err(at.error(&key("api_version"), "is for `api: azure` and `api: anthropic`"));
            }
            CloudApi::OpenAi
        }
        Some("azure") => CloudApi::Azure {
            api_version: raw.api_version.clone().ok_or_else(|| {
                at.error(
                    &key("api_version"),
                    "is required for `api: azure` (the api-version of your resource, e.g. 2024-10-21)",
                )
            })?,
        },
        Some("anthropic") => CloudApi::Anthropic {
            version: raw.api_version.clone().unwrap_or_else(|| "2023-06-01".to_owned()),
            default_max_tokens: match raw.default_max_tokens {
                None => 4096,
                Some(n @ 1..=1_000_000) => n,
                Some(_) => return Err(at.error(&key("default_max_tokens"), "must be 1 to 1000000")),
            },
        },
        Some(other) => {
            return Err(at.error(
                &key("api"),
                format!("{other:?} is not a cloud API: openai, azure or anthropic"),
            ));
        }
    };
    if raw.default_max_tokens.is_some() && !matches!(api, CloudApi::Anthropic { .. }) {
        return Err(at.error(&key("default_max_tokens"), "is for `api: anthropic`"));
    }
    let example = match api {
        CloudApi::OpenAi => "https://api.openai.com/v1",
        CloudApi::Azure { .. } => "https://RESOURCE.openai.azure.com",
        CloudApi::Anthropic { .. } => "https://api.anthropic.com/v1",
    };
    let base_url = raw.base_url.ok_or_else(|| {
        at.error(
            &format!("clouds[{i}]"),
            format!("`base_url` is required (e.g. {example})"),
        )
    })?;
    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
        return Err(at.error(
            &key("base_url"),
            format!("{base_url:?} must start with https:// or http://"),
        ));
    }
    let api_key = match raw.api_key_env {
        None => None,
        Some(var) => match env(&var) {
            Some(v) if !v.is_empty() => Some(v),
            _ => {
                return Err(at.error(
                    &key("api_key_env"),
                    format!("the environment variable {var} is not set"),
                ));
            }
        },
    };
    let clearance = level(at, &key("clearance"), raw.clearance, Level::Internal)?;
    let timeout = seconds(at, &key("timeout_seconds"), raw.timeout_seconds, 60.0)?;
    let connect_timeout = seconds(
        at,
        &key("connect_timeout_seconds"),
        raw.connect_timeout_seconds,
        5.0,
    )?;
    let max_retries = raw.max_retries.unwrap_or(2);
    if max_retries > 10 {
        return Err(at.error(&key("max_retries"), "must be at most 10"));
    }
    let retry_backoff = Duration::from_millis(raw.retry_backoff_ms.unwrap_or(250));
    let mut models = Vec::new();
    for (j, m) in raw.models.unwrap_or_default().into_iter().enumerate() {
        let mkey = |f: &str| format!("clouds[{i}].models[{j}].{f}");
        let id =
            m.id.ok_or_else(|| at.error(&format!("clouds[{i}].models[{j}]"), "`id` is required"))?;
        if id.is_empty() || id.len() > 256 {
            return Err(at.error(&mkey("id"), "must be 1 to 256 characters"));
        }
        let price = |f: &str, v: Option<f64>| -> Result<f64, ConfigError> {
            let v =
                v.ok_or_else(|| at.error(&mkey(f), "is required (USD per million tokens, list price)"))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(at.error(&mkey(f), format!("must be a price of 0 or more, got {v}")));
            }
            Ok(v)
        };
        let kind = match m.kind.as_deref() {
            None | Some("chat") => ModelKind::Chat,
            Some("embedding") => ModelKind::Embedding,
            Some(other) => {
                return Err(at.error(
                    &mkey("kind"),
                    format!("{other:?} is not a model kind: chat or embedding"),
                ));
            }
        };
        let output = match (kind, m.output_usd_per_mtok) {
            (ModelKind::Embedding, None) => 0.0,
            (_, output) => price("output_usd_per_mtok", output)?,
        };
        let prices = Prices {
            input_usd_per_mtok: price("input_usd_per_mtok", m.input_usd_per_mtok)?,
            output_usd_per_mtok: output,
        };
        if models.iter().any(|x: &CloudModel| x.id == id) {
            return Err(at.error(&mkey("id"), format!("the model {id:?} is listed twice")));
        }
        let deployment = match (&api, m.deployment) {
            (CloudApi::Azure { .. }, d) => {
                let d = d.unwrap_or_else(|| id.clone());
                if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    return Err(at.error(
                        &mkey("deployment"),
                        format!("{d:?} is not a deployment name (letters, digits, - _ .)"),
                    ));
                }
                Some(d)
            }
            (_, Some(_)) => return Err(at.error(&mkey("deployment"), "is for `api: azure`")),
            (_, None) => None,
        };
        if kind == ModelKind::Embedding && matches!(api, CloudApi::Anthropic { .. }) {
            return Err(at.error(&mkey("kind"), "Anthropic's API serves no embeddings"));
        }
        models.push(CloudModel {
            id,
            deployment,
            prices,
            kind,
        });
    }
    if models.is_empty() {
        return Err(at.error(&key("models"), "list at least one model with its prices"));
    }
    let raw_breaker = raw.breaker.unwrap_or_default();
    let failures = raw_breaker.failures.unwrap_or(3);
    if failures == 0 {
        return Err(at.error(&key("breaker.failures"), "must be at least 1"));
    }
    let cooldown = seconds(
        at,
        &key("breaker.cooldown_seconds"),
        raw_breaker.cooldown_seconds,
        30.0,
    )?;
    let probe = match raw.probe {
        Some(RawProbe::Off) => None,
        None => Some(ProbeConfig::default()),
        Some(RawProbe::On {
            path,
            interval_seconds,
        }) => {
            let path = path.unwrap_or_else(|| ProbeConfig::default().path);
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(at.error(
                    &key("probe.path"),
                    format!("{path:?}: a path under base_url, starting with / (e.g. /models)"),
                ));
            }
            Some(ProbeConfig {
                path,
                interval: seconds(at, &key("probe.interval_seconds"), interval_seconds, 10.0)?,
            })
        }
    };
    Ok(CloudConfig {
        name,
        api,
        base_url,
        api_key,
        models,
        clearance,
        connect_timeout,
        timeout,
        max_retries,
        retry_backoff,
        breaker: BreakerConfig {
            failures,
            cooldown,
            probe,
        },
        offline: false,
    })
}
