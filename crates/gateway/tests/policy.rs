//! The policy engine (`sluice-policy`) with the gateway's request parsing and error mapping: rules,
//! virtual models, strategies, checks and lints, and explanations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    reason = "tests"
)]

use sluice_config::Locator;
use sluice_gateway::api::{ChatRequest, parse_chat_request};
use sluice_gateway::error::ApiError;
use sluice_policy::config::{BackendInfo, Context, RawPolicy, compile};
use sluice_policy::lint::lint;
use sluice_policy::*;
use sluice_sensitivity::{Scan, Scanner};

#[path = "policy/budget.rs"]
mod budget;
#[path = "policy/fallbacks.rs"]
mod fallbacks;
#[path = "policy/props.rs"]
mod props;
#[path = "policy/redact.rs"]
mod redact;

/// A refusal as the client gets it: the gateway's one mapping of the policy's refusals.
#[derive(Debug)]
struct Refused {
    error: ApiError,
    level: Option<Level>,
    rule: Option<String>,
    excluded: Vec<Excluded>,
}

fn refused(r: Refusal) -> Refused {
    Refused {
        error: ApiError::from(&r),
        level: r.level,
        rule: r.rule,
        excluded: r.excluded,
    }
}

const LOCAL_MODEL: &str = "smollm2";

fn local_view() -> BackendView {
    BackendView {
        name: "local".into(),
        route: Route::Local,
        clearance: Level::Restricted,
        models: vec![ModelCard {
            kind: Default::default(),
            id: LOCAL_MODEL.into(),
            prices: None,
        }],
        ready: true,
        load: Load {
            slots: 4,
            ..Load::default()
        },
        ttft_seconds: None,
        tokens_per_second: None,
    }
}

fn cloud_view(name: &str, clearance: Level, models: &[(&str, f64, f64)]) -> BackendView {
    BackendView {
        name: name.into(),
        route: Route::Cloud,
        clearance,
        models: models
            .iter()
            .map(|(id, i, o)| ModelCard {
                kind: Default::default(),
                id: (*id).into(),
                prices: Some(Prices {
                    input_usd_per_mtok: *i,
                    output_usd_per_mtok: *o,
                }),
            })
            .collect(),
        ready: true,
        load: Load::default(),
        ttft_seconds: None,
        tokens_per_second: None,
    }
}

/// A local pool and two clouds: `openai` (internal) and `vault` (a provider under contract, cleared for
/// confidential data).
fn fleet() -> FleetView {
    FleetView {
        backends: vec![
            local_view(),
            cloud_view(
                "openai",
                Level::Internal,
                &[("gpt-4o-mini", 0.15, 0.6), ("gpt-4o", 2.5, 10.0)],
            ),
            cloud_view("vault", Level::Confidential, &[("gpt-4o", 3.0, 12.0)]),
        ],
        over_budget: false,
    }
}

fn infos(fleet: &FleetView) -> Vec<BackendInfo> {
    fleet
        .backends
        .iter()
        .map(|b| BackendInfo {
            name: b.name.clone(),
            route: b.route,
            clearance: b.clearance,
            models: (b.route == Route::Cloud).then(|| b.models.iter().map(|m| m.id.clone()).collect()),
        })
        .collect()
}

fn scanner() -> Scanner {
    Scanner::new(&Default::default()).unwrap()
}

fn tenants() -> Vec<String> {
    vec!["acme".into(), "legal".into()]
}

/// Compiles a policy written in YAML against [`fleet`]: the errors, or the policy and its warnings.
fn checked(yaml: &str) -> Result<(PolicyConfig, Vec<String>), Vec<String>> {
    let raw: RawPolicy = sluice_config::parse_yaml(yaml).unwrap();
    let infos = infos(&fleet());
    let scanner = scanner();
    let tenants = tenants();
    let cx = Context {
        backends: &infos,
        scanner: &scanner,
        tenants: &tenants,
    };
    let at = Locator::new(None, Some(yaml));
    let strings = |e: Vec<sluice_config::ConfigError>| e.iter().map(ToString::to_string).collect();
    let p = compile(raw, &at, cx).map_err(strings)?;
    let warnings = strings(lint(&p, &at, cx));
    Ok((p, warnings))
}

/// A policy that must compile.
fn policy(yaml: &str) -> PolicyConfig {
    checked(yaml).unwrap_or_else(|e| panic!("{e:#?}")).0
}

