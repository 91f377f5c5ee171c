//! Writing, rotating, reopening and tampering with real files.

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tempfile::TempDir;

use crate::log::sibling;
use crate::*;

/// Small files: 50 records make four of them (three rotations).
const SMALL: AuditOptions = AuditOptions {
    max_bytes: 7_000,
    keep: 10,
};

fn record(i: u64) -> Record {
    Record {
        time: format_time(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + i)),
        decision_id: format!("dec-{i:04}"),
        request_id: format!("req-{i:04}"),
        tenant: "acme".into(),
        model: "gpt-4o-mini".into(),
        endpoint: None,
        served_model: Some("smollm2-135m-instruct".into()),
        level: "confidential".into(),
        scan_level: None,
        scan_incomplete: false,
        declared: None,
        prefer: None,
        prompt_estimate: None,
        findings: vec!["email".into(), "credit_card".into()],
        positions: Vec::new(),
        combined: Vec::new(),
        ner: None,
        rule: Some("pii-stays-local".into()),
        route: Some("local".into()),
        redactions: Default::default(),
        backend: Some("local".into()),
        fallbacks: Vec::new(),
        fell_back: None,
        max_tokens: None,
        stream: None,
        ttft_ms: None,
        duration_ms: None,
        status: 200,
        code: "ok".into(),
        prompt_tokens: 12,
        completion_tokens: 34,
        cost_usd: 0.0,
        cloud_equivalent_usd: Some(0.000_021),
        prompt_sha256: None,
    }
}

fn log_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

fn write(path: &Path, seqs: Range<u64>, options: AuditOptions) {
    let log = AuditLog::open(path, options).unwrap();
    for i in seqs {
        log.append(record(i)).unwrap();
    }
}

fn rotated_file(path: &Path, n: u32) -> PathBuf {
    sibling(path, &format!(".{n}"))
}

/// The complete lines of a file, without newlines.
fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let mut all = lines(path);
    change(&mut all);
    let text: String = all.iter().map(|l| format!("{l}\n")).collect();
    fs::write(path, text).unwrap();
}

/// Appends bytes without a newline, as a crash in the middle of a write leaves them.
fn tear(path: &Path, partial: &str) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(partial.as_bytes()).unwrap();
}

