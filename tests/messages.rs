//! `/v1/messages` (the Anthropic Messages API) end to end with the official Anthropic Python SDK, and the
//! Anthropic and Azure OpenAI cloud APIs with the OpenAI SDK: a real gateway, a real worker, and the cloud
//! stand-in speaking all three wire formats (OpenAI's, Anthropic's, Azure OpenAI's) with one key. What
//! the stand-in received (path, headers, body), the metrics and the audit log are checked exactly.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{DEMO_MODEL_ID, Gateway, SimCloud, TEST_KEY, Worker, anthropic_sdk, metric};
use serde_json::{Value, json};

const SIM_KEY: &str = "sk-sim-upstream";

fn config(worker: &Worker, sim: &SimCloud, audit: &std::path::Path) -> String {
    let root = format!("http://{}", sim.addr);
    format!(
        "api_keys:\n  - tenant: acme\n    key_env: SLUICE_TEST_KEY\n\
         local:\n  workers:\n    - name: w0\n      address: {grpc}\n\
         clouds:\n  \
         - name: sim\n    base_url: {root}/v1\n    api_key_env: SIM_KEY\n    models:\n      \
           - {{ id: gpt-4o-mini, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60 }}\n  \
         - name: claude\n    api: anthropic\n    base_url: {root}/v1\n    api_key_env: SIM_KEY\n    retry_backoff_ms: 50\n    models:\n      \
           - {{ id: claude-sonnet-4-5, input_usd_per_mtok: 3, output_usd_per_mtok: 15 }}\n  \
         - name: azure\n    api: azure\n    api_version: \"2024-10-21\"\n    base_url: {root}\n    api_key_env: SIM_KEY\n    models:\n      \
           - {{ id: gpt-4o-mini-azure, deployment: gpt-4o-mini, input_usd_per_mtok: 0.165, output_usd_per_mtok: 0.66 }}\n      \
           - {{ id: embed-azure, deployment: text-embedding-3-small, kind: embedding, input_usd_per_mtok: 0.022 }}\n\
         policy:\n  rules:\n    - name: sensitive-stays-local\n      when: {{ min_level: confidential, model: claude-sonnet-4-5 }}\n      then: {{ substitute: {DEMO_MODEL_ID} }}\n\
         audit:\n  path: {audit}\n",
        grpc = worker.grpc,
        audit = audit.display(),
    )
}

