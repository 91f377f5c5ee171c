//! The seam between the policy and the dispatcher: a [`Policy`] turns [`RequestFacts`] and a
//! [`FleetView`] into a [`Decision`] (where the request may go, best first) or a [`Refusal`] (why it may
//! go nowhere, as data: the gateway's error module alone turns it into HTTP).

use sluice_sensitivity::{Kind, Level};

use crate::facts::RequestFacts;
use crate::fleet::FleetView;

/// A place a request may be sent: a backend, and the model it is asked for there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into the fleet's backends (and [`FleetView::backends`]).
    pub backend: usize,
    pub model: String,
}

/// A backend a decision ruled out, and why (for explanations).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Excluded {
    pub backend: String,
    pub model: String,
    pub why: String,
}

/// Where a request goes and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where it may go, best first; the dispatcher falls back along this list and nowhere else.
    pub targets: Vec<Target>,
    /// The rule that decided (`x-sluice-rule`).
    pub rule: String,
    /// The request's sensitivity (`x-sluice-sensitivity`), tenant floor included.
    pub level: Level,
    /// The model the client asked for, when a rule substituted another.
    pub substituted_for: Option<String>,
    /// Backends that serve the model but were ruled out: when the targets all fail, the request had
    /// nowhere compliant to go, not merely nowhere up.
    pub excluded: Vec<Excluded>,
    /// Why, in a sentence (for explanations).
    pub reason: String,
    /// The request goes redacted (the `redacted-cloud` route): the targets take its redacted form.
    pub redaction: Option<Redaction>,
    /// Why a `redact` rule could not redact the request, when this is its fallback.
    pub unredactable: Option<Box<String>>,
    /// Where the request goes when its cloud targets cannot serve it (a `policy.fallbacks` entry).
    pub fallback: Option<Box<Fallback>>,
    /// The request is already served by its fallback, and why (over budget, or decided so by the
    /// dispatcher after the cloud failed).
    pub fell_back: Option<crate::rules::FallbackReason>,
}

/// A cloud request's way to a local substitute: the substitute's targets (local, cleared for the
/// request), and the reasons it may be taken for.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub targets: Vec<Target>,
    /// The substitute.
    pub model: String,
    /// The model the client asked for.
    pub requested: String,
    pub on: Vec<crate::rules::FallbackReason>,
    /// The fallback's own explanation (targets, exclusions).
    pub reason: String,
}

impl Decision {
    /// Whether the request may go to a cloud (and so spend its tenant's budget): a target is a cloud
    /// backend, or one the fleet does not list.
    pub fn reaches_cloud(&self, fleet: &FleetView) -> bool {
        self.targets.iter().any(|t| {
            fleet
                .backends
                .get(t.backend)
                .is_none_or(|b| b.route == crate::fleet::Route::Cloud)
        })
    }
}

/// A request to send redacted: what to replace, the level it should have then, and what it gets when the
/// gateway's scan of the redacted form does not bear that out.
#[derive(Debug, Clone, PartialEq)]
pub struct Redaction {
    /// The kinds whose values are replaced (the request carries at least one).
    pub kinds: Vec<Kind>,
    /// The level the request has once they are replaced, as far as the policy can tell from its findings;
    /// the gateway scans the redacted form again and sends it only at or below its targets' clearance.
    pub level: Level,
    /// Where the request goes when its redacted form does not prove safe: the rule's fallback.
    pub fallback: Box<Result<Decision, Refusal>>,
}

/// Why the policy sends a request nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// A rule rejects requests like this one, with the reason clients read.
    Rejected { rule: String, reason: String },
    /// No backend and no virtual model serves the requested model; `served` lists what is.
    ModelNotFound { model: String, served: Vec<String> },
    /// The model is served, but nowhere the request may go: the message says where and why not.
    NoCompliantBackend(String),
    /// The tenant's cloud budget is spent and the rule rejects rather than serve it locally.
    OverBudget { rule: String, reason: String },
}

impl RefusalReason {
    /// A stable snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "policy_rejected",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::NoCompliantBackend(_) => "no_compliant_backend",
            Self::OverBudget { .. } => "budget_exceeded",
        }
    }
}

/// A request the policy will not send anywhere: why, and what the policy had decided by then (reported
/// in the routing headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub excluded: Vec<Excluded>,
    /// Why a `redact` rule could not redact the request, when this is its fallback.
    pub unredactable: Option<Box<String>>,
}

/// Decides where requests go.
pub trait Policy: Send + Sync {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &FleetView) -> Result<Decision, Refusal>;
}
