//! The gateway's Prometheus series, registered in a registry the caller owns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::cost::{Pico, usd};

/// Buckets for latencies from a millisecond to ten minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    /// Labels: route, backend, model, tenant, code (`ok` or the error code).
    pub requests: IntCounterVec,
    /// Labels: route.
    pub request_duration: HistogramVec,
    /// Labels: route, backend.
    pub time_to_first_token: HistogramVec,
    /// Labels: route, backend, direction (`input` or `output`).
    pub tokens: IntCounterVec,
    /// Labels: rule, route.
    pub decisions: IntCounterVec,
    /// Labels: reason.
    pub rejected: IntCounterVec,
    /// Labels: kind (a finding kind of the scanner). Counted once per request that has it.
    pub findings: IntCounterVec,
    pub redactions: IntCounterVec,
    /// Requests for a cloud model served by its local substitute. Labels: reason (`cloud_unavailable`,
    /// `cloud_rate_limited`, `over_budget`).
    pub fallbacks: IntCounterVec,
    /// Requests whose content could not be scanned completely (treated as restricted).
    pub scans_incomplete: prometheus::IntCounter,
    /// What the personal-data model did per request. Labels: outcome (`ran`, `not_needed`,
    /// `over_budget`, `shed`).
    pub ner_requests: IntCounterVec,
    /// Strings the model answered. Labels: source (`model` or `cache`).
    pub ner_strings: IntCounterVec,
    /// Requests restricted because the model could not read them within budget. Labels: reason
    /// (`bytes`, `time`, `error`).
    pub ner_over_budget: IntCounterVec,
    /// Time a request waited for and ran the model.
    pub ner_duration: prometheus::Histogram,
    /// Targets a policy chose that the dispatcher refused to send to (cleared below the request). Always 0
    /// unless a policy is wrong; alert on it.
    pub clearance_blocked: prometheus::IntCounter,
    /// Labels: backend (each worker and each cloud backend).
    pub backend_up: IntGaugeVec,
    /// Labels: backend.
    pub backend_in_flight: IntGaugeVec,
    /// What requests cost. Labels: route (`local` or `cloud`), backend (the worker or cloud that served).
    pub cost: UsdCounter,
    /// Locally served requests priced at the reference cloud model. Labels: backend (the worker).
    pub cloud_equivalent: UsdCounter,
    /// What each worker node costs with wall time, busy or idle. Labels: node.
    pub node_cost: UsdCounter,
    /// 1 once the pool's EndpointSlice watch has listed the Service. Labels: backend (the pool).
    pub discovery_synced: IntGaugeVec,
    /// EndpointSlice watch failures, each retried with backoff. Labels: backend (the pool).
    pub discovery_failures: IntCounterVec,
    /// Spend counted against each tenant's budget in its period, USD. Labels: tenant.
    pub budget_spent: GaugeVec,
    /// Each tenant's budget per period, USD. Labels: tenant.
    pub budget_limit: GaugeVec,
    /// Requests a tenant limit refused or rerouted. Labels: tenant, limit.
    pub rate_limited: IntCounterVec,
    /// Whether the limits store answered its last call.
    pub limits_store_up: prometheus::IntGauge,
    pub limits_store_errors: prometheus::IntCounter,
    /// Open client connections. Labels: listener (`public` or `admin`).
    pub connections_open: IntGaugeVec,
    pub connections_max: IntGaugeVec,
    /// Connections the gateway closed on its own. Labels: listener, reason (`header_timeout`,
    /// `idle_timeout`, `evicted`).
    pub connections_closed: IntCounterVec,
}

/// A counter of US dollars kept in integer picodollars, so that millions of small amounts add up exactly;
/// exported as dollars, one division per scrape.
#[derive(Clone)]
pub struct UsdCounter {
    desc: Desc,
    labels: &'static [&'static str],
    totals: Arc<Mutex<BTreeMap<Vec<String>, Pico>>>,
}

