//! OpenTelemetry traces for the gateway and the worker.
//!
//! - [`RawTracing`] / [`TracingConfig`]: the `tracing:` section both daemons' configurations share.
//! - [`layer`]: a `tracing` layer that turns Sluice's own spans (target [`TARGET`]; never events, so no
//!   log message becomes span data) into OpenTelemetry spans, sampled, and exported
//!   over OTLP/gRPC by a pipeline that never blocks a request: a span that finds the export queue full is
//!   dropped, as are the spans of a batch the collector does not take within the export timeout; after
//!   such a failure no spans are recorded for a pause (1 s, doubling to 30 s while the collector keeps
//!   failing), so that building spans costs nothing while nobody takes them. All are counted ([`stats`]).
//! - [`propagation`]: the W3C `traceparent` read from and written to HTTP headers and gRPC metadata.
//!
//! Spans carry what the caller gives them; callers give identifiers, decisions and counts, never content.

mod config;
mod export;
mod metrics;
pub mod propagation;

pub use config::{RawTracing, TracingConfig};

/// The target of every span exported: `tracing::trace_span!(target: sluice_telemetry::TARGET, ...)`. At
/// TRACE level, so that the log filter (INFO by default) leaves them out of the logs and, with tracing
/// off, they cost nothing.
pub const TARGET: &str = "sluice_trace";
pub use export::{Stats, TelemetryError, layer, shutdown, stats};
pub use metrics::register;
