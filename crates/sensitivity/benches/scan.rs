//! Throughput of `Scanner::scan` on prompts of 1 KiB, 64 KiB and 1 MiB: English prose mixed with Rust,
//! Python, JSON and shell, with a few findings (an e-mail address, a card number, an AWS key id, an IP
//! address, a generic secret) embedded in each. Prints time per scan and MB/s for the default scanner,
//! one with a tenant keyword list of 202 words, and one with two custom patterns; then the default
//! scanner on adversarial text made only of candidates (numbers, hashes, `@` signs, key names, vendor
//! token prefixes, national phone numbers).
//!
//! ```text
//! cargo bench -p sluice-sensitivity
//! ```

#![expect(
    clippy::expect_used,
    reason = "benchmark tool: a broken configuration should stop it"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_sensitivity::{Scanner, ScannerConfig};

const PROSE: &[&str] = &[
    "The quarterly review covered three areas: latency, cost and reliability. Latency improved by 18% after \
     the cache was moved closer to the workers, although the p99 still spikes when a batch job starts at \
     02:00 UTC. Cost fell slightly because fewer requests were retried.",
    "Could you rewrite the following paragraph so that it sounds less formal? We would like to inform you \
     that the meeting scheduled for Thursday has been postponed until further notice, and we apologise for \
     any inconvenience this may cause to you or your team.",
    "Summarise the attached incident report in five bullet points. Focus on the root cause, the impact on \
     customers, and the actions we agreed on. Keep it under 120 words and avoid jargon where possible.",
    "In version 2.4.1 the tokenizer was rewritten; the old one split words like \"unbelievable\" into four \
     pieces, the new one into two. The change is described in the release notes from 2024-03-12.",
    "Our onboarding guide explains how to request access, which channels to join, and who to ask about \
     build failures. New engineers usually ship their first change within a week.",
];

const CODE: &[&str] = &[
    "fn parse_config(path: &Path) -> Result<Config, ConfigError> {\n    let text = std::fs::read_to_string(path)?;\n    \
     let raw: RawConfig = serde_yaml::from_str(&text)?;\n    raw.validate().map_err(|e| ConfigError::Invalid(e.to_string()))\n}\n",
    "def handler(event, context):\n    max_tokens = int(event.get(\"max_tokens\", 1024))\n    tokenizer = \
     AutoTokenizer.from_pretrained(\"gpt2\")\n    ids = tokenizer.encode(event[\"prompt\"])[:max_tokens]\n    \
     return {\"statusCode\": 200, \"body\": json.dumps({\"n\": len(ids)})}\n",
    "{\"model\": \"gpt-4o-mini\", \"temperature\": 0.2, \"messages\": [{\"role\": \"user\", \"content\": \
     \"List three uses of a hash map.\"}], \"stream\": true, \"seed\": 42}\n",
    "for f in $(git diff --name-only HEAD~1); do\n  cargo fmt -- --check \"$f\" || exit 1\ndone\n\
     docker run --rm -p 8080:8080 ghcr.io/example/app:1.7.3\n",
    "impl Drop for Guard {\n    fn drop(&mut self) {\n        if let Some(tx) = self.tx.take() {\n            \
     let _ = tx.send(Event::Finished { id: self.id, at: Instant::now() });\n        }\n    }\n}\n",
];

/// A deterministic random string, built at run time so no secret-shaped literal sits in the source.
fn fake(charset: &[u8], len: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(charset[(x % charset.len() as u64) as usize])
        })
        .collect()
}

fn findings() -> Vec<String> {
    vec![
        "Please send the invoice to maria.lopez@example.com before Friday.".to_owned(),
        "The customer paid with 4111 1111 1111 1111 and asked for a refund.".to_owned(),
        format!(
            "aws_access_key_id = AKIA{}\n",
            fake(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 1)
        ),
        "The database at 10.20.30.40 refused connections.".to_owned(),
        format!(
            "api_key = \"{}\"\n",
            fake(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                24,
                2
            )
        ),
    ]
}