fn broken(path: &Path) -> (PathBuf, usize, Problem) {
    match verify(path) {
        Err(VerifyError::Broken { file, line, problem }) => (file, line, problem),
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn prev_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["prev"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A multi-file log: `PATH.3` (oldest), `PATH.2`, `PATH.1`, `PATH`.
fn rotated_log() -> (TempDir, PathBuf) {
    let (dir, path) = log_path();
    write(&path, 0..50, SMALL);
    assert!(rotated_file(&path, 3).exists() && !rotated_file(&path, 4).exists());
    (dir, path)
}

#[test]
fn a_line_has_the_documented_shape() {
    let (_dir, path) = log_path();
    let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append(record(0)).unwrap();
    log.append(Record {
        prompt_sha256: Some("ab".repeat(32)),
        ..record(1)
    })
    .unwrap();
    let all = lines(&path);
    assert_eq!(
        all[0],
        format!(
            "{{\"seq\":0,\"prev\":\"{GENESIS_PREV}\",\"time\":\"2023-11-14T22:13:20.000Z\",\
             \"decision_id\":\"dec-0000\",\"request_id\":\"req-0000\",\"tenant\":\"acme\",\
             \"model\":\"gpt-4o-mini\",\"served_model\":\"smollm2-135m-instruct\",\"level\":\"confidential\",\
             \"findings\":[\"email\",\"credit_card\"],\"rule\":\"pii-stays-local\",\"route\":\"local\",\
             \"backend\":\"local\",\"status\":200,\"code\":\"ok\",\"prompt_tokens\":12,\
             \"completion_tokens\":34,\"cost_usd\":0.0,\"cloud_equivalent_usd\":0.000021}}"
        )
    );
    assert_eq!(GENESIS_PREV.len(), 64);
    assert!(GENESIS_PREV.bytes().all(|b| b == b'0'));
    assert_eq!(prev_of(&all[1]), line_hash(all[0].as_bytes()));
    assert!(all[1].ends_with(&format!(",\"prompt_sha256\":\"{}\"}}", "ab".repeat(32))));
}

#[test]
fn what_a_replay_needs_is_written_and_older_lines_without_it_still_read() {
    let (_dir, path) = log_path();
    let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let replayable = Record {
        scan_level: Some("internal".into()),
        scan_incomplete: true,
        declared: Some("confidential".into()),
        prefer: Some("local".into()),
        prompt_estimate: Some(31),
        max_tokens: Some(64),
        stream: Some(true),
        ttft_ms: Some(212.5),
        duration_ms: Some(1_840.25),
        ..record(0)
    };
    log.append(replayable.clone()).unwrap();
    let line = lines(&path).remove(0);
    let facts = ",\"scan_level\":\"internal\",\"scan_incomplete\":true,\"declared\":\"confidential\",\"prefer\":\"local\",\"prompt_estimate\":31";
    assert!(
        line.contains(&format!("\"level\":\"confidential\"{facts},\"findings\"")),
        "{line}"
    );
    assert!(
        line.contains(
            ",\"max_tokens\":64,\"stream\":true,\"ttft_ms\":212.5,\"duration_ms\":1840.25,\"status\":200,"
        ),
        "{line}"
    );
    let back: LineIn = serde_json::from_str(&line).unwrap();
    assert_eq!(back.record, replayable);
    // A line written before the fields existed reads with them absent.
    let old = line
        .replace(
            ",\"max_tokens\":64,\"stream\":true,\"ttft_ms\":212.5,\"duration_ms\":1840.25",
            "",
        )
        .replace(facts, "");
    let back: LineIn = serde_json::from_str(&old).unwrap();
    assert_eq!(back.record, record(0));
}

#[test]
fn an_untouched_log_across_three_rotations_verifies() {
    let (_dir, path) = rotated_log();
    let report = verify(&path).unwrap();
    let files = vec![
        rotated_file(&path, 3),
        rotated_file(&path, 2),
        rotated_file(&path, 1),
        path.clone(),
    ];
    assert_eq!(report.files, files);
    assert_eq!(report.records, 50);
    assert_eq!((report.first_seq, report.last_seq), (Some(0), Some(49)));
    assert!(report.torn.is_empty() && !report.earlier_rotated_away());
    assert_eq!(
        report.to_string(),
        format!("{}: 50 records in 4 file(s), chain intact", path.display())
    );
    // The chain crosses files: each file's first record points at the previous file's last.
    for pair in files.windows(2) {
        let older = lines(&pair[0]);
        let newer = lines(&pair[1]);
        assert!(older.len() > 2 && !newer.is_empty());
        let last = older.last().unwrap();
        assert_eq!(seq_of(&newer[0]), seq_of(last) + 1);
        assert_eq!(prev_of(&newer[0]), line_hash(last.as_bytes()));
    }
    let active = lines(&path);
    assert_eq!(
        report.last_hash,
        Some(line_hash(active.last().unwrap().as_bytes()))
    );
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= SMALL.max_bytes);
    }
}

#[test]
fn an_edited_field_breaks_the_chain_at_the_next_line() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| {
        l[6] = l[6].replace("\"tenant\":\"acme\"", "\"tenant\":\"acne\"")
    });
    let error = verify(&path).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: line 8: prev does not match the hash of line 7 (an edited, removed or inserted record)",
            path.display()
        )
    );
    assert_eq!(
        broken(&path),
        (path.clone(), 8, Problem::PrevMismatch { file: None, line: 7 })
    );
}

