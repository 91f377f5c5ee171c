//! Per-tenant limits end to end: three real gateway processes sharing a real Redis (Debian's
//! `redis-server`, started here on a free port) in front of one simulated cloud and one worker with the
//! demo model, driven by many concurrent clients of the official OpenAI Python SDK; and the same at one
//! replica with the limits in memory. What the simulated cloud recorded is what was spent.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{DEMO_MODEL_ID, Gateway, RedisServer, SimCloud, Worker, http, metric, sdk_command};
use serde_json::Value;

const ACME_KEY: &str = "sk-test-acme-limits";
const GLOBEX_KEY: &str = "sk-test-globex-limits";
/// List prices of the simulated cloud model, USD per million tokens.
const INPUT_PRICE: f64 = 0.15;
const OUTPUT_PRICE: f64 = 0.60;
const MAX_TOKENS: u64 = 8;
/// About seven requests' worth of each tenant's daily budget.
const BUDGET_USD: f64 = 0.00006;
const GLOBEX_RPM: usize = 40;

/// Two tenants: acme's cloud requests are refused once its budget is spent; globex's are served by the
/// local model, and globex may send 40 requests a minute.
fn config(sim: &SimCloud, worker: &Worker, store: &str) -> String {
    format!(
        "api_keys:
  - {{ tenant: acme, key_env: ACME_KEY }}
  - {{ tenant: globex, key_env: GLOBEX_KEY }}
local:
  workers:
    - {{ name: w0, address: {worker} }}
clouds:
  - name: sim
    base_url: {sim}
    models:
      - {{ id: gpt-4o-mini, input_usd_per_mtok: {INPUT_PRICE}, output_usd_per_mtok: {OUTPUT_PRICE} }}
limits:
  tenants:
    acme:
      tokens_per_minute: 1000000
      budget: {{ usd: {BUDGET_USD}, period: day }}
    globex:
      requests_per_minute: {GLOBEX_RPM}
      budget: {{ usd: {BUDGET_USD}, period: day, time_zone: '+01:00' }}
{store}policy:
  rules:
    - name: acme-cloud
      when: {{ tenant: acme }}
      then: {{ route: cloud }}
      over_budget: reject
    - name: globex-cloud
      when: {{ tenant: globex }}
      then: {{ route: cloud }}
      over_budget: {{ substitute: {DEMO_MODEL_ID} }}
",
        worker = worker.grpc,
        sim = sim.base_url(),
    )
}

fn start_gateway(config: &str) -> Gateway {
    Gateway::start_with(config, &[("ACME_KEY", ACME_KEY), ("GLOBEX_KEY", GLOBEX_KEY)])
}

/// `n` concurrent SDK requests of the cloud model with `key`, spread over `gateways`.
fn burst(gateways: &[&Gateway], key: &str, user: &str, n: usize) -> Vec<Value> {
    let urls: Vec<String> = gateways.iter().map(|g| g.base_url()).collect();
    let output = sdk_command(gateways[0], "burst")
        .env("SLUICE_API_KEY", key)
        .env("BASE_URLS", urls.join(","))
        .env("BURST", n.to_string())
        .env("MAX_TOKENS", MAX_TOKENS.to_string())
        .env("USER_TAG", user)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "burst failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("burst printed JSON");
    let v: Value = serde_json::from_str(last).expect("burst JSON");
    v["outcomes"].as_array().expect("outcomes").clone()
}

/// What the simulated cloud was sent for `user`, priced at most: each request's prompt as the simulator
/// counts it (a token per four characters) and `MAX_TOKENS` of answer (it never writes more).
fn cloud_spend(sim: &SimCloud, user: &str) -> (usize, f64) {
    let mine: Vec<Value> = sim
        .requests()
        .into_iter()
        .filter(|r| r["body"]["user"] == user)
        .collect();
    let spend = mine.iter().map(|r| most_cost(&r["body"])).sum();
    (mine.len(), spend)
}

fn most_cost(body: &Value) -> f64 {
    let chars: usize = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["content"].as_str())
        .map(|c| c.chars().count())
        .sum();
    let prompt = chars.div_ceil(4) as f64;
    (prompt * INPUT_PRICE + MAX_TOKENS as f64 * OUTPUT_PRICE) / 1e6
}

