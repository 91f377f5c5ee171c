//! Load generator for the gateway benchmark (`scripts/bench-gateway` starts the servers and runs this).
//!
//! For each target (a base URL serving the OpenAI API) it sends the same small, non-streamed chat request:
//! closed-loop with a fixed number of connections to find the most it can serve, then open-loop at fixed
//! rates (requests leave on schedule whether or not earlier ones have returned, and latency counts from
//! the scheduled time, so a stalled server cannot hide its queue). The first target is the baseline: in
//! the open loop it runs at the same time as each other target, and the difference of their percentiles
//! is that target's added latency.
//!
//! ```text
//! cargo bench -p sluice-gateway --bench load -- --target direct=URL --target sluice=URL:KEY ...
//!     [--rates 250,500,1000] [--seconds 5] [--connections 32] [--model gpt-4o-mini] [--rounds 1]
//!     [--bodies FILE]
//! ```
//!
//! `--bodies FILE` sends the request bodies in FILE (one JSON object a line) in turn instead of the one
//! small request: a realistic mix (distinct user messages behind a repeated system prompt). Every answer
//! is read to its end; the open loop reports the time to its first byte too (for a stream, its first
//! event).

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark tool"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

struct Target {
    name: String,
    url: String,
    key: String,
}

struct Options {
    targets: Vec<Target>,
    rates: Vec<u32>,
    seconds: f64,
    connections: usize,
    model: String,
    /// Closed-loop rounds; each round runs every target once, in an order that alternates.
    rounds: usize,
    /// A file of request bodies, one a line, sent in turn.
    bodies: Option<String>,
}

/// The request bodies, sent in turn (each target gets every body in order, wrapping).
#[derive(Clone)]
struct Bodies {
    all: Arc<Vec<bytes::Bytes>>,
    next: Arc<AtomicU64>,
}

impl Bodies {
    fn next(&self) -> bytes::Bytes {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        self.all[i % self.all.len()].clone()
    }

    fn first(&self) -> bytes::Bytes {
        self.all[0].clone()
    }
}

fn options() -> Options {
    let mut o = Options {
        targets: Vec::new(),
        rates: vec![250, 500, 1000],
        seconds: 5.0,
        connections: 32,
        model: "gpt-4o-mini".into(),
        rounds: 1,
        bodies: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--target" => {
                let v = value();
                let (name, rest) = v.split_once('=').expect("--target NAME=URL[,KEY]");
                let (url, key) = rest.split_once(',').unwrap_or((rest, "none"));
                o.targets.push(Target {
                    name: name.into(),
                    url: url.trim_end_matches('/').into(),
                    key: key.into(),
                });
            }
            "--rates" => o.rates = value().split(',').map(|r| r.parse().expect("rate")).collect(),
            "--seconds" => o.seconds = value().parse().expect("seconds"),
            "--connections" => o.connections = value().parse().expect("connections"),
            "--model" => o.model = value(),
            "--rounds" => o.rounds = value().parse::<usize>().expect("rounds").max(1),
            "--bodies" => o.bodies = Some(value()),
            // cargo bench passes --bench; other harness flags do not apply.
            _ => {}
        }
    }
    assert!(!o.targets.is_empty(), "give at least one --target NAME=URL[,KEY]");
    o
}

