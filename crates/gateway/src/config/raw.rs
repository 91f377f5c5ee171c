//! The configuration as written in YAML: every key optional, unknown keys refused. [`RawGatewayConfig`]
//! is the document; the other `Raw*` types are its sections.
//!
//! These types only mirror the file: they never check a value, never hold a default and never read the
//! environment or the disk (the validation in the sibling modules does).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use sluice_policy::config::RawPolicy;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    /// Public address (the OpenAI API).
    pub listen: Option<String>,
    /// Operators' address (`/metrics`, `/admin/*`), or "off".
    pub admin_listen: Option<String>,
    /// A bearer token the admin listener requires (`/metrics` and `/healthz` excepted): an environment
    /// variable holding it, or its SHA-256 in hex.
    pub admin_token_env: Option<String>,
    pub admin_token_sha256: Option<String>,
    /// Serve without API keys (every request is tenant `anonymous`). Off unless set.
    pub allow_unauthenticated: Option<bool>,
    /// Air-gapped mode: no cloud backend may be configured; the gateway refuses to start with one.
    pub air_gapped: Option<bool>,
    /// The outage drill: clouds stay configured, but every one is treated as unreachable and nothing is
    /// sent to them (fallbacks serve what they cover; the rest is refused).
    pub offline: Option<bool>,
    pub api_keys: Option<Vec<RawApiKey>>,
    pub limits: Option<RawLimits>,
    pub local: Option<RawLocal>,
    pub clouds: Option<Vec<RawCloud>>,
    pub drain_grace_seconds: Option<f64>,
    /// The content scanner: level per finding kind, detectors turned off, keyword and regex lists.
    pub sensitivity: Option<sluice_sensitivity::ScannerConfig>,
    /// Rules, virtual models and tenant floors: where each request may and should go.
    pub policy: Option<RawPolicy>,
    pub cost: Option<RawCost>,
    /// The audit log: one hash-chained JSON line per decision.
    pub audit: Option<RawAudit>,
    /// The personal-data model.
    pub ner: Option<RawNer>,
    /// OpenTelemetry traces (off without this section).
    pub tracing: Option<sluice_telemetry::RawTracing>,
}

/// The personal-data model (names, addresses and identifiers in prose). On when the section is given,
/// unless `enabled: false`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNer {
    pub enabled: Option<bool>,
    /// The converted weights (safetensors) `sluice models pull --ner` writes.
    pub weights: Option<PathBuf>,
    /// The model's `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Threads that run the model (default: half the cores).
    pub threads: Option<usize>,
    /// Requests that may wait for a model thread before the gateway sheds with 429 (default 64).
    pub queue: Option<usize>,
    /// Past this many bytes of text, a request is restricted without reading it (default 256 KiB).
    pub max_bytes: Option<usize>,
    /// Past this wait, a request is restricted (default 5000 ms).
    pub timeout_ms: Option<u64>,
    /// Distinct strings whose answers are cached (default 65536; 0 turns the cache off).
    pub cache_entries: Option<usize>,
    /// Read only the words around digits, known names and capitalised words, unless the scan found
    /// what a name would combine with (default true; false reads every word).
    pub prefilter: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<PathBuf>,
    /// The active file is rotated past this size.
    pub max_bytes: Option<u64>,
    /// Rotated files kept.
    pub keep: Option<usize>,
    /// Record the SHA-256 of each request body (never the body itself). Off unless set.
    pub hash_prompts: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    /// The cloud model locally served requests are also priced at.
    pub reference_model: Option<RawCloudModel>,
}

