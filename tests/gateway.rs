//! The gateway end to end: real processes (`sluice gateway`, `sluice worker` with the demo model,
//! `sluice sim-cloud` as the recording cloud), driven by the official OpenAI Python SDK
//! (tests/sdk/client.py).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{DEMO_MODEL_ID, Gateway, SimCloud, Worker, metric, sdk, sdk_command};
use serde_json::{Value, json};

/// The `local:` and `clouds:` keys for one worker and one simulated cloud.
fn backends(worker: &Worker, sim: &SimCloud, cloud_extra: &str) -> String {
    format!(
        "local:\n  workers:\n    - name: w0\n      address: {}\n  breaker:\n    failures: 2\n    cooldown_seconds: 30\n\
         clouds:\n  - name: sim\n    base_url: {}\n    retry_backoff_ms: 50\n{cloud_extra}    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n",
        worker.grpc,
        sim.base_url()
    )
}

/// Waits for a worker metric to reach `want`.
fn wait_metric(worker: &Worker, name: &str, want: f64, within: Duration) -> f64 {
    let until = Instant::now() + within;
    loop {
        let got = metric(&worker.scrape(), name).unwrap_or(f64::NAN);
        if got == want || Instant::now() >= until {
            return got;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_gets_local_and_cloud_answers_streamed_and_not() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "basic");

    assert_eq!(r["models"], json!(["gpt-4o-mini", DEMO_MODEL_ID]));

    let local = &r["local"];
    assert_eq!(local["content"], "The capital of Japan is Tokyo.");
    assert_eq!(local["finish_reason"], "stop");
    assert_eq!(local["headers"]["x-sluice-route"], "local");
    assert_eq!(local["headers"]["x-sluice-backend"], "w0");
    assert_eq!(local["headers"]["x-sluice-rule"], "default");
    assert_eq!(local["headers"]["x-sluice-sensitivity"], "public");
    assert!(
        local["headers"]["x-sluice-decision-id"]
            .as_str()
            .unwrap()
            .starts_with("dec_")
    );
    assert!(
        local["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    let prompt_tokens = local["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(local["usage"]["completion_tokens"], 7);

    let stream = &r["local_stream"];
    assert_eq!(stream["content"], "The capital of Japan is Tokyo.");
    assert_eq!(stream["content_type"], "text/event-stream");
    assert_eq!(stream["headers"]["x-sluice-route"], "local");
    assert_eq!(stream["ids"], 1, "every chunk of one answer has the same id");
    assert_eq!(
        stream["last_chunk_choices"], 0,
        "usage comes in a final chunk without choices"
    );
    assert_eq!(stream["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(stream["usage"]["completion_tokens"], 7);

    // The simulator's answers follow its documented token convention.
    let cloud = &r["cloud"];
    assert_eq!(cloud["headers"]["x-sluice-route"], "cloud");
    assert_eq!(cloud["headers"]["x-sluice-backend"], "sim");
    assert_eq!(cloud["content"], "This is a simulated answer");
    assert_eq!(cloud["finish_reason"], "length");
    assert_eq!(cloud["usage"]["completion_tokens"], 5);
    assert_eq!(r["cloud_stream"]["headers"]["x-sluice-route"], "cloud");
    assert_eq!(r["cloud_stream"]["usage"]["completion_tokens"], 16);
    assert_eq!(r["cloud_stream"]["last_chunk_choices"], 0);
    assert_eq!(
        r["cloud_stream_no_usage"]["usage"],
        Value::Null,
        "usage only for clients that ask"
    );
    assert_eq!(
        r["cloud_stream_no_usage"]["content"],
        r["cloud_stream"]["content"]
    );
    assert_eq!(r["declared"]["headers"]["x-sluice-sensitivity"], "confidential");

    // What the cloud received: the client's body, with usage requested on streams for metering.
    let seen = sim.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0]["body"]["max_tokens"], 5);
    assert_eq!(seen[0]["body"]["user"], "u-1");
    assert_eq!(seen[1]["body"]["stream_options"]["include_usage"], true);
    assert_eq!(seen[2]["body"]["stream_options"]["include_usage"], true);

    let m = gateway.scrape();
    let count = |labels: &str| metric(&m, &format!("sluice_requests_total{{{labels}}}")).unwrap_or(0.0);
    assert_eq!(
        count(&format!(
            r#"backend="w0",code="ok",model="{DEMO_MODEL_ID}",route="local",tenant="acme""#
        )),
        3.0
    );
    assert_eq!(
        count(r#"backend="sim",code="ok",model="gpt-4o-mini",route="cloud",tenant="acme""#),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            r#"sluice_tokens_total{backend="sim",direction="output",route="cloud"}"#
        ),
        Some(5.0 + 16.0 + 16.0)
    );
    assert_eq!(metric(&m, r#"sluice_backend_up{backend="w0"}"#), Some(1.0));

    // Each member's observed latency, for the policy engine and for operators.
    let (_, body) = common::http(gateway.admin, "GET", "/admin/backends", None);
    let v: Value = serde_json::from_str(&body).unwrap();
    let w0 = &v["backends"][0]["members"][0];
    assert_eq!(w0["member"]["name"], "w0");
    assert_eq!(w0["observed"]["requests"], 3);
    assert_eq!(w0["observed"]["errors"], 0);
    assert!(
        w0["observed"]["time_to_first_token_seconds"].as_f64().unwrap() > 0.0,
        "{w0}"
    );
    assert!(
        w0["observed"]["tokens_per_second"].as_f64().unwrap() > 1.0,
        "{w0}"
    );
    assert_eq!(v["backends"][1]["members"][0]["observed"]["requests"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_reach_the_sdk_in_openai_shape() {
    let worker = Worker::start(&[]);
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    worker.wait_serving().await;
    gateway.wait_ready("local");
    let r = sdk(&gateway, "errors");
    let check = |name: &str, status: u64, code: &str| {
        assert_eq!(
            (r[name]["status"].as_u64(), r[name]["code"].as_str()),
            (Some(status), Some(code)),
            "{name}: {}",
            r[name]
        );
    };
    check("wrong_key", 401, "invalid_api_key");
    check("unknown_model", 404, "model_not_found");
    check("n2", 400, "invalid_value");
    check("no_messages", 400, "invalid_value");
    check("hot", 400, "invalid_value");
    check("local_tools", 400, "unsupported_parameter");
    check("restricted_to_cloud", 503, "no_compliant_backend");
    assert_eq!(
        r["restricted_to_cloud"]["headers"]["x-sluice-sensitivity"],
        "restricted"
    );
    assert!(sim.requests().is_empty(), "no refused request reached the cloud");
}

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_requests_never_reach_the_cloud() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "sensitive");
    for case in [
        "card_in_content",
        "aws_key_in_system",
        "card_in_tool_args",
        "card_with_public_header",
    ] {
        assert_eq!(r[case]["status"], 503, "{case}: {}", r[case]);
        assert_eq!(r[case]["code"], "no_compliant_backend", "{case}");
        assert_eq!(r[case]["headers"]["x-sluice-sensitivity"], "restricted", "{case}");
    }
    assert_eq!(r["local_card"]["headers"]["x-sluice-route"], "local");
    assert_eq!(r["local_card"]["headers"]["x-sluice-sensitivity"], "restricted");
    assert_eq!(r["benign"]["headers"]["x-sluice-route"], "cloud");
    let seen = sim.requests();
    assert_eq!(seen.len(), 1, "only the benign request reached the cloud");
    assert_eq!(
        seen[0]["body"]["messages"][0]["content"],
        "What is the capital of Japan?"
    );
}

/// The policy `sluice up` runs with: sensitive requests for the cloud model are served by the local one.
const SUBSTITUTE_POLICY: &str = "policy:\n  rules:\n    - name: sensitive-stays-local\n      when: { min_level: confidential, model: gpt-4o-mini }\n      then: { substitute: smollm2-135m-instruct }\n";

/// Every place a request carries text, each asked of the cloud model.
const POLICY_CASES: [&str; 9] = [
    "content",
    "content_parts",
    "system",
    "name",
    "tool_call_arguments",
    "tool_definition",
    "stop",
    "content_with_lying_headers",
    "system_with_lying_headers",
];

#[tokio::test(flavor = "multi_thread")]
async fn sensitive_requests_are_served_locally_or_refused_and_never_reach_the_cloud() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!("{}{SUBSTITUTE_POLICY}", backends(&worker, &sim, "")));
    gateway.wait_ready("local");

    // The worker up: each is served by the local model, and says so. Tool definitions are the one thing
    // the local model cannot take: refused, not sent to the cloud.
    let r = sdk(&gateway, "policy");
    for case in POLICY_CASES {
        let c = &r[case];
        if case == "tool_definition" {
            assert_eq!(
                (&c["status"], &c["code"]),
                (&json!(400), &json!("unsupported_parameter")),
                "{case}: {c}"
            );
            continue;
        }
        assert_eq!(c["status"], 200, "{case}: {c}");
        assert_eq!(c["headers"]["x-sluice-route"], "local", "{case}: {c}");
        assert_eq!(c["headers"]["x-sluice-rule"], "sensitive-stays-local", "{case}");
        assert_eq!(c["headers"]["x-sluice-substituted-for"], "gpt-4o-mini", "{case}");
        assert_eq!(c["headers"]["x-sluice-model"], DEMO_MODEL_ID, "{case}");
        assert_eq!(c["model"], DEMO_MODEL_ID, "{case}");
    }
    assert_eq!(
        r["content_with_lying_headers"]["headers"]["x-sluice-sensitivity"],
        "restricted"
    );
    assert_eq!(r["benign"]["headers"]["x-sluice-route"], "cloud");
    assert_eq!(
        sim.requests().len(),
        1,
        "only the benign request reached the cloud"
    );

    // The worker killed: nowhere allowed is up, so 503 no_compliant_backend; the cloud still gets none.
    worker.signal("KILL");
    let until = Instant::now() + Duration::from_secs(10);
    while metric(&gateway.scrape(), r#"sluice_backend_up{backend="w0"}"#) != Some(0.0) {
        assert!(Instant::now() < until, "w0 still up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = sdk(&gateway, "policy");
    for case in POLICY_CASES {
        let c = &r[case];
        let want = if case == "tool_definition" {
            (json!(400), json!("unsupported_parameter"))
        } else {
            (json!(503), json!("no_compliant_backend"))
        };
        assert_eq!((&c["status"], &c["code"]), (&want.0, &want.1), "{case}: {c}");
    }
    assert_eq!(r["benign"]["headers"]["x-sluice-route"], "cloud");
    let seen = sim.requests();
    assert_eq!(seen.len(), 2, "only the two benign requests reached the cloud");
    for s in &seen {
        assert_eq!(
            s["body"]["messages"],
            json!([{"role": "user", "content": "What is the capital of Japan?"}])
        );
    }
    let metrics = gateway.scrape();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_rejected_total{reason="no_compliant_backend"}"#
        ),
        Some(8.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_answers_cost_their_list_price_exactly_and_local_ones_their_node_time() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!(
        "{}cost:\n  reference_model: {{ id: gpt-4o, input_usd_per_mtok: 2.5, output_usd_per_mtok: 10 }}\n",
        backends(&worker, &sim, "")
    ));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "costs");
    // Picodollars per token: gpt-4o-mini at 0.15 and 0.60 USD per million, gpt-4o at 2.50 and 10.
    let tokens = |u: &Value, k: &str| u128::from(u[k].as_u64().unwrap());
    let cloud: u128 = r["cloud"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| tokens(u, "prompt_tokens") * 150_000 + tokens(u, "completion_tokens") * 600_000)
        .sum();
    assert!(cloud > 0);
    let metrics = gateway.scrape();
    assert_eq!(
        metric(&metrics, r#"sluice_cost_usd_total{backend="sim",route="cloud"}"#),
        Some(cloud as f64 / 1e12),
        "{metrics}"
    );
    let local = &r["local"];
    let equivalent =
        tokens(local, "prompt_tokens") * 2_500_000 + tokens(local, "completion_tokens") * 10_000_000;
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_cloud_equivalent_cost_usd_total{backend="w0"}"#
        ),
        Some(equivalent as f64 / 1e12),
        "{metrics}"
    );
    let charged = metric(&metrics, r#"sluice_cost_usd_total{backend="w0",route="local"}"#).unwrap();
    assert!(charged > 0.0 && charged < 0.01, "{charged}");
    let node = metric(&metrics, r#"sluice_local_node_cost_usd_total{node="w0"}"#).unwrap();
    assert!(
        node > charged,
        "the node costs more than its busy share: {node} vs {charged}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let later = metric(
        &gateway.scrape(),
        r#"sluice_local_node_cost_usd_total{node="w0"}"#,
    )
    .unwrap();
    assert!(later > node, "idle time costs too: {node} then {later}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_decision_is_audited_in_a_chain_that_shows_tampering() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let mut gateway = Gateway::start(&format!(
        "{}{SUBSTITUTE_POLICY}audit:\n  path: {}\n",
        backends(&worker, &sim, ""),
        log.display()
    ));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "policy");
    assert!(gateway.terminate().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), POLICY_CASES.len() + 1, "{text}");
    // The prompts' secrets are nowhere in the log; what was found is, by kind.
    for secret in ["4111 1111", "AKIA", "example.com"] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    for case in POLICY_CASES.iter().chain(&["benign"]) {
        let id = r[case]["headers"]["x-sluice-decision-id"].as_str().unwrap();
        let rec = records
            .iter()
            .find(|x| x["decision_id"] == id)
            .unwrap_or_else(|| panic!("{case}: no record for {id}"));
        assert_eq!(rec["tenant"], "acme");
        assert_eq!(rec["model"], "gpt-4o-mini");
        // What a replay needs: the answer's limit, streaming, and the times observed.
        assert_eq!(rec["stream"], false, "{case}: {rec}");
        if *case != "benign" {
            assert_eq!(rec["max_tokens"], 8, "{case}: {rec}");
        }
        if rec["status"] == 200 {
            let time = |field: &str| {
                rec[field]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{case}: no {field} in {rec}"))
            };
            let took = time("duration_ms");
            // The cloud simulator always answers with text; the local model may end its turn at once,
            // and an answer without a token has no time to first token.
            if *case == "benign" || rec.get("ttft_ms").is_some() {
                let ttft = time("ttft_ms");
                assert!(0.0 < ttft && ttft <= took, "{case}: {rec}");
            }
        } else {
            assert!(rec.get("ttft_ms").is_none(), "{case}: {rec}");
        }
        match *case {
            "benign" => {
                assert_eq!(
                    (&rec["route"], &rec["backend"], &rec["code"]),
                    (&json!("cloud"), &json!("sim"), &json!("ok"))
                );
                assert!(rec["cost_usd"].as_f64().unwrap() > 0.0);
            }
            "tool_definition" => {
                assert_eq!(
                    (&rec["status"], &rec["code"]),
                    (&json!(400), &json!("unsupported_parameter"))
                );
            }
            _ => {
                assert_eq!(rec["rule"], "sensitive-stays-local", "{case}");
                assert_eq!(
                    (&rec["route"], &rec["backend"], &rec["status"]),
                    (&json!("local"), &json!("w0"), &json!(200)),
                    "{case}"
                );
                assert_eq!(rec["served_model"], DEMO_MODEL_ID);
                assert!(!rec["findings"].as_array().unwrap().is_empty(), "{case}: {rec}");
                // Where each finding is, by field and byte range.
                let at = &rec["positions"][0];
                let field = at["field"].as_str().unwrap();
                assert!(
                    field.starts_with("messages[") || field.starts_with("stop"),
                    "{case}: {rec}"
                );
                assert!(
                    at["start"].as_u64().unwrap() < at["end"].as_u64().unwrap(),
                    "{case}: {rec}"
                );
                assert!(rec["cloud_equivalent_usd"].as_f64().unwrap() > 0.0, "{case}");
            }
        }
    }

    let log_arg = log.to_str().unwrap();
    let (code, out, err) = run_sluice(&["audit", "verify", log_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("{} records", records.len())) && out.contains("chain intact"),
        "{out}"
    );
    // Any edit shows, at the line after the edited one.
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replace("\"acme\"", "\"other\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&log, tampered.join("\n") + "\n").unwrap();
    let (code, _, err) = run_sluice(&["audit", "verify", log_arg]);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_figures_in_a_real_browser() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    // A daily budget, to see the tenant's spend against it; an admin token, which the page sends from its
    // URL's fragment.
    let limits = "limits:\n  tenants:\n    acme:\n      budget: { usd: 1, period: day }\n";
    let token = format!(
        "admin_token_sha256: {}\n",
        sluice_gateway::auth::hash_key_hex("adm-dash")
    );
    let gateway = Gateway::start(&format!("{}{limits}{token}", backends(&worker, &sim, "")));
    gateway.wait_ready("local");
    sdk(&gateway, "costs");
    let (status, _) = common::http(gateway.admin, "GET", "/admin/summary", None);
    assert_eq!(status, 401, "the summary needs the admin token");
    let (_, body) = common::http_with(
        gateway.admin,
        "GET",
        "/admin/summary",
        None,
        "Authorization: Bearer adm-dash\r\n",
    );
    let summary: Value = serde_json::from_str(&body).unwrap();
    let spend = summary["cloud"]["spend_usd"].as_f64().unwrap();
    assert!(spend > 0.0, "{summary}");

    // Debian's Chromium, headless, with every background connection off: the page must need nothing
    // but the gateway.
    assert!(
        common::ensure_debian_package("chromium", "chromium"),
        "the dashboard test needs Debian's chromium package"
    );
    let profile = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=5000",
            "--dump-dom",
            &format!("http://{}/dashboard#token=adm-dash", gateway.admin),
        ])
        .output()
        .expect("chromium (Debian package `chromium`)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page did not load its figures:\n{dom}"
    );
    assert!(
        dom.contains(&format!(r#"id="cloud-spend">${spend:.6}<"#)),
        "cloud spend {spend} not shown:\n{dom}"
    );
    assert!(dom.contains("<td>default</td><td>cloud</td><td>3</td>"), "{dom}");
    assert!(dom.contains("<td>default</td><td>local</td><td>1</td>"), "{dom}");
    assert!(dom.contains("<td>w0</td>"), "the node is listed:\n{dom}");
    // Each backend member's state: the worker and the cloud (its breaker closed) are up.
    assert_eq!(
        summary["backends"],
        json!([{"backend": "sim", "up": true}, {"backend": "w0", "up": true}]),
        "{summary}"
    );
    assert!(dom.contains(r#"<td>sim</td><td class="good">up</td>"#), "{dom}");
    assert!(dom.contains(r#"<td>w0</td><td class="good">up</td>"#), "{dom}");
    assert_eq!(summary["fallbacks"], json!([]));
    // The tenant's cloud spend against its budget: every cloud request was acme's.
    assert!(
        dom.contains(&format!("<td>acme</td><td>${spend:.6}</td><td>$1.00 a day</td>")),
        "the budget is not shown:\n{dom}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_pass_through_to_the_cloud() {
    let worker = Worker::start(&[]);
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    let r = sdk(&gateway, "tools");
    let call = &r["first"]["tool_calls"][0];
    assert_eq!(r["first"]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"sim"}"#);
    assert_eq!(r["second"]["finish_reason"], "stop");
    assert!(
        r["second"]["content"]
            .as_str()
            .unwrap()
            .starts_with("This is a simulated answer")
    );
    assert_eq!(r["stream"]["finish_reason"], "tool_calls");
    let seen = sim.requests();
    assert_eq!(seen.len(), 3);
    // The tools and the tool-call turn arrive exactly as the client sent them.
    assert_eq!(seen[0]["body"]["tools"], r["tools_sent"]);
    assert_eq!(seen[0]["body"]["tool_choice"], "auto");
    assert_eq!(seen[1]["body"]["messages"][1]["tool_calls"][0]["id"], call["id"]);
    assert_eq!(seen[1]["body"]["messages"][2]["tool_call_id"], call["id"]);
    assert_eq!(seen[2]["body"]["tools"], r["tools_sent"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_mid_stream_frees_the_worker_slot() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "disconnect");
    assert_eq!(r["chunks_read"], 3);
    // The worker counts the request as cancelled (an answer that ran its course would count as ok), and
    // its slot is free.
    assert_eq!(
        wait_metric(
            &worker,
            r#"sluice_worker_requests_total{code="cancelled"}"#,
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
    // The running gauge follows the engine's load snapshots, a moment after the count.
    assert_eq!(
        wait_metric(
            &worker,
            "sluice_worker_requests_running",
            0.0,
            Duration::from_secs(3)
        ),
        0.0
    );
    let m = gateway.scrape();
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"sluice_requests_total{{backend="w0",code="client_closed",model="{DEMO_MODEL_ID}",route="local",tenant="acme"}}"#
            )
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_a_cloud_stream_drops_the_cloud_call() {
    let worker = Worker::start(&[]);
    // 400 tokens at 20 a second: the answer would run for 20 s.
    let sim = SimCloud::start(&["--tokens-per-second", "20"]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    let r = sdk(&gateway, "disconnect_cloud");
    assert_eq!(r["chunks_read"], 3);
    let until = Instant::now() + Duration::from_secs(10);
    while sim.in_flight() != 0 {
        assert!(Instant::now() < until, "the cloud call was not dropped");
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_stream_gives_a_clean_error() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    gateway.wait_ready("local");
    let mut child = sdk_command(&gateway, "killed")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").expect("read");
    assert_eq!(first, "STREAM_STARTED");
    worker.signal("KILL");
    let last = lines.next().expect("the result").expect("read");
    let status = child.wait().expect("python exits");
    assert!(status.success());
    let r: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(r["raised"], "APIError", "{r}");
    assert_eq!(r["code"], "backend_stream_interrupted", "{r}");
    assert!(r["seconds"].as_f64().unwrap() < 30.0, "{r}");
    // The pool no longer offers the dead worker.
    let until = Instant::now() + Duration::from_secs(5);
    while metric(&gateway.scrape(), r#"sluice_backend_up{backend="w0"}"#) != Some(0.0) {
        assert!(Instant::now() < until, "w0 still up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_that_answers_429_then_200_is_retried() {
    let worker = Worker::start(&[]);
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim, ""));
    sim.script(r#"[{"status": 429, "retry_after_seconds": 1}, {"status": 503}, {}]"#);
    let r = sdk(&gateway, "retry");
    assert_eq!(r["answer"]["headers"]["x-sluice-backend"], "sim");
    assert_eq!(r["answer"]["finish_reason"], "stop");
    assert_eq!(sim.requests().len(), 3, "two failed attempts, then the answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cloud_that_hangs_times_out() {
    let worker = Worker::start(&[]);
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(
        &worker,
        &sim,
        "    timeout_seconds: 1\n    max_retries: 0\n",
    ));
    sim.script(r#"[{"hang": true}, {"hang": true}]"#);
    let r = sdk(&gateway, "hang");
    for case in ["plain", "stream"] {
        assert_eq!(r[case]["status"], 504, "{case}: {}", r[case]);
        assert_eq!(r[case]["code"], "backend_timeout", "{case}");
        let took = r[case]["seconds"].as_f64().unwrap();
        assert!((0.9..8.0).contains(&took), "{case} took {took} s");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_reaches_workers_over_mutual_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf8").to_owned();
    let worker = common::Worker::start_mutual_tls(dir.path());
    let local = |identity: bool| {
        let client = if identity {
            format!("    cert: {}\n    key: {}\n", p("client.pem"), p("client.key"))
        } else {
            String::new()
        };
        format!(
            "local:\n  workers:\n    - name: secure\n      address: https://localhost:{}\n  tls:\n    ca: {}\n{client}",
            worker.grpc.port(),
            p("ca.pem")
        )
    };
    let gateway = Gateway::start(&local(true));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "local_once");
    assert_eq!(r["answer"]["headers"]["x-sluice-backend"], "secure");
    assert_eq!(r["answer"]["content"], "The capital of Japan is Tokyo.");

    // Without a client certificate the worker refuses the connection: never ready, and a clear 503.
    let refused = Gateway::start(&local(false));
    std::thread::sleep(Duration::from_secs(1));
    let (status, body) = common::http(refused.admin, "GET", "/admin/backends", None);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["backends"][0]["ready"], false, "{body}");
}

#[test]
fn gateway_configs_are_checked_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("gateway.yaml");
    std::fs::write(
        &bad,
        "api_keys:\n  - tenant: acme\n    key_sha256: 00\nclouds:\n  - name: x\n    base_url: http://127.0.0.1:1/v1\n    models: []\n",
    )
    .unwrap();
    let path = bad.to_str().unwrap();
    for args in [
        vec!["gateway", "--config", path, "--check"],
        vec!["policy", "check", path],
    ] {
        let out = std::process::Command::new(common::sluice_bin())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{path}:3: api_keys[0].key_sha256: must be 64 hexadecimal digits"
            )),
            "{err}"
        );
    }
}

fn run_sluice(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::sluice_bin())
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POLICY_BACKENDS: &str = "allow_unauthenticated: true\nlocal:\n  workers: [{ name: w0, address: 127.0.0.1:1 }]\nclouds:\n  - name: openai\n    base_url: https://api.openai.com/v1\n    api_key_env: OPENAI_API_KEY\n    models:\n      - { id: gpt-4o-mini, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 }\n";

#[test]
fn policy_check_reports_every_problem_and_warns_about_rules_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The backends, then a policy whose rules start on line 12.
    let write = |name: &str, rules: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{POLICY_BACKENDS}policy:\n  rules:\n{rules}")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let path = &write(
        "bad.yaml",
        "    - name: a\n      then: { route: mars }\n    - name: b\n      when: { findings: [credit_card] }\n      then: { route: local }\n",
    );
    let (code, _, err) = run_sluice(&["policy", "check", path]);
    assert_eq!(code, Some(64), "{err}");
    // Every problem, each at its line: an unknown kind is caught while parsing, before the rest.
    assert!(
        err.contains(&format!(
            "{path}:15: policy.rules[1].when.findings[0]: \"credit_card\" is not a finding kind"
        )),
        "{err}"
    );

    let path = &write(
        "unknown-backend.yaml",
        "    - name: a\n      then: { route: mars }\n    - name: a\n      then: { reject: \"\" }\n",
    );
    let (code, _, err) = run_sluice(&["policy", "check", path]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("3 problem(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "{path}:13: policy.rules[0].then.route: no backend is named \"mars\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:14: policy.rules[1].name: the rule name \"a\" is used twice"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{path}:15: policy.rules[1].then.reject: give the reason"
        )),
        "{err}"
    );

    let path = &write(
        "warn.yaml",
        "    - name: all-local\n      then: { route: local }\n    - name: mail\n      when: { findings: email }\n      then: { route: openai }\n",
    );
    let (code, out, err) = run_sluice(&["policy", "check", path]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("warning: {path}:14: policy.rules[1].name: rule `mail` can never match: every request it matches is matched first by `all-local`")), "{out}");
    assert!(out.contains("no rule sends requests to backend openai"), "{out}");
    assert!(
        out.contains("the environment variable OPENAI_API_KEY is not set here"),
        "{out}"
    );
    assert!(out.contains("valid;") && out.contains("3 warning(s)"), "{out}");
    let (code, _, err) = run_sluice(&["policy", "check", "--deny-warnings", path]);
    assert_eq!(code, Some(65), "{err}");
}

#[test]
fn policy_check_checks_the_scanners_combinations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("combinations.yaml");
    let write = |sensitivity: &str| {
        std::fs::write(&path, format!("{POLICY_BACKENDS}sensitivity:\n{sensitivity}")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // An empty combination is an error.
    let p = write("  combinations:\n    - { name: nothing }\n");
    let (code, _, err) = run_sluice(&["policy", "check", &p]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("give the kinds that must be found together in all or any"),
        "{err}"
    );
    // One never met, one that raises nothing, and names only the model finds while it is off: warnings.
    let p = write(concat!(
        "  disabled: [health]\n",
        "  combinations:\n",
        "    - { name: sick, all: [health, person_name] }\n",
        "    - { name: flat, all: [email], any: [phone], level: confidential }\n",
        "    - { name: travel, all: [passport, date_of_birth] }\n",
    ));
    let (code, out, err) = run_sluice(&["policy", "check", &p]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("sensitivity.combinations[0]: `sick` is never met: health is disabled"),
        "{out}"
    );
    assert!(
        out.contains("sensitivity.combinations[1]: `flat` never raises the level: email is already at least confidential"),
        "{out}"
    );
    assert!(
        out.contains("ner: the personal-data model is off, so passport, person_name are never found"),
        "{out}"
    );
}

#[test]
fn policy_explain_shows_the_decision_without_sending_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, format!("{POLICY_BACKENDS}{SUBSTITUTE_POLICY}")).unwrap();
    let request = dir.path().join("request.json");
    let mail = ["jane.doe", "example.com"].join("@");
    std::fs::write(
        &request,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": format!("Write to {mail}")}]}).to_string(),
    )
    .unwrap();
    let (config, request) = (config.to_str().unwrap(), request.to_str().unwrap());
    let (code, out, err) = run_sluice(&["policy", "explain", "--config", config, "--request", request]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "decision:  route",
        "rule:      sensitive-stays-local",
        "level:     confidential (found confidential, declared -, tenant anonymous floor public)",
        "findings:  email (confidential) in messages[1].content at bytes 9..29",
        "substitutes for: gpt-4o-mini",
        "targets:   1. local / smollm2-135m-instruct (local, cleared for restricted)",
        "ruled out: openai / gpt-4o-mini: rule `sensitive-stays-local` serves the request with `smollm2-135m-instruct` instead",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains(&mail), "the finding itself is never shown:\n{out}");

    // With the local workers down, the gateway would refuse it: the cloud may not take it.
    let (_, out, _) = run_sluice(&[
        "policy",
        "explain",
        "--config",
        config,
        "--request",
        request,
        "--down",
        "local",
    ]);
    assert!(
        out.contains("decision:  refused, 503 no_compliant_backend"),
        "{out}"
    );

    // A benign request goes where it asked; a declared level raises it; JSON for machines.
    std::fs::write(
        dir.path().join("benign.json"),
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
    )
    .unwrap();
    let benign = dir.path().join("benign.json");
    let benign = benign.to_str().unwrap();
    let (_, out, _) = run_sluice(&[
        "policy",
        "explain",
        "--config",
        config,
        "--request",
        benign,
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["rule"], &v["targets"][0]["backend"]),
        (&json!("default"), &json!("openai"))
    );
    let (_, out, _) = run_sluice(&[
        "policy",
        "explain",
        "--config",
        config,
        "--request",
        benign,
        "--json",
        "-H",
        "x-sluice-sensitivity: confidential",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v["level"], &v["rule"], &v["substituted_for"]),
        (
            &json!("confidential"),
            &json!("sensitive-stays-local"),
            &json!("gpt-4o-mini")
        )
    );
}

#[test]
fn policy_check_and_explain_show_what_a_redaction_rule_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A rule that names a credential: reported at its line, with why.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{POLICY_BACKENDS}policy:\n  rules:\n    - name: r\n      then:\n        redact: {{ to: cloud, kinds: [email, private_key] }}\n"),
    )
    .unwrap();
    let bad = bad.to_str().unwrap();
    let (code, _, err) = run_sluice(&["policy", "check", bad]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(&format!(
            "{bad}:14: policy.rules[0].then.redact.kinds: private_key is a credential, which is never redacted"
        )),
        "{err}"
    );

    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "{POLICY_BACKENDS}{}",
            REDACT_POLICY.replace("redact-for-cloud", "contacts")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, out, err) = run_sluice(&["policy", "check", config]);
    assert_eq!(code, Some(0), "{out}{err}");
    let mail = ["jane.doe", "example.com"].join("@");
    let request = dir.path().join("request.json");
    let write = |body: Value| std::fs::write(&request, body.to_string()).unwrap();
    let request = request.to_str().unwrap();
    write(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("Write to {mail}")}]}),
    );
    let (code, out, err) = run_sluice(&["policy", "explain", "--config", config, "--request", request]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "rule:      contacts",
        "level:     confidential (found confidential",
        "targets:   1. openai / gpt-4o-mini (cloud, cleared for internal)",
        "route:     redacted-cloud",
        "redaction: sent with 1 email replaced by placeholders; the redacted form is public",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    // Once the tenant's budget is spent, the rule's over_budget decides (the default: reject).
    let (code, out, err) = run_sluice(&[
        "policy",
        "explain",
        "--config",
        config,
        "--request",
        request,
        "--over-budget",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("contacts:over_budget") && out.contains("budget_exceeded"),
        "{out}"
    );
    // A value where nothing is replaced (a key of the body) survives the redaction: the fallback decides,
    // and the explanation says which finding survived, and where, never what it is.
    write(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}], "metadata": {mail.clone(): "vip"}}),
    );
    let (code, out, err) = run_sluice(&["policy", "explain", "--config", config, "--request", request]);
    assert_eq!(code, Some(0), "{err}");
    for line in [
        "targets:   1. local / smollm2-135m-instruct (local, cleared for restricted)",
        "route:     local",
        "redaction: not sent redacted: rule `contacts` cannot send this request redacted: its redacted form is still confidential",
        "survived:  email (confidential) in metadata.*{key} at bytes 0..20",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains(&mail), "{out}");
}

