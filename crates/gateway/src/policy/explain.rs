//! Decisions explained: what was found where (kinds and positions, never the text), the level and where it
//! came from, the rule, where the request may go and what was ruled out, and why. `sluice policy explain`
//! prints one; the gateway keeps the recent ones for `/admin/decisions/{id}`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::level::Level;
use crate::route::{Decision, Excluded, FleetView, Refusal, RequestFacts};

/// Calls `f` with every string of a JSON object, object keys included, depth first, and its path
/// (`messages[1].content`; a key's path ends in `{key}`). The scanner reads strings in this order.
fn walk<'a>(body: &'a Map<String, Value>, with_paths: bool, f: &mut dyn FnMut(&'a str, Option<String>)) {
    fn value<'a>(v: &'a Value, path: Option<&str>, f: &mut dyn FnMut(&'a str, Option<String>)) {
        match v {
            Value::String(s) => f(s, path.map(str::to_owned)),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = path.map(|p| format!("{p}[{i}]"));
                    value(item, p.as_deref(), f);
                }
            }
            Value::Object(map) => object(map, path, f),
            _ => {}
        }
    }
    fn object<'a>(
        map: &'a Map<String, Value>,
        path: Option<&str>,
        f: &mut dyn FnMut(&'a str, Option<String>),
    ) {
        for (k, v) in map {
            let p = path.map(|p| {
                if p.is_empty() {
                    k.clone()
                } else {
                    format!("{p}.{k}")
                }
            });
            f(k, p.as_ref().map(|p| format!("{p}{{key}}")));
            value(v, p.as_deref(), f);
        }
    }
    object(body, with_paths.then_some(""), f);
}

/// Every string of a request body, in the order the scanner numbers them.
pub fn strings(body: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    walk(body, false, &mut |s, _| out.push(s));
    out
}

/// The path of every string of a request body, in the order of [`strings`].
pub fn string_paths(body: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk(body, true, &mut |_, p| out.push(p.unwrap_or_default()));
    out
}

/// One finding: what and where, never the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingAt {
    pub kind: &'static str,
    pub level: Level,
    /// The JSON path of the string it is in.
    pub field: String,
    /// Byte offsets in that string.
    pub start: usize,
    pub end: usize,
    /// The keyword list or pattern that matched, for tenant lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

/// A place the request may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetAt {
    pub backend: String,
    pub model: String,
    pub route: &'static str,
    pub clearance: Level,
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub decision_id: String,
    pub tenant: String,
    pub model: String,
    /// The request's level and its parts.
    pub level: Level,
    pub detected: Level,
    pub declared: Option<Level>,
    pub floor: Level,
    pub scan_complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_incomplete: Option<String>,
    pub findings: Vec<FindingAt>,
    pub prompt_tokens_estimate: u64,
    pub prefer: Option<&'static str>,
    /// `route` or `reject`.
    pub outcome: &'static str,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substituted_for: Option<String>,
    /// Where it may go, best first.
    pub targets: Vec<TargetAt>,
    pub excluded: Vec<Excluded>,
    /// For a refusal: the HTTP status and code the client gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub reason: String,
}

/// Explains a decision. `floor` is the tenant's floor; paths are computed only when there are findings.
pub fn explain(
    decision_id: &str,
    facts: &RequestFacts<'_>,
    floor: Level,
    fleet: &FleetView,
    result: &Result<Decision, Refusal>,
) -> Explanation {
    let paths = if facts.scan.findings.is_empty() {
        Vec::new()
    } else {
        string_paths(&facts.request.body)
    };
    let findings = facts
        .scan
        .findings
        .iter()
        .map(|f| FindingAt {
            kind: f.kind.as_str(),
            level: f.level,
            field: paths.get(f.index).cloned().unwrap_or_default(),
            start: f.range.start,
            end: f.range.end,
            list: f.rule.as_deref().map(str::to_owned),
        })
        .collect();
    let mut e = Explanation {
        decision_id: decision_id.to_owned(),
        tenant: facts.tenant.to_owned(),
        model: facts.request.model.clone(),
        level: facts.level().max(floor),
        detected: facts.scan.level,
        declared: facts.declared,
        floor,
        scan_complete: facts.scan.complete,
        scan_incomplete: facts.scan.incomplete.as_ref().map(ToString::to_string),
        findings,
        prompt_tokens_estimate: facts.prompt_tokens,
        prefer: facts.prefer.map(|p| p.as_str()),
        outcome: "route",
        rule: None,
        substituted_for: None,
        targets: Vec::new(),
        excluded: Vec::new(),
        status: None,
        code: None,
        reason: String::new(),
    };
    match result {
        Ok(d) => {
            e.level = d.level;
            e.rule = Some(d.rule.clone());
            e.substituted_for = d.substituted_for.clone();
            e.targets = d
                .targets
                .iter()
                .filter_map(|t| {
                    let b = fleet.backends.get(t.backend)?;
                    Some(TargetAt {
                        backend: b.name.clone(),
                        model: t.model.clone(),
                        route: b.route.as_str(),
                        clearance: b.clearance,
                        ready: b.ready,
                    })
                })
                .collect();
            e.excluded = d.excluded.clone();
            e.reason = d.reason.clone();
        }
        Err(r) => {
            e.outcome = "reject";
            if let Some(l) = r.level {
                e.level = l;
            }
            e.rule = r.rule.clone();
            e.excluded = r.excluded.clone();
            e.status = Some(r.error.status.as_u16());
            e.code = Some(r.error.code);
            e.reason = r.error.message.clone();
        }
    }
    e
}