/// The errors, or the warnings.
fn problems(yaml: &str) -> (Vec<String>, Vec<String>) {
    match checked(yaml) {
        Ok((_, warnings)) => (Vec::new(), warnings),
        Err(errors) => (errors, Vec::new()),
    }
}

/// One request, scanned, with its headers.
struct Req {
    request: ChatRequest,
    scan: Scan,
    headers: Vec<(String, String)>,
    tenant: &'static str,
    prefer: Option<Route>,
}

fn req(model: &str, text: &str) -> Req {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
    })
    .to_string();
    let request = parse_chat_request(body.as_bytes()).unwrap();
    let scan = scanner().scan_all(strings(&request.body));
    Req {
        request,
        scan,
        headers: Vec::new(),
        tenant: "acme",
        prefer: None,
    }
}

impl Req {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }

    fn facts(&self) -> RequestFacts<'_> {
        let declared = self
            .headers
            .iter()
            .find(|(k, _)| k == "x-sluice-sensitivity")
            .and_then(|(_, v)| v.parse().ok());
        RequestFacts {
            tenant: self.tenant,
            model: &self.request.model,
            max_tokens: self.request.max_tokens,
            body: &self.request.body,
            headers: &self.headers,
            declared,
            scan: &self.scan,
            prefer: self.prefer,
            prompt_tokens: estimate_tokens(strings(&self.request.body).iter().map(|s| s.len()).sum()),
        }
    }
}

fn decide(policy: &PolicyConfig, fleet: &FleetView, r: &Req) -> Result<Decision, Refused> {
    decide_raw(policy, fleet, r).map_err(refused)
}

fn decide_raw(policy: &PolicyConfig, fleet: &FleetView, r: &Req) -> Result<Decision, Refusal> {
    PolicyEngine::new(policy.clone()).decide(&r.facts(), fleet)
}

/// Backend names of the targets, best first.
fn names(d: &Decision, fleet: &FleetView) -> Vec<String> {
    d.targets
        .iter()
        .map(|t| format!("{}/{}", fleet.backends[t.backend].name, t.model))
        .collect()
}

const EMAIL: &str = "Reply to jane.doe@example.com about the invoice.";
const CARD: &str = "Charge card 4111 1111 1111 1111 for the order.";

const SUBSTITUTE: &str = r#"
rules:
  - name: sensitive-stays-local
    when:
      min_level: confidential
      model: gpt-4o-mini
    then:
      substitute: smollm2
"#;

