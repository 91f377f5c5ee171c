//! The local nodes' speed measured from a trace: how fast recorded local requests read their prompts and
//! wrote their answers, against how many were in flight on the pool at the time. A request alone gives
//! the node's prefill and decode rates; requests that shared it give how much more it does at once (the
//! batch speedup). Reads the trace in arrival order and holds only the requests in flight.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::stats::{Reservoir, quantile_of};
use crate::trace::TraceRequest;

const SAMPLES: usize = 2048;

/// A request's first token, when the number in flight is counted for its decode rate.
#[derive(Debug, PartialEq)]
struct Probe {
    at_ms: f64,
    prefill_rate: Option<f64>,
    decode_rate: Option<f64>,
}

impl Eq for Probe {}

impl PartialOrd for Probe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Probe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at_ms.total_cmp(&other.at_ms)
    }
}

/// Rates by the number of local requests in flight.
#[derive(Debug)]
pub struct Calibration {
    /// Requests a node runs at once.
    slots: u32,
    /// When each local request in flight ends (ms).
    ends: BinaryHeap<Reverse<Probe>>,
    probes: BinaryHeap<Reverse<Probe>>,
    /// Prompt tokens per second to the first token, by requests in flight at its first token (itself
    /// included).
    pub prefill: BTreeMap<u32, Reservoir>,
    /// Answer tokens per second after the first token, by requests in flight at its first token.
    pub decode: BTreeMap<u32, Reservoir>,
    /// Busy periods of the pool (from a request's arrival until none is in flight): how long each
    /// lasted, the requests' tokens, and the time-integral of the requests in flight, which is what the
    /// batch speedup is measured from once the rates alone are known.
    periods: Vec<Period>,
    current: Option<Period>,
    /// The end (ms) of the event last counted.
    last_ms: f64,
}

/// One busy period of the pool.
#[derive(Debug, Clone, Copy, Default)]
struct Period {
    start_ms: f64,
    end_ms: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Integral over the period of the requests running (in flight, at most the slots), in ms.
    running_ms: f64,
}

/// At most this many busy periods are kept (the longest).
const MAX_PERIODS: usize = 1024;

impl Calibration {
    pub fn new(slots: u32) -> Self {
        Self {
            slots: slots.max(1),
            ends: BinaryHeap::new(),
            probes: BinaryHeap::new(),
            prefill: BTreeMap::new(),
            decode: BTreeMap::new(),
            periods: Vec::new(),
            current: None,
            last_ms: f64::NEG_INFINITY,
        }
    }

    /// Adds a request; requests must come in arrival order.
    pub fn add(&mut self, r: &TraceRequest) {
        let t = r.time_ms as f64;
        self.probe_until(t);
        let Some(rec) = r
            .recorded
            .as_ref()
            .filter(|rec| rec.route == "local" && rec.status == 200)
        else {
            return;
        };
        let (Some(ttft), Some(duration)) = (rec.ttft_ms, rec.duration_ms) else {
            return;
        };
        self.drop_ended(t);
        let period = self.current.get_or_insert(Period {
            start_ms: t,
            ..Period::default()
        });
        period.prompt_tokens += r.usage.prompt_tokens;
        period.completion_tokens += r.usage.completion_tokens;
        self.ends.push(Reverse(Probe {
            at_ms: t + duration,
            prefill_rate: None,
            decode_rate: None,
        }));
        let decode_ms = duration - ttft;
        self.probes.push(Reverse(Probe {
            at_ms: t + ttft,
            prefill_rate: (ttft > 0.0 && r.usage.prompt_tokens > 0)
                .then(|| r.usage.prompt_tokens as f64 / (ttft / 1000.0)),
            decode_rate: (decode_ms > 0.0 && r.usage.completion_tokens > 1)
                .then(|| (r.usage.completion_tokens - 1) as f64 / (decode_ms / 1000.0)),
        }));
    }

    /// Counts the time since the last event at the number in flight, then takes ended requests off,
    /// closing the busy period when none is left.
    fn drop_ended(&mut self, t: f64) {
        while let Some(end) = self.ends.peek().map(|e| e.0.at_ms).filter(|e| *e <= t) {
            self.advance(end);
            self.ends.pop();
            if self.ends.is_empty()
                && let Some(mut p) = self.current.take()
            {
                p.end_ms = end;
                self.keep(p);
            }
        }
        self.advance(t);
    }

    fn advance(&mut self, t: f64) {
        if let Some(p) = self.current.as_mut()
            && t > self.last_ms
        {
            let n = (self.ends.len() as f64).min(f64::from(self.slots));
            p.running_ms += n * (t - self.last_ms);
        }
        self.last_ms = self.last_ms.max(t);
    }

    fn keep(&mut self, p: Period) {
        self.periods.push(p);
        if self.periods.len() > 2 * MAX_PERIODS {
            self.periods
                .sort_by(|a, b| (b.end_ms - b.start_ms).total_cmp(&(a.end_ms - a.start_ms)));
            self.periods.truncate(MAX_PERIODS);
        }
    }

    fn probe_until(&mut self, t: f64) {
        while let Some(Reverse(p)) = self.probes.peek() {
            if p.at_ms > t {
                break;
            }
            let (at, prefill, decode) = (p.at_ms, p.prefill_rate, p.decode_rate);
            self.probes.pop();
            self.drop_ended(at);
            // Counted at the first token: the request itself is in flight (it ends later), and so is
            // every request that arrived while it read its prompt.
            let n = (self.ends.len() as u32).max(1);
            for (by, rate) in [(&mut self.prefill, prefill), (&mut self.decode, decode)] {
                if let Some(rate) = rate {
                    by.entry(n).or_insert_with(|| Reservoir::new(SAMPLES)).add(rate);
                }
            }
        }
    }

