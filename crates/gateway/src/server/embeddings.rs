//! `POST /v1/embeddings`: the chat handler's steps for vectors. Intake (parse, hints, scan every input)
//! -> policy (with the personal-data model when it can change the route) -> limits -> dispatch to an
//! embedding model -> one JSON answer, with accounting recording each step and the outcome. A decision to
//! send a request redacted takes the rule's fallback instead: vectors of redacted text would not match
//! those of the documents they are compared with.

use std::sync::Arc;

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
use super::chat::{SHED_RETRY_AFTER, respond};
use super::ids::{RequestId, new_id};
use super::limited;
use super::served::{self, Serving, attempts};
use super::traced;
use crate::accounting::{Ledger, RecordFields};
use crate::auth::Tenant;
use crate::backend::DispatchContext;
use crate::dispatch::{Dispatch, dispatch};
use crate::error::{self, ApiError};
use crate::headers::{HttpHeaders, RoutingHeaders};
use crate::intake;
use crate::recognise::{self, Busy};
use crate::redact::proof::{Unproven, explain_outcome, fall_back};

/// Why a redacting rule's fallback decides an embeddings request.
const NOT_REDACTED: &str = "embeddings are never sent redacted: vectors of redacted text do not match those of the original documents";

pub(super) async fn create(
    State(app): State<Arc<App>>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    axum::Extension(request_id): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    let accounts = &app.accounts;
    let mut routing = RoutingHeaders::default();

    // Intake.
    let prompt_digest_of = body.as_ref().ok().cloned();
    let mut intake = match intake::read_embeddings(
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

    // Policy, and the personal-data model when its answer can change where the request may go.
    let http_headers = HttpHeaders(&headers);
    let mut view = app.fleet.view(&accounts.stats);
    let decide = |intake: &intake::Intake<_>, view: &sluice_policy::FleetView| {
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
    // Limits: what the request can cost at most is reserved before it goes anywhere.
    let settled = limited::settle(
        app.limiter.as_deref(),
        (&tenant.0, intake.prompt_tokens, Some(0)),
        &mut decided,
        &mut view,
        &mut routing.ratelimit,
        |view| decide(&intake, view),
    )
    .instrument(tracing::trace_span!(target: TARGET, "limits"))
    .await;
    let (held, budget_resets) = match settled {
        Ok(s) => (s.held, s.budget_resets),
        Err(error) => {
            accounts.rejected(error.code);
            return respond(&routing, error);
        }
    };
    // A rule that would redact: its fallback decides.
    let mut unredacted = None;
    if let Ok(
        d @ sluice_policy::Decision {
            redaction: Some(plan),
            ..
        },
    ) = &decided
    {
        let unproven = Unproven {
            why: NOT_REDACTED.to_owned(),
            survived: Vec::new(),
            counts: Default::default(),
            kinds: Vec::new(),
        };
        let (fallback, why) = fall_back(d, plan, &unproven);
        decided = fallback;
        unredacted = Some((why, unproven));
    }
    let facts = intake.facts(&tenant.0, &http_headers);
    let decision_id = new_id("dec_");
    routing.decision_id = Some(decision_id.clone());
    let mut explanation = sluice_policy::explain(&decision_id, &facts, floor, &view, &decided);
    if let Err(refusal) = &decided {
        error::explain_refusal(&mut explanation, refusal);
    }
    if let Some((why, u)) = &unredacted {
        explain_outcome(&mut explanation, Err((why, u)));
    }
    accounts.decided(explanation);
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
            max_tokens: Some(0),
            stream: false,
            declared: intake.declared,
            prefer: intake.prefer,
            prompt_estimate: intake.prompt_tokens,
        })
        .map(|mut r| {
            r.endpoint = Some("embeddings".to_owned());
            r
        });
    let decision = match decided {
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
    let level: Level = decision.level.max(facts.level());
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
    } = dispatch(
        &app.fleet,
        &decision,
        level,
        &intake.request,
        &context,
        &decision_id,
    )
    .await;
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

    // The vectors came; the ledger records them, the answer names the model that made them.
    for f in &started.fallbacks {
        accounts.fell_back(&f.backend, f.error.member_fault());
    }
    accounts.dispatched(&decision.rule, started.backend.route(), false);
    let embeddings = started.dispatched;
    let served_by = embeddings.served_by.to_string();
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
    ledger.answered(embeddings.usage);
    let body = crate::wire::embeddings::body(
        &started.target.model,
        &embeddings.vectors,
        embeddings.usage,
        intake.request.encoding_format,
    );
    respond(&routing, axum::Json(body).into_response())
}
