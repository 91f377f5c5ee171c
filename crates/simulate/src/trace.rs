//! Reading traces, one request at a time (nothing holds a whole trace):
//!
//! - the gateway's audit log: its rotated files oldest first, then the active one, read after the chain
//!   was checked ([`check_chain`]); each record gives the request's facts as the policy saw them (tenant,
//!   model, the kinds found, the client's hints, the prompt's estimated size) and what happened to it;
//! - a JSONL of OpenAI chat requests with timestamps, each read and scanned exactly as the gateway's
//!   intake reads and scans a request.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_gateway::cost::Usage;
use sluice_gateway::http::{HeaderMap, HeaderName, HeaderValue};
use sluice_gateway::intake;
use sluice_policy::{Level, Route};
use sluice_sensitivity::{Incomplete, Kind, Scan, Scanner};

/// Which kind of trace a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// The gateway's audit log (`PATH` and its rotated `PATH.N`).
    Audit,
    /// One JSON object per line: `time`, `request` (an OpenAI chat completion request), and optionally
    /// `tenant`, `headers`, `prompt_tokens`, `completion_tokens`.
    Requests,
}

impl TraceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Requests => "requests",
        }
    }

    /// An audit log's lines carry `seq` and `prev`; a request trace's carry `request`. Reads the first
    /// non-empty line of the oldest file.
    pub fn detect(path: &Path) -> Result<Self, TraceError> {
        let files = sluice_audit::log_files(path).map_err(|e| TraceError::io(path, e))?;
        let first = files
            .first()
            .ok_or_else(|| TraceError::NotFound(path.to_owned()))?;
        let reader = BufReader::new(File::open(first).map_err(|e| TraceError::io(first, e))?);
        for line in reader.lines() {
            let line = line.map_err(|e| TraceError::io(first, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).map_err(|e| TraceError::Line {
                file: first.clone(),
                line: 1,
                why: format!("not JSON ({e})"),
            })?;
            return if v.get("seq").is_some() && v.get("prev").is_some() {
                Ok(Self::Audit)
            } else if v.get("request").is_some() {
                Ok(Self::Requests)
            } else {
                Err(TraceError::Line {
                    file: first.clone(),
                    line: 1,
                    why: "neither an audit record (seq, prev) nor a request line (time, request)".into(),
                })
            };
        }
        Err(TraceError::Empty(path.to_owned()))
    }
}

/// Why a trace, or one of its lines, cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{}: no such trace (neither the file nor rotated copies exist)", .0.display())]
    NotFound(PathBuf),
    #[error("{}: the trace is empty", .0.display())]
    Empty(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// One line that is not a request; the replay counts it and goes on.
    #[error("{}:{line}: {why}", file.display())]
    Line { file: PathBuf, line: u64, why: String },
    /// A request line the gateway would refuse at intake (400).
    #[error("{}:{line}: the gateway would refuse this request: {why}", file.display())]
    Invalid {
        file: PathBuf,
        line: u64,
        why: String,
        status: u16,
        code: &'static str,
    },
}

impl TraceError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What the recorded run did with a request (audit logs only).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `local`, `cloud`, `redacted-cloud`, or `refused` when no backend was chosen.
    pub route: String,
    pub rule: Option<String>,
    pub backend: Option<String>,
    /// The model that answered, when it is not the one asked for.
    pub served_model: Option<String>,
    pub status: u16,
    pub code: String,
    pub cost_usd: f64,
    pub cloud_equivalent_usd: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: Option<f64>,
}

/// One request of a trace, as the replay needs it.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// Where it is: `FILE:LINE`.
    pub at: String,
    /// Arrival, in milliseconds since 1970.
    pub time_ms: i64,
    /// The recorded request id, or the line for a request trace.
    pub id: String,
    pub tenant: String,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub prompt_estimate: u64,
    pub declared: Option<Level>,
    pub prefer: Option<Route>,
    /// Headers rules may test (request traces only: the audit log keeps none).
    pub headers: Vec<(String, String)>,
    /// The request body (request traces only).
    pub body: Map<String, Value>,
    pub scan: Scan,
    /// Tokens used: recorded, given, or estimated (`estimated` says which).
    pub usage: Usage,
    pub estimated: bool,
    pub recorded: Option<Recorded>,
}

/// The audit log's chain, as checked before the replay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chain {
    pub intact: bool,
    /// What `sluice audit verify` says.
    pub summary: String,
}

/// Checks the audit log's chain; a broken chain is reported, not fatal (the records may still be worth
/// replaying, and the report says they cannot be trusted).
pub fn check_chain(path: &Path) -> Result<Chain, TraceError> {
    match sluice_audit::verify(path) {
        Ok(report) => Ok(Chain {
            intact: true,
            summary: report.to_string(),
        }),
        Err(sluice_audit::VerifyError::NotFound { path }) => Err(TraceError::NotFound(path)),
        Err(sluice_audit::VerifyError::Io { path, source }) => Err(TraceError::Io { path, source }),
        Err(e @ sluice_audit::VerifyError::Broken { .. }) => Ok(Chain {
            intact: false,
            summary: e.to_string(),
        }),
    }
}

