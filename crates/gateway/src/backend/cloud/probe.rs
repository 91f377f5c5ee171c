//! The recovery probe of a cloud backend's breaker: while the breaker is open and its cooldown has passed,
//! `GET {base_url}{path}` with the backend's own credentials every interval; an answer that is not 5xx or
//! 429 closes the breaker (a 401 means the provider is reachable: credentials are another matter).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::{CloudApi, CloudConfig, Health};

/// Starts the probe for a backend, when it has one and a runtime is running; it ends with the backend.
pub(super) fn spawn(config: &CloudConfig, health: &Arc<Health>, http: &reqwest::Client) {
    let Some(probe) = config.breaker.probe.clone() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if config.offline {
        return;
    }
    let base = config.base_url.trim_end_matches('/');
    let mut url = format!("{base}{}", probe.path);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            let mut v = v;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    let key = config.api_key.clone().unwrap_or_default();
    match &config.api {
        CloudApi::OpenAi if !key.is_empty() => set("authorization", &format!("Bearer {key}")),
        CloudApi::OpenAi => {}
        CloudApi::Azure { api_version } => {
            set("api-key", &key);
            if !url.contains('?') {
                url = format!("{url}?api-version={api_version}");
            }
        }
        CloudApi::Anthropic { version, .. } => {
            set("x-api-key", &key);
            set("anthropic-version", version);
        }
    }
    let name = config.name.clone();
    let limit = config.connect_timeout + Duration::from_secs(5).min(config.timeout);
    let weak = Arc::downgrade(health);
    let http = http.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(probe.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(health) = weak.upgrade() else {
                return;
            };
            if !health.wants_probe(Instant::now()) {
                continue;
            }
            let sent = tokio::time::timeout(limit, http.get(&url).headers(headers.clone()).send()).await;
            let failed = match sent {
                Ok(Ok(r)) if r.status().as_u16() < 500 && r.status().as_u16() != 429 => None,
                Ok(Ok(r)) => Some(format!("the probe got {}", r.status().as_u16())),
                Ok(Err(e)) => {
                    tracing::debug!(backend = %name, error = %super::with_causes(e.to_string(), &e), "probe failed");
                    Some("the probe could not connect".to_owned())
                }
                Err(_) => Some(format!("the probe got no answer in {:.1} s", limit.as_secs_f64())),
            };
            match &failed {
                None => tracing::info!(backend = %name, "the cloud answered its probe; its breaker closes"),
                Some(why) => tracing::info!(backend = %name, why, "the cloud is still down"),
            }
            health.probed(failed.is_none(), failed.as_deref());
        }
    });
}
