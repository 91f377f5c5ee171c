//! A discrete-event model of the local worker nodes: each node runs up to `slots` requests at once and
//! queues up to `max_waiting` more (first come, first served), as the worker's scheduler does; a node
//! that is full refuses, and the gateway falls back.
//!
//! Running requests share the node (processor sharing): alone, a request reads its prompt at the prefill
//! rate and writes its answer at the decode rate; with `n` running, the node's throughput is
//! `1 + (batch_speedup - 1) * (n - 1) / (slots - 1)` times one request's, split evenly between them.
//! A request's first token comes when its prompt is read. Nodes do not interact between arrivals, so
//! each is advanced on its own.

use std::collections::VecDeque;

use sluice_policy::Prices;

use crate::fleet::LocalFleet;

/// A request on a node, measured in seconds of work at the speed of a request alone.
#[derive(Debug, Clone)]
struct Job {
    key: JobKey,
    arrival: f64,
    prefill_left: f64,
    decode_left: f64,
    first_token: Option<f64>,
    completion_tokens: u64,
}

/// What the caller needs back when a job reaches a milestone.
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

#[derive(Debug, Default)]
struct Node {
    running: Vec<Job>,
    waiting: VecDeque<Job>,
    now: f64,
    /// Seconds with at least one request running.
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
    prefill: f64,
    decode: f64,
    speedup: f64,
    events: Vec<Event>,
    /// The latest time any node was advanced to, and the last completion.
    pub last_done: f64,
}

/// Work left below this (a microsecond) is done: keeps rounding from stalling a node.
const EPSILON: f64 = 1e-6;

impl Pool {
    pub fn new(fleet: &LocalFleet) -> Self {
        Self {
            nodes: (0..fleet.nodes).map(|_| Node::default()).collect(),
            slots: fleet.slots.max(1) as usize,
            max_waiting: fleet.max_waiting as usize,
            prefill: fleet.prefill_tokens_per_second,
            decode: fleet.decode_tokens_per_second,
            speedup: fleet.batch_speedup,
            events: Vec::new(),
            last_done: 0.0,
        }
    }

