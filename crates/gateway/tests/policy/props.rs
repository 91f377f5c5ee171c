//! Property: whatever the request, the policy and the state of the fleet (backends up, down, full, slow,
//! cheap or dear), every target a decision allows is cleared for the request's level, and that level is
//! never below what was found, declared or floored.

use proptest::prelude::{
    Just, ProptestConfig, any, prop, prop_assert, prop_assert_eq, prop_compose, prop_oneof, proptest,
};
use proptest::strategy::Strategy as Gen;
use sluice_sensitivity::{Finding, Kind};

use super::*;

const MODELS: [&str; 4] = ["smollm2", "gpt-4o-mini", "gpt-4o", "auto"];

fn level() -> impl Gen<Value = Level> {
    prop::sample::select(Level::ALL.to_vec())
}

fn route() -> impl Gen<Value = Route> {
    prop::sample::select(vec![Route::Local, Route::Cloud])
}

prop_compose! {
    fn backend(i: usize)(
        route in route(),
        clearance in level(),
        models in prop::sample::subsequence(MODELS[..3].to_vec(), 0..=3),
        price in 0.0f64..20.0,
        ready in any::<bool>(),
        running in 0u32..8,
        waiting in 0u32..8,
        slots in 0u32..4,
        in_flight in 0u64..16,
        ttft in prop::option::of(0.0f64..5.0),
        rate in prop::option::of(0.0f64..200.0),
    ) -> BackendView {
        BackendView {
            name: format!("b{i}"),
            route,
            clearance,
            models: models
                .into_iter()
                .map(|id| ModelCard {
                    kind: Default::default(),
                    id: id.to_owned(),
                    prices: (route == Route::Cloud).then_some(Prices {
                        input_usd_per_mtok: price,
                        output_usd_per_mtok: price * 4.0,
                    }),
                })
                .collect(),
            ready,
            load: Load { in_flight, running, waiting, slots },
            ttft_seconds: ttft,
            tokens_per_second: rate,
        }
    }
}

fn fleet_view() -> impl Gen<Value = FleetView> {
    (1usize..5)
        .prop_flat_map(|n| ((0..n).map(backend).collect::<Vec<_>>(), any::<bool>()))
        .prop_map(|(backends, over_budget)| FleetView {
            backends,
            over_budget,
        })
}

fn kind() -> impl Gen<Value = Kind> {
    prop::sample::select(Kind::ALL.to_vec())
}

fn place() -> impl Gen<Value = Place> {
    prop_oneof![
        Just(Place::Any),
        Just(Place::Local),
        Just(Place::Cloud),
        (0usize..5).prop_map(|i| Place::Backend(format!("b{i}"))),
    ]
}

fn plain_action() -> impl Gen<Value = Action> {
    prop_oneof![
        prop::collection::vec(place(), 1..3).prop_map(Action::Route),
        (
            prop::sample::select(MODELS.to_vec()),
            prop::option::of((0usize..5).prop_map(|i| format!("b{i}")))
        )
            .prop_map(|(m, backend)| Action::Substitute {
                model: m.to_owned(),
                backend
            }),
        Just(Action::Reject("no".into())),
    ]
}

fn action() -> impl Gen<Value = Action> {
    prop_oneof![
        3 => plain_action(),
        1 => (
            prop::collection::vec(place(), 1..3),
            prop::sample::subsequence(
                Kind::ALL.iter().copied().filter(|k| ever_redactable(*k)).collect::<Vec<_>>(),
                1..6
            ),
            plain_action(),
        )
            .prop_map(|(to, kinds, fallback)| Action::Redact(Redact {
                to,
                kinds,
                fallback: Box::new(fallback)
            })),
    ]
}

prop_compose! {
    fn rule(i: usize)(
        min in level(),
        max in level(),
        findings in prop::option::of(prop::collection::vec(kind(), 1..3)),
        models in prop::option::of(prop::sample::subsequence(MODELS.to_vec(), 1..=2)),
        tenants in prop::option::of(prop::sample::subsequence(vec!["acme".to_owned(), "legal".to_owned()], 1..=2)),
        then in action(),
        strategy in prop::option::of(prop::sample::select(vec![Strategy::Cheapest, Strategy::Fastest, Strategy::CheapestWithinSlo])),
        over_budget in prop::option::of(plain_action()),
    ) -> Rule {
        Rule {
            name: format!("r{i}"),
            when: Conditions {
                levels: LevelSet::between(min, max),
                findings,
                tenants,
                models: models.map(|m| m.into_iter().map(str::to_owned).collect()),
                ..Conditions::default()
            },
            then,
            strategy,
            over_budget,
        }
    }
}

