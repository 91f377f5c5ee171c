//! What a scan's findings add up to: the combinations they meet, the level, and what a name would add.

use super::{Compiled, Scanner};
use crate::config::{Combination, ScannerConfig, ScannerError};
use crate::kind::{Kind, KindSet};
use crate::level::Level;
use crate::{Combined, Finding, Incomplete, ModelPass, Scan};

impl Scanner {
    /// What a combination cannot do as configured, by its index in `combinations`: one that names a
    /// kind that is off can never be met (or, in `any`, only through its other kinds); one whose level
    /// is not above every level of its kinds never raises anything.
    pub fn combination_warnings(&self) -> Vec<(usize, String)> {
        let inner = &*self.inner;
        let mut out = Vec::new();
        for (i, c) in inner.combinations.iter().enumerate() {
            let off = |k: &&Kind| !inner.on.has(**k);
            if let Some(k) = c.rule.all.iter().find(off) {
                out.push((i, format!("`{}` is never met: {k} is disabled", c.name)));
                continue;
            }
            if !c.rule.any.is_empty() && c.rule.any.iter().all(|k| off(&k)) {
                out.push((
                    i,
                    format!("`{}` is never met: every kind in `any` is disabled", c.name),
                ));
                continue;
            }
            let highest = c
                .rule
                .all
                .iter()
                .map(|&k| self.level(k))
                .max()
                .unwrap_or(Level::Public);
            if c.rule.level <= highest {
                out.push((
                    i,
                    format!(
                        "`{}` never raises the level: {} is already at least {}",
                        c.name,
                        c.rule
                            .all
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(" and "),
                        c.rule.level
                    ),
                ));
            }
        }
        out
    }

    /// The kinds the combinations name.
    pub fn combination_kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.inner
            .combinations
            .iter()
            .flat_map(|c| c.rule.all.iter().chain(&c.rule.any).copied())
    }

    /// Whether a person's name, added to what `scan` found, would raise its level: the scan found
    /// something a name combines with (a diagnosis, a birth date, an identifier).
    pub fn name_would_raise(&self, scan: &Scan) -> bool {
        let mut found = KindSet::default();
        for f in &scan.findings {
            found.insert(f.kind);
        }
        let mut with_name = found;
        with_name.insert(Kind::PersonName);
        let level = |set: KindSet| {
            let own = scan.findings.iter().map(|f| f.level);
            let name = set.has(Kind::PersonName).then(|| self.level(Kind::PersonName));
            let combined = self
                .inner
                .combinations
                .iter()
                .filter(|c| c.rule.met(|k| set.has(k)))
                .map(|c| c.rule.level);
            own.chain(name).chain(combined).max().unwrap_or(Level::Public)
        };
        level(with_name) > level(found).max(self.level(Kind::PersonName))
    }

    /// A scan rebuilt from a record of what another scan found, as this scanner would rate it: one
    /// finding per kind (at no position: index 0, empty range) at this scanner's level for the kind, or
    /// at `list_level` for a keyword list or a custom pattern (their levels are their own), the
    /// combinations this scanner's rules meet, and restricted when the original scan was incomplete.
    /// For replaying recorded decisions, which keep kinds and never text.
    pub fn rate_kinds(&self, kinds: &[Kind], list_level: Level, incomplete: Option<Incomplete>) -> Scan {
        let findings = kinds
            .iter()
            .map(|&kind| Finding {
                kind,
                level: if kind.is_tenant_rule() {
                    list_level
                } else {
                    self.level(kind)
                },
                index: 0,
                range: 0..0,
                rule: None,
            })
            .collect();
        let mut scan = Scan {
            findings,
            level: Level::Public,
            combined: Vec::new(),
            complete: incomplete.is_none(),
            incomplete,
            model: ModelPass::Off,
        };
        self.rate(&mut scan);
        scan
    }

    /// The level of a scan: the highest of its findings and of the combinations they meet, and
    /// restricted whenever it is incomplete.
    pub(super) fn rate(&self, scan: &mut Scan) {
        let mut found = KindSet::default();
        for f in &scan.findings {
            found.insert(f.kind);
        }
        scan.combined = self
            .inner
            .combinations
            .iter()
            .filter(|c| c.rule.met(|k| found.has(k)))
            .map(|c| Combined {
                name: c.name.clone(),
                level: c.rule.level,
            })
            .collect();
        let found_level = scan.findings.iter().map(|f| f.level);
        let combined_level = scan.combined.iter().map(|c| c.level);
        scan.level = if scan.incomplete.is_some() {
            Level::Restricted
        } else {
            found_level.chain(combined_level).max().unwrap_or(Level::Public)
        };
        scan.complete = scan.incomplete.is_none();
    }
}

pub(super) fn compile_combinations(config: &ScannerConfig) -> Result<Vec<Compiled>, ScannerError> {
    let rules = config.combinations.clone().unwrap_or_else(Combination::defaults);
    rules
        .into_iter()
        .enumerate()
        .map(|(index, rule)| {
            if rule.name.trim().is_empty() {
                return Err(ScannerError::EmptyCombinationName { index });
            }
            if rule.all.is_empty() && rule.any.is_empty() {
                return Err(ScannerError::EmptyCombination {
                    index,
                    name: rule.name,
                });
            }
            Ok(Compiled {
                name: rule.name.trim().into(),
                rule,
            })
        })
        .collect()
}
