//! The Sluice gateway: the OpenAI API in front of the organisation's workers and cloud APIs.
//!
//! It owns the public HTTP surface (`server`: routes, tower stack, streaming), request parsing
//! (`api`), keys (`auth`), the one mapping of errors to HTTP (`error`), the routing seam (`route`: a pure
//! [`route::Policy`] decides, the dispatcher enforces clearances), the policy engine behind it (`policy`:
//! rules, virtual models, strategies, explanations), the backends behind the
//! [`backend::Backend`] trait (`backend::local`: workers over gRPC; `backend::cloud`: OpenAI-compatible
//! APIs), observed latency (`stats`) and its Prometheus series (`metrics`).
//!
//! It must never link candle or any model code: it talks to workers only through `sluice-proto`.

pub mod api;
pub mod auth;
pub mod backend;
pub mod config;
pub mod cost;
pub mod dashboard;
pub mod error;
pub mod level;
pub mod metrics;
pub mod policy;
pub mod route;
pub mod server;
pub mod stats;

pub use axum::http;
pub use config::{GatewayConfig, RawGatewayConfig};
pub use server::{App, BoundAddrs, GatewayError, run};
