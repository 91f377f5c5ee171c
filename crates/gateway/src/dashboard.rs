//! `/dashboard` on the admin listener: the cost figures for teams without Grafana, in one self-contained
//! page (no external scripts, fonts or styles, so it works air-gapped), fed by `/admin/summary`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cost::{Pico, usd, usd_per_mtok};
use crate::metrics::GatewayMetrics;

/// The page: HTML with its style and script inline.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page may load nothing from elsewhere, whatever is injected into it.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'";

#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub since_seconds: f64,
    pub cloud: CloudSummary,
    pub local: LocalSummary,
    pub routing: Vec<RoutingRow>,
    pub nodes: Vec<NodeRow>,
    /// Every backend member and whether the gateway can use it now (a cloud's breaker open, a worker down).
    pub backends: Vec<BackendRow>,
    /// Requests for cloud models served by their local substitutes, by reason.
    pub fallbacks: Vec<FallbackRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendRow {
    pub backend: String,
    pub up: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct FallbackRow {
    pub reason: String,
    pub requests: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CloudSummary {
    pub spend_usd: f64,
    pub tokens: u64,
    pub usd_per_mtok: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LocalSummary {
    /// What the nodes cost since the start, busy or idle.
    pub node_cost_usd: f64,
    /// What the local requests were charged (their share of busy time).
    pub busy_cost_usd: f64,
    pub cloud_equivalent_usd: f64,
    /// The reference model's price of the local requests minus the nodes' whole cost.
    pub savings_usd: f64,
    pub tokens: u64,
    pub usd_per_mtok_all_in: Option<f64>,
    pub usd_per_mtok_busy: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct RoutingRow {
    pub rule: String,
    pub route: String,
    pub requests: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct NodeRow {
    pub node: String,
    pub cost_usd: f64,
    pub busy_cost_usd: f64,
    /// Busy share of wall time: both sides are priced at the node's hourly cost.
    pub utilisation: Option<f64>,
}

/// Sums of a counter family by one label, from the registry.
fn by_label(metrics: &GatewayMetrics, family: &str, label: &str) -> BTreeMap<Vec<String>, u64> {
    let mut out = BTreeMap::new();
    for f in metrics.registry.gather() {
        if f.name() != family {
            continue;
        }
        for m in f.get_metric() {
            let key: Vec<String> = label
                .split(',')
                .map(|want| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == want)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                })
                .collect();
            *out.entry(key).or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

/// The figures of the page.
pub fn summary(metrics: &GatewayMetrics, since_seconds: f64) -> Summary {
    let cost = metrics.cost.totals();
    let sum = |route: &str| -> Pico {
        cost.iter()
            .filter(|(k, _)| k.first().is_some_and(|r| r == route))
            .map(|(_, v)| *v)
            .sum()
    };
    let (cloud_spend, local_busy) = (sum("cloud"), sum("local"));
    let nodes = metrics.node_cost.totals();
    let node_total: Pico = nodes.iter().map(|(_, v)| *v).sum();
    let equivalent: Pico = metrics.cloud_equivalent.totals().iter().map(|(_, v)| *v).sum();
    let tokens = by_label(metrics, "sluice_tokens_total", "route");
    let tokens_of = |route: &str| tokens.get(&vec![route.to_owned()]).copied().unwrap_or(0);
    let (cloud_tokens, local_tokens) = (tokens_of("cloud"), tokens_of("local"));
    let routing = by_label(metrics, "sluice_decisions_total", "rule,route")
        .into_iter()
        .map(|(k, requests)| RoutingRow {
            rule: k[0].clone(),
            route: k[1].clone(),
            requests,
        })
        .collect();
    let nodes = nodes
        .into_iter()
        .map(|(k, total)| {
            let node = k[0].clone();
            let busy = cost
                .iter()
                .find(|(c, _)| c.first().is_some_and(|r| r == "local") && c.get(1) == Some(&node))
                .map_or(0, |(_, v)| *v);
            NodeRow {
                cost_usd: usd(total),
                busy_cost_usd: usd(busy),
                utilisation: (total > 0).then(|| (busy as f64 / total as f64).min(1.0)),
                node,
            }
        })
        .collect();
    let mut backends = Vec::new();
    for f in metrics.registry.gather() {
        if f.name() == "sluice_backend_up" {
            for m in f.get_metric() {
                let name = m.get_label().iter().find(|l| l.name() == "backend");
                if let Some(l) = name {
                    backends.push(BackendRow {
                        backend: l.value().to_owned(),
                        up: m.get_gauge().get_value() > 0.0,
                    });
                }
            }
        }
    }
    let fallbacks = by_label(metrics, "sluice_fallbacks_total", "reason")
        .into_iter()
        .map(|(k, requests)| FallbackRow {
            reason: k[0].clone(),
            requests,
        })
        .collect();
    Summary {
        since_seconds,
        backends,
        fallbacks,
        cloud: CloudSummary {
            spend_usd: usd(cloud_spend),
            tokens: cloud_tokens,
            usd_per_mtok: usd_per_mtok(cloud_spend, cloud_tokens),
        },
        local: LocalSummary {
            node_cost_usd: usd(node_total),
            busy_cost_usd: usd(local_busy),
            cloud_equivalent_usd: usd(equivalent),
            savings_usd: usd(equivalent) - usd(node_total),
            tokens: local_tokens,
            usd_per_mtok_all_in: usd_per_mtok(node_total, local_tokens),
            usd_per_mtok_busy: usd_per_mtok(local_busy, local_tokens),
        },
        routing,
        nodes,
    }
}
