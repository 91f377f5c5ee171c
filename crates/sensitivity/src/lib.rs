//! The content scanner: finds what must not leave the building in the text of a request (credentials and
//! private keys, payment cards, bank accounts, national identifiers, contact data, and each tenant's own
//! keywords and patterns) and rates it on the `Level` scale that backend clearances use. This crate owns
//! the detectors and their validation (Luhn, mod 97, check letters, entropy), the per-kind levels, and
//! the fail-closed rule that text it could not scan whole is restricted. It is a pure leaf: no IO, no
//! async, no network, no logging, no global state. It must never log, store or return the text it
//! matched: a finding is a kind, a level and a byte range into the caller's string, and nothing here
//! copies the matched bytes.
//!
//! ```
//! use sluice_sensitivity::{Kind, Level, Scanner, ScannerConfig};
//!
//! let scanner = Scanner::new(&ScannerConfig::default())?;
//! let text = "Bill card 4111 1111 1111 1111, receipt to jo@example.com";
//! let scan = scanner.scan(text);
//! assert_eq!(scan.level, Level::Restricted);
//! assert_eq!(scan.kinds(), [Kind::PaymentCard, Kind::Email]);
//! assert_eq!(&text[scan.findings[1].range.clone()], "jo@example.com");
//! # Ok::<(), sluice_sensitivity::ScannerError>(())
//! ```

mod config;
mod detect;
mod kind;
mod level;
mod scanner;
mod vocab;

use std::ops::Range;
use std::sync::Arc;

pub use config::{Combination, KeywordList, PatternRule, ScanLimits, ScannerConfig, ScannerError};
pub use kind::{Kind, UnknownKind};
pub use level::{Level, UnknownLevel};
pub use scanner::Scanner;

use kind::KindSet;

/// One thing found: what, how sensitive, and where. Never the matched text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub level: Level,
    /// Which of the strings given to `Scanner::scan_all` it is in (0 for `Scanner::scan`).
    pub index: usize,
    /// Byte range in that string, on `char` boundaries. For assignments (`api_key = "…"`) and URLs
    /// (`scheme://user:password@host`) it covers the secret value only.
    pub range: Range<usize>,
    /// For keywords and custom patterns, the name of the list or pattern.
    pub rule: Option<Arc<str>>,
}

/// The outcome of scanning a request's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// In order of string index, then position.
    pub findings: Vec<Finding>,
    /// The highest level of the findings and of the combinations they meet, `Public` when there are
    /// none, and `Restricted` whenever the scan is incomplete: what was not read cannot be cleared.
    pub level: Level,
    /// The combinations the findings meet (a name with a diagnosis, ...).
    pub combined: Vec<Combined>,
    /// Whether every byte was scanned.
    pub complete: bool,
    /// Why the scan is incomplete, when it is.
    pub incomplete: Option<Incomplete>,
    /// Whether the personal-data model read the text.
    pub model: ModelPass,
}

impl Scan {
    /// The distinct kinds found, in the order of `Kind`.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut set = KindSet::default();
        for f in &self.findings {
            set.insert(f.kind);
        }
        set.iter().collect()
    }
}

impl Scan {
    /// Marks the scan incomplete (and so restricted), for a reason found outside the scanner: the
    /// personal-data model could not read the text within its budget.
    pub fn fail_closed(&mut self, why: Incomplete) {
        if self.incomplete.is_none() {
            self.incomplete = Some(why);
        }
        self.complete = false;
        self.level = Level::Restricted;
    }
}

/// A combination of kinds a scan met, and the level it gives the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    pub name: Arc<str>,
    pub level: Level,
}

/// A span the personal-data model recognised, in this crate's vocabulary, to merge into a scan
/// ([`Scanner::merge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recognised {
    pub kind: Kind,
    /// Which string it is in, as in [`Finding::index`].
    pub index: usize,
    pub range: Range<usize>,
}

/// Whether the personal-data model read a request's text, and if not, why not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModelPass {
    /// No model is configured.
    #[default]
    Off,
    /// Its answer could not change where the request may go (already restricted, or bound only for
    /// backends cleared for restricted data).
    NotNeeded,
    /// It read every string (`cached` of them were answered from the cache of earlier strings).
    Ran { strings: usize, cached: usize },
    /// It could not read the text within its budget: the scan is incomplete and restricted.
    OverBudget,
}

impl ModelPass {
    /// A stable snake_case name: `off`, `not_needed`, `ran`, `over_budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::NotNeeded => "not_needed",
            Self::Ran { .. } => "ran",
            Self::OverBudget => "over_budget",
        }
    }
}

/// Why some text was not scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incomplete {
    /// The text is longer than `ScanLimits::max_bytes`.
    #[error("{bytes} bytes of text is over the scanning limit of {max_bytes} bytes")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The prefilter refused the search (it cannot for the configurations `Scanner::new` builds).
    #[error("the prefilter could not search the text")]
    MatcherFailed,
    /// The text is longer than the personal-data model's budget.
    #[error("{bytes} bytes of text is over the personal-data model's limit of {max_bytes} bytes")]
    ModelTooLarge { bytes: usize, max_bytes: usize },
    /// The personal-data model did not finish within its time budget.
    #[error("the personal-data model did not finish within {millis} ms")]
    ModelTimedOut { millis: u64 },
    /// The personal-data model failed on the text.
    #[error("the personal-data model failed: {0}")]
    ModelFailed(String),
    /// Inputs given as token ids (an embeddings request's `input`): what they say cannot be read.
    #[error("{inputs} inputs are token ids, which the scanner cannot read")]
    TokenIds { inputs: usize },
    /// A scan rebuilt from a record that says the original was incomplete ([`Scanner::rate_kinds`]).
    #[error("the recorded scan was incomplete")]
    Recorded,
}

/// The built-in vendor credential rules (`data/credentials.yaml`), in file order: each rule's id (what a
/// finding's `rule` names), its vendor and the kind of its findings.
pub fn credential_rules() -> Result<Vec<(&'static str, &'static str, Kind)>, ScannerError> {
    let rules = detect::rules::builtin().map_err(|e| ScannerError::Rules(e.to_owned()))?;
    Ok(rules
        .rules
        .iter()
        .map(|r| (&*r.id, r.vendor.as_str(), r.kind))
        .collect())
}

#[cfg(test)]
mod tests;
