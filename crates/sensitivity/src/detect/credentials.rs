//! Detectors anchored on the fixed prefix of a key or token format: PEM private keys, AWS key ids, GitHub,
//! GitLab, Slack, Stripe, OpenAI-style and Google API keys, and JWTs.
//!
//! The prefilter matches anchors ignoring ASCII case, so every detector first checks its prefix exactly.

use super::{Hit, at, back, entropy, is_word, run_end, starts_with};
use crate::kind::Kind;

/// Random token bodies have an entropy far above this; `xxxx…` placeholders far below.
const MIN_TOKEN_ENTROPY: f64 = 3.0;

/// Longest token body read; longer runs are still findings if the format matches.
const MAX_TOKEN: usize = 512;

fn alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn alnum_underscore(c: u8) -> bool {
    is_word(c)
}

fn alnum_dash_underscore(c: u8) -> bool {
    is_word(c) || c == b'-'
}

/// A token of `prefix` (at `s`) and a body of `min..=max` bytes satisfying `body`, not preceded or
/// followed by a token byte, with a random-looking body. Returns the hit, or where to resume.
fn token(
    b: &[u8],
    s: usize,
    prefix: &[u8],
    kind: Kind,
    body: fn(u8) -> bool,
    (min, max): (usize, usize),
) -> Result<Hit, usize> {
    let after_prefix = s + prefix.len();
    if !starts_with(b, s, prefix) || alnum_dash_underscore(back(b, s, 1)) {
        return Err(after_prefix);
    }
    let e = run_end(b, after_prefix, MAX_TOKEN, body);
    let len = e - after_prefix;
    let body_bytes = b.get(after_prefix..e).unwrap_or_default();
    if len < min || len > max || alnum_dash_underscore(at(b, e)) || entropy(body_bytes) < MIN_TOKEN_ENTROPY {
        // Nothing inside a token run can start another finding: resume after it.
        return Err(e.max(after_prefix));
    }
    Ok(Hit::new(kind, s, e))
}

/// Which fixed-prefix format an anchor stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    AwsKeyId,
    Github,
    GithubFineGrained,
    Gitlab,
    Slack,
    Stripe,
    Openai,
    Google,
}

impl Format {
    pub(crate) fn kind(self) -> Kind {
        match self {
            Self::AwsKeyId => Kind::AwsAccessKey,
            Self::Github | Self::GithubFineGrained => Kind::GithubToken,
            Self::Gitlab => Kind::GitlabToken,
            Self::Slack => Kind::SlackToken,
            Self::Stripe => Kind::StripeKey,
            Self::Openai => Kind::OpenaiKey,
            Self::Google => Kind::GoogleApiKey,
        }
    }

    /// The anchors of this format, as the prefilter matches them.
    pub(crate) fn anchors(self) -> &'static [&'static str] {
        match self {
            Self::AwsKeyId => &["AKIA", "ASIA", "ABIA", "ACCA"],
            Self::Github => &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
            Self::GithubFineGrained => &["github_pat_"],
            Self::Gitlab => &["glpat-"],
            Self::Slack => &["xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-"],
            Self::Stripe => &["sk_live_", "rk_live_", "sk_test_", "rk_test_"],
            Self::Openai => &["sk-"],
            Self::Google => &["AIza"],
        }
    }

    pub(crate) const ALL: [Format; 8] = [
        Self::AwsKeyId,
        Self::Github,
        Self::GithubFineGrained,
        Self::Gitlab,
        Self::Slack,
        Self::Stripe,
        Self::Openai,
        Self::Google,
    ];

    /// Validates the anchor matched at `s..e`.
    pub(crate) fn check(self, b: &[u8], s: usize, e: usize) -> Result<Hit, usize> {
        let prefix = b.get(s..e).unwrap_or_default();
        if !self.anchors().iter().any(|a| a.as_bytes() == prefix) {
            return Err(e);
        }
        let kind = self.kind();
        match self {
            // AKIA + 16 base32 characters.
            Self::AwsKeyId => token(
                b,
                s,
                prefix,
                kind,
                |c| matches!(c, b'A'..=b'Z' | b'2'..=b'7'),
                (16, 16),
            ),
            Self::Github => token(b, s, prefix, kind, alnum, (36, MAX_TOKEN)),
            Self::GithubFineGrained => token(b, s, prefix, kind, alnum_underscore, (22, MAX_TOKEN)),
            Self::Gitlab => token(b, s, prefix, kind, alnum_dash_underscore, (20, MAX_TOKEN)),
            Self::Slack => {
                token(b, s, prefix, kind, |c| alnum(c) || c == b'-', (10, MAX_TOKEN)).and_then(|h| {
                    let body = b.get(e..h.end).unwrap_or_default();
                    if body.iter().any(u8::is_ascii_digit) {
                        Ok(h)
                    } else {
                        Err(h.end)
                    }
                })
            }
            Self::Stripe => token(b, s, prefix, kind, alnum, (24, MAX_TOKEN)),
            // sk- + 20 or more of [A-Za-z0-9_-] with upper case, lower case and digits, so that
            // `sk-learn-metrics-and-friends` is not a key.
            Self::Openai => token(b, s, prefix, kind, alnum_dash_underscore, (20, MAX_TOKEN)).and_then(|h| {
                let body = b.get(e..h.end).unwrap_or_default();
                let mixed = body.iter().any(u8::is_ascii_uppercase)
                    && body.iter().any(u8::is_ascii_lowercase)
                    && body.iter().any(u8::is_ascii_digit);
                if mixed { Ok(h) } else { Err(h.end) }
            }),
            Self::Google => token(b, s, prefix, kind, alnum_dash_underscore, (35, 35)),
        }
    }
}

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
    Some(Hit::new(Kind::PrivateKey, s, pem_body_end(b, header_end)))
}

/// The end of the lines after a PEM header: base64 lines, `Proc-Type:`/`DEK-Info:`/`Comment:` headers,
/// blank lines, and the `-----END` line, with `\n`, `\r\n` or an escaped `\\n` between them.
fn pem_body_end(b: &[u8], header_end: usize) -> usize {
    let mut end = header_end;
    let mut i = header_end;
    loop {
        // A line break, as bytes or escaped inside a JSON string.
        let nl = match (at(b, i), at(b, i + 1)) {
            (b'\n', _) => 1,
            (b'\r', b'\n') | (b'\\', b'n') => 2,
            _ => return end,
        };
        i += nl;
        let line = run_end(b, i, 16, |c| c == b' ' || c == b'\t');
        if starts_with(b, line, b"-----END ") {
            let e = run_end(b, line + 9, 64, |c| {
                c.is_ascii_uppercase() || c.is_ascii_digit() || c == b' '
            });
            return if starts_with(b, e, b"-----") { e + 5 } else { e };
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
            return end;
        }
        if e > line {
            end = e;
        }
        i = e;
    }
}

/// A JWT from the `eyJ` at `s`: three base64url segments joined by dots (the signature may be empty), the
/// first two decoding to JSON objects. Returns the hit, or where to resume.
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
    if at(b, p_end) != b'.' || !json_object(b.get(p_start..p_end).unwrap_or_default()) {
        return Err(p_end.max(p_start));
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
