//! Scans arbitrary text and checks what must hold for any input: every finding lies inside its string, on
//! `char` boundaries, in order, with the level of its kind or list; the scan's level is the highest
//! finding's or combination's (restricted when the scan is incomplete); spans merged in as the
//! personal-data model's keep all of that; `scan_all` scans each string as `scan` would and
//! stops whole strings at the byte limit; and the few kinds with a check digit or a fixed shape really
//! have it. Any panic, overflow included (debug assertions are on), is a failure too.
//!
//! The input is read as bytes: whole, through `from_utf8_lossy`, for `scan`; split at 0xFF (a byte that
//! valid UTF-8 never contains) into the strings of `scan_all`.

#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sluice_sensitivity::{
    Finding, Incomplete, KeywordList, Kind, Level, PatternRule, Recognised, Scan, ScanLimits, Scanner,
    ScannerConfig,
};

/// The special categories a `special_category` finding may name.
const CATEGORIES: [&str; 9] = [
    "sexual_orientation",
    "sex_life",
    "religion",
    "politics",
    "ethnic_origin",
    "trade_union",
    "genetic",
    "biometric",
    "criminal",
];

const KEYWORDS: [&str; 4] = ["Falcon", "Blue Harbor", "Zürich", "ΣΙΓΜΑ"];
const KEYWORD_LEVEL: Level = Level::Confidential;
/// No `\b` or anchors in it, so that `check_match` can tell a match by its text alone.
const TICKET_PATTERN: &str = "TCK-[0-9]{6}";
const TICKET_LEVEL: Level = Level::Internal;
/// Small enough that inputs often cross it, so both sides of the limit are exercised.
const SMALL_MAX_BYTES: usize = 64;

struct Scanners {
    default: Scanner,
    /// A tenant's scanner: keywords, a custom pattern, a level changed and a detector off.
    tenant: Scanner,
    /// The default detectors under a small byte limit.
    small: Scanner,
}

static SCANNERS: LazyLock<Scanners> = LazyLock::new(|| {
    let build = |config: &ScannerConfig| Scanner::new(config).unwrap_or_else(|e| panic!("{e}"));
    let tenant = ScannerConfig {
        levels: BTreeMap::from([(Kind::Email, Level::Internal)]),
        disabled: [Kind::IpAddress].into(),
        keywords: vec![KeywordList {
            name: Some("code-names".into()),
            words: KEYWORDS.map(String::from).into(),
            level: KEYWORD_LEVEL,
        }],
        patterns: vec![PatternRule {
            name: "ticket".into(),
            pattern: TICKET_PATTERN.into(),
            level: TICKET_LEVEL,
        }],
        ..ScannerConfig::default()
    };
    let small = ScannerConfig {
        limits: ScanLimits {
            max_bytes: SMALL_MAX_BYTES,
        },
        ..ScannerConfig::default()
    };
    Scanners {
        default: build(&ScannerConfig::default()),
        tenant: build(&tenant),
        small: build(&small),
    }
});

fuzz_target!(|data: &[u8]| {
    let s = &*SCANNERS;
    let text = String::from_utf8_lossy(data);
    let mut scan = s.default.scan(&text);
    check(&s.default, &scan, &[&text]);
    check(&s.tenant, &s.tenant.scan(&text), &[&text]);
    // Spans as the model would give them (each run of digits an identifier, each capitalised word a
    // name, a span across both an address), merged in: every invariant still holds.
    s.default.merge(&mut scan, &[&text], model_like(&text));
    check(&s.default, &scan, &[&text]);

    let parts: Vec<String> = data
        .split(|&c| c == 0xFF)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let texts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let all = s.default.scan_all(texts.iter().copied());
    check(&s.default, &all, &texts);
    // Each string is scanned on its own: nothing found in one string depends on another.
    let one_by_one: Vec<Finding> = texts
        .iter()
        .enumerate()
        .flat_map(|(index, t)| {
            s.default
                .scan(t)
                .findings
                .into_iter()
                .map(move |f| Finding { index, ..f })
        })
        .collect();
    assert_eq!(
        sorted(&all.findings),
        sorted(&one_by_one),
        "scan_all differs from scan of each string"
    );

    // Under the limit the same findings; past it, those of the strings before the one that crossed it.
    let small = s.small.scan_all(texts.iter().copied());
    check(&s.small, &small, &texts);
    let mut total = 0usize;
    let crossed = texts.iter().position(|t| {
        total += t.len();
        total > SMALL_MAX_BYTES
    });
    let total: usize = texts.iter().map(|t| t.len()).sum();
    let expected_incomplete = crossed.map(|_| Incomplete::TooLarge {
        bytes: total,
        max_bytes: SMALL_MAX_BYTES,
    });
    assert_eq!(small.incomplete, expected_incomplete);
    let kept: Vec<Finding> = all
        .findings
        .iter()
        .filter(|f| crossed.is_none_or(|c| f.index < c))
        .cloned()
        .collect();
    assert_eq!(
        sorted(&small.findings),
        sorted(&kept),
        "findings under the byte limit"
    );
});

