//! The personal-data model's step with the real model (fetched into the model cache and converted, as
//! `sluice models pull --ner` does): what it merges into a scan, its cache, its budgets failing closed,
//! and shedding when its queue is full.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_gateway::recognise::{Busy, NerConfig, Recogniser};
use sluice_sensitivity::{Incomplete, Kind, Level, ModelPass, Scanner, ScannerConfig};

/// The converted weights and the tokenizer, made once per test run.
fn files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let cache = sluice_models::cache_dir();
        let onnx = sluice_models::ensure(&cache, &sluice_models::NER_MODEL).expect("fetch the model");
        let tokenizer =
            sluice_models::ensure(&cache, &sluice_models::NER_TOKENIZER).expect("fetch the tokenizer");
        let tensors = sluice_ner::convert(&std::fs::read(onnx).unwrap()).unwrap();
        // One file in cargo's scratch folder for tests, replaced by each run (written beside it, then
        // renamed, so concurrent runs never read half a file) instead of a new file in /tmp per run.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let weights = dir.join("sluice-recognise-test.safetensors");
        let partial = dir.join(format!("sluice-recognise-test.{}.partial", std::process::id()));
        std::fs::write(
            &partial,
            sluice_ner::to_safetensors(&tensors, HashMap::new()).unwrap(),
        )
        .unwrap();
        std::fs::rename(&partial, &weights).unwrap();
        (weights, tokenizer)
    })
}

fn config() -> NerConfig {
    let (weights, tokenizer) = files().clone();
    NerConfig {
        weights,
        tokenizer,
        threads: 1,
        queue: 4,
        max_bytes: 64 << 10,
        timeout: Duration::from_secs(60),
        cache_entries: 100,
        prefilter: true,
    }
}

fn scanner() -> Scanner {
    Scanner::new(&ScannerConfig::default()).unwrap()
}

#[tokio::test]
async fn names_with_a_diagnosis_become_restricted_and_repeats_come_from_the_cache() {
    let r = Recogniser::start(config()).unwrap();
    let s = scanner();
    let system = "You help the staff of the Riverside clinic.";
    let user = "Write to Maria Gonzalez about her schizophrenia treatment.";
    let texts = [system, user];
    let mut scan = s.scan_all(texts);
    assert_eq!(scan.level, Level::Internal, "the health term alone");
    let first = r.recognise(&s, &mut scan, &texts).await.unwrap();
    assert_eq!((first.read, first.cached), (2, 0));
    assert_eq!(scan.level, Level::Restricted);
    assert_eq!(
        scan.model,
        ModelPass::Ran {
            strings: 2,
            cached: 0
        }
    );
    let name = scan.findings.iter().find(|f| f.kind == Kind::PersonName).unwrap();
    assert_eq!((name.index, &user[name.range.clone()]), (1, "Maria Gonzalez"));

    // The same conversation again: both strings from the cache, the same answer.
    let mut again = s.scan_all(texts);
    let second = r.recognise(&s, &mut again, &texts).await.unwrap();
    assert_eq!((second.read, second.cached), (0, 2));
    assert_eq!(
        again,
        scan_with_pass(
            scan,
            ModelPass::Ran {
                strings: 2,
                cached: 2
            }
        )
    );
}

fn scan_with_pass(mut scan: sluice_sensitivity::Scan, pass: ModelPass) -> sluice_sensitivity::Scan {
    scan.model = pass;
    scan
}

#[tokio::test]
async fn past_the_byte_budget_a_request_is_restricted_unread() {
    let r = Recogniser::start(NerConfig {
        max_bytes: 100,
        ..config()
    })
    .unwrap();
    let s = scanner();
    let text = "a perfectly ordinary question about the weather, asked at some length. ".repeat(2);
    let mut scan = s.scan(&text);
    assert_eq!(scan.level, Level::Public);
    let outcome = r.recognise(&s, &mut scan, &[&text]).await.unwrap();
    assert_eq!(outcome.over_budget, Some("bytes"));
    assert_eq!(outcome.read, 0);
    assert_eq!(scan.level, Level::Restricted);
    assert_eq!(scan.model, ModelPass::OverBudget);
    assert_eq!(
        scan.incomplete,
        Some(Incomplete::ModelTooLarge {
            bytes: text.len(),
            max_bytes: 100
        })
    );
}

#[tokio::test]
async fn past_the_time_budget_a_request_is_restricted() {
    let r = Recogniser::start(NerConfig {
        timeout: Duration::from_millis(1),
        prefilter: false,
        ..config()
    })
    .unwrap();
    let s = scanner();
    let text = "Our team reviewed the backlog and agreed to close the stale tickets. ".repeat(60);
    let mut scan = s.scan(&text);
    let outcome = r.recognise(&s, &mut scan, &[&text]).await.unwrap();
    assert_eq!(outcome.over_budget, Some("time"));
    assert_eq!(scan.level, Level::Restricted);
    assert_eq!(scan.incomplete, Some(Incomplete::ModelTimedOut { millis: 1 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_sheds_rather_than_waits() {
    let r: Arc<Recogniser> = Recogniser::start(NerConfig {
        queue: 1,
        prefilter: false,
        cache_entries: 0,
        ..config()
    })
    .unwrap();
    let s = scanner();
    // Eight long distinct requests at once on one thread with one place in the queue: at most the first runs
    // and the second waits; the rest are shed.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (r, s) = (r.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let text = format!("{i} Our team reviewed the backlog and closed the stale tickets. ").repeat(40);
            let mut scan = s.scan(&text);
            r.recognise(&s, &mut scan, &[&text]).await.map(|_| scan.level)
        }));
    }
    let mut shed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(Busy) => shed += 1,
            Ok(level) => assert_eq!(level, Level::Public),
        }
    }
    // One thread and one place in the queue: at most two are served, at least one is.
    assert!((6..=7).contains(&shed), "{shed} of 8 shed");
}
