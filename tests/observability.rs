//! The monitoring files under deploy/: promtool checks the recording rules, alerts, their unit tests and
//! the example configuration; a real Prometheus scrapes a gateway that served local and cloud requests and
//! evaluates the rules; the Grafana dashboard queries only series and rules that exist.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`): installed with apt-get when missing and
//! running as root; otherwise these tests fail unless `SLUICE_SKIP_PROMETHEUS=1` is set.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, SimCloud, Worker, http, metric, sdk};
use serde_json::Value;

/// The gateway's series, as its /metrics serves them.
const GATEWAY_SERIES: &[&str] = &[
    "sluice_requests_total",
    "sluice_tokens_total",
    "sluice_decisions_total",
    "sluice_rejected_total",
    "sluice_sensitive_findings_total",
    "sluice_scans_incomplete_total",
    "sluice_clearance_blocked_total",
    "sluice_backend_up",
    "sluice_backend_in_flight",
    "sluice_cost_usd_total",
    "sluice_cloud_equivalent_cost_usd_total",
    "sluice_local_node_cost_usd_total",
    "sluice_discovery_synced",
    "sluice_discovery_watch_failures_total",
    "sluice_budget_spent_usd",
    "sluice_budget_limit_usd",
    "sluice_rate_limited_total",
    "sluice_limits_store_up",
    "sluice_connections_open",
    "sluice_connections_max",
    "sluice_connections_closed_total",
    "sluice_trace_spans_exported_total",
    "sluice_trace_spans_dropped_total",
    "sluice_fallbacks_total",
];

/// The gateway's histograms (each is `_bucket`, `_sum` and `_count` series).
const GATEWAY_HISTOGRAMS: &[&str] = &[
    "sluice_request_duration_seconds",
    "sluice_time_to_first_token_seconds",
];

/// The worker's series (a separate process and scrape target).
const WORKER_SERIES: &[&str] = &[
    "sluice_worker_busy_seconds_total",
    "sluice_worker_generation_tokens_total",
    "sluice_worker_prompt_tokens_total",
    "sluice_worker_requests_running",
    "sluice_worker_requests_waiting",
    "sluice_worker_slots",
    "sluice_worker_kv_cache_usage_ratio",
    "sluice_worker_requests_total",
];

/// Series the gateway creates only when something happens that the live test does not provoke, or only
/// with a configuration it does not use (Kubernetes discovery, tests/kubernetes.rs reads those; tenant
/// limits, tests/limits.rs).
const CREATED_ON_EVENTS: &[&str] = &[
    "sluice_rejected_total",
    "sluice_sensitive_findings_total",
    "sluice_discovery_synced",
    "sluice_discovery_watch_failures_total",
    "sluice_budget_spent_usd",
    "sluice_budget_limit_usd",
    "sluice_rate_limited_total",
    "sluice_limits_store_up",
    // A cloud that cannot serve a request with a fallback (tests/fallback.rs reads it).
    "sluice_fallbacks_total",
];

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .expect("repository root")
}

fn deploy(file: &str) -> PathBuf {
    repo().join("deploy").join(file)
}

/// The Prometheus tool `name`, or `None` when it is missing and `SLUICE_SKIP_PROMETHEUS=1` says that is
/// fine. CI installs Debian's `prometheus` package, so a missing tool fails there rather than passing.
fn prometheus_tool(name: &'static str) -> Option<&'static str> {
    if std::env::var("SLUICE_SKIP_PROMETHEUS").as_deref() != Ok("1") {
        common::ensure_debian_package(name, "prometheus");
    }
    let present = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Some(name);
    }
    if std::env::var("SLUICE_SKIP_PROMETHEUS").as_deref() == Ok("1") {
        eprintln!("skipped: `{name}` is not installed and SLUICE_SKIP_PROMETHEUS=1");
        return None;
    }
    panic!(
        "`{name}` is missing: install Debian's prometheus package, or set SLUICE_SKIP_PROMETHEUS=1 to skip"
    );
}

