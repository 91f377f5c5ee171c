//! Redacting a request and proving the result: the findings of the rule's kinds are replaced in every
//! string the model reads (contents, parts, names, tool definitions and arguments, stop sequences), the
//! redacted body is parsed again as a request and scanned again with everything the scanner has (its
//! patterns, and the personal-data model when the gateway runs it), and it may be sent only if that scan
//! puts it at or below where it is going. The dispatcher's clearance check, at the level proven here,
//! stays the last word.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_policy::{
    Decision, Explanation, FindingAt, FleetView, Level, Redaction, RedactionAt, Refusal, RefusalReason,
    findings_at, string_paths, strings,
};
use sluice_sensitivity::{Kind, ModelPass, Scan, Scanner};

use super::{Mapping, redact_except, rewrite_body};
use crate::api::{ChatRequest, parse_chat_request};
use crate::recognise::Recogniser;

/// Strings that the API reads rather than the model (paths with every index written `[]`), besides object
/// keys. Nothing is replaced in them: a role, a model name or a function name must stay what it is (a
/// placeholder is no valid function or participant name). A replaced value that also occurs in one of
/// them means the request cannot go redacted.
const STRUCTURAL: [&str; 17] = [
    "model",
    "reasoning_effort",
    "service_tier",
    "tool_choice",
    "tool_choice.type",
    "tool_choice.function.name",
    "response_format.type",
    "modalities[]",
    "messages[].role",
    "messages[].name",
    "messages[].content[].type",
    "messages[].content[].image_url.detail",
    "messages[].content[].input_audio.format",
    "messages[].tool_calls[].type",
    "messages[].tool_calls[].function.name",
    "tools[].type",
    "tools[].function.name",
];

/// Strings that carry data, not text (images and audio, as URLs or base64): nothing is replaced in them,
/// and a short value that happens to occur in base64 is no mention. The scan of the redacted form still
/// reads them.
const OPAQUE: [&str; 3] = [
    "messages[].content[].image_url.url",
    "messages[].content[].input_audio.data",
    "messages[].content[].file.file_data",
];

/// A redacted request that may be sent.
#[derive(Debug)]
pub struct Sendable {
    pub request: ChatRequest,
    /// The placeholders and their values: the request's alone, dropped with it.
    pub mapping: Arc<Mapping>,
    /// Distinct values replaced, by kind.
    pub counts: BTreeMap<Kind, usize>,
    /// The level of the redacted form, as its own scan, the declared level and the tenant's floor say.
    pub level: Level,
}

/// Why a redacted form may not be sent: a sentence, and what its scan still found above where it could
/// go (kinds and positions, never the text).
#[derive(Debug)]
pub struct Unproven {
    pub why: String,
    pub survived: Vec<FindingAt>,
    /// Distinct values that had been replaced, by kind.
    pub counts: BTreeMap<Kind, usize>,
    /// The kinds the rule replaces.
    pub kinds: Vec<Kind>,
}

/// What the proof needs besides the request.
pub struct Proving<'a> {
    pub scanner: &'a Scanner,
    pub recogniser: Option<&'a Recogniser>,
    /// The kinds to replace.
    pub kinds: &'a [Kind],
    /// The lowest level the request can have whatever is replaced: declared, and the tenant's floor.
    pub base: Level,
    /// The highest clearance among the targets.
    pub clearance: Level,
}

impl Proving<'_> {
    /// For a decision to send redacted: the kinds, and the best clearance among its targets.
    pub fn of<'a>(
        scanner: &'a Scanner,
        recogniser: Option<&'a Recogniser>,
        decision: &'a Decision,
        plan: &'a Redaction,
        fleet: &FleetView,
        base: Level,
    ) -> Proving<'a> {
        Proving {
            scanner,
            recogniser,
            kinds: &plan.kinds,
            base,
            clearance: decision
                .targets
                .iter()
                .filter_map(|t| fleet.backends.get(t.backend))
                .map(|b| b.clearance)
                .max()
                .unwrap_or(Level::Public),
        }
    }
}

/// A request with its findings replaced, parsed again, not yet proven.
#[derive(Debug)]
pub struct Prepared {
    sent: ChatRequest,
    mapping: Mapping,
    counts: BTreeMap<Kind, usize>,
    kinds: Vec<Kind>,
}

