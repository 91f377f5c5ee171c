//! The report of a simulation: what the candidate would route where, what it would cost (cloud at list
//! price, local at the nodes' cost busy or idle, and the cloud price of the local traffic), how soon
//! answers would start, what changed against the recorded run, and a sweep over node counts. As data
//! (the JSON of `--json`), and as text for a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sluice_gateway::cost::{Pico, usd};

use crate::fleet::Fleet;
use crate::replay::{LOCAL, REFUSED, Run, Tally};
use crate::stats::Histogram;
use crate::trace::Chain;

/// Time-to-first-token percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Percentiles {
    fn of(h: &Histogram) -> Self {
        let ms = |v: Option<f64>| v.map(|s| (s * 1e6).round() / 1e3);
        Self {
            count: h.count(),
            mean_ms: ms(h.mean()),
            p50_ms: ms(h.quantile(0.5)),
            p90_ms: ms(h.quantile(0.9)),
            p95_ms: ms(h.quantile(0.95)),
            p99_ms: ms(h.quantile(0.99)),
        }
    }
}

/// Money, in USD and exactly in picodollars.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Money {
    pub usd: f64,
    pub pico: Pico,
}

impl Money {
    pub fn of(pico: Pico) -> Self {
        Self { usd: usd(pico), pico }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub path: String,
    pub kind: &'static str,
    pub files: Vec<String>,
    pub requests: u64,
    pub unreadable: u64,
    /// The first few lines that could not be read, and why.
    pub problems: Vec<String>,
    /// Request lines the gateway would refuse at intake, by error code.
    pub invalid: BTreeMap<&'static str, u64>,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    pub recorded_seconds: f64,
    pub speed_up: f64,
    /// The audit log's chain, checked before the replay.
    pub chain: Option<Chain>,
    pub estimated_tokens: u64,
    pub out_of_order: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    pub requests: u64,
    pub cost: Money,
    pub ttft: Percentiles,
    pub objective_misses: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteRow {
    pub route: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cloud: at list price. Local: the requests' share of the nodes' busy time.
    pub cost: Money,
    pub cloud_equivalent: Money,
    pub ttft: Percentiles,
    pub objective_misses: u64,
    pub fell_back: u64,
    /// The same route in the recorded run (audit logs).
    pub recorded: Option<Recorded>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantRow {
    pub tenant: String,
    pub requests: u64,
    pub by_route: BTreeMap<&'static str, u64>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cloud at list price plus the tenant's share of the local nodes' busy time.
    pub cost: Money,
    pub cloud_equivalent: Money,
    pub ttft: Percentiles,
    pub objective_misses: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub refused: u64,
    pub cloud: Money,
    /// The local nodes over the replayed span, busy or idle.
    pub local: Money,
    pub local_busy: Money,
    pub local_idle: Money,
    /// Busy seconds over node-seconds.
    pub local_utilisation: Option<f64>,
    pub total: Money,
    /// What the local traffic would have cost at the reference cloud model.
    pub cloud_equivalent_of_local: Money,
    /// That, less what the local nodes cost.
    pub local_savings_usd: f64,
    pub objective_misses: u64,
    pub replayed_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub from: String,
    pub to: String,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Changes {
    /// Requests whose route or rule differs from the recorded run.
    pub changed: u64,
    pub matrix: Vec<Change>,
    /// The rules the changed requests met in the replay.
    pub by_rule: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimePoint {
    /// Seconds from the replay's start.
    pub start_seconds: f64,
    pub cloud_usd: f64,
    pub local_usd: f64,
    pub cloud_equivalent_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub nodes: u32,
    pub total: Money,
    pub cloud: Money,
    pub local: Money,
    pub by_route: BTreeMap<&'static str, u64>,
    pub objective_misses: u64,
    pub local_ttft: Percentiles,
    pub local_utilisation: Option<f64>,
}

/// Everything `sluice simulate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: String,
    pub trace: TraceInfo,
    pub fleet: Fleet,
    pub objective_seconds: f64,
    pub summary: Summary,
    pub routes: Vec<RouteRow>,
    pub tenants: Vec<TenantRow>,
    /// Against the recorded run (audit logs).
    pub changes: Option<Changes>,
    pub over_time: Vec<TimePoint>,
    pub sweep: Vec<SweepRow>,
    pub notes: Vec<String>,
}

fn summary(run: &Run) -> Summary {
    let all = |f: fn(&Tally) -> u64| run.routes.values().map(f).sum::<u64>();
    let cloud: Pico = run
        .routes
        .iter()
        .filter(|(r, _)| **r != LOCAL)
        .map(|(_, t)| t.cost)
        .sum();
    let busy = run.routes.get(LOCAL).map_or(0, |t| t.cost);
    let equivalent = run.routes.get(LOCAL).map_or(0, |t| t.cloud_equivalent);
    let local = run.local_node_cost.max(busy);
    let node_seconds = f64::from(run.nodes) * run.span_seconds;
    Summary {
        requests: all(|t| t.requests),
        refused: run.routes.get(REFUSED).map_or(0, |t| t.requests),
        cloud: Money::of(cloud),
        local: Money::of(local),
        local_busy: Money::of(busy),
        local_idle: Money::of(local - busy),
        local_utilisation: (node_seconds > 0.0).then(|| run.local_busy_seconds / node_seconds),
        total: Money::of(cloud + local),
        cloud_equivalent_of_local: Money::of(equivalent),
        local_savings_usd: usd(equivalent) - usd(local),
        objective_misses: all(|t| t.objective_misses),
        replayed_seconds: run.span_seconds,
    }
}

/// The route rows: every route the replay or the recorded run used.
fn routes(run: &Run) -> Vec<RouteRow> {
    let mut names: Vec<String> = run.routes.keys().map(|r| (*r).to_owned()).collect();
    names.extend(run.recorded.by_route.keys().cloned());
    names.sort();
    names.dedup();
    let empty = Tally::default();
    names
        .into_iter()
        .map(|name| {
            let t = run.routes.get(name.as_str()).unwrap_or(&empty);
            RouteRow {
                requests: t.requests,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                cost: Money::of(t.cost),
                cloud_equivalent: Money::of(t.cloud_equivalent),
                ttft: Percentiles::of(&t.ttft),
                objective_misses: t.objective_misses,
                fell_back: t.fell_back,
                recorded: run.recorded.by_route.get(&name).map(|r| Recorded {
                    requests: r.requests,
                    cost: Money::of(r.cost),
                    ttft: Percentiles::of(&r.ttft),
                    objective_misses: r.objective_misses,
                }),
                route: name,
            }
        })
        .collect()
}

/// At most this many points in the cost-over-time series.
const MAX_POINTS: usize = 240;

fn over_time(run: &Run, usd_per_hour: f64) -> Vec<TimePoint> {
    let minutes = (run.span_seconds / 60.0).ceil().max(1.0) as i64;
    let per_point = (minutes as usize).div_ceil(MAX_POINTS).max(1) as i64;
    let points = (minutes + per_point - 1) / per_point;
    let mut out: Vec<TimePoint> = (0..points)
        .map(|i| {
            let start = (i * per_point * 60) as f64;
            let end = (((i + 1) * per_point * 60) as f64).min(run.span_seconds.max(start));
            TimePoint {
                start_seconds: start,
                cloud_usd: 0.0,
                local_usd: usd_per_hour * f64::from(run.nodes) * (end - start) / 3600.0,
                cloud_equivalent_usd: 0.0,
            }
        })
        .collect();
    for (minute, (cloud, equivalent)) in &run.over_time {
        let i = (minute / per_point).clamp(0, points - 1) as usize;
        out[i].cloud_usd += usd(*cloud);
        out[i].cloud_equivalent_usd += usd(*equivalent);
    }
    out
}

pub fn sweep_row(run: &Run) -> SweepRow {
    let s = summary(run);
    SweepRow {
        nodes: run.nodes,
        total: s.total,
        cloud: s.cloud,
        local: s.local,
        by_route: run.routes.iter().map(|(r, t)| (*r, t.requests)).collect(),
        objective_misses: s.objective_misses,
        local_ttft: run
            .routes
            .get(LOCAL)
            .map(|t| Percentiles::of(&t.ttft))
            .unwrap_or_default(),
        local_utilisation: s.local_utilisation,
    }
}

/// What the report is built from.
pub struct Parts {
    pub config: String,
    pub trace: TraceInfo,
    pub fleet: Fleet,
    pub objective_seconds: f64,
    pub has_recorded: bool,
    pub notes: Vec<String>,
}

pub fn build(parts: Parts, run: &Run, sweep: &[Run]) -> Report {
    let usd_per_hour = parts.fleet.local.as_ref().map_or(0.0, |l| l.usd_per_hour);
    let tenants = run
        .tenants
        .iter()
        .map(|(name, t)| TenantRow {
            tenant: name.clone(),
            requests: t.all.requests,
            by_route: t.by_route.clone(),
            prompt_tokens: t.all.prompt_tokens,
            completion_tokens: t.all.completion_tokens,
            cost: Money::of(t.all.cost),
            cloud_equivalent: Money::of(t.all.cloud_equivalent),
            ttft: Percentiles::of(&t.all.ttft),
            objective_misses: t.all.objective_misses,
        })
        .collect();
    let changes = parts.has_recorded.then(|| Changes {
        changed: run.changed,
        matrix: run
            .matrix
            .iter()
            .map(|((from, to), n)| Change {
                from: from.clone(),
                to: to.clone(),
                requests: *n,
            })
            .collect(),
        by_rule: run.changed_by_rule.clone(),
    });
    Report {
        config: parts.config,
        trace: parts.trace,
        objective_seconds: parts.objective_seconds,
        summary: summary(run),
        routes: routes(run),
        tenants,
        changes,
        over_time: over_time(run, usd_per_hour),
        sweep: sweep.iter().map(sweep_row).collect(),
        notes: parts.notes,
        fleet: parts.fleet,
    }
}

/// Money as the report writes it: dollars to the millionth.
pub(crate) fn dollars(m: &Money) -> String {
    format!("${:.6}", m.usd)
}

/// Milliseconds to a tenth, or `-` when there is no figure.
pub(crate) fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

/// Requests by route: `cloud 3, local 2`.
pub(crate) fn route_counts(by_route: &BTreeMap<&'static str, u64>) -> String {
    by_route
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report for a terminal.
pub fn text(r: &Report) -> String {
    let mut o = String::new();
    let t = &r.trace;
    let _ = writeln!(
        o,
        "trace {} ({}): {} requests over {:.1} s{}",
        t.path,
        t.kind,
        t.requests,
        t.recorded_seconds,
        if t.speed_up == 1.0 {
            String::new()
        } else {
            format!(", replayed {}x faster", t.speed_up)
        }
    );
    if let Some(chain) = &t.chain {
        let _ = writeln!(
            o,
            "  chain: {}{}",
            if chain.intact { "" } else { "BROKEN: " },
            chain.summary
        );
    }
    if t.unreadable > 0 {
        let _ = writeln!(
            o,
            "  {} line(s) could not be read; first: {}",
            t.unreadable,
            t.problems.join("; ")
        );
    }
    for (code, n) in &t.invalid {
        let _ = writeln!(o, "  {n} request(s) the gateway would refuse at intake ({code})");
    }
    let _ = writeln!(o, "config {}", r.config);
    if let Some(l) = &r.fleet.local {
        let _ = writeln!(
            o,
            "local: {} node(s) x {} slots (queue {}), prefill {:.0} tok/s, decode {:.1} tok/s per stream, {:.2}x at full batch, ${:.4}/h per node",
            l.nodes,
            l.slots,
            l.max_waiting,
            l.prefill_tokens_per_second,
            l.decode_tokens_per_second,
            l.batch_speedup,
            l.usd_per_hour
        );
    }
    let s = &r.summary;
    let _ = writeln!(o, "\nsummary");
    let _ = writeln!(o, "  requests            {} ({} refused)", s.requests, s.refused);
    let _ = writeln!(o, "  cloud, list price   {}", dollars(&s.cloud));
    let _ = writeln!(
        o,
        "  local nodes         {} (busy {}, idle {}{})",
        dollars(&s.local),
        dollars(&s.local_busy),
        dollars(&s.local_idle),
        s.local_utilisation
            .map_or(String::new(), |u| format!(", {:.1}% utilised", u * 100.0))
    );
    let _ = writeln!(o, "  total               {}", dollars(&s.total));
    let _ = writeln!(
        o,
        "  local traffic at the reference cloud price {} (savings ${:.6})",
        dollars(&s.cloud_equivalent_of_local),
        s.local_savings_usd
    );
    let _ = writeln!(
        o,
        "  time to first token over {:.2} s: {}",
        r.objective_seconds, s.objective_misses
    );
    let _ = writeln!(
        o,
        "\nroutes                requests   tokens in/out        cost           ttft p50/p95/p99 ms       misses"
    );
    for row in &r.routes {
        let _ = writeln!(
            o,
            "  {:<18} {:>9}   {:>9}/{:<9}  {:>14}  {:>8}/{:>8}/{:>8}  {:>6}",
            row.route,
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
            dollars(&row.cost),
            ms(row.ttft.p50_ms),
            ms(row.ttft.p95_ms),
            ms(row.ttft.p99_ms),
            row.objective_misses
        );
        if let Some(rec) = &row.recorded {
            let _ = writeln!(
                o,
                "    recorded         {:>9}   {:>20}  {:>14}  {:>8}/{:>8}/{:>8}  {:>6}",
                rec.requests,
                "",
                dollars(&rec.cost),
                ms(rec.ttft.p50_ms),
                ms(rec.ttft.p95_ms),
                ms(rec.ttft.p99_ms),
                rec.objective_misses
            );
        }
    }
    let _ = writeln!(
        o,
        "\ntenants               requests   cost            ttft p50/p95 ms   misses   routes"
    );
    for row in &r.tenants {
        let _ = writeln!(
            o,
            "  {:<18} {:>9}   {:>14}  {:>8}/{:>8}  {:>6}   {}",
            row.tenant,
            row.requests,
            dollars(&row.cost),
            ms(row.ttft.p50_ms),
            ms(row.ttft.p95_ms),
            row.objective_misses,
            route_counts(&row.by_route)
        );
    }
    if let Some(c) = &r.changes {
        let _ = writeln!(
            o,
            "\nagainst the recorded run: {} request(s) change route or rule",
            c.changed
        );
        for m in &c.matrix {
            let mark = if m.from == m.to { " " } else { "*" };
            let _ = writeln!(o, "  {mark} {:<16} -> {:<16} {:>9}", m.from, m.to, m.requests);
        }
        for (rule, n) in &c.by_rule {
            let _ = writeln!(o, "    rule {rule}: {n} changed");
        }
    }
    if !r.sweep.is_empty() {
        let _ = writeln!(
            o,
            "\nnodes   total          cloud          local          misses   local ttft p50/p95/p99 ms   utilised   routes"
        );
        for row in &r.sweep {
            let _ = writeln!(
                o,
                "  {:>3}   {:>13}  {:>13}  {:>13}  {:>6}   {:>8}/{:>8}/{:>8}   {:>7}   {}",
                row.nodes,
                dollars(&row.total),
                dollars(&row.cloud),
                dollars(&row.local),
                row.objective_misses,
                ms(row.local_ttft.p50_ms),
                ms(row.local_ttft.p95_ms),
                ms(row.local_ttft.p99_ms),
                row.local_utilisation
                    .map_or("-".to_owned(), |u| format!("{:.1}%", u * 100.0)),
                route_counts(&row.by_route)
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o, "\nnotes");
        for n in &r.notes {
            let _ = writeln!(o, "  - {n}");
        }
    }
    o
}
