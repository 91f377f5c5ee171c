//! The Sluice worker daemon: serves one model (a chat model, or an embedding model) through the engine over gRPC (`sluice.worker.v1.Worker`),
//! with the standard health service, pushed load reports, Prometheus metrics and a drain on shutdown.
//!
//! This crate owns the worker's network surface and configuration. It never does model math itself (the
//! engine does) and never routes: gateways decide which worker gets a request.

pub mod check;
pub mod config;
pub mod device;
pub mod embed;
pub mod metrics;
pub mod server;
pub mod service;
pub mod state;

pub use config::{ConfigError, RawWorkerConfig, WorkerConfig};
pub use server::{BoundAddrs, WorkerError, run};
