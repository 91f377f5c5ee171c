//! National identifiers: US SSNs (in their usual form, or any form after a cue), UK National Insurance
//! numbers and Spanish DNI, NIE and NIF.

use crate::detect::{Hit, at, back, digits_at, digits_end, is_word, number, number_ends};
use crate::kind::Kind;

/// A US SSN at `p`: `AAA-GG-SSSS`, `AAA GG SSSS` or `AAA.GG.SSSS`, never area 000, 666 or 900-999,
/// group 00, serial 0000, nor the numbers printed in advertisements (078-05-1120, 219-09-9999). Other
/// forms (nine bare digits, uneven groups) only after a cue ([`ssn_near_cue`]).
pub(super) fn ssn(b: &[u8], p: usize) -> Option<Hit> {
    if matches!(back(b, p, 1), b'-' | b' ' | b'.') && back(b, p, 2).is_ascii_digit() {
        return None;
    }
    let sep = at(b, p + 3);
    if !matches!(sep, b'-' | b' ' | b'.')
        || !digits_at(b, p + 4, 2)
        || at(b, p + 6) != sep
        || !digits_at(b, p + 7, 4)
    {
        return None;
    }
    let end = p + 11;
    let after = at(b, end);
    if is_word(after) || (matches!(after, b'-' | b' ' | b'.') && at(b, end + 1).is_ascii_digit()) {
        return None;
    }
    ssn_valid(number(b, p, 3), number(b, p + 4, 2), number(b, p + 7, 4))
        .then(|| Hit::new(Kind::UsSsn, p, end))
}

/// Words that say a social security number follows, matched ignoring ASCII case.
const SSN_CUES: [&[u8]; 6] = [b"ssn", b"social security", b"soc sec", b"ss#", b"ss #", b"ss no"];

/// Nine digits written any way people write them (bare, `123 45 6789`, `123-456-789`, `12-345-6789`) at
/// `p`, when one of `SSN_CUES` is within 32 bytes before them (`SSN: 123456789`, `social security
/// number is 123 456 789`). Nine bare digits are too common to be an SSN without one.
pub(super) fn ssn_near_cue(b: &[u8], p: usize) -> Option<Hit> {
    if matches!(back(b, p, 1), b'-' | b'.') && back(b, p, 2).is_ascii_digit() {
        return None;
    }
    let mut digits = [0u32; 9];
    let mut n = 0;
    let mut i = p;
    loop {
        let e = digits_end(b, i);
        if n + (e - i) > 9 {
            return None;
        }
        for (slot, j) in digits[n..n + (e - i)].iter_mut().zip(i..e) {
            *slot = u32::from(at(b, j) - b'0');
        }
        n += e - i;
        i = e;
        if n < 9 && matches!(at(b, e), b'-' | b' ' | b'.') && at(b, e + 1).is_ascii_digit() {
            i = e + 1;
        } else {
            break;
        }
    }
    if n != 9
        || !number_ends(b, i)
        || (matches!(at(b, i), b'-' | b' ' | b'.') && at(b, i + 1).is_ascii_digit())
    {
        return None;
    }
    let cued = super::cue_before(b, p, &SSN_CUES, 0);
    if !cued {
        return None;
    }
    let value = |r: std::ops::Range<usize>| digits[r].iter().fold(0, |a, &d| a * 10 + d);
    ssn_valid(value(0..3), value(3..5), value(5..9)).then(|| Hit::new(Kind::UsSsn, p, i))
}

/// The SSA's rules: no area 000, 666 or 900-999, no group 00 or serial 0000, and not one of the numbers
/// printed in advertisements.
fn ssn_valid(area: u32, group: u32, serial: u32) -> bool {
    let invalid = area == 0
        || area == 666
        || area >= 900
        || group == 0
        || serial == 0
        || (area, group, serial) == (78, 5, 1120)
        || (area, group, serial) == (219, 9, 9999);
    !invalid
}

/// A UK National Insurance number at `s`: two prefix letters (not D, F, I, Q, U, V first; not D, F, I, O,
/// Q, U, V second; not BG, GB, KN, NK, NT, TN, ZZ), six digits, suffix A-D, in either case and written as
/// people write it: `AB123456C`, `AB 12 34 56 C`, `ab 123456 c`, `AB123456 C`.
pub(super) fn nino(b: &[u8], s: usize) -> Option<Hit> {
    let (first, second) = (at(b, s).to_ascii_uppercase(), at(b, s + 1).to_ascii_uppercase());
    if !first.is_ascii_uppercase()
        || !second.is_ascii_uppercase()
        || b"DFIQUV".contains(&first)
        || b"DFIOQUV".contains(&second)
        || [*b"BG", *b"GB", *b"KN", *b"NK", *b"NT", *b"TN", *b"ZZ"].contains(&[first, second])
    {
        return None;
    }
    // One case throughout: `Ab123456c` is a word, not a number.
    let upper = at(b, s).is_ascii_uppercase();
    if at(b, s + 1).is_ascii_uppercase() != upper {
        return None;
    }
    let mut i = s + 2;
    if at(b, i) == b' ' {
        i += 1;
    }
    if digits_at(b, i, 6) {
        i += 6;
    } else {
        for k in 0..3 {
            if k > 0 {
                if at(b, i) != b' ' {
                    return None;
                }
                i += 1;
            }
            if !at(b, i).is_ascii_digit() || !at(b, i + 1).is_ascii_digit() {
                return None;
            }
            i += 2;
        }
    }
    if at(b, i) == b' ' && matches!(at(b, i + 1).to_ascii_uppercase(), b'A'..=b'D') {
        i += 1;
    }
    // Lower case only written compact (`ab123456c`): spaced, it reads as words (`by 120000 a`).
    if !upper && i - s != 8 {
        return None;
    }
    let suffix = at(b, i);
    if !matches!(suffix.to_ascii_uppercase(), b'A'..=b'D')
        || suffix.is_ascii_uppercase() != upper
        || is_word(at(b, i + 1))
    {
        return None;
    }
    Some(Hit::new(Kind::UkNino, s, i + 1))
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// A Spanish DNI at `p` (eight digits, or seven for a number under ten million written without its
/// leading zero): the check letter `DNI_LETTERS[n % 23]`, right after the digits or after a dash.
pub(super) fn dni(b: &[u8], p: usize, end: usize) -> Option<Hit> {
    check_letter(b, p, end, number(b, p, end - p))
}

/// A Spanish NIE at `s` (X, Y or Z for 0, 1, 2, then seven digits) or a NIF for those without a DNI
/// (K, L or M, then seven digits), with the DNI check letter; letters in either case.
pub(super) fn nie(b: &[u8], s: usize) -> Option<Hit> {
    let lead = match at(b, s).to_ascii_uppercase() {
        b'X' | b'K' | b'L' | b'M' => 0,
        b'Y' => 1,
        b'Z' => 2,
        _ => return None,
    };
    if !digits_at(b, s + 1, 7) {
        return None;
    }
    check_letter(b, s, s + 8, lead * 10_000_000 + number(b, s + 1, 7))
}

fn check_letter(b: &[u8], start: usize, end: usize, n: u32) -> Option<Hit> {
    let i = if at(b, end) == b'-' { end + 1 } else { end };
    let letter = at(b, i).to_ascii_uppercase();
    let expected = DNI_LETTERS.get(usize::try_from(n % 23).ok()?)?;
    (letter == *expected && !is_word(at(b, i + 1))).then(|| Hit::new(Kind::EsDni, start, i + 1))
}
