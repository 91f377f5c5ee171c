//! `/v1/embeddings` end to end, with the official OpenAI Python SDK: a real gateway, a real worker serving
//! all-MiniLM-L6-v2, and the cloud stand-in serving a cloud embedding model and a hosted copy of the local
//! one. What the stand-in received, the metrics and the audit log are checked exactly.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use common::{Gateway, SimCloud, Worker, ensure_embedding_model, metric, sdk};
use serde_json::Value;

fn norm(v: &Value) -> f64 {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt()
}

fn cosine(a: &Value, b: &Value) -> f64 {
    let dot: f64 = a
        .as_array()
        .unwrap()
        .iter()
        .zip(b.as_array().unwrap())
        .map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap())
        .sum();
    dot / (norm(a) * norm(b))
}

/// The stand-in's token count of a text: its characters over 4, rounded up, at least 1.
fn sim_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4).max(1)
}

const PUBLIC_TEXTS: [&str; 2] = [
    "The library opens at nine on weekdays.",
    "Quarterly revenue grew four percent.",
];

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_are_routed_by_policy_and_priced_both_ways() {
    ensure_embedding_model();
    let worker = Worker::start(&["--model", "all-minilm-l6-v2"]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[
        "--embedding-model",
        "text-embedding-3-small=0.02:1536",
        "--embedding-model",
        "all-minilm-l6-v2=0.01:384",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut gateway = Gateway::start(&format!(
        "local:\n  workers:\n    - name: w0\n      address: {}\n\
         clouds:\n  - name: sim\n    base_url: {}\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n      \
         - id: text-embedding-3-small\n        kind: embedding\n        input_usd_per_mtok: 0.02\n      \
         - id: all-minilm-l6-v2\n        kind: embedding\n        input_usd_per_mtok: 0.01\n\
         cost:\n  reference_model: {{ id: text-embedding-3-small, input_usd_per_mtok: 0.02, output_usd_per_mtok: 0 }}\n\
         policy:\n  models:\n    docs-embed:\n      members:\n        - {{ backend: local, model: all-minilm-l6-v2 }}\n        - {{ backend: sim, model: all-minilm-l6-v2 }}\n  \
         rules:\n    - name: sensitive-local-only\n      when: {{ min_level: confidential }}\n      then: {{ route: local }}\n\
         audit:\n  path: {}\n",
        worker.grpc,
        sim.base_url(),
        log.display()
    ));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "embeddings");

    // Local, as base64 (the SDK's default) and as floats: the same 384-dimensional unit vectors.
    let local = &r["local_base64"];
    assert_eq!(local["headers"]["x-sluice-route"], "local", "{local}");
    assert_eq!(local["headers"]["x-sluice-backend"], "w0");
    assert_eq!(local["model"], "all-minilm-l6-v2");
    assert_eq!(local["indices"], serde_json::json!([0, 1]));
    let vectors = local["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for (v, f) in vectors
        .iter()
        .zip(r["local_float"]["vectors"].as_array().unwrap())
    {
        assert_eq!(v.as_array().unwrap().len(), 384);
        assert!((norm(v) - 1.0).abs() < 1e-5);
        assert!(cosine(v, f) > 0.999_999, "base64 and float differ");
    }
    assert!(
        cosine(&vectors[0], &vectors[1]) < 0.9,
        "different texts, different vectors"
    );
    // Token ids of the model's own vocabulary read as the text they spell.
    let text = &r["local_text"]["vectors"][0];
    let ids = &r["local_ids"];
    assert_eq!(ids["headers"]["x-sluice-route"], "local");
    assert_eq!(
        ids["headers"]["x-sluice-sensitivity"], "restricted",
        "token ids cannot be scanned"
    );
    assert!(cosine(text, &ids["vectors"][0]) > 0.99999);
    assert_eq!(ids["usage"]["prompt_tokens"], 4, "[CLS] hello world [SEP]");

    // A card number is embedded locally even when the client prefers the cloud, and refused by the cloud
    // model (nothing may serve it there).
    let card = &r["local_card"];
    assert_eq!(card["headers"]["x-sluice-route"], "local");
    assert_eq!(card["headers"]["x-sluice-rule"], "sensitive-local-only");
    assert_eq!(card["model"], "all-minilm-l6-v2");
    for refused in ["cloud_card", "cloud_ids"] {
        assert_eq!(r[refused]["status"], 503, "{refused}: {}", r[refused]);
        assert_eq!(r[refused]["code"], "no_compliant_backend");
    }

    // The cloud model: its own vectors, shortened when asked.
    let cloud = &r["cloud_public"];
    assert_eq!(cloud["headers"]["x-sluice-route"], "cloud");
    assert_eq!(cloud["headers"]["x-sluice-backend"], "sim");
    assert_eq!(cloud["model"], "text-embedding-3-small");
    assert_eq!(cloud["vectors"][0].as_array().unwrap().len(), 1536);
    let public_tokens: u64 = PUBLIC_TEXTS.iter().map(|t| sim_tokens(t)).sum();
    assert_eq!(cloud["usage"]["prompt_tokens"], public_tokens);
    let short = &r["cloud_short"];
    assert_eq!(short["vectors"][0].as_array().unwrap().len(), 256);

    // The virtual model: one model in both places; public text goes where the client prefers, the card
    // stays local, and the answer names the model either way.
    let virtual_public = &r["virtual_public"];
    assert_eq!(virtual_public["headers"]["x-sluice-route"], "cloud");
    assert_eq!(virtual_public["model"], "all-minilm-l6-v2");
    let virtual_card = &r["virtual_card"];
    assert_eq!(virtual_card["headers"]["x-sluice-route"], "local");
    assert_eq!(virtual_card["model"], "all-minilm-l6-v2");
    // The local model's vector of the same public text, made by the worker for both requests.
    assert!(cosine(&virtual_card["vectors"][0], &vectors[0]) > 0.99999);

    // Errors a client can meet.
    let error = |k: &str| {
        (
            r[k]["status"].as_u64().unwrap(),
            r[k]["code"].as_str().unwrap().to_owned(),
        )
    };
    assert_eq!(
        error("chat_of_embedding_model"),
        (400, "model_not_supported".into())
    );
    assert_eq!(
        error("embedding_of_chat_model"),
        (400, "model_not_supported".into())
    );
    assert_eq!(error("local_dimensions"), (400, "invalid_value".into()));
    assert_eq!(error("too_long"), (400, "context_length_exceeded".into()));
    assert_eq!(error("empty"), (400, "invalid_value".into()));

    // What reached the cloud: the three public requests, nothing else (no card number, no token ids).
    let received = sim.requests();
    let embeddings: Vec<&Value> = received
        .iter()
        .map(|q| &q["body"])
        .filter(|b| b.get("input").is_some())
        .collect();
    assert_eq!(embeddings.len(), 3, "{received:?}");
    let all = serde_json::to_string(&received).unwrap();
    assert!(!all.contains("4111"), "the card number reached the cloud");
    assert!(!all.contains("7592"), "token ids reached the cloud");
    assert!(received.iter().all(|q| q["body"].get("messages").is_none()));

    // Cost: the cloud at list price (picodollars per token: 20,000 and 10,000), local answers at the
    // reference model's price too, and at their node time.
    let virtual_tokens = public_tokens;
    let cloud_pico = u128::from(public_tokens + sim_tokens(PUBLIC_TEXTS[1])) * 20_000
        + u128::from(virtual_tokens) * 10_000;
    let metrics = gateway.scrape();
    assert_eq!(
        metric(&metrics, r#"sluice_cost_usd_total{backend="sim",route="cloud"}"#),
        Some(cloud_pico as f64 / 1e12),
        "{metrics}"
    );
    let local_tokens: u64 = [
        "local_base64",
        "local_float",
        "local_card",
        "local_text",
        "local_ids",
        "virtual_card",
    ]
    .iter()
    .map(|k| r[k]["usage"]["prompt_tokens"].as_u64().unwrap())
    .sum();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_cloud_equivalent_cost_usd_total{backend="w0"}"#
        ),
        Some(f64::from(u32::try_from(local_tokens).unwrap()) * 20_000.0 / 1e12),
        "{metrics}"
    );
    let charged = metric(&metrics, r#"sluice_cost_usd_total{backend="w0",route="local"}"#).unwrap();
    assert!(charged > 0.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_tokens_total{backend="w0",direction="input",route="local"}"#
        ),
        Some(local_tokens as f64)
    );

    // The audit log: one record per decision, each saying it was an embeddings request, with the usage
    // and (for the cloud) the exact cost.
    assert!(gateway.terminate().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("4111"), "the audit log holds no request text");
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_id = |k: &str| {
        let id = r[k]["headers"]["x-sluice-decision-id"].as_str().unwrap();
        records
            .iter()
            .find(|rec| rec["decision_id"] == id)
            .unwrap_or_else(|| panic!("no record for {k}"))
    };
    let cloud_record = by_id("cloud_public");
    assert_eq!(cloud_record["endpoint"], "embeddings");
    assert_eq!(cloud_record["route"], "cloud");
    assert_eq!(cloud_record["prompt_tokens"], public_tokens);
    assert_eq!(cloud_record["completion_tokens"], 0);
    assert_eq!(
        cloud_record["cost_usd"].as_f64(),
        Some(public_tokens as f64 * 20_000.0 / 1e12)
    );
    let card_record = by_id("local_card");
    assert_eq!(card_record["route"], "local");
    assert_eq!(card_record["backend"], "w0");
    assert_eq!(card_record["served_model"], "all-minilm-l6-v2");
    assert_eq!(card_record["findings"], serde_json::json!(["payment_card"]));
    assert_eq!(
        card_record["prompt_tokens"],
        r["local_card"]["usage"]["prompt_tokens"]
    );
    assert_eq!(by_id("virtual_public")["served_model"], "all-minilm-l6-v2");
    // Every record but the chat request's says it was an embeddings request.
    let chat_id = &r["chat_of_embedding_model"]["headers"]["x-sluice-decision-id"];
    for record in &records {
        match &record["decision_id"] == chat_id {
            true => assert!(record.get("endpoint").is_none(), "{record}"),
            false => assert_eq!(record["endpoint"], "embeddings", "{record}"),
        }
    }
}

#[test]
fn policy_check_warns_of_a_virtual_model_mixing_embedding_models() {
    let dir = tempfile::tempdir().unwrap();
    let write = |members: &str| {
        let path = dir.path().join("embed.yaml");
        std::fs::write(
            &path,
            format!(
                "api_keys:\n  - tenant: acme\n    key_env: K\nlocal:\n  workers:\n    - name: w0\n      address: 127.0.0.1:50051\n\
                 clouds:\n  - name: sim\n    base_url: http://127.0.0.1:8090/v1\n    models:\n      \
                 - id: text-embedding-3-small\n        kind: embedding\n        input_usd_per_mtok: 0.02\n      \
                 - id: all-minilm-l6-v2\n        kind: embedding\n        input_usd_per_mtok: 0.01\n\
                 policy:\n  models:\n    docs-embed:\n      members:\n{members}"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::sluice_bin())
            .args(["policy", "check"])
            .arg(&path)
            .env("K", "k")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mixed = write(
        "        - { backend: local, model: all-minilm-l6-v2 }\n        - { backend: sim, model: text-embedding-3-small }\n",
    );
    assert!(
        mixed.contains("policy.models.docs-embed.members: virtual model `docs-embed` serves embeddings from different models (all-minilm-l6-v2, text-embedding-3-small)"),
        "{mixed}"
    );
    let same = write(
        "        - { backend: local, model: all-minilm-l6-v2 }\n        - { backend: sim, model: all-minilm-l6-v2 }\n",
    );
    assert!(
        !same.contains("serves embeddings from different models"),
        "{same}"
    );
    assert!(same.contains("valid;"), "{same}");
}
