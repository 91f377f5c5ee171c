//! The detectors. Each one validates a single candidate that the scanner's prefilter found: it is handed the
//! bytes of the text and the position of an anchor, looks at a bounded neighbourhood, and answers with a
//! `Hit` (a kind and a byte range) or nothing. Detectors never allocate, never copy the bytes they match,
//! and never index out of bounds: every read goes through `at`/`back`, which answer `0` outside the text.
//!
//! Bounded work is what keeps a scan linear: a detector reads at most a fixed distance from its anchor,
//! or, when it reads a run of unbounded length, tells the scanner to resume after that run.

pub(crate) mod birth;
pub(crate) mod contact;
pub(crate) mod context;
pub(crate) mod credentials;
pub(crate) mod generic;
pub(crate) mod numbers;
pub(crate) mod password;
pub(crate) mod rules;

use crate::kind::Kind;

/// A validated candidate: a kind and a byte range of the scanned text, never the bytes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The credential rule that matched (an index into [`rules::Rules`]), for vendor formats.
    pub(crate) rule: Option<u16>,
}

impl Hit {
    pub(crate) fn new(kind: Kind, start: usize, end: usize) -> Self {
        Self {
            kind,
            start,
            end,
            rule: None,
        }
    }

    pub(crate) fn with_rule(self, rule: u16) -> Self {
        Self {
            rule: Some(rule),
            ..self
        }
    }
}

/// The byte at `i`, or `0` past the end.
#[inline]
pub(crate) fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// The byte `k` places before `i`, or `0` before the start.
#[inline]
pub(crate) fn back(b: &[u8], i: usize, k: usize) -> u8 {
    i.checked_sub(k).map_or(0, |j| at(b, j))
}

/// A regular-expression word character: ASCII letter, digit or underscore.
#[inline]
pub(crate) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

#[inline]
pub(crate) fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

/// The end of the run of bytes satisfying `f` that starts at `i`, reading at most `max` bytes.
#[inline]
pub(crate) fn run_end(b: &[u8], i: usize, max: usize, f: impl Fn(u8) -> bool) -> usize {
    let limit = b.len().min(i.saturating_add(max));
    let mut j = i;
    while j < limit && f(at(b, j)) {
        j += 1;
    }
    j
}

/// The start of the run of bytes satisfying `f` that ends at `i` (exclusive), reading at most `max` bytes.
#[inline]
pub(crate) fn run_start(b: &[u8], i: usize, max: usize, f: impl Fn(u8) -> bool) -> usize {
    let limit = i.saturating_sub(max);
    let mut j = i.min(b.len());
    while j > limit && f(back(b, j, 1)) {
        j -= 1;
    }
    j
}

/// The end of the run of ASCII digits starting at `i` (unbounded: callers resume after it).
#[inline]
pub(crate) fn digits_end(b: &[u8], i: usize) -> usize {
    run_end(b, i, usize::MAX, |c| c.is_ascii_digit())
}

/// Whether exactly `n` digits start at `i` (and no more).
#[inline]
pub(crate) fn digits_at(b: &[u8], i: usize, n: usize) -> bool {
    run_end(b, i, n + 1, |c| c.is_ascii_digit()) == i + n
}

/// The value of the decimal digits in `b[i..i + n]` (callers check they are digits).
pub(crate) fn number(b: &[u8], i: usize, n: usize) -> u32 {
    (i..i + n).fold(0u32, |acc, j| {
        acc.wrapping_mul(10)
            .wrapping_add(u32::from(at(b, j).wrapping_sub(b'0')))
    })
}

/// Whether `b[i..]` starts with `lit`, byte for byte.
#[inline]
pub(crate) fn starts_with(b: &[u8], i: usize, lit: &[u8]) -> bool {
    b.get(i..).is_some_and(|rest| rest.starts_with(lit))
}

/// Whether `b[i..]` starts with `lit`, ignoring ASCII case.
#[inline]
pub(crate) fn starts_with_ci(b: &[u8], i: usize, lit: &[u8]) -> bool {
    b.get(i..i.saturating_add(lit.len()))
        .is_some_and(|s| s.eq_ignore_ascii_case(lit))
}

/// Shannon entropy of the bytes, in bits per byte.
pub(crate) fn entropy(bytes: &[u8]) -> f64 {
    entropy_of(&[bytes])
}

/// Shannon entropy of several byte strings taken together, in bits per byte.
pub(crate) fn entropy_of(parts: &[&[u8]]) -> f64 {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total == 0 {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &c in parts.iter().flat_map(|p| p.iter()) {
        counts[usize::from(c)] += 1;
    }
    let n = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A number ends at `e`: not followed by a word character, nor by a decimal or thousands separator and a
/// digit (`4111111111111111.5`).
#[inline]
pub(crate) fn number_ends(b: &[u8], e: usize) -> bool {
    let c = at(b, e);
    !(is_word(c) || (matches!(c, b'.' | b',') && at(b, e + 1).is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_constant_strings() {
        assert_eq!(entropy(b"aaaaaaaa"), 0.0);
        assert!((entropy(b"abcdefgh") - 3.0).abs() < 1e-9);
        assert!((entropy(b"q8Zr4Lm2Xv9Tn1Pw") - 4.0).abs() < 1e-9);
    }

    #[test]
    fn runs_stop_at_the_edges() {
        let b = b"ab123cd";
        assert_eq!(digits_end(b, 2), 5);
        assert_eq!(run_start(b, 5, 10, |c| c.is_ascii_digit()), 2);
        assert_eq!(run_start(b, 2, 10, |c| c.is_ascii_alphabetic()), 0);
        assert_eq!(run_end(b, 5, 1, |c| c.is_ascii_alphabetic()), 6);
        assert_eq!(at(b, 99), 0);
        assert_eq!(back(b, 0, 1), 0);
        assert!(digits_at(b, 2, 3));
        assert!(!digits_at(b, 2, 2));
        assert_eq!(number(b, 2, 3), 123);
    }
}