fn run_promtool(promtool: &str, args: &[&str]) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_alerts_configuration_and_dashboard_queries_pass_promtool() {
    let Some(promtool) = prometheus_tool("promtool") else {
        return;
    };
    run_promtool(
        promtool,
        &[
            "check",
            "rules",
            "deploy/prometheus/sluice-rules.yml",
            "deploy/prometheus/sluice-alerts.yml",
        ],
    );
    run_promtool(promtool, &["check", "config", "deploy/prometheus/prometheus.yml"]);
    run_promtool(
        promtool,
        &["test", "rules", "deploy/prometheus/sluice-rules.test.yml"],
    );

    // promtool parses PromQL only in rule files: the dashboard's queries go through it as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        // Grafana's range variable is not PromQL; any duration stands for it.
        let expr = expr.replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n        labels: {{ panel: {} }}\n",
            Value::from(expr),
            Value::from(title.as_str())
        ));
    }
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, rules).unwrap();
    run_promtool(promtool, &["check", "rules", path.to_str().unwrap()]);
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/sluice-dashboard.json")).expect("dashboard file");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (panel title, expression) of every query of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    panels(&d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The rules of a Prometheus rule file: (record or alert name, expression).
fn rules_of(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy(file)).expect("rule file");
    let v: Value = sluice_config::parse_yaml(&text).expect("rule file is YAML");
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| {
            let name = r["record"]
                .as_str()
                .or(r["alert"].as_str())
                .expect("record or alert");
            (name.to_owned(), r["expr"].as_str().expect("expr").to_owned())
        })
        .collect()
}

/// PromQL words that are not series names.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "Inf",
    "NaN",
];

