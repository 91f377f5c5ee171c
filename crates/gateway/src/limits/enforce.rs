//! The limits on the request path. [`ask_for`] says what a decided request can cost at most; the
//! [`Limiter`] reserves it in the configured store and hands back a [`Held`] reservation, which the
//! request's ledger settles to what was used when it ends (or, dropped unsettled, gives everything but the
//! request back). The limiter also keeps the series operators watch (spend against budget, requests
//! refused by a limit, whether the shared store answers) and logs when the store stops or starts answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use sluice_policy::{Decision, FleetView, Route};

use super::{Ask, Denied, MemoryStore, RedisStore, Reservation, Standings, Store, TenantLimits};
use crate::config::{Fail, StoreConfig, TenantLimitsConfig};
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

/// Series of the limits.
#[derive(Clone)]
struct LimitMetrics {
    spent: GaugeVec,
    limit: GaugeVec,
    rate_limited: IntCounterVec,
    store_up: IntGauge,
    store_errors: prometheus::IntCounter,
}

impl LimitMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let spent = GaugeVec::new(
            Opts::new(
                "sluice_budget_spent_usd",
                "Spend counted against each tenant's budget in its current period, in USD (requests in flight at their reservation).",
            ),
            &["tenant"],
        )?;
        let limit = GaugeVec::new(
            Opts::new(
                "sluice_budget_limit_usd",
                "Each tenant's budget per period, in USD.",
            ),
            &["tenant"],
        )?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sluice_rate_limited_total",
                "Requests refused or rerouted by a tenant limit, by limit (requests, tokens, budget, unreachable).",
            ),
            &["tenant", "limit"],
        )?;
        let store_up = IntGauge::new(
            "sluice_limits_store_up",
            "Whether the limits store answered its last call (1) or not (0).",
        )?;
        let store_errors = prometheus::IntCounter::new(
            "sluice_limits_store_errors_total",
            "Calls to the limits store that failed or timed out.",
        )?;
        registry.register(Box::new(spent.clone()))?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        store_up.set(1);
        Ok(Self {
            spent,
            limit,
            rate_limited,
            store_up,
            store_errors,
        })
    }
}

/// Per-tenant limits on the request path.
pub struct Limiter {
    config: TenantLimitsConfig,
    store: Arc<dyn Store>,
    metrics: LimitMetrics,
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Limiter {
    /// The limiter of a configuration, or `None` when no tenant has a limit.
    pub fn new(config: &TenantLimitsConfig, registry: &Registry) -> Result<Option<Arc<Self>>, String> {
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
        Self::with_store(config, store, registry)
            .map(Some)
            .map_err(|e| format!("metrics: {e}"))
    }

    /// A limiter around a store of the caller's.
    pub fn with_store(
        config: &TenantLimitsConfig,
        store: Arc<dyn Store>,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let metrics = LimitMetrics::register(registry)?;
        for (tenant, l) in &config.tenants {
            if let Some(b) = l.budget {
                metrics.limit.with_label_values(&[tenant]).set(usd(b.pico));
                metrics.spent.with_label_values(&[tenant]).set(0.0);
            }
        }
        Ok(Arc::new(Self {
            config: config.clone(),
            store,
            metrics,
            reachable: AtomicBool::new(true),
        }))
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
        self.metrics.store_up.set(i64::from(ok));
        if !ok {
            self.metrics.store_errors.inc();
        }
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
        let result = self.store.reserve(tenant, limits, ask, now()).await;
        self.answered(!matches!(result, Err(Denied::Unreachable)));
        match result {
            Ok((reservation, standings)) => {
                if let Some(b) = standings.budget {
                    self.metrics.spent.with_label_values(&[tenant]).set(usd(b.spent));
                    self.metrics.limit.with_label_values(&[tenant]).set(usd(b.limit));
                }
                Ok(Granted {
                    held: Held {
                        store: self.store.clone(),
                        reservation: Some(reservation),
                        include_local: limits.budget.is_some_and(|b| b.include_local),
                        spent: limits.budget.is_some().then(|| self.metrics.spent.clone()),
                    },
                    standings,
                })
            }
            Err(denied) => Err(denied),
        }
    }

    /// Counts a request a limit refused or rerouted.
    pub fn limited(&self, tenant: &str, denied: Denied) {
        self.metrics
            .rate_limited
            .with_label_values(&[tenant, denied.as_str()])
            .inc();
    }

    /// Where each of `tenants` stands against its limits (tenants without limits are left out).
    pub async fn usage(&self, tenants: &[String]) -> Vec<TenantUsage> {
        let now = now();
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
    spent: Option<GaugeVec>,
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

    fn settle_to(&mut self, used: Ask) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let store = self.store.clone();
        let spent = self.spent.take();
        let settle = async move {
            store.settle(&reservation, used).await;
            if let Some(g) = spent {
                // The gauge follows this replica's view: the next reservation brings the shared total.
                let tenant = reservation.tenant.as_str();
                let g = g.with_label_values(&[tenant]);
                g.set((g.get() - usd(reservation.ask.pico) + usd(used.pico)).max(0.0));
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
