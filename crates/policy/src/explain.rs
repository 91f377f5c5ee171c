//! Decisions explained: what was found where (kinds and positions, never the text), the level and where it
//! came from, the rule, where the request may go and what was ruled out, and why. `sluice policy explain`
//! prints one; the gateway keeps the recent ones for `/admin/decisions/{id}`.

use serde::Serialize;
use sluice_sensitivity::Level;

use crate::decision::{Decision, Excluded, Refusal};
use crate::facts::{RequestFacts, finding_paths};
use crate::fleet::FleetView;

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

/// One backend tried before the one that served (or before the request failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The backend, and the member of it that was tried when one was.
    pub backend: String,
    pub model: String,
    /// Why it did not serve: the stable code of its error.
    pub code: &'static str,
}

/// How a routed request ended: where it was served (or last tried), what was tried before, and the
/// status and code the client got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ended {
    /// The member that served (a worker or a cloud backend), or the last one tried.
    pub backend: Option<String>,
    pub route: Option<&'static str>,
    /// The model it was asked for there.
    pub model: Option<String>,
    /// Backends tried first, in order, that were down or full.
    pub fallbacks: Vec<Attempt>,
    /// Why the local substitute served a request for a cloud model (`policy.fallbacks`), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fell_back: Option<&'static str>,
    pub status: u16,
    /// `ok`, or the stable error code the client got.
    pub code: &'static str,
}

/// What a `redact` rule did with a request: the kinds it replaces, how many values of each were replaced
/// (never the values), the level of what was sent, and, when the request could not go redacted, why and
/// which findings of its redacted form stood in the way (kinds and positions, never the text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedactionAt {
    /// `redacted` (sent with placeholders) or `fell_back` (the rule's fallback decided instead).
    pub outcome: &'static str,
    pub kinds: Vec<&'static str>,
    /// The level of the redacted form: the policy's estimate, then the gateway's scan of what is sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// Distinct values replaced, by kind.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub replaced: std::collections::BTreeMap<&'static str, usize>,
    /// What the scan of the redacted form still found above where it could go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub survived: Vec<FindingAt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A combination of kinds a request's findings met.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CombinedAt {
    pub name: String,
    pub level: Level,
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
    /// Combinations of kinds the findings met, with the level each gives.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub combined: Vec<CombinedAt>,
    /// Whether the personal-data model read the text: `off`, `not_needed`, `ran` or `over_budget`.
    pub ner: &'static str,
    pub prompt_tokens_estimate: u64,
    pub prefer: Option<&'static str>,
    /// `route` or `reject`.
    pub outcome: &'static str,
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substituted_for: Option<String>,
    /// `local`, `cloud` or `redacted-cloud`: the route of the first target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'static str>,
    /// What a `redact` rule did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redaction: Option<RedactionAt>,
    /// Where it may go, best first.
    pub targets: Vec<TargetAt>,
    pub excluded: Vec<Excluded>,
    /// How the request ended, once it has: filled by the gateway when the answer is complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// For a refusal: the HTTP status and code the client gets (filled by the gateway's error mapping).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub reason: String,
}

impl RedactionAt {
    /// A rule that could not redact, and why.
    pub fn fell_back(why: &str) -> Self {
        Self {
            outcome: "fell_back",
            kinds: Vec::new(),
            level: None,
            replaced: std::collections::BTreeMap::new(),
            survived: Vec::new(),
            why: Some(why.to_owned()),
        }
    }
}

/// Where each finding of a scan is, by the JSON paths of `body`: kinds and positions, never the text.
pub fn findings_at(
    scan: &sluice_sensitivity::Scan,
    body: &serde_json::Map<String, serde_json::Value>,
) -> Vec<FindingAt> {
    let paths = if scan.findings.is_empty() {
        Vec::new()
    } else {
        finding_paths(body, scan)
    };
    scan.findings
        .iter()
        .map(|f| FindingAt {
            kind: f.kind.as_str(),
            level: f.level,
            field: paths.get(f.index).cloned().unwrap_or_default(),
            start: f.range.start,
            end: f.range.end,
            list: f.rule.as_deref().map(str::to_owned),
        })
        .collect()
}

/// Explains a decision. `floor` is the tenant's floor; paths are computed only when there are findings.
pub fn explain(
    decision_id: &str,
    facts: &RequestFacts<'_>,
    floor: Level,
    fleet: &FleetView,
    result: &Result<Decision, Refusal>,
) -> Explanation {
    let findings = findings_at(facts.scan, facts.body);
    let mut e = Explanation {
        decision_id: decision_id.to_owned(),
        tenant: facts.tenant.to_owned(),
        model: facts.model.to_owned(),
        level: facts.level().max(floor),
        detected: facts.scan.level,
        declared: facts.declared,
        floor,
        scan_complete: facts.scan.complete,
        scan_incomplete: facts.scan.incomplete.as_ref().map(ToString::to_string),
        findings,
        combined: facts
            .scan
            .combined
            .iter()
            .map(|c| CombinedAt {
                name: c.name.to_string(),
                level: c.level,
            })
            .collect(),
        ner: facts.scan.model.as_str(),
        prompt_tokens_estimate: facts.prompt_tokens,
        prefer: facts.prefer.map(|p| p.as_str()),
        outcome: "route",
        rule: None,
        substituted_for: None,
        route: None,
        redaction: None,
        targets: Vec::new(),
        excluded: Vec::new(),
        ended: None,
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
            e.route = e.targets.first().map(|t| match (&d.redaction, t.route) {
                (Some(_), "cloud") => "redacted-cloud",
                (_, route) => route,
            });
            e.redaction = match (&d.redaction, &d.unredactable) {
                (Some(r), _) => Some(RedactionAt {
                    outcome: "redacted",
                    kinds: r.kinds.iter().map(|k| k.as_str()).collect(),
                    level: Some(r.level),
                    replaced: std::collections::BTreeMap::new(),
                    survived: Vec::new(),
                    why: None,
                }),
                (None, Some(why)) => Some(RedactionAt::fell_back(why)),
                (None, None) => None,
            };
        }
        Err(r) => {
            e.outcome = "reject";
            if let Some(l) = r.level {
                e.level = l;
            }
            e.rule = r.rule.clone();
            e.excluded = r.excluded.clone();
            e.redaction = r.unredactable.as_deref().map(|w| RedactionAt::fell_back(w));
            // The client's status, code and message are the gateway's to say (its error mapping fills
            // them); the policy knows only the kind of refusal.
            e.reason = r.reason.as_str().to_owned();
        }
    }
    e
}
