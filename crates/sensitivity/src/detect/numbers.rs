//! Detectors anchored on a digit: payment cards, IBANs, national identifiers, phone numbers and IP
//! addresses. The scanner calls `scan_number` at the first digit of every run of digits; the letters or
//! signs just before it (`DE89…`, `AB123456C`, `+44…`, `(415)…`, `fe80:…`) decide which detectors apply.

use std::net::Ipv6Addr;

use super::{Hit, at, back, digits_at, digits_end, is_hex, is_word, number, number_ends, run_end, run_start};
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

// ---------------------------------------------------------------------------------------------------------
// Payment cards

/// A card number from `p`: 12 (Maestro) or 13 to 19 digits in groups separated by single spaces or dashes, with a known
/// issuer prefix and length and a valid Luhn digit. When more groups follow (`… 1111 2024`), the longest
/// valid prefix of whole groups wins. Written as one bare run, a card has at most 16 digits: longer
/// cards are rare and printed in groups, while 17- to 19-digit integers fill tables in code.
fn card(b: &[u8], p: usize) -> Option<Hit> {
    let mut digits = [0u8; 19];
    let mut n = 0;
    // Group ends where 13 to 19 digits have been read: (byte offset, digit count).
    let mut ends = [(0usize, 0usize); 19];
    let mut k = 0;
    let mut i = p;
    loop {
        let e = digits_end(b, i);
        let len = e - i;
        if n + len > digits.len() {
            break;
        }
        for (slot, j) in digits[n..n + len].iter_mut().zip(i..e) {
            *slot = at(b, j) - b'0';
        }
        n += len;
        if n >= 12
            && let Some(slot) = ends.get_mut(k)
        {
            *slot = (e, n);
            k += 1;
        }
        let sep = at(b, e);
        if matches!(sep, b' ' | b'-') && at(b, e + 1).is_ascii_digit() {
            i = e + 1;
        } else {
            break;
        }
    }
    ends[..k]
        .iter()
        .rev()
        .find(|&&(e, n)| {
            // Bare 15 digits from 1 (UATP) or 12 digits (Maestro) are as often an account or a user id.
            let grouped = e - p > n;
            let bare_ok = n <= 16 && digits[0] != 1 && n != 12;
            (grouped || bare_ok) && number_ends(b, e) && is_card(&digits[..n])
        })
        .map(|&(e, _)| Hit::new(Kind::PaymentCard, p, e))
}

/// A known issuer (IIN) prefix with a length it issues, and a valid Luhn check digit: Visa, Mastercard,
/// Maestro (and Maestro UK), American Express, Discover, Diners Club, JCB, UnionPay, UATP, Dankort, Mir,
/// RuPay, Troy, Verve and InterPayment.
pub(crate) fn is_card(d: &[u8]) -> bool {
    let n = d.len();
    if !(12..=19).contains(&n) {
        return false;
    }
    let prefix = |k: usize| d[..k].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (two, three, four, six) = (prefix(2), prefix(3), prefix(4), prefix(6));
    // Maestro issues 12 to 19 digits under these prefixes (Maestro UK: 6759, 676770, 676774).
    let maestro = [5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763].contains(&four)
        || six == 676_770
        || six == 676_774;
    let issued = match d[0] {
        // UATP.
        1 => n == 15,
        // Visa.
        4 => matches!(n, 13 | 16 | 19),
        // Mastercard, Dankort, Verve (506099-506198), RuPay (508).
        5 => {
            (((51..=55).contains(&two) || four == 5019) && n == 16)
                || ((506_099..=506_198).contains(&six) && matches!(n, 16 | 18 | 19))
                || (three == 508 && n == 16)
                || maestro
        }
        // Mastercard's 2-series; Mir.
        2 => ((2221..=2720).contains(&four) && n == 16) || ((2200..=2204).contains(&four) && n >= 16),
        // Amex; JCB; Diners Club.
        3 => {
            ((two == 34 || two == 37) && n == 15)
                || ((3528..=3589).contains(&four) && n >= 16)
                || ((two == 36 || two == 38 || two == 39 || (300..=305).contains(&three) || four == 3095)
                    && n >= 14)
        }
        // Discover; UnionPay; RuPay (60, 65); InterPayment (636); Verve (650002-650027); Maestro.
        6 => {
            ((four == 6011
                || two == 65
                || (644..=649).contains(&three)
                || two == 62
                || two == 60
                || three == 636)
                && n >= 16)
                || ((650_002..=650_027).contains(&six) && n >= 16)
                || maestro
        }
        // RuPay (81, 82).
        8 => (two == 81 || two == 82) && n == 16,
        // Troy.
        9 => four == 9792 && n == 16,
        _ => false,
    };
    issued && luhn(d)
}

