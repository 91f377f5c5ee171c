//! `sluice worker`.

use anyhow::Context;
use sluice_worker::RawWorkerConfig;
use sluice_worker::config::RawTls;

use super::{Failure, shutdown_signal};
use crate::args::WorkerArgs;

pub async fn run(args: WorkerArgs) -> Result<(), Failure> {
    let flags = RawWorkerConfig {
        model: args.model,
        model_id: args.model_id,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        slots: args.slots,
        max_waiting: args.max_waiting,
        prefill_chunk: args.prefill_chunk,
        max_kv_tokens: args.max_kv_tokens,
        device: args.device,
        weight_format: args.weight_format,
        worker_id: args.worker_id,
        drain_grace_seconds: args.drain_grace_seconds,
        tls: (args.tls_cert.is_some() || args.tls_key.is_some() || args.tls_client_ca.is_some()).then_some(
            RawTls {
                cert: args.tls_cert,
                key: args.tls_key,
                client_ca: args.tls_client_ca,
            },
        ),
        // The file's `connections:` only.
        connections: None,
        tracing: None,
    };
    let config = match &args.config {
        Some(path) => {
            let (file, text) =
                RawWorkerConfig::from_yaml_file(path).map_err(|e| Failure::Usage(e.to_string()))?;
            flags.or(file).validate(Some(path), Some(&text))
        }
        None => flags.validate(None, None),
    }
    .map_err(|e| Failure::Usage(e.to_string()))?;
    if args.check {
        println!("configuration is valid");
        return Ok(());
    }
    let registry = prometheus_registry();
    sluice_worker::run(config, registry, shutdown_signal(), |bound| {
        let metrics = bound.metrics.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(grpc = %bound.grpc, metrics = %metrics, "worker listening");
    })
    .await
    .context("worker failed")?;
    Ok(())
}

fn prometheus_registry() -> sluice_worker::metrics::Registry {
    sluice_worker::metrics::Registry::new()
}