/// One request's reservation at most: its whole body as prompt (the gateway's estimate reads fewer
/// bytes) and `MAX_TOKENS` of answer.
fn one_reservation() -> f64 {
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say something short about the number 0000."}],"max_tokens":8,"user":"globex"}"#;
    ((body.len().div_ceil(4)) as f64 * INPUT_PRICE + MAX_TOKENS as f64 * OUTPUT_PRICE) / 1e6
}

/// Waits until at least `needed` seconds remain in the current minute, so that a burst counts in one
/// rate window.
fn fresh_minute(needed: u64) {
    let into = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() % 60;
    if 60 - into < needed {
        std::thread::sleep(Duration::from_secs(60 - into));
    }
}

fn codes(outcomes: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for o in outcomes {
        let k = format!("{} {}", o["status"], o["code"].as_str().unwrap_or("ok"));
        *out.entry(k).or_insert(0) += 1;
    }
    out
}

/// The budgets and rates hold whatever the number of replicas: acme's spend stops at its budget with
/// 429 `budget_exceeded`, globex's over-budget requests go to the local model, and globex gets exactly
/// its 40 requests a minute.
fn limits_hold(gateways: &[&Gateway], sim: &SimCloud) {
    // acme: refused once the budget is spent, never over it by more than one reservation.
    let acme = burst(gateways, ACME_KEY, "acme", 30);
    let seen = codes(&acme);
    let ok = seen.get("200 ok").copied().unwrap_or(0);
    let refused = seen.get("429 budget_exceeded").copied().unwrap_or(0);
    assert!(ok >= 1 && refused >= 1 && ok + refused == 30, "acme: {seen:?}");
    for o in acme.iter().filter(|o| o["status"] == 429) {
        assert_eq!(o["should_retry"], "false", "{o}");
        assert_eq!(o["x-sluice-rule"], "acme-cloud:over_budget", "{o}");
        let after: u64 = o["retry_after"].as_str().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&after), "{o}");
    }
    for o in acme.iter().filter(|o| o["status"] == 200) {
        assert_eq!(o["x-sluice-route"], "cloud", "{o}");
        assert_eq!(o["x-ratelimit-limit-tokens"], "1000000", "{o}");
        assert!(o["x-ratelimit-limit-requests"].is_null(), "{o}");
    }
    let (sent, spent) = cloud_spend(sim, "acme");
    assert_eq!(
        sent, ok,
        "every answered acme request, and only those, reached the cloud"
    );
    assert!(
        spent <= BUDGET_USD + one_reservation(),
        "acme spent {spent} of {BUDGET_USD}"
    );

    // globex: exactly its rate across the replicas, the cloud until its budget is spent, then local.
    fresh_minute(40);
    let globex = burst(gateways, GLOBEX_KEY, "globex", GLOBEX_RPM + 20);
    let seen = codes(&globex);
    assert_eq!(seen.get("200 ok"), Some(&GLOBEX_RPM), "globex: {seen:?}");
    assert_eq!(seen.get("429 rate_limit_exceeded"), Some(&20), "globex: {seen:?}");
    let routed = |route: &str| {
        globex
            .iter()
            .filter(|o| o["status"] == 200 && o["x-sluice-route"] == route)
            .collect::<Vec<_>>()
    };
    let (cloud, local) = (routed("cloud"), routed("local"));
    assert!(!cloud.is_empty() && !local.is_empty(), "globex: {globex:?}");
    assert_eq!(cloud.len() + local.len(), GLOBEX_RPM);
    for o in &local {
        assert_eq!(o["x-sluice-rule"], "globex-cloud:over_budget", "{o}");
        assert_eq!(o["x-sluice-model"], DEMO_MODEL_ID, "{o}");
    }
    for o in cloud.iter().chain(&local) {
        assert_eq!(o["x-ratelimit-limit-requests"], "40", "{o}");
        let remaining: usize = o["x-ratelimit-remaining-requests"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining < GLOBEX_RPM, "{o}");
    }
    for o in globex.iter().filter(|o| o["status"] == 429) {
        assert_eq!(o["x-ratelimit-remaining-requests"], "0", "{o}");
        let after: u64 = o["retry_after"].as_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&after), "{o}");
    }
    let (sent, spent) = cloud_spend(sim, "globex");
    assert_eq!(
        sent,
        cloud.len(),
        "only the cloud-routed globex requests reached the cloud"
    );
    assert!(
        spent <= BUDGET_USD + one_reservation(),
        "globex spent {spent} of {BUDGET_USD}"
    );

    // Every replica shows the shared usage.
    for g in gateways {
        let (status, body) = http(g.admin, "GET", "/admin/tenants", None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let globex = v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant"] == "globex")
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(globex["requests_per_minute"]["limit"], 40, "{body}");
        let budget = &globex["budget"];
        assert!(budget["spent_usd"].as_f64().unwrap() > 0.0, "{body}");
        assert!(
            budget["spent_usd"].as_f64().unwrap() <= BUDGET_USD + one_reservation(),
            "{body}"
        );
        let scrape = g.scrape();
        assert_eq!(
            metric(&scrape, "sluice_budget_limit_usd{tenant=\"globex\"}"),
            Some(BUDGET_USD),
            "{scrape}"
        );
    }
    let limited: f64 = gateways
        .iter()
        .filter_map(|g| {
            metric(
                &g.scrape(),
                "sluice_rate_limited_total{limit=\"requests\",tenant=\"globex\"}",
            )
        })
        .sum();
    assert_eq!(limited, 20.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_exact_limits_in_redis_and_follow_fail_when_it_goes() {
    // Room for a whole burst served locally at once.
    let worker = Worker::start(&["--max-waiting", "64"]);
    let sim = SimCloud::start(&[]);
    let mut redis = RedisServer::start();
    let store = format!(
        "  redis: {{ url: '{}', key_prefix: 'sluice-test', timeout_ms: 250 }}\n  fail: local\n",
        redis.url()
    );
    let config = config(&sim, &worker, &store);
    let gateways: Vec<Gateway> = (0..3).map(|_| start_gateway(&config)).collect();
    worker.wait_serving().await;
    for g in &gateways {
        g.wait_ready("local");
    }
    let all: Vec<&Gateway> = gateways.iter().collect();
    limits_hold(&all, &sim);

    // Redis goes away: acme (whose rule rejects over budget) is refused at once with 503
    // `limits_unavailable`; globex is served by the local model; nothing waits past the timeout much.
    redis.kill();
    let acme = burst(&all, ACME_KEY, "acme-down", 3);
    for o in &acme {
        assert_eq!(
            (o["status"].as_u64(), o["code"].as_str()),
            (Some(503), Some("limits_unavailable")),
            "{o}"
        );
        assert!(o["seconds"].as_f64().unwrap() < 2.0, "{o}");
    }
    let globex = burst(&all, GLOBEX_KEY, "globex-down", 3);
    for o in &globex {
        assert_eq!(
            (o["status"].as_u64(), o["x-sluice-route"].as_str()),
            (Some(200), Some("local")),
            "{o}"
        );
    }
    assert_eq!(
        cloud_spend(&sim, "acme-down").0 + cloud_spend(&sim, "globex-down").0,
        0
    );
    for g in &gateways {
        let (_, body) = http(g.public, "GET", "/readyz", None);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["limits"]["reachable"], false, "{body}");
        assert_eq!(metric(&g.scrape(), "sluice_limits_store_up"), Some(0.0));
        assert!(
            g.log().contains("the limits store does not answer"),
            "{}",
            g.log()
        );
    }

    // Redis back (empty, as after a crash without persistence): counting resumes without a restart, so
    // globex has a fresh budget and goes to the cloud again.
    redis.restart();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let o = burst(&all[..1], GLOBEX_KEY, "globex-back", 1).remove(0);
        if o["x-sluice-route"] == "cloud" {
            break;
        }
        assert!(Instant::now() < until, "counting never resumed: {o}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, body) = http(gateways[0].admin, "GET", "/admin/tenants", None);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reachable"], true, "{body}");
    assert_eq!(metric(&gateways[0].scrape(), "sluice_limits_store_up"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_gateway_holds_the_same_limits_in_memory() {
    // Room for a whole burst served locally at once.
    let worker = Worker::start(&["--max-waiting", "64"]);
    let sim = SimCloud::start(&[]);
    let gateway = start_gateway(&config(&sim, &worker, ""));
    worker.wait_serving().await;
    gateway.wait_ready("local");
    limits_hold(&[&gateway], &sim);
    let (_, body) = http(gateway.public, "GET", "/readyz", None);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["limits"]["store"], "memory", "{body}");
}
