//! `/v1/models`: every model a backend serves, and the virtual models, with their prices and the endpoints
//! each answers (`sluice.kind`: `chat` for `/v1/chat/completions`, `/v1/responses` and `/v1/messages`,
//! `embedding` for `/v1/embeddings`; a virtual model's kind is its members'). The list is in OpenAI's
//! shape with the fields of Anthropic's (`type`, `display_name`, `created_at`, `has_more`, `first_id`,
//! `last_id`) too, so that either SDK's `models.list()` reads it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::app::App;
use crate::backend::ModelKind;

fn endpoint(kind: ModelKind) -> &'static str {
    endpoints(kind)[0]
}

/// Every endpoint that serves a model of this kind, the first its own.
fn endpoints(kind: ModelKind) -> &'static [&'static str] {
    match kind {
        ModelKind::Chat => &["/v1/chat/completions", "/v1/responses", "/v1/messages"],
        ModelKind::Embedding => &["/v1/embeddings"],
    }
}

/// A list entry, in both SDKs' shapes.
fn entry(id: &str, owned_by: &str, sluice: serde_json::Value) -> serde_json::Value {
    json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": owned_by,
        "type": "model",
        "display_name": id,
        "created_at": "1970-01-01T00:00:00Z",
        "sluice": sluice,
    })
}

pub(super) async fn list(State(app): State<Arc<App>>) -> Response {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for backend in &app.fleet.backends {
        for card in backend.models() {
            if !seen.insert(card.id.clone()) {
                continue;
            }
            let mut entry = entry(
                &card.id,
                backend.name(),
                json!({
                    "route": backend.route().as_str(),
                    "backend": backend.name(),
                    "kind": card.kind.as_str(),
                    "endpoint": endpoint(card.kind),
                    "endpoints": endpoints(card.kind),
                }),
            );
            if let Some(p) = card.prices {
                entry["sluice"]["pricing"] = json!({
                    "input_usd_per_mtok": p.input_usd_per_mtok,
                    "output_usd_per_mtok": p.output_usd_per_mtok,
                });
            }
            data.push(entry);
        }
    }
    for v in &app.config.policy.models {
        if !seen.insert(v.name.clone()) {
            continue;
        }
        // Members of one virtual model share a kind (`sluice policy check` warns when they do not).
        let kind = v
            .members
            .iter()
            .find_map(|m| {
                let backend = app.fleet.backends.iter().find(|b| b.name() == m.backend)?;
                backend.serves(&m.model).then(|| backend.kind_of(&m.model))
            })
            .unwrap_or_default();
        data.push(entry(
            &v.name,
            "sluice",
            json!({
                "virtual": true,
                "kind": kind.as_str(),
                "endpoint": endpoint(kind),
                "endpoints": endpoints(kind),
                "strategy": v.strategy.as_str(),
                "members": v.members.iter().map(|m| json!({"backend": m.backend, "model": m.model})).collect::<Vec<_>>(),
            }),
        ));
    }
    let first = data.first().map(|e| e["id"].clone());
    let last = data.last().map(|e| e["id"].clone());
    axum::Json(json!({
        "object": "list",
        "data": data,
        "has_more": false,
        "first_id": first,
        "last_id": last,
    }))
    .into_response()
}
