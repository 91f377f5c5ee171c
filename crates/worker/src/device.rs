//! What the worker knows of its device: name and memory for `GetInfo`, and utilisation and power draw for
//! the load reports, sampled in the background.
//!
//! - CUDA devices: the NVIDIA driver's own tool, `nvidia-smi --query-gpu` (installed with every driver, so
//!   the worker links no management library); a node without it reports the ordinal only.
//! - The CPU: the model name and memory from `/proc`; utilisation of the whole machine from `/proc/stat`
//!   between two samples; power from the RAPL energy counters in `/sys/class/powercap` where the kernel
//!   exposes them and the worker may read them (often not in containers or VMs: then no power is reported).
//!
//! Nothing here is ever fatal: a value the device does not tell is absent, never a guess.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sluice_engine::DeviceSpec;
use sluice_proto::v1;

/// How often the device is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// One reading of a GPU, as `nvidia-smi` gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReading {
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: Option<u64>,
    /// 0 to 1.
    pub utilization: Option<f64>,
    pub power_watts: Option<f64>,
}

/// The fields asked of `nvidia-smi`, in the order [`parse_nvidia_smi`] reads them.
const QUERY: &str = "name,memory.total,memory.free,utilization.gpu,power.draw";

/// Reads one line of `nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`: memory in MiB,
/// utilisation in percent, power in watts; `[N/A]` or `[Not Supported]` where the GPU does not say.
pub fn parse_nvidia_smi(line: &str) -> Option<GpuReading> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [name, total, free, utilization, power] = fields.as_slice() else {
        return None;
    };
    let number = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    let mib = |s: &str| number(s).map(|v| (v * 1_048_576.0) as u64);
    Some(GpuReading {
        name: (*name).to_owned(),
        memory_total_bytes: mib(total)?,
        memory_free_bytes: mib(free),
        utilization: number(utilization).map(|p| (p / 100.0).min(1.0)),
        power_watts: number(power),
    })
}

/// Asks the driver about GPU `ordinal`; `None` without `nvidia-smi` or when it fails.
pub fn read_gpu(ordinal: usize) -> Option<GpuReading> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            &format!("--query-gpu={QUERY}"),
            "--format=csv,noheader,nounits",
            "-i",
            &ordinal.to_string(),
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    parse_nvidia_smi(String::from_utf8_lossy(&output.stdout).lines().next()?)
}

/// Busy and total jiffies of the `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already inside user and nice).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The machine's RAPL packages: top-level `intel-rapl:N` zones (their subzones are inside them).
fn rapl_zones(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut zones: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("intel-rapl:"))
                .is_some_and(|rest| !rest.contains(':'))
        })
        .collect();
    zones.sort();
    zones
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Energy used between two readings of a RAPL counter, which wraps at `max`.
pub fn energy_delta(before: u64, after: u64, max: u64) -> u64 {
    match after >= before {
        true => after - before,
        false => max.saturating_sub(before) + after,
    }
}

/// The latest sample, as the load reports carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub utilization: Option<f64>,
    pub power_watts: Option<f64>,
}

/// A reading of the CPU's counters: when, busy and total jiffies, energy per RAPL zone (microjoules).
#[derive(Debug)]
struct CpuReading {
    at: Instant,
    stat: Option<(u64, u64)>,
    energy: Vec<Option<u64>>,
}

/// Samples one device; [`DeviceProbe::sample`] is called every [`SAMPLE_INTERVAL`] from a blocking task.
#[derive(Debug)]
pub struct DeviceProbe {
    device: DeviceSpec,
    rapl_root: PathBuf,
    previous: Mutex<Option<CpuReading>>,
    latest: Mutex<Sample>,
}

impl DeviceProbe {
    pub fn new(device: DeviceSpec) -> Arc<Self> {
        Arc::new(Self {
            device,
            rapl_root: PathBuf::from("/sys/class/powercap"),
            previous: Mutex::new(None),
            latest: Mutex::new(Sample::default()),
        })
    }

    pub fn spec(&self) -> DeviceSpec {
        self.device
    }

    /// The device as `GetInfo` describes it.
    pub fn info(&self) -> v1::Device {
        match self.device {
            DeviceSpec::Cpu => cpu_info(),
            DeviceSpec::Cuda(n) => {
                let reading = read_gpu(n);
                v1::Device {
                    kind: "cuda".into(),
                    name: reading
                        .as_ref()
                        .map_or_else(|| format!("cuda:{n}"), |r| r.name.clone()),
                    memory_bytes: reading.map_or(0, |r| r.memory_total_bytes),
                    ordinal: n as u32,
                }
            }
        }
    }

    /// Memory free for the KV cache: the GPU's free memory, or the host's available memory.
    pub fn free_memory_bytes(&self) -> Option<u64> {
        match self.device {
            DeviceSpec::Cpu => available_memory_bytes(),
            DeviceSpec::Cuda(n) => read_gpu(n)?.memory_free_bytes,
        }
    }