#[test]
fn a_record_removed_from_the_middle_is_a_gap() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| {
        l.remove(4);
    });
    assert_eq!(
        broken(&path),
        (
            path.clone(),
            5,
            Problem::Gap {
                previous: 3,
                found: 5
            }
        )
    );
    assert!(
        verify(&path)
            .unwrap_err()
            .to_string()
            .ends_with("line 5: seq 5 follows seq 3: record 4 is missing (removed or reordered records)")
    );
}

#[test]
fn the_first_record_of_a_rotated_file_removed_is_a_gap() {
    let (_dir, path) = rotated_log();
    let file = rotated_file(&path, 2);
    let previous = seq_of(lines(&rotated_file(&path, 3)).last().unwrap());
    rewrite(&file, |l| {
        l.remove(0);
    });
    assert_eq!(
        broken(&path),
        (
            file,
            1,
            Problem::Gap {
                previous,
                found: previous + 2
            }
        )
    );
}

#[test]
fn the_last_record_of_a_rotated_file_removed_is_a_gap_in_the_next_file() {
    let (_dir, path) = rotated_log();
    let file = rotated_file(&path, 2);
    let last = seq_of(lines(&file).last().unwrap());
    rewrite(&file, |l| {
        l.pop();
    });
    assert_eq!(
        broken(&path),
        (
            rotated_file(&path, 1),
            1,
            Problem::Gap {
                previous: last - 1,
                found: last + 1
            }
        )
    );
}

#[test]
fn a_whole_rotated_file_removed_is_a_gap() {
    let (_dir, path) = rotated_log();
    let first_missing = seq_of(&lines(&rotated_file(&path, 2))[0]);
    let next = seq_of(&lines(&rotated_file(&path, 1))[0]);
    fs::remove_file(rotated_file(&path, 2)).unwrap();
    assert_eq!(
        broken(&path),
        (
            rotated_file(&path, 1),
            1,
            Problem::Gap {
                previous: first_missing - 1,
                found: next
            }
        )
    );
}

/// Undetectable by the chain alone: the oldest kept record has no predecessor to check against, so
/// removing it looks like a rotation. The report says where the chain starts.
#[test]
fn the_first_record_of_the_oldest_file_removed_reads_as_rotated_away() {
    let (_dir, path) = rotated_log();
    rewrite(&rotated_file(&path, 3), |l| {
        l.remove(0);
    });
    let report = verify(&path).unwrap();
    assert_eq!((report.first_seq, report.records), (Some(1), 49));
    assert!(report.earlier_rotated_away());
    assert_eq!(
        report.to_string(),
        format!(
            "{}: 49 records in 4 file(s), chain intact; starts at seq 1 (earlier files rotated away)",
            path.display()
        )
    );
}

/// Undetectable by the chain alone: no later record points at the newest one. The report's last seq and
/// hash, compared with a copy kept elsewhere, catch it.
#[test]
fn the_last_record_of_the_active_file_removed_shows_only_in_the_last_seq() {
    let (_dir, path) = rotated_log();
    let before = verify(&path).unwrap();
    rewrite(&path, |l| {
        l.pop();
    });
    let after = verify(&path).unwrap();
    assert_eq!((before.last_seq, after.last_seq), (Some(49), Some(48)));
    assert_eq!(after.records, 49);
    assert_ne!(before.last_hash, after.last_hash);
}

#[test]
fn a_duplicated_record_goes_backwards() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| {
        let copy = l[2].clone();
        l.insert(3, copy);
    });
    assert_eq!(
        broken(&path),
        (
            path.clone(),
            4,
            Problem::Backwards {
                previous: 2,
                found: 2
            }
        )
    );
}

