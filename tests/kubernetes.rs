//! The gateway finds its workers through Kubernetes while requests flow: a real `sluice gateway` reads a
//! kubeconfig that points at the mock API server (real HTTP, real list and watch), and real `sluice
//! worker` processes with the demo model stand for the pods, each on its own loopback address with one
//! shared port, as pods behind a headless Service are. Workers join, one drains (terminating, SIGTERM)
//! and leaves, the watch gets a 410 Gone, a dropped connection and failing lists, and no request fails.

#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEMO_MODEL_ID, Gateway, TEST_KEY, ensure_demo_model, http, log_field, spawn_logged};
use serde_json::Value;
use sluice_discovery::mock::{MockApiServer, MockEndpoint, slice};

const NS: &str = "inference";
const SERVICE: &str = "sluice-workers";
const SLICE: &str = "sluice-workers-x7k2p";

/// A worker process listening on `ip:port` (port 0: any).
struct Pod {
    name: &'static str,
    ip: &'static str,
    port: u16,
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pod {
    fn start(name: &'static str, ip: &'static str, port: u16) -> Self {
        ensure_demo_model();
        let listen = format!("{ip}:{port}");
        let (child, log, line) = spawn_logged(
            &[
                "worker",
                "--listen",
                &listen,
                "--metrics-listen",
                "off",
                "--slots",
                "2",
                "--drain-grace-seconds",
                "20",
            ],
            &[("SLUICE_LOG", "info")],
            "worker listening",
        );
        let port = log_field(&line, "grpc").expect("grpc address").port();
        Self {
            name,
            ip,
            port,
            child,
            log,
        }
    }

    fn endpoint(&self) -> MockEndpoint {
        MockEndpoint::ready(self.name, self.ip)
    }

    fn terminate(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit:\n{}",
                self.name,
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One finished request: status, the worker that served it, when the answer ended, and the error body.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    backend: String,
    finish_reason: String,
    ended: Instant,
    body: String,
}

fn chat(addr: SocketAddr, max_tokens: u32) -> Outcome {
    let body = format!(
        r#"{{"model":"{DEMO_MODEL_ID}","messages":[{{"role":"user","content":"What is the capital of Japan?"}}],"max_tokens":{max_tokens},"temperature":0}}"#
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let ended = Instant::now();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().expect("status");
    let (head, body) = response.split_once("\r\n\r\n").expect("head");
    let backend = head
        .lines()
        .find_map(|l| l.strip_prefix("x-sluice-backend: "))
        .unwrap_or_default()
        .to_owned();
    let finish_reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Outcome {
        status,
        backend,
        finish_reason,
        ended,
        body: body.to_owned(),
    }
}

fn backends(gateway: &Gateway) -> Value {
    let (status, body) = http(gateway.admin, "GET", "/admin/backends", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The local pool's members as (name, ready) pairs, sorted.
fn members(gateway: &Gateway) -> Vec<(String, bool)> {
    let v = backends(gateway);
    let mut out: Vec<(String, bool)> = v["backends"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["member"]["name"].as_str().unwrap().to_owned(),
                m["member"]["ready"].as_bool().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn wait_until(gateway: &Gateway, what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            Instant::now() < until,
            "waited 60 s for {what}; backends: {}\ngateway log:\n{}",
            backends(gateway),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn pair(name: &str, ready: bool) -> (String, bool) {
    (name.to_owned(), ready)
}

#[test]
fn workers_join_drain_and_leave_through_endpointslices_without_losing_a_request() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mock = runtime.block_on(MockApiServer::start()).expect("mock API server");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    mock.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");

    // Pods on their own addresses, one port: as a headless Service's endpoints are.
    let mut a = Pod::start("worker-a", "127.0.0.2", 0);
    let port = a.port;
    let publish = |pods: &[MockEndpoint]| mock.apply(slice(NS, SLICE, SERVICE, "grpc", port, pods));
    publish(&[a.endpoint()]);

    let gateway = Gateway::start(&format!(
        "local:\n  kubernetes:\n    service: {SERVICE}\n    port: grpc\n    kubeconfig: {}\n",
        kubeconfig.display()
    ));
    gateway.wait_ready("local");
    let v = backends(&gateway);
    let pool = &v["backends"][0];
    assert_eq!(pool["members"][0]["member"]["name"], "worker-a");
    assert_eq!(pool["members"][0]["member"]["source"], "kubernetes");
    assert_eq!(
        pool["members"][0]["member"]["address"],
        format!("http://127.0.0.2:{port}")
    );
    assert_eq!(pool["discovery"]["synced"], true);
    assert!(
        pool["discovery"]["following"]
            .as_str()
            .unwrap()
            .starts_with("EndpointSlices of Service inference/sluice-workers"),
        "{pool}"
    );

    // Requests flow from here to the end: two clients, one after another each.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, outcomes, addr) = (stop.clone(), outcomes.clone(), gateway.public);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let o = chat(addr, 24);
                    outcomes.lock().unwrap().push(o);
                }
            })
        })
        .collect();
    let served = |name: &str| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.backend == name)
            .count()
    };

