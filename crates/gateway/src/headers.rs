//! Header names the gateway reads and writes, and [`RoutingHeaders`]: what a response says of its
//! routing (`x-sluice-route`, `-backend`, `-rule`, `-sensitivity`, `-decision-id`, `-model`,
//! `-substituted-for`) and of its tenant's rate limits (`x-ratelimit-*`), added to every answer of the
//! chat API whatever it is. A leaf: it imports no
//! other module of the gateway.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use sluice_policy::{Level, RequestHeaders, Route};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_ROUTE: HeaderName = HeaderName::from_static("x-sluice-route");
pub const X_BACKEND: HeaderName = HeaderName::from_static("x-sluice-backend");
pub const X_RULE: HeaderName = HeaderName::from_static("x-sluice-rule");
pub const X_SENSITIVITY: HeaderName = HeaderName::from_static("x-sluice-sensitivity");
pub const X_DECISION_ID: HeaderName = HeaderName::from_static("x-sluice-decision-id");
pub const X_MODEL: HeaderName = HeaderName::from_static("x-sluice-model");
pub const X_SUBSTITUTED_FOR: HeaderName = HeaderName::from_static("x-sluice-substituted-for");
pub const X_PREFER: HeaderName = HeaderName::from_static("x-sluice-prefer");
/// Why a local substitute served a request for a cloud model; `none` in a request forbids it.
pub const X_FALLBACK: HeaderName = HeaderName::from_static(sluice_policy::FALLBACK_HEADER);
const REQUESTS_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// The routing headers of one request, added to its response whatever it is.
#[derive(Debug, Clone, Default)]
pub struct RoutingHeaders {
    pub route: Option<Route>,
    pub backend: Option<String>,
    pub rule: Option<String>,
    pub level: Option<Level>,
    pub decision_id: Option<String>,
    /// The model that served (a substitute's, or a virtual model's member).
    pub model: Option<String>,
    pub substituted_for: Option<String>,
    /// A fallback served it (`cloud_unavailable`, `cloud_rate_limited`, `over_budget`).
    pub fallback: Option<&'static str>,
    /// The request went redacted: its cloud route is `redacted-cloud`.
    pub redacted: bool,
    /// The tenant's rate limits, as OpenAI's `x-ratelimit-*` headers give them.
    pub ratelimit: RateHeaders,
}

/// Where a tenant stands against a rate limit: its limit, what remains, and when the window resets (as
/// OpenAI writes it: `17s`, `1m0s`).
#[derive(Debug, Clone, Default)]
pub struct RateHeader {
    pub limit: u64,
    pub remaining: u64,
    pub reset: String,
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    pub requests: Option<RateHeader>,
    pub tokens: Option<RateHeader>,
}

impl RoutingHeaders {
    /// `x-sluice-route`'s value: `local`, `cloud` or `redacted-cloud`.
    pub fn route_name(&self) -> Option<&'static str> {
        self.route.map(|r| match r {
            Route::Cloud if self.redacted => "redacted-cloud",
            r => r.as_str(),
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: HeaderName, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(name, v);
            }
        };
        set(X_ROUTE, self.route_name());
        set(X_BACKEND, self.backend.as_deref());
        set(X_RULE, self.rule.as_deref());
        set(X_SENSITIVITY, self.level.map(Level::as_str));
        set(X_DECISION_ID, self.decision_id.as_deref());
        set(X_MODEL, self.model.as_deref());
        set(X_SUBSTITUTED_FOR, self.substituted_for.as_deref());
        set(X_FALLBACK, self.fallback);
        for (h, names) in [
            (&self.ratelimit.requests, REQUESTS_HEADERS),
            (&self.ratelimit.tokens, TOKENS_HEADERS),
        ] {
            if let Some(h) = h {
                headers.insert(names[0].clone(), HeaderValue::from(h.limit));
                headers.insert(names[1].clone(), HeaderValue::from(h.remaining));
                if let Ok(v) = HeaderValue::from_str(&h.reset) {
                    headers.insert(names[2].clone(), v);
                }
            }
        }
    }
}

/// An HTTP header map as the policy reads headers.
#[derive(Debug, Clone, Copy)]
pub struct HttpHeaders<'a>(pub &'a HeaderMap);

impl RequestHeaders for HttpHeaders<'_> {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.0.get_all(name).iter().map(HeaderValue::as_bytes).collect()
    }
}
