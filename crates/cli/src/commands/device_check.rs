//! `sluice device-check`: see [`sluice_worker::check`].

use anyhow::anyhow;
use sluice_worker::check::{CheckOptions, DeviceSpec, ForwardPath, WeightFormat};

use super::Failure;
use crate::args::DeviceCheckArgs;

pub async fn run(args: DeviceCheckArgs) -> Result<(), Failure> {
    let device: DeviceSpec = args.device.parse().map_err(Failure::Usage)?;
    if !device.is_supported() {
        return Err(Failure::Usage(format!(
            "{device} needs a build with the `cuda` feature (scripts/build-cuda)"
        )));
    }
    let weight_format: WeightFormat = args.weight_format.parse().map_err(Failure::Usage)?;
    let forward = args
        .forward
        .as_deref()
        .map(str::parse::<ForwardPath>)
        .transpose()
        .map_err(Failure::Usage)?;
    if forward == Some(ForwardPath::Host) && device != DeviceSpec::Cpu {
        return Err(Failure::Usage("--forward host runs on the CPU only".into()));
    }
    if args.streams.is_empty() || args.streams.contains(&0) || args.tokens == 0 || args.steps == 0 {
        return Err(Failure::Usage(
            "--streams, --tokens and --steps must be at least 1".into(),
        ));
    }
    let model = match args.model {
        Some(path) if path.is_file() => path,
        Some(path) => return Err(Failure::Usage(format!("no model file at {}", path.display()))),
        None => sluice_models::ensure(&sluice_models::cache_dir(), &sluice_models::DEMO_MODEL)
            .map_err(|e| Failure::Runtime(anyhow!("fetching the demo model: {e}")))?,
    };
    let options = CheckOptions {
        model,
        device,
        weight_format,
        forward,
        streams: args.streams,
        tokens: args.tokens,
        steps: args.steps,
    };
    let report = tokio::task::spawn_blocking(move || {
        sluice_worker::check::run(&options, &mut std::io::stdout().lock())
    })
    .await
    .map_err(|e| Failure::Runtime(e.into()))?
    .map_err(|e| Failure::Runtime(anyhow!(e)))?;
    match report.passed() {
        true => Ok(()),
        false => Err(Failure::Runtime(anyhow!(
            "{} of {} greedy tokens agree with the CPU engine",
            report.agreed,
            report.compared
        ))),
    }
}
