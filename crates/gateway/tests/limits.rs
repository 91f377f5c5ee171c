//! Limits kept in a real Redis (Debian's `redis-server`, started here on a free port) by several stores at
//! once, as gateway replicas share it: exact under concurrency, refunds, prefixes apart, and a Redis that
//! goes away and comes back.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_gateway::limits::{Ask, Budget, Denied, Period, RedisStore, Store, TenantLimits};

/// 2026-12-05T14:30:00Z.
const NOW: i64 = 1_796_481_000;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start_on(port: u16) -> Self {
        if Command::new("redis-server").arg("--version").output().is_err() {
            // CI installs it; a machine without it gets it here when it can.
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-qq", "redis-server"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "redis-server is missing and could not be installed");
        }
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn store(redis: &Redis, prefix: &str) -> Arc<RedisStore> {
    Arc::new(RedisStore::new(&redis.url(), prefix, Duration::from_millis(500)).unwrap())
}

fn limits(rpm: Option<u64>, budget_usd: Option<f64>) -> TenantLimits {
    TenantLimits {
        requests_per_minute: rpm,
        tokens_per_minute: None,
        budget: budget_usd.map(|usd| Budget {
            pico: sluice_gateway::cost::pico(usd),
            period: Period::Month,
            utc_offset_seconds: 0,
            include_local: false,
        }),
    }
}

/// Reserves from `replicas` stores at once, `each` times from each; returns the grants.
async fn burst(
    replicas: &[Arc<RedisStore>],
    l: TenantLimits,
    ask: Ask,
    each: usize,
) -> Vec<sluice_gateway::limits::Reservation> {
    let mut tasks = Vec::new();
    for s in replicas {
        for _ in 0..each {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.reserve("acme", &l, ask, NOW).await.ok().map(|(r, _)| r)
            }));
        }
    }
    let mut granted = Vec::new();
    for t in tasks {
        granted.extend(t.await.unwrap());
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_limits_exactly() {
    let redis = Redis::start();
    let replicas = [store(&redis, "a"), store(&redis, "a"), store(&redis, "a")];
    // 300 concurrent requests against 100 a minute: exactly 100 pass, whichever replica they reach.
    let granted = burst(&replicas, limits(Some(100), None), Ask::default(), 100).await;
    assert_eq!(granted.len(), 100);
    // A budget of 1 USD at 0.03 USD a request: exactly 33, never a 34th.
    let ask = Ask {
        tokens: 10,
        pico: sluice_gateway::cost::pico(0.03),
    };
    let other = limits(None, Some(1.0));
    let mut tasks = Vec::new();
    for s in &replicas {
        for _ in 0..30 {
            let s = s.clone();
            tasks.push(tokio::spawn(
                async move { s.reserve("beta", &other, ask, NOW).await },
            ));
        }
    }
    let mut ok = Vec::new();
    for t in tasks {
        if let Ok((r, s)) = t.await.unwrap() {
            ok.push((r, s));
        }
    }
    assert_eq!(ok.len(), 33);
    let most = ok.iter().filter_map(|(_, s)| s.budget).map(|b| b.spent).max();
    assert_eq!(most, Some(sluice_gateway::cost::pico(0.99)));
    // Settling: one used nothing (it failed), and the room is there again, for exactly one more.
    replicas[1].settle(&ok[0].0, Ask::default()).await;
    assert!(replicas[2].reserve("beta", &other, ask, NOW).await.is_ok());
    assert!(matches!(
        replicas[0].reserve("beta", &other, ask, NOW).await,
        Err(Denied::Budget { .. })
    ));
    // Another prefix (another install on the same Redis) counts apart.
    let elsewhere = store(&redis, "b");
    assert!(
        elsewhere
            .reserve("acme", &limits(Some(100), None), Ask::default(), NOW)
            .await
            .is_ok()
    );
    // The next minute starts again.
    assert!(
        replicas[0]
            .reserve("acme", &limits(Some(100), None), Ask::default(), NOW + 60)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_goes_away_is_reported_in_time_and_counting_resumes_when_it_is_back() {
    let mut redis = Redis::start();
    let port = redis.port;
    let s = store(&redis, "c");
    let l = limits(Some(5), None);
    s.reserve("acme", &l, Ask::default(), NOW).await.unwrap();
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            s.reserve("acme", &l, Ask::default(), NOW).await.err(),
            Some(Denied::Unreachable)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // Back on the same port (empty: nothing was saved), with the same store: no restart needed.
    let _back = Redis::start_on(port);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match s.reserve("acme", &l, Ask::default(), NOW).await {
            Ok((_, standings)) => {
                assert_eq!(standings.requests.unwrap().remaining, 4);
                break;
            }
            Err(Denied::Unreachable) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn past_its_budget_a_tenant_still_gets_requests_that_cost_it_nothing() {
    let redis = Redis::start();
    let s = store(&redis, "d");
    let l = limits(None, Some(1.0));
    let dear = Ask {
        tokens: 10,
        pico: sluice_gateway::cost::pico(0.9),
    };
    let (r, _) = s.reserve("acme", &l, dear, NOW).await.unwrap();
    // It used more than it reserved: the budget is now past.
    s.settle(
        &r,
        Ask {
            tokens: 10,
            pico: sluice_gateway::cost::pico(1.2),
        },
    )
    .await;
    assert_eq!(
        s.reserve("acme", &l, Ask { tokens: 1, pico: 1 }, NOW)
            .await
            .err()
            .map(|d| d.as_str()),
        Some("budget")
    );
    let free = Ask { tokens: 10, pico: 0 };
    let (_, standings) = s.reserve("acme", &l, free, NOW).await.unwrap();
    assert_eq!(standings.budget.unwrap().spent, sluice_gateway::cost::pico(1.2));
}