fn start() -> (Worker, SimCloud, Gateway, tempfile::TempDir) {
    let worker = Worker::start(&[]);
    let sim = SimCloud::start(&[
        "--api-key",
        SIM_KEY,
        "--model",
        "gpt-4o-mini=0.15:0.60",
        "--model",
        "claude-sonnet-4-5=3:15",
        "--embedding-model",
        "text-embedding-3-small=0.02:1536",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &config(&worker, &sim, &dir.path().join("audit.jsonl")),
        &[("SIM_KEY", SIM_KEY), ("SLUICE_TEST_KEY", TEST_KEY)],
    );
    (worker, sim, gateway, dir)
}

fn texts(content: &Value) -> String {
    content
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"].as_str().unwrap())
        .collect()
}

/// Picodollars of an answer at prices in USD per million tokens.
fn pico(usage: &Value, (input, output): (u64, u64)) -> u64 {
    usage["input_tokens"].as_u64().unwrap() * input + usage["output_tokens"].as_u64().unwrap() * output
}

#[tokio::test(flavor = "multi_thread")]
async fn the_messages_api_is_served_locally_and_by_both_kinds_of_cloud() {
    let (worker, sim, mut gateway, dir) = start();
    worker.wait_serving().await;
    gateway.wait_ready("local");
    let r = anthropic_sdk(&gateway, "messages");

    // Local: the chat model's own answer, as a message, whole and streamed.
    let local = &r["local"];
    assert_eq!(local["headers"]["x-sluice-route"], "local", "{local}");
    assert_eq!(local["headers"]["request-id"], local["headers"]["x-request-id"]);
    assert_eq!(
        (&local["type"], &local["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert!(local["id"].as_str().unwrap().starts_with("msg_"), "{local}");
    assert_eq!(local["model"], DEMO_MODEL_ID);
    assert_eq!(texts(&local["content"]), "The capital of Japan is Tokyo.");
    assert_eq!(local["stop_reason"], "end_turn");
    let stream = &r["local_stream"];
    assert_eq!(stream["text"], "The capital of Japan is Tokyo.", "{stream}");
    assert_eq!(stream["final"]["usage"], local["usage"], "{stream}");
    let types: Vec<&str> = stream["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let deltas = types.iter().filter(|t| **t == "content_block_delta").count();
    assert!(deltas >= 2, "{types:?}");
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(types, expected);
    assert_eq!(r["local_system"]["headers"]["x-sluice-route"], "local");

    // An OpenAI-compatible cloud: its chat completion answered as a message, cut at max_tokens.
    let openai = &r["openai_cloud"];
    assert_eq!(openai["headers"]["x-sluice-backend"], "sim", "{openai}");
    assert_eq!(texts(&openai["content"]), "This is a simulated answer");
    assert_eq!(openai["stop_reason"], "max_tokens");
    assert_eq!(openai["usage"], json!({"input_tokens": 2, "output_tokens": 5}));
    assert_eq!(r["openai_cloud_stream"]["text"], "This is a simulated answer");
    assert_eq!(r["openai_cloud_stream"]["final"]["stop_reason"], "max_tokens");
    assert_eq!(r["openai_cloud_stream"]["final"]["usage"], openai["usage"]);
    let tool = &r["openai_cloud_tool"];
    assert_eq!(tool["stop_reason"], "tool_use", "{tool}");
    assert_eq!(tool["content"][0]["type"], "tool_use");
    assert_eq!(tool["content"][0]["name"], "get_weather");
    assert_eq!(tool["content"][0]["input"], json!({"city": "sim"}));

    // The Anthropic cloud: the same answer through its own wire format both ways.
    let claude = &r["claude"];
    assert_eq!(claude["headers"]["x-sluice-backend"], "claude", "{claude}");
    assert_eq!(claude["model"], "claude-sonnet-4-5");
    assert_eq!(texts(&claude["content"]), "This is a simulated answer");
    assert_eq!(claude["stop_reason"], "max_tokens");
    assert_eq!(claude["usage"]["output_tokens"], 5);
    assert_eq!(
        r["claude_whole"]["stop_reason"], "end_turn",
        "{}",
        r["claude_whole"]
    );
    assert_eq!(r["claude_whole"]["usage"]["output_tokens"], 16);
    let claude_stream = &r["claude_stream"];
    assert_eq!(
        claude_stream["text"], "This is a simulated answer",
        "{claude_stream}"
    );
    // "Hello" alone (the whole answer above also had a system prompt): 2 tokens in, 5 out.
    assert_eq!(
        claude_stream["final"]["usage"],
        json!({"input_tokens": 2, "output_tokens": 5})
    );
    let claude_tool = &r["claude_tool"];
    assert_eq!(claude_tool["stop_reason"], "tool_use", "{claude_tool}");
    assert_eq!(claude_tool["content"][0]["input"], json!({"city": "sim"}));
    let tool_stream = &r["claude_tool_stream"];
    assert_eq!(tool_stream["final"]["stop_reason"], "tool_use", "{tool_stream}");
    assert_eq!(
        tool_stream["final"]["content"][0]["input"],
        json!({"city": "sim"})
    );
    assert!(
        !tool_stream["json_parts"].as_array().unwrap().is_empty(),
        "{tool_stream}"
    );
    assert_eq!(
        r["claude_tool_result"]["stop_reason"], "max_tokens",
        "{}",
        r["claude_tool_result"]
    );

    // A card number asked of the Anthropic model is answered by the local one, and says so.
    let card = &r["card"];
    assert_eq!(card["headers"]["x-sluice-route"], "local", "{card}");
    assert_eq!(card["headers"]["x-sluice-substituted-for"], "claude-sonnet-4-5");
    assert_eq!(card["model"], DEMO_MODEL_ID);

    // Errors in Anthropic's shape, raised by the SDK as the classes Anthropic's API would give.
    assert_eq!(r["top_k"]["status"], 400, "{}", r["top_k"]);
    assert_eq!(r["top_k"]["class"], "BadRequestError");
    assert_eq!(r["top_k"]["body"]["type"], "error");
    assert_eq!(r["top_k"]["body"]["error"]["type"], "invalid_request_error");
    assert_eq!(r["top_k"]["body"]["error"]["param"], "top_k");
    assert_eq!(
        r["unknown_model"]["class"], "NotFoundError",
        "{}",
        r["unknown_model"]
    );
    assert_eq!(r["unknown_model"]["body"]["error"]["type"], "not_found_error");
    assert_eq!(r["bad_key"]["class"], "AuthenticationError", "{}", r["bad_key"]);
    assert_eq!(r["bad_key"]["body"]["error"]["type"], "authentication_error");
    assert_eq!(r["local_tool"]["status"], 400, "{}", r["local_tool"]);
    assert_eq!(r["local_tool"]["body"]["error"]["code"], "unsupported_parameter");
    assert_eq!(r["no_version"]["status"], 400);
    assert_eq!(r["no_version"]["body"]["error"]["param"], "anthropic-version");
    let models: Vec<&str> = r["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        DEMO_MODEL_ID,
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "gpt-4o-mini-azure",
        "embed-azure",
    ] {
        assert!(models.contains(&id), "{id} not in {models:?}");
    }

    // Passed on as it came, Anthropic's own answer comes back as it is: the stop sequence it hit.
    let cached = &r["claude_cached"];
    assert_eq!(cached["stop_reason"], "stop_sequence", "{cached}");
    assert_eq!(cached["stop_sequence"], "simulated");
    assert_eq!(texts(&cached["content"]), "This is a ");
    let types: Vec<&str> = claude_stream["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut expected = vec!["message_start", "content_block_start"];
    expected.extend(std::iter::repeat_n("content_block_delta", 5));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(types, expected);

    // What reached the stand-in: on /v1/messages, the client's own bodies (its string content, its caching
    // hint) with the key in x-api-key; OpenAI's format on /v1/chat/completions; never the card number.
    let received = sim.requests();
    assert!(
        !serde_json::to_string(&received).unwrap().contains("4111"),
        "the card number left"
    );
    let at = |path: &str| received.iter().filter(|q| q["path"] == path).collect::<Vec<_>>();
    let anthropic = at("/v1/messages");
    assert_eq!(anthropic.len(), 7, "{received:?}");
    for q in &anthropic {
        assert_eq!(q["headers"]["x-api-key"], SIM_KEY, "{q}");
        assert_eq!(q["headers"]["anthropic-version"], "2023-06-01");
        assert!(q["authorization"].is_null(), "{q}");
    }
    assert_eq!(
        anthropic[0]["body"],
        json!({"model": "claude-sonnet-4-5", "max_tokens": 5, "system": "Be brief.", "stop_sequences": ["zzz"],
               "messages": [{"role": "user", "content": "Hello"}]})
    );
    assert_eq!(anthropic[2]["body"]["stream"], true);
    assert_eq!(anthropic[3]["body"]["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        anthropic[3]["body"]["tools"][0],
        json!({"name": "get_weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
    );
    assert_eq!(
        anthropic[5]["body"]["messages"],
        json!([
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "4 C, rain"}]},
        ])
    );
    assert_eq!(
        anthropic[6]["body"]["system"],
        json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    );
    let openai_chat = at("/v1/chat/completions");
    assert_eq!(openai_chat.len(), 3, "{received:?}");
    assert_eq!(openai_chat[0]["authorization"], format!("Bearer {SIM_KEY}"));
    assert_eq!(openai_chat[0]["body"]["max_tokens"], 5);

    // Priced at each model's list price, to the picodollar.
    let claude_keys = [
        "claude",
        "claude_whole",
        "claude_tool",
        "claude_tool_result",
        "claude_cached",
    ];
    let claude_streams = ["claude_stream", "claude_tool_stream"];
    let claude_pico: u64 = claude_keys
        .iter()
        .map(|k| pico(&r[k]["usage"], (3_000_000, 15_000_000)))
        .chain(
            claude_streams
                .iter()
                .map(|k| pico(&r[k]["final"]["usage"], (3_000_000, 15_000_000))),
        )
        .sum();
    let metrics = gateway.scrape();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_cost_usd_total{backend="claude",route="cloud"}"#
        ),
        Some(claude_pico as f64 / 1e12),
        "{metrics}"
    );
    let sim_pico: u64 = pico(&r["openai_cloud"]["usage"], (150_000, 600_000))
        + pico(&r["openai_cloud_stream"]["final"]["usage"], (150_000, 600_000))
        + pico(&r["openai_cloud_tool"]["usage"], (150_000, 600_000));
    assert_eq!(
        metric(&metrics, r#"sluice_cost_usd_total{backend="sim",route="cloud"}"#),
        Some(sim_pico as f64 / 1e12),
        "{metrics}"
    );

    // The audit log: every /v1/messages decision says so, with its route and exact cost, and no text.
    assert!(gateway.terminate().success());
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        !text.contains("4111") && !text.contains("Oslo"),
        "the audit log holds no request text"
    );
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_id = |k: &str| {
        let id = r[k]["headers"]["x-sluice-decision-id"].as_str().unwrap();
        records
            .iter()
            .find(|rec| rec["decision_id"] == id)
            .unwrap_or_else(|| panic!("no record for {k}"))
    };
    let rec = by_id("claude");
    assert_eq!(rec["endpoint"], "messages");
    assert_eq!(
        (&rec["route"], &rec["backend"]),
        (&json!("cloud"), &json!("claude"))
    );
    assert_eq!(
        rec["cost_usd"].as_f64(),
        Some(pico(&r["claude"]["usage"], (3_000_000, 15_000_000)) as f64 / 1e12)
    );
    let rec = by_id("card");
    assert_eq!(
        (&rec["route"], &rec["endpoint"]),
        (&json!("local"), &json!("messages"))
    );
    assert_eq!(rec["findings"], json!(["payment_card"]));
    assert!(records.iter().all(|rec| rec["endpoint"] == "messages"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn azure_and_anthropic_clouds_serve_chat_completions_in_their_own_wire_formats() {
    let (worker, sim, gateway, _dir) = start();
    worker.wait_serving().await;
    gateway.wait_ready("local");
    let r = anthropic_sdk(&gateway, "clouds");

    // Azure: the deployment's URL, api-version and api-key; the answer names the configured model.
    let azure = &r["azure"];
    assert_eq!(azure["headers"]["x-sluice-backend"], "azure", "{azure}");
    assert_eq!(azure["content"], "This is a simulated answer");
    assert_eq!(azure["finish_reason"], "length");
    assert_eq!(
        r["azure_stream"]["content"], "This is a simulated answer",
        "{}",
        r["azure_stream"]
    );
    assert_eq!(r["azure_stream"]["usage"], azure["usage"]);
    assert_eq!(
        r["azure_embeddings"]["dims"],
        json!([1536, 1536]),
        "{}",
        r["azure_embeddings"]
    );
    // Anthropic's API behind chat completions: text, streams and tool calls in OpenAI's shapes.
    let claude = &r["claude"];
    assert_eq!(claude["headers"]["x-sluice-backend"], "claude", "{claude}");
    assert_eq!(claude["content"], "This is a simulated answer");
    assert_eq!(claude["finish_reason"], "length");
    assert_eq!(claude["usage"]["completion_tokens"], 5);
    assert_eq!(
        r["claude_stream"]["content"], claude["content"],
        "{}",
        r["claude_stream"]
    );
    assert_eq!(r["claude_stream"]["usage"], claude["usage"]);
    let tool = &r["claude_tool"];
    assert_eq!(tool["finish_reason"], "tool_calls", "{tool}");
    assert_eq!(tool["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        tool["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"sim\"}"
    );
    // A chat field Anthropic's API has no equivalent for is refused, naming it, not dropped.
    assert_eq!(r["claude_seed"]["status"], 400, "{}", r["claude_seed"]);
    assert_eq!(r["claude_seed"]["code"], "unsupported_parameter");
    assert!(r["claude_seed"]["message"].as_str().unwrap().contains("`seed`"));

    let received = sim.requests();
    let azure_chat: Vec<&Value> = received
        .iter()
        .filter(|q| q["path"] == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21")
        .collect();
    assert_eq!(azure_chat.len(), 2, "{received:?}");
    for q in &azure_chat {
        assert_eq!(q["headers"]["api-key"], SIM_KEY, "{q}");
        assert!(q["authorization"].is_null(), "{q}");
    }
    assert_eq!(azure_chat[1]["body"]["stream_options"]["include_usage"], true);
    assert_eq!(
        received
            .iter()
            .filter(|q| q["path"]
                == "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21")
            .count(),
        1,
        "{received:?}"
    );
    // Azure's list prices, not the OpenAI model's: 165,000 and 660,000 picodollars per token.
    let usage = &azure["usage"];
    let azure_pico = 2
        * (usage["prompt_tokens"].as_u64().unwrap() * 165_000
            + usage["completion_tokens"].as_u64().unwrap() * 660_000)
        + r["azure_embeddings"]["usage"]["prompt_tokens"].as_u64().unwrap() * 22_000;
    let metrics = gateway.scrape();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_cost_usd_total{backend="azure",route="cloud"}"#
        ),
        Some(azure_pico as f64 / 1e12),
        "{metrics}"
    );
}
