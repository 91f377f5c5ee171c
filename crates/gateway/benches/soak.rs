//! Load driver of the soak (`scripts/soak` starts the servers and runs this).
//!
//! It sends a fixed mix of requests to a gateway: cloud answers streamed and not, streams the client
//! abandons after the first event (cloud and local), contacts the policy redacts before the cloud, card
//! numbers the policy keeps on the local model, the local model asked directly, and requests that fail (a
//! cloud that refuses connections, a body that is not JSON, a wrong key, a model nobody serves). Each kind
//! has its expected status and route; any other outcome is counted as unexpected and fails the run.
//!
//! First it measures the most the gateway serves of the mix (closed loop, `--connections` clients for
//! `--measure-seconds`), then it sends the mix open loop at `--fraction` of that (or at `--rate`) for
//! `--seconds`, sampling every `--every` seconds the resident memory and open descriptors of each process
//! given with `--watch NAME=PID`. After the warm-up it fails when a process's memory grew past its warm-up
//! peak by more than `--rss-growth-mib` (default: 32 MiB or a fifth of that peak, the larger) or its
//! descriptors by more than `--fd-growth`.
//!
//! ```text
//! cargo bench -p sluice-gateway --bench soak -- --url http://127.0.0.1:8080/v1 --key KEY \
//!     --local-model ID --watch gateway=PID [--watch worker=PID ...] [--seconds 600] [--csv FILE]
//! ```

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark tool"
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One kind of request in the mix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    /// The cloud model, answer read whole.
    Cloud,
    /// The cloud model, streamed to its end.
    CloudStream,
    /// The cloud model, streamed; the client hangs up after the first event.
    CloudCancel,
    /// An e-mail address and a phone number for the cloud model: redacted, sent, restored.
    Redacted,
    /// A card number for the cloud model: served by the local model instead.
    Card,
    /// The local model, streamed to its end.
    Local,
    /// The local model, streamed; the client hangs up after the first event.
    LocalCancel,
    /// A model on a cloud that refuses connections (503 `backend_unavailable`).
    Unreachable,
    /// A body that is not JSON (400).
    NotJson,
    /// A key nobody has (401).
    WrongKey,
    /// A model nobody serves (404).
    NoModel,
}

/// The mix, out of 100 requests.
const MIX: [(Kind, usize); 11] = [
    (Kind::Cloud, 34),
    (Kind::CloudStream, 22),
    (Kind::CloudCancel, 10),
    (Kind::Redacted, 10),
    (Kind::Card, 3),
    (Kind::Local, 2),
    (Kind::LocalCancel, 1),
    (Kind::Unreachable, 6),
    (Kind::NotJson, 4),
    (Kind::WrongKey, 4),
    (Kind::NoModel, 4),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cloud => "cloud",
            Kind::CloudStream => "cloud-stream",
            Kind::CloudCancel => "cloud-cancelled",
            Kind::Redacted => "redacted",
            Kind::Card => "card-local",
            Kind::Local => "local-stream",
            Kind::LocalCancel => "local-cancelled",
            Kind::Unreachable => "cloud-unreachable",
            Kind::NotJson => "not-json",
            Kind::WrongKey => "wrong-key",
            Kind::NoModel => "no-model",
        }
    }

    /// The status and `x-sluice-route` this kind must get, and its `x-sluice-rule` (for an answer) or
    /// error code (for an error).
    fn expected(self) -> (u16, Option<&'static str>, Option<&'static str>) {
        match self {
            Kind::Cloud | Kind::CloudStream | Kind::CloudCancel => (200, Some("cloud"), None),
            Kind::Redacted => (200, Some("redacted-cloud"), Some("contacts-redacted")),
            Kind::Card => (200, Some("local"), Some("contacts-redacted")),
            Kind::Local | Kind::LocalCancel => (200, Some("local"), None),
            Kind::Unreachable => (503, Some("cloud"), Some("backend_unavailable")),
            Kind::NotJson => (400, None, Some("invalid_json")),
            Kind::WrongKey => (401, None, Some("invalid_api_key")),
            Kind::NoModel => (404, None, Some("model_not_found")),
        }
    }

    fn streamed(self) -> bool {
        matches!(
            self,
            Kind::CloudStream | Kind::CloudCancel | Kind::Redacted | Kind::Local | Kind::LocalCancel
        )
    }

    fn cancelled(self) -> bool {
        matches!(self, Kind::CloudCancel | Kind::LocalCancel)
    }
}

