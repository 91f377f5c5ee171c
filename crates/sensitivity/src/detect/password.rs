//! Passwords people choose and what stands where a secret goes without being one: plain-word
//! passwords in assignments, connection strings and `.netrc`, placeholders (`<your-key>`, `changeme`), and
//! values that are identifiers (UUIDs). `generic` asks these once it has a key-like name and its value.

use super::generic::{Form, MAX_VALUE, is_space};
use super::rules::looks_placeholder;
use super::{Hit, at, back, run_end, run_start, starts_with_ci};
use crate::kind::Kind;

/// Words that make a name a password's.
pub(super) const PASSWORD_WORDS: [&str; 6] = ["password", "passwd", "pwd", "pass", "passphrase", "passcode"];

/// Bare values that are a type, a literal or a word about the password rather than one.
const NOT_A_PASSWORD: [&str; 24] = [
    "true",
    "false",
    "null",
    "none",
    "nil",
    "undefined",
    "required",
    "optional",
    "string",
    "str",
    "text",
    "password",
    "secret",
    "hidden",
    "masked",
    "empty",
    "yes",
    "no",
    "on",
    "off",
    "enabled",
    "disabled",
    "bool",
    "int",
];

/// Shortest password taken when it is a plain word.
const MIN_PASSWORD: usize = 4;
/// `.netrc` (`machine host login alice password s3cr3t`): a password word followed by a space and the
/// value, after `login` or `machine` on the same line.
pub(super) fn netrc(b: &[u8], name_start: usize, name_end: usize) -> Option<Hit> {
    if !matches!(at(b, name_end), b' ' | b'\t') {
        return None;
    }
    // A .netrc entry: the line starts with `machine` or `default` (`machine h login u password p`), or
    // the password is on a line of its own after a `login` or `machine` line.
    let starts_with_word = |from: usize, words: &[&[u8]]| {
        let i = run_end(b, from, 64, is_space);
        words
            .iter()
            .any(|w| starts_with_ci(b, i, w) && matches!(at(b, i + w.len()), b' ' | b'\t'))
    };
    let line_start = run_start(b, name_start, 256, |c| c != b'\n' && c != b'\r');
    let cued = if run_end(b, line_start, 64, is_space) == name_start {
        let prev_end = run_start(b, line_start, 2, |c| c == b'\n' || c == b'\r');
        let prev_start = run_start(b, prev_end, 256, |c| c != b'\n' && c != b'\r');
        prev_end < line_start && starts_with_word(prev_start, &[b"login", b"machine", b"default"])
    } else {
        starts_with_word(line_start, &[b"machine", b"default"])
    };
    if !cued {
        return None;
    }
    let vs = run_end(b, name_end, 8, is_space);
    let ve = run_end(b, vs, MAX_VALUE + 1, |c| c > b' ' && c != b'"' && c != b'\'');
    let v = b.get(vs..ve)?;
    (v.len() >= MIN_PASSWORD && !placeholder_value(v) && !word_about_password(v))
        .then(|| Hit::new(Kind::GenericSecret, vs, ve))
}

/// Whether a value stands where a secret goes without being one: `<your-api-key>`, `xxxxxxxx`,
/// `********`, `changeme`, `sk-...`, `YOUR_TOKEN_HERE`, one character repeated.
pub(super) fn placeholder_value(v: &[u8]) -> bool {
    // Placeholders are short; a long value is judged as a secret.
    if v.len() < 3 || v.len() > 64 {
        return false;
    }
    let lower = |w: &[u8]| v.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    (v.first() == Some(&b'<') && v.last() == Some(&b'>'))
        || v.ends_with(b"...")
        || v.ends_with("\u{2026}".as_bytes())
        || looks_placeholder(v)
        || [
            &b"changeme"[..],
            b"change_me",
            b"replace_me",
            b"replaceme",
            b"insert_",
            b"_here",
            b"dummy",
        ]
        .iter()
        .any(|w| lower(w))
}

/// Whether a value is a UUID (`123e4567-e89b-12d3-a456-426614174000`): an identifier, not a secret,
/// unless a vendor rule says otherwise.
pub(super) fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

pub(super) fn word_about_password(v: &[u8]) -> bool {
    NOT_A_PASSWORD
        .iter()
        .any(|w| v.eq_ignore_ascii_case(w.as_bytes()))
}

/// A password people chose, judged without entropy: at least four characters, not a word about passwords
/// or a literal (`true`, `null`, `string`), and written where nothing but the value can be: in quotes,
/// last on its line, or in a connection string (`;Password=…;`, `&password=…&`).
pub(super) fn plain_password(b: &[u8], name_start: usize, vs: usize, ve: usize, form: Form) -> bool {
    let Some(v) = b.get(vs..ve) else { return false };
    let about_passwords = PASSWORD_WORDS
        .iter()
        .any(|w| v.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w.as_bytes())) && w.len() >= 4);
    // A type (`String!`, `SecretStr`, `Option<String>`) or a path (`/home/alice`) is no password.
    let type_like = form != Form::Quoted
        && v.first().is_some_and(u8::is_ascii_uppercase)
        && v.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'!' | b'?' | b'<' | b'>'))
        && !v.iter().any(u8::is_ascii_digit);
    let reference = matches!(v.first(), Some(b'$' | b'%' | b'/' | b'~'))
        || about_passwords
        || type_like
        || v.contains(&b'=')
        || v.iter().any(|&c| matches!(c, b'(' | b'[' | b'{'))
        || (v.contains(&b'.')
            && v.iter()
                .all(|&c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.')));
    if v.len() < MIN_PASSWORD || word_about_password(v) || reference {
        return false;
    }
    let in_list =
        matches!(back(b, name_start, 1), b';' | b'&' | b'?') && matches!(at(b, ve), b';' | b'&' | 0);
    if in_list {
        return true;
    }
    match form {
        Form::Quoted => true,
        Form::BareCode => false,
        Form::BareLine => {
            let rest = run_end(b, ve, 8, is_space);
            matches!(at(b, rest), b'\n' | b'\r' | b'#' | 0)
                || (at(b, rest) == b'\\' && at(b, rest + 1) == b'n')
        }
    }
}
