//! Redact-then-cloud, its pure core: replace what was found with placeholders a model keeps intact
//! (`[PERSON_1]`, `[EMAIL_2]`), and put the values back in what the model answers, whole or streamed.
//!
//! Correct by construction, in three ways:
//! - a placeholder never occurs in the request before redaction (its number is skipped if it does), has
//!   one `[` (its first byte) and one `]` (its last), so in a redacted text that is echoed back, every
//!   occurrence of a placeholder is one this request put there: restoring an echo gives the original back;
//! - the same value is always the same placeholder within a request, and every whole-word occurrence of a
//!   replaced value is replaced, found or not, so no mention of it is left in what is sent;
//! - the mapping is the request's alone: it lives in a [`Mapping`], whose `Debug` shows how many values it
//!   holds and never the values, and is dropped with the request.
//!
//! Restoring streamed text holds back only a tail that could still become a placeholder (`[PERS`), until
//! the next chunk completes it or proves it is none; everything else is passed on at once. A placeholder the
//! model changed or made up is left as it is: nothing is guessed.

use std::collections::BTreeMap;
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::{Map, Value};
use sluice_sensitivity::{Finding, Kind};

/// Most rounds of replacing the unions of overlapping values (see [`redact`]).
const MAX_ROUNDS: usize = 8;

/// The word a placeholder names a kind of value by.
pub fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::PersonName => "PERSON",
        Kind::Email => "EMAIL",
        Kind::Phone => "PHONE",
        Kind::PaymentCard => "CARD",
        Kind::Iban | Kind::BankAccount | Kind::RoutingNumber => "ACCOUNT",
        Kind::UsSsn
        | Kind::UkNino
        | Kind::EsDni
        | Kind::Passport
        | Kind::DriversLicense
        | Kind::TaxId
        | Kind::GovernmentId => "ID",
        Kind::PostalAddress => "ADDRESS",
        Kind::DateOfBirth => "DATE",
        Kind::IpAddress | Kind::LocalAddress => "IP",
        Kind::Health => "CONDITION",
        Kind::Keyword => "TERM",
        _ => "VALUE",
    }
}

/// Placeholders and the values they stand for, for one request.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `(placeholder, value)`, in the order the values were first found.
    entries: Vec<(String, String)>,
    /// Every way a value is written in the request that is replaced by its placeholder, with the index of
    /// its entry and its kind: as found, decoded, JSON-escaped (as serde and as Python's `json.dumps`
    /// write it), and for a value of several words or an address, in upper and lower case.
    forms: Vec<(String, usize, Kind)>,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapping({} values)", self.entries.len())
    }
}

impl Mapping {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The placeholder of a value, in any of its forms.
    fn value_placeholder(&self, form: &str) -> Option<&str> {
        let &(_, i, _) = self.forms.iter().find(|(f, _, _)| f == form)?;
        self.entries.get(i).map(|(p, _)| p.as_str())
    }

    /// Adds a value as it was found, with its other forms, unless it is known.
    fn add(&mut self, placeholder: String, found: &str, kind: Kind) {
        let index = self.entries.len();
        let value = decoded(found);
        for form in forms(found, &value) {
            if !self.forms.iter().any(|(f, _, _)| *f == form) {
                self.forms.push((form, index, kind));
            }
        }
        self.entries.push((placeholder, value));
    }

    /// The index of the first string `at` selects in which a replaced value occurs as a whole word.
    pub fn first_mention(&self, texts: &[&str], at: impl Fn(usize) -> bool) -> Option<usize> {
        if self.forms.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(self.forms.iter().map(|(f, _, _)| f))
            .ok()?;
        texts
            .iter()
            .enumerate()
            .filter(|(i, _)| at(*i))
            .find_map(|(i, t)| {
                ac.find_overlapping_iter(t)
                    .any(|m| whole_word(t, m.start(), m.end()))
                    .then_some(i)
            })
    }

    /// The value a placeholder stands for.
    fn value(&self, placeholder: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(p, _)| p == placeholder)
            .map(|(_, v)| v.as_str())
    }

    /// Restores a whole text.
    pub fn restore(&self, text: &str, escape: Escape) -> String {
        let mut r = Restorer::new(self, escape);
        let mut out = r.push(text);
        out.push_str(&r.finish());
        out
    }
}

