//! The `ner:` section: the personal-data model's files and budgets.

use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use super::raw::RawNer;
use crate::recognise::NerConfig;

/// The model's settings, or `None` when the section is absent or `enabled: false`.
pub(super) fn ner(at: &Locator, raw: Option<RawNer>) -> Result<Option<NerConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let weights = raw.weights.ok_or_else(|| {
        at.error(
            "ner.weights",
            "is required: the converted model (`sluice models pull --ner` prints its path)",
        )
    })?;
    let tokenizer = raw.tokenizer.ok_or_else(|| {
        at.error(
            "ner.tokenizer",
            "is required: the model's tokenizer.json (`sluice models pull --ner` prints its path)",
        )
    })?;
    let positive = |key: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(at.error(&format!("ner.{key}"), "must be at least 1")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let timeout = match raw.timeout_ms {
        Some(0) => return Err(at.error("ner.timeout_ms", "must be at least 1")),
        Some(ms) => Duration::from_millis(ms),
        None => NerConfig::DEFAULT_TIMEOUT,
    };
    Ok(Some(NerConfig {
        weights,
        tokenizer,
        threads: positive("threads", raw.threads, NerConfig::default_threads())?,
        queue: positive("queue", raw.queue, NerConfig::DEFAULT_QUEUE)?,
        max_bytes: positive("max_bytes", raw.max_bytes, NerConfig::DEFAULT_MAX_BYTES)?,
        timeout,
        cache_entries: raw.cache_entries.unwrap_or(NerConfig::DEFAULT_CACHE_ENTRIES),
        prefilter: raw.prefilter.unwrap_or(true),
    }))
}
