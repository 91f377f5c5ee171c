//! The gateway's HTTP servers: [`App`] (what the handlers share), the routers and their tower stacks
//! (`router`), the chat handler that connects the request's steps (`chat`), `/v1/models` (`models`),
//! the operators' endpoints (`admin`), and [`run`], which binds both listeners, starts the fleet and
//! accounting, and drains on shutdown.
//! The server never decides, dispatches or records on its own: it calls the step that does.

mod admin;
mod app;
mod chat;
mod embeddings;
mod ids;
mod limited;
mod listen;
mod messages;
mod models;
mod responses;
mod router;
mod served;
mod traced;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_policy::PolicyEngine;
use tokio::net::TcpListener;

pub use app::App;
pub use ids::RequestId;
pub use router::{admin_router, public_router};

use crate::config::GatewayConfig;
use crate::fleet::{Fleet, FleetError};
use crate::recognise::{NerError, Recogniser};

/// How often node cost is brought up to date between scrapes.
const NODE_COST_TICK: Duration = Duration::from_secs(5);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Fleet(#[from] FleetError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("audit log: {0}")]
    Audit(#[from] sluice_audit::AuditError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("local.kubernetes: {0}")]
    Discovery(#[from] sluice_discovery::Error),
    #[error("ner: {0}")]
    Ner(#[from] NerError),
}

/// Addresses the gateway bound (with port 0 resolved).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Runs the gateway until `shutdown` resolves, then stops accepting connections and gives requests in
/// flight `config.drain_grace` to finish.
pub async fn run(
    config: GatewayConfig,
    registry: prometheus::Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs),
) -> Result<(), GatewayError> {
    let public = bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let discovery = match config.local.as_ref().and_then(|l| l.kubernetes.as_ref()) {
        Some(target) => Some(sluice_discovery::Discovery::connect(target).await?),
        None => None,
    };
    let fleet = Fleet::start(&config, discovery)?;
    let grace = config.drain_grace;
    let policy = Arc::new(PolicyEngine::new(config.policy.clone()));
    let recogniser = match config.ner.clone() {
        Some(ner) => {
            let started = tokio::task::spawn_blocking(move || Recogniser::start(ner))
                .await
                .map_err(|e| GatewayError::Serve(std::io::Error::other(e)))??;
            tracing::info!(
                threads = started.config().threads,
                queue = started.config().queue,
                "personal-data model loaded"
            );
            Some(started)
        }
        None => None,
    };
    let app = App::with_recogniser(config, fleet, policy, registry, recogniser)?;
    if let Some(a) = &app.config.audit {
        let log = sluice_audit::AuditLog::open(&a.path, a.options)?;
        app.accounts.audit_into(sluice_audit::spawn_writer(log)?);
        tracing::info!(path = %a.path.display(), "auditing decisions");
    }
    // Node cost accrues with time, not only when someone scrapes.
    let ticking = Arc::downgrade(&app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(NODE_COST_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(app) = ticking.upgrade() else { break };
            app.refresh_backend_gauges();
        }
    });
    let bound = BoundAddrs {
        public: public.local_addr().map_err(GatewayError::Serve)?,
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()),
    };
    on_bound(bound);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let limits = app.config.limits;
    if let Some(admin) = admin {
        let router = admin_router(app.clone());
        let counts = app.accounts.connections("admin");
        tokio::spawn(listen::serve(
            admin,
            router,
            limits.admin_connections,
            counts,
            false,
            stop_rx.clone(),
        ));
    }
    let mut serving = tokio::spawn(listen::serve(
        public,
        public_router(app.clone()),
        limits.connections,
        app.accounts.connections("public"),
        true,
        stop_rx.clone(),
    ));
    tokio::select! {
        r = &mut serving => return r.map_err(|e| GatewayError::Serve(std::io::Error::other(e))),
        _ = stopped(stop_rx) => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs_f64(),
        "draining: no new connections; waiting for requests in flight"
    );
    let result = match tokio::time::timeout(grace, &mut serving).await {
        Ok(r) => r.map_err(|e| GatewayError::Serve(std::io::Error::other(e))),
        Err(_) => {
            // Connections still open end when the process exits.
            tracing::warn!("drain grace over; stopping with requests still in flight");
            serving.abort();
            Ok(())
        }
    };
    // Every decision recorded so far is on disk before the process ends.
    app.refresh_backend_gauges();
    if let Some(audit) = app.accounts.audit().cloned() {
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
    }
    result
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })
}

#[cfg(test)]
mod tests;
