//! A discrete-event model of the local worker nodes, after the worker's own scheduler: each node runs up
//! to `slots` requests at once and queues up to `max_waiting` more (first come, first served); a node
//! that is full refuses, and the gateway falls back.
//!
//! A node works in rounds, one forward pass each: every running request advances by one step, a chunk of
//! its prompt (up to `prefill_chunk` tokens) or one answer token. A round takes its prompt tokens at the
//! prefill rate plus its answer tokens at the decode rate of that many streams together: one stream alone
//! writes at `decode_tokens_per_second`, and `n` together at `1 + (batch_speedup - 1) * (n - 1) /
//! (slots - 1)` times that. The last chunk of a prompt gives the first token; a request admitted during a
//! round joins at the next. Rounds of the same make-up are taken together, so a replay costs a few steps
//! per request, not one per token.

use std::collections::VecDeque;

use sluice_policy::Prices;

use crate::fleet::LocalFleet;

/// Times this close (a nanosecond) are the same: keeps rounding from splitting a round boundary.
const EPSILON: f64 = 1e-9;

/// What the caller needs back when a request reaches a milestone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKey {
    pub tenant: u32,
    /// The time-to-first-token objective, in microseconds (0: none).
    pub objective_us: u64,
}

/// A milestone reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    FirstToken {
        key: JobKey,
        ttft: f64,
    },
    Done {
        key: JobKey,
        at: f64,
        tokens_per_second: Option<f64>,
    },
}

#[derive(Debug, Clone)]
struct Job {
    key: JobKey,
    arrival: f64,
    prompt_left: u64,
    /// Answer tokens after the first.
    decode_left: u64,
    first_token: Option<f64>,
    completion_tokens: u64,
}

#[derive(Debug, Default)]
struct Node {
    running: Vec<Job>,
    waiting: VecDeque<Job>,
    /// Where the node's rounds have got to: the end of the last round taken, or when it went idle.
    now: f64,
    busy: f64,
}

/// Where a request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Running(usize),
    Queued(usize),
}

/// The local nodes.
#[derive(Debug)]
pub struct Pool {
    nodes: Vec<Node>,
    slots: usize,
    max_waiting: usize,
    chunk: u64,
    prefill: f64,
    decode: f64,
    speedup: f64,
    events: Vec<Event>,
    /// The last answer's end.
    pub last_done: f64,
}

impl Pool {
    pub fn new(fleet: &LocalFleet) -> Self {
        Self {
            nodes: (0..fleet.nodes).map(|_| Node::default()).collect(),
            slots: fleet.slots.max(1) as usize,
            max_waiting: fleet.max_waiting as usize,
            chunk: u64::from(fleet.prefill_chunk.max(1)),
            prefill: fleet.prefill_tokens_per_second,
            decode: fleet.decode_tokens_per_second,
            speedup: fleet.batch_speedup,
            events: Vec::new(),
            last_done: 0.0,
        }
    }

    /// A node's decode throughput with `n` streams, as a multiple of one stream's.
    fn throughput(&self, n: usize) -> f64 {
        if n <= 1 || self.slots <= 1 {
            return 1.0;
        }
        1.0 + (self.speedup - 1.0) * (n.min(self.slots) - 1) as f64 / (self.slots - 1) as f64
    }

    /// How long a round takes with these prompt tokens and answer streams.
    fn round_seconds(&self, prompt_tokens: u64, streams: usize) -> f64 {
        let decode = if streams == 0 {
            0.0
        } else {
            streams as f64 / (self.decode * self.throughput(streams))
        };
        prompt_tokens as f64 / self.prefill + decode
    }

    /// Runs every node up to time `t`; the milestones reached are returned (and cleared on the next call).
    pub fn advance_to(&mut self, t: f64) -> &[Event] {
        self.events.clear();
        for i in 0..self.nodes.len() {
            self.advance_node(i, t);
        }
        &self.events
    }

