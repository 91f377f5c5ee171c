use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::chat::push_json_str;
use crate::{RecordedRequest, ScriptStep, Sim, SimConfig, SimModel};

mod anthropic;
mod azure;

const ANSWER_16: &str =
    "This is a simulated answer from gpt-4o-mini. It repeats these filler words until the answer reaches";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The `data:` payloads of a server-sent event stream, checking the framing.
    fn events(&self) -> Vec<String> {
        let text = std::str::from_utf8(&self.body).unwrap();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.strip_suffix("\n\n")
            .unwrap()
            .split("\n\n")
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    fn error(&self) -> Value {
        self.json()["error"].clone()
    }
}

async fn call(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn chat_request(body: &Value) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn chat(router: &Router, body: Value) -> Reply {
    call(router, chat_request(&body)).await
}

fn hello(extra: Value) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello there!"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The arguments of a call to `weather_tools()`'s function.
const WEATHER_ARGS: &str = r#"{"city":"sim","unit":"sim"}"#;

fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string"},
                    "days": {"type": "integer"},
                },
                "required": ["city", "unit"],
            },
        },
    }])
}

fn now() -> u64 {
    crate::unix_now()
}

/// Checks `created` is the current time, and replaces it with 0 so the rest compares exactly.
fn settle_created(value: &mut Value) {
    let created = value["created"].as_u64().unwrap();
    assert!(created.abs_diff(now()) <= 5, "created {created}");
    value["created"] = json!(0);
}

#[tokio::test]
async fn lists_models_with_prices() {
    let sim = Sim::new(SimConfig {
        models: vec![
            SimModel::new("gpt-4o-mini", 0.15, 0.6),
            SimModel::new("gpt-4o", 2.5, 10.0),
        ],
        ..SimConfig::default()
    });
    let reply = call(
        &sim.router(),
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    let mut body = reply.json();
    for model in body["data"].as_array_mut().unwrap() {
        settle_created(model);
    }
    assert_eq!(
        body,
        json!({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "sluice-sim",
             "pricing": {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}},
            {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "sluice-sim",
             "pricing": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}},
        ]})
    );
}

#[tokio::test]
async fn answers_a_completion_with_exact_usage() {
    let sim = Sim::new(SimConfig::default());
    // 14 + 11 + 6 characters of text: 31 / 4 rounds up to 8 prompt tokens.
    let reply = chat(
        &sim.router(),
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Hello there"},
                    {"type": "text", "text": "World!"},
                ]},
            ],
        }),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    let mut body = reply.json();
    settle_created(&mut body);
    assert_eq!(
        body,
        json!({
            "id": "chatcmpl-sim-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "system_fingerprint": "sluice-sim",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER_16, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24},
        })
    );
    // The next completion gets the next id.
    let reply = chat(&sim.router(), hello(json!({}))).await;
    assert_eq!(reply.json()["id"], "chatcmpl-sim-2");
    // "Hello there!" is 12 characters: 3 tokens.
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn an_empty_prompt_still_counts_one_token() {
    let sim = Sim::new(SimConfig::default());
    let reply = chat(
        &sim.router(),
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}),
    )
    .await;
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 1);
}

#[tokio::test]
async fn max_tokens_cuts_with_finish_reason_length() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let body = chat(&router, hello(json!({"max_tokens": 3}))).await.json();
    assert_eq!(body["choices"][0]["message"]["content"], "This is a");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );

    // max_completion_tokens wins over max_tokens, and the model's name is one token.
    let body = chat(
        &router,
        hello(json!({"max_tokens": 3, "max_completion_tokens": 9})),
    )
    .await
    .json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "This is a simulated answer from gpt-4o-mini. It repeats"
    );
    assert_eq!(body["usage"]["completion_tokens"], 9);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // Filler words cycle.
    let body = chat(&router, hello(json!({"max_tokens": 20}))).await.json();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.ends_with(" reaches its length. It repeats"), "{content}");
}