/// Replaces the findings of `kinds` in `request`: every string but the structural ones.
pub fn prepare(request: &ChatRequest, scan: &Scan, kinds: &[Kind]) -> Result<Prepared, Unproven> {
    let texts = strings(&request.body);
    let classes: Vec<Class> = string_paths(&request.body).iter().map(|p| class(p)).collect();
    let untouched: Vec<bool> = classes.iter().map(|c| *c != Class::Text).collect();
    let replace = scan.findings.iter().filter(|f| kinds.contains(&f.kind));
    let redacted = redact_except(&texts, replace, &untouched);
    let unproven = |why: &str| Unproven {
        why: why.to_owned(),
        survived: Vec::new(),
        counts: redacted.counts.clone(),
        kinds: kinds.to_vec(),
    };
    if redacted
        .mapping
        .first_mention(&texts, |i| classes.get(i) == Some(&Class::Structural))
        .is_some()
    {
        return Err(unproven(
            "a value it replaces also occurs in an object key or a field the API reads (a role, a model or \
             function name, a participant's name), which is never rewritten",
        ));
    }
    let body = rewrite_body(&request.body, &redacted.texts)
        .ok_or_else(|| unproven("its redacted form could not be written"))?;
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let sent = parse_chat_request(&bytes).map_err(|e| {
        unproven(&format!(
            "its redacted form is no longer a valid request: {}",
            e.message
        ))
    })?;
    Ok(Prepared {
        sent,
        mapping: redacted.mapping,
        counts: redacted.counts,
        kinds: kinds.to_vec(),
    })
}

impl Prepared {
    /// The strings of the redacted request, in the scanner's order.
    pub fn texts(&self) -> Vec<&str> {
        strings(&self.sent.body)
    }

    /// Whether the redacted form may go, from its own scan (`check`, of [`Prepared::texts`]).
    pub fn judge(self, check: &Scan, base: Level, clearance: Level) -> Result<Sendable, Unproven> {
        let level = check.level.max(base);
        if level <= clearance {
            return Ok(Sendable {
                request: self.sent,
                mapping: Arc::new(self.mapping),
                counts: self.counts,
                level,
            });
        }
        let survived: Vec<FindingAt> = findings_at(check, &self.sent.body)
            .into_iter()
            .filter(|f| f.level > clearance)
            .collect();
        let mut parts: Vec<String> = survived
            .iter()
            .map(|f| format!("{} ({}) in {}", f.kind, f.level, f.field))
            .collect();
        parts.extend(
            check
                .combined
                .iter()
                .filter(|c| c.level > clearance)
                .map(|c| format!("the combination {} ({})", c.name, c.level)),
        );
        if let Some(i) = &check.incomplete {
            parts.push(format!("its scan is incomplete ({i})"));
        }
        if base > clearance {
            parts.push(format!("it is {base} whatever is replaced"));
        }
        Err(Unproven {
            why: format!(
                "its redacted form is still {level}, above the {clearance} clearance of where it may go: {}",
                parts.join("; ")
            ),
            survived,
            counts: self.counts,
            kinds: self.kinds,
        })
    }
}

/// Replaces the findings of `p.kinds` in `request` and proves the result, with the personal-data model
/// on its pool when the gateway runs it.
pub async fn redact_and_prove(
    request: &ChatRequest,
    scan: &Scan,
    p: Proving<'_>,
) -> Result<Sendable, Unproven> {
    let prepared = prepare(request, scan, p.kinds)?;
    let texts = prepared.texts();
    let mut check = p.scanner.scan_all(texts.iter().copied());
    match p.recogniser {
        Some(r) => {
            if r.recognise_whole(p.scanner, &mut check, &texts).await.is_err() {
                drop(texts);
                return Err(Unproven {
                    why: "the personal-data model is busy and could not read its redacted form".to_owned(),
                    survived: Vec::new(),
                    counts: prepared.counts,
                    kinds: prepared.kinds,
                });
            }
        }
        None => check.model = ModelPass::Off,
    }
    drop(texts);
    prepared.judge(&check, p.base, p.clearance)
}

/// The rule's fallback for a redacted form that did not prove safe, and why (a rejection's reason says it
/// too, so that the client reads it).
pub fn fall_back(
    decision: &Decision,
    plan: &Redaction,
    unproven: &Unproven,
) -> (Result<Decision, Refusal>, String) {
    let why = format!(
        "rule `{}` cannot send this request redacted: {}",
        decision.rule, unproven.why
    );
    let mut fallback = (*plan.fallback).clone();
    if let Err(refusal) = &mut fallback {
        match &mut refusal.reason {
            RefusalReason::Rejected { reason, .. }
            | RefusalReason::NoCompliantBackend(reason)
            | RefusalReason::OverBudget { reason, .. } => {
                reason.push_str(&format!(" ({why})"));
            }
            RefusalReason::ModelNotFound { .. } => {}
        }
    }
    (fallback, why)
}