/// The 100 kinds of the mix in a fixed interleaved order (a multiplicative walk over the slots), so that
/// any stretch of requests carries every kind.
fn schedule() -> Vec<Kind> {
    let slots: Vec<Kind> = MIX.iter().flat_map(|&(k, n)| std::iter::repeat_n(k, n)).collect();
    assert_eq!(slots.len(), 100);
    let mut order = Vec::with_capacity(100);
    let mut seen = [false; 100];
    for i in 0..100 {
        // 37 is coprime with 100: i * 37 mod 100 visits every slot once.
        let j = (i * 37) % 100;
        assert!(!seen[j]);
        seen[j] = true;
        order.push(slots[j]);
    }
    order
}

struct Options {
    url: String,
    key: String,
    local_model: String,
    cloud_model: String,
    unreachable_model: String,
    watch: Vec<(String, u32)>,
    seconds: f64,
    every: f64,
    warmup: Option<f64>,
    measure_seconds: f64,
    connections: usize,
    fraction: f64,
    rate: Option<f64>,
    rss_growth_mib: Option<f64>,
    fd_growth: u64,
    csv: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        url: String::new(),
        key: String::new(),
        local_model: String::new(),
        cloud_model: "gpt-4o-mini".into(),
        unreachable_model: "gpt-unreachable".into(),
        watch: Vec::new(),
        seconds: 600.0,
        every: 10.0,
        warmup: None,
        measure_seconds: 20.0,
        connections: 16,
        fraction: 0.5,
        rate: None,
        rss_growth_mib: None,
        fd_growth: 32,
        csv: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => o.url = value().trim_end_matches('/').into(),
            "--key" => o.key = value(),
            "--local-model" => o.local_model = value(),
            "--cloud-model" => o.cloud_model = value(),
            "--unreachable-model" => o.unreachable_model = value(),
            "--watch" => {
                let v = value();
                let (name, pid) = v.split_once('=').expect("--watch NAME=PID");
                o.watch.push((name.into(), pid.parse().expect("pid")));
            }
            "--seconds" => o.seconds = value().parse().expect("seconds"),
            "--every" => o.every = value().parse().expect("every"),
            "--warmup-seconds" => o.warmup = Some(value().parse().expect("warm-up seconds")),
            "--measure-seconds" => o.measure_seconds = value().parse().expect("measure seconds"),
            "--connections" => o.connections = value().parse().expect("connections"),
            "--fraction" => o.fraction = value().parse().expect("fraction"),
            "--rate" => o.rate = Some(value().parse().expect("rate")),
            "--rss-growth-mib" => o.rss_growth_mib = Some(value().parse().expect("MiB")),
            "--fd-growth" => o.fd_growth = value().parse().expect("descriptors"),
            "--csv" => o.csv = Some(value()),
            // cargo bench passes --bench; other harness flags do not apply.
            _ => {}
        }
    }
    assert!(
        !o.url.is_empty() && !o.key.is_empty() && !o.local_model.is_empty(),
        "give --url, --key and --local-model"
    );
    o
}

/// What the driver sends: the request of kind `kind`, numbered `n` (every body is distinct).
struct Request {
    key: String,
    body: String,
}

