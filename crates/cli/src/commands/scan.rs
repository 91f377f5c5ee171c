//! `sluice scan`: the content scanner and the personal-data model on text from standard input, as the
//! gateway runs them: findings with positions (never the text), the combinations they meet, the level.
//! With `--jsonl`, one result per input line (the accuracy benchmark's interface); with `--timing`,
//! scan times per text size.

use std::io::{BufRead, Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;
use sluice_gateway::RawGatewayConfig;
use sluice_gateway::recognise::{NerConfig, kind_of, load};
use sluice_ner::{Reading, Recognizer};
use sluice_sensitivity::{Recognised, Scan, Scanner, ScannerConfig};

use super::Failure;
use super::models::pull_ner;
use crate::args::ScanArgs;

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    id: serde_json::Value,
    text: String,
}

pub async fn run(args: &ScanArgs) -> Result<(), Failure> {
    let config: ScannerConfig = match &args.config {
        Some(file) => {
            let (raw, _) =
                RawGatewayConfig::from_yaml_file(file).map_err(|e| Failure::Usage(e.to_string()))?;
            raw.sensitivity.unwrap_or_default()
        }
        None => ScannerConfig::default(),
    };
    let scanner = Scanner::new(&config).map_err(|e| Failure::Usage(format!("sensitivity: {e}")))?;
    let model = if args.no_ner {
        None
    } else {
        let cache = sluice_models::cache_dir();
        let (weights, tokenizer) = tokio::task::spawn_blocking(move || pull_ner(&cache, false))
            .await
            .context("fetch task failed")??;
        let ner = NerConfig {
            weights,
            tokenizer,
            threads: 1,
            queue: 1,
            max_bytes: usize::MAX,
            timeout: Duration::MAX,
            cache_entries: 0,
            prefilter: false,
        };
        Some(load(&ner).context("loading the personal-data model")?)
    };
    let model = model.as_ref();
    if args.timing {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
        let texts: Vec<String> = if args.jsonl {
            input
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Line>(l).map(|l| l.text))
                .collect::<Result<_, _>>()
                .context("reading a JSON line")?
        } else {
            vec![input]
        };
        return timing(&scanner, model, &texts, args.runs.max(1), args.read_all);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.jsonl {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("reading standard input")?;
            if line.trim().is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(&line)
                .with_context(|| format!("line {}: not a JSON object with `text`", n + 1))?;
            let started = Instant::now();
            let scan = scan(&scanner, model, &line.text, args.read_all)?;
            let micros = started.elapsed().as_micros();
            let mut result = describe(&scan);
            result["id"] = line.id;
            result["micros"] = json!(micros);
            writeln!(out, "{result}").context("writing standard output")?;
        }
    } else {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        let scan = scan(&scanner, model, &text, args.read_all)?;
        writeln!(out, "{:#}", describe(&scan)).context("writing standard output")?;
    }
    Ok(())
}

/// The pattern scan, then the model's spans merged in.
fn scan(scanner: &Scanner, model: Option<&Recognizer>, text: &str, read_all: bool) -> anyhow::Result<Scan> {
    let mut scan = scanner.scan(text);
    if let Some(model) = model {
        // As the gateway reads: every word where a name would raise the level, else around cues.
        let reading = if read_all || scanner.name_would_raise(&scan) {
            Reading::Whole
        } else {
            Reading::AroundCues
        };
        let (found, _) = model
            .personal_reading(text, reading)
            .context("the personal-data model failed")?;
        scanner.merge(
            &mut scan,
            &[text],
            found.into_iter().map(|p| Recognised {
                kind: kind_of(p.kind),
                index: 0,
                range: p.range,
            }),
        );
        scan.model = sluice_sensitivity::ModelPass::Ran {
            strings: 1,
            cached: 0,
        };
    }
    Ok(scan)
}

fn describe(scan: &Scan) -> serde_json::Value {
    json!({
        "level": scan.level.as_str(),
        "findings": scan.findings.iter().map(|f| {
            let mut v = json!({"kind": f.kind.as_str(), "start": f.range.start, "end": f.range.end});
            // A tenant list's name, or the built-in rule that matched (a vendor's token format, a
            // special category).
            match &f.rule {
                Some(rule) if f.kind.is_tenant_rule() => v["list"] = json!(rule.as_ref()),
                Some(rule) => v["rule"] = json!(rule.as_ref()),
                None => {}
            }
            v
        }).collect::<Vec<_>>(),
        "combined": scan.combined.iter().map(|c| json!({"name": c.name.as_ref(), "level": c.level.as_str()})).collect::<Vec<_>>(),
        "model": !matches!(scan.model, sluice_sensitivity::ModelPass::Off),
        "complete": scan.complete,
    })
}

/// Scan times at 1 KiB, 16 KiB and 256 KiB of prose made of the input texts, pattern scan alone and
/// with the model: p50, p99 and MB/s at the median.
fn timing(
    scanner: &Scanner,
    model: Option<&Recognizer>,
    texts: &[String],
    runs: usize,
    read_all: bool,
) -> Result<(), Failure> {
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Failure::Usage(
            "--timing needs some text on standard input".into(),
        ));
    }
    println!("size      path      runs  p50_ms     p99_ms     MB/s");
    for size in [1usize << 10, 16 << 10, 256 << 10] {
        let prose = prose(texts, size);
        let mut paths: Vec<(&str, Option<&Recognizer>)> = vec![("patterns", None)];
        if let Some(m) = model {
            paths.push(("model", Some(m)));
        }
        for (name, model) in paths {
            // Fewer runs of the model at the largest size: each takes seconds.
            let n = if model.is_some() && size > 64 << 10 {
                runs.min(5)
            } else {
                runs
            };
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let scan = scan(scanner, model, &prose, read_all)?;
                times.push(started.elapsed());
                std::hint::black_box(scan);
            }
            times.sort();
            let p50 = times[times.len() / 2];
            let p99 = times[((times.len() * 99).div_ceil(100))
                .saturating_sub(1)
                .min(times.len() - 1)];
            let mbs = prose.len() as f64 / p50.as_secs_f64() / 1e6;
            println!(
                "{:<9} {:<9} {:<5} {:<10.3} {:<10.3} {:.3}",
                format!("{}KiB", size >> 10),
                name,
                n,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                mbs
            );
        }
    }
    Ok(())
}

/// The texts joined with spaces, repeated as needed, cut to at most `size` bytes on a character edge.
fn prose(texts: &[String], size: usize) -> String {
    let mut out = String::with_capacity(size + 256);
    'fill: loop {
        for t in texts.iter().filter(|t| !t.trim().is_empty()) {
            if out.len() >= size {
                break 'fill;
            }
            out.push_str(t.trim());
            out.push(' ');
        }
    }
    let mut end = size.min(out.len());
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}