    // A second pod starts (loading: not serving), then becomes ready and takes requests.
    let b = Pod::start("worker-b", "127.0.0.3", port);
    publish(&[a.endpoint(), b.endpoint().not_serving()]);
    wait_until(&gateway, "worker-b listed, not ready", || {
        members(&gateway) == [pair("worker-a", true), pair("worker-b", false)]
    });
    let before = served("worker-b");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served("worker-b"), before, "a not-serving pod took requests");
    publish(&[a.endpoint(), b.endpoint()]);
    wait_until(&gateway, "worker-b serving", || served("worker-b") >= 2);

    // worker-a is deleted the way Kubernetes does it: it gets SIGTERM and its endpoint turns terminating
    // while it has a request in flight. That request finishes; new ones go to worker-b.
    wait_until(&gateway, "a request in flight on worker-a", || {
        backends(&gateway)["backends"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["member"]["name"] == "worker-a" && m["member"]["in_flight"].as_u64() > Some(0))
    });
    // The kubelet's SIGTERM and the endpoint's change race; here the signal wins, so the worker drains
    // (refusing new requests) a moment before the gateway hears it is terminating.
    let terminating_at = Instant::now();
    a.terminate();
    std::thread::sleep(Duration::from_millis(200));
    publish(&[a.endpoint().terminating(), b.endpoint()]);
    assert!(
        a.wait_exit(Duration::from_secs(30)).success(),
        "worker-a drains and exits 0"
    );
    publish(&[b.endpoint()]);
    wait_until(&gateway, "worker-a gone", || {
        members(&gateway) == [pair("worker-b", true)]
    });
    let finished_on_a_after = outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|o| o.backend == "worker-a" && o.ended > terminating_at && o.status == 200)
        .count();
    assert!(
        finished_on_a_after >= 1,
        "the request in flight on worker-a finished after it began terminating"
    );
    let scrape = gateway.scrape();
    assert!(
        !scrape.contains("sluice_backend_up{backend=\"worker-a\"}"),
        "a worker that left has no up series"
    );
    assert!(
        scrape.contains("sluice_backend_up{backend=\"worker-b\"} 1"),
        "{scrape}"
    );
    assert_eq!(
        common::metric(&scrape, "sluice_discovery_synced{backend=\"local\"}"),
        Some(1.0)
    );
    assert_eq!(
        common::metric(
            &scrape,
            "sluice_discovery_watch_failures_total{backend=\"local\"}"
        ),
        Some(0.0)
    );

    // The API misbehaves: 410 Gone, a dropped watch, then two failing lists after another 410. The pool
    // keeps worker-b throughout and changes made meanwhile arrive.
    let served_b = served("worker-b");
    mock.expire();
    mock.drop_watches();
    let c = Pod::start("worker-c", "127.0.0.4", port);
    publish(&[b.endpoint(), c.endpoint()]);
    wait_until(&gateway, "worker-c serving", || served("worker-c") >= 2);
    mock.fail_lists(2);
    mock.expire();
    wait_until(&gateway, "the watch to fail twice and recover", || {
        let d = &backends(&gateway)["backends"][0]["discovery"];
        d["failures"].as_u64() >= Some(4) && mock.open_watches() == 1
    });
    assert_eq!(
        members(&gateway),
        [pair("worker-b", true), pair("worker-c", true)]
    );
    // The 410s and the failed lists are counted; a dropped watch is not a failure.
    let failures = common::metric(
        &gateway.scrape(),
        "sluice_discovery_watch_failures_total{backend=\"local\"}",
    );
    assert!(failures >= Some(4.0), "{failures:?}");
    wait_until(&gateway, "requests still flowing", || {
        served("worker-b") > served_b + 2
    });

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\ngateway log:\n{}",
        failed.len(),
        outcomes.len(),
        failed.iter().map(|o| (o.status, &o.body)).collect::<Vec<_>>(),
        gateway.log()
    );
    assert!(
        outcomes.iter().all(|o| !o.finish_reason.is_empty()),
        "every answer is complete"
    );
    for name in ["worker-a", "worker-b", "worker-c"] {
        assert!(outcomes.iter().any(|o| o.backend == name), "{name} served");
    }
    assert!(
        outcomes
            .iter()
            .all(|o| ["worker-a", "worker-b", "worker-c"].contains(&o.backend.as_str())),
        "{:?}",
        outcomes.iter().map(|o| &o.backend).collect::<Vec<_>>()
    );
    eprintln!("{} requests, none failed", outcomes.len());

    // The Service goes away: the pool empties and the gateway is not ready.
    assert!(mock.delete(NS, SLICE));
    wait_until(&gateway, "an empty pool", || members(&gateway).is_empty());
    let (status, body) = http(gateway.public, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    // Its model is still the pool's: a request for it is told no worker is ready, not that it is unknown.
    let o = chat(gateway.public, 8);
    assert_eq!(o.status, 503, "{}", o.body);
    let error: Value = serde_json::from_str(&o.body).expect("JSON error");
    assert_eq!(error["error"]["code"], "backend_unavailable", "{}", o.body);
    drop(c);
    drop(b);
}

/// Outside a cluster and without a kubeconfig, a gateway told to find its workers through Kubernetes
/// refuses to start and says why, rather than serving an empty pool.
#[test]
fn without_credentials_the_gateway_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nadmin_listen: off\nallow_unauthenticated: true\nlocal:\n  kubernetes: { service: sluice-workers }\n",
    )
    .expect("config");
    let out = std::process::Command::new(common::sluice_bin())
        .args(["gateway", "--config"])
        .arg(&config)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .output()
        .expect("run sluice gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("local.kubernetes: no Kubernetes credentials: not running in a pod"),
        "{stderr}"
    );
    assert!(stderr.contains("set local.kubernetes.kubeconfig"), "{stderr}");
}
