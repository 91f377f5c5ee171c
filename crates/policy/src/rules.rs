//! The checked policy as data: rules (conditions and an action), virtual models, tenant floors and the
//! strategies that order targets. Built by [`crate::config::compile`]; read by [`crate::PolicyEngine`].
//! Plain values only: nothing here evaluates a request against the fleet.

use std::collections::BTreeMap;

use sluice_sensitivity::{Kind, Level};

use crate::facts::RequestFacts;
use crate::fleet::Route;

/// The rule name reported when no rule matched.
pub const DEFAULT_RULE: &str = "default";
/// The latency objective of `cheapest_within_slo` unless configured: time to first token.
pub const DEFAULT_MAX_TTFT_SECONDS: f64 = 2.0;
/// Output tokens assumed for pricing when the request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_TOKENS: u32 = 256;

/// How the backends a request may go to are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Lowest estimated price for this request (list prices times estimated tokens).
    Cheapest,
    /// Lowest expected latency (time to first token with queueing, plus generation).
    Fastest,
    /// The cheapest of those expected to meet the time-to-first-token objective; when none is, the
    /// fastest.
    #[default]
    CheapestWithinSlo,
}

impl Strategy {
    pub const NAMES: &'static str = "cheapest, fastest, cheapest_within_slo";

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cheapest => "cheapest",
            Self::Fastest => "fastest",
            Self::CheapestWithinSlo => "cheapest_within_slo",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cheapest" => Some(Self::Cheapest),
            "fastest" => Some(Self::Fastest),
            "cheapest_within_slo" => Some(Self::CheapestWithinSlo),
            _ => None,
        }
    }
}

/// A set of levels, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelSet(u8);

impl LevelSet {
    pub const ALL: Self = Self(0b1111);
    pub const NONE: Self = Self(0);

    fn bit(l: Level) -> u8 {
        1 << (l as u8)
    }

    pub fn of(levels: impl IntoIterator<Item = Level>) -> Self {
        Self(levels.into_iter().fold(0, |m, l| m | Self::bit(l)))
    }

    /// Every level from `min` to `max`, both included.
    pub fn between(min: Level, max: Level) -> Self {
        Self::of(Level::ALL.into_iter().filter(|l| (min..=max).contains(l)))
    }

    pub fn contains(self, l: Level) -> bool {
        self.0 & Self::bit(l) != 0
    }

    pub fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_superset_of(self, other: Self) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn min(self) -> Option<Level> {
        Level::ALL.into_iter().find(|l| self.contains(*l))
    }

    pub fn max(self) -> Option<Level> {
        Level::ALL.into_iter().rev().find(|l| self.contains(*l))
    }

    pub fn iter(self) -> impl Iterator<Item = Level> {
        Level::ALL.into_iter().filter(move |l| self.contains(*l))
    }
}

/// A header a rule tests: present with one of the values (compared without surrounding spaces, case
/// insensitive), or present at all when `values` is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTest {
    /// Lower case.
    pub name: String,
    pub values: Option<Vec<String>>,
}

/// What a rule requires of a request; every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    pub levels: LevelSet,
    /// At least one finding of one of these kinds.
    pub findings: Option<Vec<Kind>>,
    pub tenants: Option<Vec<String>>,
    /// The model the client asked for (a virtual model's name included).
    pub models: Option<Vec<String>>,
    pub headers: Vec<HeaderTest>,
    /// Estimated prompt tokens, both bounds included.
    pub prompt_tokens: (u64, u64),
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            levels: LevelSet::ALL,
            findings: None,
            tenants: None,
            models: None,
            headers: Vec::new(),
            prompt_tokens: (0, u64::MAX),
        }
    }
}

impl Conditions {
    pub(crate) fn matches(&self, facts: &RequestFacts<'_>, level: Level) -> bool {
        self.levels.contains(level)
            && self
                .findings
                .as_ref()
                .is_none_or(|kinds| facts.scan.findings.iter().any(|f| kinds.contains(&f.kind)))
            && self
                .tenants
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == facts.tenant))
            && self
                .models
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == facts.model))
            && self.headers.iter().all(|h| {
                facts.headers.values(&h.name).iter().any(|v| match &h.values {
                    None => true,
                    // Like `HeaderValue::to_str`: visible ASCII and spaces only.
                    Some(values) => std::str::from_utf8(v)
                        .ok()
                        .filter(|v| v.bytes().all(|b| b == b'\t' || (32..127).contains(&b)))
                        .is_some_and(|v| values.iter().any(|want| want.eq_ignore_ascii_case(v.trim()))),
                })
            })
            && (self.prompt_tokens.0..=self.prompt_tokens.1).contains(&facts.prompt_tokens)
    }
}

