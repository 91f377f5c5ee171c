//! Small validators shared by the sections: addresses, durations in seconds, names, SHA-256 digests and
//! clearance levels, each turning one raw value into a typed one or an error that names its key.
//!
//! They check one value at a time: they never read a whole section, the environment or the disk.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use crate::level::Level;

pub(super) fn address(at: &Locator<'_>, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|e| {
        at.error(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080 ({e})"),
        )
    })
}

pub(super) fn seconds(
    at: &Locator<'_>,
    key: &str,
    value: Option<f64>,
    default: f64,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
        return Err(at.error(
            key,
            format!("must be a number of seconds above 0 and at most 86400, got {v}"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

pub(super) fn check_name(at: &Locator<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
    if !sluice_policy::is_plain_name(name) {
        return Err(at.error(
            key,
            format!("{name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

pub(super) fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(super) fn level(
    at: &Locator<'_>,
    key: &str,
    value: Option<String>,
    default: Level,
) -> Result<Level, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|e: crate::level::UnknownLevel| at.error(key, e.to_string())),
    }
}