fn request(o: &Options, kind: Kind, n: u64) -> Request {
    let chat = |model: &str, text: String, max_tokens: u32| {
        serde_json::json!({
            "model": model,
            "stream": kind.streamed(),
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}],
        })
        .to_string()
    };
    let topic = ["the tides", "bread", "glaciers", "lighthouses", "owls", "bridges"][(n % 6) as usize];
    let body = match kind {
        Kind::Cloud | Kind::CloudStream | Kind::CloudCancel => chat(
            &o.cloud_model,
            format!("Request {n}: write two sentences about {topic}."),
            16,
        ),
        Kind::Redacted => chat(
            &o.cloud_model,
            format!(
                "Request {n}: write a short note to ana.{n}@northwind.example (or +1 415 555 {:04}) about {topic}.",
                100 + n % 100
            ),
            16,
        ),
        Kind::Card => chat(
            &o.cloud_model,
            format!("Request {n}: my card 4111 1111 1111 1111 was charged twice for {topic}; what now?"),
            4,
        ),
        Kind::Local | Kind::LocalCancel => {
            chat(&o.local_model, format!("Request {n}: one word about {topic}."), 4)
        }
        Kind::Unreachable => chat(&o.unreachable_model, format!("Request {n}: hello."), 4),
        Kind::NoModel => chat("no-such-model", format!("Request {n}: hello."), 4),
        Kind::NotJson => format!("{{\"model\": \"{}\", \"messages\": [", o.cloud_model),
        Kind::WrongKey => chat(&o.cloud_model, format!("Request {n}: hello."), 4),
    };
    let key = if kind == Kind::WrongKey {
        "sk-nobody-has-this-key".to_owned()
    } else {
        o.key.clone()
    };
    Request { key, body }
}

/// One request's outcome.
struct Outcome {
    kind: Kind,
    /// `None` when it went as expected, else what happened.
    unexpected: Option<String>,
    took: Duration,
}

async fn send(client: &reqwest::Client, url: &str, kind: Kind, r: Request) -> Outcome {
    let start = Instant::now();
    let unexpected = exchange(client, url, kind, r).await.err();
    Outcome {
        kind,
        unexpected,
        took: start.elapsed(),
    }
}

async fn exchange(client: &reqwest::Client, url: &str, kind: Kind, r: Request) -> Result<(), String> {
    let response = client
        .post(format!("{url}/chat/completions"))
        .header("authorization", format!("Bearer {}", r.key))
        .header("content-type", "application/json")
        .body(r.body)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let (status, route, named) = kind.expected();
    let rule = named.filter(|_| status == 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let got = (
        response.status().as_u16(),
        header("x-sluice-route"),
        header("x-sluice-rule"),
    );
    if got.0 != status
        || route.is_some_and(|r| got.1.as_deref() != Some(r))
        || rule.is_some_and(|r| got.2.as_deref() != Some(r))
    {
        return Err(format!("status {} route {:?} rule {:?}", got.0, got.1, got.2));
    }
    let mut response = response;
    if kind.cancelled() {
        // The first event, then hang up: dropping the response closes the connection mid-stream.
        return match response.chunk().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("stream ended before its first event".into()),
            Err(e) => Err(format!("stream broke: {e}")),
        };
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("body broke: {e}"))? {
        body.extend_from_slice(&chunk);
    }
    if status != 200 {
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "error body is not JSON".to_owned())?;
        return match v["error"]["code"].as_str() {
            Some(code) if Some(code) == named => Ok(()),
            _ => Err(format!("status {status} with error {}", v["error"])),
        };
    }
    if kind.streamed() && !body.ends_with(b"data: [DONE]\n\n") {
        return Err("stream did not end with [DONE]".into());
    }
    Ok(())
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Closed loop over the mix: the requests a second the gateway serves with `connections` clients.
async fn measure(o: &Arc<Options>, client: &reqwest::Client, order: &Arc<Vec<Kind>>) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(o.measure_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.connections {
        let (o, client, order) = (o.clone(), client.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let (mut done, mut unexpected, mut n) = (0u64, 0u64, c as u64 * 1_000_000);
            while Instant::now() < stop {
                let kind = order[(n % 100) as usize];
                let r = request(&o, kind, n);
                if send(&client, &o.url, kind, r).await.unexpected.is_some() {
                    unexpected += 1;
                }
                done += 1;
                n += 1;
            }
            (done, unexpected)
        }));
    }
    let (mut done, mut unexpected) = (0, 0);
    for t in tasks {
        let (d, u) = t.await.expect("task");
        done += d;
        unexpected += u;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    println!(
        "most served: {rate:.1} requests/s of the mix ({done} requests, {} clients, {:.0} s; {unexpected} unexpected)",
        o.connections, o.measure_seconds
    );
    rate
}

