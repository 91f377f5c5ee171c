//! One replay: every request of a trace, in arrival order, decided by the candidate configuration's
//! policy engine (the gateway's own code) against the fleet as the simulation has it at that moment, then
//! served as the gateway's dispatcher would serve it: targets in the decision's order, a local target
//! taken only when a node has a slot or room in its queue, the next target otherwise.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;
use sluice_gateway::backend::BackendError;
use sluice_gateway::cost::{self, Pico};
use sluice_gateway::dispatch::{FailedTarget, Unserved};
use sluice_gateway::error::{self, ApiError};
use sluice_gateway::{GatewayConfig, recognise};
use sluice_policy::{Decision, FleetView, Policy, PolicyEngine, RequestFacts, Route};

use crate::fleet::{Fleet, Observed};
use crate::pool::{Event, JobKey, Pool};
use crate::stats::{Histogram, key_of};
use crate::trace::{TraceError, TraceRequest};

/// The route names of a report: where a request went, or `refused`.
pub const LOCAL: &str = "local";
pub const CLOUD: &str = "cloud";
pub const REDACTED: &str = "redacted-cloud";
pub const REFUSED: &str = "refused";

/// Requests, tokens, money and latency of a set of requests.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cloud: at list price. Local: the requests' share of the nodes' busy time (shared in proportion
    /// to each request's work, once the replay ends).
    pub cost: Pico,
    /// Local: seconds the requests would take on a node alone.
    pub work_seconds: f64,
    /// Local requests priced at the reference cloud model.
    pub cloud_equivalent: Pico,
    pub ttft: Histogram,
    /// Time to first token over the objective.
    pub objective_misses: u64,
    /// Requests that fell back past a target that was down or full.
    pub fell_back: u64,
}

/// One tenant's requests, and how they split between routes.
#[derive(Debug, Clone, Default)]
pub struct TenantTally {
    pub all: Tally,
    pub by_route: BTreeMap<&'static str, u64>,
}

/// What the recorded run did (audit logs only).
#[derive(Debug, Clone, Default)]
pub struct RecordedTally {
    pub by_route: BTreeMap<String, Tally>,
}

/// Everything one replay adds up.
#[derive(Debug, Default)]
pub struct Run {
    pub nodes: u32,
    pub routes: BTreeMap<&'static str, Tally>,
    pub tenants: BTreeMap<String, TenantTally>,
    /// (recorded route, replayed route) -> requests.
    pub matrix: BTreeMap<(String, String), u64>,
    /// Requests whose route or rule changed, by the replayed rule.
    pub changed_by_rule: BTreeMap<String, u64>,
    pub changed: u64,
    /// Minute of simulated time -> cloud cost, cloud price of the local traffic.
    pub over_time: BTreeMap<i64, (Pico, Pico)>,
    /// Simulated seconds from the first arrival to the last arrival or completion.
    pub span_seconds: f64,
    pub local_busy_seconds: f64,
    /// What the local nodes cost over the span, busy or idle.
    pub local_node_cost: Pico,
    pub recorded: RecordedTally,
    /// Lines that are not requests, and the first few of them.
    pub unreadable: u64,
    pub problems: Vec<String>,
    /// Request lines the gateway would refuse at intake, by code.
    pub invalid: BTreeMap<&'static str, u64>,
    /// Requests whose tokens were estimated (never served in the recorded run, or not given).
    pub estimated_tokens: u64,
    /// Requests recorded earlier than the one before (concurrent decisions): replayed at the later time.
    pub out_of_order: u64,
}

/// What a replay needs besides the trace.
pub struct Setup<'a> {
    pub config: &'a GatewayConfig,
    pub fleet: &'a Fleet,
    /// `nodes` replaces the fleet's node count (a sweep).
    pub nodes: Option<u32>,
    pub observed: &'a Observed,
    /// Arrivals are this many times closer together than recorded.
    pub speed_up: f64,
    /// Where to write one JSON line per replayed request, when asked.
    pub decisions: Option<&'a mut dyn Write>,
}