    /// Counts what is left in flight.
    pub fn finish(&mut self) {
        self.probe_until(f64::INFINITY);
        self.drop_ended(f64::INFINITY);
    }
}

/// The node's speed, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub prefill: Option<(f64, String)>,
    pub decode: Option<(f64, String)>,
    pub batch_speedup: Option<(f64, String)>,
}

fn median(r: &Reservoir) -> Option<f64> {
    quantile_of(&r.sorted(), 0.5)
}

/// Rates alone come from the requests that had the pool to themselves (the median, over at least 3),
/// else from the fastest tenth of all; the batch speedup from the busy periods in which requests shared
/// it, weighted by their length.
pub fn measure(c: &Calibration) -> Measured {
    let slots = c.slots;
    let alone = |by: &BTreeMap<u32, Reservoir>, what: &str| -> Option<(f64, String)> {
        if let Some(r) = by.get(&1).filter(|r| r.len() >= 3) {
            return median(r).map(|v| (v, format!("measured: median of {} local requests alone", r.len())));
        }
        let mut all = Reservoir::new(SAMPLES * 4);
        for r in by.values() {
            for v in r.sorted() {
                all.add(v);
            }
        }
        quantile_of(&all.sorted(), 0.9).filter(|v| *v > 0.0).map(|v| {
            (
                v,
                format!(
                    "measured: fastest tenth of {} local requests ({what} alone not seen)",
                    all.len()
                ),
            )
        })
    };
    let prefill = alone(&c.prefill, "a prompt read");
    let decode = alone(&c.decode, "an answer written");
    // As the simulation runs a node: a busy period's prompt tokens at the prefill rate, and its answer
    // tokens at the decode rate times the throughput of the streams written together, which is
    // 1 + (speedup - 1) * (streams - 1) / (slots - 1), `streams` being the period's average of the
    // requests in flight, at most the slots (more were queued).
    let batch_speedup = match (&prefill, &decode) {
        (Some((p, _)), Some((d, _))) if slots >= 2 => {
            let (mut weighted, mut weight, mut n) = (0.0, 0.0, 0);
            for period in &c.periods {
                let length = period.end_ms - period.start_ms;
                if length <= 0.0 {
                    continue;
                }
                let running = period.running_ms / length;
                // Periods of one request at a time say nothing about sharing.
                if running < 1.2 {
                    continue;
                }
                let decoding = length / 1000.0 - period.prompt_tokens as f64 / p;
                if decoding <= 0.0 {
                    continue;
                }
                let throughput = period.completion_tokens as f64 / d / decoding;
                let at_full = 1.0 + (throughput - 1.0) * f64::from(slots - 1) / (running - 1.0);
                weighted += at_full * length;
                weight += length;
                n += 1;
            }
            (weight > 0.0).then(|| {
                (
                    (weighted / weight).max(1.0),
                    format!(
                        "measured: the answer tokens of {n} busy period(s) of the pool against their length ({:.1} s)",
                        weight / 1000.0
                    ),
                )
            })
        }
        _ => None,
    };
    Measured {
        prefill,
        decode,
        batch_speedup,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Recorded;
    use sluice_gateway::cost::Usage;

    fn local(at_ms: i64, prompt: u64, ttft: f64, completion: u64, duration: f64) -> TraceRequest {
        TraceRequest {
            at: String::new(),
            time_ms: at_ms,
            id: String::new(),
            tenant: "t".into(),
            model: "m".into(),
            max_tokens: None,
            stream: false,
            prompt_estimate: prompt,
            declared: None,
            prefer: None,
            headers: Vec::new(),
            body: Default::default(),
            scan: sluice_sensitivity::Scanner::new(&Default::default())
                .unwrap()
                .scan(""),
            usage: Usage {
                prompt_tokens: prompt,
                completion_tokens: completion,
            },
            estimated: false,
            recorded: Some(Recorded {
                route: "local".into(),
                rule: None,
                backend: Some("w0".into()),
                served_model: None,
                status: 200,
                code: "ok".into(),
                cost_usd: 0.0,
                cloud_equivalent_usd: None,
                ttft_ms: Some(ttft),
                duration_ms: Some(duration),
            }),
        }
    }

    #[test]
    fn rates_alone_and_the_speedup_of_requests_that_share_a_node() {
        let mut c = Calibration::new(4);
        // Three alone: 100 prompt tokens in 100 ms, 101 answer tokens in 1 s more (100 tok/s).
        for i in 0..3 {
            c.add(&local(i * 10_000, 100, 100.0, 101, 1100.0));
        }
        // Four at once, three times, each in 2.9 s: four prompts at 1000 tok/s (0.4 s), then four answers
        // of 101 tokens in 2.5 s, 1.616x what one stream alone writes (100 tok/s).
        for round in 0..3 {
            for _ in 0..4 {
                c.add(&local(100_000 + round * 10_000, 100, 400.0, 101, 400.0 + 2500.0));
            }
        }
        c.finish();
        let m = measure(&c);
        assert_eq!(m.prefill.as_ref().map(|p| p.0), Some(1000.0));
        assert_eq!(m.decode.as_ref().map(|p| p.0), Some(100.0));
        let b = m.batch_speedup.unwrap().0;
        assert!((b - 4.0 * 1.01 / 2.5).abs() < 1e-9, "{b}");
    }
}
