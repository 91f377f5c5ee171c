//! The `Scanner`: one prefilter pass over the text, validation only where an anchor matched.
//!
//! The prefilter is a single Aho-Corasick automaton (ASCII case ignored, leftmost-longest) over the literal
//! anchors of every enabled detector: the ten digits, `@`, `-----BEGIN `, token prefixes (`AKIA`, `ghp_`,
//! `sk-`, `eyJ`, …), fragments of key-like names (`pass`, `secret`, `token`, `_key`, …) and the tenant's
//! keywords. Each anchor maps to the detectors it can start; a detector looks at a bounded neighbourhood and
//! says where the search resumes (after its finding, after the run of digits or token bytes it read), so
//! no byte is validated twice by the same detector and a scan stays linear in the text. Tenant regular
//! expressions, when there are any, run afterwards: each on its own (the regex engine's literal
//! prefilter makes that nearly free), or, past `MAX_PATTERNS_WITHOUT_SET` of them, as one `RegexSet`
//! pass and then a search by each pattern that matched.

mod build;
mod rate;

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use regex::{Regex, RegexSet};

use crate::config::{Combination, ScanLimits, ScannerConfig, ScannerError};
use crate::detect::credentials;
use crate::detect::rules::{self, Rules};
use crate::detect::{Hit, birth, contact, context, generic, numbers};
use crate::kind::{Kind, KindSet};
use crate::level::Level;
use crate::vocab::Vocabulary;
use crate::{Finding, Incomplete, ModelPass, Recognised, Scan};

use build::{AnchorTable, compile_patterns};
use rate::compile_combinations;

/// Total anchor bytes up to which the prefilter is a DFA (about 2 MiB of tables at that size).
const MAX_DFA_ANCHOR_BYTES: usize = 16 * 1024;

/// Up to this many tenant patterns, each is searched on its own: a pattern with a literal in it (most
/// are) is found by a vectorised literal search far faster than a `RegexSet` pass. Past it, one
/// `RegexSet` pass first says which patterns match at all, so the cost stops growing with their number.
const MAX_PATTERNS_WITHOUT_SET: usize = 8;

/// Most bytes a tenant regular expression may compile to.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// Finds sensitive content in text. Built once from a `ScannerConfig`; cheap to clone and share between
/// threads (`Send + Sync`, one `Arc` inside).
#[derive(Clone)]
pub struct Scanner {
    inner: Arc<Inner>,
}

struct Inner {
    anchors: Option<AhoCorasick>,
    /// The detectors each anchor pattern starts, by pattern id, each with the length of its own anchor
    /// (a pattern also starts the detectors of the shorter anchors it begins with: the prefilter reports
    /// only the longest match at a position).
    actions: Vec<Vec<(Action, usize)>>,
    /// The vendor credential rules.
    rules: &'static Rules,
    on: KindSet,
    levels: [Level; Kind::ALL.len()],
    keyword_rules: Vec<Rule>,
    patterns: Option<Patterns>,
    /// The date pattern of the date-of-birth detector, when it is on.
    date: Option<Regex>,
    vocabulary: Option<Vocabulary>,
    combinations: Vec<Compiled>,
    limits: ScanLimits,
}

struct Compiled {
    name: Arc<str>,
    rule: Combination,
}

struct Rule {
    name: Arc<str>,
    level: Level,
}

struct Patterns {
    /// With many patterns, one pass says which of them match at all.
    set: Option<RegexSet>,
    regexes: Vec<Regex>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Digit,
    At,
    Pem,
    PemBase64,
    Rule(u16),
    SlackWebhook,
    Jwt,
    SecretName,
    BirthCue,
    Keyword(usize),
}

