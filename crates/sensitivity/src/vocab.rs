//! The health and special-category vocabularies (`data/health.txt`, `data/special.txt`; sources and
//! curation in `docs/vocabularies.md`), matched as whole words ignoring case, in one Aho-Corasick pass
//! of their own, so the thousands of terms do not slow the main prefilter's automaton.

use std::collections::HashSet;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, Input, MatchKind, StartKind};

use crate::kind::Kind;
use crate::{Finding, Incomplete, Level};

/// One term per line, lower case; `#` starts a comment line.
const HEALTH: &str = include_str!("../data/health.txt");
/// `category<TAB>term` per line; `#` starts a comment line.
const SPECIAL: &str = include_str!("../data/special.txt");

/// What one term is: its kind, and for a special category its name.
struct Term {
    kind: Kind,
    category: Option<Arc<str>>,
}

pub(crate) struct Vocabulary {
    /// Leftmost-longest: the fast pass.
    matcher: AhoCorasick,
    /// Every match (standard semantics), only inside a longest match that is not a whole word.
    inside: AhoCorasick,
    terms: Vec<Term>,
}

impl Vocabulary {
    /// The vocabularies of the kinds that are on; `None` when both are off.
    pub(crate) fn new(health: bool, special: bool) -> Result<Option<Self>, aho_corasick::BuildError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut terms = Vec::new();
        let mut seen = HashSet::new();
        let mut add = |term: &str, kind: Kind, category: Option<&Arc<str>>| {
            let term = term.trim();
            if term.is_empty() {
                return;
            }
            // The automaton folds ASCII case only; other letters match as written, all lower or all upper.
            for variant in [term.to_lowercase(), term.to_uppercase()] {
                if seen.insert(variant.to_ascii_lowercase()) {
                    patterns.push(variant);
                    terms.push(Term {
                        kind,
                        category: category.cloned(),
                    });
                }
            }
        };
        if health {
            for term in lines(HEALTH) {
                add(term, Kind::Health, None);
            }
        }
        if special {
            let mut categories: Vec<Arc<str>> = Vec::new();
            for line in lines(SPECIAL) {
                let Some((category, term)) = line.split_once('\t') else {
                    continue;
                };
                let category = match categories.iter().find(|c| &***c == category.trim()) {
                    Some(c) => c.clone(),
                    None => {
                        let c: Arc<str> = category.trim().into();
                        categories.push(c.clone());
                        c
                    }
                };
                add(term, Kind::SpecialCategory, Some(&category));
            }
        }
        if patterns.is_empty() {
            return Ok(None);
        }
        // Anchored searches from word starts only (a term is a whole word, so it can start nowhere
        // else): each dies within a few bytes in the hot states near the root, where one unanchored
        // pass over every byte costs about twice as much.
        let matcher = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .start_kind(StartKind::Anchored)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)?;
        let inside = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&patterns)?;
        Ok(Some(Self {
            matcher,
            inside,
            terms,
        }))
    }

    /// The terms in `text` (string `index`), each at the level of its kind.
    pub(crate) fn scan(
        &self,
        text: &str,
        index: usize,
        level: impl Fn(Kind) -> Level,
        out: &mut Vec<Finding>,
    ) -> Result<(), Incomplete> {
        let mut push = |s: usize, e: usize, pattern: usize| {
            if let Some(term) = self.terms.get(pattern) {
                out.push(Finding {
                    kind: term.kind,
                    level: level(term.kind),
                    index,
                    range: s..e,
                    rule: term.category.clone(),
                });
            }
        };
        let b = text.as_bytes();
        // A byte that can be part of a word: ASCII letters, digits and `_`, and any byte of a
        // multi-byte character (letters of other scripts; `whole_word` checks exactly).
        let wordish = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        let mut pos = 0;
        while pos < b.len() {
            // The next word start at or after `pos`.
            let Some(s) = (pos..b.len())
                .find(|&i| wordish(b[i]) && (i == 0 || !wordish(b[i - 1])) && text.is_char_boundary(i))
            else {
                break;
            };
            let input = Input::new(text).span(s..b.len()).anchored(Anchored::Yes);
            let m = match self.matcher.try_find(input) {
                Ok(Some(m)) => m,
                Ok(None) => {
                    pos = s + 1;
                    continue;
                }
                Err(_) => return Err(Incomplete::MatcherFailed),
            };
            let (s, e) = (m.start(), m.end());
            pos = e.max(s + 1);
            if crate::scanner::whole_word(text, s, e) {
                push(s, e, m.pattern().as_usize());
                continue;
            }
            // The longest term here is not a whole word ("hiv positive" in "HIV positively"): the
            // longest shorter ones inside it that are, none overlapping.
            let mut whole: Vec<(usize, usize, usize)> = Vec::new();
            for m in self
                .inside
                .try_find_overlapping_iter(Input::new(text).span(s..e))
                .map_err(|_| Incomplete::MatcherFailed)?
            {
                if crate::scanner::whole_word(text, m.start(), m.end()) {
                    whole.push((m.start(), m.end(), m.pattern().as_usize()));
                }
            }
            whole.sort_unstable_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
            let mut next = 0;
            for (s, e, pattern) in whole {
                if s >= next {
                    next = e;
                    push(s, e, pattern);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.terms.len()
    }
}

/// The lines of a list that are not comments or blank.
fn lines(list: &str) -> impl Iterator<Item = &str> {
    list.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
}
