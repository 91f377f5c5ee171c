//! The fleet a replay runs on: the local worker nodes (how many, their slots and queue, how fast they
//! read prompts and write answers, what they cost by the hour) and how soon each cloud answers. From a
//! fleet file, or measured from the trace itself (what its recorded local and cloud requests took).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_config::{ConfigError, Locator};
use sluice_gateway::GatewayConfig;

use crate::calibrate::Measured;
use crate::stats::Reservoir;
use crate::trace::TraceRequest;

/// The worker's own defaults (`sluice worker`): requests run at once, requests waiting, prompt tokens
/// per round.
pub const DEFAULT_SLOTS: u32 = 4;
pub const DEFAULT_MAX_WAITING: u32 = 16;
pub const DEFAULT_PREFILL_CHUNK: u32 = 64;
/// Decode throughput with every slot busy against one stream alone, as measured on the demo model
/// (docs/benchmarks.md: 8 streams gave 2.02x to 2.18x one stream).
pub const DEFAULT_BATCH_SPEEDUP: f64 = 2.0;

/// The fleet file (`--fleet`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub local: Option<LocalFile>,
    /// By cloud backend name.
    #[serde(default)]
    pub clouds: BTreeMap<String, CloudFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFile {
    pub nodes: Option<u32>,
    pub slots: Option<u32>,
    pub max_waiting: Option<u32>,
    /// Prompt tokens a request reads per round (the worker's `prefill_chunk`).
    pub prefill_chunk: Option<u32>,
    /// Prompt tokens per second of one request alone.
    pub prefill_tokens_per_second: Option<f64>,
    /// Answer tokens per second of one stream alone.
    pub decode_tokens_per_second: Option<f64>,
    /// Decode throughput with every slot busy, as a multiple of one stream's.
    pub batch_speedup: Option<f64>,
    /// One node's cost; the gateway configuration's `local.cost` otherwise.
    pub usd_per_hour: Option<f64>,
    /// The models the nodes serve; those the trace shows served locally, and those the policy sends
    /// there, otherwise.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudFile {
    /// Time to first token, used when the trace shows none for this backend.
    pub ttft_ms: Option<f64>,
}

/// The local nodes, all alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalFleet {
    pub nodes: u32,
    pub slots: u32,
    pub max_waiting: u32,
    pub prefill_chunk: u32,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub batch_speedup: f64,
    pub usd_per_hour: f64,
    pub models: Vec<String>,
}

/// The fleet a replay runs on, and where each figure came from.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    pub local: Option<LocalFleet>,
    /// Each cloud backend's time-to-first-token when the trace shows none: from the fleet file.
    pub cloud_ttft_ms: BTreeMap<String, f64>,
    /// `figure: where it came from` (`fleet file`, `measured from N requests`, `default`).
    pub sources: BTreeMap<String, String>,
}

/// What a first pass over the trace saw: its span, and what its recorded requests took.
#[derive(Debug)]
pub struct Observed {
    pub requests: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Local members that served (recorded backends of the local route).
    pub local_backends: BTreeSet<String>,
    pub local_models: BTreeSet<String>,
    /// Recorded time to first token, by cloud backend (seconds).
    pub cloud_ttft: BTreeMap<String, Reservoir>,
    /// The longest recorded request, arrival to end: an audit log is written as requests end, so a
    /// record is at most this far behind the records that arrived after it.
    pub max_duration_ms: f64,
}

const SAMPLES: usize = 4096;

impl Default for Observed {
    fn default() -> Self {
        Self {
            requests: 0,
            first_ms: None,
            last_ms: None,
            local_backends: BTreeSet::new(),
            local_models: BTreeSet::new(),
            cloud_ttft: BTreeMap::new(),
            max_duration_ms: 0.0,
        }
    }
}

impl Observed {
    pub fn add(&mut self, r: &TraceRequest) {
        self.requests += 1;
        self.first_ms = Some(self.first_ms.map_or(r.time_ms, |t| t.min(r.time_ms)));
        self.last_ms = Some(self.last_ms.map_or(r.time_ms, |t| t.max(r.time_ms)));
        let Some(rec) = &r.recorded else { return };
        if let Some(d) = rec.duration_ms.filter(|d| d.is_finite()) {
            self.max_duration_ms = self.max_duration_ms.max(d);
        }
        if rec.status != 200 {
            return;
        }
        match rec.route.as_str() {
            "local" => {
                if let Some(b) = &rec.backend {
                    self.local_backends.insert(b.clone());
                }
                self.local_models
                    .insert(rec.served_model.clone().unwrap_or_else(|| r.model.clone()));
            }
            "cloud" | "redacted-cloud" => {
                if let (Some(b), Some(ttft)) = (&rec.backend, rec.ttft_ms) {
                    self.cloud_ttft
                        .entry(b.clone())
                        .or_insert_with(|| Reservoir::new(SAMPLES))
                        .add(ttft / 1000.0);
                }
            }
            _ => {}
        }
    }
}