prop_compose! {
    fn fallback()(
        models in prop::sample::subsequence(MODELS[..3].to_vec(), 1..=2),
        to in prop::sample::select(MODELS.to_vec()),
        backend in prop::option::of((0usize..5).prop_map(|i| format!("b{i}"))),
        on in prop::sample::subsequence(FallbackReason::ALL.to_vec(), 1..=3),
        tenants in prop::option::of(prop::sample::subsequence(vec!["acme".to_owned(), "legal".to_owned()], 1..=2)),
    ) -> FallbackRule {
        FallbackRule {
            models: models.into_iter().map(str::to_owned).collect(),
            tenants,
            to: to.to_owned(),
            backend,
            on,
        }
    }
}

prop_compose! {
    fn policy_config()(
        rules in (0usize..5).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>()),
        fallbacks in prop::collection::vec(fallback(), 0..3),
        members in prop::collection::vec(((0usize..5).prop_map(|i| format!("b{i}")), prop::sample::select(MODELS[..3].to_vec())), 1..4),
        floor in level(),
        max_ttft in 0.1f64..5.0,
    ) -> PolicyConfig {
        PolicyConfig {
            rules,
            models: vec![VirtualModel {
                name: "auto".into(),
                strategy: Strategy::CheapestWithinSlo,
                max_ttft_seconds: max_ttft,
                members: members.into_iter().map(|(backend, m)| VirtualMember { backend, model: m.to_owned() }).collect(),
            }],
            floors: [("legal".to_owned(), floor)].into(),
            strategy: Strategy::CheapestWithinSlo,
            max_ttft_seconds: max_ttft,
            never_redact: Vec::new(),
            over_budget: Action::Reject("over".into()),
            fallbacks,
        }
    }
}