/// Where a `route` action may send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Anywhere the model is served (the clearance check still applies).
    Any,
    /// The local worker pool.
    Local,
    /// Any cloud backend.
    Cloud,
    /// One backend, by name.
    Backend(String),
}

impl Place {
    pub(crate) fn admits(&self, name: &str, route: Route) -> bool {
        match self {
            Self::Any => true,
            Self::Local => route == Route::Local,
            Self::Cloud => route == Route::Cloud,
            Self::Backend(b) => b == name,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Local => f.write_str("local"),
            Self::Cloud => f.write_str("cloud"),
            Self::Backend(b) => f.write_str(b),
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Serve the requested model, only at these places.
    Route(Vec<Place>),
    /// Serve another model instead (a concrete or a virtual one), on `backend` when given; the response
    /// says so in `x-sluice-substituted-for`.
    Substitute { model: String, backend: Option<String> },
    /// Refuse, with this reason (403 `policy_rejected`).
    Reject(String),
    /// Replace the findings of some kinds with placeholders, send the request to these places (the
    /// `redacted-cloud` route), and put the values back in the answer; a request that would still be
    /// above their clearance once replaced takes the fallback instead.
    Redact(Redact),
}

/// The `redact` action: where, which kinds, and what else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redact {
    /// Where the redacted request may go (the clearance check applies to its redacted form).
    pub to: Vec<Place>,
    /// The kinds whose values are replaced; never a credential, nor a kind the policy marks `never_redact`.
    pub kinds: Vec<Kind>,
    /// What a request that cannot be redacted gets: a route, a substitute or a rejection, never another
    /// redaction.
    pub fallback: Box<Action>,
}

/// Whether a kind can be replaced at all: a credential or a key is not made safe by hiding it from one
/// model (it still opens what it opens), so a request carrying one is never redacted.
pub fn ever_redactable(kind: Kind) -> bool {
    !kind.is_credential()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub when: Conditions,
    pub then: Action,
    /// Orders the targets when several remain; the virtual model's or the policy's strategy otherwise.
    pub strategy: Option<Strategy>,
    /// What a request this rule would send to a cloud gets when its tenant's cloud budget is spent; the
    /// policy's `over_budget` otherwise.
    pub over_budget: Option<Action>,
}

/// What an over-budget request gets unless the rule or the policy says otherwise.
pub const OVER_BUDGET_REASON: &str =
    "This tenant's cloud budget for the period is spent; its requests cannot go to a cloud until it resets.";

/// One backend and model serving a virtual model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMember {
    pub backend: String,
    pub model: String,
}

/// A model name clients may ask for that is served by any of several equivalent backends.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualModel {
    pub name: String,
    pub strategy: Strategy,
    pub max_ttft_seconds: f64,
    pub members: Vec<VirtualMember>,
}

/// The checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub rules: Vec<Rule>,
    pub models: Vec<VirtualModel>,
    /// Each tenant's lowest level.
    pub floors: BTreeMap<String, Level>,
    /// Orders the backends of a concrete model served by several.
    pub strategy: Strategy,
    pub max_ttft_seconds: f64,
    /// Kinds the operator marks as never replaced, whatever a rule says.
    pub never_redact: Vec<Kind>,
    /// What a request bound for a cloud gets when its tenant's cloud budget is spent, unless its rule
    /// says: a rejection (429 `budget_exceeded`) or a way to the local workers (never a cloud).
    pub over_budget: Action,
    /// Local substitutes for cloud models, for when the cloud cannot serve (first match wins).
    pub fallbacks: Vec<FallbackRule>,
}

/// Why a request for a cloud model was served by a local substitute (`x-sluice-fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The cloud's breaker is open, or it could not be reached, or it gave no first byte in time.
    CloudUnavailable,
    /// The cloud answered 429 for as long as the gateway retried.
    CloudRateLimited,
    /// The tenant's cloud budget for the period is spent.
    OverBudget,
}

impl FallbackReason {
    pub const ALL: [Self; 3] = [Self::CloudUnavailable, Self::CloudRateLimited, Self::OverBudget];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CloudUnavailable => "cloud_unavailable",
            Self::CloudRateLimited => "cloud_rate_limited",
            Self::OverBudget => "over_budget",
        }
    }
}

/// The request header with which a client forbids any fallback (`x-sluice-fallback: none`).
pub const FALLBACK_HEADER: &str = "x-sluice-fallback";