#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    /// Time to the first byte of the answer's body (for a stream, its first event).
    firsts: Vec<Duration>,
    errors: u64,
    elapsed: Duration,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }

    fn first_byte(&self, p: f64) -> f64 {
        percentile(&self.firsts, p)
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(all: &[Duration], p: f64) -> f64 {
    if all.is_empty() {
        return f64::NAN;
    }
    let mut v = all.to_vec();
    v.sort();
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends one request and reads the whole answer; returns when its first byte of body arrived, or `None`
/// for an error.
async fn one(client: &reqwest::Client, target: &Target, body: &bytes::Bytes) -> Option<Instant> {
    let response = client
        .post(format!("{}/chat/completions", target.url))
        .header("authorization", format!("Bearer {}", target.key))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    let mut r = response.ok().filter(|r| r.status().is_success())?;
    let mut first = None;
    while let Some(chunk) = r.chunk().await.ok()? {
        if first.is_none() && !chunk.is_empty() {
            first = Some(Instant::now());
        }
    }
    Some(first.unwrap_or_else(Instant::now))
}

/// Open loop: `rate` requests per second for `seconds`.
async fn open_loop(
    client: &reqwest::Client,
    target: &Arc<Target>,
    bodies: &Bodies,
    rate: u32,
    seconds: f64,
) -> Run {
    let total = (f64::from(rate) * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let (client, target, body) = (client.clone(), target.clone(), bodies.next());
        tasks.push(tokio::spawn(async move {
            let first = one(&client, &target, &body).await;
            (first.map(|f| f - due), due.elapsed())
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        let (first, took) = t.await.expect("task");
        if let Some(first) = first {
            run.latencies.push(took);
            run.firsts.push(first);
        } else {
            run.errors += 1;
        }
    }
    run.elapsed = start.elapsed();
    run
}

/// Closed loop: `connections` clients sending back to back for `seconds`.
async fn closed_loop(
    client: &reqwest::Client,
    target: &Arc<Target>,
    bodies: &Bodies,
    connections: usize,
    seconds: f64,
) -> Run {
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, target, bodies, errors) =
            (client.clone(), target.clone(), bodies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                if one(&client, &target, &bodies.next()).await.is_some() {
                    latencies.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut run = Run::default();
    for t in tasks {
        run.latencies.extend(t.await.expect("task"));
    }
    run.elapsed = start.elapsed();
    run.errors = errors.load(Ordering::Relaxed);
    run
}

#[tokio::main]
async fn main() {
    let o = options();
    let all = match &o.bodies {
        Some(file) => std::fs::read_to_string(file)
            .expect("read --bodies")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| bytes::Bytes::from(l.to_owned()))
            .collect(),
        None => vec![bytes::Bytes::from(format!(
            r#"{{"model":"{}","max_tokens":16,"messages":[{{"role":"user","content":"Say something short."}}]}}"#,
            o.model
        ))],
    };
    assert!(!all.is_empty(), "--bodies has no body");
    let body = Bodies {
        all: Arc::new(all),
        next: Arc::new(AtomicU64::new(0)),
    };
    let targets: Vec<Arc<Target>> = o.targets.into_iter().map(Arc::new).collect();
    let client = client();
    // Warm up connections and caches.
    for t in &targets {
        let _ = closed_loop(&client, t, &body, 4, 1.0).await;
    }
    // Closed loop first: a gateway left with a backlog by an open-loop run it could not keep up with would
    // still be working it off.
    println!(
        "closed loop ({} connections, {} s, {} round(s)): the most each serves",
        o.connections, o.seconds, o.rounds
    );
    println!(
        "{:<14} {:>5} {:>10} {:>8} {:>8} {:>7}",
        "target", "round", "req/s", "p50", "p99", "errors"
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..o.rounds {
        // Alternate the order, so that no target always runs first (or last) on a machine that drifts.
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order[1..].reverse();
        }
        for i in order {
            let t = &targets[i];
            settle(&client, &targets, &body).await;
            let run = closed_loop(&client, t, &body, o.connections, o.seconds).await;
            rates[i].push(run.rate());
            println!(
                "{:<14} {:>5} {:>10.0} {:>8.3} {:>8.3} {:>7}",
                t.name,
                round + 1,
                run.rate(),
                run.percentile(50.0),
                run.percentile(99.0),
                run.errors
            );
        }
    }
    if o.rounds > 1 {
        println!(
            "
closed loop, over the rounds (req/s)"
        );
        println!("{:<14} {:>10} {:>10} {:>10}", "target", "median", "min", "max");
        for (t, r) in targets.iter().zip(&mut rates) {
            r.sort_by(f64::total_cmp);
            println!(
                "{:<14} {:>10.0} {:>10.0} {:>10.0}",
                t.name,
                r[r.len() / 2],
                r[0],
                r[r.len() - 1]
            );
        }
    }
    // Open loop: each target runs at the same time as the first (the baseline), so that both see the same
    // machine and the difference is the target's own cost.
    println!(
        "\nopen loop ({} s per rate; each target runs together with {} at the same rate; latency from the \
         scheduled send time, ms)",
        o.seconds, targets[0].name
    );
    println!(
        "{:<14} {:>6} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "target",
        "rate",
        "achieved",
        "p50",
        "p90",
        "p99",
        "errors",
        "base p50",
        "base p99",
        "+p50",
        "+p99",
        "ttfb p50",
        "+ttfb50"
    );
    let base = &targets[0];
    for &rate in &o.rates {
        for t in &targets[1..] {
            settle(&client, &targets, &body).await;
            let (b, run) = tokio::join!(
                open_loop(&client, base, &body, rate, o.seconds),
                open_loop(&client, t, &body, rate, o.seconds)
            );
            let (p50, p90, p99) = (run.percentile(50.0), run.percentile(90.0), run.percentile(99.0));
            let (b50, b99) = (b.percentile(50.0), b.percentile(99.0));
            let (f50, bf50) = (run.first_byte(50.0), b.first_byte(50.0));
            println!(
                "{:<14} {:>6} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                t.name,
                rate,
                run.rate(),
                p50,
                p90,
                p99,
                run.errors,
                b50,
                b99,
                p50 - b50,
                p99 - b99,
                f50,
                f50 - bf50
            );
        }
    }
}

/// Waits until every target answers a single request within 50 ms again (at most a minute), so that no
/// run starts while another server is still working off a backlog.
async fn settle(client: &reqwest::Client, targets: &[Arc<Target>], bodies: &Bodies) {
    let body = &bodies.first();
    let give_up = Instant::now() + Duration::from_secs(60);
    for t in targets {
        loop {
            let start = Instant::now();
            if one(client, t, body).await.is_some() && start.elapsed() < Duration::from_millis(50) {
                break;
            }
            if Instant::now() > give_up {
                println!("({} still slow after a minute; measuring anyway)", t.name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}
