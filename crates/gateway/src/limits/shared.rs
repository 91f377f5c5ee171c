//! Limits shared by gateway replicas, in Redis: one Lua script a reservation (checked and counted in one
//! atomic step on the server, one round trip), one a settlement. Keys carry a prefix (several installs on
//! one Redis) and the tenant in a hash tag (a tenant's keys share a cluster slot), and expire with their
//! windows. Spend is kept in nanodollars: Redis scripts compute in doubles, exact to 2^53, which is
//! 9 million USD in nanodollars (and only 9,007 USD in picodollars); a reservation is rounded up to the
//! next nanodollar, so the budget is never passed by rounding.
//!
//! Every call is bounded by a timeout; an unreachable Redis is [`Denied::Unreachable`], and what that means
//! for a request is the caller's choice. The connection reconnects by itself.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Ask, Denied, Period, Reservation, Standings, Store, TenantLimits, Windows};
use crate::cost::Pico;

const PICO_PER_NANO: Pico = 1000;

/// Checks and counts one reservation. KEYS: the minute's hash (fields `r`, `t`), the budget period's
/// counter. ARGV: requests and tokens per minute (-1: none), tokens and nanodollars asked, the budget in
/// nanodollars (-1: none), the minute's and the period's time to live in seconds. Returns `{code, requests,
/// tokens, spent}`, code 0 granted, 1 requests, 2 tokens, 3 budget.
const RESERVE: &str = r"
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok, nano, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if rpm >= 0 and r + 1 > rpm then return {1, r, t, 0} end
if tpm >= 0 and t + tok > tpm then return {2, r, t, 0} end
local spent = 0
if budget >= 0 then
  spent = tonumber(redis.call('GET', KEYS[2]) or '0')
  -- A request that costs nothing against the budget is never refused by it, even past it.
  if nano > 0 and spent + nano > budget then return {3, r, t, spent} end
end
r = redis.call('HINCRBY', KEYS[1], 'r', 1)
t = redis.call('HINCRBY', KEYS[1], 't', tok)
redis.call('EXPIRE', KEYS[1], ARGV[6])
if budget >= 0 then
  spent = redis.call('INCRBY', KEYS[2], nano)
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
return {0, r, t, spent}
";

/// Replaces a reservation by what was used, in windows that still exist. KEYS as for [`RESERVE`] (the
/// second may be absent). ARGV: tokens and nanodollars to add (negative gives back).
const SETTLE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 't', ARGV[1]) end
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], ARGV[2]) end
return 0
";

/// Reads where a tenant stands. KEYS as for [`RESERVE`]. Returns `{requests, tokens, spent}`.
const PEEK: &str = r"
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local spent = 0
if KEYS[2] then spent = tonumber(redis.call('GET', KEYS[2]) or '0') end
return {r, t, spent}
";