    fn advance_node(&mut self, i: usize, t: f64) {
        loop {
            let node = &self.nodes[i];
            let now = node.now;
            // Requests admitted during the last round join at its end.
            let joined = |j: &&Job| j.arrival <= now + EPSILON;
            let next_join = node
                .running
                .iter()
                .filter(|j| j.arrival > now + EPSILON)
                .map(|j| j.arrival)
                .fold(f64::INFINITY, f64::min);
            if !node.running.iter().any(|j| joined(&j)) {
                // Idle until the next request joins.
                let node = &mut self.nodes[i];
                if next_join.is_finite() && next_join <= t {
                    node.now = next_join;
                    continue;
                }
                let until = t.min(next_join);
                if until.is_finite() {
                    node.now = node.now.max(until);
                }
                return;
            }
            let (mut prompt, mut streams, mut partial) = (0, 0, false);
            let (mut rounds_prefill, mut rounds_decode) = (u64::MAX, u64::MAX);
            for j in node.running.iter().filter(joined) {
                if j.prompt_left > 0 {
                    prompt += j.prompt_left.min(self.chunk);
                    partial |= j.prompt_left < self.chunk;
                    rounds_prefill = rounds_prefill.min(j.prompt_left / self.chunk);
                } else {
                    streams += 1;
                    rounds_decode = rounds_decode.min(j.decode_left);
                }
            }
            let round = self.round_seconds(prompt, streams);
            if now + round > t + EPSILON {
                return;
            }
            // Rounds of this make-up until a prompt is read or an answer ends, a request joins, or `t`.
            let mut rounds = if partial {
                1
            } else {
                rounds_prefill.min(rounds_decode).max(1)
            };
            if next_join.is_finite() {
                rounds = rounds.min((((next_join - now) / round - EPSILON).ceil() as u64).max(1));
            }
            if t.is_finite() {
                rounds = rounds.min(((t - now) / round + EPSILON).floor().max(1.0) as u64);
            }
            let end = now + rounds as f64 * round;
            let chunk = self.chunk;
            let node = &mut self.nodes[i];
            node.now = end;
            node.busy += end - now;
            let mut finished = Vec::new();
            for (k, j) in node.running.iter_mut().enumerate() {
                if j.arrival > now + EPSILON {
                    continue;
                }
                if j.prompt_left > 0 {
                    j.prompt_left = j.prompt_left.saturating_sub(rounds * chunk);
                    if j.prompt_left == 0 {
                        j.first_token = Some(end);
                        self.events.push(Event::FirstToken {
                            key: j.key,
                            ttft: end - j.arrival,
                        });
                    }
                } else {
                    j.decode_left -= rounds.min(j.decode_left);
                }
                if j.prompt_left == 0 && j.decode_left == 0 {
                    finished.push(k);
                }
            }
            for k in finished.into_iter().rev() {
                let j = node.running.swap_remove(k);
                let tokens_per_second = j.first_token.and_then(|f| {
                    let d = end - f;
                    (d > 0.0 && j.completion_tokens > 1).then(|| (j.completion_tokens - 1) as f64 / d)
                });
                self.events.push(Event::Done {
                    key: j.key,
                    at: end,
                    tokens_per_second,
                });
                self.last_done = self.last_done.max(end);
            }
            while node.running.len() < self.slots {
                // Taken from the queue at this round's end: it joins the next round.
                let Some(j) = node.waiting.pop_front() else { break };
                node.running.push(j);
            }
        }
    }

    /// Admits a request arriving at `now` (the pool must have been advanced to `now`) on the least
    /// occupied node, or `None` when every node is full.
    pub fn admit(
        &mut self,
        now: f64,
        key: JobKey,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Option<Admitted> {
        let slots = self.slots;
        let max_waiting = self.max_waiting;
        let (index, node) = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(_, n)| n.running.len() < slots || n.waiting.len() < max_waiting)
            .min_by_key(|(_, n)| n.running.len() + n.waiting.len())?;
        // A request reads at least one prompt token; its first answer token comes with the last chunk.
        let job = Job {
            key,
            arrival: now,
            prompt_left: prompt_tokens.max(1),
            decode_left: completion_tokens.saturating_sub(1),
            first_token: None,
            completion_tokens,
        };
        if node.running.is_empty() {
            node.now = node.now.max(now);
        }
        if node.running.len() < slots {
            node.running.push(job);
            Some(Admitted::Running(index))
        } else {
            node.waiting.push_back(job);
            Some(Admitted::Queued(index))
        }
    }

    /// What a token costs on a node while it is busy, as the gateway prices a worker's model: the node's
    /// hourly cost over the prefill and decode rates it would report now (those of its most loaded node,
    /// with at least one stream).
    pub fn busy_prices(&self, usd_per_hour: f64) -> Prices {
        let n = self
            .nodes
            .iter()
            .map(|n| n.running.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let per_second = usd_per_hour / 3600.0;
        Prices {
            input_usd_per_mtok: per_second / self.prefill * 1e6,
            output_usd_per_mtok: per_second / (self.decode * self.throughput(n)) * 1e6,
        }
    }

    /// Running and waiting requests, and slots, over all nodes.
    pub fn load(&self) -> (u32, u32, u32) {
        let running = self.nodes.iter().map(|n| n.running.len()).sum::<usize>() as u32;
        let waiting = self.nodes.iter().map(|n| n.waiting.len()).sum::<usize>() as u32;
        (running, waiting, (self.slots * self.nodes.len()) as u32)
    }

    /// Seconds the nodes were busy, summed.
    pub fn busy_seconds(&self) -> f64 {
        self.nodes.iter().map(|n| n.busy).sum()
    }

    /// Runs everything left to completion.
    pub fn drain(&mut self) -> &[Event] {
        self.advance_to(f64::INFINITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prompts at 100 tokens a second, answers at 10 a stream (20 with two streams, when two slots).
    fn fleet(nodes: u32, slots: u32, max_waiting: u32, speedup: f64) -> LocalFleet {
        LocalFleet {
            nodes,
            slots,
            max_waiting,
            prefill_chunk: 64,
            prefill_tokens_per_second: 100.0,
            decode_tokens_per_second: 10.0,
            batch_speedup: speedup,
            usd_per_hour: 1.0,
            models: Vec::new(),
        }
    }

    const KEY: JobKey = JobKey {
        tenant: 0,
        objective_us: 0,
    };

    fn ttfts(events: &[Event]) -> Vec<f64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::FirstToken { ttft, .. } => Some(*ttft),
                _ => None,
            })
            .collect()
    }

