//! `POST /v1/messages`.

use super::*;

fn messages_request(body: &Value) -> Request<Body> {
    Request::post("/v1/messages")
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn messages(router: &Router, body: Value) -> Reply {
    call(router, messages_request(&body)).await
}

fn hi(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello there!"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn weather_tools() -> Value {
    json!([{
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string"},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    }, {
        "name": "now",
        "input_schema": {"type": "object", "properties": {}},
    }])
}

/// A stream's events as (name, data), checking the framing.
fn named_events(reply: &Reply) -> Vec<(String, Value)> {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let text = std::str::from_utf8(&reply.body).unwrap();
    assert!(text.ends_with("\n\n"), "{text:?}");
    text.strip_suffix("\n\n")
        .unwrap()
        .split("\n\n")
        .map(|event| {
            let (name, data) = event.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "{event}");
            (name.to_owned(), data)
        })
        .collect()
}

fn text_deltas(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(name, _)| name == "content_block_delta")
        .map(|(_, data)| data["delta"]["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn answers_a_message_with_exact_usage() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    // 14 + 11 + 6 characters of text: 31 / 4 rounds up to 8 input tokens.
    let reply = messages(
        &router,
        json!({
            "model": "gpt-4o-mini",
            "max_tokens": 1024,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Hello there"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "text", "text": "World!"},
            ]}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u1"}, "unknown": 1,
        }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        reply.json(),
        json!({
            "id": "msg_sim_1",
            "type": "message",
            "role": "assistant",
            "model": "gpt-4o-mini",
            "content": [{"type": "text", "text": ANSWER_16}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 8, "output_tokens": 16},
        })
    );
    // System text blocks, string contents and tool results count: 10 + 5 + 11 + 6 = 32 characters, 8 tokens.
    let body = messages(
        &router,
        hi(json!({
            "system": [{"type": "text", "text": "Be concise"}],
            "messages": [
                {"role": "user", "content": "Paris"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Looking up."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny!"}]}]},
            ],
        })),
    )
    .await
    .json();
    assert_eq!(body["id"], "msg_sim_2");
    assert_eq!(body["usage"], json!({"input_tokens": 8, "output_tokens": 16}));
}

#[tokio::test]
async fn stop_reasons_follow_max_tokens_and_stop_sequences() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let cases = [
        // A limit below the default length cuts the answer.
        (
            json!({"max_tokens": 3}),
            "This is a",
            "max_tokens",
            Value::Null,
            3,
        ),
        // A limit at or above it does not.
        (json!({"max_tokens": 16}), ANSWER_16, "end_turn", Value::Null, 16),
        // A stop sequence cuts before its first match; of two, the earlier.
        (
            json!({"stop_sequences": ["filler", " a "]}),
            "This is",
            "stop_sequence",
            json!(" a "),
            2,
        ),
        // A stop sequence beyond the cut does not apply: the limit does.
        (
            json!({"max_tokens": 4, "stop_sequences": ["filler"]}),
            "This is a simulated",
            "max_tokens",
            Value::Null,
            4,
        ),
    ];
    for (extra, text, stop_reason, stop_sequence, tokens) in cases {
        let body = messages(&router, hi(extra.clone())).await.json();
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": text}]),
            "{extra}"
        );
        assert_eq!(body["stop_reason"], stop_reason, "{extra}");
        assert_eq!(body["stop_sequence"], stop_sequence, "{extra}");
        assert_eq!(body["usage"]["output_tokens"], tokens, "{extra}");
    }
}

#[tokio::test]
async fn streams_events_one_delta_per_token() {
    let sim = Sim::new(SimConfig::default());
    let reply = messages(&sim.router(), hi(json!({"stream": true, "max_tokens": 3}))).await;
    let delta = |text: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
    let expected = vec![
        json!({"type": "message_start", "message": {
            "id": "msg_sim_1", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        delta("This"),
        delta(" is"),
        delta(" a"),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null},
            "usage": {"output_tokens": 3}}),
        json!({"type": "message_stop"}),
    ];
    let events: Vec<Value> = named_events(&reply).into_iter().map(|(_, data)| data).collect();
    assert_eq!(events, expected);

    // A stop sequence ends the stream with its reason.
    let reply = messages(
        &sim.router(),
        hi(json!({"stream": true, "stop_sequences": ["simulated"]})),
    )
    .await;
    let events = named_events(&reply);
    assert_eq!(text_deltas(&events).concat(), "This is a ");
    assert_eq!(
        events[events.len() - 2].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "simulated"},
            "usage": {"output_tokens": 4}})
    );
}

