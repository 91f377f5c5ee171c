//! Vendor credential formats as data. `data/credentials.yaml` describes each vendor's keys and tokens (the
//! literal prefix the scanner's prefilter anchors on, the body after it, what may stand before it, the
//! entropy floor, a checksum where the vendor defines one) or, for vendors whose keys carry no prefix, the
//! words of an assignment's name (`HEROKU_API_KEY=`) and the shape of the value. Adding a vendor is a few
//! lines there; the rules are parsed and compiled once per process.
//!
//! A rule never searches: the prefilter finds its prefix, and the rule then matches its body anchored at
//! that position over a bounded window ([`MAX_TOKEN`] bytes), so a scan stays linear in the text whatever
//! the rules say. A key that has the vendor's shape but reads as a placeholder (a documented example key,
//! `EXAMPLE`, `xxxxx`, one character repeated, a body below the entropy floor) is reported as a
//! `credential_placeholder`, not as a live secret.

use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use super::{Hit, at, back};
use crate::kind::Kind;

/// The rule file, compiled into the binary.
const SOURCE: &str = include_str!("../../data/credentials.yaml");

/// The longest window a rule's body or value is matched over.
pub(crate) const MAX_TOKEN: usize = 2048;

/// How far back a rule's `before` part may reach.
const MAX_BEFORE: usize = 96;

/// Most bytes one compiled rule regex may take.
const RULE_SIZE_LIMIT: usize = 1 << 18;

/// One rule as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    vendor: String,
    /// The finding kind; `api_token` unless given.
    #[serde(default)]
    kind: Option<Kind>,
    /// Literal prefixes, matched exactly (ASCII case included unless `ignore_case`).
    #[serde(default)]
    prefixes: Vec<String>,
    /// A regular expression for what follows the prefix.
    #[serde(default)]
    body: Option<String>,
    /// A regular expression for what must stand right before the prefix (the prefix is then mid-token).
    #[serde(default)]
    before: Option<String>,
    /// Words of an assignment's name (`twilio` in `TWILIO_AUTH_TOKEN=`), for keys with no prefix.
    #[serde(default)]
    keywords: Vec<String>,
    /// A regular expression the whole assigned value must match, with `keywords`.
    #[serde(default)]
    value: Option<String>,
    /// Bits per byte the random part must reach; 3.0 unless given (0 turns it off).
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    checksum: Option<Checksum>,
    #[serde(default)]
    ignore_case: bool,
    /// Characters the random part must contain, beyond its pattern.
    #[serde(default)]
    require: Option<Require>,
    /// Where the vendor documents the format.
    #[allow(dead_code)]
    #[serde(default)]
    docs: Option<String>,
    /// Keys the vendor publishes in its documentation: placeholders wherever they appear.
    #[serde(default)]
    known_examples: Vec<String>,
    /// Strings written to the format, each a finding of this rule (checked by the tests).
    #[serde(default)]
    examples: Vec<String>,
    /// Near misses, none a finding of this rule (checked by the tests).
    #[serde(default)]
    not: Vec<String>,
}

/// A checksum a vendor builds into its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Checksum {
    /// The last six characters are the CRC-32 of the characters before them (after the prefix), in base 62
    /// (`0-9A-Za-z`), left-padded with `0`: GitHub's and npm's token formats.
    Crc32Base62,
}

/// Characters a token must contain: a digit, or upper case, lower case and a digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Require {
    Digit,
    Mixed,
}

impl Require {
    fn met(self, parts: &[&[u8]]) -> bool {
        let any = |f: fn(&u8) -> bool| parts.iter().any(|p| p.iter().any(f));
        match self {
            Self::Digit => any(u8::is_ascii_digit),
            Self::Mixed => {
                any(u8::is_ascii_digit) && any(u8::is_ascii_uppercase) && any(u8::is_ascii_lowercase)
            }
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) id: Arc<str>,
    pub(crate) vendor: String,
    pub(crate) kind: Kind,
    pub(crate) prefixes: Vec<String>,
    body: Option<Regex>,
    before: Option<Regex>,
    pub(crate) keywords: Vec<String>,
    value: Option<Regex>,
    entropy: f64,
    checksum: Option<Checksum>,
    ignore_case: bool,
    require: Option<Require>,
    known_examples: Vec<String>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) examples: Vec<String>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) not: Vec<String>,
}

/// Every rule, with an automaton over the keywords of the rules that have them.
#[derive(Debug)]
pub(crate) struct Rules {
    pub(crate) rules: Vec<Rule>,
    /// Keyword automaton (ASCII case ignored) and, by pattern id, the rules it stands for.
    keywords: Option<(AhoCorasick, Vec<Vec<u16>>)>,
}

