//! Generic secrets: a random-looking value assigned to a key-like name (`api_key="q8Zr4Lm2Xv9Tn1Pw"`,
//! `"password": "…"`, `Authorization: Bearer …`, `AWS_SECRET_ACCESS_KEY=…`).
//!
//! The prefilter anchors on fragments of key-like names; `check` widens the anchor to the whole identifier,
//! splits it into words (`snake_case`, `kebab-case`, `camelCase`, `dotted.names`), and accepts it when a
//! word is key-like and the last word does not name something else about the secret (`token_url`,
//! `password_file`, `access_key_id`). Then comes an assignment (`=`, `:`, `:=`, `=>`, `==`) and a value
//! that passes `looks_secret` (or, for a password's name, `password::plain_password`).

use super::password::{PASSWORD_WORDS, is_uuid, netrc, placeholder_value, plain_password};
use super::rules::Rules;
use super::{Hit, at, back, entropy, run_end, run_start, starts_with, starts_with_ci};
use crate::kind::Kind;

/// Fragments of key-like names, matched ignoring ASCII case anywhere in an identifier.
pub(crate) const ANCHORS: [&str; 15] = [
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "credential",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "accesskey",
    "private_key",
    "privatekey",
    "_key",
    "-key",
];

/// Shortest value considered.
const MIN_VALUE: usize = 12;
/// Longest value read; anything longer is not a value this detector judges.
pub(super) const MAX_VALUE: usize = 1024;
/// Longest identifier read on either side of the anchor.
const MAX_NAME: usize = 64;

/// Words that make a name key-like wherever they appear in it.
const SECRET_WORDS: [&str; 17] = [
    "authtoken",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "passcode",
    "secret",
    "token",
    "auth",
    "authorization",
    "apikey",
    "accesskey",
    "privatekey",
    "secretkey",
    "credential",
    "credentials",
];

/// Last words that name something about a secret other than its value.
const NOT_THE_VALUE: [&str; 44] = [
    "url",
    "uri",
    "endpoint",
    "path",
    "file",
    "dir",
    "type",
    "name",
    "id",
    "method",
    "mode",
    "header",
    "length",
    "len",
    "count",
    "size",
    "expiry",
    "expires",
    "expiration",
    "ttl",
    "timeout",
    "provider",
    "policy",
    "format",
    "algorithm",
    "alg",
    "scheme",
    "field",
    "label",
    "prefix",
    "env",
    "var",
    "hint",
    "enabled",
    "required",
    "param",
    "location",
    "host",
    "port",
    "user",
    "username",
    "version",
    "limit",
    "kind",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Plain,
    Secret,
    /// A password (`password`, `passwd`, `pwd`, `passphrase`, ...): people choose them, so a plain word
    /// is one too.
    Password,
    /// Contains both `aws` and `secret`: a 40-character value is an AWS secret access key.
    AwsSecret,
}

/// Words that say the value is public (`public_key`, `publishable_key`, `pub_key`).
const PUBLIC_WORDS: [&str; 3] = ["public", "pub", "publishable"];

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

pub(super) fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Validates the name fragment matched at `s..e`. On success the hit covers the value only; otherwise the
/// error is the end of the value that was read and rejected (0 when no value was read). A value whose
/// vendor the name gives (`TWILIO_AUTH_TOKEN=…`) is named after the vendor's rule.
pub(crate) fn check(b: &[u8], s: usize, e: usize, rules: &Rules) -> Result<Hit, usize> {
    let mut read = 0;
    assignment(b, s, e, rules, &mut read).ok_or(read)
}