prop_compose! {
    fn findings()(f in prop::collection::vec((kind(), level()), 0..4)) -> Vec<Finding> {
        f.into_iter()
            .map(|(kind, level)| Finding { kind, level, index: 0, range: 0..1, rule: None })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_target_is_cleared_below_the_request(
        fleet in fleet_view(),
        config in policy_config(),
        model in prop::sample::select(MODELS.to_vec()),
        findings in findings(),
        combo in prop::option::of(level()),
        incomplete in any::<bool>(),
        declared in prop::option::of(level()),
        legal in any::<bool>(),
        prefer in prop::option::of(route()),
        prompt_tokens in 0u64..100_000,
        max_tokens in prop::option::of(1u32..4096),
        no_fallback in any::<bool>(),
    ) {
        let mut body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        if let Some(m) = max_tokens {
            body["max_tokens"] = m.into();
        }
        let request = parse_chat_request(body.to_string().as_bytes()).unwrap();
        // A combination raises the level above its findings' (when there are two or more of them).
        let combined: Vec<sluice_sensitivity::Combined> = combo
            .filter(|_| findings.len() >= 2)
            .map(|level| sluice_sensitivity::Combined { name: "together".into(), level })
            .into_iter()
            .collect();
        let found = findings
            .iter()
            .map(|f| f.level)
            .chain(combined.iter().map(|c| c.level))
            .max()
            .unwrap_or(Level::Public);
        let scan = Scan {
            findings,
            level: if incomplete { Level::Restricted } else { found },
            complete: !incomplete,
            incomplete: None,
            combined,
            model: sluice_sensitivity::ModelPass::Off,
        };
        let headers: Vec<(String, String)> = if no_fallback {
            vec![("x-sluice-fallback".to_owned(), "none".to_owned())]
        } else {
            Vec::new()
        };
        let tenant = if legal { "legal" } else { "acme" };
        let facts = RequestFacts {
            tenant,
            model: &request.model,
            max_tokens: request.max_tokens,
            body: &request.body,
            headers: &headers,
            declared,
            scan: &scan,
            prefer,
            prompt_tokens,
        };
        let floor = config.floor(tenant);
        let lowest = scan.level.max(declared.unwrap_or(Level::Public)).max(floor);
        let decided = PolicyEngine::new(config).decide(&facts, &fleet);
        // A redacted decision carries its fallback, which must hold on its own too.
        let mut all = vec![decided.clone()];
        if let Ok(Decision { redaction: Some(r), .. }) = &decided {
            all.push((*r.fallback).clone());
        }
        for (i, decided) in all.into_iter().enumerate() {
        match decided {
            Ok(d) => {
                prop_assert!(d.level >= lowest, "level {} below {}", d.level, lowest);
                prop_assert!(!d.targets.is_empty());
                prop_assert!(i == 0 || d.redaction.is_none(), "a fallback redacts");
                // What a redacted form is cleared for: never below what it keeps (the declared level,
                // the floor, an unread scan, and every finding of a kind it does not replace).
                let clear_for = match &d.redaction {
                    None => d.level,
                    Some(r) => {
                        let kept_any = scan.findings.iter().any(|f| !r.kinds.contains(&f.kind));
                        let kept = scan.findings.iter().filter(|f| !r.kinds.contains(&f.kind)).map(|f| f.level)
                            .chain(scan.combined.iter().filter(|_| kept_any).map(|c| c.level))
                            .max().unwrap_or(Level::Public);
                        let must = kept.max(declared.unwrap_or(Level::Public)).max(floor).max(if incomplete { Level::Restricted } else { Level::Public });
                        prop_assert!(r.level >= must, "redacted form {} below {}", r.level, must);
                        prop_assert!(r.kinds.iter().all(|k| ever_redactable(*k)));
                        prop_assert!(scan.findings.iter().any(|f| r.kinds.contains(&f.kind)), "a redaction with nothing to replace");
                        r.level
                    }
                };
                for t in &d.targets {
                    let b = &fleet.backends[t.backend];
                    prop_assert!(
                        b.clearance >= clear_for,
                        "{} cleared for {} got a {} request", b.name, b.clearance, clear_for
                    );
                }
                // A fallback's targets hold the invariant too, and are the organisation's own: only
                // local backends cleared for the request, never for a redacted request, never when the
                // client forbade it.
                if let Some(f) = &d.fallback {
                    prop_assert!(!no_fallback, "a fallback the client forbade");
                    prop_assert!(d.redaction.is_none(), "a redacted request with a fallback");
                    prop_assert!(!f.targets.is_empty());
                    prop_assert!(!f.on.contains(&FallbackReason::OverBudget));
                    for t in &f.targets {
                        let b = &fleet.backends[t.backend];
                        prop_assert!(b.route == Route::Local, "fallback to cloud backend {}", b.name);
                        prop_assert!(
                            b.clearance >= d.level,
                            "fallback {} cleared for {} got a {} request", b.name, b.clearance, d.level
                        );
                    }
                }
                if d.fell_back.is_some() {
                    prop_assert!(!no_fallback, "served by a fallback the client forbade");
                    prop_assert_eq!(d.fell_back, Some(FallbackReason::OverBudget));
                    prop_assert!(fleet.over_budget);
                    prop_assert!(d.substituted_for.is_some());
                }
                // Over budget, nothing goes to a cloud, whatever the rule's over-budget action names.
                if fleet.over_budget {
                    prop_assert!(
                        d.targets.iter().all(|t| fleet.backends[t.backend].route == Route::Local),
                        "over budget, {} sends to a cloud", d.rule
                    );
                }
                let mut seen = d.targets.iter().map(|t| (t.backend, &t.model)).collect::<Vec<_>>();
                seen.sort();
                seen.dedup();
                prop_assert_eq!(seen.len(), d.targets.len(), "a target is listed twice");
            }
            Err(r) => {
                let r = refused(r);
                prop_assert!(r.error.status.is_client_error() || r.error.status.as_u16() == 503);
                prop_assert!(fleet.over_budget || r.error.code != "budget_exceeded");
                prop_assert!(r.level.is_none_or(|l| l >= lowest));
            }
        }
        }
    }
}
