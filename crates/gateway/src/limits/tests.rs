use std::sync::Arc;

use futures_util::FutureExt as _;
use sluice_policy::Route;

use super::*;

/// The memory store answers at once.
fn reserve(
    store: &MemoryStore,
    tenant: &str,
    limits: &TenantLimits,
    ask: Ask,
    now: i64,
) -> Result<(Reservation, Standings), Denied> {
    Store::reserve(store, tenant, limits, ask, now)
        .now_or_never()
        .unwrap_or_else(|| panic!("the memory store waited"))
}

fn settle(store: &MemoryStore, r: &Reservation, used: Ask) {
    Store::settle(store, r, used)
        .now_or_never()
        .unwrap_or_else(|| panic!("the memory store waited"));
}

/// 2026-12-05T14:30:00Z, a Saturday.
const SAT: i64 = 1_796_481_000;

#[test]
fn calendar_days_round_trip_and_know_leap_years() {
    for day in [-800_000, -1, 0, 1, 11_016, 20_792, 800_000] {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day, "{y}-{m}-{d}");
    }
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(SAT.div_euclid(86_400)), (2026, 12, 5));
    assert_eq!(days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 1), 29);
    assert_eq!(days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 1), 28);
}

#[test]
fn periods_start_at_midnight_monday_and_the_first_of_the_month_in_their_time_zone() {
    let at = |y, m, d, h: i64| days_from_civil(y, m, d) * 86_400 + h * 3600;
    // The day ends at midnight UTC; at UTC+1 an hour earlier in UTC terms.
    assert_eq!(period(SAT, Period::Day, 0).1, at(2026, 12, 6, 0));
    assert_eq!(period(SAT, Period::Day, 3600).1, at(2026, 12, 5, 23));
    // Saturday's week ends on Monday 7 December.
    assert_eq!(period(SAT, Period::Week, 0).1, at(2026, 12, 7, 0));
    // A Monday at 00:30 is in the new week; Sunday 23:59 in the old.
    let monday = at(2026, 12, 7, 0);
    assert_eq!(
        period(monday + 1800, Period::Week, 0).0,
        period(SAT, Period::Week, 0).0 + 1
    );
    assert_eq!(
        period(monday - 60, Period::Week, 0).0,
        period(SAT, Period::Week, 0).0
    );
    // December ends on 1 January; at UTC-5, five hours later in UTC.
    assert_eq!(period(SAT, Period::Month, 0).1, at(2027, 1, 1, 0));
    assert_eq!(period(SAT, Period::Month, -5 * 3600).1, at(2027, 1, 1, 5));
    // 31 December 23:00 at UTC-5 is already January in UTC, still December there.
    let late = at(2027, 1, 1, 4);
    assert_eq!(
        period(late, Period::Month, -5 * 3600).0,
        period(SAT, Period::Month, 0).0
    );
    assert_eq!(minute(SAT), (SAT / 60, SAT + 60));
}

fn limits(rpm: u64, tpm: u64, budget_pico: Pico) -> TenantLimits {
    TenantLimits {
        requests_per_minute: Some(rpm),
        tokens_per_minute: Some(tpm),
        budget: Some(Budget {
            pico: budget_pico,
            period: Period::Day,
            utc_offset_seconds: 0,
            include_local: false,
        }),
    }
}