/// A request's strings with their findings replaced.
#[derive(Debug)]
pub struct Redacted {
    /// The strings, in the order they were given.
    pub texts: Vec<String>,
    pub mapping: Mapping,
    /// How many distinct values of each kind were replaced.
    pub counts: BTreeMap<Kind, usize>,
    /// The byte ranges of each original string that were replaced, in order.
    pub replaced: Vec<Vec<std::ops::Range<usize>>>,
}

/// Replaces the given findings (their `index` is the position of their string in `texts`), and every
/// other whole-word occurrence of their values in any of the strings, with placeholders. Overlapping findings are replaced as
/// one value, named after the longest of them. Findings whose range is not in their string are skipped.
pub fn redact<'f>(texts: &[&str], findings: impl IntoIterator<Item = &'f Finding>) -> Redacted {
    redact_except(texts, findings, &[])
}

/// [`redact`], leaving alone the strings whose index is `true` in `protected` (object keys, roles, model
/// names: what the API reads rather than the model). A value found in one of them stays there, in plain
/// sight of the scan that checks what is sent.
pub fn redact_except<'f>(
    texts: &[&str],
    findings: impl IntoIterator<Item = &'f Finding>,
    protected: &[bool],
) -> Redacted {
    let is_protected = |i: usize| protected.get(i).copied().unwrap_or(false);
    // Spans per string, merged where they overlap: (start, end, kind of the longest).
    let mut spans: Vec<Vec<(usize, usize, Kind)>> = vec![Vec::new(); texts.len()];
    for f in findings {
        if is_protected(f.index) {
            continue;
        }
        let Some(text) = texts.get(f.index) else { continue };
        if f.range.is_empty() || text.get(f.range.clone()).is_none() {
            continue;
        }
        if let Some(list) = spans.get_mut(f.index) {
            list.push((f.range.start, f.range.end, f.kind));
        }
    }
    let mut values: Vec<(String, Kind)> = Vec::new();
    let mut found: Vec<Vec<(usize, usize, Kind)>> = vec![Vec::new(); texts.len()];
    let known = |values: &[(String, Kind)], v: &str| {
        let d = decoded(v);
        values.iter().any(|(k, _)| *k == v || decoded(k) == d)
    };
    for (i, list) in spans.iter_mut().enumerate() {
        list.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
        let mut merged: Vec<(usize, usize, Kind)> = Vec::new();
        for &(s, e, kind) in list.iter() {
            match merged.last_mut() {
                Some(last) if s < last.1 => {
                    if e - s > last.1 - last.0 {
                        last.2 = kind;
                    }
                    last.1 = last.1.max(e);
                }
                _ => merged.push((s, e, kind)),
            }
        }
        for &(s, e, kind) in &merged {
            if let Some(v) = texts.get(i).and_then(|t| t.get(s..e))
                && !known(&values, v)
            {
                values.push((v.to_owned(), kind));
            }
        }
        if let Some(slot) = found.get_mut(i) {
            *slot = merged;
        }
    }
    let mut mapping = Mapping::default();
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut numbers: BTreeMap<&'static str, usize> = BTreeMap::new();
    // Values found are counted; the unions of overlapping ones (below) are not values of their own.
    let mut add = |mapping: &mut Mapping, value: &str, kind: Kind, counted: bool| {
        let l = label(kind);
        let n = numbers.entry(l).or_insert(0);
        let placeholder = loop {
            *n += 1;
            let p = format!("[{l}_{n}]");
            if !texts.iter().any(|t| t.contains(&p)) {
                break p;
            }
        };
        if counted {
            *counts.entry(kind).or_insert(0) += 1;
        }
        mapping.add(placeholder, value, kind);
    };
    for (value, kind) in &values {
        if mapping.value_placeholder(value).is_none() {
            add(&mut mapping, value, *kind, true);
        }
    }
    // Where occurrences of two values overlap, their union is replaced as a value of its own, and its
    // other occurrences too: again until no new union appears (a few rounds at most, and only for
    // values that run into each other).
    let mut plan = cuts(texts, &found, &mapping, protected);
    for round in 0..=MAX_ROUNDS {
        let mut added = false;
        for (i, list) in plan.iter().enumerate() {
            for &(s, e, kind) in list {
                if let Some(v) = texts.get(i).and_then(|t| t.get(s..e))
                    && mapping.value_placeholder(v).is_none()
                {
                    add(&mut mapping, v, kind, false);
                    added = true;
                }
            }
        }
        // The last round only names what the plan replaces; it does not plan again.
        if !added || round == MAX_ROUNDS {
            break;
        }
        plan = cuts(texts, &found, &mapping, protected);
    }
    let texts = texts
        .iter()
        .zip(&plan)
        .map(|(t, list)| {
            let mut out = String::with_capacity(t.len());
            let mut last = 0;
            for &(s, e, _) in list {
                let (Some(before), Some(value)) = (t.get(last..s), t.get(s..e)) else {
                    continue;
                };
                out.push_str(before);
                out.push_str(mapping.value_placeholder(value).unwrap_or_default());
                last = e;
            }
            out.push_str(t.get(last..).unwrap_or_default());
            out
        })
        .collect();
    let replaced = plan
        .iter()
        .map(|list| list.iter().map(|&(s, e, _)| s..e).collect())
        .collect();
    Redacted {
        texts,
        mapping,
        counts,
        replaced,
    }
}

