//! The Sluice gateway: the OpenAI API in front of the organisation's workers and cloud APIs.
//!
//! A request reads one way through it, each step in a module of its own that says what it owns:
//! `intake` (parse with `api`, hints, scan; then `recognise`, the personal-data model, when its answer
//! can change where the request may go) -> the policy (`sluice-policy`, a crate of its own: pure) ->
//! `dispatch` (targets in order, the clearance invariant, fallback) -> `backend` (`local`: workers over
//! gRPC; `cloud`: OpenAI-compatible APIs) -> `wire` (what the client sees: JSON or server-sent events)
//! -> `accounting` (the only writer of metrics, stats, cost, audit records and the decision log).
//! Around them: `server` (routers, handlers, `run`), `fleet` (the backends in their one order, and the
//! snapshot the policy decides on), `config`, `auth`, `error` (the one mapping of errors to HTTP),
//! `headers`, `shed` (load shedding's permit), `cost`, `stats`, `metrics` and `dashboard`; `redact`,
//! redact-then-cloud (placeholders, the proof of the redacted form between the policy and `dispatch`, and
//! restoring values in whole and streamed answers); `limits`, the core of per-tenant rate limits and
//! budgets (reserve, settle, windows), not yet on the request path.
//!
//! It must never link the LLM engine or the worker: it talks to workers only through `sluice-proto`.
//! Candle enters it only through `sluice-ner`, the personal-data model, which `recognise` runs on
//! threads of its own.

pub mod accounting;
pub mod api;
pub mod auth;
pub mod backend;
pub mod config;
pub mod cost;
pub mod dashboard;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod headers;
pub mod intake;
pub mod level;
pub mod limits;
pub mod metrics;
pub mod recognise;
pub mod redact;
pub mod server;
pub mod shed;
pub mod stats;
pub mod wire;

pub use axum::http;
pub use config::{GatewayConfig, RawGatewayConfig};
pub use server::{App, BoundAddrs, GatewayError, run};
