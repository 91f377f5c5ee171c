//! Recognition, the second half of intake: the personal-data model (`sluice-ner`) reads a request's
//! strings for names, addresses and identifiers written as prose, and its spans are merged into the
//! pattern scan, which is then rated again (a name with a diagnosis is restricted).
//!
//! It runs on a bounded pool of threads of its own, never on the async runtime: a burst of long prompts
//! waits in a bounded queue, and past it the request is shed with 429 rather than queued without
//! bound. Every string is read whole (the model windows long text, it never cuts it); a request whose
//! text is over the byte budget, or that the model does not finish within the time budget, is not
//! cleared: its scan is incomplete, so restricted. Answers are cached per distinct string (a system
//! prompt and earlier turns repeat on every call of a conversation), keyed by a keyed 128-bit hash, so
//! the cache never holds the text.
//!
//! Whether the model is needed at all is the caller's question (`chat`): only when its answer can
//! change where the request may go.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use sluice_ner::Recognizer;
use sluice_ner::{Personal, PersonalKind, Reading, Tagger, WordPieces};
use sluice_sensitivity::{Incomplete, Kind, ModelPass, Recognised, Scan, Scanner};
use tokio::sync::oneshot;

/// The personal-data model's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NerConfig {
    /// The converted weights (`sluice models pull --ner` writes them).
    pub weights: PathBuf,
    pub tokenizer: PathBuf,
    /// Threads that run the model.
    pub threads: usize,
    /// Requests that may wait for a thread; past it, 429.
    pub queue: usize,
    /// Most bytes of text one request may have read by the model; past it the request is restricted.
    pub max_bytes: usize,
    /// Longest one request may wait for the model; past it the request is restricted.
    pub timeout: Duration,
    /// Distinct strings whose answers are kept.
    pub cache_entries: usize,
    /// Read only the words around cues (digits, known names, capitalised words inside a sentence)
    /// unless the scan found what a name would combine with; off: read every word of every string.
    pub prefilter: bool,
}

impl NerConfig {
    pub const DEFAULT_QUEUE: usize = 64;
    pub const DEFAULT_MAX_BYTES: usize = 256 << 10;
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_CACHE_ENTRIES: usize = 65_536;

    /// Half the cores, at least one: the other half serve requests.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }
}

/// Why the model could not be started.
#[derive(Debug, thiserror::Error)]
pub enum NerError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the personal-data model from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// What the model did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recognition {
    pub pass: ModelPass,
    /// Strings the model read (not from the cache).
    pub read: usize,
    /// Strings answered from the cache.
    pub cached: usize,
    /// Time spent waiting for and running the model.
    pub elapsed: Duration,
    /// Why the request was not cleared, when it was over budget: `bytes`, `time` or `error`.
    pub over_budget: Option<&'static str>,
}

/// Every thread was busy and the queue full: the request is shed (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

type Answer = Result<Vec<Arc<[Personal]>>, String>;

struct Job {
    texts: Vec<(String, Reading)>,
    reply: oneshot::Sender<Answer>,
}

/// The model, its threads and its cache.
pub struct Recogniser {
    jobs: SyncSender<Job>,
    cache: Mutex<Cache>,
    keys: (RandomState, RandomState),
    config: NerConfig,
}