#[test]
fn without_rules_a_request_goes_where_its_model_is_served() {
    let f = fleet();
    let d = decide(&PolicyConfig::default(), &f, &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini"]);
    assert_eq!((d.rule.as_str(), d.level), (DEFAULT_RULE, Level::Public));
    let d = decide(&PolicyConfig::default(), &f, &req(LOCAL_MODEL, "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
}

#[test]
fn a_model_nobody_serves_is_not_found_and_the_message_lists_the_models() {
    let e = decide(&PolicyConfig::default(), &fleet(), &req("gpt-9", "Hi")).unwrap_err();
    assert_eq!((e.error.status.as_u16(), e.error.code), (404, "model_not_found"));
    assert!(
        e.error.message.contains("gpt-4o-mini, smollm2"),
        "{}",
        e.error.message
    );
}

#[test]
fn data_above_every_clearance_that_serves_the_model_is_refused_with_no_compliant_backend() {
    let f = fleet();
    let e = decide(&PolicyConfig::default(), &f, &req("gpt-4o-mini", EMAIL)).unwrap_err();
    assert_eq!(
        (e.error.status.as_u16(), e.error.code),
        (503, "no_compliant_backend")
    );
    assert_eq!(e.level, Some(Level::Confidential));
    assert_eq!(e.excluded.len(), 1);
    assert_eq!(e.excluded[0].backend, "openai");
    assert!(
        e.excluded[0].why.contains("cleared for internal"),
        "{:?}",
        e.excluded
    );
    // gpt-4o is also served by a backend cleared for confidential data: only that one remains.
    let d = decide(&PolicyConfig::default(), &f, &req("gpt-4o", EMAIL)).unwrap();
    assert_eq!(names(&d, &f), ["vault/gpt-4o"]);
    assert_eq!(d.excluded[0].backend, "openai");
}

#[test]
fn substitute_serves_sensitive_requests_for_a_cloud_model_with_the_local_model() {
    let p = policy(SUBSTITUTE);
    let f = fleet();
    let d = decide(&p, &f, &req("gpt-4o-mini", EMAIL)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert_eq!(d.rule, "sensitive-stays-local");
    assert_eq!(d.substituted_for.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(d.level, Level::Confidential);
    // Benign requests still go where the client asked.
    let d = decide(&p, &f, &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(
        (names(&d, &f), d.rule.as_str()),
        (vec!["openai/gpt-4o-mini".to_owned()], DEFAULT_RULE)
    );
    assert_eq!(d.substituted_for, None);
}

#[test]
fn a_substitute_goes_to_the_local_pool_even_before_its_workers_report_their_models() {
    let mut f = fleet();
    f.backends[0].models.clear();
    f.backends[0].ready = false;
    let d = decide(&policy(SUBSTITUTE), &f, &req("gpt-4o-mini", CARD)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
}

#[test]
fn rules_are_evaluated_in_order_and_the_first_match_wins() {
    let p = policy(
        r#"
rules:
  - name: cards-refused
    when: { findings: payment_card }
    then: { reject: "Card numbers are not accepted here." }
  - name: sensitive-stays-local
    when: { min_level: confidential }
    then: { substitute: smollm2 }
"#,
    );
    let e = decide(&p, &fleet(), &req("gpt-4o-mini", CARD)).unwrap_err();
    assert_eq!((e.error.status.as_u16(), e.error.code), (403, "policy_rejected"));
    assert_eq!(e.rule.as_deref(), Some("cards-refused"));
    assert!(e.error.message.contains("Card numbers are not accepted here."));
    let d = decide(&p, &fleet(), &req("gpt-4o-mini", EMAIL)).unwrap();
    assert_eq!(d.rule, "sensitive-stays-local");
}

#[test]
fn route_confines_a_request_and_fails_closed_when_nothing_there_serves_its_model() {
    let p = policy(
        r#"
rules:
  - name: keys-stay-home
    when: { findings: [private_key, aws_access_key] }
    then: { route: local }
"#,
    );
    let f = fleet();
    let r = req("gpt-4o-mini", "key AKIAQ4XJ7RZ2MLC5VNWD please");
    let e = decide(&p, &f, &r).unwrap_err();
    assert_eq!(e.error.code, "no_compliant_backend");
    assert!(
        e.excluded[0].why.contains("sends it only to local"),
        "{:?}",
        e.excluded
    );
    let d = decide(&p, &f, &req(LOCAL_MODEL, "key AKIAQ4XJ7RZ2MLC5VNWD please")).unwrap();
    assert_eq!(
        (names(&d, &f), d.rule.as_str()),
        (vec!["local/smollm2".to_owned()], "keys-stay-home")
    );
}

#[test]
fn the_level_is_the_highest_of_findings_declaration_and_tenant_floor() {
    let p = policy("tenants:\n  legal: { floor: confidential }\n");
    let f = fleet();
    // A declaration raises the level...
    let r = req("gpt-4o", "Hello").header("x-sluice-sensitivity", "confidential");
    assert_eq!(names(&decide(&p, &f, &r).unwrap(), &f), ["vault/gpt-4o"]);
    // ... and never lowers it.
    let r = req("gpt-4o", CARD).header("x-sluice-sensitivity", "public");
    let e = decide(&p, &f, &r).unwrap_err();
    assert_eq!(
        (e.level, e.error.code),
        (Some(Level::Restricted), "no_compliant_backend")
    );
    // A tenant's floor holds for its benign requests.
    let mut r = req("gpt-4o", "Hello");
    r.tenant = "legal";
    let d = decide(&p, &f, &r).unwrap();
    assert_eq!(
        (d.level, names(&d, &f)),
        (Level::Confidential, vec!["vault/gpt-4o".to_owned()])
    );
}

#[test]
fn conditions_on_tenant_model_headers_and_prompt_size() {
    let p = policy(
        r#"
rules:
  - name: finance-header
    when: { headers: { x-team: [finance, treasury] } }
    then: { reject: "finance goes through its own gateway" }
  - name: big-prompts
    when: { min_prompt_tokens: 1000 }
    then: { route: local }
  - name: legal-tenant
    when: { tenant: legal, model: gpt-4o }
    then: { reject: "legal may not use gpt-4o" }
  - name: any-debug-header
    when: { headers: { x-debug: "*" } }
    then: { reject: "no debugging" }
"#,
    );
    let f = fleet();
    let rule = |r: &Req| match decide(&p, &f, r) {
        Ok(d) => d.rule,
        Err(e) => e.rule.unwrap_or_default(),
    };
    assert_eq!(
        rule(&req("gpt-4o", "Hi").header("x-team", " Treasury ")),
        "finance-header"
    );
    assert_eq!(rule(&req("gpt-4o", "Hi").header("x-team", "sales")), DEFAULT_RULE);
    assert_eq!(rule(&req(LOCAL_MODEL, &"word ".repeat(800))), "big-prompts");
    assert_eq!(rule(&req(LOCAL_MODEL, &"word ".repeat(700))), DEFAULT_RULE);
    let mut legal = req("gpt-4o", "Hi");
    legal.tenant = "legal";
    assert_eq!(rule(&legal), "legal-tenant");
    let mut legal = req("gpt-4o-mini", "Hi");
    legal.tenant = "legal";
    assert_eq!(rule(&legal), DEFAULT_RULE);
    assert_eq!(
        rule(&req("gpt-4o", "Hi").header("x-debug", "")),
        "any-debug-header"
    );
}

const AUTO: &str = r#"
models:
  auto:
    strategy: cheapest_within_slo
    max_ttft_ms: 1000
    members:
      - { backend: local, model: smollm2 }
      - { backend: openai, model: gpt-4o-mini }
"#;

#[test]
fn auto_picks_the_cheapest_backend_that_meets_the_objective() {
    let p = policy(AUTO);
    let mut f = fleet();
    // Unmeasured, both are assumed to meet it; the local pool has reported no rates, so no price yet.
    let d = decide(&p, &f, &req("auto", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2", "openai/gpt-4o-mini"]);
    // The local pool is measured slower than the objective: the cloud, which meets it, first.
    f.backends[0].ttft_seconds = Some(1.5);
    f.backends[1].ttft_seconds = Some(0.4);
    let d = decide(&p, &f, &req("auto", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini", "local/smollm2"]);
    // Fast again, but every slot busy and four more waiting at 50 tokens/s: its queue misses the objective.
    f.backends[0].ttft_seconds = Some(0.3);
    f.backends[0].tokens_per_second = Some(50.0);
    f.backends[0].load = Load {
        in_flight: 8,
        running: 4,
        waiting: 4,
        slots: 4,
    };
    let d = decide(&p, &f, &req("auto", "Hello")).unwrap();
    assert_eq!(names(&d, &f)[0], "openai/gpt-4o-mini");
    // Sensitive data: only the local member may take it, queue or not.
    let d = decide(&p, &f, &req("auto", EMAIL)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert_eq!(d.excluded[0].backend, "openai");
}

#[test]
fn cheapest_and_fastest_order_by_price_and_by_observed_speed() {
    let mut f = fleet();
    f.backends[1].ttft_seconds = Some(0.2);
    f.backends[2].ttft_seconds = Some(0.9);
    let cheapest = policy("strategy: cheapest\n");
    let d = decide(&cheapest, &f, &req("gpt-4o", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o", "vault/gpt-4o"]);
    let mut f2 = f.clone();
    f2.backends[1].ttft_seconds = Some(2.0);
    let fastest = policy("strategy: fastest\n");
    let d = decide(&fastest, &f2, &req("gpt-4o", "Hello")).unwrap();
    assert_eq!(names(&d, &f2), ["vault/gpt-4o", "openai/gpt-4o"]);
    // A backend that is not ready goes last whatever it costs.
    f.backends[1].ready = false;
    let d = decide(&cheapest, &f, &req("gpt-4o", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["vault/gpt-4o", "openai/gpt-4o"]);
}

#[test]
fn the_prefer_hint_reorders_allowed_targets_and_never_adds_forbidden_ones() {
    let p = policy(AUTO);
    let f = fleet();
    let mut r = req("auto", "Hello");
    r.prefer = Some(Route::Cloud);
    let d = decide(&p, &f, &r).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini", "local/smollm2"]);
    assert!(d.reason.contains("prefer cloud was followed"), "{}", d.reason);
    let mut r = req("auto", EMAIL);
    r.prefer = Some(Route::Cloud);
    let d = decide(&p, &f, &r).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert!(d.reason.contains("prefer cloud was not followed"), "{}", d.reason);
}

#[test]
fn compile_reports_every_problem_with_its_key() {
    let (errors, _) = problems(
        r#"
strategy: quickest
models:
  gpt-4o:
    members: [{ backend: nowhere, model: x }]
rules:
  - name: a
    when: { min_prompt_tokens: 10, max_prompt_tokens: 5 }
    then: { route: mars }
  - name: a
    then: { reject: "" }
  - when: {}
    then: { route: local, reject: "x" }
  - name: b
    then: { substitute: { model: gpt-4o-mini, backend: vault } }
"#,
    );
    let expect = [
        "policy.strategy: \"quickest\" is not a strategy",
        "policy.models.gpt-4o: \"gpt-4o\" is a cloud model's name",
        "policy.models.gpt-4o.members[0].backend: no backend is named \"nowhere\"",
        "policy.rules[0].when.min_prompt_tokens: is above max_prompt_tokens",
        "policy.rules[0].then.route: no backend is named \"mars\"",
        "policy.rules[1].name: the rule name \"a\" is used twice",
        "policy.rules[1].then.reject: give the reason",
        "policy.rules[2]: `name` is required",
        "policy.rules[2].then: give only one action",
        "policy.rules[3].then.substitute.model: backend vault does not list the model \"gpt-4o-mini\"",
    ];
    for e in expect {
        assert!(
            errors.iter().any(|x| x.contains(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
}

#[test]
fn lint_finds_rules_that_never_match_or_never_serve_and_backends_nothing_reaches() {
    let (errors, warnings) = problems(
        r#"
tenants:
  legal: { floor: confidential }
  nobody: { floor: restricted }
rules:
  - name: mail-but-public
    when: { findings: email, max_level: internal }
    then: { route: local }
  - name: confidential-to-openai
    when: { min_level: confidential }
    then: { route: openai }
  - name: restricted-to-openai
    when: { level: restricted }
    then: { route: local }
  - name: everything-local
    then: { route: local }
  - name: after-everything
    when: { model: gpt-4o }
    then: { route: vault }
"#,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    let expect = [
        "policy.rules[0].when: rule `mail-but-public` can never match: each of its finding kinds",
        "policy.rules[1].then: rule `confidential-to-openai` matches confidential requests or above, but sends them only to backends cleared below that (openai: internal)",
        "policy.rules[2].name: rule `restricted-to-openai` can never match: every request it matches is matched first by `confidential-to-openai`",
        "policy.rules[4].name: rule `after-everything` can never match: every request it matches is matched first by `everything-local`",
        "no rule sends requests to backend vault (rule `everything-local` matches every request first)",
        "policy.tenants.nobody: no API key belongs to the tenant \"nobody\"",
    ];
    for w in expect {
        assert!(
            warnings.iter().any(|x| x.contains(w)),
            "missing {w:?} in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), expect.len(), "{warnings:#?}");
}

#[test]
fn an_explanation_says_where_findings_are_and_never_what_they_say() {
    let p = policy(SUBSTITUTE);
    let f = fleet();
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": EMAIL},
        ],
    })
    .to_string();
    let request = parse_chat_request(body.as_bytes()).unwrap();
    let r = Req {
        scan: scanner().scan_all(strings(&request.body)),
        request,
        headers: Vec::new(),
        tenant: "acme",
        prefer: None,
    };
    let result = decide_raw(&p, &f, &r);
    let e = explain("dec_1", &r.facts(), Level::Public, &f, &result);
    assert_eq!(e.outcome, "route");
    assert_eq!(e.rule.as_deref(), Some("sensitive-stays-local"));
    assert_eq!(e.findings.len(), 1);
    let at = &e.findings[0];
    assert_eq!((at.kind, at.field.as_str()), ("email", "messages[1].content"));
    assert_eq!(&EMAIL[at.start..at.end], "jane.doe@example.com");
    let json = serde_json::to_string(&e).unwrap();
    assert!(!json.contains("jane.doe"), "{json}");
    assert_eq!(e.targets[0].backend, "local");
    assert_eq!(e.substituted_for.as_deref(), Some("gpt-4o-mini"));
}

#[test]
fn string_paths_follow_the_scanner_order() {
    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stop":["x"]}"#,
    )
    .unwrap();
    let paths = string_paths(&body);
    let texts = strings(&body);
    assert_eq!(paths.len(), texts.len());
    let pairs: Vec<(String, &str)> = paths.into_iter().zip(texts).collect();
    assert!(
        pairs.contains(&("messages[0].content[0].text".to_owned(), "hi")),
        "{pairs:?}"
    );
    assert!(pairs.contains(&("stop[0]".to_owned(), "x")), "{pairs:?}");
    assert!(
        pairs.contains(&("messages[0].role{key}".to_owned(), "role")),
        "{pairs:?}"
    );
}
