//! `sluice simulate`: a recorded trace (the gateway's audit log, or a JSONL of chat requests) replayed
//! against a candidate configuration and a modelled fleet, answering "where would these requests have
//! gone, what would they have cost, how soon would answers have started, and what changes".
//!
//! - [`trace`] reads traces one request at a time (an audit log after its chain is checked);
//! - [`fleet`] describes the local nodes and the clouds' latency, from a fleet file or measured from the
//!   trace;
//! - [`replay`] decides every request with the gateway's own policy engine and serves it on a
//!   discrete-event model of the local nodes ([`pool`]), falling back as the dispatcher does;
//! - [`report`] adds it up; [`html`] draws it as one self-contained page.
//!
//! Memory does not grow with the trace: requests are streamed, and every figure is a sum, a bounded
//! histogram or a bounded sample.

pub mod calibrate;
pub mod fleet;
pub mod html;
pub mod pool;
pub mod replay;
pub mod report;
pub mod stats;
pub mod trace;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sluice_gateway::GatewayConfig;
use sluice_policy::{Action, rules::Rule};

use crate::calibrate::{Calibration, Measured};
use crate::fleet::{Fleet, FleetFile, Observed};
use crate::replay::{Run, Setup};
use crate::report::{Parts, Report, TraceInfo};
use crate::trace::{Trace, TraceError, TraceKind};

/// What to simulate.
pub struct Options<'a> {
    /// The candidate configuration, checked, and the path it came from (for the report).
    pub config: &'a GatewayConfig,
    pub config_path: &'a Path,
    pub trace: &'a Path,
    pub fleet: Option<&'a FleetFile>,
    /// Arrivals this many times closer together than recorded (2: twice the request rate).
    pub speed_up: f64,
    /// Replay once more for each node count in this range, both included.
    pub nodes: Option<(u32, u32)>,
    /// Where to write one JSON line per request of the main replay.
    pub decisions: Option<&'a Path>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading the trace: {0}")]
    Read(std::io::Error),
}

/// Runs the simulation and builds its report.
pub fn simulate(o: &Options<'_>) -> Result<Report, SimulateError> {
    let kind = TraceKind::detect(o.trace)?;
    let chain = match kind {
        TraceKind::Audit => Some(trace::check_chain(o.trace)?),
        TraceKind::Requests => None,
    };
    let tenant = o
        .config
        .keys
        .first()
        .map_or(sluice_gateway::auth::ANONYMOUS, |k| k.tenant.as_str())
        .to_owned();
    let open = || Trace::open(o.trace, kind, o.config.scanner.clone(), &tenant);

    // First pass: the span, and what recorded requests took (for a fleet measured from the trace).
    let mut observed = Observed::default();
    let first = open()?;
    let files: Vec<String> = first.files().iter().map(|p| p.display().to_string()).collect();
    for r in first.flatten() {
        observed.add(&r);
    }
    // An audit log is in the order requests ended: replay them in the order they arrived.
    let window_ms = match kind {
        TraceKind::Audit => observed.max_duration_ms.ceil() as i64 + 1000,
        TraceKind::Requests => 0,
    };
    let arrivals = || -> Result<_, SimulateError> { Ok(trace::Arrivals::new(open()?, window_ms)) };

    // Second pass, when the fleet file leaves the nodes' speed to be measured: the recorded local
    // requests' rates against how many shared the pool.
    let local_file = o.fleet.and_then(|f| f.local.as_ref());
    let given = local_file.is_some_and(|l| {
        l.prefill_tokens_per_second.is_some()
            && l.decode_tokens_per_second.is_some()
            && l.batch_speedup.is_some()
    });
    let measured = if o.config.local.is_some() && !given && kind == TraceKind::Audit {
        let slots = local_file.and_then(|l| l.slots).unwrap_or(fleet::DEFAULT_SLOTS);
        let mut calibration = Calibration::new(slots);
        for r in arrivals()?.flatten() {
            calibration.add(&r);
        }
        calibration.finish();
        calibrate::measure(&calibration)
    } else {
        Measured {
            prefill: None,
            decode: None,
            batch_speedup: None,
        }
    };
    let fleet = Fleet::build(o.config, o.fleet, &observed, &measured);

    let mut decisions = match o.decisions {
        Some(path) => Some((
            path,
            BufWriter::new(File::create(path).map_err(|source| SimulateError::Write {
                path: path.to_owned(),
                source,
            })?),
        )),
        None => None,
    };
    let main = replay::replay(
        arrivals()?,
        setup(
            o,
            &fleet,
            &observed,
            None,
            decisions.as_mut().map(|(_, w)| w as &mut dyn Write),
        ),
    )
    .map_err(|e| match &decisions {
        Some((path, _)) => SimulateError::Write {
            path: path.to_path_buf(),
            source: e,
        },
        None => SimulateError::Read(e),
    })?;
    if let Some((path, mut w)) = decisions {
        w.flush().map_err(|source| SimulateError::Write {
            path: path.to_owned(),
            source,
        })?;
    }
    let mut sweep: Vec<Run> = Vec::new();
    if let Some((from, to)) = o.nodes {
        for n in from..=to {
            sweep.push(
                replay::replay(arrivals()?, setup(o, &fleet, &observed, Some(n), None))
                    .map_err(SimulateError::Read)?,
            );
        }
    }

    let fmt = |ms: Option<i64>| {
        ms.map(|ms| {
            sluice_audit::format_time(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
            )
        })
    };
    let info = TraceInfo {
        path: o.trace.display().to_string(),
        kind: kind.as_str(),
        files,
        requests: observed.requests,
        unreadable: main.unreadable,
        problems: main.problems.clone(),
        invalid: main.invalid.clone(),
        first_time: fmt(observed.first_ms),
        last_time: fmt(observed.last_ms),
        recorded_seconds: match (observed.first_ms, observed.last_ms) {
            (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
            _ => 0.0,
        },
        speed_up: o.speed_up,
        chain,
        estimated_tokens: main.estimated_tokens,
        out_of_order: main.out_of_order,
    };
    let notes = notes(o.config, kind, &main);
    Ok(report::build(
        Parts {
            config: o.config_path.display().to_string(),
            trace: info,
            fleet,
            objective_seconds: o.config.policy.max_ttft_seconds,
            has_recorded: kind == TraceKind::Audit,
            notes,
        },
        &main,
        &sweep,
    ))
}

fn setup<'a>(
    o: &'a Options<'a>,
    fleet: &'a Fleet,
    observed: &'a Observed,
    nodes: Option<u32>,
    decisions: Option<&'a mut dyn Write>,
) -> Setup<'a> {
    Setup {
        config: o.config,
        fleet,
        nodes,
        observed,
        speed_up: o.speed_up,
        decisions,
    }
}

