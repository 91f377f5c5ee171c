//! IP addresses: dotted quads and IPv6, full, compressed and zoned; loopback and unspecified ones as
//! local addresses.

use std::net::Ipv6Addr;

use crate::detect::{Hit, at, back, digits_end, is_hex, is_word, number, run_end, run_start};
use crate::kind::Kind;

/// A dotted quad at `p` (`run_end` ends its first octet): four decimal octets 0-255 without leading
/// zeros, not part of a longer dotted number and not a version (`v1.2.3.4`, `version 1.2.3.4`,
/// `1.2.3.4.5`). The unspecified address and loopback (127/8) name no host: they are `local_address`
/// findings; the broadcast address is none.
pub(super) fn ipv4(b: &[u8], p: usize, run_end: usize) -> Option<Hit> {
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
pub(super) fn ipv6(b: &[u8], p: usize) -> Option<Hit> {
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