/// The Luhn (mod 10) check over decimal digit values.
pub(crate) fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

// ---------------------------------------------------------------------------------------------------------
// IBAN

/// An IBAN starting at `s` (its country code): the country's exact length, compact or with single spaces
/// between groups of four, and `mod 97 == 1`. Letters may be in either case.
fn iban(b: &[u8], s: usize) -> Option<Hit> {
    let len = iban_length([at(b, s).to_ascii_uppercase(), at(b, s + 1).to_ascii_uppercase()])?;
    if !at(b, s + 2).is_ascii_digit() || !at(b, s + 3).is_ascii_digit() {
        return None;
    }
    let mut buf = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < len {
        let c = at(b, i);
        if c.is_ascii_alphanumeric() {
            *buf.get_mut(n)? = c.to_ascii_uppercase();
            n += 1;
            i += 1;
        } else if c == b' ' && n % 4 == 0 && n > 0 && at(b, i + 1).is_ascii_alphanumeric() {
            i += 1;
        } else {
            return None;
        }
    }
    if is_word(at(b, i)) {
        return None;
    }
    (mod97(&buf[..len]) == 1).then(|| Hit::new(Kind::Iban, s, i))
}

/// The IBAN check: the first four characters moved to the end, letters as 10..35, the number mod 97.
pub(crate) fn mod97(iban: &[u8]) -> u32 {
    let (head, tail) = iban.split_at(4.min(iban.len()));
    tail.iter().chain(head).fold(0u32, |r, &c| {
        if c.is_ascii_digit() {
            (r * 10 + u32::from(c - b'0')) % 97
        } else {
            (r * 100 + u32::from(c.to_ascii_uppercase().wrapping_sub(b'A')) + 10) % 97
        }
    })
}

/// The IBAN length of a country (ISO 13616 registry), for the countries that issue IBANs.
fn iban_length(cc: [u8; 2]) -> Option<usize> {
    let n = match &cc {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" => 20,
        b"CH" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"CR" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" | b"SV" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        _ => return None,
    };
    Some(n)
}

// ---------------------------------------------------------------------------------------------------------
// National identifiers

