//! `sluice up`: the whole fleet on one machine. A worker with the demo model (or the workers given with
//! `--worker`), a cloud backend (OpenAI when `OPENAI_API_KEY` is set, otherwise the built-in simulator),
//! and the gateway in front, all in this process but talking over real sockets: gRPC to the worker, HTTP
//! to the cloud.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use sluice_gateway::{BoundAddrs, RawGatewayConfig};
use sluice_simcloud::{Sim, SimConfig, SimModel};
use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{Failure, shutdown_signal};
use crate::args::UpArgs;

mod banner;
use banner::{Readiness, print_banner};

/// The cloud model `sluice up` offers, at OpenAI's list price (USD per million tokens, November 2026).
const CLOUD_MODEL: &str = "gpt-4o-mini";
const CLOUD_INPUT_PRICE: f64 = 0.15;
const CLOUD_OUTPUT_PRICE: f64 = 0.60;
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The cloud embedding model `sluice up` offers, at OpenAI's list price (USD per million input tokens), and
/// the length of its vectors.
const CLOUD_EMBEDDING_MODEL: &str = "text-embedding-3-small";
const CLOUD_EMBEDDING_PRICE: f64 = 0.02;
const CLOUD_EMBEDDING_DIMENSIONS: u32 = 1536;
/// The routing policy `sluice up` runs with: a request for the cloud model whose sensitive data is only
/// names, e-mail addresses and phone numbers goes to the cloud with them replaced by placeholders (and
/// put back in the answer); any other sensitive data stays on the local workers (a request for the cloud
/// model that carries it is served by the local model instead, and says so); everything else goes where
/// the client asked, and `auto` picks the cheapest backend expected to meet the latency objective.
/// `{local}` and `{cloud}` are the local model and the cloud backend's name.
const UP_POLICY: &str = r#"
max_ttft_ms: 2000
models:
  auto:
    strategy: cheapest_within_slo
    members:
      - { backend: local, model: "{local}" }
      - { backend: "{cloud}", model: gpt-4o-mini }
over_budget: { substitute: "{local}" }
fallbacks:
  - { model: gpt-4o-mini, to: "{local}", on: [cloud_unavailable, cloud_rate_limited] }
rules:
  - name: contacts-redacted
    when: { min_level: confidential, model: gpt-4o-mini }
    then:
      redact:
        to: "{cloud}"
        kinds: [person_name, email, phone]
        fallback: { substitute: "{local}" }
{embedding_rule}  - name: sensitive-local-only
    when: { min_level: confidential }
    then: { route: local }
"#;

/// With the embedding model: confidential text is never embedded by the cloud model, and never by another
/// model in its place (vectors of different models must not be mixed in one index); over budget, cloud
/// embeddings are refused rather than made by the local chat model.
const UP_EMBEDDING_RULE: &str = r#"  - name: sensitive-embeddings-local
    when: { min_level: confidential, model: text-embedding-3-small }
    then: { reject: "confidential text is embedded only by the local model {embedding} (embed the whole collection with it: its vectors and text-embedding-3-small's cannot be mixed)" }
  - name: cloud-embeddings
    when: { model: text-embedding-3-small }
    then: { route: cloud }
    over_budget: reject
"#;

/// The demo key's limits: generous rates, and a small daily cloud budget after which cloud-bound requests
/// are served by the local model (the policy's `over_budget`).
const UP_REQUESTS_PER_MINUTE: u64 = 600;
const UP_TOKENS_PER_MINUTE: u64 = 200_000;
const UP_DAILY_BUDGET_USD: f64 = 0.10;

/// Where `sluice sim-cloud` and `sluice worker` listen by default: `--print-config` writes these for the
/// parts `up` would start itself on free ports.
const SIM_CLOUD_DEFAULT_PORT: u16 = 8090;
const WORKER_DEFAULT_PORT: u16 = 50051;

/// How long `up` waits for the local worker to load its model before it says so and serves anyway.
const WORKER_READY_WAIT: Duration = Duration::from_secs(300);

