//! `/v1/models`: every model a backend serves, and the virtual models, with their prices and the endpoint
//! each answers (`sluice.kind`: `chat` for `/v1/chat/completions`, `embedding` for `/v1/embeddings`; a
//! virtual model's kind is its members').

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::app::App;
use crate::backend::ModelKind;

fn endpoint(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Chat => "/v1/chat/completions",
        ModelKind::Embedding => "/v1/embeddings",
    }
}

pub(super) async fn list(State(app): State<Arc<App>>) -> Response {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for backend in &app.fleet.backends {
        for card in backend.models() {
            if !seen.insert(card.id.clone()) {
                continue;
            }
            let mut entry = json!({
                "id": card.id,
                "object": "model",
                "created": 0,
                "owned_by": backend.name(),
                "sluice": {
                    "route": backend.route().as_str(),
                    "backend": backend.name(),
                    "kind": card.kind.as_str(),
                    "endpoint": endpoint(card.kind),
                },
            });
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
        data.push(json!({
            "id": v.name,
            "object": "model",
            "created": 0,
            "owned_by": "sluice",
            "sluice": {
                "virtual": true,
                "kind": kind.as_str(),
                "endpoint": endpoint(kind),
                "strategy": v.strategy.as_str(),
                "members": v.members.iter().map(|m| json!({"backend": m.backend, "model": m.model})).collect::<Vec<_>>(),
            },
        }));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