/// Limits kept in Redis.
pub struct RedisStore {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    reserve: redis::Script,
    settle: redis::Script,
    peek: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`, or `rediss://` for TLS); nothing connects until the
    /// first call.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: OnceCell::new(),
            prefix: prefix.to_owned(),
            timeout,
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
            peek: redis::Script::new(PEEK),
        })
    }

    fn minute_key(&self, tenant: &str, minute: i64) -> String {
        format!("{}:{{{tenant}}}:m:{minute}", self.prefix)
    }

    fn budget_key(&self, tenant: &str, p: Period, n: i64) -> String {
        let p = match p {
            Period::Day => "d",
            Period::Week => "w",
            Period::Month => "mo",
        };
        format!("{}:{{{tenant}}}:b:{p}:{n}", self.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.connection
            .get_or_try_init(|| self.client.get_connection_manager())
            .await
            .cloned()
    }

    async fn reserve_in(
        &self,
        tenant: &str,
        limits: &TenantLimits,
        ask: Ask,
        now: i64,
    ) -> Result<(Reservation, Standings), Denied> {
        let w = Windows::at(limits, now);
        let nano = nanos_up(ask.pico);
        let limit = |l: Option<u64>| l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let minute_key = self.minute_key(tenant, w.minute);
        // Without a budget the second key is unused; the minute's keeps both in one cluster slot.
        let budget_key = w.budget.map_or_else(
            || minute_key.clone(),
            |(b, n, _)| self.budget_key(tenant, b.period, n),
        );
        let call = async {
            let mut con = self.connection().await?;
            self.reserve
                .key(&minute_key)
                .key(&budget_key)
                .arg(limit(limits.requests_per_minute))
                .arg(limit(limits.tokens_per_minute))
                .arg(ask.tokens)
                .arg(i64::try_from(nano).unwrap_or(i64::MAX))
                .arg(w.budget.map_or(-1, |(b, _, _)| {
                    i64::try_from(nanos_down(b.pico)).unwrap_or(i64::MAX)
                }))
                .arg(w.minute_ends - now + 60)
                .arg(w.budget.map_or(1, |(_, _, ends)| ends - now + 3600))
                .invoke_async::<(u8, i64, i64, i64)>(&mut con)
                .await
        };
        // Counters can go below zero when a settlement lands in a window Redis lost and recreated.
        let (code, requests, tokens, spent) = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((code, r, t, s))) => (code, non_negative(r), non_negative(t), non_negative(s)),
            // The limiter logs when the store stops and starts answering; each failure is a debug line.
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the limits store failed");
                return Err(Denied::Unreachable);
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.timeout, "the limits store did not answer in time");
                return Err(Denied::Unreachable);
            }
        };
        match code {
            0 => Ok(w.granted(
                tenant,
                limits,
                Ask {
                    tokens: ask.tokens,
                    pico: nano * PICO_PER_NANO,
                },
                (requests, tokens),
                Pico::from(spent) * PICO_PER_NANO,
            )),
            1 => Err(Denied::Requests {
                resets_at: w.minute_ends,
            }),
            2 => Err(Denied::Tokens {
                resets_at: w.minute_ends,
            }),
            _ => Err(Denied::Budget {
                resets_at: w.budget.map_or(w.minute_ends, |(_, _, ends)| ends),
            }),
        }
    }

    async fn settle_in(&self, r: &Reservation, used: Ask) {
        let tokens = i128::from(used.tokens) - i128::from(r.ask.tokens);
        let nanos = to_i128(nanos_up(used.pico)) - to_i128(r.ask.pico / PICO_PER_NANO);
        let mut invocation = self.settle.key(self.minute_key(&r.tenant, r.minute));
        if let Some((p, n)) = r.period {
            invocation.key(self.budget_key(&r.tenant, p, n));
        }
        invocation.arg(tokens.to_string()).arg(nanos.to_string());
        let call = async {
            let mut con = self.connection().await?;
            invocation.invoke_async::<i64>(&mut con).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the limits store failed to settle a request"),
            Err(_) => tracing::warn!("the limits store did not settle a request in time"),
        }
    }

    async fn usage_in(&self, tenant: &str, limits: &TenantLimits, now: i64) -> Result<Standings, Denied> {
        let w = Windows::at(limits, now);
        let mut invocation = self.peek.key(self.minute_key(tenant, w.minute));
        if let Some((b, n, _)) = w.budget {
            invocation.key(self.budget_key(tenant, b.period, n));
        }
        let call = async {
            let mut con = self.connection().await?;
            invocation.invoke_async::<(i64, i64, i64)>(&mut con).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((requests, tokens, spent))) => Ok(w
                .granted(
                    tenant,
                    limits,
                    Ask::default(),
                    (non_negative(requests), non_negative(tokens)),
                    Pico::from(non_negative(spent)) * PICO_PER_NANO,
                )
                .1),
            _ => Err(Denied::Unreachable),
        }
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn nanos_up(pico: Pico) -> Pico {
    pico.div_ceil(PICO_PER_NANO)
}

fn nanos_down(pico: Pico) -> Pico {
    pico / PICO_PER_NANO
}

fn to_i128(p: Pico) -> i128 {
    i128::try_from(p).unwrap_or(i128::MAX)
}

impl Store for RedisStore {
    fn reserve<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        ask: Ask,
        now: i64,
    ) -> BoxFuture<'a, Result<(Reservation, Standings), Denied>> {
        Box::pin(self.reserve_in(tenant, limits, ask, now))
    }

    fn settle<'a>(&'a self, reservation: &'a Reservation, used: Ask) -> BoxFuture<'a, ()> {
        Box::pin(self.settle_in(reservation, used))
    }

    fn usage<'a>(
        &'a self,
        tenant: &'a str,
        limits: &'a TenantLimits,
        now: i64,
    ) -> BoxFuture<'a, Result<Standings, Denied>> {
        Box::pin(self.usage_in(tenant, limits, now))
    }
}