#[test]
fn each_limit_is_held_and_says_when_it_frees_up() {
    let store = MemoryStore::default();
    let l = limits(2, 1000, 10);
    let ask = Ask { tokens: 400, pico: 4 };
    let (_, s) = reserve(&store, "acme", &l, ask, SAT).unwrap();
    assert_eq!(
        s.requests,
        Some(Standing {
            limit: 2,
            remaining: 1,
            reset_seconds: 60
        })
    );
    assert_eq!(s.tokens.map(|t| t.remaining), Some(600));
    assert_eq!(s.budget.map(|b| (b.spent, b.limit)), Some((4, 10)));
    // Tokens: 400 + 700 > 1000.
    let big = Ask { tokens: 700, pico: 1 };
    assert_eq!(
        reserve(&store, "acme", &l, big, SAT + 1),
        Err(Denied::Tokens { resets_at: SAT + 60 })
    );
    reserve(&store, "acme", &l, ask, SAT + 2).unwrap();
    // A third request in the minute.
    assert_eq!(
        reserve(&store, "acme", &l, Ask::default(), SAT + 3),
        Err(Denied::Requests { resets_at: SAT + 60 })
    );
    // The next minute: rates reset, the budget (8 of 10 reserved) does not.
    let denied = reserve(&store, "acme", &l, ask, SAT + 60);
    assert_eq!(
        denied,
        Err(Denied::Budget {
            resets_at: SAT - SAT.rem_euclid(86_400) + 86_400
        })
    );
    // Another tenant counts apart.
    assert!(reserve(&store, "other", &l, ask, SAT).is_ok());
    // A request that costs nothing against the budget (served locally) still passes, even past it.
    let free = Ask { tokens: 10, pico: 0 };
    assert!(reserve(&store, "acme", &l, free, SAT + 61).is_ok());
}

#[test]
fn settling_replaces_the_reservation_and_a_failure_gives_it_back() {
    let store = MemoryStore::default();
    let l = limits(100, 1000, 100);
    let (r, _) = reserve(
        &store,
        "acme",
        &l,
        Ask {
            tokens: 900,
            pico: 90,
        },
        SAT,
    )
    .unwrap();
    // It used less: what it did not use is free again.
    settle(
        &store,
        &r,
        Ask {
            tokens: 300,
            pico: 30,
        },
    );
    let (r2, s) = reserve(
        &store,
        "acme",
        &l,
        Ask {
            tokens: 700,
            pico: 70,
        },
        SAT,
    )
    .unwrap();
    assert_eq!(s.tokens.map(|t| t.remaining), Some(0));
    assert_eq!(s.budget.map(|b| (b.spent, b.limit)), Some((100, 100)));
    // It failed: everything back but the request.
    settle(&store, &r2, Ask::default());
    let (_, s) = reserve(
        &store,
        "acme",
        &l,
        Ask {
            tokens: 700,
            pico: 70,
        },
        SAT,
    )
    .unwrap();
    assert_eq!(s.requests.map(|x| x.remaining), Some(97));
    assert_eq!(s.budget.map(|b| (b.spent, b.limit)), Some((100, 100)));
}

#[test]
fn concurrent_requests_never_take_a_tenant_past_its_limits() {
    let store = Arc::new(MemoryStore::default());
    let l = limits(50, u64::MAX, 1_000);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut granted = Vec::new();
                for _ in 0..40 {
                    if let Ok((r, _)) = reserve(&store, "acme", &l, Ask { tokens: 1, pico: 30 }, SAT) {
                        granted.push(r);
                    }
                }
                granted
            })
        })
        .collect();
    let granted: Vec<Reservation> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    // 1,000 picodollars at 30 each: 33 requests, and never a 34th, however they interleave.
    assert_eq!(granted.len(), 33);
    let state = store.state.lock().unwrap();
    assert_eq!(
        state.tenants["acme"].spent[&Period::Day],
        (SAT.div_euclid(86_400), 990)
    );
}

fn tenant_config(limits: TenantLimits) -> TenantLimitsConfig {
    TenantLimitsConfig {
        tenants: [("acme".to_owned(), limits)].into(),
        ..Default::default()
    }
}