/// What a worker node costs (every key optional; defaults in [`NodeCost::default`]).
///
/// [`NodeCost::default`]: crate::cost::NodeCost::default
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeCost {
    pub capex_usd: Option<f64>,
    pub lifetime_years: Option<f64>,
    pub power_watts: Option<f64>,
    pub pue: Option<f64>,
    pub usd_per_kwh: Option<f64>,
    pub overhead_usd_per_hour: Option<f64>,
    /// Charge the power the worker measures on its device instead of `power_watts` (which stays the figure
    /// while none is reported).
    pub measured_power: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub tenant: Option<String>,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub key_sha256: Option<String>,
    /// Or: an environment variable holding the key itself (hashed at start, never kept).
    pub key_env: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<usize>,
    pub max_in_flight: Option<usize>,
    pub request_timeout_seconds: Option<f64>,
    /// Open connections on the public listener (default 8192).
    pub max_connections: Option<usize>,
    /// Open connections on the admin listener (default 256).
    pub max_admin_connections: Option<usize>,
    /// From a connection, or its next request's first byte, to the end of the request head (default 10).
    pub header_read_timeout_seconds: Option<f64>,
    /// A kept-alive connection with no request in flight is closed after this (default 60).
    pub idle_timeout_seconds: Option<f64>,
    /// Request line and headers (default 65536); more is answered 431.
    pub max_header_bytes: Option<usize>,
    /// Limits of tenants without their own.
    pub default: Option<RawTenantLimits>,
    /// Per tenant: requests and tokens per minute, a spend budget.
    pub tenants: Option<BTreeMap<String, RawTenantLimits>>,
    /// Completion tokens a request without `max_tokens` reserves (default 4096).
    pub reserve_output_tokens: Option<u32>,
    /// Keep the counts in Redis, shared by every gateway replica (in this process otherwise).
    pub redis: Option<RawRedis>,
    /// With Redis unreachable: `closed` (refuse cloud-bound requests that need a budget) or `local`.
    pub fail: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    pub name: Option<String>,
    pub clearance: Option<String>,
    pub workers: Option<Vec<RawWorker>>,
    pub tls: Option<RawClientTls>,
    pub connect_timeout_seconds: Option<f64>,
    pub breaker: Option<RawBreaker>,
    /// What each worker node costs; a worker's own `cost` overrides single keys.
    pub cost: Option<RawNodeCost>,
    /// Find (more) workers through the EndpointSlices of a Kubernetes Service.
    pub kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub port: Option<RawPort>,
    pub kubeconfig: Option<PathBuf>,
}

/// A port's name or number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub name: Option<String>,
    pub address: Option<String>,
    pub cost: Option<RawNodeCost>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub cooldown_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    pub name: Option<String>,
    /// `openai` (the default: any OpenAI-compatible API), `azure` (Azure OpenAI) or `anthropic`.
    pub api: Option<String>,
    /// Azure: the `api-version` query parameter (required); Anthropic: the `anthropic-version` header.
    pub api_version: Option<String>,
    /// Anthropic: `max_tokens` of requests that set none (the Messages API requires one).
    pub default_max_tokens: Option<u32>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub clearance: Option<String>,
    pub timeout_seconds: Option<f64>,
    pub connect_timeout_seconds: Option<f64>,
    pub max_retries: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    /// Failed requests in a row that open the breaker, and how long it stays open before recovery is tried.
    pub breaker: Option<RawBreaker>,
    /// The recovery probe: `{path, interval_seconds}`, or `off` (a request is the trial).
    pub probe: Option<RawProbe>,
    pub models: Option<Vec<RawCloudModel>>,
}

/// `probe: off`, or `probe: {path: /models, interval_seconds: 10}`.
#[derive(Debug, Clone)]
pub enum RawProbe {
    Off,
    On {
        path: Option<String>,
        interval_seconds: Option<f64>,
    },
}

impl<'de> Deserialize<'de> for RawProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct On {
            path: Option<String>,
            interval_seconds: Option<f64>,
        }
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawProbe;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("off, or {path, interval_seconds}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "off" => Ok(RawProbe::Off),
                    other => Err(E::custom(format!(
                        "{other:?}: expected off, or {{path, interval_seconds}}"
                    ))),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                match v {
                    false => Ok(RawProbe::Off),
                    true => Ok(RawProbe::On {
                        path: None,
                        interval_seconds: None,
                    }),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let on = On::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawProbe::On {
                    path: on.path,
                    interval_seconds: on.interval_seconds,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudModel {
    pub id: Option<String>,
    /// Azure: the deployment that serves the model [default: the id].
    pub deployment: Option<String>,
    /// `chat` (the default) or `embedding`.
    pub kind: Option<String>,
    pub input_usd_per_mtok: Option<f64>,
    /// Not needed for an embedding model (it writes no tokens).
    pub output_usd_per_mtok: Option<f64>,
}

/// One tenant's limits as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantLimits {
    pub requests_per_minute: Option<u64>,
    /// Prompt and completion tokens.
    pub tokens_per_minute: Option<u64>,
    pub budget: Option<RawBudget>,
}

/// A spend budget as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub usd: Option<f64>,
    /// day, week (from Monday) or month (calendar).
    pub period: Option<String>,
    /// The time zone periods start in, as an offset from UTC: `UTC`, `+01:00`, `-05:00`.
    pub time_zone: Option<String>,
    /// Count local requests at their busy-time cost too (off: the budget is cloud spend).
    pub include_local: Option<bool>,
}

/// The shared store as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: Option<String>,
    /// Or: an environment variable holding the URL (with its password, from a Secret).
    pub url_env: Option<String>,
    /// Connect with TLS (`rediss://`).
    pub tls: Option<bool>,
    /// Put before every key, so that several installs can share one Redis.
    pub key_prefix: Option<String>,
    pub timeout_ms: Option<u64>,
}
