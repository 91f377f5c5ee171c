//! The gateway's tamper-evident audit log: one JSON line per routing decision, each carrying its sequence
//! number (`seq`) and the SHA-256 of the line before it (`prev`), so that editing, removing, inserting or
//! reordering a record breaks a chain that [`verify`] checks, across rotated files too.
//!
//! This crate owns the file format, durable appends ([`AuditLog`], and [`spawn_writer`] for callers that
//! must not wait on the disk), rotation, picking the chain up after a restart or a crash, and verification.
//! It must never see a prompt: a [`Record`] holds what was decided and what it cost, finding kinds without
//! their text, and at most a digest of the prompt that the caller chose to compute. No async, no network;
//! its only thread is the writer of [`spawn_writer`].
//!
//! What the chain cannot show on its own: records removed from the end of the newest file, an edit to the
//! newest record, and records removed from the start of the oldest file (they look like files rotated
//! away). [`VerifyReport`] gives the last `seq` and hash so that a copy kept elsewhere can catch those.

mod log;
mod time;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

pub use log::{AuditError, AuditLog, AuditOptions};
pub use time::{format_time, parse_time};
pub use verify::{Problem, VerifyError, VerifyReport, log_files, verify};
pub use writer::{AuditHandle, spawn_writer};

/// `prev` of the very first record: there is no line before it.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where one finding is in a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub kind: String,
    /// The JSON path of the string (`messages[0].content`).
    pub field: String,
    pub start: usize,
    pub end: usize,
}

/// One routing decision, as the gateway reports it. The writer adds `seq` and `prev` in front of these
/// fields; see [`AuditLog::append`].
///
/// There is deliberately no field for the prompt or the answer: an audit log is kept long and read
/// widely, so it records what happened to a request, never what it said. Fields added later are optional
/// when read, so older logs stay readable (and verifiable: the chain hashes the lines as written).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the decision was made: RFC 3339, UTC, milliseconds ([`format_time`]).
    pub time: String,
    pub decision_id: String,
    pub request_id: String,
    pub tenant: String,
    /// The model the client asked for.
    pub model: String,
    /// The API the request came through, when it is not chat completions (`embeddings`). Absent for chat
    /// completions, and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The model that answered, when it differs or is known only after routing (a substitute, a virtual
    /// model's member).
    pub served_model: Option<String>,
    /// The request's sensitivity level, as the dispatcher enforced it.
    pub level: String,
    /// The level the scanner gave the request's text, before the client's declaration, a tenant's floor
    /// or the policy raised it. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_level: Option<String>,
    /// The scan could not read everything (too large, the personal-data model over its budget), which
    /// makes the request restricted. Absent when the scan was complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scan_incomplete: bool,
    /// The level the client declared in `x-sluice-sensitivity`. Absent when it declared none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<String>,
    /// The route the client preferred in `x-sluice-prefer`. Absent when it gave no hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<String>,
    /// The prompt's estimated size in tokens, as the policy saw it (rules test it). Absent in records
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_estimate: Option<u64>,
    /// Kinds of what the scanner found (`credit_card`, `aws_access_key`, ...), never the matched text.
    pub findings: Vec<String>,
    /// Where each finding is: its kind, the JSON path of its string and its byte range there, never
    /// the text. Absent from the line when nothing was found (and in records written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<Position>,
    /// The combinations of kinds the findings met (`person-with-personal-data`). Absent when none was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub combined: Vec<String>,
    /// Whether the personal-data model read the request: `ran`, `not_needed` or `over_budget`. Absent
    /// when the gateway runs without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ner: Option<String>,
    /// The policy rule that matched.
    pub rule: Option<String>,
    /// `local`, `cloud` or `redacted-cloud`, once a backend was chosen.
    pub route: Option<String>,
    /// For a request sent redacted: how many distinct values of each kind were replaced by placeholders,
    /// never the values. Absent when none was (and in records written before it existed).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub redactions: std::collections::BTreeMap<String, u64>,
    /// The member that served (a worker or a cloud backend), or the last one tried.
    pub backend: Option<String>,
    /// Backends tried first, in order, that were down or full. Absent from the line when none was (and
    /// in records written before it existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Why a request for a cloud model was served by its local substitute (`cloud_unavailable`,
    /// `cloud_rate_limited`, `over_budget`). Absent when it was not (and in records written before it
    /// existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<String>,
    /// The answer's length limit the client set (`max_completion_tokens`, else `max_tokens`). Absent when
    /// it set none (and in records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Whether the client asked for a stream. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Milliseconds from the request's arrival to the answer's first token, as served. Absent when no
    /// token came (a refusal, an error) and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Milliseconds from the request's arrival to its end (the last byte sent, or the client leaving).
    /// Absent for requests refused before any backend was tried, and in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The HTTP status the client got.
    pub status: u16,
    /// `ok`, or the stable error code the client got.
    pub code: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// JSON has no NaN or infinity: a non-finite cost is written as `null` and read back as NaN, so that
    /// a bad price can never make a record unreadable.
    #[serde(deserialize_with = "f64_or_nan")]
    pub cost_usd: f64,
    /// What a cloud API would have charged, for requests served locally.
    pub cloud_equivalent_usd: Option<f64>,
    /// Hex SHA-256 of the prompt, only when the operator turned prompt hashing on (it lets an
    /// investigator match a known prompt without the log holding any). Absent from the line otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_sha256: Option<String>,
}

fn f64_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// A line as written: the chain fields first, so they read at a glance, then the record.
#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(flatten)]
    record: &'a Record,
}

/// A line as read back.
#[derive(Deserialize)]
struct LineIn {
    seq: u64,
    prev: String,
    #[serde(flatten)]
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "parsed so that verification checks every field's type")
    )]
    record: Record,
}

/// Hex SHA-256 of a line's bytes, without its newline: the next record's `prev`.
fn line_hash(line: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(line);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
