//! The slot scheduler: N slots share the weights and own a KV cache each; one engine thread steps every
//! running request in turn (a prompt chunk or one decode step), so no stream starves; a bounded queue
//! holds the rest.
//!
//! Admission (validation, templating, tokenization, the context check, the queue limit) happens in the
//! caller's thread, before any work is queued, so refusals are immediate and precise.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::error::{RunError, SubmitError};
use crate::llama::KvCache;
use crate::model::Model;
use crate::sampler::{Sampler, SamplingParams};
use crate::template::Message;
use crate::text::TextStream;

/// Most stop sequences per request, and their longest length in bytes.
pub const MAX_STOP_SEQUENCES: usize = 16;
pub const MAX_STOP_LEN: usize = 256;
/// Window over which token rates are measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Requests that run at once.
    pub slots: usize,
    /// Requests that may wait for a slot; past this, submissions fail with [`SubmitError::Full`].
    pub max_waiting: usize,
    /// Prompt tokens processed per step; smaller chunks keep other streams flowing during a long prefill.
    pub prefill_chunk: usize,
    /// KV cache positions that admitted requests may hold in all, or `None` for no limit beyond
    /// slots x context. Each request reserves its prompt plus `max_tokens` (or the rest of the context when
    /// `max_tokens` is 0) when it takes a slot, and waits, in order, while that does not fit.
    pub max_kv_tokens: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            slots: 4,
            max_waiting: 16,
            prefill_chunk: 64,
            max_kv_tokens: None,
        }
    }
}

/// One generation request, as the engine sees it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub request_id: String,
    pub model: String,
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    /// 0: until the end of the turn or the context window is full.
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub deadline: Option<Instant>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// Where the time of a request went, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    pub queue: f64,
    pub prefill: f64,
    pub decode: f64,
    pub time_to_first_token: f64,
    pub total: f64,
}

/// The end of a successful request.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub reason: FinishReason,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
    pub timings: Timings,
}

/// What a request's stream carries: `Started`, any number of `Delta`, then `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started { prompt_tokens: u32, queue_seconds: f64 },
    Delta { text: String, tokens: u32 },
    Finished(Finished),
    Failed(RunError),
}

/// Whether the engine admits work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineState {
    #[default]
    Ready,
    Draining,
}

/// The engine's load, published on every scheduler step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSnapshot {
    pub state: EngineState,
    pub running: usize,
    pub waiting: usize,
    pub slots: usize,
    pub max_waiting: usize,
    pub kv_cache_usage_ratio: f64,
    /// Positions the KV caches hold now, and the most they may hold (`max_kv_tokens`, else slots x context).
    pub kv_cache_tokens: usize,
    pub kv_cache_budget_tokens: usize,
    pub prompt_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
    pub estimated_queue_wait_seconds: f64,
    pub busy_seconds_total: f64,
    pub prompt_tokens_total: u64,
    pub generation_tokens_total: u64,
}

/// A running engine. Dropping it stops the engine thread; requests still in it fail with
/// [`RunError::Stopped`].
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    model: Arc<Model>,
    config: EngineConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    load: watch::Sender<LoadSnapshot>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Job>,
    running: usize,
    /// KV positions reserved by running requests.
    kv_reserved: usize,
    draining: bool,
    stopping: bool,
}

#[derive(Debug)]
struct Job {
    request_id: String,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    max_tokens: u32,
    stop: Vec<String>,
    ignore_eos: bool,
    deadline: Option<Instant>,
    arrived: Instant,
    events: mpsc::UnboundedSender<Event>,
    /// KV positions the request may need: its prompt plus what it may generate.
    kv_need: usize,
}