    /// Each running request's speed (work seconds per second) with `n` running.
    fn share(&self, n: usize) -> f64 {
        if n <= 1 || self.slots <= 1 {
            return 1.0;
        }
        let throughput = 1.0 + (self.speedup - 1.0) * (n - 1) as f64 / (self.slots - 1) as f64;
        throughput / n as f64
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
            let share = self.share(self.nodes[i].running.len());
            let node = &mut self.nodes[i];
            if node.running.is_empty() {
                node.now = node.now.max(t);
                return;
            }
            // The next milestone: a prompt read or an answer finished.
            let next = node
                .running
                .iter()
                .map(|j| {
                    if j.prefill_left > 0.0 {
                        j.prefill_left
                    } else {
                        j.decode_left
                    }
                })
                .fold(f64::INFINITY, f64::min)
                / share;
            let step_to = (node.now + next).min(t);
            let dt = step_to - node.now;
            let work = dt * share;
            node.busy += dt;
            node.now = step_to;
            let mut finished = Vec::new();
            for (k, j) in node.running.iter_mut().enumerate() {
                if j.prefill_left > 0.0 {
                    j.prefill_left -= work;
                    if j.prefill_left <= EPSILON {
                        j.prefill_left = 0.0;
                        j.first_token = Some(step_to);
                        self.events.push(Event::FirstToken {
                            key: j.key,
                            ttft: step_to - j.arrival,
                        });
                    }
                } else {
                    j.decode_left -= work;
                }
                if j.prefill_left == 0.0 && j.decode_left <= EPSILON {
                    finished.push(k);
                }
            }
            for k in finished.into_iter().rev() {
                let j = node.running.swap_remove(k);
                let tokens_per_second = j.first_token.and_then(|f| {
                    let d = step_to - f;
                    (d > 0.0 && j.completion_tokens > 1).then(|| (j.completion_tokens - 1) as f64 / d)
                });
                self.events.push(Event::Done {
                    key: j.key,
                    at: step_to,
                    tokens_per_second,
                });
                self.last_done = self.last_done.max(step_to);
            }
            while node.running.len() < self.slots {
                let Some(j) = node.waiting.pop_front() else { break };
                node.running.push(j);
            }
            if step_to >= t {
                return;
            }
        }
    }

    /// Admits a request arriving now (the pool must have been advanced to `now`) on the least occupied
    /// node, or `None` when every node is full.
    pub fn admit(
        &mut self,
        now: f64,
        key: JobKey,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Option<Admitted> {
        let slots = self.slots;
        let (index, node) = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(_, n)| n.running.len() < slots || n.waiting.len() < self.max_waiting)
            .min_by_key(|(_, n)| n.running.len() + n.waiting.len())?;
        // A request always reads at least one token of prompt before its first token, and writes one.
        let job = Job {
            key,
            arrival: now,
            prefill_left: (prompt_tokens.max(1) as f64 / self.prefill).max(EPSILON * 10.0),
            decode_left: completion_tokens.saturating_sub(1) as f64 / self.decode,
            first_token: None,
            completion_tokens,
        };
        node.now = node.now.max(now);
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
    /// and at least one request's).
    pub fn busy_prices(&self, usd_per_hour: f64) -> Prices {
        let n = self
            .nodes
            .iter()
            .map(|n| n.running.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let throughput = self.share(n) * n as f64;
        let per_second = usd_per_hour / 3600.0;
        Prices {
            input_usd_per_mtok: per_second / (self.prefill * throughput) * 1e6,
            output_usd_per_mtok: per_second / (self.decode * throughput) * 1e6,
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

    fn fleet(nodes: u32, slots: u32, max_waiting: u32, speedup: f64) -> LocalFleet {
        LocalFleet {
            nodes,
            slots,
            max_waiting,
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

    #[test]
    fn a_request_alone_takes_its_prompt_then_its_answer() {
        let mut p = Pool::new(&fleet(1, 4, 0, 2.0));
        p.admit(0.0, KEY, 100, 11).unwrap();
        let e = p.drain().to_vec();
        assert_eq!(ttfts(&e), vec![1.0]);
        assert!(
            matches!(e[1], Event::Done { at, .. } if (at - 2.0).abs() < 1e-9),
            "{e:?}"
        );
    }

    #[test]
    fn requests_share_a_node_and_queue_when_its_slots_are_taken() {
        // Two slots, throughput 2x with both busy: each runs at full speed alone-equivalent.
        let mut p = Pool::new(&fleet(1, 2, 1, 2.0));
        assert_eq!(p.admit(0.0, KEY, 100, 1), Some(Admitted::Running(0)));
        assert_eq!(p.admit(0.0, KEY, 100, 1), Some(Admitted::Running(0)));
        assert_eq!(p.admit(0.0, KEY, 100, 1), Some(Admitted::Queued(0)));
        assert_eq!(p.admit(0.0, KEY, 100, 1), None, "full: two running, one waiting");
        let t = ttfts(p.drain());
        assert_eq!(t.len(), 3);
        assert!((t[0] - 1.0).abs() < 1e-9 && (t[1] - 1.0).abs() < 1e-9, "{t:?}");
        // The third starts at 1 s and, alone, reads its prompt in 1 s.
        assert!((t[2] - 2.0).abs() < 1e-9, "{t:?}");
    }

    #[test]
    fn without_batching_gains_two_requests_take_twice_as_long() {
        let mut p = Pool::new(&fleet(1, 2, 0, 1.0));
        p.admit(0.0, KEY, 100, 1).unwrap();
        p.admit(0.0, KEY, 100, 1).unwrap();
        let t = ttfts(p.drain());
        assert!(t.iter().all(|t| (t - 2.0).abs() < 1e-9), "{t:?}");
        assert!((p.busy_seconds() - 2.0).abs() < 1e-9);
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
}
