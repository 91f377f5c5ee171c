//! What requests cost, priced honestly both ways.
//!
//! - Cloud: tokens times the list price of the model that served them.
//! - Local: each worker node costs money by the hour whether busy or idle (capital spread over its
//!   lifetime, power times PUE times the price of energy, operations overhead); that accrues with wall
//!   time. A request is charged its share of the node's busy time: its prompt tokens at the node's prefill
//!   rate and its generated tokens at its decode rate (both for all slots together, as the worker reports
//!   them), so the requests of a busy period add up to that period.
//! - Counterfactual: a locally served request also priced at a reference cloud model.
//!
//! Amounts are integer picodollars ([`Pico`]): sums never drift, and a dollar figure is one division at
//! the end.

use std::time::Duration;

use serde_json::Value;
use sluice_policy::Prices;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    /// Reads an OpenAI `usage` object.
    pub fn from_openai(v: &Value) -> Option<Self> {
        Some(Self {
            prompt_tokens: v.get("prompt_tokens")?.as_u64()?,
            completion_tokens: v.get("completion_tokens")?.as_u64()?,
        })
    }
}

/// An amount of money in picodollars (10^-12 USD). A million tokens at a millionth of a cent still
/// counts exactly; u128 does not overflow in any lifetime.
pub type Pico = u128;

const PICO_PER_USD: f64 = 1e12;
const HOURS_PER_YEAR: f64 = 8766.0;

/// USD to picodollars, rounded to the nearest; negative and non-finite amounts count as zero.
pub fn pico(usd: f64) -> Pico {
    if usd.is_finite() && usd > 0.0 {
        (usd * PICO_PER_USD).round() as Pico
    } else {
        0
    }
}

/// Picodollars to USD, for display and metrics.
pub fn usd(p: Pico) -> f64 {
    p as f64 / PICO_PER_USD
}

/// A list price per token, from a price per million tokens: exact for prices with up to six decimals.
pub fn per_token(usd_per_mtok: f64) -> Pico {
    pico(usd_per_mtok / 1e6)
}

/// What `usage` costs at list `prices`.
pub fn priced(usage: Usage, prices: Prices) -> Pico {
    u128::from(usage.prompt_tokens) * per_token(prices.input_usd_per_mtok)
        + u128::from(usage.completion_tokens) * per_token(prices.output_usd_per_mtok)
}

/// What owning and running one worker node costs, by the hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeCost {
    /// Purchase price of the node (GPU, server, share of rack and network).
    pub capex_usd: f64,
    /// Years over which it is written off.
    pub lifetime_years: f64,
    /// Average power draw of the node.
    pub power_watts: f64,
    /// Power usage effectiveness of the data centre (cooling and losses on top of the node's draw).
    pub pue: f64,
    pub usd_per_kwh: f64,
    /// Operations, licences, support, space.
    pub overhead_usd_per_hour: f64,
    /// Use the power the worker reports (its device's draw: the GPU's board power, or the CPU packages')
    /// instead of `power_watts`, which stays the figure while the worker reports none.
    pub measured_power: bool,
}

impl Default for NodeCost {
    /// One 48 GB data-centre GPU server (about 25,000 USD) written off over 4 years, drawing 700 W in a
    /// PUE 1.4 facility at 0.12 USD per kWh, with 0.50 USD per hour of operations: 1.33 USD per hour.
    fn default() -> Self {
        Self {
            capex_usd: 25_000.0,
            lifetime_years: 4.0,
            power_watts: 700.0,
            pue: 1.4,
            usd_per_kwh: 0.12,
            overhead_usd_per_hour: 0.5,
            measured_power: false,
        }
    }
}

impl NodeCost {
    /// This cost with the node's measured draw in place of the configured one, when asked for and known.
    pub fn with_measured_power(self, watts: Option<f64>) -> Self {
        match (self.measured_power, watts) {
            (true, Some(w)) if w.is_finite() && w >= 0.0 => Self {
                power_watts: w,
                ..self
            },
            _ => self,
        }
    }

    pub fn usd_per_hour(&self) -> f64 {
        self.capex_usd / (self.lifetime_years * HOURS_PER_YEAR)
            + self.power_watts / 1000.0 * self.pue * self.usd_per_kwh
            + self.overhead_usd_per_hour
    }

    /// What the node costs over `elapsed`, busy or idle.
    pub fn over(&self, elapsed: Duration) -> Pico {
        pico(self.usd_per_hour() * elapsed.as_secs_f64() / 3600.0)
    }
}

/// A node's throughput when it is busy, as its load reports give it: tokens per second of prefill work
/// and of decode work, each for all its slots together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

impl Throughput {
    /// The busy seconds a request used: its prompt at the prefill rate, its answer at the decode rate.
    /// `None` while the node has not reported both rates.
    pub fn busy_seconds(&self, usage: Usage) -> Option<f64> {
        let (p, d) = (self.prefill_tokens_per_second, self.decode_tokens_per_second);
        (p > 0.0 && d > 0.0 && p.is_finite() && d.is_finite())
            .then(|| usage.prompt_tokens as f64 / p + usage.completion_tokens as f64 / d)
    }
}

/// A locally served request's charge: its share of the node's busy time at the node's hourly cost.
/// `busy_fallback` is the request's own time on the node, used until the node reports its rates.
pub fn local_charge(node: &NodeCost, throughput: Throughput, usage: Usage, busy_fallback: Duration) -> Pico {
    let busy = throughput
        .busy_seconds(usage)
        .unwrap_or(busy_fallback.as_secs_f64());
    pico(node.usd_per_hour() * busy / 3600.0)
}

