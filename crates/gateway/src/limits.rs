//! Per-tenant limits, their pure core and the in-memory store: requests and tokens per minute, and a
//! spend budget per day, week or calendar month. A request reserves what it can cost at most before it is
//! dispatched ([`Store::reserve`]: every limit checked and counted at once, so that concurrent requests
//! cannot all pass a check and then all add) and settles to what it really cost when it ends
//! ([`Store::settle`]); a request that fails or is dropped gives its tokens and money back.
//!
//! Windows are fixed and named by their start, so that every replica sharing a store counts in the same
//! ones: the minute since the Unix epoch for rates, and the day, week (from Monday) or calendar month at a
//! fixed UTC offset for budgets. Amounts are integer picodollars, as everywhere in accounting.
//!
//! [`RedisStore`] implements the same [`Store`] for replicas, one atomic script a call; [`Limiter`] puts
//! them on the request path (what a request asks, what it holds until it ends, the metrics).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::cost::Pico;

/// Completion tokens a request without `max_tokens` reserves unless configured.
pub const DEFAULT_RESERVE_OUTPUT_TOKENS: u32 = 4096;

/// What a request that needs the shared store gets when it cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Cloud-bound requests of tenants with a budget are refused (503 `limits_unavailable`); the rest go
    /// on uncounted.
    Closed,
    /// They are served as over budget: by the rule's `over_budget` action when it reaches local workers.
    Local,
}

impl Fail {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

/// Where limits are counted. Its `Debug` never shows the Redis URL (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In this process: exact for one gateway.
    Memory,
    /// In Redis, shared by every replica.
    Redis {
        url: String,
        key_prefix: String,
        timeout: Duration,
    },
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis {
                key_prefix, timeout, ..
            } => f
                .debug_struct("Redis")
                .field("key_prefix", key_prefix)
                .field("timeout", timeout)
                .finish_non_exhaustive(),
        }
    }
}

/// The checked tenant limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimitsConfig {
    /// For tenants without their own.
    pub default: Option<TenantLimits>,
    pub tenants: BTreeMap<String, TenantLimits>,
    /// What a request without `max_tokens` reserves for its answer.
    pub reserve_output_tokens: u32,
    pub store: StoreConfig,
    pub fail: Fail,
}

impl Default for TenantLimitsConfig {
    /// No limits.
    fn default() -> Self {
        Self {
            default: None,
            tenants: BTreeMap::new(),
            reserve_output_tokens: DEFAULT_RESERVE_OUTPUT_TOKENS,
            store: StoreConfig::Memory,
            fail: Fail::Closed,
        }
    }
}

impl TenantLimitsConfig {
    /// A tenant's limits, when it has any.
    pub fn of(&self, tenant: &str) -> Option<&TenantLimits> {
        self.tenants.get(tenant).or(self.default.as_ref())
    }

    /// Whether any tenant has a limit.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.tenants.is_empty()
    }
}

/// The period of a spend budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    /// From Monday 00:00.
    Week,
    /// Calendar month.
    Month,
}

/// A spend budget: at most `pico` per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub pico: Pico,
    pub period: Period,
    /// The offset of the time zone the periods start in, east of UTC, in seconds.
    pub utc_offset_seconds: i32,
    /// Local requests count at their busy-time cost too; otherwise only cloud spend counts.
    pub include_local: bool,
}

/// One tenant's limits; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub budget: Option<Budget>,
}

/// What one request reserves: one request, its most tokens (prompt and completion), its most cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ask {
    pub tokens: u64,
    pub pico: Pico,
}

/// Which limit a request hit, and when it frees up (seconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Requests {
        resets_at: i64,
    },
    Tokens {
        resets_at: i64,
    },
    Budget {
        resets_at: i64,
    },
    /// The shared store did not answer in time, or failed: whether the request goes on is the caller's
    /// choice (`fail: closed` or `local`).
    Unreachable,
}

impl Denied {
    /// A stable name (the `limit` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests",
            Self::Tokens { .. } => "tokens",
            Self::Budget { .. } => "budget",
            Self::Unreachable => "unreachable",
        }
    }
}

/// A reservation, to settle when the request ends: the windows it was counted in and what it reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    tenant: String,
    minute: i64,
    period: Option<(Period, i64)>,
    ask: Ask,
}

