//! Phone numbers: E.164, North American formats, and national formats without a country code,
//! validated against libphonenumber's metadata.

use crate::detect::{Hit, at, back, digits_at, digits_end, is_word, number_ends, run_end};
use crate::kind::Kind;

/// E.164 at `s` (the `+`): 8 to 15 digits in all, not starting with 0, either in one run or as a country
/// code of one to three digits and groups separated by one or two of ` -.()` (`+1 (415) 555-2671`,
/// `+44 (0)20 7946 0958`). A longer first group followed by more (`+10000-01-01`, `+999999-12-31`) is
/// a date with an extended year.
pub(super) fn e164(b: &[u8], s: usize) -> Option<Hit> {
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
pub(super) fn nanp(b: &[u8], p: usize, run: usize) -> Option<Hit> {
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
pub(super) fn nanp_paren(b: &[u8], s: usize) -> Option<Hit> {
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
pub(super) fn national_phone(b: &[u8], p: usize, budget: &mut u32) -> Option<Hit> {
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
pub(super) fn national_phone_paren(b: &[u8], s: usize, budget: &mut u32) -> Option<Hit> {
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
    // `Cancelled` holds no `cell`; a short cue ends its word too (`callback`, `hotel`).
    super::cue_before(b, p, &PHONE_CUES, 4)
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
