//! Dates of birth: a date written shortly after a birth cue ("DOB", "born", "date of birth", "geb.",
//! "né le", "nacido el", ...). The cue is the anchor; the date is looked for in the next few dozen
//! bytes only, so the cost is bounded per cue and nothing is read when no cue is present. A date alone
//! (an invoice date, a deadline) is not a date of birth.

use regex::Regex;

use super::Hit;
use crate::kind::Kind;

/// Cue words, lower case, each matched as a whole word ignoring case. English, German, French,
/// Spanish, Italian, Dutch, Portuguese, Polish and Swedish.
pub(crate) const CUES: [&str; 31] = [
    "dob",
    "d.o.b.",
    "born",
    "birth",
    "birthday",
    "birthdate",
    "date of birth",
    "geb.",
    "geboren",
    "geburtsdatum",
    "geburtstag",
    "né",
    "née",
    "ne le",
    "date de naissance",
    "fecha de nacimiento",
    "nacido",
    "nacida",
    "f. nac.",
    "data di nascita",
    "nato",
    "nata",
    "geboortedatum",
    "nascido",
    "nascida",
    "data de nascimento",
    "urodzony",
    "urodzona",
    "data urodzenia",
    "född",
    "födelsedatum",
];

/// How far after a cue the date may start, in bytes ("born on the 4th of March 1975": "on the ").
const MAX_GAP: usize = 24;
/// How far after a cue a date is looked for at all.
const WINDOW: usize = 80;

const MONTHS: &str = "jan(?:uary|uar|vier|eiro|uari)?|feb(?:ruary|ruar|braio|ruari)?|f[eé]vrier|fevereiro|\
    mar(?:ch|s|zo|ço|ca)?|m[aä]rz|maart|apr(?:il|ile|il)?|avril|abril|kwietnia|may|mai|mayo|maggio|maio|maj|mei|maja|\
    jun(?:e|i|io|ho)?|juin|giugno|czerwca|jul(?:y|i|io|ho)?|juillet|luglio|lipca|aug(?:ust|ustus|usti)?|ao[uû]t|\
    agosto|sierpnia|sep(?:t|tember|tiembre)?|setiembre|settembre|setembro|wrze[sś]nia|oct(?:ober|ubre)?|okt(?:ober)?|\
    octobre|ottobre|outubro|pa[zź]dziernika|nov(?:ember|embre|iembre|embro)?|listopada|dec(?:ember)?|dez(?:ember|embro)?|\
    d[eé]cembre|dic(?:iembre)?|dicembre|grudnia|enero|febrero|gennaio|stycznia|lutego";

/// A full date: numeric (ISO, day-month-year or month-day-year with `-`, `/` or `.`) or with the month
/// written out (`4 March 1975`, `March 4, 1975`, `4. März 1975`, `4 de marzo de 1975`).
pub(crate) fn date_regex() -> Result<Regex, regex::Error> {
    let pattern = format!(
        r"(?i)\b(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[-/.]\d{{1,2}}[-/.](?:\d{{4}}|\d{{2}})|\d{{1,2}}(?:st|nd|rd|th|er)?\.?\s+(?:of\s+|de\s+)?(?:{MONTHS})\.?,?\s+(?:de\s+)?\d{{4}}|(?:{MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})\b"
    );
    Regex::new(&pattern)
}

/// A date of birth after the cue that ends at `e` in `text` (`date` is [`date_regex`]).
pub(crate) fn after_cue(date: &Regex, text: &str, e: usize) -> Option<Hit> {
    let mut end = text.len().min(e.saturating_add(WINDOW));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let window = text.get(e..end)?;
    let m = date.find(window)?;
    if m.start() > MAX_GAP {
        return None;
    }
    // Between the cue and the date: separators and short words only, no other number.
    if window[..m.start()].bytes().any(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(Hit::new(Kind::DateOfBirth, e + m.start(), e + m.end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date<'t>(text: &'t str, cue: &str) -> Option<&'t str> {
        let e = text.find(cue)? + cue.len();
        after_cue(&date_regex().unwrap(), text, e).map(|h| &text[h.start..h.end])
    }

    #[test]
    fn dates_in_many_shapes_after_a_cue() {
        assert_eq!(date("DOB 1975-03-04, seen", "DOB"), Some("1975-03-04"));
        assert_eq!(date("DOB: 03/04/1975.", "DOB"), Some("03/04/1975"));
        assert_eq!(date("born on 4 March 1975", "born"), Some("4 March 1975"));
        assert_eq!(
            date("born on the 4th of March 1975", "born"),
            Some("4th of March 1975")
        );
        assert_eq!(date("born March 4, 1975 in Ohio", "born"), Some("March 4, 1975"));
        assert_eq!(date("geb. 04.03.1975", "geb."), Some("04.03.1975"));
        assert_eq!(date("geboren am 4. März 1975", "geboren"), Some("4. März 1975"));
        assert_eq!(date("née le 4 mars 1975", "née"), Some("4 mars 1975"));
        assert_eq!(
            date("nacido el 4 de marzo de 1975", "nacido"),
            Some("4 de marzo de 1975")
        );
        assert_eq!(date("urodzona 4 marca 1975", "urodzona"), Some("4 marca 1975"));
    }

    #[test]
    fn no_date_too_far_or_after_another_number() {
        assert_eq!(
            date("born in a small village near the coast, on 4 March 1975", "born"),
            None
        );
        assert_eq!(date("born 12 children; 1975-03-04", "born"), None);
        assert_eq!(date("born in 1975", "born"), None);
        // A multi-byte character at the edge of the window.
        let text = format!("born {}", "é".repeat(60));
        assert_eq!(date(&text, "born"), None);
    }
}
