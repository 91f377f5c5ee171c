#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use super::*;

fn translate(v: Value) -> Result<Value, InvalidRequest> {
    to_chat_body(v.to_string().as_bytes())
        .map(|(b, _)| serde_json::from_slice(&b).expect("chat body is JSON"))
}

#[test]
fn system_blocks_tools_and_results_become_chat() {
    let chat = translate(json!({
        "model": "m", "max_tokens": 64, "stream": true, "temperature": 0.2,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        "stop_sequences": ["\n\nHuman:"],
        "metadata": {"user_id": "u-7"},
        "tools": [{"name": "weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "4 C"}]},
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            ]},
        ],
    }))
    .expect("valid");
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Be brief.\nBe kind."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}], "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "4 C"},
            {"role": "user", "content": [
                {"type": "text", "text": "And tomorrow?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            ]},
        ])
    );
    assert_eq!(chat["max_tokens"], 64);
    assert_eq!(chat["stream_options"]["include_usage"], true);
    assert_eq!(chat["stop"], json!(["\n\nHuman:"]));
    assert_eq!(chat["user"], "u-7");
    assert_eq!(chat["tool_choice"], "required");
    assert_eq!(chat["parallel_tool_calls"], false);
    assert_eq!(chat["tools"][0]["function"]["name"], "weather");
    assert_eq!(
        chat["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    // The chat body passes the chat checks too.
    crate::api::parse_chat_request(chat.to_string().as_bytes()).expect("a chat request");
}

#[test]
fn a_user_turn_of_tool_results_alone_is_tool_messages() {
    let chat = translate(json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "done", "is_error": true}]},
    ]}))
    .expect("valid");
    assert_eq!(chat["messages"][1]["content"], Value::Null);
    assert_eq!(
        chat["messages"][2],
        json!({"role": "tool", "tool_call_id": "t", "content": "Error: done"})
    );
    assert_eq!(chat["messages"].as_array().map(Vec::len), Some(3));
}

#[test]
fn what_has_no_equivalent_is_refused_by_name() {
    let ok = |extra: Value| {
        let mut b = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        if let (Value::Object(b), Value::Object(e)) = (&mut b, extra) {
            b.extend(e);
        }
        b
    };
    for (body, param) in [
        (ok(json!({"top_k": 5})), "top_k"),
        (
            ok(json!({"cache_control": {"type": "ephemeral", "note": "secret"}})),
            "cache_control",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{"cited_text": "y"}]}]}]}),
            "messages[0].content[0].citations",
        ),
        (
            ok(json!({"thinking": {"type": "enabled", "budget_tokens": 1024}})),
            "thinking",
        ),
        (ok(json!({"service_tier": "auto"})), "service_tier"),
        (
            ok(json!({"stop_sequences": ["a", "b", "c", "d", "e"]})),
            "stop_sequences",
        ),
        (
            ok(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
            "tools[0].type",
        ),
        (ok(json!({"max_tokens": 0})), "max_tokens"),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (json!({"model": "m", "max_tokens": 5}), "messages"),
        (
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
            "messages[0].content[0].text",
        ),
    ] {
        let e = translate(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
    }
}

#[test]
fn the_clients_own_body_stands_for_the_request_only_while_it_is_unchanged() {
    let client = json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
                        "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}]});
    let (chat, native) = to_chat_body(client.to_string().as_bytes()).expect("valid");
    let mut request = crate::api::parse_chat_request(&chat).expect("chat");
    request.keep_native(native);
    assert_eq!(request.native_body().map(Value::Object), Some(client.clone()));
    // Another model (a substitute, a virtual model's member): the client's body, naming it.
    let other = request.with_model("claude-2");
    assert_eq!(other.native_body().expect("still native")["model"], "claude-2");
    // A rewritten body (a redacted one) is no longer what the client sent: it goes as its translation.
    let mut rewritten = request.clone();
    rewritten.body.insert(
        "messages".into(),
        json!([{"role": "user", "content": "<PERSON_1>"}]),
    );
    assert_eq!(rewritten.native_body(), None);
    let reparsed = crate::api::parse_chat_request(&chat).expect("chat");
    assert_eq!(reparsed.native_body(), None);
}