#[tokio::test]
async fn answer_tokens_sets_the_default_length() {
    let sim = Sim::new(SimConfig {
        answer_tokens: 2,
        ..SimConfig::default()
    });
    let body = chat(&sim.router(), hello(json!({}))).await.json();
    assert_eq!(body["choices"][0]["message"]["content"], "This is");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn stop_sequences_cut_before_the_first_match() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let body = chat(
        &router,
        hello(json!({"stop": ["zzz", "simulated"], "max_tokens": 10})),
    )
    .await
    .json();
    // Cut inside the fourth token (" simulated" keeps its space): still four tokens.
    assert_eq!(body["choices"][0]["message"]["content"], "This is a ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 4);

    let body = chat(&router, hello(json!({"stop": " a"}))).await.json();
    assert_eq!(body["choices"][0]["message"]["content"], "This is");
    assert_eq!(body["usage"]["completion_tokens"], 2);

    // A stop sequence beyond the cut does not apply: the limit does.
    let body = chat(&router, hello(json!({"stop": "filler", "max_tokens": 4})))
        .await
        .json();
    assert_eq!(body["choices"][0]["message"]["content"], "This is a simulated");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

fn chunk(delta: Value, finish_reason: Value, usage: Option<Value>) -> Value {
    let mut chunk = json!({
        "id": "chatcmpl-sim-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
        "system_fingerprint": "sluice-sim",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    chunk
}

fn parse_chunks(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = reply.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            let mut chunk: Value = serde_json::from_str(e).unwrap();
            settle_created(&mut chunk);
            chunk
        })
        .collect()
}

#[tokio::test]
async fn streams_one_chunk_per_token() {
    let sim = Sim::new(SimConfig::default());
    let reply = chat(&sim.router(), hello(json!({"stream": true, "max_tokens": 3}))).await;
    let chunks = parse_chunks(&reply);
    let expected = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null, None),
        chunk(json!({"content": "This"}), Value::Null, None),
        chunk(json!({"content": " is"}), Value::Null, None),
        chunk(json!({"content": " a"}), Value::Null, None),
        chunk(json!({}), json!("length"), None),
    ];
    assert_eq!(chunks, expected);
}

#[tokio::test]
async fn streams_usage_last_when_asked() {
    let sim = Sim::new(SimConfig::default());
    let reply = chat(
        &sim.router(),
        hello(json!({"stream": true, "stream_options": {"include_usage": true}, "stop": " a"})),
    )
    .await;
    let chunks = parse_chunks(&reply);
    let mut usage = chunk(
        json!({}),
        Value::Null,
        Some(json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})),
    );
    usage["choices"] = json!([]);
    let expected = vec![
        chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Some(Value::Null),
        ),
        chunk(json!({"content": "This"}), Value::Null, Some(Value::Null)),
        chunk(json!({"content": " is"}), Value::Null, Some(Value::Null)),
        chunk(json!({}), json!("stop"), Some(Value::Null)),
        usage,
    ];
    assert_eq!(chunks, expected);
}

#[tokio::test]
async fn calls_the_first_tool_when_the_user_spoke_last() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let reply = chat(&router, hello(json!({"tools": weather_tools()}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut body = reply.json();
    settle_created(&mut body);
    // "get_weather" and {"city":"sim","unit":"sim"}: 11 + 27 characters, 10 tokens.
    assert_eq!(
        body,
        json!({
            "id": "chatcmpl-sim-1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "system_fingerprint": "sluice-sim",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "tool_calls": [{
                        "id": "call_sim_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": WEATHER_ARGS},
                    }],
                },
                "logprobs": null,
                "finish_reason": "tool_calls",
            }],
            "usage": {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13},
        })
    );

    // After the tool's result, the answer is text.
    let reply = chat(
        &router,
        json!({
            "model": "gpt-4o-mini",
            "tools": weather_tools(),
            "max_tokens": 2,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_sim_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_sim_1", "content": "sunny"},
            ],
        }),
    )
    .await;
    let body = reply.json();
    assert_eq!(body["choices"][0]["message"]["content"], "This is");
    assert_eq!(body["choices"][0]["message"].get("tool_calls"), None);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // tool_choice "none" answers text; a tool without required parameters gets "{}".
    let body = chat(
        &router,
        hello(json!({"tools": weather_tools(), "tool_choice": "none"})),
    )
    .await
    .json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let bare = json!([{"type": "function", "function": {"name": "now"}}]);
    let body = chat(&router, hello(json!({"tools": bare}))).await.json();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_sim_2");
    assert_eq!(call["function"], json!({"name": "now", "arguments": "{}"}));
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn streams_a_tool_call() {
    let sim = Sim::new(SimConfig::default());
    let reply = chat(
        &sim.router(),
        hello(json!({"tools": weather_tools(), "stream": true})),
    )
    .await;
    let chunks = parse_chunks(&reply);
    let expected = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null, None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_sim_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": WEATHER_ARGS}}]}),
            Value::Null,
            None,
        ),
        chunk(json!({}), json!("tool_calls"), None),
    ];
    assert_eq!(chunks, expected);
}

