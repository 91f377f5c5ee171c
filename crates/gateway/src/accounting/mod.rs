//! Accounting, the last step of every request and the only writer of what is recorded about requests:
//! the request metrics (`sluice_requests_total`, durations, tokens, decisions, rejections, findings),
//! each member's observed latency ([`crate::stats`]), cost (per answer, and node cost with wall time in
//! [`nodes`]), the decision log ([`decisions`]) and the audit records. A [`Ledger`] follows one answer
//! and, when it ends however it ends, records its outcome: the member that served (or the last tried),
//! the targets tried before it, the status and code the client got.
//! Accounting never changes what a client gets: it only records.

pub mod connections;
pub mod decisions;
mod limits;
pub mod nodes;
mod record;

pub use record::RecordFields;

use std::sync::{Arc, OnceLock};

use sluice_policy::{Attempt, Ended, Explanation, Prices, Route};
use sluice_sensitivity::Scan;
use tokio::time::Instant;

use crate::backend::local::PoolConfig;
use crate::backend::{Backend, Usage};
use crate::cost::{NodeCost, Pico};
use crate::metrics::GatewayMetrics;
use crate::stats::{Outcome, Stats};
pub use decisions::{DecisionLog, RECENT_DECISIONS};
use nodes::NodeClock;

/// Everything recorded about requests, and the one place it is written.
pub struct Accounting {
    pub metrics: GatewayMetrics,
    pub stats: Stats,
    pub decisions: DecisionLog,
    audit: OnceLock<sluice_audit::AuditHandle>,
    nodes: NodeClock,
    /// Nodes cost money from here on.
    started: std::time::Instant,
    local: Option<PoolConfig>,
    reference_model: Option<(String, Prices)>,
    hash_prompts: bool,
}

impl std::fmt::Debug for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounting").finish_non_exhaustive()
    }
}

impl Accounting {
    /// Registers the metrics; every configured backend's cost series exist from the start, at 0 (a rate
    /// over them is 0, not absent, before the first answer).
    pub fn new(
        config: &crate::config::GatewayConfig,
        backends: &[Arc<dyn Backend>],
        registry: prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = GatewayMetrics::new(registry)?;
        for b in backends {
            if b.route() == Route::Cloud {
                metrics.cost.add(&["cloud", b.name()], 0);
            }
        }
        for w in config.local.iter().flat_map(|l| &l.workers) {
            metrics.cost.add(&["local", &w.name], 0);
            metrics.node_cost.add(&[&w.name], 0);
            if config.reference_model.is_some() {
                metrics.cloud_equivalent.add(&[&w.name], 0);
            }
        }
        Ok(Self {
            metrics,
            stats: Stats::default(),
            decisions: DecisionLog::new(RECENT_DECISIONS),
            audit: OnceLock::new(),
            nodes: NodeClock::default(),
            started: std::time::Instant::now(),
            local: config.local.clone(),
            reference_model: config.reference_model.clone(),
            hash_prompts: config.audit.as_ref().is_some_and(|a| a.hash_prompts),
        })
    }

    /// Starts auditing into `handle` (once).
    pub fn audit_into(&self, handle: sluice_audit::AuditHandle) {
        let _ = self.audit.set(handle);
    }

    /// The audit writer, when there is one.
    pub fn audit(&self) -> Option<&sluice_audit::AuditHandle> {
        self.audit.get()
    }