/// The requests of a trace, in file order.
pub struct Trace {
    kind: TraceKind,
    files: Vec<PathBuf>,
    next_file: usize,
    reader: Option<(PathBuf, BufReader<File>)>,
    line: u64,
    buf: String,
    scanner: Scanner,
    default_tenant: String,
}

impl Trace {
    /// Opens `path` (and its rotated copies, for an audit log). Requests of a request trace are scanned
    /// with `scanner`; audit records are rated by it (the kinds found then, at this scanner's levels).
    /// `default_tenant` is the tenant of request lines that name none.
    pub fn open(
        path: &Path,
        kind: TraceKind,
        scanner: Scanner,
        default_tenant: &str,
    ) -> Result<Self, TraceError> {
        let files = match kind {
            TraceKind::Audit => sluice_audit::log_files(path).map_err(|e| TraceError::io(path, e))?,
            TraceKind::Requests => vec![path.to_owned()],
        };
        if files.is_empty() || !files.iter().all(|f| f.exists()) {
            return Err(TraceError::NotFound(path.to_owned()));
        }
        Ok(Self {
            kind,
            files,
            next_file: 0,
            reader: None,
            line: 0,
            buf: String::new(),
            scanner,
            default_tenant: default_tenant.to_owned(),
        })
    }

    /// The files read, oldest first.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The next line's text and where it is; `None` at the end of the last file. A last line without a
    /// newline in an audit file is a torn write and skipped, as verification skips it.
    fn next_line(&mut self) -> Option<Result<(PathBuf, u64), TraceError>> {
        loop {
            if self.reader.is_none() {
                let file = self.files.get(self.next_file)?.clone();
                self.next_file += 1;
                self.line = 0;
                match File::open(&file) {
                    Ok(f) => self.reader = Some((file, BufReader::with_capacity(256 << 10, f))),
                    Err(e) => return Some(Err(TraceError::io(&file, e))),
                }
            }
            let (file, reader) = self.reader.as_mut()?;
            self.buf.clear();
            match reader.read_line(&mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    continue;
                }
                Ok(_) => {
                    self.line += 1;
                    let torn = !self.buf.ends_with('\n');
                    if torn && self.kind == TraceKind::Audit {
                        self.reader = None;
                        continue;
                    }
                    if self.buf.trim().is_empty() {
                        continue;
                    }
                    return Some(Ok((file.clone(), self.line)));
                }
                Err(e) => {
                    let file = file.clone();
                    self.reader = None;
                    return Some(Err(TraceError::io(&file, e)));
                }
            }
        }
    }

    fn audit_request(&self, file: &Path, line: u64) -> Result<TraceRequest, TraceError> {
        let bad = |why: String| TraceError::Line {
            file: file.to_owned(),
            line,
            why,
        };
        let r: sluice_audit::Record =
            serde_json::from_str(&self.buf).map_err(|e| bad(format!("not an audit record ({e})")))?;
        let time_ms = sluice_audit::parse_time(&r.time)
            .ok_or_else(|| bad(format!("time {:?} is not RFC 3339 UTC", r.time)))?;
        let level = |s: &str| s.parse::<Level>().ok();
        // Kinds this version does not know (a newer gateway's) cannot match a rule here.
        let kinds: Vec<Kind> = r.findings.iter().filter_map(|k| k.parse().ok()).collect();
        let list_level = r
            .scan_level
            .as_deref()
            .and_then(level)
            .or_else(|| level(&r.level))
            .unwrap_or(Level::Restricted);
        let incomplete = r.scan_incomplete || r.ner.as_deref() == Some("over_budget");
        let scan = self
            .scanner
            .rate_kinds(&kinds, list_level, incomplete.then_some(Incomplete::Recorded));
        let route = match (&r.route, r.status) {
            (Some(route), _) => route.clone(),
            (None, _) => "refused".to_owned(),
        };
        let served = r.status == 200 || r.prompt_tokens > 0 || r.completion_tokens > 0;
        let (usage, estimated) = if served {
            (
                Usage {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                },
                false,
            )
        } else {
            (estimate(r.prompt_estimate.unwrap_or(0), r.max_tokens), true)
        };
        Ok(TraceRequest {
            at: format!("{}:{line}", file.display()),
            time_ms,
            id: r.request_id,
            tenant: r.tenant,
            model: r.model,
            max_tokens: r.max_tokens,
            stream: r.stream.unwrap_or(false),
            prompt_estimate: r.prompt_estimate.unwrap_or(r.prompt_tokens),
            declared: r.declared.as_deref().and_then(level),
            prefer: match r.prefer.as_deref() {
                Some("local") => Some(Route::Local),
                Some("cloud") => Some(Route::Cloud),
                _ => None,
            },
            headers: Vec::new(),
            body: Map::new(),
            scan,
            usage,
            estimated,
            recorded: Some(Recorded {
                route,
                rule: r.rule,
                backend: r.backend,
                served_model: r.served_model,
                status: r.status,
                code: r.code,
                cost_usd: r.cost_usd,
                cloud_equivalent_usd: r.cloud_equivalent_usd,
                ttft_ms: r.ttft_ms,
                duration_ms: r.duration_ms,
            }),
        })
    }

    fn request_line(&self, file: &Path, line: u64) -> Result<TraceRequest, TraceError> {
        let bad = |why: String| TraceError::Line {
            file: file.to_owned(),
            line,
            why,
        };
        let l: RequestLine =
            serde_json::from_str(&self.buf).map_err(|e| bad(format!("not a request line ({e})")))?;
        let time_ms = match &l.time {
            Value::String(s) => {
                sluice_audit::parse_time(s).ok_or_else(|| bad(format!("time {s:?} is not RFC 3339 UTC")))?
            }
            Value::Number(n) => n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0).round() as i64)
                .ok_or_else(|| bad("time must be seconds since 1970 or RFC 3339".into()))?,
            _ => {
                return Err(bad(
                    "`time` is required: seconds since 1970, or RFC 3339 UTC".into()
                ));
            }
        };
        let mut headers = HeaderMap::new();
        let mut pairs = Vec::new();
        for (name, value) in &l.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("header {name:?} is not a header name")))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| bad(format!("header {name}'s value is not a header value")))?;
            headers.append(n, v);
            pairs.push((name.to_ascii_lowercase(), value.clone()));
        }
        let bytes = serde_json::to_vec(&l.request).map_err(|e| bad(e.to_string()))?;
        let read = intake::read(&bytes, &headers, &self.scanner).map_err(|r| TraceError::Invalid {
            file: file.to_owned(),
            line,
            why: r.error.message.clone(),
            status: r.error.status.as_u16(),
            code: r.error.code,
        })?;
        let given = l.prompt_tokens.is_some() && l.completion_tokens.is_some();
        let guess = estimate(read.prompt_tokens, read.request.max_tokens);
        let usage = Usage {
            prompt_tokens: l.prompt_tokens.unwrap_or(guess.prompt_tokens),
            completion_tokens: l.completion_tokens.unwrap_or(guess.completion_tokens),
        };
        Ok(TraceRequest {
            at: format!("{}:{line}", file.display()),
            time_ms,
            id: l.id.unwrap_or_else(|| format!("line-{line}")),
            tenant: l.tenant.unwrap_or_else(|| self.default_tenant.clone()),
            model: read.request.model,
            max_tokens: read.request.max_tokens,
            stream: read.request.stream,
            prompt_estimate: read.prompt_tokens,
            declared: read.declared,
            prefer: read.prefer,
            headers: pairs,
            body: read.request.body,
            scan: read.scan,
            usage,
            estimated: !given,
            recorded: None,
        })
    }
}