/// The time-to-first-token objective of a requested model: its virtual model's, else the policy's.
fn objective(config: &GatewayConfig, model: &str) -> f64 {
    config
        .policy
        .virtual_model(model)
        .map_or(config.policy.max_ttft_seconds, |v| v.max_ttft_seconds)
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| o + 0.2 * (new - o)))
}

struct State<'a> {
    setup: Setup<'a>,
    engine: PolicyEngine,
    view: FleetView,
    local: Option<usize>,
    pool: Option<Pool>,
    usd_per_hour: f64,
    busy_unit: (f64, f64),
    run: Run,
    tenant_names: Vec<String>,
    tenant_index: BTreeMap<String, u32>,
    first_ms: i64,
    last_t: f64,
    /// The personal-data model, loaded when a request line first needs it.
    ner: Option<Result<recognise::Recognizer, String>>,
    ner_failed: bool,
}

/// Replays `trace` on `setup`'s fleet.
pub fn replay(
    trace: impl Iterator<Item = Result<TraceRequest, TraceError>>,
    setup: Setup<'_>,
) -> std::io::Result<Run> {
    let config = setup.config;
    let local_fleet = setup.fleet.local.clone().map(|mut l| {
        if let Some(n) = setup.nodes {
            l.nodes = n;
        }
        l
    });
    let local_models: Vec<String> = local_fleet.as_ref().map(|l| l.models.clone()).unwrap_or_default();
    let mut view = sluice_gateway::fleet::offline_view(config, &local_models, &[]);
    let local = config.local.as_ref().and_then(|l| view.index_of(&l.name));
    for b in &mut view.backends {
        if b.route == Route::Cloud {
            b.ttft_seconds = setup
                .observed
                .cloud_ttft
                .get(&b.name)
                .and_then(|r| crate::stats::quantile_of(&r.sorted(), 0.5))
                .or_else(|| setup.fleet.cloud_ttft_ms.get(&b.name).map(|ms| ms / 1000.0));
        }
    }
    if let (Some(i), Some(l)) = (local, &local_fleet) {
        view.backends[i].ready = l.nodes > 0;
        view.backends[i].load.slots = l.slots * l.nodes;
    }
    let nodes = local_fleet.as_ref().map_or(0, |l| l.nodes);
    let mut state = State {
        engine: PolicyEngine::new(config.policy.clone()),
        view,
        local,
        pool: local_fleet.as_ref().map(Pool::new),
        usd_per_hour: local_fleet.as_ref().map_or(0.0, |l| l.usd_per_hour),
        busy_unit: local_fleet.as_ref().map_or((0.0, 0.0), |l| {
            (
                1.0 / l.prefill_tokens_per_second,
                1.0 / l.decode_tokens_per_second,
            )
        }),
        run: Run {
            nodes,
            ..Run::default()
        },
        tenant_names: Vec::new(),
        tenant_index: BTreeMap::new(),
        first_ms: setup.observed.first_ms.unwrap_or(0),
        last_t: 0.0,
        ner: None,
        ner_failed: false,
        setup,
    };
    for item in trace {
        match item {
            Ok(r) => state.request(&r)?,
            Err(TraceError::Invalid { code, .. }) => *state.run.invalid.entry(code).or_default() += 1,
            Err(e @ (TraceError::Line { .. } | TraceError::Io { .. })) => {
                state.run.unreadable += 1;
                if state.run.problems.len() < 10 {
                    state.run.problems.push(e.to_string());
                }
            }
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
    }
    state.finish();
    Ok(state.run)
}

impl State<'_> {
    fn tenant(&mut self, name: &str) -> u32 {
        if let Some(i) = self.tenant_index.get(name) {
            return *i;
        }
        let i = self.tenant_names.len() as u32;
        self.tenant_names.push(name.to_owned());
        self.tenant_index.insert(name.to_owned(), i);
        i
    }

    fn events(&mut self, t: f64) {
        let Some(pool) = self.pool.as_mut() else { return };
        let events = pool.advance_to(t).to_vec();
        self.apply(&events);
    }

    fn apply(&mut self, events: &[Event]) {
        for e in events {
            match *e {
                Event::FirstToken { key, ttft } => {
                    let miss = key.objective_us > 0 && ttft * 1e6 > key.objective_us as f64;
                    let tenant = self.tenant_names[key.tenant as usize].clone();
                    for tally in [
                        self.run.routes.entry(LOCAL).or_default(),
                        &mut self.run.tenants.entry(tenant).or_default().all,
                    ] {
                        tally.ttft.add(ttft);
                        tally.objective_misses += u64::from(miss);
                    }
                    if let Some(i) = self.local {
                        let b = &mut self.view.backends[i];
                        b.ttft_seconds = ewma(b.ttft_seconds, ttft);
                    }
                }
                Event::Done {
                    tokens_per_second, ..
                } => {
                    if let (Some(i), Some(r)) = (self.local, tokens_per_second) {
                        let b = &mut self.view.backends[i];
                        b.tokens_per_second = ewma(b.tokens_per_second, r);
                    }
                }
            }
        }
    }

    fn request(&mut self, r: &TraceRequest) -> std::io::Result<()> {
        let config = self.setup.config;
        let mut t = (r.time_ms - self.first_ms) as f64 / 1000.0 / self.setup.speed_up;
        if t < self.last_t {
            self.run.out_of_order += 1;
            t = self.last_t;
        }
        self.last_t = t;
        self.events(t);
        if let (Some(i), Some(pool)) = (self.local, &self.pool) {
            let (running, waiting, _) = pool.load();
            let b = &mut self.view.backends[i];
            b.load.running = running;
            b.load.waiting = waiting;
            b.load.in_flight = u64::from(running + waiting);
            // Local models are priced as the gateway prices them: the node's hourly cost over the token
            // rates it reports (for all its running requests together).
            let prices = pool.busy_prices(self.usd_per_hour);
            for card in &mut b.models {
                card.prices = Some(prices);
            }
        }
        self.run.estimated_tokens += u64::from(r.estimated);
        let facts = |scan| RequestFacts {
            tenant: &r.tenant,
            model: &r.model,
            max_tokens: r.max_tokens,
            body: &r.body,
            headers: &r.headers,
            declared: r.declared,
            scan,
            prefer: r.prefer,
            prompt_tokens: r.prompt_estimate,
        };
        let mut decided = self.engine.decide(&facts(&r.scan), &self.view);
        // A request line's text is read by the personal-data model as the gateway reads it: only when its
        // answer could change the route. (An audit record's kinds are final: it keeps no text.)
        if r.recorded.is_none()
            && let Some(ner) = &config.ner
            && recognise::can_change_route(&decided, &self.view, &r.scan)
        {
            let model = self
                .ner
                .get_or_insert_with(|| recognise::load(ner).map_err(|e| e.to_string()));
            match model {
                Ok(model) => {
                    let mut scan = r.scan.clone();
                    recognise::recognise_here(
                        model,
                        ner,
                        &config.scanner,
                        &mut scan,
                        &sluice_policy::strings(&r.body),
                    );
                    decided = self.engine.decide(&facts(&scan), &self.view);
                }
                Err(e) => {
                    if !self.ner_failed {
                        self.ner_failed = true;
                        self.run.problems.push(format!(
                            "the personal-data model could not be loaded ({e}): request lines were read by the pattern scanner only"
                        ));
                    }
                }
            }
        }
        let tenant = self.tenant(&r.tenant);
        let objective = objective(config, &r.model);
        let outcome = match &decided {
            Err(refusal) => {
                let e = ApiError::from(refusal);
                Outcome::refused(refusal.rule.clone(), &e)
            }
            Ok(d) => self.serve(d, r, t, tenant, objective),
        };
        self.count(r, &outcome, t, objective);
        if let Some(out) = self.setup.decisions.as_mut() {
            let line = json!({
                "at": r.at,
                "id": r.id,
                "tenant": r.tenant,
                "model": r.model,
                "recorded": r.recorded.as_ref().map(|rec| json!({
                    "route": rec.route,
                    "rule": rec.rule,
                    "backend": rec.backend,
                    "status": rec.status,
                })),
                "route": outcome.route,
                "rule": outcome.rule,
                "backend": outcome.backend,
                "served_model": outcome.model,
                "fallbacks": outcome.fallbacks,
                "status": outcome.status,
                "code": outcome.code,
                // A local request's cost is its share of the nodes' busy time, known only at the end.
                "cost_usd": (outcome.route != LOCAL).then(|| cost::usd(outcome.cost)),
                "work_seconds": (outcome.route == LOCAL).then_some(outcome.work),
            });
            serde_json::to_writer(&mut **out, &line)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn serve(&mut self, d: &Decision, r: &TraceRequest, t: f64, tenant: u32, objective: f64) -> Outcome {
        let mut failures = Vec::new();
        for target in &d.targets {
            let b = &self.view.backends[target.backend];
            let fail = |error| FailedTarget {
                backend: b.name.clone(),
                route: b.route,
                model: target.model.clone(),
                error,
            };
            if !b.ready {
                failures.push(fail(BackendError::Unavailable(format!("{} has no node", b.name))));
                continue;
            }
            let fallbacks: Vec<String> = failures
                .iter()
                .map(|f: &FailedTarget| f.backend.clone())
                .collect();
            match b.route {
                Route::Local => {
                    let key = JobKey {
                        tenant,
                        objective_us: (objective * 1e6) as u64,
                    };
                    let admitted = self.pool.as_mut().and_then(|pool| {
                        pool.admit(t, key, r.usage.prompt_tokens, r.usage.completion_tokens)
                    });
                    if admitted.is_none() {
                        failures.push(fail(BackendError::Full(format!("{} is full", b.name))));
                        continue;
                    }
                    let work = r.usage.prompt_tokens as f64 * self.busy_unit.0
                        + r.usage.completion_tokens as f64 * self.busy_unit.1;
                    let equivalent = self
                        .setup
                        .config
                        .reference_model
                        .as_ref()
                        .map_or(0, |(_, p)| cost::priced(r.usage, *p));
                    return Outcome {
                        route: LOCAL,
                        rule: Some(d.rule.clone()),
                        backend: Some(b.name.clone()),
                        model: Some(target.model.clone()),
                        fallbacks,
                        status: 200,
                        code: "ok",
                        cost: 0,
                        work,
                        cloud_equivalent: equivalent,
                        ttft: None,
                    };
                }
                Route::Cloud => {
                    let prices = b.prices(&target.model);
                    let ttft = self.cloud_ttft(&b.name, r);
                    if let Some(ttft) = ttft {
                        let b = &mut self.view.backends[target.backend];
                        b.ttft_seconds = ewma(b.ttft_seconds, ttft);
                    }
                    let b = &self.view.backends[target.backend];
                    return Outcome {
                        route: if d.redaction.is_some() { REDACTED } else { CLOUD },
                        rule: Some(d.rule.clone()),
                        backend: Some(b.name.clone()),
                        model: Some(target.model.clone()),
                        fallbacks,
                        status: 200,
                        code: "ok",
                        cost: prices.map_or(0, |p| cost::priced(r.usage, p)),
                        work: 0.0,
                        cloud_equivalent: 0,
                        ttft,
                    };
                }
            }
        }
        let (e, _) = error::unserved(&Unserved {
            level: d.level,
            rule: d.rule.clone(),
            excluded: d.excluded.clone(),
            failures,
            unsupported: None,
            fatal: None,
        });
        Outcome::refused(Some(d.rule.clone()), &e)
    }

    /// A cloud request's time to first token: as recorded when it went to the same backend, else one
    /// drawn from what that backend's recorded requests took, else the fleet file's figure.
    fn cloud_ttft(&self, backend: &str, r: &TraceRequest) -> Option<f64> {
        if let Some(rec) = &r.recorded
            && rec.backend.as_deref() == Some(backend)
            && let Some(ms) = rec.ttft_ms
        {
            return Some(ms / 1000.0);
        }
        self.setup
            .observed
            .cloud_ttft
            .get(backend)
            .and_then(|s| s.draw(key_of(&r.id)))
            .or_else(|| self.setup.fleet.cloud_ttft_ms.get(backend).map(|ms| ms / 1000.0))
    }

    fn count(&mut self, r: &TraceRequest, o: &Outcome, t: f64, objective: f64) {
        let served = o.status == 200;
        let miss = o.ttft.is_some_and(|ttft| ttft > objective);
        let add = |tally: &mut Tally| {
            tally.requests += 1;
            if served {
                tally.prompt_tokens += r.usage.prompt_tokens;
                tally.completion_tokens += r.usage.completion_tokens;
            }
            tally.cost += o.cost;
            tally.work_seconds += o.work;
            tally.cloud_equivalent += o.cloud_equivalent;
            if let Some(ttft) = o.ttft {
                tally.ttft.add(ttft);
            }
            tally.objective_misses += u64::from(miss);
            tally.fell_back += u64::from(!o.fallbacks.is_empty());
        };
        add(self.run.routes.entry(o.route).or_default());
        let tenant = self.run.tenants.entry(r.tenant.clone()).or_default();
        add(&mut tenant.all);
        *tenant.by_route.entry(o.route).or_default() += 1;
        let minute = (t / 60.0).floor() as i64;
        let slot = self.run.over_time.entry(minute).or_default();
        if o.route != LOCAL {
            slot.0 += o.cost;
        }
        slot.1 += o.cloud_equivalent;
        if let Some(rec) = &r.recorded {
            let recorded = self.run.recorded.by_route.entry(rec.route.clone()).or_default();
            recorded.requests += 1;
            recorded.prompt_tokens += r.usage.prompt_tokens;
            recorded.completion_tokens += r.usage.completion_tokens;
            recorded.cost += cost::pico(rec.cost_usd);
            recorded.cloud_equivalent += rec.cloud_equivalent_usd.map_or(0, cost::pico);
            if let Some(ms) = rec.ttft_ms {
                recorded.ttft.add(ms / 1000.0);
                recorded.objective_misses += u64::from(ms / 1000.0 > objective);
            }
            let changed = rec.route != o.route || rec.rule != o.rule;
            *self
                .run
                .matrix
                .entry((rec.route.clone(), o.route.to_owned()))
                .or_default() += 1;
            if changed {
                self.run.changed += 1;
                *self
                    .run
                    .changed_by_rule
                    .entry(o.rule.clone().unwrap_or_else(|| "(none)".into()))
                    .or_default() += 1;
            }
        }
    }

    fn finish(&mut self) {
        if let Some(pool) = self.pool.as_mut() {
            let events = pool.drain().to_vec();
            self.apply(&events);
        }
        let last_done = self.pool.as_ref().map_or(0.0, |p| p.last_done);
        self.run.span_seconds = self.last_t.max(last_done);
        self.run.local_busy_seconds = self.pool.as_ref().map_or(0.0, Pool::busy_seconds);
        self.run.local_node_cost =
            cost::pico(self.usd_per_hour * f64::from(self.run.nodes) * self.run.span_seconds / 3600.0);
        // The nodes' busy time, shared between local requests in proportion to their work.
        let busy = cost::pico(self.usd_per_hour * self.run.local_busy_seconds / 3600.0);
        let total_work = self.run.routes.get(LOCAL).map_or(0.0, |t| t.work_seconds);
        if total_work > 0.0 {
            let share = |work: f64| (busy as f64 * work / total_work).round() as Pico;
            if let Some(t) = self.run.routes.get_mut(LOCAL) {
                t.cost = busy;
            }
            for t in self.run.tenants.values_mut() {
                t.all.cost += share(t.all.work_seconds);
            }
        }
    }
}

/// What happened to one request in the replay.
struct Outcome {
    route: &'static str,
    rule: Option<String>,
    backend: Option<String>,
    model: Option<String>,
    fallbacks: Vec<String>,
    status: u16,
    code: &'static str,
    cost: Pico,
    /// Local: seconds of work on a node alone (its cost is its share of the busy time, known at the end).
    work: f64,
    cloud_equivalent: Pico,
    /// Cloud requests' time to first token (local ones come from the pool later).
    ttft: Option<f64>,
}

impl Outcome {
    fn refused(rule: Option<String>, e: &ApiError) -> Self {
        Self {
            route: REFUSED,
            rule,
            backend: None,
            model: None,
            fallbacks: Vec::new(),
            status: e.status.as_u16(),
            code: e.code,
            cost: 0,
            work: 0.0,
            cloud_equivalent: 0,
            ttft: None,
        }
    }
}