/// The built-in rules, parsed and compiled on first use.
pub(crate) fn builtin() -> Result<&'static Rules, &'static str> {
    static RULES: OnceLock<Result<Rules, String>> = OnceLock::new();
    RULES
        .get_or_init(|| Rules::parse(SOURCE))
        .as_ref()
        .map_err(String::as_str)
}

/// The longest anchor a prefix gives the prefilter.
const MAX_ANCHOR: usize = 8;

/// The part of a prefix the prefilter anchors on: up to its first separator (`_`, `-`, `.`, `$`, `/`,
/// `~`, `:`) when that leaves four bytes or more (`glpat-`, `hooks.` for `hooks.zapier.com/...`),
/// otherwise its first eight bytes (`sk-ant-a` for `sk-ant-api03-` and `sk-ant-admin01-` alike). Prefixes of one family
/// share an anchor, which keeps the automaton small (its size is most of a scan's cost); the rule then
/// checks its whole prefix from there.
pub(crate) fn anchor(prefix: &str) -> &[u8] {
    let b = prefix.as_bytes();
    let cut = b
        .iter()
        .position(|c| b"_-.$/~:".contains(c))
        .map(|i| i + 1)
        .filter(|&n| n >= 4)
        .unwrap_or(b.len());
    b.get(..cut.min(MAX_ANCHOR)).unwrap_or(b)
}

/// Whether a byte continues a token: a letter, a digit, `_` or `-`.
#[inline]
pub(crate) fn token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

impl Rules {
    pub(crate) fn parse(source: &str) -> Result<Self, String> {
        let raw: Vec<RawRule> = serde_yaml::from_str(source).map_err(|e| format!("credentials.yaml: {e}"))?;
        let mut rules = Vec::with_capacity(raw.len());
        let mut ids = std::collections::HashSet::new();
        for r in raw {
            let rule = compile(r)?;
            if !ids.insert(rule.id.clone()) {
                return Err(format!("credentials.yaml: rule {} is defined twice", rule.id));
            }
            rules.push(rule);
        }
        let mut patterns: Vec<String> = Vec::new();
        let mut by_pattern: Vec<Vec<u16>> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u16::try_from(i).map_err(|_| "credentials.yaml: too many rules".to_owned())?;
            for kw in &rule.keywords {
                let kw = kw.to_ascii_lowercase();
                match patterns.iter().position(|p| *p == kw) {
                    Some(p) => by_pattern[p].push(i),
                    None => {
                        patterns.push(kw);
                        by_pattern.push(vec![i]);
                    }
                }
            }
        }
        let keywords = if patterns.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&patterns)
                .map_err(|e| format!("credentials.yaml: keywords: {e}"))?;
            Some((ac, by_pattern))
        };
        Ok(Self { rules, keywords })
    }

    pub(crate) fn get(&self, i: u16) -> Option<&Rule> {
        self.rules.get(usize::from(i))
    }

    /// The rule whose keywords are in an assignment's `name` and whose value pattern matches `value`
    /// whole: a vendor key assigned to a name that says whose it is. Rules are tried in file order.
    pub(crate) fn assigned(&self, name: &[u8], value: &[u8]) -> Option<(u16, Kind)> {
        let (ac, by_pattern) = self.keywords.as_ref()?;
        let mut best: Option<u16> = None;
        for m in ac.find_overlapping_iter(name) {
            for &i in by_pattern
                .get(m.pattern().as_usize())
                .map_or(&[][..], Vec::as_slice)
            {
                let Some(rule) = self.get(i) else { continue };
                if best.is_some_and(|b| b <= i) {
                    continue;
                }
                if rule.value.as_ref().is_some_and(|re| re.is_match(value)) {
                    best = Some(i);
                }
            }
        }
        let i = best?;
        let rule = self.get(i)?;
        let kind = if rule.placeholder(value, value) {
            Kind::CredentialPlaceholder
        } else {
            rule.kind
        };
        Some((i, kind))
    }
}

