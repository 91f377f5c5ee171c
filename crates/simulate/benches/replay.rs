//! A million-record audit log replayed on one core: how long `simulate` takes (the chain check, the
//! first pass and the replay, all included), and the process's peak memory during the replay of a tenth of
//! the trace and of all of it, which stay level when records are streamed. Next to it, `sluice audit
//! verify`'s check of the same log alone (reading, parsing and hashing every line): the floor any replay
//! pays.
//!
//! ```text
//! taskset -c 0 cargo bench -p sluice-simulate --bench replay [-- RECORDS]
//! ```
//!
//! The log goes to cargo's target/tmp (about 0.5 GB for a million records) and is removed afterwards.

#![expect(clippy::expect_used, reason = "benchmark tool: a failure should stop it")]

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use sluice_audit::{AuditLog, AuditOptions, Record, format_time, spawn_writer};
use sluice_gateway::RawGatewayConfig;
use sluice_simulate::{Options, simulate};

const CONFIG: &str = r#"
api_keys:
  - { tenant: default, key_env: BENCH_KEY }
local:
  workers:
    - { name: worker-0, address: "127.0.0.1:50051" }
clouds:
  - name: openai
    base_url: "http://127.0.0.1:8090/v1"
    models:
      - { id: gpt-4o-mini, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 }
policy:
  max_ttft_ms: 2000
  models:
    auto:
      strategy: cheapest_within_slo
      members:
        - { backend: local, model: smollm2 }
        - { backend: openai, model: gpt-4o-mini }
  rules:
    - name: contacts-redacted
      when: { min_level: confidential, model: gpt-4o-mini }
      then:
        redact:
          to: openai
          kinds: [person_name, email, phone]
          fallback: { substitute: smollm2 }
    - name: sensitive-local-only
      when: { min_level: confidential }
      then: { route: local }
"#;

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];

/// Record `i` of a day of traffic: one request every 86 ms, a mix of cloud, local and redacted, as the
/// configuration above decides them (the virtual model goes to the cloud: the node's busy-time price is
/// above the cloud's list price).
fn record(i: u64) -> Record {
    let kind = i % 10;
    let (model, findings, level, route, rule, backend) = match kind {
        0..=5 => ("gpt-4o-mini", vec![], "public", "cloud", "default", "openai"),
        6 => (
            "gpt-4o-mini",
            vec!["email".to_owned()],
            "confidential",
            "redacted-cloud",
            "contacts-redacted",
            "openai",
        ),
        7 => (
            "smollm2",
            vec!["payment_card".to_owned()],
            "restricted",
            "local",
            "sensitive-local-only",
            "worker-0",
        ),
        _ => ("auto", vec![], "public", "cloud", "default", "openai"),
    };
    let (prompt, completion) = (200 + i % 300, 50 + i % 150);
    let cloud = route != "local";
    Record {
        time: format_time(UNIX_EPOCH + Duration::from_millis(1_790_000_000_000 + i * 86 + i % 5)),
        decision_id: format!("dec_{i:016x}"),
        request_id: format!("req_{i:016x}"),
        tenant: TENANTS[(i % 5) as usize].to_owned(),
        model: model.to_owned(),
        endpoint: None,
        served_model: Some(if cloud { "gpt-4o-mini" } else { "smollm2" }.to_owned()),
        level: level.to_owned(),
        scan_level: Some(level.to_owned()),
        prompt_estimate: Some(prompt),
        findings,
        rule: Some(rule.to_owned()),
        route: Some(route.to_owned()),
        backend: Some(backend.to_owned()),
        max_tokens: Some(256),
        stream: Some(i.is_multiple_of(2)),
        ttft_ms: Some(if cloud {
            300.0 + (i % 200) as f64
        } else {
            150.0 + (i % 100) as f64
        }),
        duration_ms: Some(if cloud {
            1200.0
        } else {
            150.0 + completion as f64 * 12.0
        }),
        status: 200,
        code: "ok".to_owned(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cost_usd: if cloud {
            (prompt as f64 * 0.15 + completion as f64 * 0.6) / 1e6
        } else {
            0.0
        },
        ..Record::default()
    }
}

fn write_log(path: &Path, records: u64) {
    let log = AuditLog::open(
        path,
        AuditOptions {
            max_bytes: 64 << 20,
            keep: 64,
        },
    )
    .expect("open the log");
    let writer = spawn_writer(log).expect("writer");
    for i in 0..records {
        writer.send(record(i));
        // Bounds the writer's queue, so that the log's writing does not set the process's peak memory.
        if i % 10_000 == 9_999 {
            writer.flush();
        }
    }
    writer.flush();
}

/// The process's peak resident memory so far, in MiB (VmHWM).
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run(dir: &Path, records: u64) -> (f64, f64, f64, f64) {
    let path = dir.join(format!("audit-{records}.jsonl"));
    let started = Instant::now();
    write_log(&path, records);
    eprintln!(
        "wrote {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let verified = sluice_audit::verify(&path).expect("the chain verifies");
    let verify = started.elapsed().as_secs_f64();
    assert_eq!(verified.records, records);

    let raw = RawGatewayConfig::from_yaml_str(CONFIG).expect("bench config");
    let env = |_: &str| Some("bench".to_owned());
    let config = raw
        .validate(None, Some(CONFIG), &env)
        .expect("bench config is valid");
    // The peak memory from here on is the replay's (Linux: writing 5 resets VmHWM to the current size).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = current_mib();
    let started = Instant::now();
    let report = simulate(&Options {
        config: &config,
        config_path: Path::new("bench.yaml"),
        trace: &path,
        fleet: None,
        speed_up: 1.0,
        nodes: None,
        decisions: None,
    })
    .expect("simulate");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(report.summary.requests, records);
    assert_eq!(
        report.changes.as_ref().map(|c| c.changed),
        Some(0),
        "the same config changes nothing"
    );
    for f in sluice_audit::log_files(&path).expect("files") {
        let _ = std::fs::remove_file(f);
    }
    (took, verify, before, peak_mib())
}

/// The process's resident memory now, in MiB (VmRSS).
fn current_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    println!("  records   simulate s   records/s   verify alone s   RSS before MiB   peak during MiB");
    for n in [records / 10, records] {
        let (took, verify, before, peak) = run(dir.path(), n);
        println!(
            "{n:>9}   {took:>10.2}   {:>9.0}   {verify:>14.2}   {before:>14.1}   {peak:>15.1}",
            n as f64 / took
        );
    }
}