/// A US SSN at `p`: `AAA-GG-SSSS`, `AAA GG SSSS` or `AAA.GG.SSSS`, never area 000, 666 or 900-999,
/// group 00, serial 0000, nor the numbers printed in advertisements (078-05-1120, 219-09-9999). Other
/// forms (nine bare digits, uneven groups) only after a cue ([`ssn_near_cue`]).
fn ssn(b: &[u8], p: usize) -> Option<Hit> {
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
fn ssn_near_cue(b: &[u8], p: usize) -> Option<Hit> {
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
    let from = p.saturating_sub(32);
    let before = b.get(from..p).unwrap_or_default();
    let cued = SSN_CUES.iter().any(|cue| {
        before
            .windows(cue.len())
            .enumerate()
            .any(|(k, w)| w.eq_ignore_ascii_case(cue) && !back(b, from + k, 1).is_ascii_alphabetic())
    });
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
fn nino(b: &[u8], s: usize) -> Option<Hit> {
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
fn dni(b: &[u8], p: usize, end: usize) -> Option<Hit> {
    check_letter(b, p, end, number(b, p, end - p))
}

/// A Spanish NIE at `s` (X, Y or Z for 0, 1, 2, then seven digits) or a NIF for those without a DNI
/// (K, L or M, then seven digits), with the DNI check letter; letters in either case.
fn nie(b: &[u8], s: usize) -> Option<Hit> {
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

// ---------------------------------------------------------------------------------------------------------
// Phone numbers

/// E.164 at `s` (the `+`): 8 to 15 digits in all, not starting with 0, either in one run or as a country
/// code of one to three digits and groups separated by one or two of ` -.()` (`+1 (415) 555-2671`,
/// `+44 (0)20 7946 0958`). A longer first group followed by more (`+10000-01-01`, `+999999-12-31`) is
/// a date with an extended year.
fn e164(b: &[u8], s: usize) -> Option<Hit> {
    if is_word(back(b, s, 1)) || at(b, s + 1) == b'0' {
        return None;
    }
    let first = digits_end(b, s + 1) - (s + 1);
    let mut i = s + 1;
    let mut n = 0;
    let mut end = i;
    loop {
        let e = digits_end(b, i);
        if n + (e - i) > 15 {
            break;
        }
        n += e - i;
        end = e;
        let j = run_end(b, e, 2, |c| matches!(c, b' ' | b'-' | b'.' | b'(' | b')'));
        if j > e && at(b, j).is_ascii_digit() {
            i = j;
        } else {
            break;
        }
    }
    let grouped = n > first;
    (n >= 8 && (first <= 3 || !grouped) && number_ends(b, end)).then(|| Hit::new(Kind::Phone, s, end))
}

/// A North American number at `p`: `AAA-BBB-CCCC` or `AAA.BBB.CCCC`, optionally after a `1-` trunk prefix.
fn nanp(b: &[u8], p: usize, run: usize) -> Option<Hit> {
    if matches!(back(b, p, 1), b'-' | b'.') && back(b, p, 2).is_ascii_digit() {
        return None;
    }
    let mut i = p;
    let mut sep = at(b, p + run);
    if !matches!(sep, b'-' | b'.') {
        return None;
    }
    if run == 1 {
        if at(b, p) != b'1' {
            return None;
        }
        i = p + 2;
        if !digits_at(b, i, 3) || at(b, i + 3) != sep {
            return None;
        }
    }
    sep = at(b, i + 3);
    if !digits_at(b, i + 4, 3) || at(b, i + 7) != sep || !digits_at(b, i + 8, 4) {
        return None;
    }
    nanp_valid(b, i, i + 4, p, i + 12)
}

/// `(AAA) BBB-CCCC`, `(AAA)BBB-CCCC`, `(AAA) BBB CCCC` at `s` (the parenthesis).
fn nanp_paren(b: &[u8], s: usize) -> Option<Hit> {
    if is_word(back(b, s, 1)) || !digits_at(b, s + 1, 3) || at(b, s + 4) != b')' {
        return None;
    }
    let x = if at(b, s + 5) == b' ' { s + 6 } else { s + 5 };
    if !digits_at(b, x, 3) || !matches!(at(b, x + 3), b'-' | b'.' | b' ') || !digits_at(b, x + 4, 4) {
        return None;
    }
    nanp_valid(b, s + 1, x, s, x + 8)
}

/// Regions whose national formats (a trunk `0`, then the number) are tried for a number written without
/// its country code, in this order: Europe's largest, then Israel, Japan, Korea, Oceania, India, Latin
/// America, South Africa and Turkey.
const TRUNK_REGIONS: [phonenumber::country::Id; 28] = {
    use phonenumber::country::Id::*;
    [
        GB, DE, FR, IT, ES, NL, BE, CH, AT, IE, SE, NO, DK, FI, PL, PT, CZ, GR, IL, JP, KR, AU, NZ, IN, BR,
        AR, ZA, TR,
    ]
};

/// How many phone numbers in national formats one scan validates against libphonenumber's metadata (each
/// takes a few microseconds). Past it, a candidate of the right shape is taken for a phone number without
/// validation: a text made of thousands of them is over-reported, never under-reported, and its scan stays
/// fast (a MiB of nothing but such numbers would otherwise take a third of a second).
pub(crate) const PHONE_CHECKS: u32 = 2048;

/// Whether `digits` is a valid number of one of `regions`, or, once the scan's budget of checks is spent,
/// `true` (fail closed).
fn phone_valid(digits: &[u8], regions: &[phonenumber::country::Id], budget: &mut u32) -> bool {
    if *budget == 0 {
        return true;
    }
    *budget -= 1;
    let Ok(text) = std::str::from_utf8(digits) else {
        return false;
    };
    regions.iter().any(|&region| {
        phonenumber::parse(Some(region), text)
            .ok()
            .is_some_and(|number| phonenumber::is_valid(&number))
    })
}

/// Words that say a phone number follows, matched ignoring ASCII case.
const PHONE_CUES: [&[u8]; 9] = [
    b"phone",
    b"tel",
    b"call",
    b"mobile",
    b"cell",
    b"fax",
    b"whatsapp",
    b"sms",
    b"text me",
];

/// A phone number written the national way, without `+` and country code, at `p`, validated against
/// libphonenumber's metadata (through the `phonenumber` crate):
/// - a trunk `0` and 9 to 11 more digits, in one run or in groups separated by one space, dash or dot
///   (`054-123-4567` in Israel, `03-1234-5678` or `090 1234 5678` in Japan, `020 7946 0958` in the UK),
///   valid in one of `TRUNK_REGIONS`;
/// - a Chinese mobile number, 11 digits from `13` to `19` (`138 0013 8000`);
/// - numbers of countries without a trunk prefix, when written in their groups: nine digits in Spain
///   (`612 34 56 78`, `612 345 678`, `91 123 45 67`), ten from `3` for Italian mobiles (`312 345 6789`),
///   ten in North America (`415 555 2671`);
/// - ten bare digits in North America (`4155552671`), only after one of `PHONE_CUES` within 32 bytes:
///   without one, ten digits are as often an id or a timestamp.
///
/// Dates (`01.02.2023`) and counting sequences (`0123456789`) are not numbers anyone was given.
fn national_phone(b: &[u8], p: usize, budget: &mut u32) -> Option<Hit> {
    // The first group's length rules most candidates out at once: after a trunk 0 anything goes; a
    // Chinese mobile starts with 3 or 11 digits; the others with 2 or 3, or are 10 bare digits.
    let first_run = digits_end(b, p) - p;
    let plausible = match at(b, p) {
        b'0' => true,
        b'1' => first_run == 3 || first_run == 11,
        _ => matches!(first_run, 2 | 3 | 10),
    };
    if !plausible {
        return None;
    }
    let mut digits = [0u8; 13];
    let mut n = 0;
    let mut groups = [0usize; 6];
    let mut g = 0;
    let mut i = p;
    let mut sep = 0u8;
    loop {
        let e = digits_end(b, i);
        let len = e - i;
        if n + len > 12 || g == groups.len() {
            return None;
        }
        for (slot, j) in digits[n..n + len].iter_mut().zip(i..e) {
            *slot = at(b, j);
        }
        n += len;
        groups[g] = len;
        g += 1;
        i = e;
        let c = at(b, e);
        if matches!(c, b' ' | b'-' | b'.') && (sep == 0 || sep == c) && at(b, e + 1).is_ascii_digit() {
            sep = c;
            i = e + 1;
        } else {
            break;
        }
    }
    if !number_ends(b, i) || matches!(at(b, i), b'-' | b'/') {
        return None;
    }
    let d = digits.get(..n)?;
    let groups = groups.get(..g)?;
    // A lone digit at either end (`0.79123…`, `0-201-63361-2`) is a decimal or an ISBN, not a phone.
    if groups.first().is_some_and(|&l| l < 2) || groups.last().is_some_and(|&l| l < 2) {
        return None;
    }
    let dated = matches!(groups, [2, 2, 4] | [4, 2, 2] | [2, 2, 2]) && sep != b' ';
    let counting = d.windows(2).all(|w| w[1] == w[0] + 1) || d.windows(2).all(|w| w[0] == w[1] + 1);
    if dated || counting {
        return None;
    }
    use phonenumber::country::Id;
    let mut valid_in = |regions: &[Id]| phone_valid(d, regions, budget);
    let ok = match d.first()? {
        b'0' => (10..=12).contains(&n) && d.get(1) != Some(&b'0') && valid_in(&TRUNK_REGIONS),
        b'1' => n == 11 && (b'3'..=b'9').contains(d.get(1)?) && valid_in(&[Id::CN]),
        b'3' if g > 1 && matches!(groups, [3, 3, 4] | [3, 7]) => valid_in(&[Id::IT, Id::US]),
        _ if g > 1 => match groups {
            [3, 3, 3] | [3, 2, 2, 2] | [2, 3, 2, 2] => valid_in(&[Id::ES]),
            [3, 3, 4] => valid_in(&[Id::US]),
            _ => false,
        },
        _ => n == 10 && phone_cue(b, p) && valid_in(&[Id::US]),
    };
    ok.then(|| Hit::new(Kind::Phone, p, i))
}

/// A national number whose area code is in parentheses, from the `(` at `s`: `(020) 7946 0958`,
/// `(03) 1234 5678`, `(11) 96123-4567` in Brazil; valid in one of `TRUNK_REGIONS` (with a trunk `0`) or
/// in Brazil (a two-digit area code).
fn national_phone_paren(b: &[u8], s: usize, budget: &mut u32) -> Option<Hit> {
    let area_end = digits_end(b, s + 1);
    let area = area_end - (s + 1);
    if !(2..=5).contains(&area) || at(b, area_end) != b')' {
        return None;
    }
    let rest = if at(b, area_end + 1) == b' ' {
        area_end + 2
    } else {
        area_end + 1
    };
    if !at(b, rest).is_ascii_digit() {
        return None;
    }
    let mut digits = [0u8; 13];
    let mut n = 0;
    for j in s + 1..area_end {
        *digits.get_mut(n)? = at(b, j);
        n += 1;
    }
    let mut i = rest;
    loop {
        let e = digits_end(b, i);
        for j in i..e {
            *digits.get_mut(n)? = at(b, j);
            n += 1;
        }
        i = e;
        if matches!(at(b, e), b' ' | b'-') && at(b, e + 1).is_ascii_digit() {
            i = e + 1;
        } else {
            break;
        }
    }
    if !number_ends(b, i) || !(9..=12).contains(&n) {
        return None;
    }
    let d = digits.get(..n)?;
    let ok = if digits[0] == b'0' {
        phone_valid(d, &TRUNK_REGIONS, budget)
    } else {
        area == 2 && phone_valid(d, &[phonenumber::country::Id::BR], budget)
    };
    ok.then(|| Hit::new(Kind::Phone, s, i))
}

/// Whether one of `PHONE_CUES` is within 32 bytes before `p`.
fn phone_cue(b: &[u8], p: usize) -> bool {
    let from = p.saturating_sub(32);
    let before = b.get(from..p).unwrap_or_default();
    // A cue starts a word (`Cancelled` holds no `cell`); a short one ends it too (`callback`, `hotel`).
    PHONE_CUES.iter().any(|cue| {
        before.windows(cue.len()).enumerate().any(|(k, w)| {
            w.eq_ignore_ascii_case(cue)
                && !back(b, from + k, 1).is_ascii_alphabetic()
                && (cue.len() > 4 || !at(b, from + k + cue.len()).is_ascii_alphabetic())
        })
    })
}

/// NANP validity: area code and exchange start with 2-9, the area code is not an N11 service code, and
/// the number is not followed by more digits.
fn nanp_valid(b: &[u8], area: usize, exchange: usize, start: usize, end: usize) -> Option<Hit> {
    let ok = matches!(at(b, area), b'2'..=b'9')
        && !(at(b, area + 1) == b'1' && at(b, area + 2) == b'1')
        && matches!(at(b, exchange), b'2'..=b'9')
        && number_ends(b, end)
        && !(matches!(at(b, end), b'-' | b'.') && at(b, end + 1).is_ascii_digit());
    ok.then(|| Hit::new(Kind::Phone, start, end))
}

// ---------------------------------------------------------------------------------------------------------
// IP addresses

/// A dotted quad at `p` (`run_end` ends its first octet): four decimal octets 0-255 without leading
/// zeros, not part of a longer dotted number and not a version (`v1.2.3.4`, `version 1.2.3.4`,
/// `1.2.3.4.5`). The unspecified address and loopback (127/8) name no host: they are `local_address`
/// findings; the broadcast address is none.
fn ipv4(b: &[u8], p: usize, run_end: usize) -> Option<Hit> {
    if at(b, run_end) != b'.' || after_version_word(b, p) {
        return None;
    }
    let mut octets = [0u32; 4];
    let mut i = p;
    for (k, octet) in octets.iter_mut().enumerate() {
        let e = digits_end(b, i);
        let len = e - i;
        if len == 0 || len > 3 || (len > 1 && at(b, i) == b'0') {
            return None;
        }
        *octet = number(b, i, len);
        if *octet > 255 {
            return None;
        }
        i = e;
        if k < 3 {
            if at(b, i) != b'.' {
                return None;
            }
            i += 1;
        }
    }
    if is_word(at(b, i)) || (at(b, i) == b'.' && at(b, i + 1).is_ascii_digit()) {
        return None;
    }
    if octets == [255, 255, 255, 255] {
        return None;
    }
    let local = octets == [0, 0, 0, 0] || octets[0] == 127;
    Some(Hit::new(
        if local {
            Kind::LocalAddress
        } else {
            Kind::IpAddress
        },
        p,
        i,
    ))
}

/// Whether the word before `p` (past up to three spaces, `:` or `=`) says a version or a section number
/// follows (`version 1.2.3.4`, `RFC 5280 section 4.2.1.13`, `§4.2.1.3`).
fn after_version_word(b: &[u8], p: usize) -> bool {
    let i = run_start(b, p, 3, |c| matches!(c, b' ' | b'\t' | b':' | b'='));
    if back(b, i, 2) == 0xC2 && back(b, i, 1) == 0xA7 {
        return true;
    }
    let s = run_start(b, i, 9, |c| c.is_ascii_alphabetic());
    if is_word(back(b, s, 1)) {
        return false;
    }
    let word = b.get(s..i).unwrap_or_default();
    [
        &b"version"[..],
        b"ver",
        b"v",
        b"release",
        b"build",
        b"rev",
        b"firmware",
        b"section",
        b"sec",
        b"chapter",
        b"clause",
        b"step",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w))
}

/// An IPv6 address around the digit at `p`, full or compressed, that `std::net::Ipv6Addr` parses (an IPv4
/// tail is allowed), with a zone (`%eth0`) when one follows. With only two colons it must be compressed
/// from the start (`::1`) or begin with a group of three or four hex digits (`fe80::1`), so that a ratio
/// or a time (`12::30`) is not one. Loopback and unspecified are `local_address` findings.
fn ipv6(b: &[u8], p: usize) -> Option<Hit> {
    // Cheap test first: the hex group holding `p` has at most four digits and touches a colon.
    let gs = run_start(b, p, 5, is_hex);
    let ge = run_end(b, p, 5, is_hex);
    if ge - gs > 4 || (at(b, ge) != b':' && back(b, gs, 1) != b':') {
        return None;
    }
    let is_part = |c: u8| is_hex(c) || c == b':';
    let s = run_start(b, gs, 40, is_part);
    if is_word(back(b, s, 1)) || matches!(back(b, s, 1), b':' | b'.') {
        return None;
    }
    let mut e = run_end(b, s, 46, |c| is_part(c) || c == b'.');
    if is_word(at(b, e)) || matches!(at(b, e), b':' | b'.') {
        return None;
    }
    while e > s && back(b, e, 1) == b'.' {
        e -= 1;
    }
    if back(b, e, 1) == b':' && back(b, e, 2) != b':' {
        e -= 1;
    }
    let text = b.get(s..e)?;
    let colons = text.iter().filter(|&&c| c == b':').count();
    let first_group = text.iter().take_while(|&&c| is_hex(c)).count();
    if colons < 2
        || (colons == 2
            && !(text.starts_with(b"::") || (first_group >= 3 && text.windows(2).any(|w| w == b"::"))))
    {
        return None;
    }
    let addr: Ipv6Addr = std::str::from_utf8(text).ok()?.parse().ok()?;
    // A zone index: `%eth0`, `%25en0` in a URL, `%3`.
    let mut end = e;
    if at(b, e) == b'%' {
        let z = run_end(b, e + 1, 32, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
        });
        if z > e + 1 {
            end = z;
        }
    }
    let kind = if addr.is_loopback() || addr.is_unspecified() {
        Kind::LocalAddress
    } else {
        Kind::IpAddress
    };
    Some(Hit::new(kind, s, end))
}

#[cfg(test)]
mod tests {
    use super::*;

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
