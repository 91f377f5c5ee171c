//! Turning logits into the next token: greedy, temperature, top-k and top-p, seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings of one request, already validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 1 (or 0) keeps every token.
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: u32,
    /// Same seed, same build: same tokens. `None` seeds from the system's entropy.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Checks ranges; the message names the offending parameter.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between 0 and 2, got {}",
                self.temperature
            ));
        }
        if !self.top_p.is_finite() || !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top_p must be between 0 and 1, got {}", self.top_p));
        }
        Ok(())
    }

    fn is_greedy(&self) -> bool {
        self.temperature < 1e-5
    }
}

/// What a forward pass is asked to give back for a sequence's next step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// The logits, for the host to sample from.
    Logits,
    /// The most likely token (`banned`: other than the model's end of generation).
    Greedy { banned: bool },
    /// A token drawn where the logits are (see [`Draw`]).
    Draw(Draw),
}

/// A draw the device makes for a request: its temperature, top-k and top-p, and one uniform number from
/// the request's own seeded generator, which the device turns into a token by inverting the cumulative
/// distribution (so a seed keeps its meaning, and only the token id comes back).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub inv_temperature: f32,
    /// 0 keeps every token; at most [`DEVICE_CANDIDATES`].
    pub top_k: u32,
    /// In (0, 1]; 1 keeps every token.
    pub top_p: f32,
    /// In [0, 1).
    pub uniform: f32,
    /// Never the model's end of generation (a request that ignores it).
    pub banned: bool,
}

/// The most candidates a device draw keeps in order: a top-k above it is sampled on the host, and so is a
/// nucleus that reaches past it (the device says so and hands over the logits).
pub const DEVICE_CANDIDATES: usize = 256;

/// Per-request sampler state.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            scratch: Vec::new(),
        }
    }

    /// What to ask of a pass that can choose the token where the logits are; `banned` when the request
    /// ignores the end of generation. A top-k above [`DEVICE_CANDIDATES`] needs the logits. A draw takes
    /// one number from the request's generator; a pass that hands the logits back after all leaves the
    /// choice to [`Self::sample`].
    pub fn pick(&mut self, banned: bool) -> Pick {
        if self.params.is_greedy() {
            return Pick::Greedy { banned };
        }
        if self.params.top_k as usize > DEVICE_CANDIDATES {
            return Pick::Logits;
        }
        Pick::Draw(Draw {
            inv_temperature: 1.0 / self.params.temperature,
            top_k: self.params.top_k,
            top_p: match self.params.top_p {
                p if p <= 0.0 || p >= 1.0 => 1.0,
                p => p,
            },
            uniform: self.rng.random::<f32>(),
            banned,
        })
    }

    /// Picks the next token. `banned` tokens (the end of turn, when a request ignores it) are never picked.
    pub fn sample(&mut self, logits: &[f32], banned: &[u32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits, banned);
        }
        let inv_t = 1.0 / self.params.temperature;
        let candidates = &mut self.scratch;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(i, l)| l.is_finite() && !banned.contains(&(*i as u32)))
                .map(|(i, l)| (l * inv_t, i as u32)),
        );
        if candidates.is_empty() {
            return argmax(logits, banned);
        }
        let by_logit_desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k as usize;
        if k > 0 && k < candidates.len() {
            candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            candidates.truncate(k);
        }
        candidates.sort_unstable_by(by_logit_desc);
        let max = candidates[0].0;
        let mut total = 0.0f32;
        for c in candidates.iter_mut() {
            c.0 = (c.0 - max).exp();
            total += c.0;
        }
        let top_p = if self.params.top_p <= 0.0 {
            1.0
        } else {
            self.params.top_p
        };
        if top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                cumulative += c.0 / total;
                if cumulative >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.0).sum();
        }
        let mut target = self.rng.random::<f32>() * total;
        for c in candidates.iter() {
            target -= c.0;
            if target <= 0.0 {
                return c.1;
            }
        }
        candidates[candidates.len() - 1].1
    }
}

