//! Replays of hand-written traces: request lines scanned as the gateway scans them, header rules, a broken
//! audit chain reported, local queueing and fallback to the cloud when the nodes are full, the sweep, and
//! the fleet file's checks.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

use std::path::Path;

use serde_json::{Value, json};
use sluice_gateway::{GatewayConfig, RawGatewayConfig};
use sluice_simulate::fleet::{FleetFile, read_fleet_file};
use sluice_simulate::report::Report;
use sluice_simulate::{Options, simulate};

const CONFIG: &str = r#"
api_keys:
  - { tenant: acme, key_env: ACME_KEY }
local:
  workers:
    - { name: w0, address: "127.0.0.1:50051" }
  cost: { capex_usd: 0, power_watts: 0, overhead_usd_per_hour: 3.6 }
clouds:
  - name: sim
    base_url: "http://127.0.0.1:8090/v1"
    models:
      - { id: gpt-4o-mini, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 }
policy:
  max_ttft_ms: 1000
  models:
    auto:
      strategy: cheapest
      members:
        - { backend: local, model: small }
        - { backend: sim, model: gpt-4o-mini }
  rules:
    - name: finance-local
      when: { headers: { x-team: [finance] } }
      then: { substitute: small }
    - name: cards-local
      when: { findings: [payment_card] }
      then: { substitute: small }
"#;

fn config() -> GatewayConfig {
    let raw = RawGatewayConfig::from_yaml_str(CONFIG).unwrap();
    raw.validate(None, Some(CONFIG), &|_| Some("k".to_owned()))
        .unwrap()
}

/// A test card number, made at run time (no card-shaped literal in the repository).
fn card() -> String {
    format!("4111 {}", ["1111"; 3].join(" "))
}

fn line(t: f64, content: &str, extra: Value) -> String {
    let mut v = json!({
        "time": t,
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 10},
        "prompt_tokens": 100,
        "completion_tokens": 10,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v.to_string()
}

fn run(trace: &Path, fleet: Option<&FleetFile>, nodes: Option<(u32, u32)>) -> (Report, Vec<Value>) {
    let config = config();
    let decisions = trace.with_extension("decisions");
    let report = simulate(&Options {
        config: &config,
        config_path: Path::new("gateway.yaml"),
        trace,
        fleet,
        speed_up: 1.0,
        nodes,
        decisions: Some(&decisions),
    })
    .unwrap();
    let lines = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, lines)
}

fn fleet(text: &str) -> FleetFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, text).unwrap();
    read_fleet_file(&path).unwrap().0
}

