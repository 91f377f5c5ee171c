//! Azure OpenAI's deployment routes.

use super::*;

const CHAT: &str = "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21";
const EMBEDDINGS: &str = "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21";

fn two_models(api_key: Option<&str>) -> Sim {
    Sim::new(SimConfig {
        models: vec![
            SimModel::new("gpt-4o-mini", 0.15, 0.60),
            SimModel::embedding("text-embedding-3-small", 0.02, 1536),
        ],
        api_key: api_key.map(str::to_owned),
        ..SimConfig::default()
    })
}

fn azure_request(uri: &str, headers: &[(&str, &str)], body: &Value) -> Request<Body> {
    let mut request = Request::post(uri).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

async fn azure(router: &Router, uri: &str, body: Value) -> Reply {
    call(router, azure_request(uri, &[], &body)).await
}

fn no_model() -> Value {
    json!({"messages": [{"role": "user", "content": "Hello there!"}]})
}

#[tokio::test]
async fn the_deployment_picks_the_model_of_a_chat_completion() {
    let sim = two_models(None);
    let router = sim.router();
    let reply = azure(&router, CHAT, no_model()).await;
    assert_eq!(reply.status, StatusCode::OK);
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
            "usage": {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19},
        })
    );
    // A model in the body is ignored: the deployment's is used.
    let body = azure(&router, CHAT, hello(json!({"model": "gpt-4o", "max_tokens": 2})))
        .await
        .json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["content"], "This is");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // Validation, script and tools are chat's, in OpenAI's error shape.
    let reply = azure(&router, CHAT, json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["param"], "messages");
    assert_eq!(reply.error()["code"], "missing_required_parameter");
    sim.push_script(vec![ScriptStep::error(429).with_retry_after(2)]);
    let reply = azure(&router, CHAT, no_model()).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "2");
    assert_eq!(reply.error()["type"], "rate_limit_error");
    let mut tools = no_model();
    tools["tools"] = weather_tools();
    let body = azure(&router, CHAT, tools).await.json();
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        WEATHER_ARGS
    );
}

#[tokio::test]
async fn streams_a_deployment_chat_completion() {
    let sim = two_models(None);
    let mut body = no_model();
    body["stream"] = json!(true);
    body["max_tokens"] = json!(2);
    body["stream_options"] = json!({"include_usage": true});
    let reply = azure(&sim.router(), CHAT, body).await;
    let chunks = parse_chunks(&reply);
    assert_eq!(chunks.len(), 5);
    assert!(chunks.iter().all(|c| c["model"] == "gpt-4o-mini"));
    assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "This");
    assert_eq!(chunks[2]["choices"][0]["delta"]["content"], " is");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        chunks[4]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
}

#[tokio::test]
async fn the_deployment_picks_the_model_of_embeddings() {
    let sim = two_models(None);
    let router = sim.router();
    let reply = azure(&router, EMBEDDINGS, json!({"input": ["hello there", "x"]})).await;
    assert_eq!(reply.status, StatusCode::OK);
    let v = reply.json();
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1536);
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    // The same vector as /v1/embeddings gives.
    let direct = embed(
        &router,
        json!({"model": "text-embedding-3-small", "input": ["hello there", "x"]}),
    )
    .await
    .json();
    assert_eq!(direct["data"], v["data"]);
    let reply = azure(&router, EMBEDDINGS, json!({"input": ""})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["param"], "input");
}

#[tokio::test]
async fn missing_api_versions_and_unknown_deployments_are_404() {
    let sim = two_models(None);
    let router = sim.router();
    let not_found = json!({"error": {"code": "404", "message": "Resource not found"}});
    for uri in [
        "/openai/deployments/gpt-4o-mini/chat/completions",
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=",
        "/openai/deployments/gpt-4o-mini/chat/completions?version=2024-10-21",
        "/openai/deployments/text-embedding-3-small/embeddings",
    ] {
        let reply = azure(&router, uri, no_model()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.json(), not_found, "{uri}");
    }
    for uri in [
        "/openai/deployments/gpt-5/chat/completions?api-version=2024-10-21",
        "/openai/deployments/gpt-5/embeddings?api-version=2024-10-21",
    ] {
        let reply = azure(&router, uri, no_model()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(reply.error()["code"], "DeploymentNotFound", "{uri}");
        let message = reply.error()["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("The API deployment for this resource does not exist."),
            "{message}"
        );
        assert_eq!(reply.error().as_object().unwrap().len(), 2);
    }
    // A deployment of the wrong kind.
    let uri = "/openai/deployments/text-embedding-3-small/chat/completions?api-version=2024-10-21";
    let reply = azure(&router, uri, no_model()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["code"], "OperationNotSupported");
    let uri = "/openai/deployments/gpt-4o-mini/embeddings?api-version=2024-10-21";
    let reply = azure(&router, uri, json!({"input": "x"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error()["code"], "OperationNotSupported");
}

#[tokio::test]
async fn takes_the_key_in_api_key_only_and_records_the_path() {
    let sim = two_models(Some("sk-sim"));
    let router = sim.router();
    let denied = json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key \
        or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct \
        regional API endpoint for your resource."}});
    for headers in [
        &[][..],
        &[("authorization", "Bearer sk-sim")],
        &[("api-key", "sk-other")],
    ] {
        let reply = call(&router, azure_request(CHAT, headers, &no_model())).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(reply.json(), denied, "{headers:?}");
    }
    let key = [("api-key", "sk-sim")];
    let reply = call(&router, azure_request(CHAT, &key, &no_model())).await;
    assert_eq!(reply.status, StatusCode::OK);
    let input = json!({"input": "x"});
    let reply = call(&router, azure_request(EMBEDDINGS, &key, &input)).await;
    assert_eq!(reply.status, StatusCode::OK);
    // The OpenAI routes still want a Bearer token.
    let reply = call(&router, chat_request(&hello(json!({})))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let recorded = sim.recorded();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [CHAT, CHAT, CHAT, CHAT, EMBEDDINGS, "/v1/chat/completions"]
    );
    assert_eq!(recorded[3].headers["api-key"], "sk-sim");
    assert_eq!(recorded[3].body, no_model());
    // The path is in the JSON list too.
    let reply = call(
        &router,
        Request::get("/sim/requests").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.json()[4]["path"], EMBEDDINGS);
    // A list without paths still loads.
    let old: Vec<RecordedRequest> = serde_json::from_value(json!([
        {"seq": 1, "body": {}, "authorization": null, "headers": {}}
    ]))
    .unwrap();
    assert_eq!(old[0].path, "");
}
