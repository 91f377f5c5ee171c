//! The gateway's configuration: YAML as written ([`RawGatewayConfig`], every key optional, unknown keys
//! refused), then [`GatewayConfig`] with every value parsed and checked, before anything starts. Errors
//! name the file, the line and the key path.
//!
//! This module owns the document as a whole: [`GatewayConfig`] and its top-level keys (listeners, keys,
//! limits, audit, the scanner and the policy), with the YAML types in `raw`, the `local:` and `clouds:`
//! sections in `local` and `cloud`, and small shared validators in `fields`. It never starts anything:
//! a configuration is checked before any listener, worker connection or task exists.

mod cloud;
mod connections;
mod fields;
mod limits;
mod local;
mod ner;
mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use self::cloud::{cloud, reference_model};
pub use self::connections::ConnectionLimits;
use self::connections::connection_limits;
use self::fields::{address, check_name, parse_sha256, seconds};
pub use self::limits::{DEFAULT_STORE_TIMEOUT_MS, utc_offset};
use self::local::local_pool;
pub use self::raw::{
    RawApiKey, RawAudit, RawBreaker, RawBudget, RawClientTls, RawCloud, RawCloudModel, RawCost,
    RawGatewayConfig, RawKubernetes, RawLimits, RawLocal, RawNer, RawNodeCost, RawPort, RawRedis,
    RawTenantLimits, RawWorker,
};
use crate::auth::{ApiKey, hash_key};
use crate::backend::Prices;
use crate::backend::cloud::CloudConfig;
use crate::backend::local::PoolConfig;
pub use crate::limits::{DEFAULT_RESERVE_OUTPUT_TOKENS, Fail, StoreConfig, TenantLimitsConfig};
use sluice_policy::config::{BackendInfo, Context};
use sluice_policy::{PolicyConfig, Route};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 4 MiB: a long conversation with tool definitions fits many times over.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: f64 = 300.0;
pub const DEFAULT_DRAIN_GRACE_SECONDS: f64 = 30.0;

/// Where and how decisions are audited.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub options: sluice_audit::AuditOptions,
    pub hash_prompts: bool,
}

/// Request limits of the public listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Requests (streams included, until their last byte) served at once; more are shed with 429.
    pub max_in_flight: usize,
    /// Each request's deadline, from arrival to its last byte.
    pub request_timeout: Duration,
    /// What connections to the public listener may hold, and how many.
    pub connections: ConnectionLimits,
    /// The same for the admin listener.
    pub admin_connections: ConnectionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: Duration::from_secs_f64(DEFAULT_REQUEST_TIMEOUT_SECONDS),
            connections: ConnectionLimits::public(),
            admin_connections: ConnectionLimits::public()
                .with_max(connections::DEFAULT_MAX_ADMIN_CONNECTIONS),
        }
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// No cloud backend is configured, and none may be.
    pub air_gapped: bool,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token the admin listener requires, when one is set.
    pub admin_token: Option<crate::auth::AdminToken>,
    pub keys: Vec<ApiKey>,
    pub allow_unauthenticated: bool,
    pub limits: Limits,
    /// Per-tenant rates and budgets, and where they are counted.
    pub tenant_limits: TenantLimitsConfig,
    pub local: Option<PoolConfig>,
    pub clouds: Vec<CloudConfig>,
    pub drain_grace: Duration,
    /// The content scanner, compiled.
    pub scanner: sluice_sensitivity::Scanner,
    /// The personal-data model, when it is on.
    pub ner: Option<crate::recognise::NerConfig>,
    pub policy: PolicyConfig,
    /// The cloud model locally served requests are also priced at, when there is one.
    pub reference_model: Option<(String, Prices)>,
    pub audit: Option<AuditConfig>,
    /// OpenTelemetry traces, when they are on.
    pub tracing: Option<sluice_telemetry::TracingConfig>,
}

/// What `sluice policy check` reports: every problem it can find, and warnings.
#[derive(Debug)]
pub struct CheckReport {
    /// The configuration, when it is valid.
    pub config: Option<GatewayConfig>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
}

