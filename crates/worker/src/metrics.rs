//! The worker's Prometheus metrics (`sluice_worker_*`), in a registry owned by the caller.

pub use prometheus::Registry;
use prometheus::{Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounterVec, Opts, TextEncoder};
use sluice_engine::LoadSnapshot;

/// Every series the worker exports.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    requests_running: Gauge,
    requests_waiting: Gauge,
    slots: Gauge,
    kv_cache_usage_ratio: Gauge,
    prompt_tokens_total: prometheus::Counter,
    generation_tokens_total: prometheus::Counter,
    busy_seconds_total: prometheus::Counter,
    /// Requests by final gRPC code (`ok`, `resource_exhausted`, ...).
    pub requests_total: IntCounterVec,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    /// The device's utilisation and power draw, by device (`cpu`, `cuda:0`): present only once the device
    /// has reported them.
    device_utilization_ratio: GaugeVec,
    device_power_watts: GaugeVec,
}

impl WorkerMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn new(registry: Registry) -> prometheus::Result<Self> {
        // The trace export pipeline's counts (the same series as the gateway's).
        sluice_telemetry::register(&registry)?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
            let g = Gauge::new(format!("sluice_worker_{name}"), help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<prometheus::Counter> {
            let c = prometheus::Counter::new(format!("sluice_worker_{name}"), help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(
                HistogramOpts::new(format!("sluice_worker_{name}"), help).buckets(buckets),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let requests_total = IntCounterVec::new(
            Opts::new(
                "sluice_worker_requests_total",
                "Generate requests by final status code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(requests_total.clone()))?;
        let by_device = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(format!("sluice_worker_{name}"), help), &["device"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            device_utilization_ratio: by_device(
                "device_utilization_ratio",
                "Utilisation of the worker's device, 0 to 1 (the GPU's, or the whole machine's CPU time).",
            )?,
            device_power_watts: by_device(
                "device_power_watts",
                "Power drawn by the worker's device (the GPU's board power, or the CPU packages' RAPL reading).",
            )?,
            requests_running: gauge("requests_running", "Requests in a slot now.")?,
            requests_waiting: gauge("requests_waiting", "Requests waiting for a slot now.")?,
            slots: gauge("slots", "Requests that can run at once.")?,
            kv_cache_usage_ratio: gauge(
                "kv_cache_usage_ratio",
                "Share of KV cache capacity in use, 0 to 1.",
            )?,
            prompt_tokens_total: counter("prompt_tokens_total", "Prompt tokens processed.")?,
            generation_tokens_total: counter("generation_tokens_total", "Tokens generated.")?,
            busy_seconds_total: counter(
                "busy_seconds_total",
                "Seconds during which at least one request was running (owned hardware is charged by this).",
            )?,
            requests_total,
            time_to_first_token_seconds: histogram(
                "time_to_first_token_seconds",
                "From arrival at the worker to the first generated token.",
                vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            )?,
            inter_token_latency_seconds: histogram(
                "inter_token_latency_seconds",
                "Time between generated tokens of one stream.",
                vec![0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0],
            )?,
            registry,
        })
    }

    /// Copies the engine's latest load into the gauges and counters.
    pub fn observe_load(&self, load: &LoadSnapshot) {
        self.requests_running.set(load.running as f64);
        self.requests_waiting.set(load.waiting as f64);
        self.slots.set(load.slots as f64);
        self.kv_cache_usage_ratio.set(load.kv_cache_usage_ratio);
        advance(&self.prompt_tokens_total, load.prompt_tokens_total as f64);
        advance(&self.generation_tokens_total, load.generation_tokens_total as f64);
        advance(&self.busy_seconds_total, load.busy_seconds_total);
    }

    /// Copies the device's latest reading into its gauges (a value the device never gave stays absent).
    pub fn observe_device(&self, device: &str, sample: crate::device::Sample) {
        if let Some(u) = sample.utilization {
            self.device_utilization_ratio.with_label_values(&[device]).set(u);
        }
        if let Some(w) = sample.power_watts {
            self.device_power_watts.with_label_values(&[device]).set(w);
        }
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Moves a counter up to `total` (counters only go up; the engine's totals only grow).
fn advance(counter: &prometheus::Counter, total: f64) {
    let delta = total - counter.get();
    if delta > 0.0 {
        counter.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_becomes_series_with_the_documented_names() {
        let m = WorkerMetrics::new(Registry::new()).expect("metrics");
        m.observe_load(&LoadSnapshot {
            running: 2,
            waiting: 1,
            slots: 4,
            kv_cache_usage_ratio: 0.25,
            prompt_tokens_total: 100,
            generation_tokens_total: 40,
            busy_seconds_total: 1.5,
            ..LoadSnapshot::default()
        });
        m.observe_load(&LoadSnapshot {
            generation_tokens_total: 50,
            busy_seconds_total: 2.0,
            slots: 4,
            ..LoadSnapshot::default()
        });
        m.requests_total.with_label_values(&["ok"]).inc();
        let text = m.encode();
        for line in [
            "sluice_worker_requests_running 0",
            "sluice_worker_slots 4",
            "sluice_worker_prompt_tokens_total 100",
            "sluice_worker_generation_tokens_total 50",
            "sluice_worker_busy_seconds_total 2",
            "sluice_worker_requests_total{code=\"ok\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("sluice_worker_time_to_first_token_seconds_bucket"));
        assert!(text.contains("sluice_worker_inter_token_latency_seconds_bucket"));
        assert!(text.contains("sluice_worker_kv_cache_usage_ratio"));
    }
}
