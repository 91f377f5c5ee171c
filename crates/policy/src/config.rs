//! The `policy` section of the gateway configuration: as written ([`RawPolicy`]), checked into a
//! [`PolicyConfig`] with every problem reported at once (file, line, key). Linted in [`crate::lint`].

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_config::{ConfigError, Locator};
use sluice_sensitivity::{Kind, Level, Scanner};

use crate::fleet::Route;
use crate::rules::{
    Action, Conditions, DEFAULT_MAX_TTFT_SECONDS, HeaderTest, LevelSet, OVER_BUDGET_REASON, PolicyConfig,
    Rule, Strategy, VirtualMember, VirtualModel, ever_redactable, is_header_name, is_plain_name,
};

mod actions;
mod fallbacks;

use actions::{Names, action};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Orders the backends of a concrete model served by several: cheapest, fastest, cheapest_within_slo.
    pub strategy: Option<String>,
    /// The latency objective of `cheapest_within_slo`: time to first token, in milliseconds.
    pub max_ttft_ms: Option<u64>,
    /// Per tenant: the lowest level its requests have.
    pub tenants: Option<BTreeMap<String, RawTenant>>,
    /// Virtual models, by the name clients ask for.
    pub models: Option<BTreeMap<String, RawVirtualModel>>,
    pub rules: Option<Vec<RawRule>>,
    /// Kinds no `redact` rule may replace.
    pub never_redact: Option<Vec<Kind>>,
    /// What a cloud-bound request gets once its tenant's cloud budget is spent, unless its rule says.
    pub over_budget: Option<RawOverBudget>,
    /// Local substitutes for cloud models when the cloud cannot serve (see [`RawFallback`]).
    pub fallbacks: Option<Vec<RawFallback>>,
}

/// `{model, to, on, tenant}`: requests for `model` are served by the local `to` when the cloud is
/// unavailable, rate-limited or over budget (`on`, default all three).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFallback {
    pub model: Option<OneOrMany<String>>,
    pub tenant: Option<OneOrMany<String>>,
    pub to: Option<RawSubstitute>,
    pub on: Option<OneOrMany<crate::rules::FallbackReason>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub floor: Option<Level>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualModel {
    pub strategy: Option<String>,
    pub max_ttft_ms: Option<u64>,
    pub members: Option<Vec<RawMember>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub backend: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    pub when: Option<RawWhen>,
    pub then: Option<RawThen>,
    pub strategy: Option<String>,
    /// What a request this rule sends to a cloud gets once its tenant's cloud budget is spent.
    pub over_budget: Option<RawOverBudget>,
}

/// `over_budget: reject` or `local`, or an action: `{route: ...}`, `{substitute: ...}` or
/// `{reject: REASON}`.
#[derive(Debug, Clone)]
pub enum RawOverBudget {
    Word(String),
    Then(RawThen),
}

impl<'de> Deserialize<'de> for RawOverBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawOverBudget;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "reject, local, or an action ({route: local}, {substitute: MODEL}, {reject: REASON})",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawOverBudget::Word(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawThen::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawOverBudget::Then)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// One value or a list of them. Written by hand rather than `untagged`, so that a wrong value keeps its
/// own message ("credit_card is not a finding kind") instead of "did not match any variant".
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(OneOrMany::One)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(serde::de::value::U64Deserializer::<E>::new(v)).map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

impl<T> OneOrMany<T> {
    pub(crate) fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Any of these levels.
    pub level: Option<OneOrMany<Level>>,
    pub min_level: Option<Level>,
    pub max_level: Option<Level>,
    /// A finding of any of these kinds.
    pub findings: Option<OneOrMany<Kind>>,
    pub tenant: Option<OneOrMany<String>>,
    pub model: Option<OneOrMany<String>>,
    /// Header name -> one of these values, or "*" for any value.
    pub headers: Option<BTreeMap<String, OneOrMany<String>>>,
    pub min_prompt_tokens: Option<u64>,
    pub max_prompt_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThen {
    /// `local`, `cloud`, `any`, or backend names.
    pub route: Option<OneOrMany<String>>,
    pub substitute: Option<RawSubstitute>,
    pub reject: Option<String>,
    pub redact: Option<RawRedact>,
}

/// `redact: { to, kinds, fallback }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedact {
    /// `cloud`, `any`, or backend names.
    pub to: Option<OneOrMany<String>>,
    pub kinds: Option<OneOrMany<Kind>>,
    /// A `route`, `substitute` or `reject` action; a rejection when absent.
    pub fallback: Option<Box<RawThen>>,
}

