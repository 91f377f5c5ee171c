//! Node cost with wall time: every worker node costs its hourly figure from when the gateway knows of it
//! (its start, or the worker's arrival) to when it leaves, busy or idle. Accrued on a timer, on every
//! scrape, and for a worker that left, up to its departure (the pool reports when), so no stint goes
//! uncharged whenever the scrapes come. Also keeps `sluice_backend_up` and `_in_flight` and the
//! discovery series current. Written by accounting only.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::backend::Backend;
use crate::cost::Pico;
use crate::metrics::GatewayMetrics;

/// What has been counted of each member's current stint: when it began, and the cost counted for it.
#[derive(Debug, Default)]
pub struct NodeClock {
    stints: Mutex<BTreeMap<String, Option<(Instant, Pico)>>>,
}

impl NodeClock {
    /// Adds each node's cost since the last call, charges members that left up to their departure, and
    /// sets the member gauges. `started` is when the gateway started: nothing is charged before it.
    pub fn accrue(
        &self,
        metrics: &GatewayMetrics,
        backends: &[std::sync::Arc<dyn Backend>],
        started: Instant,
    ) {
        // Held throughout: two refreshes at once must not count the same node time twice.
        let mut stints = self.stints.lock().unwrap_or_else(PoisonError::into_inner);
        let counted_for = |stints: &BTreeMap<String, Option<(Instant, Pico)>>,
                           name: &str,
                           joined: Instant| match stints.get(name) {
            Some(Some((since, counted))) if *since == joined => *counted,
            _ => 0,
        };
        let mut now = BTreeMap::new();
        for backend in backends {
            if let Some(d) = backend.discovery() {
                let name = [backend.name()];
                metrics
                    .discovery_synced
                    .with_label_values(&name)
                    .set(i64::from(d.synced));
                let failures = metrics.discovery_failures.with_label_values(&name);
                failures.inc_by(d.failures.saturating_sub(failures.get()));
            }
            // A worker that left is owed its stint up to its departure, counted or not.
            for d in backend.departures() {
                let counted = counted_for(&stints, &d.name, d.joined);
                let total = d
                    .cost
                    .over(d.left.saturating_duration_since(d.joined.max(started)));
                metrics.node_cost.add(&[&d.name], total.saturating_sub(counted));
            }
            for m in backend.members() {
                // A worker that comes back under the same name starts a new stint, added to the old.
                let stint = m.node.map(|(cost, joined)| {
                    let counted = counted_for(&stints, &m.name, joined);
                    let total = cost.over(started.max(joined).elapsed());
                    metrics.node_cost.add(&[&m.name], total.saturating_sub(counted));
                    (joined, total.max(counted))
                });
                now.insert(m.name.clone(), stint);
                metrics
                    .backend_up
                    .with_label_values(&[&m.name])
                    .set(i64::from(m.ready));
                metrics
                    .backend_in_flight
                    .with_label_values(&[&m.name])
                    .set(i64::try_from(m.in_flight).unwrap_or(i64::MAX));
            }
        }
        // A worker that left the pool is no longer up or busy: its series go (its node cost stays).
        for gone in stints.keys().filter(|g| !now.contains_key(*g)) {
            let _ = metrics.backend_up.remove_label_values(&[gone]);
            let _ = metrics.backend_in_flight.remove_label_values(&[gone]);
        }
        *stints = now;
    }
}