/// The cloud side of the fleet.
enum Cloud {
    OpenAi { base_url: String },
    Simulator { addr: SocketAddr },
}

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let key = args.api_key.clone().unwrap_or_else(new_key);

    // The personal-data model, fetched and converted on first use like the demo model.
    let ner = if args.no_ner {
        None
    } else {
        let cache = sluice_models::cache_dir();
        let (weights, tokenizer) =
            tokio::task::spawn_blocking(move || super::models::pull_ner(&cache, false))
                .await
                .context("fetch task failed")??;
        Some((weights, tokenizer))
    };
    let ner_on = ner.is_some();

    // The cloud: OpenAI itself when a key is in the environment, as the official SDKs read it.
    let openai_key = std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty());
    let cloud = match openai_key {
        Some(_) => Cloud::OpenAi {
            base_url: std::env::var("OPENAI_BASE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| OPENAI_BASE_URL.to_owned()),
        },
        // Printing only: `sluice sim-cloud` at its default address.
        None if args.print_config => Cloud::Simulator {
            addr: SocketAddr::from(([127, 0, 0, 1], SIM_CLOUD_DEFAULT_PORT)),
        },
        None => {
            let sim = Sim::new(SimConfig {
                models: vec![
                    SimModel::new(CLOUD_MODEL, CLOUD_INPUT_PRICE, CLOUD_OUTPUT_PRICE),
                    SimModel::embedding(
                        CLOUD_EMBEDDING_MODEL,
                        CLOUD_EMBEDDING_PRICE,
                        CLOUD_EMBEDDING_DIMENSIONS,
                    ),
                ],
                // Latency and speed in the range of a hosted small model, so the difference shows.
                ttft: Duration::from_millis(300),
                tokens_per_second: 80.0,
                answer_tokens: 24,
                ..SimConfig::default()
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("cannot bind the cloud simulator")?;
            let addr = listener.local_addr().context("cloud simulator address")?;
            let stopped = stop();
            tokio::spawn(async move {
                if let Err(e) = sluice_simcloud::serve(listener, sim, stopped).await {
                    tracing::error!(error = %e, "cloud simulator failed");
                }
            });
            Cloud::Simulator { addr }
        }
    };

    // The workers: the ones given, or two started here: the demo model (or --model) and the embedding
    // model (unless --no-embeddings).
    let mut workers = args.worker.clone();
    let mut own_workers = Vec::new();
    let mut own_model = None;
    let mut embedding_model = None;
    if workers.is_empty() {
        let chat = sluice_worker::RawWorkerConfig {
            model: args.model.clone(),
            listen: Some("127.0.0.1:0".into()),
            metrics_listen: Some("off".into()),
            slots: Some(args.slots),
            ..Default::default()
        }
        .validate(None, None)
        .map_err(|e| Failure::Usage(e.to_string()))?;
        own_model = Some(chat.model_id.clone());
        let mut configs = vec![chat];
        if !args.no_embeddings {
            let embed = sluice_worker::RawWorkerConfig {
                model: Some(sluice_models::EMBEDDING_MODEL_ID.into()),
                listen: Some("127.0.0.1:0".into()),
                metrics_listen: Some("off".into()),
                ..Default::default()
            }
            .validate(None, None)
            .map_err(|e| Failure::Usage(e.to_string()))?;
            embedding_model = Some(embed.model_id.clone());
            configs.push(embed);
        }
        for (i, config) in configs.into_iter().enumerate() {
            if args.print_config {
                // Printing only: `sluice worker` at its default address (the next port for the second).
                workers.push(format!("127.0.0.1:{}", WORKER_DEFAULT_PORT + i as u16));
                continue;
            }
            let (addr, handle) = start_worker(config, stop()).await?;
            workers.push(addr.to_string());
            own_workers.push(handle);
        }
    }

    let cloud_name = match cloud {
        Cloud::OpenAi { .. } => "openai",
        Cloud::Simulator { .. } => "sim-cloud",
    };
    let local_model = own_model.unwrap_or_else(|| sluice_models::DEMO_MODEL_ID.to_owned());
    let cloud_url = match &cloud {
        Cloud::OpenAi { base_url } => base_url.clone(),
        Cloud::Simulator { addr } => format!("http://{addr}/v1"),
    };
    let yaml = config_yaml(&UpConfig {
        args: &args,
        workers: &workers,
        local_model: &local_model,
        cloud_name,
        cloud_url: &cloud_url,
        openai: matches!(cloud, Cloud::OpenAi { .. }),
        ner: ner.as_ref(),
        embeddings: embedding_model.is_some(),
    });
    if args.print_config {
        print!(
            "# The gateway configuration `sluice up` runs. The worker and the cloud simulator it starts on free\n\
             # ports are written at the addresses `sluice worker` and `sluice sim-cloud` listen on by default;\n\
             # the API key is read from SLUICE_UP_KEY.\n{yaml}"
        );
        return Ok(());
    }
    let raw = RawGatewayConfig::from_yaml_str(&yaml)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("the built-in configuration: {e}")))?;
    let env = |var: &str| match var {
        "SLUICE_UP_KEY" => Some(key.clone()),
        other => std::env::var(other).ok(),
    };
    let config = raw
        .validate(None, Some(&yaml), &env)
        .map_err(|e| Failure::Usage(e.to_string()))?;

    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<BoundAddrs>();
    let stopped = stop();
    let gateway = tokio::spawn(async move {
        sluice_gateway::run(config, prometheus::Registry::new(), stopped, move |b| {
            let _ = bound_tx.send(b);
        })
        .await
    });
    let bound = match bound_rx.await {
        Ok(b) => b,
        Err(_) => {
            return match gateway.await {
                Ok(Err(e)) => Err(Failure::Runtime(anyhow::Error::new(e).context("gateway"))),
                _ => Err(Failure::Runtime(anyhow::anyhow!(
                    "the gateway stopped before listening"
                ))),
            };
        }
    };
    let admin = bound.admin.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(public = %bound.public, admin = %admin, "gateway listening");

    let ready = tokio::select! {
        ready = wait_ready(&workers, WORKER_READY_WAIT) => Some(ready),
        // Ctrl-C while the model loads: no banner, straight to the shutdown below.
        () = stop() => None,
    };
    if let Some(ready) = ready {
        print_banner(
            &bound,
            &key,
            args.api_key.is_some(),
            &workers,
            (&local_model, embedding_model.as_deref()),
            &cloud,
            Readiness {
                worker: ready,
                ner: ner_on,
                limits: !args.no_limits,
                offline: args.offline,
            },
        );
    }

    let result = gateway.await;
    for worker in own_workers {
        match worker.await {
            Ok(Err(e)) => tracing::error!(error = %e, "local worker failed"),
            Err(e) => tracing::error!(error = %e, "local worker task failed"),
            Ok(Ok(())) => {}
        }
    }
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failure::Runtime(anyhow::Error::new(e).context("gateway"))),
        Err(e) => Err(Failure::Runtime(anyhow::Error::new(e).context("gateway task"))),
    }
}