fn assignment(b: &[u8], s: usize, e: usize, rules: &Rules, read: &mut usize) -> Option<Hit> {
    let name_start = run_start(b, s, MAX_NAME, is_ident);
    let mut name_end = run_end(b, e, MAX_NAME, is_ident);
    if is_ident(back(b, name_start, 1)) || is_ident(at(b, name_end)) {
        return None;
    }
    while name_end > e && matches!(back(b, name_end, 1), b'.' | b'-') {
        name_end -= 1;
    }
    let name_bytes = b.get(name_start..name_end)?;
    let name = classify(name_bytes);
    if name == Name::Plain {
        return None;
    }
    if name == Name::Password
        && let Some(hit) = netrc(b, name_start, name_end)
    {
        *read = hit.end;
        return Some(hit);
    }
    let mut i = name_end;
    // The closing quote of a quoted key: `"api_key": `, `'password' =>`, `\"token\":`, `["API_KEY"] =`.
    if at(b, i) == b'\\' && matches!(at(b, i + 1), b'"' | b'\'') {
        i += 2;
    } else if matches!(at(b, i), b'"' | b'\'') {
        i += 1;
    }
    if at(b, i) == b']' {
        i += 1;
    }
    i = run_end(b, i, 8, is_space);
    // A comparison (`==`) counts only against a literal: `if token == other.token` is code.
    let comparison = starts_with(b, i, b"==");
    i += if starts_with(b, i, b":=") || starts_with(b, i, b"=>") || comparison {
        2
    } else if at(b, i) == b'=' || (at(b, i) == b':' && at(b, i + 1) != b':') {
        1
    } else {
        return None;
    };
    i = run_end(b, i, 8, is_space);
    let (vs, ve, form) = value(b, i)?;
    *read = ve;
    if comparison && form != Form::Quoted {
        return None;
    }
    let v = b.get(vs..ve)?;
    if let Some((rule, kind)) = rules.assigned(name_bytes, v) {
        // A password a person chose can have a vendor's shape and little entropy: judged below as one.
        let chosen = kind == Kind::CredentialPlaceholder && name == Name::Password && !placeholder_value(v);
        if !chosen {
            return Some(Hit::new(kind, vs, ve).with_rule(rule));
        }
    }
    if placeholder_value(v) {
        return Some(Hit::new(Kind::CredentialPlaceholder, vs, ve));
    }
    if is_uuid(v) {
        return None;
    }
    if name == Name::AwsSecret
        && v.len() == 40
        && v.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+')
        && entropy(v) >= 3.0
    {
        return Some(Hit::new(Kind::AwsSecretKey, vs, ve));
    }
    if looks_secret(v, form) || (name == Name::Password && plain_password(b, name_start, vs, ve, form)) {
        return Some(Hit::new(Kind::GenericSecret, vs, ve));
    }
    None
}

/// How a value is written, which says how much code it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// In quotes: a literal, whatever it looks like.
    Quoted,
    /// Bare, and the rest of its line is empty or a comment (`.env`, YAML, headers) or a URL goes on.
    BareLine,
    /// Bare, followed by code punctuation (`token: Token,`, `f(key=value)`, `let k: K = …`).
    BareCode,
}

/// The value at `i`: quoted (`"…"`, `'…'`, `` `…` ``, `\"…\"`) up to its closing quote on the same line,
/// or a bare run of non-space bytes up to a delimiter or an escape (`\n` inside a JSON string). An HTTP
/// auth scheme (`Bearer `, `Basic `, `Token `) is skipped. Returns `(start, end, form)`.
fn value(b: &[u8], i: usize) -> Option<(usize, usize, Form)> {
    let skip_scheme = |i: usize| {
        [&b"bearer "[..], b"basic ", b"token "]
            .iter()
            .find(|s| starts_with_ci(b, i, s))
            .map_or(i, |s| run_end(b, i + s.len(), 8, is_space))
    };
    let q = at(b, i);
    let escaped = q == b'\\' && matches!(at(b, i + 1), b'"' | b'\'');
    if matches!(q, b'"' | b'\'' | b'`') || escaped {
        let quote = if escaped { at(b, i + 1) } else { q };
        let vs = skip_scheme(if escaped { i + 2 } else { i + 1 });
        let ve = run_end(b, vs, MAX_VALUE + 1, |c| {
            c != quote && c != b'\n' && c != b'\r' && !(escaped && c == b'\\')
        });
        let closed = if escaped {
            at(b, ve) == b'\\'
        } else {
            at(b, ve) == quote
        };
        closed.then_some((vs, ve, Form::Quoted))
    } else {
        let vs = skip_scheme(i);
        let ve = run_end(b, vs, MAX_VALUE + 1, |c| {
            c > b' '
                && !matches!(
                    c,
                    b',' | b';' | b'&' | b')' | b']' | b'}' | b'>' | b'<' | b'"' | b'\'' | b'`' | b'\\'
                )
        });
        let rest = run_end(b, ve, 8, is_space);
        let code = matches!(at(b, ve), b',' | b';' | b')' | b']' | b'}' | b'>' | b'<')
            || (rest > ve && matches!(at(b, rest), b'=' | b'{' | b')' | b','));
        Some((vs, ve, if code { Form::BareCode } else { Form::BareLine }))
    }
}

