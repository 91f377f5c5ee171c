use proptest::prelude::*;
use sluice_sensitivity::{Finding, Kind, Level};

use super::*;

fn finding(kind: Kind, index: usize, text: &str, part: &str) -> Finding {
    let start = text
        .find(part)
        .unwrap_or_else(|| panic!("{part:?} not in {text:?}"));
    Finding {
        kind,
        level: Level::Confidential,
        index,
        range: start..start + part.len(),
        rule: None,
    }
}

const LETTER: &str = "Write a polite reminder to Maria Gonzalez (maria.g@northwind.example, +1 415 555 0132) \
                      that invoice 88213 is overdue. Maria Gonzalez prefers e-mail.";

#[test]
fn values_become_numbered_placeholders_and_come_back() {
    let found = [
        finding(Kind::PersonName, 0, LETTER, "Maria Gonzalez"),
        finding(Kind::Email, 0, LETTER, "maria.g@northwind.example"),
        finding(Kind::Phone, 0, LETTER, "+1 415 555 0132"),
    ];
    let r = redact(&[LETTER], &found);
    assert_eq!(
        r.texts[0],
        "Write a polite reminder to [PERSON_1] ([EMAIL_1], [PHONE_1]) that invoice 88213 is overdue. \
         [PERSON_1] prefers e-mail."
    );
    assert_eq!(r.mapping.len(), 3);
    assert_eq!(
        r.counts,
        BTreeMap::from([(Kind::Email, 1), (Kind::Phone, 1), (Kind::PersonName, 1)])
    );
    let answer = "Dear [PERSON_1], we will write to [EMAIL_1] or call [PHONE_1].";
    assert_eq!(
        r.mapping.restore(answer, Escape::None),
        "Dear Maria Gonzalez, we will write to maria.g@northwind.example or call +1 415 555 0132."
    );
    // The mapping never shows its values.
    assert_eq!(format!("{:?}", r.mapping), "Mapping(3 values)");
}

#[test]
fn a_placeholder_already_in_the_request_is_skipped() {
    let text = "Template: [EMAIL_1] goes here. Send to jo@example.com.";
    let r = redact(&[text], &[finding(Kind::Email, 0, text, "jo@example.com")]);
    assert_eq!(r.texts[0], "Template: [EMAIL_1] goes here. Send to [EMAIL_2].");
    assert_eq!(
        r.mapping.restore("to [EMAIL_2] and [EMAIL_1]", Escape::None),
        "to jo@example.com and [EMAIL_1]"
    );
}

#[test]
fn the_same_value_in_every_string_is_one_placeholder_and_words_containing_it_are_left() {
    let texts = ["Ann called.", "Ask Ann about the Annual report."];
    let r = redact(&texts, &[finding(Kind::PersonName, 0, texts[0], "Ann")]);
    assert_eq!(
        r.texts,
        ["[PERSON_1] called.", "Ask [PERSON_1] about the Annual report."]
    );
}

