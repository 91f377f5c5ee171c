//! `redact` rules: which requests go redacted to the cloud, which take the fallback and why, and what
//! the configuration refuses.

use sluice_sensitivity::Kind;

use super::*;

const REDACT: &str = r#"
rules:
  - name: contacts-redacted
    when: { min_level: confidential, model: gpt-4o-mini }
    then:
      redact:
        to: cloud
        kinds: [person_name, email, phone]
        fallback: { substitute: smollm2 }
"#;

const REDACT_OR_REJECT: &str = r#"
rules:
  - name: contacts-redacted
    when: { min_level: confidential, model: gpt-4o-mini }
    then:
      redact: { to: openai, kinds: [email] }
"#;

#[test]
fn a_request_whose_findings_are_all_replaceable_goes_redacted_to_the_cloud() {
    let p = policy(REDACT);
    let f = fleet();
    let r = req("gpt-4o-mini", EMAIL);
    let d = decide(&p, &f, &r).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini"]);
    // The request is confidential; its redacted form is public, which the internal cloud may take.
    assert_eq!(d.level, Level::Confidential);
    let redaction = d.redaction.as_ref().expect("redacted");
    assert_eq!(redaction.level, Level::Public);
    assert_eq!(redaction.kinds, [Kind::PersonName, Kind::Email, Kind::Phone]);
    assert!(
        d.reason.contains("email replaced by placeholders"),
        "{}",
        d.reason
    );
    // Its fallback is decided too, for when the redacted form does not prove safe: the local model.
    let fallback = redaction.fallback.as_ref().as_ref().unwrap();
    assert_eq!(names(fallback, &f), ["local/smollm2"]);
    assert!(fallback.redaction.is_none());

    let e = explain("dec_1", &r.facts(), Level::Public, &f, &decide_raw(&p, &f, &r));
    assert_eq!(e.route, Some("redacted-cloud"));
    let at = e.redaction.unwrap();
    assert_eq!((at.outcome, at.level), ("redacted", Some(Level::Public)));
}

