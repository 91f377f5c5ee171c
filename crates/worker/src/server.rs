//! Running the worker: listeners, model loading in the background, health, metrics, and the drain on
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use sluice_engine::{EmbedConfig, Embedder, EmbeddingModel, Engine, EngineConfig, Model};
use sluice_proto::v1;
use sluice_proto::v1::worker_server::WorkerServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::config::{ModelSource, WorkerConfig};
use crate::device::DeviceProbe;
use crate::metrics::WorkerMetrics;
use crate::service::{Phase, WorkerIdentity, WorkerService, WorkerState};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch the packaged model: {0}")]
    Fetch(#[from] sluice_models::FetchError),
    #[error("cannot load the model: {0}")]
    Load(#[from] sluice_engine::LoadError),
    #[error("cannot start the engine: {0}")]
    Engine(std::io::Error),
    #[error("TLS: {0}")]
    Tls(tonic::transport::Error),
    #[error("gRPC server: {0}")]
    Serve(tonic::transport::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Addresses the worker actually bound (with port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// Runs the worker until `shutdown` resolves, then drains: health turns NOT_SERVING, no new requests are
/// admitted, in-flight requests get `config.drain_grace` to finish, and the function returns.
///
/// `on_bound` is called once the listeners are bound, before the model is loaded.
pub async fn run(
    config: WorkerConfig,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), WorkerError> {
    let metrics = WorkerMetrics::new(registry)?;
    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| WorkerError::Bind {
            addr: config.listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| WorkerError::Bind {
        addr: config.listen,
        source,
    })?;

    let probe = DeviceProbe::new(config.device);
    let identity = WorkerIdentity {
        worker_id: config
            .worker_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), grpc_addr.port())),
        device: probe.info(),
        model_id: config.model_id.clone(),
        slots: config.slots as u32,
        max_waiting: config.max_waiting as u32,
        kind: match config.model.is_embedding() {
            true => v1::ModelKind::Embedding,
            false => v1::ModelKind::Chat,
        },
    };
    let state = WorkerState::new(identity, metrics, probe.clone());
    crate::device::spawn_sampling(probe.clone());

    let metrics_addr = match config.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, state.clone()).await?),
        None => None,
    };
    on_bound(BoundAddrs {
        grpc: grpc_addr,
        metrics: metrics_addr,
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    tokio::spawn(follow_health(state.clone(), health));

    // Load the model in the background so health checks answer (NOT_SERVING) meanwhile.
    let (load_failed_tx, load_failed_rx) = oneshot::channel::<WorkerError>();
    {
        let state = state.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = match config.model.is_embedding() {
                true => load_embedder(&config).map(|embedder| {
                    let m = embedder.model();
                    tracing::info!(model = %m.description.id, dimensions = m.dimensions, max_tokens = m.max_tokens(), pooling = ?m.pooling, normalize = m.normalize, batch_requests = config.slots, "embedding model loaded; serving");
                    state.set_embedder(Arc::new(embedder));
                }),
                false => load_engine(&config, &probe).map(|engine| {
                    let d = &engine.model().description;
                    tracing::info!(model = %d.id, quantization = %d.quantization, context = d.context_length, slots = config.slots, kv_bytes_per_token = d.kv_bytes_per_token, kv_cache = ?engine.model().kv_format(), max_kv_tokens = ?engine.config().max_kv_tokens, "model loaded; serving");
                    state.set_engine(Arc::new(engine));
                }),
            };
            if let Err(e) = loaded {
                let _ = load_failed_tx.send(e);
            }
        });
    }

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    {
        let state = state.clone();
        let grace = config.drain_grace;
        tokio::spawn(async move {
            shutdown.await;
            let in_flight = state.drain();
            tracing::info!(in_flight, grace_seconds = grace.as_secs(), "draining");
            let left = state.wait_idle(grace).await;
            if left > 0 {
                tracing::warn!(left, "drain grace period over; stopping with requests in flight");
            }
            // Joining the engine thread waits for its current forward pass: keep that off the async threads.
            if let Some(engine) = state.engine().cloned() {
                let _ = tokio::task::spawn_blocking(move || engine.stop()).await;
            }
            if let Some(embedder) = state.embedder().cloned() {
                let _ = tokio::task::spawn_blocking(move || embedder.stop()).await;
            }
            state.stop();
            let _ = stop_tx.send(());
        });
    }

    let limits = config.connections;
    let mut server = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // Rapid reset (CVE-2023-44487): a connection resetting streams faster than they are accepted is
        // closed once this many resets are pending.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES));
    if let Some(tls) = &config.tls {
        let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        if let Some(ca) = &tls.client_ca_pem {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        server = server.tls_config(tls_config).map_err(WorkerError::Tls)?;
    }
    let router = server.add_service(health_service).add_service(
        WorkerServer::new(WorkerService::new(state.clone()))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes),
    );
    let serve = router.serve_with_incoming_shutdown(
        TcpIncoming::from(grpc_listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(limits.keepalive_interval)),
        async {
            let _ = stop_rx.await;
        },
    );
    tokio::select! {
        result = serve => result.map_err(WorkerError::Serve)?,
        Ok(error) = load_failed_rx => return Err(error),
    }
    tracing::info!("worker stopped");
    Ok(())
}

