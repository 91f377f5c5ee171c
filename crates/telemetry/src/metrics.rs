//! The pipeline's counts as Prometheus series, read at each scrape: `sluice_trace_spans_exported_total`
//! and `sluice_trace_spans_dropped_total{reason="queue_full"|"export_failed"|"collector_down"}`.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::export::stats;

/// Registers the series in `registry`. They are 0 while tracing is off.
pub fn register(registry: &prometheus::Registry) -> prometheus::Result<()> {
    registry.register(Box::new(Series::new()?))
}

struct Series {
    exported: Desc,
    dropped: Desc,
}

impl Series {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            exported: Desc::new(
                "sluice_trace_spans_exported_total".into(),
                "Trace spans the OTLP collector took.".into(),
                vec![],
                Default::default(),
            )?,
            dropped: Desc::new(
                "sluice_trace_spans_dropped_total".into(),
                "Trace spans dropped: the export queue was full (queue_full), the collector refused them or did not take them in time (export_failed), or they were not recorded in the pause after a failed export (collector_down).".into(),
                vec!["reason".into()],
                Default::default(),
            )?,
        })
    }
}

fn counter(labels: &[(&str, &str)], value: u64) -> proto::Metric {
    let pairs = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect();
    let mut m = proto::Metric::from_label(pairs);
    let mut c = proto::Counter::default();
    c.set_value(value as f64);
    m.set_counter(c);
    m
}

fn family(desc: &Desc, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(desc.fq_name.clone());
    family.set_help(desc.help.clone());
    family.set_field_type(MetricType::COUNTER);
    family.set_metric(metrics);
    family
}

impl Collector for Series {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.exported, &self.dropped]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = stats();
        vec![
            family(&self.exported, vec![counter(&[], s.exported())]),
            family(
                &self.dropped,
                vec![
                    counter(&[("reason", "collector_down")], s.dropped_collector_down()),
                    counter(&[("reason", "export_failed")], s.dropped_export_failed()),
                    counter(&[("reason", "queue_full")], s.dropped_queue_full()),
                ],
            ),
        ]
    }
}
