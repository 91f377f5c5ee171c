//! [`App`]: what the handlers share (configuration, keys, the fleet, the policy, accounting, the
//! load-shedding semaphore). Built once by [`crate::run`] or by tests around a fleet of their own.

use std::sync::Arc;

use sluice_policy::Policy;
use tokio::sync::Semaphore;

use crate::accounting::Accounting;
use crate::auth::KeyStore;
use crate::config::GatewayConfig;
use crate::fleet::Fleet;
use crate::limits::Limiter;
use crate::recognise::Recogniser;

/// Everything the handlers share.
pub struct App {
    pub config: GatewayConfig,
    pub keys: KeyStore,
    pub fleet: Fleet,
    pub policy: Arc<dyn Policy>,
    /// The only writer of metrics, stats, cost, audit records and the decision log.
    pub accounts: Arc<Accounting>,
    /// The personal-data model, when it is on.
    pub recogniser: Option<Arc<Recogniser>>,
    /// Per-tenant rates and budgets, when any tenant has one.
    pub limiter: Option<Arc<Limiter>>,
    pub(super) in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the application state around a fleet (the backends are started by the caller), without
    /// the personal-data model.
    pub fn new(
        config: GatewayConfig,
        fleet: Fleet,
        policy: Arc<dyn Policy>,
        registry: prometheus::Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        Self::with_recogniser(config, fleet, policy, registry, None)
    }

    /// Builds the application state with the personal-data model (started by the caller).
    pub fn with_recogniser(
        config: GatewayConfig,
        fleet: Fleet,
        policy: Arc<dyn Policy>,
        registry: prometheus::Registry,
        recogniser: Option<Arc<Recogniser>>,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let accounts = Arc::new(Accounting::new(&config, &fleet.backends, registry)?);
        let limiter =
            Limiter::new(&config.tenant_limits, accounts.clone()).map_err(prometheus::Error::Msg)?;
        Ok(Arc::new(Self {
            limiter,
            keys: KeyStore::new(config.keys.clone(), config.allow_unauthenticated),
            in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight)),
            accounts,
            recogniser,
            fleet,
            policy,
            config,
        }))
    }

    /// Brings node cost and the member gauges up to now (each scrape does, and a timer in between).
    pub fn refresh_backend_gauges(&self) {
        self.accounts.refresh(&self.fleet.backends);
    }
}