fn load_embedder(config: &WorkerConfig) -> Result<Embedder, WorkerError> {
    let path = match &config.model {
        ModelSource::Folder(path) => path.clone(),
        _ => sluice_models::ensure_folder(&sluice_models::cache_dir(), &sluice_models::EMBEDDING_MODEL)?,
    };
    tracing::info!(path = %path.display(), device = %config.device, "loading embedding model");
    let model = EmbeddingModel::load(&path, &config.model_id, config.device)?;
    let embed_config = EmbedConfig {
        max_requests: config.slots,
        max_waiting: config.max_waiting,
        ..EmbedConfig::default()
    };
    Embedder::start(Arc::new(model), embed_config).map_err(WorkerError::Engine)
}

fn load_engine(config: &WorkerConfig, device: &DeviceProbe) -> Result<Engine, WorkerError> {
    let path = match &config.model {
        ModelSource::File(path) => path.clone(),
        _ => sluice_models::ensure(&sluice_models::cache_dir(), &sluice_models::DEMO_MODEL)?,
    };
    tracing::info!(path = %path.display(), device = %config.device, "loading model");
    let model = Model::load(&path, &config.model_id, config.device, config.weight_format)?;
    let d = &model.description;
    let max_kv_tokens = config.max_kv_tokens.or_else(|| {
        kv_budget(
            device.free_memory_bytes()?,
            d.kv_bytes_per_token,
            config.slots * d.context_length,
        )
    });
    let engine_config = EngineConfig {
        slots: config.slots,
        max_waiting: config.max_waiting,
        prefill_chunk: config.prefill_chunk,
        max_kv_tokens,
    };
    Engine::start(Arc::new(model), engine_config).map_err(WorkerError::Engine)
}

/// Share of the node's available memory the KV caches may take when the operator sets no `max_kv_tokens`.
const KV_MEMORY_SHARE: f64 = 0.5;

/// The default KV budget: as many positions as half the available memory holds, when that is less than
/// every slot's whole context (`all_slots`); otherwise no limit is needed.
fn kv_budget(available_bytes: u64, bytes_per_token: usize, all_slots: usize) -> Option<usize> {
    let fits = (available_bytes as f64 * KV_MEMORY_SHARE / bytes_per_token.max(1) as f64) as usize;
    (fits < all_slots).then_some(fits.max(1))
}

/// Resets a connection may have pending before it is closed (h2's own default, set here so that it stays).
const MAX_PENDING_RESETS: usize = 20;
/// gRPC metadata of one request: a trace context and a deadline need far less.
const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;

const WORKER_SERVICE: &str = "sluice.worker.v1.Worker";

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(WORKER_SERVICE, status).await;
}

/// Keeps the health service in step with the worker's phase: SERVING only when ready.
async fn follow_health(state: Arc<WorkerState>, health: tonic_health::server::HealthReporter) {
    let mut phase = state.watch_phase();
    loop {
        let serving = *phase.borrow_and_update() == Phase::Ready;
        set_health(&health, serving).await;
        if phase.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_metrics(addr: SocketAddr, state: Arc<WorkerState>) -> Result<SocketAddr, WorkerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WorkerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| WorkerError::Bind { addr, source })?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let state = state.clone();
            async move {
                if let Some(load) = state.load() {
                    state.metrics.observe_load(&load);
                }
                state
                    .metrics
                    .observe_device(&state.device.spec().to_string(), state.device.latest());
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    state.metrics.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_kv_budget_is_half_the_available_memory_when_that_binds() {
        // 1 GiB available, 23,040 bytes a position: half of it holds 23,301 positions.
        assert_eq!(kv_budget(1 << 30, 23_040, 4 * 8192), Some(23_301));
        // Room for every slot's whole context: no limit needed.
        assert_eq!(kv_budget(24 << 30, 23_040, 4 * 8192), None);
        assert_eq!(kv_budget(0, 23_040, 4 * 8192), Some(1));
        assert!(crate::device::available_memory_bytes().is_some_and(|b| b > 0));
    }
}
