//! The export pipeline: a span processor that hands finished spans to a bounded queue without ever
//! waiting, and a task that sends them in batches to the collector over OTLP/gRPC, each export bounded by
//! a timeout. What cannot be queued or exported is dropped and counted, never retried. After a failed
//! export the pipeline stops recording spans for a while (1 s, doubling to 30 s while the collector keeps
//! failing; counted as dropped too), so a slow or absent collector costs a request nothing: not the wait,
//! and not the work of building spans nobody will take.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as _, SpanProcessor,
};
use tokio::sync::mpsc;
use tracing::Subscriber;
use tracing::subscriber::Interest;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::registry::LookupSpan;

use crate::config::TracingConfig;

/// Spans sent to the collector in one export at most.
const BATCH: usize = 512;
/// A batch not full is sent after this long.
const LINGER: Duration = Duration::from_millis(500);
/// How long recording stops after the first failed export, and the most it grows to while exports keep
/// failing (doubling each time).
const PAUSE_FIRST: Duration = Duration::from_secs(1);
const PAUSE_MOST: Duration = Duration::from_secs(30);

/// What the pipeline did with the spans it was given, since the process started.
#[derive(Debug, Default)]
pub struct Stats {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    dropped_collector_down: AtomicU64,
    /// Set while recording is stopped after a failed export.
    paused: AtomicBool,
}

impl Stats {
    /// Spans the collector took.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans dropped because the export queue was full.
    pub fn dropped_queue_full(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
    }

    /// Spans of batches the collector refused, or did not take within the export timeout.
    pub fn dropped_export_failed(&self) -> u64 {
        self.dropped_export_failed.load(Ordering::Relaxed)
    }

    /// Spans not recorded because the last export had failed (the pause after it).
    pub fn dropped_collector_down(&self) -> u64 {
        self.dropped_collector_down.load(Ordering::Relaxed)
    }
}

static STATS: Stats = Stats {
    exported: AtomicU64::new(0),
    dropped_queue_full: AtomicU64::new(0),
    dropped_export_failed: AtomicU64::new(0),
    dropped_collector_down: AtomicU64::new(0),
    paused: AtomicBool::new(false),
};

/// The process's pipeline counts (all zero while tracing is off).
pub fn stats() -> &'static Stats {
    &STATS
}

/// The running pipeline: its provider, and the task that sends its spans.
struct Running {
    provider: SdkTracerProvider,
    sending: tokio::task::JoinHandle<()>,
}

static RUNNING: OnceLock<Mutex<Option<Running>>> = OnceLock::new();

/// Why the pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// A `tracing` layer exporting Sluice's spans as `config` says. Call it within a Tokio runtime: the export
/// task runs on it.
pub fn layer<S>(config: &TracingConfig) -> Result<impl Layer<S> + Send + Sync + 'static, TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.otlp_endpoint.clone())
        .with_timeout(config.export_timeout);
    if let Some(ca) = &config.ca_pem {
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        );
    }
    let mut exporter = builder
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(config.queue_spans);
    let sending = tokio::spawn(send(exporter, rx, config.export_timeout));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Queue {
            tx: Mutex::new(Some(tx)),
        })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("sluice");
    *RUNNING
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Running { provider, sending });
    // Decided for each span (not cached for its call site), as the pause comes and goes; every other
    // call site is left out for good.
    let own_spans = DynFilterFn::new(|_, _| {
        let paused = STATS.paused.load(Ordering::Relaxed);
        if paused {
            STATS.dropped_collector_down.fetch_add(1, Ordering::Relaxed);
        }
        !paused
    })
    .with_callsite_filter(|m| {
        if m.is_span() && m.target() == crate::TARGET {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    });
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // Contexts are read from the spans themselves (propagation::inject), never from OpenTelemetry's
        // current context: entering a span (each poll of an instrumented future) need not activate one.
        .with_context_activation(false)
        .with_filter(own_spans))
}

/// Ends the pipeline: spans still queued get up to `grace` to reach the collector.
pub async fn shutdown(grace: Duration) {
    let running = RUNNING
        .get()
        .and_then(|r| r.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    if let Some(Running { provider, sending }) = running {
        // Closes the queue: the sending task sends what is left and ends.
        let _ = provider.shutdown_with_timeout(grace);
        let _ = tokio::time::timeout(grace, sending).await;
    }
}

/// Hands finished spans to the export task; never waits.
#[derive(Debug)]
struct Queue {
    /// Taken at shutdown, which closes the queue.
    tx: Mutex<Option<mpsc::Sender<SpanData>>>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let tx = self.tx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if tx.as_ref().is_some_and(|tx| tx.try_send(span).is_err()) {
            STATS.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(())
    }
}

/// Sends what the queue holds in batches of at most [`BATCH`], a partial batch after [`LINGER`]. After a
/// failed export, stops recording for a pause that doubles while exports keep failing.
async fn send(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut pause = PAUSE_FIRST;
    let mut failing = false;
    loop {
        let first = match rx.recv().await {
            Some(span) => span,
            None => return,
        };
        batch.push(first);
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let failure = match tokio::time::timeout(timeout, exporter.export(sent)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} ms", timeout.as_millis())),
        };
        let Some(failure) = failure else {
            STATS.exported.fetch_add(n, Ordering::Relaxed);
            if failing {
                tracing::info!("the trace collector took spans again; recording resumed");
            }
            (failing, pause) = (false, PAUSE_FIRST);
            continue;
        };
        STATS.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
        if !failing {
            tracing::warn!(error = %failure, spans = n, "spans not exported; recording stops while the trace collector fails (retried after 1 s, then up to every 30 s)");
        }
        failing = true;
        STATS.paused.store(true, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        STATS.paused.store(false, Ordering::Relaxed);
        pause = (pause * 2).min(PAUSE_MOST);
    }
}