/// Index of the largest finite logit, the lowest index on ties.
fn argmax(logits: &[f32], banned: &[u32]) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (i, l) in logits.iter().enumerate() {
        if *l > best.0 && !banned.contains(&(i as u32)) {
            best = (*l, i as u32);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            seed: Some(seed),
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[]), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0], &[1]), 2);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, 0, seed));
            (0..64).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_limits_the_choice() {
        let logits = [5.0, 4.9, 4.8, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(params(2.0, 1.0, 2, 1));
        for _ in 0..500 {
            assert!(s.sample(&logits, &[]) < 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities about 0.84, 0.11, 0.04, ...: top_p 0.8 keeps only the first.
        let logits = [4.0, 2.0, 1.0, 0.0, -1.0];
        let mut s = Sampler::new(params(1.0, 0.8, 0, 3));
        for _ in 0..500 {
            assert_eq!(s.sample(&logits, &[]), 0);
        }
        let mut s = Sampler::new(params(1.0, 0.97, 0, 3));
        let seen: std::collections::HashSet<u32> = (0..2000).map(|_| s.sample(&logits, &[])).collect();
        assert!(
            seen.contains(&1) && seen.contains(&2) && !seen.contains(&4),
            "{seen:?}"
        );
    }

    #[test]
    fn temperature_spreads_choices() {
        let logits = [1.0, 0.9, 0.8];
        let mut s = Sampler::new(params(1.0, 1.0, 0, 11));
        let seen: std::collections::HashSet<u32> = (0..300).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_pass_on_the_device_is_asked_for_what_it_can_choose() {
        let mut greedy = Sampler::new(params(0.0, 1.0, 0, 1));
        assert_eq!(greedy.pick(false), Pick::Greedy { banned: false });
        assert_eq!(greedy.pick(true), Pick::Greedy { banned: true });
        // A draw carries the request's settings and a number from its seeded generator.
        let mut a = Sampler::new(params(0.5, 0.9, 40, 7));
        let mut b = Sampler::new(params(0.5, 0.9, 40, 7));
        let (first, second) = (a.pick(false), b.pick(false));
        assert_eq!(first, second);
        let Pick::Draw(draw) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            (draw.inv_temperature, draw.top_k, draw.top_p, draw.banned),
            (2.0, 40, 0.9, false)
        );
        let Pick::Draw(draw) = Sampler::new(params(0.5, 0.9, 40, 7)).pick(true) else {
            panic!("a draw")
        };
        assert!(draw.banned);
        assert!((0.0..1.0).contains(&draw.uniform));
        assert_ne!(a.pick(false), first, "the next step draws another number");
        // top_p 0 means every token, as on the host; a top-k beyond the device's candidates stays on the host.
        let Pick::Draw(draw) = Sampler::new(params(1.0, 0.0, 0, 1)).pick(false) else {
            panic!("a draw")
        };
        assert_eq!(draw.top_p, 1.0);
        let wide = DEVICE_CANDIDATES as u32 + 1;
        assert_eq!(Sampler::new(params(1.0, 1.0, wide, 1)).pick(false), Pick::Logits);
        assert_eq!(
            Sampler::new(params(0.0, 1.0, wide, 1)).pick(false),
            Pick::Greedy { banned: false }
        );
    }

    #[test]
    fn validation_names_the_parameter() {
        assert!(
            params(2.5, 1.0, 0, 0)
                .validate()
                .expect_err("bad")
                .contains("temperature")
        );
        assert!(
            params(f32::NAN, 1.0, 0, 0)
                .validate()
                .expect_err("bad")
                .contains("temperature")
        );
        assert!(
            params(1.0, 1.5, 0, 0)
                .validate()
                .expect_err("bad")
                .contains("top_p")
        );
        assert!(params(0.0, 0.0, 0, 0).validate().is_ok());
    }
}