    fn near(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_request_alone_reads_its_prompt_then_writes_its_answer() {
        let mut p = Pool::new(&fleet(1, 4, 0, 2.0));
        p.admit(0.0, KEY, 100, 11).unwrap();
        let e = p.drain().to_vec();
        // Two chunks (64 + 36 tokens) in 1 s, then ten tokens at 10 a second.
        assert_eq!(ttfts(&e).len(), 1);
        assert!(near(ttfts(&e)[0], 1.0), "{e:?}");
        assert!(matches!(e[1], Event::Done { at, .. } if near(at, 2.0)), "{e:?}");
        assert!(near(p.busy_seconds(), 2.0));
    }

    #[test]
    fn a_prompt_read_beside_an_answer_slows_that_answer_by_its_round() {
        let mut p = Pool::new(&fleet(1, 2, 0, 2.0));
        p.admit(0.0, KEY, 10, 21).unwrap();
        // First: 0.1 s for its prompt. Then it writes a token every 0.1 s.
        assert_eq!(ttfts(p.advance_to(0.5)), vec![0.1]);
        p.admit(0.5, KEY, 10, 1).unwrap();
        let e = p.drain().to_vec();
        let t = ttfts(&e);
        assert_eq!(t.len(), 1, "{e:?}");
        // The second joins at the round boundary at 0.5 s, and its prompt shares a round with the first's
        // token: 0.1 s + 2 tokens at 20/s = 0.2 s, so its first token is at 0.7 s.
        assert!(near(t[0], 0.2), "{t:?}");
    }

    #[test]
    fn requests_queue_when_the_slots_are_taken_and_a_full_node_refuses() {
        let mut p = Pool::new(&fleet(1, 2, 1, 2.0));
        assert_eq!(p.admit(0.0, KEY, 10, 1), Some(Admitted::Running(0)));
        assert_eq!(p.admit(0.0, KEY, 10, 1), Some(Admitted::Running(0)));
        assert_eq!(p.admit(0.0, KEY, 10, 1), Some(Admitted::Queued(0)));
        assert_eq!(p.admit(0.0, KEY, 10, 1), None, "two running, one waiting");
        let t = ttfts(p.drain());
        // Both prompts in one round (20 tokens: 0.2 s); the third's in the next.
        assert_eq!(t.len(), 3);
        assert!(near(t[0], 0.2) && near(t[1], 0.2) && near(t[2], 0.3), "{t:?}");
    }

    #[test]
    fn the_least_occupied_node_takes_the_request() {
        let mut p = Pool::new(&fleet(2, 1, 0, 1.0));
        assert_eq!(p.admit(0.0, KEY, 10, 1), Some(Admitted::Running(0)));
        assert_eq!(p.admit(0.0, KEY, 10, 1), Some(Admitted::Running(1)));
        assert_eq!(p.admit(0.0, KEY, 10, 1), None);
        p.advance_to(0.5);
        assert_eq!(p.load(), (0, 0, 2));
        assert_eq!(p.admit(0.5, KEY, 10, 1), Some(Admitted::Running(0)));
    }

    #[test]
    fn long_answers_take_few_steps() {
        let mut p = Pool::new(&fleet(1, 4, 0, 2.0));
        for _ in 0..4 {
            p.admit(0.0, KEY, 10, 100_001).unwrap();
        }
        let e = p.drain().to_vec();
        // 40 prompt tokens in one round (0.4 s), then 100,000 rounds of 4 tokens at 20 a second (0.2 s).
        assert_eq!(e.len(), 8);
        assert!(
            matches!(e[7], Event::Done { at, .. } if (at - (0.4 + 100_000.0 * 0.2)).abs() < 1e-6),
            "{e:?}"
        );
    }
}
