//! Detectors anchored on a digit: payment cards, IBANs, national identifiers, phone numbers and IP
//! addresses. The scanner calls `scan_number` at the first digit of every run of digits; the letters or
//! signs just before it (`DE89…`, `AB123456C`, `+44…`, `(415)…`, `fe80:…`) decide which detectors apply.

mod cards;
mod ids;
mod ip;
mod phone;

use cards::{card, iban};
use ids::{dni, nie, nino, ssn, ssn_near_cue};
use ip::{ipv4, ipv6};
pub(crate) use phone::PHONE_CHECKS;
use phone::{e164, nanp, nanp_paren, national_phone, national_phone_paren};

use super::{Hit, back, digits_end, is_word};
use crate::kind::{Kind, KindSet};

/// The kinds this module finds; the scanner anchors on digits only when one of them is on.
pub(crate) const KINDS: [Kind; 8] = [
    Kind::PaymentCard,
    Kind::Iban,
    Kind::UsSsn,
    Kind::UkNino,
    Kind::EsDni,
    Kind::Phone,
    Kind::IpAddress,
    Kind::LocalAddress,
];

/// Validates the candidates around the digit run that starts at `p`. Returns the first hit and where
/// the scan resumes: after the hit, or after the digit run.
///
/// `phone_checks` is what is left of the scan's budget of phone numbers validated against
/// libphonenumber's metadata ([`PHONE_CHECKS`]).
pub(crate) fn scan_number(b: &[u8], p: usize, on: KindSet, phone_checks: &mut u32) -> (Option<Hit>, usize) {
    let end = digits_end(b, p);
    let prev = back(b, p, 1);
    let hit = if prev.is_ascii_alphabetic() {
        after_letter(b, p, on)
    } else if is_word(prev) || (matches!(prev, b'.' | b',') && back(b, p, 2).is_ascii_digit()) {
        // Inside a longer number or identifier (`3.14159…`, `id_4111…`): never a finding of its own.
        None
    } else {
        standalone(b, p, end, prev, on, phone_checks)
    };
    let resume = hit.map_or(end, |h| h.end.max(p + 1));
    (hit, resume)
}

/// Digits right after a letter: an IBAN's or NI number's letters, a NIE's, or a hex group of an IPv6.
fn after_letter(b: &[u8], p: usize, on: KindSet) -> Option<Hit> {
    let (l1, l2) = (back(b, p, 1), back(b, p, 2));
    if l2.is_ascii_alphabetic() && !is_word(back(b, p, 3)) {
        let s = p - 2;
        if on.has(Kind::Iban)
            && let Some(h) = iban(b, s)
        {
            return Some(h);
        }
        if on.has(Kind::UkNino)
            && let Some(h) = nino(b, s)
        {
            return Some(h);
        }
    }
    if on.has(Kind::EsDni)
        && matches!(l1.to_ascii_uppercase(), b'X' | b'Y' | b'Z' | b'K' | b'L' | b'M')
        && !is_word(l2)
        && let Some(h) = nie(b, p - 1)
    {
        return Some(h);
    }
    if on.has(Kind::IpAddress) || on.has(Kind::LocalAddress) {
        return ipv6(b, p);
    }
    None
}

/// Digits after a non-word byte (space, punctuation, start of text).
fn standalone(b: &[u8], p: usize, end: usize, prev: u8, on: KindSet, phone_checks: &mut u32) -> Option<Hit> {
    let run = end - p;
    let phone = on.has(Kind::Phone);
    if phone && prev == b'+' {
        if let Some(h) = e164(b, p - 1) {
            return Some(h);
        }
    } else if phone
        && prev == b'('
        && let Some(h) = nanp_paren(b, p - 1).or_else(|| national_phone_paren(b, p - 1, phone_checks))
    {
        return Some(h);
    }
    if on.has(Kind::IpAddress) || on.has(Kind::LocalAddress) {
        // IPv6 first: its tail may be a dotted quad (`::ffff:192.0.2.128`).
        if let Some(h) = ipv6(b, p) {
            return Some(h);
        }
        if let Some(h) = ipv4(b, p, end) {
            return Some(h);
        }
    }
    // Cards are written as one run or in groups of at least four (4-4-4-4, Amex 4-6-5).
    if on.has(Kind::PaymentCard)
        && run >= 4
        && let Some(h) = card(b, p)
    {
        return Some(h);
    }
    if run == 3
        && on.has(Kind::UsSsn)
        && let Some(h) = ssn(b, p)
    {
        return Some(h);
    }
    if run <= 9
        && on.has(Kind::UsSsn)
        && let Some(h) = ssn_near_cue(b, p)
    {
        return Some(h);
    }
    if phone
        && (run == 3 || run == 1)
        && let Some(h) = nanp(b, p, run)
    {
        return Some(h);
    }
    if phone
        && prev != b'+'
        && let Some(h) = national_phone(b, p, phone_checks)
    {
        return Some(h);
    }
    // `AB 12 34 56 C`: the letters sit before a space.
    if on.has(Kind::UkNino)
        && prev == b' '
        && back(b, p, 2).is_ascii_alphabetic()
        && back(b, p, 3).is_ascii_alphabetic()
        && !is_word(back(b, p, 4))
        && let Some(h) = nino(b, p - 3)
    {
        return Some(h);
    }
    // Eight digits, or seven where the leading zero of an old number was left out.
    if (run == 8 || run == 7) && on.has(Kind::EsDni) {
        return dni(b, p, end);
    }
    None
}

/// Whether one of `cues` (ASCII case ignored) is within 32 bytes before `p`, starting a word, and, when it
/// is no longer than `short`, ending one too.
fn cue_before(b: &[u8], p: usize, cues: &[&[u8]], short: usize) -> bool {
    let from = p.saturating_sub(32);
    let before = b.get(from..p).unwrap_or_default();
    cues.iter().any(|cue| {
        before.windows(cue.len()).enumerate().any(|(k, w)| {
            w.eq_ignore_ascii_case(cue)
                && !back(b, from + k, 1).is_ascii_alphabetic()
                && (cue.len() > short || !crate::detect::at(b, from + k + cue.len()).is_ascii_alphabetic())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::cards::{is_card, luhn, mod97};

    fn digits(s: &str) -> Vec<u8> {
        s.bytes().map(|c| c - b'0').collect()
    }

    #[test]
    fn luhn_and_issuers() {
        assert!(is_card(&digits("4111111111111111")));
        assert!(!is_card(&digits("4111111111111112")));
        assert!(is_card(&digits("378282246310005")));
        assert!(!is_card(&digits("1234567812345678")));
        // Luhn-valid but no issuer starts with 1.
        assert!(luhn(&digits("1234567812345670")));
        assert!(!is_card(&digits("1234567812345670")));
    }

    #[test]
    fn mod97_of_registry_examples() {
        assert_eq!(mod97(b"DE89370400440532013000"), 1);
        assert_eq!(mod97(b"GB82WEST12345698765432"), 1);
        assert_ne!(mod97(b"GB83WEST12345698765432"), 1);
    }
}
