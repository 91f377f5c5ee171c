//! When the cloud goes away: the real gateway, a real worker with the demo model, and the cloud stand-in
//! on a fixed port, killed (connections refused), black-holed (a port that accepts and never answers),
//! answering 429, and back again; driven by the official OpenAI SDK. Requests for the cloud model are
//! served by the local substitute where `policy.fallbacks` allows, refused clearly where nothing does,
//! none hangs, the breaker stops the waiting once it opens, and the probe brings the cloud back.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{DEMO_MODEL_ID, Gateway, SimCloud, TEST_KEY, Worker, http, http_with, metric, sdk_command};
use serde_json::Value;

/// The cloud's per-attempt timeout, and the breaker's settings, in the configuration below.
const CLOUD_TIMEOUT: f64 = 1.0;
const COOLDOWN: f64 = 2.0;
const PROBE_INTERVAL: f64 = 0.5;

fn config(worker: &Worker, port: u16, audit: &std::path::Path) -> String {
    format!(
        "api_keys:\n  - tenant: acme\n    key_env: SLUICE_TEST_KEY\n\
         local:\n  workers:\n    - name: w0\n      address: {grpc}\n\
         clouds:\n  \
         - name: sim\n    base_url: http://127.0.0.1:{port}/v1\n    api_key_env: SIM_KEY\n    \
           timeout_seconds: {CLOUD_TIMEOUT}\n    connect_timeout_seconds: 1\n    max_retries: 0\n    \
           breaker: {{ failures: 2, cooldown_seconds: {COOLDOWN} }}\n    \
           probe: {{ path: /models, interval_seconds: {PROBE_INTERVAL} }}\n    models:\n      \
           - {{ id: gpt-4o-mini, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60 }}\n      \
           - {{ id: gpt-4o, input_usd_per_mtok: 2.5, output_usd_per_mtok: 10.0 }}\n\
         policy:\n  fallbacks:\n    - {{ model: gpt-4o-mini, to: {DEMO_MODEL_ID} }}\n\
         audit:\n  path: {audit}\n",
        grpc = worker.grpc,
        audit = audit.display(),
    )
}

/// `count` requests for `model` through the SDK, one after another: what each got, and how long it took.
fn requests(gateway: &Gateway, model: &str, count: usize, headers: &str) -> Vec<Value> {
    let out = sdk_command(gateway, "outage")
        .env("OUTAGE_MODEL", model)
        .env("OUTAGE_COUNT", count.to_string())
        .env("OUTAGE_HEADERS", headers)
        .output()
        .expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "SDK: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.log()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().expect("output")).expect("JSON");
    v["results"].as_array().expect("results").clone()
}

fn served_by_cloud(r: &Value) -> bool {
    r["status"] == 200 && r["route"] == "cloud" && r["backend"] == "sim" && r["fallback"].is_null()
}

fn fell_back(r: &Value, reason: &str) -> bool {
    r["status"] == 200
        && r["route"] == "local"
        && r["backend"] == "w0"
        && r["fallback"] == reason
        && r["substituted_for"] == "gpt-4o-mini"
        && r["model"] == DEMO_MODEL_ID
}

