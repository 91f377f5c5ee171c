use super::*;
use crate::error::ApiError;

/// Parses as the gateway answers: through the one mapping of errors to HTTP.
fn parse(body: &str) -> Result<ChatRequest, ApiError> {
    parse_chat_request(body.as_bytes()).map_err(ApiError::from)
}

#[test]
fn reads_the_fields_the_gateway_uses() {
    let r = parse(
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,
            "max_completion_tokens":9,"temperature":0.5,"top_p":0.9,"seed":-3,"stop":"END","user":"u1",
            "messages":[{"role":"system","content":"be brief"},
                        {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"},
                                                  {"type":"image_url","image_url":{"url":"x"}}]},
                        {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function",
                          "function":{"name":"f","arguments":"{}"}}]},
                        {"role":"tool","tool_call_id":"c","content":"42"}],
            "tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"text"}}"#,
    )
    .unwrap();
    assert_eq!(r.model, "m");
    assert!(r.stream && r.include_usage && r.has_tools);
    assert_eq!(r.max_tokens, Some(9), "max_completion_tokens wins");
    assert_eq!((r.temperature, r.top_p, r.seed), (Some(0.5), Some(0.9), Some(-3)));
    assert_eq!(r.stop, ["END"]);
    assert_eq!(r.user.as_deref(), Some("u1"));
    assert_eq!(r.messages[1].text, "a\nb");
    assert_eq!(r.messages[1].non_text_parts, 1);
    assert!(r.messages[2].has_tool_calls);
    assert_eq!(r.messages[3].role, Role::Tool);
    // The body is kept whole for OpenAI-compatible backends.
    assert_eq!(r.body["response_format"]["type"], "text");
    assert_eq!(text_only_conflicts(&r).map(|c| c.0), Some("tools"));
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            r#"{"model":"m","messages":[{"role":"user"}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":3}]}]}"#,
            "messages[0].content[0].text",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}"#,
            "messages[0].content[0].type",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#,
            "messages[0].tool_call_id",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
            "stop",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
            "stop[0]",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
            "stream_options",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":1.5}"#,
            "top_p",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1000001}"#,
            "max_tokens",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":1.5}"#,
            "seed",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{}}]}"#,
            "tools[0].function.name",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":{}}}]}]}"#,
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
            "model",
        ),
    ];
    for (body, param) in cases {
        let e = parse(body).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        assert!(
            e.message.contains(param.split('[').next().unwrap()),
            "{}",
            e.message
        );
    }
}

#[test]
fn invalid_utf8_and_json_are_told_apart() {
    assert_eq!(
        parse_chat_request(b"{\"model\":\"\xc3\x28\"}").unwrap_err().code,
        "invalid_utf8"
    );
    let e = parse("{\"model\":").unwrap_err();
    assert_eq!(e.code, "invalid_json");
    assert!(e.message.contains("line 1"), "{}", e.message);
}

#[test]
fn text_only_backends_refuse_what_they_would_ignore() {
    let with = |extra: &str| {
        parse(&format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}]{extra}}}"#
        ))
        .unwrap()
    };
    assert_eq!(text_only_conflicts(&with("")), None);
    assert_eq!(
        text_only_conflicts(&with(r#","response_format":{"type":"json_object"}"#)).map(|c| c.0),
        Some("response_format")
    );
    assert_eq!(
        text_only_conflicts(&with(r#","logprobs":true"#)).map(|c| c.0),
        Some("logprobs")
    );
    assert_eq!(
        text_only_conflicts(&with(r#","presence_penalty":0.5"#)).map(|c| c.0),
        Some("presence_penalty")
    );
    assert_eq!(
        text_only_conflicts(&with(r#","presence_penalty":0,"logprobs":false"#)),
        None
    );
}