#[tokio::test]
async fn refuses_missing_and_wrong_api_keys() {
    let sim = Sim::new(SimConfig {
        api_key: Some("sk-sim".into()),
        ..SimConfig::default()
    });
    let router = sim.router();
    let reply = chat(&router, hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error()["code"], "invalid_api_key");
    assert_eq!(reply.error()["type"], "invalid_request_error");
    assert_eq!(reply.error()["param"], Value::Null);

    let with_key = |key: &str| {
        Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::from(hello(json!({})).to_string()))
            .unwrap()
    };
    let reply = call(&router, with_key("sk-other")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.json(),
        json!({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
            "param": null, "code": "invalid_api_key"}})
    );
    assert_eq!(call(&router, with_key("sk-sim")).await.status, StatusCode::OK);

    let models = |auth: Option<&str>| {
        let mut request = Request::get("/v1/models");
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.body(Body::empty()).unwrap()
    };
    assert_eq!(call(&router, models(None)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&router, models(Some("Bearer sk-sim"))).await.status,
        StatusCode::OK
    );
    // The controls stay open.
    let reply = call(
        &router,
        Request::get("/sim/requests").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json().as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn unknown_models_are_404() {
    let sim = Sim::new(SimConfig::default());
    let reply = chat(&sim.router(), hello(json!({"model": "gpt-5"}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.json(),
        json!({"error": {"message": "The model `gpt-5` does not exist or you do not have access to it.",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
    );
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let cases = [
        (json!([1, 2]), Value::Null, "invalid_type"),
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            json!("model"),
            "missing_required_parameter",
        ),
        (
            json!({"model": 4, "messages": [{"role": "user", "content": "hi"}]}),
            json!("model"),
            "invalid_type",
        ),
        (
            json!({"model": "gpt-4o-mini"}),
            json!("messages"),
            "missing_required_parameter",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": {}}),
            json!("messages"),
            "invalid_type",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": []}),
            json!("messages"),
            "empty_array",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": ["hi"]}),
            json!("messages[0]"),
            "invalid_type",
        ),
        (
            json!({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}),
            json!("messages[0].role"),
            "missing_required_parameter",
        ),
        (
            hello(json!({"max_tokens": 0})),
            json!("max_tokens"),
            "invalid_value",
        ),
        (
            hello(json!({"max_tokens": -1})),
            json!("max_tokens"),
            "invalid_value",
        ),
        (
            hello(json!({"max_completion_tokens": 1.5})),
            json!("max_completion_tokens"),
            "invalid_type",
        ),
        (
            hello(json!({"max_tokens": 65_537})),
            json!("max_tokens"),
            "invalid_value",
        ),
        (hello(json!({"stream": "yes"})), json!("stream"), "invalid_type"),
        (hello(json!({"stop": [1]})), json!("stop"), "invalid_type"),
        (
            hello(json!({"tools": [{"type": "function"}]})),
            json!("tools[0].function.name"),
            "missing_required_parameter",
        ),
    ];
    let parsed = cases.len();
    for (body, param, code) in cases {
        let reply = chat(&router, body.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = reply.error();
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"], param, "{body}");
        assert_eq!(error["code"], code, "{body}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }

    let reply = call(
        &router,
        Request::post("/v1/chat/completions")
            .body(Body::from("{nope"))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["code"], "invalid_json");
    // Only bodies that parsed as JSON were recorded.
    assert_eq!(sim.recorded().len(), parsed);
}

#[tokio::test]
async fn scripted_429_with_retry_after_then_normal() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    let script = json!({"steps": [{"status": 429, "retry_after_seconds": 1, "message": "slow down"}, {}]});
    let reply = call(
        &router,
        Request::post("/sim/script")
            .body(Body::from(script.to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"pending": 2}));

    let reply = chat(&router, hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(
        reply.json(),
        json!({"error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": null,
            "code": "sim_scripted",
        }})
    );
    let reply = chat(&router, hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The failed request used no completion id.
    assert_eq!(reply.json()["id"], "chatcmpl-sim-1");
}

#[tokio::test]
async fn scripted_errors_pick_their_type() {
    let sim = Sim::new(SimConfig::default());
    sim.push_script(vec![
        ScriptStep::error(503),
        ScriptStep::error(400).with_message("bad"),
        ScriptStep::error(429),
    ]);
    let router = sim.router();
    let reply = chat(&router, hello(json!({"stream": true}))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers.get("retry-after"), None);
    assert_eq!(reply.error()["type"], "server_error");
    assert_eq!(reply.error()["message"], "scripted error");
    let reply = chat(&router, hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["type"], "invalid_request_error");
    assert_eq!(reply.error()["message"], "bad");
    // DELETE /sim/script drops the rest.
    let reply = call(
        &router,
        Request::delete("/sim/script").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(chat(&router, hello(json!({}))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_scripts_are_refused() {
    let sim = Sim::new(SimConfig::default());
    let router = sim.router();
    for (script, param) in [
        (json!({"steps": [{}, {"status": 200}]}), json!("steps[1].status")),
        (json!({"steps": [{"hang": true, "sleep": 3}]}), Value::Null),
        (json!([]), Value::Null),
    ] {
        let reply = call(
            &router,
            Request::post("/sim/script")
                .body(Body::from(script.to_string()))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{script}");
        assert_eq!(reply.error()["param"], param, "{script}");
    }
    assert_eq!(chat(&router, hello(json!({}))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn delayed_steps_answer_late() {
    let sim = Sim::new(SimConfig::default());
    sim.push_script(vec![ScriptStep::delayed(60)]);
    let start = std::time::Instant::now();
    let reply = chat(&sim.router(), hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn records_requests_oldest_first_within_the_limit() {
    let sim = Sim::new(SimConfig {
        record_limit: 2,
        ..SimConfig::default()
    });
    let router = sim.router();
    sim.push_script(vec![ScriptStep::normal(), ScriptStep::error(500)]);
    for max_tokens in [1, 2, 3] {
        let request = Request::post("/v1/chat/completions")
            .header("authorization", "Bearer sk-test")
            .header("x-request-id", format!("req-{max_tokens}"))
            .header("user-agent", "OpenAI/Python 1.0")
            .header("content-type", "application/json")
            .header("x-other", "dropped")
            .body(Body::from(hello(json!({"max_tokens": max_tokens})).to_string()))
            .unwrap();
        call(&router, request).await;
    }
    let expected: Vec<RecordedRequest> = [2, 3]
        .into_iter()
        .map(|n| RecordedRequest {
            seq: n,
            path: "/v1/chat/completions".to_owned(),
            body: hello(json!({"max_tokens": n})),
            authorization: Some("Bearer sk-test".into()),
            headers: [
                ("content-type", "application/json".to_owned()),
                ("user-agent", "OpenAI/Python 1.0".to_owned()),
                ("x-request-id", format!("req-{n}")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        })
        .collect();
    assert_eq!(sim.recorded(), expected);

    let reply = call(
        &router,
        Request::get("/sim/requests").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let listed: Vec<RecordedRequest> = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(listed, expected);
    assert_eq!(reply.json()[0]["authorization"], "Bearer sk-test");

    let reply = call(
        &router,
        Request::delete("/sim/requests").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(sim.recorded(), vec![]);
    // Numbering goes on after a clear; a request without headers records nulls and an empty map.
    call(
        &router,
        Request::post("/v1/chat/completions")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    let recorded = sim.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].seq, 4);
    assert_eq!(recorded[0].body, json!({}));
    assert_eq!(recorded[0].authorization, None);
    assert!(recorded[0].headers.is_empty());
}

#[tokio::test]
async fn record_limit_zero_records_nothing() {
    let sim = Sim::new(SimConfig {
        record_limit: 0,
        ..SimConfig::default()
    });
    assert_eq!(chat(&sim.router(), hello(json!({}))).await.status, StatusCode::OK);
    assert_eq!(sim.recorded(), vec![]);
}

#[tokio::test]
async fn error_rate_fails_requests_with_sim_error() {
    let sim = Sim::new(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    });
    let router = sim.router();
    let reply = chat(&router, hello(json!({}))).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.error()["code"], "sim_error");
    assert_eq!(reply.error()["type"], "server_error");
    // A script step overrides the dice.
    sim.push_script(vec![ScriptStep::normal()]);
    assert_eq!(chat(&router, hello(json!({}))).await.status, StatusCode::OK);

    // A half rate fails about half, the same ones for the same seed.
    let outcomes = |seed| async move {
        let sim = Sim::new(SimConfig {
            error_rate: 0.5,
            seed,
            ..SimConfig::default()
        });
        let router = sim.router();
        let mut failed = Vec::new();
        for _ in 0..200 {
            failed.push(chat(&router, hello(json!({"max_tokens": 1}))).await.status != StatusCode::OK);
        }
        failed
    };
    let first = outcomes(7).await;
    assert_eq!(first, outcomes(7).await);
    let failures = first.iter().filter(|f| **f).count();
    assert!((70..=130).contains(&failures), "{failures} of 200 failed");
}

#[tokio::test]
async fn paces_tokens_after_the_first_token_delay() {
    let sim = Sim::new(SimConfig {
        ttft: Duration::from_millis(40),
        tokens_per_second: 100.0,
        ..SimConfig::default()
    });
    let router = sim.router();
    let start = std::time::Instant::now();
    let reply = chat(&router, hello(json!({"stream": true, "max_tokens": 5}))).await;
    // 40 ms before the first token, then 4 gaps of 10 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(reply.events().len(), 8);

    let start = std::time::Instant::now();
    assert_eq!(chat(&router, hello(json!({}))).await.status, StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(40),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn unknown_urls_are_404() {
    let sim = Sim::new(SimConfig::default());
    let reply = call(
        &sim.router(),
        Request::get("/v1/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error()["code"], "unknown_url");
    assert_eq!(reply.error()["message"], "Unknown request URL: GET /v1/nothing.");
}

#[test]
fn json_strings_match_serde() {
    for s in [
        "plain",
        "quote \" and \\ backslash",
        "line\nbreak\ttab\r",
        "\u{1}\u{1f} ctl",
        "ünïcødé 🚀",
        "",
    ] {
        let mut out = String::new();
        push_json_str(&mut out, s);
        assert_eq!(out, serde_json::to_string(s).unwrap());
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
    }
}

// Over a real socket: departed clients and shutdown.

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(sim: &Sim) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve(listener, sim.clone(), async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn send_raw(addr: std::net::SocketAddr, body: &Value) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

/// Reads until `needle` has arrived, and returns everything read.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

async fn wait_in_flight(sim: &Sim, n: usize) {
    for _ in 0..500 {
        if sim.in_flight() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("in flight stayed at {}, not {n}", sim.in_flight());
}

#[tokio::test]
async fn a_departed_client_stops_its_answer() {
    let sim = Sim::new(SimConfig::default());
    let server = start(&sim).await;

    // A stream stalled after its role chunk.
    sim.push_script(vec![ScriptStep::stalling(1)]);
    let mut socket = send_raw(server.addr, &hello(json!({"stream": true}))).await;
    let seen = read_until(&mut socket, "\"role\":\"assistant\"").await;
    assert!(seen.starts_with("HTTP/1.1 200 OK"), "{seen}");
    assert_eq!(sim.in_flight(), 1);
    drop(socket);
    wait_in_flight(&sim, 0).await;

    // A slowly paced stream, and a hung non-streamed request.
    let slow = Sim::new(SimConfig {
        tokens_per_second: 1.0,
        ..SimConfig::default()
    });
    let slow_server = start(&slow).await;
    let mut socket = send_raw(slow_server.addr, &hello(json!({"stream": true}))).await;
    read_until(&mut socket, "\"content\":\"This\"").await;
    drop(socket);
    wait_in_flight(&slow, 0).await;

    sim.push_script(vec![ScriptStep::hanging()]);
    let socket = send_raw(server.addr, &hello(json!({}))).await;
    wait_in_flight(&sim, 1).await;
    drop(socket);
    wait_in_flight(&sim, 0).await;
}

#[tokio::test]
async fn shutdown_ends_hung_answers() {
    let sim = Sim::new(SimConfig::default());
    let mut server = start(&sim).await;
    sim.push_script(vec![ScriptStep::stalling(2), ScriptStep::hanging()]);
    let mut stalled = send_raw(server.addr, &hello(json!({"stream": true}))).await;
    read_until(&mut stalled, "\"content\":\"This\"").await;
    let mut hung = send_raw(server.addr, &hello(json!({}))).await;
    wait_in_flight(&sim, 2).await;

    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(sim.in_flight(), 0);
    let seen = read_until(&mut hung, "\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    // The stalled stream was cut off without [DONE].
    let mut rest = String::new();
    let _ = stalled.read_to_string(&mut rest).await;
    assert!(!rest.contains("[DONE]"), "{rest}");
}

#[tokio::test]
async fn serves_over_tcp_until_shutdown() {
    let sim = Sim::new(SimConfig::default());
    let mut server = start(&sim).await;
    let mut socket = send_raw(server.addr, &hello(json!({"stream": true, "max_tokens": 2}))).await;
    let seen = read_until(&mut socket, "data: [DONE]\n\n").await;
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    drop(socket);
    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn an_echo_answers_with_the_last_message_as_it_arrived() {
    let sim = Sim::new(SimConfig::default());
    let text = "Dear [PERSON_1], write to [EMAIL_1] — «merci»";
    sim.push_script(vec![ScriptStep::echo(), ScriptStep::echo(), ScriptStep::echo()]);
    let router = sim.router();
    let body = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": text}]}]});
    let reply = chat(&router, body.clone()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["choices"][0]["message"]["content"], text);
    // Streamed, in pieces of about three bytes: placeholders arrive cut.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let reply = chat(&router, streamed).await;
    let pieces: Vec<String> = reply
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .filter(|p| !p.is_empty())
        .collect();
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| p.len() <= 4), "{pieces:?}");
    assert!(
        pieces.iter().any(|p| p.contains('[') && !p.contains(']')),
        "{pieces:?}"
    );
    // A tool call carries the text as each required argument.
    let mut tools = body;
    tools["tools"] = json!([{"type": "function", "function": {"name": "send", "parameters": {
        "type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}}}]);
    let reply = chat(&router, tools).await;
    let call = &reply.json()["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "send");
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"to": text}));
}

#[tokio::test]
async fn a_simulator_set_to_echo_echoes_every_unscripted_request() {
    let sim = Sim::new(SimConfig {
        echo: true,
        ..SimConfig::default()
    });
    let router = sim.router();
    for text in ["one [EMAIL_1]", "two"] {
        let reply = chat(
            &router,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}),
        )
        .await;
        assert_eq!(reply.json()["choices"][0]["message"]["content"], text);
    }
    // A scripted step still comes first.
    sim.push_script(vec![ScriptStep {
        status: Some(429),
        ..ScriptStep::default()
    }]);
    let reply = chat(
        &router,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
}

async fn embed(router: &Router, body: Value) -> Reply {
    let request = Request::post("/v1/embeddings")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    call(router, request).await
}

/// Decodes standard base64 (what the simulator writes), for the test.
fn unbase64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk
            .iter()
            .take_while(|c| **c != b'=')
            .map(|c| value(*c))
            .collect();
        let n = digits.iter().fold(0u32, |n, d| (n << 6) | u32::from(*d)) << (6 * (4 - digits.len()));
        out.extend_from_slice(&n.to_be_bytes()[1..digits.len()]);
    }
    out
}

#[tokio::test]
async fn embeddings_as_floats_and_base64_with_usage() {
    let sim = Sim::new(SimConfig {
        models: vec![
            SimModel::new("gpt-4o-mini", 0.15, 0.60),
            SimModel::embedding("text-embedding-3-small", 0.02, 1536),
        ],
        ..SimConfig::default()
    });
    let router = sim.router();
    let floats = embed(
        &router,
        json!({"model": "text-embedding-3-small", "input": ["hello there", "x"], "encoding_format": "float"}),
    )
    .await;
    assert_eq!(floats.status, StatusCode::OK);
    let v = floats.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"][1]["index"], 1);
    let first: Vec<f32> = v["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(first.len(), 1536);
    // "hello there" is 11 characters: 3 tokens; "x": 1.
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    let b64 = embed(
        &router,
        json!({"model": "text-embedding-3-small", "input": "hello there", "encoding_format": "base64", "dimensions": 8}),
    )
    .await
    .json();
    let bytes = unbase64(b64["data"][0]["embedding"].as_str().unwrap());
    let short: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(short.len(), 8);
    let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    // Requests of the wrong kind, and bad inputs, are refused as OpenAI refuses them.
    let wrong = embed(&router, json!({"model": "gpt-4o-mini", "input": "hi"})).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let chat_of_embedding = chat(&router, hello(json!({"model": "text-embedding-3-small"}))).await;
    assert_eq!(chat_of_embedding.status, StatusCode::BAD_REQUEST);
    assert_eq!(chat_of_embedding.error()["code"], "model_not_supported");
    for bad in [
        json!({"model": "text-embedding-3-small", "input": ""}),
        json!({"model": "text-embedding-3-small", "input": []}),
        json!({"model": "text-embedding-3-small", "input": "a", "dimensions": 2000}),
        json!({"model": "text-embedding-3-small"}),
    ] {
        assert_eq!(
            embed(&router, bad.clone()).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    // Embeddings requests are recorded like chat ones.
    assert!(sim.recorded().iter().any(|r| r.body["input"] == "hello there"));
}