/// The spans of each string to replace: its found spans, and every whole-word occurrence of a value in
/// it; spans that overlap are merged into one (named after the kind of the first value in it).
fn cuts(
    texts: &[&str],
    found: &[Vec<(usize, usize, Kind)>],
    mapping: &Mapping,
    protected: &[bool],
) -> Vec<Vec<(usize, usize, Kind)>> {
    let ac = (!mapping.is_empty())
        .then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(mapping.forms.iter().map(|(f, _, _)| f))
                .ok()
        })
        .flatten();
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut spans: Vec<(usize, usize, Kind)> = found.get(i).cloned().unwrap_or_default();
            if let Some(ac) = &ac
                && !protected.get(i).copied().unwrap_or(false)
            {
                for m in ac.find_overlapping_iter(t) {
                    let (s, e) = (m.start(), m.end());
                    if whole_word(t, s, e) {
                        let kind = mapping
                            .forms
                            .get(m.pattern().as_usize())
                            .map_or(Kind::CustomPattern, |&(_, _, k)| k);
                        spans.push((s, e, kind));
                    }
                }
            }
            spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
            let mut merged: Vec<(usize, usize, Kind)> = Vec::new();
            for (s, e, kind) in spans {
                match merged.last_mut() {
                    Some(last) if s < last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e, kind)),
                }
            }
            merged
        })
        .collect()
}

/// A value as written in a string that is JSON text (a tool call's arguments, a tool's JSON answer):
/// `Jos\u00e9` is `José`. Anything else is itself.
fn decoded(found: &str) -> String {
    if found.contains('\\')
        && let Ok(v) = serde_json::from_str::<String>(&format!("\"{found}\""))
    {
        return v;
    }
    found.to_owned()
}