    /// How long the gateway has been counting.
    pub fn since_start(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// What a worker node costs (the pool's figure for a worker the configuration does not list).
    pub fn node_cost(&self, worker: &str) -> NodeCost {
        self.local
            .as_ref()
            .map(|l| l.node_cost_of(worker))
            .unwrap_or_default()
    }

    /// Brings node cost and the member gauges up to now.
    pub fn refresh(&self, backends: &[Arc<dyn Backend>]) {
        self.nodes.accrue(&self.metrics, backends, self.started);
    }

    /// A request refused before any decision (`reason` labels `sluice_rejected_total`).
    pub fn rejected(&self, reason: &str) {
        self.metrics.rejected.with_label_values(&[reason]).inc();
    }

    /// What the scanner found in one request.
    pub fn scanned(&self, scan: &Scan) {
        for kind in scan.kinds() {
            self.metrics.findings.with_label_values(&[kind.as_str()]).inc();
        }
        if !scan.complete {
            self.metrics.scans_incomplete.inc();
        }
    }

    /// What the personal-data model did for one request (`None`: it was not needed).
    pub fn recognised(&self, outcome: Option<&crate::recognise::Recognition>) {
        let m = &self.metrics;
        let Some(r) = outcome else {
            m.ner_requests.with_label_values(&["not_needed"]).inc();
            return;
        };
        m.ner_requests.with_label_values(&[r.pass.as_str()]).inc();
        m.ner_strings.with_label_values(&["model"]).inc_by(r.read as u64);
        m.ner_strings
            .with_label_values(&["cache"])
            .inc_by(r.cached as u64);
        if let Some(reason) = r.over_budget {
            m.ner_over_budget.with_label_values(&[reason]).inc();
        }
        m.ner_duration.observe(r.elapsed.as_secs_f64());
    }

    /// A request shed because every model thread was busy and the queue full.
    pub fn recogniser_shed(&self) {
        self.metrics.ner_requests.with_label_values(&["shed"]).inc();
        self.rejected("overloaded");
    }

    /// A decision, as it was made (completed with its outcome when the request ends).
    pub fn decided(&self, e: Explanation) {
        self.decisions.record(e);
    }

    /// Targets the dispatcher refused to send to: cleared below the request.
    pub fn clearance_blocked(&self, n: u32) {
        if n > 0 {
            self.metrics.clearance_blocked.inc_by(u64::from(n));
        }
    }

    /// A target tried before the one that served, down or full: counted in its member's stats only (the
    /// request is counted once, where it ended).
    pub fn fell_back(&self, backend: &str, fault: Option<String>) {
        self.stats.record(
            backend,
            &Outcome {
                error: fault,
                ..Outcome::default()
            },
        );
    }

    /// A request for a cloud model is served by its local substitute, for `reason`.
    pub fn fell_back_to_local(&self, reason: sluice_policy::FallbackReason) {
        self.metrics.fallbacks.with_label_values(&[reason.as_str()]).inc();
    }

    /// The request was dispatched under `rule` to `route` (`redacted`: sent redacted to the cloud).
    pub fn dispatched(&self, rule: &str, route: Route, redacted: bool) {
        self.metrics
            .decisions
            .with_label_values(&[rule, route_label(route, redacted)])
            .inc();
    }

    /// A request goes redacted, with these distinct values replaced, by kind.
    pub fn redacted(&self, counts: &std::collections::BTreeMap<sluice_sensitivity::Kind, usize>) {
        for (kind, n) in counts {
            self.metrics
                .redactions
                .with_label_values(&[kind.as_str()])
                .inc_by(*n as u64);
        }
    }

    /// A request that no backend served and none was tried for (a refusal of the policy or of the
    /// dispatcher): its audit record, its decision's outcome, and `sluice_rejected_total` when `reason`.
    pub fn refused(
        &self,
        decision_id: &str,
        record: Option<Box<sluice_audit::Record>>,
        status: u16,
        code: &'static str,
        reason: Option<&str>,
    ) {
        if let Some(r) = reason {
            self.rejected(r);
        }
        self.decisions.end(
            decision_id,
            Ended {
                backend: None,
                route: None,
                model: None,
                fallbacks: Vec::new(),
                fell_back: None,
                status,
                code,
            },
        );
        if let (Some(mut record), Some(log)) = (record, self.audit.get()) {
            record.status = status;
            record.code = code.to_owned();
            log.send(*record);
        }
    }
}

/// Records one request when it ends, however it ends (a client that leaves mid-stream drops it, and is
/// counted as `client_closed`).
pub struct Ledger {
    accounts: Arc<Accounting>,
    started: Instant,
    route: Route,
    /// The member that served (or the backend tried last).
    pub backend: String,
    /// The metric label of the model (`other` for a model the backend does not list).
    model_label: String,
    tenant: String,
    decision_id: String,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    generated: u64,
    usage: Option<Usage>,
    code: Option<&'static str>,
    error: Option<String>,
    /// The backend's members' throughput is read when a local answer is charged.
    backend_ref: Arc<dyn Backend>,
    /// List prices of the model that served, for a cloud answer.
    prices: Option<Prices>,
    /// The model that served.
    served_model: String,
    /// Targets tried before this one, down or full.
    fallbacks: Vec<Attempt>,
    /// The HTTP status the client got (499 when it left first, as nginx writes it).
    status: u16,
    /// The decision's audit record, completed and sent when the request ends.
    audit: Option<Box<sluice_audit::Record>>,
    /// The request went redacted (the `redacted-cloud` route).
    redacted: bool,
    /// A fallback served it, and why.
    fell_back: Option<sluice_policy::FallbackReason>,
    /// What the request reserved of its tenant's limits, settled to what it used when it ends.
    limits: Option<crate::limits::Held>,
}

/// The route as headers, explanations and the audit log name it.
fn route_label(route: Route, redacted: bool) -> &'static str {
    match route {
        Route::Cloud if redacted => "redacted-cloud",
        r => r.as_str(),
    }
}

