//! `POST /v1/chat/completions` (and `POST /v1/responses`, translated into it): one request through every
//! step, in order. Intake (parse, hints, scan)
//! -> policy -> dispatch -> backend -> wire format, with accounting recording each step and the outcome.
//! The handler only connects the steps: each decides in its own module, errors become HTTP only in
//! `error`, and the routing headers go on every answer whatever it is.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sluice_policy::{Level, RefusalReason};
use sluice_sensitivity::ModelPass;
use sluice_telemetry::TARGET;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::app::App;
use super::ids::{RequestId, new_id};
use super::limited;
use super::served::{self, Serving, attempts};
use super::traced;
use crate::accounting::{Ledger, RecordFields};
use crate::api::responses::ResponseOptions;
use crate::auth::Tenant;
use crate::backend::DispatchContext;
use crate::dispatch::{Dispatch, dispatch};
use crate::error::{self, ApiError};
use crate::headers::{HttpHeaders, RoutingHeaders};
use crate::intake;
use crate::recognise::{self, Busy};
use crate::redact::proof::{Proving, explain_outcome, fall_back, redact_and_prove};
use crate::shed::PermitSlot;
use crate::wire::messages::MessageShape;
use crate::wire::responses::ResponseShape;
use crate::wire::{self, Shape};

/// What a client shed because the personal-data model is saturated is told to wait before retrying.
pub(super) const SHED_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) fn respond(routing: &RoutingHeaders, response: impl IntoResponse) -> Response {
    traced::record_routing(routing);
    let mut response = response.into_response();
    routing.apply(response.headers_mut());
    response
}

/// Which API the client called: chat completions, or the Responses API or the Anthropic Messages API
/// translated into them (`api::responses`, `api::messages`), whose answers the wire layer writes in
/// their own shapes.
pub(super) enum Surface {
    Chat,
    Responses(ResponseOptions),
    /// With the client's own body, which a backend speaking the Messages API is sent as it came.
    Messages(serde_json::Map<String, serde_json::Value>),
}

pub(super) async fn completions(
    State(app): State<Arc<App>>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    permit: Option<axum::Extension<PermitSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, (tenant, request_id), permit, headers, body, Surface::Chat).await
}