#[test]
fn every_gateway_config_in_the_repository_is_valid() {
    for path in common::repository_configs("gateway") {
        let out = std::process::Command::new(common::sluice_bin())
            .args(["gateway", "--check", "--config", path.to_str().unwrap()])
            .env("OPENAI_API_KEY", "sk-example")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts `sluice up` on free ports with `env`, and returns it with its printed banner.
fn sluice_up(env: &[(&str, &str)]) -> (std::process::Child, String) {
    common::ensure_demo_model();
    let mut command = std::process::Command::new(common::sluice_bin());
    command
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--api-key",
            common::TEST_KEY,
        ])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SLUICE_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    (child, banner)
}

fn base_url_of(banner: &str) -> String {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("OpenAI base URL"))
        .map(|b| b.trim().to_owned())
        .unwrap_or_else(|| panic!("no base URL in:\n{banner}"))
}

fn stop(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "sluice up exits cleanly on SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_up_serves_local_and_simulated_cloud_models() {
    let (child, banner) = sluice_up(&[]);
    assert!(
        banner.contains(&format!("API key          {}", common::TEST_KEY)),
        "{banner}"
    );
    assert!(
        banner.contains("SIMULATOR"),
        "the output says the cloud is simulated:\n{banner}"
    );
    assert!(
        banner.contains(DEMO_MODEL_ID) && banner.contains("gpt-4o-mini"),
        "{banner}"
    );
    assert!(!banner.contains("not ready yet"), "{banner}");
    assert!(
        banner.contains("x-sluice-substituted-for") && banner.contains("\"model\": \"auto\""),
        "examples show the guarantee and the virtual model:\n{banner}"
    );
    let minute_before = unix_minute();
    let r = common::sdk_at(&base_url_of(&banner), "up");
    assert_eq!(r["local"]["content"], "The capital of Japan is Tokyo.");
    assert_eq!(r["local"]["headers"]["x-sluice-route"], "local");
    assert_eq!(r["cloud"]["headers"]["x-sluice-route"], "cloud");
    assert_eq!(r["cloud"]["headers"]["x-sluice-backend"], "sim-cloud");
    // The embedded policy: a card number asked of the cloud model is served by the local one.
    assert_eq!(r["card"]["headers"]["x-sluice-route"], "local");
    assert_eq!(r["card"]["headers"]["x-sluice-rule"], "contacts-redacted");
    assert_eq!(r["card"]["headers"]["x-sluice-substituted-for"], "gpt-4o-mini");
    assert_eq!(r["card"]["headers"]["x-sluice-sensitivity"], "restricted");
    // `auto` is listed and served by one of its members.
    assert!(
        r["models"].as_array().unwrap().contains(&json!("auto")),
        "{}",
        r["models"]
    );
    let served = r["auto"]["headers"]["x-sluice-model"].as_str().unwrap();
    assert!(served == DEMO_MODEL_ID || served == "gpt-4o-mini", "{served}");
    // Embeddings: the patient's record on the local embedding worker, public text in the cloud, and the
    // record refused by the cloud model (never embedded by another model in its place).
    assert!(banner.contains("all-minilm-l6-v2 on a local worker"), "{banner}");
    let patient = &r["embed_patient"];
    assert_eq!(patient["headers"]["x-sluice-route"], "local", "{patient}");
    assert_eq!(patient["headers"]["x-sluice-backend"], "worker-1");
    assert_eq!(patient["model"], "all-minilm-l6-v2");
    assert_eq!(patient["vectors"][0].as_array().unwrap().len(), 384);
    let public = &r["embed_public"];
    assert_eq!(public["headers"]["x-sluice-route"], "cloud", "{public}");
    assert_eq!(public["model"], "text-embedding-3-small");
    assert_eq!(public["vectors"][0].as_array().unwrap().len(), 1536);
    assert_eq!(
        r["embed_patient_cloud"]["status"], 403,
        "{}",
        r["embed_patient_cloud"]
    );
    assert_eq!(
        r["embed_patient_cloud"]["headers"]["x-sluice-rule"],
        "sensitive-embeddings-local"
    );
    // The demo key's limits: in the headers from the first request, and in /admin/tenants.
    assert!(
        banner.contains("600 requests and 200000 tokens a minute") && banner.contains("--no-limits"),
        "{banner}"
    );
    let h = &r["cloud"]["headers"];
    assert_eq!(h["x-ratelimit-limit-requests"], "600", "{h}");
    assert_eq!(h["x-ratelimit-limit-tokens"], "200000", "{h}");
    let remaining: u64 = h["x-ratelimit-remaining-requests"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..600).contains(&remaining), "{h}");
    let (status, body) = common::http(admin_of(&banner), "GET", "/admin/tenants", None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let tenant = &v["tenants"][0];
    assert_eq!(
        (tenant["tenant"].as_str(), tenant["limits"].as_str()),
        (Some("default"), Some("default")),
        "{body}"
    );
    assert_eq!(tenant["budget"]["limit_usd"], 0.1, "{body}");
    assert_eq!(tenant["budget"]["period"], "day", "{body}");
    assert!(tenant["budget"]["spent_usd"].as_f64().unwrap() > 0.0, "{body}");
    // The windows are clock minutes: the four requests count together unless a minute turned.
    let least = if unix_minute() == minute_before { 4 } else { 1 };
    assert!(
        tenant["requests_per_minute"]["used"].as_u64().unwrap() >= least,
        "{body}"
    );
    stop(child);
}

