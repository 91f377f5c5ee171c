//! A cloud backend's health, as the workers have theirs: a circuit breaker over its requests and a cheap
//! background probe.
//!
//! - Closed: requests go. Each request that fails for good after its retries with a failure of the
//!   provider or the link (unreachable, no answer in time, 5xx, still 429 when the retries are spent)
//!   counts one; `failures` of them in a row open the breaker. Any answer (a 4xx refusal included: the
//!   provider is there) closes the count.
//! - Open: requests are refused at once (`Unavailable`, which the dispatcher may fall back from), so no
//!   request waits for a cloud that is down, whether its port refuses or its packets vanish.
//!   While it is open because the provider kept answering 429, requests are refused as rate-limited
//!   (`Full`), so a fallback for rate limits keeps serving them.
//! - After `cooldown`: with a probe, the probe (`GET {base_url}{path}` with the backend's credentials,
//!   every `interval`) closes the breaker on its first answer that is not 5xx or 429, so recovery is
//!   noticed without sacrificing a user request; without one, or when 429s opened it (a provider's
//!   listing may answer while its completions are still limited), the next request goes through as the
//!   trial (half-open) and its outcome closes or reopens the breaker. A trial that never reports (its
//!   client went away, its deadline passed) is given up after another cooldown.
//! - Offline (`offline: true`, `sluice up --offline`): every request is refused as if the cloud were down,
//!   and nothing is sent: the air-gap drill.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Failed requests in a row that open the breaker.
    pub failures: u32,
    /// How long it stays open before recovery is tried.
    pub cooldown: Duration,
    /// The background probe; `None`: a request is the trial.
    pub probe: Option<ProbeConfig>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown: Duration::from_secs(30),
            probe: Some(ProbeConfig::default()),
        }
    }
}

/// `GET {base_url}{path}` every `interval` while the breaker is open and its cooldown has passed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub path: String,
    pub interval: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            path: "/models".to_owned(),
            interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Failed requests in a row.
    failures: u32,
    /// Open until then (and after it, until a probe or a trial request succeeds).
    open_since: Option<Instant>,
    /// When the trial request went out (half-open without a probe), while it is out.
    trial: Option<Instant>,
    /// The failures that opened it were 429s.
    rate_limited: bool,
    /// What the last counted failure was (for the operator; never sent to clients).
    last_error: Option<String>,
    /// Times the breaker opened.
    opened: u64,
}

/// What a request's outcome says of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (an answer, or a refusal of its own).
    Answered,
    /// It or the link failed (see the module's list).
    Failed,
    /// It kept answering 429 for as long as the request was retried.
    RateLimited,
}

/// Why a request is not sent: the message (for the client: no address, no key), and whether 429s opened
/// the breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub why: String,
    pub rate_limited: bool,
}

/// A cloud backend's breaker state.
#[derive(Debug)]
pub struct Health {
    config: BreakerConfig,
    offline: bool,
    state: Mutex<State>,
}