/// `policy.fallbacks[]`: for requests naming one of `models` (from one of `tenants`, when given), the
/// local model `to` serves them when the cloud cannot, for the reasons in `on`. Only ever local backends
/// cleared for the request: a fallback never relaxes the clearance invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackRule {
    pub models: Vec<String>,
    pub tenants: Option<Vec<String>>,
    pub to: String,
    /// The local backend to use; the local pool otherwise.
    pub backend: Option<String>,
    pub on: Vec<FallbackReason>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            models: Vec::new(),
            floors: BTreeMap::new(),
            strategy: Strategy::default(),
            max_ttft_seconds: DEFAULT_MAX_TTFT_SECONDS,
            never_redact: Vec::new(),
            over_budget: Action::Reject(OVER_BUDGET_REASON.to_owned()),
            fallbacks: Vec::new(),
        }
    }
}

impl PolicyConfig {
    /// The fallback for a request naming `model` from `tenant`, if any.
    pub fn fallback_for(&self, model: &str, tenant: &str) -> Option<&FallbackRule> {
        self.fallbacks.iter().find(|f| {
            f.models.iter().any(|m| m == model)
                && f.tenants.as_ref().is_none_or(|t| t.iter().any(|x| x == tenant))
        })
    }

    pub fn virtual_model(&self, name: &str) -> Option<&VirtualModel> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The level of a request from `tenant` before its findings: the tenant's floor.
    pub fn floor(&self, tenant: &str) -> Level {
        self.floors.get(tenant).copied().unwrap_or(Level::Public)
    }
}

/// Names appear in headers and metric labels: keep them short and plain.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Whether `name` is an HTTP header name (a token of RFC 9110, section 5.1).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::Map;
    use sluice_sensitivity::Scan;

    use super::*;

    fn matches(test: HeaderTest, headers: Vec<(String, String)>) -> bool {
        let scan = Scan {
            findings: Vec::new(),
            level: Level::Public,
            complete: true,
            incomplete: None,
            combined: Vec::new(),
            model: sluice_sensitivity::ModelPass::Off,
        };
        let body = Map::new();
        let facts = RequestFacts {
            tenant: "acme",
            model: "m",
            max_tokens: None,
            body: &body,
            headers: &headers,
            declared: None,
            scan: &scan,
            prefer: None,
            prompt_tokens: 1,
        };
        Conditions {
            headers: vec![test],
            ..Conditions::default()
        }
        .matches(&facts, Level::Public)
    }

    fn header(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.to_owned(), value.to_owned())]
    }

    #[test]
    fn header_values_match_trimmed_and_without_case_and_any_value_matches_presence() {
        let team = |values: Option<Vec<String>>| HeaderTest {
            name: "x-team".into(),
            values,
        };
        let legal = || Some(vec!["legal".to_owned()]);
        assert!(matches(team(legal()), header("x-team", "  LEGAL ")));
        assert!(!matches(team(legal()), header("x-team", "legal-ops")));
        assert!(!matches(team(legal()), header("x-other", "legal")));
        assert!(matches(team(None), header("x-team", "")));
        assert!(!matches(team(None), Vec::new()));
        // Not visible ASCII: never equal to a configured value (as `HeaderValue::to_str` refuses it).
        assert!(!matches(team(legal()), header("x-team", "l\u{e9}gal")));
        // Any of several values of the header.
        let mut both = header("x-team", "sales");
        both.push(("x-team".into(), "legal".into()));
        assert!(matches(team(legal()), both));
    }

    #[test]
    fn header_names_are_tokens_and_plain_names_are_short() {
        for ok in ["x-team", "X-Team", "a.b_c~d"] {
            assert!(is_header_name(ok), "{ok}");
        }
        for bad in ["", "x team", "x:team", "x\u{e9}"] {
            assert!(!is_header_name(bad), "{bad:?}");
        }
        assert!(is_plain_name("gpu-0.pool_a"));
        assert!(!is_plain_name(&"a".repeat(65)));
        assert!(!is_plain_name("a b"));
    }

    #[test]
    fn credentials_are_never_redactable() {
        for kind in [
            Kind::PrivateKey,
            Kind::AwsAccessKey,
            Kind::ApiToken,
            Kind::GenericSecret,
            Kind::Jwt,
        ] {
            assert!(!ever_redactable(kind), "{kind}");
        }
        for kind in [
            Kind::PersonName,
            Kind::Email,
            Kind::Phone,
            Kind::PaymentCard,
            Kind::Iban,
            Kind::UsSsn,
        ] {
            assert!(ever_redactable(kind), "{kind}");
        }
    }
}
