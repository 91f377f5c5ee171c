use std::sync::Arc;

use futures_util::FutureExt as _;

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
    assert_eq!(s.budget, Some((4, 10)));
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
    assert_eq!(s.budget, Some((100, 100)));
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
    assert_eq!(s.budget, Some((100, 100)));
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
