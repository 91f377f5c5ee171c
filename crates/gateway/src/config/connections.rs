//! The connection limits of both listeners (`limits:` keys): how long a client may take to send a
//! request's head, how long a kept-alive connection may sit idle, how many bytes a head may have and how
//! many connections are open at once. Defaults follow what edge proxies bound by default.

use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use super::fields::seconds;
use super::raw::RawLimits;

/// A client has this long from its connection, or from its next request's first byte, to send the whole
/// request head.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: f64 = 10.0;
/// A kept-alive connection with no request in flight is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: f64 = 60.0;
/// Request line and headers, as Envoy's default (60 KiB) rounded up.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// Open connections on the public listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8192;
/// Open connections on the admin listener: scrapers, probes and operators.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 256;

/// What each connection of a listener may hold, and how many there may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections; at the cap a new one replaces the connection idle longest, or waits in the
    /// kernel's backlog while every connection is serving a request.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Request line and headers; more is answered 431.
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    /// The public listener's defaults.
    pub const fn public() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECONDS as u64),
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECONDS as u64),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }

    /// The same limits with the admin listener's own cap.
    pub const fn with_max(self, max_connections: usize) -> Self {
        Self {
            max_connections,
            ..self
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::public()
    }
}

/// The public listener's limits and the admin listener's, from `limits:`.
pub(super) fn connection_limits(
    at: &Locator<'_>,
    raw: &RawLimits,
) -> Result<(ConnectionLimits, ConnectionLimits), ConfigError> {
    let count = |key: &str, value: Option<usize>, default: usize| {
        let v = value.unwrap_or(default);
        if (1..=1_000_000).contains(&v) {
            Ok(v)
        } else {
            Err(at.error(key, format!("must be between 1 and 1000000, got {v}")))
        }
    };
    let max_header_bytes = raw.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(1024..=(1 << 20)).contains(&max_header_bytes) {
        return Err(at.error(
            "limits.max_header_bytes",
            format!("must be between 1024 and 1048576, got {max_header_bytes}"),
        ));
    }
    let public = ConnectionLimits {
        max_connections: count(
            "limits.max_connections",
            raw.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        )?,
        header_read_timeout: seconds(
            at,
            "limits.header_read_timeout_seconds",
            raw.header_read_timeout_seconds,
            DEFAULT_HEADER_READ_TIMEOUT_SECONDS,
        )?,
        idle_timeout: seconds(
            at,
            "limits.idle_timeout_seconds",
            raw.idle_timeout_seconds,
            DEFAULT_IDLE_TIMEOUT_SECONDS,
        )?,
        max_header_bytes,
    };
    let admin = public.with_max(count(
        "limits.max_admin_connections",
        raw.max_admin_connections,
        DEFAULT_MAX_ADMIN_CONNECTIONS,
    )?);
    Ok((public, admin))
}