/// `substitute: MODEL`, or `substitute: { model: MODEL, backend: NAME }`.
#[derive(Debug, Clone)]
pub enum RawSubstitute {
    Model(String),
    On { model: String, backend: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubstituteOn {
    model: String,
    backend: Option<String>,
}

impl<'de> Deserialize<'de> for RawSubstitute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawSubstitute;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a model name, or { model, backend }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawSubstitute::Model(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let on = RawSubstituteOn::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSubstitute::On {
                    model: on.model,
                    backend: on.backend,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A backend as the policy checks see it, before anything runs.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub name: String,
    pub route: Route,
    pub clearance: Level,
    /// The models it serves; `None` for the local pool (its workers say so when they connect).
    pub models: Option<Vec<String>>,
}

impl BackendInfo {
    pub(crate) fn serves(&self, model: &str) -> Option<bool> {
        self.models.as_ref().map(|m| m.iter().any(|x| x == model))
    }
}

/// Everything the checks compare the policy with.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub backends: &'a [BackendInfo],
    pub scanner: &'a Scanner,
    /// The tenants API keys map to.
    pub tenants: &'a [String],
}

fn max_ttft(
    at: &Locator<'_>,
    key: &str,
    ms: Option<u64>,
    default: f64,
    errors: &mut Vec<ConfigError>,
) -> f64 {
    match ms {
        None => default,
        Some(ms) if (1..=600_000).contains(&ms) => ms as f64 / 1000.0,
        Some(ms) => {
            errors.push(at.error(key, format!("must be 1 to 600000 milliseconds, got {ms}")));
            default
        }
    }
}

fn strategy(at: &Locator<'_>, key: &str, s: Option<&str>, errors: &mut Vec<ConfigError>) -> Option<Strategy> {
    let s = s?;
    let parsed = Strategy::parse(s);
    if parsed.is_none() {
        errors.push(at.error(key, format!("{s:?} is not a strategy ({})", Strategy::NAMES)));
    }
    parsed
}

/// Checks the policy against the backends; every problem is reported, not only the first.
pub fn compile(raw: RawPolicy, at: &Locator<'_>, cx: Context<'_>) -> Result<PolicyConfig, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let default_strategy =
        strategy(at, "policy.strategy", raw.strategy.as_deref(), &mut errors).unwrap_or_default();
    let default_ttft = max_ttft(
        at,
        "policy.max_ttft_ms",
        raw.max_ttft_ms,
        DEFAULT_MAX_TTFT_SECONDS,
        &mut errors,
    );
    let backend = |name: &str| cx.backends.iter().find(|b| b.name == name);
    let cloud_models: Vec<&str> = cx
        .backends
        .iter()
        .flat_map(|b| b.models.iter().flatten().map(String::as_str))
        .collect();
    let has_local = cx.backends.iter().any(|b| b.route == Route::Local);

    let mut floors = BTreeMap::new();
    for (tenant, t) in raw.tenants.unwrap_or_default() {
        if let Some(floor) = t.floor {
            floors.insert(tenant, floor);
        } else {
            errors.push(at.error(&format!("policy.tenants.{tenant}"), "`floor` is required"));
        }
    }

    let mut models = Vec::new();
    for (name, m) in raw.models.unwrap_or_default() {
        let key = |f: &str| format!("policy.models.{name}.{f}");
        if name.is_empty() || name.len() > 256 {
            errors.push(at.error("policy.models", "a model name must be 1 to 256 characters"));
        }
        if cloud_models.contains(&name.as_str()) {
            errors.push(at.error(
                &format!("policy.models.{name}"),
                format!("{name:?} is a cloud model's name: give the virtual model another"),
            ));
        }
        let strategy =
            strategy(at, &key("strategy"), m.strategy.as_deref(), &mut errors).unwrap_or(default_strategy);
        let max_ttft_seconds = max_ttft(at, &key("max_ttft_ms"), m.max_ttft_ms, default_ttft, &mut errors);
        let mut members = Vec::new();
        for (j, member) in m.members.unwrap_or_default().into_iter().enumerate() {
            let mkey = |f: &str| format!("policy.models.{name}.members[{j}].{f}");
            let (Some(b), Some(model)) = (member.backend, member.model) else {
                errors.push(at.error(
                    &format!("policy.models.{name}.members[{j}]"),
                    "`backend` and `model` are required",
                ));
                continue;
            };
            match backend(&b) {
                None => errors.push(at.error(&mkey("backend"), unknown_backend(&b, cx.backends))),
                Some(info) if info.serves(&model) == Some(false) => errors.push(at.error(
                    &mkey("model"),
                    format!("backend {b} does not list the model {model:?}"),
                )),
                Some(_) => {}
            }
            if members
                .iter()
                .any(|x: &VirtualMember| x.backend == b && x.model == model)
            {
                errors.push(at.error(&mkey("model"), "this member is listed twice"));
            }
            members.push(VirtualMember { backend: b, model });
        }
        if members.is_empty() {
            errors.push(at.error(&key("members"), "list at least one backend and model"));
        }
        models.push(VirtualModel {
            name,
            strategy,
            max_ttft_seconds,
            members,
        });
    }
    let never_redact = raw.never_redact.unwrap_or_default();
    for k in &never_redact {
        if !ever_redactable(*k) {
            errors.push(at.error(
                "policy.never_redact",
                format!("{k} is a credential: it is never redacted anyway"),
            ));
        }
    }
    let names = Names {
        cx,
        models: &models,
        cloud_models: &cloud_models,
        has_local,
        never_redact: &never_redact,
    };

    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in raw.rules.unwrap_or_default().into_iter().enumerate() {
        let key = |f: &str| format!("policy.rules[{i}].{f}");
        let name = r.name.unwrap_or_default();
        if name.is_empty() {
            errors.push(at.error(&format!("policy.rules[{i}]"), "`name` is required"));
        } else if !is_plain_name(&name) {
            errors.push(at.error(
                &key("name"),
                format!("{name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        } else if rules.iter().any(|x| x.name == name) {
            errors.push(at.error(&key("name"), format!("the rule name {name:?} is used twice")));
        }
        let when = conditions(at, i, r.when.unwrap_or_default(), &mut errors);
        let rule_strategy = strategy(at, &key("strategy"), r.strategy.as_deref(), &mut errors);
        let Some(then) = action(at, &key("then"), r.then.unwrap_or_default(), &names, &mut errors) else {
            continue;
        };
        let over_budget = r
            .over_budget
            .and_then(|o| actions::over_budget(at, &key("over_budget"), o, &names, &mut errors));
        rules.push(Rule {
            name,
            when,
            then,
            strategy: rule_strategy,
            over_budget,
        });
    }
    let over_budget = raw
        .over_budget
        .and_then(|o| actions::over_budget(at, "policy.over_budget", o, &names, &mut errors))
        .unwrap_or_else(|| Action::Reject(OVER_BUDGET_REASON.to_owned()));
    let fallbacks = fallbacks::validate(at, raw.fallbacks.unwrap_or_default(), &names, &mut errors);
    if errors.is_empty() {
        Ok(PolicyConfig {
            rules,
            models,
            floors,
            strategy: default_strategy,
            max_ttft_seconds: default_ttft,
            never_redact,
            over_budget,
            fallbacks,
        })
    } else {
        Err(errors)
    }
}

pub(crate) fn unknown_backend(name: &str, backends: &[BackendInfo]) -> String {
    format!(
        "no backend is named {name:?} (configured: {})",
        backends
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn conditions(at: &Locator<'_>, i: usize, w: RawWhen, errors: &mut Vec<ConfigError>) -> Conditions {
    let key = |f: &str| format!("policy.rules[{i}].when.{f}");
    let listed = w.level.map_or(LevelSet::ALL, |l| LevelSet::of(l.into_vec()));
    let levels = listed.intersect(LevelSet::between(
        w.min_level.unwrap_or(Level::Public),
        w.max_level.unwrap_or(Level::Restricted),
    ));
    let non_empty = |f: &str, v: Option<Vec<String>>, errors: &mut Vec<ConfigError>| {
        if v.as_ref().is_some_and(Vec::is_empty) {
            errors.push(at.error(
                &key(f),
                "an empty list matches nothing: leave the key out instead",
            ));
        }
        v
    };
    let findings = w.findings.map(OneOrMany::into_vec);
    if findings.as_ref().is_some_and(Vec::is_empty) {
        errors.push(at.error(
            &key("findings"),
            "an empty list matches nothing: leave the key out instead",
        ));
    }
    let tenants = non_empty("tenant", w.tenant.map(OneOrMany::into_vec), errors);
    let models = non_empty("model", w.model.map(OneOrMany::into_vec), errors);
    let mut headers = Vec::new();
    for (name, values) in w.headers.unwrap_or_default() {
        if !is_header_name(&name) {
            errors.push(at.error(&key(&format!("headers.{name}")), "is not a header name"));
            continue;
        }
        let header = name.to_ascii_lowercase();
        let values = values.into_vec();
        if values.is_empty() {
            errors.push(at.error(&key(&format!("headers.{name}")), "give a value, or \"*\" for any"));
        }
        headers.push(HeaderTest {
            name: header,
            values: (!values.iter().any(|v| v == "*")).then_some(values),
        });
    }
    let prompt_tokens = (
        w.min_prompt_tokens.unwrap_or(0),
        w.max_prompt_tokens.unwrap_or(u64::MAX),
    );
    if prompt_tokens.0 > prompt_tokens.1 {
        errors.push(at.error(
            &key("min_prompt_tokens"),
            "is above max_prompt_tokens: the rule could never match",
        ));
    }
    Conditions {
        levels,
        findings,
        tenants,
        models,
        headers,
        prompt_tokens,
    }
}
