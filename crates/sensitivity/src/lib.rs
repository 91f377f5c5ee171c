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

use std::ops::Range;
use std::sync::Arc;

pub use config::{KeywordList, PatternRule, ScanLimits, ScannerConfig, ScannerError};
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
    /// The highest level of the findings, `Public` when there are none, and `Restricted` whenever the scan
    /// is incomplete: what was not read cannot be cleared.
    pub level: Level,
    /// Whether every byte was scanned.
    pub complete: bool,
    /// Why the scan is incomplete, when it is.
    pub incomplete: Option<Incomplete>,
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

/// Why some text was not scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incomplete {
    /// The text is longer than `ScanLimits::max_bytes`.
    #[error("{bytes} bytes of text is over the scanning limit of {max_bytes} bytes")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The prefilter refused the search (it cannot for the configurations `Scanner::new` builds).
    #[error("the prefilter could not search the text")]
    MatcherFailed,
}

#[cfg(test)]
mod tests;