/// Whether a value is a secret rather than prose, a placeholder, a reference or a name: 12 to 1024
/// bytes without white space; not `${VAR}`, `{{var}}`, `<token>`, `%(x)s`, `#comment`; not a URL; not an
/// identifier or code reference (`self.tokenizer.encode`, `get_password()`, `MY_SECRET_NAME`,
/// `your_api_key_here`, and bare: `HistogramVec`, `crate::auth::Token`, `vec![…]`, and, before code
/// punctuation, names made of words such as `_bindgen_ty_30`); and random enough: Shannon entropy of at
/// least 3.5 bits per byte, or 3.0 when it mixes letters and digits.
///
/// A bare value of letters only is taken for a name, so an unquoted secret without a digit is missed
/// (about one random 16-character key in sixteen); quoted, it is judged on entropy.
pub(crate) fn looks_secret(v: &[u8], form: Form) -> bool {
    if v.len() < MIN_VALUE || v.len() > MAX_VALUE || v.iter().any(u8::is_ascii_whitespace) {
        return false;
    }
    let placeholder = matches!(v.first(), Some(b'$' | b'%' | b'<' | b'{' | b'#'))
        || v.windows(2).any(|w| w == b"${" || w == b"{{")
        || v.windows(3).any(|w| w == b"://");
    if placeholder {
        return false;
    }
    let lower_words = v
        .iter()
        .all(|&c| c.is_ascii_lowercase() || matches!(c, b'_' | b'.' | b'-' | b'/'));
    let upper_name = v
        .iter()
        .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        && v.contains(&b'_');
    let code = form != Form::Quoted
        && (v.iter().any(|&c| matches!(c, b'(' | b'[' | b'{'))
            || v.windows(2).any(|w| w == b"::")
            || v.iter()
                .all(|&c| c.is_ascii_alphabetic() || matches!(c, b'_' | b'.' | b':'))
            || (form == Form::BareCode && is_name(v)));
    if lower_words || upper_name || code {
        return false;
    }
    let letters = v.iter().any(u8::is_ascii_alphabetic);
    let digits = v.iter().any(u8::is_ascii_digit);
    let h = entropy(v);
    h >= 3.5 || (letters && digits && h >= 3.0)
}

/// Whether a value reads as an identifier: `[A-Za-z0-9_.]` words of three characters or more on average
/// (`_bindgen_ty_30`, `node.dot2_token`, `NL80211_KEY_DEFAULT`). Random keys break into one- and
/// two-character pieces at every change of case or digit (`q8Zr4Lm2…`).
fn is_name(v: &[u8]) -> bool {
    if !v
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
    {
        return false;
    }
    let mut words = 0usize;
    for_each_word(v, |_| words += 1);
    let chars = v.iter().filter(|c| c.is_ascii_alphanumeric()).count();
    words > 0 && chars >= 3 * words
}

/// Splits an identifier into words and decides whether it names a secret.
fn classify(name: &[u8]) -> Name {
    let mut secret = false;
    let mut password = false;
    let mut public = false;
    let mut aws = false;
    let mut has_secret_word = false;
    let mut words = 0;
    let mut last: &[u8] = &[];
    for_each_word(name, |w| {
        let key_like = SECRET_WORDS.iter().any(|s| w.eq_ignore_ascii_case(s.as_bytes()))
            || (words > 0 && w.eq_ignore_ascii_case(b"key"));
        secret |= key_like;
        password |= PASSWORD_WORDS
            .iter()
            .any(|p| w.eq_ignore_ascii_case(p.as_bytes()));
        public |= PUBLIC_WORDS.iter().any(|p| w.eq_ignore_ascii_case(p.as_bytes()));
        aws |= w.eq_ignore_ascii_case(b"aws");
        has_secret_word |= w.eq_ignore_ascii_case(b"secret");
        words += 1;
        last = w;
    });
    if !secret
        || public
        || NOT_THE_VALUE
            .iter()
            .any(|n| last.eq_ignore_ascii_case(n.as_bytes()))
    {
        Name::Plain
    } else if aws && has_secret_word {
        Name::AwsSecret
    } else if password {
        Name::Password
    } else {
        Name::Secret
    }
}

