//! The embedding batcher: one thread that takes every request waiting (up to `max_requests` and
//! `max_sequences` inputs a round), sorts their inputs by length and runs them in forward passes of at
//! most `batch_size` sequences of similar length, so that little is spent on padding. Requests are
//! tokenized by the caller on admission, so a round is model work only.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use super::{EmbeddingModel, Input};
use crate::error::{RunError, SubmitError};
use crate::scheduler::{EngineState, LoadSnapshot};

/// Most inputs one request may carry (OpenAI's limit for `/v1/embeddings`).
pub const MAX_INPUTS: usize = 2048;

/// How the batcher groups work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedConfig {
    /// Requests taken into one round.
    pub max_requests: usize,
    /// Requests that may wait for a round.
    pub max_waiting: usize,
    /// Sequences in one forward pass.
    pub batch_size: usize,
    /// Inputs taken into one round (a single larger request still runs, alone).
    pub max_sequences: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            max_requests: 32,
            max_waiting: 64,
            batch_size: 32,
            max_sequences: 256,
        }
    }
}

/// One request: inputs of one model.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub request_id: String,
    pub model: String,
    pub inputs: Vec<Input>,
    pub deadline: Option<Instant>,
}

/// The answer: one vector per input, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, special tokens included.
    pub prompt_tokens: u32,
    pub queue_seconds: f64,
    /// The round this request ran in, from its start to its end.
    pub compute_seconds: f64,
}

/// The answer to come.
pub type Reply = oneshot::Receiver<Result<Embedded, RunError>>;

#[derive(Debug)]
struct Job {
    sequences: Vec<Vec<u32>>,
    tokens: u32,
    deadline: Option<Instant>,
    arrived: Instant,
    reply: oneshot::Sender<Result<Embedded, RunError>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Job>,
    running: usize,
    draining: bool,
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    model: Arc<EmbeddingModel>,
    config: EmbedConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    load: watch::Sender<LoadSnapshot>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Every update of the queue is one statement: a poisoned lock still holds a whole queue.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running batcher. Dropping it (or [`Embedder::stop`]) ends the thread; requests still waiting fail
/// with [`RunError::Stopped`].
#[derive(Debug)]
pub struct Embedder {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Embedder {
    pub fn start(model: Arc<EmbeddingModel>, config: EmbedConfig) -> std::io::Result<Self> {
        let config = EmbedConfig {
            max_requests: config.max_requests.max(1),
            batch_size: config.batch_size.max(1),
            max_sequences: config.max_sequences.max(1),
            ..config
        };
        let (load, _) = watch::channel(LoadSnapshot {
            slots: config.max_requests,
            max_waiting: config.max_waiting,
            ..LoadSnapshot::default()
        });
        let shared = Arc::new(Shared {
            model,
            config,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            load,
        });
        let runner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-embed".into())
            .spawn(move || run(&runner))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn model(&self) -> &Arc<EmbeddingModel> {
        &self.shared.model
    }

    pub fn config(&self) -> EmbedConfig {
        self.shared.config
    }

    pub fn watch_load(&self) -> watch::Receiver<LoadSnapshot> {
        self.shared.load.subscribe()
    }

    pub fn load(&self) -> LoadSnapshot {
        *self.shared.load.borrow()
    }

    /// Checks and tokenizes a request (in the calling thread) and queues it.
    pub fn submit(&self, request: EmbedRequest) -> Result<Reply, SubmitError> {
        let arrived = Instant::now();
        let model = &self.shared.model;
        if lock(&self.shared.queue).draining {
            return Err(SubmitError::Draining);
        }
        if request.model != model.description.id {
            return Err(SubmitError::UnknownModel {
                requested: request.model,
                served: model.description.id.clone(),
            });
        }
        let invalid = SubmitError::InvalidArgument;
        if request.inputs.is_empty() {
            return Err(invalid("there must be at least one input".into()));
        }
        if request.inputs.len() > MAX_INPUTS {
            return Err(invalid(format!(
                "at most {MAX_INPUTS} inputs are allowed in one request, got {}",
                request.inputs.len()
            )));
        }
        let mut sequences = Vec::with_capacity(request.inputs.len());
        for (i, input) in request.inputs.iter().enumerate() {
            let ids = model.tokens(input).map_err(|e| match request.inputs.len() {
                1 => invalid(e),
                _ => invalid(format!("input {i}: {e}")),
            })?;
            sequences.push(ids);
        }
        let tokens = sequences.iter().map(|s| s.len() as u32).sum();
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            sequences,
            tokens,
            deadline: request.deadline,
            arrived,
            reply,
        };
        let limit = self.shared.config.max_requests + self.shared.config.max_waiting;
        let mut queue = lock(&self.shared.queue);
        if queue.draining {
            return Err(SubmitError::Draining);
        }
        if queue.running + queue.waiting.len() >= limit {
            return Err(SubmitError::Full {
                running: queue.running,
                waiting: queue.waiting.len(),
                limit,
            });
        }
        queue.waiting.push_back(job);
        let (running, waiting) = (queue.running, queue.waiting.len());
        drop(queue);
        self.shared.load.send_modify(|l| {
            l.running = running;
            l.waiting = waiting;
        });
        self.shared.wake.notify_all();
        Ok(receiver)
    }