/// About `size` bytes of prose and code, with one finding per 16 KiB (at least one).
fn prompt(size: usize) -> String {
    let findings = findings();
    let every = 16 * 1024;
    let mut out = String::with_capacity(size + 512);
    let (mut p, mut c, mut f) = (0, 0, 0);
    let mut next_finding = size.min(every) / 2;
    while out.len() < size {
        if out.len() >= next_finding {
            out.push_str(&findings[f % findings.len()]);
            out.push('\n');
            f += 1;
            next_finding += every;
        }
        out.push_str(PROSE[p % PROSE.len()]);
        out.push_str("\n\n");
        p += 1;
        if p % 2 == 0 {
            out.push_str(CODE[c % CODE.len()]);
            out.push('\n');
            c += 1;
        }
    }
    let mut end = size.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

fn bench(name: &str, scanner: &Scanner, text: &str) {
    // Warm up, then run for about half a second.
    let n_findings = scanner.scan(text).findings.len();
    let target = Duration::from_millis(500);
    let mut iters = 0u64;
    let start = Instant::now();
    while start.elapsed() < target {
        for _ in 0..16 {
            black_box(scanner.scan(black_box(text)));
        }
        iters += 16;
    }
    let elapsed = start.elapsed();
    let per_scan = elapsed.as_secs_f64() / iters as f64;
    let mb_s = text.len() as f64 / per_scan / 1e6;
    println!(
        "{name:<22} {:>8} bytes  {:>10.2} µs/scan  {:>8.1} MB/s  ({n_findings} findings, {iters} scans)",
        text.len(),
        per_scan * 1e6,
        mb_s
    );
}

fn main() {
    let words: Vec<String> = (0..200)
        .map(|i| format!("Project{i:03}"))
        .chain(["Falcon".into(), "Blue Harbor".into()])
        .collect();
    let keywords = serde_json::json!([{"name": "code-names", "words": words, "level": "confidential"}]);
    let patterns = serde_json::json!([
        {"name": "ticket", "pattern": "TCK-[0-9]{6}", "level": "internal"},
        {"name": "employee", "pattern": "\\bEMP[0-9]{7}\\b", "level": "confidential"},
    ]);
    let build = |config: serde_json::Value| {
        let config: ScannerConfig = serde_json::from_value(config).expect("configuration");
        Scanner::new(&config).expect("scanner")
    };
    let scanners = [
        ("default", build(serde_json::json!({}))),
        ("+202 keywords", build(serde_json::json!({"keywords": keywords}))),
        ("+2 patterns", build(serde_json::json!({"patterns": patterns}))),
    ];
    for (label, size) in [("1 KiB", 1024), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024)] {
        let text = prompt(size);
        for (name, scanner) in &scanners {
            bench(&format!("{label} {name}"), scanner, &text);
        }
    }
    // Text that is nothing but candidates: every digit run, hex group or `@` is validated. A scan stays
    // linear; these bound how slow it gets.
    let (_, default) = &scanners[0];
    let mib = |unit: &str| unit.repeat((1 << 20) / unit.len());
    for (name, text) in [
        (
            "1 MiB numbers CSV",
            mib("12345,67.89,2024-01-15,4111,98765432,415-555,"),
        ),
        (
            "1 MiB hex hashes",
            mib("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b "),
        ),
        ("1 MiB digit groups", mib("1234 5678 9012 3456 7890 ")),
        ("1 MiB @ signs", mib("a@b@c@d.e@ ")),
        // Key names inside one long value: each would read the value again if it were taken for a new
        // assignment.
        ("1 MiB key names", mib(&format!("{} ", "pass=".repeat(200)))),
        // Vendor prefixes with near-miss bodies: each prefix is matched and its body read, over a bounded
        // window, then the search resumes right after the prefix.
        (
            "1 MiB token prefixes",
            mib("sk-ant-api03-x ghp_12 xoxb-1-z pat12345678901234.q AKIA2 sk-sk-sk-sk- "),
        ),
        // Phone numbers in national formats: each is validated against libphonenumber's metadata.
        (
            "1 MiB national phones",
            mib("054-123-4567 03-1234-5678 020 7946 0958 "),
        ),
    ] {
        bench(name, default, &text);
    }
}
