//! `sluice simulate` against real runs: a gateway with a worker (the demo model) and the cloud simulator,
//! driven by the official OpenAI SDK, writes its audit log; replaying that log against the same
//! configuration must reproduce every recorded route, rule and status and the cloud cost to the
//! picodollar; replaying it against a changed configuration must predict exactly what a real gateway with
//! that configuration does with the same requests. The report's page is checked in headless Chromium.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{DEMO_MODEL_ID, Gateway, SimCloud, TEST_KEY, Worker, sdk_command, sluice_bin};
use serde_json::Value;

const GLOBEX_KEY: &str = "sk-test-globex";

/// The configuration of both runs, with `rules` for the policy's rules and the audit log at `audit`.
fn config(worker: &Worker, sim: &SimCloud, audit: &Path, rules: &str) -> String {
    format!(
        "api_keys:\n  - tenant: acme\n    key_env: SLUICE_TEST_KEY\n  - tenant: globex\n    key_env: GLOBEX_KEY\n\
         local:\n  workers:\n    - name: w0\n      address: {}\n\
         clouds:\n  - name: sim\n    base_url: {}\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n\
         sensitivity:\n  keywords:\n    - name: codenames\n      words: [falcon]\n      level: internal\n\
         audit:\n  path: {}\n\
         policy:\n  models:\n    auto:\n      strategy: cheapest_within_slo\n      members:\n        - {{ backend: local, model: {DEMO_MODEL_ID} }}\n        - {{ backend: sim, model: gpt-4o-mini }}\n  rules:\n{rules}",
        worker.grpc,
        sim.base_url(),
        serde_json::Value::from(audit.to_string_lossy()),
    )
}

/// The recorded run's rules.
fn rules_a() -> String {
    format!(
        "    - name: no-codenames\n      when: {{ findings: [keyword] }}\n      then: {{ reject: \"Codenames stay inside.\" }}\n\
         \x20   - name: contacts-redacted\n      when: {{ min_level: confidential, model: gpt-4o-mini }}\n      then:\n        redact:\n          to: sim\n          kinds: [person_name, email, phone]\n          fallback: {{ substitute: {DEMO_MODEL_ID} }}\n\
         \x20   - name: sensitive-local-only\n      when: {{ min_level: confidential }}\n      then: {{ route: local }}\n"
    )
}

/// The candidate: codenames served locally instead of refused, contacts kept local instead of redacted,
/// and globex's cloud requests served by the local model.
fn rules_b() -> String {
    format!(
        "    - name: codenames-local\n      when: {{ findings: [keyword] }}\n      then: {{ substitute: {DEMO_MODEL_ID} }}\n\
         \x20   - name: globex-stays-local\n      when: {{ tenant: globex, model: gpt-4o-mini }}\n      then: {{ substitute: {DEMO_MODEL_ID} }}\n\
         \x20   - name: sensitive-local-only\n      when: {{ min_level: confidential }}\n      then: {{ substitute: {DEMO_MODEL_ID} }}\n"
    )
}

/// Runs the `replay` scenario as acme, then as globex, against a gateway with `config`; returns the
/// audit records it wrote, in order.
fn record_run(config: &str, audit: &Path) -> Vec<Value> {
    let mut gateway = Gateway::start_with(
        config,
        &[("SLUICE_TEST_KEY", TEST_KEY), ("GLOBEX_KEY", GLOBEX_KEY)],
    );
    gateway.wait_ready("local");
    for key in [TEST_KEY, GLOBEX_KEY] {
        let out = sdk_command(&gateway, "replay")
            .env("SLUICE_API_KEY", key)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "scenario failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            gateway.log()
        );
    }
    // The audit writer has written everything once the gateway has drained and exited.
    assert!(gateway.terminate().success());
    std::fs::read_to_string(audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

fn simulate(args: &[&str]) -> (Value, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let out = Command::new(sluice_bin())
        .arg("simulate")
        .args(args)
        .args(["--json", "--decisions"])
        .arg(&decisions)
        .output()
        .expect("sluice simulate");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&out.stdout).expect("JSON report");
    let lines = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, lines)
}

fn route_of(record: &Value) -> &str {
    record["route"].as_str().unwrap_or("refused")
}

