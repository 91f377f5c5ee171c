//! What each backend member has been observed to do: time to first token, generation speed, errors.
//! Exponentially weighted, so that the numbers follow the present; this is what routing strategies read.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;

/// One member's observed behaviour.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Observed {
    pub requests: u64,
    pub errors: u64,
    /// Errors since the last success.
    pub consecutive_errors: u64,
    pub time_to_first_token_seconds: Option<f64>,
    /// Generated tokens per second after the first token.
    pub tokens_per_second: Option<f64>,
    pub last_error: Option<String>,
}

/// How one request went, as far as its backend member is concerned.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub time_to_first_token: Option<Duration>,
    /// Tokens generated and the time from the first token to the last.
    pub generation: Option<(u64, Duration)>,
    /// The member failed (not: the client left, or the request was refused as invalid).
    pub error: Option<String>,
}

/// Observations of every member, by name.
#[derive(Debug, Default)]
pub struct Stats {
    members: Mutex<BTreeMap<String, Observed>>,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(match old {
        Some(o) => o + ALPHA * (new - o),
        None => new,
    })
}

impl Stats {
    pub fn record(&self, member: &str, outcome: &Outcome) {
        let mut members = self
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let o = members.entry(member.to_owned()).or_default();
        o.requests += 1;
        if let Some(t) = outcome.time_to_first_token {
            o.time_to_first_token_seconds = ewma(o.time_to_first_token_seconds, t.as_secs_f64());
        }
        if let Some((tokens, took)) = outcome.generation
            && tokens > 1
            && !took.is_zero()
        {
            // The first token's time is in the TTFT; the rate covers the tokens after it.
            let rate = (tokens - 1) as f64 / took.as_secs_f64();
            o.tokens_per_second = ewma(o.tokens_per_second, rate);
        }
        match &outcome.error {
            Some(e) => {
                o.errors += 1;
                o.consecutive_errors += 1;
                o.last_error = Some(e.clone());
            }
            None => o.consecutive_errors = 0,
        }
    }

    pub fn get(&self, member: &str) -> Option<Observed> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(member)
            .cloned()
    }

    /// A member's observed time to first token and tokens per second, without copying the rest (read on
    /// every request).
    pub fn latency(&self, member: &str) -> (Option<f64>, Option<f64>) {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(member)
            .map_or((None, None), |o| {
                (o.time_to_first_token_seconds, o.tokens_per_second)
            })
    }

    pub fn snapshot(&self) -> BTreeMap<String, Observed> {
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_new_observations_and_errors_count() {
        let s = Stats::default();
        s.record(
            "w",
            &Outcome {
                time_to_first_token: Some(Duration::from_millis(100)),
                generation: Some((11, Duration::from_secs(1))),
                error: None,
            },
        );
        let o = s.get("w").unwrap();
        assert_eq!(o.time_to_first_token_seconds, Some(0.1));
        assert_eq!(o.tokens_per_second, Some(10.0));
        s.record(
            "w",
            &Outcome {
                time_to_first_token: Some(Duration::from_millis(200)),
                generation: None,
                error: Some("boom".into()),
            },
        );
        let o = s.get("w").unwrap();
        assert!((o.time_to_first_token_seconds.unwrap() - 0.12).abs() < 1e-9);
        assert_eq!((o.requests, o.errors, o.consecutive_errors), (2, 1, 1));
        s.record("w", &Outcome::default());
        assert_eq!(s.get("w").unwrap().consecutive_errors, 0);
    }
}
