//! `sluice simulate`: a trace replayed against a candidate configuration and fleet.

use anyhow::Context;
use sluice_gateway::RawGatewayConfig;
use sluice_simulate::{Options, SimulateError, fleet, html, report};

use super::Failure;
use crate::args::SimulateArgs;

/// `FROM..TO` (both included) or one number.
fn node_range(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("--nodes {s:?}: write a range such as 1..8, or one number");
    let (from, to) = match s.split_once("..") {
        Some((a, b)) => (a.trim(), b.trim().trim_start_matches('=')),
        None => (s.trim(), s.trim()),
    };
    let (from, to): (u32, u32) = (from.parse().map_err(|_| bad())?, to.parse().map_err(|_| bad())?);
    if from > to {
        return Err(format!("--nodes {s:?}: the range is empty ({from} > {to})"));
    }
    if to - from >= 64 {
        return Err(format!("--nodes {s:?}: at most 64 node counts in one sweep"));
    }
    Ok((from, to))
}

pub fn run(args: &SimulateArgs) -> Result<(), Failure> {
    if !(args.speed_up.is_finite() && args.speed_up > 0.0) {
        return Err(Failure::Usage(format!(
            "--speed-up {}: must be a number above 0",
            args.speed_up
        )));
    }
    let nodes = args
        .nodes
        .as_deref()
        .map(node_range)
        .transpose()
        .map_err(Failure::Usage)?;
    let (raw, text) =
        RawGatewayConfig::from_yaml_file(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let config = raw
        .validate(Some(&args.config), Some(&text), &super::gateway::keys_not_needed)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let fleet_file = args
        .fleet
        .as_deref()
        .map(fleet::read_fleet_file)
        .transpose()
        .map_err(|e| Failure::Usage(e.to_string()))?
        .map(|(f, _)| f);
    if let (Some(f), Some(path)) = (&fleet_file, &args.fleet) {
        for name in f.clouds.keys() {
            if !config.clouds.iter().any(|c| &c.name == name) {
                return Err(Failure::Usage(format!(
                    "{}: clouds.{name}: the configuration has no cloud backend of that name",
                    path.display()
                )));
            }
        }
        if f.local.is_some() && config.local.is_none() {
            return Err(Failure::Usage(format!(
                "{}: local: the configuration has no local pool",
                path.display()
            )));
        }
    }
    let report = sluice_simulate::simulate(&Options {
        config: &config,
        config_path: &args.config,
        trace: &args.trace,
        fleet: fleet_file.as_ref(),
        speed_up: args.speed_up,
        nodes,
        decisions: args.decisions.as_deref(),
    })
    .map_err(|e| match e {
        SimulateError::Trace(sluice_simulate::trace::TraceError::NotFound(_)) => {
            Failure::Usage(e.to_string())
        }
        e => Failure::Runtime(e.into()),
    })?;
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&report)).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report")?
        );
    } else {
        print!("{}", report::text(&report));
        if let Some(path) = &args.html {
            println!("\nreport page: {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::node_range;

    #[test]
    fn node_ranges() {
        assert_eq!(node_range("1..8"), Ok((1, 8)));
        assert_eq!(node_range("1..=8"), Ok((1, 8)));
        assert_eq!(node_range("3"), Ok((3, 3)));
        assert!(node_range("8..1").is_err());
        assert!(node_range("a..b").is_err());
        assert!(node_range("0..100").is_err());
    }
}