/// USD to picodollars, as the gateway rounds.
fn pico(usd: f64) -> u128 {
    (usd * 1e12).round() as u128
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n{text}"),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reproduces_the_recorded_run_and_predicts_a_changed_one() {
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let dir = tempfile::tempdir().unwrap();

    // The recorded run.
    let audit_a = dir.path().join("audit a.jsonl");
    let config_a = config(&worker, &sim, &audit_a, &rules_a());
    let records = record_run(&config_a, &audit_a);
    assert_eq!(records.len(), 24, "two tenants, twelve requests each");
    let routes: Vec<&str> = records.iter().map(route_of).collect();
    for want in ["local", "cloud", "redacted-cloud", "refused"] {
        assert!(routes.contains(&want), "the run meets {want}: {routes:?}");
    }
    assert!(
        records.iter().any(|r| r["status"] == 404) && records.iter().any(|r| r["status"] == 403),
        "an unknown model and a rejection are recorded"
    );
    let path_a = write_config(dir.path(), "a.yaml", &config_a);
    let trace = audit_a.to_str().unwrap();

    // Replayed against the same configuration: every route, rule, backend and status as recorded.
    let (report, decisions) = simulate(&["--config", path_a.to_str().unwrap(), "--trace", trace]);
    assert_eq!(decisions.len(), records.len());
    for (d, r) in decisions.iter().zip(&records) {
        assert_eq!(d["id"], r["request_id"]);
        assert_eq!(d["route"], route_of(r), "{d} vs {r}");
        assert_eq!(d["rule"], r["rule"], "{d} vs {r}");
        assert_eq!(d["status"], r["status"], "{d} vs {r}");
        if route_of(r) != "local" {
            assert_eq!(d["backend"], r["backend"], "{d} vs {r}");
        }
    }
    assert_eq!(report["changes"]["changed"], 0, "{report}");
    assert_eq!(report["trace"]["chain"]["intact"], true);
    // The cloud cost to the picodollar: the replay prices the recorded tokens at the configuration's list
    // prices, exactly as the gateway charged them.
    for route in ["cloud", "redacted-cloud"] {
        let recorded: u128 = records
            .iter()
            .filter(|r| route_of(r) == route)
            .map(|r| pico(r["cost_usd"].as_f64().unwrap()))
            .sum();
        assert!(recorded > 0, "{route} cost something");
        let row = report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["route"] == route)
            .unwrap();
        assert_eq!(
            row["cost"]["pico"].as_u64().map(u128::from),
            Some(recorded),
            "{row}"
        );
        assert_eq!(row["recorded"]["cost"]["pico"], row["cost"]["pico"]);
        let requests = routes.iter().filter(|r| **r == route).count();
        assert_eq!(row["requests"], requests);
    }

    // The report's page, with a sweep over node counts, in headless Chromium: it shows what the JSON holds.
    let page = dir.path().join("report.html");
    let out = Command::new(sluice_bin())
        .args([
            "simulate",
            "--config",
            path_a.to_str().unwrap(),
            "--trace",
            trace,
            "--nodes",
            "1..3",
            "--html",
        ])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("against the recorded run: 0 request(s) change route or rule"),
        "{text}"
    );
    let (swept, _) = simulate(&[
        "--config",
        path_a.to_str().unwrap(),
        "--trace",
        trace,
        "--nodes",
        "1..3",
    ]);
    let dom = chromium_dom(&page);
    let money = |v: &Value| format!("${:.6}", v["usd"].as_f64().unwrap());
    let summary = &swept["summary"];
    for (id, v) in [
        ("total-usd", &summary["total"]),
        ("cloud-usd", &summary["cloud"]),
        ("local-usd", &summary["local"]),
    ] {
        assert!(
            dom.contains(&format!(r#"id="{id}">{}<"#, money(v))),
            "{id} {} not shown:\n{dom}",
            money(v)
        );
    }
    assert!(
        dom.contains(&format!(r#"id="requests">{}<"#, summary["requests"])),
        "{dom}"
    );
    for row in swept["routes"].as_array().unwrap() {
        let cells = format!(
            "<td>{}</td><td>{}</td>",
            row["route"].as_str().unwrap(),
            row["requests"]
        );
        assert!(dom.contains(&cells), "route row {cells} not shown:\n{dom}");
    }
    let sweep = swept["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 3);
    for row in sweep {
        let cells = format!("<tr><td>{}</td><td>{}</td>", row["nodes"], money(&row["total"]));
        assert!(dom.contains(&cells), "sweep row {cells} not shown:\n{dom}");
    }
    assert!(dom.contains("<svg"), "the plots are drawn");
    assert!(dom.contains(r#"id="changed">0<"#), "{dom}");

    // Replayed against the candidate, then the candidate run for real with the same requests.
    let audit_b = dir.path().join("audit b.jsonl");
    let config_b = config(&worker, &sim, &audit_b, &rules_b());
    let path_b = write_config(dir.path(), "b.yaml", &config_b);
    let (report_b, predicted) = simulate(&["--config", path_b.to_str().unwrap(), "--trace", trace]);
    let actual = record_run(&config_b, &audit_b);
    assert_eq!(predicted.len(), actual.len());
    for (p, a) in predicted.iter().zip(&actual) {
        assert_eq!(p["route"], route_of(a), "predicted {p}, the gateway did {a}");
        assert_eq!(p["rule"], a["rule"], "predicted {p}, the gateway did {a}");
        assert_eq!(p["status"], a["status"], "predicted {p}, the gateway did {a}");
    }
    let changed = report_b["changes"]["changed"].as_u64().unwrap();
    assert!(changed >= 10, "the candidate changes many decisions: {report_b}");
    let by_rule = &report_b["changes"]["by_rule"];
    assert!(by_rule["globex-stays-local"].as_u64() > Some(0), "{by_rule}");
    assert!(by_rule["codenames-local"].as_u64() > Some(0), "{by_rule}");
}

/// The page as Debian's Chromium renders it, headless, with every background connection off.
fn chromium_dom(page: &Path) -> String {
    assert!(
        common::ensure_debian_package("chromium", "chromium"),
        "the report page test needs Debian's chromium package"
    );
    let profile = tempfile::tempdir().expect("tempdir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .output()
        .expect("chromium (Debian package `chromium`)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A request trace is read as the gateway reads requests, the personal-data model included: a name with a
/// birth date written as prose stays local only when the model is on.
#[test]
fn request_lines_are_read_by_the_personal_data_model_as_the_gateway_reads_them() {
    let pulled = Command::new(sluice_bin())
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
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("requests.jsonl");
    let line = |t: u32, text: &str| {
        serde_json::json!({"time": 1_790_000_000 + t, "request": {"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}], "max_tokens": 8}})
        .to_string()
    };
    std::fs::write(
        &trace,
        [
            line(
                0,
                "Send a card to Tomasz Kowalski, born on 4 March 1975, from the whole team.",
            ),
            line(1, "Who was Abraham Lincoln?"),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let base = format!(
        "api_keys:\n  - tenant: acme\n    key_env: SLUICE_TEST_KEY\n\
         local:\n  workers:\n    - name: w0\n      address: 127.0.0.1:50051\n\
         clouds:\n  - name: sim\n    base_url: http://127.0.0.1:8090/v1\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n\
         policy:\n  rules:\n    - name: personal-local\n      when: {{ min_level: confidential }}\n      then: {{ substitute: {DEMO_MODEL_ID} }}\n"
    );
    let with_model = format!(
        "{base}ner:\n  weights: {}\n  tokenizer: {}\n",
        serde_json::Value::from(files[0]),
        serde_json::Value::from(files[1])
    );
    let routes = |name: &str, config: &str| -> Vec<(String, String)> {
        let path = write_config(dir.path(), name, config);
        let (_, decisions) = simulate(&[
            "--config",
            path.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
        ]);
        decisions
            .iter()
            .map(|d| {
                (
                    d["route"].as_str().unwrap().to_owned(),
                    d["rule"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |route: &str, rule: &str| (route.to_owned(), rule.to_owned());
    assert_eq!(
        routes("ner.yaml", &with_model),
        [pair("local", "personal-local"), pair("cloud", "default")]
    );
    assert_eq!(
        routes("patterns.yaml", &base),
        [pair("cloud", "default"), pair("cloud", "default")],
        "without the model the name and birth date are not seen"
    );
}