#[test]
fn request_lines_are_scanned_and_decided_as_the_gateway_would() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("requests.jsonl");
    let lines = [
        line(1_790_000_000.0, "What is the capital of Japan?", json!({})),
        line(
            1_790_000_001.0,
            &format!("Is {} a valid card?", card()),
            json!({}),
        ),
        line(
            1_790_000_002.0,
            "Quarterly numbers, please.",
            json!({"headers": {"X-Team": "finance"}}),
        ),
        line(1_790_000_003.0, "Hello", json!({"tenant": "globex"})),
        r#"{"time": 1790000004, "request": {"model": "gpt-4o-mini"}}"#.to_owned(),
        "not json".to_owned(),
    ];
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let (report, decisions) = run(&trace, None, None);
    let routes: Vec<(&str, &str)> = decisions
        .iter()
        .map(|d| (d["route"].as_str().unwrap(), d["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        routes,
        [
            ("cloud", "default"),
            ("local", "cards-local"),
            ("local", "finance-local"),
            ("cloud", "default")
        ]
    );
    assert_eq!(decisions[3]["tenant"], "globex");
    assert_eq!(
        decisions[0]["tenant"], "acme",
        "the first key's tenant when a line names none"
    );
    assert_eq!(
        report.trace.invalid.get("missing_required_parameter"),
        Some(&1),
        "{:?}",
        report.trace.invalid
    );
    assert_eq!(report.trace.unreadable, 1);
    assert!(
        report.trace.problems[0].contains(":6: not a request line"),
        "{:?}",
        report.trace.problems
    );
    // Cloud: 100 prompt and 10 answer tokens at 0.15 and 0.60 per million, twice.
    let cloud = report.routes.iter().find(|r| r.route == "cloud").unwrap();
    assert_eq!(cloud.cost.pico, 2 * (100 * 150_000 + 10 * 600_000));
    assert!(report.changes.is_none(), "a request trace has no recorded run");
}

#[test]
fn full_nodes_queue_then_fall_back_and_more_nodes_serve_everything_locally() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("burst.jsonl");
    // Ten requests for the virtual model at once: the cheapest member is the local one (its busy-time
    // price is below the cloud's at these rates), which holds two running and two waiting.
    let lines: Vec<String> = (0..10)
        .map(|i| {
            json!({
                "time": 1_790_000_000.0,
                "id": format!("r{i}"),
                "request": {"model": "auto", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100},
                "prompt_tokens": 1000,
                "completion_tokens": 100,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let fleet = fleet(
        "local:\n  nodes: 1\n  slots: 2\n  max_waiting: 2\n  prefill_tokens_per_second: 10000\n  decode_tokens_per_second: 10000\n  batch_speedup: 2\n  models: [small]\nclouds:\n  sim: { ttft_ms: 300 }\n",
    );
    let (report, decisions) = run(&trace, Some(&fleet), Some((1, 3)));
    let local = decisions.iter().filter(|d| d["route"] == "local").count();
    let cloud: Vec<&Value> = decisions.iter().filter(|d| d["route"] == "cloud").collect();
    assert_eq!(local, 4, "two running and two waiting on one node");
    assert_eq!(cloud.len(), 6);
    assert!(
        cloud.iter().all(|d| d["fallbacks"] == json!(["local"])),
        "{cloud:?}"
    );
    let local_row = report.routes.iter().find(|r| r.route == "local").unwrap();
    // Two at once read their prompts together, 128 tokens a round at 10,000 a second: 0.2 s for both;
    // they write 99 more tokens each (two streams, 20,000 a second: 9.9 ms); the two waiting start then,
    // so their first tokens come at 409.9 ms.
    assert_eq!(local_row.ttft.count, 4);
    let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() / want < 0.015;
    assert!(near(local_row.ttft.p50_ms, 200.0), "{:?}", local_row.ttft);
    assert!(near(local_row.ttft.p99_ms, 409.9), "{:?}", local_row.ttft);
    let cloud_row = report.routes.iter().find(|r| r.route == "cloud").unwrap();
    assert_eq!(cloud_row.fell_back, 6);
    assert_eq!(
        cloud_row.ttft.p50_ms,
        Some(300.0),
        "the fleet file's cloud latency"
    );
    // The sweep: with 3 nodes (12 places) all ten stay local.
    let by_nodes: Vec<(u32, u64)> = report
        .sweep
        .iter()
        .map(|s| (s.nodes, s.by_route.get("local").copied().unwrap_or(0)))
        .collect();
    assert_eq!(by_nodes, [(1, 4), (2, 8), (3, 10)]);
    // Node cost: 3.60 USD an hour each (1e-3 USD a second) over the replayed span.
    let s = &report.summary;
    let expected = 3.6 / 3600.0 * s.replayed_seconds;
    assert!(
        (s.local.usd - expected).abs() < 1e-9,
        "{} vs {expected}",
        s.local.usd
    );
    assert!(s.local_idle.usd >= 0.0 && s.local_busy.usd > 0.0);
}

#[test]
fn a_broken_chain_is_reported_and_the_records_still_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = sluice_audit::AuditLog::open(&path, Default::default()).unwrap();
    for i in 0..3u64 {
        log.append(sluice_audit::Record {
            time: format!("2026-12-05T10:00:0{i}.000Z"),
            request_id: format!("req-{i}"),
            tenant: "acme".into(),
            model: "gpt-4o-mini".into(),
            level: "public".into(),
            rule: Some("default".into()),
            route: Some("cloud".into()),
            backend: Some("sim".into()),
            status: 200,
            code: "ok".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 10.0 * 0.15e-6 + 5.0 * 0.6e-6,
            ttft_ms: Some(120.0),
            ..Default::default()
        })
        .unwrap();
    }
    drop(log);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"acme\"", "\"acne\"");
    std::fs::write(&path, text).unwrap();
    let (report, decisions) = run(&path, None, None);
    let chain = report.trace.chain.as_ref().unwrap();
    assert!(!chain.intact);
    assert!(
        chain.summary.contains("line 2: prev does not match"),
        "{}",
        chain.summary
    );
    assert_eq!(decisions.len(), 3);
    assert_eq!(report.changes.as_ref().unwrap().changed, 0);
    let cloud = report.routes.iter().find(|r| r.route == "cloud").unwrap();
    assert_eq!(cloud.cost.pico, cloud.recorded.as_ref().unwrap().cost.pico);
    assert_eq!(
        cloud.ttft.p50_ms,
        Some(120.0),
        "a cloud answer keeps its recorded latency"
    );
}

#[test]
fn fleet_files_are_checked_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    for (text, want) in [
        ("local:\n  slots: 0\n", "local.slots"),
        (
            "local:\n  decode_tokens_per_second: -3\n",
            "local.decode_tokens_per_second",
        ),
        ("local:\n  batch_speedup: 0.5\n", "local.batch_speedup"),
        ("local:\n  nodez: 2\n", "nodez"),
        ("clouds:\n  sim: { ttft_ms: -1 }\n", "clouds.sim.ttft_ms"),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = read_fleet_file(&path).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("fleet.yaml"), "{text}: {e}");
    }
}