impl Health {
    pub fn new(config: BreakerConfig, offline: bool) -> Self {
        Self {
            config,
            offline,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    /// Whether a request may be sent now; why not otherwise. Takes the half-open trial when that is what
    /// lets it through.
    pub fn admit(&self, now: Instant) -> Result<(), Refused> {
        if self.offline {
            return Err(Refused {
                why: "the gateway runs offline: every cloud is treated as unreachable".to_owned(),
                rate_limited: false,
            });
        }
        let mut s = self.state();
        let Some(since) = s.open_since else {
            return Ok(());
        };
        let cooled = now.saturating_duration_since(since) >= self.config.cooldown;
        if cooled && self.trial_free(&s, now) {
            s.trial = Some(now);
            return Ok(());
        }
        let probe = self.config.probe.as_ref().filter(|_| !s.rate_limited);
        let why = format!(
            "it {} {} times in a row; the gateway stops sending to it until it recovers ({})",
            match s.rate_limited {
                true => "answered 429 (rate limited)",
                false => "failed",
            },
            s.failures.max(self.config.failures),
            match (probe, cooled) {
                (Some(p), _) => format!("probed every {} s", p.interval.as_secs_f64()),
                (None, false) => format!(
                    "tried again in {:.0} s",
                    (self
                        .config
                        .cooldown
                        .saturating_sub(now.saturating_duration_since(since)))
                    .as_secs_f64()
                ),
                (None, true) => "a trial request is out".to_owned(),
            }
        );
        Err(Refused {
            why,
            rate_limited: s.rate_limited,
        })
    }

    /// Whether a request may be the half-open trial once the cooldown has passed: recovery is tried by a
    /// request (no probe, or 429s opened it) and no trial is out, or the one out is a cooldown old.
    fn trial_free(&self, s: &State, now: Instant) -> bool {
        (self.config.probe.is_none() || s.rate_limited)
            && s.trial
                .is_none_or(|at| now.saturating_duration_since(at) >= self.config.cooldown)
    }

    /// Whether it would admit a request now (no trial taken).
    pub fn up(&self, now: Instant) -> bool {
        if self.offline {
            return false;
        }
        let s = self.state();
        match s.open_since {
            None => true,
            Some(since) => {
                now.saturating_duration_since(since) >= self.config.cooldown && self.trial_free(&s, now)
            }
        }
    }

    /// Counts a request's outcome; `detail` says what failed (kept for the operator).
    pub fn record(&self, outcome: Outcome, detail: Option<&str>, now: Instant) {
        let mut s = self.state();
        s.trial = None;
        match outcome {
            Outcome::Answered => {
                if s.open_since.is_some() {
                    tracing::info!("a cloud backend answered again; its breaker closes");
                }
                s.failures = 0;
                s.open_since = None;
            }
            Outcome::Failed | Outcome::RateLimited => {
                s.failures = s.failures.saturating_add(1);
                s.rate_limited = outcome == Outcome::RateLimited;
                s.last_error = detail.map(str::to_owned);
                let reopen = s.open_since.is_some();
                if reopen || s.failures >= self.config.failures {
                    if !reopen {
                        s.opened += 1;
                    }
                    s.open_since = Some(now);
                }
            }
        }
    }

    /// Whether the probe should run now: open (not by 429s), cooled down, and a probe configured.
    pub fn wants_probe(&self, now: Instant) -> bool {
        let s = self.state();
        !self.offline
            && self.config.probe.is_some()
            && !s.rate_limited
            && s.open_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.config.cooldown)
    }

    /// A probe's result: an answer closes the breaker; a failure keeps it open (its cooldown is not
    /// restarted: the next probe follows one interval later).
    pub fn probed(&self, answered: bool, detail: Option<&str>) {
        let mut s = self.state();
        if answered {
            s.failures = 0;
            s.open_since = None;
        } else {
            s.last_error = detail.map(str::to_owned).or(s.last_error.take());
        }
    }

    /// For `/admin/backends`: `up`, or why not (with the last failure's detail, for operators).
    pub fn describe(&self, now: Instant) -> String {
        if self.offline {
            return "offline (air-gap drill): every request is refused as if the cloud were down".to_owned();
        }
        let s = self.state();
        match s.open_since {
            None if s.failures == 0 => "up".to_owned(),
            None => format!(
                "up; {} failure(s) in a row (last: {})",
                s.failures,
                s.last_error.as_deref().unwrap_or("unknown")
            ),
            Some(since) => format!(
                "breaker open for {:.0} s after {} failures in a row (last: {}); {}",
                now.saturating_duration_since(since).as_secs_f64(),
                s.failures,
                s.last_error.as_deref().unwrap_or("unknown"),
                match &self.config.probe {
                    Some(p) => format!(
                        "probing {} every {} s after a {} s cooldown",
                        p.path,
                        p.interval.as_secs_f64(),
                        self.config.cooldown.as_secs_f64()
                    ),
                    None => format!(
                        "a request is let through as a trial after a {} s cooldown",
                        self.config.cooldown.as_secs_f64()
                    ),
                }
            ),
        }
    }

    /// Times the breaker opened.
    pub fn opened(&self) -> u64 {
        self.state().opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(probe: bool) -> Health {
        Health::new(
            BreakerConfig {
                failures: 2,
                cooldown: Duration::from_secs(10),
                probe: probe.then(|| ProbeConfig {
                    path: "/models".into(),
                    interval: Duration::from_secs(1),
                }),
            },
            false,
        )
    }

    #[test]
    fn failures_in_a_row_open_it_and_an_answer_resets_the_count() {
        let h = breaker(true);
        let t = Instant::now();
        h.record(Outcome::Failed, Some("refused"), t);
        h.record(Outcome::Answered, None, t);
        h.record(Outcome::Failed, Some("refused"), t);
        assert!(h.admit(t).is_ok(), "one failure since the last answer");
        h.record(Outcome::Failed, Some("timed out"), t);
        let why = h.admit(t).expect_err("open").why;
        assert!(why.contains("2 times in a row"), "{why}");
        assert!(!why.contains("timed out"), "the detail is the operator's: {why}");
        assert!(!h.up(t));
        assert_eq!(h.opened(), 1);
        assert!(h.describe(t).contains("last: timed out"));
    }

    #[test]
    fn with_a_probe_only_the_probe_closes_it_after_the_cooldown() {
        let h = breaker(true);
        let t = Instant::now();
        h.record(Outcome::Failed, None, t);
        h.record(Outcome::Failed, None, t);
        assert!(!h.wants_probe(t + Duration::from_secs(9)));
        let later = t + Duration::from_secs(11);
        assert!(h.wants_probe(later));
        assert!(h.admit(later).is_err(), "no user request is the trial");
        h.probed(false, Some("still refused"));
        assert!(h.admit(later).is_err());
        h.probed(true, None);
        assert!(h.admit(later).is_ok());
        assert!(h.up(later));
    }

    #[test]
    fn without_a_probe_one_request_is_the_trial() {
        let h = breaker(false);
        let t = Instant::now();
        h.record(Outcome::Failed, None, t);
        h.record(Outcome::Failed, None, t);
        assert!(h.admit(t + Duration::from_secs(5)).is_err());
        let later = t + Duration::from_secs(11);
        assert!(h.up(later));
        assert!(h.admit(later).is_ok(), "the trial");
        assert!(h.admit(later).is_err(), "one trial at a time");
        h.record(Outcome::Failed, None, later);
        assert!(
            h.admit(later + Duration::from_secs(5)).is_err(),
            "reopened for a new cooldown"
        );
        let again = later + Duration::from_secs(11);
        assert!(h.admit(again).is_ok());
        h.record(Outcome::Answered, None, again);
        assert!(h.admit(again).is_ok() && h.admit(again).is_ok(), "closed");
    }

    #[test]
    fn a_trial_that_never_reports_is_given_up_after_another_cooldown() {
        let h = breaker(false);
        let t = Instant::now();
        h.record(Outcome::Failed, None, t);
        h.record(Outcome::Failed, None, t);
        let later = t + Duration::from_secs(11);
        assert!(h.admit(later).is_ok(), "the trial");
        // Its client went away: nothing is recorded.
        assert!(h.admit(later + Duration::from_secs(9)).is_err() && !h.up(later + Duration::from_secs(9)));
        let given_up = later + Duration::from_secs(10);
        assert!(h.up(given_up));
        assert!(h.admit(given_up).is_ok(), "a new trial");
    }

    #[test]
    fn opened_by_429s_it_refuses_as_rate_limited_and_a_request_not_the_probe_is_the_trial() {
        let h = breaker(true);
        let t = Instant::now();
        h.record(Outcome::RateLimited, Some("429"), t);
        h.record(Outcome::RateLimited, Some("429"), t);
        let refused = h.admit(t).expect_err("open");
        assert!(refused.rate_limited, "{refused:?}");
        assert!(refused.why.contains("answered 429"), "{}", refused.why);
        let later = t + Duration::from_secs(11);
        assert!(
            !h.wants_probe(later),
            "a listing that answers says nothing of the rate limit"
        );
        assert!(h.admit(later).is_ok(), "the trial");
        h.record(Outcome::Failed, Some("refused"), later);
        let refused = h.admit(later).expect_err("reopened");
        assert!(
            !refused.rate_limited,
            "the last failures were not 429s: {refused:?}"
        );
        assert!(h.wants_probe(later + Duration::from_secs(11)));
    }

    #[test]
    fn offline_refuses_everything_and_never_probes() {
        let h = Health::new(BreakerConfig::default(), true);
        let t = Instant::now();
        assert!(h.admit(t).expect_err("offline").why.contains("offline"));
        assert!(!h.up(t) && !h.wants_probe(t + Duration::from_secs(3600)));
        assert!(h.describe(t).starts_with("offline"));
    }
}
