//! Durable appends per second on this machine's disk: `AuditLog::append` (one `sync_data` per record), from
//! one thread and from four, then the writer thread of `spawn_writer` (one sync per batch) fed as fast as
//! possible. The log goes to cargo's target/tmp, or to `SLUICE_AUDIT_BENCH_DIR` to measure another disk.
//!
//! ```text
//! cargo bench -p sluice-audit
//! ```

#![expect(clippy::expect_used, reason = "benchmark tool: a failing disk should stop it")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_audit::{AuditLog, AuditOptions, Record, format_time, spawn_writer};

const RUN: Duration = Duration::from_secs(3);

fn record(i: u64) -> Record {
    Record {
        time: format_time(std::time::SystemTime::now()),
        decision_id: format!("01J9Z3{i:020}"),
        request_id: format!("req-{i:016x}"),
        tenant: "acme".into(),
        model: "gpt-4o-mini".into(),
        endpoint: None,
        served_model: Some("smollm2-135m-instruct".into()),
        level: "confidential".into(),
        scan_level: Some("confidential".into()),
        scan_incomplete: false,
        declared: None,
        prefer: None,
        prompt_estimate: Some(410),
        findings: vec!["email".into()],
        positions: vec![sluice_audit::Position {
            kind: "email".into(),
            field: "messages[0].content".into(),
            start: 12,
            end: 29,
        }],
        combined: Vec::new(),
        ner: Some("ran".into()),
        rule: Some("pii-stays-local".into()),
        route: Some("local".into()),
        redactions: Default::default(),
        backend: Some("local".into()),
        fallbacks: Vec::new(),
        fell_back: None,
        max_tokens: Some(256),
        stream: Some(true),
        ttft_ms: Some(184.312),
        duration_ms: Some(1_296.871),
        status: 200,
        code: "ok".into(),
        prompt_tokens: 412,
        completion_tokens: 96,
        cost_usd: 0.0,
        cloud_equivalent_usd: Some(0.000_119),
        prompt_sha256: None,
    }
}

fn main() {
    let base = std::env::var_os("SLUICE_AUDIT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create the bench directory");
    let dir = tempfile::tempdir_in(&base).expect("temporary directory");
    println!("audit log appends in {}", base.display());

    let path = dir.path().join("one-thread.jsonl");
    let log = AuditLog::open(&path, AuditOptions::default()).expect("open");
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < RUN {
        log.append(record(n)).expect("append");
        n += 1;
    }
    report("append, 1 thread (sync per record)", n, start.elapsed());

    let path = dir.path().join("four-threads.jsonl");
    let log = Arc::new(AuditLog::open(&path, AuditOptions::default()).expect("open"));
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while start.elapsed() < RUN {
                    log.append(record(n)).expect("append");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let n: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    report("append, 4 threads (sync per record)", n, start.elapsed());

    let path = dir.path().join("writer.jsonl");
    let handle = spawn_writer(AuditLog::open(&path, AuditOptions::default()).expect("open")).expect("spawn");
    let records = 200_000;
    let start = Instant::now();
    for i in 0..records {
        handle.send(record(i));
    }
    let queued = start.elapsed();
    handle.flush();
    report("writer thread (sync per batch)", records, start.elapsed());
    println!(
        "  send() took {:.2} us per record on average",
        queued.as_secs_f64() * 1e6 / records as f64
    );
    assert_eq!(handle.errors(), 0, "write errors");
    let verified = sluice_audit::verify(&path).expect("verify");
    assert_eq!(verified.records, records);
}

fn report(what: &str, n: u64, elapsed: Duration) {
    println!(
        "{what:<40} {n:>8} records in {:.2} s: {:>8.0} per second",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}