/// Where a tenant stands against a rate limit, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_seconds: i64,
}

/// Where a tenant stands against its budget in the current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStanding {
    /// Spent and reserved by requests in flight.
    pub spent: Pico,
    pub limit: Pico,
    /// Seconds until the next period begins.
    pub reset_seconds: i64,
}

/// Where a tenant stands after a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standings {
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
    pub budget: Option<BudgetStanding>,
}

/// Where limits are counted: in this process, or shared by replicas (a network round trip, hence
/// futures).
pub trait Store: Send + Sync {
    /// Checks every limit and, when all allow it, counts the request in each: one step.
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        ask: Ask,
        now: i64,
    ) -> BoxFuture<'a, Result<(Reservation, Standings), Denied>>;

    /// Replaces what was reserved by what was used (the request stays counted).
    fn settle<'a>(&'a self, reservation: &'a Reservation, used: Ask) -> BoxFuture<'a, ()>;

    /// Where a tenant stands now, counting nothing.
    fn usage<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        now: i64,
    ) -> BoxFuture<'a, Result<Standings, Denied>>;
}

/// The windows a request made at `now` is counted in: its minute, and its budget's period.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Windows {
    now: i64,
    minute: i64,
    minute_ends: i64,
    /// The budget, its period's number and when the next begins.
    budget: Option<(Budget, i64, i64)>,
}

impl Windows {
    pub(crate) fn at(limits: &TenantLimits, now: i64) -> Self {
        let (minute, minute_ends) = minute(now);
        Self {
            now,
            minute,
            minute_ends,
            budget: limits.budget.map(|b| {
                let (n, ends) = period(now, b.period, b.utc_offset_seconds);
                (b, n, ends)
            }),
        }
    }

    /// A granted reservation of `ask` by `tenant`, and where the tenant stands with `requests` and
    /// `tokens` counted this minute and `spent` in the budget's period.
    pub(crate) fn granted(
        &self,
        tenant: &str,
        limits: &TenantLimits,
        ask: Ask,
        (requests, tokens): (u64, u64),
        spent: Pico,
    ) -> (Reservation, Standings) {
        let reset_seconds = self.minute_ends - self.now;
        let standing = |limit: Option<u64>, used: u64| {
            limit.map(|limit| Standing {
                limit,
                remaining: limit.saturating_sub(used),
                reset_seconds,
            })
        };
        (
            Reservation {
                tenant: tenant.to_owned(),
                minute: self.minute,
                period: self.budget.map(|(b, n, _)| (b.period, n)),
                ask,
            },
            Standings {
                requests: standing(limits.requests_per_minute, requests),
                tokens: standing(limits.tokens_per_minute, tokens),
                budget: self.budget.map(|(b, _, ends)| BudgetStanding {
                    spent,
                    limit: b.pico,
                    reset_seconds: ends - self.now,
                }),
            },
        )
    }
}

/// Seconds since the Unix epoch, the time windows are named by.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The minute a time falls in, and when it ends.
pub fn minute(now: i64) -> (i64, i64) {
    let m = now.div_euclid(60);
    (m, (m + 1) * 60)
}

/// The period a time falls in (its number) and when the next begins, in the budget's time zone.
pub fn period(now: i64, period: Period, utc_offset_seconds: i32) -> (i64, i64) {
    let offset = i64::from(utc_offset_seconds);
    let local = now + offset;
    let day = local.div_euclid(86_400);
    match period {
        Period::Day => (day, (day + 1) * 86_400 - offset),
        Period::Week => {
            // 1970-01-01 was a Thursday: days since the Monday before it.
            let week = (day + 3).div_euclid(7);
            (week, (week * 7 - 3 + 7) * 86_400 - offset)
        }
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            let n = y * 12 + i64::from(m) - 1;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (n, days_from_civil(ny, nm, 1) * 86_400 - offset)
        }
    }
}

/// The calendar date of a day since the Unix epoch (proleptic Gregorian; H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day since the Unix epoch of a calendar date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Counters of one tenant in one window.
#[derive(Debug, Default, Clone, Copy)]
struct Counted {
    requests: u64,
    tokens: u64,
}