/// Lets the tasks a settlement spawns run.
async fn settled() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_held_reservation_settles_to_what_was_used_or_gives_everything_back_when_dropped() {
    let store = Arc::new(MemoryStore::default());
    let l = limits(10, 1000, 1_000_000);
    let limiter = Limiter::with_store(&tenant_config(l), store.clone(), Arc::new(Quiet));
    let ask = Ask {
        tokens: 300,
        pico: 400_000,
    };
    let usage = || async { store.usage("acme", &l, unix_now()).await.unwrap() };

    // Dropped unsettled (the request failed before an answer): the request stays counted, nothing else.
    let g = limiter.reserve("acme", &l, ask).await.unwrap();
    assert_eq!(g.standings.tokens.unwrap().remaining, 700);
    drop(g);
    settled().await;
    let s = usage().await;
    assert_eq!(s.requests.unwrap().remaining, 9);
    assert_eq!(s.tokens.unwrap().remaining, 1000);
    assert_eq!(s.budget.unwrap().spent, 0);

    // Settled: a cloud answer counts its tokens and cost; a local one its tokens only.
    let g = limiter.reserve("acme", &l, ask).await.unwrap();
    g.held.settle(Route::Cloud, 120, 150_000);
    let g = limiter.reserve("acme", &l, ask).await.unwrap();
    g.held.settle(Route::Local, 80, 999);
    settled().await;
    let s = usage().await;
    assert_eq!(s.requests.unwrap().remaining, 7);
    assert_eq!(s.tokens.unwrap().remaining, 800);
    assert_eq!(s.budget.unwrap().spent, 150_000);
}

#[test]
fn a_request_reserves_its_most_at_the_dearest_target_its_budget_counts() {
    use sluice_policy::{BackendView, Decision, FleetView, Load, ModelCard, Prices, Target};
    let backend = |name: &str, route, price: f64| BackendView {
        name: name.into(),
        route,
        clearance: sluice_policy::Level::Public,
        models: vec![ModelCard {
            kind: Default::default(),
            id: "m".into(),
            prices: Some(Prices {
                input_usd_per_mtok: price,
                output_usd_per_mtok: 4.0 * price,
            }),
        }],
        ready: true,
        load: Load::default(),
        ttft_seconds: None,
        tokens_per_second: None,
    };
    let view = FleetView {
        backends: vec![
            backend("local", Route::Local, 100.0),
            backend("cheap", Route::Cloud, 1.0),
            backend("dear", Route::Cloud, 2.0),
        ],
        over_budget: false,
    };
    let decision = Decision {
        targets: (0..3)
            .map(|backend| Target {
                backend,
                model: "m".into(),
            })
            .collect(),
        rule: "r".into(),
        level: sluice_policy::Level::Public,
        substituted_for: None,
        excluded: Vec::new(),
        reason: String::new(),
        redaction: None,
        unredactable: None,
        fallback: None,
        fell_back: None,
    };
    let l = limits(10, 100_000, 1_000_000_000);
    // 1000 prompt tokens at 2 USD/M and 500 answer tokens at 8 USD/M: 0.006 USD.
    let ask = ask_for(&l, &decision, &view, 1000, 500);
    assert_eq!(
        ask,
        Ask {
            tokens: 1500,
            pico: crate::cost::pico(0.006)
        }
    );
    // Counting local busy cost too: the local list price is the dearest.
    let mut with_local = l;
    with_local.budget.as_mut().unwrap().include_local = true;
    assert_eq!(
        ask_for(&with_local, &decision, &view, 1000, 500).pico,
        crate::cost::pico(0.3)
    );
    // No budget: tokens only.
    let rates = TenantLimits { budget: None, ..l };
    assert_eq!(ask_for(&rates, &decision, &view, 1000, 500).pico, 0);
}

#[test]
fn resets_are_written_as_openai_writes_them() {
    assert_eq!(ratelimit_reset(7), "7s");
    assert_eq!(ratelimit_reset(60), "1m0s");
    assert_eq!(ratelimit_reset(61), "1m1s");
    assert_eq!(ratelimit_reset(-3), "0s");
}

/// A recorder that records nothing.
struct Quiet;

impl Recorder for Quiet {
    fn budget(&self, _: &str, _: Pico, _: Pico) {}
    fn settled(&self, _: &str, _: Pico, _: Pico) {}
    fn limited(&self, _: &str, _: &'static str) {}
    fn store_answered(&self, _: bool) {}
}
