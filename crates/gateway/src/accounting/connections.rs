//! What the listeners report about their connections: how many are open against the cap, and which ones the
//! gateway closed on its own and why.

use prometheus::{IntCounter, IntGauge};

use super::Accounting;

/// Why the gateway closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The request head took longer than the header read timeout.
    HeaderTimeout,
    /// No request for longer than the idle timeout.
    IdleTimeout,
    /// Idle, at the connection cap, when a new client came.
    Evicted,
}

/// One listener's connection series, resolved once.
#[derive(Clone)]
pub struct ConnectionCounts {
    open: IntGauge,
    max: IntGauge,
    header_timeout: IntCounter,
    idle_timeout: IntCounter,
    evicted: IntCounter,
}

impl std::fmt::Debug for ConnectionCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCounts").finish_non_exhaustive()
    }
}

impl ConnectionCounts {
    /// The listener's cap, reported beside the open count.
    pub fn capped_at(&self, max: usize) {
        self.max.set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    pub fn opened(&self) {
        self.open.inc();
    }

    pub fn ended(&self) {
        self.open.dec();
    }

    pub fn closed(&self, why: Closed) {
        match why {
            Closed::HeaderTimeout => self.header_timeout.inc(),
            Closed::IdleTimeout => self.idle_timeout.inc(),
            Closed::Evicted => self.evicted.inc(),
        }
    }
}

impl Accounting {
    /// The series of the listener named `listener` (`public` or `admin`).
    pub fn connections(&self, listener: &str) -> ConnectionCounts {
        let m = &self.metrics;
        let closed = |reason: &str| m.connections_closed.with_label_values(&[listener, reason]);
        ConnectionCounts {
            open: m.connections_open.with_label_values(&[listener]),
            max: m.connections_max.with_label_values(&[listener]),
            header_timeout: closed("header_timeout"),
            idle_timeout: closed("idle_timeout"),
            evicted: closed("evicted"),
        }
    }
}
