//! The gateway's configuration: YAML as written ([`RawGatewayConfig`], every key optional, unknown keys
//! refused), then [`GatewayConfig`] with every value parsed and checked, before anything starts. Errors
//! name the file, the line and the key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_config::{ConfigError, Locator};

use crate::auth::{ApiKey, hash_key};
use crate::backend::Prices;
use crate::backend::cloud::{CloudConfig, CloudModel};
use crate::backend::local::{ClientTls, PoolConfig, WorkerAddress};
use crate::cost::NodeCost;
use crate::level::Level;
use crate::policy::PolicyConfig;
use crate::policy::config::{BackendInfo, Context, RawPolicy};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 4 MiB: a long conversation with tool definitions fits many times over.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: f64 = 300.0;
pub const DEFAULT_DRAIN_GRACE_SECONDS: f64 = 30.0;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayConfig {
    /// Public address (the OpenAI API).
    pub listen: Option<String>,
    /// Operators' address (`/metrics`, `/admin/*`), or "off".
    pub admin_listen: Option<String>,
    /// Serve without API keys (every request is tenant `anonymous`). Off unless set.
    pub allow_unauthenticated: Option<bool>,
    /// Air-gapped mode: no cloud backend may be configured; the gateway refuses to start with one.
    pub air_gapped: Option<bool>,
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

/// Where and how decisions are audited.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    pub options: sluice_audit::AuditOptions,
    pub hash_prompts: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    /// The cloud model locally served requests are also priced at.
    pub reference_model: Option<RawCloudModel>,
}

/// What a worker node costs (every key optional; defaults in [`NodeCost::default`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeCost {
    pub capex_usd: Option<f64>,
    pub lifetime_years: Option<f64>,
    pub power_watts: Option<f64>,
    pub pue: Option<f64>,
    pub usd_per_kwh: Option<f64>,
    pub overhead_usd_per_hour: Option<f64>,
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
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub clearance: Option<String>,
    pub timeout_seconds: Option<f64>,
    pub connect_timeout_seconds: Option<f64>,
    pub max_retries: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    pub models: Option<Vec<RawCloudModel>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudModel {
    pub id: Option<String>,
    pub input_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: Option<f64>,
}

/// Request limits of the public listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Requests (streams included, until their last byte) served at once; more are shed with 429.
    pub max_in_flight: usize,
    /// Each request's deadline, from arrival to its last byte.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: Duration::from_secs_f64(DEFAULT_REQUEST_TIMEOUT_SECONDS),
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
    pub keys: Vec<ApiKey>,
    pub allow_unauthenticated: bool,
    pub limits: Limits,
    pub local: Option<PoolConfig>,
    pub clouds: Vec<CloudConfig>,
    pub drain_grace: Duration,
    /// The content scanner, compiled.
    pub scanner: sluice_sensitivity::Scanner,
    pub policy: PolicyConfig,
    /// The cloud model locally served requests are also priced at, when there is one.
    pub reference_model: Option<(String, Prices)>,
    pub audit: Option<AuditConfig>,
}

