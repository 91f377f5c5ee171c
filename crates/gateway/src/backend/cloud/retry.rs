//! A cloud call's retries and what they tell the breaker: requests are refused at once while it is open;
//! attempts that fail with 429, 5xx or a transport error are retried with backoff within the deadline, and
//! the request's outcome is counted (an answer or the provider's own refusal closes the count, a failure
//! that outlasts the retries adds to it, as rate-limited when it was 429).

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Attempt, CloudBackend, Outcome};
use crate::backend::{BackendError, DispatchContext, with_causes};

impl CloudBackend {
    /// Refuses at once while the breaker is open (or the gateway runs offline).
    pub(super) fn admit(&self) -> Result<(), BackendError> {
        self.health.admit(Instant::now()).map_err(|refused| {
            let message = format!(
                "cloud backend {} is {}: {}",
                self.config.name,
                match refused.rate_limited {
                    true => "rate-limited",
                    false => "unavailable",
                },
                refused.why
            );
            match refused.rate_limited {
                true => BackendError::Full(message),
                false => BackendError::Unavailable(message),
            }
        })
    }

    /// Runs attempts until one succeeds, one fails for good, the retries are spent, or the next wait
    /// would pass the deadline; waits back off exponentially with jitter.
    pub(super) async fn with_retries<T, F, A>(
        &self,
        context: &DispatchContext,
        attempt: F,
    ) -> Result<T, BackendError>
    where
        F: Fn() -> A,
        A: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut retry = 0u32;
        // The breaker counts the request's outcome: an answer or a refusal of the provider's own closes
        // the count; a failure of the provider or the link that outlasts the retries adds to it.
        let failed = |e: BackendError| {
            let outcome = match e {
                BackendError::Full(_) => Outcome::RateLimited,
                _ => Outcome::Failed,
            };
            self.health.record(outcome, Some(&e.to_string()), Instant::now());
            e
        };
        loop {
            match attempt().await {
                Ok(d) => {
                    self.health.record(Outcome::Answered, None, Instant::now());
                    return Ok(d);
                }
                Err(Attempt::Fatal(e)) => {
                    self.health.record(Outcome::Answered, None, Instant::now());
                    return Err(e);
                }
                Err(Attempt::Retry(e)) => {
                    if retry >= self.config.max_retries {
                        return Err(failed(e));
                    }
                    let base = self.config.retry_backoff.as_secs_f64() * f64::from(1u32 << retry.min(10));
                    let jitter = rand::rng().random_range(0.8..1.2);
                    let wait = Duration::from_secs_f64((base * jitter).min(8.0));
                    if Instant::now() + wait >= context.deadline {
                        return Err(failed(e));
                    }
                    retry += 1;
                    tracing::info!(backend = %self.config.name, request_id = %context.request_id, error = %e, retry, wait_ms = wait.as_millis() as u64, "retrying the cloud call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A transport failure (no connection, no answer in time), retried. The client's message names what
/// failed without reqwest's own message, which quotes the URL; the log keeps the whole chain.
pub(super) fn transport_failure(name: &str, e: &reqwest::Error) -> Attempt {
    tracing::warn!(backend = name, error = %with_causes(e.to_string(), e), "cloud call failed");
    if e.is_timeout() {
        return Attempt::Retry(BackendError::Timeout(format!(
            "cloud backend {name} did not answer in time"
        )));
    }
    let mut innermost = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    let reason = innermost
        .filter(|c| !c.contains("://") && !c.contains("url"))
        .unwrap_or_else(|| {
            if e.is_connect() {
                "cannot connect"
            } else {
                "transport error"
            }
            .to_owned()
        });
    Attempt::Retry(BackendError::Unavailable(format!(
        "cloud backend {name} is unreachable: {reason}"
    )))
}
