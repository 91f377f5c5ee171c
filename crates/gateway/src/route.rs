//! The routing seam: a [`Policy`] turns the facts of a request and the fleet into a [`Decision`] (which
//! backend, under which rule, at which sensitivity level). Policies are pure: no IO, no waiting. The
//! dispatcher in `server` enforces the clearance invariant on whatever a policy returns.

use std::sync::Arc;

use crate::api::ChatRequest;
use crate::backend::{Backend, Route};
use crate::error::ApiError;
use crate::level::Level;

/// Every backend requests can go to, in configuration order (the local pool first).
#[derive(Clone, Default)]
pub struct Fleet {
    pub backends: Vec<Arc<dyn Backend>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.backends.iter().map(|b| b.name()))
            .finish()
    }
}

/// What the policy knows of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub tenant: &'a str,
    pub request: &'a ChatRequest,
    /// The level the client declared in `x-sluice-sensitivity`.
    pub declared: Option<Level>,
    /// What the scanner found in every string of the request (an incomplete scan is `restricted`).
    pub detected: Level,
}

impl RequestFacts<'_> {
    /// The request's level: the highest of what was found and what the client declared (a declaration
    /// can raise the level, never lower it).
    pub fn level(&self) -> Level {
        self.detected.max(self.declared.unwrap_or(Level::Public))
    }
}

/// Where a request goes and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into [`Fleet::backends`].
    pub backend: usize,
    /// The rule that decided (`x-sluice-rule`).
    pub rule: String,
    /// The request's sensitivity (`x-sluice-sensitivity`).
    pub level: Level,
}

/// A request the policy will not send anywhere: the client's error, and what the policy had decided
/// by then (reported in the routing headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: Box<ApiError>,
    pub rule: Option<String>,
    pub level: Option<Level>,
}

/// Decides where requests go.
pub trait Policy: Send + Sync {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &Fleet) -> Result<Decision, Refusal>;
}

/// The built-in rule: a request goes where its model lives, local workers first. A backend whose clearance
/// is below the request's level (found or declared) is passed over.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelHome;

impl ModelHome {
    pub const RULE: &'static str = "model-home";
}

impl Policy for ModelHome {
    fn decide(&self, facts: &RequestFacts<'_>, fleet: &Fleet) -> Result<Decision, Refusal> {
        let model = facts.request.model.as_str();
        let level = facts.level();
        let mut homes: Vec<(usize, &Arc<dyn Backend>)> = fleet
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.serves(model))
            .collect();
        let refuse = |error| Refusal {
            error: Box::new(error),
            rule: Some(Self::RULE.to_owned()),
            level: Some(level),
        };
        if homes.is_empty() {
            return Err(refuse(ApiError::model_not_found(model)));
        }
        homes.sort_by_key(|(i, b)| (b.route() != Route::Local, *i));
        match homes.iter().find(|(_, b)| b.clearance() >= level) {
            Some((i, _)) => Ok(Decision {
                backend: *i,
                rule: Self::RULE.to_owned(),
                level,
            }),
            None => Err(refuse(ApiError::no_compliant_backend(format!(
                "The request is {level}; no backend that serves `{model}` is cleared for it ({}).",
                homes
                    .iter()
                    .map(|(_, b)| format!("{}: {}", b.name(), b.clearance()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))),
        }
    }
}
