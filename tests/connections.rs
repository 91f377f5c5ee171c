//! Connection hygiene of a real gateway process, from outside: clients that send a request head too
//! slowly, connections kept alive with nothing to ask, oversized heads, and more slow clients than the
//! connection cap while an OpenAI SDK client asks a question (the simulated cloud answers it).

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Gateway, SimCloud, metric, sdk_command};
use serde_json::Value;

fn cloud(sim: &SimCloud) -> String {
    format!(
        "clouds:\n  - name: sim\n    base_url: {}\n    models:\n      - id: gpt-4o-mini\n        input_usd_per_mtok: 0.15\n        output_usd_per_mtok: 0.60\n",
        sim.base_url()
    )
}

/// Waits until the server closes `stream` (a read of 0 bytes or a reset), answering what arrived
/// meanwhile; panics after `within`.
fn wait_closed(stream: &mut TcpStream, within: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (started.elapsed(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (started.elapsed(), got),
        }
        assert!(started.elapsed() < within, "still open after {within:?}");
    }
}

/// Whether the server has neither closed `stream` nor sent anything on it.
fn is_open(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let r = stream.read(&mut b);
    stream.set_nonblocking(false).unwrap();
    matches!(r, Err(ref e) if e.kind() == ErrorKind::WouldBlock)
}

/// Sends one kept-alive `GET path` and reads its whole answer (the gateway's small JSON bodies).
fn get_kept_alive(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("answer");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("content-length");
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Opens a connection and sends the start of a request head, never its end.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    s
}

fn closed_total(text: &str, listener: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("sluice_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn slow_heads_and_idle_connections_are_closed_and_oversized_heads_refused() {
    let sim = SimCloud::start(&[]);
    let gateway = Gateway::start(&format!(
        "{}limits:\n  header_read_timeout_seconds: 1\n  idle_timeout_seconds: 2\n  max_header_bytes: 4096\n",
        cloud(&sim)
    ));

    // A head trickled a byte every 300 ms is cut off after the header timeout, on both listeners.
    for addr in [gateway.public, gateway.admin] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: l").unwrap();
        let started = Instant::now();
        let mut open = true;
        while open && started.elapsed() < Duration::from_secs(4) {
            std::thread::sleep(Duration::from_millis(300));
            open = is_open(&mut s);
            let _ = s.write_all(b"o");
        }
        let after = started.elapsed();
        assert!(!open, "{addr}: a trickled head was still open after {after:?}");
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2000)).contains(&after),
            "{addr}: closed after {after:?}, want about 1 s"
        );
    }
    // A connection that sends nothing at all owes its head within the same second.
    let mut silent = TcpStream::connect(gateway.public).unwrap();
    let (after, got) = wait_closed(&mut silent, Duration::from_secs(4));
    assert!(
        got.is_empty() && after >= Duration::from_millis(900),
        "{after:?} {got:?}"
    );

    // A kept-alive connection answers again within the idle timeout, and is closed once idle past it.
    let mut kept = TcpStream::connect(gateway.public).unwrap();
    assert!(get_kept_alive(&mut kept, "/healthz").starts_with("HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(get_kept_alive(&mut kept, "/healthz").starts_with("HTTP/1.1 200"));
    let (after, got) = wait_closed(&mut kept, Duration::from_secs(5));
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        (Duration::from_millis(1800)..Duration::from_millis(3500)).contains(&after),
        "idle connection closed after {after:?}, want about 2 s"
    );

    // A head over max_header_bytes is answered 431 and the connection closed.
    let mut big = TcpStream::connect(gateway.public).unwrap();
    let filler = "a".repeat(5000);
    write!(
        big,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Filler: {filler}\r\n\r\n"
    )
    .unwrap();
    let (_, got) = wait_closed(&mut big, Duration::from_secs(5));
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    // Just under it is served.
    let mut fits = TcpStream::connect(gateway.public).unwrap();
    let filler = "a".repeat(3900);
    write!(
        fits,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Filler: {filler}\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; 12];
    fits.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200");

    let text = gateway.scrape();
    assert!(closed_total(&text, "public", "header_timeout") >= 2.0, "{text}");
    assert!(closed_total(&text, "admin", "header_timeout") >= 1.0, "{text}");
    assert_eq!(closed_total(&text, "public", "idle_timeout"), 1.0, "{text}");
    assert_eq!(closed_total(&text, "public", "evicted"), 0.0, "{text}");
}

/// The process's open descriptors.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// `n` requests by the OpenAI SDK, each on a new client and connection; the seconds each took.
fn sdk_seconds(gateway: &Gateway, n: usize) -> Vec<f64> {
    let output = sdk_command(gateway, "burst")
        .env("BURST", n.to_string())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            assert_eq!(o["status"], 200, "{o}");
            o["seconds"].as_f64().unwrap()
        })
        .collect()
}

#[test]
fn slow_clients_beyond_the_connection_cap_do_not_keep_an_sdk_request_out() {
    const CAP: usize = 200;
    let sim = SimCloud::start(&[]);
    // Slow clients would hold their places for 60 s: only taking an idle one's place lets others in.
    let gateway = Gateway::start(&format!(
        "{}limits:\n  max_connections: {CAP}\n  header_read_timeout_seconds: 60\n",
        cloud(&sim)
    ));
    let usual = sdk_seconds(&gateway, 3);
    let usual = usual.iter().copied().fold(0.0, f64::max);
    let before = descriptors(gateway.pid());

    let mut slow: Vec<TcpStream> = (0..CAP + 100).map(|_| slow_client(gateway.public)).collect();
    // Every one of them has been accepted, or waits in the backlog behind the cap.
    std::thread::sleep(Duration::from_millis(500));
    for s in &mut slow {
        let _ = s.write_all(b"x");
    }
    let loaded = sdk_seconds(&gateway, 3);
    let worst = loaded.iter().copied().fold(0.0, f64::max);
    assert!(
        worst < usual + 1.0,
        "with {} slow clients an SDK request took {worst:.3} s (usually {usual:.3} s)",
        CAP + 100
    );
    let open = descriptors(gateway.pid());
    assert!(
        open <= before + CAP + 16,
        "{open} descriptors open (before the slow clients: {before}, cap {CAP})"
    );
    let text = gateway.scrape();
    let open_connections = metric(&text, "sluice_connections_open{listener=\"public\"}").unwrap();
    assert!(
        open_connections <= CAP as f64,
        "{open_connections} connections open"
    );
    assert_eq!(
        metric(&text, "sluice_connections_max{listener=\"public\"}"),
        Some(CAP as f64)
    );
    assert_eq!(
        metric(&text, "sluice_connections_max{listener=\"admin\"}"),
        Some(256.0)
    );
    // Each client beyond the cap took the place of a slow one: the 100 slow ones and the SDK's 3.
    assert!(closed_total(&text, "public", "evicted") >= 103.0, "{text}");
    drop(slow);
}