#[test]
fn a_forged_record_with_a_valid_link_is_caught_at_the_record_after_it() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| {
        // The forger chains the insert correctly to line 3; line 4 (the real seq 3) then repeats its seq.
        let forged = format!(
            "{{\"seq\":3,\"prev\":\"{}\",{}",
            line_hash(l[2].as_bytes()),
            serde_json::to_string(&record(3)).unwrap().trim_start_matches('{')
        );
        l.insert(3, forged);
    });
    assert_eq!(
        broken(&path),
        (
            path.clone(),
            5,
            Problem::Backwards {
                previous: 3,
                found: 3
            }
        )
    );
}

#[test]
fn swapped_records_are_a_gap_at_the_first_of_them() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| l.swap(3, 4));
    assert_eq!(
        broken(&path),
        (
            path.clone(),
            4,
            Problem::Gap {
                previous: 2,
                found: 4
            }
        )
    );
}

#[test]
fn a_line_edited_in_a_rotated_file_is_caught_in_that_file() {
    let (_dir, path) = rotated_log();
    let file = rotated_file(&path, 2);
    rewrite(&file, |l| l[1] = l[1].replace("\"status\":200", "\"status\":403"));
    assert_eq!(
        broken(&path),
        (file, 3, Problem::PrevMismatch { file: None, line: 2 })
    );
}

#[test]
fn the_last_line_of_a_rotated_file_edited_is_caught_in_the_next_file() {
    let (_dir, path) = rotated_log();
    let file = rotated_file(&path, 2);
    let count = lines(&file).len();
    rewrite(&file, |l| {
        let last = l.len() - 1;
        l[last] = l[last].replace("\"code\":\"ok\"", "\"code\":\"no\"");
    });
    let (at, line, problem) = broken(&path);
    assert_eq!((at, line), (rotated_file(&path, 1), 1));
    assert_eq!(
        problem,
        Problem::PrevMismatch {
            file: Some(file.clone()),
            line: count
        }
    );
    assert!(
        problem
            .to_string()
            .contains(&format!("{}:{count}", file.display()))
    );
}

#[test]
fn a_garbled_or_empty_line_is_not_a_record() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| l[3] = "{\"seq\":3,".into());
    assert!(matches!(broken(&path), (_, 4, Problem::Unparsable(_))));

    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    rewrite(&path, |l| l.insert(5, String::new()));
    assert_eq!(
        broken(&path),
        (path.clone(), 6, Problem::Unparsable("empty line".into()))
    );
}

#[test]
fn the_first_record_must_point_at_zeros() {
    let (_dir, path) = log_path();
    write(&path, 0..3, AuditOptions::default());
    rewrite(&path, |l| l[0] = l[0].replacen("\"prev\":\"0", "\"prev\":\"1", 1));
    assert_eq!(broken(&path), (path.clone(), 1, Problem::NotGenesis));
}

#[test]
fn a_torn_last_line_is_reported_not_fatal() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    tear(&path, "{\"seq\":10,\"prev\":\"4f");
    let report = verify(&path).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.torn, vec![(path.clone(), 11)]);
    assert_eq!(
        report.to_string(),
        format!(
            "{0}: 10 records in 1 file(s), chain intact; torn last line at {0}:11",
            path.display()
        )
    );
}

#[test]
fn reopening_after_a_torn_line_rotates_and_the_chain_still_verifies() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    tear(&path, "{\"seq\":10,\"prev\":\"4f");
    let last_complete = lines(&path)[9].clone();
    write(&path, 10..15, AuditOptions::default());

    // The torn line stays last in the old file; the new file carries on from the last complete record.
    let old = rotated_file(&path, 1);
    assert!(fs::read_to_string(&old).unwrap().ends_with("\"prev\":\"4f"));
    let active = lines(&path);
    assert_eq!(active.len(), 5);
    assert_eq!(seq_of(&active[0]), 10);
    assert_eq!(prev_of(&active[0]), line_hash(last_complete.as_bytes()));

    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.last_seq), (15, Some(14)));
    assert_eq!(report.torn, vec![(old, 11)]);
}