/// Limits counted in this process: exact for one gateway, wrong for several (each would allow the whole
/// limit).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<Memory>,
}

/// Per tenant: its counters in the current minute, and its spend per budget period (older periods are
/// replaced as new ones begin).
#[derive(Debug, Default)]
struct Memory {
    tenants: HashMap<String, Tenant>,
}

#[derive(Debug, Default)]
struct Tenant {
    minute: i64,
    counted: Counted,
    spent: HashMap<Period, (i64, Pico)>,
}

impl Store for MemoryStore {
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        ask: Ask,
        now: i64,
    ) -> BoxFuture<'a, Result<(Reservation, Standings), Denied>> {
        Box::pin(std::future::ready(self.reserve_now(tenant, limits, ask, now)))
    }

    fn settle<'a>(&'a self, reservation: &'a Reservation, used: Ask) -> BoxFuture<'a, ()> {
        self.settle_now(reservation, used);
        Box::pin(std::future::ready(()))
    }

    fn usage<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        now: i64,
    ) -> BoxFuture<'a, Result<Standings, Denied>> {
        let w = Windows::at(limits, now);
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = state.tenants.get(tenant);
        let counted = t
            .filter(|t| t.minute == w.minute)
            .map_or((0, 0), |t| (t.counted.requests, t.counted.tokens));
        let spent = match (t, w.budget) {
            (Some(t), Some((b, n, _))) => t.spent.get(&b.period).filter(|s| s.0 == n).map_or(0, |s| s.1),
            _ => 0,
        };
        let (_, standings) = w.granted(tenant, limits, Ask::default(), counted, spent);
        Box::pin(std::future::ready(Ok(standings)))
    }
}

impl MemoryStore {
    fn reserve_now(
        &self,
        tenant: &str,
        limits: &TenantLimits,
        ask: Ask,
        now: i64,
    ) -> Result<(Reservation, Standings), Denied> {
        let w = Windows::at(limits, now);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = state.tenants.entry(tenant.to_owned()).or_default();
        // A window that ended starts again from zero.
        if t.minute != w.minute {
            t.minute = w.minute;
            t.counted = Counted::default();
        }
        if limits
            .requests_per_minute
            .is_some_and(|l| t.counted.requests + 1 > l)
        {
            return Err(Denied::Requests {
                resets_at: w.minute_ends,
            });
        }
        if limits
            .tokens_per_minute
            .is_some_and(|l| t.counted.tokens.saturating_add(ask.tokens) > l)
        {
            return Err(Denied::Tokens {
                resets_at: w.minute_ends,
            });
        }
        let mut spent = 0;
        if let Some((b, n, ends)) = w.budget {
            let slot = t.spent.entry(b.period).or_insert((n, 0));
            if slot.0 != n {
                *slot = (n, 0);
            }
            // A request that costs nothing against the budget is never refused by it, even past it.
            if ask.pico > 0 && slot.1.saturating_add(ask.pico) > b.pico {
                return Err(Denied::Budget { resets_at: ends });
            }
            slot.1 = slot.1.saturating_add(ask.pico);
            spent = slot.1;
        }
        t.counted.requests += 1;
        t.counted.tokens = t.counted.tokens.saturating_add(ask.tokens);
        Ok(w.granted(tenant, limits, ask, (t.counted.requests, t.counted.tokens), spent))
    }

    fn settle_now(&self, r: &Reservation, used: Ask) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(t) = state.tenants.get_mut(&r.tenant) else {
            return;
        };
        // A window that has ended is not corrected: what it allowed has been allowed.
        if t.minute == r.minute {
            t.counted.tokens = t
                .counted
                .tokens
                .saturating_sub(r.ask.tokens)
                .saturating_add(used.tokens);
        }
        if let Some((p, n)) = r.period
            && let Some(slot) = t.spent.get_mut(&p)
            && slot.0 == n
        {
            slot.1 = slot.1.saturating_sub(r.ask.pico).saturating_add(used.pico);
        }
    }
}

mod enforce;
mod shared;

pub use enforce::{Granted, Held, Limiter, Recorder, TenantUsage, ask_for, ratelimit_reset};
pub use shared::RedisStore;

#[cfg(test)]
mod tests;
