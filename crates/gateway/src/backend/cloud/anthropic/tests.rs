#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use serde_json::json;

use super::*;

fn chat(body: Value) -> ChatRequest {
    crate::api::parse_chat_request(body.to_string().as_bytes()).expect("a chat request")
}

#[test]
fn a_chat_request_in_the_messages_wire_format() {
    let r = chat(json!({
        "model": "claude-x", "max_tokens": 50, "stream": true, "stop": "END", "user": "u1", "temperature": 0.5,
        "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "So?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        ],
    }));
    let body = request_body(&r, 4096).expect("translatable");
    assert_eq!(
        body,
        json!({
            "model": "claude-x", "max_tokens": 50, "stream": true, "system": "Be brief.",
            "stop_sequences": ["END"], "temperature": 0.5, "metadata": {"user_id": "u1"},
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "c1", "content": "42"},
                    {"type": "text", "text": "So?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ]},
            ],
        })
    );
    let plain = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(request_body(&plain, 4096).expect("plain")["max_tokens"], 4096);
    let seeded = chat(json!({"model": "m", "seed": 3, "messages": [{"role": "user", "content": "x"}]}));
    assert!(request_body(&seeded, 1).expect_err("seed").contains("seed"));
}

#[test]
fn answers_and_events_become_openai_shapes() {
    let message = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "text", "text": "Hello"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "b"}}],
        "stop_reason": "tool_use", "stop_sequence": null, "usage": {"input_tokens": 7, "output_tokens": 3},
    });
    let (c, finish, usage) = completion(&message, 9).expect("a message");
    assert_eq!(finish, "tool_calls");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));
    assert_eq!(c["choices"][0]["message"]["content"], "Hello");
    assert_eq!(
        c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":\"b\"}"
    );

    let mut w = ChunkWriter::new(1);
    let start = w
        .event("message_start", &json!({"message": {"id": "msg_2", "model": "claude-x", "usage": {"input_tokens": 11, "output_tokens": 1}}}))
        .expect("start");
    assert_eq!(start[0]["choices"][0]["delta"]["role"], "assistant");
    let text = w
        .event(
            "content_block_delta",
            &json!({"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
        )
        .expect("text");
    assert_eq!(text[0]["choices"][0]["delta"]["content"], "Hi");
    let tool = w
        .event(
            "content_block_start",
            &json!({"index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}),
        )
        .expect("tool");
    assert_eq!(tool[0]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
    let args = w
        .event(
            "content_block_delta",
            &json!({"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
        )
        .expect("args");
    assert_eq!(
        args[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\""
    );
    let end = w
        .event(
            "message_delta",
            &json!({"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 5}}),
        )
        .expect("end");
    assert_eq!(end[0]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        end[1]["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16})
    );
    assert_eq!(
        w.event(
            "error",
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        ),
        Err("Overloaded".to_owned())
    );
}