fn compile(r: RawRule) -> Result<Rule, String> {
    let at = |what: &str| format!("credentials.yaml: rule {}: {what}", r.id);
    if r.id.trim().is_empty() || r.vendor.trim().is_empty() {
        return Err(format!(
            "credentials.yaml: a rule needs an id and a vendor (near {:?})",
            r.id
        ));
    }
    let regex = |src: &Option<String>, wrap: fn(&str) -> String| -> Result<Option<Regex>, String> {
        src.as_deref()
            .map(|s| {
                RegexBuilder::new(&wrap(s))
                    .unicode(false)
                    .size_limit(RULE_SIZE_LIMIT)
                    .build()
                    .map_err(|e| at(&format!("{s:?}: {e}")))
            })
            .transpose()
    };
    let body = regex(&r.body, |s| format!("^(?:{s})"))?;
    let before = regex(&r.before, |s| format!("(?:{s})\\z"))?;
    let value = regex(&r.value, |s| format!("^(?:{s})\\z"))?;
    match (r.prefixes.is_empty(), r.keywords.is_empty()) {
        (true, true) => return Err(at("give prefixes (with a body) or keywords (with a value)")),
        (false, _) if body.is_none() => return Err(at("prefixes need a body")),
        (_, false) if value.is_none() => return Err(at("keywords need a value")),
        _ => {}
    }
    // A short prefix would stop the prefilter all the time; two bytes will do when one is punctuation
    // (`Q~`), which prose rarely has.
    if let Some(p) = r
        .prefixes
        .iter()
        .find(|p| p.len() < 2 || (p.len() == 2 && p.bytes().all(|c| c.is_ascii_alphanumeric())))
    {
        return Err(at(&format!(
            "prefix {p:?} is too short: three bytes, or two with punctuation"
        )));
    }
    if r.examples.is_empty() || r.not.is_empty() {
        return Err(at("give at least one example and one near miss (`not`)"));
    }
    let kind = r.kind.unwrap_or(Kind::ApiToken);
    if !kind.is_credential() {
        return Err(at(&format!("{kind} is not a credential kind")));
    }
    Ok(Rule {
        id: r.id.trim().into(),
        vendor: r.vendor,
        kind,
        prefixes: r.prefixes,
        body,
        before,
        keywords: r.keywords,
        value,
        entropy: r.entropy.unwrap_or(3.0),
        checksum: r.checksum,
        ignore_case: r.ignore_case,
        require: r.require,
        known_examples: r.known_examples,
        examples: r.examples,
        not: r.not,
    })
}

impl Rule {
    /// Validates this rule's prefix matched at `s..e`. Returns the hit (of the rule's kind, or a
    /// placeholder) or where the search resumes.
    pub(crate) fn check(&self, b: &[u8], s: usize, e: usize) -> Result<Hit, usize> {
        // The anchor at `s..e` may be a stem shared by several prefixes: the longest of this rule's
        // prefixes that the text has at `s` is the one.
        let here = |p: &&String| {
            let found = b.get(s..s + p.len());
            if self.ignore_case {
                found.is_some_and(|f| f.eq_ignore_ascii_case(p.as_bytes()))
            } else {
                found == Some(p.as_bytes())
            }
        };
        let Some(prefix) = self.prefixes.iter().filter(here).max_by_key(|p| p.len()) else {
            return Err(e);
        };
        let e = s + prefix.len();
        let prefix = prefix.as_bytes();
        let start = match &self.before {
            Some(re) => {
                let from = s.saturating_sub(MAX_BEFORE);
                let window = b.get(from..s).unwrap_or_default();
                let m = re.find(window).ok_or(e)?;
                let start = from + m.start();
                if token_byte(back(b, start, 1)) {
                    return Err(e);
                }
                start
            }
            // After an escaped line break or tab (`\nghp_…` in a JSON string) a token starts too.
            None if token_byte(back(b, s, 1))
                && prefix.first().is_some_and(|&c| token_byte(c))
                && !(back(b, s, 2) == b'\\' && matches!(back(b, s, 1), b'n' | b't' | b'r')) =>
            {
                return Err(e);
            }
            None => s,
        };
        let body_re = self.body.as_ref().ok_or(e)?;
        let window = b.get(e..b.len().min(e + MAX_TOKEN)).unwrap_or_default();
        // On a miss the search resumes right after the prefix, so that an anchor inside the run (`token`
        // in `railway_token`) is still found; the body is read over a bounded window, so a scan stays
        // linear however many prefixes a text repeats.
        let resume = || e;
        let m = body_re.find(window).ok_or_else(resume)?;
        let end = e + m.end();
        // A body that ends on a token byte must not run on into more of them.
        if token_byte(back(b, end, 1)) && token_byte(at(b, end)) {
            return Err(resume());
        }
        let body = b.get(e..end).unwrap_or_default();
        let random = b.get(start..s).unwrap_or_default();
        if self.require.is_some_and(|r| !r.met(&[random, body])) {
            return Err(resume());
        }
        let whole = b.get(start..end).unwrap_or_default();
        let kind = if self.placeholder_parts(whole, random, body) {
            Kind::CredentialPlaceholder
        } else {
            self.kind
        };
        Ok(Hit::new(kind, start, end))
    }

    /// Whether an assigned value reads as a placeholder rather than a live key.
    fn placeholder(&self, whole: &[u8], value: &[u8]) -> bool {
        self.placeholder_parts(whole, &[], value)
    }