impl std::fmt::Debug for Recogniser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recogniser")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Recogniser {
    /// Loads the model and starts its threads (they end when the recogniser is dropped).
    pub fn start(config: NerConfig) -> Result<Arc<Self>, NerError> {
        let model = Arc::new(load(&config)?);
        let (jobs, rx) = sync_channel::<Job>(config.queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..config.threads.max(1) {
            let (model, rx) = (model.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("sluice-ner-{i}"))
                .spawn(move || work(&model, &rx))
                .map_err(|e| NerError::Load {
                    path: config.weights.clone(),
                    message: format!("cannot start a model thread: {e}"),
                })?;
        }
        Ok(Arc::new(Self {
            jobs,
            cache: Mutex::new(Cache::new(config.cache_entries)),
            keys: (RandomState::new(), RandomState::new()),
            config,
        }))
    }

    pub fn config(&self) -> &NerConfig {
        &self.config
    }

    /// Reads `texts` (the strings of a request, as scanned) with the model and merges what it finds
    /// into `scan`. Over a budget, the scan is failed closed instead.
    pub async fn recognise(
        &self,
        scanner: &Scanner,
        scan: &mut Scan,
        texts: &[&str],
    ) -> Result<Recognition, Busy> {
        self.recognise_reading(scanner, scan, texts, false).await
    }

    /// [`Recogniser::recognise`], reading every string whole whatever the prefilter says: the proof of a
    /// redacted form, where a name left behind must be found even with no cue near it.
    pub async fn recognise_whole(
        &self,
        scanner: &Scanner,
        scan: &mut Scan,
        texts: &[&str],
    ) -> Result<Recognition, Busy> {
        self.recognise_reading(scanner, scan, texts, true).await
    }

    async fn recognise_reading(
        &self,
        scanner: &Scanner,
        scan: &mut Scan,
        texts: &[&str],
        whole: bool,
    ) -> Result<Recognition, Busy> {
        let started = Instant::now();
        let mut outcome = Recognition {
            pass: ModelPass::OverBudget,
            read: 0,
            cached: 0,
            elapsed: Duration::ZERO,
            over_budget: None,
        };
        let bytes: usize = texts.iter().map(|t| t.len()).sum();
        if bytes > self.config.max_bytes {
            scan.fail_closed(Incomplete::ModelTooLarge {
                bytes,
                max_bytes: self.config.max_bytes,
            });
            scan.model = ModelPass::OverBudget;
            outcome.over_budget = Some("bytes");
            return Ok(outcome);
        }
        // Where a name would raise the level (the scan found a diagnosis, a birth date, an identifier),
        // the model reads every word; elsewhere only around cues.
        let reading = if whole || !self.config.prefilter || scanner.name_would_raise(scan) {
            Reading::Whole
        } else {
            Reading::AroundCues
        };
        // Answers from the cache; the strings it lacks (each once) go to the model.
        let keys: Vec<Key> = texts.iter().map(|t| self.key(t, reading)).collect();
        let worth: Vec<bool> = texts.iter().map(|t| worth_reading(t, reading)).collect();
        let mut answers: Vec<Option<Arc<[Personal]>>> = Vec::with_capacity(texts.len());
        let mut missing: Vec<Key> = Vec::new();
        let mut to_read: Vec<(String, Reading)> = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for ((text, key), &worth) in texts.iter().zip(&keys).zip(&worth) {
                let hit = if worth {
                    cache.get(key)
                } else {
                    Some(Arc::from(Vec::new()))
                };
                if hit.is_none() && !missing.contains(key) {
                    missing.push(*key);
                    to_read.push(((*text).to_owned(), reading));
                }
                if hit.is_some() && worth {
                    outcome.cached += 1;
                }
                answers.push(hit);
            }
        }
        if !to_read.is_empty() {
            outcome.read = to_read.len();
            let (reply, answer) = oneshot::channel();
            match self.jobs.try_send(Job {
                texts: to_read,
                reply,
            }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => return Err(Busy),
                Err(TrySendError::Disconnected(_)) => {
                    scan.fail_closed(Incomplete::ModelFailed("the model's threads have stopped".into()));
                    scan.model = ModelPass::OverBudget;
                    outcome.over_budget = Some("error");
                    return Ok(outcome);
                }
            }
            let read = match tokio::time::timeout(self.config.timeout, answer).await {
                Err(_) => {
                    scan.fail_closed(Incomplete::ModelTimedOut {
                        millis: u64::try_from(self.config.timeout.as_millis()).unwrap_or(u64::MAX),
                    });
                    outcome.over_budget = Some("time");
                    None
                }
                Ok(Err(_)) => {
                    scan.fail_closed(Incomplete::ModelFailed("a model thread stopped".into()));
                    outcome.over_budget = Some("error");
                    None
                }
                Ok(Ok(Err(message))) => {
                    scan.fail_closed(Incomplete::ModelFailed(message));
                    outcome.over_budget = Some("error");
                    None
                }
                Ok(Ok(Ok(read))) => Some(read),
            };
            let Some(read) = read else {
                scan.model = ModelPass::OverBudget;
                outcome.elapsed = started.elapsed();
                return Ok(outcome);
            };
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, found) in missing.iter().zip(read) {
                cache.put(*key, found.clone());
                for (slot, k) in answers.iter_mut().zip(&keys) {
                    if slot.is_none() && k == key {
                        *slot = Some(found.clone());
                    }
                }
            }
        }
        let recognised = answers.iter().enumerate().flat_map(|(index, found)| {
            found.iter().flat_map(move |spans| {
                spans.iter().map(move |p| Recognised {
                    kind: kind_of(p.kind),
                    index,
                    range: p.range.clone(),
                })
            })
        });
        scanner.merge(scan, texts, recognised);
        outcome.pass = ModelPass::Ran {
            strings: texts.len(),
            cached: outcome.cached,
        };
        scan.model = outcome.pass;
        outcome.elapsed = started.elapsed();
        Ok(outcome)
    }

    fn key(&self, text: &str, reading: Reading) -> Key {
        let whole = reading == Reading::Whole;
        (
            self.keys.0.hash_one((text, whole)),
            self.keys.1.hash_one((text, whole)),
        )
    }
}