/// Words followed by a list of label names.
const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The index just past the bracket that closes the one at `open`, skipping quoted strings.
fn past_closing(chars: &[char], open: usize, close: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            c @ ('"' | '\'' | '`') => i = past_quote(chars, i, c),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn past_quote(chars: &[char], open: usize, quote: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The series and rule names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (in matchers and grouping lists), strings, numbers or durations.
fn series_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = past_quote(&chars, i, c);
        } else if c == '{' {
            i = past_closing(&chars, i, '}');
        } else if c == '[' {
            i = past_closing(&chars, i, ']');
        } else if c == '(' && label_list_next {
            label_list_next = false;
            i = past_closing(&chars, i, ')');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LISTS.contains(&word.as_str()) {
                label_list_next = true;
            } else if !PROMQL_WORDS.contains(&word.as_str()) && next != Some(&'(') {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_series_name_reader_skips_functions_labels_strings_and_durations() {
    let names = series_names(
        r#"1e6 * sum by (node) (label_replace(rate(a_total{route="local",x=~"}"}[5m] offset 1m), "node", "$1", "backend", "(.*)")) / on() group_left(le) (b:c:rate1h > 0) or vector(0) - histogram_quantile(0.95, sum(rate(h_bucket[$__range])) by (le))"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_total", "b:c:rate1h", "h_bucket"]
    );
}

/// Series the gateway and workers export, and `up`, with each histogram's series.
fn exported_series() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = GATEWAY_SERIES
        .iter()
        .chain(WORKER_SERIES)
        .map(|s| (*s).to_owned())
        .collect();
    for h in GATEWAY_HISTOGRAMS.iter().chain(&[
        "sluice_worker_time_to_first_token_seconds",
        "sluice_worker_inter_token_latency_seconds",
    ]) {
        for suffix in ["_bucket", "_sum", "_count"] {
            known.insert(format!("{h}{suffix}"));
        }
    }
    known.insert("up".into());
    known
}

#[test]
fn the_dashboard_and_the_rules_query_only_series_and_rules_that_exist() {
    let exported = exported_series();
    let recorded = rules_of("prometheus/sluice-rules.yml");

    // A rule reads exported series and rules recorded before it in the file.
    let mut known = exported.clone();
    for (name, expr) in &recorded {
        for used in series_names(expr) {
            assert!(
                known.contains(&used),
                "rule {name} reads {used}, which nothing exports or records"
            );
        }
        assert!(
            name.matches(':').count() == 2 && !name.ends_with("_total"),
            "{name}: recorded names are level:metric:operations"
        );
        assert!(known.insert(name.clone()), "{name} recorded twice");
    }
    for (name, expr) in rules_of("prometheus/sluice-alerts.yml") {
        for used in series_names(&expr) {
            assert!(
                exported.contains(&used),
                "alert {name} reads {used}, which nothing exports"
            );
        }
    }

    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap() >= 36,
        "a current Grafana schema"
    );
    let variables = d["templating"]["list"].as_array().expect("variables");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let builtin = [
        "row",
        "timeseries",
        "stat",
        "gauge",
        "bargauge",
        "table",
        "state-timeline",
        "text",
    ];
    let mut ids = BTreeSet::new();
    let mut used_rules = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        let kind = p["type"].as_str().expect("panel type");
        assert!(builtin.contains(&kind), "{title}: {kind} is not a built-in panel");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id repeated"
        );
        if kind == "row" || kind == "text" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().expect("expr");
            let names = series_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} reads no series");
            for used in names {
                assert!(
                    known.contains(&used),
                    "{title}: {expr} reads {used}, which does not exist"
                );
                if used.contains(':') {
                    used_rules.insert(used);
                }
            }
        }
    }
    assert!(
        used_rules.len() >= 8,
        "the dashboard is built on the recording rules: {used_rules:?}"
    );
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `prometheus`, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) and storage in a temporary directory; waits until it is ready.
    fn start(binary: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child, addr, dir };
        p.wait(Duration::from_secs(30), "ready", |p| {
            std::net::TcpStream::connect(p.addr).is_ok() && http(p.addr, "GET", "/-/ready", None).0 == 200
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Polls `done` every 100 ms until it holds; fails with Prometheus' log after `within`.
    fn wait(&mut self, within: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let until = Instant::now() + within;
        while !done(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "prometheus: never {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let (status, body) = http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", percent_encode(promql)),
            None,
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query answer is JSON");
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .expect("sample value")
                    .parse()
                    .expect("a number");
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that gives one series, if it gives one.
    fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        assert!(result.len() <= 1, "{promql} gave several series: {result:?}");
        result.first().map(|(_, v)| *v)
    }

    /// Every rule from /api/v1/rules: (name, health, last error).
    fn rules(&self) -> Vec<(String, String, String)> {
        let (status, body) = http(self.addr, "GET", "/api/v1/rules", None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("health"), s("lastError"))
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `local:`, `clouds:` and `cost:` keys for one worker, one simulated cloud and a reference model.
fn backends(worker: &Worker, sim: &SimCloud) -> String {
    format!(
        "local:\n  workers:\n    - name: w0\n      address: {}\n\
         clouds:\n  - name: sim\n    base_url: {}\n    retry_backoff_ms: 50\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n\
         cost:\n  reference_model: {{ id: gpt-4o, input_usd_per_mtok: 2.5, output_usd_per_mtok: 10 }}\n",
        worker.grpc,
        sim.base_url()
    )
}

/// The names of the series in a text exposition.
fn names_in(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_gateway_and_evaluates_the_rules() {
    let Some(binary) = prometheus_tool("prometheus") else {
        return;
    };
    let started = Instant::now();
    let worker = Worker::start(&[]);
    worker.wait_serving().await;
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&backends(&worker, &sim));
    gateway.wait_ready("local");
    // Three cloud requests and one local one.
    let r = sdk(&gateway, "costs");
    let mut sent = r["cloud"].as_array().unwrap().len() + 1;

    // The series the rules, alerts and dashboard read are the ones the processes export.
    let exported = names_in(&gateway.scrape());
    for name in GATEWAY_SERIES.iter().filter(|n| !CREATED_ON_EVENTS.contains(n)) {
        assert!(
            exported.contains(*name),
            "the gateway exports no {name}: {exported:?}"
        );
    }
    for h in GATEWAY_HISTOGRAMS {
        assert!(
            exported.contains(&format!("{h}_bucket")),
            "the gateway exports no {h}"
        );
    }
    let exported = names_in(&worker.scrape());
    for name in WORKER_SERIES {
        assert!(
            exported.contains(*name),
            "the worker exports no {name}: {exported:?}"
        );
    }

    let rules = |f: &str| deploy(&format!("prometheus/{f}")).display().to_string();
    let config = format!(
        r"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
  - {alerts}
scrape_configs:
  - job_name: sluice-gateway
    static_configs:
      - targets: ['{gateway}']
  - job_name: sluice-worker
    static_configs:
      - targets: ['{worker}']
        labels:
          node: w0
",
        rules = rules("sluice-rules.yml"),
        alerts = rules("sluice-alerts.yml"),
        gateway = gateway.admin,
        worker = worker.metrics.expect("worker metrics listener"),
    );
    let mut prometheus = Prometheus::start(binary, &config);
    prometheus.wait(Duration::from_secs(15), "scraped both targets", |p| {
        p.value("sum(up)") == Some(2.0)
    });

    // One more local request while Prometheus watches, so the rates over its samples are not zero.
    sdk(&gateway, "local_once");
    sent += 1;
    let sent = sent as f64;
    prometheus.wait(Duration::from_secs(15), "saw every request", |p| {
        p.value("sum(sluice_requests_total)") == Some(sent)
    });
    let utilisation = r#"node:sluice_local_busy:ratio_rate5m{node="w0"}"#;
    let local_per_mtok = r#"route:sluice_cost_usd_per_mtok:ratio_rate1h{route="local"}"#;
    prometheus.wait(
        Duration::from_secs(15),
        "evaluated the rules over the new samples",
        |p| {
            p.value(utilisation).is_some_and(|u| u > 0.0)
                && p.value(local_per_mtok).is_some_and(|c| c > 0.0)
                && p.rules().iter().all(|(_, health, _)| health != "unknown")
        },
    );

    // What Prometheus stored is what the gateway exports, to the last bit.
    let metrics = gateway.scrape();
    for (route, backend) in [("cloud", "sim"), ("local", "w0")] {
        let stored = prometheus.value(&format!(r#"sum(sluice_cost_usd_total{{route="{route}"}})"#));
        let exported = metric(
            &metrics,
            &format!(r#"sluice_cost_usd_total{{backend="{backend}",route="{route}"}}"#),
        );
        assert!(exported.is_some_and(|c| c > 0.0), "{metrics}");
        assert_eq!(stored, exported, "{route} cost");
    }
    assert_eq!(prometheus.value("sum(sluice_requests_total)"), Some(sent));

    // Every rule evaluates without error (no vector matching conflicts) and the figures are sane.
    for (name, health, error) in prometheus.rules() {
        assert_eq!(health, "ok", "{name}: {error}");
    }
    let u = prometheus.value(utilisation).unwrap();
    assert!(u > 0.0 && u <= 1.0, "utilisation {u}");
    let charged = prometheus.value(local_per_mtok).unwrap();
    let all_in = prometheus
        .value("sluice:local_all_in_cost_usd_per_mtok:ratio_rate1h")
        .expect("all-in local cost per Mtok");
    assert!(
        charged.is_finite() && all_in >= charged,
        "idle time only adds: charged {charged}, all-in {all_in}"
    );
    assert!(
        prometheus
            .value(r#"instance_node:sluice_worker_busy_seconds:rate5m{node="w0"}"#)
            .is_some(),
        "the worker's own busy time"
    );
    assert!(prometheus.value("sluice:savings_usd:rate1h").is_some(), "savings");
    // A healthy fleet raises no alert.
    assert_eq!(prometheus.query("ALERTS"), vec![], "alerts on a healthy fleet");
    eprintln!(
        "cloud cost {:?}, requests {sent}, utilisation {u}, local USD/Mtok charged {charged} all-in {all_in}, in {:?}",
        prometheus.value(r#"sum(sluice_cost_usd_total{route="cloud"})"#),
        started.elapsed()
    );
}
