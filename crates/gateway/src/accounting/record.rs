//! The audit record of a decision, as far as it is known when it is made (the ledger completes it).

use std::time::SystemTime;

use sha2::Digest as _;
use sluice_sensitivity::Scan;

use super::Accounting;

impl Accounting {
    /// The audit record of a decision, as far as it is known when it is made.
    pub fn audit_record(&self, fields: RecordFields<'_>) -> Option<Box<sluice_audit::Record>> {
        self.audit.get()?;
        Some(Box::new(sluice_audit::Record {
            time: sluice_audit::format_time(SystemTime::now()),
            decision_id: fields.decision_id.to_owned(),
            request_id: fields.request_id.to_owned(),
            tenant: fields.tenant.to_owned(),
            model: fields.model.to_owned(),
            level: fields.level.as_str().to_owned(),
            scan_level: Some(fields.scan.level.as_str().to_owned()),
            scan_incomplete: !fields.scan.complete,
            declared: fields.declared.map(|l| l.as_str().to_owned()),
            prefer: fields.prefer.map(|r| r.as_str().to_owned()),
            prompt_estimate: Some(fields.prompt_estimate),
            findings: fields
                .scan
                .kinds()
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            positions: positions(fields.scan, fields.request),
            combined: fields.scan.combined.iter().map(|c| c.name.to_string()).collect(),
            ner: (fields.scan.model != sluice_sensitivity::ModelPass::Off)
                .then(|| fields.scan.model.as_str().to_owned()),
            rule: fields.rule.map(str::to_owned),
            redactions: Default::default(),
            max_tokens: fields.max_tokens,
            stream: Some(fields.stream),
            prompt_sha256: self.hash_prompts.then(|| {
                sha2::Sha256::digest(fields.body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            }),
            ..Default::default()
        }))
    }
}

/// Where each finding of a scan is: kind, JSON path, byte range.
fn positions(
    scan: &Scan,
    request: &serde_json::Map<String, serde_json::Value>,
) -> Vec<sluice_audit::Position> {
    if scan.findings.is_empty() {
        return Vec::new();
    }
    let paths = sluice_policy::finding_paths(request, scan);
    scan.findings
        .iter()
        .map(|f| sluice_audit::Position {
            kind: f.kind.as_str().to_owned(),
            field: paths.get(f.index).cloned().unwrap_or_default(),
            start: f.range.start,
            end: f.range.end,
        })
        .collect()
}

/// What an audit record says of a decision when it is made.
#[derive(Debug)]
pub struct RecordFields<'a> {
    pub decision_id: &'a str,
    pub request_id: &'a str,
    pub tenant: &'a str,
    pub model: &'a str,
    pub level: sluice_policy::Level,
    pub scan: &'a Scan,
    pub rule: Option<&'a str>,
    pub body: &'a [u8],
    /// The parsed body, for the paths of the findings.
    pub request: &'a serde_json::Map<String, serde_json::Value>,
    /// The answer's length limit the client set, and whether it asked for a stream.
    pub max_tokens: Option<u32>,
    pub stream: bool,
    /// The client's hints and the prompt's estimated size, as the policy saw them.
    pub declared: Option<sluice_policy::Level>,
    pub prefer: Option<sluice_policy::Route>,
    pub prompt_estimate: u64,
}
