//! Router tests: the public and admin routers driven with `oneshot`, no socket, over backends that play
//! a scripted answer and count what they receive.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::to_bytes;
use axum::http::Request as HttpRequest;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tower::ServiceExt;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};
use sluice_policy::{Level, Policy, PolicyConfig, PolicyEngine, RequestFacts, Route};

use super::*;
use crate::api::ChatRequest;
use crate::auth::{ApiKey, hash_key};
use crate::backend::{
    Backend, BackendError, ChatEvent, DispatchContext, Dispatched, MemberStatus, ModelCard, Usage,
};
use crate::config::{GatewayConfig, Limits};
use crate::fleet::Fleet;

const KEY: &str = "sk-test-acme";

/// What a scripted backend does with the next request.
#[derive(Clone)]
enum Script {
    Answer(Vec<Result<ChatEvent, BackendError>>),
    Refuse(BackendError),
    /// Never answers.
    Hang,
    /// Text without end.
    Endless,
}

struct ScriptedBackend {
    name: &'static str,
    route: Route,
    clearance: Level,
    models: Vec<&'static str>,
    script: Mutex<Script>,
    received: Mutex<Vec<ChatRequest>>,
    dropped: Arc<AtomicUsize>,
    /// What `members` reports.
    members: Mutex<Vec<MemberStatus>>,
}

impl ScriptedBackend {
    fn new(name: &'static str, route: Route, models: Vec<&'static str>, script: Script) -> Arc<Self> {
        Arc::new(Self {
            name,
            route,
            clearance: if route == Route::Local {
                Level::Restricted
            } else {
                Level::Internal
            },
            models,
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicUsize::new(0)),
            members: Mutex::new(Vec::new()),
        })
    }

    fn received(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

/// Counts streams dropped before their end.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Backend for ScriptedBackend {
    fn name(&self) -> &str {
        self.name
    }
    /// As the real pool: a local model reads text only.
    fn supports(&self, request: &ChatRequest, model: &str) -> Result<(), crate::backend::Unsupported> {
        match crate::api::text_only_conflicts(request).filter(|_| self.route == Route::Local) {
            None => Ok(()),
            Some((param, what)) => Err(crate::backend::Unsupported {
                param,
                what,
                model: model.to_owned(),
            }),
        }
    }
    fn route(&self) -> Route {
        self.route
    }
    fn clearance(&self) -> Level {
        self.clearance
    }
    fn models(&self) -> Vec<ModelCard> {
        self.models
            .iter()
            .map(|m| ModelCard {
                kind: Default::default(),
                id: (*m).to_owned(),
                prices: (self.route == Route::Cloud).then_some(crate::backend::Prices {
                    input_usd_per_mtok: 0.15,
                    output_usd_per_mtok: 0.6,
                }),
            })
            .collect()
    }
    fn ready(&self) -> bool {
        true
    }
    fn members(&self) -> Vec<MemberStatus> {
        self.members.lock().unwrap().clone()
    }
    fn dispatch<'a>(
        &'a self,
        request: &'a ChatRequest,
        _context: &'a DispatchContext,
    ) -> BoxFuture<'a, Result<Dispatched, BackendError>> {
        self.received.lock().unwrap().push(request.clone());
        let script = self.script.lock().unwrap().clone();
        let name = self.name;
        let dropped = self.dropped.clone();
        async move {
            match script {
                Script::Refuse(e) => Err(e),
                Script::Hang => futures_util::future::pending().await,
                Script::Endless => {
                    let guard = DropCount(dropped);
                    let stream = futures_util::stream::repeat_with(|| Ok(ChatEvent::Text("word ".into())))
                        .map(move |e| {
                            let _ = &guard;
                            e
                        });
                    Ok(Dispatched {
                        served_by: name.into(),
                        events: Box::pin(stream),
                    })
                }
                Script::Answer(events) => {
                    let guard = DropCount(dropped);
                    let stream = futures_util::stream::iter(events)
                        .chain(futures_util::stream::pending())
                        .map(move |e| {
                            let _ = &guard;
                            e
                        });
                    Ok(Dispatched {
                        served_by: name.into(),
                        events: Box::pin(stream),
                    })
                }
            }
        }
        .boxed()
    }
}

fn answer(words: &[&str]) -> Script {
    let mut events: Vec<_> = words
        .iter()
        .map(|w| Ok(ChatEvent::Text((*w).to_owned())))
        .collect();
    events.push(Ok(ChatEvent::Finished {
        finish_reason: "stop".into(),
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: words.len() as u64,
        },
    }));
    Script::Answer(events)
}

fn config(limits: Limits) -> GatewayConfig {
    GatewayConfig {
        air_gapped: false,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        admin_token: None,
        keys: vec![ApiKey {
            tenant: "acme".into(),
            sha256: hash_key(KEY),
        }],
        allow_unauthenticated: false,
        limits,
        tenant_limits: crate::config::TenantLimitsConfig::default(),
        local: None,
        clouds: Vec::new(),
        drain_grace: Duration::from_secs(1),
        scanner: sluice_sensitivity::Scanner::new(&Default::default()).unwrap(),
        ner: None,
        policy: Default::default(),
        audit: None,
        tracing: None,
        reference_model: Some((
            "gpt-4o-mini".into(),
            crate::backend::Prices {
                input_usd_per_mtok: 0.15,
                output_usd_per_mtok: 0.6,
            },
        )),
    }
}

fn app_with(backends: Vec<Arc<ScriptedBackend>>, limits: Limits) -> Arc<App> {
    let fleet = Fleet {
        backends: backends.into_iter().map(|b| b as Arc<dyn Backend>).collect(),
    };
    App::new(
        config(limits),
        fleet,
        Arc::new(PolicyEngine::default()),
        prometheus::Registry::new(),
    )
    .unwrap()
}