#[test]
fn sluice_up_prints_the_configuration_it_runs() {
    common::ensure_demo_model();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit log.jsonl");
    let (code, yaml, err) = run_sluice(&[
        "up",
        "--print-config",
        "--no-ner",
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");
    // The parts `up` starts itself are where their own commands listen by default.
    for line in [
        "address: \"127.0.0.1:50051\"",
        "base_url: \"http://127.0.0.1:8090/v1\"",
        "key_env: SLUICE_UP_KEY",
        "requests_per_minute: 600",
        "budget: { usd: 0.1, period: day }",
        "- name: contacts-redacted",
        "- name: sensitive-local-only",
        "over_budget: { substitute: \"smollm2-135m-instruct\" }",
        // The embedding worker, at the next port, and the cloud embedding model with its rules.
        "address: \"127.0.0.1:50052\"",
        "- id: text-embedding-3-small\n        kind: embedding",
        "- name: sensitive-embeddings-local",
        "- name: cloud-embeddings",
    ] {
        assert!(yaml.contains(line), "{line} not in:\n{yaml}");
    }
    assert!(
        yaml.contains(&format!("path: {}", json!(audit.to_str().unwrap()))),
        "{yaml}"
    );
    // The gateway and the policy checker read it as it is.
    let file = dir.path().join("up.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let file = file.to_str().unwrap();
    let check = std::process::Command::new(common::sluice_bin())
        .args(["gateway", "--config", file, "--check"])
        .env("SLUICE_UP_KEY", "sk-printed")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (code, out, err) = run_sluice(&["policy", "check", file]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("4 rule(s), 1 virtual model(s)"), "{out}");

    // Workers given are written as given; without limits there is no limits section.
    let (code, yaml, err) = run_sluice(&[
        "up",
        "--print-config",
        "--no-ner",
        "--no-limits",
        "--worker",
        "10.0.0.7:50051",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(yaml.contains("address: \"10.0.0.7:50051\""), "{yaml}");
    assert!(!yaml.contains("limits:"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_up_uses_openai_when_a_key_is_set_and_honours_its_base_url() {
    // An OpenAI-compatible server that insists on the key, standing in for api.openai.com.
    let openai = SimCloud::start(&[
        "--api-key",
        "sk-upstream",
        "--embedding-model",
        "text-embedding-3-small=0.02:1536",
    ]);
    let base = openai.base_url();
    let (child, banner) = sluice_up(&[("OPENAI_API_KEY", "sk-upstream"), ("OPENAI_BASE_URL", &base)]);
    assert!(
        banner.contains(&format!("gpt-4o-mini on the OpenAI API ({base})")),
        "{banner}"
    );
    assert!(!banner.contains("SIMULATOR"), "{banner}");
    let r = common::sdk_at(&base_url_of(&banner), "up");
    assert_eq!(r["cloud"]["headers"]["x-sluice-backend"], "openai");
    // `auto` goes to whichever member is cheaper now: the cloud too, once the worker's rates price it.
    let auto_upstream = usize::from(r["auto"]["headers"]["x-sluice-backend"] == "openai");
    let seen = openai.requests();
    // The cloud chat request, `auto` when it went there, and the public embeddings request.
    assert_eq!(seen.len(), 2 + auto_upstream, "{seen:?}");
    assert_eq!(r["embed_public"]["headers"]["x-sluice-backend"], "openai");
    assert!(
        !serde_json::to_string(&seen).unwrap().contains("Anna Berg"),
        "{seen:?}"
    );
    for s in &seen {
        assert_eq!(
            s["authorization"], "Bearer sk-upstream",
            "the upstream key, never the client's"
        );
    }
    stop(child);
}

fn admin_of(banner: &str) -> std::net::SocketAddr {
    banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("Metrics"))
        .and_then(|l| l.trim().strip_prefix("http://"))
        .and_then(|l| l.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in:\n{banner}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn sluice_up_keeps_names_with_health_birth_dates_and_addresses_in_prose_off_the_cloud() {
    // The cloud is an OpenAI-compatible stand-in that records every request it gets.
    let openai = SimCloud::start(&["--api-key", "sk-upstream"]);
    let base = openai.base_url();
    let (child, banner) = sluice_up(&[("OPENAI_API_KEY", "sk-upstream"), ("OPENAI_BASE_URL", &base)]);
    assert!(
        banner.contains("Personal data    names, addresses and IDs in prose"),
        "{banner}"
    );
    let admin = admin_of(&banner);
    let r = common::sdk_at(&base_url_of(&banner), "prose");

    // The patient's birth date and diagnosis are restricted on their own, before the model: it is not
    // needed, and not run.
    let c = &r["name_and_diagnosis"];
    assert_eq!(c["headers"]["x-sluice-route"], "local", "{c}");
    assert_eq!(c["headers"]["x-sluice-sensitivity"], "restricted", "{c}");
    let id = c["headers"]["x-sluice-decision-id"].as_str().unwrap();
    let (_, body) = common::http(admin, "GET", &format!("/admin/decisions/{id}"), None);
    let d: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["ner"], "not_needed", "{d}");
    assert_eq!(
        d["combined"],
        json!([{"name": "birth-date-with-health", "level": "restricted"}])
    );
    for case in [
        "birth_date",
        "address_in_system",
        "tool_arguments",
        "past_the_first_window",
    ] {
        let c = &r[case];
        assert_eq!(c["status"], 200, "{case}: {c}");
        assert_eq!(c["headers"]["x-sluice-route"], "local", "{case}: {c}");
        assert_eq!(c["headers"]["x-sluice-sensitivity"], "restricted", "{case}: {c}");
        assert_eq!(
            c["headers"]["x-sluice-substituted-for"], "gpt-4o-mini",
            "{case}: {c}"
        );
        // The decision says the model ran and which combination made the request restricted, with
        // positions and never the text.
        let id = c["headers"]["x-sluice-decision-id"].as_str().unwrap();
        let (status, body) = common::http(admin, "GET", &format!("/admin/decisions/{id}"), None);
        assert_eq!(status, 200, "{body}");
        let d: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(d["ner"], "ran", "{case}: {d}");
        assert!(
            d["combined"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "person-with-personal-data"),
            "{case}: {d}"
        );
        let name = d["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "person_name")
            .unwrap_or_else(|| panic!("{case}: {d}"));
        assert!(
            name["start"].as_u64().unwrap() < name["end"].as_u64().unwrap(),
            "{case}: {d}"
        );
        for secret in ["Gonzalez", "Kowalski", "Whitaker", "Willow"] {
            assert!(
                !body.contains(secret),
                "{case}: the decision holds no text: {body}"
            );
        }
    }
    // Past the first window of the model: the name is found after more than 512 tokens of other text.
    let id = r["past_the_first_window"]["headers"]["x-sluice-decision-id"]
        .as_str()
        .unwrap();
    let (_, body) = common::http(admin, "GET", &format!("/admin/decisions/{id}"), None);
    let d: Value = serde_json::from_str(&body).unwrap();
    let name_at = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "person_name")
        .map(|f| f["start"].as_u64().unwrap())
        .unwrap();
    assert!(name_at > 5_000, "{d}");

    // A public figure, a colleague's name alone, and text naming nobody still go to the cloud.
    for case in ["public_figure", "name_alone", "nobody"] {
        let c = &r[case];
        assert_eq!(c["status"], 200, "{case}: {c}");
        assert_eq!(c["headers"]["x-sluice-route"], "cloud", "{case}: {c}");
    }
    assert_eq!(r["name_alone"]["headers"]["x-sluice-sensitivity"], "internal");
    let seen = openai.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        let body = s["body"].to_string();
        for secret in [
            "Gonzalez",
            "Kowalski",
            "Whitaker",
            "Willow",
            "HIV",
            "schizophrenia",
        ] {
            assert!(!body.contains(secret), "{secret} reached the cloud: {body}");
        }
    }
    let metrics = {
        let (_, body) = common::http(admin, "GET", "/metrics", None);
        body
    };
    assert_eq!(
        metric(&metrics, r#"sluice_ner_requests_total{outcome="ran"}"#),
        Some(7.0)
    );
    assert_eq!(
        metric(&metrics, r#"sluice_ner_requests_total{outcome="not_needed"}"#),
        Some(1.0)
    );

    // The default policy's third route: a name, an e-mail address and a phone number, and nothing else,
    // go to the cloud replaced by placeholders, and come back in the answer (the stand-in echoes).
    openai.script(r#"[{"echo": true}, {"echo": true}]"#);
    let letter = common::sdk_at(&base_url_of(&banner), "up_redact");
    let text = letter["text"].as_str().unwrap();
    for answer in [&letter["plain"], &letter["stream"]] {
        assert_eq!(answer["content"], text, "{answer}");
        assert_eq!(answer["headers"]["x-sluice-route"], "redacted-cloud", "{answer}");
        assert_eq!(
            answer["headers"]["x-sluice-rule"], "contacts-redacted",
            "{answer}"
        );
    }
    let seen = openai.requests();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for s in &seen[3..] {
        assert_eq!(
            s["body"]["messages"][0]["content"],
            "Write a polite reminder to [PERSON_1] ([EMAIL_1], [PHONE_1]) that invoice 88213 is overdue. \
             [PERSON_1] prefers e-mail.",
            "{s}"
        );
    }
    stop(child);
}

/// `sluice scan` with text on standard input.
fn scan(args: &[&str], input: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(common::sluice_bin())
        .arg("scan")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sluice_scan_shows_positions_combinations_and_levels_never_the_text() {
    let lines = [
        json!({"id": "a", "text": "Write to Maria Gonzalez about her schizophrenia treatment."}),
        json!({"id": "b", "text": "What are the symptoms of schizophrenia?"}),
        json!({"id": "c", "text": "Order 483920175 shipped on Monday."}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let got = scan(&["--jsonl"], &input);
    assert_eq!(got.len(), 3);
    let a = &got[0];
    assert_eq!(
        (&a["id"], &a["level"], &a["model"]),
        (&json!("a"), &json!("restricted"), &json!(true))
    );
    assert_eq!(a["combined"][0]["name"], "person-with-personal-data");
    let kinds: Vec<&str> = a["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["person_name", "health"]);
    assert_eq!(
        (&a["findings"][0]["start"], &a["findings"][0]["end"]),
        (&json!(9), &json!(23))
    );
    assert!(!a.to_string().contains("Gonzalez"));
    // A health term alone is internal; a bare order number is no identifier.
    assert_eq!(got[1]["level"], "internal");
    assert_eq!(
        (&got[2]["level"], &got[2]["findings"]),
        (&json!("public"), &json!([]))
    );
    // Without the model the name is not found: only the health term.
    let got = scan(&["--jsonl", "--no-ner"], &input);
    assert_eq!(
        (&got[0]["level"], &got[0]["model"]),
        (&json!("internal"), &json!(false))
    );
}

/// Every kind of value the redaction tests replace, for the cloud model; anything else stays local.
const REDACT_POLICY: &str = "policy:\n  rules:\n    - name: redact-for-cloud\n      when: { model: gpt-4o-mini }\n      then:\n        redact:\n          to: cloud\n          kinds: [person_name, postal_address, email, phone, payment_card, iban, us_ssn]\n          fallback: { substitute: smollm2-135m-instruct }\n";

/// The redaction cases of tests/sdk/client.py, and the level each request has before redaction.
const REDACT_CASES: [(&str, &str); 7] = [
    ("name", "internal"),
    ("address", "internal"),
    ("email", "confidential"),
    ("phone", "confidential"),
    ("card", "restricted"),
    ("iban", "restricted"),
    ("ssn", "restricted"),
];

#[tokio::test(flavor = "multi_thread")]
async fn redacted_requests_reach_the_cloud_without_their_values_and_answers_come_back_with_them() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    // The personal-data model finds the names and addresses.
    let pulled = std::process::Command::new(common::sluice_bin())
        .args(["models", "pull", "--ner"])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let files = String::from_utf8(pulled.stdout).unwrap();
    let files: Vec<&str> = files.lines().collect();
    let mut gateway = Gateway::start(&format!(
        "{}{REDACT_POLICY}audit:\n  path: {}\nner:\n  weights: {}\n  tokenizer: {}\n",
        backends(&worker, &sim, ""),
        log.display(),
        files[0],
        files[1]
    ));
    gateway.wait_ready("local");
    // The stand-in echoes what it received: the last message, or, asked for a tool, as its argument.
    let cloud_requests = REDACT_CASES.len() * 4 + 2;
    sim.script(&serde_json::to_string(&vec![json!({"echo": true}); cloud_requests]).unwrap());
    let r = sdk(&gateway, "redact");
    let values: Vec<String> = r["values"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    // The client gets back every value the stand-in echoed, plain and streamed, whatever the chunking.
    for (case, level) in REDACT_CASES {
        let text = r["texts"][case].as_str().unwrap();
        let plain = &r[case];
        assert_eq!(plain["content"], text, "{case}: {plain}");
        let h = &plain["headers"];
        assert_eq!(h["x-sluice-route"], "redacted-cloud", "{case}: {plain}");
        assert_eq!(h["x-sluice-backend"], "sim", "{case}");
        assert_eq!(h["x-sluice-rule"], "redact-for-cloud", "{case}");
        // The request is as sensitive as it was; what left was its redacted form.
        assert_eq!(h["x-sluice-sensitivity"], level, "{case}");
        for (shift, s) in r[format!("{case}_stream")].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                s["content"],
                format!("{}{text}", " ".repeat(shift)),
                "{case} shifted {shift}: {s}"
            );
            assert_eq!(s["headers"]["x-sluice-route"], "redacted-cloud", "{case}");
            assert_eq!(s["finish_reason"], "stop", "{case}");
            // The usage is the cloud's, unchanged.
            assert!(
                s["usage"]["completion_tokens"].as_u64().unwrap() > 0,
                "{case}: {s}"
            );
        }
    }
    // As tool-call arguments, whole and streamed.
    let everything = r["everything"].as_str().unwrap();
    let args = r["tools"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"note": everything})
    );
    assert_eq!(r["tools"]["headers"]["x-sluice-route"], "redacted-cloud");
    let streamed: Value = serde_json::from_str(r["tools_stream"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(streamed, json!({"note": everything}));
    assert_eq!(r["tools_stream"]["finish_reason"], "tool_calls");

    // What left: none of the values, in any request the stand-in received.
    let seen = sim.requests();
    assert_eq!(
        seen.len(),
        cloud_requests,
        "only the redacted requests reached the cloud"
    );
    for s in &seen {
        let body = s["body"].to_string();
        for v in &values {
            assert!(!body.contains(v.as_str()), "{v} reached the cloud: {body}");
        }
    }
    for (i, sent) in [
        "Write a polite reminder to [PERSON_1] that invoice 88213 is overdue; [PERSON_1] is away until Monday.",
        "Ship the replacement to [ADDRESS_1] by Friday.",
        "Write a polite reminder to [EMAIL_1] that invoice 88213 is overdue.",
        "Call [PHONE_1] about invoice 88213, or write to [EMAIL_1].",
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(seen[i * 4]["body"]["messages"][0]["content"], sent);
    }
    let tools = &seen[cloud_requests - 2]["body"];
    assert_eq!(tools["tools"][0]["function"]["name"], "send_note");
    assert_eq!(tools["tool_choice"]["function"]["name"], "send_note");

    // A private key is never replaced: with it, the request is served locally and never leaves.
    let k = &r["private_key"];
    assert_eq!(k["headers"]["x-sluice-route"], "local", "{k}");
    assert_eq!(k["headers"]["x-sluice-substituted-for"], "gpt-4o-mini");
    let explained = |c: &Value| -> Value {
        let id = c["headers"]["x-sluice-decision-id"].as_str().unwrap();
        let (status, body) = common::http(gateway.admin, "GET", &format!("/admin/decisions/{id}"), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let d = explained(k);
    assert_eq!(d["redaction"]["outcome"], "fell_back", "{d}");
    assert!(
        d["redaction"]["why"]
            .as_str()
            .unwrap()
            .contains("private_key (restricted)"),
        "{d}"
    );
    // A value the gateway must leave in place (a key of the body) is still in the redacted form: the
    // proof finds it, nothing is sent, and the explanation says which finding survived, and where.
    let key = &r["in_a_key"];
    assert_eq!(key["headers"]["x-sluice-route"], "local", "{key}");
    let d = explained(key);
    assert_eq!(d["redaction"]["outcome"], "fell_back", "{d}");
    assert_eq!(d["redaction"]["survived"][0]["kind"], "email", "{d}");
    assert_eq!(d["redaction"]["survived"][0]["field"], "metadata.*{key}", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("its redacted form is still confidential"),
        "{d}"
    );
    assert!(!d.to_string().contains("northwind"), "{d}");
    // A redacted decision: the route, and how many values of each kind were replaced, never the values.
    let d = explained(&r["phone"]);
    assert_eq!(d["route"], "redacted-cloud", "{d}");
    assert_eq!(d["redaction"]["replaced"], json!({"email": 1, "phone": 1}), "{d}");
    assert_eq!(d["redaction"]["level"], "public", "{d}");
    assert_eq!(d["ended"]["route"], "redacted-cloud", "{d}");

    // Metrics count distinct values replaced per request, by kind.
    let metrics = gateway.scrape();
    for (kind, n) in [
        ("person_name", 6.0),
        ("postal_address", 6.0),
        ("email", 10.0),
        ("phone", 6.0),
        ("payment_card", 6.0),
        ("iban", 6.0),
        ("us_ssn", 6.0),
    ] {
        assert_eq!(
            metric(&metrics, &format!("sluice_redactions_total{{kind=\"{kind}\"}}")),
            Some(n),
            "{kind}"
        );
    }
    assert!(gateway.terminate().success());
    // The audit log has the counts and the route, and none of the values.
    let text = std::fs::read_to_string(&log).unwrap();
    for v in &values {
        assert!(!text.contains(v.as_str()), "{v} in the audit log");
    }
    let id = r["phone"]["headers"]["x-sluice-decision-id"].as_str().unwrap();
    let rec: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|x| x["decision_id"] == id)
        .unwrap();
    assert_eq!(rec["route"], "redacted-cloud", "{rec}");
    assert_eq!(rec["redactions"], json!({"email": 1, "phone": 1}), "{rec}");
}

/// The current minute since the Unix epoch, the rate windows' clock.
fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

#[tokio::test(flavor = "multi_thread")]
async fn the_responses_api_is_served_locally_and_in_the_cloud_streamed_and_not() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!("{}{SUBSTITUTE_POLICY}", backends(&worker, &sim, "")));
    gateway.wait_ready("local");
    let r = sdk(&gateway, "responses");

    // Local: the answer chat completions give for the same request, whole and streamed.
    let local = &r["local"];
    assert_eq!(local["headers"]["x-sluice-route"], "local", "{local}");
    assert_eq!(local["object"], "response");
    assert!(local["id"].as_str().unwrap().starts_with("resp_"), "{local}");
    assert_eq!(local["text"], r["local_chat"]["content"], "{local}");
    assert_eq!(local["text"], "The capital of Japan is Tokyo.");
    assert_eq!(local["status"], "completed");
    assert_eq!(local["store"], false);
    assert_eq!(
        local["output"],
        json!([["message", "assistant", ["output_text"]]])
    );
    assert_eq!(
        local["usage"]["input_tokens"],
        r["local_chat"]["usage"]["prompt_tokens"]
    );
    assert_eq!(
        local["usage"]["output_tokens"],
        r["local_chat"]["usage"]["completion_tokens"]
    );
    let stream = &r["local_stream"];
    assert_eq!(stream["text"], local["text"], "{stream}");
    assert_eq!(stream["final_text"], local["text"]);
    let types: Vec<&str> = stream["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let deltas = types
        .iter()
        .filter(|t| **t == "response.output_text.delta")
        .count();
    assert!(deltas >= 2, "{types:?}");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(types, expected);
    let sequence: Vec<u64> = stream["sequence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(sequence, (0..types.len() as u64).collect::<Vec<_>>());
    assert_eq!(r["local_items"]["status"], "completed", "{}", r["local_items"]);

    // The cloud: the stand-in's answer cut at max_output_tokens is incomplete, whole and streamed.
    let cloud = &r["cloud"];
    assert_eq!(cloud["headers"]["x-sluice-route"], "cloud", "{cloud}");
    assert_eq!(cloud["text"], "This is a simulated answer");
    assert_eq!(cloud["status"], "incomplete");
    assert_eq!(cloud["incomplete"]["reason"], "max_output_tokens");
    assert_eq!(cloud["usage"]["output_tokens"], 5);
    let cloud_stream = &r["cloud_stream"];
    assert_eq!(cloud_stream["text"], cloud["text"], "{cloud_stream}");
    assert_eq!(cloud_stream["status"], "incomplete");
    assert_eq!(
        cloud_stream["types"].as_array().unwrap().last().unwrap(),
        "response.incomplete"
    );
    assert_eq!(r["cloud_whole"]["status"], "completed");
    // What the cloud received: chat completions, the limit as max_tokens, usage asked on streams.
    let bodies: Vec<Value> = sim.requests().into_iter().map(|q| q["body"].clone()).collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(
        bodies[0]["messages"],
        json!([{"role": "user", "content": "Hello"}])
    );
    assert_eq!(bodies[0]["max_tokens"], 5);
    assert_eq!(bodies[1]["stream_options"]["include_usage"], true);
    assert!(!serde_json::to_string(&bodies).unwrap().contains("4111"));

    // The policy applies as to chat: the card number is answered by the local model.
    let card = &r["card"];
    assert_eq!(card["headers"]["x-sluice-route"], "local", "{card}");
    assert_eq!(card["headers"]["x-sluice-substituted-for"], "gpt-4o-mini");
    assert_eq!(card["model"], DEMO_MODEL_ID);

    // What a stateless gateway cannot do is refused, naming the field.
    for case in ["previous", "store", "tools"] {
        assert_eq!(r[case]["status"], 400, "{case}: {}", r[case]);
        assert_eq!(r[case]["code"], "unsupported_parameter", "{case}");
    }
    assert!(
        r["previous"]["message"]
            .as_str()
            .unwrap()
            .contains("send the whole conversation in `input`"),
        "{}",
        r["previous"]
    );
    // Priced and counted as chat: the cloud's three answers at list price.
    let metrics = gateway.scrape();
    assert_eq!(
        metric(
            &metrics,
            r#"sluice_requests_total{backend="sim",code="ok",model="gpt-4o-mini",route="cloud",tenant="acme"}"#
        ),
        Some(3.0),
        "{metrics}"
    );
}