impl UsdCounter {
    pub fn new(name: &str, help: &str, labels: &'static [&'static str]) -> prometheus::Result<Self> {
        Ok(Self {
            desc: Desc::new(
                name.to_owned(),
                help.to_owned(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                Default::default(),
            )?,
            labels,
            totals: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<String>, Pico>> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `amount` to the series with these label values (in the order of the labels).
    pub fn add(&self, values: &[&str], amount: Pico) {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        *self.lock().entry(key).or_default() += amount;
    }

    /// The total of one series.
    pub fn get(&self, values: &[&str]) -> Pico {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        self.lock().get(&key).copied().unwrap_or(0)
    }

    /// Every series: its label values and its total.
    pub fn totals(&self) -> Vec<(Vec<String>, Pico)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl Collector for UsdCounter {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics = self
            .lock()
            .iter()
            .map(|(values, total)| {
                // Sorted by name, as the crate's own series are.
                let mut pairs: Vec<proto::LabelPair> = self
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name((*name).to_owned());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                pairs.sort_by(|a, b| a.name().cmp(b.name()));
                let mut m = proto::Metric::from_label(pairs);
                let mut c = proto::Counter::default();
                c.set_value(usd(*total));
                m.set_counter(c);
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(metrics);
        vec![family]
    }
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl GatewayMetrics {
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("sluice_requests_total", "Chat completion requests, by outcome."),
            &["route", "backend", "model", "tenant", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_request_duration_seconds",
                "From arrival to the last byte of the answer.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "sluice_time_to_first_token_seconds",
                "From arrival to the first generated token.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "backend"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "sluice_tokens_total",
                "Tokens processed, as the backends counted them.",
            ),
            &["route", "backend", "direction"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new("sluice_decisions_total", "Routing decisions, by rule and route."),
            &["rule", "route"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_rejected_total",
                "Requests refused before reaching a backend, by reason.",
            ),
            &["reason"],
        )?;
        let findings = IntCounterVec::new(
            Opts::new(
                "sluice_sensitive_findings_total",
                "Requests in which the scanner found data of a kind.",
            ),
            &["kind"],
        )?;
        let redactions = IntCounterVec::new(
            Opts::new(
                "sluice_redactions_total",
                "Distinct values replaced by placeholders in requests sent redacted, by kind.",
            ),
            &["kind"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "sluice_fallbacks_total",
                "Requests for a cloud model served by its local substitute (policy.fallbacks), by reason.",
            ),
            &["reason"],
        )?;
        let scans_incomplete = prometheus::IntCounter::new(
            "sluice_scans_incomplete_total",
            "Requests too large to scan completely, treated as restricted.",
        )?;
        let ner_requests = IntCounterVec::new(
            Opts::new(
                "sluice_ner_requests_total",
                "Requests by what the personal-data model did: ran, not_needed, over_budget, shed.",
            ),
            &["outcome"],
        )?;
        let ner_strings = IntCounterVec::new(
            Opts::new(
                "sluice_ner_strings_total",
                "Strings the personal-data model answered, read by the model or from its cache.",
            ),
            &["source"],
        )?;
        let ner_over_budget = IntCounterVec::new(
            Opts::new(
                "sluice_ner_over_budget_total",
                "Requests treated as restricted because the personal-data model could not read them \
                 within its byte or time budget, or failed.",
            ),
            &["reason"],
        )?;
        let ner_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "sluice_ner_duration_seconds",
                "Time a request waited for and ran the personal-data model.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let clearance_blocked = prometheus::IntCounter::new(
            "sluice_clearance_blocked_total",
            "Dispatches refused because the chosen backend is cleared below the request's level.",
        )?;
        let backend_up = IntGaugeVec::new(
            Opts::new(
                "sluice_backend_up",
                "1 when the backend member can take requests.",
            ),
            &["backend"],
        )?;
        let backend_in_flight = IntGaugeVec::new(
            Opts::new(
                "sluice_backend_in_flight",
                "Requests this gateway has open at the backend member.",
            ),
            &["backend"],
        )?;
        let cost = UsdCounter::new(
            "sluice_cost_usd_total",
            "What requests cost: cloud list prices, or the local node's busy time at its hourly cost.",
            &["route", "backend"],
        )?;
        let cloud_equivalent = UsdCounter::new(
            "sluice_cloud_equivalent_cost_usd_total",
            "Locally served requests priced at the reference cloud model.",
            &["backend"],
        )?;
        let node_cost = UsdCounter::new(
            "sluice_local_node_cost_usd_total",
            "What each worker node has cost since the gateway started, busy or idle.",
            &["node"],
        )?;
        let discovery_synced = IntGaugeVec::new(
            Opts::new(
                "sluice_discovery_synced",
                "1 once the pool's Kubernetes EndpointSlice watch has listed its Service.",
            ),
            &["backend"],
        )?;
        let discovery_failures = IntCounterVec::new(
            Opts::new(
                "sluice_discovery_watch_failures_total",
                "Kubernetes EndpointSlice watch failures (each retried with backoff; the pool keeps its workers).",
            ),
            &["backend"],
        )?;
        let budget_spent = GaugeVec::new(
            Opts::new(
                "sluice_budget_spent_usd",
                "Spend counted against each tenant's budget in its current period, in USD (requests in flight at their reservation).",
            ),
            &["tenant"],
        )?;
        let budget_limit = GaugeVec::new(
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
        let limits_store_up = prometheus::IntGauge::new(
            "sluice_limits_store_up",
            "Whether the limits store answered its last call (1) or not (0).",
        )?;
        limits_store_up.set(1);
        let limits_store_errors = prometheus::IntCounter::new(
            "sluice_limits_store_errors_total",
            "Calls to the limits store that failed or timed out.",
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new("sluice_connections_open", "Open client connections, by listener."),
            &["listener"],
        )?;
        let connections_max = IntGaugeVec::new(
            Opts::new(
                "sluice_connections_max",
                "The connection cap, by listener (limits.max_connections, limits.max_admin_connections).",
            ),
            &["listener"],
        )?;
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "sluice_connections_closed_total",
                "Connections the gateway closed on its own: a request head too slow (header_timeout), idle too long (idle_timeout), or idle at the connection cap when a new client came (evicted).",
            ),
            &["listener", "reason"],
        )?;
        sluice_telemetry::register(&registry)?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_max.clone()))?;
        registry.register(Box::new(connections_closed.clone()))?;
        registry.register(Box::new(budget_spent.clone()))?;
        registry.register(Box::new(budget_limit.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(limits_store_up.clone()))?;
        registry.register(Box::new(limits_store_errors.clone()))?;
        registry.register(Box::new(discovery_synced.clone()))?;
        registry.register(Box::new(discovery_failures.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(cloud_equivalent.clone()))?;
        registry.register(Box::new(node_cost.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(redactions.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(scans_incomplete.clone()))?;
        registry.register(Box::new(ner_requests.clone()))?;
        registry.register(Box::new(ner_strings.clone()))?;
        registry.register(Box::new(ner_over_budget.clone()))?;
        registry.register(Box::new(ner_duration.clone()))?;
        registry.register(Box::new(clearance_blocked.clone()))?;
        registry.register(Box::new(backend_up.clone()))?;
        registry.register(Box::new(backend_in_flight.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            tokens,
            decisions,
            redactions,
            fallbacks,
            rejected,
            findings,
            scans_incomplete,
            ner_requests,
            ner_strings,
            ner_over_budget,
            ner_duration,
            clearance_blocked,
            backend_up,
            backend_in_flight,
            cost,
            cloud_equivalent,
            node_cost,
            discovery_synced,
            discovery_failures,
            budget_spent,
            budget_limit,
            rate_limited,
            limits_store_up,
            limits_store_errors,
            connections_open,
            connections_max,
            connections_closed,
        })
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}