    fn placeholder_parts(&self, whole: &[u8], before: &[u8], body: &[u8]) -> bool {
        if self.known_examples.iter().any(|k| k.as_bytes() == whole) {
            return true;
        }
        if looks_placeholder(before) || looks_placeholder(body) {
            return true;
        }
        if self.checksum.is_some_and(|c| c.valid(body)) {
            return false;
        }
        let n = before.len() + body.len();
        if n == 0 || self.entropy <= 0.0 {
            return false;
        }
        // A short body cannot reach a high entropy: the floor is at most one bit under log2 of its length.
        let floor = self.entropy.min((n as f64).log2() - 1.0);
        super::entropy_of(&[before, body]) < floor
    }
}

/// Whether the random part of a key is written as a placeholder: `EXAMPLE`, `xxxxx`, `YOUR`, `*****`,
/// `12345678`, `abcdefgh`, or one character repeated eight times or more.
pub(crate) fn looks_placeholder(v: &[u8]) -> bool {
    if v.is_empty() {
        return false;
    }
    const WORDS: [&[u8]; 8] = [
        b"example",
        b"xxxxx",
        b"your",
        b"*****",
        b"12345678",
        b"abcdefgh",
        b"placeholder",
        b"redacted",
    ];
    let contains = |w: &[u8]| v.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    if WORDS.iter().any(|w| contains(w)) {
        return true;
    }
    let mut run = 1;
    for w in v.windows(2) {
        run = if w[0] == w[1] { run + 1 } else { 1 };
        if run >= 8 {
            return true;
        }
    }
    v.len() >= 4 && v.iter().all(|&c| c == v[0])
}

impl Checksum {
    fn valid(self, body: &[u8]) -> bool {
        match self {
            Self::Crc32Base62 => {
                let Some(split) = body.len().checked_sub(6) else {
                    return false;
                };
                let (data, check) = body.split_at(split);
                base62_6(crc32(data)) == check
            }
        }
    }
}

/// The value in base 62 (`0-9A-Za-z`), six characters, left-padded with `0`.
pub(crate) fn base62_6(mut n: u32) -> [u8; 6] {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, slot) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &x| {
        table[((c ^ u32::from(x)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(&base62_6(0), b"000000");
        assert_eq!(&base62_6(61), b"00000z");
        assert_eq!(&base62_6(62), b"000010");
    }

    #[test]
    fn the_builtin_rules_compile() {
        let rules = builtin().unwrap();
        assert!(rules.rules.len() >= 150, "{} rules", rules.rules.len());
    }

    #[test]
    fn placeholders() {
        assert!(looks_placeholder(b"IOSFODNN7EXAMPLE"));
        assert!(looks_placeholder(b"xxxxxxxxxxxxxxxx"));
        assert!(looks_placeholder(b"aaaaaaaaaaaaaaaaaaaa"));
        assert!(!looks_placeholder(b"q8Zr4Lm2Xv9Tn1Pw"));
    }
}

#[cfg(test)]
mod examples {
    use crate::{Kind, Scanner, ScannerConfig};

    /// Every rule's examples are found as that rule, with its kind, covering the whole token (or, for an
    /// assignment, its value); none of its near misses is.
    #[test]
    fn every_rule_finds_its_examples_and_none_of_its_near_misses() {
        let scanner = Scanner::new(&ScannerConfig::default()).unwrap();
        let rules = super::builtin().unwrap();
        let mut failures = Vec::new();
        for rule in &rules.rules {
            let keyword = rule.prefixes.is_empty();
            for example in &rule.examples {
                let text = if keyword {
                    format!("{example}\n")
                } else {
                    format!("the key is {example} for staging")
                };
                let scan = scanner.scan(&text);
                let hit = scan
                    .findings
                    .iter()
                    .find(|f| f.rule.as_deref() == Some(&*rule.id));
                let expected = if keyword {
                    None
                } else {
                    Some(11..11 + example.len())
                };
                match hit {
                    Some(f) if f.kind == rule.kind && expected.as_ref().is_none_or(|r| *r == f.range) => {}
                    other => failures.push(format!(
                        "{}: example {example:?} gave {other:?} (all: {:?})",
                        rule.id, scan.findings
                    )),
                }
            }
            for near in &rule.not {
                let text = if keyword {
                    format!("{near}\n")
                } else {
                    format!("the key is {near} for staging")
                };
                let scan = scanner.scan(&text);
                if let Some(f) = scan
                    .findings
                    .iter()
                    .find(|f| f.rule.as_deref() == Some(&*rule.id) && f.kind != Kind::CredentialPlaceholder)
                {
                    failures.push(format!("{}: near miss {near:?} was found: {f:?}", rule.id));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn at_least_150_vendors() {
        let rules = super::builtin().unwrap();
        let vendors: std::collections::BTreeSet<&str> =
            rules.rules.iter().map(|r| r.vendor.as_str()).collect();
        assert!(vendors.len() >= 150, "{} vendors", vendors.len());
    }
}