/// Resident memory (KiB) and open descriptors of a process, from /proc.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

#[derive(Default)]
struct Window {
    done: u64,
    unexpected: u64,
    latencies: Vec<Duration>,
    by_kind: BTreeMap<Kind, (u64, u64)>,
    examples: BTreeMap<Kind, String>,
}

fn percentile(all: &mut [Duration], p: f64) -> f64 {
    if all.is_empty() {
        return f64::NAN;
    }
    all.sort();
    let i = ((p / 100.0) * (all.len() - 1) as f64).round() as usize;
    all[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let o = Arc::new(options());
    let client = client();
    let order = Arc::new(schedule());
    let rate = match o.rate {
        Some(r) => r,
        None => measure(&o, &client, &order).await * o.fraction,
    };
    let warmup = o
        .warmup
        .unwrap_or((o.seconds / 10.0).max(60.0))
        .min(o.seconds / 2.0);
    println!(
        "soak: {rate:.1} requests/s for {:.0} s, samples every {:.0} s, warm-up {warmup:.0} s",
        o.seconds, o.every
    );
    let mut header = vec![
        "seconds".to_owned(),
        "requests".into(),
        "per_second".into(),
        "unexpected".into(),
    ];
    header.extend(["p50_ms".into(), "p99_ms".into()]);
    for (name, _) in &o.watch {
        header.push(format!("{name}_rss_kib"));
        header.push(format!("{name}_fds"));
    }
    println!("{}", header.join(","));
    let mut csv = o
        .csv
        .as_ref()
        .map(|path| std::fs::File::create(path).expect("create --csv"));
    if let Some(f) = csv.as_mut() {
        writeln!(f, "{}", header.join(",")).expect("write csv");
    }

    let window = Arc::new(Mutex::new(Window::default()));
    let totals = Arc::new(Mutex::new(Window::default()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(o.seconds);
    let mut next_sample = start + Duration::from_secs_f64(o.every);
    let mut samples: Vec<(f64, Vec<(u64, u64)>)> = Vec::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut n = 0u64;
    loop {
        let due = start + interval.mul_f64(n as f64);
        if due >= end {
            break;
        }
        if due >= next_sample {
            tokio::time::sleep_until(next_sample).await;
            let at = next_sample.duration_since(start).as_secs_f64();
            let mut w = std::mem::take(&mut *window.lock().unwrap());
            let procs: Vec<(u64, u64)> = o
                .watch
                .iter()
                .map(|(name, pid)| sample(*pid).unwrap_or_else(|| panic!("{name} (pid {pid}) is gone")))
                .collect();
            let mut row = vec![
                format!("{at:.0}"),
                w.done.to_string(),
                format!("{:.1}", w.done as f64 / o.every),
                w.unexpected.to_string(),
                format!("{:.1}", percentile(&mut w.latencies, 50.0)),
                format!("{:.1}", percentile(&mut w.latencies, 99.0)),
            ];
            for (rss, fds) in &procs {
                row.push(rss.to_string());
                row.push(fds.to_string());
            }
            println!("{}", row.join(","));
            if let Some(f) = csv.as_mut() {
                writeln!(f, "{}", row.join(",")).expect("write csv");
            }
            for (kind, example) in w.examples {
                println!("  unexpected {}: {example}", kind.name());
            }
            samples.push((at, procs));
            next_sample += Duration::from_secs_f64(o.every);
            continue;
        }
        tokio::time::sleep_until(due).await;
        let kind = order[(n % 100) as usize];
        let r = request(&o, kind, n);
        let (client, o2, window, totals) = (client.clone(), o.clone(), window.clone(), totals.clone());
        in_flight.spawn(async move {
            let outcome = send(&client, &o2.url, kind, r).await;
            for w in [&window, &totals] {
                let mut w = w.lock().unwrap();
                w.done += 1;
                let entry = w.by_kind.entry(outcome.kind).or_default();
                entry.0 += 1;
                if let Some(e) = &outcome.unexpected {
                    entry.1 += 1;
                    w.unexpected += 1;
                    w.examples.entry(outcome.kind).or_insert_with(|| e.clone());
                } else if outcome.kind == Kind::Cloud {
                    w.latencies.push(outcome.took);
                }
            }
        });
        // Reap the finished ones so the set stays the size of what is in flight.
        while in_flight.try_join_next().is_some() {}
        n += 1;
    }
    while in_flight.join_next().await.is_some() {}

    let totals = std::mem::take(&mut *totals.lock().unwrap());
    println!(
        "\nsent {n}, answered {}; by kind (answered, unexpected):",
        totals.done
    );
    for (kind, (done, bad)) in &totals.by_kind {
        println!("  {:<18} {done:>8} {bad:>6}", kind.name());
    }
    for (kind, example) in &totals.examples {
        println!("  first unexpected {}: {example}", kind.name());
    }
    let mut failed = Vec::new();
    if totals.unexpected > 0 || totals.done != n {
        failed.push(format!(
            "{} unexpected outcomes, {} of {n} answered",
            totals.unexpected, totals.done
        ));
    }
    failed.extend(verdict(&o, warmup, &samples));
    if failed.is_empty() {
        println!("PASS");
    } else {
        for f in &failed {
            println!("FAIL: {f}");
        }
        std::process::exit(1);
    }
}

/// Each watched process's growth after the warm-up against the bounds, with its trend; the failures.
fn verdict(o: &Options, warmup: f64, samples: &[(f64, Vec<(u64, u64)>)]) -> Vec<String> {
    let mut failed = Vec::new();
    println!("\nafter the warm-up ({warmup:.0} s), against the warm-up's peak:");
    for (i, (name, _)) in o.watch.iter().enumerate() {
        let (warm, after): (Vec<_>, Vec<_>) = samples
            .iter()
            .map(|(t, procs)| (*t, procs[i]))
            .partition(|(t, _)| *t <= warmup);
        let (Some(peak), Some(_)) = (
            warm.iter()
                .map(|(_, p)| *p)
                .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1))),
            after.first(),
        ) else {
            println!("  {name}: too few samples to judge");
            continue;
        };
        let rss_max = after.iter().map(|(_, p)| p.0).max().unwrap_or(0);
        let fd_max = after.iter().map(|(_, p)| p.1).max().unwrap_or(0);
        let last = after.last().map_or((0, 0), |(_, p)| *p);
        let bound_mib = o
            .rss_growth_mib
            .unwrap_or_else(|| (peak.0 as f64 / 1024.0 / 5.0).max(32.0));
        let growth_mib = (rss_max as f64 - peak.0 as f64) / 1024.0;
        // Least squares over the samples after the warm-up: MiB an hour.
        let slope = {
            let k = after.len() as f64;
            let (mt, mr) = after
                .iter()
                .fold((0.0, 0.0), |(a, b), (t, p)| (a + t / k, b + p.0 as f64 / k));
            let (num, den) = after.iter().fold((0.0, 0.0), |(a, b), (t, p)| {
                (a + (t - mt) * (p.0 as f64 - mr), b + (t - mt) * (t - mt))
            });
            if den > 0.0 {
                num / den * 3600.0 / 1024.0
            } else {
                0.0
            }
        };
        println!(
            "  {name}: RSS warm-up peak {:.1} MiB, highest after {:.1} MiB ({growth_mib:+.1}, bound +{bound_mib:.1}), last {:.1} MiB, trend {slope:+.1} MiB/h; descriptors peak {}, highest after {fd_max} (bound +{}), last {}",
            peak.0 as f64 / 1024.0,
            rss_max as f64 / 1024.0,
            last.0 as f64 / 1024.0,
            peak.1,
            o.fd_growth,
            last.1
        );
        if growth_mib > bound_mib {
            failed.push(format!(
                "{name}'s memory grew {growth_mib:.1} MiB past its warm-up peak (bound {bound_mib:.1})"
            ));
        }
        if fd_max > peak.1 + o.fd_growth {
            failed.push(format!(
                "{name}'s descriptors grew to {fd_max} from {} (bound +{})",
                peak.1, o.fd_growth
            ));
        }
    }
    failed
}