/// What the explanation of a request says of its redaction once the gateway has tried it: the level proven
/// and the values replaced, or why the fallback decided and what survived.
pub fn explain_outcome(e: &mut Explanation, outcome: Result<&Sendable, (&str, &Unproven)>) {
    let count = |c: &BTreeMap<Kind, usize>| c.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    match outcome {
        Ok(s) => {
            if let Some(r) = &mut e.redaction {
                r.level = Some(s.level);
                r.replaced = count(&s.counts);
            }
        }
        Err((why, u)) => {
            if !e.reason.contains(why) {
                e.reason = format!("{why}; its fallback: {}", e.reason);
            }
            let mut at = RedactionAt::fell_back(why);
            at.kinds = u.kinds.iter().map(|k| k.as_str()).collect();
            at.replaced = count(&u.counts);
            at.survived = u.survived.clone();
            e.redaction = Some(at);
        }
    }
}

/// What a string of a request is, for redaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Read by the model: replaced.
    Text,
    /// Read by the API: left alone, and no replaced value may occur in it.
    Structural,
    /// Data: left alone.
    Opaque,
}

/// The class of the string at `path` (as `sluice_policy::string_paths` writes it).
fn class(path: &str) -> Class {
    if path.ends_with("{key}") {
        return Class::Structural;
    }
    // Every index written `[]`.
    let mut shape = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                shape.push('[');
            }
            ']' => {
                in_index = false;
                shape.push(']');
            }
            _ if in_index => {}
            c => shape.push(c),
        }
    }
    if STRUCTURAL.contains(&shape.as_str()) {
        Class::Structural
    } else if OPAQUE.contains(&shape.as_str()) {
        Class::Opaque
    } else {
        Class::Text
    }
}

#[cfg(test)]
mod tests {
    use sluice_sensitivity::{Finding, Kind, Level, Scan};

    use super::{Class, class, prepare};
    use crate::api::parse_chat_request;

    fn name_in(body: &serde_json::Value, text: &str, name: &str) -> Scan {
        let request = parse_chat_request(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let texts = sluice_policy::strings(&request.body);
        let index = texts.iter().position(|t| *t == text).unwrap_or_default();
        let start = text.find(name).unwrap_or_default();
        Scan {
            findings: vec![Finding {
                kind: Kind::PersonName,
                level: Level::Internal,
                index,
                range: start..start + name.len(),
                rule: None,
            }],
            level: Level::Internal,
            combined: Vec::new(),
            complete: true,
            incomplete: None,
            model: sluice_sensitivity::ModelPass::Off,
        }
    }

    #[test]
    fn a_value_also_in_a_field_the_api_reads_cannot_go_redacted() {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "name": "Ann", "content": "Ann called."}]});
        let request = parse_chat_request(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let scan = name_in(&body, "Ann called.", "Ann");
        let err = prepare(&request, &scan, &[Kind::PersonName]).err().map(|u| u.why);
        assert!(err.is_some_and(|w| w.contains("never rewritten")));
        // Elsewhere, every mention goes, JSON-escaped ones too.
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "Write to José."},
            {"role": "tool", "tool_call_id": "c1", "content": "{\"to\": \"Jos\\u00e9\"}"}]});
        let request = parse_chat_request(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        let scan = name_in(&body, "Write to José.", "José");
        let prepared = prepare(&request, &scan, &[Kind::PersonName]).unwrap_or_else(|u| panic!("{}", u.why));
        assert_eq!(
            prepared
                .texts()
                .into_iter()
                .filter(|t| t.contains("PERSON"))
                .collect::<Vec<_>>(),
            ["Write to [PERSON_1].", "{\"to\": \"[PERSON_1]\"}"]
        );
    }

    #[test]
    fn keys_roles_and_names_are_structural_data_is_opaque_and_contents_are_text() {
        for path in [
            "model",
            "messages[0].role",
            "messages[12].content[0].type",
            "messages[2].name",
            "tools[0].function.parameters.properties{key}",
            "messages{key}",
            "response_format.type",
            "messages[3].tool_calls[0].function.name",
            "tool_choice.function.name",
        ] {
            assert_eq!(class(path), Class::Structural, "{path}");
        }
        for path in [
            "messages[1].content[1].image_url.url",
            "messages[1].content[0].input_audio.data",
        ] {
            assert_eq!(class(path), Class::Opaque, "{path}");
        }
        // A key named like a structural field elsewhere is text.
        for path in [
            "messages[0].content",
            "messages[1].content[0].text",
            "messages[3].tool_calls[0].function.arguments",
            "tools[0].function.description",
            "metadata.type",
            "metadata.model",
            "stop[1]",
            "user",
        ] {
            assert_eq!(class(path), Class::Text, "{path}");
        }
    }
}