fn local(script: Script) -> Arc<ScriptedBackend> {
    ScriptedBackend::new("worker-a", Route::Local, vec!["local-model"], script)
}

fn cloud(script: Script) -> Arc<ScriptedBackend> {
    ScriptedBackend::new("cloud-a", Route::Cloud, vec!["gpt-4o-mini"], script)
}

fn post(body: &str) -> HttpRequest<Body> {
    HttpRequest::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

async fn send(app: &Arc<App>, request: HttpRequest<Body>) -> (StatusCode, HeaderMap, Value) {
    send_to(public_router(app.clone()), request).await
}

async fn send_to(router: axum::Router, request: HttpRequest<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

async fn error_of(app: &Arc<App>, request: HttpRequest<Body>) -> (StatusCode, String, HeaderMap) {
    let (status, headers, body) = send(app, request).await;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"));
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(headers.contains_key("x-request-id"));
    (status, code.to_owned(), headers)
}

const HELLO: &str = r#"{"model":"local-model","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn a_local_answer_carries_the_routing_headers() {
    let worker = local(answer(&["Hello", " there"]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let (status, headers, body) = send(&app, post(HELLO)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "local-model");
    assert_eq!(body["usage"]["prompt_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], 9);
    assert_eq!(headers["x-sluice-route"], "local");
    assert_eq!(headers["x-sluice-backend"], "worker-a");
    assert_eq!(headers["x-sluice-rule"], "default");
    assert_eq!(headers["x-sluice-sensitivity"], "public");
    assert!(
        headers["x-sluice-decision-id"]
            .to_str()
            .unwrap()
            .starts_with("dec_")
    );
    assert!(headers["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert_eq!(worker.received(), 1);
    let text = app.accounts.metrics.encode();
    assert!(
        text.contains(r#"sluice_requests_total{backend="worker-a",code="ok",model="local-model",route="local",tenant="acme"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"sluice_tokens_total{backend="worker-a",direction="output",route="local"} 2"#));
    assert!(text.contains(r#"sluice_decisions_total{route="local",rule="default"} 1"#));
}

#[tokio::test]
async fn a_client_request_id_is_kept() {
    let app = app_with(vec![local(answer(&["x"]))], Limits::default());
    let mut request = post(HELLO);
    request
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_static("abc-123"));
    let (_, headers, _) = send(&app, request).await;
    assert_eq!(headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn a_streamed_local_answer_is_openai_server_sent_events() {
    let app = app_with(vec![local(answer(&["Hel", "lo"]))], Limits::default());
    let body = r#"{"model":"local-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, text) = send(&app, post(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-sluice-route"], "local");
    let text = text.as_str().unwrap().to_owned();
    let frames: Vec<&str> = text.split("\n\n").filter(|f| !f.is_empty()).collect();
    assert!(frames.iter().all(|f| f.starts_with("data: ")), "{text}");
    assert_eq!(*frames.last().unwrap(), "data: [DONE]");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(&f[6..]).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == chunks[0]["id"] && c["object"] == "chat.completion.chunk")
    );
}

#[tokio::test]
async fn cloud_chunks_pass_through_and_metering_usage_is_hidden_unless_asked() {
    // As a cloud backend passes them on: the metering usage is in `Finished`, not in the chunks.
    let chunk = |content: &str| json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
    let events = vec![
        Ok(ChatEvent::Chunk(chunk("Hi"))),
        Ok(ChatEvent::Chunk(
            json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        )),
        Ok(ChatEvent::Finished {
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
            },
        }),
    ];
    let app = app_with(vec![cloud(Script::Answer(events))], Limits::default());
    let body = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, text) = send(&app, post(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-sluice-route"], "cloud");
    let text = text.as_str().unwrap();
    assert_eq!(
        text,
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null,\"index\":0}],\"id\":\"c1\",\"object\":\"chat.completion.chunk\"}\n\n\
         data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\",\"index\":0}],\"id\":\"c1\",\"object\":\"chat.completion.chunk\"}\n\n\
         data: [DONE]\n\n"
    );
    let metrics = app.accounts.metrics.encode();
    assert!(
        metrics.contains(r#"sluice_tokens_total{backend="cloud-a",direction="input",route="cloud"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_answer_that_breaks_mid_stream_ends_with_an_error_event() {
    let script = Script::Answer(vec![
        Ok(ChatEvent::Text("Hel".into())),
        Err(BackendError::Interrupted("worker-a failed mid-answer".into())),
    ]);
    let app = app_with(vec![local(script)], Limits::default());
    let body = r#"{"model":"local-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, text) = send(&app, post(body)).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    let last = text.split("\n\n").filter(|f| !f.is_empty()).last().unwrap();
    let error: Value = serde_json::from_str(&last[6..]).unwrap();
    assert_eq!(error["error"]["code"], "backend_stream_interrupted");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn bad_keys_get_401_and_reach_no_backend() {
    let worker = local(answer(&["x"]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let mut missing = post(HELLO);
    missing.headers_mut().remove("authorization");
    assert_eq!(error_of(&app, missing).await.1, "invalid_api_key");
    let mut wrong = post(HELLO);
    wrong
        .headers_mut()
        .insert("authorization", HeaderValue::from_static("Bearer sk-nope"));
    let (status, code, _) = error_of(&app, wrong).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    let models = HttpRequest::get("/v1/models").body(Body::empty()).unwrap();
    assert_eq!(error_of(&app, models).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(worker.received(), 0);
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_precise_code() {
    let worker = local(answer(&["x"]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let cases: &[(&[u8], &str)] = &[
        (b"{not json", "invalid_json"),
        (b"[1,2]", "invalid_json"),
        (
            b"{\"model\":\"local-model\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
            "invalid_utf8",
        ),
        (br#"{"model":"local-model"}"#, "missing_required_parameter"),
        (br#"{"model":"local-model","messages":"hi"}"#, "invalid_type"),
        (br#"{"model":"local-model","messages":[]}"#, "invalid_value"),
        (
            br#"{"model":7,"messages":[{"role":"user","content":"hi"}]}"#,
            "invalid_type",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"user","content":"hi"}],"n":2}"#,
            "invalid_value",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"user","content":"hi"}],"temperature":9}"#,
            "invalid_value",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
            "invalid_value",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
            "invalid_type",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"wizard","content":"hi"}]}"#,
            "invalid_value",
        ),
        (
            br#"{"model":"local-model","messages":[{"role":"user","content":5}]}"#,
            "invalid_type",
        ),
    ];
    for (body, code) in cases {
        let request = HttpRequest::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .body(Body::from(body.to_vec()))
            .unwrap();
        let (status, got, _) = error_of(&app, request).await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::BAD_REQUEST, *code),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(worker.received(), 0);
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let app = app_with(vec![local(answer(&["x"]))], Limits::default());
    let (status, code, _) = error_of(
        &app,
        post(r#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "model_not_found")
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let limits = Limits {
        max_body_bytes: 1024,
        ..Limits::default()
    };
    let worker = local(answer(&["x"]));
    let app = app_with(vec![worker.clone()], limits);
    let big = format!(
        r#"{{"model":"local-model","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(2000)
    );
    let (status, code, _) = error_of(&app, post(&big)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large")
    );
    assert_eq!(worker.received(), 0);
}

#[tokio::test]
async fn backend_failures_map_to_distinct_5xx_codes() {
    let cases = [
        (
            BackendError::Unavailable("down".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
        ),
        (
            BackendError::Full("full".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_overloaded",
        ),
        (
            BackendError::Failed("bad".into()),
            StatusCode::BAD_GATEWAY,
            "backend_error",
        ),
        (
            BackendError::Timeout("slow".into()),
            StatusCode::GATEWAY_TIMEOUT,
            "backend_timeout",
        ),
        (
            BackendError::Rejected {
                message: "over the context window".into(),
                code: "context_length_exceeded",
            },
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
        ),
    ];
    let upstream = BackendError::Upstream {
        status: 422,
        message: "too long".into(),
        code: Some("context_length_exceeded".into()),
        param: Some("messages".into()),
    };
    let app = app_with(vec![local(Script::Refuse(upstream))], Limits::default());
    let (status, _, body) = send(&app, post(HELLO)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["code"], "context_length_exceeded",
        "the provider's code, as it came"
    );
    assert_eq!(body["error"]["param"], "messages");
    assert!(
        app.accounts
            .metrics
            .encode()
            .contains(r#"code="upstream_rejected""#)
    );
    for (error, status, code) in cases {
        let app = app_with(vec![local(Script::Refuse(error))], Limits::default());
        let (got_status, got_code, headers) = error_of(&app, post(HELLO)).await;
        assert_eq!((got_status, got_code.as_str()), (status, code));
        assert_eq!(headers["x-sluice-route"], "local");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(headers["retry-after"], "1");
        }
    }
}

#[tokio::test]
async fn the_gateway_sheds_load_with_429_and_retry_after() {
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    let app = app_with(vec![local(Script::Hang)], limits);
    let router = public_router(app.clone());
    let hung = tokio::spawn(router.clone().oneshot(post(HELLO)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let response = router.oneshot(post(HELLO)).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "gateway_overloaded");
    hung.abort();
    // Health checks are never shed.
    let health = public_router(app)
        .oneshot(HttpRequest::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_streaming_answer_holds_its_in_flight_permit_until_it_ends() {
    let limits = Limits {
        max_in_flight: 1,
        ..Limits::default()
    };
    // An answer that never finishes: its body keeps the only permit.
    let app = app_with(
        vec![local(Script::Answer(vec![Ok(ChatEvent::Text("a".into()))]))],
        limits,
    );
    let body = r#"{"model":"local-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let open = public_router(app.clone()).oneshot(post(body)).await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let second = public_router(app.clone()).oneshot(post(body)).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(open);
    let third = public_router(app).oneshot(post(body)).await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_backend_stream() {
    let worker = local(Script::Answer(vec![Ok(ChatEvent::Text("a".into()))]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let body = r#"{"model":"local-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = public_router(app.clone()).oneshot(post(body)).await.unwrap();
    let mut stream = response.into_body().into_data_stream();
    assert!(stream.next().await.is_some());
    assert_eq!(worker.dropped.load(Ordering::SeqCst), 0);
    drop(stream);
    wait_until(|| worker.dropped.load(Ordering::SeqCst) == 1).await;
    wait_until(|| app.accounts.metrics.encode().contains(r#"code="client_closed""#)).await;
}

async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition not met within a second");
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_stream_at_the_deadline() {
    let limits = Limits {
        max_in_flight: 1,
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let worker = local(Script::Endless);
    let app = app_with(vec![worker.clone()], limits);
    let body = r#"{"model":"local-model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    // The response is held but its body never read.
    let stalled = public_router(app.clone()).oneshot(post(body)).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    assert_eq!(
        public_router(app.clone())
            .oneshot(post(body))
            .await
            .unwrap()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // At the deadline the backend stream is dropped and the permit given back, though the body lives on.
    wait_until(|| worker.dropped.load(Ordering::SeqCst) == 1).await;
    let next = public_router(app.clone()).oneshot(post(body)).await.unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert!(app.accounts.metrics.encode().contains(r#"code="client_stalled""#));
    drop(stalled);
}

#[tokio::test]
async fn a_response_that_does_not_start_in_time_is_504() {
    let limits = Limits {
        request_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let app = app_with(vec![local(Script::Hang)], limits);
    let (status, code, _) = error_of(&app, post(HELLO)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "backend_timeout")
    );
}

#[tokio::test]
async fn declared_sensitivity_raises_the_level_and_clearances_hold() {
    let cloud = cloud(answer(&["x"]));
    let app = app_with(vec![cloud.clone()], Limits::default());
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let mut restricted = post(body);
    restricted
        .headers_mut()
        .insert("x-sluice-sensitivity", HeaderValue::from_static("restricted"));
    let (status, code, _) = error_of(&app, restricted).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend")
    );
    assert_eq!(cloud.received(), 0);
    let mut internal = post(body);
    internal
        .headers_mut()
        .insert("x-sluice-sensitivity", HeaderValue::from_static("internal"));
    let (status, headers, _) = send(&app, internal).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-sluice-sensitivity"], "internal");
    let mut bogus = post(body);
    bogus
        .headers_mut()
        .insert("x-sluice-sensitivity", HeaderValue::from_static("secret"));
    assert_eq!(error_of(&app, bogus).await.1, "invalid_sensitivity");
}

#[tokio::test]
async fn local_models_refuse_what_they_cannot_do() {
    let worker = local(answer(&["x"]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let body = r#"{"model":"local-model","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let (status, code, _) = error_of(&app, post(body)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "unsupported_parameter")
    );
    assert_eq!(worker.received(), 0);
}

#[tokio::test]
async fn models_health_and_readiness() {
    let app = app_with(
        vec![local(answer(&["x"])), cloud(answer(&["y"]))],
        Limits::default(),
    );
    let request = HttpRequest::get("/v1/models")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["local-model", "gpt-4o-mini"]);
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = send(&app, HttpRequest::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let empty = app_with(Vec::new(), Limits::default());
    let (status, _, _) = send(&empty, HttpRequest::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = send(&app, HttpRequest::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_url"))
    );
    let (status, _, _) = send(
        &app,
        HttpRequest::get("/v1/chat/completions")
            .header("authorization", format!("Bearer {KEY}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_admin_router_serves_metrics_and_backend_state() {
    let app = app_with(vec![local(answer(&["x"]))], Limits::default());
    let _ = send(&app, post(HELLO)).await;
    let response = admin_router(app.clone())
        .oneshot(HttpRequest::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("sluice_requests_total"), "{text}");
    let response = admin_router(app.clone())
        .oneshot(HttpRequest::get("/admin/backends").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let body: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["backends"][0]["name"], "worker-a");
    assert_eq!(body["backends"][0]["clearance"], "restricted");
    let response = admin_router(app.clone())
        .oneshot(HttpRequest::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()[axum::http::header::CONTENT_TYPE],
        "application/json"
    );
    let doc: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object(), "{doc}");
    // Unknown admin paths and methods are answered in OpenAI's shape too.
    let (status, _, body) = send_to(
        admin_router(app.clone()),
        HttpRequest::get("/admin/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_url"))
    );
    let (status, _, body) = send_to(
        admin_router(app),
        HttpRequest::post("/metrics").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

/// A card number that passes Luhn, made at run time.
fn card() -> String {
    ["4111", "1111", "1111", "1111"].join(" ")
}

#[tokio::test]
async fn sensitive_content_anywhere_never_reaches_a_cloud() {
    let cloud = cloud(answer(&["x"]));
    let app = app_with(vec![cloud.clone()], Limits::default());
    let c = card();
    let bodies = [
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"pay with {c}"}}]}}"#),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"system","content":"card {c}"}},{{"role":"user","content":"hi"}}]}}"#
        ),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":[{{"type":"text","text":"{c}"}}]}}]}}"#
        ),
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi","name":"{c}"}}]}}"#),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"assistant","content":null,"tool_calls":[{{"id":"c1","type":"function","function":{{"name":"pay","arguments":"{{\"card\":\"{c}\"}}"}}}}]}},{{"role":"tool","tool_call_id":"c1","content":"ok"}}]}}"#
        ),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"tools":[{{"type":"function","function":{{"name":"f","description":"default card {c}"}}}}]}}"#
        ),
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"stop":["{c}"]}}"#),
        format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"metadata":{{"note":"{c}"}}}}"#
        ),
    ];
    for body in &bodies {
        // A header that claims the request is public cannot lower what was found.
        let mut request = post(body);
        request
            .headers_mut()
            .insert("x-sluice-sensitivity", HeaderValue::from_static("public"));
        let (status, code, headers) = error_of(&app, request).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend"),
            "{body}"
        );
        assert_eq!(headers["x-sluice-sensitivity"], "restricted", "{body}");
    }
    assert_eq!(cloud.received(), 0, "no sensitive request reached the cloud");
    let (status, _, _) = send(
        &app,
        post(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "benign requests still go");
    assert_eq!(cloud.received(), 1);
    let metrics = app.accounts.metrics.encode();
    assert!(
        metrics.contains(r#"sluice_sensitive_findings_total{kind="payment_card"} 8"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn sensitive_content_is_served_locally() {
    let worker = local(answer(&["ok"]));
    let app = app_with(vec![worker.clone()], Limits::default());
    let body = format!(
        r#"{{"model":"local-model","messages":[{{"role":"user","content":"card {}"}}]}}"#,
        card()
    );
    let (status, headers, _) = send(&app, post(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-sluice-sensitivity"], "restricted");
    assert_eq!(headers["x-sluice-route"], "local");
}

/// A local worker and a cloud, behind the policy engine with `config`.
fn app_with_policy(backends: Vec<Arc<ScriptedBackend>>, config_policy: PolicyConfig) -> Arc<App> {
    let mut config = config(Limits::default());
    config.policy = config_policy.clone();
    let fleet = Fleet {
        backends: backends.into_iter().map(|b| b as Arc<dyn Backend>).collect(),
    };
    App::new(
        config,
        fleet,
        Arc::new(PolicyEngine::new(config_policy)),
        prometheus::Registry::new(),
    )
    .unwrap()
}

/// `auto`: the local model or the cloud's, cheapest first.
fn auto_policy() -> PolicyConfig {
    use sluice_policy::{Strategy, VirtualMember, VirtualModel};
    PolicyConfig {
        models: vec![VirtualModel {
            name: "auto".into(),
            strategy: Strategy::CheapestWithinSlo,
            max_ttft_seconds: 2.0,
            members: vec![
                VirtualMember {
                    backend: "worker-a".into(),
                    model: "local-model".into(),
                },
                VirtualMember {
                    backend: "cloud-a".into(),
                    model: "gpt-4o-mini".into(),
                },
            ],
        }],
        ..PolicyConfig::default()
    }
}

/// Sensitive requests for `gpt-4o-mini` are served by `local-model`.
fn substitute_policy() -> PolicyConfig {
    use sluice_policy::{Action, Conditions, LevelSet, Rule};
    PolicyConfig {
        rules: vec![Rule {
            name: "sensitive-stays-local".into(),
            when: Conditions {
                levels: LevelSet::between(Level::Confidential, Level::Restricted),
                models: Some(vec!["gpt-4o-mini".into()]),
                ..Conditions::default()
            },
            then: Action::Substitute {
                model: "local-model".into(),
                backend: None,
            },
            strategy: None,
            over_budget: None,
        }],
        ..PolicyConfig::default()
    }
}

async fn admin_get(app: &Arc<App>, path: &str) -> (StatusCode, Value) {
    let response = admin_router(app.clone())
        .oneshot(HttpRequest::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    (status, body)
}

/// Claims every request is public and sends it to the last backend: a policy with a bug.
struct Reckless;

impl Policy for Reckless {
    fn decide(
        &self,
        facts: &RequestFacts<'_>,
        fleet: &sluice_policy::FleetView,
    ) -> Result<sluice_policy::Decision, sluice_policy::Refusal> {
        Ok(sluice_policy::Decision {
            targets: vec![sluice_policy::Target {
                backend: fleet.backends.len() - 1,
                model: facts.model.to_owned(),
            }],
            rule: "reckless".into(),
            level: Level::Public,
            substituted_for: None,
            excluded: Vec::new(),
            reason: String::new(),
            redaction: None,
            unredactable: None,
            fallback: None,
            fell_back: None,
        })
    }
}

#[tokio::test]
async fn the_dispatcher_overrules_a_policy_that_picks_a_backend_cleared_below_the_request() {
    let cloud = cloud(answer(&["x"]));
    let fleet = Fleet {
        backends: vec![cloud.clone() as Arc<dyn Backend>],
    };
    let app = App::new(
        config(Limits::default()),
        fleet,
        Arc::new(Reckless),
        prometheus::Registry::new(),
    )
    .unwrap();
    let body = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"card {}"}}]}}"#,
        card()
    );
    let (status, code, headers) = error_of(&app, post(&body)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend")
    );
    assert_eq!(headers["x-sluice-sensitivity"], "restricted");
    assert_eq!(cloud.received(), 0);
    assert!(
        app.accounts
            .metrics
            .encode()
            .contains("sluice_clearance_blocked_total 1")
    );
}

#[tokio::test]
async fn a_sensitive_request_for_a_cloud_model_is_substituted_and_says_so() {
    let worker = local(answer(&["ok"]));
    let cloud = cloud(answer(&["x"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], substitute_policy());
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Mail jane.doe@example.com"}]}"#;
    let (status, headers, body) = send(&app, post(body)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-sluice-route"], "local");
    assert_eq!(headers["x-sluice-rule"], "sensitive-stays-local");
    assert_eq!(headers["x-sluice-sensitivity"], "confidential");
    assert_eq!(headers["x-sluice-model"], "local-model");
    assert_eq!(headers["x-sluice-substituted-for"], "gpt-4o-mini");
    assert_eq!(body["model"], "local-model");
    assert_eq!(cloud.received(), 0);
    let sent = worker.received.lock().unwrap()[0].clone();
    assert_eq!(
        (sent.model.as_str(), &sent.body["model"]),
        ("local-model", &json!("local-model"))
    );

    // The decision is explained on the admin listener: where the finding is, never what it says.
    let id = headers["x-sluice-decision-id"].to_str().unwrap();
    let (status, e) = admin_get(&app, &format!("/admin/decisions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(e["rule"], "sensitive-stays-local");
    assert_eq!(e["substituted_for"], "gpt-4o-mini");
    assert_eq!(e["findings"][0]["kind"], "email");
    assert_eq!(e["findings"][0]["field"], "messages[0].content");
    assert_eq!(e["targets"][0]["backend"], "worker-a");
    assert!(!e.to_string().contains("jane.doe"), "{e}");
    let (_, list) = admin_get(&app, "/admin/decisions").await;
    assert_eq!(list["decisions"][0]["decision_id"], id);
    let (status, missing) = admin_get(&app, "/admin/decisions/dec_nope").await;
    assert_eq!(
        (status, &missing["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );

    // Benign requests still go to the cloud model they ask for.
    let (status, headers, _) = send(
        &app,
        post(r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#),
    )
    .await;
    assert_eq!(
        (status, &headers["x-sluice-route"]),
        (StatusCode::OK, &HeaderValue::from_static("cloud"))
    );
    assert!(!headers.contains_key("x-sluice-substituted-for"));
}

#[tokio::test]
async fn with_the_local_worker_down_a_substituted_request_is_refused_never_sent_to_the_cloud() {
    let worker = local(Script::Refuse(BackendError::Unavailable(
        "worker-a: connection refused".into(),
    )));
    let cloud = cloud(answer(&["x"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], substitute_policy());
    let body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Mail jane.doe@example.com"}]}"#;
    let (status, code, headers) = error_of(&app, post(body)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend")
    );
    assert_eq!(headers["x-sluice-rule"], "sensitive-stays-local");
    assert_eq!((worker.received(), cloud.received()), (1, 0));
    let text = app.accounts.metrics.encode();
    assert!(
        text.contains(r#"sluice_requests_total{backend="worker-a",code="no_compliant_backend",model="local-model",route="local",tenant="acme"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn auto_falls_back_along_the_allowed_targets_and_counts_the_request_once() {
    let worker = local(Script::Refuse(BackendError::Full(
        "worker-a: every slot is busy".into(),
    )));
    let cloud = cloud(answer(&["from", " cloud"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], auto_policy());
    let (status, headers, body) = send(
        &app,
        post(r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((worker.received(), cloud.received()), (1, 1));
    assert_eq!(headers["x-sluice-backend"], "cloud-a");
    assert_eq!(headers["x-sluice-model"], "gpt-4o-mini");
    assert!(!headers.contains_key("x-sluice-substituted-for"));
    assert_eq!(cloud.received.lock().unwrap()[0].body["model"], "gpt-4o-mini");
    let text = app.accounts.metrics.encode();
    assert!(!text.contains(r#"backend="worker-a",code="#), "{text}");
    assert!(text.contains(r#"sluice_requests_total{backend="cloud-a",code="ok",model="gpt-4o-mini",route="cloud",tenant="acme"} 1"#), "{text}");

    // A sensitive request for `auto` may only go to the local member: full, so 503, and the cloud is
    // not tried.
    let (status, code, _) = error_of(
        &app,
        post(r#"{"model":"auto","messages":[{"role":"user","content":"Mail jane.doe@example.com"}]}"#),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend")
    );
    assert_eq!((worker.received(), cloud.received()), (2, 1));

    // `/v1/models` lists the virtual model.
    let request = HttpRequest::get("/v1/models")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap();
    let (_, _, models) = send(&app, request).await;
    let auto = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "auto")
        .unwrap();
    assert_eq!(auto["sluice"]["strategy"], "cheapest_within_slo");
}

#[tokio::test]
async fn the_prefer_hint_must_be_local_or_cloud() {
    let worker = local(answer(&["ok"]));
    let cloud = cloud(answer(&["x"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], auto_policy());
    let body = r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#;
    let mut request = post(body);
    request
        .headers_mut()
        .insert("x-sluice-prefer", HeaderValue::from_static("moon"));
    assert_eq!(error_of(&app, request).await.1, "invalid_prefer");
    // x-sluice-fallback has one value, none.
    let mut request = post(body);
    request
        .headers_mut()
        .insert("x-sluice-fallback", HeaderValue::from_static("nope"));
    assert_eq!(error_of(&app, request).await.1, "invalid_fallback");
    // `none` in any case and with spaces around it, as the policy reads it, is accepted.
    let mut request = post(body);
    request
        .headers_mut()
        .insert("x-sluice-prefer", HeaderValue::from_static("cloud"));
    request
        .headers_mut()
        .insert("x-sluice-fallback", HeaderValue::from_static(" None "));
    let (status, headers, _) = send(&app, request).await;
    assert_eq!(
        (status, &headers["x-sluice-backend"]),
        (StatusCode::OK, &HeaderValue::from_static("cloud-a"))
    );
    assert_eq!(worker.received(), 0);
}

#[tokio::test]
async fn a_large_body_is_scanned_to_its_last_byte() {
    let cloud = cloud(answer(&["x"]));
    let app = app_with(vec![cloud.clone()], Limits::default());
    // Past the size scanned on the runtime thread: the blocking pool scans it, all of it.
    let filler = "lorem ipsum dolor sit amet ".repeat(4000);
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("{filler} pay with {}", card())}],
    })
    .to_string();
    assert!(body.len() > crate::intake::SCAN_INLINE_BYTES);
    let (status, code, headers) = error_of(&app, post(&body)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_compliant_backend")
    );
    assert_eq!(headers["x-sluice-sensitivity"], "restricted");
    assert_eq!(cloud.received(), 0);
    let benign =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": filler}]}).to_string();
    assert_eq!(send(&app, post(&benign)).await.0, StatusCode::OK);
    assert_eq!(cloud.received(), 1);
}

#[tokio::test]
async fn a_request_the_local_model_cannot_take_goes_to_the_next_allowed_target() {
    let worker = local(answer(&["ok"]));
    let cloud = cloud(answer(&["called"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], auto_policy());
    let tools = r#""tools":[{"type":"function","function":{"name":"f"}}]"#;
    let body = format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"hi"}}],{tools}}}"#);
    let (status, headers, _) = send(&app, post(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-sluice-backend"], "cloud-a");
    assert_eq!((worker.received(), cloud.received()), (0, 1));
    // With sensitive data only the local member is allowed: the 400 says what it cannot do.
    let body = format!(
        r#"{{"model":"auto","messages":[{{"role":"user","content":"Mail jane.doe@example.com"}}],{tools}}}"#
    );
    let (status, code, _) = error_of(&app, post(&body)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "unsupported_parameter")
    );
    assert_eq!((worker.received(), cloud.received()), (0, 1));
}

/// A worker whose answers use 7 + 2 tokens and a cloud whose answers use 1,000 + 500, after one answered
/// request for each of `models`.
async fn app_after(models: &[&str]) -> Arc<App> {
    let usage = |p, c| {
        Ok(ChatEvent::Finished {
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: p,
                completion_tokens: c,
            },
        })
    };
    let cloud = cloud(Script::Answer(vec![
        Ok(ChatEvent::Text("x".into())),
        usage(1_000, 500),
    ]));
    let worker = local(Script::Answer(vec![Ok(ChatEvent::Text("y".into())), usage(7, 2)]));
    let app = app_with(vec![worker, cloud], Limits::default());
    for model in models {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        assert_eq!(send(&app, post(&body)).await.0, StatusCode::OK);
    }
    app
}

#[tokio::test]
async fn answers_are_priced_at_list_price_or_at_the_node_and_at_the_reference_model() {
    let app = app_after(&["gpt-4o-mini", "gpt-4o-mini", "local-model"]).await;
    let m = &app.accounts.metrics;
    // 2 x (1,000 x 0.15 + 500 x 0.60) / 10^6 USD, to the picodollar.
    assert_eq!(m.cost.get(&["cloud", "cloud-a"]), 900_000_000);
    // The local answer at the reference model's prices: 7 x 0.15 + 2 x 0.60 micro-dollars.
    assert_eq!(m.cloud_equivalent.get(&["worker-a"]), 2_250_000);
    assert!(m.cost.get(&["local", "worker-a"]) > 0);
    let text = m.encode();
    assert!(
        text.contains(r#"sluice_cost_usd_total{backend="cloud-a",route="cloud"} 0.0009"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sluice_cloud_equivalent_cost_usd_total{backend="worker-a"} 0.00000225"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_dashboard_is_self_contained_and_its_figures_add_up() {
    let app = app_after(&["gpt-4o-mini", "local-model"]).await;
    let response = admin_router(app.clone())
        .oneshot(HttpRequest::get("/dashboard").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    let page = String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    assert!(page.contains("/admin/summary"));
    for external in ["http://", "https://", "<script src", "<link", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page loads something from elsewhere: {external}"
        );
    }
    let (status, s) = admin_get(&app, "/admin/summary").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["cloud"]["spend_usd"], json!(0.00045));
    assert_eq!(s["cloud"]["tokens"], 1_500);
    assert_eq!(s["cloud"]["usd_per_mtok"], json!(0.3));
    assert_eq!(s["local"]["cloud_equivalent_usd"], json!(0.00000225));
    assert_eq!(s["local"]["tokens"], 9);
    assert!(s["local"]["busy_cost_usd"].as_f64().unwrap() > 0.0);
    let rows = s["routing"].as_array().unwrap();
    assert!(
        rows.contains(&json!({"rule": "default", "route": "cloud", "requests": 1})),
        "{rows:?}"
    );
    assert!(
        rows.contains(&json!({"rule": "default", "route": "local", "requests": 1})),
        "{rows:?}"
    );
}

/// A worker that leaves and comes back under the same name (a pod recreated with its name) is charged
/// for both stints: the second adds to the first rather than having to outgrow it.
#[tokio::test]
async fn node_cost_adds_up_across_a_workers_stints() {
    let local = ScriptedBackend::new("local", Route::Local, vec!["m"], answer(&["x"]));
    let app = app_with(vec![local.clone()], Limits::default());
    let cost = crate::cost::NodeCost::default();
    let node = |joined: std::time::Instant| MemberStatus {
        name: "w-1".into(),
        address: "http://10.0.0.1:50051".into(),
        ready: true,
        detail: "ready".into(),
        models: vec!["m".into()],
        in_flight: 0,
        running: None,
        waiting: None,
        slots: None,
        throughput: None,
        source: "kubernetes",
        node: Some((cost, joined)),
    };
    let counted = || app.accounts.metrics.node_cost.get(&["w-1"]);

    *local.members.lock().unwrap() = vec![node(std::time::Instant::now())];
    std::thread::sleep(Duration::from_millis(60));
    app.refresh_backend_gauges();
    let first = counted();
    assert!(first >= cost.over(Duration::from_millis(60)), "{first}");
    app.refresh_backend_gauges();
    assert!(
        counted() - first < cost.over(Duration::from_millis(20)),
        "a refresh counts only new time"
    );

    // It leaves: its gauges go, its cost stays.
    local.members.lock().unwrap().clear();
    app.refresh_backend_gauges();
    let after_first = counted();
    assert!(
        !app.accounts
            .metrics
            .encode()
            .contains("sluice_backend_up{backend=\"w-1\"}")
    );

    // It comes back under the same name for a shorter stint: that stint's cost is added.
    *local.members.lock().unwrap() = vec![node(std::time::Instant::now())];
    std::thread::sleep(Duration::from_millis(30));
    app.refresh_backend_gauges();
    let second = counted() - after_first;
    assert!(second >= cost.over(Duration::from_millis(30)), "{second}");
    assert!(second < cost.over(Duration::from_millis(60)), "{second}");
}

/// A worker that joins and leaves between two refreshes is charged for its stint up to its departure
/// (the pool reports when it left), and not for the time after.
#[tokio::test]
async fn a_worker_that_leaves_between_two_scrapes_is_charged_to_its_departure() {
    use crate::backend::local::{PoolConfig, WorkerPool};
    let cost = crate::cost::NodeCost::default();
    let pool = Arc::new(
        WorkerPool::start(PoolConfig {
            name: "local".into(),
            workers: Vec::new(),
            tls: None,
            clearance: Level::Restricted,
            connect_timeout: Duration::from_secs(1),
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(60),
            kubernetes: None,
            node_cost: cost,
        })
        .unwrap(),
    );
    let app = App::new(
        config(Limits::default()),
        Fleet {
            backends: vec![pool.clone() as Arc<dyn Backend>],
        },
        Arc::new(PolicyEngine::default()),
        prometheus::Registry::new(),
    )
    .unwrap();
    app.refresh_backend_gauges();
    pool.reconcile(&[sluice_discovery::Endpoint {
        name: "w-1".into(),
        host: "127.0.0.1".into(),
        port: 9,
        state: sluice_discovery::EndpointState::Ready,
    }]);
    std::thread::sleep(Duration::from_millis(120));
    pool.reconcile(&[]);
    std::thread::sleep(Duration::from_millis(120));
    app.refresh_backend_gauges();
    let charged = app.accounts.metrics.node_cost.get(&["w-1"]);
    assert!(charged >= cost.over(Duration::from_millis(120)), "{charged}");
    assert!(
        charged < cost.over(Duration::from_millis(200)),
        "{charged}: charged past its departure"
    );
    // Charged once: later refreshes add nothing.
    app.refresh_backend_gauges();
    assert_eq!(app.accounts.metrics.node_cost.get(&["w-1"]), charged);
}

/// The decision log and the audit record say how the request ended: the member that served, the
/// targets tried first, the status and code.
#[tokio::test]
async fn the_decision_and_its_audit_record_show_the_target_that_served_and_the_fallbacks() {
    let dir = tempfile_dir();
    let path = dir.join("audit.jsonl");
    let worker = local(Script::Refuse(BackendError::Full(
        "worker-a: every slot is busy".into(),
    )));
    let cloud = cloud(answer(&["from", " cloud"]));
    let app = app_with_policy(vec![worker.clone(), cloud.clone()], auto_policy());
    let log = sluice_audit::AuditLog::open(&path, sluice_audit::AuditOptions::default()).unwrap();
    app.accounts.audit_into(sluice_audit::spawn_writer(log).unwrap());
    let (status, headers, _) = send(
        &app,
        post(r#"{"model":"auto","messages":[{"role":"user","content":"hello"}]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-sluice-decision-id"].to_str().unwrap().to_owned();
    let (status, e) = admin_get(&app, &format!("/admin/decisions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        e["ended"],
        json!({
            "backend": "cloud-a",
            "route": "cloud",
            "model": "gpt-4o-mini",
            "fallbacks": [{"backend": "worker-a", "model": "local-model", "code": "backend_overloaded"}],
            "status": 200,
            "code": "ok",
        })
    );
    let (_, list) = admin_get(&app, "/admin/decisions").await;
    assert_eq!(list["decisions"][0]["served_by"], "cloud-a");

    // Nothing up: the last target tried and the 503 are recorded too.
    let worker = local(Script::Refuse(BackendError::Unavailable("worker-a: down".into())));
    let app2 = app_with(vec![worker], Limits::default());
    let (_, headers, _) = send(
        &app2,
        post(r#"{"model":"local-model","messages":[{"role":"user","content":"hello"}]}"#),
    )
    .await;
    let id2 = headers["x-sluice-decision-id"].to_str().unwrap().to_owned();
    let (_, e) = admin_get(&app2, &format!("/admin/decisions/{id2}")).await;
    assert_eq!(
        (&e["ended"]["backend"], &e["ended"]["status"], &e["ended"]["code"]),
        (&json!("worker-a"), &json!(503), &json!("backend_unavailable"))
    );

    app.accounts.audit().unwrap().flush();
    let text = std::fs::read_to_string(&path).unwrap();
    let record: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(record["decision_id"], id);
    assert_eq!(record["backend"], "cloud-a");
    assert_eq!(record["fallbacks"], json!(["worker-a"]));
    assert_eq!((&record["status"], &record["code"]), (&json!(200), &json!("ok")));
    let _ = std::fs::remove_dir_all(dir);
}

/// A cloud stream whose client asked for usage gets it in a last chunk without choices, under the
/// upstream's id, and `"usage": null` on the others, as OpenAI sends them.
#[tokio::test]
async fn cloud_usage_is_shown_when_the_client_asks_for_it() {
    let events = vec![
        Ok(ChatEvent::Chunk(
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
        )),
        Ok(ChatEvent::Finished {
            finish_reason: "stop".into(),
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
            },
        }),
    ];
    let app = app_with(vec![cloud(Script::Answer(events))], Limits::default());
    let body = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, text) = send(&app, post(body)).await;
    assert_eq!(status, StatusCode::OK);
    let frames: Vec<&str> = text
        .as_str()
        .unwrap()
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(frames.len(), 3, "{frames:?}");
    let first: Value = serde_json::from_str(&frames[0][6..]).unwrap();
    assert_eq!(first["usage"], Value::Null);
    assert!(first.as_object().unwrap().contains_key("usage"));
    let usage: Value = serde_json::from_str(&frames[1][6..]).unwrap();
    assert_eq!((&usage["id"], &usage["created"]), (&json!("c1"), &json!(7)));
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 4);
    assert_eq!(frames[2], "data: [DONE]");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-gw-{}", super::ids::new_id("t")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn an_admin_token_guards_every_admin_route_but_metrics_and_health() {
    let mut c = config(Limits::default());
    c.admin_token = Some(crate::auth::AdminToken(hash_key("adm-s3cret")));
    let app = App::new(
        c,
        Fleet {
            backends: vec![local(answer(&["hi"])) as Arc<dyn Backend>],
        },
        Arc::new(PolicyEngine::default()),
        prometheus::Registry::new(),
    )
    .unwrap();
    let get = |path: &'static str, auth: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut r = HttpRequest::get(path);
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let response = admin_router(app)
                .oneshot(r.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let www = response.headers().get("www-authenticate").cloned();
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            (status, www, String::from_utf8_lossy(&body).into_owned())
        }
    };
    for path in [
        "/admin/backends",
        "/admin/decisions",
        "/admin/summary",
        "/admin/tenants",
    ] {
        let (status, www, body) = get(path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(www.unwrap(), "Bearer");
        assert!(body.contains("invalid_admin_token"), "{body}");
        let (status, _, _) = get(path, Some("Bearer wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = get(path, Some("Bearer adm-s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // The dashboard page holds no figures: it sends the token from its URL's fragment for them.
    for path in ["/metrics", "/healthz", "/dashboard"] {
        let (status, _, _) = get(path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}
