//! The limits on the request path. [`ask_for`] says what a decided request can cost at most; the
//! [`Limiter`] reserves it in the configured store and hands back a [`Held`] reservation, which the
//! request's ledger settles to what was used when it ends (or, dropped unsettled, gives everything but the
//! request back). The limiter tells a [`Recorder`] (accounting) what operators watch (spend against budget,
//! requests refused by a limit, whether the shared store answers) and logs when the store stops or starts
//! answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_policy::{Decision, FleetView, Route};

use super::{
    Ask, Denied, Fail, MemoryStore, RedisStore, Reservation, Standings, Store, StoreConfig, TenantLimits,
    TenantLimitsConfig, unix_now,
};
use crate::cost::{Pico, Usage, priced, usd};

/// What a decided request asks of its tenant's limits: its prompt (estimated) and the most completion
/// tokens it may produce, and that many tokens at the highest price among the targets its budget counts
/// (cloud backends; local ones too when the budget includes them).
pub fn ask_for(
    limits: &TenantLimits,
    decision: &Decision,
    view: &FleetView,
    prompt_tokens: u64,
    max_output: u32,
) -> Ask {
    let usage = Usage {
        prompt_tokens,
        completion_tokens: u64::from(max_output),
    };
    let include_local = limits.budget.is_some_and(|b| b.include_local);
    let pico = decision
        .targets
        .iter()
        .filter_map(|t| {
            let b = view.backends.get(t.backend)?;
            (b.route == Route::Cloud || include_local).then(|| b.prices(&t.model))?
        })
        .map(|p| priced(usage, p))
        .max()
        .unwrap_or(0);
    Ask {
        tokens: prompt_tokens.saturating_add(u64::from(max_output)),
        pico: if limits.budget.is_some() { pico } else { 0 },
    }
}