/// A crash can persist a whole record but not its newline. The writer never counted it (the line and its
/// newline go out in one write), so it is torn, and the next record reuses its seq in a new file.
#[test]
fn a_last_record_without_its_newline_is_torn() {
    let (_dir, path) = log_path();
    write(&path, 0..10, AuditOptions::default());
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.trim_end_matches('\n')).unwrap();
    let report = verify(&path).unwrap();
    assert_eq!(
        (report.records, report.torn.clone()),
        (9, vec![(path.clone(), 10)])
    );

    write(&path, 9..10, AuditOptions::default());
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.last_seq), (10, Some(9)));
    assert_eq!(report.torn, vec![(rotated_file(&path, 1), 10)]);
}

#[test]
fn a_torn_line_alone_in_the_active_file_takes_the_chain_from_the_rotated_file() {
    let (_dir, path) = rotated_log();
    // Rotate by hand, as a crash right after a rotation and a partial first write leaves things.
    for n in (1..=3).rev() {
        fs::rename(rotated_file(&path, n), rotated_file(&path, n + 1)).unwrap();
    }
    fs::rename(&path, rotated_file(&path, 1)).unwrap();
    fs::write(&path, "{\"seq\":50,").unwrap();

    write(&path, 50..52, SMALL);
    assert_eq!(seq_of(&lines(&path)[0]), 50);
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.files.len()), (52, 6));
    assert_eq!(report.torn, vec![(rotated_file(&path, 1), 1)]);
}

#[test]
fn reopening_an_intact_log_continues_seq_and_prev() {
    let (_dir, path) = log_path();
    write(&path, 0..5, AuditOptions::default());
    write(&path, 5..10, AuditOptions::default());
    let all = lines(&path);
    assert_eq!(all.len(), 10);
    assert_eq!(seq_of(&all[5]), 5);
    assert_eq!(prev_of(&all[5]), line_hash(all[4].as_bytes()));
    assert_eq!(verify(&path).unwrap().records, 10);
}

#[test]
fn reopening_without_an_active_file_continues_from_the_newest_rotated_one() {
    let (_dir, path) = rotated_log();
    for n in (1..=3).rev() {
        fs::rename(rotated_file(&path, n), rotated_file(&path, n + 1)).unwrap();
    }
    fs::rename(&path, rotated_file(&path, 1)).unwrap();
    write(&path, 50..53, SMALL);
    assert_eq!(seq_of(&lines(&path)[0]), 50);
    let report = verify(&path).unwrap();
    assert_eq!(
        (report.records, report.first_seq, report.last_seq),
        (53, Some(0), Some(52))
    );
}

#[test]
fn keep_bounds_the_rotated_files_and_what_remains_verifies() {
    let (_dir, path) = log_path();
    write(&path, 0..50, AuditOptions { keep: 2, ..SMALL });
    assert!(!rotated_file(&path, 3).exists());
    let report = verify(&path).unwrap();
    assert_eq!(report.files.len(), 3);
    assert_eq!(report.last_seq, Some(49));
    assert_eq!(report.first_seq, Some(50 - report.records));
    assert!(report.earlier_rotated_away());
    assert!(report.to_string().contains(&format!(
        "starts at seq {} (earlier files rotated away)",
        50 - report.records
    )));
}

#[test]
fn a_record_longer_than_max_bytes_gets_a_file_of_its_own() {
    let (_dir, path) = log_path();
    write(
        &path,
        0..5,
        AuditOptions {
            max_bytes: 10,
            keep: 10,
        },
    );
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.files.len()), (5, 5));
}

#[test]
fn a_non_finite_cost_is_written_as_null_and_still_verifies() {
    let (_dir, path) = log_path();
    let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append(Record {
        cost_usd: f64::NAN,
        cloud_equivalent_usd: Some(f64::INFINITY),
        ..record(0)
    })
    .unwrap();
    let line = &lines(&path)[0];
    assert!(line.contains("\"cost_usd\":null,\"cloud_equivalent_usd\":null"));
    let back: LineIn = serde_json::from_str(line).unwrap();
    assert!(back.record.cost_usd.is_nan());
    assert_eq!(back.record.cloud_equivalent_usd, None);
    assert_eq!(verify(&path).unwrap().records, 1);
}