/// What the gateway configuration of `up` is made of.
struct UpConfig<'a> {
    args: &'a UpArgs,
    /// The workers' addresses.
    workers: &'a [String],
    local_model: &'a str,
    cloud_name: &'a str,
    cloud_url: &'a str,
    /// The cloud is OpenAI (its key from `OPENAI_API_KEY`), not the simulator.
    openai: bool,
    /// The personal-data model's files, when it runs.
    ner: Option<&'a (std::path::PathBuf, std::path::PathBuf)>,
    /// A worker serves the embedding model.
    embeddings: bool,
}

type WorkerTask = tokio::task::JoinHandle<Result<(), sluice_worker::WorkerError>>;

/// Starts a worker in this process; returns its gRPC address once it listens.
async fn start_worker(
    config: sluice_worker::WorkerConfig,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, WorkerTask), Failure> {
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let handle = tokio::spawn(async move {
        sluice_worker::run(config, prometheus::Registry::new(), stopped, move |b| {
            let _ = bound_tx.send(b.grpc);
        })
        .await
    });
    match bound_rx.await {
        Ok(addr) => Ok((addr, handle)),
        Err(_) => match handle.await {
            Ok(Err(e)) => Err(Failure::Runtime(anyhow::Error::new(e).context("local worker"))),
            _ => Err(Failure::Runtime(anyhow::anyhow!(
                "the local worker stopped before listening"
            ))),
        },
    }
}

