//! Sluice's routing policy: which backends a request may go to, in which order, under which rule, at
//! which sensitivity level, and why.
//!
//! It owns the `policy:` section of the gateway configuration (read and checked in [`config`], linted in
//! [`lint`]), the rules and virtual models ([`rules`]), the engine that decides ([`PolicyEngine`]), the
//! strategies' estimates ([`estimate`]), the seam types ([`RequestFacts`], [`FleetView`], [`Decision`],
//! [`Refusal`]) and explanations ([`explain`]).
//!
//! It must never do IO, wait, read a clock or link an HTTP, gRPC or async runtime crate
//! (`tests/architecture.rs` checks it): a decision is a pure function of the request's facts and a
//! snapshot of the fleet, so the gateway, `sluice policy explain` and replays compute the same one. Its
//! refusals are domain values; the gateway alone maps them to HTTP.

pub mod config;
pub mod decision;
pub mod engine;
pub mod estimate;
pub mod explain;
pub mod facts;
pub mod fleet;
pub mod lint;
pub mod rules;

pub use decision::{Decision, Excluded, Fallback, Policy, Redaction, Refusal, RefusalReason, Target};
pub use engine::PolicyEngine;
pub use explain::{
    Attempt, CombinedAt, Ended, Explanation, FindingAt, RedactionAt, TargetAt, explain, findings_at,
};
pub use facts::{
    NoHeaders, RequestFacts, RequestHeaders, estimate_tokens, finding_paths, string_paths, strings,
};
pub use fleet::{BackendView, FleetView, Load, ModelCard, ModelKind, Prices, Route};
pub use rules::{
    Action, Conditions, DEFAULT_MAX_TTFT_SECONDS, DEFAULT_OUTPUT_TOKENS, DEFAULT_RULE, FALLBACK_HEADER,
    FallbackReason, FallbackRule, HeaderTest, LevelSet, OVER_BUDGET_REASON, Place, PolicyConfig, Redact,
    Rule, Strategy, VirtualMember, VirtualModel, ever_redactable, is_header_name, is_plain_name,
};
pub use sluice_sensitivity::Level;
