//! The cloud backend against the cloud simulator on a loopback socket: what goes upstream, which failures
//! are retried and how often, and that every wait ends.

use sluice_simcloud::{ScriptStep, Sim, SimConfig};

use super::*;
use crate::api::parse_chat_request;

async fn sim(config: SimConfig) -> (Sim, String) {
    let sim = Sim::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sluice_simcloud::serve(
        listener,
        sim.clone(),
        futures_util::future::pending(),
    ));
    (sim, format!("http://{addr}/v1"))
}

fn backend(base_url: &str, max_retries: u32, timeout: Duration) -> CloudBackend {
    CloudBackend::new(CloudConfig {
        name: "sim".into(),
        api: CloudApi::OpenAi,
        base_url: base_url.into(),
        api_key: Some("sk-upstream".into()),
        models: vec![CloudModel {
            kind: Default::default(),
            id: "gpt-4o-mini".into(),
            deployment: None,
            prices: Prices {
                input_usd_per_mtok: 0.15,
                output_usd_per_mtok: 0.6,
            },
        }],
        clearance: Level::Internal,
        connect_timeout: Duration::from_secs(1),
        timeout,
        max_retries,
        retry_backoff: Duration::from_millis(20),
        breaker: BreakerConfig {
            failures: 1000,
            ..BreakerConfig::default()
        },
        offline: false,
    })
    .unwrap()
}

fn request(extra: &str) -> ChatRequest {
    parse_chat_request(
        format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
            .as_bytes(),
    )
    .unwrap()
}

fn context(seconds: f64) -> DispatchContext {
    DispatchContext {
        request_id: "r".into(),
        deadline: Instant::now() + Duration::from_secs_f64(seconds),
    }
}

async fn events(d: Dispatched) -> Vec<Result<ChatEvent, BackendError>> {
    d.events.collect().await
}

#[tokio::test]
async fn the_body_goes_upstream_whole_with_the_backend_key() {
    let (sim, url) = sim(SimConfig {
        api_key: Some("sk-upstream".into()),
        ..SimConfig::default()
    })
    .await;
    let b = backend(&url, 0, Duration::from_secs(5));
    let r = request(r#","max_tokens":3,"response_format":{"type":"json_object"},"metadata":{"k":"v"}"#);
    let got = events(b.dispatch(&r, &context(5.0)).await.unwrap()).await;
    assert!(matches!(&got[0], Ok(ChatEvent::Completion(v)) if v["choices"][0]["finish_reason"] == "length"));
    assert_eq!(
        got[1],
        Ok(ChatEvent::Finished {
            finish_reason: "length".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 3
            }
        })
    );
    let seen = sim.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Value::Object(r.body.clone()));
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-upstream"));
}

