//! `sluice gateway`, `sluice policy check` and `sluice policy explain`.

use std::path::Path;

use anyhow::Context;
use sluice_gateway::backend::BackendError;
use sluice_gateway::dispatch::{FailedTarget, Unserved};
use sluice_gateway::error;
use sluice_gateway::headers::HttpHeaders;
use sluice_gateway::http::{HeaderMap, HeaderName, HeaderValue};
use sluice_gateway::redact::proof::{self, Proving};
use sluice_gateway::{GatewayConfig, RawGatewayConfig, intake, recognise};
use sluice_policy::{Decision, Explanation, FleetView, Level, Policy, PolicyEngine};

use super::{Failure, shutdown_signal};
use crate::args::{ExplainArgs, GatewayArgs};

pub async fn run(args: GatewayArgs) -> Result<(), Failure> {
    let config = load_with(&args.config, |raw| {
        if args.listen.is_some() {
            raw.listen = args.listen.clone();
        }
        if args.admin_listen.is_some() {
            raw.admin_listen = args.admin_listen.clone();
        }
        if let Some(path) = &args.audit_log {
            raw.audit.get_or_insert_default().path = Some(path.clone());
        }
    })?;
    if args.check {
        println!("{}: valid; {}", args.config.display(), summary(&config));
        return Ok(());
    }
    sluice_gateway::run(config, prometheus::Registry::new(), shutdown_signal(), |bound| {
        let admin = bound.admin.map_or_else(|| "off".to_owned(), |a| a.to_string());
        tracing::info!(public = %bound.public, admin = %admin, "gateway listening");
    })
    .await
    .context("gateway failed")?;
    Ok(())
}

/// `sluice policy check FILE`: every problem, then the warnings. Variables the file names for keys need
/// not be set here (a CI job checking a configuration has no production secrets); that is a warning.
pub fn check(file: &Path, deny_warnings: bool) -> Result<(), Failure> {
    let (raw, text) = RawGatewayConfig::from_yaml_file(file).map_err(|e| Failure::Usage(e.to_string()))?;
    let unset = std::cell::RefCell::new(Vec::new());
    let env = |var: &str| {
        std::env::var(var).ok().filter(|v| !v.is_empty()).or_else(|| {
            unset.borrow_mut().push(var.to_owned());
            Some(format!("unset-{var}"))
        })
    };
    let report = raw.check(Some(file), Some(&text), &env);
    if !report.errors.is_empty() {
        let lines: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        return Err(Failure::Usage(format!(
            "{} problem(s):\n{}",
            lines.len(),
            lines.join("\n")
        )));
    }
    let Some(config) = report.config else {
        return Err(Failure::Usage(format!("{}: not valid", file.display())));
    };
    let mut warnings: Vec<String> = report.warnings.iter().map(|w| format!("warning: {w}")).collect();
    for var in unset.into_inner() {
        warnings.push(format!(
            "warning: {}: the environment variable {var} is not set here; the gateway needs it to start",
            file.display()
        ));
    }
    for w in &warnings {
        println!("{w}");
    }
    println!(
        "{}: valid; {}; {} rule(s), {} virtual model(s){}",
        file.display(),
        summary(&config),
        config.policy.rules.len(),
        config.policy.models.len(),
        if warnings.is_empty() {
            String::new()
        } else {
            format!("; {} warning(s)", warnings.len())
        }
    );
    if deny_warnings && !warnings.is_empty() {
        return Err(Failure::Warnings(format!(
            "{} warning(s) and --deny-warnings",
            warnings.len()
        )));
    }
    Ok(())
}

/// The environment for commands that read a configuration without calling anything (explain, simulate):
/// a variable that is not set reads as a placeholder, since keys and secrets are not needed.
pub(super) fn keys_not_needed(var: &str) -> Option<String> {
    Some(std::env::var(var).unwrap_or_else(|_| format!("unset-{var}")))
}