/// The gateway configuration `up` runs, as the YAML `sluice gateway --config` reads: `up` parses this text
/// itself, so what `--print-config` prints is what runs.
fn config_yaml(c: &UpConfig<'_>) -> String {
    use std::fmt::Write as _;
    // JSON strings are YAML double-quoted scalars: any path or address is written safely.
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let path = |p: &std::path::Path| q(&p.to_string_lossy());
    let mut y = String::new();
    let _ = writeln!(y, "listen: {}", q(&c.args.listen));
    let _ = writeln!(y, "admin_listen: {}", q(&c.args.admin_listen));
    if c.args.offline {
        y.push_str("offline: true\n");
    }
    y.push_str("api_keys:\n  - tenant: default\n    key_env: SLUICE_UP_KEY\n");
    y.push_str("local:\n  workers:\n");
    for (i, a) in c.workers.iter().enumerate() {
        let _ = writeln!(y, "    - name: worker-{i}\n      address: {}", q(a));
    }
    let _ = writeln!(
        y,
        "clouds:\n  - name: {}\n    base_url: {}",
        q(c.cloud_name),
        q(c.cloud_url)
    );
    if c.openai {
        y.push_str("    api_key_env: OPENAI_API_KEY\n");
    }
    let _ = writeln!(
        y,
        "    models:\n      - id: {CLOUD_MODEL}\n        input_usd_per_mtok: {CLOUD_INPUT_PRICE}\n        \
         output_usd_per_mtok: {CLOUD_OUTPUT_PRICE}"
    );
    if c.embeddings {
        let _ = writeln!(
            y,
            "      - id: {CLOUD_EMBEDDING_MODEL}\n        kind: embedding\n        \
             input_usd_per_mtok: {CLOUD_EMBEDDING_PRICE}"
        );
    }
    if !c.args.no_limits {
        let _ = writeln!(
            y,
            "limits:\n  default:\n    requests_per_minute: {UP_REQUESTS_PER_MINUTE}\n    \
             tokens_per_minute: {UP_TOKENS_PER_MINUTE}\n    budget: {{ usd: {UP_DAILY_BUDGET_USD}, period: day }}"
        );
    }
    if let Some((weights, tokenizer)) = c.ner {
        let _ = writeln!(
            y,
            "ner:\n  weights: {}\n  tokenizer: {}",
            path(weights),
            path(tokenizer)
        );
    }
    if let Some(log) = &c.args.audit_log {
        let _ = writeln!(y, "audit:\n  path: {}", path(log));
    }
    y.push_str("policy:\n");
    let embedding_rule = match c.embeddings {
        true => UP_EMBEDDING_RULE.replace("{embedding}", sluice_models::EMBEDDING_MODEL_ID),
        false => String::new(),
    };
    let policy = UP_POLICY
        .replace("{embedding_rule}", &embedding_rule)
        .replace("{local}", c.local_model)
        .replace("{cloud}", c.cloud_name);
    for line in policy.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(y, "  {line}");
    }
    y
}

/// A fresh random key.
fn new_key() -> String {
    let bytes: [u8; 24] = rand::random();
    format!(
        "sk-sluice-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Waits until every worker reports SERVING (its model is loaded), or `limit` passes.
async fn wait_ready(workers: &[String], limit: Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    for address in workers {
        let Some(uri) = sluice_gateway::backend::local::worker_uri(address, false) else {
            return false;
        };
        loop {
            if serving(&uri).await {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    true
}

/// One health check, given a second at most (a worker that accepts but never answers must not hold `up`).
async fn serving(uri: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(uri.to_owned()) else {
        return false;
    };
    let check = async {
        let channel = endpoint.connect().await.ok()?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(response.into_inner().status() == ServingStatus::Serving)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), check).await,
        Ok(Some(true))
    )
}
