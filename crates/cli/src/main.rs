//! `sluice`: one binary for every Sluice daemon and tool. This file only parses arguments, sets up logging
//! and hands over to a command; exit code 64 means bad flags or configuration.

mod args;
mod commands;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad flags or configuration (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// `sluice policy check --deny-warnings` found warnings (EX_DATAERR).
const EXIT_WARNINGS: u8 = 65;
/// `sluice audit verify` found a broken chain (EX_DATAERR): tampering or damage, not a read error (1).
const EXIT_BROKEN_CHAIN: u8 = 65;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // One TLS crypto provider for every client and server in the process (tonic and reqwest use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tracing_config = match commands::tracing_config(&cli.command) {
        Ok(c) => c,
        Err(commands::Failure::Usage(message)) => {
            eprintln!("sluice: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(_) => None,
    };
    {
        // The span exporter's task runs on the runtime.
        let _entered = runtime.enter();
        if let Err(e) = init_logging(cli.log_json, tracing_config.as_ref()) {
            eprintln!("sluice: tracing: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let outcome = runtime.block_on(async {
        let outcome = commands::run(cli.command).await;
        sluice_telemetry::shutdown(std::time::Duration::from_secs(1)).await;
        outcome
    });
    // A model fetch or load still running in a blocking task must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(commands::Failure::Usage(message)) => {
            eprintln!("sluice: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(commands::Failure::Runtime(error)) => {
            eprintln!("sluice: {error:#}");
            ExitCode::FAILURE
        }
        Err(commands::Failure::Warnings(message)) => {
            eprintln!("sluice: {message}");
            ExitCode::from(EXIT_WARNINGS)
        }
        Err(commands::Failure::BrokenChain(message)) => {
            eprintln!("sluice: {message}");
            ExitCode::from(EXIT_BROKEN_CHAIN)
        }
    }
}

/// Logs go to stderr; `SLUICE_LOG` (or `RUST_LOG`) sets the filter, `info` by default. With `tracing`,
/// Sluice's spans are exported over OTLP as well (their own filter: the log filter does not apply).
fn init_logging(
    json: bool,
    tracing: Option<&sluice_telemetry::TracingConfig>,
) -> Result<(), sluice_telemetry::TelemetryError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = || {
        let filter = std::env::var("SLUICE_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .unwrap_or_else(|_| "info".into());
        tracing_subscriber::EnvFilter::try_new(&filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let spans = tracing.map(sluice_telemetry::layer).transpose()?;
    let ansi = std::io::stderr().is_terminal();
    let text = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter())
    });
    let structured = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(spans)
        .with(text)
        .with(structured)
        .init();
    Ok(())
}