/// `sluice policy explain`: the decision for one request, computed as the gateway would, sent nowhere.
pub fn explain(args: &ExplainArgs) -> Result<(), Failure> {
    let (raw, text) =
        RawGatewayConfig::from_yaml_file(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    // Keys are not needed to explain a decision.
    let config = raw
        .validate(Some(&args.config), Some(&text), &keys_not_needed)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let body = if args.request.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b).context("reading the request")?;
        b
    } else {
        std::fs::read(&args.request)
            .map_err(|e| Failure::Usage(format!("{}: {e}", args.request.display())))?
    };
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Failure::Usage(format!("--header {h:?}: write it as NAME:VALUE")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| Failure::Usage(format!("--header {h:?}: {name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| Failure::Usage(format!("--header {h:?}: the value is not a header value")))?;
        headers.append(name, value);
    }
    // Read exactly as the gateway reads a request: parse, hints, scan.
    let read = intake::read(&body, &headers, &config.scanner).map_err(|r| {
        Failure::Usage(match r.error.code {
            // A bad --header, not a bad request file.
            "invalid_sensitivity" | "invalid_prefer" => r.error.message.clone(),
            _ => format!("{}: {}", args.request.display(), r.error.message),
        })
    })?;
    for d in &args.down {
        let known =
            config.clouds.iter().any(|c| &c.name == d) || config.local.as_ref().is_some_and(|l| &l.name == d);
        if !known {
            return Err(Failure::Usage(format!("--down {d}: no backend has that name")));
        }
    }
    let tenant = args
        .tenant
        .clone()
        .or_else(|| config.keys.first().map(|k| k.tenant.clone()))
        .unwrap_or_else(|| sluice_gateway::auth::ANONYMOUS.to_owned());
    let local_models = if args.local_model.is_empty() {
        sluice_gateway::fleet::assumed_local_models(&config, &read.request.model)
    } else {
        args.local_model.clone()
    };
    let mut fleet = sluice_gateway::fleet::offline_view(&config, &local_models, &args.down);
    fleet.over_budget = args.over_budget;
    let http_headers = HttpHeaders(&headers);
    let mut read = read;
    let engine = PolicyEngine::new(config.policy.clone());
    let mut result = engine.decide(&read.facts(&tenant, &http_headers), &fleet);
    // The personal-data model, as the gateway runs it: only when its answer can change the route.
    let mut model = None;
    if let Some(ner) = &config.ner {
        if recognise::can_change_route(&result, &fleet, &read.scan) {
            let m = model.insert(recognise::load(ner).context("loading the personal-data model")?);
            let texts = sluice_policy::strings(&read.request.body);
            recognise::recognise_here(m, ner, &config.scanner, &mut read.scan, &texts);
            result = engine.decide(&read.facts(&tenant, &http_headers), &fleet);
        } else {
            read.scan.model = sluice_sensitivity::ModelPass::NotNeeded;
        }
    }
    // A redacted form is proven as the gateway proves it: replaced, scanned again (the model too).
    let floor = config.policy.floor(&tenant);
    let mut proven = None;
    if let Ok(
        d @ Decision {
            redaction: Some(plan),
            ..
        },
    ) = &result
    {
        let base = read.declared.unwrap_or(Level::Public).max(floor);
        let p = Proving::of(&config.scanner, None, d, plan, &fleet, base);
        let outcome = proof::prepare(&read.request, &read.scan, plan.kinds.as_slice()).and_then(|prepared| {
            let texts = prepared.texts();
            let mut check = config.scanner.scan_all(texts.iter().copied());
            if let Some(ner) = &config.ner {
                if model.is_none() {
                    model = Some(recognise::load(ner).map_err(|e| proof::Unproven {
                        why: format!("the personal-data model could not be loaded: {e}"),
                        survived: Vec::new(),
                        counts: Default::default(),
                        kinds: plan.kinds.clone(),
                    })?);
                }
                if let Some(m) = &model {
                    // Every string read whole, as the gateway's proof reads them.
                    let whole = recognise::NerConfig {
                        prefilter: false,
                        ..ner.clone()
                    };
                    recognise::recognise_here(m, &whole, &config.scanner, &mut check, &texts);
                }
            }
            drop(texts);
            prepared.judge(&check, p.base, p.clearance)
        });
        match outcome {
            Ok(sendable) => proven = Some(Ok(sendable)),
            Err(u) => {
                let (fallback, why) = proof::fall_back(d, plan, &u);
                result = fallback;
                proven = Some(Err((why, u)));
            }
        }
    }
    let facts = read.facts(&tenant, &http_headers);
    let mut e = sluice_policy::explain("(explain)", &facts, floor, &fleet, &result);
    match &result {
        Err(refusal) => error::explain_refusal(&mut e, refusal),
        // The gateway would try each target, find them all down and answer so.
        Ok(d) if !d.targets.iter().any(|t| fleet.backends[t.backend].ready) => {
            let failed = all_down(d, &fleet, e.level);
            let (error, _) = error::unserved(&failed);
            e.status = Some(error.status.as_u16());
            e.code = Some(error.code);
        }
        Ok(_) => {}
    }
    match &proven {
        Some(Ok(s)) => proof::explain_outcome(&mut e, Ok(s)),
        Some(Err((why, u))) => proof::explain_outcome(&mut e, Err((why, u))),
        None => {}
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&e).context("writing the explanation")?
        );
        return Ok(());
    }
    print!("{}", render(&e, &local_models, &args.down));
    Ok(())
}

/// What the dispatcher meets when every target is down: each answers that it is unavailable.
fn all_down(d: &Decision, fleet: &FleetView, level: Level) -> Unserved {
    Unserved {
        level,
        rule: d.rule.clone(),
        excluded: d.excluded.clone(),
        failures: d
            .targets
            .iter()
            .map(|t| {
                let b = &fleet.backends[t.backend];
                FailedTarget {
                    backend: b.name.clone(),
                    route: b.route,
                    model: t.model.clone(),
                    error: BackendError::Unavailable(format!("{} is down", b.name)),
                }
            })
            .collect(),
        unsupported: None,
        fatal: None,
    }
}

