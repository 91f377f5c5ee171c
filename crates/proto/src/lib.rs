//! Generated code for Sluice's worker protocol, `sluice.worker.v1` (`proto/sluice/worker/v1/worker.proto`).
//!
//! This crate owns the generated prost messages and tonic client and server, and nothing else: no logic,
//! no hand-written conversions. Every other crate that speaks the protocol goes through it.

/// `sluice.worker.v1`: the worker's inference service, its messages, client and server.
pub mod worker {
    /// Version 1 of the worker protocol.
    #[allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
    pub mod v1 {
        tonic::include_proto!("sluice.worker.v1");
    }
}

pub use worker::v1;