/// The ways a value may be written elsewhere in a request: as found, decoded, JSON-escaped (serde's way
/// and the ASCII-only way of Python's `json.dumps`), and for a value of several words or an e-mail
/// address, all in upper or all in lower case. Never empty strings, each once.
fn forms(found: &str, value: &str) -> Vec<String> {
    let quoted = serde_json::Value::String(value.to_owned()).to_string();
    let escaped = quoted.get(1..quoted.len() - 1).unwrap_or_default().to_owned();
    let mut ascii = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    let mut all = vec![found.to_owned(), value.to_owned(), escaped, ascii];
    if value.contains(char::is_whitespace) || value.contains('@') {
        all.push(value.to_uppercase());
        all.push(value.to_lowercase());
    }
    let mut out: Vec<String> = Vec::with_capacity(all.len());
    for f in all {
        if !f.is_empty() && !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// Whether `t[s..e]` is not part of a longer word: no letter or digit right before or after it where its
/// own first or last character is one.
fn whole_word(t: &str, s: usize, e: usize) -> bool {
    let word = |c: char| c.is_alphanumeric();
    let Some(v) = t.get(s..e) else { return false };
    let before = t.get(..s).and_then(|b| b.chars().next_back());
    let after = t.get(e..).and_then(|a| a.chars().next());
    let left = !v.chars().next().is_some_and(word) || !before.is_some_and(word);
    let right = !v.chars().next_back().is_some_and(word) || !after.is_some_and(word);
    left && right
}

/// A request body with its strings replaced by `texts`, taken in the order `sluice_policy::strings`
/// numbers them (each object key, then its value, depth first): the body that is sent once redacted.
/// `None` when `texts` does not hold one string for each of the body's.
pub fn rewrite_body(body: &Map<String, Value>, texts: &[String]) -> Option<Map<String, Value>> {
    fn value(v: &Value, next: &mut dyn Iterator<Item = &String>) -> Option<Value> {
        Some(match v {
            Value::String(_) => Value::String(next.next()?.clone()),
            Value::Array(items) => Value::Array(items.iter().map(|i| value(i, next)).collect::<Option<_>>()?),
            Value::Object(map) => Value::Object(object(map, next)?),
            other => other.clone(),
        })
    }
    fn object(
        map: &Map<String, Value>,
        next: &mut dyn Iterator<Item = &String>,
    ) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for v in map.values() {
            let key = next.next()?.clone();
            let v = value(v, next)?;
            out.insert(key, v);
        }
        Some(out)
    }
    let mut next = texts.iter();
    let out = object(body, &mut next)?;
    next.next().is_none().then_some(out)
}

/// How a restored value is written into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As it is: message content.
    None,
    /// As the inside of a JSON string: tool-call arguments, which are JSON text.
    JsonString,
}

/// Restores placeholders in text that arrives in pieces.
#[derive(Debug)]
pub struct Restorer<'m> {
    mapping: &'m Mapping,
    held: Held,
}

impl<'m> Restorer<'m> {
    pub fn new(mapping: &'m Mapping, escape: Escape) -> Self {
        Self {
            mapping,
            held: Held::new(escape),
        }
    }

    /// The text that can be passed on now: `chunk` after what was held, with every complete placeholder
    /// restored, less a tail that is the start of a placeholder.
    pub fn push(&mut self, chunk: &str) -> String {
        self.held.push(self.mapping, chunk)
    }

    /// What is still held at the end of the text: it was no placeholder, and is passed on as it is.
    pub fn finish(&mut self) -> String {
        self.held.finish()
    }
}

/// The state of one restored text (a message's content, one tool call's arguments): the tail held back
/// because it could still become a placeholder. The mapping is passed to each call.
#[derive(Debug, Default)]
pub struct Held {
    escape: Option<Escape>,
    held: String,
}

impl Held {
    pub fn new(escape: Escape) -> Self {
        Self {
            escape: Some(escape),
            held: String::new(),
        }
    }

    /// See [`Restorer::push`].
    pub fn push(&mut self, mapping: &Mapping, chunk: &str) -> String {
        if mapping.is_empty() {
            return chunk.to_owned();
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(chunk);
        let mut out = String::with_capacity(buf.len());
        let mut i = 0;
        while let Some(j) = buf.get(i..).and_then(|rest| rest.find('[')).map(|k| i + k) {
            out.push_str(buf.get(i..j).unwrap_or_default());
            let rest = buf.get(j..).unwrap_or_default();
            let close = rest.find(']');
            if let Some(end) = close
                && let Some(value) = mapping.value(&rest[..=end])
            {
                self.write(&mut out, value);
                i = j + end + 1;
                continue;
            }
            if close.is_none()
                && mapping
                    .entries
                    .iter()
                    .any(|(p, _)| p.len() > rest.len() && p.starts_with(rest))
            {
                self.held = rest.to_owned();
                return out;
            }
            out.push('[');
            i = j + 1;
        }
        out.push_str(buf.get(i..).unwrap_or_default());
        out
    }

    /// See [`Restorer::finish`].
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Whether a tail is held.
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    fn write(&self, out: &mut String, value: &str) {
        match self.escape.unwrap_or(Escape::None) {
            Escape::None => out.push_str(value),
            Escape::JsonString => {
                let quoted = serde_json::Value::String(value.to_owned()).to_string();
                out.push_str(quoted.get(1..quoted.len() - 1).unwrap_or_default());
            }
        }
    }
}

pub mod answer;
pub mod proof;

#[cfg(test)]
mod tests;