/// What `sluice policy check` reports: every problem it can find, and warnings.
#[derive(Debug)]
pub struct CheckReport {
    /// The configuration, when it is valid.
    pub config: Option<GatewayConfig>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigError>,
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
        match crate::policy::config::compile(policy, &at, cx) {
            Ok(p) => {
                let warnings = crate::policy::config::lint(&p, &at, cx);
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
        let limits = Limits {
            max_body_bytes,
            max_in_flight,
            request_timeout,
        };

        let local = self.local.map(|l| local_pool(&at, l)).transpose()?;
        let mut clouds = Vec::new();
        for (i, c) in self.clouds.unwrap_or_default().into_iter().enumerate() {
            clouds.push(cloud(&at, i, c, env)?);
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
        let backends = backend_infos(local.as_ref(), &clouds);
        let tenants: Vec<String> = keys.iter().map(|k| k.tenant.clone()).collect();
        let cx = Context {
            backends: &backends,
            scanner: &scanner,
            tenants: &tenants,
        };
        let policy = crate::policy::config::compile(self.policy.unwrap_or_default(), &at, cx)
            .map_err(|mut errors| errors.swap_remove(0))?;
        Ok(GatewayConfig {
            air_gapped: self.air_gapped.unwrap_or(false),
            audit,
            reference_model,
            policy,
            scanner,
            listen,
            admin_listen,
            keys,
            allow_unauthenticated,
            limits,
            local,
            clouds,
            drain_grace,
        })
    }
}

impl GatewayConfig {
    /// The fleet as this configuration describes it, for explaining decisions without contacting
    /// anything: every backend up and idle unless named in `down`, the local pool serving `local_models`
    /// (its workers say what they serve only when they run).
    pub fn offline_view(&self, local_models: &[String], down: &[String]) -> crate::route::FleetView {
        use crate::backend::{ModelCard, Route};
        use crate::route::{BackendView, Load};
        let view = |name: &str, route, clearance, models| BackendView {
            name: name.to_owned(),
            route,
            clearance,
            models,
            ready: !down.iter().any(|d| d == name),
            load: Load::default(),
            ttft_seconds: None,
            tokens_per_second: None,
        };
        let mut backends = Vec::new();
        if let Some(l) = self.local.as_ref().filter(|l| l.has_members()) {
            let models = local_models
                .iter()
                .map(|m| ModelCard {
                    id: m.clone(),
                    prices: None,
                })
                .collect();
            backends.push(view(&l.name, Route::Local, l.clearance, models));
        }
        for c in &self.clouds {
            let models = c
                .models
                .iter()
                .map(|m| ModelCard {
                    id: m.id.clone(),
                    prices: Some(m.prices),
                })
                .collect();
            backends.push(view(&c.name, Route::Cloud, c.clearance, models));
        }
        crate::route::FleetView { backends }
    }
}

/// The backends as the policy checks see them, in the order the fleet has them (the local pool first).
pub fn backend_infos(local: Option<&PoolConfig>, clouds: &[CloudConfig]) -> Vec<BackendInfo> {
    let mut out = Vec::new();
    if let Some(l) = local.filter(|l| l.has_members()) {
        out.push(BackendInfo {
            name: l.name.clone(),
            route: crate::backend::Route::Local,
            clearance: l.clearance,
            models: None,
        });
    }
    for c in clouds {
        out.push(BackendInfo {
            name: c.name.clone(),
            route: crate::backend::Route::Cloud,
            clearance: c.clearance,
            models: Some(c.models.iter().map(|m| m.id.clone()).collect()),
        });
    }
    out
}

fn address(at: &Locator<'_>, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        at.error(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080 ({e})"),
        )
    })
}