/// Why a fleet cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Reads and checks a fleet file.
pub fn read_fleet_file(path: &Path) -> Result<(FleetFile, String), FleetError> {
    let (file, text): (FleetFile, String) = sluice_config::read_yaml_file(path)?;
    let at = Locator::new(Some(path), Some(&text));
    if let Some(l) = &file.local {
        let positive = |key: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => Err(at.error(key, format!("must be above 0, got {v}"))),
            _ => Ok(()),
        };
        positive("local.prefill_tokens_per_second", l.prefill_tokens_per_second)?;
        positive("local.decode_tokens_per_second", l.decode_tokens_per_second)?;
        if let Some(b) = l.batch_speedup.filter(|b| !(b.is_finite() && *b >= 1.0)) {
            return Err(at
                .error("local.batch_speedup", format!("must be at least 1, got {b}"))
                .into());
        }
        if let Some(u) = l.usd_per_hour.filter(|u| !(u.is_finite() && *u >= 0.0)) {
            return Err(at
                .error("local.usd_per_hour", format!("must be 0 or more, got {u}"))
                .into());
        }
        if l.slots == Some(0) {
            return Err(at.error("local.slots", "must be at least 1").into());
        }
        if l.prefill_chunk == Some(0) {
            return Err(at.error("local.prefill_chunk", "must be at least 1").into());
        }
    }
    for (name, c) in &file.clouds {
        if let Some(t) = c.ttft_ms.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return Err(at
                .error(
                    &format!("clouds.{name}.ttft_ms"),
                    format!("must be 0 or more, got {t}"),
                )
                .into());
        }
    }
    Ok((file, text))
}

impl Fleet {
    /// The fleet: each figure from the fleet file when it gives it, else measured from the trace, else
    /// the worker's default. `None` local fleet when the configuration has no local pool.
    pub fn build(
        config: &GatewayConfig,
        file: Option<&FleetFile>,
        observed: &Observed,
        measured: &Measured,
    ) -> Fleet {
        let mut sources = BTreeMap::new();
        let mut source = |k: &str, s: String| {
            sources.insert(k.to_owned(), s);
        };
        let local =
            config.local.as_ref().map(|pool| {
                let f = file.and_then(|f| f.local.as_ref());
                let nodes = match f.and_then(|l| l.nodes) {
                    Some(n) => {
                        source("nodes", "fleet file".into());
                        n
                    }
                    None if !observed.local_backends.is_empty() => {
                        source("nodes", "the workers that served in the trace".into());
                        observed.local_backends.len() as u32
                    }
                    None if !pool.workers.is_empty() => {
                        source("nodes", "the workers the configuration names".into());
                        pool.workers.len() as u32
                    }
                    None => {
                        source("nodes", "default".into());
                        1
                    }
                };
                let mut from_file = |key: &str, v: Option<u32>, default: u32| match v {
                    Some(v) => {
                        source(key, "fleet file".into());
                        v
                    }
                    None => {
                        source(key, "the worker's default".into());
                        default
                    }
                };
                let slots = from_file("slots", f.and_then(|l| l.slots), DEFAULT_SLOTS);
                let max_waiting =
                    from_file("max_waiting", f.and_then(|l| l.max_waiting), DEFAULT_MAX_WAITING);
                let prefill_chunk = from_file(
                    "prefill_chunk",
                    f.and_then(|l| l.prefill_chunk),
                    DEFAULT_PREFILL_CHUNK,
                );
                let mut rate =
                    |key: &str, given: Option<f64>, seen: &Option<(f64, String)>, default: f64, why: &str| {
                        match (given, seen) {
                            (Some(v), _) => {
                                source(key, "fleet file".into());
                                v
                            }
                            (None, Some((v, how))) => {
                                source(key, how.clone());
                                *v
                            }
                            (None, None) => {
                                source(key, format!("default ({why})"));
                                default
                            }
                        }
                    };
                let none = "no local request with timings in the trace";
                let prefill = rate(
                    "prefill_tokens_per_second",
                    f.and_then(|l| l.prefill_tokens_per_second),
                    &measured.prefill,
                    1000.0,
                    none,
                );
                let decode = rate(
                    "decode_tokens_per_second",
                    f.and_then(|l| l.decode_tokens_per_second),
                    &measured.decode,
                    50.0,
                    none,
                );
                let batch_speedup = rate(
                    "batch_speedup",
                    f.and_then(|l| l.batch_speedup),
                    &measured.batch_speedup,
                    DEFAULT_BATCH_SPEEDUP,
                    "the demo model's measured 2x at full batch; no requests in the trace shared a node",
                );
                let usd_per_hour = match f.and_then(|l| l.usd_per_hour) {
                    Some(u) => {
                        source("usd_per_hour", "fleet file".into());
                        u
                    }
                    None => {
                        source("usd_per_hour", "the configuration's local.cost".into());
                        pool.node_cost.usd_per_hour()
                    }
                };
                let models = match f.and_then(|l| l.models.clone()) {
                    Some(m) => {
                        source("models", "fleet file".into());
                        m
                    }
                    None => {
                        source(
                            "models",
                            "served locally in the trace, or named for local by the policy".into(),
                        );
                        let mut m: BTreeSet<String> = observed.local_models.clone();
                        for model in &observed.local_models {
                            m.extend(sluice_gateway::fleet::assumed_local_models(config, model));
                        }
                        if m.is_empty() {
                            m.extend(sluice_gateway::fleet::assumed_local_models(config, ""));
                            m.remove("");
                        }
                        m.into_iter().collect()
                    }
                };
                LocalFleet {
                    nodes,
                    slots,
                    max_waiting,
                    prefill_chunk,
                    prefill_tokens_per_second: prefill,
                    decode_tokens_per_second: decode,
                    batch_speedup,
                    usd_per_hour,
                    models,
                }
            });
        let cloud_ttft_ms = file
            .map(|f| {
                f.clouds
                    .iter()
                    .filter_map(|(name, c)| Some((name.clone(), c.ttft_ms?)))
                    .collect()
            })
            .unwrap_or_default();
        Fleet {
            local,
            cloud_ttft_ms,
            sources,
        }
    }
}