/// Whether the personal-data model can change where a request may go: only restricted can raise it
/// further, so not when the request is already restricted, nor when every target it may go to is
/// cleared for restricted data (a request bound for local workers does not pay for the model). A
/// refused request goes nowhere either way. A request to send redacted always needs it: what it finds
/// is replaced too.
pub fn can_change_route(
    decided: &Result<sluice_policy::Decision, sluice_policy::Refusal>,
    fleet: &sluice_policy::FleetView,
    scan: &Scan,
) -> bool {
    use sluice_policy::Level;
    // A redaction replaces what is found: the names and addresses only the model finds must be found
    // before, or the proof of the redacted form (which runs the model) would only find them after.
    if let Ok(sluice_policy::Decision {
        redaction: Some(_), ..
    }) = decided
    {
        return true;
    }
    if scan.level >= Level::Restricted {
        return false;
    }
    match decided {
        Ok(d) => {
            d.level < Level::Restricted
                && d.targets.iter().any(|t| {
                    fleet
                        .backends
                        .get(t.backend)
                        .is_none_or(|b| b.clearance < Level::Restricted)
                })
        }
        Err(_) => false,
    }
}

/// The model's step on the calling thread, with no pool, queue, cache or time budget: for `sluice policy
/// explain`, which reads one request as the gateway would. The byte budget and the reading (whole, or
/// around cues) are the gateway's.
pub fn recognise_here(
    model: &Recognizer,
    config: &NerConfig,
    scanner: &Scanner,
    scan: &mut Scan,
    texts: &[&str],
) {
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    if bytes > config.max_bytes {
        scan.fail_closed(Incomplete::ModelTooLarge {
            bytes,
            max_bytes: config.max_bytes,
        });
        scan.model = ModelPass::OverBudget;
        return;
    }
    let reading = if !config.prefilter || scanner.name_would_raise(scan) {
        Reading::Whole
    } else {
        Reading::AroundCues
    };
    let mut recognised = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        if !worth_reading(text, reading) {
            continue;
        }
        match model.personal_reading(text, reading) {
            Ok((found, _)) => recognised.extend(found.into_iter().map(|p| Recognised {
                kind: kind_of(p.kind),
                index,
                range: p.range,
            })),
            Err(e) => {
                scan.fail_closed(Incomplete::ModelFailed(e.to_string()));
                scan.model = ModelPass::OverBudget;
                return;
            }
        }
    }
    scanner.merge(scan, texts, recognised);
    scan.model = ModelPass::Ran {
        strings: texts.len(),
        cached: 0,
    };
}

/// Whether the model has anything to read in a string: not when it has no letter and no digit
/// (punctuation, white space), nor, reading around cues, when it has no cue (the model would read
/// nothing of it). Such strings are answered here, without a trip to the model's threads.
fn worth_reading(text: &str, reading: Reading) -> bool {
    text.chars().any(char::is_alphanumeric)
        && (reading == Reading::Whole || !sluice_ner::cues::cues(text).is_empty())
}

/// The scanner's kind for a span of personal data.
pub fn kind_of(kind: PersonalKind) -> Kind {
    match kind {
        PersonalKind::Name => Kind::PersonName,
        PersonalKind::Address => Kind::PostalAddress,
        PersonalKind::Email => Kind::Email,
        PersonalKind::Phone => Kind::Phone,
        PersonalKind::TaxId => Kind::TaxId,
        PersonalKind::BankAccount => Kind::BankAccount,
        PersonalKind::RoutingNumber => Kind::RoutingNumber,
        PersonalKind::GovernmentId => Kind::GovernmentId,
        PersonalKind::Passport => Kind::Passport,
        PersonalKind::DriversLicense => Kind::DriversLicense,
    }
}

/// Loads the tokenizer and the converted weights.
pub fn load(config: &NerConfig) -> Result<Recognizer, NerError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| NerError::Read {
            path: path.clone(),
            source,
        })
    };
    let fail = |path: &PathBuf, message: String| NerError::Load {
        path: path.clone(),
        message,
    };
    let pieces = WordPieces::from_json(&read(&config.tokenizer)?)
        .map_err(|e| fail(&config.tokenizer, e.to_string()))?;
    let tagger = Tagger::from_safetensors(&read(&config.weights)?)
        .map_err(|e| fail(&config.weights, e.to_string()))?;
    Recognizer::new(pieces, tagger).map_err(|e| fail(&config.tokenizer, e.to_string()))
}

/// A model thread: one job at a time, each string whole. A job whose request has stopped waiting (it
/// timed out, or the client left) is dropped unread.
fn work(model: &Recognizer, jobs: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            rx.recv()
        };
        let Ok(job) = job else { return };
        let mut answers = Vec::with_capacity(job.texts.len());
        let mut failed = None;
        for (text, reading) in &job.texts {
            if job.reply.is_closed() {
                break;
            }
            match model.personal_reading(text, *reading) {
                Ok((found, _)) => answers.push(Arc::from(found)),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let answer = match failed {
            Some(message) => Err(message),
            None => Ok(answers),
        };
        let _ = job.reply.send(answer);
    }
}

type Key = (u64, u64);

/// Answers per distinct string, the oldest dropped first past `capacity`.
struct Cache {
    map: HashMap<Key, Arc<[Personal]>>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &Key) -> Option<Arc<[Personal]>> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: Key, value: Arc<[Personal]>) {
        if self.capacity == 0 || self.map.insert(key, value).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}