#[test]
fn a_request_with_data_the_rule_does_not_replace_takes_the_fallback_and_says_why() {
    let p = policy(REDACT);
    let f = fleet();
    let both = format!("{EMAIL} {CARD}");
    let d = decide(&p, &f, &req("gpt-4o-mini", &both)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert!(d.redaction.is_none());
    let why = d.unredactable.as_deref().unwrap();
    assert!(
        why.contains("payment_card (restricted), which the rule does not replace"),
        "{why}"
    );
    assert!(
        d.reason.starts_with("rule `contacts-redacted` cannot redact"),
        "{}",
        d.reason
    );

    // A private key is never replaced: it goes nowhere but the fallback.
    let key = format!(
        "{EMAIL}\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACDZ\n-----END OPENSSH PRIVATE KEY-----"
    );
    let d = decide(&p, &f, &req("gpt-4o-mini", &key)).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert!(d.unredactable.unwrap().contains("private_key (restricted)"));

    // A declared level and a tenant floor are not lowered by replacing anything.
    let declared = req("gpt-4o-mini", EMAIL).header("x-sluice-sensitivity", "confidential");
    let d = decide(&p, &f, &declared).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    assert!(d.unredactable.unwrap().contains("it is declared confidential"));
}

#[test]
fn without_a_fallback_an_unredactable_request_is_rejected_with_the_reason() {
    let p = policy(REDACT_OR_REJECT);
    let f = fleet();
    assert!(
        decide(&p, &f, &req("gpt-4o-mini", EMAIL))
            .unwrap()
            .redaction
            .is_some()
    );
    let refused = decide(&p, &f, &req("gpt-4o-mini", CARD)).unwrap_err();
    assert_eq!(refused.error.status.as_u16(), 403);
    assert_eq!(refused.error.code, "policy_rejected");
    assert!(
        refused
            .error
            .message
            .contains("payment_card (restricted), which the rule does not replace"),
        "{}",
        refused.error.message
    );
    let r = req("gpt-4o-mini", CARD);
    let e = explain("dec_2", &r.facts(), Level::Public, &f, &decide_raw(&p, &f, &r));
    assert_eq!(e.outcome, "reject");
    assert_eq!(e.redaction.unwrap().outcome, "fell_back");
}

#[test]
fn a_request_with_nothing_to_replace_is_routed_as_it_is() {
    let p = policy(
        r#"
rules:
  - name: redact-all
    then:
      redact: { to: cloud, kinds: [email], fallback: { route: local } }
"#,
    );
    let f = fleet();
    let d = decide(&p, &f, &req("gpt-4o-mini", "What is the capital of Japan?")).unwrap();
    assert_eq!(names(&d, &f), ["openai/gpt-4o-mini"]);
    assert!(d.redaction.is_none() && d.unredactable.is_none());
}

#[test]
fn the_configuration_refuses_redactions_that_cannot_be_safe() {
    let (errors, _) = problems(
        r#"
never_redact: [iban]
rules:
  - name: a
    then:
      redact: { to: cloud, kinds: [email, private_key, iban] }
  - name: b
    then:
      redact: { to: [local], kinds: [email], fallback: { redact: { to: cloud, kinds: [email] } } }
  - name: c
    then:
      redact: { to: nowhere }
  - name: d
    then:
      redact: { to: [any, local], kinds: [email] }
"#,
    );
    let want = [
        "policy.rules[0].then.redact.kinds",
        "private_key is a credential, which is never redacted",
        "iban is marked never_redact in this policy",
        "policy.rules[1].then.redact.to",
        "the local workers take sensitive data as it is",
        "policy.rules[1].then.redact.fallback",
        "it does not redact again",
        "policy.rules[2].then.redact.to",
        "no backend is named \"nowhere\"",
        "policy.rules[2].then.redact.kinds",
        "name the finding kinds to replace",
        "policy.rules[3].then.redact.to",
        "any: a redacted request goes to cloud backends",
    ];
    let all = errors.join("\n");
    for w in want {
        assert!(all.contains(w), "{w:?} missing from:\n{all}");
    }
    let (errors, _) = problems("never_redact: [aws_access_key]\n");
    assert!(
        errors[0].contains("aws_access_key is a credential: it is never redacted anyway"),
        "{errors:?}"
    );
}

#[test]
fn a_redaction_below_its_matched_level_is_no_lint_warning() {
    let (errors, warnings) = problems(REDACT);
    assert!(
        errors.is_empty() && warnings.is_empty(),
        "{errors:?} {warnings:?}"
    );
}

#[test]
fn a_combination_stays_met_while_any_of_its_findings_is_kept() {
    let p = policy(REDACT);
    let f = fleet();
    // A birth date with a diagnosis is restricted together, though neither is alone; the rule replaces
    // neither, so the request is not redactable and nothing goes to the cloud as it is.
    let r = req(
        "gpt-4o-mini",
        "Patient Maria Gonzalez, DOB 1975-03-04, was diagnosed with HIV last week.",
    );
    assert_eq!(r.scan.level, Level::Restricted);
    assert!(!r.scan.combined.is_empty());
    let d = decide(&p, &f, &r).unwrap();
    assert_eq!(names(&d, &f), ["local/smollm2"]);
    let why = d.unredactable.unwrap();
    assert!(
        why.contains("the combination birth-date-with-health (restricted)"),
        "{why}"
    );
}

#[test]
fn when_no_cloud_serves_the_model_the_fallback_says_so() {
    let p = policy(REDACT_OR_REJECT);
    let f = fleet();
    // `openai` does not serve gpt-5: nothing is kept above its clearance, the route itself fails.
    let mut p = p;
    p.rules[0].when.models = Some(vec!["gpt-5".into()]);
    let refused = decide(&p, &f, &req("gpt-5", EMAIL)).unwrap_err();
    assert!(
        refused
            .error
            .message
            .contains("cannot redact this request: no backend it may go to serves `gpt-5`"),
        "{}",
        refused.error.message
    );
}
