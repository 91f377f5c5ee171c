//! `policy.fallbacks`: a cloud model's local substitute, carried by the decision for the dispatcher (cloud
//! unavailable or rate-limited) or taken at once (over budget), never for a client that forbids it, never
//! to a cloud; and what the configuration refuses.

use super::*;

const FALLBACKS: &str = r#"
fallbacks:
  - { model: gpt-4o-mini, to: smollm2, on: [cloud_unavailable, cloud_rate_limited, over_budget] }
  - { model: gpt-4o, tenant: legal, to: { model: smollm2, backend: local }, on: cloud_unavailable }
rules:
  - name: cards-local
    when: { findings: payment_card }
    then: { route: local }
"#;

#[test]
fn a_cloud_decision_carries_its_local_fallback_unless_the_client_forbids_it() {
    let p = policy(FALLBACKS);
    let f = fleet();
    let d = decide(&p, &f, &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini"]);
    let fb = d.fallback.as_ref().expect("a fallback");
    assert_eq!(
        fb.targets
            .iter()
            .map(|t| format!("{}/{}", f.backends[t.backend].name, t.model))
            .collect::<Vec<_>>(),
        ["local/smollm2"]
    );
    assert_eq!(
        (fb.model.as_str(), fb.requested.as_str()),
        ("smollm2", "gpt-4o-mini")
    );
    assert_eq!(
        fb.on,
        [FallbackReason::CloudUnavailable, FallbackReason::CloudRateLimited],
        "over budget is settled by the policy itself"
    );
    assert!(d.fell_back.is_none());
    assert!(d.reason.contains("`smollm2` serves it locally"), "{}", d.reason);

    // The client forbids it.
    let d = decide(
        &p,
        &f,
        &req("gpt-4o-mini", "Hello").header("x-sluice-fallback", "none"),
    )
    .unwrap();
    assert!(d.fallback.is_none());
    // Another tenant than the entry names, or a model no entry names: none.
    let d = decide(&p, &f, &req("gpt-4o", "Hello")).unwrap();
    assert!(d.fallback.is_none(), "gpt-4o falls back for tenant legal only");
    let mut legal = req("gpt-4o", "Hello");
    legal.tenant = "legal";
    let d = decide(&p, &f, &legal).unwrap();
    assert_eq!(
        d.fallback.as_ref().map(|f| f.on.clone()),
        Some(vec![FallbackReason::CloudUnavailable])
    );
}

#[test]
fn over_budget_the_fallback_serves_at_once_and_says_why() {
    let p = policy(FALLBACKS);
    let f = FleetView {
        over_budget: true,
        ..fleet()
    };
    let d = decide(&p, &f, &req("gpt-4o-mini", "Hello")).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert_eq!(d.fell_back, Some(FallbackReason::OverBudget));
    assert_eq!(d.substituted_for.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(d.rule, "default:fallback");
    assert!(d.fallback.is_none());
    // An entry without over_budget leaves it to the policy's over_budget (a rejection by default).
    let mut legal = req("gpt-4o", "Hello");
    legal.tenant = "legal";
    let r = decide(&p, &f, &legal).unwrap_err();
    assert_eq!(r.error.code, "budget_exceeded");
    // Forbidden by the client: the same rejection.
    let r = decide(
        &p,
        &f,
        &req("gpt-4o-mini", "Hello").header("x-sluice-fallback", "none"),
    )
    .unwrap_err();
    assert_eq!(r.error.code, "budget_exceeded");
}

#[test]
fn fallbacks_are_checked_against_the_backends() {
    let (errors, _) = problems("fallbacks:\n  - { model: smollm2, to: smollm2 }\n");
    assert!(
        errors.iter().any(|e| e.contains("is no cloud backend's model")),
        "{errors:?}"
    );
    let (errors, _) =
        problems("fallbacks:\n  - { model: gpt-4o, to: { model: gpt-4o-mini, backend: openai } }\n");
    assert!(
        errors.iter().any(|e| e.contains("openai is a cloud backend")),
        "{errors:?}"
    );
    let (errors, _) = problems("fallbacks:\n  - { model: gpt-4o }\n");
    assert!(
        errors.iter().any(|e| e.contains("name the local model")),
        "{errors:?}"
    );
    let (errors, _) = problems(
        "fallbacks:\n  - { model: gpt-4o, to: smollm2 }\n  - { model: gpt-4o, to: smollm2, tenant: legal }\n",
    );
    assert!(
        errors.iter().any(|e| e.contains("this entry is never used")),
        "{errors:?}"
    );
    let raw: Result<RawPolicy, _> =
        sluice_config::parse_yaml("fallbacks:\n  - { model: gpt-4o, to: smollm2, on: outage }\n");
    assert!(raw.is_err(), "an unknown reason");
}
