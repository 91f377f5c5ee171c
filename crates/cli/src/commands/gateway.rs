//! `sluice gateway` and `sluice policy check`.

use std::path::Path;

use anyhow::Context;
use sluice_gateway::{GatewayConfig, RawGatewayConfig};

use super::{Failure, shutdown_signal};
use crate::args::GatewayArgs;

pub async fn run(args: GatewayArgs) -> Result<(), Failure> {
    let config = load(&args.config, args.listen, args.admin_listen)?;
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

/// `sluice policy check FILE`.
pub fn check(file: &Path) -> Result<(), Failure> {
    let config = load(file, None, None)?;
    println!("{}: valid; {}", file.display(), summary(&config));
    Ok(())
}

/// Reads and validates a configuration file; flags override its addresses.
pub fn load(
    path: &Path,
    listen: Option<String>,
    admin_listen: Option<String>,
) -> Result<GatewayConfig, Failure> {
    let (mut raw, text) =
        RawGatewayConfig::from_yaml_file(path).map_err(|e| Failure::Usage(e.to_string()))?;
    if listen.is_some() {
        raw.listen = listen;
    }
    if admin_listen.is_some() {
        raw.admin_listen = admin_listen;
    }
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
        "{} API key(s), {workers} worker(s), cloud backends: {}",
        config.keys.len(),
        if clouds.is_empty() {
            "none".to_owned()
        } else {
            clouds.join(", ")
        }
    )
}