#[test]
fn a_value_written_json_escaped_or_in_another_case_is_the_same_placeholder() {
    // The name in prose, the same name in a tool's JSON answer (escaped as Python's json.dumps writes it,
    // and as serde writes it), and in capitals in a signature.
    let texts = [
        "Patient José García called.",
        r#"{"customer": "Jos\u00e9 Garc\u00eda"}"#,
        r#"{"customer":"José García","note":"say \"José García\""}"#,
        "JOSÉ GARCÍA\nAccounts",
    ];
    let r = redact(&texts, &[finding(Kind::PersonName, 0, texts[0], "José García")]);
    assert_eq!(
        r.texts,
        [
            "Patient [PERSON_1] called.",
            r#"{"customer": "[PERSON_1]"}"#,
            r#"{"customer":"[PERSON_1]","note":"say \"[PERSON_1]\""}"#,
            "[PERSON_1]\nAccounts",
        ]
    );
    assert_eq!(r.counts, [(Kind::PersonName, 1)].into());
    // Found in its escaped form, a value is restored decoded, and escaped again where JSON is written.
    let text = r#"{"to": "Jos\u00e9"}"#;
    let r = redact(&[text], &[finding(Kind::PersonName, 0, text, "Jos\\u00e9")]);
    assert_eq!(r.texts, [r#"{"to": "[PERSON_1]"}"#]);
    assert_eq!(r.mapping.restore("Dear [PERSON_1]", Escape::None), "Dear José");
    // A one-word value is matched in its own case only: "Will" is a name, "will" a verb.
    let texts = ["Will signed.", "It will rain."];
    let r = redact(&texts, &[finding(Kind::PersonName, 0, texts[0], "Will")]);
    assert_eq!(r.texts, ["[PERSON_1] signed.", "It will rain."]);
}

#[test]
fn a_mention_in_a_string_left_alone_is_found() {
    let texts = ["Ann called.", "Ann", "Annual"];
    let r = redact_except(
        &texts,
        &[finding(Kind::PersonName, 0, texts[0], "Ann")],
        &[false, true, true],
    );
    assert_eq!(r.texts, ["[PERSON_1] called.", "Ann", "Annual"]);
    assert_eq!(r.mapping.first_mention(&texts, |i| i == 2), None);
    assert_eq!(r.mapping.first_mention(&texts, |i| i > 0), Some(1));
}

#[test]
fn overlapping_findings_are_one_value_named_after_the_longest() {
    let text = "Card 4111 1111 1111 1111 on file.";
    let r = redact(
        &[text],
        &[
            finding(Kind::PaymentCard, 0, text, "4111 1111 1111 1111"),
            finding(Kind::Phone, 0, text, "1111 1111"),
        ],
    );
    assert_eq!(r.texts[0], "Card [CARD_1] on file.");
}

#[test]
fn a_placeholder_split_at_every_boundary_is_restored_and_nothing_else_is_held() {
    let text = "Mail jo@example.com now";
    let r = redact(&[text], &[finding(Kind::Email, 0, text, "jo@example.com")]);
    let answer = "I wrote to [EMAIL_1] [x] and [EMAIL_9] [EMAIL_1]!";
    let expected = "I wrote to jo@example.com [x] and [EMAIL_9] jo@example.com!";
    for cut in 0..=answer.len() {
        let mut rs = Restorer::new(&r.mapping, Escape::None);
        let first = rs.push(&answer[..cut]);
        // What was passed on at once is everything but a tail that could start a placeholder.
        let held = answer[..cut].rfind('[').filter(|&k| {
            let rest = &answer[k..cut];
            !rest.contains(']') && "[EMAIL_1]".starts_with(rest) && rest.len() < 9
        });
        let restored_prefix = r.mapping.restore(&answer[..held.unwrap_or(cut)], Escape::None);
        assert_eq!(first, restored_prefix, "cut at {cut}");
        let mut out = first;
        out.push_str(&rs.push(&answer[cut..]));
        out.push_str(&rs.finish());
        assert_eq!(out, expected, "cut at {cut}");
    }
}

#[test]
fn values_in_tool_call_arguments_are_escaped_as_json() {
    let text = r#"Ask "Bo" O'Neil"#;
    let r = redact(&[text], &[finding(Kind::PersonName, 0, text, r#""Bo" O'Neil"#)]);
    let arguments = r#"{"to": "[PERSON_1]"}"#;
    let restored = r.mapping.restore(arguments, Escape::JsonString);
    assert_eq!(restored, r#"{"to": "\"Bo\" O'Neil"}"#);
    let v: serde_json::Value = serde_json::from_str(&restored).unwrap_or_default();
    assert_eq!(v["to"], r#""Bo" O'Neil"#);
}

#[test]
fn a_whole_body_is_redacted_in_every_string_the_scanner_read() {
    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"model": "gpt-4o-mini", "stop": ["jo@example.com"], "messages": [
            {"role": "user", "name": "jo", "content": [{"type": "text", "text": "Mail jo@example.com or +44 20 7946 0958"}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
              "function": {"name": "send", "arguments": "{\"to\": \"jo@example.com\"}"}}]}],
          "tools": [{"type": "function", "function": {"name": "send", "description": "Write to jo@example.com",
            "parameters": {"type": "object", "properties": {"jo@example.com": {"type": "string"}}}}}]}"#,
    )
    .unwrap_or_default();
    let scanner = sluice_sensitivity::Scanner::new(&sluice_sensitivity::ScannerConfig::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let texts = sluice_policy::strings(&body);
    let scan = scanner.scan_all(texts.iter().copied());
    let r = redact(&texts, &scan.findings);
    let sent = rewrite_body(&body, &r.texts).unwrap_or_default();
    let json = serde_json::to_string(&sent).unwrap_or_default();
    assert!(!json.contains("jo@example.com"), "{json}");
    assert!(!json.contains("7946"), "{json}");
    assert_eq!(json.matches("[EMAIL_1]").count(), 5, "{json}");
    // Everything else is as it was: the same shape, the same other strings.
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sluice_policy::strings(&sent).len(), texts.len());
    // Restoring the sent body's strings gives the request back.
    let back: Vec<String> = sluice_policy::strings(&sent)
        .iter()
        .map(|t| r.mapping.restore(t, Escape::None))
        .collect();
    assert_eq!(rewrite_body(&sent, &back), Some(body.clone()));
    assert_eq!(rewrite_body(&body, &r.texts[1..]), None);
}

/// Text made of words, punctuation, brackets and digits, so that placeholders' own characters occur.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("Maria".to_owned()),
            Just("maria".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("_".to_owned()),
            Just("EMAIL".to_owned()),
            Just("[EMAIL_1]".to_owned()),
            Just("é".to_owned()),
            "[a-z]{1,6}",
            "[0-9]{1,4}",
            Just(" ".to_owned()),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    /// For any text and any findings, redacting and restoring what the model echoes gives the text back,
    /// however the echo is cut into chunks, and the redacted text holds no replaced value as a word.
    #[test]
    fn redact_then_restore_is_the_identity_on_an_echo(
        t in text(),
        spans in proptest::collection::vec((0usize..200, 1usize..12, 0usize..4), 0..6),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let kinds = [Kind::PersonName, Kind::Email, Kind::Phone, Kind::Iban];
        let findings: Vec<Finding> = spans
            .iter()
            .filter_map(|&(s, len, k)| {
                let s = s.min(t.len());
                let e = (s + len).min(t.len());
                (t.is_char_boundary(s) && t.is_char_boundary(e) && s < e && !t[s..e].trim().is_empty())
                    .then(|| Finding { kind: kinds[k], level: Level::Confidential, index: 0, range: s..e, rule: None })
            })
            .collect();
        let r = redact(&[&t], &findings);
        let sent = &r.texts[0];
        // Every whole-word occurrence of a replaced value in the original was replaced.
        for (_, value) in &r.mapping.entries {
            let mut from = 0;
            while let Some(k) = t[from..].find(value.as_str()) {
                let s = from + k;
                let e = s + value.len();
                if whole_word(&t, s, e) {
                    prop_assert!(
                        r.replaced[0].iter().any(|c| c.start <= s && e <= c.end),
                        "{value:?} at {s} left in {sent:?}"
                    );
                }
                from = s + t[s..].chars().next().map_or(1, char::len_utf8);
            }
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(sent.len())).filter(|&c| sent.is_char_boundary(c)).collect();
        cuts.sort_unstable();
        let mut rs = Restorer::new(&r.mapping, Escape::None);
        let mut out = String::new();
        let mut last = 0;
        for c in cuts {
            out.push_str(&rs.push(&sent[last..c]));
            last = c;
        }
        out.push_str(&rs.push(&sent[last..]));
        out.push_str(&rs.finish());
        prop_assert_eq!(out, t.clone());
    }
}