/// Where an answer is being served, for its [`Ledger`].
pub struct Served<'a> {
    pub backend: &'a Arc<dyn Backend>,
    /// The member that serves (or the backend's name when none accepted).
    pub member: &'a str,
    pub model: &'a str,
    pub prices: Option<Prices>,
    pub tenant_label: &'a str,
    pub decision_id: &'a str,
    pub arrived: Instant,
}

impl Ledger {
    pub fn new(
        accounts: &Arc<Accounting>,
        served: &Served<'_>,
        fallbacks: Vec<Attempt>,
        audit: Option<Box<sluice_audit::Record>>,
    ) -> Self {
        // Metric labels stay low-cardinality whatever a policy does: a model the backend does not list is
        // `other`.
        let model_label = if served.backend.serves(served.model) {
            served.model.to_owned()
        } else {
            "other".to_owned()
        };
        Self {
            accounts: accounts.clone(),
            started: served.arrived,
            route: served.backend.route(),
            backend: served.member.to_owned(),
            model_label,
            tenant: served.tenant_label.to_owned(),
            decision_id: served.decision_id.to_owned(),
            first_token: None,
            last_token: None,
            generated: 0,
            usage: None,
            code: None,
            error: None,
            backend_ref: served.backend.clone(),
            prices: served.prices,
            served_model: served.model.to_owned(),
            fallbacks,
            status: 499,
            audit,
            redacted: false,
            fell_back: None,
            limits: None,
        }
    }

    /// The request holds a reservation of its tenant's limits: settled when the request ends.
    pub fn hold(&mut self, held: Option<crate::limits::Held>) {
        self.limits = held;
    }

    /// Its local substitute serves a request for a cloud model, for `reason`.
    pub fn fell_back(&mut self, reason: sluice_policy::FallbackReason) {
        self.fell_back = Some(reason);
        if let Some(record) = &mut self.audit {
            record.fell_back = Some(reason.as_str().to_owned());
        }
    }

    /// The request was sent redacted, with these distinct values replaced, by kind: the audit record and
    /// the explanation say so (counts only, never the values).
    pub fn redacted(&mut self, counts: &std::collections::BTreeMap<sluice_sensitivity::Kind, usize>) {
        self.redacted = true;
        if let Some(record) = &mut self.audit {
            record.redactions = counts
                .iter()
                .map(|(k, n)| (k.as_str().to_owned(), *n as u64))
                .collect();
        }
    }

    /// Ends with the status and code the client gets (`ok` or an error's); `fault` counts against the
    /// member in its stats.
    pub fn end(&mut self, status: u16, code: &'static str, fault: Option<String>) {
        self.status = status;
        self.code = Some(code);
        self.error = fault;
    }

    /// Adds what the answer cost to the cost series: a cloud answer at its model's list prices, a local
    /// one at its share of the node's busy time, and its price at the reference cloud model.
    fn charge(&self) -> (Pico, Option<Pico>) {
        let m = &self.accounts.metrics;
        match self.route {
            Route::Cloud => {
                let (Some(u), Some(p)) = (self.usage, self.prices) else {
                    return (0, None);
                };
                let cost = crate::cost::priced(u, p);
                m.cost.add(&["cloud", &self.backend], cost);
                (cost, None)
            }
            Route::Local => {
                let usage = self.usage_or_generated();
                if usage.prompt_tokens + usage.completion_tokens == 0 {
                    return (0, None);
                }
                let member = self
                    .backend_ref
                    .members()
                    .into_iter()
                    .find(|s| s.name == self.backend);
                // The member's own figure carries its measured power where the node is charged so.
                let node = member
                    .as_ref()
                    .and_then(|s| s.node.map(|(cost, _)| cost))
                    .unwrap_or_else(|| self.accounts.node_cost(&self.backend));
                let throughput = member.and_then(|s| s.throughput).unwrap_or_default();
                let on_node = self.last_token.unwrap_or_else(Instant::now) - self.started;
                let cost = crate::cost::local_charge(&node, throughput, usage, on_node);
                m.cost.add(&["local", &self.backend], cost);
                let equivalent = self.accounts.reference_model.as_ref().map(|(_, p)| {
                    let e = crate::cost::priced(usage, *p);
                    m.cloud_equivalent.add(&[&self.backend], e);
                    e
                });
                (cost, equivalent)
            }
        }
    }