#[tokio::test]
async fn streams_always_ask_for_usage_and_report_it() {
    let (sim, url) = sim(SimConfig::default()).await;
    let b = backend(&url, 0, Duration::from_secs(5));
    let got = events(
        b.dispatch(&request(r#","stream":true,"max_tokens":4"#), &context(5.0))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        got.last(),
        Some(&Ok(ChatEvent::Finished {
            finish_reason: "length".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 4
            }
        }))
    );
    let chunks = got
        .iter()
        .filter(|e| matches!(e, Ok(ChatEvent::Chunk(_))))
        .count();
    // Role chunk, 4 tokens, finish chunk: the usage chunk asked for on the gateway's behalf is not
    // passed on (its figures are in `Finished`), and no chunk keeps a `usage` field.
    assert_eq!(chunks, 6);
    assert!(
        got.iter()
            .all(|e| !matches!(e, Ok(ChatEvent::Chunk(c)) if c.get("usage").is_some()))
    );
    assert_eq!(sim.recorded()[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn no_retry_happens_behind_the_configured_count() {
    let (sim, url) = sim(SimConfig::default()).await;
    sim.push_script(vec![ScriptStep::error(429), ScriptStep::error(429)]);
    let b = backend(&url, 0, Duration::from_secs(5));
    let e = b.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(matches!(e, BackendError::Full(_)), "{e:?}");
    assert_eq!(sim.recorded().len(), 1, "max_retries 0 means one attempt");
}

#[tokio::test]
async fn failures_are_retried_up_to_the_configured_count() {
    let (sim, url) = sim(SimConfig::default()).await;
    sim.push_script(vec![
        ScriptStep::error(500),
        ScriptStep::error(429),
        ScriptStep::normal(),
    ]);
    let b = backend(&url, 2, Duration::from_secs(5));
    let d = b.dispatch(&request(""), &context(5.0)).await.unwrap();
    assert_eq!(&*d.served_by, "sim");
    assert_eq!(sim.recorded().len(), 3);

    sim.push_script(vec![
        ScriptStep::error(502),
        ScriptStep::error(502),
        ScriptStep::error(502),
    ]);
    let e = b.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(matches!(e, BackendError::Failed(_)), "{e:?}");
    assert_eq!(sim.recorded().len(), 6, "three more attempts, then the error");
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_the_providers_message() {
    let (sim, url) = sim(SimConfig::default()).await;
    sim.push_script(vec![ScriptStep::error(400).with_message("bad things")]);
    let b = backend(&url, 3, Duration::from_secs(5));
    match b.dispatch(&request(""), &context(5.0)).await.unwrap_err() {
        BackendError::Upstream {
            status,
            message,
            code,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(code.as_deref(), Some("sim_scripted"));
            assert!(message.contains("bad things"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.recorded().len(), 1);
}

#[tokio::test]
async fn the_key_never_leaves_in_an_error() {
    let (sim, url) = sim(SimConfig::default()).await;
    sim.push_script(vec![
        ScriptStep::error(401).with_message("Incorrect API key provided: sk-upstream"),
    ]);
    let b = backend(&url, 0, Duration::from_secs(5));
    let e = b.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(matches!(e, BackendError::Failed(_)), "{e:?}");
    assert!(!e.to_string().contains("sk-upstream"), "{e}");
}

#[tokio::test]
async fn a_null_stream_options_still_gets_usage() {
    let (sim, url) = sim(SimConfig::default()).await;
    let b = backend(&url, 0, Duration::from_secs(5));
    let got = events(
        b.dispatch(&request(r#","stream":true,"stream_options":null"#), &context(5.0))
            .await
            .unwrap(),
    )
    .await;
    assert!(
        matches!(got.last(), Some(Ok(ChatEvent::Finished { usage, .. })) if usage.completion_tokens > 0),
        "{got:?}"
    );
    assert_eq!(sim.recorded()[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_retry_that_would_pass_the_deadline_is_not_made() {
    let (sim, url) = sim(SimConfig::default()).await;
    sim.push_script(vec![
        ScriptStep::error(503),
        ScriptStep::error(503),
        ScriptStep::error(503),
    ]);
    let mut b = backend(&url, 5, Duration::from_secs(5));
    b.config.retry_backoff = Duration::from_secs(2);
    let started = Instant::now();
    let e = b.dispatch(&request(""), &context(1.0)).await.unwrap_err();
    assert!(matches!(e, BackendError::Failed(_)), "{e:?}");
    assert_eq!(sim.recorded().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_hanging_cloud_times_out_and_a_stalled_stream_ends_with_an_error() {
    let (sim, url) = sim(SimConfig::default()).await;
    let b = backend(&url, 0, Duration::from_millis(300));
    sim.push_script(vec![ScriptStep::hanging()]);
    assert!(matches!(
        b.dispatch(&request(""), &context(5.0)).await.unwrap_err(),
        BackendError::Timeout(_)
    ));
    sim.push_script(vec![ScriptStep::stalling(2)]);
    let got = events(
        b.dispatch(&request(r#","stream":true"#), &context(5.0))
            .await
            .unwrap(),
    )
    .await;
    assert!(
        matches!(got.last(), Some(Err(BackendError::Timeout(_)))),
        "{got:?}"
    );
    assert_eq!(b.members()[0].in_flight, 0);
}

#[tokio::test]
async fn an_unreachable_cloud_is_unavailable() {
    let b = backend("http://127.0.0.1:9/v1", 1, Duration::from_secs(1));
    let e = b.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(matches!(e, BackendError::Unavailable(_)), "{e:?}");
}

#[tokio::test]
async fn prices_and_models_come_from_the_configuration() {
    let b = backend("http://127.0.0.1:9/v1", 0, Duration::from_secs(1));
    assert!(b.serves("gpt-4o-mini") && !b.serves("gpt-4o"));
    assert_eq!(b.models()[0].prices.unwrap().output_usd_per_mtok, 0.6);
}

fn anthropic(base_url: &str, max_retries: u32) -> CloudBackend {
    let mut b = backend(base_url, max_retries, Duration::from_secs(5));
    b.config.api = CloudApi::Anthropic {
        version: "2023-06-01".into(),
        default_max_tokens: 7,
    };
    b
}

#[tokio::test]
async fn anthropics_overloaded_is_retried_its_refusals_are_not_and_its_key_never_shows() {
    let (sim, url) = sim(SimConfig {
        api_key: Some("sk-upstream".into()),
        ..SimConfig::default()
    })
    .await;
    let b = anthropic(&url, 2);
    // 529 (overloaded), then an answer: retried, and the answer read back as OpenAI's.
    sim.push_script(vec![ScriptStep::error(529), ScriptStep::normal()]);
    let got = events(b.dispatch(&request(""), &context(5.0)).await.unwrap()).await;
    assert_eq!(
        got.last(),
        Some(&Ok(ChatEvent::Finished {
            finish_reason: "length".into(),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 7
            }
        })),
        "{got:?}"
    );
    let seen = sim.recorded();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|q| q.path == "/v1/messages"));
    assert_eq!(
        seen[1].headers.get("x-api-key").map(String::as_str),
        Some("sk-upstream")
    );
    assert_eq!(seen[1].body["max_tokens"], 7, "the default max_tokens");
    // A 400 is the client's to see, not retried.
    sim.clear_recorded();
    sim.push_script(vec![ScriptStep::error(400).with_message("bad thing")]);
    let e = b.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Upstream { status: 400, message, code: Some(c), .. } if message.contains("bad thing") && c == "invalid_request_error"),
        "{e:?}"
    );
    assert_eq!(sim.recorded().len(), 1);
    // Wrong credentials: said, without the provider's message.
    let mut wrong = anthropic(&url, 2);
    wrong.config.api_key = Some("sk-wrong".into());
    let e = wrong.dispatch(&request(""), &context(5.0)).await.unwrap_err();
    assert!(
        e.to_string().contains("refused the gateway's credentials (401)"),
        "{e}"
    );
    assert!(!e.to_string().contains("sk-"), "{e}");
}

#[tokio::test]
async fn azure_deployments_get_their_url_version_and_key_and_failures_are_retried() {
    let (sim, url) = sim(SimConfig {
        api_key: Some("sk-upstream".into()),
        ..SimConfig::default()
    })
    .await;
    let root = url.trim_end_matches("/v1").to_owned();
    let mut config = backend(&root, 2, Duration::from_secs(5)).config.clone();
    config.api = CloudApi::Azure {
        api_version: "2024-10-21".into(),
    };
    config.models[0].id = "mini".into();
    config.models[0].deployment = Some("gpt-4o-mini".into());
    let b = CloudBackend::new(config.clone()).unwrap();
    sim.push_script(vec![ScriptStep::error(429), ScriptStep::normal()]);
    let r = request(r#","max_tokens":2"#).with_model("mini");
    let got = events(b.dispatch(&r, &context(5.0)).await.unwrap()).await;
    assert!(
        matches!(got.last(), Some(Ok(ChatEvent::Finished { .. }))),
        "{got:?}"
    );
    let seen = sim.recorded();
    assert_eq!(seen.len(), 2, "the 429 is retried");
    assert!(
        seen.iter()
            .all(|q| q.path == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21")
    );
    assert_eq!(
        seen[1].headers.get("api-key").map(String::as_str),
        Some("sk-upstream")
    );
    assert_eq!(seen[1].authorization, None);
    // A deployment the resource does not have: Azure's 404, the client's to see, not retried.
    config.models[0].deployment = Some("gone".into());
    let b = CloudBackend::new(config).unwrap();
    sim.clear_recorded();
    let e = b.dispatch(&r, &context(5.0)).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Upstream { status: 404, code: Some(c), .. } if c == "DeploymentNotFound"),
        "{e:?}"
    );
    assert_eq!(sim.recorded().len(), 1);
}
