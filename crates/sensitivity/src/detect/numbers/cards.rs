//! Payment cards (issuer ranges, lengths, Luhn) and IBANs (country lengths, mod 97).

use crate::detect::{Hit, at, digits_end, is_word, number_ends};
use crate::kind::Kind;

/// A card number from `p`: 12 (Maestro) or 13 to 19 digits in groups separated by single spaces or dashes, with a known
/// issuer prefix and length and a valid Luhn digit. When more groups follow (`… 1111 2024`), the longest
/// valid prefix of whole groups wins. Written as one bare run, a card has at most 16 digits: longer
/// cards are rare and printed in groups, while 17- to 19-digit integers fill tables in code.
pub(super) fn card(b: &[u8], p: usize) -> Option<Hit> {
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

/// An IBAN starting at `s` (its country code): the country's exact length, compact or with single spaces
/// between groups of four, and `mod 97 == 1`. Letters may be in either case.
pub(super) fn iban(b: &[u8], s: usize) -> Option<Hit> {
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
