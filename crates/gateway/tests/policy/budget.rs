//! `over_budget`: what a request that would reach a cloud gets once its tenant's cloud budget is spent,
//! by rule and by default, and what the configuration refuses.

use super::*;

const BUDGETED: &str = r#"
over_budget: { substitute: smollm2 }
rules:
  - name: strict-cloud
    when: { tenant: legal }
    then: { route: cloud }
    over_budget: reject
  - name: contacts-redacted
    when: { min_level: confidential, model: gpt-4o-mini }
    then:
      redact: { to: cloud, kinds: [email], fallback: { route: local } }
"#;

fn spent() -> FleetView {
    FleetView {
        over_budget: true,
        ..fleet()
    }
}

#[test]
fn over_budget_a_cloud_request_takes_the_policys_action_and_says_so() {
    let p = policy(BUDGETED);
    let f = spent();
    // No rule matches: the policy's over_budget serves it with the local model.
    let d = decide(&p, &f, &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert_eq!(d.rule, "default:over_budget");
    assert_eq!(d.substituted_for.as_deref(), Some("gpt-4o-mini"));
    assert!(
        d.reason
            .starts_with("the tenant's cloud budget for the period is spent"),
        "{}",
        d.reason
    );
    // A redacted request would have gone to the cloud: it takes the over-budget action, never redacted.
    let d = decide(&p, &f, &req("gpt-4o-mini", EMAIL)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert_eq!(d.rule, "contacts-redacted:over_budget");
    assert!(d.redaction.is_none());
    // Within budget, nothing changes.
    let d = decide(&p, &fleet(), &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(names(&d, &fleet()), ["openai/gpt-4o-mini"]);
    assert_eq!(d.rule, DEFAULT_RULE);
    // A request that stays local anyway is not touched.
    let d = decide(&p, &f, &req(LOCAL_MODEL, "Hello")).unwrap();
    assert_eq!(d.rule, DEFAULT_RULE);
}

#[test]
fn a_rule_that_rejects_over_budget_answers_429_budget_exceeded() {
    let p = policy(BUDGETED);
    let mut r = req("gpt-4o-mini", "Hello");
    r.tenant = "legal";
    let e = decide(&p, &spent(), &r).unwrap_err();
    assert_eq!((e.error.status.as_u16(), e.error.code), (429, "budget_exceeded"));
    assert_eq!(e.rule.as_deref(), Some("strict-cloud:over_budget"));
    assert!(e.error.message.contains("cloud budget"), "{}", e.error.message);
    // The default, with nothing configured, is the same rejection.
    let e = decide(&PolicyConfig::default(), &spent(), &req("gpt-4o-mini", "Hello")).unwrap_err();
    assert_eq!(
        (e.error.code, e.rule.as_deref()),
        ("budget_exceeded", Some("default:over_budget"))
    );
}

#[test]
fn over_budget_never_reaches_a_cloud_even_when_the_action_would() {
    // `any` could pick the cloud: over budget only the local pool remains, the cloud said why.
    let p = policy(
        "rules:\n  - name: anywhere\n    when: {}\n    then: { route: any }\n    over_budget: { route: any }\n",
    );
    let f = spent();
    let d = decide(&p, &f, &req("gpt-4o", "Hello")).unwrap_err();
    assert_eq!(d.error.code, "no_compliant_backend");
    assert!(
        d.error.message.contains("no local backend"),
        "{}",
        d.error.message
    );
    let d = decide(&p, &f, &req(LOCAL_MODEL, "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
}

#[test]
fn over_budget_actions_that_could_only_reach_a_cloud_are_refused_with_their_key() {
    let (errors, _) = problems("over_budget: { route: cloud }\n");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("policy.over_budget") && e.contains("never goes to a cloud")),
        "{errors:?}"
    );
    let (errors, _) = problems(
        "rules:\n  - name: r\n    then: { route: cloud }\n    over_budget: { substitute: { model: gpt-4o, backend: vault } }\n",
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("policy.rules[0].over_budget") && e.contains("never goes to a cloud")),
        "{errors:?}"
    );
    let (errors, _) = problems("rules:\n  - name: r\n    then: { route: cloud }\n    over_budget: later\n");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("\"later\": write reject, local")),
        "{errors:?}"
    );
    let (errors, _) = problems(
        "rules:\n  - name: r\n    then: { route: cloud }\n    over_budget: { redact: { to: cloud, kinds: [email] } }\n",
    );
    assert!(
        errors.iter().any(|e| e.contains("it is not redacted")),
        "{errors:?}"
    );
    assert!(problems("over_budget: local\n").0.is_empty());
}
