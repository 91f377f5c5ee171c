//! Scanner configuration: per-kind levels, disabled detectors, tenant keyword and pattern lists, limits.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::kind::Kind;
use crate::level::Level;

/// How a `Scanner` is built. Every field is optional; the default finds everything at its default level.
///
/// ```yaml
/// levels: { email: internal }
/// disabled: [ip_address]
/// keywords:
///   - { name: code-names, words: [Falcon, Blue Harbor], level: confidential }
/// patterns:
///   - { name: ticket, pattern: 'TCK-[0-9]{6}', level: internal }
/// combinations:
///   - { name: person-with-health, all: [person_name], any: [health, date_of_birth], level: restricted }
/// limits: { max_bytes: 1048576 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScannerConfig {
    /// Level of each kind's findings, over `Kind::default_level`. Not for `keyword` and
    /// `custom_pattern`, whose lists carry their own level.
    pub levels: BTreeMap<Kind, Level>,
    /// Detectors that are off. `keyword` and `custom_pattern` turn off every tenant list.
    pub disabled: BTreeSet<Kind>,
    /// Tenant words (project code names, customer names), matched as whole words ignoring case.
    pub keywords: Vec<KeywordList>,
    /// Tenant regular expressions (Rust `regex` syntax).
    pub patterns: Vec<PatternRule>,
    /// Kinds that together raise a request's level. Absent: [`Combination::defaults`]; `[]`: none.
    pub combinations: Option<Vec<Combination>>,
    /// Bounds on what one scan reads.
    pub limits: ScanLimits,
}

/// A list of words that share a level.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordList {
    /// Shown in findings as `rule`; `keywords[i]` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Words or phrases. Case is ignored for ASCII letters, and for other letters written all in lower or
    /// all in upper case (`Zürich`, `zürich`, `ZÜRICH`).
    pub words: Vec<String>,
    /// Level of a match; restricted unless set, so a list without a level fails closed.
    #[serde(default = "default_rule_level")]
    pub level: Level,
}

/// A named regular expression.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRule {
    /// Shown in findings as `rule`.
    pub name: String,
    /// Rust `regex` syntax; it must not match the empty string.
    pub pattern: String,
    /// Level of a match; restricted unless set.
    #[serde(default = "default_rule_level")]
    pub level: Level,
}

/// Kinds found together in one request raise its level: when every kind in `all` is found and at
/// least one in `any` (when `any` is given), the request is at least `level`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combination {
    /// Shown in explanations and audit records.
    pub name: String,
    #[serde(default)]
    pub all: BTreeSet<Kind>,
    #[serde(default)]
    pub any: BTreeSet<Kind>,
    /// Restricted unless set.
    #[serde(default = "default_rule_level")]
    pub level: Level,
}

impl Combination {
    /// What the scanner combines unless configured otherwise: a person's name together with health or
    /// special-category data, a date of birth, a postal address or an identifier is restricted; so is a
    /// date of birth together with health or special-category data (a birth date and a diagnosis single
    /// out a patient even without the name).
    pub fn defaults() -> Vec<Combination> {
        let set = |kinds: &[Kind]| kinds.iter().copied().collect::<BTreeSet<_>>();
        vec![
            Combination {
                name: "person-with-personal-data".into(),
                all: set(&[Kind::PersonName]),
                any: set(&[
                    Kind::Health,
                    Kind::SpecialCategory,
                    Kind::DateOfBirth,
                    Kind::PostalAddress,
                    Kind::Passport,
                    Kind::DriversLicense,
                    Kind::TaxId,
                    Kind::BankAccount,
                    Kind::RoutingNumber,
                    Kind::GovernmentId,
                    Kind::UsSsn,
                    Kind::UkNino,
                    Kind::EsDni,
                    Kind::Iban,
                    Kind::PaymentCard,
                ]),
                level: Level::Restricted,
            },
            Combination {
                name: "birth-date-with-health".into(),
                all: set(&[Kind::DateOfBirth]),
                any: set(&[Kind::Health, Kind::SpecialCategory]),
                level: Level::Restricted,
            },
        ]
    }

    /// Whether the kinds found (`has`) meet this combination.
    pub(crate) fn met(&self, has: impl Fn(Kind) -> bool) -> bool {
        self.all.iter().all(|&k| has(k)) && (self.any.is_empty() || self.any.iter().any(|&k| has(k)))
    }
}

fn default_rule_level() -> Level {
    Level::Restricted
}

/// Bounds on one scan. Text over them is not scanned, and the scan says so and is restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanLimits {
    /// Most bytes one `scan` or `scan_all` reads, over all its strings.
    pub max_bytes: usize,
}

impl ScanLimits {
    /// 8 MiB.
    pub const DEFAULT_MAX_BYTES: usize = 8 << 20;
}

impl Default for ScanLimits {
    fn default() -> Self {
        Self {
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a `ScannerConfig` cannot be built into a `Scanner`.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error("patterns[{index}] ({name:?}): invalid regular expression {pattern:?}: {source}")]
    InvalidPattern {
        index: usize,
        name: String,
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("patterns[{index}] ({name:?}): {pattern:?} matches the empty string")]
    EmptyMatch {
        index: usize,
        name: String,
        pattern: String,
    },
    #[error("patterns[{index}]: the name is empty")]
    EmptyPatternName { index: usize },
    #[error("keywords[{list}].words[{word}] is empty")]
    EmptyKeyword { list: usize, word: usize },
    #[error("combinations[{index}]: the name is empty")]
    EmptyCombinationName { index: usize },
    #[error("combinations[{index}] ({name:?}): give the kinds that must be found together in all or any")]
    EmptyCombination { index: usize, name: String },
    #[error("levels.{0}: {0} findings take the level of their list, so it cannot be set in levels")]
    TenantKindLevel(Kind),
    #[error("the built-in credential rules: {0}")]
    Rules(String),
    #[error("the built-in date pattern: {0}")]
    DatePattern(#[source] Box<regex::Error>),
    #[error("building the anchor matcher: {0}")]
    Matcher(#[from] aho_corasick::BuildError),
    #[error("combining the custom patterns: {0}")]
    PatternSet(#[source] Box<regex::Error>),
}
