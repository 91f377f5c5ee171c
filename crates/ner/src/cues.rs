//! The prefilter: where in a text personal data can start. A word is a cue when it has a digit in it
//! (house numbers, postcodes, identifiers), when it is a known given name or surname in any case
//! (`data/names.txt`, from the US Census name lists; see `docs/vocabularies.md`), or when it is
//! capitalised and does not start a sentence (names in prose mostly are). The model then reads only
//! the pieces around cues; text with none is not read at all. A cue never makes a finding by itself.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::LazyLock;

/// Lower case, one a line; `#` starts a comment line.
const NAMES: &str = include_str!("../data/names.txt");

static GAZETTEER: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// How many names the gazetteer holds.
pub fn gazetteer_len() -> usize {
    GAZETTEER.len()
}

/// The byte ranges of the cue words in `text`, in order.
pub fn cues(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    // Whether the next word starts a sentence: at the start, and after `.`, `!`, `?`, `:` or a newline.
    let mut sentence_start = true;
    let mut word_start: Option<usize> = None;
    let mut lower = String::new();
    let mut check = |start: usize, end: usize, first_of_sentence: bool, out: &mut Vec<Range<usize>>| {
        let Some(word) = text.get(start..end) else { return };
        let digit = word.bytes().any(|b| b.is_ascii_digit());
        let capital = word.chars().next().is_some_and(char::is_uppercase) && word != "I";
        lower.clear();
        lower.extend(word.chars().flat_map(char::to_lowercase));
        if digit || (capital && !first_of_sentence) || GAZETTEER.contains(lower.as_str()) {
            out.push(start..end);
        }
    };
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            if word_start.is_none() {
                word_start = Some(i);
            }
            continue;
        }
        if let Some(s) = word_start.take() {
            check(s, i, sentence_start, &mut out);
            sentence_start = false;
        }
        if matches!(c, '.' | '!' | '?' | ':' | '\n' | '"' | '\u{201c}') {
            sentence_start = true;
        }
    }
    if let Some(s) = word_start {
        check(s, text.len(), sentence_start, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        cues(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn digits_names_and_capitals_inside_sentences_are_cues() {
        assert!(gazetteer_len() > 10_000);
        assert_eq!(
            words("Please ask gonzalez about it. Then call Wojciech at 5551234! I agree."),
            ["gonzalez", "Wojciech", "5551234"]
        );
        assert_eq!(
            words("how do i sort a list in place? use the sort method."),
            Vec::<&str>::new()
        );
        assert_eq!(words("Straße 12 in Köln"), ["12", "Köln"]);
    }
}
