//! The `tracing:` section: where spans go and how many are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sluice_config::{ConfigError, Locator};

/// Spans waiting for export at most; more are dropped and counted.
pub const DEFAULT_QUEUE_SPANS: usize = 4096;
pub const DEFAULT_EXPORT_TIMEOUT_MS: u64 = 2000;

/// The section as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/gRPC endpoint of a collector, `http://HOST:4317` (or `https://` with `ca_file`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans; `sluice-gateway` or `sluice-worker` by default.
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0 to 1 (default 1). A trace the client's `traceparent` marks
    /// sampled is always continued, and one it marks unsampled never is.
    pub sample_ratio: Option<f64>,
    /// Spans waiting for export at most (default 4096); more are dropped and counted.
    pub queue_spans: Option<usize>,
    /// How long one export may take before its spans are dropped and counted (default 2000).
    pub export_timeout_ms: Option<u64>,
    /// PEM CA bundle that signs an `https://` collector's certificate.
    pub ca_file: Option<PathBuf>,
}

/// The checked section.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    pub otlp_endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub queue_spans: usize,
    pub export_timeout: Duration,
    pub ca_pem: Option<Vec<u8>>,
}

impl RawTracing {
    /// Checks the section found at key `key` (`tracing`); `service` names the spans by default.
    pub fn validate(self, at: &Locator<'_>, key: &str, service: &str) -> Result<TracingConfig, ConfigError> {
        let field = |name: &str| format!("{key}.{name}");
        let Some(endpoint) = self.otlp_endpoint else {
            return Err(at.error(
                &field("otlp_endpoint"),
                "is required: the collector's OTLP/gRPC address, like http://otel-collector:4317",
            ));
        };
        let scheme_ok = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !scheme_ok || endpoint.parse::<http::Uri>().is_err() {
            return Err(at.error(
                &field("otlp_endpoint"),
                format!("{endpoint:?} is not a URL like http://otel-collector:4317"),
            ));
        }
        let ca_pem =
            match (&self.ca_file, endpoint.starts_with("https://")) {
                (Some(path), true) => Some(std::fs::read(path).map_err(|e| {
                    at.error(&field("ca_file"), format!("cannot read {}: {e}", path.display()))
                })?),
                (Some(_), false) => {
                    return Err(at.error(&field("ca_file"), "is only for an https:// endpoint"));
                }
                (None, true) => {
                    return Err(at.error(
                        &field("ca_file"),
                        "an https:// endpoint needs the CA that signs its certificate",
                    ));
                }
                (None, false) => None,
            };
        let sample_ratio = self.sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_ratio) {
            return Err(at.error(
                &field("sample_ratio"),
                format!("must be between 0 and 1, got {sample_ratio}"),
            ));
        }
        let queue_spans = self.queue_spans.unwrap_or(DEFAULT_QUEUE_SPANS);
        if !(1..=1_000_000).contains(&queue_spans) {
            return Err(at.error(
                &field("queue_spans"),
                format!("must be between 1 and 1000000, got {queue_spans}"),
            ));
        }
        let timeout = self.export_timeout_ms.unwrap_or(DEFAULT_EXPORT_TIMEOUT_MS);
        if !(1..=60_000).contains(&timeout) {
            return Err(at.error(
                &field("export_timeout_ms"),
                format!("must be between 1 and 60000, got {timeout}"),
            ));
        }
        let service_name = self.service_name.unwrap_or_else(|| service.to_owned());
        if service_name.is_empty() || service_name.len() > 128 {
            return Err(at.error(&field("service_name"), "must be 1 to 128 characters"));
        }
        Ok(TracingConfig {
            otlp_endpoint: endpoint,
            service_name,
            sample_ratio,
            queue_spans,
            export_timeout: Duration::from_millis(timeout),
            ca_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<TracingConfig, ConfigError> {
        #[derive(Deserialize, Default)]
        struct Doc {
            tracing: RawTracing,
        }
        let doc: Doc = sluice_config::parse_yaml(text)?;
        doc.tracing
            .validate(&Locator::new(None, Some(text)), "tracing", "sluice-gateway")
    }

    #[test]
    fn defaults_fill_the_section() {
        let c = check("tracing:\n  otlp_endpoint: http://collector:4317\n").unwrap();
        assert_eq!(c.service_name, "sluice-gateway");
        assert_eq!((c.sample_ratio, c.queue_spans), (1.0, DEFAULT_QUEUE_SPANS));
        assert_eq!(c.export_timeout, Duration::from_secs(2));
    }

    #[test]
    fn wrong_values_name_their_key_and_line() {
        for (text, key, line) in [
            ("tracing:\n  sample_ratio: 0.5\n", "tracing.otlp_endpoint", 1),
            (
                "tracing:\n  otlp_endpoint: collector:4317\n",
                "tracing.otlp_endpoint",
                2,
            ),
            (
                "tracing:\n  otlp_endpoint: http://c:4317\n  sample_ratio: 2\n",
                "tracing.sample_ratio",
                3,
            ),
            (
                "tracing:\n  otlp_endpoint: https://c:4317\n",
                "tracing.ca_file",
                1,
            ),
            (
                "tracing:\n  otlp_endpoint: http://c:4317\n  queue_spans: 0\n",
                "tracing.queue_spans",
                3,
            ),
        ] {
            let e = check(text).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), (key, Some(line)), "{text}: {e}");
        }
    }
}