/// The reset of a rate window as OpenAI writes it in `x-ratelimit-reset-*`: `17s`, `1m0s`.
pub fn ratelimit_reset(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// What the limiter reports, for the series operators watch (accounting writes them).
pub trait Recorder: Send + Sync {
    /// Where a tenant stands against its budget after a reservation (spent includes requests in flight).
    fn budget(&self, tenant: &str, spent: Pico, limit: Pico);
    /// A reservation of `reserved` was settled to `used`.
    fn settled(&self, tenant: &str, reserved: Pico, used: Pico);
    /// A limit refused or rerouted a request (`requests`, `tokens`, `budget`, `unreachable`).
    fn limited(&self, tenant: &str, limit: &'static str);
    /// Whether the store answered a call.
    fn store_answered(&self, ok: bool);
}

/// Per-tenant limits on the request path.
pub struct Limiter {
    config: TenantLimitsConfig,
    store: Arc<dyn Store>,
    recorder: Arc<dyn Recorder>,
    /// The store answered its last call.
    reachable: AtomicBool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A granted reservation and where the tenant stands with it.
#[derive(Debug)]
pub struct Granted {
    pub held: Held,
    pub standings: Standings,
}

/// A tenant's usage against its limits, for `/admin/tenants`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantUsage {
    pub tenant: String,
    /// Whether the tenant has limits of its own or the default ones.
    pub limits: &'static str,
    pub requests_per_minute: Option<RateUsage>,
    pub tokens_per_minute: Option<RateUsage>,
    pub budget: Option<BudgetUsage>,
    /// The store could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RateUsage {
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    pub resets_in_seconds: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetUsage {
    pub period: &'static str,
    pub limit_usd: f64,
    pub spent_usd: f64,
    pub remaining_usd: f64,
    pub used_fraction: f64,
    pub resets_in_seconds: i64,
    pub include_local: bool,
}

impl Limiter {
    /// The limiter of a configuration, or `None` when no tenant has a limit.
    pub fn new(
        config: &TenantLimitsConfig,
        recorder: Arc<dyn Recorder>,
    ) -> Result<Option<Arc<Self>>, String> {
        if !config.any() {
            return Ok(None);
        }
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Memory => Arc::new(MemoryStore::default()),
            StoreConfig::Redis {
                url,
                key_prefix,
                timeout,
            } => Arc::new(RedisStore::new(url, key_prefix, *timeout).map_err(|e| {
                format!(
                    "limits.redis: the URL is not a Redis URL ({:?}): write redis://host:6379/0",
                    e.kind()
                )
            })?),
        };
        Ok(Some(Self::with_store(config, store, recorder)))
    }

    /// A limiter around a store of the caller's.
    pub fn with_store(
        config: &TenantLimitsConfig,
        store: Arc<dyn Store>,
        recorder: Arc<dyn Recorder>,
    ) -> Arc<Self> {
        for (tenant, l) in &config.tenants {
            if let Some(b) = l.budget {
                recorder.budget(tenant, 0, b.pico);
            }
        }
        Arc::new(Self {
            config: config.clone(),
            store,
            recorder,
            reachable: AtomicBool::new(true),
        })
    }

    pub fn config(&self) -> &TenantLimitsConfig {
        &self.config
    }

    /// The limits of a tenant, when it has any.
    pub fn limits_of(&self, tenant: &str) -> Option<&TenantLimits> {
        self.config.of(tenant)
    }

    /// What the configuration does when the store cannot be reached.
    pub fn fail(&self) -> Fail {
        self.config.fail
    }

    /// Whether the store answered its last call.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Whether the limits are shared by replicas (Redis) or kept in this process.
    pub fn shared(&self) -> bool {
        matches!(self.config.store, StoreConfig::Redis { .. })
    }

    fn answered(&self, ok: bool) {
        let was = self.reachable.swap(ok, Ordering::Relaxed);
        self.recorder.store_answered(ok);
        match (was, ok) {
            (true, false) => tracing::warn!(
                fail = self.config.fail.as_str(),
                "the limits store does not answer: requests that need it follow `limits.fail`"
            ),
            (false, true) => tracing::info!("the limits store answers again: counting resumes"),
            _ => {}
        }
    }

    /// Reserves `ask` for `tenant`: every limit checked and counted in one step.
    pub async fn reserve(&self, tenant: &str, limits: &TenantLimits, ask: Ask) -> Result<Granted, Denied> {
        let result = self.store.reserve(tenant, limits, ask, unix_now()).await;
        self.answered(!matches!(result, Err(Denied::Unreachable)));
        match result {
            Ok((reservation, standings)) => {
                if let Some(b) = standings.budget {
                    self.recorder.budget(tenant, b.spent, b.limit);
                }
                Ok(Granted {
                    held: Held {
                        store: self.store.clone(),
                        reservation: Some(reservation),
                        include_local: limits.budget.is_some_and(|b| b.include_local),
                        recorder: limits.budget.is_some().then(|| self.recorder.clone()),
                    },
                    standings,
                })
            }
            Err(denied) => Err(denied),
        }
    }

    /// Counts a request a limit refused or rerouted.
    pub fn limited(&self, tenant: &str, denied: Denied) {
        self.recorder.limited(tenant, denied.as_str());
    }

    /// Where each of `tenants` stands against its limits (tenants without limits are left out).
    pub async fn usage(&self, tenants: &[String]) -> Vec<TenantUsage> {
        let now = unix_now();
        let mut out = Vec::new();
        for tenant in tenants {
            let Some(limits) = self.limits_of(tenant) else {
                continue;
            };
            let kind = if self.config.tenants.contains_key(tenant) {
                "own"
            } else {
                "default"
            };
            let read = self.store.usage(tenant, limits, now).await;
            self.answered(read.is_ok());
            out.push(usage_of(tenant, limits, kind, read));
        }
        out
    }
}

fn usage_of(
    tenant: &str,
    limits: &TenantLimits,
    kind: &'static str,
    read: Result<Standings, Denied>,
) -> TenantUsage {
    let error = read.is_err().then_some("the limits store did not answer");
    let s = read.unwrap_or_default();
    let rate = |limit: Option<u64>, standing: Option<super::Standing>| {
        limit.map(|limit| {
            let (remaining, resets) = standing.map_or((limit, 60), |s| (s.remaining, s.reset_seconds));
            RateUsage {
                limit,
                used: limit - remaining.min(limit),
                remaining,
                resets_in_seconds: resets,
            }
        })
    };
    TenantUsage {
        tenant: tenant.to_owned(),
        limits: kind,
        requests_per_minute: rate(limits.requests_per_minute, s.requests),
        tokens_per_minute: rate(limits.tokens_per_minute, s.tokens),
        budget: limits.budget.map(|b| {
            let spent = s.budget.map_or(0, |x| x.spent);
            BudgetUsage {
                period: match b.period {
                    super::Period::Day => "day",
                    super::Period::Week => "week",
                    super::Period::Month => "month",
                },
                limit_usd: usd(b.pico),
                spent_usd: usd(spent),
                remaining_usd: usd(b.pico.saturating_sub(spent)),
                used_fraction: if b.pico == 0 {
                    1.0
                } else {
                    spent as f64 / b.pico as f64
                },
                resets_in_seconds: s.budget.map_or(0, |x| x.reset_seconds),
                include_local: b.include_local,
            }
        }),
        error,
    }
}

/// A reservation a request holds until it ends. [`Held::settle`] replaces it by what was used; dropped
/// unsettled (the request failed before any backend answered), it gives its tokens and money back.
pub struct Held {
    store: Arc<dyn Store>,
    reservation: Option<Reservation>,
    include_local: bool,
    /// Told of the settlement when the tenant has a budget.
    recorder: Option<Arc<dyn Recorder>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("reservation", &self.reservation)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// Settles to what the request used: its tokens, and its cost when its route counts in the budget.
    pub fn settle(mut self, route: Route, tokens: u64, cost: Pico) {
        let counts = route == Route::Cloud || self.include_local;
        self.settle_to(Ask {
            tokens,
            pico: if counts { cost } else { 0 },
        });
    }

    /// Keeps the whole reservation as used: a cloud answer that started but never said what it used
    /// (the client left, the stream broke) is billed by the provider all the same.
    pub fn keep(mut self) {
        self.reservation = None;
    }

    fn settle_to(&mut self, used: Ask) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let store = self.store.clone();
        let recorder = self.recorder.take();
        let settle = async move {
            store.settle(&reservation, used).await;
            if let Some(r) = recorder {
                r.settled(&reservation.tenant, reservation.ask.pico, used.pico);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(settle);
            }
            Err(_) => tracing::warn!(
                "a limits reservation was dropped outside the runtime; it expires with its window"
            ),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.settle_to(Ask::default());
    }
}