fn render(e: &Explanation, local_models: &[String], down: &[String]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = match (e.outcome, e.status, e.code) {
        ("reject", Some(status), Some(code)) => writeln!(out, "decision:  refused, {status} {code}"),
        (_, Some(status), Some(code)) => writeln!(
            out,
            "decision:  refused, {status} {code}: every backend allowed to take it is down"
        ),
        _ => writeln!(out, "decision:  route"),
    };
    let _ = writeln!(out, "rule:      {}", e.rule.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "level:     {} (found {}{}, declared {}, tenant {} floor {})",
        e.level,
        e.detected,
        if e.scan_complete { "" } else { ", scan incomplete" },
        e.declared.map_or("-", Level::as_str),
        e.tenant,
        e.floor
    );
    if e.findings.is_empty() {
        let _ = writeln!(out, "findings:  none");
    }
    for (i, f) in e.findings.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{} ({}) in {} at bytes {}..{}{}",
            if i == 0 { "findings:  " } else { "           " },
            f.kind,
            f.level,
            f.field,
            f.start,
            f.end,
            f.list
                .as_deref()
                .map(|l| format!(", list {l}"))
                .unwrap_or_default()
        );
    }
    for (i, c) in e.combined.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{} ({})",
            if i == 0 { "together:  " } else { "           " },
            c.name,
            c.level
        );
    }
    let _ = writeln!(
        out,
        "model:     {}",
        match e.ner {
            "off" => "personal-data model off (no ner: section)",
            "not_needed" => "personal-data model not run: its answer could not change the route",
            "ran" => "personal-data model ran",
            _ => "personal-data model over budget: restricted",
        }
    );
    let _ = writeln!(out, "prompt:    about {} tokens", e.prompt_tokens_estimate);
    if let Some(from) = &e.substituted_for {
        let _ = writeln!(out, "substitutes for: {from}");
    }
    if let Some(route) = e.route {
        let _ = writeln!(out, "route:     {route}");
    }
    if let Some(r) = &e.redaction {
        let replaced: Vec<String> = r.replaced.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = match r.outcome {
            "redacted" => writeln!(
                out,
                "redaction: sent with {} replaced by placeholders; the redacted form is {}",
                if replaced.is_empty() {
                    "nothing".to_owned()
                } else {
                    replaced.join(", ")
                },
                r.level.map_or("-", Level::as_str)
            ),
            _ => writeln!(
                out,
                "redaction: not sent redacted: {}",
                r.why.as_deref().unwrap_or("-")
            ),
        };
        for (i, f) in r.survived.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}{} ({}) in {} at bytes {}..{}",
                if i == 0 { "survived:  " } else { "           " },
                f.kind,
                f.level,
                f.field,
                f.start,
                f.end
            );
        }
    }
    for (i, t) in e.targets.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{}. {} / {} ({}, cleared for {}{})",
            if i == 0 { "targets:   " } else { "           " },
            i + 1,
            t.backend,
            t.model,
            t.route,
            t.clearance,
            if t.ready { "" } else { ", down" }
        );
    }
    for (i, x) in e.excluded.iter().enumerate() {
        let _ = writeln!(
            out,
            "{}{} / {}: {}",
            if i == 0 { "ruled out: " } else { "           " },
            x.backend,
            x.model,
            x.why
        );
    }
    let _ = writeln!(out, "reason:    {}", e.reason);
    let _ = writeln!(
        out,
        "assumed:   every backend up and idle{}; the local workers serve {}",
        if down.is_empty() {
            String::new()
        } else {
            format!(" but {}", down.join(", "))
        },
        if local_models.is_empty() {
            "nothing".to_owned()
        } else {
            local_models.join(", ")
        }
    );
    out
}

/// Reads and validates a configuration file after `overrides` (the command line's flags) change it.
pub fn load_with(
    path: &Path,
    overrides: impl FnOnce(&mut RawGatewayConfig),
) -> Result<GatewayConfig, Failure> {
    let (mut raw, text) =
        RawGatewayConfig::from_yaml_file(path).map_err(|e| Failure::Usage(e.to_string()))?;
    overrides(&mut raw);
    raw.validate(Some(path), Some(&text), &|var| std::env::var(var).ok())
        .map_err(|e| Failure::Usage(e.to_string()))
}

fn summary(config: &GatewayConfig) -> String {
    let workers = config.local.as_ref().map_or(0, |l| l.workers.len());
    let clouds: Vec<String> = config
        .clouds
        .iter()
        .map(|c| {
            format!(
                "{} ({} models, clearance {})",
                c.name,
                c.models.len(),
                c.clearance
            )
        })
        .collect();
    format!(
        "{}{} API key(s), {workers} worker(s), cloud backends: {}",
        if config.air_gapped { "air-gapped, " } else { "" },
        config.keys.len(),
        if clouds.is_empty() {
            "none".to_owned()
        } else {
            clouds.join(", ")
        }
    )
}
