//! The task that follows one worker for as long as it is a member: `GetInfo` for its models, then the
//! health service's `Watch` and `WatchLoad` side by side, writing what they say into the worker's
//! state, and reconnecting with backoff when either ends.
//!
//! It only records what the worker reports: it never sends a request, never ejects a worker and never
//! decides readiness.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_proto::v1;
use sluice_proto::v1::worker_client::WorkerClient;
use tonic_health::pb::health_client::HealthClient;

use super::grpc::describe;
use super::worker::Worker;

/// The gRPC service name workers report health for.
pub(super) const WORKER_SERVICE: &str = "sluice.worker.v1.Worker";

/// Follows one worker for as long as the pool lives: info, health and load, reconnecting with backoff.
pub(super) async fn monitor(worker: Arc<Worker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = follow(&worker).await;
        {
            let mut s = worker.state();
            s.connected = false;
            s.health = None;
            if let Err(e) = &outcome {
                s.last_error = Some(e.clone());
            }
        }
        if let Err(e) = outcome {
            tracing::debug!(worker = %worker.name, error = %e, "worker watch ended");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's worth of following; returns when either watch ends.
async fn follow(worker: &Worker) -> Result<(), String> {
    let mut client = WorkerClient::new(worker.channel.clone());
    let mut info_call = tonic::Request::new(v1::GetInfoRequest {});
    info_call.set_timeout(Duration::from_secs(10));
    let info = client
        .get_info(info_call)
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let mut health = HealthClient::new(worker.channel.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: WORKER_SERVICE.to_owned(),
        })
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let mut load = client
        .watch_load(v1::WatchLoadRequest {})
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    {
        let mut s = worker.state();
        s.models = info.models.iter().map(|m| m.id.clone()).collect();
        s.embedding_models = info
            .models
            .iter()
            .filter(|m| m.kind() == v1::ModelKind::Embedding)
            .map(|m| m.id.clone())
            .collect();
        s.connected = true;
        s.last_error = None;
    }
    tracing::info!(worker = %worker.name, id = %info.worker_id, models = ?info.models.iter().map(|m| &m.id).collect::<Vec<_>>(), "worker connected");
    loop {
        tokio::select! {
            h = health.next() => match h {
                Some(Ok(h)) => worker.state().health = Some(h.status()),
                Some(Err(s)) => return Err(describe(&s)),
                None => return Err("health watch ended".to_owned()),
            },
            l = load.next() => match l {
                Some(Ok(report)) => {
                    let mut s = worker.state();
                    s.power.record(report.power_watts, tokio::time::Instant::now());
                    s.load = Some(report);
                }
                Some(Err(s)) => return Err(describe(&s)),
                None => return Err("load watch ended".to_owned()),
            },
        }
    }
}