/// Calls `f` with each word of an identifier: split at non-alphanumerics, at lower-to-upper case changes
/// (`apiKey`), before the last capital of an acronym (`APIKey`), and between letters and digits.
fn for_each_word<'a>(name: &'a [u8], mut f: impl FnMut(&'a [u8])) {
    let mut start: Option<usize> = None;
    for (i, &c) in name.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if let Some(s) = start.take() {
                f(name.get(s..i).unwrap_or_default());
            }
            continue;
        }
        let p = if i > 0 { at(name, i - 1) } else { 0 };
        let n = at(name, i + 1);
        let split = p.is_ascii_alphanumeric()
            && ((c.is_ascii_uppercase()
                && (p.is_ascii_lowercase() || (p.is_ascii_uppercase() && n.is_ascii_lowercase())))
                || (c.is_ascii_digit() != p.is_ascii_digit()));
        match start {
            Some(s) if split => {
                f(name.get(s..i).unwrap_or_default());
                start = Some(i);
            }
            None => start = Some(i),
            Some(_) => {}
        }
    }
    if let Some(s) = start {
        f(name.get(s..).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(name.as_bytes(), |w| {
            out.push(String::from_utf8_lossy(w).into_owned())
        });
        out
    }

    #[test]
    fn identifiers_split_into_words() {
        assert_eq!(words("aws_secret_access_key"), ["aws", "secret", "access", "key"]);
        assert_eq!(words("apiKey"), ["api", "Key"]);
        assert_eq!(words("APIKey"), ["API", "Key"]);
        assert_eq!(words("x-api-key"), ["x", "api", "key"]);
        assert_eq!(words("db2.password"), ["db", "2", "password"]);
    }

    #[test]
    fn names_are_classified() {
        assert_eq!(classify(b"api_key"), Name::Secret);
        assert_eq!(classify(b"AWS_SECRET_ACCESS_KEY"), Name::AwsSecret);
        assert_eq!(classify(b"Authorization"), Name::Secret);
        assert_eq!(classify(b"tokenizer"), Name::Plain);
        assert_eq!(classify(b"max_tokens"), Name::Plain);
        assert_eq!(classify(b"token_url"), Name::Plain);
        assert_eq!(classify(b"key"), Name::Plain);
        assert_eq!(classify(b"monkey"), Name::Plain);
        assert_eq!(classify(b"sort_key"), Name::Secret);
    }

    #[test]
    fn values_are_judged() {
        use Form::*;
        assert!(looks_secret(b"q8Zr4Lm2Xv9Tn1Pw", Quoted));
        assert!(looks_secret(b"q8Zr4Lm2Xv9Tn1Pw", BareLine));
        assert!(looks_secret(b"q8Zr4Lm2Xv9Tn1Pw", BareCode));
        assert!(looks_secret(b"Summer2024Sunshine", BareLine));
        assert!(!looks_secret(b"correct horse battery", Quoted));
        assert!(!looks_secret(b"${TOKEN}", BareLine));
        assert!(!looks_secret(b"your_api_key_here", Quoted));
        assert!(!looks_secret(b"self.tokenizer.encode", BareLine));
        assert!(!looks_secret(b"MY_SECRET_TOKEN_NAME", Quoted));
        assert!(!looks_secret(b"aaaaaaaaaaaaaaaa", Quoted));
        assert!(!looks_secret(b"https://auth.example.com/token", Quoted));
        assert!(!looks_secret(b"HistogramVec", BareCode));
        assert!(!looks_secret(b"HistogramVec", BareLine));
        assert!(!looks_secret(b"crate::auth::Token2", BareLine));
        assert!(!looks_secret(b"_bindgen_ty_30", BareCode));
        assert!(!looks_secret(b"Token![struct", BareCode));
    }

    #[test]
    fn names_and_random_keys_break_into_words_differently() {
        assert!(is_name(b"_bindgen_ty_30"));
        assert!(is_name(b"NL80211_KEY_DEFAULT_BEACON"));
        assert!(is_name(b"node.dot2_token"));
        assert!(!is_name(b"q8Zr4Lm2Xv9Tn1Pw"));
        assert!(!is_name(b"9f86d081884c7d659a2feaa0c55ad015"));
    }
}