impl Job {
    fn fail(&self, error: RunError) {
        // The receiver may be gone already; then nobody is waiting for the answer.
        let _ = self.events.send(Event::Failed(error));
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // A panic while holding the lock cannot leave the queue half-updated (every update is one statement),
    // so a poisoned lock is still usable.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Engine {
    /// Starts the engine thread for a loaded model.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> std::io::Result<Self> {
        let config = EngineConfig {
            slots: config.slots.max(1),
            prefill_chunk: config.prefill_chunk.max(1),
            ..config
        };
        let (load, _) = watch::channel(LoadSnapshot {
            slots: config.slots,
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
        let runner = Scheduler::new(shared.clone());
        let thread = std::thread::Builder::new()
            .name("sluice-engine".into())
            .spawn(move || runner.run())?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The model this engine serves.
    pub fn model(&self) -> &Arc<Model> {
        &self.shared.model
    }

    pub fn config(&self) -> EngineConfig {
        self.shared.config
    }

    /// Follows the engine's load.
    pub fn watch_load(&self) -> watch::Receiver<LoadSnapshot> {
        self.shared.load.subscribe()
    }

    /// The latest load.
    pub fn load(&self) -> LoadSnapshot {
        *self.shared.load.borrow()
    }

    /// Validates, tokenizes and queues a request. Its events arrive on the returned receiver; dropping the
    /// receiver cancels the request. This does the tokenization work in the calling thread.
    pub fn submit(&self, request: Request) -> Result<mpsc::UnboundedReceiver<Event>, SubmitError> {
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
        let (events, receiver) = mpsc::unbounded_channel();
        let job = self.admit(request, arrived, events)?;

        let limit = self.shared.config.slots + self.shared.config.max_waiting;
        let mut queue = lock(&self.shared.queue);
        if queue.draining {
            return Err(SubmitError::Draining);
        }
        let in_system = queue.running + queue.waiting.len();
        if in_system >= limit {
            return Err(SubmitError::Full {
                running: queue.running,
                waiting: queue.waiting.len(),
                limit,
            });
        }
        queue.waiting.push_back(job);
        let (running, waiting) = (queue.running, queue.waiting.len());
        self.shared.load.send_modify(|l| {
            l.running = running;
            l.waiting = waiting;
        });
        drop(queue);
        self.shared.wake.notify_all();
        Ok(receiver)
    }

    fn admit(
        &self,
        request: Request,
        arrived: Instant,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Job, SubmitError> {
        let invalid = SubmitError::InvalidArgument;
        let model = &self.shared.model;
        request.sampling.validate().map_err(invalid)?;
        if request.messages.is_empty() {
            return Err(invalid("messages must not be empty".into()));
        }
        if request.stop.len() > MAX_STOP_SEQUENCES {
            return Err(invalid(format!(
                "at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {}",
                request.stop.len()
            )));
        }
        if let Some(long) = request.stop.iter().find(|s| s.len() > MAX_STOP_LEN) {
            return Err(invalid(format!(
                "stop sequences may be at most {MAX_STOP_LEN} bytes, got one of {} bytes",
                long.len()
            )));
        }
        let prompt = model.prompt_tokens(&request.messages).map_err(invalid)?;
        let context = model.description.context_length;
        if prompt.len() >= context {
            return Err(invalid(format!(
                "the prompt is {} tokens; the context window of {} is {context} tokens, and at least one must be left for the answer",
                prompt.len(),
                model.description.id
            )));
        }
        if request.max_tokens as usize > context - prompt.len() {
            return Err(invalid(format!(
                "the prompt ({} tokens) plus max_tokens ({}) exceeds the context window of {context} tokens",
                prompt.len(),
                request.max_tokens
            )));
        }
        let kv_need = match request.max_tokens {
            0 => context,
            n => prompt.len() + n as usize,
        };
        if let Some(budget) = self.shared.config.max_kv_tokens
            && kv_need > budget
        {
            return Err(invalid(format!(
                "the request may need {kv_need} KV cache positions (a {}-token prompt plus {}), more than this worker's budget of {budget}; set max_tokens lower",
                prompt.len(),
                match request.max_tokens {
                    0 => "the rest of the context window".to_owned(),
                    n => format!("max_tokens {n}"),
                }
            )));
        }
        Ok(Job {
            kv_need,
            request_id: request.request_id,
            prompt,
            sampling: request.sampling,
            max_tokens: request.max_tokens,
            stop: request.stop,
            ignore_eos: request.ignore_eos,
            deadline: request.deadline,
            arrived,
            events,
        })
    }

    /// Stops admitting work; admitted requests finish.
    pub fn drain(&self) {
        lock(&self.shared.queue).draining = true;
        self.shared.load.send_modify(|l| l.state = EngineState::Draining);
        self.shared.wake.notify_all();
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> usize {
        let queue = lock(&self.shared.queue);
        queue.running + queue.waiting.len()
    }

    /// Stops the engine thread: requests still in it fail with [`RunError::Stopped`]. Waits for the thread.
    pub fn stop(&self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.draining = true;
            queue.stopping = true;
        }
        self.shared.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request in a slot.
#[derive(Debug)]
struct Active {
    job: Job,
    sampler: Sampler,
    text: TextStream,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// The last sampled token, to be fed at the next decode step.
    last: Option<u32>,
    generated: u32,
    /// Generated tokens not yet reported in a delta.
    unreported: u32,
    admitted: Instant,
    first_token: Option<Instant>,
    prefill_seconds: f64,
}

#[derive(Debug)]
struct Slot {
    cache: KvCache,
    active: Option<Active>,
}

enum Step {
    Continue,
    /// The request is over; the slot is freed before its last event (if any) is sent, so a client that
    /// sees the end can immediately use the slot again.
    Done(Option<Event>),
}

/// Work done in one scheduler round, for the rate window.
#[derive(Debug, Clone, Copy)]
struct Round {
    at: Instant,
    prompt_tokens: u64,
    prompt_seconds: f64,
    decode_tokens: u64,
    decode_seconds: f64,
    /// Every generated token, the first one (sampled right after the prompt) included.
    generated_tokens: u64,
}

struct Scheduler {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    rounds: VecDeque<Round>,
    busy_seconds: f64,
    prompt_tokens_total: u64,
    generation_tokens_total: u64,
    /// Moving average of a request's time in a slot, for the queue-wait estimate.
    service_seconds: f64,
}

impl Scheduler {
    fn new(shared: Arc<Shared>) -> Self {
        let slots = (0..shared.config.slots)
            .map(|_| Slot {
                cache: shared.model.new_cache(),
                active: None,
            })
            .collect();
        Self {
            shared,
            slots,
            rounds: VecDeque::new(),
            busy_seconds: 0.0,
            prompt_tokens_total: 0,
            generation_tokens_total: 0,
            service_seconds: 0.0,
        }
    }

    fn run(mut self) {
        // A panic in a round (a bug, or a malformed model) must not leave requests waiting forever: it ends
        // the engine like a stop, failing what is left and refusing new work.
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
        if served.is_err() {
            tracing::error!("the engine thread panicked; failing every request and admitting no more");
        }
        self.shut_down();
    }

    fn serve(&mut self) {
        loop {
            if !self.admit_or_wait() {
                break;
            }
            let round_start = Instant::now();
            let mut round = Round {
                at: round_start,
                prompt_tokens: 0,
                prompt_seconds: 0.0,
                decode_tokens: 0,
                decode_seconds: 0.0,
                generated_tokens: 0,
            };
            let outcomes = self.round(&mut round);
            for (slot, outcome) in self.slots.iter_mut().zip(outcomes) {
                let Some(Step::Done(last_event)) = outcome else {
                    continue;
                };
                let Some(active) = slot.active.take() else {
                    continue;
                };
                let service = active.admitted.elapsed().as_secs_f64();
                self.service_seconds = if self.service_seconds == 0.0 {
                    service
                } else {
                    0.8 * self.service_seconds + 0.2 * service
                };
                slot.cache.clear();
                {
                    let mut queue = lock(&self.shared.queue);
                    queue.running -= 1;
                    queue.kv_reserved -= active.job.kv_need;
                }
                if let Some(event) = last_event {
                    let _ = active.job.events.send(event);
                }
            }
            self.busy_seconds += round_start.elapsed().as_secs_f64();
            self.prompt_tokens_total += round.prompt_tokens;
            self.generation_tokens_total += round.generated_tokens;
            self.rounds.push_back(round);
            while self.rounds.front().is_some_and(|r| r.at.elapsed() > RATE_WINDOW) {
                self.rounds.pop_front();
            }
            self.publish();
        }
    }

    /// Fails whatever is still here and refuses new work.
    fn shut_down(&mut self) {
        for slot in &mut self.slots {
            if let Some(active) = slot.active.take() {
                active.job.fail(RunError::Stopped);
            }
        }
        let mut queue = lock(&self.shared.queue);
        queue.stopping = true;
        queue.draining = true;
        for job in queue.waiting.drain(..) {
            job.fail(RunError::Stopped);
        }
        queue.running = 0;
        queue.kv_reserved = 0;
        drop(queue);
        self.publish();
    }

    /// Moves waiting requests into free slots, dropping cancelled and expired ones. Sleeps while there is
    /// nothing to do. Returns false when the engine stops.
    fn admit_or_wait(&mut self) -> bool {
        let mut queue = lock(&self.shared.queue);
        loop {
            if queue.stopping {
                return false;
            }
            let now = Instant::now();
            queue.waiting.retain(|job| {
                if job.events.is_closed() {
                    return false;
                }
                if job.deadline.is_some_and(|d| d <= now) {
                    job.fail(RunError::DeadlineExceeded { generated: 0 });
                    return false;
                }
                true
            });
            let budget = self.shared.config.max_kv_tokens.unwrap_or(usize::MAX);
            for slot in self.slots.iter_mut().filter(|s| s.active.is_none()) {
                // First come, first served: a request that does not fit the KV budget yet holds the line.
                match queue.waiting.front() {
                    Some(job) if queue.kv_reserved.saturating_add(job.kv_need) <= budget => {}
                    _ => break,
                }
                let Some(job) = queue.waiting.pop_front() else {
                    break;
                };
                queue.running += 1;
                queue.kv_reserved += job.kv_need;
                let queue_seconds = job.arrived.elapsed().as_secs_f64();
                let _ = job.events.send(Event::Started {
                    prompt_tokens: job.prompt.len() as u32,
                    queue_seconds,
                });
                tracing::debug!(request_id = %job.request_id, prompt_tokens = job.prompt.len(), queue_seconds, "admitted");
                slot.active = Some(Active {
                    sampler: Sampler::new(job.sampling),
                    text: TextStream::new(job.stop.clone()),
                    prefilled: 0,
                    last: None,
                    generated: 0,
                    unreported: 0,
                    admitted: Instant::now(),
                    first_token: None,
                    prefill_seconds: 0.0,
                    job,
                });
            }
            if queue.running > 0 {
                return true;
            }
            drop(queue);
            self.publish();
            queue = lock(&self.shared.queue);
            if queue.stopping || !queue.waiting.is_empty() {
                continue;
            }
            // Wake at least once a second so waiting deadlines are enforced even when nothing else happens.
            queue = self
                .shared
                .wake
                .wait_timeout(queue, Duration::from_secs(1))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn publish(&self) {
        // Counts are read and sent under the queue lock, so a submission's update is never overwritten by
        // older counts.
        let queue = lock(&self.shared.queue);
        let (running, waiting, draining) = (queue.running, queue.waiting.len(), queue.draining);
        let config = self.shared.config;
        let context = self.shared.model.description.context_length;
        let kv_tokens: usize = self
            .slots
            .iter()
            .filter_map(|s| s.active.as_ref())
            .map(|a| a.prefilled + a.generated as usize)
            .sum();
        let (mut pt, mut ps, mut dt, mut ds) = (0u64, 0f64, 0u64, 0f64);
        for r in &self.rounds {
            pt += r.prompt_tokens;
            ps += r.prompt_seconds;
            dt += r.decode_tokens;
            ds += r.decode_seconds;
        }
        let rate = |tokens: u64, seconds: f64| {
            if seconds > 0.0 {
                tokens as f64 / seconds
            } else {
                0.0
            }
        };
        let estimated_queue_wait_seconds = if running < config.slots {
            0.0
        } else {
            self.service_seconds * (waiting as f64 + 1.0) / config.slots as f64
        };
        let snapshot = LoadSnapshot {
            state: if draining {
                EngineState::Draining
            } else {
                EngineState::Ready
            },
            running,
            waiting,
            slots: config.slots,
            max_waiting: config.max_waiting,
            kv_cache_usage_ratio: kv_tokens as f64 / (config.slots * context).max(1) as f64,
            kv_cache_tokens: kv_tokens,
            kv_cache_budget_tokens: config.max_kv_tokens.unwrap_or(config.slots * context),
            prompt_tokens_per_second: rate(pt, ps),
            decode_tokens_per_second: rate(dt, ds),
            estimated_queue_wait_seconds,
            busy_seconds_total: self.busy_seconds,
            prompt_tokens_total: self.prompt_tokens_total,
            generation_tokens_total: self.generation_tokens_total,
        };
        self.shared.load.send_replace(snapshot);
        drop(queue);
    }
}

mod round;

#[cfg(test)]
mod tests;
