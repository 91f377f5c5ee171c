//! Building a scanner's matchers: the anchor table behind the prefilter, and the tenant's patterns.

use std::collections::HashMap;

use regex::{RegexBuilder, RegexSetBuilder};

use super::{Action, MAX_PATTERNS_WITHOUT_SET, PATTERN_SIZE_LIMIT, Patterns, Rule};
use crate::config::{ScannerConfig, ScannerError};

/// Anchor patterns, deduplicated ignoring ASCII case, each with the detectors it starts.
#[derive(Default)]
pub(super) struct AnchorTable {
    pub(super) patterns: Vec<Vec<u8>>,
    pub(super) actions: Vec<Vec<(Action, usize)>>,
    ids: HashMap<Vec<u8>, usize>,
}

impl AnchorTable {
    pub(super) fn add(&mut self, pattern: &[u8], action: Action) {
        let key = pattern.to_ascii_lowercase();
        let id = match self.ids.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.patterns.len();
                self.ids.insert(key.clone(), id);
                self.patterns.push(key);
                self.actions.push(Vec::new());
                id
            }
        };
        if let Some(actions) = self.actions.get_mut(id)
            && !actions.iter().any(|&(a, _)| a == action)
        {
            actions.push((action, pattern.len()));
        }
    }

    /// Gives each pattern the detectors of the shorter patterns it starts with, after its own: at a
    /// position where both match, the leftmost-longest prefilter reports only the longer one.
    pub(super) fn close_prefixes(&mut self) {
        for id in 0..self.patterns.len() {
            let Some(pattern) = self.patterns.get(id).cloned() else {
                continue;
            };
            for len in (1..pattern.len()).rev() {
                let Some(&shorter) = pattern.get(..len).and_then(|p| self.ids.get(p)) else {
                    continue;
                };
                let inherited: Vec<(Action, usize)> = self.actions.get(shorter).cloned().unwrap_or_default();
                if let Some(actions) = self.actions.get_mut(id) {
                    for (action, n) in inherited {
                        // The same detector may run at two lengths (`Falcon` and `Falcon 9`).
                        if !actions.iter().any(|&(a, m)| a == action && m == n) {
                            actions.push((action, n));
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn compile_patterns(config: &ScannerConfig) -> Result<Option<Patterns>, ScannerError> {
    if config.patterns.is_empty() {
        return Ok(None);
    }
    let mut regexes = Vec::with_capacity(config.patterns.len());
    let mut rules = Vec::with_capacity(config.patterns.len());
    for (index, p) in config.patterns.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(ScannerError::EmptyPatternName { index });
        }
        let re = RegexBuilder::new(&p.pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|source| ScannerError::InvalidPattern {
                index,
                name: p.name.clone(),
                pattern: p.pattern.clone(),
                source: Box::new(source),
            })?;
        if re.is_match("") {
            return Err(ScannerError::EmptyMatch {
                index,
                name: p.name.clone(),
                pattern: p.pattern.clone(),
            });
        }
        regexes.push(re);
        rules.push(Rule {
            name: p.name.as_str().into(),
            level: p.level,
        });
    }
    let set = if config.patterns.len() > MAX_PATTERNS_WITHOUT_SET {
        let set = RegexSetBuilder::new(config.patterns.iter().map(|p| &p.pattern))
            .size_limit(PATTERN_SIZE_LIMIT.saturating_mul(config.patterns.len()))
            .build()
            .map_err(|e| ScannerError::PatternSet(Box::new(e)))?;
        Some(set)
    } else {
        None
    };
    Ok(Some(Patterns { set, regexes, rules }))
}