    pub fn latest(&self) -> Sample {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a reading (blocking: it may run `nvidia-smi` or read `/proc` and `/sys`).
    pub fn sample(&self) -> Sample {
        let sample = match self.device {
            DeviceSpec::Cuda(n) => read_gpu(n).map_or_else(Sample::default, |r| Sample {
                utilization: r.utilization,
                power_watts: r.power_watts,
            }),
            DeviceSpec::Cpu => self.sample_cpu(),
        };
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = sample;
        sample
    }

    fn sample_cpu(&self) -> Sample {
        let now = Instant::now();
        let stat = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t));
        let zones = rapl_zones(&self.rapl_root);
        let energy: Vec<Option<u64>> = zones.iter().map(|z| read_u64(&z.join("energy_uj"))).collect();
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sample = Sample::default();
        if let Some(CpuReading {
            at: then,
            stat: before_stat,
            energy: before_energy,
        }) = previous.as_ref()
        {
            if let (Some((busy0, total0)), Some((busy1, total1))) = (before_stat, stat)
                && total1 > *total0
            {
                sample.utilization = Some((busy1.saturating_sub(*busy0)) as f64 / (total1 - total0) as f64);
            }
            let seconds = now.duration_since(*then).as_secs_f64();
            let readable = !energy.is_empty()
                && energy.len() == before_energy.len()
                && energy.iter().chain(before_energy).all(Option::is_some);
            if readable && seconds > 0.0 {
                let joules: f64 = zones
                    .iter()
                    .zip(before_energy.iter().zip(&energy))
                    .map(|(zone, (before, after))| {
                        let max = read_u64(&zone.join("max_energy_range_uj")).unwrap_or(u64::MAX);
                        energy_delta(before.unwrap_or(0), after.unwrap_or(0), max) as f64 / 1e6
                    })
                    .sum();
                sample.power_watts = Some(joules / seconds);
            }
        }
        *previous = Some(CpuReading {
            at: now,
            stat,
            energy,
        });
        sample
    }
}

/// Samples the device every [`SAMPLE_INTERVAL`] until the runtime stops.
pub fn spawn_sampling(probe: Arc<DeviceProbe>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        loop {
            tick.tick().await;
            let probe = probe.clone();
            if tokio::task::spawn_blocking(move || probe.sample()).await.is_err() {
                return;
            }
        }
    });
}

fn cpu_info() -> v1::Device {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("cpu")
        .to_owned();
    v1::Device {
        kind: "cpu".into(),
        name,
        memory_bytes: meminfo_bytes("MemTotal:").unwrap_or(0),
        ordinal: 0,
    }
}

fn meminfo_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `MemAvailable` from /proc/meminfo (Linux), in bytes.
pub fn available_memory_bytes() -> Option<u64> {
    meminfo_bytes("MemAvailable:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_are_read_with_units_and_gaps() {
        let r = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 80870, 37, 312.45").expect("line");
        assert_eq!(r.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(r.memory_total_bytes, 81_559 * 1_048_576);
        assert_eq!(r.memory_free_bytes, Some(80_870 * 1_048_576));
        assert_eq!(r.utilization, Some(0.37));
        assert_eq!(r.power_watts, Some(312.45));
        // GPUs that do not report power or utilisation.
        let r = parse_nvidia_smi("Tesla T4, 15360, 15100, [N/A], [Not Supported]").expect("line");
        assert_eq!((r.utilization, r.power_watts), (None, None));
        assert_eq!(parse_nvidia_smi("garbage"), None);
        assert_eq!(parse_nvidia_smi("A, x, 1, 2, 3"), None, "no total memory");
    }

    #[test]
    fn cpu_utilisation_and_rapl_energy_come_from_their_counters() {
        let stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n";
        assert_eq!(parse_proc_stat(stat), Some((155, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
        assert_eq!(energy_delta(100, 250, 1000), 150);
        assert_eq!(energy_delta(900, 50, 1000), 150, "the counter wrapped");
    }

    #[test]
    fn a_cpu_probe_reports_power_from_readable_rapl_counters() {
        let root = std::env::temp_dir().join(format!("sluice-rapl-{}", std::process::id()));
        let zone = root.join("intel-rapl:0");
        std::fs::create_dir_all(zone.join("intel-rapl:0:0")).expect("zone");
        std::fs::create_dir_all(root.join("intel-rapl:0:0")).expect("subzone link stand-in");
        std::fs::write(zone.join("max_energy_range_uj"), "262143328850").expect("max");
        std::fs::write(zone.join("energy_uj"), "1000000").expect("energy");
        let probe = DeviceProbe {
            device: DeviceSpec::Cpu,
            rapl_root: root.clone(),
            previous: Mutex::new(None),
            latest: Mutex::new(Sample::default()),
        };
        assert_eq!(probe.sample().power_watts, None, "one reading is no rate");
        std::thread::sleep(Duration::from_millis(200));
        // 20 J more: about 100 W over 0.2 s (the top-level zone only; subzones are inside it).
        std::fs::write(zone.join("energy_uj"), "21000000").expect("energy");
        let watts = probe.sample().power_watts.expect("power");
        assert!((50.0..=101.0).contains(&watts), "{watts}");
        assert_eq!(probe.latest().power_watts, Some(watts));
        let utilization = probe.latest().utilization.expect("utilisation from /proc/stat");
        assert!((0.0..=1.0).contains(&utilization));
        std::fs::remove_dir_all(&root).expect("clean up");
        // Without counters: no power, never a guess.
        let bare = DeviceProbe::new(DeviceSpec::Cpu);
        let bare = DeviceProbe {
            rapl_root: root,
            ..Arc::try_unwrap(bare).expect("one owner")
        };
        bare.sample();
        assert_eq!(bare.sample().power_watts, None);
    }
}
