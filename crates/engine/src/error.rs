//! The engine's errors: loading a model, and admitting or running a request.

/// Loading a model file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable GGUF file: {message}")]
    Format { path: String, message: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("device: {0}")]
    Device(String),
    #[error("model weights: {0}")]
    Weights(String),
}

/// A request was refused before any work was done. Each variant maps to one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every slot is busy and the waiting queue is full (RESOURCE_EXHAUSTED).
    #[error("worker is full: {running} running, {waiting} waiting (limit {limit})")]
    Full {
        running: usize,
        waiting: usize,
        limit: usize,
    },
    /// The engine is draining or stopped (UNAVAILABLE).
    #[error("worker is draining and admits no new requests")]
    Draining,
    /// The model is not served here (NOT_FOUND).
    #[error("model {requested:?} is not served here; this worker serves {served:?}")]
    UnknownModel { requested: String, served: String },
    /// Bad parameters or a prompt over the context window (INVALID_ARGUMENT).
    #[error("{0}")]
    InvalidArgument(String),
}

/// A request failed after it was admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The request's deadline passed (DEADLINE_EXCEEDED).
    #[error("deadline exceeded after {generated} generated tokens")]
    DeadlineExceeded { generated: u32 },
    /// The model failed to run (INTERNAL).
    #[error("model execution failed: {0}")]
    Model(String),
    /// The engine stopped before the request finished (UNAVAILABLE).
    #[error("engine stopped")]
    Stopped,
}