#[tokio::test]
async fn uses_a_tool_when_the_user_spoke_last() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let reply = messages(&router, hi(json!({"tools": weather_tools()}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    // "get_weather" and {"city":"sim","unit":"sim"}: 11 + 27 characters, 10 tokens.
    assert_eq!(
        reply.json(),
        json!({
            "id": "msg_sim_1",
            "type": "message",
            "role": "assistant",
            "model": "gpt-4o-mini",
            "content": [{"type": "tool_use", "id": "toolu_sim_1", "name": "get_weather",
                "input": {"city": "sim", "unit": "sim"}}],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 3, "output_tokens": 10},
        })
    );
    // tool_choice names the tool; "now" has no required parameters.
    let body = messages(
        &router,
        hi(json!({"tools": weather_tools(), "tool_choice": {"type": "tool", "name": "now"}})),
    )
    .await
    .json();
    assert_eq!(
        body["content"],
        json!([{"type": "tool_use", "id": "toolu_sim_2", "name": "now", "input": {}}])
    );
    assert_eq!(body["usage"]["output_tokens"], 2);
    // tool_choice none, and a last message of tool results only, answer text.
    let body = messages(
        &router,
        hi(json!({"tools": weather_tools(), "tool_choice": {"type": "none"}, "max_tokens": 2})),
    )
    .await
    .json();
    assert_eq!(body["content"], json!([{"type": "text", "text": "This is"}]));
    assert_eq!(body["stop_reason"], "max_tokens");
    let body = messages(
        &router,
        hi(json!({"tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_sim_1", "name": "get_weather",
                "input": {"city": "Paris", "unit": "C"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_sim_1", "content": "sunny"}]},
        ]})),
    )
    .await
    .json();
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["content"][0]["type"], "text");
}

#[tokio::test]
async fn streams_a_tool_use_in_json_pieces() {
    let sim = Sim::new(SimConfig::default());
    let reply = messages(
        &sim.router(),
        hi(json!({"tools": weather_tools(), "stream": true})),
    )
    .await;
    let events: Vec<Value> = named_events(&reply).into_iter().map(|(_, data)| data).collect();
    let piece = |json: &str| {
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": json}})
    };
    assert_eq!(
        events[1..],
        [
            json!({"type": "content_block_start", "index": 0, "content_block":
                {"type": "tool_use", "id": "toolu_sim_1", "name": "get_weather", "input": {}}}),
            json!({"type": "ping"}),
            piece(r#"{"city":"s"#),
            piece(r#"im","unit""#),
            piece(r#":"sim"}"#),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 10}}),
            json!({"type": "message_stop"}),
        ]
    );
}

#[tokio::test]
async fn takes_the_key_in_x_api_key_only() {
    let sim = Sim::new(SimConfig {
        api_key: Some("sk-sim".into()),
        ..SimConfig::default()
    });
    let router = sim.router();
    let with = |headers: &[(&str, &str)]| {
        let mut request = Request::post("/v1/messages");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(hi(json!({})).to_string())).unwrap()
    };
    let refused = |message: &str| json!({"type": "error", "error": {"type": "authentication_error", "message": message}});
    let version = ("anthropic-version", "2023-06-01");
    let reply = call(&router, with(&[version])).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), refused("x-api-key header is required"));
    let reply = call(&router, with(&[version, ("authorization", "Bearer sk-sim")])).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), refused("x-api-key header is required"));
    let reply = call(&router, with(&[version, ("x-api-key", "sk-other")])).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), refused("invalid x-api-key"));
    let reply = call(&router, with(&[version, ("x-api-key", "sk-sim")])).await;
    assert_eq!(reply.status, StatusCode::OK);
    // anthropic-version is required.
    let reply = call(&router, with(&[("x-api-key", "sk-sim")])).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "anthropic-version: header is required"}})
    );
    // Every request was recorded, with its path and the Anthropic headers.
    let recorded = sim.recorded();
    assert_eq!(recorded.len(), 5);
    assert!(recorded.iter().all(|r| r.path == "/v1/messages"));
    assert_eq!(recorded[1].authorization.as_deref(), Some("Bearer sk-sim"));
    assert_eq!(recorded[3].headers["x-api-key"], "sk-sim");
    assert_eq!(recorded[3].headers["anthropic-version"], "2023-06-01");
    assert!(!recorded[4].headers.contains_key("anthropic-version"));
}

#[tokio::test]
async fn errors_have_anthropics_shape_and_types() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    sim.push_script(vec![
        ScriptStep::error(529).with_message("Overloaded"),
        ScriptStep::error(429).with_retry_after(7),
        ScriptStep::error(500),
        ScriptStep::error(503),
        ScriptStep::error(403),
        ScriptStep::error(413),
        ScriptStep::error(404),
        ScriptStep::error(400),
    ]);
    for (status, kind) in [
        (529, "overloaded_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (403, "permission_error"),
        (413, "request_too_large"),
        (404, "not_found_error"),
        (400, "invalid_request_error"),
    ] {
        let reply = messages(&router, hi(json!({"stream": true}))).await;
        assert_eq!(reply.status.as_u16(), status);
        let message = if status == 529 {
            "Overloaded"
        } else {
            "scripted error"
        };
        assert_eq!(
            reply.json(),
            json!({"type": "error", "error": {"type": kind, "message": message}})
        );
        let retry_after = reply.headers.get("retry-after").map(|v| v.to_str().unwrap());
        assert_eq!(retry_after, (status == 429).then_some("7"));
    }
    let reply = messages(&router, hi(json!({"model": "claude-sonnet-4-5"}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "not_found_error", "message": "model: claude-sonnet-4-5"}})
    );
    // The error rate applies as on chat.
    let failing = Sim::new(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    });
    let reply = messages(&failing.router(), hi(json!({}))).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json()["error"]["type"], "api_error");
}