#[test]
fn a_second_writer_is_refused() {
    let (_dir, path) = log_path();
    let first = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Locked { .. })
    ));
    drop(first);
    AuditLog::open(&path, AuditOptions::default()).unwrap();
}

#[test]
fn options_that_would_lose_the_chain_are_refused() {
    let (_dir, path) = log_path();
    for options in [
        AuditOptions { keep: 0, ..SMALL },
        AuditOptions {
            max_bytes: 0,
            ..SMALL
        },
    ] {
        assert!(matches!(
            AuditLog::open(&path, options),
            Err(AuditError::Options(_))
        ));
    }
}

#[test]
fn appends_from_many_threads_form_one_chain() {
    let (_dir, path) = log_path();
    let log = Arc::new(AuditLog::open(&path, SMALL).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    log.append(record(t * 100 + i)).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.last_seq), (100, Some(99)));
}

#[test]
fn the_writer_thread_writes_everything_sent_before_a_flush() {
    let (_dir, path) = log_path();
    let options = AuditOptions {
        max_bytes: 100_000,
        keep: 10,
    };
    let handle = spawn_writer(AuditLog::open(&path, options).unwrap()).unwrap();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    handle.send(record(t * 1000 + i));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    handle.flush();
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.first_seq), (1000, Some(0)));
    assert!(report.files.len() > 1, "rotates while it writes");
    let mut ids: Vec<String> = report
        .files
        .iter()
        .flat_map(|f| lines(f))
        .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap()["decision_id"].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    assert_eq!(handle.errors(), 0);
}

#[test]
fn dropping_the_last_handle_writes_what_is_queued() {
    let (_dir, path) = log_path();
    let handle = spawn_writer(AuditLog::open(&path, AuditOptions::default()).unwrap()).unwrap();
    let clone = handle.clone();
    for i in 0..200 {
        clone.send(record(i));
    }
    drop(clone);
    drop(handle);
    assert_eq!(verify(&path).unwrap().records, 200);
    // The writer's lock is released with the thread.
    AuditLog::open(&path, AuditOptions::default()).unwrap();
}

#[test]
fn write_errors_are_counted_not_hidden() {
    let (dir, path) = log_path();
    // Every record needs a rotation after the first; with the directory gone, rotating fails.
    let log = AuditLog::open(
        &path,
        AuditOptions {
            max_bytes: 10,
            keep: 10,
        },
    )
    .unwrap();
    let handle = spawn_writer(log).unwrap();
    dir.close().unwrap();
    for i in 0..3 {
        handle.send(record(i));
    }
    handle.flush();
    assert_eq!(handle.errors(), 2);
}

#[test]
fn positions_combinations_and_the_model_are_recorded_when_there_are_any() {
    let (_dir, path) = log_path();
    let log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let full = Record {
        positions: vec![crate::Position {
            kind: "person_name".into(),
            field: "messages[1].content".into(),
            start: 8,
            end: 22,
        }],
        combined: vec!["person-with-personal-data".into()],
        ner: Some("ran".into()),
        ..record(0)
    };
    log.append(full.clone()).unwrap();
    let line = &lines(&path)[0];
    assert!(
        line.contains(
            "\"positions\":[{\"kind\":\"person_name\",\"field\":\"messages[1].content\",\"start\":8,\"end\":22}],\
             \"combined\":[\"person-with-personal-data\"],\"ner\":\"ran\""
        ),
        "{line}"
    );
    let back: Record = serde_json::from_str(line).unwrap();
    assert_eq!(
        (back.positions, back.combined, back.ner),
        (full.positions, full.combined, full.ner)
    );
}