/// Tokens of a request whose usage is unknown: its estimated prompt, and its `max_tokens` or the
/// policy's assumption for answers.
fn estimate(prompt_tokens: u64, max_tokens: Option<u32>) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens: u64::from(max_tokens.unwrap_or(sluice_policy::rules::DEFAULT_OUTPUT_TOKENS)),
    }
}

/// One line of a request trace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    time: Value,
    request: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

impl Iterator for Trace {
    type Item = Result<TraceRequest, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (file, line) = match self.next_line()? {
            Ok(at) => at,
            Err(e) => return Some(Err(e)),
        };
        Some(match self.kind {
            TraceKind::Audit => self.audit_request(&file, line),
            TraceKind::Requests => self.request_line(&file, line),
        })
    }
}

/// Puts a trace's requests in arrival order. The audit log is written as requests end, so a long request
/// is written after shorter ones that arrived later; each is held until no request read later can have
/// arrived before it (`window_ms`: the longest request of the trace, and a second for the clocks).
/// Memory holds the requests of one window, not the trace.
pub struct Arrivals<I> {
    inner: I,
    window_ms: i64,
    held: std::collections::BinaryHeap<std::cmp::Reverse<Held>>,
    seq: u64,
    /// The latest arrival read so far.
    newest: i64,
    done: bool,
}

pub struct Held(i64, u64, Box<TraceRequest>);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

impl<I> Arrivals<I> {
    pub fn new(inner: I, window_ms: i64) -> Self {
        Self {
            inner,
            window_ms: window_ms.max(0),
            held: std::collections::BinaryHeap::new(),
            seq: 0,
            newest: i64::MIN,
            done: false,
        }
    }
}

impl<I: Iterator<Item = Result<TraceRequest, TraceError>>> Iterator for Arrivals<I> {
    type Item = Result<TraceRequest, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(std::cmp::Reverse(top)) = self.held.peek()
                && (self.done || top.0 <= self.newest.saturating_sub(self.window_ms))
            {
                return self.held.pop().map(|h| Ok(*h.0.2));
            }
            if self.done {
                return None;
            }
            match self.inner.next() {
                None => self.done = true,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(r)) => {
                    self.seq += 1;
                    self.newest = self.newest.max(r.time_ms);
                    self.held
                        .push(std::cmp::Reverse(Held(r.time_ms, self.seq, Box::new(r))));
                }
            }
        }
    }
}