#[tokio::test]
async fn malformed_messages_are_400_naming_the_field() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"model": "gpt-4o-mini", "messages": user}),
            "max_tokens: Field required",
        ),
        (
            hi(json!({"max_tokens": 0})),
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            hi(json!({"max_tokens": 1.5})),
            "max_tokens: Input should be a valid integer",
        ),
        (
            json!({"max_tokens": 5, "messages": user}),
            "model: Field required",
        ),
        (hi(json!({"model": 4})), "model: Input should be a valid string"),
        (
            hi(json!({"messages": []})),
            "messages: at least one message is required",
        ),
        (
            hi(json!({"messages": {}})),
            "messages: Input should be a valid list",
        ),
        (
            hi(json!({"messages": [{"role": "system", "content": "x"}]})),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            hi(json!({"messages": [{"role": "user"}]})),
            "messages.0.content: Field required",
        ),
        (
            hi(
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}]}),
            ),
            "messages.0.content.1.type: Input tag 'video'",
        ),
        (
            hi(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]})),
            "messages.0.content.0.text: Field required",
        ),
        (
            hi(json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]})),
            "messages.0.content.0.tool_use_id: Field required",
        ),
        (
            hi(
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n"}]}]}),
            ),
            "messages.0.content.0.input: Field required",
        ),
        (hi(json!({"system": 3})), "system: Input should be a valid string"),
        (
            hi(json!({"stop_sequences": [1]})),
            "stop_sequences: Input should be a valid list of strings",
        ),
        (
            hi(json!({"stream": "yes"})),
            "stream: Input should be a valid boolean",
        ),
        (
            hi(json!({"temperature": 1.5})),
            "temperature: Input should be less than or equal to 1",
        ),
        (
            hi(json!({"tools": [{"name": "x"}]})),
            "tools.0.input_schema: Field required",
        ),
        (
            hi(json!({"tools": weather_tools(), "tool_choice": {"type": "some"}})),
            "tool_choice.type: Input should be",
        ),
        (
            hi(json!({"tools": weather_tools(), "tool_choice": {"type": "tool", "name": "nope"}})),
            "tool_choice.name: Tool 'nope' not found in tools",
        ),
        (
            hi(json!({"tool_choice": {"type": "auto"}})),
            "tool_choice: may only be specified while providing tools",
        ),
    ];
    for (body, message) in cases {
        let reply = messages(&router, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let json = reply.json();
        assert_eq!(json["type"], "error", "{body}");
        assert_eq!(json["error"]["type"], "invalid_request_error", "{body}");
        let got = json["error"]["message"].as_str().unwrap();
        assert!(got.starts_with(message), "{body}: {got}");
    }
    let reply = call(
        &router,
        Request::post("/v1/messages")
            .header("anthropic-version", "2023-06-01")
            .body(Body::from("{nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn an_echo_answers_with_the_last_message() {
    let sim = Sim::new(SimConfig::default());
    let text = "Dear [PERSON_1], write to [EMAIL_1] — «merci»";
    sim.push_script(vec![ScriptStep::echo(), ScriptStep::echo()]);
    let router = sim.router();
    let body = hi(json!({"max_tokens": 2, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}));
    let reply = messages(&router, body.clone()).await.json();
    assert_eq!(reply["content"], json!([{"type": "text", "text": text}]));
    assert_eq!(reply["stop_reason"], "end_turn");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let pieces = text_deltas(&named_events(&messages(&router, streamed).await));
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| p.len() <= 4), "{pieces:?}");

    let echoing = Sim::new(SimConfig {
        echo: true,
        ..SimConfig::default()
    });
    let reply = messages(&echoing.router(), hi(json!({}))).await.json();
    assert_eq!(reply["content"][0]["text"], "Hello there!");
}

#[tokio::test]
async fn a_stalled_stream_stops_after_its_events_until_shutdown() {
    let sim = Sim::new(SimConfig::default());
    let mut server = start(&sim).await;
    sim.push_script(vec![ScriptStep::stalling(4)]);
    let mut socket = TcpStream::connect(server.addr).await.unwrap();
    let body = hi(json!({"stream": true})).to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
         anthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let seen = read_until(&mut socket, "\"text\":\"This\"").await;
    assert!(seen.contains("event: ping"), "{seen}");
    wait_in_flight(&sim, 1).await;

    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sim.in_flight(), 0);
    let mut rest = String::new();
    let _ = socket.read_to_string(&mut rest).await;
    assert!(!rest.contains("\" is\""), "{rest}");
    assert!(!rest.contains("message_stop"), "{rest}");
}