    /// The backend's usage; for an answer without one (a stream the client left), what was generated,
    /// which still ran.
    fn usage_or_generated(&self) -> Usage {
        self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.generated,
        })
    }
}

impl Ledger {
    /// A whole answer came at once (vectors): what it used, and when it ended. No first token is
    /// recorded, so the time-to-first-token series stay those of generated text.
    pub fn answered(&mut self, usage: Usage) {
        self.last_token = Some(Instant::now());
        self.usage = Some(usage);
        self.end(200, "ok", None);
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let code = self.code.unwrap_or("client_closed");
        let route = self.route.as_str();
        let accounts = &self.accounts;
        let m = &accounts.metrics;
        m.requests
            .with_label_values(&[route, &self.backend, &self.model_label, &self.tenant, code])
            .inc();
        m.request_duration
            .with_label_values(&[route])
            .observe(self.started.elapsed().as_secs_f64());
        let ttft = self.first_token.map(|t| t - self.started);
        if let Some(t) = ttft {
            m.time_to_first_token
                .with_label_values(&[route, &self.backend])
                .observe(t.as_secs_f64());
        }
        if let Some(u) = self.usage {
            m.tokens
                .with_label_values(&[route, &self.backend, "input"])
                .inc_by(u.prompt_tokens);
            m.tokens
                .with_label_values(&[route, &self.backend, "output"])
                .inc_by(u.completion_tokens);
        }
        let (cost, equivalent) = self.charge();
        if let Some(held) = self.limits.take() {
            if self.route == Route::Cloud && self.usage.is_none() && self.first_token.is_some() {
                // Started but never said what it used: what it may have cost stays counted.
                held.keep();
            } else {
                let used = self.usage_or_generated();
                held.settle(self.route, used.prompt_tokens + used.completion_tokens, cost);
            }
        }
        let fallbacks = std::mem::take(&mut self.fallbacks);
        let route_named = route_label(self.route, self.redacted);
        if let (Some(mut record), Some(audit)) = (self.audit.take(), accounts.audit.get()) {
            record.route = Some(route_named.to_owned());
            record.backend = Some(self.backend.clone());
            record.served_model = Some(self.served_model.clone());
            record.fallbacks = fallbacks.iter().map(|a| a.backend.clone()).collect();
            record.status = self.status;
            record.code = code.to_owned();
            let usage = self.usage_or_generated();
            record.prompt_tokens = usage.prompt_tokens;
            record.completion_tokens = usage.completion_tokens;
            record.cost_usd = crate::cost::usd(cost);
            record.cloud_equivalent_usd = equivalent.map(crate::cost::usd);
            let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
            record.ttft_ms = ttft.map(ms);
            record.duration_ms = Some(ms(self.started.elapsed()));
            audit.send(*record);
        }
        accounts.decisions.end(
            &self.decision_id,
            Ended {
                backend: Some(self.backend.clone()),
                route: Some(route_named),
                model: Some(self.served_model.clone()),
                fallbacks,
                fell_back: self.fell_back.map(sluice_policy::FallbackReason::as_str),
                status: self.status,
                code,
            },
        );
        let tokens = self.usage.map_or(self.generated, |u| u.completion_tokens);
        let generation = match (self.first_token, self.last_token) {
            (Some(a), Some(b)) => Some((tokens, b - a)),
            _ => None,
        };
        accounts.stats.record(
            &self.backend,
            &Outcome {
                time_to_first_token: ttft,
                generation,
                error: self.error.take(),
            },
        );
    }
}

/// What the wire layer reports as an answer passes.
impl crate::wire::Meter for Ledger {
    fn token(&mut self) {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated += 1;
    }
    fn finished(&mut self, usage: Usage) {
        self.usage = Some(usage);
        self.end(200, "ok", None);
    }
    fn failed(&mut self, status: u16, code: &'static str, fault: Option<String>) {
        self.end(status, code, fault);
    }
    fn client_stalled(&mut self) {
        self.end(408, "client_stalled", None);
    }
    fn member(&self) -> &str {
        &self.backend
    }
}
