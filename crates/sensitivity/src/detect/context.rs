//! Context for identifiers the personal-data model finds: a passport, licence, tax, account or other
//! identification number is taken only when a word near it says what it is ("passport no.",
//! "Führerschein", "routing", "TIN", ...). A bare number (an order, a build, an error code, a
//! shipment) is not an identifier, however much it looks like one.

/// Bytes before an identifier where its cue may be ("Passport number, issued in Ohio in 2015: ").
const BEFORE: usize = 64;
/// Bytes after it ("123456789 (passport)").
const AFTER: usize = 24;

/// Cues found inside longer words ("Passnummer", "licence", "Steuer-ID"), lower case.
const STEMS: [&str; 62] = [
    "passport",
    "passeport",
    "pasaporte",
    "passaporto",
    "paspoort",
    "paszport",
    "reisepass",
    "passnummer",
    "driver",
    "driving",
    "licen",
    "führerschein",
    "fuhrerschein",
    "permis de conduire",
    "carnet de conducir",
    "patente",
    "rijbewijs",
    "prawo jazdy",
    "körkort",
    "tax",
    "steuer",
    "fiscal",
    "personnummer",
    "pesel",
    "social security",
    "insurance",
    "national id",
    "identity",
    "identification",
    "identit",
    "ausweis",
    "documento",
    "personal number",
    "citizen",
    "medicare",
    "medicaid",
    "patient id",
    "member id",
    "id number",
    "id card",
    "id no",
    "id#",
    "routing",
    "sort code",
    "transit",
    "bank",
    "account",
    "acct",
    "a/c",
    "konto",
    "compte",
    "cuenta",
    "conto",
    "rekening",
    "rachunek",
    "iban",
    "swift",
    "sozialversicherung",
    "numéro de sécurité",
    "seguridad social",
    "codice fiscale",
    "burgerservicenummer",
];

/// Cues that count only as whole words: as parts of words they are everywhere ("tin" in "routine").
const WORDS: [&str; 21] = [
    "id", "dl", "tin", "itin", "ein", "vat", "nif", "nie", "nip", "utr", "tva", "iva", "btw", "bsn", "dni",
    "cpf", "ssn", "nino", "nhs", "mrn", "aba",
];

/// Whether a word near `range` of `text` says the number there is an identifier.
pub(crate) fn has_identifier_cue(text: &str, range: std::ops::Range<usize>) -> bool {
    let mut start = range.start.saturating_sub(BEFORE);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = text.len().min(range.end.saturating_add(AFTER));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let (Some(before), Some(after)) = (text.get(start..range.start), text.get(range.end..end)) else {
        return false;
    };
    // The cue is in the same clause: before, since the last `;` or line break; after, up to the next
    // punctuation ("Order 483920175 shipped; passport no. 530117924": the order number has none).
    let before = before.rsplit([';', '\n']).next().unwrap_or(before);
    let after = after.split(['.', ';', ',', '\n']).next().unwrap_or(after);
    [before, after].into_iter().any(|part| {
        let lower = part.to_lowercase();
        STEMS.iter().any(|s| lower.contains(s))
            || lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| WORDS.contains(&w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cue(text: &str, number: &str) -> bool {
        let start = text.find(number).unwrap();
        has_identifier_cue(text, start..start + number.len())
    }

    #[test]
    fn identifiers_need_a_word_that_says_what_they_are() {
        assert!(cue("Passport number: 123456789, expires 2030.", "123456789"));
        assert!(cue("Seine Steuer-ID lautet 12345678901.", "12345678901"));
        assert!(cue("DL D1234567 (Ohio)", "D1234567"));
        assert!(cue("routing 021000021 and account 000123456789", "021000021"));
        assert!(!cue("Order #483920175 has shipped.", "483920175"));
        assert!(!cue(
            "Error code 861809613 from the payment terminal",
            "861809613"
        ));
        assert!(!cue(
            "Shipment 427064651 is stuck in customs; draft a routine note",
            "427064651"
        ));
        assert!(!cue("Build 20240304.1 broke the login flow.", "20240304"));
    }
}
