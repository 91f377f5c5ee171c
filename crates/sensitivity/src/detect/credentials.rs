//! Detectors for credentials with a structure a pattern cannot check: PEM private keys (plain, or the
//! whole block base64-encoded as Kubernetes secrets hold it), Slack webhooks and JWTs. Vendor token
//! formats are data (`data/credentials.yaml`, [`super::rules`]).

use super::{Hit, at, back, run_end, starts_with};
use crate::kind::Kind;

/// Longest token body read; longer runs are still findings if the format matches.
const MAX_TOKEN: usize = 512;

fn alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// The base64 of `-----BEGIN`, where a base64-encoded PEM block starts.
pub(crate) const PEM_BASE64: &str = "LS0tLS1CRUdJTi";

/// Shortest base64 line that counts as key material after a PEM header.
const MIN_PEM_LINE: usize = 16;

/// A Slack incoming webhook: `hooks.slack.com/services/…` (or `/workflows/`, `/triggers/`) with a path of
/// at least 20 characters; the range takes in a `https://` before it.
pub(crate) fn slack_webhook(b: &[u8], s: usize, e: usize) -> Option<Hit> {
    if !starts_with(b, s, b"hooks.slack.com/") {
        return None;
    }
    let path = [&b"services/"[..], b"workflows/", b"triggers/"]
        .into_iter()
        .find(|p| starts_with(b, e, p))?;
    let pe = run_end(b, e + path.len(), MAX_TOKEN, |c| {
        alnum(c) || matches!(c, b'/' | b'_' | b'-')
    });
    if pe - (e + path.len()) < 20 {
        return None;
    }
    let start = [&b"https://"[..], b"http://"]
        .into_iter()
        .find(|p| s >= p.len() && starts_with(b, s - p.len(), p))
        .map_or(s, |p| s - p.len());
    Some(Hit::new(Kind::SlackWebhook, start, pe))
}

/// A PEM private key from its `-----BEGIN` at `s`: the header alone is enough (`RSA`, `EC`, `DSA`,
/// `OPENSSH`, `ENCRYPTED`, `PGP … BLOCK` or plain PKCS#8 `PRIVATE KEY`). The range covers the body and
/// the `-----END …-----` line when they follow, so a truncated key is still covered as far as it goes.
pub(crate) fn pem(b: &[u8], s: usize) -> Option<Hit> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    if !starts_with(b, s, BEGIN) {
        return None;
    }
    let label_start = s + BEGIN.len();
    let label_end = run_end(b, label_start, 64, |c| {
        c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
    });
    let label = b.get(label_start..label_end)?;
    if !(label.ends_with(b"PRIVATE KEY") || label.ends_with(b"PRIVATE KEY BLOCK")) {
        return None;
    }
    let header_end = if starts_with(b, label_end, b"-----") {
        label_end + 5
    } else {
        label_end
    };
    let (mut end, mut material) = pem_body_end(b, header_end);
    if !material {
        (end, material) = pem_flattened(b, header_end).unwrap_or((end, material));
    }
    // A header with no key after it (in prose about keys, or a template) is no key.
    let kind = if material {
        Kind::PrivateKey
    } else {
        Kind::CredentialPlaceholder
    };
    Some(Hit::new(kind, s, end))
}

/// A key pasted onto one line, its lines joined by spaces (`-----BEGIN … KEY----- MIIE… -----END …`):
/// the end of the base64 words and the `-----END` line after the header, when one of them is key material.
fn pem_flattened(b: &[u8], header_end: usize) -> Option<(usize, bool)> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    let mut i = header_end;
    let mut end = header_end;
    let mut material = false;
    loop {
        let j = run_end(b, i, 2, |c| c == b' ');
        if j == i {
            break;
        }
        if starts_with(b, j, b"-----END ") {
            let e = run_end(b, j + 9, 64, |c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
            });
            end = if starts_with(b, e, b"-----") { e + 5 } else { e };
            break;
        }
        let e = run_end(b, j, 8192, b64);
        if e - j < 4 || !matches!(at(b, e), b' ' | b'\n' | b'\r' | b'"' | b'\'' | 0) {
            break;
        }
        material |= e - j >= MIN_PEM_LINE;
        end = e;
        i = e;
    }
    material.then_some((end, material))
}