fn seconds(at: &Locator<'_>, key: &str, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(at.error(
            key,
            format!("must be a number of seconds above 0 and at most 86400, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Names appear in headers and metric labels: keep them short and plain.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn check_name(at: &Locator<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
    if !is_plain_name(name) {
        return Err(at.error(
            key,
            format!("{name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn level(at: &Locator<'_>, key: &str, value: Option<String>, default: Level) -> Result<Level, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e: crate::level::UnknownLevel| at.error(key, e.to_string())),
    }
}

fn read_pem(at: &Locator<'_>, key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| at.error(key, format!("cannot read {}: {e}", path.display())))
}

fn local_pool(at: &Locator<'_>, raw: RawLocal) -> Result<PoolConfig, ConfigError> {
    let name = raw.name.unwrap_or_else(|| "local".to_owned());
    check_name(at, "local.name", &name)?;
    let clearance = level(at, "local.clearance", raw.clearance, Level::Restricted)?;
    let tls = match raw.tls {
        None => None,
        Some(t) => {
            let identity = match (t.cert, t.key) {
                (Some(c), Some(k)) => Some((
                    read_pem(at, "local.tls.cert", &c)?,
                    read_pem(at, "local.tls.key", &k)?,
                )),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(at.error("local.tls.key", "a client certificate needs its key"));
                }
                (None, Some(_)) => {
                    return Err(at.error("local.tls.cert", "a client key needs its certificate"));
                }
            };
            let ca_pem = t.ca.map(|p| read_pem(at, "local.tls.ca", &p)).transpose()?;
            Some(ClientTls {
                ca_pem,
                identity,
                domain: t.domain,
            })
        }
    };
    let mut workers: Vec<WorkerAddress> = Vec::new();
    for (i, w) in raw.workers.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("local.workers[{i}].{f}");
        let Some(address) = w.address else {
            return Err(at.error(&format!("local.workers[{i}]"), "`address` is required"));
        };
        let uri = worker_uri(&address, tls.is_some()).ok_or_else(|| {
            at.error(
                &key("address"),
                format!("{address:?} is not host:port or an http(s):// URL"),
            )
        })?;
        let name = w.name.unwrap_or_else(|| format!("worker-{i}"));
        check_name(at, &key("name"), &name)?;
        let cost = node_cost(at, &key("cost"), &[raw.cost.as_ref(), w.cost.as_ref()])?;
        if workers.iter().any(|x| x.name == name) {
            return Err(at.error(&key("name"), format!("the worker name {name:?} is used twice")));
        }
        workers.push(WorkerAddress { name, uri, cost });
    }
    let node_cost = node_cost(at, "local.cost", &[raw.cost.as_ref()])?;
    let kubernetes = raw.kubernetes.map(|k| kubernetes(at, k)).transpose()?;
    if kubernetes.is_some() && tls.as_ref().is_some_and(|t| t.domain.is_none()) {
        return Err(at.error(
            "local.tls.domain",
            "is required with local.kubernetes: discovered workers are reached by pod IP, so name the host their certificates are for",
        ));
    }
    let connect_timeout = seconds(
        at,
        "local.connect_timeout_seconds",
        raw.connect_timeout_seconds,
        2.0,
    )?;
    let breaker = raw.breaker.unwrap_or_default();
    let breaker_failures = breaker.failures.unwrap_or(3);
    if breaker_failures == 0 {
        return Err(at.error("local.breaker.failures", "must be at least 1"));
    }
    let breaker_cooldown = seconds(
        at,
        "local.breaker.cooldown_seconds",
        breaker.cooldown_seconds,
        10.0,
    )?;
    Ok(PoolConfig {
        name,
        workers,
        tls,
        clearance,
        connect_timeout,
        breaker_failures,
        breaker_cooldown,
        kubernetes,
        node_cost,
    })
}

/// `local.kubernetes`: which Service's EndpointSlices list the workers.
fn kubernetes(at: &Locator<'_>, raw: RawKubernetes) -> Result<sluice_discovery::Target, ConfigError> {
    // DNS-1123 labels, as Kubernetes names Services and namespaces.
    let dns_label = |key: &str, v: &str| {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if ok {
            Ok(())
        } else {
            Err(at.error(
                key,
                format!("{v:?} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)"),
            ))
        }
    };
    let Some(service) = raw.service else {
        return Err(at.error(
            "local.kubernetes.service",
            "the headless Service in front of the workers is required",
        ));
    };
    dns_label("local.kubernetes.service", &service)?;
    if let Some(ns) = &raw.namespace {
        dns_label("local.kubernetes.namespace", ns)?;
    }
    let port = match raw.port {
        None => sluice_discovery::Port::Name("grpc".to_owned()),
        Some(RawPort::Number(n)) => match u16::try_from(n) {
            Ok(n) if n > 0 => sluice_discovery::Port::Number(n),
            _ => {
                return Err(at.error(
                    "local.kubernetes.port",
                    format!("{n} is not a port number (1 to 65535)"),
                ));
            }
        },
        Some(RawPort::Name(n)) if n.is_empty() || n.len() > 15 => {
            return Err(at.error(
                "local.kubernetes.port",
                format!("{n:?} is not a port name (1 to 15 characters) or number"),
            ));
        }
        Some(RawPort::Name(n)) => sluice_discovery::Port::Name(n),
    };
    Ok(sluice_discovery::Target {
        service,
        namespace: raw.namespace,
        port,
        kubeconfig: raw.kubeconfig,
    })
}

/// A node's cost: the defaults, then the pool's keys, then the worker's own.
fn node_cost(at: &Locator<'_>, key: &str, layers: &[Option<&RawNodeCost>]) -> Result<NodeCost, ConfigError> {
    let mut c = NodeCost::default();
    for l in layers.iter().flatten() {
        let set = |v: Option<f64>, into: &mut f64| {
            if let Some(v) = v {
                *into = v;
            }
        };
        set(l.capex_usd, &mut c.capex_usd);
        set(l.lifetime_years, &mut c.lifetime_years);
        set(l.power_watts, &mut c.power_watts);
        set(l.pue, &mut c.pue);
        set(l.usd_per_kwh, &mut c.usd_per_kwh);
        set(l.overhead_usd_per_hour, &mut c.overhead_usd_per_hour);
    }
    let check = |field: &str, v: f64, ok: bool, want: &str| {
        if v.is_finite() && ok {
            Ok(())
        } else {
            Err(at.error(&format!("{key}.{field}"), format!("must be {want}, got {v}")))
        }
    };
    check("capex_usd", c.capex_usd, c.capex_usd >= 0.0, "0 or more")?;
    check(
        "lifetime_years",
        c.lifetime_years,
        c.lifetime_years > 0.0,
        "above 0",
    )?;
    check("power_watts", c.power_watts, c.power_watts >= 0.0, "0 or more")?;
    check("pue", c.pue, c.pue >= 1.0, "1 or more")?;
    check("usd_per_kwh", c.usd_per_kwh, c.usd_per_kwh >= 0.0, "0 or more")?;
    check(
        "overhead_usd_per_hour",
        c.overhead_usd_per_hour,
        c.overhead_usd_per_hour >= 0.0,
        "0 or more",
    )?;
    Ok(c)
}

/// The reference model: as configured (prices given, or those of the cloud model with that id), or else
/// the first cloud model listed.
fn reference_model(
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

/// `host:port` or a URL, as the URI tonic connects to (`https` when TLS is configured).
pub fn worker_uri(address: &str, tls: bool) -> Option<String> {
    let address = address.trim();
    let uri = if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else {
        format!("{}://{address}", if tls { "https" } else { "http" })
    };
    let rest = uri.split_once("://")?.1;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some(uri)
}

fn cloud(
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
    let base_url = raw.base_url.ok_or_else(|| {
        at.error(
            &format!("clouds[{i}]"),
            "`base_url` is required (e.g. https://api.openai.com/v1)",
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
        let prices = Prices {
            input_usd_per_mtok: price("input_usd_per_mtok", m.input_usd_per_mtok)?,
            output_usd_per_mtok: price("output_usd_per_mtok", m.output_usd_per_mtok)?,
        };
        if models.iter().any(|x: &CloudModel| x.id == id) {
            return Err(at.error(&mkey("id"), format!("the model {id:?} is listed twice")));
        }
        models.push(CloudModel { id, prices });
    }
    if models.is_empty() {
        return Err(at.error(&key("models"), "list at least one model with its prices"));
    }
    Ok(CloudConfig {
        name,
        base_url,
        api_key,
        models,
        clearance,
        connect_timeout,
        timeout,
        max_retries,
        retry_backoff,
    })
}

#[cfg(test)]
mod tests;