/// The cloud member as `/admin/backends` shows it.
fn cloud_member(gateway: &Gateway) -> Value {
    let (status, body) = http_with(gateway.admin, "GET", "/admin/backends", None, "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "sim")
        .and_then(|b| b["members"][0]["member"].as_object().cloned())
        .map(Value::Object)
        .expect("the cloud member")
}

/// Waits until a request for the cloud model is served by the cloud again; returns how long that took.
fn until_the_cloud_serves(gateway: &Gateway, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = http_with(
            gateway.public,
            "POST",
            "/v1/chat/completions",
            Some(
                r#"{"model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}"#,
            ),
            &format!("Authorization: Bearer {TEST_KEY}\r\nx-sluice-fallback: none\r\n"),
        );
        if status == 200 {
            return started.elapsed();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < limit,
            "the cloud did not come back within {limit:?}: {body}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn p99(seconds: &[f64]) -> f64 {
    let mut s = seconds.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(s.len() - 1)]
}

#[test]
fn requests_for_the_cloud_model_fall_back_to_the_local_one_while_the_cloud_is_away() {
    let worker = Worker::start(&[]);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sim = SimCloud::start_at(&addr, &[]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut gateway = Gateway::start_with(
        &config(&worker, port, &audit),
        &[("SLUICE_TEST_KEY", TEST_KEY), ("SIM_KEY", "sk-up")],
    );
    gateway.wait_ready("local");

    // Healthy: the cloud serves its model.
    for r in requests(&gateway, "gpt-4o-mini", 2, "{}") {
        assert!(served_by_cloud(&r), "{r}");
    }

    // Killed: connections refused. Every request for the cloud model is served locally, and says so.
    drop(sim);
    let killed = requests(&gateway, "gpt-4o-mini", 5, "{}");
    for r in &killed {
        assert!(fell_back(r, "cloud_unavailable"), "{r}");
        assert!(r["content"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
    }
    // The decision's explanation says what happened.
    let id = killed[0]["decision_id"].as_str().unwrap();
    let (_, body) = http(gateway.admin, "GET", &format!("/admin/decisions/{id}"), None);
    let explained: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        explained["ended"]["fell_back"], "cloud_unavailable",
        "{explained}"
    );
    assert_eq!(explained["ended"]["backend"], "w0", "{explained}");
    assert!(
        explained["reason"]
            .as_str()
            .unwrap()
            .contains("serves it locally"),
        "{explained}"
    );
    let member = cloud_member(&gateway);
    assert_eq!(member["ready"], false, "{member}");
    assert!(
        member["detail"].as_str().unwrap().contains("breaker open"),
        "{member}"
    );
    // Where no rule allows a fallback, a clear refusal that names neither the upstream's address nor its key.
    for (model, headers) in [
        ("gpt-4o", "{}"),
        ("gpt-4o-mini", r#"{"x-sluice-fallback": "none"}"#),
    ] {
        let refused = requests(&gateway, model, 1, headers);
        let r = &refused[0];
        assert_eq!(
            (r["status"].as_u64(), r["code"].as_str()),
            (Some(503), Some("backend_unavailable")),
            "{r}"
        );
        let message = r["message"].as_str().unwrap();
        assert!(message.contains("cloud backend sim is unavailable"), "{message}");
        for secret in [&addr as &str, "127.0.0.1", "http", "sk-up", &port.to_string()] {
            assert!(!message.contains(secret), "{secret:?} in {message}");
        }
        assert!(r["fallback"].is_null(), "{r}");
    }

    // Back: the probe closes the breaker within the cooldown and one probe interval (and some slack for
    // this shared machine), with no restart.
    let sim = SimCloud::start_at(&addr, &[]);
    let back = until_the_cloud_serves(&gateway, Duration::from_secs_f64(COOLDOWN + PROBE_INTERVAL + 5.0));
    eprintln!("the cloud served again {back:?} after it came back");
    assert_eq!(cloud_member(&gateway)["ready"], true);
    drop(sim);

    // Black-holed: the port accepts and never answers. The first requests each wait for the cloud's
    // timeout; once the breaker opens (two failures), none waits for the cloud at all.
    let hole = TcpListener::bind(&addr).expect("bind the black hole");
    hole.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Accepted connections are kept open, unanswered, until the phase ends.
            let mut kept = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match hole.accept() {
                    Ok((stream, _)) => kept.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    let holed = requests(&gateway, "gpt-4o-mini", 12, "{}");
    for r in &holed {
        assert!(fell_back(r, "cloud_unavailable"), "{r}");
    }
    let seconds: Vec<f64> = holed.iter().map(|r| r["seconds"].as_f64().unwrap()).collect();
    let (before, after) = seconds.split_at(2);
    let (p99_before, p99_after) = (p99(before), p99(after));
    eprintln!("black hole: p99 before the breaker opened {p99_before:.3} s, after {p99_after:.3} s");
    assert!(p99_before >= CLOUD_TIMEOUT, "{before:?}");
    assert!(p99_after < CLOUD_TIMEOUT, "after the breaker opened: {after:?}");
    assert!(p99_after * 2.0 < p99_before, "{p99_after} against {p99_before}");
    assert!(!gateway.log().contains("sk-up"), "the key in the log");

    // 429: the cloud is back but rate-limits. Once the probe has closed the breaker, the rate-limited
    // requests are served locally with their own reason, and so is the one after their 429s opened the
    // breaker (refused at once, as rate-limited).
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    held.join().unwrap();
    let sim = SimCloud::start_at(&addr, &[]);
    sim.script(r#"[{"status": 429, "retry_after_seconds": 30}, {"status": 429, "retry_after_seconds": 30}]"#);
    let until = Instant::now() + Duration::from_secs_f64(COOLDOWN + PROBE_INTERVAL + 5.0);
    while cloud_member(&gateway)["ready"] != true {
        assert!(Instant::now() < until, "the probe never closed the breaker");
        std::thread::sleep(Duration::from_millis(50));
    }
    let limited = requests(&gateway, "gpt-4o-mini", 3, "{}");
    for r in &limited {
        assert!(fell_back(r, "cloud_rate_limited"), "{r}");
    }
    // Its two 429s opened the breaker; after the cooldown a request is the trial (a listing that answers
    // would say nothing of the rate limit), finds the cloud answering, and it serves again.
    until_the_cloud_serves(&gateway, Duration::from_secs_f64(COOLDOWN + PROBE_INTERVAL + 5.0));
    // A stream that has started on the cloud is never continued elsewhere: when the cloud stalls after its
    // first chunks, the stream ends with an error event, and no fallback serves it.
    sim.script(r#"[{"stall_after_chunks": 3}]"#);
    let (status, body) = http_with(
        gateway.public,
        "POST",
        "/v1/chat/completions",
        Some(r#"{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#),
        &format!("Authorization: Bearer {TEST_KEY}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""model":"gpt-4o-mini""#), "{body}");
    assert!(
        body.contains(r#""code":"backend_timeout""#) && body.contains("stopped sending mid-answer"),
        "{body}"
    );
    assert!(
        !body.contains(DEMO_MODEL_ID),
        "continued on the local model: {body}"
    );
    let recorded = sim.requests();
    assert!(
        recorded.iter().all(|r| r["body"]["model"] == "gpt-4o-mini"),
        "{recorded:?}"
    );

    // Counted: every fallback by its reason.
    let text = gateway.scrape();
    assert_eq!(
        metric(&text, "sluice_fallbacks_total{reason=\"cloud_unavailable\"}"),
        Some((killed.len() + holed.len()) as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "sluice_fallbacks_total{reason=\"cloud_rate_limited\"}"),
        Some(limited.len() as f64)
    );
    assert_eq!(metric(&text, "sluice_backend_up{backend=\"sim\"}"), Some(1.0));
    let (status, _) = http(gateway.public, "GET", "/readyz", None);
    assert_eq!(status, 200);

    // The audit log: each fallback with its reason, the substitute as the model served.
    assert!(gateway.terminate().success());
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cases = [
        (&killed, "cloud_unavailable"),
        (&holed, "cloud_unavailable"),
        (&limited, "cloud_rate_limited"),
    ];
    for (results, reason) in cases {
        for r in results {
            let rec = records
                .iter()
                .find(|rec| rec["decision_id"] == r["decision_id"])
                .unwrap_or_else(|| panic!("no record for {r}"));
            assert_eq!(rec["fell_back"], reason, "{rec}");
            assert_eq!(rec["model"], "gpt-4o-mini", "{rec}");
            assert_eq!(
                (&rec["route"], &rec["backend"]),
                (&Value::from("local"), &Value::from("w0")),
                "{rec}"
            );
            assert_eq!(rec["served_model"], DEMO_MODEL_ID, "{rec}");
        }
    }
    let fell_back = records.iter().filter(|r| !r["fell_back"].is_null()).count();
    assert_eq!(fell_back, killed.len() + holed.len() + limited.len());
}