/// Checks what any scan of `texts` by `scanner` must satisfy.
fn check(scanner: &Scanner, scan: &Scan, texts: &[&str]) {
    let mut previous = None;
    for f in &scan.findings {
        let what = format!("{} at {:?} in string {}", f.kind, f.range, f.index);
        let Some(text) = texts.get(f.index) else {
            panic!("{what}: only {} strings", texts.len());
        };
        let r = f.range.clone();
        assert!(
            r.start < r.end && r.end <= text.len(),
            "{what}: out of 0..{}",
            text.len()
        );
        assert!(
            text.is_char_boundary(r.start) && text.is_char_boundary(r.end),
            "{what}: not on char boundaries"
        );
        let key = (f.index, r.start, r.end);
        assert!(previous <= Some(key), "{what}: out of order after {previous:?}");
        previous = Some(key);
        assert!(scanner.is_enabled(f.kind), "{what}: the detector is off");
        let level = match (f.kind, f.rule.as_deref()) {
            (Kind::Keyword, Some("code-names")) => KEYWORD_LEVEL,
            (Kind::CustomPattern, Some("ticket")) => TICKET_LEVEL,
            (Kind::SpecialCategory, Some(c)) if CATEGORIES.contains(&c) => scanner.level(f.kind),
            (kind, None) if !kind.is_tenant_rule() => scanner.level(kind),
            // A vendor's credential format: the rule is one of the built-in rules, of this kind (or a
            // placeholder of it).
            (kind, Some(id))
                if rules().iter().any(|&(rid, _, rkind)| {
                    rid == id && (rkind == kind || kind == Kind::CredentialPlaceholder)
                }) =>
            {
                scanner.level(kind)
            }
            (_, rule) => panic!("{what}: unexpected rule {rule:?}"),
        };
        assert_eq!(f.level, level, "{what}: level");
        check_match(f.kind, &text[r], &what);
    }
    assert_eq!(scan.complete, scan.incomplete.is_none());
    let level = if scan.complete {
        scan.findings
            .iter()
            .map(|f| f.level)
            .chain(scan.combined.iter().map(|c| c.level))
            .max()
            .unwrap_or(Level::Public)
    } else {
        Level::Restricted
    };
    assert_eq!(scan.level, level, "scan level");
}

/// Spans shaped like the model's: runs of ASCII digits as passports, capitalised ASCII words as names,
/// and from the first digit run to the end of the next word as an address.
fn model_like(text: &str) -> Vec<Recognised> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Recognised {
                kind: Kind::Passport,
                index: 0,
                range: start..i,
            });
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j].is_ascii_alphabetic()) && j - i < 24 {
                j += 1;
            }
            out.push(Recognised {
                kind: Kind::PostalAddress,
                index: 0,
                range: start..j,
            });
        } else if b[i].is_ascii_uppercase() {
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Recognised {
                kind: Kind::PersonName,
                index: 0,
                range: start..i,
            });
        } else {
            i += 1;
        }
    }
    out
}

/// The shape a finding's text must have, for the kinds whose detector proves it.
/// The built-in credential rules, read once.
static RULES: LazyLock<Vec<(&'static str, &'static str, Kind)>> =
    LazyLock::new(|| sluice_sensitivity::credential_rules().unwrap_or_else(|e| panic!("{e}")));

fn rules() -> &'static [(&'static str, &'static str, Kind)] {
    &RULES
}

fn check_match(kind: Kind, m: &str, what: &str) {
    match kind {
        Kind::PaymentCard => {
            assert!(
                m.bytes().all(|c| c.is_ascii_digit() || c == b' ' || c == b'-'),
                "{what}: card bytes"
            );
            let digits: Vec<u32> = m
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|c| u32::from(c - b'0'))
                .collect();
            assert!((12..=19).contains(&digits.len()), "{what}: card length");
            assert!(luhn(&digits), "{what}: Luhn check");
        }
        Kind::Iban => {
            assert!(
                m.bytes().all(|c| c.is_ascii_alphanumeric() || c == b' '),
                "{what}: IBAN bytes"
            );
            let compact: Vec<u8> = m
                .bytes()
                .filter(|&c| c != b' ')
                .map(|c| c.to_ascii_uppercase())
                .collect();
            assert!((15..=34).contains(&compact.len()), "{what}: IBAN length");
            assert_eq!(mod97(&compact), 1, "{what}: mod 97 check");
        }
        Kind::Email => assert_eq!(m.matches('@').count(), 1, "{what}: one @"),
        Kind::Keyword => assert!(
            KEYWORDS
                .iter()
                .any(|w| [w.to_string(), w.to_lowercase(), w.to_uppercase()]
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(m))),
            "{what}: not a keyword"
        ),
        Kind::CustomPattern => assert!(
            m.len() == 10 && m.starts_with("TCK-") && m[4..].bytes().all(|c| c.is_ascii_digit()),
            "{what}: not a ticket"
        ),
        _ => {}
    }
}

/// Findings in a fixed order: `scan_all` sorts by string and range only, so findings with the same range
/// may come in either order.
fn sorted(findings: &[Finding]) -> Vec<Finding> {
    let mut v = findings.to_vec();
    v.sort_by_key(|f| {
        (
            f.index,
            f.range.start,
            f.range.end,
            f.kind,
            f.level,
            f.rule.clone(),
        )
    });
    v
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                (d * 2) / 10 + (d * 2) % 10
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The IBAN check: the first four characters moved to the end, letters as 10..35, the number mod 97.
fn mod97(iban: &[u8]) -> u32 {
    let (head, tail) = iban.split_at(4);
    tail.iter().chain(head).fold(0, |r, &c| match c {
        b'0'..=b'9' => (r * 10 + u32::from(c - b'0')) % 97,
        _ => (r * 100 + u32::from(c - b'A') + 10) % 97,
    })
}