/// What a reader of the report must know about what was not replayed.
fn notes(config: &GatewayConfig, kind: TraceKind, run: &Run) -> Vec<String> {
    let mut notes = Vec::new();
    let header_rules: Vec<&str> = config
        .policy
        .rules
        .iter()
        .filter(|r: &&Rule| !r.when.headers.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    if kind == TraceKind::Audit && !header_rules.is_empty() {
        notes.push(format!(
            "rule(s) {} test request headers, which the audit log does not keep: replayed as if the headers were absent",
            header_rules.join(", ")
        ));
    }
    let redacts = config
        .policy
        .rules
        .iter()
        .any(|r| matches!(r.then, Action::Redact(_)));
    if redacts {
        notes.push(
            "requests a rule redacts are assumed to pass the check of their redacted form (it is not run in a replay)".into(),
        );
    }
    if config.ner.is_some() {
        notes.push(match kind {
            TraceKind::Audit => "the personal-data model is not run again: an audit record's kinds are those found when it was written".into(),
            TraceKind::Requests => "request lines are read by the personal-data model as the gateway reads them (when its answer could change the route)".into(),
        });
    }
    if !config.tenant_limits.tenants.is_empty() || config.tenant_limits.default.is_some() {
        notes.push("tenant rates and budgets are not replayed: no request is limited, and over-budget actions never apply".into());
    }
    if run.estimated_tokens > 0 {
        notes.push(format!(
            "{} request(s) had no recorded usage (refused or failed in the recorded run, or not given): their prompt is the gateway's estimate and their answer max_tokens or 256 tokens",
            run.estimated_tokens
        ));
    }
    if run.out_of_order > 0 {
        notes.push(format!(
            "{} request(s) arrived earlier than one listed before them (a request trace out of order, or an audit record behind by more than the longest request): replayed at the later time",
            run.out_of_order
        ));
    }
    notes.push("cloud answers take the time to first token recorded for the same request on the same backend, else one drawn from that backend's recorded requests".into());
    notes
}