impl Scanner {
    /// Compiles the configuration: the anchor automaton, the keyword lists, the tenant patterns.
    pub fn new(config: &ScannerConfig) -> Result<Self, ScannerError> {
        let mut on = KindSet::all();
        for &kind in &config.disabled {
            on.remove(kind);
        }
        let mut levels = Kind::ALL.map(Kind::default_level);
        for (&kind, &level) in &config.levels {
            if kind.is_tenant_rule() {
                return Err(ScannerError::TenantKindLevel(kind));
            }
            if let Some(slot) = levels.get_mut(kind as usize) {
                *slot = level;
            }
        }

        let mut table = AnchorTable::default();
        if on.has_any(&numbers::KINDS) {
            for d in b'0'..=b'9' {
                table.add(&[d], Action::Digit);
            }
        }
        if on.has(Kind::Email) || on.has(Kind::GenericSecret) {
            table.add(b"@", Action::At);
        }
        if on.has(Kind::PrivateKey) {
            table.add(b"-----BEGIN ", Action::Pem);
            table.add(credentials::PEM_BASE64.as_bytes(), Action::PemBase64);
        }
        let rules = rules::builtin().map_err(|e| ScannerError::Rules(e.to_owned()))?;
        for (i, rule) in rules.rules.iter().enumerate() {
            let Ok(i) = u16::try_from(i) else { break };
            if on.has(rule.kind) || on.has(Kind::CredentialPlaceholder) {
                for prefix in &rule.prefixes {
                    table.add(rules::anchor(prefix), Action::Rule(i));
                }
            }
        }
        if on.has(Kind::SlackWebhook) {
            table.add(b"hooks.slack.com/", Action::SlackWebhook);
        }
        if on.has(Kind::Jwt) {
            table.add(b"eyJ", Action::Jwt);
        }
        if on.has(Kind::GenericSecret) || on.has(Kind::AwsSecretKey) {
            for anchor in generic::ANCHORS {
                table.add(anchor.as_bytes(), Action::SecretName);
            }
        }
        let date = if on.has(Kind::DateOfBirth) {
            for cue in birth::CUES {
                for variant in [cue.to_owned(), cue.to_uppercase()] {
                    table.add(variant.as_bytes(), Action::BirthCue);
                }
            }
            Some(birth::date_regex().map_err(|e| ScannerError::DatePattern(Box::new(e)))?)
        } else {
            None
        };
        let vocabulary = Vocabulary::new(on.has(Kind::Health), on.has(Kind::SpecialCategory))?;
        let combinations = compile_combinations(config)?;
        let mut keyword_rules = Vec::new();
        if on.has(Kind::Keyword) {
            for (list, kw) in config.keywords.iter().enumerate() {
                for (i, word) in kw.words.iter().enumerate() {
                    let word = word.trim();
                    if word.is_empty() {
                        return Err(ScannerError::EmptyKeyword { list, word: i });
                    }
                    // The automaton folds ASCII case only; other letters match as written, all lower or
                    // all upper.
                    for variant in [word.to_owned(), word.to_lowercase(), word.to_uppercase()] {
                        table.add(variant.as_bytes(), Action::Keyword(list));
                    }
                }
                let name = kw.name.clone().unwrap_or_else(|| format!("keywords[{list}]"));
                keyword_rules.push(Rule {
                    name: name.into(),
                    level: kw.level,
                });
            }
        }
        table.close_prefixes();
        let anchors = if table.patterns.is_empty() {
            None
        } else {
            // A DFA is the fastest automaton; past a few thousand anchor bytes (large tenant lists) its
            // memory grows quickly, and the builder's own choice (an NFA) is better.
            let bytes: usize = table.patterns.iter().map(Vec::len).sum();
            let kind = (bytes <= MAX_DFA_ANCHOR_BYTES).then_some(AhoCorasickKind::DFA);
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .kind(kind)
                    .build(&table.patterns)?,
            )
        };
        let patterns = if on.has(Kind::CustomPattern) {
            compile_patterns(config)?
        } else {
            None
        };

