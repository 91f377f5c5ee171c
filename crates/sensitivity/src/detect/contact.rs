//! Detectors anchored on `@`: e-mail addresses, and passwords written into URLs
//! (`postgres://user:password@host`).

use super::{Hit, at, back, is_word, run_end, run_start};
use crate::kind::{Kind, KindSet};

/// What the `@` at `a` is part of.
pub(crate) fn scan_at(b: &[u8], a: usize, on: KindSet) -> Option<Hit> {
    match url_password(b, a) {
        // `scheme://user:password@`: the password is the finding; the host is not an e-mail address.
        Userinfo::Password(h) => on.has(Kind::GenericSecret).then_some(h),
        Userinfo::Placeholder(h) => on.has(Kind::CredentialPlaceholder).then_some(h),
        Userinfo::No => on.has(Kind::Email).then(|| email(b, a)).flatten(),
    }
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// An e-mail address around the `@` at `a`: a local part of up to 64 characters, then a domain of at
/// least two labels whose last is alphabetic and not an image extension (`icon@2x.png` is a file name).
/// A `git@host` SSH remote is not a person's address.
fn email(b: &[u8], a: usize) -> Option<Hit> {
    let mut s = run_start(b, a, 65, is_local);
    if a - s > 64 || is_local(back(b, s, 1)) {
        return None;
    }
    while s < a && at(b, s) == b'.' {
        s += 1;
    }
    let local = b.get(s..a)?;
    if local.is_empty()
        || local.ends_with(b".")
        || local == b"git"
        || !local.iter().any(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    // Domain labels: [A-Za-z0-9-]{1,63}, not starting or ending with a dash, joined by single dots.
    let mut i = a + 1;
    let mut labels = 0;
    let mut last;
    loop {
        let e = run_end(b, i, 64, |c| c.is_ascii_alphanumeric() || c == b'-');
        if e == i || e - i > 63 || at(b, i) == b'-' || back(b, e, 1) == b'-' {
            return None;
        }
        labels += 1;
        last = (i, e);
        if at(b, e) == b'.' && at(b, e + 1).is_ascii_alphanumeric() && e - a < 253 {
            i = e + 1;
        } else {
            i = e;
            break;
        }
    }
    let tld = b.get(last.0..last.1)?;
    // A Sentry DSN (`<key>@o123.ingest.sentry.io/456`) is a credential, found by its rule, not an address.
    let domain = b.get(a + 1..i).unwrap_or_default();
    if domain.windows(8).any(|w| w.eq_ignore_ascii_case(b".ingest.")) && domain.ends_with(b"sentry.io") {
        return None;
    }
    let image = [&b"png"[..], b"jpg", b"jpeg", b"gif", b"svg", b"webp"]
        .iter()
        .any(|x| tld.eq_ignore_ascii_case(x));
    // A top-level domain is letters, or an internationalised one in punycode (`xn--p1ai`).
    let punycode = tld.len() > 4
        && tld[..4].eq_ignore_ascii_case(b"xn--")
        && tld[4..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-');
    let ok = labels >= 2
        && tld.len() >= 2
        && (tld.iter().all(u8::is_ascii_alphabetic) || punycode)
        && !image
        && !is_word(at(b, i))
        && at(b, i) != b'-';
    ok.then(|| Hit::new(Kind::Email, s, i))
}

enum Userinfo {
    No,
    Placeholder(Hit),
    Password(Hit),
}

/// Passwords that documentation writes into example URLs.
const EXAMPLE_PASSWORDS: [&str; 14] = [
    "password", "pass", "passwd", "pwd", "secret", "changeme", "foo", "bar", "baz", "test", "example",
    "user", "pw", "xxx",
];

fn is_userinfo(c: u8) -> bool {
    // `@` ends the userinfo; `url_password` reads back across one inside a password.
    c > b' '
        && c < 0x7f
        && !matches!(
            c,
            b'/' | b'@' | b':' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`'
        )
}

/// `scheme://user:password@` ending at the `@` at `a`. Placeholders (`${DB_PASSWORD}`, `<password>`,
/// `***`, the word `password` itself, the `foo:bar@` of examples, any password for a host under
/// `example.com`, `.org` or `.net`) make it `Placeholder`; any other password of three characters or more
/// is one, plain words included (`admin:hunter2@db`).
fn url_password(b: &[u8], a: usize) -> Userinfo {
    let mut ps = run_start(b, a, 129, is_userinfo);
    // A password with an unescaped `@` in it (`P@ssw0rd`): the userinfo runs to the last `@` before the
    // host, so read back across the earlier ones.
    while back(b, ps, 1) == b'@' && a - ps < 128 {
        let q = run_start(b, ps - 1, 129, is_userinfo);
        if q + 1 == ps {
            break;
        }
        ps = q;
    }
    if a == ps || a - ps > 128 || back(b, ps, 1) != b':' {
        return Userinfo::No;
    }
    let us = run_start(b, ps - 1, 129, is_userinfo);
    if ps - 1 - us > 128 || back(b, us, 1) != b'/' || back(b, us, 2) != b'/' || back(b, us, 3) != b':' {
        return Userinfo::No;
    }
    if !back(b, us, 4).is_ascii_alphanumeric() {
        return Userinfo::No;
    }
    let Some(password) = b.get(ps..a) else {
        return Userinfo::No;
    };
    let host_end = run_end(b, a + 1, 253, |c| {
        c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-')
    });
    let host = b.get(a + 1..host_end).unwrap_or_default();
    let example_host = [&b"example.com"[..], b"example.org", b"example.net"]
        .iter()
        .any(|h| host.len() >= h.len() && host[host.len() - h.len()..].eq_ignore_ascii_case(h));
    let hit = Hit::new(Kind::GenericSecret, ps, a);
    let placeholder = matches!(password.first(), Some(b'$' | b'<' | b'{' | b'[' | b'%'))
        || password.iter().all(|&c| matches!(c, b'*' | b'x' | b'X' | b'.'))
        || EXAMPLE_PASSWORDS
            .iter()
            .any(|w| password.eq_ignore_ascii_case(w.as_bytes()))
        || example_host;
    if placeholder {
        Userinfo::Placeholder(Hit::new(Kind::CredentialPlaceholder, ps, a))
    } else if password.len() < 3 {
        Userinfo::No
    } else {
        Userinfo::Password(hit)
    }
}
