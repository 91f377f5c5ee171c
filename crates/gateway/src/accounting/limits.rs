//! What the tenant limits report, written to their series: spend against each budget, requests a limit
//! refused or rerouted, whether the limits store answers.

use crate::cost::{Pico, usd};
use crate::limits::Recorder;

use super::Accounting;

impl Recorder for Accounting {
    fn budget(&self, tenant: &str, spent: Pico, limit: Pico) {
        let m = &self.metrics;
        m.budget_spent.with_label_values(&[tenant]).set(usd(spent));
        m.budget_limit.with_label_values(&[tenant]).set(usd(limit));
    }

    fn settled(&self, tenant: &str, reserved: Pico, used: Pico) {
        // This replica's view of the shared total: the next reservation brings it up to date.
        // One atomic add, so that settlements ending together lose nothing.
        let g = self.metrics.budget_spent.with_label_values(&[tenant]);
        g.add(usd(used) - usd(reserved));
    }

    fn limited(&self, tenant: &str, limit: &'static str) {
        self.metrics
            .rate_limited
            .with_label_values(&[tenant, limit])
            .inc();
    }

    fn store_answered(&self, ok: bool) {
        self.metrics.limits_store_up.set(i64::from(ok));
        if !ok {
            self.metrics.limits_store_errors.inc();
        }
    }
}