/// A PEM block encoded in base64 as a whole (`LS0tLS1CRUdJTi...`, as Kubernetes secrets and CI
/// variables hold keys), from its start at `s`: the decoded header must name a private key, and the run
/// of base64 must be long enough to hold one (a header alone is a placeholder).
pub(crate) fn pem_base64(b: &[u8], s: usize) -> Result<Hit, usize> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=');
    if !starts_with(b, s, PEM_BASE64.as_bytes()) || b64(back(b, s, 1)) {
        return Err(s + PEM_BASE64.len());
    }
    let e = run_end(b, s, usize::MAX, b64);
    // Decode the first 60 characters: 45 bytes, enough for the longest private key header.
    let mut header = [0u8; 45];
    let mut n = 0;
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in b.get(s..e.min(s + 60)).unwrap_or_default() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => break,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            if let Some(slot) = header.get_mut(n) {
                *slot = ((acc >> bits) & 0xff) as u8;
                n += 1;
            }
        }
    }
    let decoded = header.get(..n).unwrap_or_default();
    let line_end = decoded
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .unwrap_or(decoded.len());
    let line = decoded.get(..line_end).unwrap_or_default();
    let private = line.windows(11).any(|w| w == b"PRIVATE KEY");
    if !private {
        return Err(e);
    }
    // The header alone is about 45 base64 characters; a key adds hundreds.
    let kind = if e - s >= 200 {
        Kind::PrivateKey
    } else {
        Kind::CredentialPlaceholder
    };
    Ok(Hit::new(kind, s, e))
}

/// The end of the lines after a PEM header: base64 lines, `Proc-Type:`/`DEK-Info:`/`Comment:` headers,
/// blank lines, and the `-----END` line, with `\n`, `\r\n` or an escaped `\\n` between them; and whether
/// a line of key material (base64 of at least `MIN_PEM_LINE` characters) was among them.
fn pem_body_end(b: &[u8], header_end: usize) -> (usize, bool) {
    let mut end = header_end;
    let mut material = false;
    let mut i = header_end;
    loop {
        // A line break, as bytes or escaped inside a JSON string.
        let nl = match (at(b, i), at(b, i + 1)) {
            (b'\n', _) => 1,
            (b'\r', b'\n') | (b'\\', b'n') => 2,
            _ => return (end, material),
        };
        i += nl;
        let line = run_end(b, i, 16, |c| c == b' ' || c == b'\t');
        if starts_with(b, line, b"-----END ") {
            let e = run_end(b, line + 9, 64, |c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
            });
            return (if starts_with(b, e, b"-----") { e + 5 } else { e }, material);
        }
        let header = [&b"Proc-Type:"[..], b"DEK-Info:", b"Comment:"]
            .iter()
            .any(|h| starts_with(b, line, h));
        let e = if header {
            run_end(b, line, 1024, |c| c != b'\n' && c != b'\r' && c != b'\\')
        } else {
            run_end(b, line, 1024, |c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')
            })
        };
        // A line of its own, or not part of the key (prose after a truncated key).
        let line_ends = matches!(at(b, e), b'\n' | b'\r' | 0) || (at(b, e) == b'\\' && at(b, e + 1) == b'n');
        if !line_ends {
            return (end, material);
        }
        if e > line {
            end = e;
            material |= !header && e - line >= MIN_PEM_LINE;
        }
        i = e;
    }
}

/// A JWT from the `eyJ` at `s`: two or three base64url segments joined by dots (an unsecured token has no
/// signature, or an empty one), the first two decoding to JSON objects. Returns the hit, or where to
/// resume.
pub(crate) fn jwt(b: &[u8], s: usize) -> Result<Hit, usize> {
    let b64url = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    if !starts_with(b, s, b"eyJ") || b64url(back(b, s, 1)) || back(b, s, 1) == b'.' {
        return Err(s + 3);
    }
    let h_end = run_end(b, s, usize::MAX, b64url);
    if at(b, h_end) != b'.' || !json_object(b.get(s..h_end).unwrap_or_default()) {
        return Err(h_end);
    }
    let p_start = h_end + 1;
    let p_end = run_end(b, p_start, usize::MAX, b64url);
    if !json_object(b.get(p_start..p_end).unwrap_or_default()) {
        return Err(p_end.max(p_start));
    }
    if at(b, p_end) != b'.' {
        return Ok(Hit::new(Kind::Jwt, s, p_end));
    }
    let sig_end = run_end(b, p_end + 1, usize::MAX, b64url);
    if at(b, sig_end) == b'.' {
        return Err(sig_end);
    }
    Ok(Hit::new(Kind::Jwt, s, sig_end))
}

/// Whether base64url text decodes to something that starts with `{` and ends with `}` (ignoring white
/// space), decoding on the fly without a buffer.
fn json_object(text: &[u8]) -> bool {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        }))
    }
    if text.len() % 4 == 1 || text.len() < 4 {
        return false;
    }
    let mut first = None;
    let mut last = 0u8;
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in text {
        let Some(v) = value(c) else { return false };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            let byte = ((acc >> bits) & 0xff) as u8;
            if !byte.is_ascii_whitespace() {
                first.get_or_insert(byte);
                last = byte;
            }
        }
    }
    first == Some(b'{') && last == b'}'
}
