//! Summaries of any number of values in fixed memory: a log-bucketed histogram for percentiles and a
//! reservoir sample for distributions to draw from.

/// Values from 10 µs to about 28 hours, in buckets 1% wide: a percentile is within 1% of the true one.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: f64,
    max: f64,
}

const MIN_SECONDS: f64 = 1e-5;
const GROWTH: f64 = 1.01;
const BUCKETS: usize = 2300;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            n: 0,
            sum: 0.0,
            max: 0.0,
        }
    }
}

impl Histogram {
    /// Adds a value in seconds (negative or non-finite values are ignored).
    pub fn add(&mut self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let i = if seconds <= MIN_SECONDS {
            0
        } else {
            ((seconds / MIN_SECONDS).ln() / GROWTH.ln()).ceil() as usize
        };
        self.counts[i.min(BUCKETS - 1)] += 1;
        self.n += 1;
        self.sum += seconds;
        self.max = self.max.max(seconds);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The `q` quantile (0..=1), as the upper edge of its bucket (never above the largest value seen).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((MIN_SECONDS * GROWTH.powi(i as i32)).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }
}

/// Up to `capacity` values drawn uniformly from a stream (Vitter's algorithm R), with a fixed seed so
/// that a replay gives the same figures every time.
#[derive(Debug, Clone)]
pub struct Reservoir {
    values: Vec<f64>,
    capacity: usize,
    seen: u64,
    state: u64,
}

impl Reservoir {
    pub fn new(capacity: usize) -> Self {
        Self {
            values: Vec::new(),
            capacity,
            seen: 0,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_random(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn add(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.seen += 1;
        if self.values.len() < self.capacity {
            self.values.push(v);
        } else {
            let j = self.next_random() % self.seen;
            if let Some(slot) = self.values.get_mut(j as usize) {
                *slot = v;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Values kept (at most the capacity).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The values kept, sorted.
    pub fn sorted(&self) -> Vec<f64> {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// One value chosen by `key` (the same key always draws the same value).
    pub fn draw(&self, key: u64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        self.values.get((z % self.values.len() as u64) as usize).copied()
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile_of(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// FNV-1a of a string: a stable key for [`Reservoir::draw`].
pub fn key_of(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_one_percent() {
        let mut h = Histogram::default();
        for i in 1..=1000 {
            h.add(f64::from(i) / 1000.0);
        }
        for (q, want) in [(0.5, 0.5), (0.9, 0.9), (0.99, 0.99), (1.0, 1.0)] {
            let got = h.quantile(q).unwrap();
            assert!((got - want).abs() / want <= 0.011, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.count(), 1000);
        assert!(Histogram::default().quantile(0.5).is_none());
    }

    #[test]
    fn reservoir_keeps_a_bounded_uniform_sample() {
        let mut r = Reservoir::new(100);
        for i in 0..100_000 {
            r.add(f64::from(i));
        }
        let s = r.sorted();
        assert_eq!(s.len(), 100);
        let median = quantile_of(&s, 0.5).unwrap();
        assert!((30_000.0..70_000.0).contains(&median), "{median}");
        assert_eq!(r.draw(7), r.draw(7));
    }
}