/// What `sluice policy check` warns about in the scanner's configuration: combinations that can never
/// be met or never raise the level, and kinds only the personal-data model finds, named in combinations
/// of one's own while the model is off.
/// A virtual model that serves embeddings with members of different models: its vectors would come from
/// two models, which cannot be compared (the classic retrieval bug: an index built with one, queried with
/// the other). A model is known to embed when a cloud lists it so (`kind: embedding`).
fn embedding_mix_warnings(
    policy: &sluice_policy::PolicyConfig,
    config: &GatewayConfig,
    at: &Locator,
) -> Vec<ConfigError> {
    let embeds = |model: &str| embeds(&config.clouds, model);
    policy
        .models
        .iter()
        .filter(|v| v.members.iter().any(|m| embeds(&m.model)))
        .filter_map(|v| {
            let mut models: Vec<&str> = v.members.iter().map(|m| m.model.as_str()).collect();
            models.sort_unstable();
            models.dedup();
            (models.len() > 1).then(|| {
                at.error(
                    &format!("policy.models.{}.members", v.name),
                    format!(
                        "virtual model `{}` serves embeddings from different models ({}): vectors of different models cannot be compared, so an index built through it would mix them; give it members of one model (the same model served in several places)",
                        v.name,
                        models.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// Whether a cloud lists `model` as an embedding model.
fn embeds(clouds: &[CloudConfig], model: &str) -> bool {
    clouds
        .iter()
        .flat_map(|c| &c.models)
        .any(|m| m.id == model && m.kind == crate::backend::ModelKind::Embedding)
}

/// Fallbacks stand in for chat models: a local model's vectors are not a cloud embedding model's (another
/// space, other dimensions), so an entry naming an embedding model is an error.
fn embedding_fallback_errors(
    policy: &sluice_policy::PolicyConfig,
    clouds: &[CloudConfig],
    at: &Locator,
) -> Vec<ConfigError> {
    policy
        .fallbacks
        .iter()
        .enumerate()
        .flat_map(|(i, f)| f.models.iter().map(move |m| (i, m)))
        .filter(|(_, m)| embeds(clouds, m))
        .map(|(i, m)| {
            at.error(
                &format!("policy.fallbacks[{i}].model"),
                format!(
                    "{m:?} is an embedding model: fallbacks stand in for chat models (a local model's vectors are not {m}'s, so embeddings never fall back)"
                ),
            )
        })
        .collect()
}

fn scanner_warnings(config: &GatewayConfig, at: &Locator, own_combinations: bool) -> Vec<ConfigError> {
    let mut out: Vec<ConfigError> = config
        .scanner
        .combination_warnings()
        .into_iter()
        .map(|(i, message)| at.error(&format!("sensitivity.combinations[{i}]"), message))
        .collect();
    if own_combinations && config.ner.is_none() {
        let mut model_kinds: Vec<&str> = config
            .scanner
            .combination_kinds()
            .filter(|k| k.is_model())
            .map(|k| k.as_str())
            .collect();
        model_kinds.sort_unstable();
        model_kinds.dedup();
        if !model_kinds.is_empty() {
            out.push(at.error(
                "ner",
                format!(
                    "the personal-data model is off, so {} are never found: give a `ner:` section",
                    model_kinds.join(", ")
                ),
            ));
        }
    }
    out
}

impl RawGatewayConfig {
    /// Like [`Self::validate`], but reports every problem of the policy rather than the first, and lints
    /// it (rules that can never match or never be served, backends nothing reaches).
    pub fn check(
        mut self,
        file: Option<&Path>,
        text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> CheckReport {
        let policy = self.policy.take().unwrap_or_default();
        let own_combinations = self
            .sensitivity
            .as_ref()
            .is_some_and(|s| s.combinations.is_some());
        let mut config = match self.validate(file, text, env) {
            Ok(c) => c,
            Err(e) => {
                return CheckReport {
                    config: None,
                    errors: vec![e],
                    warnings: Vec::new(),
                };
            }
        };
        let at = Locator::new(file, text);
        let backends = backend_infos(config.local.as_ref(), &config.clouds);
        let tenants: Vec<String> = config.keys.iter().map(|k| k.tenant.clone()).collect();
        let cx = Context {
            backends: &backends,
            scanner: &config.scanner,
            tenants: &tenants,
        };
        match sluice_policy::config::compile(policy, &at, cx).and_then(|p| {
            match embedding_fallback_errors(&p, &config.clouds, &at) {
                errors if errors.is_empty() => Ok(p),
                errors => Err(errors),
            }
        }) {
            Ok(p) => {
                let mut warnings = sluice_policy::lint::lint(&p, &at, cx);
                warnings.extend(scanner_warnings(&config, &at, own_combinations));
                warnings.extend(embedding_mix_warnings(&p, &config, &at));
                config.policy = p;
                CheckReport {
                    config: Some(config),
                    errors: Vec::new(),
                    warnings,
                }
            }
            Err(errors) => CheckReport {
                config: None,
                errors,
                warnings: Vec::new(),
            },
        }
    }

    pub fn from_yaml_file(path: &Path) -> Result<(Self, String), ConfigError> {
        sluice_config::read_yaml_file(path)
    }

    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        sluice_config::parse_yaml(text)
    }

    /// Checks and converts every value. `file` and `text` locate errors; `env` reads the environment
    /// variables that hold keys.
    pub fn validate(
        self,
        file: Option<&Path>,
        text: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, ConfigError> {
        let at = Locator::new(file, text);
        let listen = address(&at, "listen", self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let admin_listen = match self.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
            "off" => None,
            a => Some(address(&at, "admin_listen", a)?),
        };

        let admin_token = match (self.admin_token_env, self.admin_token_sha256) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(at.error(
                    "admin_token_env",
                    "give admin_token_env or admin_token_sha256, not both",
                ));
            }
            (Some(var), None) => match env(&var) {
                Some(v) if !v.is_empty() => Some(crate::auth::AdminToken(hash_key(&v))),
                _ => {
                    return Err(at.error(
                        "admin_token_env",
                        format!("the environment variable {var} is not set"),
                    ));
                }
            },
            (None, Some(hex)) => Some(crate::auth::AdminToken(parse_sha256(&hex).ok_or_else(|| {
                at.error(
                    "admin_token_sha256",
                    "must be 64 hexadecimal digits (a SHA-256 of the token)",
                )
            })?)),
        };
        let allow_unauthenticated = self.allow_unauthenticated.unwrap_or(false);
        let mut keys = Vec::new();
        for (i, k) in self.api_keys.unwrap_or_default().into_iter().enumerate() {
            let key = |f: &str| format!("api_keys[{i}].{f}");
            let tenant = k
                .tenant
                .ok_or_else(|| at.error(&format!("api_keys[{i}]"), "`tenant` is required"))?;
            check_name(&at, &key("tenant"), &tenant)?;
            let sha256 = match (k.key_sha256, k.key_env) {
                (Some(hex), None) => parse_sha256(&hex).ok_or_else(|| {
                    at.error(
                        &key("key_sha256"),
                        "must be 64 hexadecimal digits (a SHA-256 of the key)",
                    )
                })?,
                (None, Some(var)) => match env(&var) {
                    Some(v) if !v.is_empty() => hash_key(&v),
                    _ => {
                        return Err(at.error(
                            &key("key_env"),
                            format!("the environment variable {var} is not set"),
                        ));
                    }
                },
                (Some(_), Some(_)) => {
                    return Err(at.error(&format!("api_keys[{i}]"), "give key_sha256 or key_env, not both"));
                }
                (None, None) => {
                    return Err(at.error(&format!("api_keys[{i}]"), "key_sha256 or key_env is required"));
                }
            };
            if keys.iter().any(|k: &ApiKey| k.sha256 == sha256) {
                return Err(at.error(&format!("api_keys[{i}]"), "the same key is listed twice"));
            }
            keys.push(ApiKey { tenant, sha256 });
        }
        if keys.is_empty() && !allow_unauthenticated {
            return Err(at.error(
                "api_keys",
                "no API keys: add at least one, or set allow_unauthenticated: true to serve without keys",
            ));
        }

        let raw_limits = self.limits.unwrap_or_default();
        let max_body_bytes = raw_limits.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=(256 << 20)).contains(&max_body_bytes) {
            return Err(at.error("limits.max_body_bytes", "must be between 1024 and 268435456"));
        }
        let max_in_flight = raw_limits.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=1_000_000).contains(&max_in_flight) {
            return Err(at.error("limits.max_in_flight", "must be between 1 and 1000000"));
        }
        let request_timeout = seconds(
            &at,
            "limits.request_timeout_seconds",
            raw_limits.request_timeout_seconds,
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
        )?;
        let (connections, admin_connections) = connection_limits(&at, &raw_limits)?;
        let limits = Limits {
            max_body_bytes,
            max_in_flight,
            request_timeout,
            connections,
            admin_connections,
        };
        let key_tenants: Vec<String> = keys.iter().map(|k| k.tenant.clone()).collect();
        let tenant_limits =
            self::limits::tenant_limits(&at, raw_limits, &key_tenants, allow_unauthenticated, env)?;

        let local = self.local.map(|l| local_pool(&at, l)).transpose()?;
        let mut clouds = Vec::new();
        let offline = self.offline.unwrap_or(false);
        for (i, c) in self.clouds.unwrap_or_default().into_iter().enumerate() {
            let mut c = cloud(&at, i, c, env)?;
            c.offline = offline;
            clouds.push(c);
        }
        let mut names: Vec<&str> = clouds.iter().map(|c| c.name.as_str()).collect();
        if let Some(l) = &local {
            names.push(&l.name);
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(at.error("clouds", format!("the backend name {n:?} is used twice")));
            }
        }
        if self.air_gapped.unwrap_or(false)
            && let Some(c) = clouds.first()
        {
            return Err(at.error(
                "clouds",
                format!(
                    "air_gapped is on, so no request may leave for a cloud, but cloud backend {:?} ({}) is configured: remove the clouds, or turn air_gapped off",
                    c.name, c.base_url
                ),
            ));
        }
        if local.as_ref().is_none_or(|l| !l.has_members()) && clouds.is_empty() {
            return Err(at.error(
                "(document)",
                "no backends: configure local.workers, local.kubernetes or clouds",
            ));
        }
        let drain_grace = seconds(
            &at,
            "drain_grace_seconds",
            self.drain_grace_seconds,
            DEFAULT_DRAIN_GRACE_SECONDS,
        )?;
        let reference_model = reference_model(&at, self.cost.unwrap_or_default(), &clouds)?;
        let audit = match self.audit {
            None => None,
            Some(a) => {
                let defaults = sluice_audit::AuditOptions::default();
                let options = sluice_audit::AuditOptions {
                    max_bytes: a.max_bytes.unwrap_or(defaults.max_bytes),
                    keep: a.keep.unwrap_or(defaults.keep),
                };
                if options.max_bytes < 4096 {
                    return Err(at.error("audit.max_bytes", "must be at least 4096"));
                }
                if options.keep == 0 {
                    return Err(at.error(
                        "audit.keep",
                        "must be at least 1: a rotated file holds the chain's link",
                    ));
                }
                let hash_prompts = a.hash_prompts.unwrap_or(false);
                match a.path {
                    Some(path) => Some(AuditConfig {
                        path,
                        options,
                        hash_prompts,
                    }),
                    None => return Err(at.error("audit", "`path` is required (or --audit-log PATH)")),
                }
            }
        };
        let scanner = sluice_sensitivity::Scanner::new(&self.sensitivity.unwrap_or_default())
            .map_err(|e| at.error("sensitivity", e.to_string()))?;
        let ner = ner::ner(&at, self.ner)?;
        let tracing = self
            .tracing
            .map(|t| t.validate(&at, "tracing", "sluice-gateway"))
            .transpose()?;
        let backends = backend_infos(local.as_ref(), &clouds);
        let tenants: Vec<String> = keys.iter().map(|k| k.tenant.clone()).collect();
        let cx = Context {
            backends: &backends,
            scanner: &scanner,
            tenants: &tenants,
        };
        let policy = sluice_policy::config::compile(self.policy.unwrap_or_default(), &at, cx)
            .map_err(|mut errors| errors.swap_remove(0))?;
        if let Some(e) = embedding_fallback_errors(&policy, &clouds, &at)
            .into_iter()
            .next()
        {
            return Err(e);
        }
        Ok(GatewayConfig {
            air_gapped: self.air_gapped.unwrap_or(false),
            audit,
            tracing,
            reference_model,
            policy,
            scanner,
            ner,
            listen,
            admin_listen,
            admin_token,
            keys,
            allow_unauthenticated,
            limits,
            tenant_limits,
            local,
            clouds,
            drain_grace,
        })
    }
}

impl GatewayConfig {
    /// The configured backends, in the fleet's order.
    pub fn backends(&self) -> impl Iterator<Item = BackendSpec<'_>> {
        backends_in_order(self.local.as_ref(), &self.clouds)
    }
}

/// One configured backend.
#[derive(Debug, Clone, Copy)]
pub enum BackendSpec<'a> {
    Local(&'a PoolConfig),
    Cloud(&'a CloudConfig),
}

/// The one order of the backends, everywhere (the fleet, its offline view, the policy checks, and so
/// the indices decisions use): the local pool first when it has or may find workers, then the clouds in
/// configuration order.
pub fn backends_in_order<'a>(
    local: Option<&'a PoolConfig>,
    clouds: &'a [CloudConfig],
) -> impl Iterator<Item = BackendSpec<'a>> {
    local
        .filter(|l| l.has_members())
        .map(BackendSpec::Local)
        .into_iter()
        .chain(clouds.iter().map(BackendSpec::Cloud))
}

/// The backends as the policy checks see them, in the fleet's order.
pub fn backend_infos(local: Option<&PoolConfig>, clouds: &[CloudConfig]) -> Vec<BackendInfo> {
    backends_in_order(local, clouds)
        .map(|spec| match spec {
            BackendSpec::Local(l) => BackendInfo {
                name: l.name.clone(),
                route: Route::Local,
                clearance: l.clearance,
                models: None,
            },
            BackendSpec::Cloud(c) => BackendInfo {
                name: c.name.clone(),
                route: Route::Cloud,
                clearance: c.clearance,
                models: Some(c.models.iter().map(|m| m.id.clone()).collect()),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests;