    /// Stops admitting work; admitted requests finish.
    pub fn drain(&self) {
        lock(&self.shared.queue).draining = true;
        self.shared.load.send_modify(|l| l.state = EngineState::Draining);
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        let queue = lock(&self.shared.queue);
        queue.running + queue.waiting.len()
    }

    /// Ends the thread after its current round; waiting requests fail.
    pub fn stop(&self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.stopping = true;
            queue.draining = true;
        }
        self.shared.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the thread keeps across rounds, for the load reports.
#[derive(Debug, Default)]
struct Totals {
    busy_seconds: f64,
    tokens: u64,
    /// Tokens per busy second, smoothed over rounds.
    rate: f64,
}

fn run(shared: &Shared) {
    let mut totals = Totals::default();
    loop {
        let round = {
            let mut queue = lock(&shared.queue);
            while queue.waiting.is_empty() && !queue.stopping {
                queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
            if queue.stopping {
                for job in queue.waiting.drain(..) {
                    let _ = job.reply.send(Err(RunError::Stopped));
                }
                return;
            }
            let mut round = Vec::new();
            let mut sequences = 0;
            while let Some(next) = queue.waiting.front() {
                let more = next.sequences.len();
                if !round.is_empty()
                    && (round.len() >= shared.config.max_requests
                        || sequences + more > shared.config.max_sequences)
                {
                    break;
                }
                sequences += more;
                round.extend(queue.waiting.pop_front());
            }
            queue.running = round.len();
            let waiting = queue.waiting.len();
            drop(queue);
            shared.load.send_modify(|l| {
                l.running = round.len();
                l.waiting = waiting;
            });
            round
        };
        let started = Instant::now();
        let (done, tokens) = run_round(shared, round, started);
        let elapsed = started.elapsed().as_secs_f64();
        totals.busy_seconds += elapsed;
        totals.tokens += tokens;
        if tokens > 0 && elapsed > 0.0 {
            let rate = tokens as f64 / elapsed;
            totals.rate = match totals.rate {
                0.0 => rate,
                r => 0.8 * r + 0.2 * rate,
            };
        }
        let mut queue = lock(&shared.queue);
        queue.running = 0;
        let waiting = queue.waiting.len();
        let waiting_tokens: u64 = queue.waiting.iter().map(|j| u64::from(j.tokens)).sum();
        drop(queue);
        shared.load.send_modify(|l| {
            l.running = 0;
            l.waiting = waiting;
            l.busy_seconds_total = totals.busy_seconds;
            l.prompt_tokens_total = totals.tokens;
            l.prompt_tokens_per_second = totals.rate;
            l.estimated_queue_wait_seconds = match totals.rate {
                r if r > 0.0 => waiting_tokens as f64 / r,
                _ => 0.0,
            };
        });
        // Answers go out after the load is published, so a client that sees its answer sees the load too.
        for (reply, result) in done {
            let _ = reply.send(result);
        }
    }
}

type Done = Vec<(
    oneshot::Sender<Result<Embedded, RunError>>,
    Result<Embedded, RunError>,
)>;

/// Runs one round; returns the answers and the tokens read.
fn run_round(shared: &Shared, round: Vec<Job>, started: Instant) -> (Done, u64) {
    let mut done = Vec::with_capacity(round.len());
    let mut live = Vec::with_capacity(round.len());
    for job in round {
        if job.reply.is_closed() {
            continue;
        }
        if job.deadline.is_some_and(|d| d <= started) {
            done.push((job.reply, Err(RunError::DeadlineExceeded { generated: 0 })));
            continue;
        }
        live.push(job);
    }
    // Every input of the round, shortest first: passes of similar lengths pad little.
    let mut order: Vec<(usize, usize)> = live
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.sequences.len()).map(move |s| (j, s)))
        .collect();
    order.sort_by_key(|&(j, s)| live[j].sequences[s].len());
    let mut vectors: Vec<Vec<Vec<f32>>> = live.iter().map(|j| vec![Vec::new(); j.sequences.len()]).collect();
    let mut failed = None;
    for pass in order.chunks(shared.config.batch_size) {
        let batch: Vec<&[u32]> = pass
            .iter()
            .map(|&(j, s)| live[j].sequences[s].as_slice())
            .collect();
        match shared.model.embed(&batch) {
            Ok(out) => {
                for (&(j, s), v) in pass.iter().zip(out) {
                    vectors[j][s] = v;
                }
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        }
    }
    let compute_seconds = started.elapsed().as_secs_f64();
    let tokens = live.iter().map(|j| u64::from(j.tokens)).sum();
    for (job, vectors) in live.into_iter().zip(vectors) {
        let result = match &failed {
            Some(e) => Err(RunError::Model(e.clone())),
            None => Ok(Embedded {
                vectors,
                prompt_tokens: job.tokens,
                queue_seconds: started.duration_since(job.arrived).as_secs_f64(),
                compute_seconds,
            }),
        };
        done.push((job.reply, result));
    }
    (done, tokens)
}