/// A chat request through every step; its answer in the shape of the API the client called.
pub(super) async fn serve(
    app: Arc<App>,
    (tenant, request_id): (Tenant, RequestId),
    permit: Option<axum::Extension<PermitSlot>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mut surface: Surface,
) -> Response {
    let arrived = Instant::now();
    let accounts = &app.accounts;
    let mut routing = RoutingHeaders::default();

    // Intake.
    let prompt_digest_of = body.as_ref().ok().cloned();
    let mut intake = match intake::read_body(
        body,
        app.config.limits.max_body_bytes,
        &headers,
        &app.config.scanner,
    )
    .instrument(tracing::trace_span!(target: TARGET, "scan"))
    .await
    {
        Ok(i) => i,
        Err(refused) => {
            accounts.rejected(refused.reason);
            return respond(&routing, *refused.error);
        }
    };

    if let Surface::Messages(native) = &mut surface {
        intake.request.keep_native(std::mem::take(native));
    }

    // Policy, and the personal-data model when its answer can change where the request may go.
    let http_headers = HttpHeaders(&headers);
    let mut view = app.fleet.view(&accounts.stats);
    let decide = |intake: &intake::Intake, view: &sluice_policy::FleetView| {
        tracing::trace_span!(target: TARGET, "policy")
            .in_scope(|| app.policy.decide(&intake.facts(&tenant.0, &http_headers), view))
    };
    let mut decided = decide(&intake, &view);
    if let Some(recogniser) = &app.recogniser {
        if recognise::can_change_route(&decided, &view, &intake.scan) {
            let texts = sluice_policy::strings(&intake.request.body);
            match recogniser
                .recognise(&app.config.scanner, &mut intake.scan, &texts)
                .instrument(tracing::trace_span!(target: TARGET, "recognise"))
                .await
            {
                Ok(recognition) => accounts.recognised(Some(&recognition)),
                Err(Busy) => {
                    accounts.recogniser_shed();
                    return respond(&routing, ApiError::overloaded(SHED_RETRY_AFTER));
                }
            }
            decided = decide(&intake, &view);
        } else {
            intake.scan.model = ModelPass::NotNeeded;
            accounts.recognised(None);
        }
    }
    accounts.scanned(&intake.scan);
    traced::record_intake(&tenant.0, &intake.request.model, &intake.scan);
    let floor = app.config.policy.floor(&tenant.0);
    // Redact-then-cloud: the redacted form is proven before anything is sent, or the fallback decides.
    let mut redacted = None;
    let mut unproven = None;
    if let Ok(
        d @ sluice_policy::Decision {
            redaction: Some(plan),
            ..
        },
    ) = &decided
    {
        let base = intake.declared.unwrap_or(Level::Public).max(floor);
        let proving = Proving::of(
            &app.config.scanner,
            app.recogniser.as_deref(),
            d,
            plan,
            &view,
            base,
        );
        match redact_and_prove(&intake.request, &intake.scan, proving)
            .instrument(tracing::trace_span!(target: TARGET, "redact"))
            .await
        {
            Ok(sendable) => redacted = Some(sendable),
            Err(u) => {
                let (fallback, why) = fall_back(d, plan, &u);
                decided = fallback;
                unproven = Some((why, u));
            }
        }
    }
    // Limits: what the request can cost at most is reserved before it goes anywhere; a spent budget is
    // the policy's to handle (the rule's `over_budget` action), with the fleet view saying so.
    let settled = limited::settle(
        app.limiter.as_deref(),
        (&tenant.0, intake.prompt_tokens, intake.request.max_tokens),
        &mut decided,
        &mut view,
        &mut routing.ratelimit,
        |view| decide(&intake, view),
    )
    .instrument(tracing::trace_span!(target: TARGET, "limits"))
    .await;
    let (held, budget_resets) = match settled {
        Ok(s) => {
            if s.decided_again {
                (redacted, unproven) = (None, None);
            }
            (s.held, s.budget_resets)
        }
        Err(error) => {
            accounts.rejected(error.code);
            return respond(&routing, error);
        }
    };
    let facts = intake.facts(&tenant.0, &http_headers);
    let decision_id = new_id("dec_");
    routing.decision_id = Some(decision_id.clone());
    let mut explanation = sluice_policy::explain(&decision_id, &facts, floor, &view, &decided);
    if let Err(refusal) = &decided {
        error::explain_refusal(&mut explanation, refusal);
    }
    if let Some(s) = &redacted {
        explain_outcome(&mut explanation, Ok(s));
    }
    if let Some((why, u)) = &unproven {
        explain_outcome(&mut explanation, Err((why, u)));
    }
    accounts.decided(explanation);
    // The audit record of this decision, when there is a log: what was decided now, how it ended later.
    let audit = accounts
        .audit_record(RecordFields {
            decision_id: &decision_id,
            request_id: &request_id.0,
            tenant: &tenant.0,
            model: &intake.request.model,
            level: match &decided {
                Ok(d) => d.level,
                Err(r) => r.level.unwrap_or_else(|| facts.level()),
            },
            scan: &intake.scan,
            rule: match &decided {
                Ok(d) => Some(&d.rule),
                Err(r) => r.rule.as_deref(),
            },
            body: prompt_digest_of.as_deref().unwrap_or_default(),
            request: &intake.request.body,
            max_tokens: intake.request.max_tokens,
            stream: intake.request.stream,
            declared: intake.declared,
            prefer: intake.prefer,
            prompt_estimate: intake.prompt_tokens,
        })
        .map(|mut r| {
            match surface {
                Surface::Chat => {}
                Surface::Responses(_) => r.endpoint = Some("responses".to_owned()),
                Surface::Messages(_) => r.endpoint = Some("messages".to_owned()),
            }
            r
        });
    let mut decision = match decided {
        Ok(d) => d,
        Err(refusal) => {
            let mut error = ApiError::from(&refusal);
            if let (RefusalReason::OverBudget { .. }, Some(at)) = (&refusal.reason, budget_resets) {
                error = error.with_retry_after(limited::after(at));
            }
            routing.rule = refusal.rule;
            routing.level = refusal.level;
            accounts.refused(
                &decision_id,
                audit,
                error.status.as_u16(),
                error.code,
                Some(error.code),
            );
            return respond(&routing, error);
        }
    };
    // The policy may raise the level (a tenant floor), never lower it; a redacted request is sent at the
    // level its redacted form was proven to have.
    let level = decision.level.max(facts.level());
    let sent_at = redacted.as_ref().map_or(level, |s| s.level);
    // A redacted form goes only where its proven level is cleared (the best target was; others may not be).
    if redacted.is_some() {
        decision.targets.retain(|t| {
            view.backends
                .get(t.backend)
                .is_some_and(|b| b.clearance >= sent_at)
        });
    }
    let request = redacted.as_ref().map_or(&intake.request, |s| &s.request);
    routing.rule = Some(decision.rule.clone());
    routing.level = Some(level);
    routing.substituted_for = decision.substituted_for.clone();
    let tenant_label = served::tenant_label(&app, &tenant);

    // Dispatch.
    let deadline = arrived + app.config.limits.request_timeout;
    let context = DispatchContext {
        request_id: request_id.0.to_string(),
        deadline,
    };
    let Dispatch {
        result,
        blocked,
        considered,
    } = dispatch(&app.fleet, &decision, sent_at, request, &context, &decision_id).await;
    accounts.clearance_blocked(blocked);
    if let Some((route, backend, model)) = considered {
        routing.route = Some(route);
        routing.backend = Some(backend);
        routing.model = Some(model);
    }
    let serving = Serving {
        view: &view,
        tenant_label: &tenant_label,
        decision_id: &decision_id,
        arrived,
    };
    let started = match result {
        Ok(started) => started,
        Err(unserved) => {
            let error = serving.unserved(&app, &unserved, audit, held);
            return respond(&routing, error);
        }
    };

    // The backend answers; the wire layer writes it; its ledger records it.
    let fell_back = started.fell_back.or(decision.fell_back);
    if let Some(reason) = fell_back {
        routing.fallback = Some(reason.as_str());
        routing.substituted_for = decision
            .fallback
            .as_ref()
            .map(|f| f.requested.clone())
            .or_else(|| routing.substituted_for.take());
        accounts.fell_back_to_local(reason);
    }
    for f in &started.fallbacks {
        accounts.fell_back(&f.backend, f.error.member_fault());
    }
    accounts.dispatched(&decision.rule, started.backend.route(), redacted.is_some());
    let served_by = started.dispatched.served_by.to_string();
    routing.backend = Some(served_by.clone());
    let mut ledger = Ledger::new(
        accounts,
        &serving.served(
            &started.backend,
            &served_by,
            &started.target.model,
            started.target.backend,
        ),
        attempts(&started.fallbacks),
        audit,
    );
    ledger.hold(held);
    if let Some(reason) = fell_back {
        ledger.fell_back(reason);
    }
    let mut events = started.dispatched.events;
    if let Some(s) = &redacted {
        routing.redacted = true;
        accounts.redacted(&s.counts);
        ledger.redacted(&s.counts);
        events = crate::redact::answer::restore(events, s.mapping.clone());
    }
    let suffix = decision_id.trim_start_matches("dec_");
    if let Surface::Messages(_) = surface {
        let shape = MessageShape {
            id: format!("msg_{suffix}"),
            model: started.target.model.clone(),
            input_estimate: intake.prompt_tokens,
        };
        return if intake.request.stream {
            let permit = permit.map(|axum::Extension(p)| p);
            respond(
                &routing,
                wire::messages::stream(events, shape, Box::new(ledger), deadline, permit),
            )
        } else {
            respond(
                &routing,
                wire::messages::collect(events, shape, &mut ledger, deadline).await,
            )
        };
    }
    if let Surface::Responses(options) = surface {
        let shape = ResponseShape {
            id: format!("resp_{suffix}"),
            message_id: format!("msg_{suffix}"),
            created_at: unix_now(),
            model: started.target.model.clone(),
            options,
        };
        let events = wire::responses::text_events(events);
        return if intake.request.stream {
            let permit = permit.map(|axum::Extension(p)| p);
            respond(
                &routing,
                wire::responses::stream(events, shape, Box::new(ledger), deadline, permit),
            )
        } else {
            respond(
                &routing,
                wire::responses::collect(events, shape, &mut ledger, deadline).await,
            )
        };
    }
    let shape = Shape {
        id: format!("chatcmpl-{suffix}"),
        created: unix_now(),
        model: started.target.model.clone(),
        include_usage: intake.request.include_usage,
    };
    if intake.request.stream {
        let permit = permit.map(|axum::Extension(p)| p);
        respond(
            &routing,
            wire::sse::stream(events, shape, Box::new(ledger), deadline, permit),
        )
    } else {
        respond(
            &routing,
            wire::json::collect(events, shape, &mut ledger, deadline).await,
        )
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
