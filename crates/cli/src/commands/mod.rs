//! The subcommands.

mod audit;
mod chat;
mod device_check;
mod gateway;
mod models;
mod scan;
pub mod sim_cloud;
pub mod simulate;
mod up;
mod worker;

use crate::args::{Command, PolicyCommand};

/// How a command failed: bad usage or configuration (exit 64), or at run time (exit 1).
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
    /// Valid, but with warnings the caller asked to fail on.
    Warnings(String),
    /// The audit log's chain is broken (exit 65): a different alarm from "cannot read it" (exit 1).
    BrokenChain(String),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

/// The `tracing:` section of the daemon's configuration file, read before logging starts so that the span
/// exporter joins the log subscriber. A file that cannot be read or parsed gives `None` here: loading it
/// again reports that, with the rest.
pub fn tracing_config(command: &Command) -> Result<Option<sluice_telemetry::TracingConfig>, Failure> {
    let (raw, text, path, service) = match command {
        Command::Gateway(args) => match sluice_gateway::RawGatewayConfig::from_yaml_file(&args.config) {
            Ok((raw, text)) => (raw.tracing, text, args.config.as_path(), "sluice-gateway"),
            Err(_) => return Ok(None),
        },
        Command::Worker(args) => match args
            .config
            .as_deref()
            .map(sluice_worker::RawWorkerConfig::from_yaml_file)
        {
            Some(Ok((raw, text))) => (
                raw.tracing,
                text,
                args.config.as_deref().unwrap_or(std::path::Path::new("")),
                "sluice-worker",
            ),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let at = sluice_config::Locator::new(Some(path), Some(&text));
    raw.map(|t| t.validate(&at, "tracing", service))
        .transpose()
        .map_err(|e| Failure::Usage(e.to_string()))
}

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Worker(args) => worker::run(args).await,
        Command::Models(cmd) => models::run(cmd).await,
        Command::Chat(args) => chat::run(args).await,
        Command::DeviceCheck(args) => device_check::run(args).await,
        Command::Gateway(args) => gateway::run(args).await,
        Command::Policy(PolicyCommand::Check { file, deny_warnings }) => gateway::check(&file, deny_warnings),
        Command::Policy(PolicyCommand::Explain(args)) => gateway::explain(&args),
        Command::Up(args) => up::run(args).await,
        Command::Audit(cmd) => audit::run(cmd),
        Command::Scan(args) => scan::run(&args).await,
        Command::SimCloud(args) => sim_cloud::run(args, shutdown_signal()).await,
        Command::Simulate(args) => simulate::run(&args),
        Command::HashKey { key } => hash_key(key),
    }
}

/// `sluice hash-key`: the digest to write as `key_sha256`.
fn hash_key(key: Option<String>) -> Result<(), Failure> {
    let key = match key {
        Some(k) => k,
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Failure::Runtime(e.into()))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if key.is_empty() {
        return Err(Failure::Usage("the key is empty".into()));
    }
    println!("{}", sluice_gateway::auth::hash_key_hex(&key));
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = ctrl_c => tracing::info!("interrupt received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the worker");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
