//! The limits step of the handlers: a decided request reserves what it can cost at most of its
//! tenant's limits before it goes anywhere. A rate limit answers 429 `rate_limit_exceeded`; a spent
//! budget (or, with `limits.fail: local`, a store that cannot be reached) is the policy's to handle: the
//! handler decides again with the fleet view saying so, and the rule's `over_budget` action applies.

use std::time::Duration;

use sluice_policy::{Decision, FleetView, Refusal};

use crate::error::ApiError;
use crate::headers::{RateHeader, RateHeaders};
use crate::limits::{
    Denied, Fail, Granted, Limiter, Standings, TenantLimits, ask_for, ratelimit_reset, unix_now,
};

/// What the limits say of a decided request.
pub(super) enum Step {
    /// Go on, holding this reservation (none when nothing was reserved).
    Go(Option<Granted>),
    /// Decide again as over budget; the budget frees up at this time (seconds since the epoch), when known.
    OverBudget(Option<i64>),
    /// Answer with this error.
    Refuse(ApiError),
}

/// The request as the limits see it.
pub(super) struct Asking<'a> {
    pub limiter: &'a Limiter,
    pub limits: &'a TenantLimits,
    pub tenant: &'a str,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u32>,
}

impl Asking<'_> {
    /// Reserves for `decided`; `second` is a reservation after deciding again as over budget, where
    /// another spent budget or an unreachable store has nowhere further to go.
    pub(super) async fn reserve(
        &self,
        decided: &Result<Decision, Refusal>,
        view: &FleetView,
        second: bool,
        headers: &mut RateHeaders,
    ) -> Step {
        let Ok(decision) = decided else {
            return Step::Go(None);
        };
        let max_output = self
            .max_tokens
            .unwrap_or(self.limiter.config().reserve_output_tokens);
        let ask = ask_for(self.limits, decision, view, self.prompt_tokens, max_output);
        let denied = match self.limiter.reserve(self.tenant, self.limits, ask).await {
            Ok(granted) => {
                *headers = rate_headers(&granted.standings);
                return Step::Go(Some(granted));
            }
            Err(d) => d,
        };
        self.limiter.limited(self.tenant, denied);
        let reaches_cloud = decision.reaches_cloud(view);
        let needs_budget = self.limits.budget.is_some() && (reaches_cloud || ask.pico > 0);
        match denied {
            Denied::Requests { resets_at } => {
                let limit = self.limits.requests_per_minute.unwrap_or_default();
                headers.requests = Some(exhausted(limit, resets_at));
                Step::Refuse(ApiError::rate_limited(
                    "requests",
                    &format!("limit {limit} requests"),
                    after(resets_at),
                ))
            }
            Denied::Tokens { resets_at } => {
                let limit = self.limits.tokens_per_minute.unwrap_or_default();
                headers.tokens = Some(exhausted(limit, resets_at));
                let mut error = ApiError::rate_limited(
                    "tokens",
                    &format!(
                        "limit {limit} tokens, this request may use up to {} (its prompt and max_tokens)",
                        ask.tokens
                    ),
                    after(resets_at),
                );
                // Larger than a whole minute's tokens: waiting cannot help, a smaller max_tokens can.
                error.final_answer = ask.tokens > limit;
                Step::Refuse(error)
            }
            Denied::Budget { resets_at } if !second => Step::OverBudget(Some(resets_at)),
            Denied::Budget { resets_at } => Step::Refuse(
                ApiError::budget_exceeded(&decision.rule, sluice_policy::OVER_BUDGET_REASON)
                    .with_retry_after(after(resets_at)),
            ),
            // The store cannot count: requests that need no budget go on uncounted; the rest follow
            // `limits.fail`.
            Denied::Unreachable if !needs_budget => Step::Go(None),
            Denied::Unreachable => match self.limiter.fail() {
                Fail::Local if !second => Step::OverBudget(None),
                Fail::Local if !reaches_cloud => Step::Go(None),
                _ => Step::Refuse(ApiError::limits_unavailable()),
            },
        }
    }
}

/// What the limits step settled for a request.
pub(super) struct Settled {
    /// The reservation the request holds until it ends.
    pub held: Option<crate::limits::Held>,
    /// When the spent budget frees up (seconds since the epoch), when the request was over budget.
    pub budget_resets: Option<i64>,
    /// The request was decided again as over budget.
    pub decided_again: bool,
}

/// The limits step of a handler: reserves for `decided`; over budget, decides again with the fleet view
/// saying so (through `decide`) and reserves for that. An error is the client's answer.
pub(super) async fn settle(
    limiter: Option<&Limiter>,
    asking: (&str, u64, Option<u32>),
    decided: &mut Result<Decision, Refusal>,
    view: &mut FleetView,
    headers: &mut RateHeaders,
    decide: impl Fn(&FleetView) -> Result<Decision, Refusal>,
) -> Result<Settled, ApiError> {
    let mut settled = Settled {
        held: None,
        budget_resets: None,
        decided_again: false,
    };
    let (tenant, prompt_tokens, max_tokens) = asking;
    let Some((limiter, limits)) = limiter.and_then(|l| Some((l, l.limits_of(tenant)?))) else {
        return Ok(settled);
    };
    let asking = Asking {
        limiter,
        limits,
        tenant,
        prompt_tokens,
        max_tokens,
    };
    let mut step = asking.reserve(decided, view, false, headers).await;
    if let Step::OverBudget(resets) = step {
        settled.budget_resets = resets;
        settled.decided_again = true;
        view.over_budget = true;
        *decided = decide(view);
        // The store could not say whether the budget is spent: when no local way is left, the request is
        // refused until the store answers, never told that the budget is spent.
        if resets.is_none() && decided.is_err() {
            return Err(ApiError::limits_unavailable());
        }
        step = asking.reserve(decided, view, true, headers).await;
    }
    match step {
        Step::Go(granted) => {
            settled.held = granted.map(|g| g.held);
            Ok(settled)
        }
        Step::Refuse(error) => Err(error),
        Step::OverBudget(_) => unreachable!("a second reservation never decides again"),
    }
}

/// The wait until a window resets.
pub(super) fn after(resets_at: i64) -> Duration {
    Duration::from_secs(u64::try_from(resets_at - unix_now()).unwrap_or(0).max(1))
}

fn exhausted(limit: u64, resets_at: i64) -> RateHeader {
    RateHeader {
        limit,
        remaining: 0,
        reset: ratelimit_reset(resets_at - unix_now()),
    }
}

/// The `x-ratelimit-*` headers of a granted reservation.
pub(super) fn rate_headers(s: &Standings) -> RateHeaders {
    let header = |s: crate::limits::Standing| RateHeader {
        limit: s.limit,
        remaining: s.remaining,
        reset: ratelimit_reset(s.reset_seconds),
    };
    RateHeaders {
        requests: s.requests.map(header),
        tokens: s.tokens.map(header),
    }
}
