//! What a policy knows of a request ([`RequestFacts`]): who sent it, the model it asks for, what the
//! scanner found, what the client declared and prefers, and its headers through [`RequestHeaders`] (the
//! policy's own view of them, so that it links no HTTP crate). Also the walk over every string of a JSON
//! body, shared by the scan and by explanations so that finding indices and paths agree.

use serde_json::{Map, Value};
use sluice_sensitivity::{Level, Scan};

use crate::fleet::Route;

/// Request headers as rules test them.
pub trait RequestHeaders {
    /// Every value of the header `name` (lower case), in the order the client sent them.
    fn values(&self, name: &str) -> Vec<&[u8]>;
}

/// No headers at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeaders;

impl RequestHeaders for NoHeaders {
    fn values(&self, _: &str) -> Vec<&[u8]> {
        Vec::new()
    }
}

/// Headers as `(name, value)` pairs, names in lower case (tests, offline explanations).
impl RequestHeaders for Vec<(String, String)> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
            .collect()
    }
}

/// What the policy knows of a request.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub tenant: &'a str,
    /// The model the client asked for.
    pub model: &'a str,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The body as the client sent it (explanations name the JSON path of each finding).
    pub body: &'a Map<String, Value>,
    /// The request's headers (rules may test them).
    pub headers: &'a (dyn RequestHeaders + Sync),
    /// The level the client declared in `x-sluice-sensitivity`.
    pub declared: Option<Level>,
    /// What the scanner found in every string of the request (an incomplete scan is `restricted`).
    pub scan: &'a Scan,
    /// The client's `x-sluice-prefer` hint.
    pub prefer: Option<Route>,
    /// The estimated prompt size in tokens.
    pub prompt_tokens: u64,
}

impl std::fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFacts")
            .field("tenant", &self.tenant)
            .field("model", &self.model)
            .field("declared", &self.declared)
            .field("prefer", &self.prefer)
            .field("prompt_tokens", &self.prompt_tokens)
            .finish_non_exhaustive()
    }
}

impl RequestFacts<'_> {
    /// The level the request has before any tenant floor: the highest of what was found and what the
    /// client declared (a declaration can raise the level, never lower it). A policy may raise it further;
    /// the dispatcher never lets it go lower.
    pub fn level(&self) -> Level {
        self.scan.level.max(self.declared.unwrap_or(Level::Public))
    }
}

/// The estimated number of tokens in some text: about four bytes of English per token, rounded up. Good
/// enough to tell a short prompt from a huge one before anything is tokenised.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// Calls `f` with every string of a JSON object, object keys included, depth first, and its path
/// (`messages[1].content`; a key's path ends in `{key}`). The scanner reads strings in this order. A key
/// for which `hide` (given the key's own index in that order) is true is written `*` in paths, so that a
/// path never repeats a key that holds a finding.
fn walk<'a>(
    body: &'a Map<String, Value>,
    with_paths: bool,
    hide: &dyn Fn(usize) -> bool,
    f: &mut dyn FnMut(&'a str, Option<String>),
) {
    struct Walk<'h, 'f, 'a> {
        hide: &'h dyn Fn(usize) -> bool,
        f: &'f mut dyn FnMut(&'a str, Option<String>),
        next: usize,
    }
    impl<'a> Walk<'_, '_, 'a> {
        fn emit(&mut self, s: &'a str, path: Option<String>) {
            (self.f)(s, path);
            self.next += 1;
        }
        fn value(&mut self, v: &'a Value, path: Option<&str>) {
            match v {
                Value::String(s) => self.emit(s, path.map(str::to_owned)),
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let p = path.map(|p| format!("{p}[{i}]"));
                        self.value(item, p.as_deref());
                    }
                }
                Value::Object(map) => self.object(map, path),
                _ => {}
            }
        }
        fn object(&mut self, map: &'a Map<String, Value>, path: Option<&str>) {
            for (k, v) in map {
                let segment = if (self.hide)(self.next) { "*" } else { k.as_str() };
                let p = path.map(|p| {
                    if p.is_empty() {
                        segment.to_owned()
                    } else {
                        format!("{p}.{segment}")
                    }
                });
                self.emit(k, p.as_ref().map(|p| format!("{p}{{key}}")));
                self.value(v, p.as_deref());
            }
        }
    }
    Walk { hide, f, next: 0 }.object(body, with_paths.then_some(""));
}

/// Every string of a request body, in the order the scanner numbers them.
pub fn strings(body: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    walk(body, false, &|_| false, &mut |s, _| out.push(s));
    out
}

/// The path of every string of a request body, in the order of [`strings`].
pub fn string_paths(body: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk(body, true, &|_| false, &mut |_, p| {
        out.push(p.unwrap_or_default())
    });
    out
}

/// [`string_paths`] for reporting where findings are: a key that holds one is written `*`, so that no path
/// repeats what was found (`metadata.*{key}`, not the e-mail address that was the key).
pub fn finding_paths(body: &Map<String, Value>, scan: &Scan) -> Vec<String> {
    let mut flagged = vec![false; scan.findings.iter().map(|f| f.index + 1).max().unwrap_or(0)];
    for f in &scan.findings {
        if let Some(slot) = flagged.get_mut(f.index) {
            *slot = true;
        }
    }
    let mut out = Vec::new();
    walk(
        body,
        true,
        &|i| flagged.get(i).copied().unwrap_or(false),
        &mut |_, p| out.push(p.unwrap_or_default()),
    );
    out
}