/// The cost per million tokens of a node over a period: what it cost (busy and idle) over the tokens it
/// processed. Falls as utilisation rises; `None` without tokens.
pub fn usd_per_mtok(cost: Pico, tokens: u64) -> Option<f64> {
    (tokens > 0).then(|| usd(cost) / tokens as f64 * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: Prices = Prices {
        input_usd_per_mtok: 0.15,
        output_usd_per_mtok: 0.60,
    };

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }
    }

    #[test]
    fn cloud_prices_are_exact_to_the_picodollar_however_many_requests() {
        // 0.15 and 0.60 USD per million tokens: 150,000 and 600,000 picodollars per token.
        assert_eq!(per_token(0.15), 150_000);
        assert_eq!(per_token(0.60), 600_000);
        assert_eq!(priced(usage(1_000, 500), MINI), 450_000_000);
        // A million requests of 7 + 3 tokens: the sum is exact, where adding f64 dollars would drift.
        let one = priced(usage(7, 3), MINI);
        let total: Pico = (0..1_000_000).map(|_| one).sum();
        assert_eq!(total, 2_850_000_000_000);
        assert_eq!(usd(total), 2.85);
        let mut drifting = 0.0_f64;
        for _ in 0..1_000_000 {
            drifting += 7.0 * 0.15e-6 + 3.0 * 0.60e-6;
        }
        assert_ne!(drifting, 2.85, "the float sum drifts; the integer one does not");
        assert_eq!(
            priced(
                usage(3, 4),
                Prices {
                    input_usd_per_mtok: 2.5,
                    output_usd_per_mtok: 10.0
                }
            ),
            47_500_000
        );
    }

    #[test]
    fn a_node_costs_its_capital_power_and_overhead_by_the_hour() {
        let node = NodeCost::default();
        let hourly = 25_000.0 / (4.0 * 8766.0) + 0.7 * 1.4 * 0.12 + 0.5;
        assert!((node.usd_per_hour() - hourly).abs() < 1e-12);
        assert!(
            (node.usd_per_hour() - 1.330_582).abs() < 1e-6,
            "{}",
            node.usd_per_hour()
        );
        assert_eq!(node.over(Duration::from_secs(3600)), pico(hourly));
        // Idle or busy, a day costs the same.
        assert_eq!(node.over(Duration::from_secs(86_400)), pico(hourly * 24.0));
        let free = NodeCost {
            capex_usd: 0.0,
            power_watts: 0.0,
            overhead_usd_per_hour: 0.0,
            ..NodeCost::default()
        };
        assert_eq!(free.over(Duration::from_secs(3600)), 0);
    }

    #[test]
    fn a_request_pays_for_its_share_of_the_busy_time() {
        let node = NodeCost {
            capex_usd: 0.0,
            power_watts: 0.0,
            overhead_usd_per_hour: 3.6, // a picodollar figure that is easy to check: 1e-3 USD per second
            ..NodeCost::default()
        };
        let t = Throughput {
            prefill_tokens_per_second: 1000.0,
            decode_tokens_per_second: 100.0,
        };
        // 500 prompt tokens (0.5 s) and 50 generated (0.5 s): one busy second.
        assert_eq!(t.busy_seconds(usage(500, 50)), Some(1.0));
        assert_eq!(
            local_charge(&node, t, usage(500, 50), Duration::ZERO),
            pico(0.001)
        );
        // Before the node reports its rates, the request's own time on it.
        assert_eq!(
            local_charge(
                &node,
                Throughput::default(),
                usage(500, 50),
                Duration::from_secs(2)
            ),
            pico(0.002)
        );
        // Ten such requests served in a ten-second busy period are charged that period, to the cent.
        let charged: Pico = (0..10)
            .map(|_| local_charge(&node, t, usage(500, 50), Duration::ZERO))
            .sum();
        assert_eq!(charged, node.over(Duration::from_secs(10)));
    }

    #[test]
    fn idle_time_raises_the_cost_per_million_tokens_across_several_nodes() {
        let node = NodeCost::default();
        let hour = Duration::from_secs(3600);
        // Two nodes for an hour: one processed 20 M tokens, the other 2 M.
        let (busy, quiet) = (node.over(hour), node.over(hour));
        let busy_rate = usd_per_mtok(busy, 20_000_000).unwrap();
        let quiet_rate = usd_per_mtok(quiet, 2_000_000).unwrap();
        assert!(
            (quiet_rate / busy_rate - 10.0).abs() < 1e-9,
            "{busy_rate} {quiet_rate}"
        );
        // Together: their whole cost over all their tokens.
        let fleet = usd_per_mtok(busy + quiet, 22_000_000).unwrap();
        assert!((fleet - 2.0 * node.usd_per_hour() / 22.0).abs() < 1e-9, "{fleet}");
        assert_eq!(usd_per_mtok(busy, 0), None);
    }

    #[test]
    fn bad_amounts_count_as_zero() {
        assert_eq!(pico(-1.0), 0);
        assert_eq!(pico(f64::NAN), 0);
        assert_eq!(pico(f64::INFINITY), 0);
        let t = Throughput {
            prefill_tokens_per_second: f64::INFINITY,
            decode_tokens_per_second: 1.0,
        };
        assert_eq!(t.busy_seconds(usage(1, 1)), None);
    }
}