        Ok(Self {
            inner: Arc::new(Inner {
                anchors,
                actions: table.actions,
                rules,
                on,
                levels,
                keyword_rules,
                patterns,
                date,
                vocabulary,
                combinations,
                limits: config.limits,
            }),
        })
    }

    /// The level this scanner gives findings of `kind` (for keywords and custom patterns, the level of a
    /// list is in the finding).
    pub fn level(&self, kind: Kind) -> Level {
        self.inner
            .levels
            .get(kind as usize)
            .copied()
            .unwrap_or(Level::Restricted)
    }

    /// Whether the detector for `kind` is on.
    pub fn is_enabled(&self, kind: Kind) -> bool {
        self.inner.on.has(kind)
    }

    /// The limits every scan obeys.
    pub fn limits(&self) -> ScanLimits {
        self.inner.limits
    }

    /// Scans one string. Its findings have `index` 0.
    pub fn scan(&self, text: &str) -> Scan {
        self.scan_all([text])
    }

    /// Scans several strings as one request: findings carry the index of their string, the level is the
    /// highest over all of them, and `max_bytes` bounds their total. Strings are scanned whole or not at
    /// all: once the total would pass the limit, scanning stops and the scan is incomplete and restricted
    /// (the strings before keep their findings).
    pub fn scan_all<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Scan {
        let max_bytes = self.inner.limits.max_bytes;
        let mut findings = Vec::new();
        let mut total = 0usize;
        let mut too_large = false;
        let mut failed = None;
        for (index, text) in texts.into_iter().enumerate() {
            total = total.saturating_add(text.len());
            if too_large || failed.is_some() {
                continue;
            }
            if total > max_bytes {
                too_large = true;
                continue;
            }
            if let Err(e) = self.scan_text(text, index, &mut findings) {
                failed = Some(e);
            }
        }
        findings.sort_unstable_by_key(|f| (f.index, f.range.start, f.range.end));
        let incomplete = if too_large {
            Some(Incomplete::TooLarge {
                bytes: total,
                max_bytes,
            })
        } else {
            failed
        };
        let mut scan = Scan {
            complete: incomplete.is_none(),
            findings,
            level: Level::Public,
            combined: Vec::new(),
            incomplete,
            model: ModelPass::Off,
        };
        self.rate(&mut scan);
        scan
    }

    /// Adds what the personal-data model recognised in `texts` (the strings the scan read, in order)
    /// to a scan and rates it again. A recognised span that overlaps a finding of the scanner's own
    /// detectors is left out (those are validated and name the data more exactly: an IBAN, not a bank
    /// account; a health term, not a surname), as is an identifier with no word near it that says what
    /// it is (an order or error number is no passport), and kinds that are off.
    pub fn merge(&self, scan: &mut Scan, texts: &[&str], recognised: impl IntoIterator<Item = Recognised>) {
        let own = scan.findings.len();
        for r in recognised {
            if !self.is_enabled(r.kind) || r.range.is_empty() {
                continue;
            }
            if r.kind.is_model()
                && !matches!(r.kind, Kind::PersonName | Kind::PostalAddress)
                && !texts
                    .get(r.index)
                    .is_some_and(|t| context::has_identifier_cue(t, r.range.clone()))
            {
                continue;
            }
            let overlaps = scan.findings[..own].iter().any(|f| {
                !f.kind.is_tenant_rule()
                    && f.index == r.index
                    && f.range.start < r.range.end
                    && r.range.start < f.range.end
            });
            if !overlaps {
                scan.findings.push(Finding {
                    kind: r.kind,
                    level: self.level(r.kind),
                    index: r.index,
                    range: r.range,
                    rule: None,
                });
            }
        }
        scan.findings
            .sort_by_key(|f| (f.index, f.range.start, f.range.end));
        self.rate(scan);
    }

    fn scan_text(&self, text: &str, index: usize, out: &mut Vec<Finding>) -> Result<(), Incomplete> {
        let inner = &*self.inner;
        let b = text.as_bytes();
        if let Some(ac) = &inner.anchors {
            let mut pos = 0;
            // The end of the last key-like assignment whose value was read and rejected. A key name found
            // inside that value (`pass=pass=pass=…`) is not read as a new assignment: each byte is read
            // as a value at most once, so the scan stays linear in the text whatever it repeats.
            let mut generic_read = 0;
            let mut phone_checks = numbers::PHONE_CHECKS;
            while pos < b.len() {
                let m = match ac.try_find(Input::new(b).span(pos..b.len())) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return Err(Incomplete::MatcherFailed),
                };
                let s = m.start();
                let mut resume = s + 1;
                // The first vendor rule that matches names the token; the others are not tried.
                let mut token_found = false;
                let mut lists_found: Vec<usize> = Vec::new();
                for &(action, len) in inner
                    .actions
                    .get(m.pattern().as_usize())
                    .map_or(&[][..], Vec::as_slice)
                {
                    let e = s + len;
                    resume = resume.max(e);
                    if action == Action::BirthCue {
                        if whole_word(text, s, e)
                            && let Some(date) = &inner.date
                            && let Some(hit) = birth::after_cue(date, text, e)
                        {
                            self.push(out, index, hit);
                        }
                        continue;
                    }
                    if let Action::Keyword(list) = action {
                        // The longest word of a list that matches here is its finding (`Falcon 9`, not
                        // also `Falcon`); a list's shorter words are tried only when it failed.
                        if !lists_found.contains(&list)
                            && whole_word(text, s, e)
                            && let Some(rule) = inner.keyword_rules.get(list)
                        {
                            lists_found.push(list);
                            out.push(Finding {
                                kind: Kind::Keyword,
                                level: rule.level,
                                index,
                                range: s..e,
                                rule: Some(rule.name.clone()),
                            });
                        }
                        continue;
                    }
                    if (action == Action::SecretName && s < generic_read)
                        || (matches!(action, Action::Rule(_)) && token_found)
                    {
                        continue;
                    }
                    let (hit, next) = self.check(action, b, s, e, &mut generic_read, &mut phone_checks);
                    if let Some(hit) = hit {
                        token_found |= matches!(action, Action::Rule(_));
                        self.push(out, index, hit);
                    }
                    resume = resume.max(next);
                }
                pos = resume.max(s + 1);
            }
        }
        if let Some(v) = &inner.vocabulary {
            v.scan(text, index, |k| self.level(k), out)?;
        }
        if let Some(p) = &inner.patterns {
            let mut search = |re: &Regex, rule: &Rule| {
                for m in re.find_iter(text).filter(|m| !m.is_empty()) {
                    out.push(Finding {
                        kind: Kind::CustomPattern,
                        level: rule.level,
                        index,
                        range: m.range(),
                        rule: Some(rule.name.clone()),
                    });
                }
            };
            match &p.set {
                Some(set) => {
                    for i in set.matches(text).iter() {
                        if let (Some(re), Some(rule)) = (p.regexes.get(i), p.rules.get(i)) {
                            search(re, rule);
                        }
                    }
                }
                None => p
                    .regexes
                    .iter()
                    .zip(&p.rules)
                    .for_each(|(re, rule)| search(re, rule)),
            }
        }
        Ok(())
    }

    /// Runs the detector an anchor at `s..e` stands for. Returns its hit and where the search resumes.
    /// `generic_read` is moved past a key-like assignment's value that was read and rejected.
    fn check(
        &self,
        action: Action,
        b: &[u8],
        s: usize,
        e: usize,
        generic_read: &mut usize,
        phone_checks: &mut u32,
    ) -> (Option<Hit>, usize) {
        let on = self.inner.on;
        let after = |hit: Option<Hit>| {
            let next = hit.map_or(e, |h| h.end);
            (hit, next)
        };
        match action {
            Action::Digit => numbers::scan_number(b, s, on, phone_checks),
            Action::At => after(contact::scan_at(b, s, on)),
            Action::Pem => after(credentials::pem(b, s)),
            Action::PemBase64 => match credentials::pem_base64(b, s) {
                Ok(hit) => (Some(hit), hit.end),
                Err(next) => (None, next),
            },
            Action::SlackWebhook => after(credentials::slack_webhook(b, s, e)),
            Action::Rule(i) => match self.inner.rules.get(i).map(|r| r.check(b, s, e)) {
                Some(Ok(hit)) => (Some(hit.with_rule(i)), hit.end),
                Some(Err(next)) => (None, next),
                None => (None, e),
            },
            Action::Jwt => match credentials::jwt(b, s) {
                Ok(hit) => (Some(hit), hit.end),
                Err(next) => (None, next),
            },
            Action::SecretName => match generic::check(b, s, e, self.inner.rules) {
                Ok(hit) if on.has(hit.kind) => {
                    // A key name inside the value found is not a new assignment either.
                    *generic_read = (*generic_read).max(hit.end);
                    (Some(hit), hit.start)
                }
                // Resume at the value, so that a token format inside it is found and named.
                Ok(hit) => (None, hit.start),
                Err(read) => {
                    *generic_read = (*generic_read).max(read);
                    (None, e)
                }
            },
            // Keywords and birth cues are matched in `scan_text`, which has the text as `str`.
            Action::Keyword(_) | Action::BirthCue => (None, e),
        }
    }

    /// Records a hit. A token format found inside the value of a generic secret replaces that finding,
    /// so the finding is named after the format.
    fn push(&self, out: &mut Vec<Finding>, index: usize, hit: Hit) {
        if !self.inner.on.has(hit.kind) {
            return;
        }
        let finding = Finding {
            kind: hit.kind,
            level: self.level(hit.kind),
            index,
            range: hit.start..hit.end,
            rule: hit
                .rule
                .and_then(|i| self.inner.rules.get(i))
                .map(|r| r.id.clone()),
        };
        match out.last_mut() {
            Some(last)
                if last.kind == Kind::GenericSecret
                    && hit.kind != Kind::GenericSecret
                    && last.index == index
                    && last.range == finding.range =>
            {
                *last = finding;
            }
            _ => out.push(finding),
        }
    }
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Scanner")
            .field("enabled", &inner.on.iter().map(Kind::as_str).collect::<Vec<_>>())
            .field("anchors", &inner.actions.len())
            .field("keyword_lists", &inner.keyword_rules.len())
            .field(
                "patterns",
                &inner.patterns.as_ref().map_or(0, |p| p.regexes.len()),
            )
            .field(
                "vocabulary",
                &inner.vocabulary.as_ref().map_or(0, Vocabulary::len),
            )
            .field("combinations", &inner.combinations.len())
            .field("limits", &inner.limits)
            .finish()
    }
}

/// Whether the match `s..e` is a whole word: no letter, digit or underscore (Unicode) right before or
/// after it, where its own first or last character is one.
pub(crate) fn whole_word(text: &str, s: usize, e: usize) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let Some(found) = text.get(s..e) else { return false };
    let left = !found.chars().next().is_some_and(is_word)
        || !text
            .get(..s)
            .and_then(|t| t.chars().next_back())
            .is_some_and(is_word);
    let right = !found.chars().next_back().is_some_and(is_word)
        || !text.get(e..).and_then(|t| t.chars().next()).is_some_and(is_word);
    left && right
}
